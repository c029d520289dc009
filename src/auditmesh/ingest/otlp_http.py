"""OTLP/HTTP receiver: `POST /v1/traces` and `POST /v1/logs` on the server's HTTP port.

Place in the house: the I/O shell around `ingest.otlp` (which decides what a request means)
and the collector (which makes the events durable). `server/app.py` mounts `routes(...)`.
Everything here follows the OTLP specification, section "OTLP/HTTP":

- Request bodies are binary protobuf (`application/x-protobuf`) or OTLP/JSON
  (`application/json`), optionally `Content-Encoding: gzip`; any other type or coding is
  answered 415 (RFC 9110 §15.5.16).
- The body is limited, "including after decompression" (20 MiB, the spec's recommended
  default): 413 when over, also for a gzip bomb, which is never inflated past the limit.
- 200 with an Export*ServiceResponse in the request's encoding, answered only after the
  events are durable; `partial_success` counts and explains rejected records.
- Every 4xx and 5xx answer on these paths carries a `google.rpc.Status` body in the
  request's encoding ("Failures": "The response body for all HTTP 4xx and HTTP 5xx
  responses MUST be a Protobuf-encoded Status"; protobuf when the request named neither):
  400 for undecodable data ("Bad Data", with a `BadRequest` detail), 405 with `Allow: POST`
  for another method, 500 for a defect of ours, 503 with Retry-After when the collector is
  shutting down or its storage failed, also for the batch that found it failing (retryable,
  "OTLP/HTTP Throttling"; `commit`). `status_answer` is for the layers in front of the
  routes (the origin check, server/app.py). The other two default paths, /v1/metrics and
  /v1development/profiles, answer 404 with a Status saying this receiver does not take them.
- A body that did not arrive whole within the server's deadline (`httpbody.BodyDeadline`,
  which closes the connection) is answered 503 with Retry-After, not 408: only 429, 502,
  503 and 504 are retryable ("Retryable Response Codes": "All other 4xx or 5xx response
  status codes MUST NOT be retried"), and a batch that came too slowly is not bad data; an
  OTel SDK given 408 drops it.

Metrics: an optional `ExportObserver` hears of every POST once it is answered, with
its signal, a result ("ok", "partial", "invalid", "too_large", "unsupported",
"unavailable", "timeout": a body not whole within the deadline) and the number of rejected
records; `server/app.py` binds it to `Metrics.count_otlp` (ingest imports no server code).
Accepted records are counted from the ledger's commits instead (`server/metrics.py`), so a
retried export is counted once.
"""

from __future__ import annotations

import asyncio
import logging
import zlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeAlias

from google.protobuf import any_pb2, json_format
from google.rpc import code_pb2, error_details_pb2, status_pb2
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import Response
from starlette.routing import Route, request_response
from starlette.types import Receive, Scope, Send

from auditmesh.collector import Collector, CollectorStopped, CollectorUnavailable
from auditmesh.httpbody import BodyTimeout, BodyTooLarge, media_type, read_limited
from auditmesh.ingest.otlp import (
    Encoding,
    MalformedRequest,
    Mapped,
    Signal,
    TooManyObjects,
    encode_response,
    map_body,
)
from auditmesh.ledger.log import Log

#: OTLP spec, "OTLP/HTTP Request": "It is RECOMMENDED to use 20 MiB as the default limit."
MAX_BODY_BYTES = 20 * 1024 * 1024
# Decoding and mapping a larger body takes milliseconds: done off the event loop (also gRPC).
INLINE_BYTES = 256 * 1024
_GZIP_STEP = 4096

