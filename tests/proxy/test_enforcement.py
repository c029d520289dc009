"""Authorization in the sidecar: denials answered like Envoy, decisions and policy changes
in the ledger, PeerAuthentication deciding what the inbound listener accepts."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from auditmesh.meshproc import address
from auditmesh.serverproc import free_port
from tests.proxy.mesh_fixture import EVENT_WAIT_S, Mesh, mesh_context, spiffe

pytestmark = pytest.mark.integration

ALLOW_ORDERS = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata:
  name: vault-allow
  namespace: shop
spec:
  selector:
    matchLabels:
      app: vault
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/shop/sa/orders"]
    to:
    - operation:
        methods: ["GET"]
        paths: ["/secrets/*"]
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: vault-strict
  namespace: shop
spec:
  selector:
    matchLabels:
      app: vault
  mtls:
    mode: STRICT
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Mesh, dict[str, int], Path]]:
    root = tmp_path_factory.mktemp("enforce")
    policies = root / "policies"
    policies.mkdir()
    (policies / "vault.yaml").write_text(ALLOW_ORDERS)
    for mesh in mesh_context(root):
        ports = {name: free_port() for name in ("vault_in", "orders_out", "intruder_out")}
        mesh.start_app("vault")
        mesh.sidecar(
            "vault",
            {
                "workload": {"name": "vault", "namespace": "shop", "labels": {"app": "vault"}},
                "inbound": {
                    "listen": address(ports["vault_in"]),
                    "app": address(mesh.apps["vault"]),
                    "mtls": "PERMISSIVE",  # the PeerAuthentication above makes it STRICT
                },
                "policies": str(policies),
                "policy_reload_s": 0.2,
            },
        )
        for caller in ("orders", "intruder"):
            mesh.sidecar(
                caller,
                {
                    "outbound": [
                        {
                            "service": "vault",
                            "listen": address(ports[f"{caller}_out"]),
                            "upstream": address(ports["vault_in"]),
                            "identity": str(spiffe("vault")),
                        }
                    ]
                },
            )
        yield mesh, ports, policies


def inbound(request_id: str) -> Any:
    return lambda e: (
        e.get("http", {}).get("request_id") == request_id and e["direction"] == "inbound"
    )


def send_raw(port: int, head: str) -> bytes:
    """Send a request head as written (no client normalizes it) and read to the end."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as conn:
        conn.sendall(head.encode())
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    return answer


def test_allowed_call_names_the_policy_and_rule(setup: tuple[Mesh, dict[str, int], Path]) -> None:
    mesh, ports, _ = setup
    response = httpx.get(
        f"http://127.0.0.1:{ports['orders_out']}/secrets/1", headers={"x-request-id": "ok-1"}
    )
    assert response.status_code == 200
    [event] = mesh.wait_events(inbound("ok-1"))
    assert event["authz"] == {"decision": "allow", "policy": "shop/vault-allow", "rule": 0}


def test_denied_call_gets_rbac_403_and_an_event(setup: tuple[Mesh, dict[str, int], Path]) -> None:
    mesh, ports, _ = setup
    response = httpx.get(
        f"http://127.0.0.1:{ports['intruder_out']}/secrets/1", headers={"x-request-id": "no-1"}
    )
    assert response.status_code == 403 and response.text == "RBAC: access denied"
    [event] = mesh.wait_events(inbound("no-1"))
    # no ALLOW rule matched: the event names the ALLOW policy the call answered to
    assert event["authz"] == {"decision": "deny", "policy": "shop/vault-allow"}
    assert event["source"]["identity"] == str(spiffe("intruder"))
    assert event["error"]["type"] == "rbac_access_denied" and event["outcome"] == "failure"


def test_peer_authentication_makes_the_listener_strict(
    setup: tuple[Mesh, dict[str, int], Path],
) -> None:
    mesh, ports, _ = setup
    with socket.create_connection(("127.0.0.1", ports["vault_in"]), timeout=5) as conn:
        conn.sendall(b"GET /secrets/1 HTTP/1.1\r\nHost: vault\r\n\r\n")
        try:
            reply = conn.recv(100)
        except ConnectionResetError:
            reply = b""
        assert reply == b""  # refused: plaintext is not accepted under STRICT
    assert mesh.wait_events(
        lambda e: (
            e["kind"] == "authn"
            and e["error"]["type"] == "not_tls"
            and e["reporter"] == str(spiffe("vault"))
        )
    )


