"""OTLP export: the LogRecord mapping, the sender's OTLP behaviour, and the round trip
through auditmesh's own receiver in a real server (OTLP/HTTP and OTLP/gRPC), with resume."""

from __future__ import annotations

import importlib
import json
import pkgutil
from collections.abc import Callable
from pathlib import Path

import httpx
import msgspec
import pytest
from google.rpc import status_pb2
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import SEVERITY_NUMBER_INFO, SEVERITY_NUMBER_WARN

from auditmesh.cli.main import main
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import AuditEvent, canonical_bytes
from auditmesh.export.otlp import (
    ATTR_LEAF_HASH,
    ATTR_LOG_INDEX,
    ATTR_LOG_ORIGIN,
    SERVICE_NAME,
    ExportError,
    OtlpSender,
    grpc_target,
    log_records_request,
    logs_url,
)
from auditmesh.ingest.otlp import EVENT_ATTRIBUTE, EVENT_NAME, as_received, map_logs
from auditmesh.ledger.merkle import leaf_hash
from auditmesh.serverproc import ServerProcess, free_port
from tests.conftest import fill, generate
from tests.export.test_ecs import EDGE_CASES

ORIGIN = "test.auditmesh/log"


def request_for(events: list[AuditEvent], first_index: int = 0) -> ExportLogsServiceRequest:
    entries = []
    for offset, event in enumerate(events):
        data = canonical_bytes(event)
        entries.append((first_index + offset, event, data, leaf_hash(data)))
    return log_records_request(entries, origin=ORIGIN)


def attributes(request: ExportLogsServiceRequest) -> list[dict[str, AnyValue]]:
    records = request.resource_logs[0].scope_logs[0].log_records
    return [{kv.key: kv.value for kv in record.attributes} for record in records]


def semconv_names() -> set[str]:
    """Every attribute name the OpenTelemetry semantic conventions package defines."""
    names: set[str] = set()
    for package in ("opentelemetry.semconv.attributes", "opentelemetry.semconv._incubating"):
        try:
            root = importlib.import_module(package + (".attributes" if "incub" in package else ""))
        except ImportError:
            continue
        for info in pkgutil.iter_modules(root.__path__):
            module = importlib.import_module(f"{root.__name__}.{info.name}")
            names |= {v for k, v in vars(module).items() if k.isupper() and isinstance(v, str)}
    return names


# -- the mapping -----------------------------------------------------------------------


def test_records_carry_the_leaf_data_and_semconv_attributes() -> None:
    events = generate(200)
    request = request_for(events, first_index=10)
    resource = {kv.key: kv.value for kv in request.resource_logs[0].resource.attributes}
    assert resource["service.name"].string_value == SERVICE_NAME
    assert resource[ATTR_LOG_ORIGIN].string_value == ORIGIN
    records = request.resource_logs[0].scope_logs[0].log_records
    rows = zip(events, records, attributes(request), strict=True)
    for index, (event, record, attrs) in enumerate(rows):
        data = canonical_bytes(event)
        assert attrs[EVENT_ATTRIBUTE].string_value.encode() == data
        assert attrs[ATTR_LEAF_HASH].string_value == leaf_hash(data).hex()
        assert attrs[ATTR_LOG_INDEX].int_value == 10 + index
        assert record.event_name == EVENT_NAME
        assert record.time_unix_nano == event.time_ns
        assert event.trace is not None and record.trace_id.hex() == event.trace.trace_id
        assert event.http is not None and event.source is not None
        assert attrs["http.request.method"].string_value == event.http.method
        assert attrs["http.response.status_code"].int_value == event.http.status
        assert attrs["client.address"].string_value == event.source.ip
        assert attrs["server.address"].string_value.endswith(".svc.cluster.local")
        failed = event.outcome == "failure"
        assert record.severity_number == (SEVERITY_NUMBER_WARN if failed else SEVERITY_NUMBER_INFO)
        if event.error is not None:
            assert attrs["error.type"].string_value == event.error.type
    assert "->" in records[0].body.string_value


def test_attribute_names_are_semantic_conventions_or_auditmesh() -> None:
    known = semconv_names()
    if not known:
        pytest.skip("opentelemetry-semantic-conventions is not installed")
    events = generate(300) + list(EDGE_CASES.values())
    written = {key for attrs in attributes(request_for(events)) for key in attrs}
    foreign = {
        name
        for name in written
        if not name.startswith("auditmesh.")
        and name not in known
        and not name.startswith("http.request.header.")  # semconv template attribute
    }
    assert foreign == set()
    assert {"url.path", "url.query", "network.protocol.version", "tls.protocol.version"} <= written


