"""Routing on a shared outbound listener: each request goes to the service its Host names.

Several `outbound` entries of a sidecar's config may share one `listen` address (HTTP only);
the app then calls every service through that one port, the way it would call them by their
Kubernetes DNS names. A service answers to `name`, `name.ns`, `name.ns.svc` and
`name.ns.svc.cluster.local`, with or without a port and a final dot (RFC 9110 §7.2: Host is
`host[:port]`, case-insensitive, RFC 3986 §3.2.2, where the port may be empty). A request in
absolute form (`GET http://payments/pay`, what an app with `HTTP_PROXY` set sends) is routed by
its target's authority, not by Host (RFC 9112 §3.2.2). An entry alone on its port takes every
request, whatever its Host, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import TypeVar

R = TypeVar("R")


def service_names(service: str, namespace: str) -> tuple[str, ...]:
    """The host names a service answers to (Kubernetes DNS for Services)."""
    full = f"{service}.{namespace}"
    return (service, full, f"{full}.svc", f"{full}.svc.cluster.local")


def host_name(host: str) -> str:
    """The name part of a Host value, lowercased: `Payments.shop.:8080` → `payments.shop`."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal, `[::1]:80`
        return host.partition("]")[0] + "]"
    name, colon, port = host.rpartition(":")
    if colon and (port.isdigit() or not port):
        host = name
    return host[:-1] if host.endswith(".") else host


def request_authority(target: str, host: str | None) -> str | None:
    """The authority a request names: an absolute-form target's (`http://a:80/p` → `a:80`,
    userinfo dropped), otherwise the Host header's value."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return host
    for end in "/?#":
        rest = rest.partition(end)[0]
    return rest.rpartition("@")[2]


def by_host(routes: Mapping[str, R]) -> Callable[[str | None], R | None]:
    """A selector: the route whose name the authority gives, None if it names none."""

    def select(authority: str | None) -> R | None:
        return None if authority is None else routes.get(host_name(authority))

    return select
