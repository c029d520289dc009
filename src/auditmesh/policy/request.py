"""The plain values the policy engine reads and returns (auditmesh.policy.request).

Place in the house: the seam between :mod:`auditmesh.policy.engine` and its callers — the
sidecar builds a :class:`Request` from a connection and an HTTP request head, ``policy eval``
from JSON, ``policy replay`` from recorded events — and gets back a frozen :class:`Decision`
to enforce and to record in the audit event's ``authz``.

A request without HTTP attributes (``http=False``, no ``"request"`` key in JSON) is a TCP
connection; Istio then treats HTTP-only fields specially (see the engine).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from auditmesh.policy.matchers import IPAddress, ip_key
from auditmesh.policy.model import Labels, labels_key

SPIFFE_SCHEME = "spiffe://"
Verdict = Literal["allow", "deny"]


class RequestError(ValueError):
    """A request description that cannot be evaluated (unknown key, wrong type, bad value)."""


@dataclass(frozen=True, slots=True)
class Request:
    """One call as the authorization policy sees it. Build it with :meth:`of` or :meth:`from_json`.

    ``source_principal`` is a SPIFFE ID without its scheme (``cluster.local/ns/NS/sa/SA``), as
    Istio writes principals; ``path`` is the URL path without query; header names are lower case.
    """

    destination_namespace: str
    destination_labels: Labels = ()
    source_principal: str | None = None
    source_namespace: str | None = None
    source_ip: IPAddress | None = None
    destination_ip: IPAddress | None = None
    destination_port: int | None = None
    http: bool = False
    method: str | None = None
    path: str | None = None
    host: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    sni: str | None = None
    # Derived, for the compiled engine: matchers.ip_key of the two addresses, and the
    # destination workload as one string (str caches its hash; a tuple key would be rehashed).
    source_ip_key: int = field(init=False, repr=False, compare=False)
    destination_ip_key: int = field(init=False, repr=False, compare=False)
    workload_key: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "source_ip_key", ip_key(self.source_ip))
        object.__setattr__(self, "destination_ip_key", ip_key(self.destination_ip))
        workload = repr((self.destination_namespace, self.destination_labels))
        object.__setattr__(self, "workload_key", workload)

    @classmethod
    def of(
        cls,
        *,
        destination_namespace: str,
        destination_labels: Mapping[str, str] | None = None,
        source_principal: str | None = None,
        source_namespace: str | None = None,
        source_ip: str | IPAddress | None = None,
        destination_ip: str | IPAddress | None = None,
        destination_port: int | None = None,
        http: bool | None = None,
        method: str | None = None,
        path: str | None = None,
        host: str | None = None,
        headers: Mapping[str, str | list[str]] | None = None,
        sni: str | None = None,
    ) -> Request:
        """Normalize raw attributes: strip ``spiffe://``, derive the source namespace from the
        principal (Istio matches namespaces against ``*/ns/NS/*`` of the peer identity), drop the
        query from the path, join repeated headers with ``,`` as Envoy does."""
        if source_principal is not None and source_principal.startswith(SPIFFE_SCHEME):
            source_principal = source_principal[len(SPIFFE_SCHEME) :]
        derived = _namespace_of(source_principal)
        if source_namespace is None:
            source_namespace = derived
        elif derived is not None and derived != source_namespace:
            raise RequestError(
                f"source.namespace {source_namespace!r} contradicts the principal's namespace "
                f"{derived!r}"
            )
        if path is not None:
            path = path.partition("?")[0].partition("#")[0]
        norm_headers: dict[str, str] = {}
        for name, value in (headers or {}).items():
            text = ",".join(value) if isinstance(value, list) else value
            key = name.lower()  # X-Client and x-client are one header, its values joined
            norm_headers[key] = f"{norm_headers[key]},{text}" if key in norm_headers else text
        if http is None:
            http = any(x is not None for x in (method, path, host, headers))
        return cls(
            destination_namespace,
            labels_key(destination_labels or {}),
            source_principal,
            source_namespace,
            _ip(source_ip, "source.ip"),
            _ip(destination_ip, "destination.ip"),
            destination_port,
            http,
            method,
            path,
            host,
            norm_headers,
            sni,
        )

    @classmethod
    def from_json(cls, obj: object) -> Request:
        """The ``policy eval`` request JSON; unknown keys and wrong types are RequestError."""
        top = _object(obj, "", ("source", "destination", "request", "connection"))
        source = _object(top.get("source", {}), "source", ("principal", "namespace", "ip"))
        dest = _object(
            top.get("destination", {}), "destination", ("namespace", "labels", "ip", "port")
        )
        req = _object(top.get("request", {}), "request", ("method", "path", "host", "headers"))
        conn = _object(top.get("connection", {}), "connection", ("sni",))
        principal = _str(source, "source", "principal")
        source_namespace = _str(source, "source", "namespace")
        if source_namespace is not None and principal is None:
            # Istio matches namespaces against the peer's mTLS principal: without one, none.
            raise RequestError(
                "source.namespace needs source.principal: the namespace is read from the "
                "peer's mTLS identity (e.g. cluster.local/ns/NS/sa/SA)"
            )
        labels = _str_map(dest.get("labels"), "destination.labels", False)
        port = dest.get("port")
        if port is not None and (
            not isinstance(port, int) or isinstance(port, bool) or not 0 <= port <= 65535
        ):
            raise RequestError(f"destination.port: expected an integer in [0, 65535], got {port!r}")
        namespace = _str(dest, "destination", "namespace")
        if namespace is None:
            raise RequestError("destination.namespace is required (it selects the policies)")
        return cls.of(
            destination_namespace=namespace,
            destination_labels=labels,
            source_principal=principal,
            source_namespace=source_namespace,
            source_ip=_str(source, "source", "ip"),
            destination_ip=_str(dest, "destination", "ip"),
            destination_port=port,
            http=top.get("request") is not None,
            method=_str(req, "request", "method"),
            path=_str(req, "request", "path"),
            host=_str(req, "request", "host"),
            headers=_str_map(req.get("headers"), "request.headers", True),
            sni=_str(conn, "connection", "sni"),
        )


@dataclass(frozen=True, slots=True)
class DryRun:
    """What the decision would be if the ``istio.io/dry-run`` policies were enforced too."""

    decision: Verdict
    policy: str | None
    rule: int | None

    def to_json(self) -> dict[str, object]:
        return {"decision": self.decision, "policy": self.policy, "rule": self.rule}


@dataclass(frozen=True, slots=True)
class Decision:
    """The authorization outcome: which policy (``ns/name``) and rule index decided it.

    ``policy``/``rule`` are None when no policy decided: allowed because the workload has no
    ALLOW policy, or denied because it has some and none matched. ``audit`` says an AUDIT
    policy matched (``audit_policy``/``audit_rule``: the first one). ``dry_run`` is None when
    no dry-run policy applies to the workload.
    """

    decision: Verdict
    policy: str | None = None
    rule: int | None = None
    audit: bool = False
    audit_policy: str | None = None
    audit_rule: int | None = None
    dry_run: DryRun | None = None

    @property
    def allowed(self) -> bool:
        return self.decision == "allow"

    def to_json(self) -> dict[str, object]:
        """The ``policy eval`` output: exactly decision, policy, rule, audit, dry_run."""
        return {
            "decision": self.decision,
            "policy": self.policy,
            "rule": self.rule,
            "audit": self.audit,
            "dry_run": None if self.dry_run is None else self.dry_run.to_json(),
        }


def _namespace_of(principal: str | None) -> str | None:
    """NS of ``<trust-domain>/ns/NS/sa/SA``; None for other shapes."""
    if principal is None:
        return None
    parts = principal.split("/")
    if len(parts) == 5 and parts[1] == "ns" and parts[3] == "sa" and parts[2]:
        return parts[2]
    return None


def _ip(value: str | IPAddress | None, name: str) -> IPAddress | None:
    """The address; an IPv4-mapped IPv6 one (``::ffff:10.0.0.1``, a dual-stack socket's view of
    an IPv4 peer) as the IPv4 address it is, so IPv4 ipBlocks match it."""
    if isinstance(value, str):
        try:
            value = ipaddress.ip_address(value)
        except ValueError:
            raise RequestError(f"{name}: bad IP address {value!r}") from None
    if isinstance(value, ipaddress.IPv6Address) and value.ipv4_mapped is not None:
        return value.ipv4_mapped
    return value


def _object(value: object, path: str, keys: tuple[str, ...]) -> dict[str, object]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise RequestError(f"{path or 'request JSON'}: expected an object, got {value!r}")
    for key in value:
        if key not in keys:
            where = f"{path}.{key}" if path else key
            raise RequestError(f"{where}: unknown key (expected one of: {', '.join(keys)})")
    return value


def _str(obj: dict[str, object], path: str, key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise RequestError(f"{path}.{key}: expected a string, got {value!r}")
    return value


def _str_map(value: object, path: str, lists: bool) -> dict[str, Any]:
    mapping = _object(value, path, ()) if not isinstance(value, dict) else value
    for key, item in mapping.items():
        ok = isinstance(item, str) or (
            lists and isinstance(item, list) and all(isinstance(x, str) for x in item)
        )
        if not ok:
            kind = "a string or a list of strings" if lists else "a string"
            raise RequestError(f"{path}[{key}]: expected {kind}, got {item!r}")
    return mapping
