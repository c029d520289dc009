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

Relative paths are resolved against the config file's directory.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

import msgspec
import yaml
from msgspec import Meta

from auditmesh.identity.spiffe import SpiffeIdError
from auditmesh.identity.spiffe import parse as parse_spiffe_id

HostPort = Annotated[str, Meta(pattern=r"^[^\s:]+:\d{1,5}$")]
Positive = Annotated[float, Meta(gt=0)]


class _Strict(msgspec.Struct, frozen=True, forbid_unknown_fields=True, kw_only=True):
    pass


class Workload(_Strict, frozen=True):
    name: Annotated[str, Meta(min_length=1)]
    namespace: Annotated[str, Meta(min_length=1)] = "default"
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
    identity: Annotated[str, Meta(pattern=r"^spiffe://")]
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


def _check_addresses(config: SidecarConfig, path: Path) -> None:
    """Ports 1-65535 (port 0 would listen where no caller knows), and SPIFFE IDs that parse:
    refused here, before the one-time join token is spent."""
    inbound = config.inbound
    addresses = [] if inbound is None else [("inbound.listen", inbound.listen)]
    addresses += [] if inbound is None else [("inbound.app", inbound.app)]
    for n, target in enumerate(config.outbound):
        addresses += [(f"outbound[{n}].listen", target.listen)]
        addresses += [(f"outbound[{n}].upstream", target.upstream)]
        try:
            parse_spiffe_id(target.identity)
        except SpiffeIdError as exc:
            raise ConfigError(f"{path}: outbound[{n}].identity: {exc}") from None
    for where, address in addresses:
        if not 1 <= split_host_port(address)[1] <= 65535:
            raise ConfigError(f"{path}: {where}: {address} needs a port from 1 to 65535")


def outbound_listeners(outbound: list[Outbound]) -> dict[str, list[Outbound]]:
    """The outbound entries by `listen` address, in config order: several on one address
    share that listener, routed by Host (proxy/routing.py)."""
    listeners: dict[str, list[Outbound]] = {}
    for target in outbound:
        listeners.setdefault(target.listen, []).append(target)
    return listeners


def split_host_port(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host, int(port)
