"""ingest.otlp_grpc: the OTLP/gRPC receiver over a real socket with a real grpc client,
in process over a real ledger: Export answers, status codes, limits, start and stop; and in
a real server process, its share of --max-connections and --header-timeout."""

from __future__ import annotations

import gzip
import socket
import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import grpc
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from auditmesh.collector import Collector
from auditmesh.datadir import Ledger
from auditmesh.ingest import envoy, otlp, otlp_http
from auditmesh.ingest.otlp_grpc import OtlpGrpcError, OtlpGrpcServer
from auditmesh.server.run import _start_otlp_grpc
from auditmesh.serverproc import ServerProcess, free_port
from tests.conftest import generate
from tests.ingest.test_otlp import SPAN, STABLE_SERVER, START, TRACE, logs, span, traces
from tests.ingest.test_otlp_envoy import TEXT_LINES

pytestmark = pytest.mark.integration

TRACES = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
LOGS = "/opentelemetry.proto.collector.logs.v1.LogsService/Export"
LIMIT = 64 * 1024


@pytest.fixture
def receiver(collector: Collector) -> Iterator[OtlpGrpcServer]:
    server = OtlpGrpcServer(collector, "127.0.0.1", 0, max_message_bytes=LIMIT).start()
    yield server
    server.stop()


@pytest.fixture
def channel(receiver: OtlpGrpcServer) -> Iterator[grpc.Channel]:
    with grpc.insecure_channel(receiver.address) as opened:
        yield opened


def export(
    channel: grpc.Channel, method: str, body: bytes, compression: grpc.Compression | None = None
) -> bytes:
    call: grpc.UnaryUnaryMultiCallable[bytes, bytes] = channel.unary_unary(method)
    result: bytes = call(body, timeout=10, compression=compression)
    return result


def test_export_traces_answers_after_commit(channel: grpc.Channel, ledger: Ledger) -> None:
    body = traces(span(STABLE_SERVER)).SerializeToString()
    answer = ExportTraceServiceResponse.FromString(export(channel, TRACES, body))
    assert answer == ExportTraceServiceResponse()
    key = uuid.UUID(otlp.span_event_id(TRACE, SPAN, START)).bytes
    assert ledger.store.event_by_id(key) is not None
    export(channel, TRACES, body)  # a retry is logged once
    assert ledger.log.size == 1


def test_export_logs_gzip_with_partial_success(channel: grpc.Channel, ledger: Ledger) -> None:
    events = generate(5)
    request = logs(*map(otlp.audit_log_record, events))
    request.resource_logs[0].scope_logs[0].log_records.add().attributes.add(
        key=otlp.EVENT_ATTRIBUTE
    ).value.int_value = 1
    raw = export(channel, LOGS, request.SerializeToString(), grpc.Compression.Gzip)
    partial = ExportLogsServiceResponse.FromString(raw).partial_success
    assert partial.rejected_log_records == 1
    assert "must be a string" in partial.error_message
    assert ledger.log.size == 5


def test_undecodable_message_is_invalid_argument(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        export(channel, TRACES, b"\x0a\xff\xff\xff\xff\x0f")
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "ExportTraceServiceRequest" in (caught.value.details() or "")


def test_oversized_message_is_resource_exhausted(channel: grpc.Channel, ledger: Ledger) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        export(channel, LOGS, bytes(LIMIT + 1))
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert ledger.log.size == 0


def test_a_message_oversized_once_inflated_is_resource_exhausted(channel: grpc.Channel) -> None:
    # A protobuf whose single bytes field inflates past the limit: gzip is applied by the
    # client's transport (grpc-encoding: gzip) and gRPC checks the decompressed size.
    padding = logs(otlp.audit_log_record(generate(1)[0]))
    padding.resource_logs[0].schema_url = "x" * (4 * LIMIT)
    body = padding.SerializeToString()
    assert len(gzip.compress(body)) < LIMIT
    with pytest.raises(grpc.RpcError) as caught:
        export(channel, LOGS, body, grpc.Compression.Gzip)
    assert caught.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED


def test_unknown_method_is_unimplemented(channel: grpc.Channel) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        export(channel, "/opentelemetry.proto.collector.metrics.v1.MetricsService/Export", b"")
    assert caught.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_a_stopped_collector_answers_unavailable(
    receiver: OtlpGrpcServer, collector: Collector
) -> None:
    collector.stop()
    with grpc.insecure_channel(receiver.address) as channel, pytest.raises(grpc.RpcError) as caught:
        export(channel, TRACES, traces(span(STABLE_SERVER)).SerializeToString())
    assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


def test_a_busy_port_fails_start_or_is_skipped_when_not_asked_for(
    collector: Collector, capsys: pytest.CaptureFixture[str]
) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OtlpGrpcError, match=f"127.0.0.1:{port}"):
            OtlpGrpcServer(collector, "127.0.0.1", port).start()
        with pytest.raises(ValueError, match="--otlp-grpc"):
            _start_otlp_grpc(collector, ("127.0.0.1", port), required=True)
        assert _start_otlp_grpc(collector, ("127.0.0.1", port), required=False) is None
    assert "OTLP/gRPC is off" in capsys.readouterr().out
    assert _start_otlp_grpc(collector, None, required=True) is None


def test_stop_is_idempotent(collector: Collector) -> None:
    server = OtlpGrpcServer(collector, "127.0.0.1", 0).start()
    assert server.port != 0
    server.stop()
    server.stop()


