"""A damaged spool does not stop the sidecar: a segment whose magic is damaged is set aside
and the rest replayed, damage that appears while it runs is cut out and delivery goes on,
and the `spool_damaged` report survives a kill -9 until the server has it."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from auditmesh.events import MAX_LABEL, AuditEvent, canonical_bytes
from auditmesh.proxy.emitter import EmitterStats
from auditmesh.proxy.spool import MAGIC, RECORD_OVERHEAD, Spool, SpoolConfig
from auditmesh.serverproc import ServerProcess, free_port
from tests.proxy.killed_sidecar import deliver_after_restart, kill_while_reporting
from tests.proxy.test_emitter import (
    SIDECAR,
    closed,
    emitter,
    events,
    ids,
    ledger_events,
    run,
    server,
    shared,
    until,
)

__all__ = ["shared"]  # the fixture

SPOOL = SpoolConfig(segment_bytes=4096, fsync=False)


def record_offsets(segment: Path) -> list[int]:
    """Where each record of a (sound) segment starts."""
    data = segment.read_bytes()
    pos, out = len(MAGIC), []
    while pos < len(data):
        out.append(pos)
        pos += RECORD_OVERHEAD + int.from_bytes(data[pos : pos + 4], "big")
    return out


def flip(path: Path, at: int) -> None:
    with open(path, "r+b") as f:
        f.seek(at)
        byte = f.read(1)[0]
        f.seek(at)
        f.write(bytes([byte ^ 0x04]))


def spooled(sidecar: Path, stream: list[AuditEvent]) -> list[Path]:
    """`stream` in the sidecar's spool, as an earlier run left it; returns its segments."""
    with Spool(sidecar / "spool", SPOOL) as spool:
        spool.append([canonical_bytes(e) for e in stream])
    found = sorted((sidecar / "spool").glob("*.seg"))
    assert len(found) >= 3
    return found


def deliver(url: str, sidecar: Path) -> EmitterStats:
    """Start the sidecar's emitter, deliver all it holds, stop; its stats."""

    async def scenario() -> EmitterStats:
        em = emitter(url, sidecar, spool=SPOOL)
        em.start()
        assert await em.drain(10)
        await closed(em)
        return em.stats()

    return asyncio.run(scenario())


def deliver_damaged_while_running(
    sidecar: Path, data: Path, damage: Callable[[], object]
) -> list[AuditEvent]:
    """Start the sidecar's emitter while the server on `data` is away; once it has read the
    spool and failed to send, `damage` the spool under it, start the server, deliver all it
    holds, stop; the ledger's events."""
    srv = server(data, free_port())  # not started yet

    async def scenario() -> None:
        em = emitter(srv.url, sidecar, spool=SPOOL)
        em.start()
        await until(lambda: em.stats().retries >= 1)  # it read the spool, the server is away
        damage()
        await asyncio.to_thread(srv.start)
        assert await em.drain(15)
        assert em.stats().spool_depth_events == 0
        await closed(em)

    try:
        run(scenario)
    finally:
        assert srv.stop() == 0
    return ledger_events(data)


def run_from(logged: list[AuditEvent], first: str, count: int) -> list[AuditEvent]:
    at = ids(logged).index(first)
    return logged[at : at + count]


def damage_notice(event: AuditEvent) -> dict[str, str]:
    assert event.kind == "system" and event.reporter == SIDECAR
    assert event.labels["system.action"] == "spool_damaged"
    return event.labels


@pytest.mark.integration
def test_a_segment_with_a_damaged_magic_is_set_aside_and_the_rest_delivered(
    tmp_path: Path, shared: ServerProcess
) -> None:
    stream = events(30, seed=31)
    sidecar = tmp_path / "sidecar"
    found = spooled(sidecar, stream)
    first_count, first_size = len(record_offsets(found[0])), found[0].stat().st_size
    flip(found[0], 2)  # the sidecar could not start at all

    async def scenario() -> None:
        em = emitter(shared.url, sidecar, spool=SPOOL)
        assert em.stats().spool_depth_events == 30 - first_count
        em.start()
        assert await em.drain(10)
        await closed(em)

    run(scenario)
    survivors = stream[first_count:]
    logged = run_from(ledger_events(shared.data_dir), survivors[0].id, len(survivors) + 1)
    assert ids(logged[:-1]) == ids(survivors)  # in order, each once
    labels = damage_notice(logged[-1])
    aside = found[0].with_name(found[0].name + ".damaged")
    assert labels["spool.set_aside"] == str(aside)  # where the operator finds it
    assert not found[0].exists() and aside.stat().st_size == first_size  # kept whole
    assert int(labels["spool.cut_bytes"]) == first_size - len(MAGIC)
    with Spool(sidecar / "spool", SPOOL) as spool:  # reported: nothing left to report
        assert spool.damage_pending is None


