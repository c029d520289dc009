"""Crash test: SIGKILL while clients append; every acknowledged event survives exactly once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from auditmesh.cli.main import main
from auditmesh.datadir import open_ledger
from auditmesh.events import AuditEvent, canonical_bytes, encode_ndjson
from auditmesh.serverproc import ServerProcess
from auditmesh.simulate import TrafficGenerator
from auditmesh.store.base import event_key

pytestmark = pytest.mark.integration

CLIENTS = 3
BATCH = 50


def client_loop(
    url: str, seed: int, acknowledged: list[tuple[list[AuditEvent], list[int]]]
) -> None:
    generator = TrafficGenerator(seed=seed, start_ns=time.time_ns())
    with httpx.Client(base_url=url, timeout=5) as client:
        while True:
            batch = list(generator.events(BATCH))
            try:
                response = client.post("/v1/events", content=encode_ndjson(batch))
            except httpx.TransportError:
                return  # the server died; this batch was never acknowledged
            if response.status_code != 200:
                return
            acknowledged.append((batch, response.json()["indices"]))


def test_sigkill_loses_no_acknowledged_event(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data).start()
    acknowledged: list[list[tuple[list[AuditEvent], list[int]]]] = [[] for _ in range(CLIENTS)]
    threads = [
        threading.Thread(target=client_loop, args=(server.url, seed, acknowledged[seed]))
        for seed in range(CLIENTS)
    ]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 20
    while sum(len(a) for a in acknowledged) < 40 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.kill()  # SIGKILL, mid-stream
    for thread in threads:
        thread.join(10)
    acked = [pair for per_client in acknowledged for pair in per_client]
    assert len(acked) >= 40

    restarted = ServerProcess(data).start()
    try:
        resent = httpx.post(restarted.url + "/v1/events", content=encode_ndjson(acked[0][0]))
        assert resent.json()["indices"] == acked[0][1]  # resending is a no-op
        sample = acked[-1][0][-1]
        token = (data / "keys" / "api.token").read_text().strip()  # reads need the API token
        found = httpx.get(
            f"{restarted.url}/v1/events/{sample.id}",
            headers={"authorization": f"Bearer {token}"},
        )
        assert found.status_code == 200 and found.json()["index"] == acked[-1][1][-1]
    finally:
        assert restarted.stop() == 0

    ledger = open_ledger(data, create=False)
    try:
        for batch, indices in acked:
            for event, index in zip(batch, indices, strict=True):
                stored = ledger.store.event_by_id(event_key(event.id))
                assert stored is not None, f"acknowledged event {event.id} was lost"
                assert stored.index == index and stored.data == canonical_bytes(event)
        everything = [index for _, indices in acked for index in indices]
        assert len(set(everything)) == len(everything)
        assert ledger.log.size >= len(everything)
    finally:
        ledger.close()
    assert main(["log", "verify", "--data", str(data), "--quiet"]) == 0, capsys.readouterr()
