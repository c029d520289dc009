"""Envoy/Istio access-log lines → `AuditEvent`: the Envoy ingest adapter's pure core.

Place in the house (DESIGN.md, "Telemetry in"): `auditmesh ingest envoy` (cli/ingest.py)
feeds this module lines of a sidecar's access-log file; the OTLP receiver feeds it the body
of Envoy's OpenTelemetry access-log records, which Istio's `envoyOtelAls` provider fills
with the same TEXT line. Each function works on one line alone, without file context, and
does no I/O. Imports `events` only.

Two steps: `parse_text_line` / `parse_json_line` turn a line into an `AccessRecord` (the
access-log fields, typed, nothing interpreted), `to_event` interprets the record as a call
between services (direction and peers from Istio's cluster names, outcome from the response
flags, identities from peer URI SANs, trace from `traceparent`). A line that cannot be read
raises `EnvoyLogError`, a `ValueError` naming the field and what is wrong with it.

Event ids are deterministic: a UUIDv7 whose millisecond is the request's start time and whose
random bits are SHA-256 of (reporter, line), so ingesting the same line twice from the same
source yields the same id and the ledger keeps it once.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import ipaddress
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import msgspec

from auditmesh.events import (
    HTTP,
    MAX_EVENT_BYTES,
    MAX_LABEL,
    MAX_NAME,
    MAX_REQUEST_ID,
    MAX_TEXT,
    TCP,
    TLS,
    AuditEvent,
    Authz,
    Direction,
    Error,
    Outcome,
    Peer,
    Trace,
    canonical_bytes,
    decode_event,
    event_id_at,
)

# Istio's default TEXT access-log format (istio.io, "Envoy Access Logs", "Default access log
# format"; the same string Istio sets as `text_format_source.inline_string` in every
# sidecar's FileAccessLog, and as the body of the `envoyOtelAls` provider).
ISTIO_TEXT_FORMAT = (
    '[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" '
    "%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% "
    '"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% '
    '%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" '
    '"%REQ(X-REQUEST-ID)%" "%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER% '
    "%UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% "
    "%REQUESTED_SERVER_NAME% %ROUTE_NAME%\n"
)

# The TEXT format's fields in order: (key, command operator). The keys are the names Istio's
# JSON encoding gives the same operators (`accessLogEncoding: JSON`), so both parsers fill
# one record and report errors by the name a person sees in their log.
TEXT_FIELDS: tuple[tuple[str, str], ...] = (
    ("start_time", "%START_TIME%"),
    ("method", "%REQ(:METHOD)%"),
    ("path", "%REQ(X-ENVOY-ORIGINAL-PATH?:PATH)%"),
    ("protocol", "%PROTOCOL%"),
    ("response_code", "%RESPONSE_CODE%"),
    ("response_flags", "%RESPONSE_FLAGS%"),
    ("response_code_details", "%RESPONSE_CODE_DETAILS%"),
    ("connection_termination_details", "%CONNECTION_TERMINATION_DETAILS%"),
    ("upstream_transport_failure_reason", "%UPSTREAM_TRANSPORT_FAILURE_REASON%"),
    ("bytes_received", "%BYTES_RECEIVED%"),
    ("bytes_sent", "%BYTES_SENT%"),
    ("duration", "%DURATION%"),
    ("upstream_service_time", "%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)%"),
    ("x_forwarded_for", "%REQ(X-FORWARDED-FOR)%"),
    ("user_agent", "%REQ(USER-AGENT)%"),
    ("request_id", "%REQ(X-REQUEST-ID)%"),
    ("authority", "%REQ(:AUTHORITY)%"),
    ("upstream_host", "%UPSTREAM_HOST%"),
    ("upstream_cluster", "%UPSTREAM_CLUSTER%"),
    ("upstream_local_address", "%UPSTREAM_LOCAL_ADDRESS%"),
    ("downstream_local_address", "%DOWNSTREAM_LOCAL_ADDRESS%"),
    ("downstream_remote_address", "%DOWNSTREAM_REMOTE_ADDRESS%"),
    ("requested_server_name", "%REQUESTED_SERVER_NAME%"),
    ("route_name", "%ROUTE_NAME%"),
)
_TEXT_LABEL = {key: f"field {n} ({op})" for n, (key, op) in enumerate(TEXT_FIELDS, start=1)}

# Keys a JSON access log may add when the mesh config asks for them (Envoy command operators
# %DOWNSTREAM_PEER_URI_SAN%, %UPSTREAM_PEER_URI_SAN%, %DOWNSTREAM_LOCAL_URI_SAN%,
# %UPSTREAM_LOCAL_URI_SAN%, %REQ(TRACEPARENT)%).
OPTIONAL_JSON_KEYS = (
    "downstream_peer_uri_san",
    "upstream_peer_uri_san",
    "downstream_local_uri_san",
    "upstream_local_uri_san",
    "traceparent",
    "trace_id",
)

# Envoy's %RESPONSE_FLAGS% (envoyproxy.io, "Access logging" → "Command Operators" →
# %RESPONSE_FLAGS%): flag → (error.type, what Envoy's documentation says it means).
RESPONSE_FLAGS: dict[str, tuple[str, str]] = {
    "UH": ("no_healthy_upstream", "no healthy upstream hosts in the upstream cluster"),
    "UF": ("upstream_connection_failure", "upstream connection failure"),
    "UO": ("upstream_overflow", "upstream overflow (circuit breaking)"),
    "NR": ("no_route_found", "no route configured for the request, or no matching filter chain"),
    "URX": ("upstream_retry_limit_exceeded", "upstream retry limit or connect attempts reached"),
    "NC": ("no_cluster_found", "upstream cluster not found"),
    "DT": ("duration_timeout", "max connection or downstream connection duration exceeded"),
    "DC": ("downstream_connection_termination", "downstream connection termination"),
    "LH": ("failed_local_health_check", "local service failed its health check"),
    "UT": ("upstream_request_timeout", "upstream request timeout"),
    "LR": ("local_reset", "connection local reset"),
    "UR": ("upstream_remote_reset", "upstream remote reset"),
    "UC": ("upstream_connection_termination", "upstream connection termination"),
    "DI": ("delay_injected", "request delayed by fault injection"),
    "FI": ("fault_injected", "request aborted by fault injection"),
    "RL": ("rate_limited", "request rate-limited locally"),
    "UAEX": ("unauthorized_external_service", "request denied by the external authorization"),
    "RLSE": ("rate_limit_service_error", "error in the rate limit service"),
    "IH": ("invalid_envoy_request_headers", "invalid value for a strictly-checked header"),
    "SI": ("stream_idle_timeout", "stream idle timeout"),
    "DPE": ("downstream_protocol_error", "the downstream request had an HTTP protocol error"),
    "UPE": ("upstream_protocol_error", "the upstream response had an HTTP protocol error"),
    "UMSDR": ("upstream_max_stream_duration_reached", "upstream request reached max duration"),
    "OM": ("overload_manager", "Overload Manager terminated the request"),
    "DF": ("dns_resolution_failure", "request terminated by a DNS resolution failure"),
    "RFCF": ("response_from_cache_filter", "response served by the cache filter"),
    "NFCF": ("no_filter_config_found", "no filter configuration found"),
}
# Flags that say something happened on the way but not that the call failed.
BENIGN_FLAGS = frozenset({"DI", "RFCF"})

_MAX_COUNT = 2**53 - 1  # events.Count
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,32}")  # RFC 9110 §5.6.2 token (a method)
_FLAG = re.compile(r"[A-Z]{1,8}")
# The end of fields 2-4: `%PROTOCOL%" %RESPONSE_CODE% ` (Envoy's %PROTOCOL% is HTTP/1.0,
# HTTP/1.1, HTTP/2, HTTP/3, or - for TCP). The path before it may hold quotes of its own.
_REQUEST_END = re.compile(r' (?:HTTP/[0-9.]{1,3}|-)(")(?: [0-9]{1,3}| -) ')
# The whole TEXT line when no quoted field holds a quote: the values `_text_values` reads
# from such a line (a request ending as `_REQUEST_END` says, bare fields up to the next
# space, the last six not starting with a quote), checked equal in tests/ingest/test_envoy.py.
_PLAIN_TEXT_LINE = re.compile(
    r"\[(?P<start_time>[^\]]*)\] "
    r'"(?P<method>[^ "]+) (?P<path>[^"]*) (?P<protocol>HTTP/[0-9.]{1,3}|-)" '
    r"(?P<response_code>[0-9]{1,3}|-) "
    r"(?P<response_flags>[^ ]+) (?P<response_code_details>[^ ]+) "
    r'(?P<connection_termination_details>[^ ]+) "(?P<upstream_transport_failure_reason>[^"]*)" '
    r"(?P<bytes_received>[^ ]+) (?P<bytes_sent>[^ ]+) (?P<duration>[^ ]+) "
    r"(?P<upstream_service_time>[^ ]+) "
    r'"(?P<x_forwarded_for>[^"]*)" "(?P<user_agent>[^"]*)" "(?P<request_id>[^"]*)" '
    r'"(?P<authority>[^"]*)" "(?P<upstream_host>[^"]*)" '
    + " ".join(f'(?P<{key}>[^ "][^ ]*)' for key, _ in TEXT_FIELDS[18:])
)
_RFC3339 = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})[Tt ](\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?"
    r"(?:([Zz])|([+-])(\d{2}):?(\d{2}))",
    re.ASCII,  # RFC 5234 DIGIT is 0-9: no other script's digits, which int() would read
)
_SPIFFE = re.compile(r"spiffe://[a-z0-9._-]+(/[^/?#]+)*")  # events.SpiffeId
_HEX = re.compile(r"[0-9a-f]+")
# W3C Trace Context §3.2: version-traceid-parentid-flags (future versions may append fields).
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")
# Istio's RBAC filter: rbac_access_denied_matched_policy[ns[NS]-policy[NAME]-rule[N]].
_RBAC_DENIED = re.compile(
    r"rbac_access_denied_matched_policy\[ns\[([^\]]+)\]-policy\[([^\]]+)\]-rule\[(\d{1,9})\]\]"
)
# Istio's SNI for mTLS between sidecars: outbound_.PORT_.SUBSET_.HOST.
_ISTIO_SNI = re.compile(r"outbound_\.(\d+)_\.([^.]*)_\.(.+)")
_K8S_SERVICE = re.compile(
    r"([a-z0-9]([a-z0-9-]*[a-z0-9])?)\.([a-z0-9]([a-z0-9-]*[a-z0-9])?)\.svc(\..*)?"
)
_DNS_LABEL = re.compile(r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?")


class EnvoyLogError(ValueError):
    """An access-log line that cannot be read; the message names the field and the reason."""


class AccessRecord(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One access-log line's fields, typed; `None` where Envoy wrote `-` (unset).

    `raw` is the line itself (without its line break): the event id is derived from it.
    The last six fields are absent from Istio's defaults; a JSON log configured with them,
    or an OTLP record's attributes, may supply them (`msgspec.structs.replace`). A struct,
    not a frozen dataclass: that sets each of its 31 fields through `object.__setattr__`,
    which cost 3 µs a line.
    """

    raw: str
    start_ns: int
    method: str | None = None
    path: str | None = None
    protocol: str | None = None
    response_code: int | None = None
    response_flags: tuple[str, ...] = ()
    response_code_details: str | None = None
    connection_termination_details: str | None = None
    upstream_transport_failure_reason: str | None = None
    bytes_received: int | None = None
    bytes_sent: int | None = None
    duration_ms: int | None = None
    upstream_service_time_ms: int | None = None
    x_forwarded_for: str | None = None
    user_agent: str | None = None
    request_id: str | None = None
    authority: str | None = None
    upstream_host: str | None = None
    upstream_cluster: str | None = None
    upstream_local_address: str | None = None
    downstream_local_address: str | None = None
    downstream_remote_address: str | None = None
    requested_server_name: str | None = None
    route_name: str | None = None
    downstream_peer_uri_san: str | None = None
    upstream_peer_uri_san: str | None = None
    downstream_local_uri_san: str | None = None
    upstream_local_uri_san: str | None = None
    traceparent: str | None = None
    trace_id: str | None = None


