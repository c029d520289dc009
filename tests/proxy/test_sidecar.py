"""The sidecar end to end: real mTLS between sidecar processes, real apps, the real ledger."""

from __future__ import annotations

import resource
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from auditmesh.identity.workload import key_to_pem
from auditmesh.meshproc import address
from auditmesh.serverproc import free_port
from tests.identity.forge import forge_leaf, load_ca_cert, load_ca_key
from tests.proxy.mesh_fixture import EVENT_WAIT_S, Mesh, mesh_context, open_websocket, spiffe

NOW = datetime.now(UTC)

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def mesh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mesh]:
    yield from mesh_context(tmp_path_factory.mktemp("sidecars"))


@pytest.fixture(scope="module")
def ports(mesh: Mesh) -> dict[str, int]:
    """payments behind a STRICT inbound sidecar; orders calls it through its outbound."""
    ports = {
        name: free_port() for name in ("pay_in", "orders_out", "wrong_out", "tcp_in", "tcp_out")
    }
    mesh.start_app("payments")
    mesh.sidecar(
        "payments",
        {
            "inbound": {
                "listen": address(ports["pay_in"]),
                "app": address(mesh.apps["payments"]),
                "mtls": "STRICT",
            },
            "limits": {"header_timeout_s": 1.0, "request_timeout_s": 2.0},
        },
    )
    mesh.echo_sidecar("ledgerdb", ports["tcp_in"])
    mesh.sidecar(
        "orders",
        {
            "outbound": [
                {
                    "service": "payments",
                    "listen": address(ports["orders_out"]),
                    "upstream": address(ports["pay_in"]),
                    "identity": str(spiffe("payments")),
                },
                {
                    "service": "payments",
                    "listen": address(ports["wrong_out"]),
                    "upstream": address(ports["pay_in"]),
                    "identity": str(spiffe("catalog")),  # not who answers there
                },
                {
                    "service": "ledgerdb",
                    "listen": address(ports["tcp_out"]),
                    "upstream": address(ports["tcp_in"]),
                    "identity": str(spiffe("ledgerdb")),
                    "protocol": "tcp",
                },
            ]
        },
    )
    return ports


def by_request_id(request_id: str) -> Any:
    return lambda e: e.get("http", {}).get("request_id") == request_id


def test_request_through_both_sidecars_is_audited_on_each_side(
    mesh: Mesh, ports: dict[str, int]
) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{ports['orders_out']}/charges/7",
        headers={"x-request-id": "req-both-sides", "x-forwarded-client-cert": "By=evil"},
    )
    assert response.status_code == 200 and response.text == "hello from payments"
    xfcc = response.headers["x-seen-xfcc"]
    assert f"URI={spiffe('orders')}" in xfcc and "By=evil" not in xfcc
    assert response.headers["x-seen-request-id"] == "req-both-sides"
    events = mesh.wait_events(by_request_id("req-both-sides"), count=2)
    sides = {e["direction"]: e for e in events}
    assert set(sides) == {"inbound", "outbound"}
    inbound, outbound = sides["inbound"], sides["outbound"]
    assert inbound["source"]["identity"] == str(spiffe("orders"))
    assert inbound["destination"]["identity"] == str(spiffe("payments"))
    assert inbound["destination"]["port"] == ports["pay_in"]  # what policies match ports on
    assert inbound["reporter"] == str(spiffe("payments")) and inbound["attested"] is True
    assert inbound["tls"]["mutual"] and inbound["tls"]["version"] == "TLSv1.3"
    assert len(inbound["tls"]["peer_cert_sha256"]) == 64
    assert outbound["reporter"] == str(spiffe("orders"))
    assert outbound["destination"]["identity"] == str(spiffe("payments"))
    assert inbound["http"]["status"] == 200 and inbound["http"]["method"] == "GET"
    assert inbound["http"]["path"] == "/charges/7"
    assert inbound["trace"]["trace_id"] == outbound["trace"]["trace_id"]
    assert inbound["trace"]["parent_span_id"] == outbound["trace"]["span_id"]


