"""Which events? The filter model behind `auditmesh query` and `GET /v1/events`, its SQL, paging.

Place in the house: analysis/ only reads what the sequencer stored. `Query` is a value; `sql`
turns it into one SELECT over the `events` table's indexed columns (store/sqlite.py, schema 2);
`run` is the only I/O, through any object with `query(sql, params)` (`SQLiteStore.query`).
The CLI and the HTTP API build a `Query` with `parse_params` (or directly) and share the rest.

Filters are ANDed:
    source, dest    the caller / the callee: a SPIFFE ID (`spiffe://…`), a service name in any
                    namespace, or a node of the service graph as it is printed: `service.namespace`
                    (the service in that namespace, or a service of that whole name), and
                    `unknown` (no identity and no service, or a service named so), and the
                    graph's spelled-out names, `a (namespace b)`, `a.b (no namespace)`
    service         any of those on either side (the caller or the callee)
    path            an exact HTTP path, or a prefix ending in `*` (`/orders*`)
    status          an HTTP status (`404`) or a class (`5xx`)
    decision        allow | deny | audit;   kind, direction, trace_id: exact
    calls           `once`: calls only (http, tcp), each once, as the service graph counts
                    them (analysis/rollup.py): the callee's report, and the caller's only when no
                    callee's report of that hop is stored
    since, until    event time, since inclusive, until exclusive (nanoseconds)

Orders: `newest` (event time descending, ties by index), `oldest`, and `index` (ledger order,
the order in which events were committed). Pages are keyset-paged: the opaque cursor carries the
last row's (time, index) and a fingerprint of the filters, so paging never skips or repeats a
row that was there when the first page was read; `index` order also sees no late arrival twice
and misses none (events reach the ledger in index order, not always in time order).

Index use (checked by EXPLAIN QUERY PLAN in tests/analysis/test_query.py): every equality filter
has an index `(column, time_ns)`, which also yields `newest`/`oldest` order without sorting;
kinds other than http/tcp and deny/audit decisions have small partial indexes, so the query
repeats the partial index's WHERE term; `service` runs as two index scans merged (UNION ALL),
and so does a name of several readings (`payments.shop`, `unknown`): one scan per reading.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import astuple, dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any, Literal, Protocol, get_args

import msgspec

from auditmesh.durations import duration_s

Order = Literal["newest", "oldest", "index"]
ORDERS: tuple[str, ...] = get_args(Order)
KINDS = ("http", "tcp", "authn", "identity", "policy_change", "audit_read", "system")
DECISIONS = ("allow", "deny", "audit")
DIRECTIONS = ("inbound", "outbound")
CALLS = ("once",)
# The name of a party with no identity and no service: in the graph, query's table, a trace
UNKNOWN = "unknown"
CALL_KINDS = ("http", "tcp")
DEFAULT_LIMIT = 100
MAX_LIMIT = 1000  # per page of the HTTP API; the CLI pages through more

_SPIFFE = re.compile(r"^spiffe://[a-z0-9._-]+(/[^/?#]+)*$")
_STATUS_CLASS = re.compile(r"^([1-5])xx$")
MIN_TRACE_PREFIX = 8  # the digits of a trace id the query table prints
TRACE_OR_PREFIX = re.compile(rf"^[0-9a-f]{{{MIN_TRACE_PREFIX},32}}$")
"""A whole W3C trace id (Trace Context §3.2.2.3: 32 lowercase hex), or its first digits."""
_FRACTION = re.compile(r"(?<=:\d\d)[.,](\d+)(?=[+-]\d\d:?\d\d$|$)")
"""The fraction of a time's seconds (`…:07.5+00:00`); ISO 8601 allows a comma."""
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_FULL_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")  # RFC 3339 §5.6 full-date
PARAMS = (
    "source",
    "dest",
    "service",
    "path",
    "status",
    "decision",
    "trace",
    "kind",
    "direction",
    "calls",
    "since",
    "until",
    "order",
    "limit",
    "cursor",
)


MAX_QUERY_LIMIT = 2**62  # limits: SQLite integers are 64-bit, and a page asks for limit + 1 rows


