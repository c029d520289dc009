"""What `auditmesh server` refuses at start, before its banner: a data directory another
server uses (one sequencer per log: refused with the first one's pid, and the first goes
on; the lock goes with its holder), and an address another process listens on."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from auditmesh.datadir import DataDirBusy, lock_holder, open_ledger, writer_lock
from auditmesh.events import encode_ndjson
from auditmesh.serverproc import ServerProcess, free_port
from tests.conftest import fill, generate


def test_the_lock_is_exclusive_and_released(tmp_path: Path) -> None:
    with writer_lock(tmp_path):
        assert (tmp_path / "server.lock").read_text() == f"{os.getpid()} auditmesh server\n"
        with pytest.raises(DataDirBusy, match=rf"in use by auditmesh server \(pid {os.getpid()}\)"):
            with writer_lock(tmp_path):
                pass
    with writer_lock(tmp_path, "auditmesh ca (appending its audit event)"):  # free again
        with pytest.raises(DataDirBusy, match=r"in use by auditmesh ca \(appending its audit"):
            with writer_lock(tmp_path):
                pass
    (tmp_path / "server.lock").write_text("4321\n")  # as a lock file of an older version
    assert lock_holder(tmp_path) == "an auditmesh server (pid 4321)"


def start_server(data: Path, port: int) -> subprocess.CompletedProcess[str]:
    """`auditmesh server` on `data` and 127.0.0.1:`port`, run to its end (a refusal)."""
    command = [sys.executable, "-m", "auditmesh", "server", "--data", str(data)]
    command += ["--listen", f"127.0.0.1:{port}", "--mesh-listen", "off", "--otlp-grpc", "off"]
    return subprocess.run(command, capture_output=True, text=True, timeout=30)


@pytest.mark.integration
def test_a_second_server_on_the_same_data_is_refused(tmp_path: Path) -> None:
    with ServerProcess(tmp_path / "data") as first:
        second = start_server(tmp_path / "data", free_port())
        assert second.returncode == 2
        assert (
            f"is in use by auditmesh server (pid {first.proc.pid if first.proc else 0})"
            in second.stderr
        )
        answer = httpx.post(first.url + "/v1/events", content=encode_ndjson(generate(3)))
        assert answer.status_code == 200 and answer.json()["indices"] == [0, 1, 2]


@pytest.mark.integration
def test_an_address_in_use_is_refused_before_the_banner(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        done = start_server(tmp_path / "data", port)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port} (--listen): Address already in use" in done.stderr
    assert "auditmesh server: http://" not in done.stdout


@pytest.mark.integration
def test_a_log_whose_signing_key_is_lost_is_not_signed_under_a_new_one(tmp_path: Path) -> None:
    # Auditors pin the log's verifier key: a new key would sign checkpoints that cannot be
    # connected to the ones before. Readers (log verify) need only the verifier key.
    data = tmp_path / "data"
    ledger = open_ledger(data, origin="test.auditmesh/log")
    fill(ledger, generate(10))
    ledger.close()
    vkey = (data / "keys" / "log.vkey").read_text()
    (data / "keys" / "log.skey").unlink()
    refused = start_server(data, free_port())
    assert refused.returncode == 2 and "restore the key from your backup" in refused.stderr
    verified = subprocess.run(
        [sys.executable, "-m", "auditmesh", "log", "verify", "--data", str(data)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert verified.returncode == 0 and "OK: 10 entries" in verified.stdout, verified.stderr
    assert not (data / "keys" / "log.skey").exists()
    assert (data / "keys" / "log.vkey").read_text() == vkey


@pytest.mark.integration
def test_a_mesh_listener_without_a_mesh_ca_is_reported_not_silently_skipped(
    tmp_path: Path,
) -> None:
    """Regression: with no CA in the data directory the sidecar listener was skipped without
    a word, and sidecars failed later with "cannot reach the server"."""
    extra = ["--mesh-listen", f"127.0.0.1:{free_port()}", "--otlp-grpc", "off"]
    with ServerProcess(tmp_path / "data", extra=extra) as server:
        pass
    log = server.log_path.read_text()
    assert "no mesh CA in" in log
    # a command that works as pasted: `ca init` needs --trust-domain
    assert f"`auditmesh ca init --trust-domain cluster.local --data {tmp_path / 'data'}`" in log
