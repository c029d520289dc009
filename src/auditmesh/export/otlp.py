"""AuditEvent -> OTLP LogRecord (pure), and a sender over OTLP/HTTP or OTLP/gRPC.

Place in the house: an exporter, reading committed ledger entries (`auditmesh export otlp`
drives it) and handing them to any OpenTelemetry Collector, or to another auditmesh server.

Each event becomes one LogRecord (OTLP logs data model):
    time_unix_nano        the event's time
    event_name            `auditmesh.audit_event` (ingest.otlp.EVENT_NAME)
    trace_id, span_id     from the event's trace context
    severity              INFO, or WARN when the call failed or was denied
    body                  one readable line: "GET /orders 200 frontend -> orders allow"
    attributes            OpenTelemetry semantic conventions where one exists
                          (http.request.method, url.path, http.response.status_code,
                          client.address, server.address, error.type, tls.*, ...), plus
                          auditmesh.* names for what the conventions lack, and
                          `auditmesh.event` (ingest.otlp.EVENT_ATTRIBUTE) holding the
                          event's canonical JSON -- the exact Merkle leaf data, so the
                          record can be checked against the log's proofs, and so that
                          auditmesh's own OTLP receiver stores the very same event (same
                          id, same fields; it sets `reporter` and `attested` itself and
                          keeps what the record said of them as `relayed.*` labels).
Resource: service.name `auditmesh`, service.version, and `auditmesh.log.origin`.

Sending follows the OTLP specification: OTLP/HTTP posts binary protobuf to `<endpoint>/v1/logs`
("OTLP/HTTP Request"); OTLP/gRPC calls `LogsService/Export`. A batch counts as delivered only
on full success. A partial success that rejected records (`PartlyRejected`) is never sent
again (OTLP "Partial Success": the client MUST NOT retry it), so it counts as answered, and
the caller says which entries it held. The retryable failures (HTTP 429/502/503/504, gRPC
UNAVAILABLE and friends, "Retryable Response Codes") are retried with exponential backoff
with a random jitter ("OTLP/HTTP Connection"), honouring Retry-After and, over gRPC, the
server's RetryInfo (which also makes RESOURCE_EXHAUSTED retryable).
An HTTP 413 (a proxy's smaller body limit) makes the sender send the batch in smaller
requests, and remember the limit for later batches.
"""

from __future__ import annotations

import gzip
import random
import re
import time
from collections.abc import Callable, Sequence
from datetime import UTC
from email.utils import parsedate_to_datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Literal
from urllib.parse import urlsplit

import grpc
import httpx
from google.protobuf.message import DecodeError
from google.rpc import status_pb2
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import (
    AnyValue,
    ArrayValue,
    InstrumentationScope,
    KeyValue,
)
from opentelemetry.proto.logs.v1.logs_pb2 import (
    SEVERITY_NUMBER_INFO,
    SEVERITY_NUMBER_WARN,
    LogRecord,
    ResourceLogs,
    ScopeLogs,
)
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from auditmesh.events import AuditEvent
from auditmesh.ingest.otlp import (
    EVENT_ATTRIBUTE,
    LOG_INDEX_ATTRIBUTE,
    SENT_BACK,
    audit_log_record,
)

Protocol = Literal["http", "grpc"]
AttrValue = str | int | bool | list[str]

SERVICE_NAME = "auditmesh"
SCOPE_NAME = "auditmesh.export.otlp"
# auditmesh attributes for what the semantic conventions have no name for.
ATTR_LOG_ORIGIN = "auditmesh.log.origin"  # resource: the log's C2SP checkpoint origin
ATTR_LOG_INDEX = LOG_INDEX_ATTRIBUTE  # the entry's ledger index
ATTR_LEAF_HASH = "auditmesh.log.leaf_hash"  # hex RFC 9162 leaf hash of EVENT_ATTRIBUTE
ATTR_EVENT_ID = "auditmesh.event.id"
ATTR_KIND = "auditmesh.event.kind"
ATTR_OUTCOME = "auditmesh.event.outcome"
ATTR_REPORTER = "auditmesh.event.reporter"
ATTR_ATTESTED = "auditmesh.event.attested"
ATTR_DECISION = "auditmesh.authz.decision"
ATTR_POLICY = "auditmesh.authz.policy"
ATTR_SOURCE_ID = "auditmesh.source.identity"  # SPIFFE ID
ATTR_SOURCE_SERVICE = "auditmesh.source.service"
ATTR_DEST_ID = "auditmesh.destination.identity"
ATTR_DEST_SERVICE = "auditmesh.destination.service"