def test_policy_change_is_enforced_and_logged(setup: tuple[Mesh, dict[str, int], Path]) -> None:
    mesh, ports, policies = setup
    first = mesh.wait_events(lambda e: e["kind"] == "policy_change")
    assert first and first[0]["labels"]["policy.mtls_mode"] == "STRICT"
    assert "added: AuthorizationPolicy shop/vault-allow" in first[0]["labels"]["policy.summary"]
    (policies / "vault.yaml").write_text(
        ALLOW_ORDERS.replace(
            '"cluster.local/ns/shop/sa/orders"', '"cluster.local/ns/shop/sa/intruder"'
        )
    )
    changes = mesh.wait_events(lambda e: e["kind"] == "policy_change", count=2)
    assert len(changes) == 2
    assert changes[1]["labels"]["policy.summary"] == "changed: AuthorizationPolicy shop/vault-allow"
    assert changes[1]["labels"]["policy.hash"] != changes[0]["labels"]["policy.hash"]
    response = httpx.get(f"http://127.0.0.1:{ports['intruder_out']}/secrets/2")
    assert response.status_code == 200
    (policies / "vault.yaml").write_text(ALLOW_ORDERS)  # as it was, for the tests after this
    changes = mesh.wait_events(lambda e: e["kind"] == "policy_change", count=3)
    assert len(changes) == 3


def test_bad_policy_file_keeps_the_previous_set(setup: tuple[Mesh, dict[str, int], Path]) -> None:
    mesh, ports, policies = setup
    (policies / "broken.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: x, "
        "namespace: shop}\nspec:\n  action: CUSTOM\n"
    )
    failures = mesh.wait_events(
        lambda e: e["kind"] == "policy_change" and e["outcome"] == "failure"
    )
    assert failures and "CUSTOM" in failures[0]["error"]["message"]
    (policies / "broken.yaml").unlink()


def test_a_sidecar_whose_policy_set_does_not_load_does_not_start(
    setup: tuple[Mesh, dict[str, int], Path], tmp_path: Path
) -> None:
    # Serving with no policy at all would let through what a DENY in the set forbids: the
    # sidecar refuses to start, says why, and the refusal is in the ledger.
    mesh, _, _ = setup
    (tmp_path / "deny.yaml").write_text(
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: d, "
        "namespace: shop}\nspec:\n  action: DENY\n  rules: [{}]\n---\n"
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: j, "
        "namespace: shop}\nspec:\n  rules: [{from: [{source: {requestPrincipals: ['*']}}]}]\n"
    )
    config = {
        "inbound": {"listen": address(free_port()), "app": address(mesh.apps["vault"])},
        "policies": str(tmp_path),
    }
    with pytest.raises(RuntimeError, match="does not serve without its policy set"):
        mesh.sidecar("locked", config)
    assert mesh.local.sidecars["locked"].returncode == 2
    [refusal] = mesh.wait_events(
        lambda e: e["kind"] == "policy_change" and e["reporter"] == str(spiffe("locked"))
    )
    assert refusal["outcome"] == "failure"
    assert "none in force" in refusal["error"]["message"]
    assert "requestPrincipals" in refusal["error"]["message"]


@pytest.mark.parametrize(
    ("sent", "served"),
    [("/%73ecrets/1", "/secrets/1"), ("/secrets/./a/../1", "/secrets/1")],
)
def test_policy_and_app_see_the_normalized_path(
    setup: tuple[Mesh, dict[str, int], Path], sent: str, served: str
) -> None:
    mesh, ports, _ = setup
    request_id = f"norm-{sent}"
    answer = send_raw(
        ports["orders_out"],
        f"GET {sent} HTTP/1.1\r\nhost: vault\r\nx-request-id: {request_id}\r\n"
        "connection: close\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 ") and f"x-seen-path: {served}".encode() in answer
    [event] = mesh.wait_events(inbound(request_id))
    assert event["http"]["path"] == served
    assert event["authz"]["decision"] == "allow"