_MEDIA_TYPES: dict[str, Encoding] = {
    "application/x-protobuf": "protobuf",
    "application/json": "json",
}
_CONTENT_TYPES: dict[Encoding, str] = {
    "protobuf": "application/x-protobuf",
    "json": "application/json",
}
#: OTLP spec, "OTLP/HTTP Request": the default paths served here, and those of the signals
#: this receiver does not take (answered 404 with a Status).
PATHS: dict[str, Signal] = {"/v1/traces": "traces", "/v1/logs": "logs"}
_NOT_TAKEN = {"/v1/metrics": "metrics", "/v1development/profiles": "profiles"}
RETRY_AFTER = {"Retry-After": "5"}  # seconds, on each retryable answer ("OTLP/HTTP Throttling")

_log = logging.getLogger(__name__)


#: Told of each answered Export request: (signal, result, rejected records).
ExportObserver: TypeAlias = Callable[[Signal, str, int], None]


def _ignore(signal: Signal, result: str, rejected: int) -> None:
    pass


def gunzip(data: bytes, limit: int) -> bytes:
    """Inflate gzip (RFC 1952, members concatenated allowed) without ever holding more than
    `limit` + 1 bytes of output; raises `BodyTooLarge` past the limit and
    `MalformedRequest` for data that is not gzip or is truncated."""
    out = bytearray()
    view = memoryview(data)
    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
    try:
        # Fed a step at a time: at each member's end zlib copies the input left after it
        # (unused_data), which for a body of many tiny members was quadratic in its size.
        for start in range(0, len(view), _GZIP_STEP):
            pending: bytes | memoryview = view[start : start + _GZIP_STEP]
            while pending:
                if inflater.eof:  # the next member
                    inflater = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
                out += inflater.decompress(pending, limit + 1 - len(out))
                if len(out) > limit:
                    raise BodyTooLarge
                pending = inflater.unused_data if inflater.eof else inflater.unconsumed_tail
    except zlib.error as exc:
        raise MalformedRequest(f"Content-Encoding is gzip but the body is not: {exc}") from None
    if not inflater.eof:
        raise MalformedRequest("gzip body is truncated")
    return bytes(out)


def status_response(
    http_status: int,
    code: int,
    message: str,
    encoding: Encoding,
    *,
    bad_request: bool = False,
    headers: dict[str, str] | None = None,
) -> Response:
    status = status_pb2.Status(code=code, message=message)
    if bad_request:
        detail = any_pb2.Any()
        detail.Pack(
            error_details_pb2.BadRequest(
                field_violations=[
                    error_details_pb2.BadRequest.FieldViolation(field="", description=message)
                ]
            )
        )
        status.details.append(detail)
    if encoding == "protobuf":
        body = status.SerializeToString()
    else:
        body = json_format.MessageToJson(status, indent=None).encode()
    return Response(
        body, status_code=http_status, media_type=_CONTENT_TYPES[encoding], headers=headers
    )


def _error_encoding(request: Request) -> Encoding:
    """An error answer's encoding: the request's ("OTLP/HTTP Response": the same
    Content-Type as it received), protobuf when it named neither."""
    return _MEDIA_TYPES.get(media_type(request), "protobuf")


def is_otlp_path(path: str) -> bool:
    """Whether an error answer on `path` must be a Status (`status_answer`)."""
    return path in PATHS or path in _NOT_TAKEN


def status_answer(scope: Scope, http_status: int, code: int, message: str) -> Response:
    """An error answer on an OTLP path from a layer in front of the routes (server/app.py:
    the origin check), in the request's encoding."""
    return status_response(http_status, code, message, _error_encoding(Request(scope)))


def decode_and_map(
    signal: Signal, body: bytes, encoding: Encoding, gzipped: bool, limit: int
) -> Mapped:
    """The CPU part of one request: inflate, decode, map (pure, thread-safe)."""
    if gzipped:
        body = gunzip(body, limit)
    return map_body(signal, body, encoding)


