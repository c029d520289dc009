"""Routing on a shared outbound listener: each request goes to the service its Host names.

Several `outbound` entries of a sidecar's config may share one `listen` address (HTTP only);
the app then calls every service through that one port, the way it would call them by their
Kubernetes DNS names. A service answers to `name`, `name.ns`, `name.ns.svc` and
`name.ns.svc.cluster.local`, with or without a port (RFC 9110 §7.2: Host is `host[:port]`,
case-insensitive, RFC 3986 §3.2.2). An entry alone on its port takes every request, whatever
its Host, as before.
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
    """The name part of a Host value, lowercased: `Payments.shop:8080` → `payments.shop`."""
    host = host.strip().lower()
    if host.startswith("["):  # an IPv6 literal, `[::1]:80`
        return host.partition("]")[0] + "]"
    name, colon, port = host.rpartition(":")
    return name if colon and port.isdigit() else host


def by_host(routes: Mapping[str, R]) -> Callable[[str | None], R | None]:
    """A selector: the route whose name the Host value gives, None if it names none."""

    def select(host: str | None) -> R | None:
        return None if host is None else routes.get(host_name(host))

    return select
