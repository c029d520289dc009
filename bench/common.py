"""Shared pieces of the benchmarks: figures, targets, progress lines, events, CPU clocks.

A `Figure` is one measured number with the peer it is compared with (measured in the same run)
and, when issue 2 sets one, its target; `bench.run` prints them all in one table at the end.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import msgspec

from auditmesh.events import AuditEvent, new_event_id
from auditmesh.simulate import TrafficGenerator

START_NS = 1_767_225_600_000_000_000  # 2026-01-01T00:00:00Z: fixed, so runs are comparable
_T0 = time.monotonic()


@dataclass(frozen=True, slots=True)
class Target:
    """A goal from issue 2: `value` is a floor when `higher_is_better`, else a ceiling."""

    text: str
    value: float
    higher_is_better: bool

    def status(self, measured: float) -> str:
        ok = measured >= self.value if self.higher_is_better else measured < self.value
        return "PASS" if ok else "MISS"


@dataclass(frozen=True, slots=True)
class Figure:
    section: str
    label: str
    value: float
    unit: str
    peer_label: str | None = None
    peer_value: float | None = None
    target: Target | None = None

    def ratio(self) -> float | None:
        """value / peer (both in the same unit, so > 1 means more of the unit than the peer)."""
        if self.peer_value is None or not self.peer_value:
            return None
        return self.value / self.peer_value


def progress(message: str) -> None:
    """One progress line, stamped with the seconds since the benchmark started."""
    print(f"  [{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def fmt(value: float, unit: str) -> str:
    if unit in ("µs", "ms"):
        return f"{value:,.1f} {unit}"
    return f"{value:,.0f} {unit}"


def percentile(sorted_values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile of an already sorted, non-empty sequence."""
    rank = max(0, min(len(sorted_values) - 1, round(p / 100 * len(sorted_values) + 0.5) - 1))
    return sorted_values[rank]


def generate_events(count: int, *, seed: int = 7) -> list[AuditEvent]:
    """`count` events of the simulated shop mesh, in memory (about 50 µs each to generate)."""
    generator = TrafficGenerator(seed=seed, start_ns=START_NS)
    events: list[AuditEvent] = []
    step = max(count // 4, 50_000)
    for done in range(0, count, step):
        events.extend(generator.events(min(step, count - done)))
        if count > step:
            progress(f"generated {done + min(step, count - done):,}/{count:,} events")
    return events


def replicas(base: Sequence[AuditEvent], count: int, *, seed: int = 11) -> Iterator[AuditEvent]:
    """`count` events made from `base`: copy k of an event gets a fresh UUIDv7 and its time
    shifted by k hours, so every event is valid and unique but costs ~10 µs instead of ~50 µs."""
    rng = random.Random(seed)
    made = 0
    copy = 0
    while made < count:
        shift = copy * 3_600_000_000_000
        for event in base:
            if made == count:
                return
            when = int(event.time_ns) + shift
            new_id = new_event_id(_constant(when), rng.randbytes)
            yield msgspec.structs.replace(event, id=new_id, time_ns=when)
            made += 1
        copy += 1


def _constant(value: int) -> Callable[[], int]:
    return lambda: value


def process_cpu_s(pid: int) -> float | None:
    """User + system CPU seconds of another process (Linux /proc), None where unavailable."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None
    ticks = int(fields[11]) + int(fields[12])  # utime, stime: fields 14 and 15 of stat(5)
    return ticks / os.sysconf("SC_CLK_TCK")


def machine_line() -> str:
    import platform

    return (
        f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_implementation()} "
        f"{platform.python_version()}, {sys.platform}"
    )
