"""Fixtures of the console's browser tests: one demo ledger, its server, a tampered copy, Chromium.

The demo runs once per test module (`auditmesh demo --duration 10 --exit`, ~25 s); the tests
read its ledger through a real `auditmesh server`. The tampered copy is a consistent SQLite
backup of that ledger in which one stored event's bytes were edited, served by a second server:
the browser must refuse its proof.
"""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from auditmesh.events import AuditEvent, decode_event
from auditmesh.serverproc import ServerProcess
from tests.console.browser import Browser, ensure_chromium

SERVER_FLAGS = ("--mesh-listen", "off", "--otlp-grpc", "off")


@dataclass(frozen=True)
class Demo:
    data: Path
    events: list[tuple[int, AuditEvent]]

    def first(self, **match: str) -> tuple[int, AuditEvent]:
        """The first event whose dotted fields equal `match` (e.g. authz__decision="deny")."""
        for index, event in self.events:
            if all(_field(event, key.split("__")) == value for key, value in match.items()):
                return index, event
        raise LookupError(f"the demo recorded no event with {match}")


def _field(event: object, path: list[str]) -> object:
    for name in path:
        event = getattr(event, name, None)
    return event


@dataclass(frozen=True)
class Served:
    url: str
    token: str


@pytest.fixture(scope="module")
def chromium() -> None:
    reason = ensure_chromium()
    if reason is not None:
        pytest.skip(f"browser tests need Debian's chromium: {reason}")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory, chromium: None) -> Demo:
    data = tmp_path_factory.mktemp("console") / "demo-data"
    command = [sys.executable, "-m", "auditmesh", "demo", "--duration", "10", "--exit"]
    result = subprocess.run(
        [*command, "--data", str(data)], capture_output=True, text=True, timeout=180
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    db = sqlite3.connect(data / "ledger.db")
    try:
        rows = db.execute("SELECT idx, data FROM events ORDER BY idx").fetchall()
    finally:
        db.close()
    return Demo(data, [(int(i), decode_event(bytes(d))) for i, d in rows])


def _token(data: Path) -> str:
    path = data / "keys" / "api.token"
    return path.read_text().strip() if path.exists() else "no-token-configured"


def tamper_copy(source: Path, target: Path, index: int) -> None:
    """A consistent copy of the ledger and keys, with the stored bytes of entry `index` edited
    (a denied call turned into an allowed one), as someone with write access to the disk could."""
    target.mkdir(parents=True)
    shutil.copytree(source / "keys", target / "keys")
    src = sqlite3.connect(source / "ledger.db")
    dst = sqlite3.connect(target / "ledger.db")
    try:
        src.backup(dst)
        (raw,) = dst.execute("SELECT data FROM events WHERE idx = ?", (index,)).fetchone()
        edited = bytes(raw).replace(b'"decision":"deny"', b'"decision":"allow"', 1)
        assert edited != bytes(raw)
        dst.execute("UPDATE events SET data = ?, decision = 'allow' WHERE idx = ?", (edited, index))
        dst.commit()
    finally:
        src.close()
        dst.close()


@pytest.fixture(scope="module")
def denied(demo: Demo) -> tuple[int, AuditEvent]:
    return demo.first(authz__decision="deny")


@pytest.fixture(scope="module")
def tampered_data(
    demo: Demo, denied: tuple[int, AuditEvent], tmp_path_factory: pytest.TempPathFactory
) -> Path:
    target = tmp_path_factory.mktemp("tampered") / "data"
    tamper_copy(demo.data, target, denied[0])
    return target


@pytest.fixture(scope="module")
def server(demo: Demo, tampered_data: Path) -> Iterator[Served]:
    with ServerProcess(demo.data, extra=SERVER_FLAGS) as proc:
        yield Served(proc.url, _token(demo.data))


@pytest.fixture(scope="module")
def tampered_server(tampered_data: Path) -> Iterator[Served]:
    with ServerProcess(tampered_data, extra=SERVER_FLAGS) as proc:
        yield Served(proc.url, _token(tampered_data))


@contextmanager
def logged_in(served: Served) -> Iterator[Browser]:
    """Chromium on `served`'s console, logged in with its token; closed at the end."""
    opened = Browser(served.url)
    try:
        opened.login(served.token)
        yield opened
    finally:
        opened.close()


@pytest.fixture(scope="module")
def browser(server: Served) -> Iterator[Browser]:
    with logged_in(server) as opened:
        yield opened