class QueryError(ValueError):
    """A filter, cursor or limit is not valid; the message names the parameter."""


class SqlReader(Protocol):
    def query(
        self, sql: str, params: Sequence[object] | Mapping[str, object] = ()
    ) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True, slots=True)
class Query:
    source: str | None = None
    dest: str | None = None
    service: str | None = None
    path: str | None = None
    status: str | None = None
    decision: str | None = None
    trace_id: str | None = None
    kind: str | None = None
    direction: str | None = None
    since_ns: int | None = None
    until_ns: int | None = None
    order: Order = "newest"
    limit: int = DEFAULT_LIMIT
    calls: str | None = None  # "once": each call once, as the service graph counts it

    def __post_init__(self) -> None:
        for name in ("source", "dest", "service"):
            value = getattr(self, name)
            if value is not None and not 0 < len(value) <= 2048:
                raise QueryError(f"{name}: give a SPIFFE ID or a service name")
        for name, value, allowed in (
            ("decision", self.decision, DECISIONS),
            ("kind", self.kind, KINDS),
            ("direction", self.direction, DIRECTIONS),
            ("calls", self.calls, CALLS),
            ("order", self.order, ORDERS),
        ):
            if value is not None and value not in allowed:
                raise QueryError(f"{name}: {value!r} is not one of {', '.join(allowed)}")
        if self.status is not None and _status(self.status) is None:
            raise QueryError(f"status: {self.status!r} is not an HTTP status (404) or class (5xx)")
        if self.trace_id is not None and not TRACE_OR_PREFIX.fullmatch(self.trace_id):
            raise QueryError(
                f"trace: {self.trace_id!r} is not a trace id: give its 32 hex digits, or the "
                "first 8 or more (as the query table shows them)"
            )
        if self.path is not None and not self.path:
            raise QueryError("path: give a path or a prefix ending in *")
        if not 1 <= self.limit <= MAX_QUERY_LIMIT:
            raise QueryError(f"limit: give a number from 1 to {MAX_QUERY_LIMIT:,}")
        check_window(self.since_ns, self.until_ns)

    def fingerprint(self) -> str:
        """What a cursor is bound to: the filters and the order. Not the page size, and not
        the time bounds, which a relative `--since 15m` moves between two pages."""
        fields = astuple(replace(self, since_ns=None, until_ns=None, limit=DEFAULT_LIMIT))
        if self.calls is None:  # the cursors issued before `calls` existed stay valid
            fields = fields[:-1]
        return hashlib.sha256(repr(fields).encode()).hexdigest()[:16]


@dataclass(frozen=True, slots=True)
class Cursor:
    time_ns: int
    index: int
    fingerprint: str

    def encode(self) -> str:
        raw = msgspec.json.encode([1, self.time_ns, self.index, self.fingerprint])
        return base64.urlsafe_b64encode(raw).decode().rstrip("=")

    @classmethod
    def decode(cls, text: str, query: Query) -> Cursor:
        try:
            raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
            version, time_ns, index, fingerprint = msgspec.json.decode(
                raw, type=tuple[int, int, int, str]
            )
        except (ValueError, msgspec.DecodeError, msgspec.ValidationError):
            raise QueryError("cursor: not a cursor this server issued") from None
        if version != 1:
            raise QueryError("cursor: not a cursor this server issued")
        if not (0 <= time_ns < 2**63 and 0 <= index < 2**63):
            raise QueryError("cursor: not a cursor this server issued")
        if fingerprint != query.fingerprint():
            raise QueryError("cursor: it belongs to a query with other filters or order")
        return cls(time_ns, index, fingerprint)


@dataclass(frozen=True, slots=True)
class Page:
    rows: list[tuple[int, bytes]]  # (ledger index, canonical event bytes)
    next: str | None  # cursor of the following page, None on the last one


def _status(text: str) -> tuple[int, int] | None:
    """[low, high) of a status or status class."""
    match = _STATUS_CLASS.match(text)
    if match:
        low = int(match[1]) * 100
        return low, low + 100
    if text.isascii() and text.isdigit() and 100 <= int(text) <= 599:
        return int(text), int(text) + 1
    return None


