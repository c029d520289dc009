"""`GET /metrics`: the server's Prometheus metrics, one registry per app.

Place in the house: part of `server/` (routes only). Counters are fed from the collector's
commit path (`Collector.observe_commits`), so they count what is durable in the ledger --
never a batch that failed, never a duplicate id sent again; ledger gauges are read at scrape
time. No global state: each `create_app` builds its own `Metrics` with its own
`CollectorRegistry`, kept at `app.state.metrics`.

API for other parts of the server:

    metrics = request.app.state.metrics          # or handed over when wiring the server
    metrics.count_ingest(adapter, accepted, rejected)
        after an ingest adapter handled a request: `accepted` records mapped to events and
        committed, `rejected` records refused (OTLP partial success, malformed lines).
        `adapter` is a short fixed name ("api", "otlp-http", "otlp-grpc", "envoy", ...).
    metrics.set_spool_depth(reporter, depth)
        a sidecar's disk-spool backlog in records. Nothing reports it yet: the sidecar's
        spool exists but does not tell the server its depth; the gauge is there for it.

Metrics (Prometheus text exposition format 0.0.4, `prometheus-client`):

    auditmesh_requests_total{source,destination,status_class,decision}
        committed http/tcp events. `source`/`destination` are service names (the SPIFFE
        ID when the event has no service name, "unknown" when neither); `status_class`
        is 2xx..5xx ("none" for tcp); `decision` allow/deny/audit/none.
        Never labelled by path, IP or event id: cardinality stays services^2 x 5 x 4.
    auditmesh_events_total{kind,outcome}        every committed event
    auditmesh_ingest_accepted_total{adapter}    records ingested, by adapter
    auditmesh_ingest_rejected_total{adapter}    records refused, by adapter
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

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.exposition import generate_latest
from prometheus_client.metrics_core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector as MetricSource
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from auditmesh.collector import Collector
from auditmesh.ledger.log import Entry
from auditmesh.store.base import Store

# Positions in `store.base.columns_of(event)` (an Entry's index columns): read from the
# entry rather than decoding its JSON again, so counting costs next to nothing per event.
COL_KIND, COL_SOURCE_ID, COL_SOURCE_SERVICE = 1, 2, 3
COL_DEST_ID, COL_DEST_SERVICE, COL_STATUS, COL_DECISION, COL_OUTCOME = 4, 5, 6, 7, 9

REQUEST_KINDS = ("http", "tcp")
UNKNOWN = "unknown"
NONE = "none"
# The classic text format (what `generate_latest` writes), which every Prometheus scrapes.
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def status_class(status: object) -> str:
    if isinstance(status, int) and 100 <= status <= 599:
        return f"{status // 100}xx"
    return NONE


def _party(identity: object, service: object) -> str:
    for value in (service, identity):
        if isinstance(value, str) and value:
            return value
    return UNKNOWN


def request_labels(columns: Sequence[object]) -> tuple[str, str, str, str]:
    """(source, destination, status_class, decision) of one entry's index columns."""
    decision = columns[COL_DECISION]
    return (
        _party(columns[COL_SOURCE_ID], columns[COL_SOURCE_SERVICE]),
        _party(columns[COL_DEST_ID], columns[COL_DEST_SERVICE]),
        status_class(columns[COL_STATUS]),
        decision if isinstance(decision, str) else NONE,
    )


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
        self.requests = Counter(
            "auditmesh_requests",
            "Calls between services committed to the ledger (http and tcp events).",
            ["source", "destination", "status_class", "decision"],
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
        self.spool_depth = Gauge(
            "auditmesh_sidecar_spool_depth",
            "Records waiting in a sidecar's disk spool, as last reported by that sidecar.",
            ["reporter"],
            registry=self.registry,
        )
        self.registry.register(_LedgerGauges(store, collector, clock_ns))
        collector.observe_commits(self.count_committed)

    def count_committed(self, entries: list[Entry]) -> None:
        """Called by the collector with the entries one commit added."""
        requests: Tally[tuple[str, str, str, str]] = Tally()
        events: Tally[tuple[str, str]] = Tally()
        for entry in entries:
            columns = entry.columns
            kind, outcome = str(columns[COL_KIND]), str(columns[COL_OUTCOME])
            events[(kind, outcome)] += 1
            if kind in REQUEST_KINDS:
                requests[request_labels(columns)] += 1
        for labels, count in requests.items():
            self.requests.labels(*labels).inc(count)
        for (kind, outcome), count in events.items():
            self.events.labels(kind, outcome).inc(count)

    def count_ingest(self, adapter: str, accepted: int, rejected: int) -> None:
        """Records an ingest adapter accepted (and committed) and rejected."""
        if accepted:
            self.ingest_accepted.labels(adapter).inc(accepted)
        if rejected:
            self.ingest_rejected.labels(adapter).inc(rejected)
        if not accepted and not rejected:  # make the adapter's series visible from zero
            self.ingest_accepted.labels(adapter)
            self.ingest_rejected.labels(adapter)

    def set_spool_depth(self, reporter: str, depth: int) -> None:
        self.spool_depth.labels(reporter).set(depth)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def endpoint(self, request: Request) -> Response:
        """GET /metrics (the checkpoint read touches SQLite: off the event loop)."""
        body = await run_in_threadpool(self.render)
        return Response(body, media_type=CONTENT_TYPE)
