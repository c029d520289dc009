"""The sidecar's emitter against a real server: order, outages, crashes, bounds, poison events."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest

from auditmesh.datadir import open_ledger
from auditmesh.events import AuditEvent, EventError, canonical_bytes, decode_batch, decode_event
from auditmesh.proxy.emitter import (
    BUFFER_FULL,
    Emitter,
    EmitterClosed,
    EmitterConfig,
    backoff_delay,
)
from auditmesh.proxy.spool import SPOOL_FULL, Spool, SpoolConfig, record_size
from auditmesh.serverproc import ServerProcess, free_port
from tests.conftest import generate

SIDECAR = "spiffe://cluster.local/ns/shop/sa/frontend"
FAST = EmitterConfig(
    max_batch_events=40, flush_interval_s=0.01, backoff_initial_s=0.02, backoff_max_s=0.2
)


def events(count: int, seed: int = 7) -> list[AuditEvent]:
    return [msgspec.structs.replace(e, reporter=SIDECAR) for e in generate(count, seed)]


def server(data: Path, port: int | None = None) -> ServerProcess:
    return ServerProcess(data, port=port, extra=["--otlp-grpc", "off", "--mesh-listen", "off"])


def ledger_ids(data: Path) -> list[str]:
    """Every event id in the stopped server's ledger, in log order."""
    ledger = open_ledger(data, create=False)
    try:
        return [decode_event(d).id for _, d in ledger.store.entries(0, ledger.store.size())]
    finally:
        ledger.close()


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One server for the tests that never stop it; each uses its own events (seed)."""
    srv = server(tmp_path_factory.mktemp("shared") / "data").start()
    yield srv
    assert srv.stop() == 0


def assert_logged_in_order(srv: ServerProcess, expected: list[str]) -> None:
    """Each event is in the (running) server's ledger once, in order, with nothing else
    in between: the ledger's run starting at the first expected id is exactly `expected`."""
    logged = ledger_ids(srv.data_dir)
    first = logged.index(expected[0])
    assert logged[first : first + len(expected)] == expected
    assert len(set(logged)) == len(logged)


def ledger_events(data: Path) -> list[AuditEvent]:
    ledger = open_ledger(data, create=False)
    try:
        return [decode_event(d) for _, d in ledger.store.entries(0, ledger.store.size())]
    finally:
        ledger.close()


def ids(evs: list[AuditEvent]) -> list[str]:
    return [e.id for e in evs]


