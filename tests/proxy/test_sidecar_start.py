"""`auditmesh sidecar` start-up: what can be known in advance is refused before the one-time
join token is spent (each refusal is followed by a start with the same token, which must
work), and what is learnt from enrolling is checked against the config.

Real server, real `auditmesh sidecar` processes, real sockets and files.
"""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml

from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.tokens import JoinTokens
from auditmesh.meshproc import address
from auditmesh.proxy.config import load_config
from auditmesh.proxy.sidecar import Sidecar
from auditmesh.proxy.spool import Spool
from auditmesh.serverproc import free_port
from tests.proxy.mesh_fixture import Mesh, mesh_context, spiffe

pytestmark = pytest.mark.integration

READY = "auditmesh sidecar "


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yield from mesh_context(tmp_path_factory.mktemp("start"))


def token(mesh: Mesh, identity: SpiffeId) -> str:
    return JoinTokens(mesh.data).mint(identity, now=datetime.now(UTC))


class Run:
    """One `auditmesh sidecar` process and its output."""

    def __init__(self, directory: Path, config: dict[str, Any]) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / "sidecar.yaml"
        path.write_text(yaml.safe_dump(config))
        self.log = directory / "sidecar.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "auditmesh", "sidecar", "--config", str(path)],
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )

    @property
    def output(self) -> str:
        return self.log.read_text()

    def refused(self) -> str:
        """The process's error, once it exited with status 2."""
        assert self.proc.wait(60) == 2, self.output
        return self.output

    def ready(self) -> None:
        deadline = time.monotonic() + 60
        while READY not in self.output:
            assert self.proc.poll() is None, self.output
            assert time.monotonic() < deadline, self.output
            time.sleep(0.05)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(30)


def config_of(mesh: Mesh, directory: Path, join_token: str | None, **rest: Any) -> dict[str, Any]:
    return {
        "workload": {"name": "orders", "namespace": "shop"},
        "server": {"url": mesh.mesh_url, "bundle": str(mesh.local.bundle_path)}
        | ({} if join_token is None else {"join_token": join_token}),
        "data_dir": str(directory / "data"),
        "audit": {"flush_ms": 50},
        **rest,
    }


def starts(mesh: Mesh, directory: Path, join_token: str | None, **rest: Any) -> None:
    """A sidecar with this token starts (so nothing before spent it), then stops."""
    run = Run(directory, config_of(mesh, directory, join_token, **rest))
    try:
        run.ready()
    finally:
        run.stop()


def inbound(port: int | None = None) -> dict[str, str]:
    return {"listen": address(port or free_port()), "app": address(free_port())}


def test_an_identity_directory_that_takes_no_file_is_refused_before_joining(
    mesh: Mesh, tmp_path: Path
) -> None:
    """data_dir exists, but its `identity` is a file: the static check cannot see it, the
    agent finds it before sending the token."""
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "identity").write_text("")
    join = token(mesh, spiffe("orders"))
    output = Run(tmp_path, config_of(mesh, tmp_path, join, inbound=inbound())).refused()
    assert output == (
        f"auditmesh: error: cannot get an identity: cannot keep an identity in "
        f"{tmp_path / 'data' / 'identity'}: not a directory; the join token was not sent, so "
        "it can still be used once that is fixed\n"
    )
    (tmp_path / "data" / "identity").unlink()
    starts(mesh, tmp_path, join, inbound=inbound())


def test_a_spool_that_cannot_be_opened_is_refused_before_joining(
    mesh: Mesh, tmp_path: Path
) -> None:
    """The spool used to open after enrolling: a spool in use by another process (a
    sidecar already running on this data_dir) spent the one-time token and had an SVID
    issued (and audited) to a sidecar that then did not start."""
    join = token(mesh, spiffe("orders"))
    with Spool(tmp_path / "data" / "spool"):  # holds the spool's lock, as a sidecar would
        output = Run(tmp_path, config_of(mesh, tmp_path, join, inbound=inbound())).refused()
    assert output.startswith("auditmesh: error: ") and "spool" in output, output
    assert "Traceback" not in output
    assert not (tmp_path / "data" / "identity" / "svid.pem").exists()  # never enrolled
    starts(mesh, tmp_path, join, inbound=inbound())


