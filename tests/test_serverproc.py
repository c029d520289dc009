"""`free_port`: ports a child binds a moment later, never ones the kernel may give away.
`ServerProcess.start`: ends as soon as the server answers or exits."""

from __future__ import annotations

import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from auditmesh import serverproc


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = serverproc._ephemeral_low()
    ports = [serverproc.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= port < low for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        draws = iter([taken, taken])
        real = random.randrange
        monkeypatch.setattr(random, "randrange", lambda a, b: next(draws, None) or real(a, b))
        port = serverproc.free_port()
        assert port != taken


def test_no_room_below_the_range_falls_back_to_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serverproc, "_ephemeral_low", lambda: 1024)
    port = serverproc.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


def test_a_server_that_exits_at_start_is_reported_at_once_with_its_output(
    tmp_path: Path,
) -> None:
    server = serverproc.ServerProcess(tmp_path / "data", extra=["--no-such-option"])
    server.log_path.write_text("an earlier run's output\n")  # the log is appended to
    started = time.monotonic()
    with pytest.raises(RuntimeError) as raised:
        server.start(timeout_s=600)
    assert time.monotonic() - started < 60  # its exit ended the wait, not the bound
    message = str(raised.value)
    assert "server exited with code 2 before it answered" in message
    assert "unrecognized arguments: --no-such-option" in message  # argparse, on stderr
    assert str(server.log_path) in message and "an earlier run" not in message


def test_a_live_server_that_never_answers_is_killed_at_the_bound(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = subprocess.Popen

    def silent(_: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        kwargs["stdout"].write(b"loading\n")  # what it said before it went quiet
        return real([sys.executable, "-c", "import time; time.sleep(60)"], **kwargs)

    monkeypatch.setattr(subprocess, "Popen", silent)
    server = serverproc.ServerProcess(tmp_path / "data")
    with pytest.raises(RuntimeError) as raised:
        server.start(timeout_s=1.0)
    message = str(raised.value)
    assert f"server did not answer at {server.url} within 1.0 s" in message
    assert str(server.log_path) in message and "loading" in message
    assert server.proc is None  # killed, not left running


def test_a_server_that_does_not_stop_is_killed_not_left_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """SIGTERM ignored: `stop` kills the process at its bound and says so."""
    real = subprocess.Popen
    ignoring = (
        "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
        "print('ignoring', flush=True); time.sleep(60)"
    )

    def stubborn(_: list[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        return real([sys.executable, "-c", ignoring], **kwargs)

    monkeypatch.setattr(subprocess, "Popen", stubborn)
    monkeypatch.setattr(serverproc.ServerProcess, "_answers", lambda self: True)
    server = serverproc.ServerProcess(tmp_path / "data").start()
    process = server.proc
    assert process is not None
    deadline = time.monotonic() + 60  # a SIGTERM before the handler is set would end it
    while "ignoring" not in server.log_path.read_text() and time.monotonic() < deadline:
        time.sleep(0.02)
    with pytest.raises(RuntimeError, match=r"did not stop within 1\.0 s of SIGTERM"):
        server.stop(timeout_s=1.0)
    assert process.poll() == -signal.SIGKILL and server.proc is None
