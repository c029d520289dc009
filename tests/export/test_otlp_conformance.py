"""`auditmesh export otlp`'s sender against the letter of the OTLP specification
(opentelemetry-proto docs/specification.md): real sockets, real receivers."""

from __future__ import annotations

import socket

import pytest

from auditmesh.export.otlp import ExportError, OtlpSender
from tests.conftest import generate
from tests.export.test_otlp import request_for


def refused_endpoint() -> str:
    """An address nobody listens on: each connection attempt is refused at once."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def backoff(attempts: int) -> list[float]:
    sleeps: list[float] = []
    sender = OtlpSender(refused_endpoint(), attempts=attempts, sleep=sleeps.append)
    try:
        with pytest.raises(ExportError, match="cannot reach") as raised:
            sender.export(request_for(generate(1)))
    finally:
        sender.close()
    assert raised.value.retryable
    return sleeps


def test_the_backoff_between_connection_retries_has_a_random_jitter() -> None:
    # OTLP spec, "OTLP/HTTP Connection": "If the client cannot connect to the server, the
    # client SHOULD retry the connection using an exponential backoff strategy between
    # retries. The interval between retries must have a random jitter." Without it, every
    # exporter cut off by the same outage comes back at the same instants.
    runs = [backoff(attempts=6) for _ in range(3)]
    nominal = [0.5, 1.0, 2.0, 4.0, 8.0]
    for sleeps in runs:
        assert len(sleeps) == len(nominal)
        for slept, step in zip(sleeps, nominal, strict=True):
            assert 0.5 * step <= slept <= 1.5 * step, sleeps  # still exponential
    assert len({tuple(sleeps) for sleeps in runs}) == 3, runs  # and random
