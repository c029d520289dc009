"""`auditmesh export ecs` on real ledgers: all events, --since, --cursor, --follow."""

from __future__ import annotations

import gzip
import os
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

from auditmesh.cli.export import tail
from auditmesh.cli.main import main
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import TLS, canonical_bytes
from auditmesh.export.ecs import timestamp_text
from auditmesh.ledger.merkle import leaf_hash
from tests.conftest import fill, generate
from tests.export.ecs_schema import EcsSchema
from tests.export.test_ecs import flatten


def read_docs(path: Path) -> list[dict[str, Any]]:
    lines = path.read_bytes().splitlines()
    return [msgspec.json.decode(line) for line in lines]


def test_exports_every_event_in_ledger_order(ledger: Ledger, tmp_path: Path) -> None:
    events = generate(300)
    fill(ledger, events, checkpoint_every=100)
    out = tmp_path / "audit.ndjson"
    assert main(["export", "ecs", "--data", str(ledger.data_dir), "-o", str(out)]) == 0
    docs = read_docs(out)
    assert [d["event"]["sequence"] for d in docs] == list(range(300))
    assert [d["event"]["id"] for d in docs] == [e.id for e in events]
    assert [d["event"]["hash"] for d in docs] == [
        leaf_hash(canonical_bytes(e)).hex() for e in events
    ]
    assert docs[0]["@timestamp"] == timestamp_text(int(events[0].time_ns))
    schema = EcsSchema.load_or_skip()
    for doc in docs[:50]:
        assert schema.problems(flatten(doc)) == []


def test_http_byte_counts_are_body_sizes(ledger: Ledger, tmp_path: Path) -> None:
    # An event's request_bytes/response_bytes count the body only (the sidecar adds up the
    # body data it relays): exactly ECS http.*.body.bytes. http.*.bytes (body and headers in
    # ECS) is named by issue 5 and kept, with the same count.
    events = [e for e in generate(20) if e.http is not None and e.http.response_bytes]
    fill(ledger, events)
    out = tmp_path / "audit.ndjson"
    assert main(["export", "ecs", "--data", str(ledger.data_dir), "-o", str(out)]) == 0
    for doc, event in zip(read_docs(out), events, strict=True):
        assert event.http is not None
        assert doc["http"]["response"] == {
            "status_code": event.http.status,
            "body": {"bytes": event.http.response_bytes},
            "bytes": event.http.response_bytes,
        }
        assert doc["http"]["request"]["body"] == {"bytes": event.http.request_bytes}
        assert doc["http"]["request"]["bytes"] == event.http.request_bytes


def test_since_selects_by_event_time(ledger: Ledger, tmp_path: Path) -> None:
    events = generate(200)
    fill(ledger, events)
    cut = events[120].time_ns // 1000 * 1000  # --since takes microseconds
    since = timestamp_text(cut)[:-4] + "Z"
    out = tmp_path / "since.ndjson"
    code = main(["export", "ecs", "--data", str(ledger.data_dir), "--since", since, "-o", str(out)])
    assert code == 0
    expected = [e.id for e in events if e.time_ns >= cut]
    assert [d["event"]["id"] for d in read_docs(out)] == expected
    assert len(expected) == 80

    future = tmp_path / "future.ndjson"
    argv = ["export", "ecs", "--data", str(ledger.data_dir), "--since", "2099-01-01T00:00:00Z"]
    assert main([*argv, "-o", str(future)]) == 0
    assert future.read_bytes() == b""


def test_cursor_resumes_without_repeating(ledger: Ledger, tmp_path: Path) -> None:
    events = generate(150)
    fill(ledger, events[:100])
    out, cursor = tmp_path / "out.ndjson", tmp_path / "ecs.cursor"
    argv = ["export", "ecs", "--data", str(ledger.data_dir), "-o", str(out)]
    argv += ["--cursor", str(cursor)]
    assert main(argv) == 0
    assert main(argv) == 0  # nothing new: nothing written
    assert len(read_docs(out)) == 100
    fill(ledger, events[100:])
    assert main(argv) == 0
    assert [d["event"]["sequence"] for d in read_docs(out)] == list(range(150))


