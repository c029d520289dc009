"""A state file whose cursor is plausible but wrong: inside a record, past the end of its
segment, past records this spool never had acknowledged (a state file of another spool, or
one moved forward), in a segment this spool does not have. The spool skips only records
the cursor is shown to be past (the record just before it is the one the state file names
by its CRC); otherwise the state file is set aside like a damaged one and every record is
delivered, whole. Legitimate cursors keep working: after a crash between the cursor's
write and the deletion of the segments before it, and in a state file without a CRC."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from auditmesh.proxy.spool import MAGIC, Spool, SpoolDamage
from tests.proxy.test_spool import numbers, segments
from tests.proxy.test_spool_damage import CONFIG, SIZE, spool_of

SET_ASIDE = SpoolDamage(state_set_aside=("state.json.damaged",))


def state_of(directory: Path) -> dict[str, object]:
    state: dict[str, object] = json.loads((directory / "state.json").read_bytes())
    return state


def edit_state(directory: Path, **fields: object) -> None:
    (directory / "state.json").write_text(json.dumps({**state_of(directory), **fields}))


def opened_from_the_oldest_record(directory: Path, count: int) -> None:
    """The spool delivers all `count` records, reports the state file set aside and keeps
    every segment file as it was."""
    files = {path: path.read_bytes() for path in segments(directory)}
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(100)) == list(range(count))
        assert spool.damage_pending == SET_ASIDE
        assert spool.stats().truncated_bytes == 0
    assert {path: path.read_bytes() for path in segments(directory)} == files


def test_a_cursor_inside_a_record_delivers_every_record_whole(tmp_path: Path) -> None:
    """Regression: the bytes from the cursor to the next record were cut out of a sound
    segment as damage (record 1 lost, reported as torn), and record 0 was skipped."""
    directory = tmp_path / "spool"
    spool_of(directory, 9)
    with Spool(directory, CONFIG) as spool:
        spool.ack(1)
    edit_state(directory, offset=len(MAGIC) + SIZE + 5)
    opened_from_the_oldest_record(directory, 9)


@pytest.mark.parametrize(
    "offset",
    [len(MAGIC) + 3 * SIZE + 1, 10_000],
    ids=["one_byte_past_its_end", "far_past_its_end"],
)
def test_a_cursor_past_the_end_of_its_segment_skips_nothing(tmp_path: Path, offset: int) -> None:
    """Regression: the cursor was cut back to the segment's end, skipping its records."""
    directory = tmp_path / "spool"
    spool_of(directory, 9)
    with Spool(directory, CONFIG) as spool:
        spool.ack(1)
    edit_state(directory, offset=offset)
    opened_from_the_oldest_record(directory, 9)


def test_a_cursor_moved_past_records_never_acknowledged_skips_none(tmp_path: Path) -> None:
    """Regression: a cursor on a record boundary was taken as is, so records 1 and 2,
    never acknowledged, were skipped."""
    directory = tmp_path / "spool"
    spool_of(directory, 9)
    with Spool(directory, CONFIG) as spool:
        spool.ack(1)
    edit_state(directory, offset=len(MAGIC) + 3 * SIZE)
    opened_from_the_oldest_record(directory, 9)


def other_payloads(count: int) -> list[bytes]:
    """Records of another spool, each the size of this one's (`spool_of`'s) records."""
    return [json.dumps({"n": n, "pad": "y" * 20}).encode() for n in range(count)]


@pytest.mark.parametrize(
    ("count", "acknowledged"),
    [(9, 2), (9, 4), (30, 22), (9, 9)],
    ids=["in_the_first_segment", "in_a_later_segment", "in_a_segment_not_here", "emptied"],
)
def test_a_state_file_of_another_spool_skips_none_of_this_ones_records(
    tmp_path: Path, count: int, acknowledged: int
) -> None:
    """Regression: another spool's cursor on a record boundary here skipped this spool's
    records before it, and one in a later or absent segment deleted the segments before
    it (all of them, for the last two; one missing segment reported, or nothing)."""
    other = tmp_path / "other"
    with Spool(other, CONFIG) as spool:
        spool.append(other_payloads(count))
        spool.ack(acknowledged)
    directory = tmp_path / "spool"
    spool_of(directory, 9)
    shutil.copy(other / "state.json", directory / "state.json")
    opened_from_the_oldest_record(directory, 9)


def test_segments_left_by_a_crash_after_the_cursor_was_stored_are_deleted(
    tmp_path: Path,
) -> None:
    """The cursor was stored, the segments before it were not deleted yet: they are, and
    nothing is delivered again. Here the spool was emptied (the cursor at the start of the
    next segment number) and all its segments were left."""
    directory = tmp_path / "spool"
    spool_of(directory, 9)
    files = {path: path.read_bytes() for path in segments(directory)}
    with Spool(directory, CONFIG) as spool:
        spool.ack(9)
    assert segments(directory) == []
    for path, data in files.items():
        path.write_bytes(data)
    with Spool(directory, CONFIG) as spool:
        assert spool.peek(100) == [] and spool.damage_pending is None
    assert segments(directory) == []


def test_a_state_file_without_the_crc_is_applied_on_a_record_boundary(tmp_path: Path) -> None:
    """A state file of an older auditmesh names no record: its cursor is applied where it
    is the end of a record; inside one it is not."""
    directory = tmp_path / "spool"
    spool_of(directory, 9)
    with Spool(directory, CONFIG) as spool:
        spool.ack(4)
    older = {k: v for k, v in state_of(directory).items() if k != "last"}
    (directory / "state.json").write_text(json.dumps(older))
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(100)) == list(range(4, 9))
        assert spool.damage_pending is None
        spool.ack(1)
    assert isinstance(state_of(directory)["last"], int)  # written with it from now on
    older["offset"] = len(MAGIC) + SIZE - 1  # inside record 3
    (directory / "state.json").write_text(json.dumps(older))
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(100)) == list(range(3, 9))  # the first segment is gone
        assert spool.damage_pending == SET_ASIDE