LOGS_PATH = "/v1/logs"  # OTLP/HTTP default path for logs
GRPC_METHOD = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
MAX_GRPC_BYTES = 4 * 1024 * 1024  # OTLP/gRPC: receivers typically enforce 4 MiB
MAX_HTTP_BYTES = 20 * 1024 * 1024  # OTLP/HTTP: the recommended default limit


def _package_version() -> str:
    try:
        return version("auditmesh")
    except PackageNotFoundError:
        return "0"


def _any(value: AttrValue) -> AnyValue:
    if isinstance(value, bool):
        return AnyValue(bool_value=value)
    if isinstance(value, int):
        return AnyValue(int_value=value)
    if isinstance(value, list):
        return AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=v) for v in value]))
    return AnyValue(string_value=value)


def _host_of(authority: str) -> str:
    if authority.startswith("["):
        return authority[1 : authority.find("]")] if "]" in authority else authority
    return authority.split(":", 1)[0] if authority.count(":") == 1 else authority


_TLS_VERSION = re.compile(r"^(TLS|SSL)v?(\d(?:\.\d)?)$", re.IGNORECASE)
_HTTP_VERSION = re.compile(r"^(?:HTTP/)?(\d(?:\.\d)?)$", re.IGNORECASE)
_ALPN_HTTP = {"h2": "2", "h2c": "2", "h3": "3"}


def _http_version(protocol: str | None) -> str | None:
    if not protocol:
        return None
    match = _HTTP_VERSION.match(protocol)
    return _ALPN_HTTP.get(protocol.lower()) or (match.group(1) if match else None)


def semconv_attributes(event: AuditEvent) -> dict[str, AttrValue]:
    """Attributes under OpenTelemetry semantic-convention names (attribute registry).

    The caller is the client and the callee the server (semconv "client.*"/"server.*"),
    whichever side reported the call.
    """
    attrs: dict[str, AttrValue] = {}
    src, dst, http, tls = event.source, event.destination, event.http, event.tls
    if src is not None:
        address = src.ip or src.host
        if address:
            attrs["client.address"] = address
        if src.port is not None:
            attrs["client.port"] = src.port
    if dst is not None:
        address = _host_of(dst.host) if dst.host else dst.ip
        if address:
            attrs["server.address"] = address
        if dst.port is not None:
            attrs["server.port"] = dst.port
    if event.kind in ("http", "tcp"):
        attrs["network.transport"] = "tcp"
    if http is not None:
        # HTTP semconv (stable): method, path/query, status, body sizes, protocol.
        if http.method:
            attrs["http.request.method"] = http.method
        if http.path is not None:
            path, question, query = http.path.partition("?")
            attrs["url.path"] = path
            if question:
                attrs["url.query"] = query
        if http.status is not None:
            attrs["http.response.status_code"] = http.status
        if http.request_bytes is not None:
            attrs["http.request.body.size"] = http.request_bytes
        if http.response_bytes is not None:
            attrs["http.response.body.size"] = http.response_bytes
        version = _http_version(http.protocol)
        if version is not None:  # semconv: network.protocol.name/version, e.g. http 1.1
            attrs["network.protocol.name"] = "http"
            attrs["network.protocol.version"] = version
        if http.user_agent:
            attrs["user_agent.original"] = http.user_agent
        if http.request_id:  # semconv http.request.header.<key>: a string array
            attrs["http.request.header.x-request-id"] = [http.request_id]
    if tls is not None:
        # TLS semconv: protocol name/version; peer certificate hash in uppercase hex.
        attrs["tls.established"] = True
        match = _TLS_VERSION.match(tls.version or "")
        if match:  # "TLSv1.3" -> tls, 1.3
            attrs["tls.protocol.name"] = match.group(1).lower()
            attrs["tls.protocol.version"] = match.group(2)
        side = {"inbound": "client", "outbound": "server"}.get(event.direction or "")
        if side is not None and tls.peer_cert_sha256:
            attrs[f"tls.{side}.hash.sha256"] = tls.peer_cert_sha256.upper()
    if event.error is not None:
        # error.type (stable): the class of error; error.message: its description.
        attrs["error.type"] = event.error.type
        if event.error.message:
            attrs["error.message"] = event.error.message
    return attrs


