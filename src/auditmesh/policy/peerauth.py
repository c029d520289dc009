"""PeerAuthentication: which mTLS mode a workload's inbound port runs (auditmesh.policy.peerauth).

Place in the house: pure resolution over :class:`auditmesh.policy.model.PeerAuthentication`
values; the sidecar's inbound listener asks :meth:`MtlsResolver.mode` once per port and then
:func:`accepts` per connection. Follows Istio's ``ComposePeerAuthentication``
(``pilot/pkg/model/authentication.go``) and the PeerAuthentication reference:

- candidates: the root namespace's policy without selector (mesh), the workload namespace's
  policy without selector (namespace), and the namespace's policies whose selector matches the
  workload (workload). Root-namespace policies with a selector are ignored by Istio, so
  :mod:`~auditmesh.policy.model` refuses them.
- at each level the oldest policy wins (``creationTimestamp``, then name).
- the mode starts PERMISSIVE and each level that is not UNSET overrides it: mesh < namespace <
  workload; ``portLevelMtls`` of the workload policy overrides per port, UNSET inheriting.
"""

from __future__ import annotations

import datetime
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Literal

from auditmesh.policy.model import (
    ROOT_NAMESPACE,
    PeerAuthentication,
    PolicySet,
    selects,
)

Mode = Literal["STRICT", "PERMISSIVE", "DISABLE"]
DEFAULT_MODE: Mode = "PERMISSIVE"  # Istio's default with no PeerAuthentication at all
_EPOCH_END = datetime.datetime.max.replace(tzinfo=datetime.UTC)


@dataclass(frozen=True, slots=True)
class MtlsDecision:
    """The effective mode and the policy (``ns/name``) that set it, None for the default."""

    mode: Mode
    policy: str | None
    level: Literal["default", "mesh", "namespace", "workload", "port"]


def accepts(mode: Mode, *, mtls: bool) -> bool:
    """Whether an inbound connection is accepted: STRICT takes only mTLS, DISABLE only
    plaintext (the sidecar does not terminate TLS), PERMISSIVE both."""
    if mode == "STRICT":
        return mtls
    if mode == "DISABLE":
        return not mtls
    return True


def _age(policy: PeerAuthentication) -> tuple[datetime.datetime, str]:
    return (policy.created or _EPOCH_END, policy.name)


class MtlsResolver:
    """Resolves modes over one policy set; build a new one when policies change."""

    def __init__(
        self,
        policies: PolicySet | Iterable[PeerAuthentication],
        root_namespace: str | None = None,
    ) -> None:
        if isinstance(policies, PolicySet):
            root_namespace = root_namespace or policies.root_namespace
            policies = policies.peer_authentication
        self.root_namespace = root_namespace or ROOT_NAMESPACE
        self._by_namespace: dict[str, list[PeerAuthentication]] = {}
        for policy in sorted(policies, key=_age):
            self._by_namespace.setdefault(policy.namespace, []).append(policy)

    def _oldest(
        self, namespace: str, labels: Mapping[str, str] | None
    ) -> PeerAuthentication | None:
        """The oldest policy of ``namespace`` without selector (labels None) or selecting them."""
        for policy in self._by_namespace.get(namespace, ()):
            if labels is None and policy.selector is None:
                return policy
            if (
                labels is not None
                and policy.selector is not None
                and selects(policy.selector, labels)
            ):
                return policy
        return None

    def workload_policy(
        self, namespace: str, labels: Mapping[str, str]
    ) -> PeerAuthentication | None:
        """The workload-level policy (selector matching ``labels``) in effect, if any."""
        return self._oldest(namespace, labels)

    def conflicts(self) -> list[tuple[PeerAuthentication, PeerAuthentication]]:
        """Pairs at the same level where the second is shadowed by the first (for ``check``)."""
        found = []
        for policies in self._by_namespace.values():
            wide = [p for p in policies if p.selector is None]
            found += [(wide[0], p) for p in wide[1:]]
            by_selector: dict[object, PeerAuthentication] = {}
            for p in policies:
                if p.selector is not None:
                    if p.selector in by_selector:
                        found.append((by_selector[p.selector], p))
                    by_selector.setdefault(p.selector, p)
        return found

    def mode(
        self, namespace: str, labels: Mapping[str, str], port: int | None = None
    ) -> MtlsDecision:
        """The effective mode for a workload, and for one of its ports when ``port`` is given."""
        result = MtlsDecision(DEFAULT_MODE, None, "default")
        levels: list[tuple[Literal["mesh", "namespace", "workload"], PeerAuthentication | None]] = [
            ("mesh", self._oldest(self.root_namespace, None)),
            (
                "namespace",
                self._oldest(namespace, None) if namespace != self.root_namespace else None,
            ),
            ("workload", self._oldest(namespace, labels)),
        ]
        for level, policy in levels:
            if policy is not None and policy.mode != "UNSET":
                result = MtlsDecision(policy.mode, policy.key, level)
        workload = levels[2][1]
        if port is not None and workload is not None:
            for number, mode in workload.port_modes:
                if number == port and mode != "UNSET":  # UNSET inherits the workload mode
                    result = MtlsDecision(mode, workload.key, "port")
        return result
