"""Policy in the sidecar: the compiled authorizer and mTLS mode of this workload, kept fresh.

`PolicyState` loads Istio AuthorizationPolicy and PeerAuthentication from the configured
path, compiles the decision function of this workload (namespace + labels), and reloads
when the files change. Every change of the effective policy set becomes a `policy_change`
audit event (content hash, what changed, where from), so "which policies were in force at
time T" is answered from the ledger. A set that fails to load keeps the previous one in
force and is reported, never silently half-applied; with no previous one (at start-up) the
sidecar does not start, rather than serve with no policy at all (fail closed). A path that
cannot be read for a while (renamed away and back, a directory made unreadable) is such a
refused set: reported once, the previous set enforced meanwhile, reloaded when it is back.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from auditmesh.events import AuditEvent, Authz, DryRun, Error, Peer, new_event_id
from auditmesh.policy.documents import PolicyLoadError, yaml_files
from auditmesh.policy.engine import PolicyEngine, WorkloadAuthorizer
from auditmesh.policy.matchers import DEFAULT_TRUST_DOMAIN
from auditmesh.policy.model import (
    AuthorizationPolicy,
    PeerAuthentication,
    PolicySet,
    load_policies,
    selects,
)
from auditmesh.policy.peerauth import MtlsResolver
from auditmesh.policy.request import Decision, Request


@dataclass(frozen=True, slots=True)
class Effective:
    authorizer: WorkloadAuthorizer
    mtls_mode: str | None  # None: no PeerAuthentication applies; the config decides
    digest: str  # SHA-256 over the policy files, in path order
    policies: Mapping[str, str]  # "Kind ns/name" -> digest of its parsed form
    unselected: tuple[str, ...] = ()  # see `unselected`


def unselected(
    policies: PolicySet, namespace: str, labels: Mapping[str, str], name: str | None
) -> tuple[str, ...]:
    """The policies of the workload's namespace that name it by its ``app`` label (the
    selector `policy generate` writes, ``app: <service>``) but do not select it, because the
    workload's labels differ: most likely its config left out ``labels: {app: <name>}``.
    Istio scopes by labels alone (WorkloadSelector), so these do not apply; people are told."""
    if name is None:
        return ()
    return tuple(
        f"{type(p).__name__} {p.key}"
        for p in _every(policies)
        if p.namespace == namespace
        and p.selector is not None
        and ("app", name) in p.selector
        and not selects(p.selector, labels)
    )


Snapshot = tuple[tuple[str, int, int], ...] | str  # files (name, mtime, size), or why none


def _snapshot(path: Path) -> Snapshot:
    """What the watcher compares: the files with their mtime and size, or, when the path
    cannot be read (renamed away, unlistable), the reason, so it is reported once and the
    path picked up again when it is back."""
    try:
        found = []
        for file in yaml_files(path):
            info = file.stat()
            found.append((str(file), info.st_mtime_ns, info.st_size))
        return tuple(found)
    except (PolicyLoadError, OSError) as exc:
        return str(exc)


def _read(path: Path) -> dict[Path, bytes]:
    """Every policy file's bytes, read once: the set's hash and its policies come from the
    same bytes, even when a file changes while it is loaded."""
    contents = {}
    for file in yaml_files(path):
        try:
            contents[file] = file.read_bytes()
        except OSError as exc:
            raise PolicyLoadError(f"{file}: cannot read: {exc}") from None
    return contents


def _digest(path: Path, contents: Mapping[Path, bytes]) -> str:
    hasher = hashlib.sha256()
    for file, data in contents.items():
        hasher.update(str(file.relative_to(path) if path.is_dir() else file.name).encode())
        hasher.update(b"\0" + data + b"\0")
    return hasher.hexdigest()


def _every(policies: PolicySet) -> list[AuthorizationPolicy | PeerAuthentication]:
    return [*policies.authorization, *policies.peer_authentication]


def _per_policy(policies: PolicySet) -> dict[str, str]:
    return {
        f"{type(p).__name__} {p.key}": hashlib.sha256(repr(p).encode()).hexdigest()[:16]
        for p in _every(policies)
    }


def summarize(old: Mapping[str, str], new: Mapping[str, str]) -> str:
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(k for k in set(old) & set(new) if old[k] != new[k])
    parts = [
        f"{word}: {', '.join(keys)}"
        for word, keys in (("added", added), ("removed", removed), ("changed", changed))
        if keys
    ]
    return "; ".join(parts) or "no policy changed"


class PolicyState:
    def __init__(
        self,
        path: Path,
        namespace: str,
        labels: Mapping[str, str],
        *,
        port: int | None,
        trust_domain: str = DEFAULT_TRUST_DOMAIN,
        reporter: Callable[[], str],
        local: Callable[[], Peer],
        now_ns: Callable[[], int] = time.time_ns,
    ) -> None:
        self.path = path
        self.namespace = namespace
        self.labels = dict(labels)
        self.port = port
        self.trust_domain = trust_domain
        self._reporter = reporter
        self._local = local
        self._now_ns = now_ns
        self._seen: Snapshot = ()
        self.current: Effective | None = None

    def load(self) -> AuditEvent:
        """(Re)load; returns the `policy_change` event (a failure event if the set is bad).

        Never raises: whatever goes wrong keeps the set in force (none at start-up) and is
        the failure event's message, so a watcher that calls this outlives any error."""
        self._seen = snapshot = _snapshot(self.path)
        try:
            if isinstance(snapshot, str):
                raise PolicyLoadError(snapshot)
            contents = _read(self.path)
            policies = load_policies(self.path, contents=contents)
            resolver = MtlsResolver(policies)
            decision = resolver.mode(self.namespace, self.labels, self.port)
            authorizer = PolicyEngine(policies, trust_domain=self.trust_domain).for_workload(
                self.namespace, self.labels
            )
            new = Effective(
                authorizer,
                None if decision.level == "default" else decision.mode,
                _digest(self.path, contents),
                _per_policy(policies),
                unselected(policies, self.namespace, self.labels, self._local().service),
            )
        except (PolicyLoadError, OSError) as exc:
            return self.refused(str(exc))
        except Exception as exc:  # a defect must not leave the sidecar without its watcher
            return self.refused(f"unexpected {type(exc).__name__}: {exc}")
        summary = summarize(self.current.policies if self.current else {}, new.policies)
        self.current = new
        return self._event("success", summary, new)

    def refused(self, reason: str) -> AuditEvent:
        """The failure event of a set not taken: the one in force, if any, stays."""
        kept = "previous kept" if self.current is not None else "none in force"
        return self._event("failure", f"policy set refused, {kept}: {reason}", None)

    def changed(self) -> bool:
        """Whether the files (or the reason they cannot be read) differ from the last load."""
        return _snapshot(self.path) != self._seen

    def _event(self, outcome: str, summary: str, effective: Effective | None) -> AuditEvent:
        now = self._now_ns()
        labels = {"policy.source": str(self.path), "policy.summary": summary[:1024]}
        if effective is not None:
            labels["policy.hash"] = effective.digest
            labels["policy.count"] = str(len(effective.policies))
            if effective.mtls_mode is not None:
                labels["policy.mtls_mode"] = effective.mtls_mode
            if effective.unselected:
                labels["policy.not_selected"] = ", ".join(effective.unselected)[:1024]
        return AuditEvent(
            id=new_event_id(lambda: now),
            time_ns=now,
            reporter=self._reporter(),
            kind="policy_change",
            outcome="success" if outcome == "success" else "failure",
            destination=self._local(),
            error=None if outcome == "success" else Error(type="policy_load", message=summary),
            labels=labels,
            attested=True,
        )

    def decide(self, request: Request) -> Authz | None:
        if self.current is None:
            return None
        authorizer = self.current.authorizer
        return to_authz(authorizer.evaluate(request), _allow_policies(authorizer))


def _allow_policies(authorizer: WorkloadAuthorizer) -> str | None:
    """The enforced ALLOW policies of the workload: what a default deny answers to."""
    names = [p.key for p in authorizer.policies if p.action == "ALLOW" and not p.dry_run]
    return ",".join(names)[:253] or None


def to_authz(decision: Decision, default_deny_by: str | None = None) -> Authz:
    """Istio names no policy when no ALLOW rule matched; the audit record names the ALLOW
    policies in force, with no rule index, so every denial says what it answered to."""
    dry = decision.dry_run
    policy = decision.policy
    if decision.decision == "deny" and policy is None:
        policy = default_deny_by
    return Authz(
        decision=decision.decision,
        policy=policy,
        rule=decision.rule,
        dry_run=None
        if dry is None
        else DryRun(decision=dry.decision, policy=dry.policy, rule=dry.rule),
    )