def test_our_receiver_maps_our_records_back_to_the_same_events() -> None:
    """The pure half of the round trip: the receiver's own mapping of our request."""
    events = generate(100) + list(EDGE_CASES.values())[1:]  # EDGE_CASES share one id
    mapped = map_logs(request_for(events))
    assert mapped.rejected == 0 and mapped.skipped == 0
    assert [canonical_bytes(e) for e in mapped.events] == [
        canonical_bytes(as_received(e, SERVICE_NAME)) for e in events
    ]


def test_endpoints() -> None:
    assert logs_url("http://otel:4318") == "http://otel:4318/v1/logs"
    assert logs_url("http://otel:4318/") == "http://otel:4318/v1/logs"
    assert logs_url("https://gw/otlp/v1/logs") == "https://gw/otlp/v1/logs"
    with pytest.raises(ValueError):
        logs_url("otel:4318")
    assert grpc_target("otel:4317") == ("otel:4317", False)
    assert grpc_target("http://otel:4317") == ("otel:4317", False)
    assert grpc_target("https://otel:4317") == ("otel:4317", True)


# -- the sender, against httpx's transport seam ------------------------------------------


def sender_with(
    handler: Callable[[httpx.Request], httpx.Response], sleeps: list[float], **options: object
) -> OtlpSender:
    return OtlpSender(
        "http://collector:4318",
        transport=httpx.MockTransport(handler),
        sleep=sleeps.append,
        **options,  # type: ignore[arg-type]
    )


def ok(records: int = 0, rejected: int = 0, message: str = "") -> httpx.Response:
    response = ExportLogsServiceResponse()
    if rejected:
        response.partial_success.CopyFrom(
            ExportLogsPartialSuccess(rejected_log_records=rejected, error_message=message)
        )
    return httpx.Response(
        200,
        content=response.SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
    )


def test_sender_posts_protobuf_with_headers_and_gzip() -> None:
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return ok()

    sender = sender_with(handler, [], headers={"authorization": "Bearer t"}, compression="gzip")
    sender.export(request_for(generate(3)))
    assert seen[0].url == "http://collector:4318/v1/logs"
    assert seen[0].headers["content-type"] == "application/x-protobuf"
    assert seen[0].headers["content-encoding"] == "gzip"
    assert seen[0].headers["authorization"] == "Bearer t"


def test_retryable_answers_are_retried_honouring_retry_after() -> None:
    answers = [
        httpx.Response(503, headers={"retry-after": "3"}),
        httpx.Response(429),
        ok(),
    ]
    sleeps: list[float] = []
    sender_with(lambda request: answers.pop(0), sleeps).export(request_for(generate(2)))
    # Retry-After, then the backoff's second step (1 s, jittered by up to half of it)
    assert sleeps[0] == 3.0 and 0.5 <= sleeps[1] <= 1.5 and len(sleeps) == 2
    assert answers == []


def test_bad_data_and_rejections_are_errors_not_retried() -> None:
    status = status_pb2.Status(code=3, message="log record 1: bad attribute")
    bad = httpx.Response(
        400,
        content=status.SerializeToString(),
        headers={"content-type": "application/x-protobuf"},
    )
    sleeps: list[float] = []
    with pytest.raises(ExportError, match="400: log record 1: bad attribute") as raised:
        sender_with(lambda request: bad, sleeps).export(request_for(generate(2)))
    assert not raised.value.retryable and sleeps == []
    partial = ok(rejected=1, message="one was bad")
    with pytest.raises(ExportError, match="rejected 1 of 2 log records: one was bad"):
        sender_with(lambda request: partial, sleeps).export(request_for(generate(2)))
    with pytest.raises(ExportError, match="gave up after 2 attempts"):
        sender_with(lambda r: httpx.Response(502), sleeps, attempts=2).export(
            request_for(generate(1))
        )


def test_oversized_requests_are_split() -> None:
    sizes: list[int] = []

    def handler(request: httpx.Request) -> httpx.Response:
        parsed = ExportLogsServiceRequest.FromString(request.content)
        sizes.append(len(parsed.resource_logs[0].scope_logs[0].log_records))
        return ok()

    sender = sender_with(handler, [])
    sender.max_bytes = 8 * 1024 + 1024  # about four records per request
    sender.export(request_for(generate(20)))
    assert sum(sizes) == 20 and max(sizes) < 20 and len(sizes) > 2


# -- round trip through a real server ----------------------------------------------------


def stored(data_dir: Path) -> list[bytes]:
    opened = open_ledger(data_dir, create=False)
    try:
        return [data for _, data in opened.store.entries(0, opened.store.size())]
    finally:
        opened.close()


def expected(events: list[AuditEvent]) -> list[bytes]:
    """What the receiver keeps: the same events, reporter and attested set by itself."""
    return [canonical_bytes(as_received(e, SERVICE_NAME)) for e in events]


