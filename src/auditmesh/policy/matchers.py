"""Value matchers for Istio authorization policy fields — pure functions, no I/O.

Place in the house: the one definition of how a policy value matches a request value.
:mod:`auditmesh.policy.rules` validates with the parsers here; :mod:`auditmesh.policy.compiler`
builds its generated code from :class:`Patterns`, :func:`ip_ranges` and :func:`templates_regex`;
the ``*_matcher`` builders are the same semantics as plain closures (used for headers, and by
the property tests that hold the compiled engine to them). Each takes the values of one field
(an OR, as in Istio) and returns ``match(value) -> bool``; an absent attribute (``None``) never
matches, so the ``notX`` form of the same list, ``not match(value)``, does.

Semantics follow the Istio AuthorizationPolicy reference, section "Rule":

- exact ``"abc"``; prefix ``"abc*"`` (matches ``"abc"`` too); suffix ``"*abc"``; presence ``"*"``
  (matches any non-empty value). A ``*`` anywhere else is a literal character, as in Istio's
  ``StringMatcherWithPrefix``.
- ``hosts`` compare case-insensitively (section "Operation").
- ``paths`` containing ``{*}`` or ``{**}`` are Envoy URI templates (section "Operation", Envoy
  ``uri_template_match.proto``): ``{*}`` is one path segment of RFC 3986 pchars, ``{**}`` zero or
  more pchars or slashes and must be the last operator.
- ``namespaces`` match the peer's principal, not a namespace string (:func:`namespace_regex`).
- ``request.headers`` presence ``*`` matches an empty value too (:func:`header_matcher`).
- ``ipBlocks`` are single IPs or CIDRs; ``ports`` are decimal strings in [0, 65535].
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
StrMatch = Callable[[str | None], bool]
IPMatch = Callable[[IPAddress | None], bool]
PortMatch = Callable[[int | None], bool]

DEFAULT_TRUST_DOMAIN = "cluster.local"
MATCH_ONE = "{*}"
MATCH_ANY = "{**}"
# RFC 3986 appendix A pchar, exactly Envoy's kLiteral in uri_template_internal.cc.
_PCHAR = "a-zA-Z0-9\\-._~%!$&'()+,;:@="
_LITERAL = re.compile(f"[{_PCHAR}]*")


def _never(value: object) -> bool:
    return False


@dataclass(frozen=True, slots=True)
class Patterns:
    """A list of Istio string patterns split by kind (Istio ``StringMatcherWithPrefix``)."""

    exact: frozenset[str] = frozenset()
    prefixes: tuple[str, ...] = ()
    suffixes: tuple[str, ...] = ()
    presence: bool = False

    @classmethod
    def split(cls, patterns: Iterable[str], *, ignore_case: bool = False) -> Patterns:
        exact: set[str] = set()
        prefixes: list[str] = []
        suffixes: list[str] = []
        presence = False
        for pattern in patterns:
            if ignore_case:
                pattern = pattern.lower()
            if pattern == "*":
                presence = True  # Envoy regex ".+": any non-empty value
            elif pattern.startswith("*"):
                suffixes.append(pattern[1:])
            elif pattern.endswith("*"):
                prefixes.append(pattern[:-1])
            else:
                exact.add(pattern)
        if presence:
            # Presence subsumes every other pattern: validation refuses empty values.
            return cls(presence=True)
        return cls(frozenset(exact), tuple(prefixes), tuple(suffixes))


def string_matcher(patterns: Iterable[str], *, ignore_case: bool = False) -> StrMatch:
    """OR of Istio string patterns (exact, ``prefix*``, ``*suffix``, ``*``)."""
    split = Patterns.split(patterns, ignore_case=ignore_case)
    if split.presence:
        return bool
    exact, pre, suf = split.exact, split.prefixes, split.suffixes
    if not pre and not suf:
        if not exact:
            return _never
        if ignore_case:
            return lambda value: value is not None and value.lower() in exact
        return exact.__contains__

    def match(value: str | None) -> bool:
        if value is None:
            return False
        if ignore_case:
            value = value.lower()
        return value in exact or value.startswith(pre) or value.endswith(suf)

    return match


def in_trust_domain(principals: Iterable[str], trust_domain: str) -> tuple[str, ...]:
    """Principals as a mesh of ``trust_domain`` reads them: ``cluster.local/ns/NS/sa/SA`` names
    the mesh's own trust domain, whatever it is (Istio ``trustdomain.Bundle.
    ReplaceTrustDomainAliases``). Only that shape, five ``/``-separated parts: any other
    (``cluster.local/ns/NS/*``, ``cluster.local/*``) is kept as written, since Istio's
    ``isTrustDomainBeingEnforced`` sees no trust domain in it."""
    return tuple(_in_trust_domain(p, trust_domain) for p in principals)


def _in_trust_domain(principal: str, trust_domain: str) -> str:
    parts = principal.split("/")
    if len(parts) != 5 or parts[0] != DEFAULT_TRUST_DOMAIN:
        return principal
    return "/".join([trust_domain, *parts[1:]])


def namespace_regex(patterns: Iterable[str]) -> re.Pattern[str]:
    """``namespaces``/``source.namespace`` as Istio builds them (``srcNamespaceGenerator``): a
    regex over the peer's principal, ``.*/ns/NS/.*`` with every ``*`` in NS a ``.*``; use with
    ``fullmatch``. No principal (plaintext), no namespace."""
    wildcard = re.escape("*")
    alternatives = (".*/ns/" + re.escape(p).replace(wildcard, ".*") + "/.*" for p in patterns)
    return re.compile("|".join(f"(?:{a})" for a in alternatives), re.DOTALL)


def header_matcher(patterns: Iterable[str]) -> StrMatch:
    """``request.headers[NAME]`` values: as :func:`string_matcher`, except that ``*`` asks only
    whether the header is there, empty or not (Envoy ``present_match``, Istio ``HeaderMatcher``)."""
    split = Patterns.split(patterns)
    if split.presence:
        return lambda value: value is not None
    return string_matcher(patterns)


def is_path_template(path: str) -> bool:
    """True when ``path`` uses Istio's ``{*}``/``{**}`` operators (Istio ``IsPathTemplate``)."""
    return MATCH_ONE in path or MATCH_ANY in path


def path_template_error(path: str) -> str | None:
    """Why ``path`` is not a valid Istio path template, or None when it is one.

    Rules from the Operation.paths reference: no ``*``, ``{`` or ``}`` outside an operator, an
    operator fills its whole segment, ``{**}`` is the last operator; and from Envoy's parser: the
    template starts with ``/``, literals are pchars, no empty segment between two slashes.
    """
    if not path.startswith("/"):
        return "a path template must start with '/'"
    segments = path[1:].split("/")
    seen_any = False
    for index, segment in enumerate(segments):
        if segment in (MATCH_ONE, MATCH_ANY):
            if seen_any:
                return "{**} must be the last operator in a path template"
            seen_any = segment == MATCH_ANY
        elif any(c in segment for c in "*{}"):
            return (
                "'*', '{' and '}' are only allowed as a whole {*} or {**} segment "
                f"in a path template (segment {segment!r})"
            )
        elif segment == "" and index != len(segments) - 1:
            return "empty segment ('//') in a path template"
        elif not _LITERAL.fullmatch(segment):
            return f"segment {segment!r} has characters outside RFC 3986 pchar"
    return None


def path_template_regex(path: str) -> str:
    """The anchored-by-fullmatch regex Envoy builds for a valid template."""
    parts = []
    for segment in path.split("/"):
        if segment == MATCH_ONE:
            parts.append(f"[{_PCHAR}]+")
        elif segment == MATCH_ANY:
            parts.append(f"[{_PCHAR}/]*")
        else:
            parts.append(re.escape(segment))
    return "/".join(parts)


def templates_regex(templates: Iterable[str]) -> re.Pattern[str]:
    """One regex for several templates; use with ``fullmatch``."""
    return re.compile("|".join(f"(?:{path_template_regex(t)})" for t in templates))


def path_matcher(patterns: Iterable[str]) -> StrMatch:
    """OR of Istio path patterns: string patterns plus ``{*}``/``{**}`` templates."""
    plain: list[str] = []
    templates: list[str] = []
    for pattern in patterns:
        (templates if is_path_template(pattern) else plain).append(pattern)
    base = string_matcher(plain)
    if not templates:
        return base
    fullmatch = templates_regex(templates).fullmatch

    def match(value: str | None) -> bool:
        return value is not None and (base(value) or fullmatch(value) is not None)

    return match


def parse_ip_block(block: str) -> ipaddress.IPv4Network | ipaddress.IPv6Network:
    """A single IP (``/32`` or ``/128``) or a CIDR; host bits are masked as Envoy does.

    Raises ValueError with a readable message.
    """
    try:
        if "/" in block:
            return ipaddress.ip_network(block, strict=False)
        return ipaddress.ip_network(ipaddress.ip_address(block))
    except ValueError:
        kind = "CIDR range" if "/" in block else "IP address"
        raise ValueError(f"bad {kind} {block!r}") from None


def ip_key(address: IPAddress | None) -> int:
    """An address as one int, version in the high bits so v4 and v6 ranges never overlap; -1
    for None. The compiled engine compares these against :func:`ip_ranges`."""
    if address is None:
        return -1
    return (address.version << 128) | int(address)


def ip_ranges(blocks: Iterable[str]) -> tuple[tuple[int, int], ...]:
    """Inclusive ``ip_key`` ranges of ``ipBlocks``."""
    ranges = []
    for block in blocks:
        net = parse_ip_block(block)
        tag = net.version << 128
        ranges.append((tag | int(net.network_address), tag | int(net.broadcast_address)))
    return tuple(ranges)


def ip_matcher(blocks: Iterable[str]) -> IPMatch:
    """OR of ``ipBlocks``: True when the address lies in one of the blocks."""
    ranges: dict[int, list[tuple[int, int]]] = {4: [], 6: []}
    for block in blocks:
        net = parse_ip_block(block)
        ranges[net.version].append((int(net.network_address), int(net.broadcast_address)))
    v4 = tuple(ranges[4])
    v6 = tuple(ranges[6])
    if not v4 and not v6:
        return _never

    def match(address: IPAddress | None) -> bool:
        if address is None:
            return False
        number = int(address)
        for low, high in v4 if address.version == 4 else v6:
            if low <= number <= high:
                return True
        return False

    return match


def parse_port(port: str) -> int:
    """A port as Istio writes it: a decimal string in [0, 65535] (Istio ``ValidatePorts``)."""
    # Leading zeros are stripped before int(): Python refuses to convert over 4300 digits.
    if not port.isascii() or not port.isdigit() or len(port.lstrip("0")) > 5 or int(port) > 65535:
        raise ValueError(f"bad port {port!r}: expected a decimal number in [0, 65535]")
    return int(port)


def port_matcher(ports: Iterable[str]) -> PortMatch:
    """OR of ``ports``: exact comparison with the destination port."""
    allowed = frozenset(parse_port(p) for p in ports)
    return allowed.__contains__ if allowed else _never
