"""SPIFFE ID parsing: the spec's rules as a table, plus hypothesis round-trips and fuzzing.

Cases transcribed (as data) from go-spiffe's ``spiffeid`` tests and the SPIFFE ID spec §2.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditmesh.identity.spiffe import (
    MAX_ID_BYTES,
    SpiffeId,
    SpiffeIdError,
    parse,
    parse_trust_domain,
    short_name,
)

VALID: list[tuple[str, str, str]] = [
    ("spiffe://trustdomain", "trustdomain", ""),
    ("spiffe://trustdomain/path", "trustdomain", "/path"),
    ("spiffe://domain.test/path/element", "domain.test", "/path/element"),
    (
        "spiffe://k8s-west.example.com/ns/staging/sa/default",
        "k8s-west.example.com",
        "/ns/staging/sa/default",
    ),  # noqa: E501
    (
        "spiffe://example.com/9eebccd2-12bf-40a6-b262-65fe0487d453",
        "example.com",
        "/9eebccd2-12bf-40a6-b262-65fe0487d453",
    ),  # noqa: E501
    ("spiffe://trust_domain-1.x/Path_A-b.C", "trust_domain-1.x", "/Path_A-b.C"),
    ("spiffe://192.168.0.1/ip-is-a-valid-name", "192.168.0.1", "/ip-is-a-valid-name"),
    # Segments with dots are fine as long as they are not exactly "." or "..".
    ("spiffe://trustdomain/.path", "trustdomain", "/.path"),
    ("spiffe://trustdomain/..path", "trustdomain", "/..path"),
    ("spiffe://trustdomain/...", "trustdomain", "/..."),
]

INVALID: list[tuple[str, str]] = [
    ("", "empty"),
    ("s", "scheme is missing"),
    ("spiffe:/", "scheme is missing"),
    ("spiffe:path/element", "scheme is missing"),
    ("192.168.2.2:6688", "scheme is missing"),
    ("Spiffe://trustdomain/path", "lowercase"),
    ("SPIFFE://trustdomain/path", "lowercase"),
    ("http://domain.test/path/element", "must be 'spiffe', not 'http'"),
    ("spiffe://", "trust domain is missing"),
    ("spiffe:///", "trust domain is missing"),
    ("spiffe:///path/element", "trust domain is missing"),
    ("spiffe://domain.test:8080/path", "port"),
    ("spiffe://domain.test:/path", "port"),
    ("spiffe://user:password@test.org/path", "user info"),
    ("spiffe://user@test.org/path", "user info"),
    ("spiffe://domain.test/path?query=1", "query"),
    ("spiffe://domain.test?query=1", "query"),
    ("spiffe://domain.test/path#frag", "fragment"),
    ("spiffe://domain.test/path/element?#fragment-1", "fragment"),
    ("spiffe://Domain.test/path", "contains 'D'"),
    ("spiffe://trust$domain", "contains '$'"),
    ("spiffe://%F0%9F%A4%AF/path", "percent-encoded"),
    ("spiffe://%62%61%64/path", "percent-encoded"),
    ("spiffe://trustdomain/%62%61%64", "percent-encoded"),
    ("spiffe://trustdomain/", "must not end with '/'"),
    ("spiffe://trustdomain/path/", "must not end with '/'"),
    ("spiffe://trustdomain//", "must not end with '/'"),
    ("spiffe://trustdomain//path", "empty segment"),
    ("spiffe://trustdomain/a//b", "empty segment"),
    ("spiffe://trustdomain/.", "relative segment '.'"),
    ("spiffe://trustdomain/./path", "relative segment '.'"),
    ("spiffe://trustdomain/path/./other", "relative segment '.'"),
    ("spiffe://trustdomain/..", "relative segment '..'"),
    ("spiffe://trustdomain/../path", "relative segment '..'"),
    ("spiffe://trustdomain/path/../other", "relative segment '..'"),
    ("spiffe://trustdomain/pa:th", "contains ':'"),
    ("spiffe://trustdomain/pa@th", "contains '@'"),
    ("spiffe://trustdomain/elem[ent", "contains '['"),
    ("spiffe://trustdomain/p!a$t&h'", "contains '!'"),
    ("spiffe://trustdomain/path with space", "contains ' '"),
    ("spiffe://trustdomain/caf\u00e9", "contains 'é'"),
    ("spiffe://trustdomain/tab\there", "contains U+0009"),
    ("spiffe://" + "a" * 256, "at most 255"),
    ("spiffe://td/" + "a" * (MAX_ID_BYTES - len("spiffe://td/") + 1), "at most 2048"),
]


@pytest.mark.parametrize(("text", "td", "path"), VALID)
def test_valid_ids(text: str, td: str, path: str) -> None:
    parsed = parse(text)
    assert (parsed.trust_domain, parsed.path) == (td, path)
    assert str(parsed) == text
    assert SpiffeId.parse(text) == parsed == SpiffeId(td, path)


@pytest.mark.parametrize(("text", "reason"), INVALID)
def test_invalid_ids_say_why(text: str, reason: str) -> None:
    with pytest.raises(SpiffeIdError) as info:
        parse(text)
    assert isinstance(info.value, ValueError)
    assert reason in str(info.value)
    assert info.value.text == text


def test_longest_allowed_id_is_2048_bytes() -> None:
    text = "spiffe://td/" + "a" * (MAX_ID_BYTES - len("spiffe://td/"))
    assert len(text) == MAX_ID_BYTES
    assert str(parse(text)) == text


TD_CHARS = set(string.ascii_lowercase + string.digits + ".-_")
PATH_CHARS = set(string.ascii_letters + string.digits + ".-_")


@pytest.mark.parametrize("code", [c for c in range(256) if chr(c) != "/"])
def test_every_latin1_char_in_trust_domain_and_path(code: int) -> None:
    # As go-spiffe's table: every code point up to 255, which also rejects non-ASCII.
    char = chr(code)
    td_text = f"spiffe://trustdomain{char}/path"
    path_text = f"spiffe://trustdomain/path{char}"
    if char in TD_CHARS:
        assert parse(td_text).trust_domain == "trustdomain" + char
    else:
        with pytest.raises(SpiffeIdError):
            parse(td_text)
    if char in PATH_CHARS:
        assert parse(path_text).path == "/path" + char
    else:
        with pytest.raises(SpiffeIdError):
            parse(path_text)


def test_constructor_validates() -> None:
    with pytest.raises(SpiffeIdError, match="trust domain"):
        SpiffeId("Bad.Domain", "/x")
    with pytest.raises(SpiffeIdError, match="start with '/'"):
        SpiffeId("td", "x")
    with pytest.raises(SpiffeIdError, match="relative segment"):
        SpiffeId("td", "/a/../b")


def test_from_segments() -> None:
    assert str(SpiffeId.from_segments("td")) == "spiffe://td"
    assert str(SpiffeId.from_segments("td", "foo", "bar")) == "spiffe://td/foo/bar"
    for bad, reason in [("", "empty segment"), ("/", "contains '/'"), ("/foo", "contains '/'")]:
        with pytest.raises(SpiffeIdError, match=reason):
            SpiffeId.from_segments("td", bad)


def test_kubernetes_form() -> None:
    sid = SpiffeId.kubernetes("cluster.local", "payments", "api")
    assert str(sid) == "spiffe://cluster.local/ns/payments/sa/api"
    assert sid.is_kubernetes
    assert (sid.namespace, sid.service_account) == ("payments", "api")
    assert sid.istio_principal == "cluster.local/ns/payments/sa/api"
    assert sid.segments == ("ns", "payments", "sa", "api")
    other = parse("spiffe://cluster.local/payments/api")
    assert not other.is_kubernetes
    assert other.namespace is None and other.service_account is None
    assert other.istio_principal == "cluster.local/payments/api"
    with pytest.raises(SpiffeIdError, match="contains '/'"):
        SpiffeId.kubernetes("cluster.local", "a/b", "api")


def test_member_of_and_ordering() -> None:
    a, b = parse("spiffe://td/a"), parse("spiffe://td/b")
    assert a.member_of("td") and not a.member_of("other")
    assert sorted([b, a]) == [a, b]
    assert len({a, parse("spiffe://td/a")}) == 1


@pytest.mark.parametrize(
    ("text", "expected"),
    [("example.org", "example.org"), ("spiffe://example.org", "example.org")],
)
def test_parse_trust_domain(text: str, expected: str) -> None:
    assert parse_trust_domain(text) == expected


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("", "missing"),
        ("Example.org", "lowercase"),
        ("example.org:443", "port"),
        ("spiffe://example.org/x", "no path"),
        ("example.org/x", "no path"),
    ],
)
def test_parse_trust_domain_rejects(text: str, reason: str) -> None:
    with pytest.raises(SpiffeIdError, match=reason):
        parse_trust_domain(text)


trust_domains = st.text(alphabet=sorted(TD_CHARS), min_size=1, max_size=40)
segments = st.text(alphabet=sorted(PATH_CHARS), min_size=1, max_size=20).filter(
    lambda s: s not in (".", "..")
)


@given(trust_domains, st.lists(segments, max_size=8))
def test_roundtrip_of_generated_ids(td: str, segs: list[str]) -> None:
    sid = SpiffeId.from_segments(td, *segs)
    assert parse(str(sid)) == sid
    assert sid.segments == tuple(segs)


@given(st.text())
def test_arbitrary_text_raises_only_value_errors(text: str) -> None:
    try:
        sid = parse(text)
    except SpiffeIdError as exc:
        assert isinstance(exc, ValueError)
        assert str(exc).startswith("invalid SPIFFE ID")
    else:
        assert str(sid) == text


@given(st.text(alphabet=string.printable + "é\u0000\ud800", max_size=60))
def test_arbitrary_text_after_the_scheme(rest: str) -> None:
    try:
        sid = parse("spiffe://" + rest)
    except SpiffeIdError:
        pass
    else:
        assert str(sid) == "spiffe://" + rest


@pytest.mark.parametrize(
    ("text", "short"),
    [
        ("spiffe://cluster.local/ns/shop/sa/orders", "orders.shop"),
        ("spiffe://example.org/ns/a/sa/b", "b.a"),
        ("spiffe://cluster.local/auditmesh/server", "spiffe://cluster.local/auditmesh/server"),
        (
            "spiffe://cluster.local/ns/shop/sa/orders/x",
            "spiffe://cluster.local/ns/shop/sa/orders/x",
        ),
        ("spiffe://Bad/ns/a/sa/b", "spiffe://Bad/ns/a/sa/b"),
        ("orders", "orders"),
        ("10.0.0.1", "10.0.0.1"),
    ],
)
def test_short_name_of_a_workload(text: str, short: str) -> None:
    """The Kubernetes form as the service graph names its workload; anything else unchanged."""
    assert short_name(text) == short