def test_a_batch_torn_by_a_dead_run_is_cut_off_and_written_once(
    ledger: Ledger, tmp_path: Path
) -> None:
    events = generate(150)
    fill(ledger, events[:100])
    out, cursor = tmp_path / "out.ndjson", tmp_path / "ecs.cursor"
    argv = ["export", "ecs", "--data", str(ledger.data_dir), "-o", str(out), "--cursor"]
    assert main([*argv, str(cursor)]) == 0
    with open(out, "ab") as torn:  # a run killed mid-batch, after its write began
        torn.write(b'{"@timestamp": "2026-')
    fill(ledger, events[100:])
    assert main([*argv, str(cursor)]) == 0
    assert [d["event"]["sequence"] for d in read_docs(out)] == list(range(150))


@pytest.mark.integration
def test_a_first_run_killed_before_saving_its_position_writes_nothing_twice(
    ledger: Ledger, tmp_path: Path
) -> None:
    # The first run with --cursor is killed (SIGKILL, by strace, as it fsyncs the output)
    # after its first batch reached the file and before any position was saved. The next
    # run started from entry 0 again and appended that batch a second time.
    strace = shutil.which("strace")
    if strace is None:
        pytest.skip("needs strace to kill the export at a chosen system call")
    fill(ledger, generate(1500))
    out, cursor = tmp_path / "out.ndjson", tmp_path / "ecs.cursor"
    argv = [sys.executable, "-m", "auditmesh", "export", "ecs", "--data", str(ledger.data_dir)]
    argv += ["-o", str(out), "--cursor", str(cursor)]
    kill_at_fsync = [strace, "-f", "-qq", "-o", os.devnull, "-P", str(out)]
    kill_at_fsync += ["-e", "trace=fsync", "-e", "inject=fsync:signal=KILL"]
    killed = subprocess.run([*kill_at_fsync, *argv], capture_output=True, text=True)
    if "ptrace" in killed.stderr and not out.exists():
        pytest.skip(f"strace cannot trace here: {killed.stderr.strip()}")
    assert killed.returncode == -signal.SIGKILL, killed.stderr  # strace dies as its child did
    assert [d["event"]["sequence"] for d in read_docs(out)] == list(range(1000))
    assert main(argv[3:]) == 0  # the same export, run again
    assert [d["event"]["sequence"] for d in read_docs(out)] == list(range(1500))


@pytest.mark.integration
def test_a_full_disk_is_a_clear_error_and_the_next_run_goes_on(
    ledger: Ledger, tmp_path: Path
) -> None:
    # A real write failure: the process may write at most 300 KiB (RLIMIT_FSIZE, EFBIG), so
    # it fails in the middle of a batch of 1,000 documents.
    fill(ledger, generate(1500))
    out, cursor = tmp_path / "out.ndjson", tmp_path / "ecs.cursor"
    argv = [sys.executable, "-m", "auditmesh", "export", "ecs", "--data", str(ledger.data_dir)]
    argv += ["-o", str(out), "--cursor", str(cursor)]
    limit = 300 * 1024

    def limited() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))

    failed = subprocess.run(argv, capture_output=True, text=True, preexec_fn=limited)
    assert failed.returncode == 2, failed.stderr
    assert f"cannot write to {out}" in failed.stderr and "Traceback" not in failed.stderr
    assert read_docs(out) == []  # the torn first batch was cut off
    assert subprocess.run(argv, capture_output=True).returncode == 0
    assert [d["event"]["sequence"] for d in read_docs(out)] == list(range(1500))


def test_export_to_a_device_is_written_not_fsynced(ledger: Ledger) -> None:
    fill(ledger, generate(20))
    assert main(["export", "ecs", "--data", str(ledger.data_dir), "-o", os.devnull]) == 0


