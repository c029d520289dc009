"""A candidate policy set over recorded calls: what would change (auditmesh.policy.replay).

Place in the house: a reader of the ledger, next to :mod:`auditmesh.policy.engine`. Pure: it
takes decoded :class:`~auditmesh.events.AuditEvent` values and returns a :class:`ReplayReport`;
``auditmesh policy replay`` (:mod:`auditmesh.cli.policy`) reads the ledger, shows progress and
prints. Nothing here writes anywhere — replay never touches the log (DESIGN.md: data flows one
way). :mod:`auditmesh.policy.generate` builds on the same :func:`inbound_call`.

What is replayed: inbound ``http``/``tcp`` events with a destination namespace — those our
sidecars report (``attested``) and those ingested from Envoy/Linkerd/OTLP alike. Each becomes
the :class:`~auditmesh.policy.request.Request` the destination's sidecar would have evaluated:
source principal (the SPIFFE ID, which Istio writes without ``spiffe://``) and IP, destination
IP, port and host, HTTP method and path. The recorded decision is ``authz.decision``; an event
without ``authz`` was allowed (no policy was in force), ``audit`` is an allow.

Workload labels, which selectors match against (Istio ``WorkloadSelector``), are not recorded in
events: they come from a ``namespace/service → labels`` mapping (``--workloads FILE``), and a
workload missing from it is taken to carry ``{app: <service>}``, the label Istio's own samples
select on.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from auditmesh.events import AuditEvent
from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.matchers import IPAddress
from auditmesh.policy.model import AuthorizationPolicy
from auditmesh.policy.request import Decision, Request, Verdict

Workloads = Mapping[str, Mapping[str, str]]
"""``"namespace/service"`` → that workload's labels."""

NO_ALLOW_MATCHED = "no ALLOW policy matched"
NO_ALLOW_POLICY = "no ALLOW policy applies to the workload"
DEFAULT_EXAMPLES = 3


class WorkloadsError(ValueError):
    """A workloads mapping that is not ``{"namespace/service": {label: value}}``."""


def parse_workloads(obj: object) -> dict[str, dict[str, str]]:
    """Validate a loaded ``--workloads`` document: ``namespace/service: {key: value, ...}``.

    Labels must be non-empty: a workload without labels is selected by no selector, so a
    generated policy for it would have to be namespace-wide.
    """
    if obj is None:
        return {}
    if not isinstance(obj, dict):
        raise WorkloadsError("expected a mapping of namespace/service to labels")
    result: dict[str, dict[str, str]] = {}
    for key, labels in obj.items():
        if not isinstance(key, str) or key.count("/") != 1 or "" in key.split("/"):
            raise WorkloadsError(f"{key!r}: expected a key of the form namespace/service")
        if not isinstance(labels, dict) or not labels:
            raise WorkloadsError(f"{key}: expected a non-empty mapping of label to value")
        for name, value in labels.items():
            if not isinstance(name, str) or not isinstance(value, str):
                raise WorkloadsError(
                    f"{key}: label {name!r}: keys and values must be strings (quote numbers)"
                )
        result[key] = dict(labels)
    return result


def workload_labels(namespace: str, service: str | None, workloads: Workloads) -> dict[str, str]:
    """The labels of ``namespace/service``: from ``workloads``, else ``{app: service}``."""
    if service is None:
        return {}
    labels = workloads.get(f"{namespace}/{service}")
    return dict(labels) if labels is not None else {"app": service}


@dataclass(frozen=True, slots=True)
class Call:
    """One recorded inbound call, as the destination's authorization policy sees it."""

    index: int  # ledger index
    event_id: str
    source: str  # for people: the SPIFFE ID, or "unauthenticated <ip>"
    namespace: str
    service: str | None
    request: Request
    recorded: Verdict
    attested: bool

    @property
    def destination(self) -> str:
        return f"{self.namespace}/{self.service or '(unnamed workload)'}"


