"""One sequencer per data directory: a second server on the same --data is refused at start,
with the first one's pid, and the first goes on; the lock goes with its holder."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from auditmesh.datadir import DataDirBusy, writer_lock
from auditmesh.events import encode_ndjson
from auditmesh.serverproc import ServerProcess, free_port
from tests.conftest import generate


def test_the_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with writer_lock(tmp_path):
        assert (tmp_path / "server.lock").read_text() == f"{os.getpid()}\n"
        with pytest.raises(
            DataDirBusy, match=rf"in use by another auditmesh server \(pid {os.getpid()}\)"
        ):
            with writer_lock(tmp_path):
                pass
    with writer_lock(tmp_path):  # free again once its holder let go
        pass


@pytest.mark.integration
def test_a_second_server_on_the_same_data_is_refused(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as first:
        second = subprocess.run(
            [
                *(sys.executable, "-m", "auditmesh", "server", "--data", str(tmp_path / "data")),
                *("--listen", f"127.0.0.1:{free_port()}", "--mesh-listen", "off"),
                *("--otlp-grpc", "off"),
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        assert second.returncode == 2
        assert (
            f"is in use by another auditmesh server (pid {first.proc.pid if first.proc else 0})"
            in second.stderr
        )
        answer = httpx.post(first.url + "/v1/events", content=encode_ndjson(generate(3)))
        assert answer.status_code == 200 and answer.json()["indices"] == [0, 1, 2]