@pytest.mark.integration
def test_http_round_trip_resumes_after_restart_and_outage(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = generate(400, seed=21)
    fill(ledger, events[:250])
    b_dir = tmp_path / "b"
    server = ServerProcess(b_dir, extra=["--otlp-grpc", "off"]).start()
    cursor = tmp_path / "otlp.cursor"
    argv = ["export", "otlp", "--data", str(ledger.data_dir), "--endpoint", server.url]
    argv += ["--batch", "64", "--cursor", str(cursor), "--attempts", "1"]
    try:
        assert main(argv) == 0
        assert "exported 250 events" in capsys.readouterr().err
        assert main(argv) == 0  # restart with nothing new: nothing sent
        assert "exported 0 events" in capsys.readouterr().err
        fill(ledger, events[250:300])
        assert main(argv) == 0
        assert "exported 50 events" in capsys.readouterr().err
        server.stop()
        fill(ledger, events[300:])
        assert main(argv) == 2  # the collector is away: an error, the cursor stays
        err = capsys.readouterr().err
        assert "cursor stays at 300" in err, err
        server.start()
        assert main(argv) == 0
        assert "exported 100 events" in capsys.readouterr().err
    finally:
        server.stop()
    b_events = stored(b_dir)
    assert b_events == expected(events)  # same ids, same order, nothing twice or skipped


@pytest.mark.integration
def test_grpc_round_trip_and_receiver_dedup(ledger: Ledger, tmp_path: Path) -> None:
    events = generate(120, seed=22)
    fill(ledger, events)
    port = free_port()
    b_dir = tmp_path / "b"
    argv = ["export", "otlp", "--data", str(ledger.data_dir), "--protocol", "grpc"]
    argv += ["--endpoint", f"http://127.0.0.1:{port}", "--compression", "gzip"]
    with ServerProcess(b_dir, extra=["--otlp-grpc", f"127.0.0.1:{port}"]):
        assert main(argv) == 0
        # A lost cursor sends everything again; the receiver logs each id once.
        cursors = list((ledger.data_dir / "export").glob("otlp-*.cursor"))
        assert len(cursors) == 1
        cursors[0].unlink()
        assert main(argv) == 0
    assert stored(b_dir) == expected(events)


@pytest.mark.integration
def test_a_relayed_event_keeps_its_reporter_and_attestation_as_claims(
    ledger: Ledger, tmp_path: Path
) -> None:
    # Regression: the receiving server stored `ingest:otlp:auditmesh`, not attested, and
    # nothing of who reported the event or that it was attested.
    events = generate(6, seed=24)
    events[2] = msgspec.structs.replace(events[2], attested=True)
    fill(ledger, events)
    b_dir = tmp_path / "b"
    argv = ["export", "otlp", "--data", str(ledger.data_dir), "--attempts", "1"]
    with ServerProcess(b_dir, extra=["--otlp-grpc", "off"]) as server:
        assert main([*argv, "--endpoint", server.url]) == 0
    received = [json.loads(data) for data in stored(b_dir)]
    assert [r["id"] for r in received] == [e.id for e in events]  # same ids, one each
    for event, got in zip(events, received, strict=True):
        assert got["reporter"] == "ingest:otlp:auditmesh" and "attested" not in got
        claims = {"relayed.reporter": event.reporter}
        if event.attested:
            claims["relayed.attested"] = "true"
        assert got["labels"] == {**event.labels, **claims}


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_an_export_sent_back_to_the_server_of_its_ledger_says_so(
    ledger: Ledger, capsys: pytest.CaptureFixture[str], protocol: str
) -> None:
    # Regression: every record was rejected as "the log holds this id already, with other
    # content" and the export ended with that, not with what went wrong.
    events = generate(20, seed=25)
    events[3] = msgspec.structs.replace(events[3], attested=True)
    fill(ledger, events)
    before = stored(ledger.data_dir)
    grpc = f"127.0.0.1:{free_port()}"
    server = ServerProcess(ledger.data_dir, extra=["--otlp-grpc", grpc])
    endpoint = f"http://{grpc}" if protocol == "grpc" else server.url
    argv = ["export", "otlp", "--data", str(ledger.data_dir), "--endpoint", endpoint]
    argv += ["--protocol", protocol, "--attempts", "1", "--batch", "8"]
    with server:
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "exported 0 events" in err
    assert "8 events are already in this ledger as reported by spiffe://" in err
    assert "this export was sent back to the server it came from" in err
    assert f"{endpoint} is the server of this very ledger ({ledger.data_dir}" in err
    assert "rejected 20 records, first 8 of entries 0..7" in err
    assert "give --endpoint another auditmesh server or an OpenTelemetry Collector" in err
    assert "with other content" not in err
    after = stored(ledger.data_dir)
    assert after[: len(before)] == before
    assert not any(b"ingest:otlp:" in data for data in after)  # nothing relayed was stored
