"""`auditmesh export otlp` against a collector that misbehaves: real sockets (see
`tests/export/collector.py`), real ledgers, the cursor checked after every run."""

from __future__ import annotations

from pathlib import Path

import grpc
import msgspec
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from auditmesh.cli.main import main
from auditmesh.datadir import Ledger
from auditmesh.events import AuditEvent, canonical_bytes
from auditmesh.export.cursor import load_cursor
from tests.conftest import fill, generate
from tests.export.collector import Answer, Fail, FakeCollector, Ok


def big_events(count: int, seed: int = 5) -> list[AuditEvent]:
    """Events near the 64 KiB entry limit, so that a few dozen fill a 4 MiB gRPC request."""
    labels = {f"k{n:02d}": "x" * 1000 for n in range(58)}
    events = [msgspec.structs.replace(e, labels=labels) for e in generate(count, seed=seed)]
    assert 55_000 < len(canonical_bytes(events[0])) < 0xFFFF
    return events


def accept_all(number: int, request: ExportLogsServiceRequest) -> Answer:
    return Ok()


@pytest.mark.integration
def test_a_batch_split_to_fit_that_fails_midway_resumes_after_the_delivered_half(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 100 records of ~62 KiB are over OTLP/gRPC's 4 MiB: the sender splits them in two. The
    # collector takes the first half and refuses the second. The first half is delivered:
    # the next run must start after it, not send it a second time.
    fill(ledger, big_events(100))
    cursor = tmp_path / "otlp.cursor"

    def argv(endpoint: str) -> list[str]:
        return [
            "export", "otlp", "--data", str(ledger.data_dir), "--endpoint", endpoint,
            "--protocol", "grpc", "--batch", "100", "--cursor", str(cursor),
        ]  # fmt: skip

    def second_fails(number: int, request: ExportLogsServiceRequest) -> Answer:
        if number == 0:
            return Ok()
        return Fail(400, grpc.StatusCode.INVALID_ARGUMENT, message="refused by a test")

    with FakeCollector(second_fails, protocol="grpc") as collector:
        assert main(argv(collector.endpoint)) == 2
        assert len(collector.requests) == 2 and collector.accepted == list(range(50))
        err = capsys.readouterr().err
        assert "50 sent, the cursor stays at 50" in err, err
        saved = load_cursor(cursor)
        assert saved is not None and saved.next_index == 50

        collector.answer = accept_all  # the collector is fixed; the user runs it again
        assert main(argv(collector.endpoint)) == 0
    assert collector.accepted == list(range(100))  # each record once, in order
    assert "exported 50 events" in capsys.readouterr().err
