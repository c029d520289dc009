"""Durable ingest: events/s through the real append path, against fsync'd file appends.

Three ways in, all with the query indexes on and a checkpoint signed each second:
  * the collector in this process (`Collector` over `open_ledger`), one submitter waiting for
    each batch's future — what the HTTP handler does after decoding — and several submitters,
    so the sequencer's group commit can merge batches;
  * the HTTP server in a child process (`ServerProcess`), a few concurrent httpx clients
    POSTing NDJSON batches to /v1/events (decode, validation and the answer included);
  * the peer: the same NDJSON bytes appended to a plain file, fsync per batch.
Then the cost of each step of the append path per event, measured one step at a time.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import msgspec

from auditmesh.collector import Collector
from auditmesh.datadir import open_ledger
from auditmesh.events import AuditEvent, canonical_bytes, decode_batch, encode_ndjson
from auditmesh.ledger import merkle, tiles
from auditmesh.ledger.log import Entry
from auditmesh.serverproc import ServerProcess
from auditmesh.store.base import columns_of, event_key
from auditmesh.store.sqlite import SQLiteStore
from bench.common import Figure, Target, fmt, percentile, process_cpu_s, progress

SECTION = "ingest"
T = TypeVar("T")
TARGET = Target("≥ 100,000 events/s", 100_000, higher_is_better=True)


@dataclass(frozen=True, slots=True)
class IngestOptions:
    events: int = 100_000
    http_events: int = 60_000
    batch: int = 1_000
    clients: int = 4
    breakdown_events: int = 20_000


def _batches(events: Sequence[AuditEvent], size: int) -> list[list[AuditEvent]]:
    return [list(events[i : i + size]) for i in range(0, len(events), size)]


def _shares(items: Sequence[T], parts: int) -> list[list[T]]:
    return [list(items[i::parts]) for i in range(parts)]


def file_peer(bodies: Sequence[bytes], path: Path) -> float:
    """Seconds to append every body to one file, fsync after each (the peer)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        start = time.perf_counter()
        for body in bodies:
            os.write(fd, body)
            os.fsync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)


@dataclass(frozen=True, slots=True)
class CollectorRun:
    seconds: float
    cpu_seconds: float
    checkpoints: int


def collector_run(
    batches: Sequence[list[AuditEvent]],
    data_dir: Path,
    submitters: int,
    *,
    origin: str = "bench.auditmesh.local/ingest",
) -> CollectorRun:
    """Append through `Collector.submit`, each submitter waiting for its batch to be durable
    (into the ledger at `data_dir`, new or already filled)."""
    ledger = open_ledger(data_dir, origin=origin)
    collector = Collector(ledger.log)  # checkpoint_interval_ns: 1 s, the server's default
    collector.start()
    expected = ledger.log.size + sum(len(b) for b in batches)

    def submit_all(share: Sequence[list[AuditEvent]]) -> None:
        for batch in share:
            indices = collector.submit(batch).result()
            assert len(indices) == len(batch)

    try:
        cpu = time.process_time()
        start = time.perf_counter()
        if submitters == 1:
            submit_all(batches)
        else:
            with ThreadPoolExecutor(submitters) as pool:
                list(pool.map(submit_all, _shares(batches, submitters)))
        seconds = time.perf_counter() - start
        cpu_seconds = time.process_time() - cpu
    finally:
        collector.stop()
    if collector.failure is not None:
        raise RuntimeError(f"the collector failed: {collector.failure!r}")
    if ledger.log.size != expected:
        raise RuntimeError(f"ledger holds {ledger.log.size} events, expected {expected}")
    checkpoints = sum(1 for _ in ledger.store.checkpoints())
    ledger.close()
    return CollectorRun(seconds, cpu_seconds, checkpoints)


@dataclass(frozen=True, slots=True)
class HttpRun:
    seconds: float
    server_cpu_seconds: float | None
    latencies_ms: list[float]
    checkpoints: int