def auditmesh_attributes(event: AuditEvent, *, index: int, leaf: bytes) -> dict[str, AttrValue]:
    """auditmesh.* attributes: what the conventions do not name (identities, decision, log)."""
    attrs: dict[str, AttrValue] = {
        ATTR_EVENT_ID: event.id,
        ATTR_KIND: event.kind,
        ATTR_OUTCOME: event.outcome,
        ATTR_REPORTER: event.reporter,
        ATTR_ATTESTED: event.attested,
        ATTR_LOG_INDEX: index,
        ATTR_LEAF_HASH: leaf.hex(),
    }
    for key, value in (
        (ATTR_SOURCE_ID, event.source.identity if event.source else None),
        (ATTR_SOURCE_SERVICE, event.source.service if event.source else None),
        (ATTR_DEST_ID, event.destination.identity if event.destination else None),
        (ATTR_DEST_SERVICE, event.destination.service if event.destination else None),
        (ATTR_DECISION, event.authz.decision if event.authz else None),
        (ATTR_POLICY, event.authz.policy if event.authz else None),
    ):
        if value:
            attrs[key] = value
    return attrs


def _body(event: AuditEvent) -> str:
    parts: list[str] = []
    if event.http is not None:
        parts += [event.http.method or "", event.http.path or ""]
        parts.append(str(event.http.status) if event.http.status is not None else "")
    else:
        parts.append(event.kind)
    src = event.source.service or event.source.identity if event.source else None
    dst = event.destination.service or event.destination.identity if event.destination else None
    parts.append(f"{src or '?'} -> {dst or '?'}")
    if event.authz is not None:
        parts.append(event.authz.decision)
    parts.append(event.outcome)
    return " ".join(p for p in parts if p)


def log_record(event: AuditEvent, *, index: int, data: bytes, leaf: bytes) -> LogRecord:
    """One ledger entry as an OTLP LogRecord. `data` is the stored canonical JSON (the leaf
    data), carried verbatim in `auditmesh.event`; `leaf` is its RFC 9162 leaf hash."""
    record = audit_log_record(event)  # the receiver's contract: EVENT_ATTRIBUTE, event_name
    for kv in record.attributes:
        if kv.key == EVENT_ATTRIBUTE:
            kv.value.string_value = data.decode()
    failed = event.outcome == "failure" or (
        event.authz is not None and event.authz.decision == "deny"
    )
    record.severity_number = SEVERITY_NUMBER_WARN if failed else SEVERITY_NUMBER_INFO
    record.severity_text = "WARN" if failed else "INFO"
    record.body.string_value = _body(event)
    attrs = {**semconv_attributes(event), **auditmesh_attributes(event, index=index, leaf=leaf)}
    record.attributes.extend(KeyValue(key=k, value=_any(v)) for k, v in attrs.items())
    return record


