"""OTLP → `AuditEvent`: the pure half of the OTLP receiver.

Place in the house (DESIGN.md, "Telemetry in"): OTel SDKs and Istio/Envoy send OTLP traces
and logs to `auditmesh server`; `otlp_http.py` (OTLP/HTTP) and `otlp_grpc.py` (OTLP/gRPC)
carry the bytes in and out, this module decides what they mean. No sockets, no asyncio,
no clock: requests in, events plus a partial-success verdict out. Imports `events` and,
for Envoy's access-log lines, the sibling `ingest.envoy` adapter.

What becomes an audit event (each reported, never observed: `attested=False`, `reporter`
`ingest:otlp:<service.name>`):

(a) HTTP server and client spans, per the OpenTelemetry semantic conventions for HTTP spans
    (stable `http.request.method`, `url.path`, `http.response.status_code`, `server.address`,
    `client.address`, … and the pre-1.21 `http.method`, `http.target`, `http.status_code`,
    `net.host.name`, `net.peer.ip`, … names). Event id: UUIDv7 from the span's start
    millisecond and SHA-256 of (trace id, span id), so a retried export is stored once.
(b) Envoy access-log records from the OpenTelemetry access logger as Istio's `envoyOtelAls`
    provider configures it: body = Istio's default TEXT access-log line, attributes =
    the provider's `logFormat.labels` (peer URI SANs and `traceparent` under the keys of
    Istio's JSON log, e.g. `downstream_peer_uri_san`; other labels become event labels), or
    labels alone shaped like Istio's JSON log. Parsed and interpreted by `ingest.envoy`; the
    event id is `envoy.line_event_id` of (reporter, line): a retried record maps to one id.
(c) Log records carrying an audit event: attribute `auditmesh.event` (`EVENT_ATTRIBUTE`)
    holds the event's canonical JSON (RFC 8785), exactly what `audit_log_record` writes.
    The receiver keeps the event as sent, id included, except `reporter` and `attested`
    (`as_received`): a relayed record proves nothing about who observed the call. What
    the record claimed of them, where it differs, stays as labels that say so
    (`relayed.reporter`, `relayed.attested`: claims of the relayed record, not facts).
    A record `auditmesh export otlp` took from this very ledger and sent back here thus
    differs from the event stored under its id: it is rejected saying so (`SENT_BACK`,
    `Mapped.leave_out`), not as an id reused for another event.
    The same holds for the shapes an OpenTelemetry Collector gives a log line that is an
    audit event (`structured_event_fields`): the line's fields as attributes (the filelog
    receiver's `json_parser`; other attributes, such as `log.file.name`, are left aside), as
    a map body, or the line itself as a string body.

Rejected versus skipped (OTLP spec, "Partial Success": the server reports the records it
*rejects*): a record we recognise as audit data but cannot map (an HTTP span with a broken
trace id, an access-log line that does not parse, an `auditmesh.event` that is not a valid
event) is rejected and counted in `partial_success` with the reason. Telemetry that is valid
but not about a service-to-service call (internal, producer and consumer spans, non-HTTP
client/server spans, ordinary application logs) is accepted and skipped, the way a
collector's filter drops data without failing the export; it is not an error to send it.

A body that is not an Export request at all is "Bad Data" (HTTP 400, gRPC
INVALID_ARGUMENT). In OTLP/JSON, trace and span ids are hex strings: a span or log record
whose id (or a link's) is not hex is rejected alone, with the reason, whatever it carries,
and the rest of the request is mapped (`map_body`), as protobuf rejects an HTTP span with
an invalid id alone. `decode_request`, which returns the request as sent, refuses such a
body whole.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import ipaddress
import math
import re
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias, TypeVar
from urllib.parse import urlsplit

import msgspec
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTracePartialSuccess,
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

from auditmesh.collector import entry_of
from auditmesh.events import (
    HTTP,
    MAX_EVENT_BYTES,
    MAX_LABEL,
    MAX_NAME,
    MAX_REQUEST_ID,
    MAX_TEXT,
    AuditEvent,
    Direction,
    Error,
    EventError,
    Outcome,
    Peer,
    Trace,
    canonical_bytes,
    checked_size,
    decode_event,
    event_id_at,
)
from auditmesh.ingest import envoy
from auditmesh.ledger.log import Entry
from auditmesh.ledger.merkle import leaf_hash

# --- names shared with `auditmesh export otlp` (the inverse of case (c)) -------------------

#: Log-record attribute whose string value is one event's RFC 8785 canonical JSON.
EVENT_ATTRIBUTE = "auditmesh.event"
#: `LogRecord.event_name` an exporter of audit events sets (informative: the receiver keys on
#: `EVENT_ATTRIBUTE` alone, so records from SDKs without `event_name` work too).
EVENT_NAME = "auditmesh.audit_event"
#: `reporter` of every ingested event: this prefix and the resource's `service.name`.
REPORTER_PREFIX = "ingest:otlp:"
#: Resource semantic conventions: the SDK default when `service.name` is not configured.
UNKNOWN_SERVICE = "unknown_service"
#: Log-record attribute `auditmesh export otlp` sets: the entry's index in the ledger the
#: record was exported from (a claim: `Mapped.exported_entries` checks it against this log).
LOG_INDEX_ATTRIBUTE = "auditmesh.log.index"
#: Labels of a relayed event (case (c)): the `reporter` and `attested` its record claimed,
#: where they differ from what is stored (`as_received`). Claims of the relayed record.
RELAYED_REPORTER_LABEL = "relayed.reporter"
RELAYED_ATTESTED_LABEL = "relayed.attested"
#: How the partial success ends when records were exported from this very ledger and sent
#: back to its server (`Mapped.leave_out`); `auditmesh export otlp` looks for it.
SENT_BACK = "this export was sent back to the server it came from"
_CLAIM_LABELS = frozenset({RELAYED_REPORTER_LABEL, RELAYED_ATTESTED_LABEL})

Encoding: TypeAlias = Literal["protobuf", "json"]
Signal: TypeAlias = Literal["traces", "logs"]
R = TypeVar("R")  # a span or a log record

_MAX_REASONS = 5
_MAX_REPORTER = 2048


class MalformedRequest(ValueError):
    """The body is not a valid Export*ServiceRequest (OTLP/HTTP "Bad Data": 400)."""


class TooManyObjects(ValueError):
    """An OTLP/JSON body holds more JSON objects than one request may (OTLP/HTTP: 413, like
    a body over the size limit: send smaller batches)."""


class Unmappable(ValueError):
    """One record is audit data we cannot turn into a valid event; the reason says why."""


@dataclass(frozen=True, slots=True)
class ExportedEntry:
    """What a relayed record of `auditmesh export otlp` says of the entry it was exported
    from: its index there, the RFC 9162 leaf hash of the event it carries (computed here,
    not taken from the record), and that event's reporter."""

    index: int
    leaf_hash: bytes
    reporter: str