def test_an_svid_that_cannot_be_saved_says_the_token_is_spent(mesh: Mesh, tmp_path: Path) -> None:
    """Was: `cannot start: [Errno 21] Is a directory: …`, and nothing said that the token,
    spent by then, had to be replaced."""
    (tmp_path / "data" / "identity" / "svid.pem").mkdir(parents=True)  # renaming onto it fails
    join = token(mesh, spiffe("orders"))
    output = Run(tmp_path, config_of(mesh, tmp_path, join, inbound=inbound())).refused()
    assert output.startswith(
        "auditmesh: error: cannot get an identity: the server issued this sidecar's SVID, "
        f"but it could not be saved in {tmp_path / 'data' / 'identity'}: Is a directory. The "
        "join token is now used up: fix the directory, mint a new token with "
        f"`auditmesh ca token --id {spiffe('orders')}` and start again"
    ), output
    (tmp_path / "data" / "identity" / "svid.pem").rmdir()
    again = Run(tmp_path, config_of(mesh, tmp_path, join, inbound=inbound())).refused()
    assert "was already used" in again  # as the message said


def test_a_listen_address_in_use_is_refused_before_enrolling(mesh: Mesh, tmp_path: Path) -> None:
    """Was: enrolled first, then `error while attempting to bind on address …`, naming no key."""
    busy = socket.create_server(("127.0.0.1", 0))
    try:
        port = busy.getsockname()[1]
        join = token(mesh, spiffe("orders"))
        outbound = [
            {
                "service": "payments",
                "listen": address(port),
                "upstream": address(free_port()),
                "identity": str(spiffe("payments")),
            }
        ]
        output = Run(
            tmp_path, config_of(mesh, tmp_path, join, inbound=inbound(), outbound=outbound)
        ).refused()
    finally:
        busy.close()
    assert output == (
        f"auditmesh: error: cannot start: outbound[0].listen: cannot listen on "
        f"{address(port)}: Address already in use\n"
    )
    starts(mesh, tmp_path, join, inbound=inbound(), outbound=outbound)


def test_two_spellings_of_one_listen_address_are_refused_before_enrolling(
    mesh: Mesh, tmp_path: Path
) -> None:
    """The config check compares addresses as written; the sidecar compares them bound."""
    port = free_port()
    join = token(mesh, spiffe("orders"))
    outbound = [
        {
            "service": "payments",
            "listen": f"localhost:{port}",
            "upstream": address(free_port()),
            "identity": str(spiffe("payments")),
        }
    ]
    output = Run(
        tmp_path, config_of(mesh, tmp_path, join, inbound=inbound(port), outbound=outbound)
    ).refused()
    assert output.startswith(
        f"auditmesh: error: cannot start: inbound.listen ({address(port)}) and "
        f"outbound[0].listen (localhost:{port}) are the same address 127.0.0.1 port {port}"
    ), output
    starts(mesh, tmp_path, join, inbound=inbound())


def test_a_namespace_other_than_the_identitys_is_refused(mesh: Mesh, tmp_path: Path) -> None:
    """Was: started, recording namespace shop beside identity ns/prod, and choosing the
    policies and PeerAuthentication of shop. Istio derives both from the pod's namespace."""
    billing = SpiffeId.kubernetes("cluster.local", "prod", "billing")
    config = config_of(mesh, tmp_path, token(mesh, billing), inbound=inbound())
    assert config["workload"]["namespace"] == "shop"
    output = Run(tmp_path, config).refused()
    assert output == (
        "auditmesh: error: cannot start: workload.namespace is shop, but this sidecar's "
        f"identity {billing} is in namespace prod: set workload.namespace: prod (or use a join "
        "token minted for the namespace meant). The identity is kept in "
        f"{tmp_path / 'data'}: no new join token is needed to start again with the namespace "
        "corrected\n"
    )
    config = config_of(mesh, tmp_path, None, inbound=inbound())
    config["workload"]["namespace"] = "prod"
    run = Run(tmp_path, config)
    try:
        run.ready()
    finally:
        run.stop()


def test_without_a_namespace_the_workload_takes_its_identitys(mesh: Mesh, tmp_path: Path) -> None:
    config = config_of(mesh, tmp_path, None, inbound=inbound())
    del config["workload"]["namespace"]
    path = tmp_path / "sidecar.yaml"
    path.write_text(yaml.safe_dump(config))
    sidecar = Sidecar(*load_config(path))
    prod = SpiffeId.kubernetes("cluster.local", "prod", "billing")
    assert sidecar._resolve_namespace(prod) == "prod"
    assert sidecar._resolve_namespace(SpiffeId.from_segments("cluster.local", "vm", "a")) == (
        "default"  # an ID of no namespace
    )
    config["workload"]["namespace"] = "prod"
    path.write_text(yaml.safe_dump(config))
    assert Sidecar(*load_config(path))._resolve_namespace(prod) == "prod"
    billing = config_of(mesh, tmp_path / "run", token(mesh, prod), inbound=inbound())
    del billing["workload"]["namespace"]
    run = Run(tmp_path / "run", billing)  # starts: no namespace to disagree with
    try:
        run.ready()
    finally:
        run.stop()