def log_records_request(
    entries: Sequence[tuple[int, AuditEvent, bytes, bytes]], *, origin: str
) -> ExportLogsServiceRequest:
    """An ExportLogsServiceRequest for (index, event, canonical bytes, leaf hash) entries."""
    resource = Resource(
        attributes=[
            KeyValue(key="service.name", value=_any(SERVICE_NAME)),
            KeyValue(key="service.version", value=_any(_package_version())),
            KeyValue(key=ATTR_LOG_ORIGIN, value=_any(origin)),
        ]
    )
    scope = InstrumentationScope(name=SCOPE_NAME, version=_package_version())
    records = [log_record(e, index=i, data=d, leaf=h) for i, e, d, h in entries]
    return ExportLogsServiceRequest(
        resource_logs=[
            ResourceLogs(
                resource=resource, scope_logs=[ScopeLogs(scope=scope, log_records=records)]
            )
        ]
    )


def split(request: ExportLogsServiceRequest) -> tuple[ExportLogsServiceRequest, ...]:
    """Two halves of a one-resource, one-scope request (to fit a receiver's size limit)."""
    resource_logs = request.resource_logs[0]
    scope_logs = resource_logs.scope_logs[0]
    records = list(scope_logs.log_records)
    middle = len(records) // 2
    halves = []
    for part in (records[:middle], records[middle:]):
        halves.append(
            ExportLogsServiceRequest(
                resource_logs=[
                    ResourceLogs(
                        resource=resource_logs.resource,
                        scope_logs=[ScopeLogs(scope=scope_logs.scope, log_records=part)],
                    )
                ]
            )
        )
    return tuple(halves)


# -- sending ----------------------------------------------------------------------------


class ExportError(Exception):
    """The receiver did not take a batch in full; `retryable` per the OTLP spec.

    `delivered` counts the batch's leading log records the receiver did take in full (a
    batch split to fit its size limit goes in several requests, in order): the caller
    moves its cursor past them, so that they are not sent a second time."""

    def __init__(self, message: str, *, retryable: bool = False, delivered: int = 0) -> None:
        super().__init__(message)
        self.retryable = retryable
        self.delivered = delivered


class PartlyRejected(ExportError):
    """The receiver took a request in part: `rejected` of its `count` records were refused,
    for `reason`. OTLP forbids sending them again, so `delivered` includes that request's
    records too (and those of the requests before it in a split batch)."""

    def __init__(self, rejected: int, count: int, reason: str) -> None:
        super().__init__(
            f"the receiver rejected {rejected} of {count} log records: {reason}", delivered=count
        )
        self.rejected = rejected
        self.count = count
        self.reason = reason

    @property
    def sent_back(self) -> bool:
        """An auditmesh receiver found records exported from its own ledger among them
        (ingest.otlp `SENT_BACK`): the endpoint is the server the export came from."""
        return SENT_BACK in self.reason


_JITTER = 0.5  # each backoff step is its nominal delay times 0.5 to 1.5 (as the Collector's)
_RETRYABLE_HTTP = {429, 502, 503, 504}  # OTLP/HTTP "Retryable Response Codes"
_RETRYABLE_GRPC = {  # OTLP/gRPC "Failures": retryable status codes
    grpc.StatusCode.CANCELLED,
    grpc.StatusCode.DEADLINE_EXCEEDED,
    grpc.StatusCode.ABORTED,
    grpc.StatusCode.OUT_OF_RANGE,
    grpc.StatusCode.UNAVAILABLE,
    grpc.StatusCode.DATA_LOSS,
}


def _check_response(response: ExportLogsServiceResponse, count: int) -> None:
    # OTLP "Partial Success": rejected records MUST NOT be retried, and are not skipped
    # silently either: the caller hears the count and the server's reason.
    rejected = response.partial_success.rejected_log_records
    if rejected:
        reason = response.partial_success.error_message or "no reason given"
        raise PartlyRejected(rejected, count, reason)


def logs_url(endpoint: str) -> str:
    """OTLP/HTTP: a base endpoint gets `/v1/logs` appended; a URL already ending in it is
    used as is (the spec's OTEL_EXPORTER_OTLP_ENDPOINT / ..._LOGS_ENDPOINT rules)."""
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(
            f"{endpoint!r} is not an http:// or https:// URL (e.g. http://127.0.0.1:4318)"
        )
    if parts.path.rstrip("/").endswith(LOGS_PATH):
        return endpoint
    return endpoint.rstrip("/") + LOGS_PATH


