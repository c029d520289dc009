"""OTLP/gRPC receiver: `LogsService/Export` and `TraceService/Export`, default port 4317.

Place in the house: the gRPC twin of `otlp_http.py`; `server/run.py` starts it next to
uvicorn and stops it before the collector, so every acknowledged export is durable.

Threading: the gRPC server runs on its own `grpc.aio` event loop in one dedicated thread
rather than on uvicorn's loop. uvicorn runs uvloop, which grpc.aio does not support as its
loop; a separate loop also keeps a slow or stuck gRPC peer from stalling the HTTP API, and
the collector is already thread-safe (`submit` returns a concurrent future, awaited here
with `asyncio.wrap_future`). Each Export is answered only after its events are committed.
A message over `otlp_http.INLINE_BYTES` is decoded and mapped in a worker thread, as
OTLP/HTTP does, so the loop goes on serving other Exports meanwhile.

OTLP spec, "OTLP/gRPC": messages over the limit (4 MiB, "typically enforce a default
incoming message size limit of 4 MiB") are refused by gRPC itself with RESOURCE_EXHAUSTED,
also when they only grow that large once decompressed; a message that does not decode is
INVALID_ARGUMENT (not retryable, "Failures"); a collector that is shutting down, or whose
storage failed (also for the Export that found it failing: `otlp_http.commit`), answers
UNAVAILABLE (retryable). Partial success is reported as in OTLP/HTTP. The handlers take the
raw bytes (no generated servicer) so that decoding errors are ours to name.

Connections: at most `max_connections` open at once (`auditmesh server --max-connections`,
gRPC core's `grpc.max_allowed_incoming_connections`): one more is closed as it is accepted,
which its client sees as UNAVAILABLE (retryable, "OTLP/gRPC Response"); a closed one frees
its place. A connection must send its HTTP/2 preface and SETTINGS within
`handshake_timeout_s` (`--header-timeout`; gRPC's `grpc.server_handshake_timeout_ms`,
120 s by default), else it is closed. Not bounded in time: a connection that did, and then
sends no RPC, keeps its place until its client closes it (the cap bounds how many can);
RPCs per connection follow gRPC's default. Refused connections are not counted or reported:
gRPC core keeps that to itself.

Metrics: `observe` (an `otlp_http.ExportObserver`, bound by `server/run.py` to
`Metrics.count_otlp`) hears of each Export with its result ("ok", "partial", "invalid",
"unavailable") and rejected records, on this receiver's thread. Messages gRPC refuses for
size never reach the handler and are not counted.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import grpc
import grpc.aio

from auditmesh.collector import Collector, CollectorUnavailable
from auditmesh.ingest.otlp import MalformedRequest, Signal, encode_response
from auditmesh.ingest.otlp_http import INLINE_BYTES, ExportObserver, commit, decode_and_map

DEFAULT_ADDRESS = ("127.0.0.1", 4317)  # OTLP spec, "OTLP/gRPC Default Port"
MAX_MESSAGE_BYTES = 4 * 1024 * 1024

_SERVICES: dict[Signal, str] = {
    "traces": "opentelemetry.proto.collector.trace.v1.TraceService",
    "logs": "opentelemetry.proto.collector.logs.v1.LogsService",
}

_Handler = Callable[[bytes, grpc.aio.ServicerContext[bytes, bytes]], Awaitable[bytes]]


class OtlpGrpcError(RuntimeError):
    """The gRPC receiver could not start (typically: the address is in use)."""


def _export_handler(
    collector: Collector, signal: Signal, observe: ExportObserver | None
) -> _Handler:
    def tell(result: str, rejected: int = 0) -> None:
        if observe is not None:
            observe(signal, result, rejected)

    async def export(request: bytes, context: grpc.aio.ServicerContext[bytes, bytes]) -> bytes:
        try:
            if len(request) > INLINE_BYTES:  # milliseconds of Python: other Exports go on
                mapped = await asyncio.to_thread(
                    decode_and_map, signal, request, "protobuf", False, len(request)
                )
            else:
                mapped = decode_and_map(signal, request, "protobuf", False, len(request))
        except MalformedRequest as exc:
            tell("invalid")
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        if mapped.events:
            try:
                await commit(collector, mapped)
            except CollectorUnavailable as exc:
                tell("unavailable")
                await context.abort(grpc.StatusCode.UNAVAILABLE, f"{exc}; retry later")
        tell("partial" if mapped.rejected else "ok", mapped.rejected)
        return encode_response(signal, mapped, "protobuf")

    return export


class OtlpGrpcServer:
    """A grpc.aio server on a private event loop in a daemon thread."""

    def __init__(
        self,
        collector: Collector,
        host: str = DEFAULT_ADDRESS[0],
        port: int = DEFAULT_ADDRESS[1],
        *,
        max_message_bytes: int = MAX_MESSAGE_BYTES,
        observe: ExportObserver | None = None,
        max_connections: int | None = None,
        handshake_timeout_s: float | None = None,
    ) -> None:
        self.collector = collector
        self.observe = observe
        self.max_connections = max_connections  # None: gRPC's default, no limit
        self.handshake_timeout_s = handshake_timeout_s  # None: gRPC's default, 120 s
        self.host = host
        self.port = port
        self.max_message_bytes = max_message_bytes
        self._thread = threading.Thread(target=self._run, name="auditmesh-otlp-grpc", daemon=True)
        self._started = threading.Event()
        self._startup_error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._grace_s = 5.0

    def start(self, timeout_s: float = 10.0) -> OtlpGrpcServer:
        """Bind and serve; returns once the port is bound (`self.port` is the real one)."""
        self._thread.start()
        if not self._started.wait(timeout_s):
            raise OtlpGrpcError(f"OTLP/gRPC receiver did not start within {timeout_s} s")
        if self._startup_error is not None:
            raise OtlpGrpcError(
                f"cannot serve OTLP/gRPC on {self.host}:{self.port}: {self._startup_error}"
            ) from self._startup_error
        return self

    def stop(self, grace_s: float = 5.0) -> None:
        """Let in-flight Exports finish (up to `grace_s`), then close the port."""
        loop, stop = self._loop, self._stop
        if loop is None or stop is None or not self._thread.is_alive():
            return
        self._grace_s = grace_s
        loop.call_soon_threadsafe(stop.set)
        self._thread.join(grace_s + 5.0)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    def _run(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # reported to start(); the thread just ends
            if not self._started.is_set():
                self._startup_error = exc
                self._started.set()

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        options: list[tuple[str, int]] = [
            ("grpc.max_receive_message_length", self.max_message_bytes),
            ("grpc.max_send_message_length", self.max_message_bytes),
            ("grpc.so_reuseport", 0),
        ]
        if self.max_connections is not None:
            options.append(("grpc.max_allowed_incoming_connections", self.max_connections))
        if self.handshake_timeout_s is not None:
            timeout_ms = max(1, round(self.handshake_timeout_s * 1000))
            options.append(("grpc.server_handshake_timeout_ms", timeout_ms))
        server = grpc.aio.server(options=options)
        for signal, service in _SERVICES.items():
            handler: grpc.RpcMethodHandler[bytes, bytes] = grpc.unary_unary_rpc_method_handler(
                _export_handler(self.collector, signal, self.observe)
            )
            server.add_generic_rpc_handlers(
                (grpc.method_handlers_generic_handler(service, {"Export": handler}),)
            )
        host = f"[{self.host}]" if ":" in self.host else self.host
        bound = server.add_insecure_port(f"{host}:{self.port}")
        if not bound:
            raise OtlpGrpcError("address in use or not available")
        self.port = bound
        await server.start()
        self._started.set()
        try:
            await self._stop.wait()
        finally:
            await server.stop(self._grace_s)
