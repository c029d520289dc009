"""One-time join tokens: how a new sidecar proves it may receive its first SVID.

Its place in the house: ``auditmesh ca token`` mints a token bound to one SPIFFE ID; the sidecar
presents it with a CSR to the server, which calls :meth:`JoinTokens.redeem` and then
``MeshCA.issue_svid`` for the ID the token names. Later renewals use the current SVID over mTLS.

Only SHA-256 digests of tokens are stored (``ca/tokens.json``, mode 0600, replaced atomically
under an exclusive ``flock``), so a copy of the data directory does not leak usable tokens.
The clock and the token source are parameters.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import secrets
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path

from auditmesh.durations import EXAMPLES, duration_s
from auditmesh.fsutil import write_atomic
from auditmesh.identity.spiffe import SpiffeId, SpiffeIdError, parse

DEFAULT_TOKEN_TTL = timedelta(minutes=10)
MAX_TOKEN_TTL = timedelta(days=30)
MAX_TTL_S = 100 * 366 * 86400  # any TTL: far past any certificate, short of datetime's end
RETAIN_AFTER_EXPIRY = timedelta(days=7)  # used/expired records kept to explain a refusal
STORE_VERSION = 1


def parse_ttl(text: str) -> timedelta:
    """A duration (`durations.duration_s`: ``30s``, ``10m``, ``1h30m``, ``7d``) over zero."""
    seconds = duration_s(text)
    if seconds is None:
        raise ValueError(
            f"invalid duration {text!r}: use whole numbers with units w, d, h, m or s, "
            f"e.g. {EXAMPLES}"
        )
    if seconds <= 0:
        raise ValueError(f"invalid duration {text!r}: it must be longer than zero")
    if seconds > MAX_TTL_S:  # datetime arithmetic (now + ttl) ends in the year 9999
        raise ValueError(f"invalid duration {text!r}: longer than 100 years")
    return timedelta(seconds=seconds)


def new_token() -> str:
    """A fresh high-entropy token: 32 random bytes, URL-safe base64 (43 characters)."""
    return secrets.token_urlsafe(32)


def token_sha256(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


class TokenProblem(StrEnum):
    UNKNOWN = "unknown"
    EXPIRED = "expired"
    USED = "used"


class TokenError(Exception):
    """A join token cannot be redeemed; ``problem`` says whether unknown, expired or used."""

    def __init__(self, problem: TokenProblem, message: str) -> None:
        self.problem = problem
        super().__init__(message)


class TokenStoreError(Exception):
    """The token file cannot be read; the message names it."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    sha256: str
    spiffe_id: SpiffeId
    created_at: datetime
    expires_at: datetime
    used_at: datetime | None = None

    def to_json(self) -> dict[str, str | None]:
        return {
            "sha256": self.sha256,
            "spiffe_id": str(self.spiffe_id),
            "created_at": self.created_at.isoformat(),
            "expires_at": self.expires_at.isoformat(),
            "used_at": None if self.used_at is None else self.used_at.isoformat(),
        }

    @classmethod
    def from_json(cls, raw: dict[str, str | None]) -> TokenRecord:
        used = raw["used_at"]
        return cls(
            sha256=str(raw["sha256"]),
            spiffe_id=parse(str(raw["spiffe_id"])),
            created_at=datetime.fromisoformat(str(raw["created_at"])),
            expires_at=datetime.fromisoformat(str(raw["expires_at"])),
            used_at=None if used is None else datetime.fromisoformat(used),
        )


def check_redeemable(record: TokenRecord | None, now: datetime) -> TokenRecord:
    """``record`` if its token may be redeemed at ``now``, else :class:`TokenError` (pure)."""
    if record is None:
        raise TokenError(
            TokenProblem.UNKNOWN,
            "unknown join token: it was mistyped, minted by another CA, or pruned long after "
            "expiry; mint a new one with `auditmesh ca token`",
        )
    if record.used_at is not None:
        raise TokenError(
            TokenProblem.USED,
            f"the join token for {record.spiffe_id} was already used at "
            f"{record.used_at.isoformat()}; tokens are one-time, mint a new one",
        )
    if now >= record.expires_at:
        raise TokenError(
            TokenProblem.EXPIRED,
            f"the join token for {record.spiffe_id} expired at "
            f"{record.expires_at.isoformat()}; mint a new one with a longer --ttl if needed",
        )
    return record


