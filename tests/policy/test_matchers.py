"""Properties of the Istio value matchers (reference "Rule": exact, prefix, suffix, presence)."""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from auditmesh.policy.matchers import (
    ip_key,
    ip_matcher,
    ip_ranges,
    parse_ip_block,
    parse_port,
    path_matcher,
    path_template_error,
    string_matcher,
)

text = st.text(alphabet="ab/*.-", max_size=8)
plain = st.text(alphabet="ab/.-", min_size=1, max_size=6)  # no '*': a literal pattern body
ascii_text = st.text(alphabet="abcXYZ.-", max_size=10)
pchar_segment = st.text(alphabet="abc09-._~%!$&'()+,;:@=", min_size=1, max_size=6)


@given(plain, text)
def test_prefix_matches_iff_startswith(prefix: str, value: str) -> None:
    assert string_matcher([prefix + "*"])(value) == value.startswith(prefix)


@given(plain, text)
def test_suffix_matches_iff_endswith(suffix: str, value: str) -> None:
    assert string_matcher(["*" + suffix])(value) == value.endswith(suffix)


@given(plain, text)
def test_exact_matches_iff_equal(pattern: str, value: str) -> None:
    assert string_matcher([pattern])(value) == (value == pattern)


@given(text)
def test_presence_matches_iff_non_empty(value: str) -> None:
    assert string_matcher(["*"])(value) == (value != "")


@given(st.lists(text.filter(bool), min_size=1, max_size=4), text)
def test_values_are_ored(patterns: list[str], value: str) -> None:
    assert string_matcher(patterns)(value) == any(string_matcher([p])(value) for p in patterns)


@given(st.lists(text.filter(bool), max_size=4))
def test_absent_value_never_matches(patterns: list[str]) -> None:
    assert string_matcher(patterns)(None) is False
    assert path_matcher(patterns)(None) is False


def test_star_inside_a_pattern_is_literal() -> None:
    # Istio StringMatcherWithPrefix: only a leading or trailing '*' is a wildcard.
    match = string_matcher(["a*b"])
    assert match("a*b") and not match("axb")


@given(st.lists(ascii_text.filter(bool), min_size=1, max_size=3), ascii_text)
def test_host_matching_ignores_case(patterns: list[str], value: str) -> None:
    match = string_matcher(patterns, ignore_case=True)
    assert match(value) == match(value.swapcase()) == match(value.upper())
    assert match(value) == string_matcher([p.lower() for p in patterns])(value.lower())


@given(pchar_segment)
def test_template_one_segment(segment: str) -> None:
    match = path_matcher(["/api/{*}"])
    assert match("/api/" + segment)
    assert not match("/api/" + segment + "/x")
    assert not match("/api/")


@given(st.lists(pchar_segment, max_size=4), st.booleans())
def test_template_any_is_zero_or_more_segments(segments: list[str], trailing: bool) -> None:
    rest = "/".join(segments) + ("/" if trailing else "")
    assert path_matcher(["/api/{**}"])("/api/" + rest)
    assert not path_matcher(["/api/{**}"])("/other/" + rest)


@pytest.mark.parametrize(
    ("template", "path", "matches"),
    [
        # The examples of the Istio Operation.paths reference.
        ("/foo/{*}", "/foo/bar", True),
        ("/foo/{*}", "/foo/bar/baz", False),
        ("/foo/{**}/", "/foo/bar/", True),
        ("/foo/{**}/", "/foo//", True),
        ("/foo/{**}/", "/foo/bar", False),
        ("/foo/{*}/bar/{**}", "/foo/buzz/bar/", True),
        ("/foo/{*}/bar/{**}", "/foo/buzz/bar/baz", True),
        # Envoy's regex for {**} is [pchar/]*, anchored: the reference's claim that /foo/{**}/
        # matches /foo/bar/baz.txt does not hold in Envoy, and not here either.
        ("/foo/{**}/", "/foo/bar/baz.txt", False),
        # Characters outside RFC 3986 pchar never match an operator.
        ("/foo/{*}", "/foo/a b", False),
    ],
)
def test_template_examples(template: str, path: str, matches: bool) -> None:
    assert path_template_error(template) is None
    assert path_matcher([template])(path) is matches


@pytest.mark.parametrize(
    ("template", "error"),
    [
        ("/*/baz/{*}", "only allowed as a whole {*} or {**} segment"),
        ("/**/baz/{*}", "only allowed as a whole {*} or {**} segment"),
        ("/{**}/foo/{*}", "{**} must be the last operator"),
        ("/foo/{*}.txt", "only allowed as a whole {*} or {**} segment"),
        ("/foo/{name}/{*}", "only allowed as a whole {*} or {**} segment"),
        ("foo/{*}", "must start with '/'"),
        ("/a//{*}", "empty segment"),
        ("/a b/{*}", "outside RFC 3986 pchar"),
    ],
)
def test_invalid_templates(template: str, error: str) -> None:
    message = path_template_error(template)
    assert message is not None and error in message


@given(st.ip_addresses(v=4), st.integers(min_value=0, max_value=32), st.ip_addresses(v=4))
def test_cidr_contains_like_ipaddress(
    network: ipaddress.IPv4Address, bits: int, address: ipaddress.IPv4Address
) -> None:
    block = f"{network}/{bits}"
    expected = address in ipaddress.ip_network(block, strict=False)
    assert ip_matcher([block])(address) == expected
    ((low, high),) = ip_ranges([block])
    assert (low <= ip_key(address) <= high) == expected


@given(st.ip_addresses())
def test_single_ip_block_matches_only_itself(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> None:
    assert ip_matcher([str(address)])(address)
    other = (
        ipaddress.ip_address(int(address) ^ 1)
        if address.version == 4
        else ipaddress.IPv6Address(int(address) ^ 1)
    )
    assert not ip_matcher([str(address)])(other)


def test_ipv4_block_never_matches_ipv6() -> None:
    assert not ip_matcher(["0.0.0.0/0"])(ipaddress.ip_address("::1"))
    assert ip_key(None) == -1


@pytest.mark.parametrize("block", ["10.0.0", "10.0.0.0/33", "::1/129", "host", ""])
def test_bad_ip_blocks(block: str) -> None:
    with pytest.raises(ValueError, match="bad"):
        parse_ip_block(block)


@pytest.mark.parametrize("port", ["0", "80", "65535"])
def test_good_ports(port: str) -> None:
    assert parse_port(port) == int(port)


@pytest.mark.parametrize("port", ["65536", "-1", "8o", "", " 80", "８０"])
def test_bad_ports(port: str) -> None:
    with pytest.raises(ValueError, match="bad port"):
        parse_port(port)
