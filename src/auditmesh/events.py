"""The audit event: one call between services, as the ledger stores it.

Every producer (sidecar, ingest adapters, the server's own audit of reads and policy
changes) builds an `AuditEvent`; the collector validates incoming ones with
`decode_event` / `decode_batch`; the sequencer stores `canonical_bytes(event)` as the
Merkle leaf data. Imports nothing of the project (DESIGN.md, direction of imports).

Canonical bytes are RFC 8785 (JCS). Events carry no floats. Integers that may exceed
I-JSON's safe range (RFC 7493 §2.2) — only `time_ns` — are written as decimal strings,
as the proto3 JSON mapping (and so OTLP/JSON) writes int64; input accepts both forms.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Annotated, Any, Literal, TypeAlias

import msgspec
from msgspec import Meta, Struct

Kind: TypeAlias = Literal[
    "http", "tcp", "authn", "identity", "policy_change", "audit_read", "system"
]
Direction: TypeAlias = Literal["inbound", "outbound"]
Outcome: TypeAlias = Literal["success", "failure", "unknown"]
Decision: TypeAlias = Literal["allow", "deny", "audit"]

# Length limits of the fields whose values come off the wire; producers clip to them
# (proxy/record.py), so an oversized header cannot make an event invalid and so unaudited.
MAX_TEXT = 4096  # path, user agent, error message
MAX_NAME = 253  # a DNS name: service, namespace, host
MAX_METHOD = 32
MAX_REQUEST_ID = 256
Text = Annotated[str, Meta(max_length=MAX_TEXT)]
ShortText = Annotated[str, Meta(min_length=1, max_length=MAX_NAME)]
Count = Annotated[int, Meta(ge=0, le=2**53 - 1)]
Port = Annotated[int, Meta(ge=0, le=65535)]
Status = Annotated[int, Meta(ge=100, le=599)]
# RFC 9562 §5.7: UUIDv7 in its canonical lowercase text form.
EVENT_ID_PATTERN = r"^[0-9a-f]{8}-[0-9a-f]{4}-7[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
EventId = Annotated[str, Meta(pattern=EVENT_ID_PATTERN)]
SpiffeId = Annotated[str, Meta(pattern=r"^spiffe://[a-z0-9._-]+(/[^/?#]+)*$", max_length=2048)]
Sha256Hex = Annotated[str, Meta(pattern=r"^[0-9a-f]{64}$")]
# W3C Trace Context §3.2.2.3–4: lowercase hex, 16 and 8 bytes.
TraceId = Annotated[str, Meta(pattern=r"^[0-9a-f]{32}$")]
SpanId = Annotated[str, Meta(pattern=r"^[0-9a-f]{16}$")]
# Kubernetes-style label keys: ASCII only, which also keeps JCS key order (UTF-16 code
# units, RFC 8785 §3.2.3) identical to Python's code-point order.
LabelKey = Annotated[
    str, Meta(pattern=r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,251}[A-Za-z0-9])?$", max_length=253)
]
MAX_LABEL = 1024
LabelValue = Annotated[str, Meta(max_length=MAX_LABEL)]


if TYPE_CHECKING:  # callers pass plain ints; __post_init__ wraps them
    UnixNanos = int
else:

    class UnixNanos(int):
        """Nanoseconds since the Unix epoch; written to JSON as a decimal string."""


class _Part(
    Struct, frozen=True, kw_only=True, omit_defaults=True, forbid_unknown_fields=True, gc=False
):
    """Common settings: immutable, keyword-only, absent fields omitted, unknown refused.

    `gc=False`: parts hold only strings, numbers, other parts and the labels dict, so they
    are never in a reference cycle. Left untracked, a decoded batch sets off the cyclic
    garbage collector less often: `decode_batch` takes about 10 % less time."""


class Peer(_Part, frozen=True):
    """One end of a call. `identity` is the SPIFFE ID proven by mTLS, when there was one."""

    identity: SpiffeId | None = None
    service: ShortText | None = None
    namespace: ShortText | None = None
    ip: Annotated[str, Meta(max_length=45)] | None = None
    port: Port | None = None
    host: ShortText | None = None  # destination only: the authority the caller asked for


class TLS(_Part, frozen=True):
    mutual: bool = False
    version: Annotated[str, Meta(max_length=16)] | None = None  # e.g. "TLSv1.3"
    peer_cert_sha256: Sha256Hex | None = None
    peer_not_after: Count | None = None  # Unix seconds


class HTTP(_Part, frozen=True):
    method: Annotated[str, Meta(min_length=1, max_length=MAX_METHOD)] | None = None
    path: Text | None = None
    status: Status | None = None
    request_bytes: Count | None = None
    response_bytes: Count | None = None
    protocol: Annotated[str, Meta(max_length=16)] | None = None  # "HTTP/1.1", "HTTP/2"
    user_agent: Text | None = None
    request_id: Annotated[str, Meta(max_length=MAX_REQUEST_ID)] | None = None
    request_body_sha256: Sha256Hex | None = None  # DESIGN.md "Audit depth": digest, no data
    response_body_sha256: Sha256Hex | None = None


class TCP(_Part, frozen=True):
    sent_bytes: Count = 0  # by the caller (source → destination)
    received_bytes: Count = 0  # by the caller (destination → source)
    end: Annotated[str, Meta(max_length=64)] | None = None  # how the connection ended


class DryRun(_Part, frozen=True):
    decision: Decision
    policy: ShortText | None = None
    rule: Count | None = None


class Authz(_Part, frozen=True):
    decision: Decision
    policy: ShortText | None = None  # "namespace/name"
    rule: Count | None = None
    dry_run: DryRun | None = None


class Trace(_Part, frozen=True):
    trace_id: TraceId
    span_id: SpanId | None = None
    parent_span_id: SpanId | None = None


class Error(_Part, frozen=True):
    type: Annotated[str, Meta(min_length=1, max_length=128)]
    message: Text = ""


class AuditEvent(_Part, frozen=True):
    """One audited action. `id` is the dedup key: the ledger holds each id once."""

    id: EventId
    time_ns: UnixNanos
    reporter: Annotated[str, Meta(min_length=1, max_length=2048)]
    kind: Kind
    outcome: Outcome
    duration_us: Count = 0
    direction: Direction | None = None
    source: Peer | None = None
    destination: Peer | None = None
    tls: TLS | None = None
    http: HTTP | None = None
    tcp: TCP | None = None
    authz: Authz | None = None
    trace: Trace | None = None
    error: Error | None = None
    labels: dict[LabelKey, LabelValue] = {}
    attested: bool = False  # True only when our own sidecar observed the call

    def __post_init__(self) -> None:
        if type(self.time_ns) is not UnixNanos:
            msgspec.structs.force_setattr(self, "time_ns", UnixNanos(self.time_ns))
        if not 0 <= self.time_ns < 2**63:
            raise ValueError("time_ns must be within 0 .. 2^63-1 nanoseconds")


MAX_EVENT_BYTES = 0xFFFF
"""The largest canonical event: a ledger entry, and C2SP tlog-tiles entry bundles give each
entry a 16-bit length. A larger one could be stored but never served to a verifier."""


def checked_size(data: bytes, *, line: int | None = None) -> bytes:
    """`data` (an event's canonical bytes), or EventError if it is too large to be an entry."""
    if len(data) > MAX_EVENT_BYTES:
        raise EventError(
            f"the event is {len(data)} bytes in canonical form; the limit is {MAX_EVENT_BYTES} "
            "(a tlog-tiles entry): send fewer or shorter labels and values (control "
            "characters in a path or header take 6 bytes each as JSON escapes)",
            line=line,
        )
    return data


class EventError(ValueError):
    """An incoming event is invalid. `where` says which line/element and field."""

    def __init__(self, message: str, *, line: int | None = None) -> None:
        self.line = line
        super().__init__(f"line {line}: {message}" if line is not None else message)


def _enc_hook(obj: object) -> object:
    if isinstance(obj, UnixNanos):
        return str(int(obj))
    raise NotImplementedError(f"cannot encode {type(obj).__name__}")


def _dec_hook(tp: type, obj: object) -> object:
    if tp is UnixNanos:
        if isinstance(obj, int) and not isinstance(obj, bool):
            return UnixNanos(obj)
        if isinstance(obj, str) and obj.isascii() and obj.isdigit() and len(obj) <= 19:
            if len(obj) > 1 and obj[0] == "0":
                raise ValueError("leading zeros are not allowed")
            return UnixNanos(obj)
        raise ValueError("expected nanoseconds as a decimal string or integer")
    raise NotImplementedError(f"cannot decode {tp}")


_ENCODER = msgspec.json.Encoder(enc_hook=_enc_hook, order="sorted")
_DECODER = msgspec.json.Decoder(AuditEvent, dec_hook=_dec_hook)
_LIST_DECODER = msgspec.json.Decoder(list[AuditEvent], dec_hook=_dec_hook)


def canonical_bytes(event: AuditEvent) -> bytes:
    """RFC 8785 canonical JSON of the event: the Merkle leaf data.

    JCS §3.2.2 serialises strings and integers as msgspec does (checked against the
    `rfc8785` package by property tests); §3.2.3 key order is guaranteed by ASCII keys.
    """
    return _ENCODER.encode(event)


def to_json_dict(event: AuditEvent) -> dict[str, Any]:
    """The event as plain JSON values (what `canonical_bytes` serialises)."""
    result: dict[str, Any] = msgspec.to_builtins(event, enc_hook=_enc_hook)
    return result


def decode_event(data: bytes | str) -> AuditEvent:
    """Parse and validate one event; the error names the offending field (`$.http.status`)."""
    try:
        return _DECODER.decode(data)
    except (msgspec.ValidationError, msgspec.DecodeError, ValueError) as exc:
        raise EventError(str(exc)) from None


def decode_batch(body: bytes) -> list[AuditEvent]:
    """A batch is a JSON array of events or NDJSON (one event per line).

    All or nothing: the first invalid event raises `EventError` naming its line (NDJSON)
    or array position (JSON array, reported as line 1 with `$[i]` in the path).
    """
    stripped = body.lstrip()
    if stripped.startswith(b"["):
        try:
            return _LIST_DECODER.decode(body)
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError, RecursionError) as exc:
            raise EventError(str(exc), line=_array_error_line(body, str(exc))) from None
    events = []
    for number, line in _lines(body):
        try:
            events.append(_DECODER.decode(line))
        except (msgspec.ValidationError, msgspec.DecodeError, ValueError, RecursionError) as exc:
            hint = _PRETTY_HINT if "truncated" in str(exc) else ""
            raise EventError(f"{exc}{hint}", line=number) from None
    return events