Reading = tuple[str | None, str | None]
"""One reading of a party filter: (service, namespace); service None means no identity and no
service (the graph's `unknown`), namespace None any namespace."""


# graph.py `node_names` where `service.namespace` cannot tell two nodes apart: the namespace in
# words, `NAME (namespace NS)` or `NAME (no namespace)`; NS "" below means no namespace.
_SPELLED_OUT = re.compile(r"(.+) \((?:namespace ([^()\s]+)|no namespace)\)")


def _spelled_out(value: str) -> tuple[str, str] | None:
    m = _SPELLED_OUT.fullmatch(value)
    return None if m is None else (m[1], m[2] or "")


def readings(value: str) -> list[Reading]:
    """The parties a non-SPIFFE name selects, as the service graph names them (graph.py
    `node_names`, rollup.py): `payments` a service in any namespace; `payments.shop` also the
    service `payments` in the namespace `shop` (split at the last dot: a namespace is a DNS
    label); `unknown` also a party with no identity and no service, `unknown.shop` such a
    party in `shop`; `a.b (no namespace)` and `a (namespace b)` exactly that service in that
    namespace (or none). Distinct services, so no event matches two readings."""
    spelled = _spelled_out(value)
    if spelled is not None:
        name, namespace = spelled
        return [(name, namespace)] + ([(None, namespace)] if name == UNKNOWN else [])
    found: list[Reading] = [(value, None)]
    if value == UNKNOWN:
        found.append((None, None))
    service, dot, namespace = value.rpartition(".")
    if dot and service and namespace:
        found.append((service, namespace))
        if service == UNKNOWN:
            found.append((None, namespace))
    return found


def _reading_sql(side: str, reading: Reading, *, total: bool = False) -> tuple[str, list[object]]:
    """`side`'s party is this reading. `total`: written with IS, so that it is never NULL
    (its NOT is then true where a column is NULL)."""
    service, namespace = reading
    eq = "IS" if total else "="
    params: list[object] = []
    if service is None:
        text = f"{side}_service IS NULL AND {side}_id IS NULL"
    else:
        text = f"{side}_service {eq} ?"
        params.append(service)
    if namespace == "":  # no namespace (the rollup's coalesce(ns, ''))
        text += f" AND coalesce({side}_ns, '') = ''"
    elif namespace is not None:
        text += f" AND {side}_ns {eq} ?"
        params.append(namespace)
    return text, params


def _party_arms(side: str, value: str, *, total: bool = False) -> list[tuple[str, list[object]]]:
    """The disjoint conditions under which `side`'s party is `value`, one per reading."""
    spelled = _spelled_out(value)
    if spelled is not None and _SPIFFE.match(spelled[0]):  # a SPIFFE ID in a namespace or none
        identity, namespace = spelled
        eq = "IS" if total else "="
        if namespace:
            return [(f"{side}_id {eq} ? AND {side}_ns {eq} ?", [identity, namespace])]
        return [(f"{side}_id {eq} ? AND coalesce({side}_ns, '') = ''", [identity])]
    if _SPIFFE.match(value):
        return [(f"{side}_id {'IS' if total else '='} ?", [value])]
    return [_reading_sql(side, reading, total=total) for reading in readings(value)]


def _party(side: str, value: str, *, total: bool = False) -> tuple[str, list[object]]:
    """`side`'s party is `value`, as one condition."""
    arms = _party_arms(side, value, total=total)
    if len(arms) == 1:
        return arms[0]
    return (
        "(" + " OR ".join(f"({text})" for text, _ in arms) + ")",
        [value for _, params in arms for value in params],
    )


def _service_arms(value: str) -> list[tuple[str, list[object]]]:
    """`value` on either side: its readings as the caller, then as the callee where the caller
    is not it (a service calling itself comes once)."""
    caller, caller_params = _party("source", value, total=True)
    arms = _party_arms("source", value)
    for text, params in _party_arms("dest", value):
        arms.append((f"{text} AND NOT ({caller})", [*params, *caller_params]))
    return arms