def grpc_target(endpoint: str) -> tuple[str, bool]:
    """(host:port, use TLS) from `http://h:p`, `https://h:p` or a bare `h:p`."""
    if "://" not in endpoint:
        return endpoint, False
    parts = urlsplit(endpoint)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ValueError(f"{endpoint!r} is not a gRPC endpoint (http://host:4317 or host:4317)")
    return parts.netloc, parts.scheme == "https"


class OtlpSender:
    """Sends ExportLogsServiceRequests until fully accepted; raises `ExportError` if not."""

    def __init__(
        self,
        endpoint: str,
        *,
        protocol: Protocol = "http",
        headers: dict[str, str] | None = None,
        timeout_s: float = 10.0,
        compression: Literal["none", "gzip"] = "none",
        attempts: int = 6,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.protocol = protocol
        self._headers = dict(headers or {})
        self._timeout = timeout_s
        self._gzip = compression == "gzip"
        self._attempts = attempts
        self._sleep = sleep
        self._client: httpx.Client | None = None
        self._channel: grpc.Channel | None = None
        if protocol == "http":
            self._url = logs_url(endpoint)
            self._client = httpx.Client(timeout=timeout_s, transport=transport)
            self.max_bytes = MAX_HTTP_BYTES
        else:
            target, secure = grpc_target(endpoint)
            options = [("grpc.max_send_message_length", MAX_GRPC_BYTES)]
            self._channel = (
                grpc.secure_channel(target, grpc.ssl_channel_credentials(), options=options)
                if secure
                else grpc.insecure_channel(target, options=options)
            )
            self._export_rpc = self._channel.unary_unary(
                GRPC_METHOD,
                request_serializer=ExportLogsServiceRequest.SerializeToString,
                response_deserializer=ExportLogsServiceResponse.FromString,
            )
            self.max_bytes = MAX_GRPC_BYTES

    def close(self) -> None:
        if self._client is not None:
            self._client.close()
        if self._channel is not None:
            self._channel.close()

    def export(self, request: ExportLogsServiceRequest) -> None:
        """Deliver `request`, split in halves while it is over the receiver's size limit."""
        count = _count(request)
        if request.ByteSize() > self.max_bytes - 1024 and count > 1:
            delivered = 0
            for half in split(request):
                try:
                    self.export(half)
                except ExportError as exc:
                    exc.delivered += delivered  # the halves before this one were taken
                    raise
                delivered += _count(half)
            return
        delay = 0.5
        for attempt in range(1, self._attempts + 1):
            try:
                self._send_once(request, count)
                return
            except _TooLarge as too_large:
                # RFC 9110 §15.5.14 (413): a proxy or receiver with a smaller body limit than
                # OTLP's default (nginx: 1 MiB). Not a retry of the same request (OTLP/HTTP
                # "Failures" forbids that for 4xx) but smaller ones: the limit is learnt, so
                # later batches are split before they are sent. One record too large is an error.
                if count == 1:
                    raise ExportError(too_large.message) from None
                self.max_bytes = min(self.max_bytes, request.ByteSize() // 2 + 1024)
                self.export(request)
                return
            except _Retry as retry:
                if attempt == self._attempts:
                    raise ExportError(
                        f"{retry.message} (gave up after {attempt} attempts)", retryable=True
                    ) from None
                # OTLP/HTTP Connection: "The interval between retries must have a random
                # jitter" (exporters cut off by one outage must not all come back at once);
                # a server's Retry-After or RetryInfo is waited as given.
                jittered = delay * random.uniform(1 - _JITTER, 1 + _JITTER)
                self._sleep(retry.after if retry.after is not None else jittered)
                delay = min(delay * 2, 30.0)

    def _send_once(self, request: ExportLogsServiceRequest, count: int) -> None:
        if self._client is not None:
            self._post(request, count)
        else:
            self._call(request, count)

    def _post(self, request: ExportLogsServiceRequest, count: int) -> None:
        assert self._client is not None
        body = request.SerializeToString()
        headers = {**self._headers, "Content-Type": "application/x-protobuf"}
        if self._gzip:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        try:
            answer = self._client.post(self._url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise _Retry(f"cannot reach {self._url}: {exc}") from None
        if answer.status_code == 200:
            response = ExportLogsServiceResponse()
            try:
                response.ParseFromString(answer.content)
            except DecodeError as exc:
                raise ExportError(
                    f"{self._url} answered 200 with no OTLP response: {exc}"
                ) from None
            _check_response(response, count)
            return
        message = f"{self._url} answered {answer.status_code}: {_status_message(answer)}"
        if answer.status_code == 413:
            raise _TooLarge(message)
        if answer.status_code in _RETRYABLE_HTTP:
            raise _Retry(message, _retry_after(answer.headers.get("retry-after")))
        raise ExportError(message)

    def _call(self, request: ExportLogsServiceRequest, count: int) -> None:
        metadata = tuple(self._headers.items())
        compression = grpc.Compression.Gzip if self._gzip else None
        try:
            response = self._export_rpc(
                request, timeout=self._timeout, metadata=metadata, compression=compression
            )
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else grpc.StatusCode.UNKNOWN
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            message = f"gRPC {code.name}: {details}"
            # OTLP/gRPC Throttling: the server's RetryInfo.retry_delay is the wait; with it,
            # RESOURCE_EXHAUSTED is retryable too ("the server can recover"), never without.
            delay = _grpc_retry_delay(exc)
            if code in _RETRYABLE_GRPC or (
                code == grpc.StatusCode.RESOURCE_EXHAUSTED and delay is not None
            ):
                raise _Retry(message, delay) from None
            raise ExportError(message) from None
        _check_response(response, count)


def _grpc_retry_delay(exc: grpc.RpcError) -> float | None:
    """Seconds of the google.rpc.RetryInfo in a gRPC error's status details (the
    `grpc-status-details-bin` trailer), capped at a minute; None when there is none."""
    trailers: Sequence[tuple[str, str | bytes]] = (
        (exc.trailing_metadata() or ()) if isinstance(exc, grpc.Call) else ()
    )
    for key, value in trailers:
        if key != "grpc-status-details-bin" or not isinstance(value, bytes):
            continue
        status = status_pb2.Status()
        try:
            status.ParseFromString(value)
        except DecodeError:
            return None
        for detail in status.details:
            info = RetryInfo()
            if detail.Unpack(info):
                return min(max(info.retry_delay.ToTimedelta().total_seconds(), 0.0), 60.0)
    return None


def _count(request: ExportLogsServiceRequest) -> int:
    return sum(len(s.log_records) for r in request.resource_logs for s in r.scope_logs)


class _Retry(Exception):
    def __init__(self, message: str, after: float | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.after = after


class _TooLarge(Exception):
    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


def _retry_after(value: str | None, now: Callable[[], float] = time.time) -> float | None:
    """RFC 9110 §10.2.3: Retry-After = HTTP-date / delay-seconds, capped at a minute."""
    if value is None:
        return None
    value = value.strip()
    if value.isdigit():
        return min(float(value), 60.0)
    try:
        when = parsedate_to_datetime(value)  # IMF-fixdate and the obsolete forms (§5.6.7)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # RFC 9110 §5.6.7: an HTTP-date is always UTC
        when = when.replace(tzinfo=UTC)
    return min(max(when.timestamp() - now(), 0.0), 60.0)


def _status_message(answer: httpx.Response) -> str:
    """OTLP/HTTP failures carry a google.rpc.Status; fall back to the text."""
    if answer.headers.get("content-type", "").startswith("application/x-protobuf"):
        status = status_pb2.Status()
        try:
            status.ParseFromString(answer.content)
            if status.message:
                return status.message
        except DecodeError:
            pass
    return answer.text[:500] or answer.reason_phrase