_PRETTY_HINT = (
    " (NDJSON takes one whole event per line: send a pretty-printed event or batch as a "
    "JSON array, [ … ])"
)


_ELEMENT = re.compile(r" - at `\$\[(\d+)\]")  # msgspec: "… - at `$[7].http.status`"


def _array_error_line(body: bytes, message: str) -> int:
    """The line where the array element named in `message` (`… - at $[7].http.status`)
    starts, so a pretty-printed batch's error points at the right line; 1 if unknown."""
    found = _ELEMENT.search(message)
    try:
        elements = msgspec.json.decode(body, type=list[msgspec.Raw])
    except (msgspec.ValidationError, msgspec.DecodeError, RecursionError):
        return 1  # e.g. `[[[[…` nested past the decoder's depth
    if found is None or int(found.group(1)) >= len(elements):
        return 1
    start = end = 0
    for element in elements[: int(found.group(1)) + 1]:  # Raw: slices of `body`, in order
        start = body.index(bytes(element), end)
        end = start + len(element)
    return body.count(b"\n", 0, start) + 1


def _lines(body: bytes) -> Iterator[tuple[int, bytes]]:
    for number, line in enumerate(body.split(b"\n"), start=1):
        if line.strip():
            yield number, line


def encode_ndjson(events: list[AuditEvent]) -> bytes:
    return b"".join(_ENCODER.encode(e) + b"\n" for e in events)