@pytest.mark.parametrize(
    "sent",
    ["/secrets/../admin", "/secrets/%2e%2e/admin", "/secrets\\..\\admin", "/secrets/%2E%2E/admin"],
)
def test_a_dot_segment_does_not_escape_an_allowed_prefix(
    setup: tuple[Mesh, dict[str, int], Path], sent: str
) -> None:
    # ALLOW paths: [/secrets/*]; each of these is /admin to a backend: denied (Istio BASE).
    mesh, ports, _ = setup
    answer = send_raw(
        ports["orders_out"], f"GET {sent} HTTP/1.1\r\nhost: vault\r\nconnection: close\r\n\r\n"
    )
    assert answer.startswith(b"HTTP/1.1 403 "), answer


@pytest.mark.parametrize(
    ("target", "reason"),
    [
        ("/secrets/%zz", "malformed percent-encoding"),
        ("ws://vault/secrets/1", "not another scheme"),
        ("vault:443", "not CONNECT"),
    ],
)
def test_targets_that_would_slip_past_policy_are_refused(
    setup: tuple[Mesh, dict[str, int], Path], target: str, reason: str
) -> None:
    mesh, ports, _ = setup
    method = "CONNECT" if target == "vault:443" else "GET"
    request_id = f"refused-{target}"
    answer = send_raw(
        ports["orders_out"],
        f"{method} {target} HTTP/1.1\r\nhost: vault\r\nx-request-id: {request_id}\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400 ") and reason.encode() in answer, answer
    [event] = mesh.wait_events(lambda e: e.get("error", {}).get("message", "").count(reason))
    assert event["labels"]["envoy.response_flags"] == "DPE"


def test_only_a_websocket_upgrade_is_passed_on(setup: tuple[Mesh, dict[str, int], Path]) -> None:
    # h2c would turn the connection into HTTP/2 streams no policy or audit event sees.
    _, ports, _ = setup
    response = httpx.get(
        f"http://127.0.0.1:{ports['orders_out']}/secrets/1",
        headers={"upgrade": "h2c", "connection": "Upgrade, HTTP2-Settings", "http2-settings": ""},
    )
    assert response.status_code == 200
    assert response.headers["x-seen-upgrade"] == "-"


PROBES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: vault-probes, namespace: shop}
spec:
  selector: {matchLabels: {app: vault}}
  action: DENY
  rules:
  - when:
    - {key: "request.headers[x-probe]", values: ["ip"]}
    - {key: destination.ip, values: ["127.0.0.0/8"]}
  - when:
    - {key: "request.headers[x-probe]", values: ["other-ip"]}
    - {key: destination.ip, values: ["10.0.0.0/8"]}
  - when:
    - {key: "request.headers[x-probe]", values: ["sni"]}
    - {key: connection.sni, values: ["vault.shop.svc.cluster.local"]}
  - when:
    - {key: "request.headers[x-probe]", values: ["other-sni"]}
    - {key: connection.sni, values: ["payments.*"]}
