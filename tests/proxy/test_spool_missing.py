"""Segment files deleted from outside the spool, while it is open or between runs: the spool
notices, reports them as damage (their records are lost, how many is unknown), moves the
cursor to the next segment that exists, and goes on."""

from __future__ import annotations

from pathlib import Path

from auditmesh.proxy.spool import Spool, SpoolDamage, record_size
from tests.proxy.test_spool import numbers, payloads, segments
from tests.proxy.test_spool_damage import CONFIG, spool_of


def missing(*names: str) -> SpoolDamage:
    return SpoolDamage(missing=names)


def size_of(records: list[int]) -> int:
    """The bytes of `spool_of`'s records numbered `records` (10 on take one byte more)."""
    return sum(record_size(payloads(n, 1, pad=20)[0]) for n in records)


# --- between runs -----------------------------------------------------------------------


def test_the_segment_the_cursor_is_in_deleted_between_runs(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 12)
    with Spool(directory, CONFIG) as spool:
        spool.ack(4)  # the cursor is inside the second segment
    found[1].unlink()
    rest = sum(numbered[2:], [])
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(100)) == rest
        assert spool.damage_pending == missing(found[1].name)
        assert spool.depth_records == len(rest) and spool.depth_bytes == size_of(rest)
    with Spool(directory, CONFIG) as again:  # reported once, and still due
        assert numbers(again.peek(100)) == rest
        assert again.damage_pending == missing(found[1].name)
        again.clear_damage(missing(found[1].name))
    with Spool(directory, CONFIG) as reported:
        assert reported.damage_pending is None
        assert numbers(reported.peek(100)) == rest


def test_segments_deleted_after_the_cursor_between_runs(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 18)
    with Spool(directory, CONFIG) as spool:
        spool.ack(1)
    for gone in (found[1], found[3], found[4]):
        gone.unlink()
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(100)) == numbered[0][1:] + numbered[2] + sum(numbered[5:], [])
        assert spool.damage_pending == missing(found[1].name, f"{found[3].name} to {found[4].name}")


def test_the_only_segment_deleted_between_runs_leaves_new_records_whole(
    tmp_path: Path,
) -> None:
    directory = tmp_path / "spool"
    with Spool(directory, CONFIG) as spool:
        spool.append(payloads(0, 3, pad=20))
        spool.ack(2)  # the state file's cursor is inside it
    (only,) = segments(directory)
    only.unlink()
    with Spool(directory, CONFIG) as spool:
        assert spool.peek(100) == [] and spool.depth_records == 0
        assert spool.damage_pending == missing(only.name)
        spool.append(payloads(3, 3, pad=20))
    assert only not in segments(directory)  # its number is not used again: the cursor that
    with Spool(directory, CONFIG) as again:  # pointed into it must not skip the new records
        assert numbers(again.peek(100)) == [3, 4, 5]


def test_a_segment_set_aside_is_not_reported_as_deleted(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 9)
    with Spool(directory, CONFIG) as spool:
        spool.ack(1)
    # As a spool set it aside: the state file's cursor still points into it.
    found[0].rename(found[0].with_name(found[0].name + ".damaged"))
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(100)) == numbered[1] + numbered[2]
        assert spool.damage_pending is None


def test_an_empty_spool_has_nothing_missing(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    spool_of(directory, 9)
    with Spool(directory, CONFIG) as spool:
        spool.ack(9)  # no segment is left; the cursor is at the next number
    assert segments(directory) == []
    with Spool(directory, CONFIG) as spool:
        assert spool.damage_pending is None
        spool.append(payloads(0, 1))
    with Spool(directory, CONFIG) as again:
        assert numbers(again.peek(100)) == [0] and again.damage_pending is None


# --- while open -------------------------------------------------------------------------


def test_the_segment_being_read_deleted_while_open(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 12)
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(2)) == [0, 1]
        spool.ack(1)
        found[0].unlink()
        rest = sum(numbered[1:], [])
        assert numbers(spool.peek(100)) == rest  # before, every peek raised
        assert spool.damage_pending == missing(found[0].name)
        assert spool.depth_records == len(rest) and spool.depth_bytes == size_of(rest)
        spool.ack(2)
        assert numbers(spool.peek(100)) == rest[2:]
    with Spool(directory, CONFIG) as again:
        assert numbers(again.peek(100)) == rest[2:]
        assert again.damage_pending == missing(found[0].name)


def test_a_segment_deleted_between_peek_and_ack(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 12)
    with Spool(directory, CONFIG) as spool:
        assert numbers(spool.peek(5)) == [0, 1, 2, 3, 4]  # sent, the server acknowledges 5
        found[1].unlink()
        spool.ack(5)  # only 0-2 lie before the deleted segment; the rest is offered again
        assert numbers(spool.peek(100)) == sum(numbered[2:], [])
        assert spool.damage_pending == missing(found[1].name)


def test_the_tail_deleted_while_open_then_appending_goes_on(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, numbered = spool_of(directory, 10)  # the last segment holds only record 9
    with Spool(directory, CONFIG) as spool:
        found[-1].unlink()  # the segment appends go to
        spool.append(payloads(10, 1, pad=20))  # noticed: not written to the deleted file
        kept = sum(numbered[:-1], [])
        assert numbers(spool.peek(100)) == kept + [10]
        assert spool.damage_pending == missing(found[-1].name)
        spool.append(payloads(11, 4, pad=20))
        assert numbers(spool.peek(100)) == kept + [10, 11, 12, 13, 14]
        assert spool.depth_bytes == size_of(kept + [10, 11, 12, 13, 14])
    with Spool(directory, CONFIG) as again:
        assert numbers(again.peek(100)) == kept + [10, 11, 12, 13, 14]


def test_every_segment_deleted_while_open(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    found, _ = spool_of(directory, 9)
    with Spool(directory, CONFIG) as spool:
        spool.ack(1)
        for path in found:
            path.unlink()
        assert spool.peek(100) == [] and spool.depth_records == 0
        damage = spool.damage_pending
        assert damage is not None and set(damage.missing) == {p.name for p in found}
        spool.append(payloads(0, 2, pad=20))
        assert numbers(spool.peek(100)) == [0, 1]
    assert found[0] not in segments(directory)  # the state file's cursor pointed into it
    with Spool(directory, CONFIG) as again:
        assert numbers(again.peek(100)) == [0, 1]
