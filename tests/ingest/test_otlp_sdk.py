"""The OTLP receiver against real clients: the OpenTelemetry Python SDK's OTLP exporters
(gRPC and HTTP/protobuf) and plain httpx (OTLP/JSON) send to a real `auditmesh server`
process; the events are read back with `GET /v1/events/{id}` and their proofs."""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest
from opentelemetry.exporter.otlp.proto.grpc._log_exporter import (
    OTLPLogExporter as GrpcLogExporter,
)
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
    OTLPSpanExporter as GrpcSpanExporter,
)
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http._log_exporter import (
    OTLPLogExporter as HttpLogExporter,
)
from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
    OTLPSpanExporter as HttpSpanExporter,
)
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.sdk._logs import LoggerProvider, ReadableLogRecord
from opentelemetry.sdk._logs.export import (
    InMemoryLogRecordExporter,
    LogRecordExporter,
    LogRecordExportResult,
    SimpleLogRecordProcessor,
)
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExporter, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, Status, StatusCode

from auditmesh.events import AuditEvent, canonical_bytes, to_json_dict
from auditmesh.ingest import otlp
from auditmesh.serverproc import ServerProcess, free_port
from tests.conftest import generate
from tests.ingest.test_otlp import (
    SPAN,
    STABLE_SERVER,
    START,
    TRACE,
    logs,
    span,
    to_otlp_json,
    traces,
    with_ids,
)
from tests.ingest.test_otlp_envoy import SAMPLE_LABELS, TEXT_LINES, envoy_record, expected

pytestmark = pytest.mark.integration
JSON = {"Content-Type": "application/json"}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("otlp") / "data"
    extra = ["--checkpoint-interval", "0.2", "--mesh-listen", "off"]
    extra += ["--otlp-grpc", f"127.0.0.1:{free_port()}"]
    with ServerProcess(data, extra=extra) as running:
        yield running


def grpc_endpoint(server: ServerProcess) -> str:
    log = Path(server.log_path).read_text()
    line = next(x for x in log.splitlines() if x.startswith("auditmesh server: OTLP/gRPC "))
    return line.rsplit(" ", 1)[1]


def fetch(server: ServerProcess, event_id: str) -> dict[str, Any]:
    response = httpx.get(f"{server.url}/v1/events/{event_id}", headers=server.auth, timeout=15)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    assert body["proof"]["tree_size"] > body["index"]
    event: dict[str, Any] = body["event"]
    return event


def finished_spans(service: str) -> tuple[ReadableSpan, ...]:
    """What an instrumented service records for one inbound call that makes one outbound
    call, plus an internal span that is not audit-relevant."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.otlp")
    with tracer.start_as_current_span(
        "GET /orders/{id}",
        kind=SpanKind.SERVER,
        attributes={
            "http.request.method": "GET",
            "url.path": "/orders/42",
            "http.route": "/orders/{id}",
            "http.response.status_code": 502,
            "client.address": "10.1.2.3",
            "server.address": "orders.shop.svc",
            "server.port": 8080,
        },
    ):
        with tracer.start_as_current_span("load order", kind=SpanKind.INTERNAL):
            pass
        with tracer.start_as_current_span(
            "POST",
            kind=SpanKind.CLIENT,
            attributes={
                "http.request.method": "POST",
                "url.full": "http://payments.shop.svc:9000/charges",
                "error.type": "ConnectionResetError",
            },
        ) as client:
            client.set_status(Status(StatusCode.ERROR, "connection reset by peer"))
    provider.shutdown()
    return memory.get_finished_spans()


def span_id_of(span: ReadableSpan) -> str:
    context = span.context
    assert context is not None and span.start_time is not None
    return otlp.span_event_id(
        context.trace_id.to_bytes(16, "big"), context.span_id.to_bytes(8, "big"), span.start_time
    )


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_span_exporters_deliver_http_spans_as_events(
    server: ServerProcess, transport: str
) -> None:
    service = f"orders-{transport}"
    spans = finished_spans(service)
    exporter: SpanExporter
    if transport == "grpc":
        exporter = GrpcSpanExporter(endpoint=grpc_endpoint(server), insecure=True)
    else:
        exporter = HttpSpanExporter(
            endpoint=server.url + "/v1/traces", compression=Compression.Gzip
        )
    assert exporter.export(spans) == SpanExportResult.SUCCESS
    assert exporter.export(spans) == SpanExportResult.SUCCESS  # a retry: logged once
    exporter.shutdown()

    by_name = {s.name: s for s in spans}
    inbound = fetch(server, span_id_of(by_name["GET /orders/{id}"]))
    assert inbound["reporter"] == f"ingest:otlp:{service}"
    assert inbound["direction"] == "inbound"
    assert inbound["outcome"] == "failure"
    assert inbound["error"] == {"type": "502"}
    assert inbound["http"] == {"method": "GET", "path": "/orders/42", "status": 502}
    assert inbound["source"] == {"ip": "10.1.2.3"}
    assert inbound["destination"] == {"service": service, "host": "orders.shop.svc", "port": 8080}
    assert inbound["labels"] == {"http.route": "/orders/{id}"}
    assert "attested" not in inbound  # False, the default, is omitted

    outbound = fetch(server, span_id_of(by_name["POST"]))
    assert outbound["direction"] == "outbound"
    assert outbound["destination"] == {"host": "payments.shop.svc", "port": 9000}
    assert outbound["error"] == {
        "type": "ConnectionResetError",
        "message": "connection reset by peer",
    }
    assert outbound["trace"]["parent_span_id"] == inbound["trace"]["span_id"]


def relay_logs(events: list[AuditEvent], service: str) -> tuple[ReadableLogRecord, ...]:
    """What `auditmesh export otlp` sends, emitted through the SDK's logs pipeline."""
    memory = InMemoryLogRecordExporter()  # type: ignore[no-untyped-call]  # SDK lacks the hint
    provider = LoggerProvider(resource=Resource.create({"service.name": service}))
    provider.add_log_record_processor(SimpleLogRecordProcessor(memory))
    logger = provider.get_logger("auditmesh.export")
    for event in events:
        logger.emit(
            timestamp=int(event.time_ns),
            event_name=otlp.EVENT_NAME,
            attributes={otlp.EVENT_ATTRIBUTE: canonical_bytes(event).decode()},
        )
    provider.shutdown()
    return memory.get_finished_logs()


