"""HTTP API of `auditmesh server`: routes only; the logic lives in the collector and ledger.

POST /v1/events                    batch in (JSON array or NDJSON, uncompressed: 415 for a
                                   Content-Encoding or another Content-Type than
                                   BATCH_MEDIA_TYPES), answered after commit;
                                   no event may be attested (403): only sidecars, over the
                                   mesh listener (server/mesh.py), submit attested events
GET  /v1/events/{id}               the event, its index and inclusion proof
GET  /v1/proof/inclusion?id=       C2SP tlog-proof for one event
GET  /v1/proof/consistency?from=&to=
GET  /log/checkpoint               C2SP tlog-tiles, read-only
GET  /log/tile/<L>/<N>[.p/<W>]     hash tiles
GET  /log/tile/entries/<N>[.p/<W>] entry bundles
GET  /metrics                      Prometheus metrics (server/metrics.py)
POST /v1/traces, /v1/logs          OTLP/HTTP receiver (ingest/otlp_http.py); every error
                                   answer there is a google.rpc.Status, the origin check's too
GET  /v1/events?…, /v1/traces/{id}, /v1/graph   questions (server/query_routes.py)

Reads of events (GET /v1/events…, /v1/traces/…, /v1/graph, /v1/proof/inclusion) need the API
token or a mesh client certificate and are audited (server/api_auth.py, which says why the
rest stays public). Every request body must arrive whole within the server's --body-timeout,
else 408 and the connection is closed (httpbody.BodyDeadline).
"""

from __future__ import annotations

import asyncio
import base64
import functools
from typing import Any, NamedTuple

import msgspec
from google.rpc import code_pb2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Scope

from auditmesh.analysis.query import QueryError, single_params
from auditmesh.collector import Collector, CollectorUnavailable, EventConflict
from auditmesh.console.routes import routes as console_routes
from auditmesh.datadir import Ledger
from auditmesh.events import (
    EVENT_ID_FORM,
    AuditEvent,
    EventError,
    decode_batch,
    parse_event_id,
)
from auditmesh.httpbody import BODY_TIMEOUT_S, BodyDeadline, BodyTooLarge, media_type, read_limited
from auditmesh.ingest import otlp_http
from auditmesh.ledger import tiles
from auditmesh.ledger.tlogproof import TlogProof
from auditmesh.server import api_auth, query_routes
from auditmesh.server.metrics import Metrics
from auditmesh.server.origin import SameOriginWrites, json_refusal
from auditmesh.store.base import StoredEvent, event_key

MAX_BATCH_BYTES = 16 * 1024 * 1024
# A batch's Content-Type (the sidecar, `auditmesh ingest` and bench send x-ndjson); the
# body itself says whether it is an array or NDJSON. Also taken, as before types were
# checked: none at all, and curl's default for --data-binary, which README's example sends.
BATCH_MEDIA_TYPES = ("application/json", "application/x-ndjson")
_ALSO_TAKEN = ("", "application/x-www-form-urlencoded")
CHECKPOINT_WAIT_S = 10.0
_IMMUTABLE = {"Cache-Control": "public, max-age=31536000, immutable"}


class _Proven(NamedTuple):
    event: StoredEvent
    size: int  # of the checkpoint the proof is for
    note: bytes  # that checkpoint, signed
    proof: list[bytes]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _error(
    status: int, message: str, _headers: dict[str, str] | None = None, **extra: object
) -> JSONResponse:
    return JSONResponse({"error": message, **extra}, status_code=status, headers=_headers)


def _not_the_callers(events: list[AuditEvent], reporter: str | None) -> Response | None:
    """403 naming the first event this caller may not submit, None if it may submit all.
    Over the mesh listener (`reporter` is the caller's SPIFFE ID) every event must be
    reported by the caller; over the plain listener (None) no event may be attested:
    `attested` means our own sidecar observed the call, and only a sidecar, proven by its
    SVID on the mesh listener, can say so."""
    for number, event in enumerate(events, start=1):
        if reporter is not None and event.reporter != reporter:
            why = f"has reporter {event.reporter!r}, but the caller is {reporter}"
        elif reporter is None and event.attested:
            why = (
                'is attested ("attested": true): only a sidecar over the mesh listener '
                '(mTLS) may submit attested events; reported events must carry "attested": false'
            )
        else:
            continue
        return _error(403, f"batch rejected, nothing stored: event {number} {why}", line=number)
    return None


