"""Istio ``security.istio.io`` policy documents → frozen values (auditmesh.policy.model).

Place in the house: the meaning of policy YAML. It builds AuthorizationPolicy and
PeerAuthentication values (``v1`` and ``v1beta1``) from the documents that
:mod:`auditmesh.policy.documents` reads, validating them as Istio's admission webhook does
(``pkg/config/validation``, ``pkg/config/security``), with one difference: a field or ``when``
key auditmesh does not implement is a load error naming file, document and field path — Istio
would ignore it, we never do. :mod:`auditmesh.policy.engine` compiles these values and
:mod:`auditmesh.policy.peerauth` resolves mTLS modes from them.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, cast

from auditmesh.policy.documents import Fields, Origin, read_documents, yaml_files
from auditmesh.policy.rules import Rule, parse_rule

ROOT_NAMESPACE = "istio-system"
GROUP = "security.istio.io"
VERSIONS = ("v1", "v1beta1")
DRY_RUN_ANNOTATION = "istio.io/dry-run"

Action = Literal["ALLOW", "DENY", "AUDIT"]
MtlsMode = Literal["UNSET", "DISABLE", "PERMISSIVE", "STRICT"]
Labels = tuple[tuple[str, str], ...]
"""Label pairs sorted by key: hashable, so a selector or a workload can key a cache."""


def labels_key(labels: Mapping[str, str]) -> Labels:
    return tuple(sorted(labels.items()))


def selects(selector: Labels | None, labels: Mapping[str, str]) -> bool:
    """Istio WorkloadSelector: every ``matchLabels`` pair is among the workload's labels."""
    return selector is None or all(labels.get(k) == v for k, v in selector)


@dataclass(frozen=True, slots=True)
class AuthorizationPolicy:
    namespace: str
    name: str
    action: Action
    selector: Labels | None
    rules: tuple[Rule, ...]
    dry_run: bool
    origin: Origin

    @property
    def key(self) -> str:
        """``ns/name``, the policy's name in decisions and audit events."""
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class PeerAuthentication:
    namespace: str
    name: str
    selector: Labels | None
    mode: MtlsMode
    port_modes: tuple[tuple[int, MtlsMode], ...]
    created: datetime.datetime | None
    origin: Origin

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class Skipped:
    """A document of another Kubernetes kind, left out of the set (``policy check`` says so)."""

    origin: Origin
    api_version: str
    kind: str


@dataclass(frozen=True, slots=True)
class PolicySet:
    authorization: tuple[AuthorizationPolicy, ...]
    peer_authentication: tuple[PeerAuthentication, ...] = ()
    skipped: tuple[Skipped, ...] = ()
    files: tuple[str, ...] = ()
    root_namespace: str = ROOT_NAMESPACE


def load_policies(
    path: str | Path,
    *,
    root_namespace: str = ROOT_NAMESPACE,
    default_namespace: str | None = None,
    contents: Mapping[Path, bytes] | None = None,
) -> PolicySet:
    """Load every policy under ``path`` (a YAML file, or a directory searched recursively).

    ``default_namespace`` plays ``kubectl apply -n`` for documents without
    ``metadata.namespace``; without it such a document is an error. ``contents``: the files
    of ``path`` (``yaml_files`` order) already read, so a caller that hashes the bytes parses
    the very same ones. Raises PolicyLoadError.
    """
    authz: list[AuthorizationPolicy] = []
    peer: list[PeerAuthentication] = []
    skipped: list[Skipped] = []
    seen: dict[tuple[str, str], Origin] = {}
    files = yaml_files(Path(path)) if contents is None else list(contents)
    for file in files:
        for origin, document in read_documents(file, None if contents is None else contents[file]):
            for fields, obj in _objects(Fields(origin), document, ""):
                item = _parse_object(fields, obj, default_namespace, root_namespace)
                if isinstance(item, Skipped):
                    skipped.append(item)
                    continue
                ident = (type(item).__name__, item.key)
                if ident in seen:
                    fields.fail(
                        "metadata.name", f"{ident[0]} {item.key} is also defined in {seen[ident]}"
                    )
                seen[ident] = origin
                if isinstance(item, AuthorizationPolicy):
                    authz.append(item)
                else:
                    peer.append(item)
    return PolicySet(
        tuple(authz), tuple(peer), tuple(skipped), tuple(map(str, files)), root_namespace
    )


