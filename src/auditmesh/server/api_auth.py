"""Who may read the audit trail through the API, and the audit record every read leaves.

Place in the house: server/, an ASGI middleware (`ApiAuth`) around the HTTP API and the mesh
listener; the decisions are pure functions (`authenticate`, `read_event`).

Reads of events need credentials; writes and the public tree do not:
    GET /v1/events, /v1/events/{id}, /v1/traces/{id}, /v1/graph, /v1/proof/inclusion
        need `Authorization: Bearer <API token>` (RFC 6750), or a client certificate on the
        mesh listener: an X.509-SVID of the mesh's trust domain, checked per connection by
        server/mesh.py. The token is made at the server's first start, kept in
        DATA/keys/api.token (mode 0600) and printed at start; `auditmesh` commands with `--url`
        take it as `--token` or AUDITMESH_TOKEN.
    /log/* (C2SP tlog-tiles) and GET /v1/proof/consistency stay public: a transparency log is
        public by design, so that anyone can verify it without being trusted. Note that the
        entry bundles under /log/tile/entries/ carry every event's canonical bytes: they
        protect integrity, not confidentiality. A deployment that must keep events secret
        serves /log/ only to its auditors (a reverse proxy's rule).
    /metrics stays public (Prometheus scrapes without credentials; it holds counts only).
    POST /v1/events keeps working without credentials for now: submission over plain HTTP is
        for producers on the same host (ingest adapters, `auditmesh ingest`), whose events are
        reported (`attested: false`); a batch with an attested event is refused (403, in
        server/app.py). Sidecars submit over the mesh listener, where each event's reporter
        must be the caller's SPIFFE ID, and only there may events be attested.

Every read that answers 200 (or another answer drawn from the stored events, which the route
marks with `set_read_count`: a trace prefix's 400 naming the trace ids it begins, its 404,
an event lookup's 404 and its 503 while no checkpoint covers the event)
appends one `audit_read` event through the collector before the
answer leaves: who (`read.who`: `token:<id>` — a hash prefix, never the token — or the peer's
SPIFFE ID), what (`http.path`: the route with its filters; `read.route`), and how many
(`read.count`: events returned; for the graph, calls summarised). If the record cannot be
made durable, the reader gets 503 instead of the data. Reading audit_read events is audited
like any read: one read, one record; the record itself is written by the server, not read,
so nothing loops. Refused attempts (401/403) are answered but not logged, so that anyone
without credentials cannot fill the ledger.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import os
import re
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from auditmesh.collector import Collector
from auditmesh.events import HTTP, TLS, AuditEvent, Peer, new_event_id
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import PeerIdentityError

TOKEN_FILE = Path("keys") / "api.token"
TOKEN_ENV = "AUDITMESH_TOKEN"
PEER_KEY = "auditmesh.peer"  # = server.mesh.PEER_KEY (importing mesh here would be circular)
READER_KEY = "auditmesh.reader"  # scope["state"][READER_KEY]: the `Reader`
COUNT_KEY = "auditmesh.read_count"  # scope["state"][COUNT_KEY]: set by the route
SERVER = "auditmesh-server"
_MAX_PATH = 4096

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
App = Callable[[Scope, Receive, Send], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class ReadRoute:
    name: str  # the route as documented, e.g. /v1/events/{id}
    pattern: re.Pattern[str]


READ_ROUTES: tuple[ReadRoute, ...] = tuple(
    ReadRoute(name, re.compile(pattern))
    for name, pattern in (
        ("/v1/events", r"^/v1/events/?$"),
        ("/v1/events/{id}", r"^/v1/events/[^/]+$"),
        ("/v1/traces/{id}", r"^/v1/traces/[^/]+$"),
        ("/v1/graph", r"^/v1/graph/?$"),
        ("/v1/proof/inclusion", r"^/v1/proof/inclusion/?$"),
    )
)


@dataclass(frozen=True, slots=True)
class Reader:
    who: str  # token:<id> or the SPIFFE ID
    via: str  # "token" or "mtls"
    identity: str | None = None


@dataclass(frozen=True, slots=True)
class Refusal:
    status: int
    message: str
    challenge: str


def new_token(random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    return "amt_" + base64.urlsafe_b64encode(random_bytes(32)).decode().rstrip("=")


def token_id(token: str) -> str:
    """What the audit record names: a hash prefix that identifies the token, not the token."""
    return "token:" + hashlib.sha256(token.encode()).hexdigest()[:12]


def load_or_create_token(data_dir: Path, random_bytes: Callable[[int], bytes] = os.urandom) -> str:
    """DATA/keys/api.token, created (mode 0600) on first use."""
    path = Path(data_dir) / TOKEN_FILE
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass  # another process made it first
        else:
            with os.fdopen(fd, "w") as f:
                f.write(new_token(random_bytes) + "\n")
                f.flush()
                os.fsync(f.fileno())
    token = path.read_text().strip()
    if not token:
        raise ValueError(f"{path} is empty; delete it and restart the server for a new token")
    return token


def read_route(
    method: str, path: str, routes: Sequence[ReadRoute] = READ_ROUTES
) -> ReadRoute | None:
    if method not in ("GET", "HEAD"):
        return None
    return next((r for r in routes if r.pattern.match(path)), None)


def authenticate(headers: Mapping[str, str], peer: object, token: str) -> Reader | Refusal:
    """A bearer token when one is sent (and then only it), else a verified mesh client cert."""
    authorization = headers.get("authorization")
    if authorization is not None:
        scheme, _, credentials = authorization.strip().partition(" ")
        if scheme.lower() != "bearer" or not credentials.strip():
            return Refusal(401, "send the API token as `Authorization: Bearer <token>`", _BEARER)
        if not hmac.compare_digest(credentials.strip().encode(), token.encode()):
            return Refusal(
                401,
                "the API token is not valid (see DATA/keys/api.token or the server's start)",
                _BEARER + ', error="invalid_token"',
            )
        return Reader(token_id(token), "token")
    if isinstance(peer, SpiffeId):
        return Reader(str(peer), "mtls", str(peer))
    if isinstance(peer, PeerIdentityError):
        return Refusal(403, f"client certificate refused: {peer}", _BEARER)
    return Refusal(
        401,
        "reading events needs the API token (`Authorization: Bearer <token>`; it is in "
        "DATA/keys/api.token and printed at server start) or a mesh client certificate",
        _BEARER,
    )


_BEARER = 'Bearer realm="auditmesh"'


def read_event(
    reader: Reader,
    route: ReadRoute,
    target: str,
    count: int,
    client: tuple[str, int] | None,
    *,
    now_ns: int,
    reporter: str = SERVER,
    method: str = "GET",
    status: int = 200,
) -> AuditEvent:
    """The `audit_read` record of one answered read (`status`: its answer's)."""
    if len(target) > _MAX_PATH:
        target = target[: _MAX_PATH - 1] + "…"
    return AuditEvent(
        id=new_event_id(lambda: now_ns),
        time_ns=now_ns,
        reporter=reporter,
        kind="audit_read",
        outcome="success",
        source=Peer(
            identity=reader.identity,
            ip=None if client is None else client[0][:45],
            port=None if client is None else client[1],
        ),
        destination=Peer(service=SERVER),
        tls=TLS(mutual=True) if reader.via == "mtls" else None,
        http=HTTP(method=method, path=target, status=status),
        labels={
            "read.who": reader.who,
            "read.via": reader.via,
            "read.route": route.name,
            "read.count": str(count),
        },
        attested=True,
    )


def _header_map(scope: Scope) -> dict[str, str]:
    headers: dict[str, str] = {}
    for key, value in scope.get("headers", ()):
        headers[key.decode("latin-1").lower()] = value.decode("latin-1")
    return headers


async def _answer(send: Send, status: int, body: dict[str, Any], extra: Sequence[Any] = ()) -> None:
    content = msgspec.json.encode(body)
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(content)).encode()),
                *extra,
            ],
        }
    )
    await send({"type": "http.response.body", "body": content})


