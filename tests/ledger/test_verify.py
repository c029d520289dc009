"""`log verify` catches every kind of tampering with stored data and names the place."""

from __future__ import annotations

import functools
import pickle
import sqlite3
import tracemalloc
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from auditmesh.cli.main import main
from auditmesh.collector import entry_of
from auditmesh.datadir import open_ledger, open_reader
from auditmesh.ledger.checkpoint import Checkpoint, sign_checkpoint
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.merkle import EMPTY_ROOT
from auditmesh.ledger.note import Signer, Verifier, generate_key
from auditmesh.ledger.verify import WrongKey, verify_log
from auditmesh.store.base import StoreReader
from auditmesh.store.indexcheck import check_indexes
from tests.conftest import fill, generate

SIZE = 700  # three level-0 tiles, and a level-1 tile with two entries


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    ledger = open_ledger(tmp_path / "data", origin="test.auditmesh/log")
    fill(ledger, generate(SIZE), checkpoint_every=250)
    ledger.close()
    return tmp_path / "data"


def run_verify(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["log", "verify", "--data", str(data_dir), "--quiet"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def sql(data_dir: Path, statement: str, *params: object) -> None:
    with sqlite3.connect(data_dir / "ledger.db") as db:
        db.execute(statement, params)


def test_untouched_log_verifies(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_verify(data_dir, capsys)
    assert code == 0, out
    assert f"OK: {SIZE} entries" in out and "3 checkpoint(s)" in out


def flip_event_body(d: Path) -> None:
    with sqlite3.connect(d / "ledger.db") as db:
        (data,) = db.execute("SELECT data FROM events WHERE idx = 321").fetchone()
        db.execute(
            "UPDATE events SET data = ? WHERE idx = 321",
            (bytes(data).replace(b'"GET"', b'"PUT"').replace(b'"POST"', b'"PUT"'),),
        )


def flip_leaf_hash(d: Path) -> None:
    with sqlite3.connect(d / "ledger.db") as db:
        (data,) = db.execute("SELECT data FROM tiles WHERE level = 0 AND idx = 1").fetchone()
        data = bytearray(data)
        data[5 * 32] ^= 1
        db.execute("UPDATE tiles SET data = ? WHERE level = 0 AND idx = 1", (bytes(data),))


def flip_level1_tile(d: Path) -> None:
    with sqlite3.connect(d / "ledger.db") as db:
        (data,) = db.execute("SELECT data FROM tiles WHERE level = 1 AND idx = 0").fetchone()
        data = bytearray(data)
        data[40] ^= 0x80
        db.execute("UPDATE tiles SET data = ? WHERE level = 1 AND idx = 0", (bytes(data),))


def flip_interior_node(d: Path) -> None:
    """The node cache that serves proofs: level 3 of tile 0/002, node 4 (entries 544..551)."""
    with sqlite3.connect(d / "ledger.db") as db:
        (nodes,) = db.execute("SELECT nodes FROM tiles WHERE level = 0 AND idx = 2").fetchone()
        nodes = bytearray(nodes)
        nodes[(94 + 47 + 4) * 32] ^= 1  # width 188: 94 nodes at level 1, 47 at level 2
        db.execute("UPDATE tiles SET nodes = ? WHERE level = 0 AND idx = 2", (bytes(nodes),))


def truncate_interior_nodes(d: Path) -> None:
    """A full tile in the middle, not the edge: its node cache cut at a level boundary."""
    sql(d, "UPDATE tiles SET nodes = substr(nodes, 1, 4096) WHERE level = 0 AND idx = 0")


def flip_top_interior_node(d: Path) -> None:
    """Level 8 of a full tile: the same hash as its entry in the level-1 tile above."""
    with sqlite3.connect(d / "ledger.db") as db:
        (nodes,) = db.execute("SELECT nodes FROM tiles WHERE level = 0 AND idx = 1").fetchone()
        db.execute(
            "UPDATE tiles SET nodes = ? WHERE level = 0 AND idx = 1",
            (bytes(nodes)[:-32] + bytes(32),),
        )


def flip_checkpoint_note(d: Path) -> None:
    with sqlite3.connect(d / "ledger.db") as db:
        (note,) = db.execute("SELECT note FROM checkpoints WHERE size = 500").fetchone()
        db.execute(
            "UPDATE checkpoints SET note = ? WHERE size = 500",
            (bytes(note).replace(b"\n500\n", b"\n499\n"),),
        )


def flip_checkpoint_signature(d: Path) -> None:
    with sqlite3.connect(d / "ledger.db") as db:
        (note,) = db.execute("SELECT note FROM checkpoints WHERE size = 500").fetchone()
        text, signature = bytes(note).rsplit(b" ", 1)
        flipped = signature[:10] + (b"A" if signature[10:11] != b"A" else b"B") + signature[11:]
        db.execute("UPDATE checkpoints SET note = ? WHERE size = 500", (text + b" " + flipped,))


def flip_checkpoint_root(d: Path) -> None:
    sql(d, "UPDATE checkpoints SET root = zeroblob(32) WHERE size = 250")


def swap_rows(d: Path) -> None:
    with sqlite3.connect(d / "ledger.db") as db:
        a = db.execute("SELECT id, data FROM events WHERE idx = 10").fetchone()
        b = db.execute("SELECT id, data FROM events WHERE idx = 11").fetchone()
        db.execute("UPDATE events SET id = randomblob(16) WHERE idx = 10")
        db.execute("UPDATE events SET id = ?, data = ? WHERE idx = 11", a)
        db.execute("UPDATE events SET id = ?, data = ? WHERE idx = 10", b)


def delete_row(d: Path) -> None:
    sql(d, "DELETE FROM events WHERE idx = 600")


def delete_last_rows(d: Path) -> None:
    sql(d, "DELETE FROM events WHERE idx >= 650")


def truncate_file(d: Path) -> None:
    path = d / "ledger.db"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.truncate(size // 2)


def replace_signing_key(d: Path, size: int = SIZE) -> None:
    """A forger re-signs a checkpoint with a key of their own: it is not the log's key."""
    skey, _ = generate_key("test.auditmesh/log")
    ledger = open_ledger(d, create=False)
    from auditmesh.ledger.checkpoint import Checkpoint, sign_checkpoint
    from auditmesh.ledger.note import Signer

    cp = Checkpoint("test.auditmesh/log", size, ledger.log.root(size))
    ledger.close()
    sql(
        d,
        "UPDATE checkpoints SET note = ? WHERE size = ?",
        sign_checkpoint(cp, Signer.from_skey(skey)),
        size,
    )


def replace_first_signing_key(d: Path) -> None:
    """As above, on checkpoint #1: the later ones, signed by the log's key, tell that the
    key given is right and this checkpoint is not the log's."""
    replace_signing_key(d, 250)


def edit_event_body_as_text(d: Path) -> None:
    """What the sqlite3 shell does: replace() returns TEXT, so the blob becomes a string."""
    sql(d, """UPDATE events SET data = replace(data, '"GET"', '"PUT"') WHERE idx = 321""")


def delete_every_checkpoint(d: Path) -> None:
    sql(d, "DELETE FROM checkpoints")


def keep_only_an_empty_log_checkpoint(d: Path) -> None:
    """The note of size 0 is the same for any log of this key: it vouches for nothing."""
    empty = Checkpoint("test.auditmesh/log", 0, EMPTY_ROOT)
    signer = Signer.from_skey((d / "keys" / "log.skey").read_text().strip())
    note = sign_checkpoint(empty, signer)
    sql(d, "DELETE FROM checkpoints")
    sql(d, "INSERT INTO checkpoints VALUES (0, ?, ?, 0)", empty.root_hash, note)


def add_a_row_outside_the_log(d: Path) -> None:
    with sqlite3.connect(d / "ledger.db") as db:
        columns = [r[1] for r in db.execute("PRAGMA table_info(events)")]
        row = list(db.execute("SELECT * FROM events WHERE idx = 5").fetchone())
        row[columns.index("idx")], row[columns.index("id")] = -1, b"\x01" * 16
        db.execute(f"INSERT INTO events VALUES ({', '.join('?' * len(row))})", row)


TAMPERING: dict[str, tuple[Callable[[Path], None], str]] = {
    "event body": (flip_event_body, "index 321"),
    "leaf hash": (flip_leaf_hash, "tile/0/001 entry 5"),
    "higher tile": (flip_level1_tile, "tile/1/000 entry 1"),
    "interior node": (flip_interior_node, "tile/0/002 node 3/4"),
    "interior nodes cut short": (truncate_interior_nodes, "tile/0/000 nodes"),
    "top interior node": (flip_top_interior_node, "tile/0/001 node 8/0"),
    "checkpoint note": (flip_checkpoint_note, "checkpoint row 500"),
    "checkpoint signature": (flip_checkpoint_signature, "checkpoint #2"),
    "checkpoint root column": (flip_checkpoint_root, "checkpoint row 250"),
    "row order": (swap_rows, "tile/0/000 entry 10"),
    "deleted row": (delete_row, "index 600"),
    "deleted tail": (delete_last_rows, "end of log"),
    "truncated file": (truncate_file, "cannot read"),
    "forged signature": (replace_signing_key, "checkpoint #3"),
    "forged first checkpoint": (replace_first_signing_key, "checkpoint #1"),
    "event body edited as text": (edit_event_body_as_text, "index 321"),
    "every checkpoint deleted": (delete_every_checkpoint, "checkpoints;"),
    "only the empty log's checkpoint kept": (keep_only_an_empty_log_checkpoint, "checkpoints;"),
}


@pytest.mark.parametrize("kind", sorted(TAMPERING))
def test_tampering_is_caught_and_named(
    kind: str, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tamper, place = TAMPERING[kind]
    tamper(data_dir)
    code, out = run_verify(data_dir, capsys)
    assert code == 1, out
    assert "FAILED" in out and place in out, out


def test_verify_with_the_wrong_key_fails(data_dir: Path) -> None:
    ledger = open_ledger(data_dir, create=False)
    other = Verifier.from_vkey(generate_key("test.auditmesh/log")[1])
    ours = ledger.log.verifier
    try:
        with pytest.raises(WrongKey, match="checkpoint #1") as info:
            verify_log(StoreReader(ledger.store), other)
    finally:
        ledger.close()
    given, signer = f"{other.name}+{other.key_hash:08x}", f"{ours.name}+{ours.key_hash:08x}"
    error = info.value
    assert (error.where, error.expected, error.computed) == ("checkpoint #1", given, [signer])
    assert str(error) == (
        f"no checkpoint is signed by the key {given}; checkpoint #1 is signed by {signer}"
    )
    again = pickle.loads(pickle.dumps(error))
    assert type(again) is WrongKey and str(again) == str(error)


def test_a_foreign_first_checkpoint_is_not_told_as_the_wrong_key(data_dir: Path) -> None:
    """Checkpoint #1 is signed by another key, the later ones by the log's: the key given is
    right, so the error names the checkpoint, not the key."""
    replace_first_signing_key(data_dir)
    ledger = open_ledger(data_dir, create=False)
    try:
        with pytest.raises(VerificationError) as info:
            verify_log(StoreReader(ledger.store), ledger.log.verifier)
    finally:
        ledger.close()
    assert type(info.value) is VerificationError and info.value.where == "checkpoint #1"
    assert "which signs other checkpoints" in str(info.value)


def test_progress_is_reported(data_dir: Path) -> None:
    ledger = open_ledger(data_dir, create=False)
    seen: list[tuple[int, int]] = []
    try:
        verify_log(
            StoreReader(ledger.store),
            Verifier.from_vkey(ledger.vkey),
            progress=lambda done, total: seen.append((done, total)),
            segment_bits=8,
        )
    finally:
        ledger.close()
    assert seen == [(256, SIZE), (512, SIZE), (SIZE, SIZE)]


@pytest.mark.parametrize("kind", sorted(set(TAMPERING) - {"truncated file"}))
def test_parallel_verify_reports_the_same_first_divergence(kind: str, data_dir: Path) -> None:
    """Segments of 256 entries in two worker processes: same verdict, same place."""
    tamper, place = TAMPERING[kind]
    tamper(data_dir)
    ledger = open_ledger(data_dir, create=False)
    try:
        with pytest.raises(VerificationError) as err:
            verify_log(
                StoreReader(ledger.store),
                Verifier.from_vkey(ledger.vkey),
                jobs=2,
                open_reader=functools.partial(open_reader, data_dir),
                segment_bits=8,
            )
    finally:
        ledger.close()
    assert place in str(err.value)


def test_parallel_verify_of_an_untouched_log(data_dir: Path) -> None:
    ledger = open_ledger(data_dir, create=False)
    seen: list[tuple[int, int]] = []
    try:
        report = verify_log(
            StoreReader(ledger.store),
            Verifier.from_vkey(ledger.vkey),
            jobs=2,
            open_reader=functools.partial(open_reader, data_dir),
            segment_bits=8,
            progress=lambda done, total: seen.append((done, total)),
        )
    finally:
        ledger.close()
    assert (report.size, report.checkpoints) == (SIZE, 3)
    # Told as segments finish, in any order (this process verifies from the back): one
    # report a segment, counting up to every entry.
    counts = [done for done, total in seen if total == SIZE]
    assert len(counts) == len(seen) == 3 and counts == sorted(counts) and counts[-1] == SIZE


def test_cli_verifies_in_worker_processes(
    data_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """`log verify --jobs 2` verifies segments (of 256 here) itself and in a spawned worker
    that reopens the ledger; a tampered entry is still named."""
    monkeypatch.setattr("auditmesh.ledger.verify.SEGMENT_BITS", 8)
    pools: list[int] = []

    class CountedPool(ProcessPoolExecutor):
        def __init__(self, workers: int, **kwargs: Any) -> None:
            pools.append(workers)
            super().__init__(workers, **kwargs)

    monkeypatch.setattr("auditmesh.workers.ProcessPoolExecutor", CountedPool)
    code = main(["log", "verify", "--data", str(data_dir), "--quiet", "--jobs", "2"])
    out = capsys.readouterr().out
    assert code == 0 and f"OK: {SIZE} entries" in out, out
    assert pools == [1]  # one spawned worker beside this process
    flip_event_body(data_dir)
    code = main(["log", "verify", "--data", str(data_dir), "--quiet", "--jobs", "2"])
    captured = capsys.readouterr()
    assert code == 1 and "index 321" in captured.out + captured.err


@pytest.mark.parametrize("segment_bits", [1, 2, 3, 4, 6])
def test_checkpoints_on_and_off_segment_boundaries(tmp_path: Path, segment_bits: int) -> None:
    """Checkpoint sizes at, just before and just after segment edges, and a last segment that
    is full or partial: each signed root is rebuilt from the segments' compact ranges."""
    events = generate(70)
    ledger = open_ledger(tmp_path / "data", origin="test.auditmesh/log")
    try:
        for cut in (1, 7, 8, 9, 16, 31, 32, 33, 64, 70):
            ledger.log.append([entry_of(e) for e in events[ledger.log.size : cut]])
            ledger.log.checkpoint()
        report = verify_log(
            StoreReader(ledger.store), ledger.log.verifier, segment_bits=segment_bits
        )
        assert (report.size, report.checkpoints) == (70, 10)
        ledger.store._writer.execute(  # a root that is wrong at one of those sizes is caught
            "UPDATE checkpoints SET root = zeroblob(32) WHERE size = 32"
        )
        with pytest.raises(VerificationError, match="checkpoint row 32"):
            verify_log(StoreReader(ledger.store), ledger.log.verifier, segment_bits=segment_bits)
    finally:
        ledger.close()


def test_two_checkpoints_of_one_size_must_both_match(data_dir: Path) -> None:
    """Equivocation: a second note, validly signed, for a size already checkpointed."""
    ledger = open_ledger(data_dir, create=False)
    try:
        signer = ledger.log._signer
        assert signer is not None
        forged = sign_checkpoint(Checkpoint("test.auditmesh/log", 500, b"\x11" * 32), signer)
        reader = StoreReader(ledger.store)
        notes = reader.checkpoint_notes()
        reader.checkpoint_notes = lambda: [notes[0], forged, *notes[1:]]  # type: ignore[method-assign]
        with pytest.raises(VerificationError, match="checkpoint at size 500"):
            verify_log(reader, ledger.log.verifier)
    finally:
        ledger.close()


def test_entries_after_the_latest_checkpoint_are_named(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Removing the latest checkpoint leaves a log that still verifies up to the one before;
    the output says which entries no signature covers."""
    sql(data_dir, "DELETE FROM checkpoints WHERE size = ?", SIZE)
    code, out = run_verify(data_dir, capsys)
    assert code == 0, out
    assert "2 checkpoint(s)" in out
    assert f"entries 500..{SIZE - 1} are not covered by a signed checkpoint" in out


def test_key_may_be_given_as_a_file(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_file = data_dir / "keys" / "log.vkey"
    argv = ["log", "verify", "--data", str(data_dir), "--quiet", "--key", str(key_file)]
    assert main(argv) == 0, capsys.readouterr()
    assert main([*argv[:-1], key_file.read_text().strip()]) == 0


def test_a_row_outside_the_log_fails_a_local_verify(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A row at index -1 is in no tile and under no signature, yet queries would return it."""
    add_a_row_outside_the_log(data_dir)
    code, out = run_verify(data_dir, capsys)
    assert code == 1 and f"holds {SIZE + 1} rows" in out.replace("\n", " "), out


def test_blobs_retyped_as_text_but_unchanged_still_verify(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A column rewritten as TEXT with the same bytes (a tile's hashes are not even UTF-8) is
    read back as those bytes: not tampering, and not a crash of the reader."""
    sql(data_dir, "UPDATE checkpoints SET note = CAST(note AS TEXT) WHERE size = 500")
    sql(data_dir, "UPDATE tiles SET data = CAST(data AS TEXT) WHERE level = 0 AND idx = 1")
    sql(data_dir, "UPDATE events SET data = CAST(data AS TEXT) WHERE idx = 7")
    code, out = run_verify(data_dir, capsys)
    assert code == 0, out


def run_verify_indexes(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["log", "verify", "--data", str(data_dir), "--quiet", "--indexes"])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


@pytest.mark.parametrize(
    ("statement", "place"),
    [
        ("UPDATE events SET status = 599 WHERE idx = 42", "index 42 column status"),
        ("UPDATE events SET time_ns = time_ns + 1 WHERE idx = 9", "index 9 column time_ns"),
        ("UPDATE events SET id = x'00' WHERE idx = 3", "index 3 column id"),
        ("UPDATE events SET source_service = 'someone' WHERE idx = 650", "source_service"),
    ],
)
def test_edited_query_columns_are_found_with_indexes(
    data_dir: Path, capsys: pytest.CaptureFixture[str], statement: str, place: str
) -> None:
    """The Merkle log does not cover the query columns (they are derived): plain verify
    passes, `--indexes` re-derives them and names the row and column."""
    sql(data_dir, statement)
    code, out = run_verify(data_dir, capsys)
    assert code == 0, out
    code, out = run_verify_indexes(data_dir, capsys)
    assert code == 1 and "FAILED" in out and place in out, out


def test_untouched_query_columns_match(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out = run_verify_indexes(data_dir, capsys)
    assert code == 0, out
    assert (
        out.startswith(
            f"OK: {SIZE} entries recomputed, 3 checkpoint(s) verified with test.auditmesh/log, "
            f"the query columns of {SIZE} entries match their canonical bytes; latest root "
        )
        and out.count("\n") == 1
    ), out
    assert "not checked" not in out


def test_a_denial_relabelled_allow_is_not_claimed_checked_by_plain_verify(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: with a denial's `decision` column set to 'allow', `query --decision deny`
    misses the event while plain `log verify` said only "OK: … entries recomputed". Its one
    line now says the query columns were not checked and how to check them; --indexes names
    the stored value and the one the event's canonical bytes give, each as what it is."""
    denied = next(i for i, e in enumerate(generate(SIZE)) if e.authz and e.authz.decision == "deny")
    query = ["query", "--data", str(data_dir), "--decision", "deny", "--order", "index"]
    assert main([*query, "--format", "json"]) == 0
    assert f'"index":{denied},' in capsys.readouterr().out
    sql(data_dir, "UPDATE events SET decision = 'allow' WHERE idx = ?", denied)
    assert main([*query, "--format", "json"]) == 0
    assert f'"index":{denied},' not in capsys.readouterr().out  # hidden from the query
    code, out = run_verify(data_dir, capsys)
    assert code == 0 and out.count("\n") == 1, out
    assert out.startswith(f"OK: {SIZE} entries recomputed, 3 checkpoint(s) verified with ")
    assert out.endswith(
        "; query index columns not checked (--indexes re-derives and compares them)\n"
    )
    code, out = run_verify_indexes(data_dir, capsys)
    assert code == 1 and out == (
        f"FAILED: {data_dir}: the query column decision is stored as 'allow', but the event's "
        "canonical bytes say 'deny' (a query would miss or misplace this event); at index "
        f"{denied} column decision\n"
    )


def test_an_edited_dedup_key_names_the_stored_and_the_derived_key(
    data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    event = generate(SIZE)[3]
    sql(data_dir, "UPDATE events SET id = x'00' WHERE idx = 3")
    code, out = run_verify_indexes(data_dir, capsys)
    assert code == 1 and (
        f"the dedup key column is stored as 00, but the event's id {event.id} gives "
        f"{event.id.replace('-', '')}; at index 3 column id" in out
    ), out


def test_indexes_are_checked_in_worker_processes(
    data_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Segments of 256 in two spawned workers: the same count, and the same row named."""
    monkeypatch.setattr("auditmesh.store.indexcheck.SEGMENT", 256)
    seen: list[tuple[int, int]] = []
    assert check_indexes(data_dir, SIZE, jobs=2, progress=lambda *p: seen.append(p)) == SIZE
    assert seen == [(256, SIZE), (512, SIZE), (SIZE, SIZE)]
    sql(data_dir, "UPDATE events SET kind = 'tcp' WHERE idx = 650")
    with pytest.raises(VerificationError, match="index 650 column kind"):
        check_indexes(data_dir, SIZE, jobs=2)


class _SignedButEmpty:
    """A log whose key signed a checkpoint of `size` entries and which holds none."""

    def __init__(self, size: int, signer: Signer) -> None:
        self._size = size
        self._note = sign_checkpoint(Checkpoint(signer.name, size, bytes(32)), signer)

    def size(self) -> int:  # a remote log's: its signed checkpoint's (client.RemoteLog)
        return self._size

    def entries(self, start: int, end: int) -> Iterator[tuple[int, bytes]]:
        return iter(())

    def read_tile(self, level: int, index: int) -> bytes:
        return b""

    def checkpoint_notes(self) -> list[bytes]:
        return [self._note]


def test_a_huge_signed_size_is_refused_at_the_first_missing_entry() -> None:
    # A log may sign any size up to 2**63-1 (C2SP tlog-checkpoint); verify planned every
    # segment up front, a list of 2**49 for that one, and ran out of memory instead of
    # saying that the entries are not there.
    skey, vkey = generate_key("test.auditmesh/log", bytes(32))
    signer, verifier = Signer.from_skey(skey), Verifier.from_vkey(vkey)
    tracemalloc.start()
    try:
        with pytest.raises(VerificationError, match="an entry is missing"):
            verify_log(_SignedButEmpty(1 << 18, signer), verifier, segment_bits=0)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20, peak  # the plan of 2**18 one-entry segments took 50 MB
    with pytest.raises(VerificationError, match="an entry is missing; at index 0"):
        verify_log(_SignedButEmpty((1 << 63) - 1, signer), verifier)