def _objects(
    fields: Fields, document: object, path: str
) -> Iterator[tuple[Fields, dict[str, object]]]:
    """The Kubernetes objects in one document; a ``kind: List`` (kubectl get -o yaml) is opened."""
    obj = fields.mapping(document, path.rstrip(".") or "(document)")
    if obj.get("kind") == "List" and isinstance(obj.get("apiVersion"), str):
        for index, item in enumerate(fields.items(obj.get("items"), f"{path}items")):
            yield from _objects(fields, item, f"{path}items[{index}].")
        return
    yield fields.at(path), obj


def _parse_object(
    fields: Fields, obj: dict[str, object], default_ns: str | None, root_ns: str
) -> AuthorizationPolicy | PeerAuthentication | Skipped:
    api_version, kind = obj.get("apiVersion"), obj.get("kind")
    if not isinstance(api_version, str) or not isinstance(kind, str):
        fields.fail("", "not a Kubernetes object (apiVersion and kind must be strings)")
    group, _, version = api_version.rpartition("/")
    if kind not in ("AuthorizationPolicy", "PeerAuthentication"):
        if group == GROUP and kind not in OTHER_SECURITY_KINDS:
            # A misspelt kind would otherwise drop a policy from the set without a word.
            fields.fail("kind", f"{kind!r} is not a kind of {GROUP} (AuthorizationPolicy?)")
        return Skipped(fields.origin, api_version, kind)
    if group != GROUP or version not in VERSIONS:
        fields.fail("apiVersion", f"{api_version!r} is not supported (use {GROUP}/v1 or v1beta1)")
    fields.check_keys(obj, "", ("apiVersion", "kind", "metadata", "spec", "status"))
    meta = fields.mapping(obj.get("metadata"), "metadata")
    name = fields.string(meta.get("name"), "metadata.name")
    namespace = meta.get("namespace", default_ns)
    if namespace is None:
        fields.fail("metadata.namespace", "required (or pass --namespace, like kubectl apply -n)")
    namespace = fields.string(namespace, "metadata.namespace")
    for value, where in ((name, "metadata.name"), (namespace, "metadata.namespace")):
        if not value:
            # The Kubernetes API server refuses an object with an empty name or namespace.
            fields.fail(where, "must not be empty")
    spec = fields.mapping({} if obj.get("spec") is None else obj["spec"], "spec")
    if kind == "AuthorizationPolicy":
        return _authorization_policy(fields, meta, namespace, name, spec)
    return _peer_authentication(fields, meta, namespace, name, spec, root_ns)


_TARGET = "it binds Gateway API resources; auditmesh scopes policies with selector.matchLabels"
OTHER_SECURITY_KINDS = ("RequestAuthentication",)  # skipped like any other kind
UNSUPPORTED_SPEC = {"targetRef": _TARGET, "targetRefs": _TARGET, "provider": "CUSTOM only"}
_GO_BOOLS = {"1": True, "t": True, "T": True, "TRUE": True, "true": True, "True": True}
_GO_BOOLS |= {"0": False, "f": False, "F": False, "FALSE": False, "false": False, "False": False}


def _authorization_policy(
    fields: Fields, meta: dict[str, object], namespace: str, name: str, spec: dict[str, object]
) -> AuthorizationPolicy:
    annotations = fields.string_map(meta.get("annotations"), "metadata.annotations")
    dry_run = False
    if DRY_RUN_ANNOTATION in annotations:
        # Istio reads the annotation with Go's strconv.ParseBool.
        text = annotations[DRY_RUN_ANNOTATION]
        if text not in _GO_BOOLS:
            fields.fail(
                f"metadata.annotations[{DRY_RUN_ANNOTATION}]",
                f'expected "true" or "false", got {text!r}',
            )
        dry_run = _GO_BOOLS[text]
    action = fields.choice(spec.get("action", "ALLOW"), "spec.action", "ALLOW, DENY or AUDIT")
    if action == "CUSTOM":
        fields.fail(
            "spec.action",
            "CUSTOM (external authorization) is not supported by auditmesh; "
            "use ALLOW, DENY or AUDIT",
        )
    if action not in ("ALLOW", "DENY", "AUDIT"):
        fields.fail("spec.action", f"unknown action {action!r} (expected ALLOW, DENY or AUDIT)")
    fields.check_keys(spec, "spec", ("action", "selector", "rules"), UNSUPPORTED_SPEC)
    selector = _selector(fields, spec.get("selector"))
    rules = tuple(
        parse_rule(fields, item, f"spec.rules[{i}]")
        for i, item in enumerate(fields.items(spec.get("rules"), "spec.rules"))
    )
    return AuthorizationPolicy(
        namespace, name, cast(Action, action), selector, rules, dry_run, fields.origin
    )


