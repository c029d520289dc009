"""The sidecar's audit-event emitter: batches events to the server, spooling when it is away.

Place in the house: data plane, the "audit events (batched, spooled to disk when the server
is away)" edge of DESIGN.md's diagram. The sidecar's listeners call `emit(event)` for every
request and connection they audit; a background task POSTs NDJSON batches to the
collector's `/v1/events`, which answers only after the batch is durable. The transport is an
`httpx.AsyncClient` the sidecar builds (base URL, and an `ssl.SSLContext` carrying its SVID
for mTLS); `replace_client` swaps it when the SVID rotates.

Events flow through three places, oldest first, and leave them only in that order:

    spool (disk, `proxy/spool.py`)  →  held (encoded, in memory)  →  buffer (emitted)

While the spool is empty, batches go straight from memory to the server. A batch that
fails (unreachable, timeout, 5xx, 429, any other unexpected answer) is written to the spool,
and from then on every event passes through the spool until it is empty again, so each
sidecar's events reach the ledger in the order they were emitted. Retries back off
exponentially (capped, with jitter). Resending is safe: the server keeps each event id once.

A 400 or 409 (or 403/422 naming a line) refuses one event, not the pipeline (409: its id is
in the log with other content, which only a broken producer sends): the server names the
line, or the batch is halved until the event is alone; it goes to `DATA/rejected.ndjson`
with the server's reason and the rest carries on. A 413 halves the batch too.

Bounds (nothing here ever makes `emit` wait): the in-memory part holds at most
`max_buffer_events`. With the spool's `when_full`:

- `block` — nothing accepted is discarded: when the spool is full, events wait in memory;
  when memory is full too, `emit` refuses the *newest* event (counted as dropped, reason
  "buffer_full"). The request path is never blocked; back-pressure lands on the buffer.
- `drop-oldest` — the spool discards its oldest records to make room ("spool_full"); if
  memory is full (the disk cannot keep up), `emit` discards the oldest buffered event.

Drops are remembered (in the spool's state file for spool drops, in memory for buffer
drops) and, once the spool has room again, reported by one `system` event with the
label `system.action=spool_dropped` and the counts, from the sidecar's own identity.
When the notice is made, the buffer drops join the spool's; the spool forgets them only
once the notice is durable (spooled, or acknowledged by the server), so a crash before
that reports them again after the restart (a crash in the instant between spooling the
notice and forgetting the counts reports them twice, never not at all).

Damage to the spool (bytes cut out as torn or corrupt, segments set aside as
`*.seg.damaged`, found when it is opened or while it is read; a damaged state file set
aside; segments deleted from outside) is reported the same way: one `system` event
(`system.action=spool_damaged`, `spool.cut_bytes`, and `spool.set_aside`, `spool.missing`
and `spool.state_set_aside` naming the files), which the spool keeps pending in its state
file until the event is durable.

Every batch POST carries `x-auditmesh-spool-depth: N` (`SPOOL_DEPTH_HEADER`): the records
that will still be in the spool once this batch is acknowledged (0 while the spool is
empty). The server's mesh listener turns it into the `auditmesh_sidecar_spool_depth` gauge;
a sidecar that cannot reach the server cannot report, so the gauge shows the depth at its
last successful contact.

Durability: events are durable once they are in the spool or acknowledged by the server;
those still in memory when the process dies are lost (at most one flush interval's worth
while the server is up). `close()` delivers what it can within its timeout and writes the
rest to the spool. `emit` must be called from the event loop's thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random as random_module
import time
from collections import Counter, deque
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, ParamSpec, TypeVar

import httpx
import msgspec

from auditmesh.events import (
    MAX_LABEL,
    MAX_TEXT,
    AuditEvent,
    Error,
    canonical_bytes,
    new_event_id,
)
from auditmesh.proxy.spool import Spool, SpoolConfig, SpoolDamage, record_size

P = ParamSpec("P")
T = TypeVar("T")

BUFFER_FULL = "buffer_full"
CLOSED_SPOOL_FULL = "closed_spool_full"
REJECTED_FILE = "rejected.ndjson"
_NDJSON = {"content-type": "application/x-ndjson"}
SPOOL_DEPTH_HEADER = "x-auditmesh-spool-depth"


class EmitterClosed(RuntimeError):
    """`emit` after `close`: the sidecar must stop its listeners before closing the emitter."""


@dataclass(frozen=True, slots=True)
class EmitterConfig:
    max_batch_events: int = 500
    max_batch_bytes: int = 1024 * 1024
    flush_interval_s: float = 0.2  # a partial batch waits at most this long
    max_buffer_events: int = 10_000  # in memory (not yet sent nor spooled)
    backoff_initial_s: float = 0.1
    backoff_max_s: float = 30.0
    request_timeout_s: float = 10.0
    path: str = "/v1/events"

    def __post_init__(self) -> None:
        if self.max_batch_events < 1 or self.max_buffer_events < 1 or self.max_batch_bytes < 1:
            raise ValueError("batch and buffer limits must be positive")
        if not 0 < self.backoff_initial_s <= self.backoff_max_s:
            raise ValueError("need 0 < backoff_initial_s <= backoff_max_s")


@dataclass(frozen=True, slots=True)
class EmitterStats:
    emitted: int  # accepted by emit()
    sent: int  # acknowledged by the server (duplicates included)
    spooled: int  # written to the spool
    spool_depth_events: int
    spool_depth_bytes: int
    buffered: int  # in memory: neither acknowledged nor spooled
    dropped: int  # lost: buffer full, spool full (drop-oldest), spool full at close
    rejected: int  # refused by the server (or too large), in rejected.ndjson
    notices: int  # system events that reported drops
    retries: int  # delivery attempts that failed and will be retried
    last_error: str | None


def backoff_delay(attempt: int, config: EmitterConfig, rand: Callable[[], float]) -> float:
    """Seconds to wait before retry `attempt` (0-based): capped exponential, equal jitter.

    Half of the capped delay is fixed, half uniformly random, so sidecars that lost the
    server together do not come back in lockstep.
    """
    cap = min(config.backoff_max_s, config.backoff_initial_s * 2.0 ** min(attempt, 62))
    return cap / 2 + cap / 2 * rand()


@dataclass(frozen=True, slots=True)
class _Answer:
    kind: Literal["accepted", "refused", "too_large", "retry", "retry_now"]
    status: int = 0
    reason: str = ""
    line: int | None = None


# What the spool_damaged notice says of each kind of file it names (`{where}`: the files).
_SET_ASIDE = "damaged segments set aside (kept, not delivered): {where}"
_MISSING = (
    "spool segments were deleted by something other than the sidecar: {where}; the audit "
    "events they held are lost (how many is unknown)"
)
_STATE_SET_ASIDE = (
    "the spool's damaged state file was set aside (kept): {where}; delivery started again at "
    "the oldest spooled event, so events the server already has are sent again (it keeps "
    "each id once), and drops or damage that file held unreported are unknown"
)


class Emitter:
    """Delivers audit events to the server in order, exactly once in the ledger."""

    def __init__(
        self,
        client: httpx.AsyncClient,
        data_dir: Path,
        *,
        reporter: str,
        config: EmitterConfig | None = None,
        spool_config: SpoolConfig | None = None,
        spool: Spool | None = None,
        now_ns: Callable[[], int] = time.time_ns,
        clock: Callable[[], float] = time.monotonic,
        rand: Callable[[], float] = random_module.random,
        random_bytes: Callable[[int], bytes] = os.urandom,
    ) -> None:
        self._client = client
        self.reporter = reporter
        self.config = config or EmitterConfig()
        # `spool`: opened by the caller (the sidecar, before it spends its join token); else
        # opened here with `spool_config`. Either way this closes it. Opening recovers a crash.
        self._spool = spool or Spool(Path(data_dir) / "spool", spool_config)
        self._drop_oldest = self._spool.config.when_full == "drop-oldest"
        self.rejected_path = Path(data_dir) / REJECTED_FILE
        self._now_ns, self._clock, self._rand, self._random_bytes = (
            now_ns,
            clock,
            rand,
            random_bytes,
        )
        self._io_thread = ThreadPoolExecutor(1, thread_name_prefix="auditmesh-spool")
        self._buffer: deque[AuditEvent] = deque()
        self._first_at = 0.0  # clock() when the oldest buffered event arrived
        self._held: list[bytes] = []
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = self._closed = False
        self._draining = 0
        self._attempt = 0
        self._retry_at = 0.0
        self._unreported: Counter[str] = Counter()  # buffer drops not yet in a notice
        # The notice in memory (its id and canonical bytes) and the spool drops it reports:
        # the spool forgets them once it is durable (`_notice_durable`).
        self._reporting: tuple[str, bytes, dict[str, int]] | None = None
        # The same for the notice of spool damage (`_report_damage`).
        self._damage_notice: tuple[str, bytes, SpoolDamage] | None = None
        self._emitted = self._sent = self._spooled = self._dropped = 0
        self._rejected = self._notices = self._retries = 0
        self._last_error: str | None = None

    # --- the request path -----------------------------------------------------------

    def emit(self, event: AuditEvent) -> None:
        """Queue one event for delivery. Never waits and never does I/O."""
        if self._closed:
            raise EmitterClosed("the emitter is closed")
        self._emitted += 1
        if len(self._buffer) + len(self._held) >= self.config.max_buffer_events:
            self._dropped += 1
            self._unreported[BUFFER_FULL] += 1
            if not (self._drop_oldest and self._buffer):
                return  # block: keep what we have, refuse the newest
            lost = self._buffer.popleft()
            if self._reporting is not None and lost.id == self._reporting[0]:
                self._reporting = None  # the drops it reported are still in the spool
            if self._damage_notice is not None and lost.id == self._damage_notice[0]:
                self._damage_notice = None  # so is the damage: it is reported again
        self._buffer.append(event)
        if len(self._buffer) == 1:
            self._first_at = self._clock()
            self._wake.set()
        elif len(self._buffer) == self.config.max_batch_events:
            self._wake.set()

    # --- control --------------------------------------------------------------------

    def start(self) -> None:
        """Start the background task (call from inside the running event loop)."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="auditmesh-emitter"
            )
            self._report_damage()  # found when opening (or left unreported by a crash)

    @property
    def client(self) -> httpx.AsyncClient:
        """The client in use; the caller built it and closes it (the emitter never does)."""
        return self._client

    def replace_client(self, client: httpx.AsyncClient) -> httpx.AsyncClient:
        """Use `client` from the next request on (SVID rotation); returns the old one.

        A request in flight on the old client finishes there; if it fails because the old
        client was closed, it is retried at once on the new one. Nothing is lost or reordered.
        """
        old, self._client = self._client, client
        self._retry_at = 0.0  # a new identity deserves a try now
        self._wake.set()
        return old

    async def drain(self, timeout_s: float) -> bool:
        """Send partial batches now and wait until nothing is buffered, held or spooled."""
        self._draining += 1
        self._wake.set()
        try:
            deadline = self._clock() + timeout_s
            while not self._idle():
                if self._clock() >= deadline or (self._task is not None and self._task.done()):
                    return False
                await asyncio.sleep(0.01)
            return True
        finally:
            self._draining -= 1

    async def close(self, timeout_s: float = 5.0) -> None:
        """Deliver what can be delivered within `timeout_s`; spool the rest; stop."""
        if self._closed:
            return
        self._closing = True
        self._wake.set()
        failure: BaseException | None = None
        if self._task is not None:
            done, _ = await asyncio.wait({self._task}, timeout=timeout_s)
            if not done:
                self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                try:
                    await self._task
                except Exception as exc:  # re-raised once the spool is safe
                    failure = exc
        self._closed = True  # from here on emit() refuses; move everything to held
        while self._buffer:
            self._take_batch()
        try:
            await self._io(self._spool_held_at_close)
        finally:
            self._io_thread.shutdown(wait=True)
            self._spool.close()
        if failure is not None:
            raise failure

    async def __aenter__(self) -> Emitter:
        self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def stats(self) -> EmitterStats:
        return EmitterStats(
            emitted=self._emitted,
            sent=self._sent,
            spooled=self._spooled,
            spool_depth_events=self._spool.depth_records,
            spool_depth_bytes=self._spool.depth_bytes,
            buffered=len(self._buffer) + len(self._held),
            dropped=self._dropped + self._spool.stats().evicted,
            rejected=self._rejected,
            notices=self._notices,
            retries=self._retries,
            last_error=self._last_error,
        )

    # --- the background task --------------------------------------------------------

    def _idle(self) -> bool:
        return not self._buffer and not self._held and self._spool.depth_records == 0

    def _batch_due(self) -> float | None:
        """Seconds until the buffer should go out as a batch; None when it is empty."""
        if not self._buffer:
            return None
        if self._closing or self._draining or len(self._buffer) >= self.config.max_batch_events:
            return 0.0
        return max(0.0, self._first_at + self.config.flush_interval_s - self._clock())

    async def _wait(self, timeout: float | None) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._wake.wait(), timeout)

    async def _run(self) -> None:
        while True:
            self._wake.clear()  # before looking, so an emit() after this wakes the wait below
            try:
                if await self._step():
                    return
            except Exception as exc:  # disk trouble must not end delivery for good
                self._last_error = f"{type(exc).__name__}: {exc}"
                self._schedule_retry()
                if self._closing:
                    return
                await self._wait(max(0.0, self._retry_at - self._clock()))

    async def _step(self) -> bool:
        """One move of the pipeline; True when closing and everything is delivered."""
        self._report_damage()  # found while reading the spool
        await self._report_drops()
        due = self._batch_due()
        retry_in = 0.0 if self._closing else self._retry_at - self._clock()
        if self._spool.depth_records:
            if self._held or due == 0:
                if due == 0:
                    self._take_batch()
                try:
                    await self._io(self._spool_held)
                except OSError as exc:  # disk full: held waits in memory, and draining
                    self._last_error = f"{type(exc).__name__}: {exc}"  # the spool frees it

            if retry_in > 0:
                await self._wait(retry_in if not due else min(retry_in, due))
                return False
            records = await self._io(
                self._spool.peek, self.config.max_batch_events, self.config.max_batch_bytes
            )
            return await self._after(await self._deliver(records, self._ack))
        if not self._held:
            if due is None:
                if self._closing:
                    return True
                await self._wait(None)
                return False
            if due > 0:
                await self._wait(due)
                return False
            self._take_batch()
        elif retry_in > 0:  # held but unspoolable (disk trouble): retry sending it
            await self._wait(retry_in)
            return False
        count = self._batch_length(self._held)
        outcome = await self._deliver(self._held[:count], self._consume_held)
        if outcome == "retry":
            await self._io(self._spool_held)  # durable while we wait to retry
        return await self._after(outcome)

    async def _after(self, outcome: str) -> bool:
        if outcome == "ok":
            self._attempt = 0
            return False
        if outcome == "retry":
            self._schedule_retry()
            return self._closing  # closing: one failure is enough, the spool keeps the rest
        return False  # retry_now

    def _schedule_retry(self) -> None:
        self._retry_at = self._clock() + backoff_delay(self._attempt, self.config, self._rand)
        self._attempt += 1

    def _batch_length(self, records: list[bytes]) -> int:
        total = count = 0
        for record in records[: self.config.max_batch_events]:
            if count and total + len(record) > self.config.max_batch_bytes:
                break
            total += len(record)
            count += 1
        return count

    def _take_batch(self) -> None:
        """Encode one batch from the buffer onto the end of `held`."""
        total = count = 0
        while self._buffer and count < self.config.max_batch_events:
            record = canonical_bytes(self._buffer[0])
            if count and total + len(record) > self.config.max_batch_bytes:
                break
            self._buffer.popleft()
            self._held.append(record)
            total += len(record)
            count += 1

    # --- delivery -------------------------------------------------------------------

    async def _deliver(
        self, records: list[bytes], consume: Callable[[int], Awaitable[None]]
    ) -> Literal["ok", "retry", "retry_now"]:
        """POST `records` oldest first, consuming each leading run the server stores or
        refuses; stop at the first answer that calls for a retry."""
        start, limit = 0, len(records)
        while start < len(records):
            chunk = records[start : start + limit]
            depth = self._spool.depth_records  # the chunk is still in it when read from it
            if consume == self._ack:
                depth = max(0, depth - len(chunk))
            answer = await self._post(chunk, depth)
            if answer.kind == "accepted":
                self._sent += len(chunk)
                self._last_error = None
                await consume(len(chunk))
                start, limit = start + len(chunk), len(records)
            elif answer.kind in ("refused", "too_large"):
                if len(chunk) == 1 or answer.line == 1:
                    await self._io(self._write_rejected, chunk[0], answer.status, answer.reason)
                    await consume(1)
                    start, limit = start + 1, len(records)
                elif answer.line is not None and 1 < answer.line <= len(chunk):
                    limit = answer.line - 1  # everything before the bad line is fine
                else:
                    limit = len(chunk) // 2
            else:
                self._retries += 1
                self._last_error = answer.reason
                return "retry_now" if answer.kind == "retry_now" else "retry"
        return "ok"

    async def _post(self, records: list[bytes], spool_depth: int) -> _Answer:
        client = self._client
        try:
            response = await client.post(
                self.config.path,
                content=b"\n".join(records) + b"\n",
                headers={**_NDJSON, SPOOL_DEPTH_HEADER: str(spool_depth)},
                timeout=self.config.request_timeout_s,
            )
        except (httpx.HTTPError, RuntimeError) as exc:  # RuntimeError: a closed client
            kind: Literal["retry", "retry_now"] = "retry" if client is self._client else "retry_now"
            return _Answer(kind, reason=f"{type(exc).__name__}: {exc}".strip())
        status = response.status_code
        if status == 200:
            return _Answer("accepted", status)
        reason, line = _error_of(response)
        if status in (400, 409, 422) or (status == 403 and line is not None):
            return _Answer("refused", status, reason, line)
        if status == 413:
            return _Answer("too_large", status, reason)
        return _Answer("retry", status, f"{status}: {reason}")

    async def _ack(self, count: int) -> None:
        await self._io(self._spool.ack, count)

    async def _consume_held(self, count: int) -> None:
        reported = self._reported_in(self._held[:count])
        damage = self._damage_reported_in(self._held[:count])
        del self._held[:count]
        if reported is not None:  # acknowledged by the server (or in rejected.ndjson)
            await self._io(self._spool.clear_dropped, reported)
        if damage is not None:
            await self._io(self._spool.clear_damage, damage)

    def _reported_in(self, records: list[bytes]) -> dict[str, int] | None:
        """The counts the notice reports if it is among `records` (which are leaving
        memory for somewhere durable); None if it is not."""
        reporting = self._reporting
        if reporting is None or reporting[1] not in records:
            return None
        self._reporting = None
        return reporting[2]

    def _damage_reported_in(self, records: list[bytes]) -> SpoolDamage | None:
        """The same as `_reported_in`, for the notice of spool damage."""
        notice = self._damage_notice
        if notice is None or notice[1] not in records:
            return None
        self._damage_notice = None
        return notice[2]

    # --- drops ----------------------------------------------------------------------

    async def _report_drops(self) -> None:
        """Once there is room again, turn the drop counts into one `system` event."""
        spool = self._spool
        if self._reporting is not None or not (spool.dropped_pending or self._unreported):
            return  # one notice at a time
        if self._held or len(self._buffer) >= self.config.max_buffer_events:
            return
        if spool.depth_records and spool.free_bytes < spool.config.max_bytes // 4:
            return
        if self._unreported:  # into the spool's counts: one place, forgotten when durable
            moving = dict(self._unreported)
            self._unreported.clear()
            await self._io(self._note_dropped, moving)
        counts = spool.dropped_pending
        total = sum(counts.values())
        labels = {"system.action": "spool_dropped", "spool.dropped": str(total)}
        labels.update({f"spool.dropped.{k}": str(v) for k, v in sorted(counts.items())})
        detail = ", ".join(f"{v} {k}" for k, v in sorted(counts.items()))
        notice = self._system_event(
            "spool_dropped", f"{total} audit events dropped: {detail}", labels
        )
        self._reporting = (notice.id, canonical_bytes(notice), counts)
        self._buffer.append(notice)  # behind everything emitted before it
        if len(self._buffer) == 1:
            self._first_at = self._clock()
        self._notices += 1

    def _report_damage(self) -> None:
        """Turn the spool's unreported damage into one `system` event (one at a time).

        The spool keeps the damage in its state file until the event is durable (spooled,
        or acknowledged by the server), so a crash before that reports it after the restart.
        """
        damage = self._spool.damage_pending
        if damage is None or self._damage_notice is not None:
            return
        parts = []
        if damage.cut_bytes or damage.set_aside or not (damage.missing or damage.state_set_aside):
            parts.append(
                f"{damage.cut_bytes} bytes of the on-disk spool were torn or corrupt and were "
                "cut out or set aside (a crash mid-write, or damage): audit events in them are "
                "lost"
            )
        labels = {"system.action": "spool_damaged", "spool.cut_bytes": str(damage.cut_bytes)}
        for names, label, told in (
            (damage.set_aside, "spool.set_aside", _SET_ASIDE),
            (damage.missing, "spool.missing", _MISSING),
            (damage.state_set_aside, "spool.state_set_aside", _STATE_SET_ASIDE),
        ):
            if names:
                labels[label] = where = self._paths(names)
                parts.append(told.format(where=where))
        notice = self._system_event("spool_damaged", "; ".join(parts)[:MAX_TEXT], labels)
        self._damage_notice = (notice.id, canonical_bytes(notice), damage)
        self._buffer.append(notice)  # behind everything emitted before it
        if len(self._buffer) == 1:
            self._first_at = self._clock()
        self._wake.set()

    def _paths(self, names: tuple[str, ...]) -> str:
        """The spool files `names`, as full paths, as many as a label value holds."""
        shown = ""
        for number, name in enumerate(names):
            more = f" and {len(names) - number} more"
            path = str(self._spool.directory / name)
            if len(shown) + 2 + len(path) + len(more) > MAX_LABEL and number < len(names) - 1:
                return (shown + more).lstrip()
            shown += (", " if shown else "") + path
        return shown[:MAX_LABEL]

    def _system_event(self, error: str, message: str, labels: dict[str, str]) -> AuditEvent:
        """A `system` event from the sidecar itself about its own audit trail."""
        return AuditEvent(
            id=new_event_id(self._now_ns, self._random_bytes),
            time_ns=self._now_ns(),
            reporter=self.reporter,
            kind="system",
            outcome="failure",
            error=Error(type=error, message=message),
            labels=labels,
        )

    # --- the spool thread (every call below runs on `_io_thread`, one at a time) -----

    async def _io(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run `fn` on the spool thread; a cancelled caller does not cancel the write."""
        future = self._io_thread.submit(fn, *args, **kwargs)
        return await asyncio.shield(asyncio.wrap_future(future))

    def _spool_held(self) -> None:
        """Move `held` into the spool, oldest first, as far as the spool takes it."""
        limit = self._spool.config.max_bytes
        while self._held:
            if record_size(self._held[0]) > limit:
                self._write_rejected(self._held.pop(0), 0, f"larger than the spool ({limit} B)")
                continue
            run = next(
                (i for i, r in enumerate(self._held) if record_size(r) > limit), len(self._held)
            )
            taken = self._spool.append(self._held[:run])
            reported = self._reported_in(self._held[:taken])
            damage = self._damage_reported_in(self._held[:taken])
            del self._held[:taken]
            if reported is not None:
                self._spool.clear_dropped(reported)  # the notice is in the spool now
            if damage is not None:
                self._spool.clear_damage(damage)
            self._spooled += taken
            if taken < run:
                return  # block: the spool is full; the rest waits in memory

    def _spool_held_at_close(self) -> None:
        self._spool_held()
        if self._held:
            lost = len(self._held)
            self._held.clear()
            self._reporting = None  # the notice, if it was here: its counts stay pending
            self._damage_notice = None  # and so does the damage
            self._dropped += lost
            self._spool.note_dropped(CLOSED_SPOOL_FULL, lost)
        if self._unreported:
            for reason, count in self._unreported.items():
                self._spool.note_dropped(reason, count)  # reported after the next start
            self._unreported.clear()

    def _note_dropped(self, counts: dict[str, int]) -> None:
        for reason, count in counts.items():
            self._spool.note_dropped(reason, count)

    def _write_rejected(self, record: bytes, status: int, reason: str) -> None:
        try:
            msgspec.json.decode(record)
            event: object = msgspec.Raw(record)
        except msgspec.DecodeError:  # not JSON at all: keep it readable, never break the file
            event = record.decode(errors="replace")
        line = msgspec.json.encode(
            {"time_ns": str(self._now_ns()), "status": status, "reason": reason, "event": event}
        )
        with open(self.rejected_path, "ab") as f:
            f.write(line + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self._rejected += 1


def _error_of(response: httpx.Response) -> tuple[str, int | None]:
    """The server's `{"error", "line"}` answer, or the start of whatever it sent."""
    try:
        body = response.json()
    except ValueError:
        return response.text[:500].strip(), None
    if not isinstance(body, dict):
        return response.text[:500].strip(), None
    line = body.get("line")
    reason = str(body.get("error", response.text[:500])).strip()
    return reason, line if isinstance(line, int) and not isinstance(line, bool) else None
