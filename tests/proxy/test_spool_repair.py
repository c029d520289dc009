"""The spool's repairs as pure functions: finding intact records after damaged bytes, and
segments deleted from outside (the spool's own tests show them at work on real files)."""

from __future__ import annotations

from pathlib import Path

from auditmesh.proxy.spool_format import MAGIC, encode
from auditmesh.proxy.spool_repair import (
    aside_path,
    crc_ending_at,
    missing_segments,
    scan,
    set_aside_numbers,
)

RECORDS = [encode(b'{"n": %d}' % n) for n in range(4)]
SEGMENT = MAGIC + b"".join(RECORDS)


def test_an_intact_segment_is_returned_as_it_is() -> None:
    found = scan(SEGMENT, len(MAGIC))
    assert (found.records, found.cut) == (4, 0)
    assert found.intact is SEGMENT  # not copied


def test_damaged_bytes_are_cut_out_and_the_records_after_them_kept() -> None:
    at = len(MAGIC) + len(RECORDS[0])
    garbage = b"\x00\x00\x00\x09garbage{{"  # with braces where a record could start
    found = scan(SEGMENT[:at] + garbage + SEGMENT[at:], len(MAGIC))
    assert (found.records, found.cut, found.intact) == (4, len(garbage), SEGMENT)
    flipped = bytearray(SEGMENT)
    flipped[at + 10] ^= 1  # record 1
    found = scan(bytes(flipped), len(MAGIC))
    assert found.records == 3 and found.cut == len(RECORDS[1])
    assert found.intact == MAGIC + RECORDS[0] + RECORDS[2] + RECORDS[3]


def test_the_acknowledged_head_is_kept_unchecked() -> None:
    head = MAGIC + b"not records, acknowledged"
    found = scan(head + RECORDS[3] + b"torn", len(head))
    assert (found.records, found.cut, found.intact) == (1, 4, head + RECORDS[3])


def test_the_record_a_cursor_follows_is_known_by_its_crc() -> None:
    crcs = [int.from_bytes(record[4:8], "big") for record in RECORDS]
    ends = [len(MAGIC) + sum(map(len, RECORDS[: n + 1])) for n in range(4)]
    assert [crc_ending_at(SEGMENT, end) for end in ends] == crcs
    assert crc_ending_at(SEGMENT) == crcs[3]  # the last record's
    assert crc_ending_at(SEGMENT, ends[1] - 3) is None  # inside a record
    assert crc_ending_at(SEGMENT, len(SEGMENT) + 1) is None  # past the end
    assert crc_ending_at(MAGIC) is None  # no record
    flipped = bytearray(SEGMENT)
    flipped[ends[0] + 10] ^= 1  # record 1: the records after it are still found
    assert crc_ending_at(bytes(flipped), ends[1]) is None
    assert crc_ending_at(bytes(flipped), ends[2]) == crcs[2]


def test_missing_segments_are_the_gaps_no_segment_set_aside_explains() -> None:
    assert missing_segments(5, True, [5, 6, 7], set()) == ()
    assert missing_segments(5, False, [], set()) == ()  # an empty spool: no segment yet
    assert missing_segments(5, True, [], set()) == ("0000000000000005.seg",)
    assert missing_segments(5, True, [], {5}) == ()  # set aside, not deleted
    assert missing_segments(5, False, [6, 9, 10, 14], {8}) == (
        "0000000000000005.seg",
        "0000000000000007.seg",
        "0000000000000011.seg to 0000000000000013.seg",
    )
    assert missing_segments(0, False, [10**15], set()) == (  # at once, however wide
        "0000000000000000.seg to 0999999999999999.seg",
    )


def test_set_aside_names() -> None:
    names = ["0000000000000003.seg.damaged", "0000000000000004.seg.damaged.2", "state.json"]
    assert set_aside_numbers([*names, "state.json.damaged", "x" * 16 + ".seg.damaged"]) == {3, 4}


def test_a_file_is_set_aside_under_a_free_name(tmp_path: Path) -> None:
    path = tmp_path / "state.json"
    assert aside_path(path) == tmp_path / "state.json.damaged"
    (tmp_path / "state.json.damaged").touch()
    (tmp_path / "state.json.damaged.1").symlink_to(tmp_path / "nowhere")
    assert aside_path(path) == tmp_path / "state.json.damaged.2"
