"""The sidecar's disk spool: order, acknowledgement, bounds, and recovery from torn writes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh.proxy.spool import (
    MAGIC,
    RECORD_OVERHEAD,
    SPOOL_FULL,
    RecordTooLarge,
    Spool,
    SpoolConfig,
    SpoolError,
    record_size,
)


def payloads(start: int, count: int, pad: int = 0) -> list[bytes]:
    return [json.dumps({"n": n, "pad": "x" * pad}).encode() for n in range(start, start + count)]


def numbers(records: list[bytes]) -> list[int]:
    return [json.loads(r)["n"] for r in records]


def segments(directory: Path) -> list[Path]:
    return sorted(directory.glob("*.seg"))


def test_records_come_back_in_order_until_acknowledged(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:
        assert spool.append(payloads(0, 5)) == 5
        assert spool.append(payloads(5, 5)) == 5
        assert numbers(spool.peek(3)) == [0, 1, 2]
        assert numbers(spool.peek(100)) == list(range(10))
        spool.ack(4)
        assert numbers(spool.peek(100)) == list(range(4, 10))
        assert spool.depth_records == 6
        assert spool.depth_bytes == sum(record_size(p) for p in payloads(4, 6))
        with pytest.raises(ValueError, match="cannot acknowledge 7 of 6"):
            spool.ack(7)
    with Spool(tmp_path / "spool") as reopened:  # the cursor survived
        assert numbers(reopened.peek(100)) == list(range(4, 10))
        assert reopened.stats().depth_records == 6


def test_peek_respects_max_bytes_but_always_returns_the_head(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool") as spool:
        spool.append(payloads(0, 3, pad=100))
        one = len(payloads(0, 1, pad=100)[0])
        assert numbers(spool.peek(10, max_bytes=2 * one)) == [0, 1]
        assert numbers(spool.peek(10, max_bytes=1)) == [0]


def test_segments_rotate_and_acknowledged_ones_are_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    config = SpoolConfig(segment_bytes=1024)
    with Spool(directory, config) as spool:
        for start in range(0, 60, 6):
            spool.append(payloads(start, 6, pad=40))
        assert len(segments(directory)) > 4
        assert all(p.stat().st_size <= 1024 for p in segments(directory))
        before = len(segments(directory))
        spool.ack(30)
        assert len(segments(directory)) < before
        assert numbers(spool.peek(1000)) == list(range(30, 60))
        spool.ack(30)
        assert segments(directory) == []  # an empty spool keeps no segment
        spool.append(payloads(60, 2))
    with Spool(directory, config) as reopened:
        assert numbers(reopened.peek(10)) == [60, 61]


def test_an_interrupted_segment_deletion_is_finished_on_open(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, SpoolConfig(segment_bytes=512)) as spool:
        spool.append(payloads(0, 20, pad=30))
        first = segments(directory)[0].read_bytes()
        spool.ack(15)
    stale = directory / "0000000000000000.seg"
    stale.write_bytes(first)  # as if the process died between the cursor write and unlink
    with Spool(directory, SpoolConfig(segment_bytes=512)) as reopened:
        assert not stale.exists()
        assert numbers(reopened.peek(100)) == list(range(15, 20))


@pytest.mark.parametrize(
    "damage",
    ["half_header", "half_payload", "bad_crc", "zero_tail", "zero_length", "torn_magic"],
)
def test_a_torn_last_record_is_cut_off_and_never_delivered(tmp_path: Path, damage: str) -> None:
    directory = tmp_path / "spool"
    with Spool(directory) as spool:
        spool.append(payloads(0, 5))
    (segment,) = segments(directory)
    whole = segment.read_bytes()
    torn_record = payloads(5, 1)[0]
    header = len(torn_record).to_bytes(4, "big") + b"\xde\xad\xbe\xef"
    tails = {
        "half_header": header[:5],
        "half_payload": header + torn_record[:7],
        "bad_crc": header + torn_record,
        "zero_tail": bytes(300),
        "zero_length": bytes(4) + (0x2144DF1C).to_bytes(4, "big"),  # crc32 of 4 zero bytes
        "torn_magic": b"",
    }
    segment.write_bytes(whole + tails[damage])
    if damage == "torn_magic":  # the next segment was created but its magic is incomplete
        (directory / "0000000000000001.seg").write_bytes(MAGIC[:3])
    with Spool(directory) as recovered:
        assert numbers(recovered.peek(100)) == [0, 1, 2, 3, 4]
        assert recovered.stats().truncated_bytes == len(tails[damage])
        recovered.append(payloads(5, 2))  # appending after recovery continues cleanly
    with Spool(directory) as again:
        assert numbers(again.peek(100)) == [0, 1, 2, 3, 4, 5, 6]
        assert again.stats().truncated_bytes == 0


def test_a_flipped_bit_in_the_last_record_cuts_only_that_record(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    with Spool(directory) as spool:
        spool.append(payloads(0, 3))
    (segment,) = segments(directory)
    data = bytearray(segment.read_bytes())
    data[-2] ^= 0x01
    segment.write_bytes(bytes(data))
    with Spool(directory) as recovered:
        assert numbers(recovered.peek(10)) == [0, 1]
        assert recovered.stats().truncated_bytes == record_size(payloads(2, 1)[0])


@pytest.mark.parametrize("damage", ["flipped_bit", "zeroed", "inserted_garbage"])
def test_damage_mid_segment_loses_only_the_damaged_record(tmp_path: Path, damage: str) -> None:
    directory = tmp_path / "spool"
    config = SpoolConfig(segment_bytes=400)
    with Spool(directory, config) as spool:
        spool.append(payloads(0, 12, pad=20))
    first, *rest = segments(directory)
    assert rest, "the damage must be in a segment that is not the last"
    data = bytearray(first.read_bytes())
    at = len(MAGIC) + record_size(payloads(0, 1, pad=20)[0])  # record 1 starts here
    size = record_size(payloads(1, 1, pad=20)[0])
    if damage == "flipped_bit":
        data[at + 20] ^= 0x04
    elif damage == "zeroed":
        data[at : at + size] = bytes(size)
    else:
        data[at:at] = b'{"n": 99}' * 5
    first.write_bytes(bytes(data))
    with Spool(directory, config) as recovered:
        survivors = numbers(recovered.peek(100))
        assert survivors == [n for n in range(12) if n != 1 or damage == "inserted_garbage"]
        cut = 45 if damage == "inserted_garbage" else size
        assert recovered.stats().truncated_bytes == cut
        recovered.ack(2)
    with Spool(directory, config) as again:  # the repaired segment reads back whole
        assert numbers(again.peek(100)) == survivors[2:]
        assert again.stats().truncated_bytes == 0
        assert not list(directory.glob("*.tmp"))


def test_a_file_that_is_not_a_segment_is_set_aside(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    directory.mkdir()
    (directory / "0000000000000000.seg").write_bytes(b"NOTASPOOL" + bytes(20))
    with Spool(directory) as spool:  # a damaged magic must not keep the sidecar from starting
        assert spool.peek(10) == []
        assert spool.stats().truncated_bytes == 29 - len(MAGIC)
    assert (directory / "0000000000000000.seg.damaged").read_bytes() == b"NOTASPOOL" + bytes(20)
    # (a damaged state file: tests/proxy/test_spool_state.py)


def test_one_process_at_a_time(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool"):
        with pytest.raises(SpoolError, match="in use by another process"):
            Spool(tmp_path / "spool")
    Spool(tmp_path / "spool").close()  # released on close


def test_block_takes_the_prefix_that_fits_and_discards_nothing(tmp_path: Path) -> None:
    batch = payloads(0, 10, pad=50)
    size = record_size(batch[0])
    config = SpoolConfig(max_bytes=4 * size + size // 2, when_full="block")
    with Spool(tmp_path / "spool", config) as spool:
        assert spool.append(batch) == 4
        assert spool.append(batch[4:]) == 0
        assert spool.free_bytes < size
        spool.ack(2)
        assert spool.append(batch[4:]) == 2
        assert numbers(spool.peek(100)) == [2, 3, 4, 5]
        assert spool.dropped_pending == {}
        assert spool.stats().evicted == 0


def test_drop_oldest_discards_the_oldest_and_counts_them_durably(tmp_path: Path) -> None:
    batch = payloads(0, 10, pad=50)
    size = record_size(batch[0])
    config = SpoolConfig(max_bytes=4 * size, when_full="drop-oldest", segment_bytes=2 * size + 9)
    with Spool(tmp_path / "spool", config) as spool:
        assert spool.append(batch[:3]) == 3
        assert spool.append(batch[3:6]) == 3
        assert numbers(spool.peek(100)) == [2, 3, 4, 5]
        assert spool.dropped_pending == {SPOOL_FULL: 2}
        assert spool.append(batch) == 10  # larger than the bound: its oldest go too
        assert numbers(spool.peek(100)) == [6, 7, 8, 9]
        assert spool.stats().evicted == 2 + 4 + 6
        assert spool.depth_bytes <= config.max_bytes
    with Spool(tmp_path / "spool", config) as reopened:
        assert reopened.dropped_pending == {SPOOL_FULL: 12}
        reopened.note_dropped("buffer_full", 3)
        reopened.clear_dropped({SPOOL_FULL: 12})
        assert reopened.dropped_pending == {"buffer_full": 3}
    with Spool(tmp_path / "spool", config) as again:
        assert again.dropped_pending == {"buffer_full": 3}
        assert numbers(again.peek(100)) == [6, 7, 8, 9]


def test_records_that_can_never_fit_are_refused(tmp_path: Path) -> None:
    config = SpoolConfig(max_bytes=100)
    with Spool(tmp_path / "spool", config) as spool:
        with pytest.raises(RecordTooLarge):
            spool.append([b"a", b"x" * (100 - RECORD_OVERHEAD + 1)])
        with pytest.raises(ValueError, match="empty"):
            spool.append([b""])
        assert spool.depth_records == 0
        assert spool.append([b"x" * (100 - RECORD_OVERHEAD)]) == 1


@settings(max_examples=60, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("append"), st.integers(1, 12), st.integers(0, 120)),
            st.tuples(st.just("ack"), st.integers(0, 30), st.just(0)),
            st.tuples(st.just("reopen"), st.just(0), st.just(0)),
        ),
        max_size=30,
    )
)
def test_the_spool_behaves_like_a_queue(ops: list[tuple[str, int, int]]) -> None:
    config = SpoolConfig(segment_bytes=400, fsync=False)
    model: list[bytes] = []
    issued = 0
    with tempfile.TemporaryDirectory() as tmp:
        spool = Spool(Path(tmp), config)
        try:
            for op, count, pad in ops:
                if op == "append":
                    batch = payloads(issued, count, pad)
                    assert spool.append(batch) == count
                    model += batch
                    issued += count
                elif op == "ack":
                    count = min(count, len(model))
                    spool.ack(count)
                    del model[:count]
                else:
                    spool.close()
                    spool = Spool(Path(tmp), config)
                assert spool.peek(10_000) == model
                assert spool.depth_records == len(model)
                assert spool.depth_bytes == sum(record_size(p) for p in model)
        finally:
            spool.close()


WRITER = """
import sys
from pathlib import Path
from auditmesh.proxy.spool import Spool, SpoolConfig
spool = Spool(Path(sys.argv[1]), SpoolConfig(segment_bytes=16 * 1024))
n = 0
while True:
    spool.append([b'{"n":%d,"pad":"%s"}' % (n + i, b"x" * (i * 97 % 700)) for i in range(8)])
    n += 8
    print(n, flush=True)
"""


@pytest.mark.integration
def test_kill_9_mid_append_keeps_every_fsynced_record_in_order(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    for round_ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(directory)], stdout=subprocess.PIPE
        )
        assert child.stdout is not None
        confirmed = 0
        for line in child.stdout:
            confirmed = int(line)
            if confirmed >= 400 + 137 * round_:
                break
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
        with Spool(directory) as recovered:
            got = numbers(recovered.peek(1_000_000))
            assert got == list(range(len(got)))  # a clean prefix: nothing torn, nothing skipped
            assert len(got) >= confirmed  # everything append() returned for is there
            recovered.ack(len(got))
