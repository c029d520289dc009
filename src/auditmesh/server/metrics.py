"""`GET /metrics`: the server's Prometheus metrics, one registry per app.

Place in the house: part of `server/` (routes only). Counters are fed from the collector's
commit path (`Collector.observe_commits`), so they count what is durable in the ledger --
never a batch that failed, never a duplicate id sent again; ledger gauges are read at scrape
time. No global state: each `create_app` builds its own `Metrics` with its own
`CollectorRegistry`, kept at `app.state.metrics`.

API for other parts of the server:

    metrics = request.app.state.metrics          # or handed over when wiring the server
    metrics.count_ingest(adapter, accepted, rejected)
        raw counter access: `accepted` records committed, `rejected` records refused.
        `adapter` is a short fixed name ("envoy", "linkerd", "otlp").
    metrics.count_otlp(protocol, signal, result, rejected)
        the OTLP receivers (`ingest/otlp_http.py`, `ingest/otlp_grpc.py`) after each Export
        request; `create_app` and `server/run.py` bind `protocol` ("http" / "grpc").
    metrics.set_spool_depth(reporter, depth)
        a sidecar's disk-spool backlog in records: the mesh listener (`server/mesh.py`)
        reads it from the `x-auditmesh-spool-depth` header of every batch a sidecar POSTs.

Ingest counts by adapter (issue 5). The adapter is the second segment of an ingested
event's `reporter`, `ingest:<adapter>:<source>`, whatever the way in:

- accepted: counted here, from the commit, like every other counter: an event counts once,
  when it enters the ledger. A retried OTLP export or an access-log file read twice adds
  nothing (the ids are derived from the records), and a request that fails to commit
  counts nothing. So OTLP/HTTP and OTLP/gRPC share the adapter "otlp"; which protocol
  carried the records is in `auditmesh_otlp_requests_total{protocol}`.
- rejected by OTLP: the receivers report `partial_success.rejected_*` per request
  (`count_otlp`); a retried export whose records are refused again counts again.
- rejected by `auditmesh ingest envoy|linkerd`: the CLI refuses malformed lines itself and
  tells the server in one `system` event per report (at the end of a run; with `--follow`
  also when it has caught up, at most once a minute), reporter `ingest:<adapter>:<source>`,
  label `ingest.refused` = the number of lines (`REFUSED_LABEL`). This observer turns it
  into the reject counter, and the ledger keeps an audit trace of the refused input.
  Only for those adapters (`REPORTING_ADAPTERS`): a report that another server's ledger
  held and `auditmesh export otlp` relayed here arrives as `ingest:otlp:<service>`; it
  reports rejects of that other server, so here it is one accepted otlp record (OTLP's
  own rejects come from `count_otlp`).
- adapter labels are limited to `ADAPTERS`; any other `ingest:<x>:` reporter (anyone may
  POST events) counts as "other", so no client can grow the label set.
- attested events (our sidecars' own) are never ingested and are skipped with a prefix
  check of their canonical JSON; every other event costs one small decode (~1 µs).

Metrics (Prometheus text exposition format 0.0.4, `prometheus-client`):

    auditmesh_requests_total{source,destination,status,decision,direction}
        committed http/tcp events. `source`/`destination` are service names (the SPIFFE
        ID when the event has no service name, "unknown" when neither); `status` is the
        HTTP status code as text ("200", "503"; only codes 100-599, else "none", as for
        tcp and for a call that got no answer); `decision` allow/deny/audit/none;
        `direction` the reporting side, inbound/outbound ("none" when the event does not
        say). A call between two sidecars is reported by both, so count calls on one side:
        `sum by (source, destination) (rate(auditmesh_requests_total{direction="inbound"}[5m]))`.
        Never labelled by path, IP or event id: cardinality stays below
        services^2 x 501 x 4, and in practice a handful of codes per pair. Anyone may POST
        events naming any service, so past `MAX_PARTIES` distinct names a new one counts
        as "other" (the names seen first, our sidecars' own among them, keep their series).
    auditmesh_events_total{kind,outcome}        every committed event
    auditmesh_ingest_accepted_total{adapter}    ingested events committed, by adapter
    auditmesh_ingest_rejected_total{adapter}    records refused, by adapter
    auditmesh_otlp_requests_total{protocol,signal,result}
        OTLP Export requests: protocol http/grpc, signal traces/logs, result one of
        `OTLP_RESULTS` (gRPC's own size limit refuses before our handler: not counted);
        "timeout" is an OTLP/HTTP body not whole within --body-timeout (answered 503),
        "invalid" data that was whole but could not be decoded (or a body cut short)
    auditmesh_sidecar_spool_depth{reporter}     see `set_spool_depth`
    auditmesh_ledger_entries                    entries in the log (at scrape)
    auditmesh_checkpoint_size                   entries covered by the latest checkpoint
    auditmesh_checkpoint_age_seconds            now - latest checkpoint's signing time
    auditmesh_collector_failed                  1 once the collector stopped on a storage
                                                failure (events are then refused)
"""