def _selector(fields: Fields, value: object) -> Labels | None:
    if value is None:
        return None
    selector = fields.mapping(value, "spec.selector")
    fields.check_keys(selector, "spec.selector", ("matchLabels",))
    labels = fields.string_map(selector.get("matchLabels"), "spec.selector.matchLabels")
    return labels_key(labels) or None


def _peer_authentication(
    fields: Fields,
    meta: dict[str, object],
    namespace: str,
    name: str,
    spec: dict[str, object],
    root_ns: str,
) -> PeerAuthentication:
    fields.check_keys(spec, "spec", ("selector", "mtls", "portLevelMtls"))
    selector = _selector(fields, spec.get("selector"))
    if selector is not None and namespace == root_ns:
        # Istio's ComposePeerAuthentication skips root-namespace policies with a selector.
        fields.fail(
            "spec.selector",
            f"Istio ignores a selector on a PeerAuthentication in the root namespace {root_ns!r}; "
            "put the policy in the workload's namespace",
        )
    mode = _mtls_mode(fields, spec.get("mtls"), "spec.mtls")
    ports: list[tuple[int, MtlsMode]] = []
    raw_ports = spec.get("portLevelMtls")
    if raw_ports is not None:
        if selector is None:
            fields.fail("spec.portLevelMtls", "requires a workload selector (Istio validation)")
        if not isinstance(raw_ports, dict):
            fields.fail("spec.portLevelMtls", "expected a mapping of port to mtls")
        # Keys are written as numbers in Istio's examples (map<uint32, MTLS>).
        for port, value in raw_ports.items():
            where = f"spec.portLevelMtls[{port}]"
            text = str(port)
            # isascii: isdigit() is also true of "²", which int() refuses; the length check
            # keeps int() from a string of over 4300 digits, which it refuses too.
            digits = text.isascii() and text.isdigit() and len(text.lstrip("0")) <= 5
            if not digits or not 1 <= int(text) <= 65535:
                fields.fail(where, "port must be a number in [1, 65535]")
            if any(int(text) == seen for seen, _ in ports):
                fields.fail(where, "port given twice (as a number and as a string?)")
            ports.append((int(text), _mtls_mode(fields, value, where)))
    return PeerAuthentication(
        namespace,
        name,
        selector,
        mode,
        tuple(sorted(ports)),
        _timestamp(fields, meta.get("creationTimestamp")),
        fields.origin,
    )


def _mtls_mode(fields: Fields, value: object, path: str) -> MtlsMode:
    if value is None:
        return "UNSET"
    mtls = fields.mapping(value, path)
    fields.check_keys(mtls, path, ("mode",))
    mode = fields.choice(
        mtls.get("mode", "UNSET"), f"{path}.mode", "STRICT, PERMISSIVE, DISABLE or UNSET"
    )
    if mode not in ("UNSET", "DISABLE", "PERMISSIVE", "STRICT"):
        fields.fail(
            f"{path}.mode", f"unknown mode {mode!r} (expected STRICT, PERMISSIVE, DISABLE or UNSET)"
        )
    return cast(MtlsMode, mode)


def _timestamp(fields: Fields, value: object) -> datetime.datetime | None:
    """metadata.creationTimestamp: Istio picks the oldest of competing PeerAuthentications."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.datetime.fromisoformat(value)
        except ValueError:
            fields.fail("metadata.creationTimestamp", f"not an RFC 3339 time: {value!r}")
    if not isinstance(value, datetime.datetime):
        fields.fail("metadata.creationTimestamp", "expected an RFC 3339 time")
    return value if value.tzinfo else value.replace(tzinfo=datetime.UTC)