async def admit_batch(
    request: Request,
    collector: Collector,
    *,
    reporter: str | None = None,
    max_bytes: int = MAX_BATCH_BYTES,
) -> Response:
    """Decode a batch, refuse it whole if any event is invalid or not the caller's to
    submit (`_not_the_callers`: `reporter` is given on the mesh listener, None on the plain
    one), and answer with the indices once it is durable."""
    given = media_type(request)
    if given not in BATCH_MEDIA_TYPES and given not in _ALSO_TAKEN:
        accepted = ", ".join(BATCH_MEDIA_TYPES)
        return _error(
            415,  # RFC 9110 §15.5.16; Accept-Post (W3C LDP §7.1) names the types taken
            f"Content-Type {given!r} is not accepted here: send the batch as {accepted} "
            "(a JSON array of events, or one event per line)",
            _headers={"accept-post": accepted},
        )
    coding = request.headers.get("content-encoding", "identity").strip().lower()
    if coding not in ("identity", ""):
        return _error(
            415,  # RFC 9110 §15.5.16, with the codings accepted
            f"Content-Encoding {coding!r} is not accepted here: send the batch uncompressed",
            _headers={"accept-encoding": "identity"},
        )
    try:
        body = await read_limited(request, max_bytes)
    except BodyTooLarge:
        return _error(413, f"batch larger than {max_bytes} bytes; split it")
    except ClientDisconnect:  # the body was cut short: nothing to store, nobody to answer
        return Response(status_code=400)
    try:
        # Decoding costs ~30 µs an event: off the event loop, so other requests go on.
        events = (
            decode_batch(body)
            if len(body) < 64 * 1024
            else await run_in_threadpool(decode_batch, body)
        )
    except EventError as exc:
        return _error(400, f"batch rejected, nothing stored: {exc}", line=exc.line)
    if not events:
        return _error(400, "empty batch: send a JSON array or NDJSON of events")
    refused = _not_the_callers(events, reporter)
    if refused is not None:
        return refused
    try:
        indices = await collector.submit_async(events)
    except CollectorUnavailable as exc:
        return _error(503, str(exc))
    except EventConflict as exc:  # an id the log holds with other content
        return _error(409, f"batch rejected, nothing stored: {exc}", line=exc.line)
    except EventError as exc:  # one too large for a ledger entry
        return _error(400, f"batch rejected, nothing stored: {exc}", line=exc.line)
    # fresh_from: an index below it was in the log before this batch (a duplicate)
    return JSONResponse(
        {"indices": indices, "size": collector.log.size, "fresh_from": indices.fresh_from}
    )


class Api:
    def __init__(
        self, ledger: Ledger, collector: Collector, *, max_batch_bytes: int = MAX_BATCH_BYTES
    ) -> None:
        self.ledger = ledger
        self.store = ledger.store
        self.collector = collector
        self.max_batch_bytes = max_batch_bytes

    async def post_events(self, request: Request) -> Response:
        return await admit_batch(request, self.collector, max_bytes=self.max_batch_bytes)

    async def _stored(self, request: Request, raw_id: str | None) -> StoredEvent | Response:
        if not raw_id:
            return _error(400, f"give the event id: {EVENT_ID_FORM}")
        try:
            event_id = parse_event_id(raw_id)
        except ValueError as exc:  # a 400 saying which form to give, never a 404
            return _error(400, str(exc))
        stored = await run_in_threadpool(self.store.event_by_id, event_key(event_id))
        if stored is None:  # says which ids are not stored: audited as a read (api_auth.py)
            api_auth.set_read_count(request.scope, 0)
            return _error(404, f"no event with id {event_id}")
        return stored

    async def _proven(self, request: Request, raw_id: str | None) -> _Proven | Response:
        """The event `raw_id` names, with its inclusion proof in the first signed checkpoint
        that covers it; or the error response (400, 404, 503 while no checkpoint covers it)."""
        stored = await self._stored(request, raw_id)
        if isinstance(stored, Response):
            return stored
        future = self.collector.checkpoint_covering(stored.index + 1)
        try:
            cp = await asyncio.wait_for(asyncio.wrap_future(future), CHECKPOINT_WAIT_S)
        except TimeoutError:  # says the id is stored: audited as a read, as the 404
            api_auth.set_read_count(request.scope, 0)
            every = self.collector.checkpoint_interval_s
            return _error(
                503,
                f"no signed checkpoint covers this event yet; the server signs one every "
                f"{every:g} s while the log grows: try again then",
            )
        proof = await run_in_threadpool(self.ledger.log.inclusion_proof, stored.index, cp.size)
        return _Proven(stored, cp.size, cp.note, proof)

    async def get_event(self, request: Request) -> Response:
        proven = await self._proven(request, request.path_params["event_id"])
        if isinstance(proven, Response):
            return proven
        body: dict[str, Any] = {
            "index": proven.event.index,
            "event": msgspec.json.decode(proven.event.data),
            "proof": {"tree_size": proven.size, "hashes": [_b64(h) for h in proven.proof]},
            "checkpoint": proven.note.decode(),
        }
        return JSONResponse(body)

    async def get_inclusion(self, request: Request) -> Response:
        try:
            raw_id = single_params(request.query_params.multi_items()).get("id")
        except QueryError as exc:
            return _error(400, str(exc))
        proven = await self._proven(request, raw_id)
        if isinstance(proven, Response):
            return proven
        text = TlogProof(proven.event.index, tuple(proven.proof), proven.note, None).encode()
        return Response(text, media_type="text/plain; charset=utf-8")

    async def get_consistency(self, request: Request) -> Response:
        try:
            params = single_params(request.query_params.multi_items())
            size1, size2 = _size(params.get("from")), _size(params.get("to"))
        except QueryError as exc:
            return _error(400, str(exc))
        if size1 is None or size2 is None:
            return _error(400, "give tree sizes as integers: ?from=N&to=M")
        size = self.collector.log.size
        if not 0 <= size1 <= size2 <= size:
            return _error(400, f"need 0 <= from <= to <= {size} (the log's size)")
        proof = await run_in_threadpool(self.ledger.log.consistency_proof, size1, size2)
        return JSONResponse({"from": size1, "to": size2, "proof": [_b64(h) for h in proof]})

    async def get_checkpoint(self, request: Request) -> Response:
        latest = await run_in_threadpool(self.store.latest_checkpoint)
        if latest is None:
            return _error(404, "the log has no checkpoint yet")
        # tlog-tiles: the checkpoint SHOULD NOT be cached for more than a few seconds
        return Response(
            latest.note,
            media_type="text/plain; charset=utf-8",
            headers={"cache-control": "no-cache"},
        )

    async def get_tile(self, request: Request) -> Response:
        path = "tile/" + request.path_params["path"]
        try:
            ref = tiles.parse_tile_path(path)
        except ValueError as exc:
            return _error(400, f"bad tile path: {exc}")  # exc names the path
        width = ref.width or tiles.TILE_WIDTH
        # tlog-tiles §"Merkle Tree", §"Log entries": "This endpoint is immutable, so its
        # caching headers SHOULD be long-lived". A partial tile too: its path names its
        # width, and the log only appends, so tile/0/001.p/44 is the same 44 hashes for ever.
        # Only the 200s say so: what is 404 now is served once the log has grown.
        headers = _IMMUTABLE
        if ref.is_entries:
            start = ref.index * tiles.TILE_WIDTH
            rows = await run_in_threadpool(
                lambda: [data for _, data in self.store.entries(start, start + width)]
            )
            if len(rows) < width:
                return _error(404, f"{path} is beyond the end of the log")
            return Response(tiles.encode_entry_bundle(rows), headers=headers, media_type=_TILE)
        stored = await run_in_threadpool(self.store.read_tile, ref.level, ref.index)
        if len(stored) < width * 32:
            return _error(404, f"{path} is beyond the end of the log")
        return Response(stored[: width * 32], headers=headers, media_type=_TILE)


