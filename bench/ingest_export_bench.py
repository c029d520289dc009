"""Ingest and export (issue 5): OTLP/HTTP log ingest, Envoy access-log file ingest, ECS export.

Three end-to-end runs, each against a peer measured in the same run, then the cost of each
step per record, measured one step at a time in this process (where the time goes):

  * OTLP/HTTP logs → ledger: Envoy access-log records as Istio's `envoyOtelAls` provider
    sends them (body = Istio's default TEXT line, the provider's labels as attributes), in
    `ExportLogsServiceRequest`s of `--otlp-batch` records (the OTel SDK's default export
    batch, 512), POSTed as protobuf by several httpx clients at once to a real
    `auditmesh server` (`ServerProcess`). The server's threads are pinned to one CPU and the
    clients to the others, so "records/s" is the rate of one server core (the issue's
    target: ≥ 50,000 records/s on one core). The ledger is counted afterwards.
    A second run sends audit events relayed as log records (what `auditmesh export otlp`
    sends: the event's canonical JSON in one attribute), which skips the Envoy line parse.
    Peer: the same request bodies appended to a file, fsync per request.
  * `auditmesh ingest envoy FILE` (the real CLI in a child process) on a generated file of
    realistic Istio TEXT lines (tests/ingest/data's samples with fresh times, request ids,
    paths, sizes and ports), into the same kind of pinned server. Peer: the file's bytes
    appended in the CLI's batches (500 lines), fsync per batch.
  * `auditmesh export ecs --data DIR -o FILE` (the real CLI) over a ledger filled with the
    simulated shop mesh. Peer: the same entries read from the store in the same batches and
    written as they are (canonical JSON), fsync per batch — a dump with no mapping.

`main(argv)` runs it alone (`python -m bench.ingest_export_bench [--quick]`);
`ingest_export_section(quick)` is the entry point for `bench.run`.
"""

from __future__ import annotations

import argparse
import cProfile
import io
import os
import pstats
import random
import re
import resource
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import uuid
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import httpx
import msgspec
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource

from auditmesh.collector import Collector, entry_of
from auditmesh.datadir import open_ledger
from auditmesh.events import decode_event, encode_ndjson
from auditmesh.export.ecs import ecs_document
from auditmesh.ingest import envoy, otlp
from auditmesh.ledger.merkle import leaf_hash
from auditmesh.serverproc import ServerProcess
from bench.common import (
    Figure,
    Target,
    fmt,
    generate_events,
    machine_line,
    percentile,
    process_cpu_s,
    progress,
    replicas,
)
from bench.ingest_bench import file_peer

SECTION = "ingest/export"
OTLP_TARGET = Target("≥ 50,000 records/s on one core", 50_000, higher_is_better=True)
SAMPLES = Path(__file__).resolve().parents[1] / "tests" / "ingest" / "data" / "istio-text.log"
SERVER_FLAGS = ["--otlp-grpc", "off", "--mesh-listen", "off"]
# The labels of Istio's OpenTelemetry sample (samples/open-telemetry/loki/iop.yaml).
LABELS = {"namespace": "bookinfo", "cluster": "Kubernetes", "mesh": "cluster.local"}
PODS = ("productpage-v1-6b746f74dc-9w6fx", "reviews-v1-5c7d8b9f6-k2x4p", "ratings-v1-8f9c-2kq")
T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Options:
    otlp_records: int = 100_000
    otlp_batch: int = 512
    clients: int = 4
    envoy_lines: int = 100_000
    cli_batch: int = 500
    export_events: int = 100_000
    breakdown_records: int = 20_000
    profile: bool = False


QUICK = Options(
    otlp_records=20_000, envoy_lines=20_000, export_events=20_000, breakdown_records=5_000
)


# -- inputs ------------------------------------------------------------------------------------