@functools.lru_cache(maxsize=1 << 16)
def _ip(text: str | None) -> IPAddress | None:
    """The address, parsed once per distinct text (the bulk of a replay's time otherwise); an
    unparseable one is treated as unknown."""
    if text is None:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def inbound_call(index: int, event: AuditEvent, workloads: Workloads) -> Call | None:
    """The call an inbound http/tcp event records, or None for any other event."""
    if event.direction != "inbound" or event.kind not in ("http", "tcp"):
        return None
    dst = event.destination
    if dst is None or dst.namespace is None:
        return None
    src = event.source
    principal = None if src is None else src.identity
    source_ip = None if src is None else _ip(src.ip)
    http = event.http if event.kind == "http" else None
    request = Request.of(
        destination_namespace=dst.namespace,
        destination_labels=workload_labels(dst.namespace, dst.service, workloads),
        # Request.of strips spiffe:// and derives source.namespace from the principal, as Istio
        # does: an unauthenticated peer has no namespace, whatever the event says.
        source_principal=principal,
        source_ip=source_ip,
        destination_ip=_ip(dst.ip),
        destination_port=dst.port,
        http=event.kind == "http",
        method=None if http is None else http.method,
        path=None if http is None else http.path,
        host=dst.host if event.kind == "http" else None,
    )
    recorded: Verdict = (
        "deny" if event.authz is not None and event.authz.decision == "deny" else ("allow")
    )
    address = None if src is None else src.ip
    shown = principal or f"unauthenticated {address or '(no address)'}"
    return Call(
        index, event.id, shown, dst.namespace, dst.service, request, recorded, event.attested
    )


@dataclass(frozen=True, slots=True)
class Change:
    """Calls whose decision would change, grouped by source → destination and deciding rule."""

    source: str
    destination: str
    policy: str | None
    rule: int | None
    reason: str
    count: int
    examples: tuple[str, ...]  # event ids, in ledger order

    def to_json(self) -> dict[str, object]:
        return {
            "source": self.source,
            "destination": self.destination,
            "policy": self.policy,
            "rule": self.rule,
            "reason": self.reason,
            "count": self.count,
            "examples": list(self.examples),
        }


@dataclass(frozen=True, slots=True)
class ReplayReport:
    events: int  # events of the window read
    calls: int  # inbound calls replayed
    attested: int  # of which observed by our own sidecars
    recorded_allowed: int
    recorded_denied: int
    newly_denied: tuple[Change, ...]
    newly_allowed: tuple[Change, ...]
    caveats: tuple[str, ...]

    @property
    def newly_denied_calls(self) -> int:
        return sum(c.count for c in self.newly_denied)

    @property
    def newly_allowed_calls(self) -> int:
        return sum(c.count for c in self.newly_allowed)

    @property
    def unchanged(self) -> int:
        return self.calls - self.newly_denied_calls - self.newly_allowed_calls

    def to_json(self) -> dict[str, object]:
        denied, allowed = self.newly_denied_calls, self.newly_allowed_calls
        return {
            "totals": {
                "events": self.events,
                "calls": self.calls,
                "attested": self.attested,
                "recorded": {"allow": self.recorded_allowed, "deny": self.recorded_denied},
                "candidate": {
                    "allow": self.recorded_allowed - denied + allowed,
                    "deny": self.recorded_denied - allowed + denied,
                },
                "newly_denied": denied,
                "newly_allowed": allowed,
                "unchanged": self.unchanged,
            },
            "newly_denied": [c.to_json() for c in self.newly_denied],
            "newly_allowed": [c.to_json() for c in self.newly_allowed],
            "caveats": list(self.caveats),
        }


@dataclass(slots=True)
class _Group:
    count: int = 0
    examples: list[str] = field(default_factory=list)


GroupKey = tuple[str, str, str | None, int | None, str]


