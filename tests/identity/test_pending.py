"""DIR/pending under stress (pending.py): a log that refuses one file, a server that cannot
commit for now, a server stopping, two processes at the lock, a directory with no log yet,
a folder others can write to. Real files, a real ledger and collector, a real server."""

from __future__ import annotations

import os
import pwd
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import msgspec
import pytest

from auditmesh.cli.main import main
from auditmesh.collector import Collector
from auditmesh.datadir import Ledger, open_ledger, writer_lock
from auditmesh.events import canonical_bytes, decode_event
from auditmesh.pending import (
    PendingWatcher,
    UnsafePendingDir,
    absorb,
    pending_dir,
    queue_event,
)
from auditmesh.serverproc import ServerProcess
from tests.identity.conftest import CLI_ID as ID
from tests.identity.conftest import pending_event


@contextmanager
def _collector(data: Path) -> Iterator[tuple[Ledger, Collector]]:
    ledger = open_ledger(data)
    collector = Collector(ledger.log, checkpoint_interval_ns=10**12)
    collector.start()
    try:
        yield ledger, collector
    finally:
        collector.stop()
        ledger.close()


def _stored_ids(data: Path) -> list[str]:
    ledger = open_ledger(data, create=False)
    try:
        return [decode_event(d).id for _, d in ledger.store.entries(0, ledger.log.size)]
    finally:
        ledger.close()


def _queued(data: Path) -> list[str]:
    return sorted(p.name for p in pending_dir(data).iterdir())


def test_an_id_the_log_holds_for_another_event_is_set_aside_and_the_rest_goes(
    tmp_path: Path,
) -> None:
    """EventConflict refuses a batch whole: one such file must not hold back the others
    forever, nor be lost. It is set aside like a file that is no event, saying why."""
    data = tmp_path / "data"
    stored, later = pending_event(1), pending_event(2)
    other = msgspec.structs.replace(stored, outcome="failure")  # same id, other content
    said: list[str] = []
    with _collector(data) as (_, collector):
        collector.submit([stored]).result(timeout=10)
        queue_event(data, other)
        queue_event(data, later)
        watcher = PendingWatcher(data, collector.submit, report=said.append)
        watcher.once()
        watcher.once()  # nothing left to say
    assert _stored_ids(data) == [stored.id, later.id]
    name = f"{stored.id}.json"
    assert _queued(data) == [f"{name}.refused", f"{name}.refused.why"]
    assert (pending_dir(data) / f"{name}.refused").read_bytes() == canonical_bytes(other)
    why = (pending_dir(data) / f"{name}.refused.why").read_text()
    assert "the log holds another event under this id" in why and "entry 0" in why
    assert "give it a new id" in why and not why.startswith("line ")
    assert len(said) == 2, said  # one event taken, one file set aside: said once each
    assert "took 1 queued audit event" in said[0]
    assert f"set aside {pending_dir(data) / name}.refused" in said[1] and "entry 0" in said[1]