class ApiAuth:
    """ASGI middleware: credentials for the read routes, and one audit record per read."""

    def __init__(
        self,
        app: App,
        *,
        token: str,
        collector: Collector,
        reporter: str = SERVER,
        routes: Sequence[ReadRoute] = READ_ROUTES,
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.app = app
        self.token = token
        self.collector = collector
        self.reporter = reporter
        self.routes = tuple(routes)
        self.now_ns = now_ns

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        route = None
        if scope["type"] == "http":
            route = read_route(scope["method"], scope["path"], self.routes)
        if route is None:
            await self.app(scope, receive, send)
            return
        peer = scope.get("extensions", {}).get("tls", {}).get(PEER_KEY)
        decided = authenticate(_header_map(scope), peer, self.token)
        if isinstance(decided, Refusal):
            challenge = (b"www-authenticate", decided.challenge.encode())
            await _answer(send, decided.status, {"error": decided.message}, [challenge])
            return
        state = scope.setdefault("state", {})
        state[READER_KEY] = decided
        refused = False

        async def audited_send(message: Message) -> None:
            nonlocal refused
            if refused:
                return
            # A 200, or another answer the route says came from the stored events (an
            # ambiguous trace prefix names trace ids; a missing one says which do not exist).
            if message["type"] == "http.response.start" and (
                message["status"] == 200 or COUNT_KEY in state
            ):
                query = scope.get("query_string", b"").decode("latin-1")
                target = scope["path"] + (f"?{query}" if query else "")
                client = scope.get("client")
                event = read_event(
                    decided,
                    route,
                    target,
                    int(state.get(COUNT_KEY, 1)),
                    None if client is None else (str(client[0]), int(client[1])),
                    now_ns=self.now_ns(),
                    reporter=self.reporter,
                    method=scope["method"],
                    status=int(message["status"]),
                )
                try:
                    await self.collector.submit_async([event])
                except Exception as exc:  # no unaudited read leaves the server
                    refused = True
                    await _answer(send, 503, {"error": f"the read could not be audited: {exc}"})
                    return
            await send(message)

        await self.app(scope, receive, audited_send)


def set_read_count(scope: Scope, count: int) -> None:
    """What a read route returned: events (or calls summarised), for the audit record. A
    route that calls it has read the stored events, and its answer is recorded whatever its
    status."""
    scope.setdefault("state", {})[COUNT_KEY] = count
