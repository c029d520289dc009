"""Damage the spool cannot cut out record by record: a segment whose magic is damaged is
set aside (renamed, never deleted), damage that appears while the spool is open is cut out
when it is read, and what was lost is remembered on disk until it has been reported."""

from __future__ import annotations

from pathlib import Path

from auditmesh.proxy.spool import MAGIC, Spool, SpoolConfig, SpoolDamage, record_size
from tests.proxy.test_spool import numbers, payloads, segments

SIZE = record_size(payloads(0, 1, pad=20)[0])  # the same for records 0 to 9
CONFIG = SpoolConfig(segment_bytes=len(MAGIC) + 3 * SIZE, fsync=False)  # 3 a segment


def flip(path: Path, at: int) -> None:
    """Flip one bit of the file at byte `at`, in place (a bad sector, a stray write)."""
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x04]))


def spool_of(directory: Path, count: int) -> tuple[list[Path], list[list[int]]]:
    """`count` records over several segments; returns the segments and their record numbers."""
    with Spool(directory, CONFIG) as spool:
        spool.append(payloads(0, count, pad=20))
    found = segments(directory)
    per = [(p.stat().st_size - len(MAGIC)) // SIZE for p in found]
    numbered, n = [], 0
    for count_in in per:
        numbered.append(list(range(n, n + count_in)))
        n += count_in
    assert len(found) >= 3 and n == count
    return found, numbered


# --- 1. a damaged magic -----------------------------------------------------------------


def test_a_segment_with_a_damaged_magic_is_set_aside_and_the_rest_opens(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 10)
    middle = found[1]
    original = middle.read_bytes()
    flip(middle, 3)
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(100)) == numbered[0] + numbered[2] + sum(numbered[3:], [])
        aside = middle.with_name(middle.name + ".damaged")
        assert not middle.exists() and aside.exists()
        assert aside.read_bytes()[len(MAGIC) :] == original[len(MAGIC) :]  # kept, not deleted
        assert spool.damage_pending == SpoolDamage(len(original) - len(MAGIC), (aside.name,))
        assert spool.stats().truncated_bytes == len(original) - len(MAGIC)
    with Spool(directory, CONFIG) as again:  # nothing new, and the report is still due
        assert numbers(again.peek(100)) == numbered[0] + numbered[2] + sum(numbered[3:], [])
        assert again.stats().truncated_bytes == 0
        assert again.damage_pending == SpoolDamage(len(original) - len(MAGIC), (aside.name,))


def test_a_damaged_first_segment_moves_the_cursor_past_it(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 10)
    with Spool(directory, CONFIG) as spool:
        spool.ack(1)  # the cursor is inside the first segment
    flip(found[0], 0)
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(100)) == sum(numbered[1:], [])
        damage = spool.damage_pending
        assert damage is not None
        assert damage.cut_bytes == found[0].with_suffix(".seg.damaged").stat().st_size - (
            len(MAGIC) + SIZE
        )  # only what was not acknowledged yet
        spool.ack(2)
    with Spool(directory, CONFIG) as again:
        assert numbers(again.peek(100)) == sum(numbered[1:], [])[2:]


def test_after_the_last_segment_is_set_aside_appending_goes_on(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 10)
    flip(found[-1], 7)
    with Spool(directory, CONFIG) as spool:
        kept = sum(numbered[:-1], [])
        assert numbers(spool.peek(100)) == kept
        spool.append(payloads(0, 8, pad=20))
        assert numbers(spool.peek(100)) == kept + list(range(8))
    with Spool(directory, CONFIG) as again:
        assert numbers(again.peek(100)) == kept + list(range(8))
        assert again.stats().truncated_bytes == 0


def test_when_every_segment_is_set_aside_new_segments_do_not_reuse_their_numbers(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    found, _ = spool_of(directory, 10)
    with Spool(directory, CONFIG) as spool:
        spool.ack(1)
    for path in found:
        flip(path, 5)
    with Spool(directory, CONFIG) as spool:
        assert spool.peek(100) == [] and spool.depth_records == 0
        damage = spool.damage_pending
        assert damage is not None and len(damage.set_aside) == len(found)
        spool.append(payloads(5, 2))
    fresh = segments(directory)
    assert min(fresh) > max(found)
    with Spool(directory, CONFIG) as again:  # the old cursor must not skip the new records
        assert numbers(again.peek(100)) == [5, 6]
    assert len(list(directory.glob("*.damaged"))) == len(found)


# --- 2. damage while the spool is open --------------------------------------------------


def test_damage_after_opening_is_cut_out_when_read_and_reading_goes_on(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 10)
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(2)) == [0, 1]
        flip(found[0], len(MAGIC) + SIZE + 20)  # record 1, under the running spool
        flip(found[1], len(MAGIC) + 20)  # and the first record of the next segment
        lost = {1, numbered[1][0]}
        survivors = [n for n in range(10) if n not in lost]
        assert numbers(spool.peek(100)) == survivors
        assert spool.depth_records == len(survivors)
        assert spool.depth_bytes == len(survivors) * SIZE
        assert spool.damage_pending == SpoolDamage(2 * SIZE, ())
        assert spool.stats().truncated_bytes == 2 * SIZE
        spool.ack(3)
        assert numbers(spool.peek(100)) == survivors[3:]
    with Spool(directory, CONFIG) as again:
        assert numbers(again.peek(100)) == survivors[3:]
        assert again.stats().truncated_bytes == 0
        assert again.damage_pending == SpoolDamage(2 * SIZE, ())


