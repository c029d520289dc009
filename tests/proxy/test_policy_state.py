"""`PolicyState` when its path goes away, comes back or cannot be read: the set in force
stays, each failure is one `policy_change` failure event, and nothing raises to the watcher."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from auditmesh.events import Peer
from auditmesh.policy.model import load_policies
from auditmesh.policy.request import Request
from auditmesh.proxy import enforce
from auditmesh.proxy.enforce import PolicyState

CALLER = "spiffe://cluster.local/ns/shop/sa/orders"


def allow(principal: str) -> str:
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: allow, namespace: shop}\n"
        f'spec: {{rules: [{{from: [{{source: {{principals: ["{principal}"]}}}}]}}]}}\n'
    )


def state_of(path: Path) -> PolicyState:
    return PolicyState(
        path, "shop", {}, port=None, reporter=lambda: "spiffe://cluster.local/ns/shop/sa/vault",
        local=lambda: Peer(service="vault"),
    )  # fmt: skip


def decision(state: PolicyState) -> str | None:
    request = Request.of(destination_namespace="shop", source_principal=CALLER, http=False)
    authz = state.decide(request)
    return None if authz is None else authz.decision


@pytest.fixture(params=["directory", "file"])
def policy_path(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Path, Path]:
    """The configured path, and the file in it to edit."""
    if request.param == "directory":
        (tmp_path / "pol").mkdir()
        return tmp_path / "pol", tmp_path / "pol" / "allow.yaml"
    return tmp_path / "pol.yaml", tmp_path / "pol.yaml"


def test_a_path_renamed_away_and_back_is_reported_once_and_picked_up_again(
    policy_path: tuple[Path, Path], tmp_path: Path
) -> None:
    path, file = policy_path
    file.write_text(allow("cluster.local/ns/shop/sa/orders"))
    state = state_of(path)
    assert state.load().outcome == "success"
    assert not state.changed()
    path.rename(tmp_path / "away")
    assert state.changed()  # was: PolicyLoadError raised into the watcher, which died
    gone = state.load()
    assert gone.outcome == "failure" and gone.error is not None
    assert gone.error.message == (
        f"policy set refused, previous kept: {path}: no such file or directory"
    )
    assert decision(state) == "allow"  # the set in force stays in force
    assert not state.changed()  # the same absence is not reported again each period
    (tmp_path / "away").rename(path)
    assert state.changed()
    back = state.load()
    assert (back.outcome, back.labels["policy.summary"]) == ("success", "no policy changed")
    file.write_text(allow("cluster.local/ns/shop/sa/someone-else"))
    assert state.changed()
    assert state.load().labels["policy.summary"] == "changed: AuthorizationPolicy shop/allow"
    assert decision(state) == "deny"


def test_a_path_missing_at_start_is_a_refusal_not_an_exception(tmp_path: Path) -> None:
    state = state_of(tmp_path / "nothing")
    event = state.load()
    assert event.outcome == "failure" and event.error is not None
    assert event.error.message.startswith("policy set refused, none in force: ")
    assert state.current is None


def test_a_defect_while_compiling_is_a_refusal_too(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever goes wrong in a reload, load() returns its failure event: an exception of an
    unexpected type (stood in for here by a broken resolver) must not end the watch."""
    (tmp_path / "p.yaml").write_text(allow("cluster.local/ns/shop/sa/orders"))
    state = state_of(tmp_path)
    assert state.load().outcome == "success"

    class Broken:
        def __init__(self, *args: object) -> None:
            raise RuntimeError("defect")

    monkeypatch.setattr(enforce, "MtlsResolver", Broken)
    (tmp_path / "p.yaml").write_text(allow("cluster.local/ns/shop/sa/other"))
    event = state.load()
    assert event.error is not None
    assert (
        event.error.message == "policy set refused, previous kept: unexpected RuntimeError: defect"
    )
    assert decision(state) == "allow"


def test_the_hash_in_the_event_is_of_the_bytes_the_policies_were_parsed_from(
    tmp_path: Path,
) -> None:
    """One read of each file: the `policy.hash` an auditor checks is of the very bytes that
    were enforced (a second read for the hash could see a file changed in between)."""
    (tmp_path / "pol").mkdir()
    file = tmp_path / "pol" / "allow.yaml"
    file.write_text(allow("cluster.local/ns/shop/sa/orders"))
    state = state_of(tmp_path / "pol")
    event = state.load()
    expected = hashlib.sha256(b"allow.yaml\0" + file.read_bytes() + b"\0").hexdigest()
    assert event.labels["policy.hash"] == expected
    other = allow("cluster.local/ns/shop/sa/someone-else").encode()
    policies = load_policies(tmp_path / "pol", contents={file: other})
    [parsed] = policies.authorization
    assert "someone-else" in repr(parsed) and "sa/orders" not in repr(parsed)


def test_a_policy_naming_the_workload_by_app_but_not_selecting_it_is_reported(
    tmp_path: Path,
) -> None:
    """`policy generate` selects `app: <service>`; a sidecar configured without labels is
    selected by no such policy (Istio scopes by labels only): the event says which."""
    (tmp_path / "vault.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: vault-observed, namespace: shop}\n"
        "spec: {selector: {matchLabels: {app: vault}}, rules: [{}]}\n"
        "---\napiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: other, namespace: shop}\n"
        "spec: {selector: {matchLabels: {app: payments}}, rules: [{}]}\n"
    )
    bare = state_of(tmp_path).load()
    assert bare.labels["policy.not_selected"] == "AuthorizationPolicy shop/vault-observed"
    labelled = PolicyState(
        tmp_path, "shop", {"app": "vault"}, port=None, reporter=lambda: CALLER,
        local=lambda: Peer(service="vault"),
    ).load()  # fmt: skip
    assert "policy.not_selected" not in labelled.labels
