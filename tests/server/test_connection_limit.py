"""The limit on open connections per listener (`--max-connections`, server/protocol.py) and
the deadline on the mesh listener's TLS handshakes, against real server processes over raw
sockets: past the limit a new connection is refused (503 with `Connection: close`, at once on
the plain listener, after its handshake on the mesh listener) while the open ones are
still served; a closed connection, or a handshake given up, frees its place; a client
that connects to the mesh listener and never sends its ClientHello is closed at the header
timeout (asyncio's default handshake timeout was 60 s, outside of any limit)."""

from __future__ import annotations

import asyncio
import functools
import json
import os
import resource
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import uvicorn
from starlette.applications import Starlette
from uvicorn.server import ServerState

from auditmesh.server.protocol import ConnectionLimit, DeadlineProtocol, admit, with_deadlines
from auditmesh.server.run import FD_RESERVE, MAX_CONNECTIONS
from auditmesh.serverproc import ServerProcess
from tests.server.meshserver import mesh_server
from tests.server.rawhttp import parse_answer

pytestmark = pytest.mark.integration

LIMIT = 3  # the servers' --max-connections in these tests
METRICS = b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"
BUNDLE = b"GET /v1/identity/bundle HTTP/1.1\r\nHost: x\r\n\r\n"
WAIT_S = 10.0  # how long a test waits for an answer, or for a place to be freed


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("connection-limit") / "data"
    extra = ["--max-connections", str(LIMIT), "--otlp-grpc", "off"]
    with ServerProcess(data, extra=extra) as running:
        yield running


