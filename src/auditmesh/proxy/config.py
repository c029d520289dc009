"""Sidecar configuration: one YAML file, validated at load with errors naming the field.

    workload: {name: orders, namespace: shop, labels: {app: orders}}
    server: {url: https://127.0.0.1:7443, bundle: ca.pem, join_token: "…"}
    data_dir: ./orders-sidecar
    inbound: {listen: 127.0.0.1:15006, app: 127.0.0.1:8080, protocol: http, mtls: STRICT}
    outbound:
      - {service: payments, listen: 127.0.0.1:15101, upstream: 127.0.0.1:16006,
         identity: spiffe://cluster.local/ns/shop/sa/payments, protocol: http}
      # entries with the same `listen` share it, each request routed by its Host header
    audit: {batch_size: 500, flush_ms: 200, spool_max_bytes: 67108864, spool_full: drop-oldest,
            body_digests: false}
    limits: {header_timeout_s: 10, idle_timeout_s: 60, connect_timeout_s: 5, ...}

Relative paths are resolved against the config file's directory. Addresses are HOST:PORT, an
IPv6 address in brackets (`[::1]:15006`). What can be known before the one-time join token is
spent is checked here: addresses, distinct listeners, SPIFFE IDs, a data_dir that can be made.
"""

from __future__ import annotations

import ipaddress
import os
import re
import stat
from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml
from msgspec import Meta

from auditmesh.identity.spiffe import SpiffeIdError
from auditmesh.identity.spiffe import parse as parse_spiffe_id

HostPort = str  # HOST:PORT or [IPv6]:PORT, checked by _check_addresses (which says so)
Positive = Annotated[float, Meta(gt=0)]


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Workload(_Strict, frozen=True):
    name: Annotated[str, Meta(min_length=1)]
    # None: the namespace of the sidecar's SPIFFE ID (`/ns/NS/...`), else "default"; given,
    # it must be that namespace (sidecar.py `_resolve_namespace`)
    namespace: Annotated[str, Meta(min_length=1)] | None = None
    labels: dict[str, str] = {}


class ServerLink(_Strict, frozen=True):
    # The mesh listener: the sidecar checks it proves the server's SPIFFE ID before sending.
    url: Annotated[str, Meta(pattern=r"^https://")]
    bundle: str
    join_token: str | None = None
    join_token_file: str | None = None


class Inbound(_Strict, frozen=True):
    listen: HostPort
    app: HostPort
    protocol: Literal["http", "tcp"] = "http"
    mtls: Literal["STRICT", "PERMISSIVE", "DISABLE"] = "STRICT"


class Outbound(_Strict, frozen=True):
    service: Annotated[str, Meta(min_length=1)]
    listen: HostPort
    upstream: HostPort
    identity: str  # a workload's SPIFFE ID, checked by _check_addresses
    protocol: Literal["http", "tcp"] = "http"
    namespace: str | None = None


class Audit(_Strict, frozen=True):
    batch_size: Annotated[int, Meta(ge=1, le=10_000)] = 500
    flush_ms: Annotated[int, Meta(ge=1)] = 200
    spool_max_bytes: Annotated[int, Meta(ge=4096)] = 64 * 1024 * 1024
    spool_full: Literal["block", "drop-oldest"] = "drop-oldest"
    # DESIGN.md "Audit depth", Metadata: each HTTP body's SHA-256 as evidence, never the data
    body_digests: bool = False


class Limits(_Strict, frozen=True):
    header_timeout_s: Positive = 10.0
    idle_timeout_s: Positive = 60.0
    connect_timeout_s: Positive = 5.0
    request_timeout_s: Positive = 60.0
    max_header_bytes: Annotated[int, Meta(ge=1024)] = 16 * 1024
    max_headers: Annotated[int, Meta(ge=8)] = 100
    pool_size: Annotated[int, Meta(ge=1)] = 64


class SidecarConfig(_Strict, frozen=True):
    workload: Workload
    server: ServerLink
    data_dir: str
    inbound: Inbound | None = None
    outbound: list[Outbound] = []
    policies: str | None = None  # Istio YAML file or directory, reloaded when it changes
    policy_reload_s: Positive = 1.0
    audit: Audit = Audit()
    limits: Limits = Limits()


class ConfigError(ValueError):
    """The config file is unreadable or invalid; the message names file and field."""


def load_config(path: Path) -> tuple[SidecarConfig, Path]:
    """Parse the YAML file; returns the config and the directory relative paths start from."""
    try:
        raw = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    try:
        config = msgspec.convert(raw, SidecarConfig)
    except msgspec.ValidationError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    _check_addresses(config, path)
    _check_listeners(config, path)
    _check_data_dir(config, path)
    for listen, targets in outbound_listeners(config.outbound).items():
        services = [t.service for t in targets]
        if len(targets) > 1 and any(t.protocol != "http" for t in targets):
            raise ConfigError(
                f"{path}: outbound services {', '.join(services)} share listen {listen}, but "
                "only HTTP services can share a port (requests are routed by their Host "
                "header); give each TCP service a port of its own"
            )
        if len(set(services)) < len(services):
            raise ConfigError(
                f"{path}: outbound listen {listen} names a service twice ({', '.join(services)})"
            )
    return config, path.parent.resolve()


_HOST_PORT = re.compile(r"(?:\[(?P<ipv6>[^\]]*)\]|(?P<host>[^\s:\[\]]+)):(?P<port>\d{1,5})")


