"""`/metrics` ingest counts by adapter and the sidecar spool-depth gauge (issue 5): the
commit observer, the OTLP receivers, `auditmesh ingest` and its report of refused lines,
the emitter's spool-depth header and the mesh listener that reads it."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import grpc
import httpx
import msgspec
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from auditmesh.cli.ingest import REFUSED_LABEL as CLI_REFUSED_LABEL
from auditmesh.cli.ingest import Refused, refused_report
from auditmesh.cli.main import main
from auditmesh.collector import Collector
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import AuditEvent, decode_event, encode_ndjson
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.ingest import otlp
from auditmesh.proxy.emitter import SPOOL_DEPTH_HEADER, Emitter, EmitterConfig
from auditmesh.proxy.spool import SpoolConfig
from auditmesh.server.metrics import REFUSED_LABEL, Metrics, ingest_adapter, refused_count
from auditmesh.serverproc import ServerProcess, free_port
from tests.conftest import START_NS, fill, generate
from tests.ingest.test_otlp import STABLE_SERVER, logs, span, to_otlp_json, traces
from tests.server.meshserver import mesh_server
from tests.server.test_mesh import ORDERS, Mesh, join, reported_by
from tests.server.test_metrics import samples

DATA = Path(__file__).parents[1] / "ingest" / "data"
TEXT_LINES = (DATA / "istio-text.log").read_text().splitlines()
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
PROTOBUF = {"Content-Type": "application/x-protobuf"}


def accepted(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], adapter: str) -> float:
    return found.get(("auditmesh_ingest_accepted_total", (("adapter", adapter),)), 0.0)


def rejected(found: dict[tuple[str, tuple[tuple[str, str], ...]], float], adapter: str) -> float:
    return found.get(("auditmesh_ingest_rejected_total", (("adapter", adapter),)), 0.0)


def otlp_requests(
    found: dict[tuple[str, tuple[tuple[str, str], ...]], float], protocol: str
) -> dict[tuple[str, str], float]:
    """(signal, result) → requests, for one protocol."""
    counts: dict[tuple[str, str], float] = {}
    for (name, labels), value in found.items():
        fields = dict(labels)
        if name == "auditmesh_otlp_requests_total" and fields["protocol"] == protocol:
            counts[(fields["signal"], fields["result"])] = value
    return counts


def reported(events: list[AuditEvent], reporter: str) -> list[AuditEvent]:
    return [msgspec.structs.replace(e, reporter=reporter, attested=False) for e in events]


def bad_record(text: str) -> LogRecord:
    """A log record that claims to carry an audit event but does not: rejected."""
    return LogRecord(
        attributes=[KeyValue(key=otlp.EVENT_ATTRIBUTE, value=AnyValue(string_value=text))]
    )


def scrape(url: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    response = httpx.get(url + "/metrics")
    assert response.status_code == 200, response.text
    return samples(response.text)


# --- the commit observer, in process --------------------------------------------------------


def test_adapter_and_refused_count_parsing() -> None:
    assert ingest_adapter("ingest:envoy:access.log") == "envoy"
    assert ingest_adapter("ingest:linkerd:") == "linkerd"
    assert ingest_adapter("ingest:otlp:shop:with:colons") == "otlp"
    assert ingest_adapter("ingest:kafka-of-my-own:x") == "other"  # bounded label set
    assert ingest_adapter("spiffe://cluster.local/ns/shop/sa/orders") is None
    assert ingest_adapter("ingest") is None
    assert refused_count({REFUSED_LABEL: "3"}) == 3
    for bad in ("", "-1", "3.0", "²", "1" * 16):
        assert refused_count({REFUSED_LABEL: bad}) is None
    assert refused_count({}) is None
    assert CLI_REFUSED_LABEL == REFUSED_LABEL  # the CLI and the server agree on the label


def test_committed_ingest_events_count_once_by_adapter(
    ledger: Ledger, collector: Collector
) -> None:
    metrics = Metrics(ledger.store, collector)
    base = generate(12, seed=3)
    envoy = reported(base[:4], "ingest:envoy:access.log")
    linkerd = reported(base[4:6], "ingest:linkerd:web-7f9")
    otlp_events = reported(base[6:9], "ingest:otlp:shop")
    other = reported(base[9:10], "ingest:custom:feed")
    sidecar = [msgspec.structs.replace(e, attested=True) for e in base[10:]]
    collector.submit([*envoy, *linkerd, *otlp_events, *other, *sidecar]).result()
    collector.submit([*envoy, *otlp_events]).result()  # sent again: stored once, counted once
    refused = Refused(count=2, first=2, reason="the line ends early", last=9)
    report = refused_report(
        "ingest:envoy:access.log", refused, "access.log", Path("access.log.rejects"), START_NS
    )
    assert report.kind == "system" and report.labels[REFUSED_LABEL] == "2"
    collector.submit([report]).result()
    found = samples(metrics.render().decode())
    counted = {a: accepted(found, a) for a in ("envoy", "linkerd", "otlp", "other")}
    assert counted == {"envoy": 4, "linkerd": 2, "otlp": 3, "other": 1}
    assert rejected(found, "envoy") == 2 and rejected(found, "linkerd") == 0
    # the sidecars' own (attested) events are no ingest at all
    assert not any(dict(labels).get("adapter", "").startswith("spiffe") for _, labels in found)


def test_a_refusal_report_counts_as_rejects_only_from_the_ingest_cli(
    ledger: Ledger, collector: Collector
) -> None:
    """Regression: a report relayed by `auditmesh export otlp` (stored as reported by
    `ingest:otlp:<service>`) counted as this server's otlp rejects."""
    metrics = Metrics(ledger.store, collector)
    refused = Refused(count=5, first=1, reason="the line ends early", last=9)

    def report(reporter: str, at: int) -> AuditEvent:
        return refused_report(reporter, refused, "a.log", Path("a.log.rejects"), START_NS + at)

    linkerd = report("ingest:linkerd:web-7f9", 1)
    relayed = otlp.as_received(report("ingest:envoy:access.log", 2), "auditmesh-1")
    assert relayed.reporter == "ingest:otlp:auditmesh-1" and relayed.labels[REFUSED_LABEL] == "5"
    custom = report("ingest:custom:feed", 3)
    collector.submit([linkerd, relayed, custom]).result()
    found = samples(metrics.render().decode())
    assert rejected(found, "linkerd") == 5 and accepted(found, "linkerd") == 0
    assert rejected(found, "otlp") == 0 and accepted(found, "otlp") == 1
    assert rejected(found, "other") == 0 and accepted(found, "other") == 1