def test_ca_token_is_recorded_though_an_older_queued_file_conflicts(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    stored = pending_event(1)
    with _collector(data) as (_, collector):
        collector.submit([stored]).result(timeout=10)
    queue_event(data, msgspec.structs.replace(stored, outcome="failure"))
    capsys.readouterr()
    assert main(["ca", "token", "--id", ID, "--data", str(data)]) == 0
    assert "recorded at ledger index 1" in capsys.readouterr().err
    assert _queued(data) == [f"{stored.id}.json.refused", f"{stored.id}.json.refused.why"]


def test_an_event_too_large_for_the_log_is_set_aside_and_the_rest_goes(tmp_path: Path) -> None:
    data = tmp_path / "data"
    big, small = pending_event(1, note="x" * 70_000), pending_event(2)
    queue_event(data, big)
    queue_event(data, small)
    with _collector(data) as (_, collector):
        absorbed = absorb(data, collector.submit)
    assert absorbed.indices == {small.id: 0}
    assert absorbed.refused == (pending_dir(data) / f"{big.id}.json.refused",)
    assert "at most 65535" in absorbed.reasons[0]
    assert _stored_ids(data) == [small.id]


def test_a_file_refused_twice_keeps_both_copies(tmp_path: Path) -> None:
    data = tmp_path / "data"
    folder = pending_dir(data)
    folder.mkdir(parents=True, mode=0o700)
    with _collector(data) as (_, collector):
        (folder / "a.json").write_text("first")
        absorb(data, collector.submit)
        (folder / "a.json").write_text("second")  # renamed back, still not an event
        absorb(data, collector.submit)
    assert (folder / "a.json.refused").read_text() == "first"
    assert (folder / "a.json.2.refused").read_text() == "second"
    assert (folder / "a.json.2.refused.why").exists()


def test_a_server_that_cannot_commit_keeps_the_files_and_says_so_once(tmp_path: Path) -> None:
    """CommitFailed (the database locked by another process past the busy timeout): the
    files stay, each round tries again, and the operator reads it once, then its end."""
    data = tmp_path / "data"
    event = pending_event(1)
    said: list[str] = []
    with _collector(data) as (ledger, collector):
        ledger.store._writer.execute("PRAGMA busy_timeout=100")  # not 10 s, for the test
        queue_event(data, event)
        watcher = PendingWatcher(data, collector.submit, report=said.append)
        other = sqlite3.connect(ledger.store.path, isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")  # e.g. the sqlite3 shell, mid-transaction
            for _ in range(3):
                watcher.once()
            assert _queued(data) == [f"{event.id}.json"]
            other.execute("ROLLBACK")
        finally:
            other.close()
        watcher.once()
    assert len(said) == 3, said
    assert f"cannot take the audit events queued in {pending_dir(data)}" in said[0]
    assert "database is locked" in said[0] and "stay queued" in said[0]
    assert "taken again" in said[1] and "took 1 queued audit event" in said[2]
    assert _queued(data) == [] and _stored_ids(data) == [event.id]


def test_what_is_queued_in_the_last_interval_is_taken_as_the_server_stops(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    first, last = pending_event(1), pending_event(2)
    said: list[str] = []
    queue_event(data, first)
    with _collector(data) as (_, collector):
        watcher = PendingWatcher(data, collector.submit, interval_s=3600, report=said.append)
        watcher.start()
        deadline = time.monotonic() + 60  # ends as soon as it holds: a bound for a loaded runner
        while not said and time.monotonic() < deadline:  # its first round took `first`
            time.sleep(0.01)
        assert said, "the watcher's first round did not run"
        queue_event(data, last)  # the next round would be an hour away
        watcher.stop()
    assert _stored_ids(data) == [first.id, last.id] and _queued(data) == []


def test_a_command_that_finds_the_ledger_held_waits_for_it_and_leaves_nothing_behind(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Another process holds the ledger (another `ca` command, a server stopping) and lets
    it go without taking the event: the command takes it itself once the lock is free,
    rather than saying a server will, with no server to do it."""
    open_ledger(data).close()
    codes: list[int] = []
    with writer_lock(data):  # the other process
        command = threading.Thread(
            target=lambda: codes.append(main(["ca", "token", "--id", ID, "--data", str(data)]))
        )
        command.start()
        deadline = time.monotonic() + 60  # ends as soon as it holds: a bound for a loaded runner
        while not any(pending_dir(data).glob("*.json")) and time.monotonic() < deadline:
            time.sleep(0.01)
        assert any(pending_dir(data).glob("*.json")), "the command queued nothing"
    command.join(timeout=30)
    assert codes == [0]
    assert "recorded at ledger index 0" in capsys.readouterr().err
    assert _queued(data) == [] and len(_stored_ids(data)) == 1


def test_a_command_before_the_first_server_leaves_the_log_to_it(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`ca init`, `ca token`, then the first `server --origin`: the command must not make
    the log (with the host name as origin, which the server would then refuse to reopen
    under its own); the server takes the queued event as it starts."""
    capsys.readouterr()
    assert main(["ca", "token", "--id", ID, "--data", str(data)]) == 0
    err = capsys.readouterr().err
    assert "has no log yet" in err and "the first `auditmesh server --data" in err
    assert not (data / "ledger.db").exists()
    event_id = err.split("audit event ")[1].split()[0]
    extra = ["--origin", "audit.example.org/mesh", "--mesh-listen", "off"]
    with ServerProcess(data, extra=extra) as server:
        deadline = time.monotonic() + 60  # ends as soon as it holds: a bound for a loaded runner
        while time.monotonic() < deadline:
            answer = httpx.get(f"{server.url}/v1/events/{event_id}", headers=server.auth)
            if answer.status_code == 200:
                break
            time.sleep(0.1)
        assert answer.status_code == 200, answer.text
        assert "audit.example.org/mesh" in httpx.get(server.url + "/log/checkpoint").text
    assert _queued(data) == []


def test_a_queue_others_can_write_to_is_neither_filled_nor_taken(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Whatever lies in DIR/pending becomes an attested event: a folder others can write to
    could slip in any event, so the command hands nothing out and the writer takes nothing."""
    folder = pending_dir(data)
    folder.mkdir(mode=0o700)
    folder.chmod(0o777)
    planted = pending_event(1)
    (folder / f"{planted.id}.json").write_bytes(canonical_bytes(planted))
    capsys.readouterr()
    assert main(["ca", "token", "--id", ID, "--data", str(data)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "nothing was handed out" in err
    assert f"run `chmod 700 {folder}`" in err
    with _collector(data) as (_, collector), pytest.raises(UnsafePendingDir, match="mode 777"):
        absorb(data, collector.submit)
    assert _queued(data) == [f"{planted.id}.json"] and _stored_ids(data) == []


def test_what_a_crash_left_half_written_is_neither_taken_nor_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    event = pending_event(1)
    path = queue_event(data, event)
    torn = pending_dir(data) / f".{path.name}.0123456789ab.tmp"  # write_atomic, cut short
    torn.write_bytes(canonical_bytes(event)[:20])
    with _collector(data) as (_, collector):
        absorbed = absorb(data, collector.submit)
    assert absorbed.indices == {event.id: 0} and absorbed.refused == ()
    assert _queued(data) == [torn.name]


def test_the_operator_is_the_user_the_command_runs_as_not_what_its_environment_says(
    data: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    open_ledger(data).close()
    for name in ("LOGNAME", "USER", "LNAME", "USERNAME"):
        monkeypatch.setenv(name, "someone-else")
    assert main(["ca", "token", "--id", ID, "--data", str(data)]) == 0
    ledger = open_ledger(data, create=False)
    try:
        [(_, stored)] = list(ledger.store.entries(0, ledger.log.size))
    finally:
        ledger.close()
    event = decode_event(stored)
    user = pwd.getpwuid(os.getuid()).pw_name
    assert event.labels["identity.operator"].split("@")[0] == user
    assert event.reporter == f"auditmesh-ca-cli:{event.labels['identity.operator']}"


def test_a_command_whose_event_the_holder_does_not_take_says_where_it_waits(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The process holding the ledger takes nothing (a server that cannot commit): after a
    few seconds the command says where the event waits, who holds the ledger, and what
    takes it, and hands out what it made, since the event is durably queued."""
    open_ledger(data).close()
    with writer_lock(data):
        assert main(["ca", "token", "--id", ID, "--data", str(data)]) == 0
    out, err = capsys.readouterr()
    [queued] = pending_dir(data).glob("*.json")
    assert out.strip() and f"queued in {queued}, not appended yet" in err
    assert f"auditmesh server (pid {os.getpid()}), which holds the ledger, has not taken it" in err
    assert "its output says why" in err and f"ca token`/`ca issue` on {data}" in err
