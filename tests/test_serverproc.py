"""`free_port`: ports a child binds a moment later, never ones the kernel may give away."""

from __future__ import annotations

import random
import socket

import pytest

from auditmesh import serverproc


def test_free_ports_are_distinct_bindable_and_below_the_ephemeral_range() -> None:
    low = serverproc._ephemeral_low()
    ports = [serverproc.free_port() for _ in range(50)]
    assert len(set(ports)) == 50
    assert all(1024 <= port < low for port in ports)
    for port in ports:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", port))


def test_a_port_in_use_is_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    with socket.socket() as busy:
        busy.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 0)
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        draws = iter([taken, taken])
        real = random.randrange
        monkeypatch.setattr(random, "randrange", lambda a, b: next(draws, None) or real(a, b))
        port = serverproc.free_port()
        assert port != taken


def test_no_room_below_the_range_falls_back_to_the_kernel(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(serverproc, "_ephemeral_low", lambda: 1024)
    port = serverproc.free_port()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))