@dataclass(slots=True)
class Mapped:
    """What one Export request yields: events to commit, and the records left out."""

    signal: Signal
    events: list[AuditEvent] = field(default_factory=list)
    entries: list[Entry] = field(default_factory=list)  # the events' ledger entries, for
    #   `Collector.submit_entries`: encoded once, here, where their size is checked
    records: list[Any] = field(default_factory=list)  # the span or log record of each event
    rejected: int = 0
    skipped: int = 0
    reasons: list[str] = field(default_factory=list)
    unlisted: int = 0  # rejected records whose reason is not in `reasons`

    def reject(self, reason: str) -> None:
        self.rejected += 1
        if reason in self.reasons:
            return  # said already
        if len(self.reasons) < _MAX_REASONS:
            self.reasons.append(reason)
        else:
            self.unlisted += 1

    def leave_out(
        self, positions: Iterable[int], sent_back: Mapping[int, str] | None = None
    ) -> None:
        """The events at these positions were not stored: the log holds their ids with other
        content (`Collector.submit_leaving_out_conflicts`). Each is a rejected record.
        `sent_back` names those whose record was exported from this very log (its entry
        holds the record's own event, `exported_entries`), with that event's reporter: they
        are rejected in one reason saying so, which the exporter recognises (`SENT_BACK`)."""
        sent_back = sent_back or {}
        echoes = [sent_back[p] for p in sorted(positions) if p in sent_back]
        for position in sorted(positions, reverse=True):
            event = self.events.pop(position)
            del self.entries[position]
            del self.records[position]
            if position not in sent_back:
                self.reject(f"event {event.id}: the log holds this id already, with other content")
        if echoes:  # first: it explains the export, the other reasons only records
            self.rejected += len(echoes)
            self.reasons.insert(0, _sent_back_reason(len(echoes), list(dict.fromkeys(echoes))))
            if len(self.reasons) > _MAX_REASONS:
                self.reasons.pop()
                self.unlisted += 1

    def exported_entries(self, positions: Iterable[int]) -> dict[int, ExportedEntry]:
        """For the events at these positions relayed by `auditmesh export otlp` (their log
        record carries `EVENT_ATTRIBUTE` and `LOG_INDEX_ATTRIBUTE`): the entry each says
        it was exported from. Whether this log holds it there is for the caller to read."""
        found: dict[int, ExportedEntry] = {}
        for position in positions:
            record = self.records[position]
            if not isinstance(record, LogRecord):
                continue
            attrs = attribute_map(record.attributes)
            carried = attrs.get(EVENT_ATTRIBUTE)
            try:
                index = integer(attrs, LOG_INDEX_ATTRIBUTE)
                if carried is None or index is None or index < 0:
                    continue
                event = _carried_event(carried)
            except Unmappable:
                continue
            found[position] = ExportedEntry(
                index, leaf_hash(canonical_bytes(event)), event.reporter
            )
        return found

    def without_claims(self, positions: Iterable[int]) -> dict[int, Entry]:
        """The entries the events at these positions had before relayed events kept their
        record's claims (`as_received` adds `relayed.*` labels since then): position → that
        entry, for those that carry such labels. A record relayed again after the upgrade
        is a duplicate of what was stored then, not an id reused for another event."""
        older: dict[int, Entry] = {}
        for position in positions:
            event = self.events[position]
            labels = event.labels
            if not _CLAIM_LABELS.isdisjoint(labels):
                kept = {k: v for k, v in labels.items() if k not in _CLAIM_LABELS}
                older[position] = entry_of(msgspec.structs.replace(event, labels=kept))
        return older

    @property
    def unit(self) -> str:
        return "spans" if self.signal == "traces" else "log records"

    def error_message(self) -> str:
        """The English explanation OTLP's `partial_success.error_message` asks for."""
        if not self.rejected:
            return ""
        total = self.rejected + self.skipped + len(self.events)
        text = f"rejected {self.rejected} of {total} {self.unit}: " + "; ".join(self.reasons)
        if self.unlisted:
            text += "; …"
        return text


def _sent_back_reason(count: int, reporters: list[str]) -> str:
    shown = [r if len(r) <= 200 else r[:199] + "…" for r in reporters[:3]]
    who = ", ".join(shown)
    if len(reporters) > 3:
        who += f" and {len(reporters) - 3} other reporters"
    what = "event is" if count == 1 else "events are"
    return f"{count} {what} already in this ledger as reported by {who}: {SENT_BACK}"


# --- wire decoding (pure; shared by OTLP/HTTP and OTLP/gRPC) -------------------------------

# OTLP spec, "JSON Protobuf Encoding": trace and span ids are hex, not base64, in every
# message. The collector's decoder also takes the original field names; so do we.
_ID_KEYS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def decode_request(
    signal: Signal, body: bytes, encoding: Encoding
) -> ExportTraceServiceRequest | ExportLogsServiceRequest:
    """Parse an Export*ServiceRequest from binary protobuf or OTLP/JSON. An OTLP/JSON
    record with a non-hex id makes the whole body malformed here; `map_body` rejects it
    alone instead."""
    if encoding == "protobuf":
        return _decode_protobuf(signal, body)
    message, unreadable = _decode_json(signal, body)
    if unreadable:
        raise MalformedRequest(unreadable[min(unreadable)])
    return message


def map_body(signal: Signal, body: bytes, encoding: Encoding) -> Mapped:
    """What the receivers make of one Export request body: `map_request` of the decoded
    request, plus, in OTLP/JSON, a reject for each record whose ids are not hex."""
    if encoding == "protobuf":
        return map_request(_decode_protobuf(signal, body))
    return map_request(*_decode_json(signal, body))