ONCE_PER_CALL = (
    "kind IN ('http', 'tcp') AND NOT (direction = 'outbound' AND hop IS NOT NULL"
    " AND trace_id IS NOT NULL AND EXISTS (SELECT 1 FROM events i"
    " WHERE i.trace_id = events.trace_id AND i.hop = events.hop"
    " AND i.direction = 'inbound' AND i.kind IN ('http', 'tcp')))"
)
"""`calls=once`: the events the service graph counts (rollup.py `fold` over the whole ledger):
every call event but an outbound one whose hop an inbound event of the same trace reports."""


def _prefix_end(prefix: str) -> str | None:
    """The smallest string greater than every string starting with `prefix` (BINARY order)."""
    while prefix:
        last = ord(prefix[-1])
        if last < 0x10FFFF:
            return prefix[:-1] + chr(last + 1)
        prefix = prefix[:-1]
    return None


def has_equality(q: Query) -> bool:
    """Whether an equality filter with its own `(column, time_ns)` index narrows the query."""
    exact_path = q.path is not None and not q.path.endswith("*")
    exact_status = q.status is not None and not _STATUS_CLASS.match(q.status)
    rare_kind = q.kind is not None and q.kind not in CALL_KINDS
    rare_decision = q.decision is not None and q.decision != "allow"
    return any(
        (
            q.source,
            q.dest,
            q.service,
            q.trace_id,
            exact_path,
            exact_status,
            rare_kind,
            rare_decision,
        )
    )


def range_clause(q: Query) -> tuple[str, list[object]] | None:
    """The SQL of the query's range filter (status class or path prefix), if it has one."""
    if q.path is not None and q.path.endswith("*"):
        prefix = q.path[:-1]
        end = _prefix_end(prefix)
        if end is None:
            return "path >= ?", [prefix]
        return "path >= ? AND path < ?", [prefix, end]
    if q.status is not None and _STATUS_CLASS.match(q.status):
        low, high = _status(q.status) or (0, 0)
        return "status >= ? AND status < ?", [low, high]
    return None


def _arms(q: Query) -> tuple[list[tuple[str, list[object]]], frozenset[str]]:
    """The disjoint conditions whose index scans, merged, give the query's rows, and which of
    `service`, `source` and `dest` they take care of: `service` when given (its two sides),
    else a source or destination of several readings. None (one scan) otherwise."""
    if q.service is not None:
        return _service_arms(q.service), frozenset({"service"})
    # the callee first: a caller `unknown` reads as "no service", which many events share
    for side, value in (("dest", q.dest), ("source", q.source)):
        if value is not None:
            arms = _party_arms(side, value)
            if len(arms) > 1:
                return arms, frozenset({side})
    return [], frozenset()


def _clauses(
    q: Query,
    after: Cursor | None,
    range_index: bool = True,
    done: frozenset[str] = frozenset(),
) -> tuple[list[str], list[object]]:
    """WHERE terms but those of the filters in `done` (the arms'); with `range_index` False,
    a range filter is written so that no index serves it (`+column`), leaving the planner the
    time-ordered scan."""
    clauses: list[str] = []
    params: list[object] = []

    def add(clause: str, *values: object) -> None:
        clauses.append(clause)
        params.extend(values)

    if q.source is not None and "source" not in done:
        text, values = _party("source", q.source)
        add(text, *values)
    if q.dest is not None and "dest" not in done:
        text, values = _party("dest", q.dest)
        add(text, *values)
    ranged = range_clause(q)
    if ranged is not None:
        text, values = ranged
        add(text if range_index else text.replace("path", "+path").replace("status", "+status"))
        params.extend(values)
    if q.path is not None and not q.path.endswith("*"):
        add("path = ?", q.path)
    if q.status is not None and not _STATUS_CLASS.match(q.status):
        add("status = ?", int(q.status))
    if q.decision is not None:
        add("decision = ?", q.decision)
        if q.decision != "allow":  # the partial index's own term (store/sqlite.py)
            clauses.append("decision IN ('deny', 'audit')")
    if q.kind is not None:
        add("kind = ?", q.kind)
        if q.kind not in CALL_KINDS:
            clauses.append("kind NOT IN ('http', 'tcp')")
    if q.trace_id is not None and len(q.trace_id) == 32:
        add("trace_id = ?", q.trace_id)
    elif q.trace_id is not None:  # a prefix: every id starting with it, on the same index
        add("trace_id >= ? AND trace_id < ?", *trace_range(q.trace_id))
    if q.direction is not None:
        add("direction = ?", q.direction)
    if q.calls == "once":
        add(ONCE_PER_CALL)
    if q.since_ns is not None:
        add("time_ns >= ?", q.since_ns)
    if q.until_ns is not None:
        add("time_ns < ?", q.until_ns)
    if after is not None:
        if q.order == "newest":
            add("time_ns <= ? AND (time_ns < ? OR idx < ?)", after.time_ns, after.time_ns)
            params.append(after.index)
        elif q.order == "oldest":
            add("time_ns >= ? AND (time_ns > ? OR idx > ?)", after.time_ns, after.time_ns)
            params.append(after.index)
        else:
            add("idx > ?", after.index)
    return clauses, params