@pytest.mark.parametrize("transport", ["grpc", "http"])
def test_sdk_log_exporters_relay_audit_events_exactly(
    server: ServerProcess, transport: str
) -> None:
    events = generate(25, seed=101 if transport == "grpc" else 202)
    records = relay_logs(events, "auditmesh-edge")
    exporter: LogRecordExporter
    if transport == "grpc":
        exporter = GrpcLogExporter(endpoint=grpc_endpoint(server), insecure=True)
    else:
        exporter = HttpLogExporter(endpoint=server.url + "/v1/logs")
    assert exporter.export(records) == LogRecordExportResult.SUCCESS
    exporter.shutdown()
    for event in (events[0], events[-1]):
        stored = fetch(server, event.id)
        assert stored == to_json_dict(otlp.as_received(event, "auditmesh-edge"))


def test_otlp_json_over_http_with_gzip(server: ServerProcess) -> None:
    body = gzip.compress(to_otlp_json(traces(span(STABLE_SERVER))))
    response = httpx.post(
        server.url + "/v1/traces",
        content=body,
        headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
    )
    assert (response.status_code, response.json()) == (200, {})
    assert fetch(server, otlp.span_event_id(TRACE, SPAN, START))["http"]["path"] == "/orders/42"


def test_otlp_json_with_a_non_hex_id_rejects_that_record_alone(server: ServerProcess) -> None:
    """Like protobuf's bad records: partial success naming it, the others stored; a body
    that is not OTLP/JSON at all stays Bad Data (400)."""
    spans = [span(STABLE_SERVER, name=f"json {n}", span_id=bytes([0xA0 + n]) * 8) for n in (0, 1)]
    body = with_ids(to_otlp_json(traces(*spans)), "traces", {1: {"traceId": "zz"}})
    response = httpx.post(server.url + "/v1/traces", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1"
    assert "span 'json 0': traceId 'zz' is not hex" in partial["errorMessage"]
    assert fetch(server, otlp.span_event_id(TRACE, spans[1].span_id, START))["http"]
    events = generate(2, seed=31)
    request = logs(*(otlp.audit_log_record(e) for e in events), service="json-relay")
    body = with_ids(to_otlp_json(request), "logs", {2: {"spanId": "G00D"}})
    response = httpx.post(server.url + "/v1/logs", content=body, headers=JSON)
    assert response.status_code == 200, response.text
    assert response.json()["partialSuccess"]["rejectedLogRecords"] == "1"
    assert fetch(server, events[0].id)["reporter"] == "ingest:otlp:json-relay"
    lookup = httpx.get(f"{server.url}/v1/events/{events[1].id}", headers=server.auth)
    assert lookup.status_code == 404
    for not_otlp in (b"{", b'{"resourceSpans": 3}', b'{"resourceSpans": [{"scopeSpans": 7}]}'):
        refused = httpx.post(server.url + "/v1/traces", content=not_otlp, headers=JSON)
        assert refused.status_code == 400 and refused.json()["code"] == 3, not_otlp


def test_real_server_limits_and_content_types(server: ServerProcess) -> None:
    too_big = httpx.post(
        server.url + "/v1/logs",
        content=bytes(20 * 1024 * 1024 + 1),
        headers={"Content-Type": "application/x-protobuf"},
        timeout=30,
    )
    assert too_big.status_code == 413
    wrong = httpx.post(server.url + "/v1/logs", content=b"x", headers={"Content-Type": "text/csv"})
    assert wrong.status_code == 415
    broken = httpx.post(
        server.url + "/v1/traces",
        content=b"\xff",
        headers={"Content-Type": "application/x-protobuf"},
    )
    assert broken.status_code == 400


def test_otlp_grpc_can_be_switched_off(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data", extra=["--otlp-grpc", "off", "--mesh-listen", "off"]):
        pass
    assert "OTLP/gRPC" not in (tmp_path / "data-server.log").read_text()


def test_envoy_access_log_records_over_grpc(server: ServerProcess) -> None:
    """What Istio's envoyOtelAls provider makes a sidecar send: LogsService/Export over gRPC
    with the TEXT line as body and the configured labels as attributes."""
    request = logs(*(envoy_record(line) for line in TEXT_LINES), service="istio-proxy")
    with grpc.insecure_channel(grpc_endpoint(server)) as channel:
        export: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(
            "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
        )
        answer = ExportLogsServiceResponse.FromString(export(request.SerializeToString()))
    assert not answer.HasField("partial_success")
    labels = {key: str(value) for key, value in SAMPLE_LABELS.items()}
    for line in (TEXT_LINES[0], TEXT_LINES[4]):
        event = expected(line, "ingest:otlp:istio-proxy", labels)
        assert fetch(server, event.id) == to_json_dict(event)


def test_spans_with_no_response_or_a_broken_ok_response(server: ServerProcess) -> None:
    """Envoy's tracer tags a request that got no response (the caller went away, a reset)
    with http.status_code "0": the call is audited with no status, not rejected as an
    invalid event. A failed span whose status is no error code (a 200 whose body broke off)
    has error.type _OTHER, not "200"."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "istio-proxy"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.otlp")
    envoy_tags = {"http.method": "GET", "http.url": "http://orders:8080/orders/7"}
    for name, tags, status in (
        ("no response", {**envoy_tags, "http.status_code": "0"}, None),
        ("no response, error", {**envoy_tags, "http.status_code": "0"}, "upstream reset"),
        ("broken 200", {**envoy_tags, "http.status_code": "200"}, "stream reset"),
    ):
        with tracer.start_as_current_span(name, kind=SpanKind.SERVER, attributes=tags) as s:
            if status is not None:
                s.set_status(Status(StatusCode.ERROR, status))
    provider.shutdown()
    spans = {s.name: s for s in memory.get_finished_spans()}
    exporter: SpanExporter = HttpSpanExporter(endpoint=server.url + "/v1/traces")
    assert exporter.export(list(spans.values())) == SpanExportResult.SUCCESS
    exporter.shutdown()

    silent = fetch(server, span_id_of(spans["no response"]))
    assert (silent["outcome"], silent["http"]) == (
        "unknown",
        {"method": "GET", "path": "/orders/7"},
    )
    reset = fetch(server, span_id_of(spans["no response, error"]))
    assert reset["outcome"] == "failure"
    assert reset["error"] == {"type": "_OTHER", "message": "upstream reset"}
    broken = fetch(server, span_id_of(spans["broken 200"]))
    assert (broken["outcome"], broken["http"]["status"]) == ("failure", 200)
    assert broken["error"] == {"type": "_OTHER", "message": "stream reset"}


def test_a_server_span_behind_a_proxy_pairs_the_callers_ip_with_its_own_port(
    server: ServerProcess,
) -> None:
    """A Java agent's server span behind a sidecar: client.address is the caller from
    X-Forwarded-For (no client.port), network.peer.* the proxy's socket. The event's source
    was the caller's IP with the proxy's ephemeral port, a peer that does not exist."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "ledger-api"}))
    provider.add_span_processor(SimpleSpanProcessor(memory))
    tracer = provider.get_tracer("tests.otlp")
    request: dict[str, str | int] = {
        "http.request.method": "GET",
        "url.path": "/balance",
        "http.response.status_code": 200,
    }
    behind_proxy = {"client.address": "203.0.113.9", "network.peer.address": "127.0.0.6"}
    attributes: dict[str, str | int]
    for name, attributes in (
        ("via proxy", {**request, **behind_proxy, "network.peer.port": 40112}),
        ("direct", {**request, "network.peer.address": "10.244.0.12", "network.peer.port": 51234}),
    ):
        with tracer.start_as_current_span(name, kind=SpanKind.SERVER, attributes=attributes):
            pass
    provider.shutdown()
    spans = {s.name: s for s in memory.get_finished_spans()}
    exporter: SpanExporter = GrpcSpanExporter(endpoint=grpc_endpoint(server), insecure=True)
    assert exporter.export(list(spans.values())) == SpanExportResult.SUCCESS
    exporter.shutdown()
    assert fetch(server, span_id_of(spans["via proxy"]))["source"] == {"ip": "203.0.113.9"}
    direct = fetch(server, span_id_of(spans["direct"]))["source"]
    assert direct == {"ip": "10.244.0.12", "port": 51234}
