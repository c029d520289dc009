"""proxy/record.py: the audit event of a finished call, pure."""

from __future__ import annotations

import hashlib

from hypothesis import given
from hypothesis import strategies as st

from auditmesh.events import (
    MAX_METHOD,
    MAX_NAME,
    MAX_REQUEST_ID,
    MAX_TEXT,
    Peer,
    canonical_bytes,
    decode_event,
    new_event_id,
)
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.proxy.accept import PeerTLS
from auditmesh.proxy.record import BodyDigests, Exchange, peer_of, to_event

START = 1_764_300_000_000_000_000


def exchange(**fields: object) -> Exchange:
    x = Exchange(
        event_id=new_event_id(lambda: START),
        start_ns=START,
        reporter="spiffe://cluster.local/ns/shop/sa/orders",
        kind="http",
        direction="outbound",
        local=Peer(service="orders"),
        remote=Peer(service="payments"),
    )
    for name, value in fields.items():
        setattr(x, name, value)
    return x


def test_values_off_the_wire_that_are_too_long_are_clipped_and_named() -> None:
    x = exchange(
        method="M" * 40,
        path="/" + "p" * 6000,
        user_agent="u" * 10_000,
        request_id="r" * 300,
        flag="NR",
        detail="no route: " + "h" * 5000,
        status=404,
        remote=Peer(host="h" * 5000),
    )
    event = to_event(x, START + 1000)
    assert decode_event(canonical_bytes(event)) == event  # the server will take it
    assert event.http is not None and event.error is not None
    assert event.http.method == "M" * MAX_METHOD
    assert event.http.path == ("/" + "p" * 6000)[:MAX_TEXT]
    assert event.http.user_agent == "u" * MAX_TEXT
    assert event.http.request_id == "r" * MAX_REQUEST_ID
    assert len(event.error.message) == MAX_TEXT
    assert event.destination is not None and event.destination.host == "h" * MAX_NAME
    assert event.labels["auditmesh.clipped"] == (
        "destination.host,error.message,http.method,http.path,http.user_agent,http.request_id"
    )


def test_values_within_the_limits_are_kept_whole_and_unlabelled() -> None:
    event = to_event(exchange(method="GET", path="/p" * 2048, status=200), START)
    assert event.http is not None and event.http.path == "/p" * 2048
    assert "auditmesh.clipped" not in event.labels


@given(
    method=st.text(min_size=1, max_size=64),
    path=st.text(max_size=5000),
    agent=st.none() | st.text(max_size=5000),
    request_id=st.none() | st.text(max_size=400),
)
def test_every_wire_value_gives_a_valid_event(
    method: str, path: str, agent: str | None, request_id: str | None
) -> None:
    x = exchange(method=method, path=path, user_agent=agent, request_id=request_id, status=200)
    event = to_event(x, START)
    assert decode_event(canonical_bytes(event)) == event


def test_body_digests_cover_what_was_relayed_and_nothing_for_no_body() -> None:
    digests = BodyDigests()
    for chunk in (b"amount=", b"42"):
        digests.request.add(chunk)
    event = to_event(exchange(status=200, digests=digests, response_bytes=5), START)
    assert event.http is not None
    assert event.http.request_body_sha256 == hashlib.sha256(b"amount=42").hexdigest()
    assert event.http.response_body_sha256 is None  # bytes counted, none hashed: not a body


def test_a_callers_long_spiffe_segment_still_gives_a_valid_event() -> None:
    # Regression: the mesh CA mints such an ID, and every call of that workload went unaudited.
    caller = SpiffeId.parse(f"spiffe://cluster.local/ns/shop/sa/{'a' * 300}")
    tls = PeerTLS(caller, "TLSv1.3", "0" * 64, 1_800_000_000, 1_800_000_000 * 10**9, b"")
    x = exchange(direction="inbound", remote=peer_of(tls, ("10.0.0.9", 41000)), status=200)
    event = to_event(x, START)
    assert decode_event(canonical_bytes(event)) == event
    assert event.source is not None and event.source.identity == str(caller)
    assert event.source.service == "a" * 253