# --- parsing -------------------------------------------------------------------------------


def parse_line(line: str) -> AccessRecord:
    """Either encoding: a line starting with `{` is JSON, anything else TEXT."""
    return parse_json_line(line) if line.lstrip().startswith("{") else parse_text_line(line)


def parse_text_line(line: str) -> AccessRecord:
    """One line in Istio's default TEXT format (`ISTIO_TEXT_FORMAT`).

    Quoted fields are taken as Envoy writes them, without unescaping (Envoy escapes nothing
    in TEXT logs): the path and the headers a caller fills (X-Forwarded-For, User-Agent,
    X-Request-Id, :authority) may themselves hold quotes, so fields are told apart by what
    follows a closing quote, and the six bare fields at the end are read from the end.
    A line with no quote inside a quoted field (nearly all) is read by one regular
    expression, `_PLAIN_TEXT_LINE`, which takes the same values; any other line, and any
    line to refuse, by `_text_values`.
    """
    line = _strip_newline(line)
    plain = _PLAIN_TEXT_LINE.fullmatch(line)
    values = plain.groupdict() if plain is not None else _text_values(line)
    return _record(line, values, _TEXT_LABEL.__getitem__)


def _text_values(line: str) -> dict[str, str]:
    """The raw value of each TEXT field, read field by field (see `parse_text_line`)."""
    cursor = _Cursor(line)
    values: dict[str, str] = {}
    if not line.startswith("["):
        raise _error(
            _TEXT_LABEL["start_time"],
            "the line does not start with '[' (is it Istio's default TEXT access-log format?)",
        )
    close = line.find("] ", 1)
    if close < 0:
        raise _error(_TEXT_LABEL["start_time"], "no '] ' closes the start time")
    values["start_time"] = line[1:close]
    cursor.pos = close + 2
    # Fields 2-4 end at `PROTOCOL" CODE `, not at the first `" `: Envoy escapes nothing, so
    # a path ending in a quote (a probe's `/?id=1"`) has one before the protocol. Without
    # that ending (another protocol), the first `" ` closes the field, as in any other.
    end = _REQUEST_END.search(line, cursor.pos) if line.startswith('"', cursor.pos) else None
    if end is not None:
        request = line[cursor.pos + 1 : end.start(1)]
        cursor.pos = end.start(1) + 2
    else:
        request = cursor.quoted("method")
    method, _, rest = request.partition(" ")
    path, _, protocol = rest.rpartition(" ")
    if not method or not protocol:
        raise _error(
            "fields 2-4 (%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%)",
            f"{_show(request)} is not 'METHOD PATH PROTOCOL'",
        )
    values.update(method=method, path=path, protocol=protocol)
    for key in ("response_code", "response_flags", "response_code_details"):
        values[key] = cursor.bare(key)
    values["connection_termination_details"] = cursor.bare("connection_termination_details")
    values["upstream_transport_failure_reason"] = cursor.quoted("upstream_transport_failure_reason")
    for key in ("bytes_received", "bytes_sent", "duration", "upstream_service_time"):
        values[key] = cursor.bare(key)
    # The rest: five quoted fields, "XFF" "UA" "ID" "AUTHORITY" "UPSTREAM_HOST", and six
    # bare ones, read from the end.
    parts = line[cursor.pos :].rsplit(" ", 6)
    if len(parts) < 7 or any(part.startswith('"') for part in parts[1:]):
        raise _error(
            "fields 14-24 (%REQ(X-FORWARDED-FOR)% … %ROUTE_NAME%)",
            "the line ends early: Istio's default TEXT format has 24 fields",
        )
    tail_keys = TEXT_FIELDS[18:]
    for (key, _op), value in zip(tail_keys, parts[1:], strict=True):
        if not value:
            raise _error(_TEXT_LABEL[key], "empty value (two spaces in a row?)")
        values[key] = value
    # All but the upstream host are headers as the caller sent them, and Envoy escapes
    # nothing: a value may hold `" `, so only `" "` separates these fields, the upstream host
    # (which holds no quote) and the two before it are taken from the right, the XFF from
    # the left; should a header hold even `" "`, the User-Agent between them takes the
    # surplus. The line is read either way: no quote keeps a request out of the trail.
    quoted = parts[0]
    right = quoted[1:-1].rsplit('" "', 3)
    xff, between, agent = right[0].partition('" "')
    if len(quoted) < 2 or quoted[0] != '"' or quoted[-1] != '"' or len(right) < 4 or not between:
        raise _error(
            "fields 14-18 (%REQ(X-FORWARDED-FOR)% … %UPSTREAM_HOST%)",
            'expected a quoted value for each: "XFF" "UA" "ID" "AUTHORITY" "UPSTREAM_HOST"',
        )
    values.update(
        x_forwarded_for=xff,
        user_agent=agent,
        request_id=right[1],
        authority=right[2],
        upstream_host=right[3],
    )
    return values


