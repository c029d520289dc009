"""Byte relay between two streams, for TCP mode and for HTTP after `101 Switching Protocols`.

Copies both directions until both are done, counting bytes each way and saying how the
connection ended (which side closed first, a reset, or the idle timeout), which becomes
the one audit event of the connection.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

CHUNK = 64 * 1024
LINGER_S = 2.0  # after a half-close TLS could not pass on: the reply's quiet time that ends it


@dataclass(frozen=True, slots=True)
class RelayResult:
    sent_bytes: int  # downstream → upstream
    received_bytes: int  # upstream → downstream
    end: str  # "downstream_closed", "upstream_closed", "reset", "idle_timeout"


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
) -> RelayResult:
    """Relay until both directions end; `tally`, when given, holds [sent, received] as the
    relay leaves, also when it is cancelled (a stopping sidecar still audits the bytes)."""
    sent, received = [already_sent], [already_received]
    activity = asyncio.Event()
    to_up = asyncio.ensure_future(_copy(down[0], up[1], sent, activity))
    to_down = asyncio.ensure_future(_copy(up[0], down[1], received, activity))
    first_done: str | None = None
    end = "downstream_closed"
    pending = {to_up, to_down}
    timeout, lingering = idle_timeout_s, False
    try:
        while pending:
            activity.clear()
            done, pending = await asyncio.wait(
                pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED
            )
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
        for task in (to_up, to_down):
            task.cancel()
        if tally is not None:
            tally[:] = [sent[0], received[0]]
        await asyncio.gather(to_up, to_down, return_exceptions=True)
    return RelayResult(sent[0], received[0], end)
