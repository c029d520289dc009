"""Byte relay between two streams, for TCP mode and for HTTP after `101 Switching Protocols`.

Copies both directions until both are done, counting bytes each way and saying how the
connection ended (which side closed first, a reset, the idle timeout, or a certificate it
was authenticated with that expired), which becomes the one audit event of the connection.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass

CHUNK = 64 * 1024
LINGER_S = 2.0  # after a half-close TLS could not pass on: the reply's quiet time that ends it
# how a relay cut at its `Expiry` ended: the other end's SVID (or its CA), or this sidecar's
PEER_CERTIFICATE_EXPIRED = "peer_certificate_expired"
LOCAL_CERTIFICATE_EXPIRED = "local_certificate_expired"


@dataclass(frozen=True, slots=True)
class Expiry:
    """RFC 5280 §6.1.3 (a)(2): an SVID the connection was authenticated with, or its CA, is
    valid until `until_ns` (Unix ns); past it the relay is cut and ends with `end`, `detail`
    saying whose certificate expired."""

    until_ns: int
    end: str
    detail: str


@dataclass(frozen=True, slots=True)
class RelayResult:
    sent_bytes: int  # downstream → upstream
    received_bytes: int  # upstream → downstream
    end: str  # "downstream_closed", "upstream_closed", "reset", "idle_timeout", `Expiry.end`
    detail: str = ""  # cut at an `Expiry`: its detail


async def _copy(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    counter: list[int],
    activity: asyncio.Event,
) -> bool:
    """Copy until EOF; True when the half-close was passed on, False when the other side
    cannot be told (TLS) and is left open for the reply still coming back."""
    while True:
        data = await reader.read(CHUNK)
        if not data:
            break
        counter[0] += len(data)
        activity.set()
        writer.write(data)
        await writer.drain()
    # Pass the half-close on. Python's TLS streams cannot send close_notify and go on
    # reading (RFC 8446 §6.1 allows it), so there the connection stays open: closing it
    # would cut off the reply a client that half-closed is still waiting for.
    try:
        if writer.can_write_eof():
            writer.write_eof()
            return True
    except (OSError, RuntimeError):
        writer.close()
        return True
    return False


async def relay(
    down: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    up: tuple[asyncio.StreamReader, asyncio.StreamWriter],
    *,
    idle_timeout_s: float,
    already_sent: int = 0,
    already_received: int = 0,
    tally: list[int] | None = None,
    expiry: Expiry | None = None,
    now_ns: Callable[[], int] = time.time_ns,
) -> RelayResult:
    """Relay until both directions end, or until `expiry` (on the clock of `now_ns`) when
    given; `tally`, when given, holds [sent, received] as the relay leaves, also when it is
    cancelled (a stopping sidecar still audits the bytes)."""
    sent, received = [already_sent], [already_received]
    activity = asyncio.Event()
    to_up = asyncio.ensure_future(_copy(down[0], up[1], sent, activity))
    to_down = asyncio.ensure_future(_copy(up[0], down[1], received, activity))
    first_done: str | None = None
    end, detail = "downstream_closed", ""
    pending: set[asyncio.Future[bool]] = {to_up, to_down}
    timeout, lingering = idle_timeout_s, False
    deadline = None if expiry is None else Deadline(expiry.until_ns, now_ns)
    expired = set() if deadline is None else {deadline.passed}
    try:
        while pending:
            activity.clear()
            done, pending = await asyncio.wait(
                pending | expired, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
            if expiry is not None and done & expired:
                end, detail = expiry.end, expiry.detail
                break
            pending -= expired
            if not done and not activity.is_set():
                end = first_done if lingering and first_done else "idle_timeout"
                break
            for task in done:
                if task.exception() is not None:
                    end = "reset"
                    pending.clear()
                    break
                if first_done is None:
                    first_done = "downstream_closed" if task is to_up else "upstream_closed"
                    end = first_done
                    if task.result() is False:
                        # the other side was not told: the reply ends once it goes quiet
                        timeout, lingering = min(idle_timeout_s, LINGER_S), True
    finally:
        if deadline is not None:
            deadline.cancel()
        for task in (to_up, to_down):
            task.cancel()
        if tally is not None:
            tally[:] = [sent[0], received[0]]
        await asyncio.gather(to_up, to_down, return_exceptions=True)
    return RelayResult(sent[0], received[0], end, detail)


class Deadline:
    """A future done once `now_ns()` is past `until_ns`: one `loop.call_at` on the loop's
    monotonic clock, set again should it fire before the wall clock says so (the two drift,
    and the wall clock can be set back). `on_passed`, if given, is called then too (never
    after `cancel`). `cancel` when the relay (or the HTTP exchange) ends."""

    def __init__(
        self,
        until_ns: int,
        now_ns: Callable[[], int],
        on_passed: Callable[[], object] | None = None,
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._until_ns, self._now_ns = until_ns, now_ns
        self._on_passed = on_passed
        self.passed: asyncio.Future[bool] = self._loop.create_future()
        self._timer: asyncio.TimerHandle | None = None
        self._check()

    def _check(self) -> None:
        left_ns = self._until_ns - self._now_ns()
        if left_ns < 0:
            self.passed.set_result(True)
            if self._on_passed is not None:
                self._on_passed()
        else:  # valid through `until_ns` itself: a millisecond past it
            at = self._loop.time() + left_ns / 1e9 + 0.001
            self._timer = self._loop.call_at(at, self._check)

    def cancel(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