def parse_json_line(line: str) -> AccessRecord:
    """One JSON object with Istio's JSON access-log keys (`accessLogEncoding: JSON`).

    Values may be strings (`json_format`) or typed (`typed_json_format`: numbers, `null` for
    unset); unknown keys are ignored, `start_time` is required.
    """
    line = _strip_newline(line)
    try:
        document = msgspec.json.decode(line)
    except (msgspec.DecodeError, RecursionError, ValueError) as exc:
        raise EnvoyLogError(f"not a JSON access-log line: {exc}") from None
    if not isinstance(document, dict):
        raise EnvoyLogError(
            f"not a JSON access-log line: expected an object, got {_kind(document)}"
        )
    values: dict[str, str | None] = {}
    for key in (*(k for k, _ in TEXT_FIELDS), *OPTIONAL_JSON_KEYS):
        value = document.get(key)
        if value is None or isinstance(value, str):
            values[key] = value
        elif isinstance(value, int) and not isinstance(value, bool):
            values[key] = str(value)
        elif isinstance(value, float) and value.is_integer():
            values[key] = str(int(value))
        else:
            raise _error(key, f"expected a string or an integer, got {_kind(value)}")
    if values["start_time"] is None:
        raise _error("start_time", "missing (every access-log line has a start time)")
    return _record(line, values, lambda key: key)