def address_problem(value: str) -> str | None:
    """Why ``value`` is not a usable HOST:PORT (IPv6 in brackets, port 1-65535), or None."""
    match = _HOST_PORT.fullmatch(value)
    if match is None:
        if value.count(":") > 1 and not value.startswith("["):
            return f"{value!r}: write an IPv6 address in brackets, such as [::1]:15001"
        return f"expected HOST:PORT such as 127.0.0.1:15001, got {value!r}"
    if match["ipv6"] is not None:
        try:
            ipaddress.IPv6Address(match["ipv6"])
        except ValueError:
            return f"{value!r}: {match['ipv6']!r} in brackets is not an IPv6 address"
    if not 1 <= int(match["port"]) <= 65535:
        return f"{value} needs a port from 1 to 65535"
    return None


def _check_addresses(config: SidecarConfig, path: Path) -> None:
    """HOST:PORT with ports 1-65535 (port 0 would listen where no caller knows), and SPIFFE
    IDs that parse and name a workload: refused here, before the one-time join token is spent."""
    inbound = config.inbound
    addresses = [] if inbound is None else [("inbound.listen", inbound.listen)]
    addresses += [] if inbound is None else [("inbound.app", inbound.app)]
    for n, target in enumerate(config.outbound):
        addresses += [(f"outbound[{n}].listen", target.listen)]
        addresses += [(f"outbound[{n}].upstream", target.upstream)]
        try:
            identity = parse_spiffe_id(target.identity)
        except SpiffeIdError as exc:
            raise ConfigError(f"{path}: outbound[{n}].identity: {exc}") from None
        if not identity.path:
            raise ConfigError(
                f"{path}: outbound[{n}].identity: {target.identity} names a trust domain, "
                "not a workload, so no server can ever prove it: give the SPIFFE ID of "
                f"{target.service}, such as spiffe://{identity.trust_domain}/ns/NAMESPACE/sa/"
                "SERVICE_ACCOUNT"
            )
    for where, address in addresses:
        problem = address_problem(address)
        if problem is not None:
            raise ConfigError(f"{path}: {where}: {problem}")


def _check_listeners(config: SidecarConfig, path: Path) -> None:
    """Each listener on an address of its own (outbound HTTP entries share one by giving the
    same `listen`), and no listener that forwards to itself: a bind error after enrolling
    would name neither key, and the join token would be spent."""
    inbound = config.inbound
    listens = [] if inbound is None else [("inbound.listen", inbound.listen)]
    listens += [(f"outbound[{n}].listen", t.listen) for n, t in enumerate(config.outbound)]
    for i, (where, listen) in enumerate(listens):
        for other_where, other in listens[i + 1 :]:
            shared = listen == other and where.startswith("outbound")
            if not shared and addresses_overlap(listen, other):
                raise ConfigError(
                    f"{path}: {where} ({listen}) and {other_where} ({other}) are the same "
                    "address: give each listener a port of its own (only outbound HTTP "
                    "entries may share one, by giving the same listen)"
                )
    loops = [] if inbound is None else [("inbound.app", inbound.app, inbound.listen)]
    loops += [
        (f"outbound[{n}].upstream", t.upstream, t.listen) for n, t in enumerate(config.outbound)
    ]
    for where, to, listen in loops:
        if addresses_overlap(to, listen) and not _wildcard(split_host_port(to)[0]):
            raise ConfigError(f"{path}: {where}: {to} is the sidecar's own listener {listen}")


def _wildcard(host: str) -> bool:
    return host in ("0.0.0.0", "::")


def _normal(host: str) -> str:
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.lower()


def addresses_overlap(a: str, b: str) -> bool:
    """Whether two listeners would collide: the same port, and the same host or a wildcard of
    the other's IP family (IPv6 listeners are IPv6-only, as asyncio makes them). Host names
    are compared as written; the sidecar compares the bound addresses again at start."""
    (host_a, port_a), (host_b, port_b) = split_host_port(a), split_host_port(b)
    if port_a != port_b:
        return False
    host_a, host_b = _normal(host_a), _normal(host_b)
    if host_a == host_b:
        return True
    for one, other in ((host_a, host_b), (host_b, host_a)):
        if _wildcard(one) and (":" in one) == (":" in other) and _is_ip(other):
            return True
    return False


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _check_data_dir(config: SidecarConfig, path: Path) -> None:
    """data_dir, or the nearest directory above it that exists, must be a directory the
    sidecar can write: it keeps the SVID there, which a spent join token cannot get again."""
    target = path.parent.resolve() / config.data_dir
    where = f"{path}: data_dir: {config.data_dir}"
    probe = target
    while True:
        try:
            info = probe.stat()
            break
        except (FileNotFoundError, NotADirectoryError):
            if probe.parent == probe:
                raise ConfigError(f"{where}: no part of {target} exists") from None
            probe = probe.parent
        except OSError as exc:
            raise ConfigError(f"{where}: cannot use {probe}: {exc.strerror}") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"{where}: {probe} is not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        made = "" if probe == target else " (data_dir is to be made in it)"
        raise ConfigError(f"{where}: {probe} is not writable{made}")


def outbound_listeners(outbound: list[Outbound]) -> dict[str, list[Outbound]]:
    """The outbound entries by `listen` address, in config order: several on one address
    share that listener, routed by Host (proxy/routing.py)."""
    listeners: dict[str, list[Outbound]] = {}
    for target in outbound:
        listeners.setdefault(target.listen, []).append(target)
    return listeners


def split_host_port(value: str) -> tuple[str, int]:
    """`127.0.0.1:15001` → ("127.0.0.1", 15001); `[::1]:15001` → ("::1", 15001)."""
    host, _, port = value.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)
