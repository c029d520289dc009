"""The workload side of identity: join with a token, keep the SVID fresh, hand it out.

A sidecar's `IdentityAgent` generates its key locally (the key never leaves the
workload), exchanges a one-time join token and a CSR for its first SVID, keeps key and
certificate in its data directory (key mode 0600) so a restart needs no new token, and
renews over mTLS with its current SVID at half-life with jitter (Istio's rotation).
Subscribers are told of each new `Credentials`; open connections keep the old ones.
"""

from __future__ import annotations

import asyncio
import random
import ssl
import tempfile
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import httpx
from cryptography.hazmat.primitives.asymmetric import ec

from auditmesh.fsutil import write_atomic
from auditmesh.identity.server_tls import Clock, server_client, utcnow
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.svid import (
    PeerIdentityError,
    load_certificates,
    make_csr,
    renew_at,
    verify_peer_svid,
)
from auditmesh.identity.workload import Credentials, key_to_pem, new_private_key


class EnrollmentError(Exception):
    """The server refused or could not be reached; the message says what to do."""


class IdentityAgent:
    def __init__(
        self,
        data_dir: Path,
        server_url: str,
        bundle_pem: bytes,
        *,
        clock: Clock = utcnow,
        rng: random.Random | None = None,
    ) -> None:
        self._dir = Path(data_dir) / "identity"
        self._url = server_url.rstrip("/")
        self._bundle = bundle_pem
        self._clock = clock
        self._rng = rng or random.Random()
        self._subscribers: list[Callable[[Credentials], None]] = []
        self.credentials: Credentials | None = None

    def subscribe(self, callback: Callable[[Credentials], None]) -> None:
        self._subscribers.append(callback)

    # -- start-up --------------------------------------------------------------------

    async def start(self, join_token: str | None) -> Credentials:
        """Reuse a still-valid SVID from disk, else join with the token."""
        stored = self._load()
        if stored is not None and stored.not_after > self._clock():
            self._set(stored)
            if self._clock() >= self._renew_time(stored):
                await self.renew()
            assert self.credentials is not None
            return self.credentials
        if not join_token:
            raise EnrollmentError(
                "no valid SVID in the data directory and no join token: mint one with "
                "`auditmesh ca token --id spiffe://…` and put it in the sidecar config"
            )
        self._check_writable()  # before the one-time token is spent on an SVID not kept
        key = new_private_key()
        body = await self._post("/v1/identity/join", {"token": join_token, "csr": _csr(key)}, None)
        try:
            return self._accept(key, body)
        except OSError as exc:
            raise EnrollmentError(
                f"the server issued this sidecar's SVID, but it could not be saved in "
                f"{self._dir}: {exc.strerror or exc}. The join token is now used up: fix the "
                "directory, mint a new token with `auditmesh ca token --id "
                f"{body.get('spiffe_id', 'spiffe://…')}` and start again"
            ) from None

    async def renew(self) -> Credentials:
        current = self.credentials
        assert current is not None, "start() first"
        key = new_private_key()
        body = await self._post("/v1/identity/renew", {"csr": _csr(key)}, current)
        if body["spiffe_id"] != str(current.spiffe_id):
            raise EnrollmentError(f"server renewed {body['spiffe_id']}, not {current.spiffe_id}")
        try:
            return self._accept(key, body, current.spiffe_id)
        except OSError as exc:  # run_renewals retries; the current SVID is used meanwhile
            raise EnrollmentError(
                f"the renewed SVID could not be saved in {self._dir}: {exc.strerror or exc}"
            ) from None

    async def run_renewals(self) -> None:
        """Renew forever at half-life with jitter; retries with backoff on failure."""
        backoff = 1.0
        while True:
            current = self.credentials
            assert current is not None
            delay = (self._renew_time(current) - self._clock()).total_seconds()
            await asyncio.sleep(max(delay, 0.0))
            try:
                await self.renew()
                backoff = 1.0
            except EnrollmentError:
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 60.0)

    # -- internals -------------------------------------------------------------------

    def _check_writable(self) -> None:
        """The identity directory exists (made 0700) and takes a file: else nothing is sent."""
        try:
            self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
            with tempfile.TemporaryFile(dir=self._dir):
                pass
        except OSError as exc:
            reason = "not a directory" if isinstance(exc, FileExistsError) else exc.strerror
            raise EnrollmentError(
                f"cannot keep an identity in {self._dir}: {reason or exc}; the join "
                "token was not sent, so it can still be used once that is fixed"
            ) from None

    def _renew_time(self, credentials: Credentials) -> datetime:
        return renew_at(credentials.not_before, credentials.not_after, self._rng)

    def _accept(
        self,
        key: ec.EllipticCurvePrivateKey,
        body: dict[str, str],
        expected: SpiffeId | None = None,
    ) -> Credentials:
        """Keep the SVID the server answered with, once it is one for this workload: valid
        against the bundle, for the key this agent generated (SPIFFE-ID §3.2: the private key
        is retained by the entity the SVID is issued to) and, on renewal, for the identity
        renewed. Raises :class:`EnrollmentError` before anything is saved."""
        cert_pem = body["certificate"].encode()
        try:
            spiffe_id = verify_peer_svid(cert_pem, self._bundle, self._clock())
            certified = load_certificates(cert_pem)[0].public_key()
        except (PeerIdentityError, ValueError) as exc:
            raise EnrollmentError(
                f"the server answered with an SVID that is refused: {exc}"
            ) from None
        if certified != key.public_key():
            raise EnrollmentError(
                f"the server answered with an SVID for {spiffe_id} that certifies another key "
                "than the one this sidecar generated and sent in its CSR; it is not kept"
            )
        if expected is not None and spiffe_id != expected:
            raise EnrollmentError(
                f"the server renewed {expected} with an SVID for {spiffe_id}; it is not kept"
            )
        credentials = Credentials(spiffe_id, key_to_pem(key), cert_pem, self._bundle)
        self._save(credentials)
        self._set(credentials)
        return credentials

    def _set(self, credentials: Credentials) -> None:
        self.credentials = credentials
        for callback in self._subscribers:
            callback(credentials)

    async def _post(
        self, path: str, payload: dict[str, str], credentials: Credentials | None
    ) -> dict[str, str]:
        if credentials is not None:
            context = credentials.client_context()
        else:
            context = ssl.create_default_context(cadata=self._bundle.decode())
            context.check_hostname = False  # the server is named by its SPIFFE ID
        try:
            async with server_client(self._url, context, self._bundle, clock=self._clock) as client:
                response = await client.post(path, json=payload)
        except httpx.HTTPError as exc:
            raise EnrollmentError(f"cannot reach the server at {self._url}: {exc}") from exc
        if response.status_code != 200:
            raise EnrollmentError(f"{path}: {response.status_code} {response.text.strip()}")
        body: dict[str, str] = response.json()
        return body

    def _load(self) -> Credentials | None:
        key_path, cert_path = self._dir / "svid-key.pem", self._dir / "svid.pem"
        if not (key_path.exists() and cert_path.exists()):
            return None
        cert_pem = cert_path.read_bytes()
        try:
            spiffe_id = verify_peer_svid(cert_pem, self._bundle, self._clock())
        except PeerIdentityError:
            return None  # expired or from another CA: join again
        return Credentials(spiffe_id, key_path.read_bytes(), cert_pem, self._bundle)

    def _save(self, credentials: Credentials) -> None:
        self._dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        _write_private(self._dir / "svid-key.pem", credentials.key_pem)
        write_atomic(self._dir / "svid.pem", credentials.cert_pem)


def _csr(key: ec.EllipticCurvePrivateKey) -> str:
    return make_csr(key).decode()


def _write_private(path: Path, data: bytes) -> None:
    write_atomic(path, data, mode=0o600)