def test_a_segment_cut_short_while_open_loses_only_what_it_no_longer_holds(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 10)
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(1)) == [0]
        with open(found[0], "r+b") as f:
            f.truncate(len(MAGIC) + SIZE + 10)  # records 1 and 2 gone, half of 1 left
        assert numbers(spool.peek(100)) == [0, *range(3, 10)]
        assert spool.damage_pending == SpoolDamage(2 * SIZE, ())
        with open(found[1], "r+b") as f:
            f.truncate(3)  # even the magic, partly
        assert numbers(spool.peek(100)) == [0, *range(6, 10)]
        assert spool.damage_pending == SpoolDamage(5 * SIZE, ())
        assert spool.depth_bytes == 5 * SIZE
    with Spool(directory, CONFIG) as again:
        assert numbers(again.peek(100)) == [0, *range(6, 10)]


def test_damage_in_the_tail_while_open_then_appending_continues(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 10)
    with Spool(directory, CONFIG) as spool:
        flip(found[-1], len(MAGIC) + 20)  # the segment appends go to
        spool.append(payloads(7, 1, pad=20))  # a second record 7 (numbers are one digit)
        kept = [n for n in range(10) if n != numbered[-1][0]] + [7]
        assert numbers(spool.peek(100)) == kept
        spool.append(payloads(8, 2, pad=20))
        assert numbers(spool.peek(100)) == kept + [8, 9]
        assert spool.depth_bytes == (len(kept) + 2) * SIZE
    with Spool(directory, CONFIG) as again:
        assert numbers(again.peek(100)) == kept + [8, 9]
        assert again.stats().truncated_bytes == 0


def test_damage_between_peek_and_ack_acknowledges_only_what_lies_before_it(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    found, _ = spool_of(directory, 10)
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(4)) == [0, 1, 2, 3]  # sent, and the server acknowledges 4
        flip(found[0], len(MAGIC) + 2 * SIZE + 20)  # record 2 goes bad before the ack
        spool.ack(4)
        # 0 and 1 are acknowledged; 3 is offered again rather than risk skipping a record
        # that was never sent (the server keeps each event id once)
        assert numbers(spool.peek(100)) == list(range(3, 10))
        assert spool.damage_pending == SpoolDamage(SIZE, ())


def test_damage_met_while_evicting_for_drop_oldest_keeps_the_bound(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    config = SpoolConfig(max_bytes=6 * SIZE, segment_bytes=400, when_full="drop-oldest")
    with Spool(directory, config) as spool:
        spool.append(payloads(0, 6, pad=20))
        flip(segments(directory)[0], len(MAGIC) + 20)  # record 0 goes bad
        assert spool.append(payloads(6, 2, pad=20)) == 2
        assert spool.depth_bytes <= config.max_bytes
        assert numbers(spool.peek(100)) == [2, 3, 4, 5, 6, 7]
        assert spool.damage_pending == SpoolDamage(SIZE, ())


# --- 3. the report survives a restart until it is made ---------------------------------


def test_the_damage_report_stays_on_disk_until_cleared(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, CONFIG) as spool:
        spool.append(payloads(0, 3))
    (segment,) = segments(directory)
    with open(segment, "ab") as f:
        f.write(b"\x00\x00\x00\x30torn")
    with Spool(directory, CONFIG) as spool:
        first = spool.damage_pending
        assert first == SpoolDamage(8, ())
    with Spool(directory, CONFIG) as spool:  # not reported yet: still due
        assert spool.stats().truncated_bytes == 0
        assert spool.damage_pending == first
        with open(segment, "ab") as f:
            f.write(b"\x00\x00\x00\x30more torn")
    with Spool(directory, CONFIG) as spool:
        assert spool.damage_pending == SpoolDamage(8 + 13, ())
        assert first is not None
        spool.clear_damage(first)  # the event reporting the first 8 bytes is durable
        assert spool.damage_pending == SpoolDamage(13, ())
        spool.clear_damage(SpoolDamage(13, ()))
        assert spool.damage_pending is None
    with Spool(directory, CONFIG) as again:
        assert again.damage_pending is None
        assert numbers(again.peek(10)) == [0, 1, 2]
