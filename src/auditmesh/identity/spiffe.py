"""SPIFFE IDs: the value type, its parser and validator (pure, no I/O).

Its place in the house: every identity the mesh CA issues, every peer a sidecar accepts and every
``source``/``destination`` principal an audit event records is a :class:`SpiffeId`.

Implements the SPIFFE ID specification (spiffe/spiffe ``standards/SPIFFE-ID.md``):
§2 (``spiffe`` scheme, no query or fragment), §2.1 (trust domain: lowercase ``[a-z0-9.-_]``, no
userinfo, port or percent-encoding), §2.2 (path: segments of ``[a-zA-Z0-9.-_]``, no empty, ``.``
or ``..`` segments, no trailing ``/``, no percent-encoding) and §2.3 (at most 2048 bytes, trust
domain at most 255 bytes). Like go-spiffe, the scheme must be spelled in lowercase.
"""

from __future__ import annotations

import string
from dataclasses import dataclass

SCHEME_PREFIX = "spiffe://"
MAX_ID_BYTES = 2048  # SPIFFE ID §2.3
MAX_TRUST_DOMAIN_BYTES = 255  # SPIFFE ID §2.3 (RFC 3986 host limit)

_TRUST_DOMAIN_CHARS = frozenset(string.ascii_lowercase + string.digits + ".-_")  # §2.1
_SEGMENT_CHARS = frozenset(string.ascii_letters + string.digits + ".-_")  # §2.2


RESERVED_SEGMENT = "auditmesh"  # spiffe://TD/auditmesh/...: auditmesh's own IDs (SpiffeId.reserved)


class SpiffeIdError(ValueError):
    """A string is not a valid SPIFFE ID (or trust domain, or path); ``reason`` says why."""

    def __init__(self, text: str, reason: str, *, what: str = "SPIFFE ID") -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"invalid {what} {_quote(text)}: {reason}")


def _quote(text: str, limit: int = 80) -> str:
    if len(text) > limit:
        return repr(text[:limit]) + f"... ({len(text)} characters)"
    return repr(text)


def _char_name(char: str) -> str:
    return repr(char) if char.isprintable() else f"U+{ord(char):04X}"


def _trust_domain_problem(td: str) -> str | None:
    """Why ``td`` is not a valid trust domain name (SPIFFE ID §2.1, §2.3), or None."""
    if td == "":
        return "the trust domain is missing"
    if "@" in td:
        return "user info ('user@') is not allowed in the trust domain (SPIFFE ID §2.1)"
    if ":" in td:
        return "a port (':') is not allowed in the trust domain (SPIFFE ID §2.1)"
    if "%" in td:
        return "percent-encoded characters are not allowed in the trust domain (SPIFFE ID §2.1)"
    for char in td:
        if char not in _TRUST_DOMAIN_CHARS:
            hint = "; trust domains must be lowercase" if char.isupper() else ""
            return (
                f"the trust domain contains {_char_name(char)}: only lowercase letters, digits, "
                f"'.', '-' and '_' are allowed (SPIFFE ID §2.1){hint}"
            )
    if len(td) > MAX_TRUST_DOMAIN_BYTES:
        return (
            f"the trust domain is {len(td)} bytes long; at most {MAX_TRUST_DOMAIN_BYTES} "
            "are allowed (SPIFFE ID §2.3)"
        )
    return None


def _segment_problem(segment: str) -> str | None:
    """Why ``segment`` cannot be one path segment (SPIFFE ID §2.2), or None."""
    if segment == "":
        return "the path contains an empty segment ('//'); segments must not be empty (§2.2)"
    if segment in (".", ".."):
        return f"the path contains the relative segment {segment!r}, which is not allowed (§2.2)"
    if "%" in segment:
        return "percent-encoded characters are not allowed in the path (SPIFFE ID §2.2)"
    for char in segment:
        if char not in _SEGMENT_CHARS:
            return (
                f"path segment {_quote(segment, 40)} contains {_char_name(char)}: only letters, "
                "digits, '.', '-' and '_' are allowed (SPIFFE ID §2.2)"
            )
    return None


def _path_problem(path: str) -> str | None:
    """Why ``path`` (``""`` or ``/seg/...``) is not a valid SPIFFE ID path, or None."""
    if path == "":
        return None
    if not path.startswith("/"):
        return "the path must start with '/'"
    if path.endswith("/"):
        return "the path must not end with '/' (SPIFFE ID §2.2)"
    for segment in path[1:].split("/"):
        problem = _segment_problem(segment)
        if problem is not None:
            return problem
    return None


