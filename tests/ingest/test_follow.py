"""Line reading: the sans-IO splitter, whole and growing files, rotation, truncation, state."""

from __future__ import annotations

import dataclasses
import hashlib
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh.ingest.follow import (
    FINGERPRINT,
    Line,
    LineSplitter,
    Position,
    Stream,
    Tail,
    load_position,
    save_position,
)


def split_all(chunks: list[bytes], max_line: int = 1 << 20) -> list[tuple[int, bytes, int, bool]]:
    splitter = LineSplitter(max_line=max_line)
    out = [line for chunk in chunks for line in splitter.feed(chunk)]
    return out + splitter.finish()


def test_splitter_offsets_point_after_each_line() -> None:
    assert split_all([b"one\ntwo\r\nthree"]) == [
        (1, b"one", 4, False),
        (2, b"two", 9, False),
        (3, b"three", 14, False),
    ]
    assert split_all([b"\n\n"]) == [(1, b"", 1, False), (2, b"", 2, False)]
    assert split_all([]) == []


def test_splitter_cuts_overlong_lines_but_keeps_offsets() -> None:
    lines = split_all([b"ab", b"cdefg\nxy\n"], max_line=4)
    assert lines == [(1, b"abcd", 8, True), (2, b"xy", 11, False)]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=200), st.lists(st.integers(0, 200), max_size=8))