class _Cursor:
    """Left-to-right reader of a TEXT line's space-separated and quoted fields."""

    __slots__ = ("line", "pos")

    def __init__(self, line: str) -> None:
        self.line = line
        self.pos = 0

    def bare(self, key: str) -> str:
        end = self.line.find(" ", self.pos)
        if end < 0:
            raise _error(
                _TEXT_LABEL[key], "the line ends early: Istio's default TEXT format has 24 fields"
            )
        value = self.line[self.pos : end]
        if not value:
            raise _error(_TEXT_LABEL[key], "empty value (two spaces in a row?)")
        self.pos = end + 1
        return value

    def quoted(self, key: str) -> str:
        if not self.line.startswith('"', self.pos):
            raise _error(_TEXT_LABEL[key], "expected a quoted value")
        end = self.line.find('" ', self.pos + 1)
        if end < 0:
            raise _error(_TEXT_LABEL[key], "the quoted value is not closed by '\" '")
        value = self.line[self.pos + 1 : end]
        self.pos = end + 2
        return value


def _record(
    raw: str, values: Mapping[str, str | None], label: Callable[[str], str]
) -> AccessRecord:
    """Type the raw field values; `label(key)` names a field in an error message."""
    given = {key: value for key, value in values.items() if value and value != "-"}
    get = given.get

    def count(key: str, what: str) -> int | None:
        value = get(key)
        if value is None:
            return None
        if not (value.isascii() and value.isdigit()) or int(value) > _MAX_COUNT:
            raise _error(label(key), f"{_show(value)} is not {what}")
        return int(value)

    start = get("start_time")
    if start is None:
        raise _error(label("start_time"), "missing (every access-log line has a start time)")
    try:
        start_ns = parse_rfc3339(start)
    except ValueError as exc:
        raise _error(label("start_time"), str(exc)) from None
    method = get("method")
    if method is not None and not _TOKEN.fullmatch(method):
        raise _error(label("method"), f"{_show(method)} is not an HTTP method")
    protocol = get("protocol")
    if protocol is not None and (len(protocol) > 16 or " " in protocol):
        raise _error(label("protocol"), f"{_show(protocol)} is not a protocol such as HTTP/1.1")
    code = count("response_code", "a status code")
    if code is not None and code != 0 and not 100 <= code <= 599:
        raise _error(label("response_code"), f"{code} is not a status code (100-599, or 0)")
    flags_text = get("response_flags")
    flags = tuple(flags_text.split(",")) if flags_text is not None else ()
    for flag in flags:
        if not _FLAG.fullmatch(flag):
            raise _error(label("response_flags"), f"{_show(flag)} is not an Envoy response flag")
    service_time = get("upstream_service_time")
    return AccessRecord(
        raw=raw,
        start_ns=start_ns,
        method=method,
        path=get("path"),
        protocol=protocol,
        response_code=code,
        response_flags=flags,
        response_code_details=get("response_code_details"),
        connection_termination_details=get("connection_termination_details"),
        upstream_transport_failure_reason=get("upstream_transport_failure_reason"),
        bytes_received=count("bytes_received", "a byte count"),
        bytes_sent=count("bytes_sent", "a byte count"),
        duration_ms=count("duration", "a duration in milliseconds"),
        # A response header the upstream may set itself: kept only when it is a number.
        upstream_service_time_ms=(
            int(service_time)
            if service_time
            and service_time.isascii()
            and service_time.isdigit()
            and len(service_time) < 16
            else None
        ),
        x_forwarded_for=get("x_forwarded_for"),
        user_agent=get("user_agent"),
        request_id=get("request_id"),
        authority=get("authority"),
        upstream_host=get("upstream_host"),
        upstream_cluster=get("upstream_cluster"),
        upstream_local_address=get("upstream_local_address"),
        downstream_local_address=get("downstream_local_address"),
        downstream_remote_address=get("downstream_remote_address"),
        requested_server_name=get("requested_server_name"),
        route_name=get("route_name"),
        downstream_peer_uri_san=get("downstream_peer_uri_san"),
        upstream_peer_uri_san=get("upstream_peer_uri_san"),
        downstream_local_uri_san=get("downstream_local_uri_san"),
        upstream_local_uri_san=get("upstream_local_uri_san"),
        traceparent=get("traceparent"),
        trace_id=get("trace_id"),
    )