def test_count_otlp_counts_requests_and_rejected_records(
    ledger: Ledger, collector: Collector
) -> None:
    metrics = Metrics(ledger.store, collector)
    metrics.count_otlp("http", "logs", "partial", 3)
    metrics.count_otlp("http", "logs", "ok", 0)
    metrics.count_otlp("grpc", "traces", "invalid", 0)
    found = samples(metrics.render().decode())
    assert otlp_requests(found, "http") == {("logs", "partial"): 1, ("logs", "ok"): 1}
    assert otlp_requests(found, "grpc") == {("traces", "invalid"): 1}
    assert rejected(found, "otlp") == 3 and accepted(found, "otlp") == 0


# --- a real server: OTLP/HTTP, OTLP/gRPC and `auditmesh ingest` --------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, int]]:
    data = tmp_path_factory.mktemp("metrics-ingest") / "data"
    grpc_port = free_port()
    extra = ["--checkpoint-interval", "0.2", "--mesh-listen", "off"]
    extra += ["--otlp-grpc", f"127.0.0.1:{grpc_port}"]
    with ServerProcess(data, extra=extra) as running:
        yield running, grpc_port


@pytest.mark.integration
def test_otlp_requests_with_rejected_records_move_the_counters(
    server: tuple[ServerProcess, int],
) -> None:
    srv, grpc_port = server
    good = generate(5, seed=21)
    body = logs(
        *(otlp.audit_log_record(e) for e in good[:3]),
        bad_record("not json"),
        bad_record('{"id": "nope"}'),
        service="relay",
    ).SerializeToString()
    for _ in range(2):  # a retried export: its events are stored and counted once
        answer = httpx.post(srv.url + "/v1/logs", content=body, headers=PROTOBUF)
        assert answer.status_code == 200, answer.text
        partial = ExportLogsServiceResponse.FromString(answer.content).partial_success
        assert partial.rejected_log_records == 2
    one_bad_span = to_otlp_json(
        traces(span(STABLE_SERVER), span({"http.method": "GET"}, span_id=b""))
    )
    answer = httpx.post(
        srv.url + "/v1/traces", content=one_bad_span, headers={"Content-Type": "application/json"}
    )
    assert answer.status_code == 200 and answer.json()["partialSuccess"]["rejectedSpans"] == "1"
    assert httpx.post(srv.url + "/v1/logs", content=b"\xff", headers=PROTOBUF).status_code == 400
    wrong_type = httpx.post(srv.url + "/v1/logs", content=b"x", headers={"Content-Type": "a/b"})
    assert wrong_type.status_code == 415

    grpc_body = logs(
        *(otlp.audit_log_record(e) for e in good[3:]), bad_record("[]"), service="relay-2"
    ).SerializeToString()
    with grpc.insecure_channel(f"127.0.0.1:{grpc_port}") as channel:
        call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(LOGS)
        reply = ExportLogsServiceResponse.FromString(call(grpc_body, timeout=10))
        assert reply.partial_success.rejected_log_records == 1
        with pytest.raises(grpc.RpcError) as refused:
            call(b"\x0a\xff\xff\xff\xff\x0f", timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    found = scrape(srv.url)
    assert otlp_requests(found, "http") == {
        ("logs", "partial"): 2,
        ("traces", "partial"): 1,
        ("logs", "invalid"): 1,
        ("logs", "unsupported"): 1,
    }
    assert otlp_requests(found, "grpc") == {("logs", "partial"): 1, ("logs", "invalid"): 1}
    assert accepted(found, "otlp") == 3 + 1 + 2  # log events once, the good span, gRPC's
    assert rejected(found, "otlp") == 2 + 2 + 1 + 1  # per request: the retry counts again


@pytest.mark.integration
def test_a_relayed_refusal_report_is_an_accepted_otlp_record(
    server: tuple[ServerProcess, int], ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    """Server 1's ledger holds `auditmesh ingest envoy`'s report of 3 refused lines; relayed
    to server 2 with `auditmesh export otlp`, it is no reject of server 2's."""
    srv, _ = server
    refused = Refused(count=3, first=2, reason="the line ends early", last=7)
    report = refused_report(
        "ingest:envoy:access.log", refused, "access.log", Path("access.log.rejects"), START_NS
    )
    fill(ledger, [*generate(4, seed=23), report])
    before = scrape(srv.url)
    argv = ["export", "otlp", "--data", str(ledger.data_dir), "--endpoint", srv.url]
    assert main([*argv, "--attempts", "1"]) == 0
    assert "exported 5 events" in capsys.readouterr().err
    after = scrape(srv.url)
    for adapter in ("otlp", "envoy"):
        assert rejected(after, adapter) == rejected(before, adapter), adapter
    assert accepted(after, "otlp") == accepted(before, "otlp") + 5
    assert accepted(after, "envoy") == accepted(before, "envoy")


@pytest.mark.integration
def test_ingest_envoy_run_moves_accepted_and_rejected(
    server: tuple[ServerProcess, int], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    srv, _ = server
    log = tmp_path / "access.log"
    lines = [*TEXT_LINES[:5], "garbage that is no access log", *TEXT_LINES[5:], "- - -"]
    log.write_text("\n".join(lines) + "\n")
    argv = ["ingest", "envoy", str(log), "--server", srv.url, "--batch", "4", "--quiet"]
    assert main(argv) == 1  # refused lines: exit status 1
    capsys.readouterr()
    found = scrape(srv.url)
    assert accepted(found, "envoy") == len(TEXT_LINES)
    assert rejected(found, "envoy") == 2

    assert main(argv) == 1  # again: nothing new stored; the refusals are reported again
    capsys.readouterr()
    found = scrape(srv.url)
    assert accepted(found, "envoy") == len(TEXT_LINES)
    assert rejected(found, "envoy") == 4


@pytest.mark.integration
def test_the_report_of_refused_lines_is_in_the_ledger(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    log = tmp_path / "edge.log"
    log.write_text(TEXT_LINES[0] + "\nnot a line\n" + TEXT_LINES[1] + "\nnor this\n")
    with ServerProcess(data, extra=["--mesh-listen", "off", "--otlp-grpc", "off"]) as srv:
        assert main(["ingest", "envoy", str(log), "--server", srv.url, "--quiet"]) == 1
    assert "refused 2" in capsys.readouterr().out
    ledger = open_ledger(data, create=False)
    try:
        events = [decode_event(d) for _, d in ledger.store.entries(0, ledger.store.size())]
    finally:
        ledger.close()
    assert len(events) == 3
    report = events[-1]
    assert report.kind == "system" and report.outcome == "failure"
    assert report.reporter == "ingest:envoy:edge.log" and not report.attested
    assert report.labels == {
        "system.action": "ingest_refused",
        "ingest.refused": "2",
        "ingest.first_line": "2",
        "ingest.last_line": "4",
        "ingest.rejects_file": f"{log}.rejects",
    }
    assert report.error is not None and "line 2:" in report.error.message


# --- the spool depth: emitter header, mesh listener gauge ---------------------------------


class FlakyCollector:
    """Refuses (503) until `up`, then stores; records the spool-depth header of every
    accepted batch."""

    def __init__(self) -> None:
        self.up = False
        self.depths: list[str | None] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        if not self.up:
            return httpx.Response(503, json={"error": "down"})
        count = sum(1 for line in request.content.split(b"\n") if line)
        self.depths.append(request.headers.get(SPOOL_DEPTH_HEADER))
        return httpx.Response(200, json={"indices": list(range(count)), "size": count})


def test_emitter_sends_what_stays_in_the_spool_with_each_batch(tmp_path: Path) -> None:
    collector = FlakyCollector()
    config = EmitterConfig(
        max_batch_events=10, flush_interval_s=0.01, backoff_initial_s=0.02, backoff_max_s=0.05
    )

    async def scenario() -> None:
        client = httpx.AsyncClient(
            base_url="http://collector", transport=httpx.MockTransport(collector)
        )
        em = Emitter(
            client,
            tmp_path,
            reporter=str(ORDERS),
            config=config,
            spool_config=SpoolConfig(fsync=False),
        )
        em.start()
        for event in reported_by(ORDERS, 35, 8):
            em.emit(event)
        deadline = asyncio.get_running_loop().time() + 10
        while em.stats().spool_depth_events < 35:
            assert asyncio.get_running_loop().time() < deadline, "events never reached the spool"
            await asyncio.sleep(0.01)
        collector.up = True
        assert await em.drain(10)
        em.emit(reported_by(ORDERS, 1, 9)[0])  # the spool is empty: straight from memory
        assert await em.drain(10)
        await em.close()
        await client.aclose()

    asyncio.run(scenario())
    assert collector.depths == ["25", "15", "5", "0", "0"]


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    with mesh_server(tmp_path_factory.mktemp("mesh-metrics") / "data") as running:
        yield running


@pytest.mark.integration
def test_a_batch_with_the_spool_header_sets_the_gauge(mesh: Mesh, tmp_path: Path) -> None:
    credentials = join(mesh, ORDERS)
    gauge = ("auditmesh_sidecar_spool_depth", (("reporter", str(ORDERS)),))
    with httpx.Client(base_url=mesh.mesh_url, verify=credentials.client_context()) as client:

        def post(seed: int, depth: str | None) -> None:
            headers = {} if depth is None else {SPOOL_DEPTH_HEADER: depth}
            body = encode_ndjson(reported_by(ORDERS, 3, seed))
            answer = client.post("/v1/events", content=body, headers=headers)
            assert answer.status_code == 200, answer.text

        post(31, None)
        assert gauge not in scrape(mesh.server.url)  # nothing reported yet
        post(32, "1234")
        assert scrape(mesh.server.url)[gauge] == 1234
        post(33, "lots")  # not a number: ignored, the batch still goes in
        post(34, "-5")
        assert scrape(mesh.server.url)[gauge] == 1234
        post(35, "0")
        assert scrape(mesh.server.url)[gauge] == 0

    # The real emitter over mTLS: its spool drains into the ledger, the gauge ends at 0.
    other = SpiffeId.kubernetes("cluster.local", "shop", "payments")
    payments = join(mesh, other)

    async def scenario() -> None:
        down = httpx.AsyncClient(base_url=f"https://127.0.0.1:{free_port()}")
        em = Emitter(
            down,
            tmp_path / "sidecar",
            reporter=str(other),
            config=EmitterConfig(max_batch_events=10, backoff_initial_s=0.02, backoff_max_s=0.05),
            spool_config=SpoolConfig(fsync=False),
        )
        em.start()
        for event in reported_by(other, 25, 36):
            em.emit(event)
        deadline = asyncio.get_running_loop().time() + 10
        while em.stats().spool_depth_events < 25:
            assert asyncio.get_running_loop().time() < deadline, "events never reached the spool"
            await asyncio.sleep(0.01)
        up = httpx.AsyncClient(base_url=mesh.mesh_url, verify=payments.client_context())
        await down.aclose()
        em.replace_client(up)
        assert await em.drain(10)
        await em.close()
        await up.aclose()

    asyncio.run(scenario())
    found = scrape(mesh.server.url)
    assert found[("auditmesh_sidecar_spool_depth", (("reporter", str(other)),))] == 0