async def commit(collector: Collector, mapped: Mapped) -> None:
    """Commit the mapped events but those whose ids the log holds with other content (each
    then a rejected record). `CollectorUnavailable` when nothing was stored, also when this
    very batch found the storage broken: the collector then stops and answers every later
    batch `CollectorStopped`, and this one is owed the same retryable answer (OTLP spec,
    "Failures": not-retryable codes are for data that cannot be processed, and a client
    MUST drop the data it gets one for; a broken store is not the data's fault). A left-out
    record exported from this very log (by `auditmesh export otlp`) is rejected as sent
    back to the server it came from, the likely mistake, not as a conflict."""
    try:
        left_out = await collector.submit_leaving_out_conflicts(mapped.entries)
    except CollectorUnavailable:
        raise
    except Exception as exc:
        if exc is not collector.failure:
            raise  # a defect of ours, not of the store
        raise CollectorStopped(
            f"the collector takes no more events: its storage failed: {exc}"
        ) from exc
    sent_back: dict[int, str] = {}
    if left_out:
        left_out = await _stored_before_claims(collector, mapped, left_out)
    if left_out:
        sent_back = await asyncio.to_thread(_sent_back, collector.log, mapped, left_out)
    mapped.leave_out(left_out, sent_back)


async def _stored_before_claims(
    collector: Collector, mapped: Mapped, left_out: list[int]
) -> list[int]:
    """`left_out` but the events the log holds as relayed before relayed events kept their
    record's claims (`Mapped.without_claims`): submitted in that form, such an event is a
    duplicate (nothing is written) and its record was taken, as on its first relay."""
    older = mapped.without_claims(left_out)
    if not older:
        return left_out
    positions = list(older)
    again = set(await collector.submit_leaving_out_conflicts([older[p] for p in positions]))
    stored = {position for i, position in enumerate(positions) if i not in again}
    return [position for position in left_out if position not in stored]


def _sent_back(log: Log, mapped: Mapped, left_out: list[int]) -> dict[int, str]:
    """Of the left-out events whose records say which entry they were exported from
    (`Mapped.exported_entries`), those this log holds at that very index: the same leaf
    hash, so the record was exported from this log and sent back to it. Position → the
    event's reporter. Read from the stored tiles, only to explain the reject: a failed
    read explains less and fails nothing."""
    found: dict[int, str] = {}
    exported = mapped.exported_entries(left_out)
    size = log.size
    try:
        hashes = log.hashes()
        for position, entry in exported.items():
            if entry.index < size and hashes.subtree_hash(0, entry.index) == entry.leaf_hash:
                found[position] = entry.reporter
    except Exception:  # a storage or tile error: the records stay rejected as conflicts
        _log.warning("OTLP: could not read the log to explain a conflict", exc_info=True)
    return found


