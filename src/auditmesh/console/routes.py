"""Routes of the web console: its pages, and the JSON the HTTP API does not already serve.

GET  /                          the console (one page; the views are ES modules in static/)
GET  /console/static/…          HTML, CSS and JavaScript written here, nothing third-party
GET  /console/api/overview      ledger size, latest checkpoint and its age, origin, verifier key
POST /console/api/layout        {nodes, edges} → positions (console/layout.py, networkx)
GET  /console/api/policies      candidate policy files kept in DIR/policies/
GET  /console/api/policies/generated?since=&until=
                                a least-privilege set generated from the window's calls
POST /v1/policy/replay          a candidate policy set over recorded calls (policy/replay.py)
GET  /v1/findings?since=&until=  who misbehaves in the window (analysis/findings.py)
POST /console/api/bundle        {indices} → evidence bundle zip (evidence.py)

Routes only: the logic lives in layout.py, candidate.py, recorded.py and the packages below.
The page and its static files are public (they hold no data); every JSON endpoint asks for
the server's API token (server/api_auth.py's `authenticate`), like the API the pages read
events through. Replay, generated sets, findings and bundles read recorded events, so each answer
leaves an `audit_read` record (the route, the window, the events read), as the API's reads
do; the pages read events themselves only through the audited API routes.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import msgspec
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from auditmesh.analysis.findings import detect
from auditmesh.analysis.query import (
    QueryError,
    check_window,
    parse_time,
    parse_window,
    single_params,
)
from auditmesh.collector import Collector
from auditmesh.console.candidate import PolicyFile, generated_set, load_candidate, stored_sets
from auditmesh.console.layout import LayoutError, layout
from auditmesh.console.recorded import RecordedError, recorded
from auditmesh.datadir import Ledger
from auditmesh.evidence import EvidenceError, evidence_bundle
from auditmesh.httpbody import BodyTooLarge, read_limited
from auditmesh.identity.ca import mesh_trust_domain
from auditmesh.policy.documents import PolicyLoadError
from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.matchers import DEFAULT_TRUST_DOMAIN
from auditmesh.policy.replay import WorkloadsError, parse_workloads, replay
from auditmesh.server import api_auth

MAX_JSON_BYTES = 8 * 1024 * 1024
REPLAY_ROUTE = api_auth.ReadRoute("/v1/policy/replay", re.compile(r"^/v1/policy/replay/?$"))
FINDINGS_ROUTE = api_auth.ReadRoute("/v1/findings", re.compile(r"^/v1/findings/?$"))
GENERATE_ROUTE = api_auth.ReadRoute(
    "/console/api/policies/generated", re.compile(r"^/console/api/policies/generated/?$")
)
BUNDLE_ROUTE = api_auth.ReadRoute("/console/api/bundle", re.compile(r"^/console/api/bundle/?$"))
END_OF_TIME = 2**63 - 1
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


def _iso(ns: int) -> str:
    moment = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class _LayoutIn(msgspec.Struct, forbid_unknown_fields=True):
    nodes: list[str]
    edges: list[tuple[str, str]]


class _PolicyFileIn(msgspec.Struct, forbid_unknown_fields=True):
    name: str
    text: str


class _BundleIn(msgspec.Struct, forbid_unknown_fields=True):
    indices: list[int]


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
        self.token = api_auth.load_or_create_token(ledger.data_dir)
        self.page = (resources.files("auditmesh.console") / "static" / "index.html").read_bytes()

    # -- access ----------------------------------------------------------------------

    def _reader(self, request: Request) -> api_auth.Reader | Response:
        """The API's credentials check: the server's token as `Authorization: Bearer`."""
        decided = api_auth.authenticate(request.headers, None, self.token)
        if isinstance(decided, api_auth.Refusal):
            return JSONResponse(
                {"error": decided.message},
                status_code=decided.status,
                headers={"WWW-Authenticate": decided.challenge},
            )
        return decided

    async def _audit(
        self,
        request: Request,
        reader: api_auth.Reader,
        route: api_auth.ReadRoute,
        target: str,
        count: int,
    ) -> Response | None:
        """One `audit_read` record for an answered read, durable before the answer leaves;
        a 503 to send instead when it cannot be made durable (as server/api_auth.py)."""
        client = request.client
        event = api_auth.read_event(
            reader,
            route,
            target,
            count,
            None if client is None else (client.host, client.port),
            now_ns=self.clock(),
            method=request.method,
        )
        try:
            await self.collector.submit_async([event])
        except Exception as exc:  # no unaudited read leaves the server
            return _error(503, f"the read could not be audited: {exc}")
        return None

    async def _json(self, request: Request, kind: type[Any]) -> Any:
        try:  # read as far as the limit only: a 200 MB post is not held in memory first
            body = await read_limited(request, MAX_JSON_BYTES)
        except BodyTooLarge:
            return _error(413, f"body larger than {MAX_JSON_BYTES} bytes")
        except ClientDisconnect:  # cut short: nobody to answer, nothing to log
            return Response(status_code=400)
        try:
            return msgspec.json.decode(body, type=kind)
        except (msgspec.ValidationError, msgspec.DecodeError) as exc:
            return _error(400, f"bad request body: {exc}")

    # -- pages -----------------------------------------------------------------------

    async def index(self, request: Request) -> Response:
        return Response(self.page, media_type="text/html; charset=utf-8", headers=PAGE_HEADERS)

    # -- console JSON ----------------------------------------------------------------

    async def overview(self, request: Request) -> Response:
        if isinstance(reader := self._reader(request), Response):
            return reader
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
        if isinstance(reader := self._reader(request), Response):
            return reader
        given = await self._json(request, _LayoutIn)
        if isinstance(given, Response):
            return given
        try:
            positions = await run_in_threadpool(layout, given.nodes, given.edges)
        except LayoutError as exc:
            return _error(400, str(exc))
        return JSONResponse({"positions": positions})

    async def policy_files(self, request: Request) -> Response:
        if isinstance(reader := self._reader(request), Response):
            return reader
        try:
            files = await run_in_threadpool(stored_sets, self.ledger.data_dir)
        except PolicyLoadError as exc:  # an unreadable or foreign entry: said, not a 500
            return _error(409, f"the stored policy sets cannot be listed: {exc}")
        return JSONResponse({"files": [f.to_json() for f in files]})

    def _window(
        self, request: Request, default_since: str | None
    ) -> tuple[int, int | None] | Response:
        """`since` (default `default_since`, else the beginning) and `until` of the query."""
        try:
            params = single_params(request.query_params.multi_items())
            since, until = parse_window(params, self.clock(), default_since=default_since)
            since = 0 if since is None else since  # the beginning of the log
            check_window(since, until)
        except QueryError as exc:
            return _error(400, str(exc))
        return since, until

    def _target(self, request: Request) -> str:
        query = request.url.query
        return request.url.path + (f"?{query}" if query else "")

    async def generated_policies(self, request: Request) -> Response:
        if isinstance(reader := self._reader(request), Response):
            return reader
        if isinstance(window := self._window(request, "24h"), Response):
            return window
        since, until = window
        end = self.clock() if until is None else until
        describe = f"recorded calls {_iso(since)} .. {_iso(end)}"
        try:
            made = await run_in_threadpool(generated_set, self.ledger.store, since, end, describe)
        except RecordedError as exc:
            return _error(500, str(exc))
        target = self._target(request)
        if refused := await self._audit(request, reader, GENERATE_ROUTE, target, made.events):
            return refused
        if made.file is None:
            return _error(404, f"no inbound calls recorded in the window ({made.events} events)")
        return JSONResponse(
            {"file": made.file.to_json(), "calls": made.calls, "events": made.events}
        )

    async def policy_replay(self, request: Request) -> Response:
        if isinstance(reader := self._reader(request), Response):
            return reader
        given = await self._json(request, _ReplayIn)
        if isinstance(given, Response):
            return given
        now = self.clock()
        try:
            since = parse_time(given.since, now, "since")
            until = parse_time(given.until, now, "until") if given.until else now
            check_window(since, until)
            workloads = parse_workloads(given.workloads)
        except (QueryError, WorkloadsError) as exc:
            return _error(400, str(exc))
        if not 1 <= given.examples <= 50:
            return _error(400, "examples must be 1 to 50")
        files = [PolicyFile(f.name, f.text) for f in given.policies]

        def run() -> dict[str, object]:
            trust_domain = mesh_trust_domain(self.ledger.data_dir) or DEFAULT_TRUST_DOMAIN
            engine = PolicyEngine(load_candidate(files), trust_domain=trust_domain)
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
        totals = result["totals"]
        events = totals["events"] if isinstance(totals, dict) else 0
        target = f"{request.url.path}?since={since}&until={until}"
        if (
            refused := await self._audit(request, reader, REPLAY_ROUTE, target, events)
        ) is not None:
            return refused
        return JSONResponse(result)

    async def findings(self, request: Request) -> Response:
        if isinstance(reader := self._reader(request), Response):
            return reader
        if isinstance(window := self._window(request, None), Response):
            return window
        since, until = window
        end = END_OF_TIME if until is None else until

        def run() -> tuple[int, list[dict[str, object]]]:
            events = list(recorded(self.ledger.store, since, end))
            return len(events), [finding.to_json() for finding in detect(events)]

        try:
            read, found = await run_in_threadpool(run)
        except RecordedError as exc:
            return _error(500, str(exc))
        target = self._target(request)
        if (
            refused := await self._audit(request, reader, FINDINGS_ROUTE, target, read)
        ) is not None:
            return refused
        shown = {"since_ns": str(since), "until_ns": None if until is None else str(until)}
        return JSONResponse({"window": shown, "events": read, "findings": found})

    async def bundle(self, request: Request) -> Response:
        if isinstance(reader := self._reader(request), Response):
            return reader
        given = await self._json(request, _BundleIn)
        if isinstance(given, Response):
            return given
        try:
            data, size = await run_in_threadpool(evidence_bundle, self.ledger, given.indices)
        except EvidenceError as exc:
            return _error(400, str(exc))
        shown = ",".join(map(str, sorted(set(given.indices))[:50]))
        target = f"{request.url.path}?indices={shown}"
        count = len(set(given.indices))
        if (refused := await self._audit(request, reader, BUNDLE_ROUTE, target, count)) is not None:
            return refused
        name = f"evidence-{count}-at-{size}.zip"
        headers = {"Content-Disposition": f'attachment; filename="{name}"'}
        return Response(data, media_type="application/zip", headers=headers)


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
        Route("/console/api/policies/generated", console.generated_policies, methods=["GET"]),
        Route("/v1/policy/replay", console.policy_replay, methods=["POST"]),
        Route("/v1/findings", console.findings, methods=["GET"]),
        Route("/console/api/bundle", console.bundle, methods=["POST"]),
    ]
