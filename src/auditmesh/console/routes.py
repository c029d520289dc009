"""Routes of the web console: its pages, and the JSON the HTTP API does not already serve.

GET  /                          the console (one page; the views are ES modules in static/)
GET  /console/static/…          HTML, CSS and JavaScript written here, nothing third-party
GET  /console/api/overview      ledger size, latest checkpoint and its age, origin, verifier key
POST /console/api/layout        {nodes, edges} → positions (console/layout.py, networkx)
GET  /console/api/policies      candidate policy files kept in DIR/policies/
POST /v1/policy/replay          a candidate policy set over recorded calls (policy/replay.py)

Routes only: the logic lives in layout.py, candidate.py, recorded.py and the packages below.
The page and its static files are public (they hold no data); every JSON endpoint asks for
the server's API token, like the API the pages read events through.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Callable
from importlib import resources
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from auditmesh.cli.main import UserError
from auditmesh.cli.timespec import parse_time_ns
from auditmesh.collector import Collector
from auditmesh.console.candidate import PolicyFile, load_candidate, stored_sets
from auditmesh.console.layout import LayoutError, layout
from auditmesh.console.recorded import RecordedError, recorded
from auditmesh.datadir import Ledger
from auditmesh.policy.documents import PolicyLoadError
from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.replay import WorkloadsError, parse_workloads, replay

MAX_JSON_BYTES = 8 * 1024 * 1024
TOKEN_FILE = ("keys", "api.token")
# The page loads only its own files and talks only to this server.
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _LayoutIn(msgspec.Struct, forbid_unknown_fields=True):
    nodes: list[str]
    edges: list[tuple[str, str]]


class _PolicyFileIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    text: str


class _ReplayIn(msgspec.Struct, forbid_unknown_fields=True):
    policies: list[_PolicyFileIn]
    since: str = "24h"
    until: str | None = None
    workloads: dict[str, dict[str, str]] | None = None
    enforce_dry_run: bool = False
    examples: int = 3


class Console:
    def __init__(
        self, ledger: Ledger, collector: Collector, *, clock: Callable[[], int] = time.time_ns
    ) -> None:
        self.ledger = ledger
        self.collector = collector
        self.clock = clock
        self.page = (resources.files("auditmesh.console") / "static" / "index.html").read_bytes()

    # -- access ----------------------------------------------------------------------

    def _refused(self, request: Request) -> Response | None:
        """401 unless the request carries the server's API token (`DIR/keys/api.token`)."""
        path = self.ledger.data_dir.joinpath(*TOKEN_FILE)
        if not path.exists():
            return None
        expected = path.read_text().strip()
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(given.strip(), expected):
            return None
        return _error(401, "give the server's API token: Authorization: Bearer TOKEN")

    async def _json(self, request: Request, kind: type[Any]) -> Any:
        body = await request.body()
        if len(body) > MAX_JSON_BYTES:
            return _error(413, f"body larger than {MAX_JSON_BYTES} bytes")
        try:
            return msgspec.json.decode(body, type=kind)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return _error(400, f"bad request body: {exc}")

    # -- pages -----------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return Response(self.page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    # -- console JSON ----------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        latest = await run_in_threadpool(self.ledger.store.latest_checkpoint)
        now = self.clock()
        checkpoint = None
        if latest is not None:
            checkpoint = {
                "size": latest.size,
                "signed_ns": str(latest.signed_ns),
                "age_s": max(0.0, round((now - latest.signed_ns) / 1e9, 1)),
            }
        body = {
            "origin": self.ledger.log.origin,
            "vkey": self.ledger.vkey,
            "entries": self.collector.log.size,
            "checkpoint": checkpoint,
            "now_ns": str(now),
        }
        return JSONResponse(body)

    async def post_layout(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        given = await self._json(request, _LayoutIn)
        if isinstance(given, Response):
            return given
        try:
            positions = await run_in_threadpool(layout, given.nodes, given.edges)
        except LayoutError as exc:
            return _error(400, str(exc))
        return JSONResponse({"positions": positions})

    async def policy_files(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        files = await run_in_threadpool(stored_sets, self.ledger.data_dir)
        return JSONResponse({"files": [f.to_json() for f in files]})

    async def policy_replay(self, request: Request) -> Response:
        if (refused := self._refused(request)) is not None:
            return refused
        given = await self._json(request, _ReplayIn)
        if isinstance(given, Response):
            return given
        now = self.clock()
        try:
            since = parse_time_ns(given.since, now)
            until = parse_time_ns(given.until, now) if given.until else now
            workloads = parse_workloads(given.workloads)
        except (UserError, WorkloadsError) as exc:
            return _error(400, str(exc))
        if until <= since:
            return _error(400, f"until ({given.until}) is not after since ({given.since})")
        if not 1 <= given.examples <= 50:
            return _error(400, "examples must be 1 to 50")
        files = [PolicyFile(f.name, f.text) for f in given.policies]

        def run() -> dict[str, object]:
            engine = PolicyEngine(load_candidate(files))
            events = recorded(self.ledger.store, since, until)
            report = replay(
                engine,
                events,
                workloads,
                enforce_dry_run=given.enforce_dry_run,
                examples=given.examples,
            )
            result = report.to_json()
            result["window"] = {"since_ns": str(since), "until_ns": str(until)}
            result["policies"] = [f"{p.action} {p.key}" for p in engine.policies]
            return result

        try:
            result = await run_in_threadpool(run)
        except (PolicyLoadError, RecordedError) as exc:
            return _error(400, str(exc))
        return JSONResponse(result)


def routes(ledger: Ledger, collector: Collector) -> list[BaseRoute]:
    """The console's routes, for `server/app.py`'s `create_app`."""
    console = Console(ledger, collector)
    static = StaticFiles(packages=[("auditmesh.console", "static")])
    return [
        Route("/", console.index, methods=["GET"]),
        Mount("/console/static", app=static, name="console-static"),
        Route("/console/api/overview", console.overview, methods=["GET"]),
        Route("/console/api/layout", console.post_layout, methods=["POST"]),
        Route("/console/api/policies", console.policy_files, methods=["GET"]),
        Route("/v1/policy/replay", console.policy_replay, methods=["POST"]),
    ]