_ORDER_BY = {
    "newest": "time_ns DESC, idx DESC",
    "oldest": "time_ns ASC, idx ASC",
    "index": "idx ASC",
}
_SELECT = "SELECT idx, time_ns FROM events"


def sql(
    q: Query,
    after: Cursor | None = None,
    *,
    limit: int | None = None,
    range_index: bool | None = None,
) -> tuple[str, list[object]]:
    """The SELECT of one page's `(idx, time_ns)` (`limit` rows; default q.limit).

    Only keys: a filter whose index holds every column it tests (or a range filter whose
    matches must be sorted by time) then never reads the table, and the sorter keeps just the
    page's rows; `run` reads the page's event bytes by index afterwards.

    A range filter (status class, path prefix) uses its index unless an equality filter
    narrows the query or `range_index` is False (see `run`)."""
    if range_index is None:
        range_index = not has_equality(q)
    arms, done = _arms(q)
    clauses, params = _clauses(q, after, range_index, done)
    tail = f" ORDER BY {_ORDER_BY[q.order]} LIMIT ?"
    count = q.limit if limit is None else limit
    if not arms:
        where = f" WHERE {' AND '.join(clauses)}" if clauses else ""
        return _SELECT + where + tail, [*params, count]
    # Either side, or several readings of a name: one index scan per arm, merged in order;
    # the arms are disjoint (a service calling itself is left out of the callee's arms), so
    # no row comes twice.
    selects, values = [], []
    for text, arm_params in arms:
        selects.append(f"{_SELECT} WHERE {' AND '.join([text, *clauses])}")
        values.extend([*arm_params, *params])
    return " UNION ALL ".join(selects) + tail, [*values, count]


def run(reader: SqlReader, q: Query, cursor: str | None = None) -> Page:
    """One page of matching events; `next` is set when more rows may follow."""
    after = None if cursor is None else Cursor.decode(cursor, q)
    text, params = sql(q, after, limit=q.limit + 1, range_index=_range_index(reader, q))
    keys = reader.query(text, params)
    more = len(keys) > q.limit
    keys = keys[: q.limit]
    data: dict[int, bytes] = {}
    for start in range(0, len(keys), 500):
        chunk = [int(index) for index, _ in keys[start : start + 500]]
        marks = ",".join("?" * len(chunk))
        for index, blob in reader.query(
            f"SELECT idx, data FROM events WHERE idx IN ({marks})", chunk
        ):
            data[int(index)] = bytes(blob)
    next_cursor = None
    if more:
        last_index, last_time = keys[-1]
        next_cursor = Cursor(int(last_time), int(last_index), q.fingerprint()).encode()
    return Page([(int(i), data[int(i)]) for i, _ in keys], next_cursor)


RANGE_CAP = 20_000