@pytest.mark.integration
def test_damage_while_running_is_cut_out_and_delivery_goes_on(tmp_path: Path) -> None:
    stream = events(30, seed=32)
    sidecar = tmp_path / "sidecar"
    found = spooled(sidecar, stream)
    bad = record_offsets(found[0])[1]  # the second event
    size = RECORD_OVERHEAD + len(canonical_bytes(stream[1]))
    logged = deliver_damaged_while_running(
        sidecar,
        tmp_path / "data",
        lambda: flip(found[0], bad + RECORD_OVERHEAD + 10),  # a byte goes bad
    )
    survivors = stream[:1] + stream[2:]
    assert ids(logged[:-1]) == ids(survivors)  # the rest, in order, each once
    assert damage_notice(logged[-1])["spool.cut_bytes"] == str(size)


@pytest.mark.integration
def test_a_sidecar_killed_before_reporting_damage_reports_it_after_restart(
    tmp_path: Path,
) -> None:
    sidecar = tmp_path / "sidecar"
    (sidecar / "spool").mkdir(parents=True)
    torn = canonical_bytes(events(1, seed=33)[0])
    (sidecar / "spool" / "0000000000000000.seg").write_bytes(
        MAGIC + len(torn).to_bytes(4, "big") + bytes(4) + torn[:40]  # kill -9 mid-write
    )
    kill_while_reporting(sidecar, "started")  # it cut the torn record out first
    (notice,) = deliver_after_restart(sidecar, tmp_path / "data")
    assert damage_notice(notice)["spool.cut_bytes"] == str(RECORD_OVERHEAD + 40)


@pytest.mark.integration
def test_a_damaged_state_file_is_set_aside_and_every_event_delivered_once(
    tmp_path: Path, shared: ServerProcess
) -> None:
    stream = events(30, seed=34)
    sidecar = tmp_path / "sidecar"
    spooled(sidecar, stream)
    with Spool(sidecar / "spool", SPOOL) as spool:  # an earlier run delivered the first 10
        response = httpx.post(
            f"{shared.url}/v1/events",
            content=b"\n".join(spool.peek(10)) + b"\n",
            headers={"content-type": "application/x-ndjson"},
        )
        assert response.status_code == 200
        spool.ack(10)
    state = sidecar / "spool" / "state.json"
    state.write_bytes(state.read_bytes()[:12])  # torn: the sidecar could not start at all
    deliver(shared.url, sidecar)
    everything = ledger_events(shared.data_dir)
    assert len(set(ids(everything))) == len(everything)  # what was sent again is kept once
    logged = run_from(everything, stream[0].id, len(stream) + 1)
    assert ids(logged[:-1]) == ids(stream)  # nothing lost, in order
    labels = damage_notice(logged[-1])
    assert labels["spool.state_set_aside"] == str(state.with_name("state.json.damaged"))
    assert labels["spool.cut_bytes"] == "0"
    assert "spool.set_aside" not in labels
    with Spool(sidecar / "spool", SPOOL) as spool:  # reported: nothing left to report
        assert spool.damage_pending is None


@pytest.mark.integration
def test_a_report_naming_many_damaged_files_fits_in_an_event(
    tmp_path: Path, shared: ServerProcess
) -> None:
    names = [f"{n:016d}.seg.damaged" for n in range(200)]
    spool = tmp_path / "sidecar" / "spool"
    spool.mkdir(parents=True)
    (spool / "state.json").write_text(
        '{"segment": 200, "offset": 8, "dropped": {}, '
        f'"damaged": {{"cut_bytes": 9, "set_aside": {json.dumps(names)}}}}}'
    )
    assert deliver(shared.url, tmp_path / "sidecar").rejected == 0  # the server took it
    labels = damage_notice(ledger_events(shared.data_dir)[-1])
    assert len(labels["spool.set_aside"]) <= MAX_LABEL
    first, *_, last = labels["spool.set_aside"].split(", ")
    assert first == str(spool / names[0])
    shown = labels["spool.set_aside"].count(".seg.damaged")
    assert last.endswith(f"{names[shown - 1]} and {len(names) - shown} more")


@pytest.mark.integration
def test_a_segment_deleted_while_running_is_reported_and_delivery_goes_on(
    tmp_path: Path,
) -> None:
    stream = events(30, seed=35)
    sidecar = tmp_path / "sidecar"
    found = spooled(sidecar, stream)
    first, second = len(record_offsets(found[0])), len(record_offsets(found[1]))
    # someone deletes a segment (before, the sidecar retried for ever)
    logged = deliver_damaged_while_running(sidecar, tmp_path / "data", found[1].unlink)
    assert ids(logged[:-1]) == ids(stream[:first] + stream[first + second :])
    labels = damage_notice(logged[-1])
    assert labels["spool.missing"] == str(found[1])
    assert labels["spool.cut_bytes"] == "0"