# --- helpers shared with the other ingest adapters ---------------------------------------


def parse_rfc3339(text: str) -> int:
    """Nanoseconds since the Unix epoch of an RFC 3339 §5.6 date-time (Envoy's %START_TIME%
    is `2024-05-01T12:00:00.123Z`; Linkerd writes nanoseconds). No floats on the way."""
    match = _RFC3339.fullmatch(text)
    if match is None:
        raise ValueError(f"{_show(text)} is not an RFC 3339 time such as 2024-05-01T12:00:00.123Z")
    fraction, zulu, sign, off_h, off_m = match.groups()[6:]
    try:
        seconds = _epoch_seconds(*match.groups()[:6])
    except ValueError as exc:
        raise ValueError(f"{_show(text)} {exc}") from None
    if zulu is None:
        if int(off_h) > 23 or int(off_m) > 59:  # RFC 3339 §5.6 time-numoffset
            raise ValueError(f"{_show(text)} has an offset that is not a time of day")
        offset = int(off_h) * 3600 + int(off_m) * 60
        seconds -= offset if sign == "+" else -offset
    total = seconds * 1_000_000_000 + int((fraction or "").ljust(9, "0"))
    if not 0 <= total < 2**63:
        raise ValueError(f"{_show(text)} is out of range (years 1970-2261)")
    return total


@functools.lru_cache(maxsize=1024)  # log lines come in order: their seconds repeat
def _epoch_seconds(*fields: str) -> int:
    year, month, day, hour, minute, second = (int(field) for field in fields)
    if not 1970 <= year <= 2261:
        raise ValueError("is out of range (years 1970-2261)")
    if not (1 <= month <= 12 and hour <= 23 and minute <= 59 and second <= 60):
        raise ValueError("is not a valid date and time")
    if not 1 <= day <= calendar.monthrange(year, month)[1]:
        raise ValueError("is not a valid date and time")
    # A leap second (:60) is taken as :59, as POSIX time has no room for it.
    return calendar.timegm((year, month, day, hour, minute, min(second, 59), 0, 0, 0))


def line_event_id(time_ns: int, source: str, line: str) -> str:
    """The deterministic event id of one reported line: UUIDv7 (RFC 9562 §5.7) with the
    call's millisecond and, as its "random" bits, SHA-256 of (source, line)."""
    digest = hashlib.sha256(source.encode() + b"\n" + line.encode("utf-8", "replace")).digest()
    return event_id_at(time_ns, digest)