def _range_index(reader: SqlReader, q: Query) -> bool | None:
    """For a range filter alone: its index when it matches fewer than RANGE_CAP events (then
    sorting their keys is cheap); else the newest-first scan of the time index, which finds a
    page within 100·N/RANGE_CAP rows at worst (N events stored), since matches are at least
    that dense. Counting reads the index only and stops at the cap."""
    ranged = range_clause(q)
    if ranged is None or has_equality(q):
        return None
    text, values = ranged
    rows = reader.query(
        f"SELECT count(*) FROM (SELECT 1 FROM events WHERE {text} LIMIT ?)", [*values, RANGE_CAP]
    )
    return int(rows[0][0]) < RANGE_CAP


def parse_time(text: str, now_ns: int, name: str = "since") -> int:
    """Nanoseconds since the epoch, `now`, a duration before now (`durations.duration_s`:
    `15m`, `1h30m`, `2w`) or RFC 3339, to the nanosecond (`…:00.123456789Z`, as event times
    are; digits beyond the ninth are dropped), or a date alone, its midnight UTC; within the
    64-bit nanoseconds of event times (1677 to 2262)."""
    text = text.strip()
    if text == "now":
        return now_ns
    if text.isascii() and text.isdigit():  # Unix ns; past 20 digits out of range anyway
        return _in_range(text, int(text) if len(text) <= 20 else 2**64, name)
    seconds_before = duration_s(text)
    if seconds_before is not None:
        return _in_range(text, now_ns - seconds_before * 1_000_000_000, name)
    # RFC 3339 §5.6: "Z" may be written "z"; a full-date alone is that day's start in UTC
    utc = text[:-1] + "+00:00" if text[-1:] in ("Z", "z") else text
    if _FULL_DATE.fullmatch(utc):
        utc += "T00:00:00+00:00"
    # datetime keeps microseconds: the fraction is read here, to the nanosecond
    fraction = _FRACTION.search(utc)
    fraction_ns = 0
    if fraction is not None:
        fraction_ns = int(fraction[1][:9].ljust(9, "0"))
        utc = utc[: fraction.start()] + utc[fraction.end() :]
    try:
        moment = datetime.fromisoformat(utc)
    except ValueError:
        raise QueryError(
            f"{name}: {text!r} is neither a duration (15m, 1h30m) nor a time "
            "(2026-11-28T10:00:00Z, or the day 2026-11-28)"
        ) from None
    if moment.tzinfo is None:
        raise QueryError(f"{name}: {text!r} needs a time zone, e.g. 2026-11-28T10:00:00Z")
    try:
        seconds = (moment - _EPOCH) // timedelta(seconds=1)  # whole: no fraction is left
    except (OverflowError, ValueError):  # 0001-01-01T00:00:00+14:00
        return _in_range(text, -(2**64), name)
    return _in_range(text, seconds * 1_000_000_000 + fraction_ns, name)


def _in_range(text: str, ns: int, name: str) -> int:
    if not -(2**63) <= ns < 2**63:
        raise QueryError(f"{name}: {text!r} is out of range: times go from 1677 to 2262")
    return ns


def trace_range(prefix: str) -> tuple[str, str]:
    """[low, high) of the trace ids starting with `prefix`: "g" sorts after every hex digit."""
    return prefix, prefix + "g"


def check_window(since_ns: int | None, until_ns: int | None, *, until_is_now: bool = False) -> None:
    """Windows are [since, until): one whose end is not after its start selects nothing, and
    is refused rather than answered with an empty result that looks like a quiet hour.
    `until_is_now`: no until was given, and `until_ns` is the time of the request."""
    if since_ns is None or until_ns is None or until_ns > since_ns:
        return
    if until_is_now:
        raise QueryError(
            f"since ({_iso(since_ns)}) is in the future (now is {_iso(until_ns)}): the window "
            "is empty; give an earlier since (15m means 15 minutes before now)"
        )
    raise QueryError(
        f"until ({_iso(until_ns)}) is not after since ({_iso(since_ns)}): the window is "
        "empty; swap them, or give a larger since (15m means 15 minutes before now)"
    )