def test_a_header_that_is_not_utf8_does_not_lose_the_export(
    channel: grpc.Channel, ledger: Ledger
) -> None:
    """Envoy's OpenTelemetry access logger sends a header's bytes as the caller sent them,
    as protobuf C++ does not enforce UTF-8 when serializing: one Latin-1 User-Agent must
    not make the whole export INVALID_ARGUMENT (every other call in it unaudited)."""
    body, lines = envoy_export_with_latin1_agent()
    ExportLogsServiceResponse.FromString(export(channel, LOGS, body))
    assert ledger.log.size == 3
    agents = [envoy.parse_text_line(line).user_agent for line in lines]
    assert agents[1] == "caf\\xe9 \\xff/1.0"  # kept as escapes, as `auditmesh ingest` does
    for line in lines:
        event = envoy.to_event(envoy.parse_text_line(line), "ingest:otlp:istio-proxy")
        assert ledger.store.event_by_id(uuid.UUID(event.id).bytes) is not None


def envoy_export_with_latin1_agent() -> tuple[bytes, list[str]]:
    """An Envoy access-log export of three sample lines, the second with `caf\\xe9 \\xff/1.0`
    as its User-Agent in raw bytes; and the three lines as the receiver reads them."""
    lines = TEXT_LINES[:3]
    marked = lines[1].replace('"python-requests/2.31.0"', '"caf^ ~/1.0"')
    request = logs(
        *(
            LogRecord(body=AnyValue(string_value=line + "\n"))
            for line in (lines[0], marked, lines[2])
        ),
        service="istio-proxy",
    )
    body = request.SerializeToString().replace(b"caf^ ~/1.0", b"caf\xe9 \xff/1.0")
    return body, [lines[0], marked.replace("~", "\\xff").replace("^", "\\xe9"), lines[2]]


def test_a_large_message_is_mapped_off_the_receivers_loop(
    collector: Collector, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Mapping a large Export takes milliseconds of Python: done in a worker thread, the
    receiver's event loop goes on serving other Exports; a small one is mapped in place."""
    threads: list[str] = []
    original = otlp.map_body

    def recording(*args: Any) -> otlp.Mapped:
        threads.append(threading.current_thread().name)
        return original(*args)

    monkeypatch.setattr(otlp_http, "map_body", recording)
    big = logs(*map(otlp.audit_log_record, generate(400, seed=9))).SerializeToString()
    small = logs(*map(otlp.audit_log_record, generate(3, seed=10))).SerializeToString()
    assert len(small) < otlp_http.INLINE_BYTES < len(big)
    server = OtlpGrpcServer(collector, "127.0.0.1", 0, max_message_bytes=4 * len(big)).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            export(channel, LOGS, big)
            export(channel, LOGS, small)
    finally:
        server.stop()
    assert threads[0] != "auditmesh-otlp-grpc" and threads[1] == "auditmesh-otlp-grpc"
    assert ledger.log.size == 403


CAP = 2  # the server's --max-connections in the tests below
HANDSHAKE_S = 2.0  # and its --header-timeout


@pytest.fixture
def capped(tmp_path: Path) -> Iterator[tuple[ServerProcess, str]]:
    """A server process whose OTLP/gRPC receiver has CAP places; its gRPC address. One per
    test: no connection of another test is still closing while places are counted."""
    data = tmp_path / "data"
    address = f"127.0.0.1:{free_port()}"
    extra = [
        *("--otlp-grpc", address, "--mesh-listen", "off"),
        *("--max-connections", str(CAP), "--header-timeout", f"{HANDSHAKE_S:g}"),
    ]
    with ServerProcess(data, extra=extra) as running:
        yield running, address
    assert "Traceback" not in running.log_path.read_text()


def _own_channel(address: str) -> grpc.Channel:
    """A channel with a connection of its own (channels in one process share them)."""
    return grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)])


def _exports(address: str) -> bool:
    """Whether a new connection's Export is answered (False: refused, UNAVAILABLE)."""
    body = traces(span(STABLE_SERVER)).SerializeToString()
    with _own_channel(address) as channel:
        try:
            export(channel, TRACES, body)
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE, exc  # retryable (OTLP/gRPC)
            return False
    return True


def _soon(address: str, within_s: float) -> float:
    """How long until a new connection's Export is answered (at most `within_s`)."""
    start = time.monotonic()
    while not _exports(address):
        assert time.monotonic() - start < within_s, "no place came free"
        time.sleep(0.1)
    return time.monotonic() - start


def test_the_receiver_holds_at_most_max_connections(
    capped: tuple[ServerProcess, str],
) -> None:
    """CAP clients with open channels hold every place: one more connection is closed at
    once (UNAVAILABLE, which OTLP clients retry) while theirs are served; a closed channel
    frees its place. The receiver had no limit at all."""
    _, address = capped
    body = traces(span(STABLE_SERVER)).SerializeToString()
    with ExitStack() as stack:
        channels = [stack.enter_context(_own_channel(address)) for _ in range(CAP)]
        for channel in channels:
            export(channel, TRACES, body)  # connected, and kept
        assert not _exports(address)
        export(channels[0], TRACES, body)  # the open ones are still served
        channels.pop().close()
        _soon(address, 5.0)


def test_a_connection_that_never_speaks_http2_is_closed_at_the_header_timeout(
    capped: tuple[ServerProcess, str],
) -> None:
    """TCP connections that never send the HTTP/2 preface held their places (gRPC's own
    handshake timeout is 120 s): they are closed at --header-timeout."""
    _, address = capped
    host, port = address.rsplit(":", 1)
    with ExitStack() as stack:
        opened = time.monotonic()
        for _ in range(CAP):
            stack.enter_context(socket.create_connection((host, int(port))))
        while _exports(address):  # until the server accepted them: they hold every place
            assert time.monotonic() - opened < HANDSHAKE_S, "the silent connections took none"
        _soon(address, HANDSHAKE_S + 5.0)
        # held from their acceptance, which came after `opened`, for the header timeout
        assert time.monotonic() - opened >= HANDSHAKE_S * 0.9