class JoinTokens:
    """The join-token store of one mesh CA, at ``data_dir/ca/tokens.json``."""

    def __init__(self, data_dir: Path) -> None:
        self.directory = Path(data_dir) / "ca"
        self.path = self.directory / "tokens.json"
        self._lock_path = self.directory / "tokens.lock"

    def mint(
        self,
        spiffe_id: SpiffeId,
        *,
        now: datetime,
        ttl: timedelta = DEFAULT_TOKEN_TTL,
        make_token: Callable[[], str] = new_token,
    ) -> str:
        """Mint a one-time token for ``spiffe_id``, valid for ``ttl``; return the token."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")
        if not spiffe_id.path:
            raise ValueError(f"{spiffe_id} has no path; a join token must name a workload")
        if spiffe_id.reserved:
            raise ValueError(spiffe_id.reserved_refusal)
        if ttl <= timedelta(0):
            raise ValueError("the token TTL must be longer than zero")
        if ttl > MAX_TOKEN_TTL:
            raise ValueError(
                f"a join token lives at most {MAX_TOKEN_TTL.days} days ({ttl} asked): it is for "
                "enrolling a workload soon, and anyone who copies it can enroll as that workload"
            )
        token = make_token()
        record = TokenRecord(token_sha256(token), spiffe_id, now, now + ttl)
        with self._locked():
            records = self._load()
            if record.sha256 in records:
                raise ValueError("the token source repeated a token; refusing to reuse it")
            records[record.sha256] = record
            self._save(records, now)
        return token

    def withdraw(self, token: str, now: datetime) -> bool:
        """Remove ``token``'s record, so that it can never be redeemed: for a token minted but
        not handed out (``auditmesh ca token`` when its audit event cannot be recorded).
        False if the store holds no such token (never minted, or pruned)."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")
        digest = token_sha256(token)
        with self._locked():
            records = self._load()
            if records.pop(digest, None) is None:
                return False
            self._save(records, now)
        return True

    def redeem(self, token: str, now: datetime) -> SpiffeId:
        """Consume ``token`` exactly once and return the ID it was minted for."""
        if now.tzinfo is None:
            raise ValueError("now must be timezone-aware (UTC)")
        digest = token_sha256(token)
        with self._locked():
            records = self._load()
            record = check_redeemable(records.get(digest), now)
            records[digest] = replace(record, used_at=now)
            self._save(records, now)
        return record.spiffe_id

    def records(self) -> list[TokenRecord]:
        """All stored records (digests only), oldest first."""
        with self._locked():
            return sorted(self._load().values(), key=lambda r: r.created_at)

    @contextmanager
    def _locked(self) -> Iterator[None]:
        self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def _load(self) -> dict[str, TokenRecord]:
        try:
            raw = json.loads(self.path.read_bytes())
        except FileNotFoundError:
            return {}
        except ValueError as exc:
            raise TokenStoreError(f"{self.path} is not valid JSON: {exc}") from exc
        try:
            if raw["version"] != STORE_VERSION:
                raise TokenStoreError(f"{self.path} has unknown version {raw['version']!r}")
            records = [TokenRecord.from_json(item) for item in raw["tokens"]]
        except (KeyError, TypeError, ValueError, SpiffeIdError) as exc:
            raise TokenStoreError(f"{self.path} is damaged: {exc!r}") from exc
        return {r.sha256: r for r in records}

    def _save(self, records: dict[str, TokenRecord], now: datetime) -> None:
        keep = [r for r in records.values() if r.expires_at + RETAIN_AFTER_EXPIRY > now]
        body = {"version": STORE_VERSION, "tokens": [r.to_json() for r in keep]}
        data = (json.dumps(body, indent=2) + "\n").encode()
        write_atomic(self.path, data, mode=0o600)