def split_address(text: str | None) -> tuple[str | None, int | None]:
    """`10.0.0.1:8080`, `[fd00::1]:80`, `tcp://10.0.0.1:80` → (ip, port); Istio's HBONE
    `envoy://connect_originate/10.0.0.1:80` (an internal listener, then the address it
    tunnels to) → that address; anything else (`-`, a pipe,
    `envoy://internal_client_address/`) → (None, None)."""
    if not text:
        return None, None
    if "://" in text:
        scheme, _, text = text.partition("://")
        if scheme == "envoy":
            text = text.partition("/")[2]
        elif scheme not in ("tcp", "udp", "http", "https"):
            return None, None
        text = text.rstrip("/")
    host, sep, port_text = text.rpartition(":")
    if not sep:
        host, port_text = text, ""
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    ip = _ip(host)
    if ip is None:
        return None, None
    return ip, _port(port_text)


def authority_port(authority: str | None) -> int | None:
    """The port of an HTTP authority, `host:port` or `[v6]:port` (RFC 3986 §3.2.2-3): the
    port the caller asked for, which `destination.port` is when no address says it. None
    without one (the scheme's default port is not written, so not known) or for anything
    else (a bare IPv6 address, a port past 65535)."""
    if not authority:
        return None
    host, sep, port_text = authority.rpartition(":")
    if not sep or not host or (":" in host and not (host[0] == "[" and host[-1] == "]")):
        return None
    port = _port(port_text)
    return port or None  # port 0 is no port a caller can ask for


def _port(text: str) -> int | None:
    """A port number written in decimal ASCII digits, else None."""
    if not (text.isascii() and text.isdigit()) or len(text) > 5:
        return None
    port = int(text)
    return port if port <= 65535 else None


@functools.lru_cache(maxsize=4096)  # a mesh has few addresses, each logged many times
def _ip(host: str) -> str | None:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return None


def spiffe_id(text: str | None) -> str | None:
    """A single SPIFFE ID as `events.SpiffeId` accepts it, else None (DESIGN.md: a peer with
    zero or several URI SANs has no identity; Envoy joins several with commas)."""
    if text is None or len(text) > 2048 or "," in text or not _SPIFFE.fullmatch(text):
        return None
    return text


@functools.lru_cache(maxsize=4096)  # a mesh has few service hosts, each logged many times
def service_of(host: str | None, *namespaces: str | None) -> tuple[str | None, str | None]:
    """(service, namespace) of a Kubernetes service host: `svc.ns.svc[.cluster.local][:port]`,
    a bare `svc[:port]` (service only), or `svc.ns[:port]` when `ns` is one of `namespaces`,
    the ones the call's parties are known to be in (their SPIFFE IDs'). Other hosts name no
    service. Cluster DNS resolves `svc.ns` too, but an external host looks the same
    (`example.com`, `go.dev`): two labels name a service only in a namespace known to exist,
    and callers pass only the namespaces that can say so."""
    if not host:
        return None, None
    name = host.lower()
    if name.startswith("[") or name.count(":") > 1:
        return None, None
    name = name.partition(":")[0]
    match = _K8S_SERVICE.fullmatch(name)
    if match is not None and len(match.group(1)) <= 63 and len(match.group(3)) <= 63:
        return match.group(1), match.group(3)
    if _DNS_LABEL.fullmatch(name) and not name.isdigit():
        return name, None
    service, _, namespace = name.partition(".")
    if (
        namespace in namespaces
        and _DNS_LABEL.fullmatch(service)
        and _DNS_LABEL.fullmatch(namespace)
    ):
        return service, namespace
    return None, None


def trace_of(traceparent: str | None, trace_id: str | None = None) -> Trace | None:
    """W3C Trace Context §3.2 `traceparent` → Trace (the header's parent-id is the caller's
    span); else a bare trace id: 32 hex digits, or 16 (B3 64-bit, left-padded with zeros)."""
    if traceparent:
        match = _TRACEPARENT.fullmatch(traceparent.strip().lower())
        version = match.group(1) if match else "ff"
        if match and version != "ff" and (version != "00" or not match.group(5)):
            tid, parent = match.group(2), match.group(3)
            if tid != "0" * 32:
                return Trace(trace_id=tid, parent_span_id=None if parent == "0" * 16 else parent)
    if trace_id:
        tid = trace_id.strip().lower()
        if len(tid) in (16, 32) and _HEX.fullmatch(tid) and tid.strip("0"):
            return Trace(trace_id=tid.rjust(32, "0"))
    return None


CLIPPED_LABEL = "auditmesh.clipped"


class Clipper:
    """Cuts values to the model's limits and names the fields it cut, for label
    `auditmesh.clipped` (`marked`), as the sidecar does (proxy/record.py `to_event`): an
    over-long URL or header is kept in part, and said to be, rather than losing the whole
    record. One per event."""

    __slots__ = ("names",)

    def __init__(self) -> None:
        self.names: list[str] = []

    def __call__(self, name: str, text: str | None, limit: int) -> str | None:
        """`text` cut to `limit` characters (None stays None); `name`: the event's field."""
        if text is None or len(text) <= limit:
            return text
        self.names.append(name)
        return text[:limit]

    def label(self, key: str, value: str) -> str:
        """The value of label `key` cut to the model's limit; `key` names it when cut."""
        if len(value) <= MAX_LABEL:
            return value
        self.names.append(key)
        return value[:MAX_LABEL]

    def marked(self, event: AuditEvent) -> AuditEvent:
        """`event`, with label `auditmesh.clipped` naming the fields cut if any were."""
        if not self.names:
            return event
        names = ",".join(self.names)[:MAX_LABEL]
        return msgspec.structs.replace(event, labels=event.labels | {CLIPPED_LABEL: names})