def http_run(
    bodies: Sequence[bytes], counts: Sequence[int], data_dir: Path, clients: int
) -> HttpRun:
    """POST each NDJSON body to a real `auditmesh server`, `clients` connections at once."""
    latencies: list[float] = []
    lock = threading.Lock()
    with ServerProcess(data_dir) as server:
        assert server.proc is not None
        pid = server.proc.pid

        def post_all(share: Sequence[tuple[bytes, int]]) -> None:
            headers = {"content-type": "application/x-ndjson"}
            with httpx.Client(base_url=server.url, timeout=120.0) as client:
                client.get("/log/checkpoint")  # open the connection before the clock runs
                mine: list[float] = []
                for body, count in share:
                    sent = time.perf_counter()
                    response = client.post("/v1/events", content=body, headers=headers)
                    mine.append((time.perf_counter() - sent) * 1000)
                    if response.status_code != 200:
                        raise RuntimeError(
                            f"POST /v1/events: {response.status_code} {response.text}"
                        )
                    if len(response.json()["indices"]) != count:
                        raise RuntimeError("the server acknowledged a different number of events")
            with lock:
                latencies.extend(mine)

        work = _shares(list(zip(bodies, counts, strict=True)), clients)
        cpu = process_cpu_s(pid)
        start = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(post_all, work))
        seconds = time.perf_counter() - start
        cpu_after = process_cpu_s(pid)
    # The server is stopped (SIGTERM: last checkpoint signed); read what it stored.
    ledger = open_ledger(data_dir, create=False)
    stored, checkpoints = ledger.log.size, sum(1 for _ in ledger.store.checkpoints())
    ledger.close()
    if stored != sum(counts):
        raise RuntimeError(f"server stored {stored} events, expected {sum(counts)}")
    server_cpu = None if cpu is None or cpu_after is None else cpu_after - cpu
    return HttpRun(seconds, server_cpu, sorted(latencies), checkpoints)


# -- cost per event, one step at a time ------------------------------------------------------

STEPS = (
    "decode NDJSON (decode_batch)",
    "canonical encode (RFC 8785)",
    "dedup key + index columns",
    "sha256 leaf hash",
    "dedup lookup (indices_of)",
    "tiles_after_append",
    "sqlite write + commit (synchronous=FULL)",
)
NOSYNC = "  same write, synchronous=OFF (no fsync)"


def breakdown(events: Sequence[AuditEvent], batch: int, work: Path) -> dict[str, float]:
    """µs per event of each step of the append path, on `events` in batches of `batch`."""
    spent = dict.fromkeys((*STEPS, NOSYNC), 0.0)
    stores = [SQLiteStore(work / "full"), SQLiteStore(work / "nosync")]
    # Private handle, bench only: how much of the write is the fsync.
    stores[1]._writer.execute("PRAGMA synchronous=OFF")
    clock = time.perf_counter
    size = 0
    for chunk in _batches(events, batch):
        body = encode_ndjson(chunk)
        t0 = clock()
        decoded = decode_batch(body)
        t1 = clock()
        datas = [canonical_bytes(e) for e in decoded]
        t2 = clock()
        keys = [event_key(e.id) for e in decoded]
        columns = [columns_of(e) for e in decoded]
        t3 = clock()
        hashes = [merkle.leaf_hash(d) for d in datas]
        t4 = clock()
        found = stores[0].indices_of(keys)
        t5 = clock()
        updates = tiles.tiles_after_append(size, hashes, stores[0].read_stored_tile)
        t6 = clock()
        entries = [Entry(k, d, c) for k, d, c in zip(keys, datas, columns, strict=True)]
        t7 = clock()
        stores[0].write(size, entries, updates)
        t8 = clock()
        stores[1].write(size, entries, updates)
        t9 = clock()
        assert not found
        for step, seconds in zip(
            (*STEPS, NOSYNC),
            (t1 - t0, t2 - t1, t3 - t2 + t7 - t6, t4 - t3, t5 - t4, t6 - t5, t8 - t7, t9 - t8),
            strict=True,
        ):
            spent[step] += seconds
        size += len(chunk)
    for store in stores:
        store.close()
    return {step: seconds / size * 1e6 for step, seconds in spent.items()}


FLOORS = (
    "floor: JSON decode only (msgspec, untyped)",
    "floor: SQLite row (idx, id, data)",
)


