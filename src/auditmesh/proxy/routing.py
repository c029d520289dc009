"""Routing on a shared outbound listener: each request goes to the service its Host names.

Several `outbound` entries of a sidecar's config may share one `listen` address (HTTP only);
the app then calls every service through that one port, the way it would call them by their
Kubernetes DNS names. A service answers to `name`, `name.ns`, `name.ns.svc` and
`name.ns.svc.cluster.local`, with or without a port and a final dot (RFC 9110 §7.2: Host is
`host[:port]`, case-insensitive, RFC 3986 §3.2.2, where the port may be empty). A request in
absolute form (`GET http://payments/pay`, what an app with `HTTP_PROXY` set sends) is taken
as `GET /pay` with Host `payments` (`origin_form`, RFC 9112 §3.2.2) before it is routed,
authorized, recorded or forwarded. An entry alone on its port takes every
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


def origin_form(target: str) -> tuple[str, str] | None:
    """(authority, origin-form target) of an absolute-form HTTP target, None for any other
    form: `http://a:80/p?q` → (`a:80`, `/p?q`); `http://a` → (`a`, `/`). RFC 9112 §3.2.2: the
    request is then handled as `/p?q` with Host `a:80`, which is what policies, the audit
    event and the upstream see."""
    scheme, sep, rest = target.partition("://")
    if not sep or scheme.lower() not in ("http", "https"):
        return None
    cut = min((i for i in (rest.find(c) for c in "/?#") if i >= 0), default=len(rest))
    authority, origin = rest[:cut].rpartition("@")[2], rest[cut:].partition("#")[0]
    return authority, origin if origin.startswith("/") else "/" + origin


def by_host(routes: Mapping[str, R]) -> Callable[[str | None], R | None]:
    """A selector: the route whose name the authority gives, None if it names none."""

    def select(authority: str | None) -> R | None:
        return None if authority is None else routes.get(host_name(authority))

    return select