def test_keep_alive_and_bodies(mesh: Mesh, ports: dict[str, int]) -> None:
    with httpx.Client(base_url=f"http://127.0.0.1:{ports['orders_out']}") as client:
        for size in (0, 1, 70_000, 1_000_000):
            body = bytes(range(256)) * (size // 256) + b"x" * (size % 256)
            response = client.post("/echo", content=body)
            assert response.status_code == 200 and response.content == body

        def chunks() -> Iterator[bytes]:
            for _ in range(10):
                yield b"a" * 1000

        streamed = client.post("/echo", content=chunks(), headers={"content-length": "10000"})
        assert streamed.content == b"a" * 10_000
        chunked = client.post("/echo", content=chunks())  # no length: chunked upload
        assert chunked.status_code == 200 and chunked.content == b"a" * 10_000


def test_upstream_errors_are_passed_and_marked(mesh: Mesh, ports: dict[str, int]) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{ports['orders_out']}/status/500", headers={"x-request-id": "r500"}
    )
    assert response.status_code == 500
    [event, *_] = mesh.wait_events(by_request_id("r500"))
    assert event["outcome"] == "failure" and event["error"]["type"] == "upstream_error"


def test_secure_naming_mismatch_is_refused(mesh: Mesh, ports: dict[str, int]) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{ports['wrong_out']}/x", headers={"x-request-id": "wrong-id"}
    )
    assert response.status_code == 503
    [event] = mesh.wait_events(by_request_id("wrong-id"))
    assert event["error"]["type"] == "secure_naming_mismatch"
    assert event["labels"]["envoy.response_flags"] == "SNM"


def test_upstream_timeout(mesh: Mesh, ports: dict[str, int]) -> None:
    response = httpx.get(
        f"http://127.0.0.1:{ports['orders_out']}/slow", headers={"x-request-id": "slow"}, timeout=10
    )
    # payments' sidecar gives up after its 2 s request timeout and answers 504 itself
    assert response.status_code == 504
    events = mesh.wait_events(lambda e: by_request_id("slow")(e) and e["direction"] == "inbound")
    assert events[0]["error"]["type"] == "upstream_timeout"


def tls_to(mesh: Mesh, port: int, cert: tuple[Path, Path] | None = None) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=mesh.data / "ca" / "ca.pem")
    context.check_hostname = False
    if cert is not None:
        context.load_cert_chain(*cert)
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw)


def authn_failures(mesh: Mesh, reason: str, timeout: float = EVENT_WAIT_S) -> list[dict[str, Any]]:
    return mesh.wait_events(
        lambda e: (
            e["kind"] == "authn"
            and e["reporter"] == str(spiffe("payments"))
            and e["error"]["type"] == reason
        ),
        timeout,
    )


def test_plaintext_to_strict_is_an_authn_failure(mesh: Mesh, ports: dict[str, int]) -> None:
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{ports['pay_in']}/hello", timeout=5)
    assert authn_failures(mesh, "not_tls")


def test_no_client_certificate_under_strict(mesh: Mesh, ports: dict[str, int]) -> None:
    try:
        with tls_to(mesh, ports["pay_in"]) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            conn.recv(100)
    except (ssl.SSLError, ConnectionError):
        pass
    assert authn_failures(mesh, "no_client_certificate")