@dataclass(frozen=True, slots=True)
class OtlpHttpReceiver:
    collector: Collector
    max_body_bytes: int = MAX_BODY_BYTES
    observe: ExportObserver = _ignore

    async def traces(self, request: Request) -> Response:
        return await self._export("traces", request)

    async def logs(self, request: Request) -> Response:
        return await self._export("logs", request)

    async def _export(self, signal: Signal, request: Request) -> Response:
        if request.method != "POST":  # not an export, not counted
            return status_response(
                405,
                code_pb2.UNIMPLEMENTED,
                f"{request.method} {request.url.path} is not an OTLP export: OTLP/HTTP sends "
                "each export with POST",
                _error_encoding(request),
                headers={"Allow": "POST"},
            )
        try:
            response, result, rejected = await self._answer(signal, request)
        except Exception:  # a defect of ours: still a Status ("Failures")
            _log.exception("OTLP/HTTP export to %s failed", request.url.path)
            message = "the server failed to process this export (its log says why)"
            return status_response(500, code_pb2.INTERNAL, message, _error_encoding(request))
        self.observe(signal, result, rejected)
        return response

    async def _answer(self, signal: Signal, request: Request) -> tuple[Response, str, int]:
        """The response, the result for the metrics, and the records rejected."""
        given = media_type(request)
        encoding = _MEDIA_TYPES.get(given)
        if encoding is None:
            response = status_response(
                415,
                code_pb2.INVALID_ARGUMENT,
                f"unsupported Content-Type {given or '(none)'!r}: OTLP/HTTP takes "
                "application/x-protobuf or application/json",
                "protobuf",
            )
            return response, "unsupported", 0
        coding = request.headers.get("content-encoding", "identity").strip().lower()
        if coding not in ("identity", "", "gzip", "x-gzip"):
            response = status_response(
                415,
                code_pb2.INVALID_ARGUMENT,
                f"unsupported Content-Encoding {coding!r}: send gzip or no compression",
                encoding,
            )
            return response, "unsupported", 0
        limit = self.max_body_bytes
        try:
            body = await read_limited(request, limit)
            gzipped = coding in ("gzip", "x-gzip")
            if len(body) > INLINE_BYTES or (gzipped and len(body) > INLINE_BYTES // 8):
                mapped = await run_in_threadpool(
                    decode_and_map, signal, body, encoding, gzipped, limit
                )
            else:
                mapped = decode_and_map(signal, body, encoding, gzipped, limit)
        except ClientDisconnect:  # the body was cut short: nothing to map, nobody to answer
            return Response(status_code=400), "invalid", 0
        except BodyTimeout as exc:  # the rest never came in time (httpbody.BodyDeadline)
            # 503, retryable ("Retryable Response Codes"): a slow link is not bad data
            response = status_response(
                503, code_pb2.DEADLINE_EXCEEDED, str(exc), encoding, headers=RETRY_AFTER
            )
            return response, "timeout", 0  # the data was never whole: not invalid
        except BodyTooLarge:
            response = status_response(
                413,
                code_pb2.RESOURCE_EXHAUSTED,
                f"request body larger than {limit} bytes (after decompression); "
                "send smaller batches",
                encoding,
            )
            return response, "too_large", 0
        except TooManyObjects as exc:
            response = status_response(413, code_pb2.RESOURCE_EXHAUSTED, str(exc), encoding)
            return response, "too_large", 0
        except MalformedRequest as exc:
            response = status_response(
                400, code_pb2.INVALID_ARGUMENT, str(exc), encoding, bad_request=True
            )
            return response, "invalid", 0
        if mapped.events:
            try:
                await commit(self.collector, mapped)
            except CollectorUnavailable as exc:
                response = status_response(
                    503, code_pb2.UNAVAILABLE, f"{exc}; retry later", encoding, headers=RETRY_AFTER
                )
                return response, "unavailable", 0
        response = Response(
            encode_response(signal, mapped, encoding), media_type=_CONTENT_TYPES[encoding]
        )
        return response, "partial" if mapped.rejected else "ok", mapped.rejected


class _EveryMethod:
    """An endpoint as an ASGI app, so that Starlette routes every method to it rather than
    answer another one 405 in plain text itself."""

    def __init__(self, endpoint: Callable[[Request], Awaitable[Response]]) -> None:
        self._app = request_response(endpoint)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)


def _not_taken(signal: str) -> Callable[[Request], Awaitable[Response]]:
    async def answer(request: Request) -> Response:
        message = (
            f"this server takes OTLP traces (/v1/traces) and logs (/v1/logs), not {signal}: "
            f"send {signal} to another backend, or turn their export off"
        )
        return status_response(404, code_pb2.UNIMPLEMENTED, message, _error_encoding(request))

    return answer


def routes(
    collector: Collector,
    *,
    max_body_bytes: int = MAX_BODY_BYTES,
    observe: ExportObserver | None = None,
) -> list[Route]:
    """The OTLP/HTTP default paths (OTLP spec, "OTLP/HTTP Request"), every method."""
    receiver = OtlpHttpReceiver(collector, max_body_bytes, observe or _ignore)
    return [
        Route("/v1/traces", _EveryMethod(receiver.traces)),
        Route("/v1/logs", _EveryMethod(receiver.logs)),
        *(Route(path, _EveryMethod(_not_taken(signal))) for path, signal in _NOT_TAKEN.items()),
    ]