def test_a_bundle_that_is_not_pem_names_its_file(mesh: Mesh, tmp_path: Path) -> None:
    """Was: `cannot start: no start line: cadata does not contain a certificate`."""
    bundle = tmp_path / "ca.pem"
    bundle.write_text("not a certificate\n")
    config = config_of(mesh, tmp_path, token(mesh, spiffe("orders")), inbound=inbound())
    config["server"]["bundle"] = str(bundle)
    assert Run(tmp_path, config).refused() == (
        f"auditmesh: error: cannot start: server.bundle: {bundle} is not a PEM file of CA "
        "certificates (no start line: cadata does not contain a certificate); give the mesh "
        "CA's certificate, such as DATA/ca/ca.pem of the server\n"
    )


def ipv6_loopback() -> bool:
    try:
        socket.create_server(("::1", 0), family=socket.AF_INET6).close()
    except OSError:
        return False
    return True


@pytest.mark.skipif(not ipv6_loopback(), reason="no IPv6 loopback on this host")
def test_bracketed_ipv6_addresses_listen_and_are_audited(mesh: Mesh, tmp_path: Path) -> None:
    """`[::1]:PORT` was refused by the config's regex; now inbound and outbound listen on it
    and the events record the IPv6 address."""
    target_in, caller_out = free_port(), free_port()
    app = mesh.start_app("v6")

    def workload(name: str, **rest: Any) -> Run:
        directory, workload = tmp_path / name, {"name": name, "namespace": "shop"}
        join = token(mesh, spiffe(name))
        return Run(directory, config_of(mesh, directory, join, workload=workload, **rest))

    target = workload("v6", inbound={"listen": f"[::1]:{target_in}", "app": address(app)})
    caller = workload(
        "v6-caller",
        outbound=[
            {
                "service": "v6",
                "listen": f"[::1]:{caller_out}",
                "upstream": f"[::1]:{target_in}",
                "identity": str(spiffe("v6")),
            }
        ],
    )
    try:
        target.ready()
        caller.ready()
        response = httpx.get(
            f"http://[::1]:{caller_out}/", headers={"x-request-id": "v6-1"}, timeout=10
        )
        assert (response.status_code, response.text) == (200, "hello from v6")
        [event] = mesh.wait_events(
            lambda e: e.get("http", {}).get("request_id") == "v6-1" and e["direction"] == "inbound"
        )
        assert event["destination"]["ip"] == "::1" and event["destination"]["port"] == target_in
        assert event["source"]["ip"] == "::1"
        assert event["source"]["identity"] == str(spiffe("v6-caller"))
    finally:
        caller.stop()
        target.stop()


def test_the_banner_shows_the_labels_policies_select_on(mesh: Mesh, tmp_path: Path) -> None:
    """A policy's selector matches `workload.labels` only, none unless given: the start-up
    lines say which, so a policy that never applies is not a mystery."""
    policies = tmp_path / "policies"
    policies.mkdir()
    (policies / "generated.yaml").write_text(  # what `policy generate` writes for orders
        "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\n"
        "metadata: {name: orders-observed, namespace: shop}\n"
        "spec: {selector: {matchLabels: {app: orders}}, rules: [{}]}\n"
    )
    identity = SpiffeId.kubernetes("cluster.local", "shop", "orders")
    bare = Run(
        tmp_path / "bare",
        config_of(mesh, tmp_path / "bare", token(mesh, identity), policies=str(policies)),
    )
    try:
        bare.ready()
    finally:
        bare.stop()
    assert "for workload labels {} (none: only policies without a selector apply)" in bare.output
    assert (
        "  warning: AuthorizationPolicy shop/orders-observed name this workload (app: orders) "
        "but do not select it; give the sidecar `workload: {labels: {app: orders}}` if they "
        "should apply\n"
    ) in bare.output
    labelled = config_of(mesh, tmp_path / "app", token(mesh, identity), policies=str(policies))
    labelled["workload"]["labels"] = {"version": "v1", "app": "orders"}
    run = Run(tmp_path / "app", labelled)
    try:
        run.ready()
    finally:
        run.stop()
    assert f"  policies {policies}, for workload labels {{app=orders, version=v1}}\n" in run.output
    assert "warning" not in run.output