"""


def test_destination_ip_and_sni_conditions_are_matched(
    setup: tuple[Mesh, dict[str, int], Path],
) -> None:
    # The inbound side knows the address it was reached at and the SNI the caller sent
    # (the outbound sidecar sends svc.ns.svc.cluster.local); rules on them must fire.
    _, ports, policies = setup
    (policies / "probes.yaml").write_text(PROBES)
    try:
        url = f"http://127.0.0.1:{ports['orders_out']}/secrets/1"

        def status(probe: str) -> int:
            return httpx.get(url, headers={"x-probe": probe}).status_code

        deadline = time.monotonic() + EVENT_WAIT_S
        while status("ip") != 403 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert (status("ip"), status("other-ip")) == (403, 200)
        assert (status("sni"), status("other-sni")) == (403, 200)
    finally:
        (policies / "probes.yaml").unlink()


def watched_policy(app: str, principal: str) -> str:
    """Only `principal` (a service account in shop) may call the workload labelled `app`."""
    allowed = f'["cluster.local/ns/shop/sa/{principal}"]'
    return (
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: watched-allow, namespace: shop}\n"
        f"spec:\n  selector: {{matchLabels: {{app: {app}}}}}\n  action: ALLOW\n"
        f"  rules: [{{from: [{{source: {{principals: {allowed}}}}}]}}]\n"
    )


@pytest.mark.parametrize("shape", ["directory", "file"])
def test_the_policy_watch_outlives_its_path_going_away_and_back(
    setup: tuple[Mesh, dict[str, int], Path], tmp_path: Path, shape: str
) -> None:
    """`mv pol pol.x; sleep; mv pol.x pol` killed the watcher for good (an exception nobody
    retrieved): later edits were never enforced and nothing was in the ledger. Now the
    absence is one failure event, the set in force stays, and the path is picked up again."""
    mesh, _, _ = setup
    caller, target = f"caller-{shape}", f"caller-{shape}-target"
    if shape == "directory":
        path = tmp_path / "pol"
        path.mkdir()
        file = path / "allow.yaml"
    else:
        path = file = tmp_path / "pol.yaml"
    file.write_text(watched_policy(target, caller))
    target_in, caller_out = free_port(), free_port()
    mesh.sidecar(
        target,
        {
            "inbound": {"listen": address(target_in), "app": address(mesh.apps["vault"])},
            "policies": str(path),
            "policy_reload_s": 0.1,
        },
    )
    mesh.sidecar(
        caller,
        {
            "outbound": [
                {
                    "service": target,
                    "listen": address(caller_out),
                    "upstream": address(target_in),
                    "identity": str(spiffe(target)),
                }
            ]
        },
    )
    url = f"http://127.0.0.1:{caller_out}/secrets/1"

    def changes() -> list[dict[str, Any]]:
        return [
            e
            for e in mesh.events()
            if e["kind"] == "policy_change" and e["reporter"] == str(spiffe(target))
        ]

    def wait_changes(count: int) -> list[dict[str, Any]]:
        deadline = time.monotonic() + EVENT_WAIT_S
        while len(found := changes()) < count and time.monotonic() < deadline:
            time.sleep(0.1)
        return found

    assert [e["outcome"] for e in wait_changes(1)] == ["success"]
    assert httpx.get(url).status_code == 200
    path.rename(path.with_name("away"))
    [_, gone] = wait_changes(2)
    assert gone["outcome"] == "failure"
    assert gone["error"]["message"] == (
        f"policy set refused, previous kept: {path}: no such file or directory"
    )
    time.sleep(1.0)  # ten reload periods: reported once, not once a period
    assert len(changes()) == 2
    assert httpx.get(url).status_code == 200  # the set in force is still enforced
    path.with_name("away").rename(path)
    [*_, back] = wait_changes(3)
    assert (back["outcome"], back["labels"]["policy.summary"]) == ("success", "no policy changed")
    file.write_text(watched_policy(target, "someone-else"))  # an edit after the absence is enforced
    [*_, edited] = wait_changes(4)
    assert edited["labels"]["policy.summary"] == "changed: AuthorizationPolicy shop/watched-allow"
    deadline = time.monotonic() + EVENT_WAIT_S
    while (status := httpx.get(url).status_code) != 403 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 403


XFCC_PROBES = """\
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: vault-xfcc, namespace: shop}
spec:
  selector: {matchLabels: {app: vault}}
  action: DENY
  rules:
  - when:
    - {key: "request.headers[x-forwarded-client-cert]", values: ["By=forged*"]}
  - when:
    - {key: "request.headers[x-probe]", values: ["xfcc"]}
    - key: "request.headers[x-forwarded-client-cert]"
      values: ["*URI=spiffe://cluster.local/ns/shop/sa/orders"]
"""


def test_policy_sees_the_client_certificate_header_the_app_gets(
    setup: tuple[Mesh, dict[str, int], Path],
) -> None:
    # The inbound sidecar replaces any x-forwarded-client-cert with its own (Envoy's
    # format, naming the caller's verified SPIFFE ID); a condition on that header must see
    # that one, as Envoy's RBAC does, not one the caller wrote.
    _, ports, policies = setup
    (policies / "xfcc.yaml").write_text(XFCC_PROBES)
    try:
        url = f"http://127.0.0.1:{ports['orders_out']}/secrets/1"

        def status(headers: dict[str, str]) -> int:
            return httpx.get(url, headers=headers).status_code

        deadline = time.monotonic() + EVENT_WAIT_S
        while status({"x-probe": "xfcc"}) != 403 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert status({"x-probe": "xfcc"}) == 403  # the sidecar's header names orders
        forged = "By=forged;URI=spiffe://cluster.local/ns/shop/sa/admin"
        assert status({"x-forwarded-client-cert": forged}) == 200  # never reaches the app
    finally:
        (policies / "xfcc.yaml").unlink()
