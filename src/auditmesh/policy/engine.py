"""Compiled Istio authorization: policy set + request → Decision (auditmesh.policy.engine).

Place in the house: pure evaluation between :mod:`auditmesh.policy.model` (what the policies say)
and the enforcers (sidecar inbound, ``policy eval``, later ``policy replay``). A
:class:`PolicyEngine` is built once per policy set; per workload it selects the applicable
policies (Istio scoping: the workload's namespace plus the root namespace, ``selector``
⊆ workload labels) and :mod:`auditmesh.policy.compiler` turns them into one function per
protocol; workloads with the same applicable policies share it.

Semantics, the evaluation steps of the Istio AuthorizationPolicy reference (step 1, CUSTOM, is
refused at load): 2. any DENY policy matches → deny; 3. no ALLOW policy for the workload →
allow; 4. any ALLOW policy matches → allow; 5. deny. AUDIT policies only set ``audit``.
A policy matches when one of its rules matches; no rules never matches (so ``spec: {}``, an
ALLOW policy without rules, denies everything), ``rules: [{}]`` matches everything.

For a TCP connection (``Request.http`` false) HTTP-only attributes (hosts, methods, paths,
request.headers) cannot be evaluated; as Istio's ``checkError`` does, such a rule is dropped from
an ALLOW policy (less is allowed) and the attribute is ignored in a DENY/AUDIT policy (more is
denied). The first matching policy is reported in (namespace, name, rule index) order.
Dry-run policies (``istio.io/dry-run: "true"``) are left out of the decision; when a workload
has any, ``Decision.dry_run`` is the decision with them enforced alongside the others.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence

from auditmesh.policy.compiler import Branch, compile_evaluator
from auditmesh.policy.matchers import DEFAULT_TRUST_DOMAIN
from auditmesh.policy.model import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    Labels,
    PolicySet,
    labels_key,
    selects,
)
from auditmesh.policy.request import Decision, DryRun, Request, Verdict

Outcome = tuple[Verdict, str | None, int | None]
ALLOWED_NO_POLICY = -1  # no ALLOW policy applies: allow (reference step 3)
DENIED_NO_MATCH = -2  # ALLOW policies apply, none matched: deny (reference step 5)
NO_AUDIT = -3
_DEFAULTS: dict[int, Outcome] = {
    ALLOWED_NO_POLICY: ("allow", None, None),
    DENIED_NO_MATCH: ("deny", None, None),
}


def _decision_section(
    policies: Sequence[AuthorizationPolicy], outcomes: list[Outcome]
) -> tuple[list[Branch], int]:
    """Reference steps 2–5 as one first-match list: DENY rules, then (if any) ALLOW rules."""
    deny: list[Branch] = []
    allow: list[Branch] = []
    for policy in policies:
        if policy.action == "AUDIT":
            continue
        for index, rule in enumerate(policy.rules):
            target = deny if policy.action == "DENY" else allow
            target.append((policy.action, rule, len(outcomes)))
            outcomes.append(("deny" if policy.action == "DENY" else "allow", policy.key, index))
    if any(p.action == "ALLOW" for p in policies):
        return deny + allow, DENIED_NO_MATCH
    return deny, ALLOWED_NO_POLICY


def _audit_section(
    policies: Sequence[AuthorizationPolicy], outcomes: list[Outcome]
) -> tuple[list[Branch], int]:
    branches: list[Branch] = []
    for policy in policies:
        if policy.action == "AUDIT":
            for index, rule in enumerate(policy.rules):
                branches.append(("AUDIT", rule, len(outcomes)))
                outcomes.append(("allow", policy.key, index))
    return branches, NO_AUDIT


class WorkloadAuthorizer:
    """The decision function of one workload; what the sidecar holds for its inbound listener.

    Policies are taken in (namespace, name) order, rules in index order: the first matching
    rule is the one a Decision reports.
    """

    def __init__(
        self,
        policies: Sequence[AuthorizationPolicy],
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> None:
        self.policies = tuple(sorted(policies, key=lambda p: (p.namespace, p.name)))
        enforced = [p for p in self.policies if not p.dry_run]
        self._outcomes: list[Outcome] = []
        sections = [
            _decision_section(enforced, self._outcomes),
            _audit_section(enforced, self._outcomes),
        ]
        self.has_dry_run = len(enforced) < len(self.policies)
        if self.has_dry_run:
            sections.append(_decision_section(self.policies, self._outcomes))
        self._cache: dict[tuple[int, ...], Decision] = {}
        # Indexed by Request.http: (TCP evaluator, HTTP evaluator).
        self.evaluators: tuple[Callable[[Request], Decision], Callable[[Request], Decision]] = (
            compile_evaluator(False, sections, self._cache, self._build, trust_domain),
            compile_evaluator(True, sections, self._cache, self._build, trust_domain),
        )

    def evaluate(self, request: Request) -> Decision:
        return self.evaluators[request.http](request)

    def _outcome(self, index: int) -> Outcome:
        return _DEFAULTS.get(index) or self._outcomes[index]

    def _build(self, key: tuple[int, ...]) -> Decision:
        verdict, policy, rule = self._outcome(key[0])
        audit = key[1] != NO_AUDIT
        _, audit_policy, audit_rule = self._outcomes[key[1]] if audit else ("", None, None)
        dry_run = DryRun(*self._outcome(key[2])) if self.has_dry_run else None
        decision = Decision(verdict, policy, rule, audit, audit_policy, audit_rule, dry_run)
        if len(self._cache) < 65536:  # bounded: keys are policy × audit × dry-run outcomes
            self._cache[key] = decision
        return decision


class PolicyEngine:
    """A compiled policy set; build a new one when the policies change.

    Per-workload compilation is lazy and cached; the caches are filled idempotently, so one
    engine can be shared by threads.
    """

    def __init__(
        self,
        policies: PolicySet | Iterable[AuthorizationPolicy],
        root_namespace: str | None = None,
        *,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
    ) -> None:
        if isinstance(policies, PolicySet):
            root_namespace = root_namespace or policies.root_namespace
            policies = policies.authorization
        self.root_namespace = root_namespace or ROOT_NAMESPACE
        self.trust_domain = trust_domain  # the mesh's own: what `cluster.local/…` principals name
        self.policies = tuple(policies)
        self._by_namespace: dict[str, list[AuthorizationPolicy]] = {}
        for policy in self.policies:
            self._by_namespace.setdefault(policy.namespace, []).append(policy)
        self._workloads: dict[tuple[str, Labels], WorkloadAuthorizer] = {}
        self._evaluators: dict[str, tuple[Callable[[Request], Decision], ...]] = {}
        self._compiled: dict[tuple[int, ...], WorkloadAuthorizer] = {}
        self._index = {id(p): i for i, p in enumerate(self.policies)}

    def applicable(self, namespace: str, labels: Mapping[str, str]) -> list[AuthorizationPolicy]:
        """Istio scoping: the workload's namespace and the root namespace, selector ⊆ labels."""
        spaces = {namespace, self.root_namespace}
        return [
            p
            for ns in sorted(spaces)
            for p in self._by_namespace.get(ns, ())
            if selects(p.selector, labels)
        ]

    def for_workload(
        self, namespace: str, labels: Mapping[str, str] | Labels
    ) -> WorkloadAuthorizer:
        key = (namespace, labels if isinstance(labels, tuple) else labels_key(labels))
        authorizer = self._workloads.get(key)
        if authorizer is None:
            # Pods differ in labels (pod-template-hash, ...) far more often than in policies.
            applicable = self.applicable(namespace, dict(key[1]))
            identity = tuple(self._index[id(p)] for p in applicable)
            authorizer = self._compiled.get(identity)
            if authorizer is None:
                authorizer = self._compiled[identity] = WorkloadAuthorizer(
                    applicable, self.trust_domain
                )
            self._workloads[key] = authorizer
        return authorizer

    def evaluate(self, request: Request) -> Decision:
        evaluators = self._evaluators.get(request.workload_key)
        if evaluators is None:
            authorizer = self.for_workload(
                request.destination_namespace, request.destination_labels
            )
            evaluators = self._evaluators[request.workload_key] = authorizer.evaluators
        return evaluators[request.http](request)