from __future__ import annotations

import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence

import msgspec
from prometheus_client import CollectorRegistry, Counter, Gauge, disable_created_metrics
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as MetricSource
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from auditmesh.collector import Collector
from auditmesh.ledger.log import Entry
from auditmesh.store.base import Store

# No `*_created` gauge beside each counter: a second series per label set that says only when
# the server started (and the classic text format has no place for it; OpenMetrics does).
disable_created_metrics()  # type: ignore[no-untyped-call]  # untyped in prometheus-client

# Positions in `store.base.columns_of(event)` (an Entry's index columns): read from the
# entry rather than decoding its JSON again, so counting costs next to nothing per event.
COL_KIND, COL_SOURCE_ID, COL_SOURCE_SERVICE = 1, 2, 3
COL_DEST_ID, COL_DEST_SERVICE, COL_STATUS, COL_DECISION, COL_OUTCOME = 4, 5, 6, 7, 9
COL_DIRECTION = 10

REQUEST_KINDS = ("http", "tcp")
# Ingest counts (see the module docstring).
INGEST_PREFIX = "ingest:"
ADAPTERS = frozenset({"envoy", "linkerd", "otlp"})
OTHER_ADAPTER = "other"
REFUSED_LABEL = "ingest.refused"  # also written by cli/ingest.py's report of refused lines
# The adapters whose CLI (`auditmesh ingest envoy|linkerd`) writes those reports; elsewhere
# (a report relayed over OTLP, any other reporter) such an event is an accepted record.
REPORTING_ADAPTERS = frozenset({"envoy", "linkerd"})
OTLP_RESULTS = ("ok", "partial", "invalid", "too_large", "unsupported", "unavailable", "timeout")
# Canonical JSON (RFC 8785) sorts keys and omits defaults: an attested event, and only
# one, starts like this ("attested" is the first key of AuditEvent in code-point order).
_ATTESTED_PREFIX = b'{"attested":true'
UNKNOWN = "unknown"
MAX_PARTIES = 500  # distinct source/destination label values before new ones are "other"
OTHER_PARTY = "other"
NONE = "none"
# The classic text format (what `generate_latest` writes), which every Prometheus scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def status_label(status: object) -> str:
    """The `status` label: an HTTP status code 100-599 as text, else "none"."""
    if isinstance(status, int) and 100 <= status <= 599:
        return str(status)
    return NONE


def _party(identity: object, service: object) -> str:
    for value in (service, identity):
        if isinstance(value, str) and value:
            return value
    return UNKNOWN


def request_labels(columns: Sequence[object]) -> tuple[str, str, str, str, str]:
    """(source, destination, status, decision, direction) of one entry's index columns."""
    decision, direction = columns[COL_DECISION], columns[COL_DIRECTION]
    return (
        _party(columns[COL_SOURCE_ID], columns[COL_SOURCE_SERVICE]),
        _party(columns[COL_DEST_ID], columns[COL_DEST_SERVICE]),
        status_label(columns[COL_STATUS]),
        decision if isinstance(decision, str) else NONE,
        direction if isinstance(direction, str) else NONE,
    )


class _Reported(msgspec.Struct):
    """The fields of a committed event the ingest counters need (the rest is skipped)."""

    reporter: str = ""
    kind: str = ""
    labels: dict[str, str] = {}


_REPORTED = msgspec.json.Decoder(_Reported)


def ingest_adapter(reporter: str) -> str | None:
    """`ingest:<adapter>:<source>` → the adapter label; None for other reporters."""
    if not reporter.startswith(INGEST_PREFIX):
        return None
    adapter = reporter[len(INGEST_PREFIX) :].partition(":")[0]
    return adapter if adapter in ADAPTERS else OTHER_ADAPTER


def refused_count(labels: dict[str, str]) -> int | None:
    """The line count of an ingest CLI's report of refused lines, None if not one."""
    value = labels.get(REFUSED_LABEL)
    if value is None or not value.isascii() or not value.isdigit() or len(value) > 15:
        return None
    return int(value)


class _LedgerGauges(MetricSource):
    """Gauges computed at scrape time from the log and its latest checkpoint."""

    def __init__(self, store: Store, collector: Collector, clock_ns: Callable[[], int]) -> None:
        self._store = store
        self._collector = collector
        self._clock_ns = clock_ns

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "auditmesh_ledger_entries",
            "Entries in the ledger (the Merkle log's size).",
            value=self._collector.log.size,
        )
        latest = self._store.latest_checkpoint()
        size = GaugeMetricFamily(
            "auditmesh_checkpoint_size", "Entries covered by the latest signed checkpoint."
        )
        age = GaugeMetricFamily(
            "auditmesh_checkpoint_age_seconds",
            "Seconds since the latest checkpoint was signed (absent before the first).",
        )
        if latest is not None:
            size.add_metric([], latest.size)
            age.add_metric([], max(0, self._clock_ns() - latest.signed_ns) / 1e9)
        yield size
        yield age
        yield GaugeMetricFamily(
            "auditmesh_collector_failed",
            "1 when the collector stopped on a storage failure and refuses events.",
            value=0 if self._collector.failure is None else 1,
        )