def _size(given: str | None) -> int | None:
    """A tree size in plain decimal digits; int() alone would take "+1", " 1", "1_0", "١".
    More than 19 digits is past any log (sizes are below 2^63): 2^63 stands for it, which
    int() could not parse past 4300 digits."""
    if given is None or not (given.isascii() and given.isdigit()):
        return None
    return int(given) if len(given) <= 19 else 1 << 63


_TILE = "application/octet-stream"  # tlog-tiles: tiles and entry bundles MUST be served so


def _origin_refusal(scope: Scope, message: str) -> Response:
    """The origin check's 403: a google.rpc.Status on the OTLP paths (OTLP spec, "Failures":
    every 4xx and 5xx answer carries one), a JSON error elsewhere."""
    if otlp_http.is_otlp_path(scope["path"]):
        return otlp_http.status_answer(scope, 403, code_pb2.PERMISSION_DENIED, message)
    return json_refusal(scope, message)


def create_app(
    ledger: Ledger,
    collector: Collector,
    *,
    metrics: Metrics | None = None,
    body_timeout_s: float = BODY_TIMEOUT_S,
    **options: Any,
) -> Starlette:
    api = Api(ledger, collector, **options)
    # Its own registry (server/metrics.py); `serve` hands in the one the mesh listener and
    # the OTLP/gRPC receiver feed too. One Metrics per collector: each observes its commits.
    metrics = metrics if metrics is not None else Metrics(ledger.store, collector)
    reads = [  # need credentials, audited (server/api_auth.py); the mesh listener has them too
        Route("/v1/events/{event_id}", api.get_event, methods=["GET"]),
        Route("/v1/proof/inclusion", api.get_inclusion, methods=["GET"]),
        *query_routes.routes(query_routes.QueryApi(ledger, collector)),
    ]
    routes = [
        Route("/v1/events", api.post_events, methods=["POST"]),
        *reads,
        Route("/v1/proof/consistency", api.get_consistency, methods=["GET"]),
        Route("/log/checkpoint", api.get_checkpoint, methods=["GET"]),
        Route("/log/tile/{path:path}", api.get_tile, methods=["GET"]),
        Route("/metrics", metrics.endpoint, methods=["GET"]),
        # OTLP/HTTP receiver (issue 5): POST /v1/traces, POST /v1/logs
        *otlp_http.routes(collector, observe=functools.partial(metrics.count_otlp, "http")),
        *console_routes(ledger, collector),  # web console at / (issue 7, console/routes.py)
    ]
    app = Starlette(routes=routes)
    app.state.metrics = metrics  # ingest adapters: request.app.state.metrics.count_ingest(...)
    app.state.read_routes = reads
    token = api_auth.load_or_create_token(ledger.data_dir)
    app.add_middleware(api_auth.ApiAuth, token=token, collector=collector)
    app.add_middleware(SameOriginWrites, refusal=_origin_refusal)
    app.add_middleware(BodyDeadline, timeout_s=body_timeout_s)  # outermost: every body, 408
    return app