_TIME = re.compile(r"^\[[^\]]+\]")
_REQUEST_ID = re.compile(r'"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}"')
_PATH_NUMBER = re.compile(r'^(\[[^\]]+\] "[A-Z]+ /[a-z]+/)\d+')
# bytes received, bytes sent, duration, upstream service time (or -)
_NUMBERS = re.compile(r'(" )(\d+) (\d+) (\d+) (\d+|-)( ")')
_PORT = re.compile(r"(\d+\.\d+\.\d+\.\d+):(\d{5})")


def envoy_lines(
    count: int, *, seed: int = 5, start_ns: int = 1_772_440_000_000_000_000
) -> list[str]:
    """`count` distinct Istio TEXT access-log lines made from the sample lines: each gets a
    later start time, a fresh request id, another path number, sizes, durations and client
    ports. Every line is checked by the adapter's parser."""
    samples = [s for s in SAMPLES.read_text().splitlines() if s.strip()]
    rng = random.Random(seed)
    lines: list[str] = []
    now_ms = start_ns // 1_000_000
    while len(lines) < count:
        base = samples[len(lines) % len(samples)]
        now_ms += rng.randint(0, 3)
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(now_ms // 1000))
        line = _TIME.sub(f"[{stamp}.{now_ms % 1000:03d}Z]", base)
        line = _REQUEST_ID.sub(f'"{uuid.UUID(int=rng.getrandbits(128), version=4)}"', line, 1)
        line = _PATH_NUMBER.sub(lambda m: m.group(1) + str(rng.randint(0, 999)), line)

        def numbers(m: re.Match[str]) -> str:
            duration = rng.randint(1, 250)
            upstream = "-" if m.group(5) == "-" else str(max(0, duration - rng.randint(0, 3)))
            sizes = f"{rng.randint(0, 2048) if m.group(2) != '0' else 0} {rng.randint(0, 65536)}"
            return f"{m.group(1)}{sizes} {duration} {upstream}{m.group(6)}"

        line = _NUMBERS.sub(numbers, line, 1)
        line = _PORT.sub(lambda m: f"{m.group(1)}:{rng.randint(32768, 60999)}", line)
        lines.append(line)
    for line in lines:
        envoy.parse_text_line(line)  # raises on a line the generator broke
    return lines


def _kv(key: str, value: str) -> KeyValue:
    return KeyValue(key=key, value=AnyValue(string_value=value))


def otlp_bodies(lines: Sequence[str], batch: int) -> list[bytes]:
    """ExportLogsServiceRequests of `batch` records each, as Envoy's OpenTelemetry access
    logger writes them (one resource per request), serialized as protobuf."""
    bodies: list[bytes] = []
    for start in range(0, len(lines), batch):
        records = []
        for i, line in enumerate(lines[start : start + batch], start=start):
            attributes = [_kv(k, v) for k, v in LABELS.items()]
            attributes.append(_kv("pod", PODS[i % len(PODS)]))
            records.append(
                LogRecord(
                    time_unix_nano=envoy.parse_text_line(line).start_ns,
                    body=AnyValue(string_value=line + "\n"),
                    attributes=attributes,
                )
            )
        resource_ = Resource(attributes=[_kv("service.name", "istio-proxy")])
        request = ExportLogsServiceRequest(
            resource_logs=[
                ResourceLogs(resource=resource_, scope_logs=[ScopeLogs(log_records=records)])
            ]
        )
        bodies.append(request.SerializeToString())
    return bodies


def relayed_bodies(count: int, batch: int) -> list[bytes]:
    """Requests of audit events as `auditmesh export otlp` sends them (case (c) of
    ingest.otlp: the event's canonical JSON in the `auditmesh.event` attribute)."""
    base = generate_events(min(count, 20_000))
    records = [otlp.audit_log_record(e) for e in replicas(base, count)]
    resource_ = Resource(attributes=[_kv("service.name", "auditmesh-edge")])
    return [
        ExportLogsServiceRequest(
            resource_logs=[
                ResourceLogs(
                    resource=resource_, scope_logs=[ScopeLogs(log_records=records[i : i + batch])]
                )
            ]
        ).SerializeToString()
        for i in range(0, count, batch)
    ]


def _chunks(items: Sequence[T], size: int) -> list[list[T]]:
    return [list(items[i : i + size]) for i in range(0, len(items), size)]


# -- CPU placement -----------------------------------------------------------------------------


def cpu_split() -> tuple[set[int], set[int]] | None:
    """(one CPU for the server, the others for the load), or None when there is one CPU."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None
    if len(cpus) < 2:
        return None
    return {cpus[-1]}, set(cpus[:-1])


def pin(pid: int, cpus: set[int]) -> bool:
    """Every thread of `pid` onto `cpus` (threads it starts later inherit it)."""
    try:
        tasks = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        for tid in tasks:
            os.sched_setaffinity(tid, cpus)
    except (AttributeError, OSError):
        return False
    return True


def ledger_size(data_dir: Path) -> int:
    ledger = open_ledger(data_dir, create=False)
    try:
        return ledger.log.size
    finally:
        ledger.close()


# -- OTLP/HTTP ---------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class OtlpRun:
    seconds: float
    server_cpu_seconds: float | None
    latencies_ms: list[float]
    stored: int
    pinned: bool


def otlp_run(bodies: Sequence[bytes], data_dir: Path, clients: int) -> OtlpRun:
    """POST every body to /v1/logs of a real server, `clients` connections at once."""
    latencies: list[float] = []
    lock = threading.Lock()
    split = cpu_split()
    with ServerProcess(data_dir, extra=SERVER_FLAGS) as server:
        assert server.proc is not None
        pid = server.proc.pid
        pinned = split is not None and pin(pid, split[0])
        own = os.sched_getaffinity(0) if split is not None else None

        def post_all(share: Sequence[bytes]) -> None:
            headers = {"content-type": "application/x-protobuf"}
            mine: list[float] = []
            with httpx.Client(base_url=server.url, timeout=120.0) as client:
                client.get("/log/checkpoint")  # connect before the clock runs
                for body in share:
                    sent = time.perf_counter()
                    response = client.post("/v1/logs", content=body, headers=headers)
                    mine.append((time.perf_counter() - sent) * 1000)
                    if response.status_code != 200:
                        raise RuntimeError(f"POST /v1/logs: {response.status_code} {response.text}")
                    answer = ExportLogsServiceResponse.FromString(response.content)
                    if answer.partial_success.rejected_log_records:
                        raise RuntimeError(f"records rejected: {answer.partial_success}")
            with lock:
                latencies.extend(mine)

        shares = [list(bodies[i::clients]) for i in range(clients)]
        if split is not None:
            os.sched_setaffinity(0, split[1])  # the client threads inherit it
        try:
            cpu = process_cpu_s(pid)
            start = time.perf_counter()
            with ThreadPoolExecutor(clients) as pool:
                list(pool.map(post_all, shares))
            seconds = time.perf_counter() - start
            cpu_after = process_cpu_s(pid)
        finally:
            if own is not None:
                os.sched_setaffinity(0, own)
    server_cpu = None if cpu is None or cpu_after is None else cpu_after - cpu
    return OtlpRun(seconds, server_cpu, sorted(latencies), ledger_size(data_dir), pinned)


# -- auditmesh ingest envoy --------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class CliRun:
    seconds: float
    cli_cpu_seconds: float
    server_cpu_seconds: float | None
    stored: int
    output: str


def envoy_cli_run(log: Path, data_dir: Path, batch: int) -> CliRun:
    """`auditmesh ingest envoy FILE` in a child process against a real, pinned server."""
    split = cpu_split()
    with ServerProcess(data_dir, extra=SERVER_FLAGS) as server:
        assert server.proc is not None
        pid = server.proc.pid
        if split is not None:
            pin(pid, split[0])
        command = [sys.executable, "-m", "auditmesh", "ingest", "envoy", str(log)]
        command += ["--server", server.url, "--batch", str(batch), "--quiet"]
        command += ["--rejects", str(log.with_suffix(".rejects"))]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)  # the server is not reaped yet
        cpu = process_cpu_s(pid)
        start = time.perf_counter()
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        if split is not None:
            pin(proc.pid, split[1])
        output, _ = proc.communicate()
        seconds = time.perf_counter() - start
        cpu_after = process_cpu_s(pid)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if proc.returncode != 0:
            raise RuntimeError(f"auditmesh ingest envoy exited {proc.returncode}: {output!r}")
    cli_cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    server_cpu = None if cpu is None or cpu_after is None else cpu_after - cpu
    return CliRun(seconds, cli_cpu, server_cpu, ledger_size(data_dir), output.decode().strip())


# -- ECS export --------------------------------------------------------------------------------


def fill_ledger(data_dir: Path, count: int) -> int:
    """A ledger of `count` simulated shop-mesh events, a checkpoint every 10,000."""
    base = generate_events(min(count, 20_000))
    ledger = open_ledger(data_dir, origin="bench.auditmesh.local/export")
    try:
        batch = []
        for event in replicas(base, count):
            batch.append(entry_of(event))
            if len(batch) == 10_000:
                ledger.log.append(batch)
                ledger.log.checkpoint()
                batch = []
        if batch:
            ledger.log.append(batch)
            ledger.log.checkpoint()
        return ledger.log.size
    finally:
        ledger.close()


def export_cli_run(data_dir: Path, out: Path) -> tuple[float, float, int]:
    """(seconds, CPU seconds, lines written) of `auditmesh export ecs --data DIR -o FILE`."""
    command = [sys.executable, "-m", "auditmesh", "export", "ecs", "--data", str(data_dir)]
    command += ["-o", str(out)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(command, capture_output=True, check=False)
    seconds = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        raise RuntimeError(f"auditmesh export ecs exited {done.returncode}: {done.stderr!r}")
    with open(out, "rb") as f:
        lines = sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 20), b""))
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return seconds, cpu, lines


def dump_peer(data_dir: Path, out: Path, batch: int = 1000) -> float:
    """Seconds to read every entry in batches and write its bytes as they are, fsync per batch
    (what `export ecs` does minus decoding and mapping)."""
    ledger = open_ledger(data_dir, create=False)
    fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        start = time.perf_counter()
        size = ledger.store.size()
        for first in range(0, size, batch):
            rows = ledger.store.entries(first, min(size, first + batch))
            os.write(fd, b"".join(data + b"\n" for _, data in rows))
            os.fsync(fd)
        return time.perf_counter() - start
    finally:
        os.close(fd)
        ledger.close()


# -- where the time goes -----------------------------------------------------------------------


def _timed(steps: dict[str, float], name: str, fn: Callable[[], T]) -> T:
    start = time.perf_counter()
    result = fn()
    steps[name] = steps.get(name, 0.0) + time.perf_counter() - start
    return result


OTLP_STEPS = (
    "protobuf decode (ExportLogsServiceRequest)",
    "map: TEXT parse, AuditEvent, its entry",
    "collector: hash, tiles, SQLite commit",
    "response encode",
)


def otlp_breakdown(bodies: Sequence[bytes], work: Path) -> dict[str, float]:
    """µs per record of each step the server takes for a /v1/logs request, one at a time
    (HTTP parsing, the event loop and the thread hand-offs are what the end-to-end run adds)."""
    spent = dict.fromkeys(OTLP_STEPS, 0.0)
    ledger = open_ledger(work, origin="bench.auditmesh.local/breakdown")
    collector = Collector(ledger.log, checkpoint_interval_ns=10**12)
    collector.start()
    records = 0
    clock = time.perf_counter
    try:
        for body in bodies:
            t0 = clock()
            request = otlp.decode_request("logs", body, "protobuf")
            t1 = clock()
            mapped = otlp.map_request(request)  # the entries too, as the receiver has them
            t2 = clock()
            collector.submit_entries(mapped.entries).result()
            t3 = clock()
            otlp.encode_response("logs", mapped, "protobuf")
            t4 = clock()
            for step, seconds in zip(OTLP_STEPS, (t1 - t0, t2 - t1, t3 - t2, t4 - t3), strict=True):
                spent[step] += seconds
            records += len(mapped.events)
    finally:
        collector.stop()
        ledger.close()
    return {step: seconds / records * 1e6 for step, seconds in spent.items()}


def envoy_breakdown(lines: Sequence[str]) -> dict[str, float]:
    steps: dict[str, float] = {}
    parsed = _timed(
        steps, "parse Istio TEXT line", lambda: [envoy.parse_text_line(x) for x in lines]
    )
    events = _timed(
        steps,
        "AuditEvent (to_event)",
        lambda: [envoy.to_event(r, "ingest:envoy:access.log") for r in parsed],
    )
    _timed(steps, "NDJSON encode for the POST", lambda: encode_ndjson(events))
    return {k: v / len(lines) * 1e6 for k, v in steps.items()}


def ecs_breakdown(data_dir: Path, count: int) -> dict[str, float]:
    ledger = open_ledger(data_dir, create=False)
    try:
        steps: dict[str, float] = {}
        rows = _timed(steps, "read entries (SQLite)", lambda: list(ledger.store.entries(0, count)))
        events = _timed(steps, "decode canonical JSON", lambda: [decode_event(d) for _, d in rows])
        hashes = _timed(steps, "leaf hash (event.hash)", lambda: [leaf_hash(d) for _, d in rows])
        docs = _timed(
            steps,
            "map to ECS + nest",
            lambda: [
                ecs_document(e, index=i, leaf=h)
                for (i, _), e, h in zip(rows, events, hashes, strict=True)
            ],
        )
        encoder = msgspec.json.Encoder()
        _timed(steps, "JSON encode", lambda: [encoder.encode(d) for d in docs])
        return {k: v / len(rows) * 1e6 for k, v in steps.items()}
    finally:
        ledger.close()


def print_steps(title: str, steps: dict[str, float]) -> None:
    total = sum(steps.values())
    print(title)
    for step, micros in steps.items():
        print(f"  {step:<46} {micros:8.2f} µs  {micros / total:6.1%}")
    print(f"  {'sum':<46} {total:8.2f} µs  → {1e6 / total:,.0f} per second on one core")


def profile_top(fn: Callable[[], object], limit: int = 14) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    fn()
    profiler.disable()
    text = io.StringIO()
    pstats.Stats(profiler, stream=text).sort_stats("tottime").print_stats(limit)
    return text.getvalue()


# -- the section -------------------------------------------------------------------------------


def otlp_section(
    what: str, bodies: Sequence[bytes], n: int, options: Options, work: Path, placement: str
) -> Figure:
    """One OTLP/HTTP run (server, clients, ledger count) next to its peer, printed."""
    work.mkdir(parents=True, exist_ok=True)
    mib = sum(map(len, bodies)) / 2**20
    print(
        f"\n== OTLP/HTTP logs → ledger: {n:,} {what} in {len(bodies):,} requests of "
        f"{options.otlp_batch} ({mib:,.1f} MiB protobuf, {mib * 2**20 / n:,.0f} B/record), "
        f"{options.clients} clients; {placement} ==",
        flush=True,
    )
    peer = n / file_peer(bodies, work / "peer.bin")
    print(f"peer: append request bodies + fsync per request  {fmt(peer, 'records/s'):>20}")
    got = otlp_run(bodies, work / "server", options.clients)
    if got.stored != n:
        raise RuntimeError(f"the ledger holds {got.stored} events, expected {n}")
    rate = n / got.seconds
    cpu_text = (
        ""
        if got.server_cpu_seconds is None
        else f"; {n / got.server_cpu_seconds:,.0f} records per server CPU-second"
    )
    print(
        f"OTLP/HTTP /v1/logs, end to end:                  {fmt(rate, 'records/s'):>20}  "
        f"= {rate / peer:.3f} × peer{cpu_text}; request p50 "
        f"{percentile(got.latencies_ms, 50):,.0f} ms, p99 {percentile(got.latencies_ms, 99):,.0f}"
        f" ms; ledger counted: {got.stored:,}; target {OTLP_TARGET.text}: "
        f"{OTLP_TARGET.status(rate)}{'' if got.pinned else ' (server NOT pinned to one core)'}",
        flush=True,
    )
    return Figure(
        SECTION,
        f"OTLP/HTTP {what} → ledger",
        rate,
        "records/s",
        "append + fsync per request",
        peer,
        OTLP_TARGET,
    )


def run(options: Options, work: Path) -> list[Figure]:
    work.mkdir(parents=True, exist_ok=True)
    figures: list[Figure] = []
    split = cpu_split()
    placement = (
        f"server pinned to CPU {sorted(split[0])}, load on CPUs {sorted(split[1])}"
        if split
        else "one CPU: server and load share it"
    )

    # OTLP/HTTP ------------------------------------------------------------------------------
    n = options.otlp_records
    progress(f"generating {n:,} Istio access-log lines for OTLP")
    bodies = otlp_bodies(envoy_lines(n, seed=5), options.otlp_batch)
    figures.append(
        otlp_section("Envoy access-log records", bodies, n, options, work / "otlp-envoy", placement)
    )
    progress(f"generating {n:,} audit events to relay over OTLP")
    relayed = relayed_bodies(n, options.otlp_batch)
    figures.append(
        otlp_section("relayed audit events", relayed, n, options, work / "otlp-relay", placement)
    )

    # auditmesh ingest envoy -----------------------------------------------------------------
    n = options.envoy_lines
    progress(f"generating {n:,} Istio access-log lines for the file")
    file_lines = envoy_lines(n, seed=9)
    log = work / "access.log"
    log.write_text("\n".join(file_lines) + "\n")
    size_mib = log.stat().st_size / 2**20
    print(
        f"\n== auditmesh ingest envoy FILE: {n:,} Istio TEXT lines ({size_mib:,.1f} MiB), "
        f"batches of {options.cli_batch}; {placement} ==",
        flush=True,
    )
    chunks = [("\n".join(c) + "\n").encode() for c in _chunks(file_lines, options.cli_batch)]
    peer = n / file_peer(chunks, work / "envoy-peer.log")
    print(f"peer: append the file's lines + fsync per batch   {fmt(peer, 'lines/s'):>20}")
    cli = envoy_cli_run(log, work / "envoy-server", options.cli_batch)
    if cli.stored != n:
        raise RuntimeError(f"the ledger holds {cli.stored} events, expected {n}: {cli.output}")
    rate = n / cli.seconds
    server_text = (
        ""
        if cli.server_cpu_seconds is None
        else f", server {cli.server_cpu_seconds / n * 1e6:,.1f} µs"
    )
    print(
        f"auditmesh ingest envoy, end to end:              {fmt(rate, 'lines/s'):>20}  "
        f"= {rate / peer:.3f} × peer; CPU per line: CLI {cli.cli_cpu_seconds / n * 1e6:,.1f} µs"
        f"{server_text} (the CLI's start-up included); ledger counted: {cli.stored:,}",
        flush=True,
    )
    figures.append(
        Figure(
            SECTION,
            "ingest envoy FILE → ledger",
            rate,
            "lines/s",
            "append + fsync per batch",
            peer,
        )
    )

    # ECS export -----------------------------------------------------------------------------
    n = options.export_events
    progress(f"filling a ledger with {n:,} simulated events")
    data = work / "export-ledger"
    filled = fill_ledger(data, n)
    print(f"\n== auditmesh export ecs: {filled:,} events of the simulated shop mesh ==", flush=True)
    peer = filled / dump_peer(data, work / "dump.ndjson")
    print(f"peer: read entries + write them as they are      {fmt(peer, 'events/s'):>20}")
    seconds, cpu, written = export_cli_run(data, work / "export.ndjson")
    if written != filled:
        raise RuntimeError(f"export wrote {written} lines, expected {filled}")
    rate = filled / seconds
    out_mib = (work / "export.ndjson").stat().st_size / 2**20
    print(
        f"auditmesh export ecs, end to end:                {fmt(rate, 'events/s'):>20}  "
        f"= {rate / peer:.3f} × peer; {cpu / filled * 1e6:,.1f} µs CPU per event (start-up "
        f"included); {out_mib:,.1f} MiB NDJSON, {written:,} lines",
        flush=True,
    )
    figures.append(
        Figure(SECTION, "export ecs (ledger → NDJSON)", rate, "events/s", "plain dump", peer)
    )

    # where the time goes --------------------------------------------------------------------
    sample = options.breakdown_records
    progress(f"cost per record, step by step, on {sample:,} records")
    steps = otlp_breakdown(bodies[: max(1, sample // options.otlp_batch)], work / "breakdown-otlp")
    print_steps(
        f"\nOTLP/HTTP /v1/logs, µs per record (one thread, batches of {options.otlp_batch}):", steps
    )
    print_steps(
        "\ningest envoy, µs per line (the CLI's side):", envoy_breakdown(file_lines[:sample])
    )
    print_steps("\nexport ecs, µs per event:", ecs_breakdown(data, min(sample, filled)))
    figures.extend(Figure("otlp cost", step, micros, "µs/record") for step, micros in steps.items())
    if options.profile:
        few = bodies[: max(1, sample // options.otlp_batch)]
        print("\ncProfile of decode + map of the OTLP bodies (by own time):")
        print(
            profile_top(
                lambda: [otlp.map_request(otlp.decode_request("logs", b, "protobuf")) for b in few]
            )
        )
    return figures


def ingest_export_section(quick: bool) -> list[Figure]:
    """For `bench.run`: the whole section in a temporary directory (no figures on error)."""
    print("\n== Ingest and export (bench/ingest_export_bench.py) ==", flush=True)
    try:
        with tempfile.TemporaryDirectory(prefix="auditmesh-bench-ingest-export-") as tmp:
            return run(QUICK if quick else Options(), Path(tmp))
    except Exception:
        traceback.print_exc()
        print("ingest/export benchmark failed; no figures")
        return []


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="small sizes (about a minute)")
    parser.add_argument(
        "--otlp-records", type=int, help="records sent over OTLP/HTTP, per run (100,000)"
    )
    parser.add_argument("--otlp-batch", type=int, help="records per OTLP request (512)")
    parser.add_argument("--clients", type=int, help="concurrent OTLP/HTTP clients (4)")
    parser.add_argument("--envoy-lines", type=int, help="lines in the access-log file (100,000)")
    parser.add_argument("--export-events", type=int, help="events in the exported ledger (100,000)")
    parser.add_argument("--profile", action="store_true", help="cProfile the OTLP mapping too")
    parser.add_argument("--keep", type=Path, help="work here and keep the files")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Options()
    options = Options(
        otlp_records=args.otlp_records or base.otlp_records,
        otlp_batch=args.otlp_batch or base.otlp_batch,
        clients=args.clients or base.clients,
        envoy_lines=args.envoy_lines or base.envoy_lines,
        export_events=args.export_events or base.export_events,
        breakdown_records=base.breakdown_records,
        profile=args.profile,
    )
    command = " ".join([sys.executable, "-m", "bench.ingest_export_bench", *(argv or sys.argv[1:])])
    print(f"ingest/export benchmark — {time.strftime('%Y-%m-%d %H:%M:%S %Z')} — {machine_line()}")
    print(f"command: {command}")
    try:
        load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        load = "unknown"
    print(f"load average at start: {load}", flush=True)
    if args.keep:
        figures = run(options, args.keep)
    else:
        with tempfile.TemporaryDirectory(prefix="auditmesh-bench-ingest-export-") as tmp:
            figures = run(options, Path(tmp))
    print("\n== Summary ==")
    for f in figures:
        if f.peer_value is None:
            continue
        ratio = f.ratio()
        target = "" if f.target is None else f"  {f.target.text}: {f.target.status(f.value)}"
        print(
            f"{f.label:<42} {fmt(f.value, f.unit):>20}  peer ({f.peer_label}) "
            f"{fmt(f.peer_value, f.unit)}  ratio {ratio or 0:.3f}{target}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