def test_splitter_is_independent_of_chunk_boundaries(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    chunks = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    assert split_all(chunks, max_line=16) == split_all([data], max_line=16)
    lines = split_all([data], max_line=16)
    if lines:
        assert lines[-1][2] == len(data)
    assert [number for number, *_ in lines] == list(range(1, len(lines) + 1))


def drain(tail: Tail, max_lines: int = 1000) -> list[Line]:
    out: list[Line] = []
    while batch := tail.read(max_lines):
        out += batch
    return out


def texts(lines: list[Line]) -> list[bytes]:
    return [line.data for line in lines]


def test_whole_file_includes_an_unterminated_last_line(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"a\nb\nc")
    tail = Tail(log, follow=False)
    assert texts(tail.read(2)) == [b"a", b"b"]
    rest = tail.read(2)
    assert texts(rest) == [b"c"] and tail.done
    end = rest[-1].end
    assert end is not None and (end.offset, end.line) == (5, 3)
    assert end.inode == os.stat(log).st_ino and end.path == str(log.absolute())
    tail.close()


def test_follow_waits_for_the_line_break_and_resumes(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"a\nb")
    tail = Tail(log, follow=True)
    first = drain(tail)
    assert texts(first) == [b"a"] and not tail.done
    with open(log, "ab") as out:
        out.write(b"b\nc\n")
    second = drain(tail)
    assert texts(second) == [b"bb", b"c"]
    tail.close()
    # A restart from the position after "bb" reads only what follows it.
    resumed = Tail(log, follow=True, resume=second[0].end)
    lines = drain(resumed)
    assert resumed.resumed and texts(lines) == [b"c"] and lines[0].number == 3
    resumed.close()


def test_rotation_finishes_the_old_file_then_reads_the_new(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"1\n2\n")
    tail = Tail(log, follow=True, rotate_wait_s=0)
    assert texts(drain(tail)) == [b"1", b"2"]
    with open(log, "ab") as out:
        out.write(b"3 unterminated")
    os.rename(log, tmp_path / "access.log.1")
    assert drain(tail) == []  # the path is gone: keep the old file, wait
    log.write_bytes(b"4\n")
    lines = drain(tail)
    assert texts(lines) == [b"3 unterminated", b"4"]
    assert [line.number for line in lines] == [3, 1]
    assert any("rotated" in note for note in tail.notes)
    assert lines[1].end is not None and lines[1].end.inode == os.stat(log).st_ino
    tail.close()


def test_a_rotated_file_is_read_until_it_has_been_quiet(tmp_path: Path) -> None:
    # Envoy flushes its buffer to the old file up to a second after the rename.
    log, old = tmp_path / "access.log", tmp_path / "access.log.1"
    log.write_bytes(b"1\n")
    now = [0.0]
    tail = Tail(log, follow=True, rotate_wait_s=5, clock=lambda: now[0])
    assert texts(drain(tail)) == [b"1"]
    os.rename(log, old)
    log.write_bytes(b"new 1\n")
    assert drain(tail) == []  # rotation seen: the old file may still get lines
    now[0] = 1.0
    with open(old, "ab") as late:
        late.write(b"2 flushed late\n")
    assert texts(drain(tail)) == [b"2 flushed late"]
    now[0] = 5.5  # quiet for 4.5 s only, since the late line
    assert drain(tail) == []
    now[0] = 12.0
    assert texts(drain(tail)) == [b"new 1"]
    tail.close()


def test_truncated_and_refilled_past_the_offset_starts_over(tmp_path: Path) -> None:
    # copytruncate while the writer is busy: by the time we look, the file is longer than
    # our offset again, but holds other lines.
    log = tmp_path / "access.log"
    log.write_bytes(b"".join(b"old %d\n" % i for i in range(20)))
    tail = Tail(log, follow=True)
    assert len(drain(tail)) == 20
    with open(log, "r+b") as out:
        out.truncate(0)
        out.write(b"".join(b"new line %d\n" % i for i in range(40)))
    lines = drain(tail)
    assert texts(lines) == [b"new line %d" % i for i in range(40)]
    assert any("truncated" in note for note in tail.notes)
    tail.close()


def test_truncation_starts_over(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"first\nsecond\n")
    tail = Tail(log, follow=True)
    drain(tail)
    with open(log, "r+b") as out:  # logrotate's copytruncate
        out.truncate(0)
    assert drain(tail) == []
    assert any("truncated" in note for note in tail.notes)
    with open(log, "ab") as out:
        out.write(b"new\n")
    lines = drain(tail)
    assert texts(lines) == [b"new"] and lines[0].number == 1
    tail.close()


def test_a_file_rewritten_in_place_while_stopped_is_read_from_its_start(tmp_path: Path) -> None:
    # Stopped; meanwhile copytruncate, and the writer goes on past the stored offset: the
    # size does not tell, the bytes before the offset do. Resuming there would skip the
    # new lines before it and start mid-line (a garbled line), with wrong line numbers.
    log, state = tmp_path / "access.log", tmp_path / "access.offset"
    log.write_bytes(b"".join(b"old %d\n" % i for i in range(20)))
    tail = Tail(log, follow=True)
    read = tail.read(10)
    assert read[-1].end is not None
    save_position(state, read[-1].end)
    tail.close()
    with open(log, "r+b") as out:  # the same inode, longer than the stored offset again
        out.truncate(0)
        out.write(b"".join(b"new, longer line %d\n" % i for i in range(40)))
    resumed = Tail(log, follow=True, resume=load_position(state))
    lines = drain(resumed)
    assert not resumed.resumed
    assert texts(lines) == [b"new, longer line %d" % i for i in range(40)]
    assert [line.number for line in lines] == list(range(1, 41))
    assert resumed.notes == [
        f"{log.absolute()} was rewritten since the stored position (its 60 bytes before "
        "offset 60 differ); reading it from its beginning"
    ]
    resumed.close()


@pytest.mark.parametrize("appended", [0, 5])
@pytest.mark.parametrize("taken", [10, 50])  # an offset below FINGERPRINT, and above it
def test_an_unchanged_or_grown_file_resumes_where_it_stopped(
    tmp_path: Path, taken: int, appended: int
) -> None:
    log, state = tmp_path / "access.log", tmp_path / "access.offset"
    log.write_bytes(b"".join(b"line %03d\n" % i for i in range(100)))
    tail = Tail(log, follow=True)
    read = tail.read(taken)
    assert read[-1].end is not None
    save_position(state, read[-1].end)
    tail.close()
    with open(log, "ab") as out:
        out.write(b"".join(b"line %03d\n" % i for i in range(100, 100 + appended)))
    resumed = Tail(log, follow=True, resume=load_position(state))
    lines = drain(resumed)
    assert resumed.resumed and resumed.notes == []
    assert texts(lines) == [b"line %03d" % i for i in range(taken, 100 + appended)]
    assert [line.number for line in lines] == list(range(taken + 1, 101 + appended))
    resumed.close()


def test_a_state_file_without_a_fingerprint_still_resumes(tmp_path: Path) -> None:
    # Written by an older auditmesh: nothing to compare, so the position applies as it did.
    log, state = tmp_path / "access.log", tmp_path / "access.offset"
    log.write_bytes(b"a\nb\nc\n")
    stat = os.stat(log)
    state.write_text(
        f'{{"path": "{log.absolute()}", "device": {stat.st_dev}, "inode": {stat.st_ino}, '
        '"offset": 2, "line": 1}\n'
    )
    position = load_position(state)
    assert position is not None and position.before == ""
    tail = Tail(log, follow=True, resume=position)
    lines = drain(tail)
    assert tail.resumed and tail.notes == []
    assert texts(lines) == [b"b", b"c"] and lines[0].number == 2
    assert lines[-1].end is not None
    save_position(state, lines[-1].end)  # stored again, now with the fingerprint
    stored = load_position(state)
    assert stored is not None and len(stored.before) == 64
    tail.close()


def test_each_position_holds_the_bytes_read_before_it(tmp_path: Path) -> None:
    # Across chunk boundaries, after a resume and for an unterminated last line; the state
    # file keeps their hash, never the bytes themselves.
    log, state = tmp_path / "access.log", tmp_path / "access.offset"
    data = b"".join(b"%d %s\n" % (i, b"x" * (i % 300)) for i in range(1000)) + b"end"
    log.write_bytes(data)
    tail = Tail(log, follow=False)
    lines = drain(tail, max_lines=7)
    tail.close()
    middle = lines[500].end
    assert middle is not None
    resumed = Tail(log, follow=False, resume=middle)
    assert resumed.resumed
    lines += drain(resumed, max_lines=7)
    resumed.close()
    for line in lines:
        assert line.end is not None
        assert (
            line.end.bytes_before == data[max(line.end.offset - FINGERPRINT, 0) : line.end.offset]
        )
    save_position(state, middle)
    assert set(msgspec.json.decode(state.read_bytes())) == {
        "path",
        "device",
        "inode",
        "offset",
        "line",
        "before",
    }
    before = hashlib.sha256(middle.bytes_before).hexdigest()
    assert load_position(state) == dataclasses.replace(middle, before=before)


@pytest.mark.parametrize(
    ("changes", "note"),
    [
        ({"inode": -1}, "another file"),
        ({"path": "/elsewhere/access.log"}, "another file"),
        ({"offset": 10_000}, "shorter"),
    ],
)
def test_a_position_for_another_file_is_not_applied(
    tmp_path: Path, changes: dict[str, Any], note: str
) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"a\nb\n")
    stat = os.stat(log)
    position = Position(str(log.absolute()), stat.st_dev, stat.st_ino, 2, 1)
    tail = Tail(log, follow=True, resume=dataclasses.replace(position, **changes))
    assert not tail.resumed and texts(drain(tail)) == [b"a", b"b"]
    assert note in tail.notes[0]
    tail.close()


