"""A scripted OpenTelemetry Collector stand-in for export tests: real sockets, real OTLP.

`FakeCollector` listens on loopback with OTLP/HTTP (`http.server`) or OTLP/gRPC
(`grpc.server`), decodes every Export request it gets and keeps it, and answers with what
the test's `answer` function says for that request: `Ok(...)` (200 / OK, optionally a
partial success) or `Fail(...)` (an HTTP status with headers, or a gRPC status code). It is
not auditmesh code: it stands for a third-party collector that misbehaves in a given way.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Literal

import grpc
from google.protobuf.any_pb2 import Any
from google.protobuf.duration_pb2 import Duration
from google.rpc import status_pb2
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsPartialSuccess,
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)

SERVICE = "opentelemetry.proto.collector.logs.v1.LogsService"


@dataclass(frozen=True)
class Ok:
    rejected: int = 0
    message: str = ""


@dataclass(frozen=True)
class Fail:
    http_status: int = 503
    grpc_code: grpc.StatusCode = grpc.StatusCode.UNAVAILABLE
    headers: dict[str, str] = field(default_factory=dict)
    message: str = "scripted failure"
    retry_delay_s: int | None = None  # gRPC: a google.rpc.RetryInfo in the status details


Answer = Ok | Fail


def log_indexes(request: ExportLogsServiceRequest) -> list[int]:
    """The `auditmesh.log.index` attribute of every record in `request`, in order."""
    found = []
    for resource_logs in request.resource_logs:
        for scope_logs in resource_logs.scope_logs:
            for record in scope_logs.log_records:
                for kv in record.attributes:
                    if kv.key == "auditmesh.log.index":
                        found.append(kv.value.int_value)
    return found


class FakeCollector:
    def __init__(
        self,
        answer: Callable[[int, ExportLogsServiceRequest], Answer],
        *,
        protocol: Literal["http", "grpc"] = "http",
    ) -> None:
        self.answer = answer  # (number of the request from 0, request) -> Answer
        self.protocol = protocol
        self.requests: list[ExportLogsServiceRequest] = []
        self.accepted: list[int] = []  # log indexes of the records answered Ok
        self._lock = threading.Lock()
        self._http: ThreadingHTTPServer | None = None
        self._grpc: grpc.Server | None = None
        self.endpoint = ""

    def _decide(self, request: ExportLogsServiceRequest) -> Answer:
        with self._lock:
            number = len(self.requests)
            self.requests.append(request)
            result = self.answer(number, request)
            if isinstance(result, Ok) and not result.rejected:
                self.accepted += log_indexes(request)
            return result

    def __enter__(self) -> FakeCollector:
        if self.protocol == "http":
            self._start_http()
        else:
            self._start_grpc()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._http is not None:
            self._http.shutdown()
            self._http.server_close()
        if self._grpc is not None:
            self._grpc.stop(None)

    def _start_http(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["content-length"]))
                result = collector._decide(ExportLogsServiceRequest.FromString(body))
                if isinstance(result, Ok):
                    response = ExportLogsServiceResponse()
                    if result.rejected:
                        response.partial_success.CopyFrom(
                            ExportLogsPartialSuccess(
                                rejected_log_records=result.rejected, error_message=result.message
                            )
                        )
                    self._reply(200, {}, response.SerializeToString())
                else:
                    self._reply(result.http_status, result.headers, result.message.encode())

            def _reply(self, status: int, headers: dict[str, str], body: bytes) -> None:
                self.send_response(status)
                content_type = "application/x-protobuf" if status == 200 else "text/plain"
                self.send_header("content-type", content_type)
                self.send_header("content-length", str(len(body)))
                for key, value in headers.items():
                    self.send_header(key, value)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        self._http = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self._http.serve_forever, daemon=True).start()
        self.endpoint = f"http://127.0.0.1:{self._http.server_address[1]}"

    def _start_grpc(self) -> None:
        def export(
            request: ExportLogsServiceRequest, context: grpc.ServicerContext
        ) -> ExportLogsServiceResponse:
            result = self._decide(request)
            if isinstance(result, Fail):
                if result.retry_delay_s is not None:  # OTLP/gRPC Throttling
                    info = RetryInfo(retry_delay=Duration(seconds=result.retry_delay_s))
                    detail = Any()
                    detail.Pack(info)
                    status = status_pb2.Status(
                        code=result.grpc_code.value[0], message=result.message, details=[detail]
                    )
                    context.set_trailing_metadata(
                        (("grpc-status-details-bin", status.SerializeToString()),)
                    )
                context.abort(result.grpc_code, result.message)
            response = ExportLogsServiceResponse()
            if isinstance(result, Ok) and result.rejected:
                response.partial_success.rejected_log_records = result.rejected
                response.partial_success.error_message = result.message
            return response

        handler = grpc.unary_unary_rpc_method_handler(
            export,
            request_deserializer=ExportLogsServiceRequest.FromString,
            response_serializer=ExportLogsServiceResponse.SerializeToString,
        )
        limit = 64 * 1024 * 1024
        self._grpc = grpc.server(
            futures.ThreadPoolExecutor(max_workers=2),
            options=[("grpc.max_receive_message_length", limit)],
        )
        self._grpc.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, {"Export": handler}),)
        )
        port = self._grpc.add_insecure_port("127.0.0.1:0")
        self._grpc.start()
        self.endpoint = f"http://127.0.0.1:{port}"
