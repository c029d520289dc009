"""One AuthorizationPolicy rule: its values and how it is read (auditmesh.policy.rules).

Place in the house: the part of :mod:`auditmesh.policy.model` that knows the ``rules`` schema of
the Istio AuthorizationPolicy reference (sections "Rule", "Source", "Operation", "Condition") and
the "Authorization Policy Conditions" reference. Values are validated the way Istio's webhook
does (``pkg/config/security``: empty values, IPs, ports, path templates, ``a[b]`` keys); fields and
keys auditmesh does not evaluate are refused with the reason. :mod:`auditmesh.policy.engine`
compiles the resulting :class:`Rule` values.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from auditmesh.policy.documents import Fields
from auditmesh.policy.matchers import (
    is_path_template,
    parse_ip_block,
    parse_port,
    path_template_error,
)


@dataclass(frozen=True, slots=True)
class Source:
    """Reference "Source": fields ANDed, values within a field ORed; empty = not set."""

    principals: tuple[str, ...] = ()
    not_principals: tuple[str, ...] = ()
    namespaces: tuple[str, ...] = ()
    not_namespaces: tuple[str, ...] = ()
    ip_blocks: tuple[str, ...] = ()
    not_ip_blocks: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Operation:
    """Reference "Operation": fields ANDed, values within a field ORed; empty = not set."""

    hosts: tuple[str, ...] = ()
    not_hosts: tuple[str, ...] = ()
    ports: tuple[str, ...] = ()
    not_ports: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    not_methods: tuple[str, ...] = ()
    paths: tuple[str, ...] = ()
    not_paths: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Condition:
    """Reference "Condition": one ``when`` entry; ``header`` is NAME in request.headers[NAME]."""

    key: str
    values: tuple[str, ...] = ()
    not_values: tuple[str, ...] = ()
    header: str | None = None


@dataclass(frozen=True, slots=True)
class Rule:
    """Reference "Rule": matches when one source, one operation and every condition match.

    An empty tuple means the field was not set (any source / any operation / no condition).
    """

    sources: tuple[Source, ...] = ()
    operations: tuple[Operation, ...] = ()
    conditions: tuple[Condition, ...] = ()


# Fields Istio has and auditmesh refuses, with the reason shown to the user.
_JWT = "JWT request authentication is not implemented; only mTLS peer identities are evaluated"
_REMOTE = "remote.ip comes from X-Forwarded-For or PROXY protocol, which auditmesh does not trust"
UNSUPPORTED_SOURCE = {
    "requestPrincipals": _JWT,
    "notRequestPrincipals": _JWT,
    "remoteIpBlocks": _REMOTE,
    "notRemoteIpBlocks": _REMOTE,
    "serviceAccounts": "write principals: <trust-domain>/ns/<ns>/sa/<sa> instead",
    "notServiceAccounts": "write notPrincipals: <trust-domain>/ns/<ns>/sa/<sa> instead",
}
SOURCE_FIELDS = {
    "principals": "principals",
    "notPrincipals": "not_principals",
    "namespaces": "namespaces",
    "notNamespaces": "not_namespaces",
    "ipBlocks": "ip_blocks",
    "notIpBlocks": "not_ip_blocks",
}
OPERATION_FIELDS = {
    "hosts": "hosts",
    "notHosts": "not_hosts",
    "ports": "ports",
    "notPorts": "not_ports",
    "methods": "methods",
    "notMethods": "not_methods",
    "paths": "paths",
    "notPaths": "not_paths",
}
# Conditions reference ("Authorization Policy Conditions"): the keys auditmesh evaluates.
WHEN_KEYS = (
    "source.ip",
    "source.namespace",
    "source.principal",
    "destination.ip",
    "destination.port",
    "connection.sni",
)
_WHEN_REFUSED = {
    "remote.ip": f"not supported by auditmesh ({_REMOTE})",
    "request.auth.": f"not supported by auditmesh ({_JWT})",
    "experimental.envoy.filters.": "not supported by auditmesh (Envoy metadata is not available)",
    # Istio's own validation messages for attributes that only existed in v1alpha1 RBAC.
    "destination.namespace": "attribute is replaced by the metadata.namespace (Istio validation)",
    "destination.labels": "attribute is replaced by the workload selector (Istio validation)",
    "destination.name": "deprecated attribute, only supported in v1alpha1 (Istio validation)",
    "destination.user": "deprecated attribute, only supported in v1alpha1 (Istio validation)",
}


def parse_rule(fields: Fields, value: object, path: str) -> Rule:
    """One ``spec.rules[i]`` entry at ``path``; raises PolicyLoadError."""
    if value is None:
        fields.fail(path, "a rule must not be null (write {} to match every request)")
    rule = fields.mapping(value, path)
    fields.check_keys(rule, path, ("from", "to", "when"))
    sources: list[Source] = []
    for index, item in enumerate(_non_empty(fields, rule, "from", path)):
        where = f"{path}.from[{index}]"
        wrapper = fields.mapping(item, where)
        fields.check_keys(wrapper, where, ("source",))
        where += ".source"
        sources.append(Source(**_lists(fields, wrapper.get("source"), where, SOURCE_FIELDS)))
    operations: list[Operation] = []
    for index, item in enumerate(_non_empty(fields, rule, "to", path)):
        where = f"{path}.to[{index}]"
        wrapper = fields.mapping(item, where)
        fields.check_keys(wrapper, where, ("operation",))
        where += ".operation"
        operations.append(
            Operation(**_lists(fields, wrapper.get("operation"), where, OPERATION_FIELDS))
        )
    conditions = tuple(
        _condition(fields, item, f"{path}.when[{index}]")
        for index, item in enumerate(fields.items(rule.get("when"), f"{path}.when"))
    )
    return Rule(tuple(sources), tuple(operations), conditions)


def _non_empty(fields: Fields, rule: dict[str, object], key: str, path: str) -> list[object]:
    items = fields.items(rule.get(key), f"{path}.{key}")
    if key in rule and not items:
        fields.fail(f"{path}.{key}", "must not be empty (remove it to match any)")
    return items


def _lists(
    fields: Fields, value: object, path: str, names: Mapping[str, str]
) -> dict[str, tuple[str, ...]]:
    """A Source or Operation: lists of strings, at least one set, values validated."""
    if value is None:
        fields.fail(path, "must not be null")
    mapping = fields.mapping(value, path)
    unsupported = UNSUPPORTED_SOURCE if "principals" in names else None
    fields.check_keys(mapping, path, tuple(names), unsupported)
    result = {names[k]: fields.strings(v, f"{path}.{k}") for k, v in mapping.items()}
    if not any(result.values()):
        fields.fail(path, "must not be empty (Istio validation)")
    for key in mapping:
        for index, text in enumerate(result[names[key]]):
            _check_value(fields, key, text, f"{path}.{key}[{index}]")
    return result


def _check_value(fields: Fields, key: str, text: str, path: str) -> None:
    try:
        if key in ("ipBlocks", "notIpBlocks", "source.ip", "destination.ip"):
            parse_ip_block(text)
        elif key in ("ports", "notPorts", "destination.port"):
            parse_port(text)
        elif key in ("paths", "notPaths") and is_path_template(text):
            error = path_template_error(text)
            if error:
                raise ValueError(error)
        elif key in ("principals", "notPrincipals", "source.principal") and text.startswith(
            "spiffe://"
        ):
            # Istio prepends spiffe:// itself; with it written here the value never matches.
            raise ValueError(
                "write the principal without spiffe:// (e.g. cluster.local/ns/NS/sa/SA)"
            )
    except ValueError as exc:
        fields.fail(path, str(exc))


def _condition(fields: Fields, value: object, path: str) -> Condition:
    mapping = fields.mapping(value, path)
    fields.check_keys(mapping, path, ("key", "values", "notValues"))
    key = fields.string(mapping.get("key"), f"{path}.key")
    header = None
    if key.startswith("request.headers"):
        # Istio validateMapKey: a[b] with a non-empty b.
        if not (key.startswith("request.headers[") and key.endswith("]") and len(key) > 17):
            fields.fail(f"{path}.key", f"bad key {key!r}: should be request.headers[NAME]")
        header = key[16:-1].lower()
        if header.startswith(":"):
            # Envoy matches :path, :authority and :method as headers; our requests carry them
            # as path, host and method only, so such a condition would silently never match.
            fields.fail(
                f"{path}.key",
                f"{key}: pseudo-headers are not supported; match the request with "
                "to.operation paths, hosts or methods instead",
            )
    elif key not in WHEN_KEYS:
        for prefix, reason in _WHEN_REFUSED.items():
            if key == prefix or key.startswith(prefix if prefix.endswith(".") else prefix + "["):
                fields.fail(f"{path}.key", f"{key}: {reason}")
        fields.fail(
            f"{path}.key",
            f"unknown attribute {key!r} (expected one of: "
            f"{', '.join(WHEN_KEYS)}, request.headers[NAME])",
        )
    values = fields.strings(mapping.get("values"), f"{path}.values")
    not_values = fields.strings(mapping.get("notValues"), f"{path}.notValues")
    if not values and not not_values:
        fields.fail(path, f"at least one of values or notValues must be set for key {key}")
    for field, items in (("values", values), ("notValues", not_values)):
        for index, text in enumerate(items):
            _check_value(fields, key, text, f"{path}.{field}[{index}]")
    return Condition(key, values, not_values, header)
