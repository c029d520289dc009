"""Full-verify rate: `verify_log` over a real ledger, against hashing a plain NDJSON file.

The ledger is filled through `Log.append` (the sequencer's call: dedup lookup, tiles, SQLite with
its indexes, durable commit) in batches of 50,000, signing a checkpoint each second as the
collector does. To keep setup short, a base of simulated events is generated once and the rest
are copies with a fresh UUIDv7 and a shifted time (valid, distinct events of the same shapes and
sizes). The same canonical bytes go, one per line, to a flat file for the peer: read it back and
SHA-256 every line (as a leaf hash, 0x00 prefix), which is what verifying a plain file costs.
Between the two, `verify_log`'s own steps are timed alone: reading entries back from SQLite, and
reading + leaf hashing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

from auditmesh.collector import entry_of
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import AuditEvent
from auditmesh.ledger import merkle
from auditmesh.ledger.verify import verify_log
from auditmesh.store.base import StoreReader
from bench import ingest_bench
from bench.common import Figure, Target, fmt, progress, replicas

SECTION = "full verify"
TARGET = Target("≥ 500,000 events/s", 500_000, higher_is_better=True)
APPEND_BATCH = 50_000
AT_SCALE_EVENTS = 30_000  # appended through the collector once the ledger is built


@dataclass(frozen=True, slots=True)
class VerifyOptions:
    events: int = 1_000_000


def build(base: Sequence[AuditEvent], count: int, work: Path) -> tuple[Ledger, Path, float]:
    """A ledger of `count` events and the flat NDJSON file of their canonical bytes."""
    work.mkdir(parents=True, exist_ok=True)
    ledger = open_ledger(work / "ledger", origin="bench.auditmesh.local/verify")
    flat = work / "events.ndjson"
    started = last_checkpoint = time.perf_counter()
    appending = 0.0
    stream = replicas(base, count)
    with open(flat, "wb") as out:
        while chunk := list(islice(stream, APPEND_BATCH)):
            entries = [entry_of(e) for e in chunk]
            t = time.perf_counter()
            ledger.log.append(entries)
            appending += time.perf_counter() - t
            out.write(b"".join(e.data + b"\n" for e in entries))
            if time.perf_counter() - last_checkpoint >= 1.0:
                ledger.log.checkpoint()
                last_checkpoint = time.perf_counter()
            size = ledger.log.size
            if size % (APPEND_BATCH * 4) == 0 or size == count:
                progress(
                    f"ledger: {size:,}/{count:,} events appended "
                    f"({time.perf_counter() - started:.0f} s)"
                )
    ledger.log.checkpoint()
    return ledger, flat, count / appending


def _read_only(reader: StoreReader, size: int) -> float:
    start = time.perf_counter()
    for first in range(0, size, 65536):
        for _ in reader.entries(first, min(first + 65536, size)):
            pass
    return time.perf_counter() - start


def _read_and_hash(reader: StoreReader, size: int) -> float:
    leaf_hash = merkle.leaf_hash
    start = time.perf_counter()
    for first in range(0, size, 65536):
        for _, data in reader.entries(first, min(first + 65536, size)):
            leaf_hash(data)
    return time.perf_counter() - start


def file_peer(path: Path) -> tuple[int, float]:
    sha = hashlib.sha256
    count = 0
    start = time.perf_counter()
    with open(path, "rb") as f:
        for line in f:
            sha(b"\x00" + line[:-1]).digest()
            count += 1
    return count, time.perf_counter() - start


def cli_verify(data_dir: Path, jobs: int, n: int) -> float:
    """Seconds for `auditmesh log verify --data DIR --jobs N --quiet`, interpreter start-up
    included; it must report every entry verified."""
    command = [sys.executable, "-m", "auditmesh", "log", "verify", "--data", str(data_dir)]
    start = time.perf_counter()
    done = subprocess.run(
        [*command, "--quiet", "--jobs", str(jobs)], capture_output=True, text=True, check=False
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0 or f"OK: {n} entries" not in done.stdout:
        raise RuntimeError(f"log verify failed: {done.stdout}{done.stderr}")
    return seconds


def run(base: Sequence[AuditEvent], options: VerifyOptions, work: Path) -> list[Figure]:
    n = options.events
    print(f"\n== Full verify over {n:,} events ==", flush=True)
    ledger, flat, append_rate = build(base, n, work)
    db_bytes = sum(p.stat().st_size for p in (work / "ledger").glob("ledger.db*"))
    checkpoints = sum(1 for _ in ledger.store.checkpoints())
    print(
        f"ledger built: Log.append at {append_rate:,.0f} events/s in batches of "
        f"{APPEND_BATCH:,}; {db_bytes / n:,.0f} B/event on disk "
        f"(NDJSON {flat.stat().st_size / n:,.0f} B/event); {checkpoints} checkpoints",
        flush=True,
    )

    reader = StoreReader(ledger.store)
    jobs = os.cpu_count() or 1
    progress("verify_log, 1 process: recomputing every leaf, the tree, every checkpoint")
    start = time.perf_counter()
    report = verify_log(reader, ledger.log.verifier)
    seconds = time.perf_counter() - start
    assert report.size == n and report.checkpoints == checkpoints
    rates = {1: n / seconds}
    # The parallel figure is the command an auditor runs, start-up included: worker processes
    # spawned from the benchmark would re-import the benchmark's own modules.
    for workers in sorted({1, jobs}):
        progress(f"auditmesh log verify --jobs {workers}")
        rates[-workers] = n / cli_verify(work / "ledger", workers, n)
    rate = rates[-jobs]

    peer_count, peer_s = file_peer(flat)
    assert peer_count == n
    peer = n / peer_s
    read_rate = n / _read_only(reader, n)
    hash_rate = n / _read_and_hash(reader, n)
    ledger.close()
    at_scale = _ingest_at_scale(base, work / "ledger", n)
    print(
        f"auditmesh log verify --jobs {jobs}:      {fmt(rate, 'events/s'):>18}  "
        f"= {rate / peer:.3f} × peer\n"
        f"auditmesh log verify --jobs 1:      {fmt(rates[-1], 'events/s'):>18}\n"
        f"verify_log in this process:          {fmt(rates[1], 'events/s'):>18}\n"
        f"  of which SQLite read alone:        {fmt(read_rate, 'events/s'):>18}\n"
        f"  SQLite read + leaf sha256:         {fmt(hash_rate, 'events/s'):>18}\n"
        f"peer: read NDJSON file + sha256/line {fmt(peer, 'events/s'):>18}",
        flush=True,
    )
    return [
        Figure(
            SECTION,
            f"log verify --jobs {jobs}, {n:,} events",
            rate,
            "events/s",
            "NDJSON file + sha256",
            peer,
            TARGET,
        ),
        Figure(SECTION, "  log verify --jobs 1", rates[-1], "events/s"),
        Figure(SECTION, "  verify_log, in process", rates[1], "events/s"),
        Figure(SECTION, "  SQLite entries() read alone", read_rate, "events/s"),
        Figure(SECTION, "  SQLite read + leaf sha256", hash_rate, "events/s"),
        Figure(SECTION, "Log.append (batches of 50,000) while building", append_rate, "events/s"),
        Figure(
            ingest_bench.SECTION,
            f"collector onto the {n:,}-event ledger, 1 submitter",
            at_scale,
            "events/s",
            target=ingest_bench.TARGET,
        ),
    ]


def _ingest_at_scale(base: Sequence[AuditEvent], data_dir: Path, size: int) -> float:
    """Durable ingest as `ingest_bench` measures it (collector, batches of 1,000), but into a
    ledger that already holds `size` events: its indexes are deep and the random trace ids
    land on a different page each, which an empty ledger's figure does not show."""
    fresh = list(replicas(base, AT_SCALE_EVENTS, seed=97))  # other ids than the build's
    batches = [fresh[i : i + 1_000] for i in range(0, len(fresh), 1_000)]
    progress(f"collector onto the {size:,}-event ledger: {len(fresh):,} events")
    run = ingest_bench.collector_run(batches, data_dir, 1, origin="bench.auditmesh.local/verify")
    rate = len(fresh) / run.seconds
    print(
        f"collector onto the {size:,}-event ledger, batches of 1,000: {fmt(rate, 'events/s')}",
        flush=True,
    )
    return rate