def test_untrusted_client_certificate(mesh: Mesh, ports: dict[str, int], tmp_path: Path) -> None:
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-keyout",
            str(key),
            "-out",
            str(cert),
            "-days",
            "1",
            "-subj",
            "/CN=mallory",
            "-addext",
            f"subjectAltName=URI:{spiffe('orders')}",
        ],
        check=True,
        capture_output=True,
    )
    try:
        with tls_to(mesh, ports["pay_in"], (cert, key)) as conn:
            conn.sendall(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            conn.recv(100)
    except (ssl.SSLError, ConnectionError):
        pass
    assert authn_failures(mesh, "untrusted_certificate")


BAD_SVIDS: dict[str, tuple[dict[str, Any], str, str]] = {
    # name: (forge_leaf arguments, error.type, a word of error.message)
    "expired": (
        {"uris": (str(spiffe("orders")),), "not_after": NOW - timedelta(minutes=1)},
        "expired",
        "expired at",
    ),
    "no URI SAN": ({"dns": ("orders.shop",)}, "uri_san_count", "0 URI SANs"),
    "two URI SANs": (
        {"uris": (str(spiffe("orders")), str(spiffe("catalog")))},
        "uri_san_count",
        "2 URI SANs",
    ),
    "wrong trust domain": (
        {"uris": ("spiffe://evil.example/ns/shop/sa/orders",)},
        "wrong_trust_domain",
        "trust domain",
    ),
}


@pytest.mark.parametrize("case", list(BAD_SVIDS))
def test_bad_certificate_matrix_over_real_tls(
    mesh: Mesh, ports: dict[str, int], tmp_path: Path, case: str
) -> None:
    """Certificates signed by the mesh's own CA but not valid X.509-SVIDs: each connection is
    refused, and its authn event records what was presented (hash, expiry, names)."""
    arguments, reason, words = BAD_SVIDS[case]
    key = ec.generate_private_key(ec.SECP256R1())
    not_before = NOW - timedelta(days=2) if case == "expired" else None
    leaf = forge_leaf(
        load_ca_cert(mesh.data),
        load_ca_key(mesh.data),
        now=NOW,
        key=key,
        not_before=not_before,
        **arguments,
    )
    cert, key_file = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert.write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(key_to_pem(key))
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with tls_to(mesh, ports["pay_in"], (cert, key_file)) as conn:
            conn.sendall(b"GET /hello HTTP/1.1\r\nhost: x\r\n\r\n")
            if not conn.recv(100):
                raise ConnectionResetError("closed without an answer")
    fingerprint = leaf.fingerprint(hashes.SHA256()).hex()
    [event] = mesh.wait_events(
        lambda e: e["kind"] == "authn" and e.get("tls", {}).get("peer_cert_sha256") == fingerprint
    )
    assert event["outcome"] == "failure" and event["error"]["type"] == reason
    assert words in event["error"]["message"]
    assert event["tls"]["peer_not_after"] == int(leaf.not_valid_after_utc.timestamp())
    assert "mutual" not in event["tls"] and event["tls"]["version"] == "TLSv1.3"  # false: omitted
    presented = event["labels"]
    assert presented["presented.subject"] == leaf.subject.rfc4514_string()
    assert presented["presented.issuer"] == load_ca_cert(mesh.data).subject.rfc4514_string()
    for uri in arguments.get("uris", ()):
        assert f"URI:{uri}" in presented["presented.sans"]
    assert "identity" not in event["source"]  # nothing was proven


def test_malformed_http_gets_400_and_an_event(mesh: Mesh, ports: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", ports["orders_out"]), timeout=5) as conn:
        conn.sendall(b"GET /ok HTTP/1.1\r\nHost: x\r\nBad Header: y\r\n\r\n")
        reply = conn.recv(1000)
    assert reply.startswith(b"HTTP/1.1 400")
    assert mesh.wait_events(lambda e: e.get("error", {}).get("type") == "downstream_protocol_error")


def test_slowloris_gets_a_header_timeout(mesh: Mesh, ports: dict[str, int]) -> None:
    with tls_client_as_orders(mesh, ports["pay_in"]) as conn:
        conn.sendall(b"GET /slowloris HTTP/1.1\r\nHost: x\r\n")  # never finishes the head
        conn.settimeout(5)
        reply = conn.recv(1000)
    assert reply.startswith(b"HTTP/1.1 408")
    assert mesh.wait_events(lambda e: e.get("error", {}).get("type") == "stream_idle_timeout")


def tls_client_as_orders(mesh: Mesh, port: int) -> ssl.SSLSocket:
    return tls_to(mesh, port, mesh.identity_files("orders"))


def test_websocket_upgrade_is_passed_through(mesh: Mesh, ports: dict[str, int]) -> None:
    conn, head = open_websocket(ports["orders_out"], "ws-1")
    with conn:
        assert head.startswith(b"HTTP/1.1 101")
        rest = head.split(b"\r\n\r\n", 1)[1]
        conn.sendall(b"ping")
        while b"echo:ping" not in rest:
            rest += conn.recv(1000)
    events = mesh.wait_events(lambda e: by_request_id("ws-1")(e) and e["direction"] == "outbound")
    assert events[0]["http"]["status"] == 101 and events[0]["labels"]["upgrade"] == "websocket"


def raw(port: int, head: bytes) -> bytes:
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(head)
        answer = b""
        while chunk := conn.recv(4096):
            answer += chunk
    return answer


def test_a_response_cut_short_is_a_failure(mesh: Mesh, ports: dict[str, int]) -> None:
    raw(
        ports["orders_out"], b"GET /short HTTP/1.1\r\nHost: payments\r\nx-request-id: cut-1\r\n\r\n"
    )
    events = mesh.wait_events(lambda e: by_request_id("cut-1")(e) and e["direction"] == "inbound")
    assert events and events[0]["outcome"] == "failure"
    assert events[0]["labels"]["envoy.response_flags"] == "UC"
    assert events[0]["http"]["response_bytes"] == 10


def test_http_1_0_clients_get_no_upgrade_and_no_trailers(mesh: Mesh, ports: dict[str, int]) -> None:
    # HTTP/1.0 has no 101 and no chunked framing: the upgrade is not passed on, and trailers
    # are dropped from a response that is otherwise whole.
    answer = raw(
        ports["orders_out"],
        b"GET /trailers HTTP/1.0\r\nHost: payments\r\nx-request-id: old-1\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 200 ") and answer.endswith(b"hello")
    [event] = mesh.wait_events(lambda e: by_request_id("old-1")(e) and e["direction"] == "outbound")
    assert event["outcome"] == "success" and "envoy.response_flags" not in event.get("labels", {})
    upgraded = raw(
        ports["orders_out"],
        b"GET /ws HTTP/1.0\r\nHost: payments\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
        b"x-request-id: old-ws\r\n\r\n",
    )
    assert not upgraded.startswith(b"HTTP/1.1 101")
    [event] = mesh.wait_events(
        lambda e: by_request_id("old-ws")(e) and e["direction"] == "outbound"
    )
    assert event["http"].get("status") != 101 and event["outcome"] == "failure"


def test_tcp_mode_one_event_per_connection(mesh: Mesh, ports: dict[str, int]) -> None:
    with socket.create_connection(("127.0.0.1", ports["tcp_out"]), timeout=5) as conn:
        conn.sendall(b"hello tcp")
        assert conn.recv(100) == b"hello tcp"
    events = mesh.wait_events(
        lambda e: (
            e["kind"] == "tcp" and e["direction"] == "inbound" and e["tcp"].get("sent_bytes") == 9
        )
    )
    assert events and events[0]["source"]["identity"] == str(spiffe("orders"))
    assert events[0]["tcp"]["received_bytes"] == 9


def curl(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--silent", "--show-error", "--max-time", "10", *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_curl_with_an_svid_is_served_and_attributed(mesh: Mesh, ports: dict[str, int]) -> None:
    cert, key = mesh.identity_files("orders")
    # -k: the sidecar is named by a URI SAN, which curl's host name check does not know
    result = curl(
        "-k",
        "--cert",
        str(cert),
        "--key",
        str(key),
        "-H",
        "x-request-id: curl-svid",
        f"https://127.0.0.1:{ports['pay_in']}/hello",
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == "hello from payments"
    [event] = mesh.wait_events(by_request_id("curl-svid"))
    assert event["source"]["identity"] == str(spiffe("orders"))


def test_curl_without_a_certificate_is_refused(mesh: Mesh, ports: dict[str, int]) -> None:
    before = len(authn_failures(mesh, "no_client_certificate", timeout=0))  # as of now
    result = curl("-k", f"https://127.0.0.1:{ports['pay_in']}/hello")
    assert result.returncode != 0
    deadline = time.monotonic() + EVENT_WAIT_S
    while len(authn_failures(mesh, "no_client_certificate")) <= before:
        assert time.monotonic() < deadline, "no authn event for curl without a certificate"
        time.sleep(0.1)


def test_openssl_s_client_sees_an_svid_with_one_uri_san(mesh: Mesh, ports: dict[str, int]) -> None:
    cert, key = mesh.identity_files("orders")
    result = subprocess.run(
        [
            "openssl",
            "s_client",
            "-connect",
            f"127.0.0.1:{ports['pay_in']}",
            "-cert",
            str(cert),
            "-key",
            str(key),
            "-CAfile",
            str(mesh.data / "ca" / "ca.pem"),
            "-showcerts",
        ],
        input="",
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert "Verify return code: 0 (ok)" in result.stdout
    assert "TLSv1.3" in result.stdout


def test_tcp_mode_delivers_the_reply_to_a_client_that_half_closed(
    mesh: Mesh, ports: dict[str, int]
) -> None:
    # `printf x | nc`: the client sends, shuts its write side, and reads the answer. TLS
    # between the sidecars cannot carry the half-close, so the connection stays open for it.
    with socket.create_connection(("127.0.0.1", ports["tcp_out"]), timeout=10) as conn:
        conn.sendall(b"half-close")
        conn.shutdown(socket.SHUT_WR)
        echoed = b""
        while len(echoed) < 10 and (chunk := conn.recv(100)):
            echoed += chunk
    assert echoed == b"half-close"
    events = mesh.wait_events(
        lambda e: (
            e["kind"] == "tcp"
            and e["direction"] == "outbound"
            and e["tcp"].get("sent_bytes") == 10
            and e["tcp"].get("received_bytes") == 10
        )
    )
    assert events and events[0]["tcp"]["end"] == "downstream_closed"


def test_a_client_that_gives_up_mid_body_is_dc_at_once(mesh: Mesh, ports: dict[str, int]) -> None:
    # not a 504 blamed on the app after the request timeout: the caller went away
    with socket.create_connection(("127.0.0.1", ports["orders_out"]), timeout=10) as conn:
        conn.sendall(
            b"POST /echo HTTP/1.1\r\nHost: payments\r\ncontent-length: 100\r\n"
            b"x-request-id: gave-up\r\n\r\nabc"
        )
        time.sleep(0.2)
    [event] = mesh.wait_events(
        lambda e: by_request_id("gave-up")(e) and e["direction"] == "outbound"
    )
    assert event["labels"]["envoy.response_flags"] == "DC" and event["duration_us"] < 1_500_000


def test_a_malformed_body_is_a_400(mesh: Mesh, ports: dict[str, int]) -> None:
    answer = raw(
        ports["orders_out"],
        b"POST /echo HTTP/1.1\r\nHost: payments\r\ntransfer-encoding: chunked\r\n"
        b"x-request-id: bad-chunk\r\n\r\n5\r\nhelloXX0\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 400 "), answer
    [event] = mesh.wait_events(
        lambda e: by_request_id("bad-chunk")(e) and e["direction"] == "outbound"
    )
    assert event["labels"]["envoy.response_flags"] == "DPE" and event["http"]["status"] == 400


def test_the_inbound_listener_outlives_running_out_of_descriptors(
    mesh: Mesh, ports: dict[str, int]
) -> None:
    # With its descriptors used up, accept() fails (EMFILE); once connections close the
    # listener must accept again (it closed for good before).
    pid = mesh.local.sidecars["payments"].pid
    before = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    idle: list[socket.socket] = []
    try:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, (64, before[1]))
        for _ in range(100):
            idle.append(socket.create_connection(("127.0.0.1", ports["pay_in"]), timeout=5))
        time.sleep(0.5)
    finally:
        for conn in idle:
            conn.close()
        resource.prlimit(pid, resource.RLIMIT_NOFILE, before)
    time.sleep(0.5)
    response = httpx.get(
        f"http://127.0.0.1:{ports['orders_out']}/hello", headers={"host": "payments"}
    )
    assert response.status_code == 200
