"""A `auditmesh server` child process on loopback, for the demo, tests and benchmarks."""

from __future__ import annotations

import os
import random
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import httpx

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_handed_out: set[int] = set()

# How long a live server may take to answer before `start` gives up. Start returns as soon
# as the server answers (or raises as soon as it exits), so only a stuck server waits this
# long; 20 s was too short on a loaded 2-vCPU CI runner.
START_TIMEOUT_S = 120.0


def free_port() -> int:
    """A loopback TCP port nobody listens on, for a child to bind a moment later.

    Drawn below the kernel's ephemeral range: a port the kernel picked (`bind(0)`) can be
    given again to any outgoing connection's source before the child binds it, which failed
    one test run in several with "address already in use". Ports below the range are only
    ever taken by an explicit bind, and this process never hands out the same one twice.
    """
    low = _ephemeral_low()
    start = max(1024, low // 2)  # unprivileged
    for _ in range(200 if start < low else 0):
        port = random.randrange(start, low)
        if port not in _handed_out and _bindable(port):
            _handed_out.add(port)
            return port
    with socket.socket() as sock:  # no room below the range: let the kernel choose
        sock.bind(("127.0.0.1", 0))
        chosen: int = sock.getsockname()[1]
        return chosen


def _ephemeral_low() -> int:
    try:
        return int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768  # Linux's default (net.ipv4.ip_local_port_range)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


class ServerProcess:
    """Starts the server, waits until it answers, stops it with SIGTERM (or kills it)."""

    def __init__(
        self, data_dir: Path, *, port: int | None = None, extra: Sequence[str] = ()
    ) -> None:
        self.data_dir = data_dir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.extra = list(extra)
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = data_dir.parent / f"{data_dir.name}-server.log"
        self._logged_from = 0  # where this run's output starts in the log

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header for API reads (the token the server wrote at start)."""
        token = (self.data_dir / "keys" / "api.token").read_text().strip()
        return {"authorization": f"Bearer {token}"}

    def start(self, timeout_s: float = START_TIMEOUT_S) -> ServerProcess:
        """Start the server; return as soon as it answers HTTP.

        If the process exits first, this raises at once with its exit code and output. A
        process that is alive but has not answered within `timeout_s` is killed: that bound
        is generous because a server starting on a loaded machine is slow, not broken, and
        waiting costs nothing once it answers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "auditmesh", "server", "--data", str(self.data_dir)]
        command += ["--listen", f"127.0.0.1:{self.port}", *self.extra]
        with open(self.log_path, "ab") as log:
            # the log is appended to: earlier runs' output is not this run's
            self._logged_from = logged_from = log.tell()
            self.proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                code = self.proc.wait(0.05)  # a pause that ends as soon as the process does
            except subprocess.TimeoutExpired:
                pass
            else:
                output = self._output(logged_from)
                raise RuntimeError(f"server exited with code {code} before it answered; {output}")
            if self._answers():
                return self
            if time.monotonic() >= deadline:
                self.kill()
                raise RuntimeError(
                    f"server did not answer at {self.url} within {timeout_s} s (it was alive, "
                    f"now killed; a loaded machine may need a longer timeout_s); "
                    f"{self._output(logged_from)}"
                )

    def _answers(self) -> bool:
        try:
            httpx.get(self.url + "/log/checkpoint", timeout=1.0)
        except httpx.TransportError:  # not listening yet, or too busy to answer in time
            return False
        return True

    def _output(self, start: int) -> str:
        """The end of what this run wrote to its log, with the log's path, for an error."""
        with open(self.log_path, "rb") as log:
            log.seek(start)
            text = log.read().decode(errors="replace")
        return f"its output ({self.log_path}) ends:\n{text[-2000:]}"

    def stop(self, timeout_s: float = 60.0) -> int:
        """SIGTERM, and the exit code once the server has shut down (its last checkpoint
        signed). One still running after `timeout_s` is killed, never left behind, and
        this raises: a server that cannot stop is a bug to see."""
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            code = self.proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            pid = self.proc.pid
            self.kill()
            raise RuntimeError(
                f"server (pid {pid}) did not stop within {timeout_s} s of SIGTERM, so it was "
                f"killed; {self._output(self._logged_from)}"
            ) from None
        self.proc = None
        return code

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        self.proc = None

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if kind is None:
            self.stop()
        else:
            self.kill()