def test_an_empty_since_is_refused_not_read_as_no_since(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `--since "$SINCE"` with SINCE unset exported the whole trail, as `query` refuses it.
    fill(ledger, generate(5))
    out = tmp_path / "o.ndjson"
    assert (
        main(["export", "ecs", "--data", str(ledger.data_dir), "--since", "", "-o", str(out)]) == 2
    )
    assert "--since: '' is neither a duration" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("since", ["100000000d", "9999-12-31T23:59:59Z", "0001-01-01T00:00:00Z"])
def test_a_since_out_of_range_is_a_user_error(
    ledger: Ledger, since: str, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(ledger, generate(5))
    assert main(["export", "ecs", "--data", str(ledger.data_dir), "--since", since]) == 2
    assert "out of range" in capsys.readouterr().err


def test_cursor_of_another_log_is_refused(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(ledger, generate(20))
    other = open_ledger(tmp_path / "other", origin="other.example/log")
    fill(other, generate(20, seed=3))
    other.close()
    common = ["export", "ecs", "-o", str(tmp_path / "o.ndjson"), "--cursor", str(tmp_path / "c")]
    assert main([*common, "--data", str(ledger.data_dir)]) == 0
    code = main([*common, "--data", str(tmp_path / "other")])
    assert code == 2
    assert "belongs to the log 'test.auditmesh/log'" in capsys.readouterr().err


def test_a_cursor_file_that_is_not_text_is_refused_not_a_traceback(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # read_text() raised UnicodeDecodeError outside the check: a traceback for a cursor
    # that was compressed, or a --cursor naming the wrong file.
    fill(ledger, generate(5))
    cursor = tmp_path / "ecs.cursor"
    cursor.write_bytes(gzip.compress(b'{"format": 1, "next_index": 5}'))
    argv = ["export", "ecs", "--data", str(ledger.data_dir), "-o", str(tmp_path / "o")]
    assert main([*argv, "--cursor", str(cursor)]) == 2
    assert f"{cursor} is not a cursor file" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("how", ["named", "symlink", "hard link"])
def test_an_output_that_is_the_ledger_itself_is_refused_before_it_is_cut(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str], how: str
) -> None:
    # `-o DATA/ledger.db` opened the log's database for writing, which cut it to 0 bytes:
    # a reader wiped the trail it exports (and the export then failed with a traceback).
    fill(ledger, generate(20))
    db = ledger.data_dir / "ledger.db"
    size = db.stat().st_size
    out = db if how == "named" else tmp_path / "audit.ndjson"
    if how == "symlink":
        out.symlink_to(db)
    elif how == "hard link":
        out.hardlink_to(db)
    argv = ["export", "ecs", "--data", str(ledger.data_dir)]
    assert main([*argv, "-o", str(out)]) == 2
    assert f"is {db} of the data directory" in capsys.readouterr().err
    # not cut (the WAL checkpointer may still be copying pages in: it only grows)
    assert db.stat().st_size >= size and ledger.store.size() == 20
    beside = ledger.data_dir / "export" / "audit.ndjson"  # exports' own folder: written
    beside.parent.mkdir(exist_ok=True)
    assert main([*argv, "-o", str(beside), "--cursor", str(beside.with_suffix(".cursor"))]) == 0
    assert main([*argv, "-o", str(beside), "--cursor", str(beside.with_suffix(".cursor"))]) == 0
    assert len(read_docs(beside)) == 20


def test_missing_ledger_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["export", "ecs", "--data", str(tmp_path / "nothing")]) == 2
    assert "no ledger" in capsys.readouterr().err


def test_tail_polls_until_idle() -> None:
    class GrowingStore:
        def __init__(self) -> None:
            self.rows = [(i, b"%d" % i) for i in range(3)]

        def size(self) -> int:
            return len(self.rows)

        def entries(self, start: int, end: int) -> list[tuple[int, bytes]]:
            return self.rows[start:end]

    store = GrowingStore()
    now = [0.0]

    def sleep(seconds: float) -> None:
        now[0] += seconds
        if now[0] == 1.0:  # one poll later, two more entries arrive
            store.rows += [(3, b"3"), (4, b"4")]

    batches = list(
        tail(
            store,  # type: ignore[arg-type]
            1,
            follow=True,
            poll_s=1.0,
            idle_exit_s=5.0,
            batch=2,
            sleep=sleep,
            clock=lambda: now[0],
        )
    )
    assert [[i for i, _ in b] for b in batches] == [[1, 2], [3, 4]]
    assert now[0] == 6.0  # stopped 5 s after the last new entry
    assert list(tail(store, 5, follow=False, poll_s=1, idle_exit_s=None)) == []  # type: ignore[arg-type]


@pytest.mark.integration
def test_follow_picks_up_new_events(ledger: Ledger, tmp_path: Path) -> None:
    events = generate(80)
    fill(ledger, events[:50])
    out = tmp_path / "follow.ndjson"
    command = [sys.executable, "-m", "auditmesh", "export", "ecs", "--data", str(ledger.data_dir)]
    command += ["--follow", "--poll", "0.05", "--exit-when-idle", "2", "-o", str(out)]
    proc = subprocess.Popen(command, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60  # ends as soon as it holds: a bound for a loaded runner
        while time.monotonic() < deadline and (
            not out.exists() or out.read_bytes().count(b"\n") < 50
        ):
            time.sleep(0.05)
        assert out.read_bytes().count(b"\n") == 50
        fill(ledger, events[50:])
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err
    assert [d["event"]["id"] for d in read_docs(out)] == [e.id for e in events]
    assert b"exported 80 events" in err


def _export_with_stderr_on(ledger: Ledger, out: Path, terminal: bool) -> str:
    """Run `auditmesh export ecs` in a child whose stderr is a pseudo-terminal (as a person
    at a shell has) or a pipe; what it wrote there."""
    argv = [sys.executable, "-m", "auditmesh", "export", "ecs", "--data", str(ledger.data_dir)]
    if not terminal:
        done = subprocess.run([*argv, "-o", str(out)], capture_output=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done.stderr.decode()
    leader, follower = os.openpty()
    child = subprocess.Popen([*argv, "-o", str(out)], stderr=follower, stdout=subprocess.DEVNULL)
    os.close(follower)
    shown = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        shown += chunk
    os.close(leader)
    assert child.wait(timeout=120) == 0, shown
    return shown.decode(errors="replace")


@pytest.mark.integration
def test_a_long_export_shows_progress_on_a_terminal_only(ledger: Ledger, tmp_path: Path) -> None:
    fill(ledger, generate(3000))
    on_terminal = _export_with_stderr_on(ledger, tmp_path / "a.ndjson", terminal=True)
    assert "exporting" in on_terminal and "/3000" in on_terminal
    assert "exported 3000 events as ECS" in on_terminal
    on_pipe = _export_with_stderr_on(ledger, tmp_path / "b.ndjson", terminal=False)
    assert on_pipe == "exported 3000 events as ECS\n"  # a log file gets the summary alone
    assert (tmp_path / "a.ndjson").read_bytes() == (tmp_path / "b.ndjson").read_bytes()


def test_a_certificate_expiry_past_year_9999_is_left_out_not_a_crash(
    ledger: Ledger, tmp_path: Path
) -> None:
    # Any producer may send tls.peer_not_after up to 2^53 - 1 seconds (the event model's
    # count); formatting it as a date raised ValueError, so every export stopped at that
    # entry with a traceback, however often it was run again.
    events = generate(3)
    last_date = 253_402_300_799  # 9999-12-31T23:59:59Z
    events[1] = msgspec.structs.replace(
        events[1], tls=TLS(version="TLSv1.3", peer_not_after=2**53 - 1)
    )
    events[2] = msgspec.structs.replace(events[2], tls=TLS(peer_not_after=last_date))
    fill(ledger, events)
    out = tmp_path / "out.ndjson"
    assert main(["export", "ecs", "--data", str(ledger.data_dir), "-o", str(out)]) == 0
    docs = [flatten(doc) for doc in read_docs(out)]
    assert [d["event.id"] for d in docs] == [e.id for e in events]
    assert "tls.client.not_after" not in docs[1] and docs[1]["tls.version"] == "1.3"
    assert docs[2]["tls.client.not_after"] == "9999-12-31T23:59:59.000Z"