def validated(event: AuditEvent, error: type[ValueError]) -> AuditEvent:
    """`event` if the collector will accept it; `error` naming the field otherwise.

    msgspec checks constraints on decoding only, so the event goes once through its wire
    form here: one bad line must be refused on its own, not make the server refuse a batch.
    """
    data = canonical_bytes(event)
    try:
        decode_event(data)
    except ValueError as exc:
        raise error(f"cannot make an audit event of this line: {exc}") from None
    if len(data) > MAX_EVENT_BYTES:  # the size of a ledger entry (events.checked_size)
        raise error(
            f"cannot make an audit event of this line: its event would be {len(data)} bytes as "
            f"JSON, over the limit of {MAX_EVENT_BYTES} bytes (one ledger entry) even with each "
            "value clipped to its limit: the path, headers or details hold many control "
            "characters, which JSON writes as 6 bytes each"
        )
    return event


# --- interpretation ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Cluster:
    """What Istio's cluster name says about a call (istio.io, "Envoy cluster naming":
    `inbound|PORT|SUBSET|HOST`, `outbound|PORT|SUBSET|HOST`, and the passthrough clusters)."""

    direction: Direction | None = None
    port: int | None = None
    subset: str | None = None
    host: str | None = None


@functools.lru_cache(maxsize=1024)  # a sidecar has a few dozen clusters
def parse_cluster(name: str | None) -> Cluster:
    if not name:
        return Cluster()
    parts = name.split("|")
    if len(parts) == 4 and parts[0] in ("inbound", "outbound", "inbound-vip", "outbound-vip"):
        direction: Direction = "inbound" if parts[0].startswith("inbound") else "outbound"
        return Cluster(
            direction,
            _port(parts[1]),
            parts[2] or None,
            parts[3] or None,
        )
    if name in ("PassthroughCluster", "BlackHoleCluster"):
        return Cluster("outbound")
    if name.startswith("InboundPassthroughCluster"):
        return Cluster("inbound")
    return Cluster()


def to_event(record: AccessRecord, reporter: str, clip: Clipper | None = None) -> AuditEvent:
    """The audit event one access-log record reports (`attested=False`: a log line, not a
    call our sidecar saw). `reporter` names the source, e.g. `ingest:envoy:access.log`,
    and seeds the event id together with the line. Over-long values are clipped and named
    in label `auditmesh.clipped`; `clip` may come with names already (the OTLP receiver's
    labels of the provider), which that label then names too."""
    clip = Clipper() if clip is None else clip
    cluster = parse_cluster(record.upstream_cluster)
    inbound = cluster.direction == "inbound"
    source_ip, source_port = split_address(record.downstream_remote_address)
    source_identity = spiffe_id(record.downstream_peer_uri_san) or (
        None if inbound else spiffe_id(record.upstream_local_uri_san)
    )
    if inbound:  # the reporting sidecar is the destination: the caller dialled its address
        dest_ip, dest_port = split_address(record.downstream_local_address)
        dest_identity = spiffe_id(record.downstream_local_uri_san)
        sni = _ISTIO_SNI.fullmatch(record.requested_server_name or "")
        service_host = sni.group(3) if sni else cluster.host or record.authority
    else:
        dest_ip, dest_port = split_address(record.upstream_host)
        dest_identity = spiffe_id(record.upstream_peer_uri_san)
        service_host = cluster.host or record.authority
    source_namespace = namespace_of(source_identity)
    # An outbound call to a host outside the mesh has no server identity, and its caller's
    # namespace proves nothing of the host: a pod in namespace `dev` calling out to `go.dev`
    # did not call service `go` of its namespace. Inbound, the host reached this workload.
    dest_service, dest_namespace = service_of(
        service_host,
        namespace_of(dest_identity),
        source_namespace if cluster.direction == "inbound" else None,
    )
    is_http = record.method is not None or (record.protocol or "").startswith("HTTP")
    outcome, error, authz = _outcome(record, cluster.direction, is_http, clip)
    labels = {
        f"envoy.{key}": clip.label(f"envoy.{key}", value)
        for key, value in (
            ("response_flags", ",".join(record.response_flags)),
            ("response_code_details", record.response_code_details),
            ("connection_termination_details", record.connection_termination_details),
            ("upstream_transport_failure_reason", record.upstream_transport_failure_reason),
            ("upstream_cluster", record.upstream_cluster),
            ("route_name", record.route_name),
            ("x_forwarded_for", record.x_forwarded_for),
        )
        if value
    }
    event = AuditEvent(
        id=line_event_id(record.start_ns, reporter, record.raw),
        time_ns=record.start_ns,
        reporter=reporter,
        kind="http" if is_http else "tcp",
        outcome=outcome,
        duration_us=(record.duration_ms or 0) * 1000,
        direction=cluster.direction,
        source=make_peer(
            identity=source_identity,
            namespace=source_namespace,
            ip=source_ip,
            port=source_port,
        ),
        destination=make_peer(
            identity=dest_identity,
            service=dest_service,
            namespace=dest_namespace or namespace_of(dest_identity),
            ip=dest_ip,
            # the address the call reached, else the port of its cluster, else the one the
            # caller asked for in the authority (an IP:port address says that port too)
            port=dest_port
            or cluster.port
            or (authority_port(record.authority) if is_http else None),
            host=clip("destination.host", record.authority, MAX_NAME) if is_http else None,
        ),
        # Envoy logs a peer URI SAN only when that peer presented a certificate (mTLS).
        tls=TLS(mutual=True)
        if (record.downstream_peer_uri_san if inbound else record.upstream_peer_uri_san)
        else None,
        http=HTTP(
            method=record.method,
            path=clip("http.path", record.path, MAX_TEXT),
            status=record.response_code or None,
            request_bytes=record.bytes_received,
            response_bytes=record.bytes_sent,
            protocol=record.protocol,
            user_agent=clip("http.user_agent", record.user_agent, MAX_TEXT),
            request_id=clip("http.request_id", record.request_id, MAX_REQUEST_ID),
        )
        if is_http
        else None,
        tcp=None
        if is_http
        else TCP(
            # the model counts from the caller (proxy/tcp.py): what it sent is what Envoy
            # received from downstream (%BYTES_RECEIVED%), and the other way round
            sent_bytes=record.bytes_received or 0,
            received_bytes=record.bytes_sent or 0,
            end=clip(
                "tcp.end",
                record.connection_termination_details or ",".join(record.response_flags) or None,
                64,
            ),
        ),
        authz=authz,
        trace=trace_of(record.traceparent, record.trace_id),
        error=error,
        labels=labels,
        attested=False,
    )
    return validated(clip.marked(event), EnvoyLogError)


