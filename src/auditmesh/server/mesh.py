"""The server's mesh listener: mTLS endpoints for sidecars (routes only).

    POST /v1/identity/join     join token + CSR → X.509-SVID (no client certificate needed)
    POST /v1/identity/renew    CSR → a fresh SVID for the caller's own SPIFFE ID (mTLS)
    GET  /v1/identity/bundle   the mesh trust bundle (PEM)
    POST /v1/events            audit batch over mTLS; every event's `reporter` must be the
                               caller's SPIFFE ID, so no sidecar can speak for another;
                               header `x-auditmesh-spool-depth` (the sidecar's spool backlog,
                               proxy/emitter.py) sets the metrics' spool-depth gauge
    *    /v1/traces, /v1/logs  no OTLP here: an exporter pointed at this listener gets a 404
                               whose google.rpc.Status says OTLP/HTTP is on the API listener
                               (--listen), as any OTLP error answer is (`_OtlpElsewhere`)

The peer's SVID is checked when the connection is made by `PeerAwareProtocol`, which puts
the result in the ASGI scope's TLS extension, and again at a request that comes after the SVID
(or the CA that signed it) expired: X509-SVID §5.1 asks for RFC 5280 path validation, whose
§6.1.3 (a)(2) wants the validity period to include the current time, so a keep-alive
connection opened with a current SVID does not keep authenticating it (nor renewing it) once
it expired. Issuance and renewal are audited like any call.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import msgspec
from cryptography import x509
from google.rpc import code_pb2
from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from auditmesh.collector import Collector, CollectorUnavailable
from auditmesh.events import Peer
from auditmesh.httpbody import BodyTooLarge, read_limited
from auditmesh.identity.ca import DEFAULT_SVID_TTL, CAError, MeshCA, csr_public_key
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import (
    PeerIdentityError,
    load_certificates,
    valid_until,
    verify_peer_svid,
)
from auditmesh.identity.tokens import JoinTokens, TokenError
from auditmesh.ingest import otlp_http
from auditmesh.issuance import identity_event
from auditmesh.proxy.emitter import SPOOL_DEPTH_HEADER
from auditmesh.server.app import _error, admit_batch
from auditmesh.server.metrics import Metrics
from auditmesh.server.protocol import DeadlineProtocol

PEER_KEY = "auditmesh.peer"  # scope["extensions"]["tls"][PEER_KEY]: SpiffeId | PeerIdentityError


def peer_protocol(bundle: bytes) -> type[DeadlineProtocol]:
    """The listeners' protocol (server/protocol.py), plus the ASGI TLS extension with the
    verified peer. The trust bundle is parsed here, once for the listener's life (its
    bytes are fixed when the server starts): each connection verifies its peer against
    the parsed anchors instead of parsing the PEM again."""

    anchors = load_certificates(bundle)

    class PeerAwareProtocol(DeadlineProtocol):
        _peer: SpiffeId | PeerIdentityError | None = None
        _peer_der: bytes | None = None
        _peer_until: datetime | None = None  # when the verified peer's SVID or its CA expires

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            ssl_object = transport.get_extra_info("ssl_object")
            der = None if ssl_object is None else ssl_object.getpeercert(binary_form=True)
            if der:
                self._peer_der = der
                self._verify_peer(der)

        def _verify_peer(self, der: bytes) -> None:
            try:
                self._peer = verify_peer_svid(der, anchors, datetime.now(UTC))
            except PeerIdentityError as exc:
                self._peer = exc
                return
            self._peer_until = valid_until(x509.load_der_x509_certificate(der), anchors)

        def on_message_begin(self) -> None:
            super().on_message_begin()
            until, der = self._peer_until, self._peer_der
            if until is not None and der is not None and datetime.now(UTC) > until:
                # RFC 5280 §6.1.3 (a)(2): valid at the time of this request, not only at the
                # handshake; checked again in full, so the refusal says why (expired).
                self._peer_until = None
                self._verify_peer(der)
            extensions: dict[str, Any] = {"tls": {PEER_KEY: self._peer, "peer_der": self._peer_der}}
            self.scope["extensions"] = extensions

    return PeerAwareProtocol


class _JoinRequest(msgspec.Struct, forbid_unknown_fields=True):
    token: str
    csr: str


class _RenewRequest(msgspec.Struct, forbid_unknown_fields=True):
    csr: str


def _peer(request: Request) -> SpiffeId | Response:
    tls = request.scope.get("extensions", {}).get("tls", {})
    peer = tls.get(PEER_KEY)
    if peer is None:
        return _error(401, "this endpoint needs a client certificate (the sidecar's SVID)")
    if isinstance(peer, PeerIdentityError):
        return _error(403, f"client certificate refused: {peer}")
    assert isinstance(peer, SpiffeId)
    return peer


# A body that is not the JSON asked for; or cut short (ClientDisconnect), answered to nobody
_BAD_BODY = (BodyTooLarge, ClientDisconnect, msgspec.DecodeError, msgspec.ValidationError)


class MeshApi:
    def __init__(
        self,
        data_dir: Any,
        ca: MeshCA,
        collector: Collector,
        server_id: SpiffeId,
        *,
        svid_ttl: timedelta = DEFAULT_SVID_TTL,
        metrics: Metrics | None = None,
    ) -> None:
        self.ca = ca
        self.metrics = metrics
        self.svid_ttl = svid_ttl
        self.tokens = JoinTokens(data_dir)
        self.collector = collector
        self.server_id = server_id

    async def _audit(
        self,
        subject: str | None,
        action: str,
        *,
        failure: str | None = None,
        cert_pem: bytes | None = None,
        client: str | None = None,
    ) -> None:
        event = identity_event(
            reporter=str(self.server_id),
            action=action,
            subject=subject,
            destination=Peer(identity=str(self.server_id), service="auditmesh-server"),
            failure=failure,
            cert_pem=cert_pem,
            client=client,
        )
        await self.collector.submit_async([event])  # durable before the answer goes out

    async def join(self, request: Request) -> Response:
        try:
            return await self._join(request)
        except CollectorUnavailable as exc:  # a refusal that could not be recorded either
            return _error(503, f"the request could not be recorded ({exc}); try again")

    async def renew(self, request: Request) -> Response:
        try:
            return await self._renew(request)
        except CollectorUnavailable as exc:
            return _error(503, f"the request could not be recorded ({exc}); try again")

    async def _join(self, request: Request) -> Response:
        client = request.client.host if request.client else None
        try:
            body = msgspec.json.decode(await read_limited(request, 64 * 1024), type=_JoinRequest)
        except _BAD_BODY as exc:
            return _error(400, f'send JSON {{"token": ..., "csr": PEM}}: {exc}')
        try:
            csr_public_key(body.csr.encode())  # before the token is used up: a bad CSR keeps it
        except CAError as exc:
            await self._audit(None, "join_csr_refused", failure=str(exc), client=client)
            return _error(400, f"CSR refused (the join token is still unused): {exc}")
        now = datetime.now(UTC)
        try:
            spiffe_id = await run_in_threadpool(self.tokens.redeem, body.token, now)
        except TokenError as exc:
            await self._audit(None, "join_token_refused", failure=str(exc), client=client)
            return _error(403, f"join token refused: {exc}")
        try:
            cert = self.ca.issue_svid(body.csr.encode(), spiffe_id, self.svid_ttl, now=now)
        except (CAError, ValueError) as exc:
            await self._audit(str(spiffe_id), "join_csr_refused", failure=str(exc), client=client)
            return _error(400, f"CSR refused: {exc}")
        try:
            await self._audit(str(spiffe_id), "svid_issued", cert_pem=cert, client=client)
        except CollectorUnavailable as exc:  # no SVID goes out that the ledger does not hold
            return _error(
                503,
                f"the issuance could not be recorded ({exc}); the join token is used up: mint "
                "another with `auditmesh ca token` and join again",
            )
        return self._issued(spiffe_id, cert)

    async def _renew(self, request: Request) -> Response:
        client = request.client.host if request.client else None
        peer = _peer(request)
        if isinstance(peer, Response):
            refused = request.scope.get("extensions", {}).get("tls", {}).get(PEER_KEY)
            if isinstance(refused, PeerIdentityError):  # e.g. an SVID that expired: audited
                await self._audit(
                    None, "renew_certificate_refused", failure=str(refused), client=client
                )
            return peer
        try:
            body = msgspec.json.decode(await read_limited(request, 64 * 1024), type=_RenewRequest)
        except _BAD_BODY as exc:
            return _error(400, f'send JSON {{"csr": PEM}}: {exc}')
        try:
            cert = self.ca.issue_svid(body.csr.encode(), peer, self.svid_ttl, now=datetime.now(UTC))
        except (CAError, ValueError) as exc:
            await self._audit(str(peer), "renew_csr_refused", failure=str(exc), client=client)
            return _error(400, f"CSR refused: {exc}")
        await self._audit(str(peer), "svid_renewed", cert_pem=cert, client=client)
        return self._issued(peer, cert)

    def _issued(self, spiffe_id: SpiffeId, cert: bytes) -> Response:
        bundle = self.ca.trust_bundle().decode()
        return JSONResponse(
            {"spiffe_id": str(spiffe_id), "certificate": cert.decode(), "bundle": bundle}
        )

    async def bundle(self, request: Request) -> Response:
        return Response(self.ca.trust_bundle(), media_type="application/x-pem-file")

    async def events(self, request: Request) -> Response:
        peer = _peer(request)
        if isinstance(peer, Response):
            return peer
        depth = request.headers.get(SPOOL_DEPTH_HEADER, "")
        # A report about the sender, not part of the batch: a bad value is ignored.
        if self.metrics is not None and depth.isascii() and depth.isdigit() and len(depth) < 16:
            self.metrics.set_spool_depth(str(peer), int(depth))
        return await admit_batch(request, self.collector, reporter=str(peer))


class _OtlpElsewhere:
    """An OTLP/HTTP path on the mesh listener (any method): a 404 saying where OTLP is
    served, as a google.rpc.Status in the request's encoding (OTLP spec, "Failures": the
    body of every 4xx and 5xx answer is a Status; a 404 is not retried, and sending the
    same export here again would not help)."""

    def __init__(self, api_listen: str | None) -> None:
        here = f", here {api_listen}" if api_listen else ""
        self.message = (
            "this is the auditmesh server's mesh listener (mTLS for sidecars, --mesh-listen), "
            f"which takes no OTLP: OTLP/HTTP is served on the API listener (--listen{here}) "
            "at /v1/traces and /v1/logs, OTLP/gRPC on --otlp-grpc; point the exporter there"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        answer = otlp_http.status_answer(scope, 404, code_pb2.UNIMPLEMENTED, self.message)
        await answer(scope, receive, send)


def create_mesh_app(api: MeshApi, *, api_listen: str | None = None) -> Starlette:
    """The mesh listener's routes; `api_listen` (HOST:PORT of the API listener) is named in
    the answer to an OTLP exporter pointed here."""
    elsewhere = _OtlpElsewhere(api_listen)
    return Starlette(
        routes=[
            Route("/v1/identity/join", api.join, methods=["POST"]),
            Route("/v1/identity/renew", api.renew, methods=["POST"]),
            Route("/v1/identity/bundle", api.bundle, methods=["GET"]),
            Route("/v1/events", api.events, methods=["POST"]),
            *(Route(path, elsewhere) for path in otlp_http.PATHS),
        ]
    )