def _new_request(signal: Signal) -> ExportTraceServiceRequest | ExportLogsServiceRequest:
    return ExportTraceServiceRequest() if signal == "traces" else ExportLogsServiceRequest()


def _decode_protobuf(
    signal: Signal, body: bytes
) -> ExportTraceServiceRequest | ExportLogsServiceRequest:
    message = _new_request(signal)
    try:
        message.ParseFromString(body)
    except (DecodeError, RecursionError, ValueError) as exc:
        # A proto3 `string` must be UTF-8 (protobuf Language Guide (proto3), "Scalar Value
        # Types"), and upb refuses the whole message for one that is not. But protobuf C++
        # only logs it when serializing, so Envoy's OpenTelemetry access logger (as the
        # Collector) sends a header's bytes as the caller sent them (RFC 9110 §5.5 obs-text):
        # one Latin-1 User-Agent made the whole export Bad Data. Such bytes are kept as
        # escapes (\xe9), as `auditmesh ingest` keeps them in a log file's lines.
        try:
            message.ParseFromString(_utf8_strings(body, message.DESCRIPTOR))
        except (DecodeError, RecursionError, ValueError):
            raise MalformedRequest(f"not a protobuf {message.DESCRIPTOR.name}: {exc}") from None
    return message


def _utf8_strings(data: bytes, descriptor: Descriptor, depth: int = 0) -> bytes:
    """`data`, a `descriptor` message in the protobuf wire format ("Encoding"), with every
    `string` field that is not UTF-8 decoded with backslash escapes; the rest as it was.
    ValueError when `data` is not a well-formed message."""
    if depth > _MAX_DEPTH:
        raise ValueError("nested too deeply")
    out = bytearray()
    pos, size = 0, len(data)
    while pos < size:
        start = pos
        key, pos = _varint(data, pos)
        number, wire_type = key >> 3, key & 7
        if wire_type == 0:  # VARINT
            pos = _varint(data, pos)[1]
        elif wire_type in (1, 5):  # I64, I32
            pos += 8 if wire_type == 1 else 4
        elif wire_type == 2:  # LEN
            key_end = pos
            length, pos = _varint(data, pos)
            if pos + length > size:
                raise ValueError("truncated")
            payload = data[pos : pos + length]
            pos += length
            field = descriptor.fields_by_number.get(number)
            if field is not None and field.type == FieldDescriptor.TYPE_STRING:
                fixed = payload.decode("utf-8", "backslashreplace").encode()
            elif field is not None and field.message_type is not None:
                fixed = _utf8_strings(payload, field.message_type, depth + 1)
            else:
                fixed = payload
            if fixed != payload:
                out += data[start:key_end] + _varint_bytes(len(fixed)) + fixed
                continue
        else:  # groups: none in OTLP
            raise ValueError(f"wire type {wire_type}")
        if pos > size:
            raise ValueError("truncated")
        out += data[start:pos]
    return bytes(out)


_MAX_DEPTH = 100  # protobuf's default recursion limit