def floors(events: Sequence[AuditEvent], batch: int, work: Path) -> dict[str, float]:
    """µs per event of the least any CPython + one-SQLite-row-per-event design must do: parse
    the JSON at all, and insert a row of the canonical bytes with the dedup index (WAL,
    synchronous=FULL, one transaction per batch). Against the 10 µs per event of the target."""
    conn = sqlite3.connect(work / "floor.db", isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("CREATE TABLE events (idx INTEGER PRIMARY KEY, id BLOB UNIQUE, data BLOB)")
    decode_s = insert_s = 0.0
    size = 0
    for chunk in _batches(events, batch):
        body = encode_ndjson(chunk)
        rows = [(size + i, event_key(e.id), canonical_bytes(e)) for i, e in enumerate(chunk)]
        t0 = time.perf_counter()
        for line in body.splitlines():
            msgspec.json.decode(line)
        t1 = time.perf_counter()
        conn.execute("BEGIN IMMEDIATE")
        conn.executemany("INSERT INTO events VALUES (?, ?, ?)", rows)
        conn.execute("COMMIT")
        t2 = time.perf_counter()
        decode_s, insert_s, size = decode_s + t1 - t0, insert_s + t2 - t1, size + len(chunk)
    conn.close()
    return dict(zip(FLOORS, (decode_s / size * 1e6, insert_s / size * 1e6), strict=True))


# -- the section -----------------------------------------------------------------------------


def run(events: Sequence[AuditEvent], options: IngestOptions, work: Path) -> list[Figure]:
    work.mkdir(parents=True, exist_ok=True)
    n = len(events)
    batches = _batches(events, options.batch)
    bodies = [encode_ndjson(b) for b in batches]
    mib = sum(map(len, bodies)) / 2**20
    print(
        f"\n== Durable ingest: {n:,} events in batches of {options.batch:,} "
        f"({mib:,.0f} MiB NDJSON, {mib * 2**20 / n:,.0f} B/event) ==",
        flush=True,
    )

    peer_s = file_peer(bodies, work / "peer.ndjson")
    peer = n / peer_s
    print(f"peer: append NDJSON + fsync per batch   {fmt(peer, 'events/s'):>18}", flush=True)

    figures: list[Figure] = []
    for submitters in (1, options.clients):
        progress(f"collector, {submitters} submitter(s): appending {n:,} events")
        got = collector_run(batches, work / f"collector-{submitters}", submitters)
        rate = n / got.seconds
        print(
            f"collector, {submitters} submitter(s):      {fmt(rate, 'events/s'):>18}  "
            f"= {rate / peer:.3f} × peer; {n / got.cpu_seconds:,.0f} events per CPU-second of "
            f"this process; {got.checkpoints} checkpoints signed",
            flush=True,
        )
        figures.append(
            Figure(
                SECTION,
                f"collector, {submitters} submitter(s)",
                rate,
                "events/s",
                "file append + fsync",
                peer,
                TARGET,
            )
        )

    http_n = min(options.http_events, n)
    http_batches = batches[: -(-http_n // options.batch)]
    http_bodies = bodies[: len(http_batches)]
    http_total = sum(len(b) for b in http_batches)
    progress(f"http: {options.clients} clients POSTing {http_total:,} events to a server process")
    got_http = http_run(
        http_bodies, [len(b) for b in http_batches], work / "server", options.clients
    )
    http_rate = http_total / got_http.seconds
    http_peer = http_total / file_peer(http_bodies, work / "peer-http.ndjson")
    lat = got_http.latencies_ms
    cpu_text = (
        ""
        if got_http.server_cpu_seconds is None
        else f"; {http_total / got_http.server_cpu_seconds:,.0f} events per server CPU-second"
    )
    print(
        f"http, {options.clients} clients POST /v1/events: {fmt(http_rate, 'events/s'):>18}  "
        f"= {http_rate / http_peer:.3f} × peer ({fmt(http_peer, 'events/s')} on these batches)"
        f"{cpu_text}; batch ack p50 {percentile(lat, 50):,.0f} ms, p99 {percentile(lat, 99):,.0f}"
        f" ms; {got_http.checkpoints} checkpoints signed",
        flush=True,
    )
    figures.append(
        Figure(
            SECTION,
            f"HTTP, {options.clients} clients",
            http_rate,
            "events/s",
            "file append + fsync",
            http_peer,
            TARGET,
        )
    )

    sample = events[: min(options.breakdown_events, n)]
    progress(f"cost per event, step by step, on {len(sample):,} events")
    costs = breakdown(sample, options.batch, work / "breakdown")
    total = sum(v for k, v in costs.items() if k != NOSYNC)
    print(f"cost per event (single thread, batches of {options.batch:,}):")
    for step, micros in costs.items():
        share = "" if step == NOSYNC else f"{micros / total:6.1%}"
        print(f"  {step:<42} {micros:8.2f} µs  {share}")
    print(
        f"  {'sum (≈ HTTP path minus HTTP itself)':<42} {total:8.2f} µs  "
        f"→ {1e6 / total:,.0f} events/s"
    )
    floor = floors(sample, options.batch, work / "breakdown")
    for step, micros in floor.items():
        print(f"  {step:<42} {micros:8.2f} µs")
    print(
        f"  {'the two floors together':<42} {sum(floor.values()):8.2f} µs  "
        f"(the target leaves {1e6 / TARGET.value:.0f} µs)"
    )
    figures.extend(
        Figure("ingest cost", step, micros, "µs/event")
        for step, micros in (*costs.items(), *floor.items())
    )
    return figures