def test_state_file_round_trip_and_damage(tmp_path: Path) -> None:
    state = tmp_path / "access.offset"
    assert load_position(state) is None
    position = Position("/var/log/access.log", 2049, 123456, 8192, 40)
    save_position(state, position)
    assert load_position(state) == position
    save_position(state, Position("/var/log/access.log", 2049, 123456, 9000, 44))
    assert load_position(state) == Position("/var/log/access.log", 2049, 123456, 9000, 44)
    assert [p.name for p in tmp_path.iterdir()] == ["access.offset"]  # no temporary left
    state.write_text('{"path": "/x", "offset": "nope"}')
    assert load_position(state) is None
    state.write_text("{")
    assert load_position(state) is None


def test_stream_reads_a_pipe_until_it_closes() -> None:
    read_end, write_end = os.pipe()
    stream = Stream(read_end)
    try:
        assert stream.read(10) == [] and not stream.done
        os.write(write_end, b"one\ntw")
        stream.wait(1.0)
        assert texts(stream.read(10)) == [b"one"]
        os.write(write_end, b"o")
        os.close(write_end)
        stream.wait(1.0)
        lines = stream.read(10)
        assert texts(lines) == [b"two"] and lines[0].end is None and stream.done
    finally:
        os.close(read_end)


@pytest.mark.parametrize("follow", [True, False])
def test_a_file_rotated_while_stopped_is_finished_before_the_new_one(
    tmp_path: Path, follow: bool
) -> None:
    # Stopped; meanwhile the writer added lines, and the file was rotated (renamed, a new
    # one created). The lines after the stored position are in the rotated file: read
    # them from there, then the new file from its start.
    log, state = tmp_path / "access.log", tmp_path / "access.offset"
    log.write_bytes(b"1\n2\n")
    tail = Tail(log, follow=True)
    read = drain(tail)
    assert read[-1].end is not None
    save_position(state, read[-1].end)
    tail.close()
    with open(log, "ab") as out:
        out.write(b"3 written while stopped\n")
    os.rename(log, tmp_path / "access.log.1")
    log.write_bytes(b"new 1\n")
    resumed = Tail(log, follow=follow, resume=load_position(state), rotate_wait_s=0)
    lines = drain(resumed)
    assert resumed.resumed
    assert texts(lines) == [b"3 written while stopped", b"new 1"]
    assert [line.number for line in lines] == [3, 1]
    assert any("rotated" in note for note in resumed.notes)
    resumed.close()
    # Stopped again right after the rotated file's last line: only the new file is left.
    end = lines[0].end
    assert end is not None and end.inode == os.stat(tmp_path / "access.log.1").st_ino
    again = Tail(log, follow=follow, resume=end, rotate_wait_s=0)
    assert texts(drain(again)) == [b"new 1"]
    again.close()


def test_a_rotated_file_that_changed_while_stopped_is_not_resumed(tmp_path: Path) -> None:
    log = tmp_path / "access.log"
    log.write_bytes(b"1\n2\n")
    tail = Tail(log, follow=True)
    end = drain(tail)[-1].end
    tail.close()
    os.rename(log, tmp_path / "access.log.1")
    (tmp_path / "access.log.1").write_bytes(b"x\n")  # same inode, other bytes
    log.write_bytes(b"new 1\n")
    resumed = Tail(log, follow=True, resume=end, rotate_wait_s=0)
    assert not resumed.resumed and texts(drain(resumed)) == [b"new 1"]
    assert "another file" in resumed.notes[0]
    resumed.close()
