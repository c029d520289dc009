"""Join tokens: one-time, expiring, stored only as digests, safe under concurrent redemption."""

from __future__ import annotations

import hashlib
import stat
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from auditmesh.identity.spiffe import SpiffeId, parse
from auditmesh.identity.tokens import (
    DEFAULT_TOKEN_TTL,
    RETAIN_AFTER_EXPIRY,
    JoinTokens,
    TokenError,
    TokenProblem,
    TokenStoreError,
    parse_ttl,
)

from .conftest import NOW

WORKLOAD = parse("spiffe://example.org/ns/payments/sa/api")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("30s", timedelta(seconds=30)),
        ("10m", timedelta(minutes=10)),
        ("1h", timedelta(hours=1)),
        ("7d", timedelta(days=7)),
        ("1h30m", timedelta(minutes=90)),
        (" 24h ", timedelta(hours=24)),
    ],
)
def test_parse_ttl(text: str, expected: timedelta) -> None:
    assert parse_ttl(text) == expected


@pytest.mark.parametrize("text", ["", "10", "m", "10x", "1.5h", "-1m", "10 m", "0s", "1h-"])
def test_parse_ttl_rejects(text: str) -> None:
    with pytest.raises(ValueError, match="invalid duration"):
        parse_ttl(text)


def test_default_ttl_is_ten_minutes() -> None:
    assert DEFAULT_TOKEN_TTL == timedelta(minutes=10)


def test_token_is_high_entropy_and_stored_only_as_a_digest(data_dir: Path) -> None:
    store = JoinTokens(data_dir)
    token = store.mint(WORKLOAD, now=NOW)
    assert len(token) == 43  # 32 random bytes, URL-safe base64
    assert store.mint(WORKLOAD, now=NOW) != token
    content = store.path.read_text()
    assert token not in content
    assert hashlib.sha256(token.encode()).hexdigest() in content
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert [r.spiffe_id for r in store.records()] == [WORKLOAD, WORKLOAD]


def test_no_token_for_an_id_reserved_for_auditmesh_itself(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="reserved for auditmesh's own components"):
        JoinTokens(data_dir).mint(SpiffeId.audit_server("cluster.local"), now=NOW)


def test_redeem_once_then_already_used(data_dir: Path) -> None:
    token = JoinTokens(data_dir).mint(WORKLOAD, now=NOW)
    # A second instance reads the same file: redemption is durable, not in-memory.
    assert JoinTokens(data_dir).redeem(token, NOW + timedelta(minutes=1)) == WORKLOAD
    with pytest.raises(TokenError, match="already used") as info:
        JoinTokens(data_dir).redeem(token, NOW + timedelta(minutes=2))
    assert info.value.problem is TokenProblem.USED
    assert str(WORKLOAD) in str(info.value)


def test_expired_token(data_dir: Path) -> None:
    store = JoinTokens(data_dir)
    token = store.mint(WORKLOAD, now=NOW, ttl=timedelta(minutes=10))
    with pytest.raises(TokenError, match="expired at") as info:
        store.redeem(token, NOW + timedelta(minutes=10))
    assert info.value.problem is TokenProblem.EXPIRED
    # Refusal consumed nothing: the record is still unused.
    assert store.records()[0].used_at is None


def test_token_valid_until_just_before_expiry(data_dir: Path) -> None:
    store = JoinTokens(data_dir)
    token = store.mint(WORKLOAD, now=NOW, ttl=timedelta(seconds=30))
    assert store.redeem(token, NOW + timedelta(seconds=29)) == WORKLOAD


def test_unknown_token(data_dir: Path) -> None:
    store = JoinTokens(data_dir)
    store.mint(WORKLOAD, now=NOW)
    with pytest.raises(TokenError, match="unknown join token") as info:
        store.redeem("not-a-token", NOW)
    assert info.value.problem is TokenProblem.UNKNOWN


def test_unknown_when_no_token_was_ever_minted(data_dir: Path) -> None:
    with pytest.raises(TokenError) as info:
        JoinTokens(data_dir).redeem("anything", NOW)
    assert info.value.problem is TokenProblem.UNKNOWN


def test_token_source_is_a_parameter(data_dir: Path) -> None:
    store = JoinTokens(data_dir)
    assert store.mint(WORKLOAD, now=NOW, make_token=lambda: "fixed") == "fixed"
    with pytest.raises(ValueError, match="repeated a token"):
        store.mint(WORKLOAD, now=NOW, make_token=lambda: "fixed")
    assert store.redeem("fixed", NOW) == WORKLOAD


def test_mint_refuses_ids_without_a_workload_path(data_dir: Path) -> None:
    with pytest.raises(ValueError, match="no path"):
        JoinTokens(data_dir).mint(SpiffeId("example.org"), now=NOW)
    with pytest.raises(ValueError, match="longer than zero"):
        JoinTokens(data_dir).mint(WORKLOAD, now=NOW, ttl=timedelta(0))


def test_old_records_are_pruned(data_dir: Path) -> None:
    store = JoinTokens(data_dir)
    old = store.mint(WORKLOAD, now=NOW)
    later = NOW + DEFAULT_TOKEN_TTL + RETAIN_AFTER_EXPIRY + timedelta(seconds=1)
    store.mint(WORKLOAD, now=later)
    assert len(store.records()) == 1
    with pytest.raises(TokenError) as info:
        store.redeem(old, later)
    assert info.value.problem is TokenProblem.UNKNOWN


def test_damaged_store_is_reported(data_dir: Path) -> None:
    store = JoinTokens(data_dir)
    store.mint(WORKLOAD, now=NOW)
    store.path.write_text("{not json")
    with pytest.raises(TokenStoreError, match="tokens.json"):
        store.redeem("x", NOW)
    store.path.write_text('{"version": 1, "tokens": [{"sha256": "ab"}]}')
    with pytest.raises(TokenStoreError, match="damaged"):
        store.records()


def test_concurrent_redemption_succeeds_exactly_once(data_dir: Path) -> None:
    token = JoinTokens(data_dir).mint(WORKLOAD, now=NOW)
    results: list[str] = []
    barrier = threading.Barrier(8)

    def attempt() -> None:
        barrier.wait()
        try:
            JoinTokens(data_dir).redeem(token, NOW)
            results.append("ok")
        except TokenError as exc:
            results.append(exc.problem.value)

    threads = [threading.Thread(target=attempt) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=10)
    assert sorted(results) == ["ok"] + ["used"] * 7