def _outcome(
    record: AccessRecord, direction: Direction | None, is_http: bool, clip: Clipper
) -> tuple[Outcome, Error | None, Authz | None]:
    """Outcome, error and authorization decision, most specific first: an RBAC denial
    (Istio's response code details), then Envoy's response flags, then the status."""
    details = record.response_code_details or ""
    if details.startswith("rbac_access_denied"):
        match = _RBAC_DENIED.fullmatch(details)
        authz = (
            Authz(
                decision="deny",
                policy=clip("authz.policy", f"{match.group(1)}/{match.group(2)}", MAX_NAME),
                rule=int(match.group(3)),
            )
            if match
            else Authz(decision="deny")
        )
        message = clip("error.message", details, MAX_TEXT) or ""
        return "failure", Error(type="rbac_access_denied", message=message), authz
    for flag in record.response_flags:
        if flag in BENIGN_FLAGS:
            continue
        kind, meaning = RESPONSE_FLAGS.get(flag, (f"envoy_response_flag_{flag}", ""))
        message = f"{flag}: {meaning}" if meaning else flag
        external_denial = Authz(decision="deny") if flag == "UAEX" else None
        return "failure", Error(type=kind, message=message), external_denial
    status = record.response_code
    if not is_http:
        return "success", None, None
    if not status:  # %RESPONSE_CODE% 0: no response was sent (Envoy docs)
        return "unknown", None, None
    # OpenTelemetry semantic conventions, HTTP spans, "Status": 5xx is an error on both
    # sides, 4xx only for the client (outbound); error.type is the status code.
    if status >= 500 or (status >= 400 and direction == "outbound"):
        return "failure", Error(type=str(status), message=f"HTTP {status}"), None
    return "success", None, None


def make_peer(
    *,
    identity: str | None = None,
    service: str | None = None,
    namespace: str | None = None,
    ip: str | None = None,
    port: int | None = None,
    host: str | None = None,
) -> Peer | None:
    peer = Peer(
        identity=identity, service=service, namespace=namespace, ip=ip, port=port, host=host
    )
    """A `Peer` of the fields given, or None when nothing is known about that end."""
    return None if peer == _NO_PEER else peer


_NO_PEER = Peer()


def namespace_of(identity: str | None) -> str | None:
    """The namespace in a Kubernetes-style SPIFFE ID `spiffe://TD/ns/NS/sa/SA`."""
    if identity is None:
        return None
    parts = identity.split("/")
    if len(parts) == 7 and parts[3] == "ns" and parts[5] == "sa" and len(parts[4]) <= 253:
        return parts[4]
    return None


def _strip_newline(line: str) -> str:
    return line.removesuffix("\n").removesuffix("\r")


def _error(label: str, reason: str) -> EnvoyLogError:
    return EnvoyLogError(f"{label}: {reason}")


def _show(value: str) -> str:
    return repr(value if len(value) <= 60 else value[:57] + "...")


def _kind(value: object) -> str:
    return {dict: "an object", list: "an array", bool: "a boolean", float: "a number"}.get(
        type(value), type(value).__name__
    )


__all__ = [
    "AccessRecord",
    "EnvoyLogError",
    "ISTIO_TEXT_FORMAT",
    "RESPONSE_FLAGS",
    "parse_json_line",
    "parse_line",
    "parse_text_line",
    "to_event",
]