def emitter(
    url: str,
    data_dir: Path,
    *,
    config: EmitterConfig = FAST,
    spool: SpoolConfig | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> Emitter:
    client = httpx.AsyncClient(base_url=url, transport=transport)
    return Emitter(
        client,
        data_dir,
        reporter=SIDECAR,
        config=config,
        spool_config=spool or SpoolConfig(fsync=False),
        rand=random.Random(1).random,
    )


# `until` returns as soon as its condition holds: the bound only matters when it never
# does, and is generous for a loaded 2-vCPU CI runner.
UNTIL_S = 60.0


async def until(predicate: Callable[[], bool], timeout_s: float = UNTIL_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached in time"
        await asyncio.sleep(0.01)


async def closed(em: Emitter, timeout_s: float = 5.0) -> None:
    await em.close(timeout_s)
    await em.client.aclose()


def run(scenario: Callable[[], Coroutine[Any, Any, None]]) -> None:
    asyncio.run(scenario())


# --- pure ------------------------------------------------------------------------------


def test_backoff_is_capped_exponential_with_jitter() -> None:
    config = EmitterConfig(backoff_initial_s=0.1, backoff_max_s=2.0)
    assert [backoff_delay(n, config, lambda: 0.0) for n in range(6)] == [
        0.05,
        0.1,
        0.2,
        0.4,
        0.8,
        1.0,
    ]
    assert backoff_delay(3, config, lambda: 1.0) == 0.8
    assert backoff_delay(10_000, config, lambda: 0.999) < 2.0
    rng = random.Random(5)
    delays = {backoff_delay(4, config, rng.random) for _ in range(20)}
    assert len(delays) == 20 and all(0.8 <= d <= 1.6 for d in delays)


def test_configs_refuse_nonsense() -> None:
    with pytest.raises(ValueError):
        EmitterConfig(max_batch_events=0)
    with pytest.raises(ValueError):
        EmitterConfig(backoff_initial_s=2, backoff_max_s=1)
    with pytest.raises(ValueError):
        SpoolConfig(when_full="wait")  # type: ignore[arg-type]


# --- over httpx's transport seam: answers our server does not give ---------------------


class StrictCollector:
    """An httpx handler that validates like the collector but, like a proxy in front of
    it, hides which line was bad; and refuses batches over `max_events` with 413."""

    def __init__(self, max_events: int) -> None:
        self.max_events = max_events
        self.stored: list[str] = []
        self.posts = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.posts += 1
        lines = [line for line in request.content.split(b"\n") if line]
        if len(lines) > self.max_events:
            return httpx.Response(413, json={"error": "too large"})
        try:
            batch = decode_batch(request.content)
        except EventError as exc:
            return httpx.Response(400, json={"error": f"bad batch: {exc}"})
        self.stored += [e.id for e in batch if e.id not in self.stored]
        return httpx.Response(200, json={"indices": [], "size": len(self.stored)})


def test_without_a_line_number_the_batch_is_bisected_to_the_bad_event(tmp_path: Path) -> None:
    good = events(60)
    bad = [msgspec.structs.replace(good[i], id=f"bad-{i}") for i in (7, 33)]
    stream = good[:7] + [bad[0]] + good[7:33] + [bad[1]] + good[33:]
    collector = StrictCollector(max_events=16)

    async def scenario() -> None:
        em = emitter("http://collector", tmp_path, transport=httpx.MockTransport(collector))
        em.start()
        for event in stream:
            em.emit(event)
        assert await em.drain(10)
        stats = em.stats()
        await closed(em)
        assert stats.rejected == 2 and stats.sent == 60 and stats.spooled == 0

    run(scenario)
    assert collector.stored == ids(good)  # 413s halved the batches; order kept
    lines = (tmp_path / "rejected.ndjson").read_text().splitlines()
    rejected = [json.loads(line) for line in lines]
    assert [r["event"]["id"] for r in rejected] == ["bad-7", "bad-33"]
    assert all(r["status"] == 400 and "bad batch" in r["reason"] for r in rejected)


def test_an_event_too_large_for_any_batch_is_rejected_not_retried(tmp_path: Path) -> None:
    collector = StrictCollector(max_events=0)  # every batch is 413

    async def scenario() -> None:
        em = emitter("http://collector", tmp_path, transport=httpx.MockTransport(collector))
        em.start()
        for event in events(3):
            em.emit(event)
        assert await em.drain(10)
        assert em.stats().rejected == 3
        await closed(em)

    run(scenario)
    assert len((tmp_path / "rejected.ndjson").read_text().splitlines()) == 3


def test_emit_after_close_is_refused(tmp_path: Path) -> None:
    async def scenario() -> None:
        em = emitter("http://127.0.0.1:9", tmp_path)
        em.start()
        await closed(em, 0.1)
        with pytest.raises(EmitterClosed):
            em.emit(events(1)[0])

    run(scenario)


# --- against a real server --------------------------------------------------------------


@pytest.mark.integration
def test_events_arrive_in_order(tmp_path: Path, shared: ServerProcess) -> None:
    stream = events(300, seed=11)
    srv = shared

    async def scenario() -> None:
        em = emitter(srv.url, tmp_path / "sidecar")
        em.start()
        for number, event in enumerate(stream):
            em.emit(event)
            if number % 25 == 0:
                await asyncio.sleep(0)
        assert await em.drain(10)
        stats = em.stats()
        assert (stats.sent, stats.spooled, stats.dropped, stats.rejected) == (300, 0, 0, 0)
        await closed(em)

    run(scenario)
    assert_logged_in_order(srv, ids(stream))


@pytest.mark.integration
def test_server_down_for_n_events_then_up_gets_all_exactly_once_in_order(
    tmp_path: Path,
) -> None:
    stream = events(250)
    port = free_port()  # nothing listens yet
    srv = server(tmp_path / "data", port)

    async def scenario() -> None:
        em = emitter(srv.url, tmp_path / "sidecar")
        em.start()
        for event in stream[:100]:
            em.emit(event)  # synchronous, returns at once: the event is in memory
        assert em.stats().buffered == 100 and em.stats().emitted == 100
        await until(lambda: em.stats().spool_depth_events == 100)
        for event in stream[100:]:
            em.emit(event)
        await until(lambda: em.stats().spool_depth_events == 250)
        assert em.stats().sent == 0 and em.stats().retries >= 1
        assert "Connect" in (em.stats().last_error or "")
        await asyncio.to_thread(srv.start)
        assert await em.drain(15)
        stats = em.stats()
        assert stats.sent == 250 and stats.spool_depth_events == 0
        assert stats.spool_depth_bytes == 0 and stats.last_error is None
        await closed(em)

    try:
        run(scenario)
    finally:
        assert srv.stop() == 0
    assert ledger_ids(tmp_path / "data") == ids(stream)
    assert list((tmp_path / "sidecar" / "spool").glob("*.seg")) == []


@pytest.mark.integration
def test_server_sigkilled_mid_stream_and_restarted(tmp_path: Path) -> None:
    stream = events(1500)
    srv = server(tmp_path / "data").start()

    async def scenario() -> None:
        em = emitter(srv.url, tmp_path / "sidecar")
        em.start()
        for number, event in enumerate(stream):
            em.emit(event)
            if number % 10 == 0:
                await asyncio.sleep(0.001)
            if number == 500:
                await until(lambda: em.stats().sent > 300)
                srv.kill()  # SIGKILL while batches are in flight
            if number == 1000:
                assert em.stats().spool_depth_events > 0
                await asyncio.to_thread(srv.start)
        assert await em.drain(20)
        assert em.stats().sent >= 1500  # a batch cut off by the kill may be sent twice
        await closed(em)

    try:
        run(scenario)
    finally:
        assert srv.stop() == 0
    assert ledger_ids(tmp_path / "data") == ids(stream)  # each once, in emitted order


CRASHING_SIDECAR = """
import asyncio, sys
from pathlib import Path
import httpx, msgspec
from auditmesh.proxy.emitter import Emitter, EmitterConfig
from tests.conftest import generate

async def main() -> None:
    client = httpx.AsyncClient(base_url=sys.argv[1])
    emitter = Emitter(client, Path(sys.argv[2]), reporter=sys.argv[3],
                      config=EmitterConfig(flush_interval_s=0.01, backoff_initial_s=0.05))
    emitter.start()
    for event in generate(int(sys.argv[4])):
        emitter.emit(msgspec.structs.replace(event, reporter=sys.argv[3]))
    while emitter.stats().spool_depth_events < int(sys.argv[4]):
        await asyncio.sleep(0.01)
    print("spooled", flush=True)
    await asyncio.sleep(60)  # killed here with a full spool

asyncio.run(main())
"""


@pytest.mark.integration
def test_sidecar_killed_with_a_full_spool_replays_it_exactly_once(tmp_path: Path) -> None:
    stream = events(200)
    port = free_port()
    srv = server(tmp_path / "data", port)
    sidecar = tmp_path / "sidecar"
    child = subprocess.Popen(
        [sys.executable, "-c", CRASHING_SIDECAR, srv.url, str(sidecar), SIDECAR, "200"],
        stdout=subprocess.PIPE,
        cwd=Path(__file__).parents[2],
    )
    assert child.stdout is not None
    try:
        assert child.stdout.readline() == b"spooled\n"
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait()
        child.stdout.close()
    srv.start()
    try:
        # The first 50 reached the server before the crash too (a lost acknowledgement):
        # replaying them must not log them twice.
        sent = httpx.post(
            srv.url + "/v1/events",
            content=b"".join(canonical_bytes(e) + b"\n" for e in stream[:50]),
        )
        assert sent.status_code == 200

        async def scenario() -> None:
            em = emitter(srv.url, sidecar)
            assert em.stats().spool_depth_events == 200  # recovered from disk
            em.start()
            assert await em.drain(15)
            assert em.stats().sent == 200
            await closed(em)

        run(scenario)
    finally:
        assert srv.stop() == 0
    assert ledger_ids(tmp_path / "data") == ids(stream)


@pytest.mark.integration
def test_a_torn_spool_record_is_cut_off_and_the_rest_replayed(
    tmp_path: Path, shared: ServerProcess
) -> None:
    stream = events(30, seed=12)
    sidecar = tmp_path / "sidecar"
    with Spool(sidecar / "spool") as spool:
        spool.append([canonical_bytes(e) for e in stream[:20]])
    (segment,) = (sidecar / "spool").glob("*.seg")
    torn = canonical_bytes(stream[20])
    with open(segment, "ab") as f:  # kill -9 in the middle of the 21st record
        f.write(len(torn).to_bytes(4, "big") + b"\x00\x00\x00\x00" + torn[: len(torn) // 2])
    srv = shared

    async def scenario() -> None:
        em = emitter(srv.url, sidecar)
        assert em.stats().spool_depth_events == 20
        em.start()
        for event in stream[21:]:
            em.emit(event)
        assert await em.drain(10)
        assert em.stats().rejected == 0
        await closed(em)

    run(scenario)
    logged = ledger_events(srv.data_dir)
    first = [e.id for e in logged].index(stream[0].id)
    run_ = logged[first : first + 30]
    assert [e.id for e in run_[:20] + run_[21:]] == ids(stream[:20] + stream[21:])
    damaged = run_[20]  # told in the ledger, right after what survived
    assert damaged.kind == "system" and damaged.labels["system.action"] == "spool_damaged"
    assert damaged.labels["spool.cut_bytes"] == str(8 + len(torn) // 2)


def _notice(evs: list[AuditEvent]) -> AuditEvent:
    (notice,) = [e for e in evs if e.kind == "system"]
    assert notice.reporter == SIDECAR and notice.outcome == "failure"
    assert notice.labels["system.action"] == "spool_dropped"
    assert notice.error is not None and notice.error.type == "spool_dropped"
    return notice


@pytest.mark.integration
def test_drop_oldest_keeps_the_newest_and_records_what_it_dropped(tmp_path: Path) -> None:
    stream = events(120)
    size = max(record_size(canonical_bytes(e)) for e in stream)
    spool = SpoolConfig(max_bytes=40 * size, when_full="drop-oldest", fsync=False)
    port = free_port()
    srv = server(tmp_path / "data", port)

    async def scenario() -> None:
        em = emitter(srv.url, tmp_path / "sidecar", spool=spool)
        em.start()
        for start in range(0, 120, 20):
            for event in stream[start : start + 20]:
                em.emit(event)
            await until(lambda: em.stats().buffered == 0)
        stats = em.stats()
        assert stats.spool_depth_bytes <= spool.max_bytes
        assert stats.dropped == 120 - stats.spool_depth_events > 0
        assert stats.notices == 0  # no room to say so yet
        await asyncio.to_thread(srv.start)
        assert await em.drain(15)
        assert em.stats().notices == 1
        await closed(em)

    try:
        run(scenario)
    finally:
        assert srv.stop() == 0
    logged = ledger_events(tmp_path / "data")
    notice = _notice(logged)
    dropped = int(notice.labels["spool.dropped"])
    assert notice.labels[f"spool.dropped.{SPOOL_FULL}"] == str(dropped)
    assert ids(logged) == ids(stream[dropped:]) + [notice.id]  # the newest, in order, then it


@pytest.mark.integration
def test_block_keeps_the_oldest_and_refuses_the_newest_without_blocking(tmp_path: Path) -> None:
    stream = events(100)
    size = max(record_size(canonical_bytes(e)) for e in stream)
    spool = SpoolConfig(max_bytes=20 * size, when_full="block", fsync=False)
    config = EmitterConfig(
        max_batch_events=10,
        max_buffer_events=30,
        flush_interval_s=0.01,
        backoff_initial_s=0.02,
        backoff_max_s=0.1,
    )
    port = free_port()
    srv = server(tmp_path / "data", port)

    async def scenario() -> None:
        em = emitter(srv.url, tmp_path / "sidecar", config=config, spool=spool)
        em.start()
        for event in stream[:20]:
            em.emit(event)
        await until(lambda: em.stats().spool_depth_events == 20)  # the spool has room
        for event in stream[20:]:
            em.emit(event)  # never waits: beyond memory's cap the newest are refused
        stats = em.stats()
        assert (stats.emitted, stats.buffered, stats.dropped) == (100, 30, 50)
        await asyncio.sleep(0.2)  # the sender retries and fills the spool meanwhile
        stats = em.stats()
        assert stats.spool_depth_events + stats.buffered == 50  # nothing accepted is lost
        assert stats.spool_depth_events > 20 and stats.spool_depth_bytes <= spool.max_bytes
        assert stats.dropped == 50 and stats.notices == 0
        await asyncio.to_thread(srv.start)
        assert await em.drain(15)
        assert em.stats().notices == 1
        await closed(em)

    try:
        run(scenario)
    finally:
        assert srv.stop() == 0
    logged = ledger_events(tmp_path / "data")
    notice = _notice(logged)
    assert notice.labels[f"spool.dropped.{BUFFER_FULL}"] == "50"
    assert ids(logged) == ids(stream[:50]) + [notice.id]  # the oldest, in order, then it


@pytest.mark.integration
def test_a_poison_event_goes_to_rejected_ndjson_and_the_rest_gets_through(
    tmp_path: Path, shared: ServerProcess
) -> None:
    good = events(50, seed=13)
    poison = msgspec.structs.replace(good[0], id="not-an-event-id")
    stream = good[:23] + [poison] + good[23:]
    srv = shared

    async def scenario() -> None:
        em = emitter(srv.url, tmp_path / "sidecar")
        em.start()
        for event in stream:
            em.emit(event)
        assert await em.drain(10)
        stats = em.stats()
        assert (stats.sent, stats.rejected) == (50, 1)
        await closed(em)

    run(scenario)
    assert_logged_in_order(srv, ids(good))
    (line,) = (tmp_path / "sidecar" / "rejected.ndjson").read_text().splitlines()
    rejected = json.loads(line)
    assert rejected["status"] == 400 and "$.id" in rejected["reason"]
    assert rejected["event"]["id"] == "not-an-event-id"


@pytest.mark.integration
def test_an_id_the_log_holds_with_other_content_is_rejected_not_retried_forever(
    tmp_path: Path, shared: ServerProcess
) -> None:
    good = events(20, seed=23)
    reused = msgspec.structs.replace(good[4], outcome="unknown")  # a broken producer's
    srv = shared

    async def scenario() -> None:
        em = emitter(srv.url, tmp_path / "sidecar")
        em.start()
        for event in good[:10]:
            em.emit(event)
        assert await em.drain(10)
        for event in [reused, *good[10:]]:
            em.emit(event)
        assert await em.drain(10)  # the pipeline goes on past it
        stats = em.stats()
        assert (stats.sent, stats.rejected) == (20, 1)
        await closed(em)

    run(scenario)
    assert_logged_in_order(srv, ids(good))
    (line,) = (tmp_path / "sidecar" / "rejected.ndjson").read_text().splitlines()
    rejected = json.loads(line)
    assert rejected["status"] == 409 and "with other content" in rejected["reason"]


@pytest.mark.integration
def test_replacing_the_client_mid_stream_loses_and_reorders_nothing(
    tmp_path: Path, shared: ServerProcess
) -> None:
    stream = events(400, seed=14)
    srv = shared

    async def scenario() -> None:
        em = emitter(srv.url, tmp_path / "sidecar")
        em.start()
        for number, event in enumerate(stream):
            em.emit(event)
            if number % 20 == 0:
                await asyncio.sleep(0.002)
            if number in (100, 250):  # rotation: the old client is closed right away
                old = em.replace_client(httpx.AsyncClient(base_url=srv.url))
                await old.aclose()
        assert await em.drain(10)
        assert em.stats().spooled == 0 or em.stats().spool_depth_events == 0
        await closed(em)

    run(scenario)
    assert_logged_in_order(srv, ids(stream))


@pytest.mark.integration
def test_close_with_the_server_away_leaves_everything_in_the_spool(tmp_path: Path) -> None:
    stream = events(90)
    srv = server(tmp_path / "data", free_port())

    async def first_run() -> None:
        em = emitter(srv.url, tmp_path / "sidecar", config=EmitterConfig(flush_interval_s=5))
        em.start()
        for event in stream:
            em.emit(event)  # still in memory: the flush interval has not passed
        started = time.monotonic()
        await closed(em, timeout_s=2)
        assert time.monotonic() - started < 2  # one failed try is enough to give up
        assert em.stats().spool_depth_events == 90 and em.stats().buffered == 0

    async def second_run() -> None:
        em = emitter(srv.url, tmp_path / "sidecar")
        em.start()
        assert await em.drain(10)
        await closed(em)

    run(first_run)
    srv.start()
    try:
        run(second_run)
    finally:
        assert srv.stop() == 0
    assert ledger_ids(tmp_path / "data") == ids(stream)