def _ask(sock: socket.socket, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Sends `request`, reads its whole answer (the connection may stay open)."""
    sock.sendall(request)
    sock.settimeout(WAIT_S)
    received = b""
    while (answer := parse_answer(received)) is None:
        data = sock.recv(65536)
        assert data, f"closed without a whole answer: {received!r}"
        received += data
    return answer


def _read_to_close(sock: socket.socket) -> tuple[bytes, float]:
    """Everything the server sends until it closes the connection, and when it closed."""
    start = time.monotonic()
    sock.settimeout(WAIT_S)
    received = b""
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, ssl.SSLError):
            break
        except TimeoutError:  # still open after WAIT_S
            return received, float("inf")
        if not data:
            break
        received += data
    return received, time.monotonic() - start


def _eventually(attempt: Callable[[], bool]) -> float:
    """Tries `attempt` every 50 ms until it succeeds; how long that took."""
    start = time.monotonic()
    while not attempt():
        assert time.monotonic() - start < WAIT_S, "not within WAIT_S"
        time.sleep(0.05)
    return time.monotonic() - start


def _assert_refused(answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = answer
    assert status == 503
    assert headers["connection"] == "close"
    assert headers["content-type"] == "application/json"
    error = json.loads(body)
    assert error["max_connections"] == LIMIT
    assert "--max-connections" in error["error"]


def test_past_the_limit_a_new_connection_gets_503_and_open_ones_are_served(
    server: ServerProcess,
) -> None:
    with ExitStack() as stack:
        first = stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
        assert _ask(first, METRICS)[0] == 200  # kept alive
        idle = [
            stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
            for _ in range(LIMIT - 1)
        ]
        time.sleep(0.2)  # all accepted
        for _ in range(5):  # each refused at once, its request unread
            with socket.create_connection(("127.0.0.1", server.port)) as extra:
                extra.sendall(METRICS)
                received, closed_after_s = _read_to_close(extra)
            answer = parse_answer(received)
            assert answer is not None, received
            _assert_refused(answer)
            assert closed_after_s < 2.0
        assert _ask(first, METRICS)[0] == 200  # the open connections are still served
        assert _ask(idle[0], METRICS)[0] == 200

        for sock in idle:  # closing connections frees their places
            sock.close()

        def served() -> bool:
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                return _ask(sock, METRICS)[0] == 200

        _eventually(served)
        assert _ask(first, METRICS)[0] == 200
    log = server.log_path.read_text()
    assert "refused" in log and "--max-connections" in log  # the operator is told, too
    assert "Traceback" not in log


def _tls_context(bundle: bytes) -> ssl.SSLContext:
    context = ssl.create_default_context(cadata=bundle.decode())
    context.check_hostname = False
    return context


def test_mesh_connections_count_from_their_acceptance_handshakes_included(
    tmp_path: Path,
) -> None:
    """A TCP connection still in its TLS handshake holds a place: past the limit a new
    connection is answered 503 after its handshake, while an open one is served; the places
    of handshakes given up are free again once the handshake timeout has passed."""
    header_timeout_s = 1.0
    extra = ["--max-connections", str(LIMIT), "--header-timeout", f"{header_timeout_s:g}"]
    with mesh_server(tmp_path / "data", extra) as mesh:
        context = _tls_context(mesh.bundle())
        address = ("127.0.0.1", int(mesh.mesh_url.rsplit(":", 1)[1]))
        with ExitStack() as stack:
            first = stack.enter_context(context.wrap_socket(socket.create_connection(address)))
            assert _ask(first, BUNDLE)[0] == 200
            handshaking = [
                stack.enter_context(socket.create_connection(address)) for _ in range(LIMIT - 1)
            ]
            time.sleep(0.2)  # all accepted
            with context.wrap_socket(socket.create_connection(address)) as extra_tls:
                extra_tls.sendall(BUNDLE)
                received, closed_after_s = _read_to_close(extra_tls)
            answer = parse_answer(received)
            assert answer is not None, received
            _assert_refused(answer)
            assert closed_after_s < 2.0
            assert _ask(first, BUNDLE)[0] == 200  # open, kept alive

            for sock in handshaking:  # given up before their ClientHello
                sock.close()

            def served() -> bool:
                try:
                    with context.wrap_socket(socket.create_connection(address)) as sock:
                        return _ask(sock, BUNDLE)[0] == 200
                except (ssl.SSLError, OSError, AssertionError):
                    return False

            _eventually(served)
        assert "Traceback" not in mesh.server.log_path.read_text()


def test_a_failed_mesh_handshake_gives_back_its_place_at_once(tmp_path: Path) -> None:
    """A handshake that fails (plain HTTP sent to the TLS port, a client that refuses the
    server's certificate) gives back its place as it fails: LIMIT of them held the listener
    for the header timeout plus a second, refusing every client with 503 meanwhile."""
    header_timeout_s = 5.0
    extra = ["--max-connections", str(LIMIT), "--header-timeout", f"{header_timeout_s:g}"]
    with mesh_server(tmp_path / "data", extra) as mesh:
        context = _tls_context(mesh.bundle())
        address = ("127.0.0.1", int(mesh.mesh_url.rsplit(":", 1)[1]))
        untrusting = ssl.create_default_context()  # the system's CAs, not the mesh's
        start = time.monotonic()
        for attempt in range(2 * LIMIT):
            with socket.create_connection(address) as sock:
                if attempt % 2:
                    with pytest.raises(ssl.SSLCertVerificationError):
                        untrusting.wrap_socket(sock, server_hostname="localhost")
                else:
                    sock.sendall(BUNDLE)  # plain HTTP: no ClientHello
                    assert _read_to_close(sock)[1] < 2.0  # the server ends it
        time.sleep(0.2)  # the server has read the last client's alert and close
        for _ in range(LIMIT):  # each place is free well before the header timeout
            with context.wrap_socket(socket.create_connection(address)) as sock:
                assert _ask(sock, BUNDLE)[0] == 200
        assert time.monotonic() - start < header_timeout_s
        log = mesh.server.log_path.read_text()
        assert "Traceback" not in log and "refused" not in log


def test_a_mesh_client_that_never_sends_its_client_hello_is_closed_at_the_header_timeout(
    tmp_path: Path,
) -> None:
    header_timeout_s = 0.5
    with mesh_server(tmp_path / "data", ["--header-timeout", f"{header_timeout_s:g}"]) as mesh:
        address = ("127.0.0.1", int(mesh.mesh_url.rsplit(":", 1)[1]))
        with socket.create_connection(address) as sock:
            received, closed_after_s = _read_to_close(sock)
        assert received == b""
        assert header_timeout_s * 0.9 <= closed_after_s < header_timeout_s + 3.0
        with _tls_context(mesh.bundle()).wrap_socket(socket.create_connection(address)) as sock:
            assert _ask(sock, BUNDLE)[0] == 200  # a prompt handshake is unaffected
        assert "Traceback" not in mesh.server.log_path.read_text()


UPGRADE = (
    b"GET /metrics HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


def test_a_websocket_upgrade_offer_is_answered_as_http_and_its_place_comes_back(
    tmp_path: Path,
) -> None:
    """uvicorn handed an upgrade offer's connection to its WebSocket protocol, whose close
    never gave back the place: LIMIT offers (each answered 403, then closed) locked the
    listener for good."""
    extra = ["--max-connections", str(LIMIT), "--otlp-grpc", "off"]
    with ServerProcess(tmp_path / "data", extra=extra) as server:
        statuses = []
        for _ in range(LIMIT + 1):
            with socket.create_connection(("127.0.0.1", server.port)) as sock:
                statuses.append(_ask(sock, UPGRADE)[0])

        def all_served() -> bool:
            with ExitStack() as stack:
                socks = [
                    stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
                    for _ in range(LIMIT)
                ]
                return all(_ask(sock, METRICS)[0] == 200 for sock in socks)

        _eventually(all_served)
        assert statuses == [200] * (LIMIT + 1)  # the requests, the offers ignored (RFC 9110 §7.8)
        assert "Traceback" not in server.log_path.read_text()


def raw_closed_after(tls: ssl.SSLSocket) -> float:
    """How long until the server closes the TCP connection under `tls` (whose TLS close
    this client never answers)."""
    start = time.monotonic()
    with socket.socket(fileno=os.dup(tls.fileno())) as raw:
        raw.settimeout(WAIT_S)
        try:
            while raw.recv(65536):
                pass
        except ConnectionResetError:
            pass
        except TimeoutError:
            return float("inf")
    return time.monotonic() - start


def test_a_refused_mesh_connection_does_not_hold_its_descriptor_for_the_tls_close(
    tmp_path: Path,
) -> None:
    """A refused TLS connection holds no place; the server's TLS close waited for the peer's
    close_notify up to 30 s, so a client that never sent it held a descriptor that long."""
    with mesh_server(tmp_path / "data", ["--max-connections", "1"]) as mesh:
        context = _tls_context(mesh.bundle())
        address = ("127.0.0.1", int(mesh.mesh_url.rsplit(":", 1)[1]))
        with ExitStack() as stack:
            first = stack.enter_context(context.wrap_socket(socket.create_connection(address)))
            assert _ask(first, BUNDLE)[0] == 200
            refused = stack.enter_context(context.wrap_socket(socket.create_connection(address)))
            _assert_refused_with(1, _ask(refused, BUNDLE))
            assert raw_closed_after(refused) < 3.0
            assert _ask(first, BUNDLE)[0] == 200
        assert "Traceback" not in mesh.server.log_path.read_text()


def _assert_refused_with(limit: int, answer: tuple[int, dict[str, str], bytes]) -> None:
    status, headers, body = answer
    assert status == 503 and headers["connection"] == "close"
    assert json.loads(body)["max_connections"] == limit


@contextmanager
def _open_files_limited(monkeypatch: pytest.MonkeyPatch, soft: int, hard: int) -> Iterator[None]:
    """Server processes started meanwhile get these open-file limits (ulimit -n)."""

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))

    with monkeypatch.context() as patch:
        patch.setattr(subprocess, "Popen", functools.partial(subprocess.Popen, preexec_fn=limited))
        yield


def test_under_a_small_open_file_limit_a_listener_still_serves_several_connections(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ulimit -n 256 (macOS's default), with no room to raise it, left one connection per
    listener once 256 descriptors were kept for the rest: a second client got 503."""
    with _open_files_limited(monkeypatch, 256, 256):
        server = ServerProcess(tmp_path / "data", extra=["--otlp-grpc", "off"]).start()
    try:
        with ExitStack() as stack:
            socks = [
                stack.enter_context(socket.create_connection(("127.0.0.1", server.port)))
                for _ in range(8)
            ]
            assert [_ask(sock, METRICS)[0] for sock in socks] == [200] * 8
    finally:
        server.stop()
    assert "Traceback" not in server.log_path.read_text()


def test_a_small_soft_open_file_limit_is_raised_for_the_default_limit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = MAX_CONNECTIONS + FD_RESERVE  # one listener's
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip(f"the hard open-file limit ({hard}) is below {wanted}")
    with _open_files_limited(monkeypatch, 256, hard):
        server = ServerProcess(tmp_path / "data", extra=["--otlp-grpc", "off"]).start()
    try:
        assert server.proc is not None
        limits = (Path("/proc") / str(server.proc.pid) / "limits").read_text()
        soft = next(line for line in limits.splitlines() if line.startswith("Max open files"))
        assert int(soft.split()[3]) >= wanted
    finally:
        server.stop()
    assert "open connections per listener" not in server.log_path.read_text()


def test_a_refused_plain_connection_is_counted_once() -> None:
    """The operator's report says how many connections were refused: a plain one was
    counted at its acceptance and again as it was made, so every report after the first
    said twice the number."""
    reports: list[str] = []

    async def refuse_two() -> int:
        config = uvicorn.Config(Starlette(), lifespan="off", log_level="warning")
        config.load()
        protocol = with_deadlines(
            DeadlineProtocol, header_timeout_s=WAIT_S, body_timeout_s=WAIT_S, max_connections=1
        )
        limit = protocol.connection_limit = ConnectionLimit(1, report=reports.append)
        state = ServerState()

        def make() -> DeadlineProtocol:
            return protocol(config=config, server_state=state, app_state={})

        listener = await asyncio.get_running_loop().create_server(
            admit(make, tls=None), "127.0.0.1", 0
        )
        port = listener.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(METRICS)
            assert (await reader.readuntil(b"\r\n")).startswith(b"HTTP/1.1 404")  # it holds
            for _ in range(2):  # the only place
                extra_reader, extra_writer = await asyncio.open_connection("127.0.0.1", port)
                assert (await extra_reader.read()).startswith(b"HTTP/1.1 503")
                extra_writer.close()
                await extra_writer.wait_closed()
        finally:
            writer.close()
            await writer.wait_closed()
            listener.close()
            await listener.wait_closed()
        return limit.refused

    assert asyncio.run(refuse_two()) == 2
    assert len(reports) == 1 and "refused 1 new connection(s)" in reports[0]