def _iso(ns: int) -> str:
    seconds, rest = divmod(ns, 1_000_000_000)
    try:
        moment = datetime.fromtimestamp(seconds, tz=UTC)
    except (OverflowError, OSError, ValueError):  # before year 1: say the number
        return f"{ns} ns"
    return moment.strftime("%Y-%m-%dT%H:%M:%S") + (f".{rest:09d}".rstrip("0") if rest else "") + "Z"


def single_params(items: Iterable[tuple[str, str]]) -> dict[str, str]:
    """URL parameters as a dict, refusing any given twice (`?since=1h&since=2h`): which one
    was meant cannot be known, and silently taking the last would answer another question."""
    params: dict[str, str] = {}
    for name, value in items:
        if name in params:
            raise QueryError(f"{name}: given more than once; give each parameter once")
        params[name] = value
    return params


def _some(names: list[str], shown: int = 5) -> str:
    """The first few `names`, each cut to 40 characters, and how many more: an answer (and
    a log line) that does not grow with what a request made up."""
    listed = ", ".join(repr(name[:40]) for name in names[:shown])
    return listed if len(names) <= shown else f"{listed} and {len(names) - shown:,} more"


def parse_window(
    params: Mapping[str, str], now_ns: int, *, default_since: str | None = None
) -> tuple[int | None, int | None]:
    """`since` (or `default_since`) and `until` of a window-only request (`/v1/graph`, the
    console's findings and policies); other names, bad times and an empty window fail."""
    unknown = sorted(set(params) - {"since", "until"})
    if unknown:
        raise QueryError(f"unknown parameter(s) {_some(unknown)}; use since, until")
    since_text, until_text = params.get("since", default_since), params.get("until")
    since = None if since_text is None else parse_time(since_text, now_ns, "since")
    until = None if until_text is None else parse_time(until_text, now_ns, "until")
    check_window(since, now_ns if until is None else until, until_is_now=until is None)
    return since, until


def parse_params(
    params: Mapping[str, str], now_ns: int, *, max_limit: int = MAX_LIMIT
) -> tuple[Query, str | None]:
    """A `Query` and the cursor from URL parameters (`GET /v1/events?…`); unknown names fail."""
    unknown = sorted(set(params) - set(PARAMS))
    if unknown:
        raise QueryError(f"unknown parameter(s) {_some(unknown)}; use {', '.join(PARAMS)}")
    limit_text = params.get("limit", str(DEFAULT_LIMIT))
    if not (limit_text.isascii() and limit_text.isdigit()) or not 1 <= int(limit_text) <= max_limit:
        raise QueryError(f"limit: give a number from 1 to {max_limit}")
    order = params.get("order", "newest")
    if order not in ORDERS:
        raise QueryError(f"order: {order!r} is not one of {', '.join(ORDERS)}")
    since, until = params.get("since"), params.get("until")
    trace = params.get("trace")
    query = Query(
        source=params.get("source"),
        dest=params.get("dest"),
        service=params.get("service"),
        path=params.get("path"),
        status=params.get("status"),
        decision=params.get("decision"),
        trace_id=None if trace is None else trace.lower(),
        kind=params.get("kind"),
        direction=params.get("direction"),
        calls=params.get("calls"),
        since_ns=None if since is None else parse_time(since, now_ns, "since"),
        until_ns=None if until is None else parse_time(until, now_ns, "until"),
        order=order,  # type: ignore[arg-type]  # checked against ORDERS above
        limit=int(limit_text),
    )
    return query, params.get("cursor")


def describe(q: Query) -> str:
    """The filters in URL-parameter form, for audit records and messages (`source=a&limit=5`)."""
    parts = []
    for name, value in (
        ("source", q.source),
        ("dest", q.dest),
        ("service", q.service),
        ("path", q.path),
        ("status", q.status),
        ("decision", q.decision),
        ("trace", q.trace_id),
        ("kind", q.kind),
        ("direction", q.direction),
        ("calls", q.calls),
        ("since", q.since_ns),
        ("until", q.until_ns),
    ):
        if value is not None:
            parts.append(f"{name}={value}")
    return "&".join([*parts, f"order={q.order}", f"limit={q.limit}"])