class Replay:
    """Feed events with :meth:`add`, in ledger order; :meth:`report` at any point.

    ``enforce_dry_run``: decide with the ``istio.io/dry-run`` policies enforced too (the
    Decision's dry-run result), to try out policies written for a dry run.
    """

    def __init__(
        self,
        engine: PolicyEngine,
        workloads: Workloads | None = None,
        *,
        enforce_dry_run: bool = False,
        examples: int = DEFAULT_EXAMPLES,
    ) -> None:
        self.engine = engine
        self.workloads: Workloads = workloads or {}
        self.enforce_dry_run = enforce_dry_run
        self.examples = examples
        self.events = 0
        self.calls = 0
        self.attested = 0
        self.recorded = {"allow": 0, "deny": 0}
        self._denied: dict[GroupKey, _Group] = {}
        self._allowed: dict[GroupKey, _Group] = {}
        self._missing = {"host": 0, "port": 0, "destination.ip": 0}

    def add(self, index: int, event: AuditEvent) -> Call | None:
        self.events += 1
        call = inbound_call(index, event, self.workloads)
        if call is None:
            return None
        self.calls += 1
        self.attested += call.attested
        self.recorded[call.recorded] += 1
        request = call.request
        if request.http and request.host is None:
            self._missing["host"] += 1
        if request.destination_port is None:
            self._missing["port"] += 1
        if request.destination_ip is None:
            self._missing["destination.ip"] += 1
        verdict, policy, rule = self.decide(request)
        if verdict != call.recorded:
            groups = self._denied if verdict == "deny" else self._allowed
            reason = _reason(verdict, policy, rule)
            group = groups.setdefault(
                (call.source, call.destination, policy, rule, reason), _Group()
            )
            group.count += 1
            if len(group.examples) < self.examples:
                group.examples.append(call.event_id)
        return call

    def decide(self, request: Request) -> tuple[Verdict, str | None, int | None]:
        decision: Decision = self.engine.evaluate(request)
        if self.enforce_dry_run and decision.dry_run is not None:
            dry = decision.dry_run
            return dry.decision, dry.policy, dry.rule
        return decision.decision, decision.policy, decision.rule

    def report(self) -> ReplayReport:
        return ReplayReport(
            self.events,
            self.calls,
            self.attested,
            self.recorded["allow"],
            self.recorded["deny"],
            _changes(self._denied),
            _changes(self._allowed),
            self._caveats(),
        )

    def _caveats(self) -> tuple[str, ...]:
        """Attributes the policies test that the recorded events do not (all) carry."""
        used = _attributes(self.engine.policies)
        notes = []
        for attribute, what in (
            ("request.headers", "request headers"),
            ("connection.sni", "the TLS SNI"),
        ):
            for where in used.get(attribute, ()):
                notes.append(
                    f"{where} tests {attribute}; recorded events carry no {what}, so replay "
                    "treats them as absent"
                )
        for attribute, what in (
            ("host", "host"),
            ("port", "destination port"),
            ("destination.ip", "destination IP"),
        ):
            missing = self._missing[attribute]
            if missing and attribute in used:
                first = used[attribute][0]
                more = len(used[attribute]) - 1
                also = f" (and {more} more)" if more else ""
                notes.append(
                    f"{missing} of {self.calls} calls have no recorded {what}, which "
                    f"{first}{also} tests; replay treats it as absent"
                )
        return tuple(notes)


def replay(
    engine: PolicyEngine,
    events: Iterable[tuple[int, AuditEvent]],
    workloads: Workloads | None = None,
    *,
    enforce_dry_run: bool = False,
    examples: int = DEFAULT_EXAMPLES,
) -> ReplayReport:
    """Replay ``(ledger index, event)`` pairs against ``engine``; see :class:`Replay`."""
    run = Replay(engine, workloads, enforce_dry_run=enforce_dry_run, examples=examples)
    for index, event in events:
        run.add(index, event)
    return run.report()


def _reason(verdict: Verdict, policy: str | None, rule: int | None) -> str:
    # Istio AuthorizationPolicy reference, evaluation steps 2–5: a named policy on a deny is a
    # DENY policy (step 2); no name means step 5 (deny) or step 3 (allow).
    if policy is None:
        return NO_ALLOW_MATCHED if verdict == "deny" else NO_ALLOW_POLICY
    action = "DENY" if verdict == "deny" else "ALLOW"
    return f"{action} {policy} rule {rule}"


def _changes(groups: dict[GroupKey, _Group]) -> tuple[Change, ...]:
    changes = [
        Change(source, destination, policy, rule, reason, group.count, tuple(group.examples))
        for (source, destination, policy, rule, reason), group in groups.items()
    ]
    changes.sort(key=lambda c: (-c.count, c.source, c.destination, c.reason))
    return tuple(changes)


def _attributes(policies: Iterable[AuthorizationPolicy]) -> dict[str, list[str]]:
    """Attribute → the policies/rules (``ns/name rule N``) that test it, for the caveats."""
    used: dict[str, list[str]] = {}

    def note(attribute: str, where: str) -> None:
        places = used.setdefault(attribute, [])
        if where not in places:
            places.append(where)

    for policy in sorted(policies, key=lambda p: (p.namespace, p.name)):
        for index, rule in enumerate(policy.rules):
            where = f"{policy.action} {policy.key} rule {index}"
            for operation in rule.operations:
                if operation.hosts or operation.not_hosts:
                    note("host", where)
                if operation.ports or operation.not_ports:
                    note("port", where)
            for condition in rule.conditions:
                if condition.header is not None:
                    note("request.headers", where)
                elif condition.key == "destination.port":
                    note("port", where)
                elif condition.key in ("connection.sni", "destination.ip"):
                    note(condition.key, where)
    return used