@dataclass(frozen=True, slots=True, order=True)
class SpiffeId:
    """A valid SPIFFE ID: ``spiffe://<trust_domain><path>``; ``path`` is ``""`` or ``/a/b``.

    Constructing one validates both parts, so every instance is valid.
    """

    trust_domain: str
    path: str = ""

    def __post_init__(self) -> None:
        problem = _trust_domain_problem(self.trust_domain)
        if problem is not None:
            raise SpiffeIdError(self.trust_domain, problem, what="trust domain")
        problem = _path_problem(self.path)
        if problem is not None:
            raise SpiffeIdError(self.path, problem, what="SPIFFE ID path")
        size = len(SCHEME_PREFIX) + len(self.trust_domain) + len(self.path)
        if size > MAX_ID_BYTES:
            raise SpiffeIdError(
                str(self), f"it is {size} bytes long; at most {MAX_ID_BYTES} are allowed (§2.3)"
            )

    def __str__(self) -> str:
        return f"{SCHEME_PREFIX}{self.trust_domain}{self.path}"

    @classmethod
    def parse(cls, text: str) -> SpiffeId:
        """Same as the module-level :func:`parse`."""
        return parse(text)

    @classmethod
    def from_segments(cls, trust_domain: str, *segments: str) -> SpiffeId:
        """Build ``spiffe://trust_domain/seg1/seg2``; each segment is validated on its own."""
        for segment in segments:
            problem = _segment_problem(segment)
            if problem is not None:
                raise SpiffeIdError(segment, problem, what="path segment")
        return cls(trust_domain, "".join("/" + s for s in segments))

    @classmethod
    def audit_server(cls, trust_domain: str) -> SpiffeId:
        """The auditmesh server's own ID, ``spiffe://TD/auditmesh/server``: what sidecars
        check the mesh listener's certificate against (secure naming for the server)."""
        return cls.from_segments(trust_domain, RESERVED_SEGMENT, "server")

    @property
    def reserved(self) -> bool:
        """Whether the ID is under ``/auditmesh/``, the paths of auditmesh's own components:
        the CA never issues one to a workload, or a workload holding it could pose as the
        server (sidecars would send it their events, and its records would read as the
        server's)."""
        return self.segments[:1] == (RESERVED_SEGMENT,)

    @property
    def reserved_refusal(self) -> str:
        """Why a reserved ID is refused, one wording for the CA, the tokens and the CLI."""
        return (
            f"{self} is reserved for auditmesh's own components (paths under "
            f"/{RESERVED_SEGMENT}/): no workload is given one"
        )

    @classmethod
    def kubernetes(cls, trust_domain: str, namespace: str, service_account: str) -> SpiffeId:
        """The Kubernetes/Istio form ``spiffe://TD/ns/NAMESPACE/sa/SERVICE_ACCOUNT``."""
        return cls.from_segments(trust_domain, "ns", namespace, "sa", service_account)

    @property
    def segments(self) -> tuple[str, ...]:
        return tuple(self.path[1:].split("/")) if self.path else ()

    def member_of(self, trust_domain: str) -> bool:
        return self.trust_domain == trust_domain

    @property
    def is_kubernetes(self) -> bool:
        """True for exactly ``/ns/<namespace>/sa/<service account>``."""
        segs = self.segments
        return len(segs) == 4 and segs[0] == "ns" and segs[2] == "sa"

    @property
    def namespace(self) -> str | None:
        """The namespace of a Kubernetes-form ID, else None."""
        return self.segments[1] if self.is_kubernetes else None

    @property
    def service_account(self) -> str | None:
        """The service account of a Kubernetes-form ID, else None."""
        return self.segments[3] if self.is_kubernetes else None

    @property
    def workload_name(self) -> str | None:
        """`SERVICE_ACCOUNT.NAMESPACE` of a Kubernetes-form ID (`orders.shop`): the name the
        sidecar records for the workload (its service account) qualified with its namespace,
        as the service graph qualifies services; None for other shapes."""
        return f"{self.service_account}.{self.namespace}" if self.is_kubernetes else None

    @property
    def istio_principal(self) -> str:
        """The ID without its scheme, as Istio's ``principals`` field spells it."""
        return f"{self.trust_domain}{self.path}"


def parse(text: str) -> SpiffeId:
    """Parse and validate a SPIFFE ID; raise :class:`SpiffeIdError` saying what is wrong."""
    if text == "":
        raise SpiffeIdError(text, "it is empty")
    size = len(text.encode("utf-8", "surrogatepass"))
    if size > MAX_ID_BYTES:
        raise SpiffeIdError(
            text, f"it is {size} bytes long; at most {MAX_ID_BYTES} are allowed (SPIFFE ID §2.3)"
        )
    if not text.startswith(SCHEME_PREFIX):
        scheme, sep, _ = text.partition("://")
        if sep and scheme.lower() == "spiffe":
            reason = f"the scheme must be 'spiffe' in lowercase, not {scheme!r}"
        elif sep and scheme:
            reason = f"the scheme must be 'spiffe', not {_quote(scheme, 20)} (SPIFFE ID §2)"
        else:
            reason = "the scheme is missing: a SPIFFE ID starts with 'spiffe://' (SPIFFE ID §2)"
        raise SpiffeIdError(text, reason)
    rest = text[len(SCHEME_PREFIX) :]
    # RFC 3986 §3: the authority ends at the first '/', '?' or '#'.
    end = len(rest)
    for delimiter in "/?#":
        index = rest.find(delimiter)
        if index != -1:
            end = min(end, index)
    trust_domain, tail = rest[:end], rest[end:]
    if "#" in tail:
        raise SpiffeIdError(text, "a fragment ('#...') is not allowed (SPIFFE ID §2)")
    if "?" in tail:
        raise SpiffeIdError(text, "a query ('?...') is not allowed (SPIFFE ID §2)")
    problem = _trust_domain_problem(trust_domain) or _path_problem(tail)
    if problem is not None:
        raise SpiffeIdError(text, problem)
    return SpiffeId(trust_domain, tail)


def short_name(text: str) -> str:
    """How a listing that has no room for `spiffe://cluster.local/ns/shop/sa/orders` names
    it: `orders.shop` (:attr:`SpiffeId.workload_name`); any other text (another shape of
    ID, a service name, an address) as it is."""
    if not text.startswith(SCHEME_PREFIX):
        return text
    try:
        return parse(text).workload_name or text
    except SpiffeIdError:
        return text


def parse_trust_domain(text: str) -> str:
    """Validate a trust domain name given bare (``example.org``) or as ``spiffe://example.org``."""
    name = text[len(SCHEME_PREFIX) :] if text.startswith(SCHEME_PREFIX) else text
    if "/" in name:
        problem: str | None = "a trust domain has no path; give only the name, e.g. 'example.org'"
    else:
        problem = _trust_domain_problem(name)
    if problem is not None:
        raise SpiffeIdError(text, problem, what="trust domain")
    return name