class _EntropyBuffer(threading.local):
    """os.urandom drawn 4 KiB at a time, per thread: one getrandom(2) per ~400 ids, not one
    each. Still the kernel's CSPRNG (RFC 9562 §6.9: unguessable ids, so nobody can claim an
    event's dedup key in advance); a forked child starts with a fresh buffer."""

    def __init__(self) -> None:
        self.data = b""
        self.at = 0


_ENTROPY = _EntropyBuffer()


def _fresh_entropy() -> None:
    _ENTROPY.data, _ENTROPY.at = b"", 0


os.register_at_fork(after_in_child=_fresh_entropy)


def random_bytes(n: int) -> bytes:
    """`n` bytes from the kernel's CSPRNG, through a per-thread buffer."""
    buf = _ENTROPY
    if buf.at + n > len(buf.data):
        buf.data, buf.at = os.urandom(max(4096, n)), 0
    start = buf.at
    buf.at = start + n
    return buf.data[start : start + n]


def new_event_id(
    now_ns: Callable[[], int] = time.time_ns,
    random_bytes: Callable[[int], bytes] = random_bytes,
) -> str:
    """A fresh UUIDv7 (RFC 9562 §5.7): 48-bit Unix ms, version 7, variant 0b10, random."""
    return event_id_at(now_ns(), random_bytes(10))