class Metrics:
    """One app's metrics: its registry, the counters, and the `/metrics` endpoint."""

    def __init__(
        self, store: Store, collector: Collector, *, clock_ns: Callable[[], int] = time.time_ns
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self._parties: set[str] = set()  # source/destination label values so far
        self.requests = Counter(
            "auditmesh_requests",
            "Calls between services committed to the ledger (http and tcp events), by the "
            "side that reported them: a call both sidecars saw counts once per direction.",
            ["source", "destination", "status", "decision", "direction"],
            registry=self.registry,
        )
        self.events = Counter(
            "auditmesh_events",
            "Audit events committed to the ledger, by kind and outcome.",
            ["kind", "outcome"],
            registry=self.registry,
        )
        self.ingest_accepted = Counter(
            "auditmesh_ingest_accepted",
            "Records taken in by an ingest adapter and committed.",
            ["adapter"],
            registry=self.registry,
        )
        self.ingest_rejected = Counter(
            "auditmesh_ingest_rejected",
            "Records an ingest adapter refused (malformed, unmappable).",
            ["adapter"],
            registry=self.registry,
        )
        self.otlp_requests = Counter(
            "auditmesh_otlp_requests",
            "OTLP Export requests by protocol (http, grpc), signal and result.",
            ["protocol", "signal", "result"],
            registry=self.registry,
        )
        self.spool_depth = Gauge(
            "auditmesh_sidecar_spool_depth",
            "Records waiting in a sidecar's disk spool, as last reported by that sidecar.",
            ["reporter"],
            registry=self.registry,
        )
        self.registry.register(_LedgerGauges(store, collector, clock_ns))
        collector.observe_commits(self.count_committed)

    def _party(self, name: str) -> str:
        if name not in self._parties:
            if len(self._parties) >= MAX_PARTIES:
                return OTHER_PARTY
            self._parties.add(name)
        return name

    def count_committed(self, entries: list[Entry]) -> None:
        """Called by the collector with the entries one commit added."""
        requests: Tally[tuple[str, str, str, str, str]] = Tally()
        events: Tally[tuple[str, str]] = Tally()
        accepted: Tally[str] = Tally()
        rejected: Tally[str] = Tally()
        for entry in entries:
            columns = entry.columns
            kind, outcome = str(columns[COL_KIND]), str(columns[COL_OUTCOME])
            events[(kind, outcome)] += 1
            if kind in REQUEST_KINDS:
                source, destination, status, decision, direction = request_labels(columns)
                party = self._party
                requests[(party(source), party(destination), status, decision, direction)] += 1
            if not entry.data.startswith(_ATTESTED_PREFIX):
                self._tally_ingest(entry.data, accepted, rejected)
        for labels, count in requests.items():
            self.requests.labels(*labels).inc(count)
        for (kind, outcome), count in events.items():
            self.events.labels(kind, outcome).inc(count)
        for adapter in accepted.keys() | rejected.keys():
            self.count_ingest(adapter, accepted[adapter], rejected[adapter])

    @staticmethod
    def _tally_ingest(data: bytes, accepted: Tally[str], rejected: Tally[str]) -> None:
        try:
            reported = _REPORTED.decode(data)
        except msgspec.DecodeError:  # cannot happen for a committed event; never fail a count
            return
        adapter = ingest_adapter(reported.reporter)
        if adapter is None:
            return
        refused = refused_count(reported.labels) if reported.kind == "system" else None
        if refused is None or adapter not in REPORTING_ADAPTERS:
            accepted[adapter] += 1
        else:
            rejected[adapter] += refused

    def count_ingest(self, adapter: str, accepted: int, rejected: int) -> None:
        """Records an ingest adapter accepted (and committed) and rejected."""
        if accepted:
            self.ingest_accepted.labels(adapter).inc(accepted)
        if rejected:
            self.ingest_rejected.labels(adapter).inc(rejected)
        if not accepted and not rejected:  # make the adapter's series visible from zero
            self.ingest_accepted.labels(adapter)
            self.ingest_rejected.labels(adapter)

    def count_otlp(self, protocol: str, signal: str, result: str, rejected: int) -> None:
        """One OTLP Export request; `rejected` records of it refused (partial success)."""
        self.otlp_requests.labels(protocol, signal, result).inc()
        self.count_ingest("otlp", 0, rejected)

    def set_spool_depth(self, reporter: str, depth: int) -> None:
        self.spool_depth.labels(reporter).set(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics (the checkpoint read touches SQLite: off the event loop)."""
        body = await run_in_threadpool(self.render)
        return Response(body, media_type=CONTENT_TYPE)
