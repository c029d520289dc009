"""The API's questions: event search, traces and the service graph (routes only).

    GET /v1/events?source=&dest=&service=&path=&status=&decision=&trace=&kind=&direction=
                  &calls=once&since=&until=&order=newest|oldest|index&limit=&cursor=
        {"events": [{"index": N, "event": {...}}, ...], "count": n, "next": cursor | null}
        Filters as in analysis/query.py (source/dest/service also take the graph's names:
        `payments.shop`, `unknown`; calls=once the calls an edge counts); since/until take
        nanoseconds, a duration before now (15m) or RFC 3339; limit 1..1000 (default 100);
        pass `next` back as `cursor`.
    GET /v1/traces/{trace_id}    the call tree (analysis/trace.py `to_json`), 404 if unknown;
        the id's first 8 or more digits do when only one trace id starts with them
    GET /v1/graph?since=&until=  the service graph (analysis/graph.py `to_json`)

All three are reads: server/api_auth.py asks for credentials and records each one (routes tell
it how many events they returned). The graph reads the rollup (analysis/rollup.py), which a
background thread keeps in step with the ledger after commits, so a request only folds what
arrived in the last moments.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from auditmesh.analysis import graph, trace
from auditmesh.analysis.query import (
    TRACE_OR_PREFIX,
    QueryError,
    parse_params,
    parse_window,
    run,
    single_params,
)
from auditmesh.analysis.rollup import ROLLUP_DB, Rollup
from auditmesh.collector import Collector
from auditmesh.datadir import Ledger
from auditmesh.server.api_auth import set_read_count

KEEP_UP_INTERVAL_S = 2.0


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class RollupKeeper:
    """A daemon thread folding new ledger entries into the rollup, at most every interval."""

    def __init__(self, rollup: Rollup, interval_s: float = KEEP_UP_INTERVAL_S) -> None:
        self._rollup = rollup
        self._interval = interval_s
        self._wake = threading.Event()
        self._stopped = False
        self.failure: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="auditmesh-rollup", daemon=True)
        self._thread.start()

    def poke(self, _entries: object = None) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopped = True
        self._wake.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stopped:
            self._wake.wait()
            if self._stopped:
                return
            self._wake.clear()
            try:
                self._rollup.catch_up()
            except Exception as exc:  # the next request catches up itself and reports it
                self.failure = exc
            time.sleep(self._interval)


class QueryApi:
    def __init__(
        self,
        ledger: Ledger,
        collector: Collector | None = None,
        *,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.store = ledger.store
        self.now_ns = now_ns
        self.rollup = Rollup(ledger.store, ledger.data_dir / ROLLUP_DB)
        self.keeper: RollupKeeper | None = None
        if collector is not None:
            self.keeper = RollupKeeper(self.rollup)
            collector.observe_commits(self.keeper.poke)
            self.keeper.poke()

    async def events(self, request: Request) -> Response:
        try:
            params = single_params(request.query_params.multi_items())
            query, cursor = parse_params(params, self.now_ns())
            page = await run_in_threadpool(run, self.store, query, cursor)
        except QueryError as exc:
            return _error(400, str(exc))
        set_read_count(request.scope, len(page.rows))
        items = b",".join(b'{"index":%d,"event":%s}' % (index, data) for index, data in page.rows)
        cursor_json = b"null" if page.next is None else b'"%s"' % page.next.encode()
        body = b'{"events":[%s],"count":%d,"next":%s}' % (items, len(page.rows), cursor_json)
        return Response(body, media_type="application/json")

    async def trace(self, request: Request) -> Response:
        given = request.path_params["trace_id"]
        # A well-formed id or prefix is looked up in the store: even its 400 (a prefix more
        # than one trace id begins with, which names them) and its 404 tell what is stored,
        # so they are reads and are audited (api_auth records a route that set a count).
        looked_up = TRACE_OR_PREFIX.fullmatch(given.strip().lower()) is not None
        try:
            body = await run_in_threadpool(trace.trace_json, self.store, given)
        except trace.TraceIdError as exc:
            if looked_up:
                set_read_count(request.scope, 0)
            return _error(400, str(exc))
        if body is None:
            set_read_count(request.scope, 0)
            return _error(404, trace.not_found(given))
        set_read_count(request.scope, body["events"])
        return JSONResponse(body)

    async def graph(self, request: Request) -> Response:
        now = self.now_ns()
        try:
            since, until = parse_window(single_params(request.query_params.multi_items()), now)
        except QueryError as exc:
            return _error(400, str(exc))
        result = await run_in_threadpool(
            lambda: graph.compute(self.rollup, since_ns=since, until_ns=until, now_ns=now)
        )
        set_read_count(request.scope, result.requests)
        body: dict[str, Any] = graph.to_json(result)
        return JSONResponse(body)


def routes(api: QueryApi) -> list[Route]:
    return [
        Route("/v1/events", api.events, methods=["GET"]),
        Route("/v1/traces/{trace_id}", api.trace, methods=["GET"]),
        Route("/v1/graph", api.graph, methods=["GET"]),
    ]