_EVENT_ID = re.compile(EVENT_ID_PATTERN)
_UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
EVENT_ID_FORM = (
    "a UUIDv7 as 8-4-4-4-12 hex digits, e.g. 0190a5d3-ac96-774b-bcce-b302099a8057 (any "
    "case; also as 32 hex digits, in {braces} or after urn:uuid:)"
)


def parse_event_id(text: str) -> str:
    """The canonical event id (lowercase 8-4-4-4-12) that `text`, as a user gave it, names.

    RFC 9562 §4: UUID hex digits are case-insensitive on input. Also taken: surrounding
    whitespace, the 32 digits without hyphens, Microsoft's {braces} and the RFC 9562 §4
    `urn:uuid:` prefix (case-insensitive, RFC 8141 §3.1). Anything else, and a UUID of
    another version than 7, raises ValueError saying which form to give."""
    body = text.strip(" \t\r\n")
    if body[:9].lower() == "urn:uuid:":
        body = body[9:]
    elif body[:1] == "{" and body[-1:] == "}":
        body = body[1:-1]
    if len(body) == 32:
        body = f"{body[:8]}-{body[8:12]}-{body[12:16]}-{body[16:20]}-{body[20:]}"
    event_id = body.lower()
    shown = repr(text if len(text) <= 80 else text[:77] + "...")
    if not _UUID.fullmatch(event_id):
        raise ValueError(f"{shown} is not an event id: give {EVENT_ID_FORM}")
    if not _EVENT_ID.fullmatch(event_id):
        raise ValueError(
            f"{shown} is a UUID but not an event id: event ids are version 7 UUIDs (RFC 9562 "
            "§5.7), with 7 as the 13th hex digit and 8, 9, a or b as the 17th"
        )
    return event_id


def event_id_at(time_ns: int, entropy: bytes) -> str:
    """The UUIDv7 of `time_ns`'s millisecond with the first 10 bytes of `entropy` as its 74
    random bits (after the version and variant bits take their places)."""
    ms = time_ns // 1_000_000
    rand = int.from_bytes(entropy[:10], "big")
    rand_a = rand >> 68  # 12 bits
    rand_b = rand & ((1 << 62) - 1)
    value = (ms & ((1 << 48) - 1)) << 80 | 0x7 << 76 | rand_a << 64 | 0b10 << 62 | rand_b
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"