def _varint(data: bytes, pos: int) -> tuple[int, int]:
    result = shift = 0
    while shift < 64 and pos < len(data):
        byte = data[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7
    raise ValueError("malformed varint")


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


#: The most JSON objects one OTLP/JSON request may hold. json_format reads each in Python,
#: 6 to 10 µs an object here, so a 20 MiB body of empty objects (`[{},{},…]`) cost some 40 s
#: of CPU; this bounds a request to a few seconds. An exporter's batch of 8,192 spans (the
#: OpenTelemetry Collector's default) of about 25 objects each holds some 200,000.
MAX_JSON_OBJECTS = 500_000


def _decode_json(
    signal: Signal, body: bytes
) -> tuple[ExportTraceServiceRequest | ExportLogsServiceRequest, dict[int, str]]:
    """The request, with the ids that are not hex left empty, and those records: position
    (from 1, in request order, as `map_request` counts) → why."""
    message = _new_request(signal)
    # Counted before decoding, and at most an overcount: a brace inside a string counts too.
    objects = body.count(b"{")
    if objects > MAX_JSON_OBJECTS:
        raise TooManyObjects(
            f"the OTLP/JSON request holds up to {objects:,} JSON objects; one request may hold "
            f"{MAX_JSON_OBJECTS:,}: send smaller batches (or use application/x-protobuf)"
        )
    try:
        tree = msgspec.json.decode(body)
    except (msgspec.DecodeError, RecursionError) as exc:
        raise MalformedRequest(f"not JSON: {exc}") from None
    if not isinstance(tree, dict):
        raise MalformedRequest(f"OTLP/JSON wants an object ({message.DESCRIPTOR.name})")
    unreadable = _hex_ids_to_base64(tree, signal)
    try:
        # "OTLP/JSON receivers MUST ignore message fields with unknown names".
        json_format.ParseDict(tree, message, ignore_unknown_fields=True)
    except (json_format.ParseError, ValueError, TypeError, RecursionError) as exc:
        raise MalformedRequest(f"not OTLP/JSON {message.DESCRIPTOR.name}: {exc}") from None
    return message, unreadable


def _hex_ids_to_base64(tree: dict[str, Any], signal: Signal) -> dict[int, str]:
    """Rewrite the hex ids of every record (and its links) as the base64 json_format reads;
    an id that is not hex is emptied and its record returned, by position, with why."""
    outer, scopes, items = (
        ("resourceSpans", "scopeSpans", "spans")
        if signal == "traces"
        else ("resourceLogs", "scopeLogs", "logRecords")
    )
    unreadable: dict[int, str] = {}
    for position, record in enumerate(_walk(tree, outer, scopes, items), start=1):
        why = _fix_ids(record)
        links = record.get("links")
        if isinstance(links, list):
            for link in links:
                if isinstance(link, dict) and (bad_link := _fix_ids(link)):
                    why = why or f"link {bad_link}"
        if why:
            unreadable[position] = why
    return unreadable


def _walk(tree: dict[str, Any], *path: str) -> Iterator[dict[str, Any]]:
    """The records at `path`, in the order json_format.ParseDict puts them in the request."""
    level: list[dict[str, Any]] = [tree]
    for name in path:
        nxt: list[dict[str, Any]] = []
        for node in level:
            children = _field(node, name)
            if isinstance(children, list):  # anything else: ParseDict refuses it or clears
                nxt.extend(c for c in children if isinstance(c, dict))
        level = nxt
    yield from level


def _field(node: dict[str, Any], name: str) -> Any:
    """The value ParseDict takes for the field `name` (its JSON name) of `node`: it accepts
    the original (snake_case) name too, and of both, the one that comes last wins."""
    snake = "".join("_" + c.lower() if c.isupper() else c for c in name)
    if snake != name and name in node and snake in node:
        order = list(node)
        return node[name] if order.index(name) > order.index(snake) else node[snake]
    return node.get(name, node.get(snake))


def _fix_ids(record: dict[str, Any]) -> str | None:
    """Hex ids → base64, in place; the first id that is not hex, emptied, says why."""
    why = None
    for key in _ID_KEYS:
        value = record.get(key)
        if isinstance(value, str):
            try:
                raw = bytes.fromhex(value)  # case-insensitive (RFC 4648 §8)
            except ValueError:
                why = why or f"{key} {value[:40]!r} is not hex (OTLP/JSON ids are hex strings)"
                raw = b""
            record[key] = base64.b64encode(raw).decode()
    return why


def encode_response(signal: Signal, mapped: Mapped | None, encoding: Encoding) -> bytes:
    """The Export*ServiceResponse; `partial_success` set only when something was rejected
    (OTLP spec, "Full Success": the server MUST leave it unset otherwise)."""
    response: ExportTraceServiceResponse | ExportLogsServiceResponse
    if signal == "traces":
        response = ExportTraceServiceResponse()
        if mapped is not None and mapped.rejected:
            response.partial_success.CopyFrom(
                ExportTracePartialSuccess(
                    rejected_spans=mapped.rejected, error_message=mapped.error_message()
                )
            )
    else:
        response = ExportLogsServiceResponse()
        if mapped is not None and mapped.rejected:
            response.partial_success.CopyFrom(
                ExportLogsPartialSuccess(
                    rejected_log_records=mapped.rejected, error_message=mapped.error_message()
                )
            )
    if encoding == "protobuf":
        return response.SerializeToString()
    return json_format.MessageToJson(response, indent=None).encode()


# --- mapping ------------------------------------------------------------------------------


def map_request(
    request: ExportTraceServiceRequest | ExportLogsServiceRequest,
    unreadable: Mapping[int, str] | None = None,
) -> Mapped:
    """The events of `request`; the records at the positions in `unreadable` (from 1, in
    request order) are rejected with the reason given there instead."""
    if isinstance(request, ExportTraceServiceRequest):
        return map_traces(request, unreadable)
    return map_logs(request, unreadable)


def map_traces(
    request: ExportTraceServiceRequest, unreadable: Mapping[int, str] | None = None
) -> Mapped:
    spans = _records(request.resource_spans, "scope_spans", "spans")
    return _map("traces", spans, span_event, lambda _, span: f"span {span.name[:80]!r}", unreadable)


def map_logs(
    request: ExportLogsServiceRequest, unreadable: Mapping[int, str] | None = None
) -> Mapped:
    records = _records(request.resource_logs, "scope_logs", "log_records")
    return _map(
        "logs", records, log_event, lambda position, _: f"log record #{position}", unreadable
    )


def _records(resources: Iterable[Any], scopes: str, items: str) -> Iterator[tuple[Any, _Origin]]:
    """Each span or log record with its resource's origin: resource → scope → item, the
    same nesting in trace.proto and logs.proto under other field names."""
    for resource_items in resources:
        origin = None  # read at its first item: a request of empty resources costs nothing
        for scope_items in getattr(resource_items, scopes):
            for item in getattr(scope_items, items):
                if origin is None:
                    origin = _Origin.of(resource_items.resource)
                yield item, origin


def _map(
    signal: Signal,
    records: Iterable[tuple[R, _Origin]],
    convert: Callable[[R, _Origin], AuditEvent | None],
    name: Callable[[int, R], str],
    unreadable: Mapping[int, str] | None,
) -> Mapped:
    """Events of the records that are audit data; the others skipped (None) or rejected
    with a reason naming the record (`name(position, record)`, position from 1)."""
    mapped = Mapped(signal)
    for position, (record, origin) in enumerate(records, start=1):
        try:
            if unreadable and position in unreadable:
                raise Unmappable(unreadable[position])
            event = convert(record, origin)
            entry = None if event is None else entry_of(event)
            if entry is not None:
                checked_size(entry.data)  # one a ledger entry can hold
        except (Unmappable, EventError) as exc:
            mapped.reject(f"{name(position, record)}: {exc}")
            continue
        if event is None or entry is None:
            mapped.skipped += 1
        else:
            mapped.events.append(event)
            mapped.entries.append(entry)
            mapped.records.append(record)
    return mapped


@dataclass(frozen=True, slots=True)
class _Origin:
    """The reporting service, from resource attributes (resource semantic conventions)."""

    service: str
    namespace: str | None
    attributes: Mapping[str, AnyValue]

    @classmethod
    def of(cls, resource: Resource) -> _Origin:
        attrs = attribute_map(resource.attributes)
        # Envoy's OpenTelemetry access logger names its node in the built-in `node_name`
        # resource label when no service.name is configured (Istio turns both off).
        service = text(attrs, "service.name", "node_name") or UNKNOWN_SERVICE
        namespace = text(attrs, "k8s.namespace.name", "service.namespace")
        return cls(service, namespace, attrs)

    @property
    def reporter(self) -> str:
        return (REPORTER_PREFIX + self.service)[:_MAX_REPORTER]


# AnyValue accessors (OTLP common.proto). Attribute values are typed; SDKs and collectors
# sometimes carry numbers as strings, so the integer reader takes decimal strings too.


def attribute_map(kvs: Iterable[KeyValue]) -> dict[str, AnyValue]:
    return {kv.key: kv.value for kv in kvs}


def _scalar(value: AnyValue) -> str | int | float | bool | bytes | None:
    kind = value.WhichOneof("value")
    if kind == "array_value":
        items = value.array_value.values
        return _scalar(items[0]) if items else None  # captured headers are string arrays
    if kind is None or kind == "kvlist_value":
        return None
    result: str | int | float | bool | bytes = getattr(value, kind)
    return result


def text(attrs: Mapping[str, AnyValue], *keys: str) -> str | None:
    """The first of `keys` present as a non-empty string (integers are written out)."""
    for key in keys:
        value = attrs.get(key)
        if value is not None and (found := text_of(value)):
            return found
    return None


def text_of(value: AnyValue) -> str | None:
    """A string value, or an integer written out; None for any other kind."""
    scalar = _scalar(value)
    if isinstance(scalar, str):
        return scalar
    if isinstance(scalar, int) and not isinstance(scalar, bool):
        return str(scalar)
    return None


def integer(attrs: Mapping[str, AnyValue], *keys: str) -> int | None:
    """The first of `keys` present as an integer (or a decimal string, or an integral
    double); a present but non-numeric value raises `Unmappable` naming the key."""
    for key in keys:
        value = attrs.get(key)
        if value is None:
            continue
        scalar = _scalar(value)
        if isinstance(scalar, bool) or scalar is None:
            raise Unmappable(f"{key} is not an integer")
        if isinstance(scalar, int):
            return scalar
        if isinstance(scalar, float) and scalar.is_integer():
            return int(scalar)
        if isinstance(scalar, str) and scalar.isascii() and scalar.isdigit():
            return int(scalar)
        raise Unmappable(f"{key} is not an integer: {str(scalar)[:40]!r}")
    return None


def _ip(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        return str(ipaddress.ip_address(value.strip("[]")))
    except ValueError:
        return None


def derived_id(time_ns: int, *parts: bytes) -> str:
    """A UUIDv7 (RFC 9562 §5.7) whose 48-bit time is `time_ns`'s millisecond and whose
    random bits are SHA-256 of `parts`: the same record always gets the same id, so the
    ledger stores a retried export once (OTLP spec, "Duplicate Data")."""
    digest = hashlib.sha256(b"\0".join(parts)).digest()
    return event_id_at(time_ns, digest)


def span_event_id(trace_id: bytes, span_id: bytes, start_time_unix_nano: int) -> str:
    """The event id of the span (trace_id, span_id) that started at the given time."""
    return derived_id(start_time_unix_nano, b"otlp-span", trace_id, span_id)


def _validated(event: AuditEvent) -> AuditEvent:
    """msgspec checks field constraints on decode, not on construction: round-trip once so
    an out-of-range status or an over-long method is a reject reason, not a bad leaf."""
    try:
        return decode_event(canonical_bytes(event))
    except EventError as exc:
        raise Unmappable(f"not a valid audit event: {exc}") from None


# --- (a) HTTP spans ---------------------------------------------------------------------

_SERVER = Span.SpanKind.SPAN_KIND_SERVER
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")  # RFC 9110 §5.6.2 token (§9.1 method)
_CLIENT = Span.SpanKind.SPAN_KIND_CLIENT


def _hex_id(raw: bytes, size: int, what: str, *, required: bool) -> str | None:
    # trace.proto: trace_id is 16 bytes and span_id 8, all-zero meaning invalid/absent:
    # a parent span id of zeros is a root span's, as an empty one.
    if not required and not any(raw) and len(raw) in (0, size):
        return None
    if len(raw) != size or not any(raw):
        raise Unmappable(f"invalid {what} {raw.hex()[:64]!r} (want {size} non-zero bytes)")
    return raw.hex()


def span_event(span: Span, origin: _Origin) -> AuditEvent | None:
    """One HTTP server or client span as an audit event; None for spans that are not about
    an HTTP call between services (skipped, see the module docstring)."""
    if span.kind not in (_SERVER, _CLIENT):
        return None
    attrs = attribute_map(span.attributes)
    # HTTP semconv: http.request.method (stable, v1.21+) / http.method (before).
    method = text(attrs, "http.request.method", "http.method")
    if method is None:
        return None
    if method == "_OTHER":  # semconv: the original is in http.request.method_original
        method = text(attrs, "http.request.method_original") or method
    if not _TOKEN.fullmatch(method):  # its length is the model's to check (MAX_METHOD)
        raise Unmappable(f"{method[:40]!r} is not an HTTP method (RFC 9110 §9.1: a token)")
    # Over-long values are clipped and named in label auditmesh.clipped, as the sidecar and
    # the log adapters do: an over-long header must not leave the call unaudited.
    clip = envoy.Clipper()
    trace_id = _hex_id(span.trace_id, 16, "trace_id", required=True)
    span_id = _hex_id(span.span_id, 8, "span_id", required=True)
    parent = _hex_id(span.parent_span_id, 8, "parent_span_id", required=False)
    assert trace_id is not None and span_id is not None
    start, end = span.start_time_unix_nano, span.end_time_unix_nano
    if not start:
        raise Unmappable("no start_time_unix_nano")
    if start >= 2**63:
        raise Unmappable("start_time_unix_nano is beyond the year 2262")
    if end and end < start:  # 0: not given; the event then has no duration
        raise Unmappable("end_time_unix_nano is before start_time_unix_nano")
    # Envoy's tracer writes http.status_code "0" when no response was sent (as its
    # %RESPONSE_CODE%): no status, as `ingest.envoy` reads a 0 in an access log.
    status = integer(attrs, "http.response.status_code", "http.status_code") or None
    server = span.kind == _SERVER
    url = text(attrs, "url.full", "http.url")
    try:
        parts = urlsplit(url) if url else None
    except ValueError as exc:  # `http://[::1`: refused alone, not the whole export
        raise Unmappable(f"url.full is not a URL ({exc})") from None
    path = text(attrs, "url.path") or _path_only(text(attrs, "http.target"))
    if path is None and parts is not None:
        path = parts.path or "/"
    route = text(attrs, "http.route")
    side = "destination" if server else "source"  # the side this service is on
    here = Peer(
        service=clip(f"{side}.service", origin.service, MAX_NAME),
        namespace=clip(f"{side}.namespace", origin.namespace, MAX_NAME),
    )
    if server:
        # HTTP server span: server.* describe this service, client.* the caller.
        source = _caller(attrs)
        # Before v1.18 one of four sets named the server: http.host (the Host header as
        # sent), http.server_name, net.host.name (each with http.scheme), or http.url alone.
        authority = text(attrs, "http.host")
        host = (
            text(attrs, "server.address", "net.host.name")
            or _host_of(authority)
            or text(attrs, "http.server_name")
        )
        port = integer(attrs, "server.port", "net.host.port")
        if port is None and authority is not None:
            port = _port_of(authority)
        if parts is not None and (host is None or port is None):
            host = host or parts.hostname
            port = port if port is not None else _url_port(parts)
        if port is None and host:
            # semconv: server.port (net.host.port before v1.21) is set only when not the
            # scheme's default ("If not default (80 for http scheme, 443 for https)"; in the
            # stable conventions, that of a Host header that names none): the scheme's then.
            scheme = text(attrs, "url.scheme", "http.scheme")
            port = _DEFAULT_PORTS.get(scheme.lower()) if scheme else None
        destination = Peer(
            service=here.service,
            namespace=here.namespace,
            host=clip("destination.host", host or None, MAX_NAME),
            ip=_ip(text(attrs, "network.local.address", "net.sock.host.addr", "net.host.ip")),
            port=port,
        )
        direction: Direction = "inbound"
    else:
        # HTTP client span: server.* (or the URL) describe the service being called.
        source = here
        host = text(attrs, "server.address", "net.peer.name")
        port = integer(attrs, "server.port", "net.peer.port")
        if parts is not None:
            host = host or parts.hostname
            port = port if port is not None else _url_port(parts)
        destination = Peer(
            service=clip("destination.service", text(attrs, "peer.service"), MAX_NAME),
            host=clip("destination.host", host or None, MAX_NAME),
            # the socket's peer: network.peer.address (v1.21+), net.sock.peer.addr (v1.18
            # to v1.20), net.peer.ip (before); else server.address when it is an IP
            ip=_ip(text(attrs, "network.peer.address", "net.sock.peer.addr", "net.peer.ip"))
            or _ip(host),
            port=port,
        )
        direction = "outbound"
    outcome, error = _span_outcome(span.status, attrs, status, clip, server=server)
    event = AuditEvent(
        id=span_event_id(span.trace_id, span.span_id, start),
        time_ns=start,
        duration_us=(end - start) // 1000 if end else 0,
        reporter=origin.reporter,
        kind="http",
        direction=direction,
        outcome=outcome,
        source=_peer_or_none(source),
        destination=_peer_or_none(destination),
        http=HTTP(
            method=method,
            path=clip("http.path", path, MAX_TEXT),
            status=status,
            protocol=clip("http.protocol", _protocol(attrs), 16),
            user_agent=clip(
                "http.user_agent", text(attrs, "user_agent.original", "http.user_agent"), MAX_TEXT
            ),
            request_bytes=integer(attrs, "http.request.body.size", "http.request_content_length"),
            response_bytes=integer(
                attrs, "http.response.body.size", "http.response_content_length"
            ),
            request_id=clip(
                "http.request_id", text(attrs, "http.request.header.x-request-id"), MAX_REQUEST_ID
            ),
        ),
        trace=Trace(trace_id=trace_id, span_id=span_id, parent_span_id=parent),
        error=error,
        labels={"http.route": clip.label("http.route", route)} if route else {},
        attested=False,
    )
    return _validated(clip.marked(event))


# Where a server span names its caller, (address, port): the caller behind any proxy first
# (client.*; http.client_ip, from X-Forwarded-For, has no port), then the socket's peer.
_CALLER_KEYS = (
    ("client.address", "client.port"),
    ("http.client_ip", None),
    ("net.peer.ip", "net.peer.port"),
    ("network.peer.address", "network.peer.port"),
    ("net.sock.peer.addr", "net.sock.peer.port"),
)


def _caller(attrs: Mapping[str, AnyValue]) -> Peer:
    """The caller of a server span: its IP with the port of that same address, never the
    IP of a client behind a proxy with the port the proxy connected from."""
    for address, port in _CALLER_KEYS:
        ip = _ip(text(attrs, address))
        if ip is not None:
            return Peer(ip=ip, port=None if port is None else integer(attrs, port))
    return Peer(port=integer(attrs, "client.port", "network.peer.port", "net.peer.port"))


def _span_outcome(
    status: Status,
    attrs: Mapping[str, AnyValue],
    http_status: int | None,
    clip: envoy.Clipper,
    *,
    server: bool,
) -> tuple[Outcome, Error | None]:
    # HTTP semconv, "Status": a server span is an error for 5xx, a client span for 4xx and
    # 5xx; error.type names the class of error (the status code, an exception type, or
    # "_OTHER"). An explicit span status wins over the derivation.
    error_type = text(attrs, "error.type")
    code = status.code
    if code == Status.StatusCode.STATUS_CODE_OK:
        failed = False
    elif code == Status.StatusCode.STATUS_CODE_ERROR or error_type is not None:
        failed = True
    elif http_status is not None:
        failed = http_status >= (500 if server else 400)
    else:
        return "unknown", None
    if not failed:
        return "success", None
    # A status that is no error (a 200 whose body then broke off) is not the error's class.
    errored = http_status is not None and http_status >= 400
    kind = error_type or (str(http_status) if errored else "_OTHER")
    message = clip("error.message", status.message, MAX_TEXT) or ""
    return "failure", Error(type=clip("error.type", kind, 128) or kind, message=message)


def _protocol(attrs: Mapping[str, AnyValue]) -> str | None:
    # semconv v1.21+ network.protocol.*, v1.20 net.protocol.* (renamed), before: http.flavor
    name = text(attrs, "network.protocol.name", "net.protocol.name")
    version = text(attrs, "network.protocol.version", "net.protocol.version", "http.flavor")
    if version is None or (name is not None and name.lower() != "http"):
        return None
    return f"HTTP/{version.removesuffix('.0') if version in ('2.0', '3.0') else version}"


def _path_only(target: str | None) -> str | None:
    # http.target carried path and query; the audit record keeps the path (no query
    # parameters at the default Metadata depth, DESIGN.md "Audit depth").
    if target is None:
        return None
    return target.split("?", 1)[0].split("#", 1)[0] or "/"


def _host_of(authority: str | None) -> str | None:
    if authority is None:
        return None
    if authority.startswith("["):
        return authority[1:].split("]", 1)[0] or None
    return authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority


def _port_of(authority: str) -> int | None:
    """The port an authority (`host:port`, `[v6]:port`) names; None when it names none."""
    if authority.startswith("["):
        port = authority.partition("]")[2].removeprefix(":")
    else:
        port = authority.rpartition(":")[2] if authority.count(":") == 1 else ""
    return int(port) if port.isascii() and port.isdigit() and int(port) < 65536 else None


_DEFAULT_PORTS = {"http": 80, "https": 443}


def _url_port(parts: Any) -> int | None:
    try:
        port = parts.port
    except ValueError:
        raise Unmappable("url.full has an invalid port") from None
    if port is not None:
        return int(port)
    return _DEFAULT_PORTS.get(parts.scheme)


def _peer_or_none(peer: Peer) -> Peer | None:
    return peer if peer != Peer() else None


# --- logs: (c) relayed audit events, (b) Envoy access logs ----------------------------------


def audit_log_record(event: AuditEvent) -> LogRecord:
    """The OTLP log record that carries `event` (case (c)); `auditmesh export otlp` builds on
    this and may add semantic-convention attributes, which the receiver ignores."""
    record = LogRecord(
        time_unix_nano=int(event.time_ns),
        event_name=EVENT_NAME,
        attributes=[
            KeyValue(
                key=EVENT_ATTRIBUTE,
                value=AnyValue(string_value=canonical_bytes(event).decode()),
            )
        ],
    )
    if event.trace is not None:
        record.trace_id = bytes.fromhex(event.trace.trace_id)
        if event.trace.span_id is not None:
            record.span_id = bytes.fromhex(event.trace.span_id)
    return record


def as_received(event: AuditEvent, service_name: str = UNKNOWN_SERVICE) -> AuditEvent:
    """What the receiver stores for `event` relayed by the service `service_name`: the same
    event (same id, so it is logged once however often it is relayed), reported by
    `ingest:otlp:<service.name>` and not attested. What the record claimed instead is kept
    as labels: `relayed.reporter` (its reporter, when another; past the label limit cut,
    ending in "…") and `relayed.attested` ("true", when it said so). Labels the event
    carries already are its own claims, kept as sent: an event relayed twice names the
    reporter claimed on its first relay."""
    reporter = (REPORTER_PREFIX + (service_name or UNKNOWN_SERVICE))[:_MAX_REPORTER]
    labels = event.labels
    if event.reporter != reporter and RELAYED_REPORTER_LABEL not in labels:
        claimed = event.reporter
        if len(claimed) > MAX_LABEL:
            claimed = claimed[: MAX_LABEL - 1] + "…"
        labels = labels | {RELAYED_REPORTER_LABEL: claimed}
    if event.attested and RELAYED_ATTESTED_LABEL not in labels:
        labels = labels | {RELAYED_ATTESTED_LABEL: "true"}
    return msgspec.structs.replace(event, reporter=reporter, attested=False, labels=labels)


# A relayed event that came as JSON of up to this many bytes fits a ledger entry with the
# claim labels: they add two labels, the reporter's value up to MAX_LABEL characters of 6
# bytes at most (a control character's JSON escape); a new reporter of up to _MAX_REPORTER
# such characters, integers written out in full and `time_ns` quoted add less than the rest.
_CLAIMS_FIT = MAX_EVENT_BYTES // 2


def _received(event: AuditEvent, origin: _Origin, size: int) -> AuditEvent:
    """`as_received`, without the claim labels when only they would make the event too
    large for a ledger entry (`size`: at least the bytes of the JSON it came in): a record
    is never refused for what the receiver adds."""
    received = as_received(event, origin.service)
    if (
        size > _CLAIMS_FIT
        and received.labels is not event.labels
        and len(canonical_bytes(received)) > MAX_EVENT_BYTES
    ):
        return msgspec.structs.replace(received, labels=event.labels)
    return received


def log_event(record: LogRecord, origin: _Origin) -> AuditEvent | None:
    """Case (c) when the record carries `EVENT_ATTRIBUTE` or an event's fields, else case (b)
    when it is an Envoy access-log record, else None (an application log: skipped)."""
    for kv in record.attributes:  # a plain scan: the hot path of `auditmesh export otlp`
        if kv.key == EVENT_ATTRIBUTE:
            return _relayed_event(kv.value, origin)
    attrs = attribute_map(record.attributes)
    fields = structured_event_fields(record.body, attrs)
    if fields is not None:
        # as_received sets both: what the record says of them proves nothing either way,
        # and is not refused either; a reporter or attested it may claim stays a claim.
        claimed = fields.get("reporter")
        attested = fields.pop("attested", None) is True
        fields["reporter"] = origin.reporter
        try:
            data = msgspec.json.encode(fields)
            event = decode_event(data)
        except EventError as exc:
            raise Unmappable(f"log record fields are not a valid audit event: {exc}") from None
        except RecursionError:
            raise Unmappable("log record fields are nested too deeply for an audit event") from None
        if isinstance(claimed, str) and claimed:
            event = msgspec.structs.replace(event, reporter=claimed)
        if attested:
            event = msgspec.structs.replace(event, attested=True)
        return _received(event, origin, len(data))
    return _envoy_event(record, attrs, origin)


# The fields every audit event has and no Envoy access log or application log has together.
_EVENT_KEYS = frozenset(("id", "time_ns", "kind", "outcome"))
_EVENT_FIELDS = frozenset(AuditEvent.__struct_fields__)


def structured_event_fields(body: AnyValue, attrs: Mapping[str, AnyValue]) -> dict[str, Any] | None:
    """An audit event's fields as plain JSON values, when the record holds one: as attributes
    (only the event's own field names are taken), as a map body, or as a string body holding
    the event's JSON; None otherwise."""
    if _EVENT_KEYS <= attrs.keys():
        return {key: _plain(value) for key, value in attrs.items() if key in _EVENT_FIELDS}
    kind = body.WhichOneof("value")
    if kind == "kvlist_value":
        fields = {kv.key: _plain(kv.value) for kv in body.kvlist_value.values}
        return fields if _EVENT_KEYS <= fields.keys() else None
    if kind == "string_value" and body.string_value.lstrip().startswith("{"):
        try:
            document = msgspec.json.decode(body.string_value)
        except (msgspec.DecodeError, RecursionError):
            return None  # a log line that only looks like JSON (or nests absurdly): not an event
        if isinstance(document, dict) and _EVENT_KEYS <= document.keys():
            return document
    return None


def _plain(value: AnyValue) -> Any:
    """An OTLP AnyValue as the JSON value it stands for (bytes as base64, as OTLP/JSON)."""
    kind = value.WhichOneof("value")
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "array_value":
        return [_plain(item) for item in value.array_value.values]
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode()
    return None if kind is None else getattr(value, kind)


def _relayed_event(value: AnyValue, origin: _Origin) -> AuditEvent:
    event = _carried_event(value)
    data = value.string_value or value.bytes_value
    # a character of a string is at most 4 bytes of UTF-8
    return _received(event, origin, len(data) * (4 if isinstance(data, str) else 1))


def _carried_event(value: AnyValue) -> AuditEvent:
    """The event an `EVENT_ATTRIBUTE` value carries, as the record sent it."""
    kind = value.WhichOneof("value")
    if kind == "string_value":
        data: bytes | str = value.string_value
    elif kind == "bytes_value":
        data = value.bytes_value
    else:
        raise Unmappable(f"{EVENT_ATTRIBUTE} must be a string holding the event JSON")
    try:
        return decode_event(data)
    except EventError as exc:
        raise Unmappable(f"{EVENT_ATTRIBUTE} is not a valid audit event: {exc}") from None


# (b) Envoy's OpenTelemetry access logger (envoy.access_loggers.open_telemetry) as Istio's
# `envoyOtelAls` provider configures it: `body` is Istio's default TEXT access-log line (or the
# provider's `logFormat.text`), `attributes` are the provider's `logFormat.labels`, and
# `time_unix_nano` is the request's start time; trace_id/span_id are set when the request
# was traced. Istio sets `disable_builtin_labels`, so unless a collector in between adds a
# service.name resource attribute the reporter is `ingest:otlp:unknown_service`.
# Reading the line and interpreting it as a call are `ingest.envoy`'s (`parse_text_line`,
# `parse_json_line`, `to_event`), shared with `auditmesh ingest envoy`.

# Envoy's %START_TIME% default: `[2024-05-01T12:00:00.123Z] "GET …`.
_ENVOY_TEXT = re.compile(r"\[\d{4}-\d{2}-\d{2}T")
# Label names carrying the fields Istio's TEXT line lacks (peer URI SANs, traceparent): the
# same keys as in Istio's JSON access log, e.g. `upstream_peer_uri_san:
# "%UPSTREAM_PEER_URI_SAN%"` under the provider's `logFormat.labels`.
_ENVOY_EXTRA_KEYS = frozenset(envoy.OPTIONAL_JSON_KEYS)
# Labels shaped like Istio's JSON access log (`labels` set to its field names and operators,
# no TEXT body): recognised by these keys.
_ENVOY_JSON_KEYS = frozenset(("response_code", "upstream_cluster", "method", "bytes_sent"))
# The keys `envoy.parse_json_line` reads.
_ENVOY_READ_KEYS = frozenset((*(key for key, _ in envoy.TEXT_FIELDS), *envoy.OPTIONAL_JSON_KEYS))
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?")  # events.LabelKey
_MAX_LABELS = 32


def _envoy_event(
    record: LogRecord, attrs: Mapping[str, AnyValue], origin: _Origin
) -> AuditEvent | None:
    body = record.body
    labels: dict[str, str] = {}
    clip = envoy.Clipper()  # the provider's labels, then the event's own values
    try:
        if body.WhichOneof("value") == "string_value" and _ENVOY_TEXT.match(body.string_value):
            access = envoy.parse_text_line(body.string_value)
            extra, labels = _split_attributes(attrs, clip)
            if extra:
                access = msgspec.structs.replace(access, **extra)
        else:
            fields = attrs
            if body.WhichOneof("value") == "kvlist_value":
                fields = {kv.key: kv.value for kv in body.kvlist_value.values}
            if "start_time" not in fields or not _ENVOY_JSON_KEYS & fields.keys():
                return None  # not an access-log record: an application log, skipped
            access = envoy.parse_json_line(_as_json_line(fields))
        if access.traceparent is None and access.trace_id is None and any(record.trace_id):
            access = msgspec.structs.replace(access, trace_id=record.trace_id.hex())
        event = envoy.to_event(access, origin.reporter, clip)
    except envoy.EnvoyLogError as exc:
        raise Unmappable(f"Envoy access log: {exc}") from None
    if labels:  # valid by construction: label-key pattern checked, values clipped
        event = msgspec.structs.replace(event, labels=labels | event.labels)
    return event


def _split_attributes(
    attrs: Mapping[str, AnyValue], clip: envoy.Clipper
) -> tuple[dict[str, str], dict[str, str]]:
    """The provider's labels in one pass: those carrying fields the TEXT line lacks
    (`_ENVOY_EXTRA_KEYS`, non-empty), and the others (e.g. Istio's sample `pod`,
    `namespace`, `cluster`) as event labels: string values under valid label keys."""
    extra: dict[str, str] = {}
    labels: dict[str, str] = {}
    for key, value in attrs.items():
        found = text_of(value)
        if key in _ENVOY_EXTRA_KEYS:
            if found:
                extra[key] = found
        elif found and found != "-" and len(labels) < _MAX_LABELS and _is_label_key(key):
            labels[key] = clip.label(key, found)
    return extra, labels


@functools.lru_cache(maxsize=1024)  # a provider sends the same few label names each time
def _is_label_key(key: str) -> bool:
    return _LABEL_KEY.fullmatch(key) is not None


def _as_json_line(fields: Mapping[str, AnyValue]) -> str:
    """The record as the JSON access-log line Envoy would write; a value of the wrong type
    (a double status, a bool) goes in as it is, for the line parser to refuse by name. A
    value JSON cannot hold (bytes, a map; NaN and infinity, which would be null: unset) is
    refused here under a key the parser reads, and left aside under any other."""
    document: dict[str, str | int | float | bool] = {}
    for key, value in fields.items():
        scalar = _scalar(value)
        if isinstance(scalar, bytes) or value.WhichOneof("value") == "kvlist_value":
            what = "bytes" if isinstance(scalar, bytes) else "a map"
        elif isinstance(scalar, float) and not math.isfinite(scalar):
            what = f"the number {scalar}"
        else:
            if scalar is not None:  # None: no value, or an empty array (unset)
                document[key] = scalar
            continue
        if key in _ENVOY_READ_KEYS:
            raise envoy.EnvoyLogError(f"{key}: expected a string or an integer, got {what}")
    return msgspec.json.encode(document).decode()
