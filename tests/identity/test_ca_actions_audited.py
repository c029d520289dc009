"""`auditmesh ca token` and `ca issue` are audit events (issue 3: issuance is audited), whether
a server holds the ledger (queued for it, `pending.py`) or not (appended by the command)."""

from __future__ import annotations

from pathlib import Path

import httpx
import msgspec
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from auditmesh.cli.main import main
from auditmesh.collector import Collector
from auditmesh.datadir import open_ledger
from auditmesh.events import AuditEvent, Peer, canonical_bytes, decode_event
from auditmesh.identity.svid import cert_sha256, make_csr
from auditmesh.identity.tokens import JoinTokens
from auditmesh.pending import absorb, pending_dir, queue_event
from auditmesh.serverproc import ServerProcess
from tests.identity.conftest import CLI_ID as ID
from tests.identity.conftest import pending_event


def _stored(data: Path) -> list[AuditEvent]:
    ledger = open_ledger(data, create=False)
    try:
        return [decode_event(data) for _, data in ledger.store.entries(0, ledger.log.size)]
    finally:
        ledger.close()


def test_issue_without_a_server_is_appended_before_the_certificate_goes_out(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    open_ledger(data).close()  # a server ran here once
    csr = tmp_path / "req.pem"
    csr.write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))
    capsys.readouterr()
    assert main(["ca", "issue", "--id", ID, "--csr", str(csr), "--data", str(data)]) == 0
    out, err = capsys.readouterr()
    assert "recorded at ledger index 0" in err
    [event] = _stored(data)
    assert event.kind == "identity" and event.outcome == "success" and event.attested
    assert event.labels["identity.action"] == "svid_issued"
    assert event.labels["identity.channel"] == "cli"
    assert event.reporter.startswith("auditmesh-ca-cli:")
    assert event.source == Peer(identity=ID)
    assert event.destination == Peer(service="auditmesh-ca")
    cert = x509.load_pem_x509_certificate(out.encode())
    assert event.tls is not None and event.tls.peer_cert_sha256 == cert_sha256(cert)
    assert not any(pending_dir(data).iterdir())  # taken, so the queue is empty
    assert main(["log", "verify", "--data", str(data)]) == 0


def test_token_beside_a_running_server_is_queued_and_the_server_takes_it(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with ServerProcess(data, extra=["--mesh-listen", "off"]) as server:
        before = httpx.get(server.url + "/log/checkpoint").text
        assert main(["ca", "token", "--id", ID, "--ttl", "5m", "--data", str(data)]) == 0
        err = capsys.readouterr().err
        # the command waits the second it takes the server to append it
        assert "recorded at ledger index 0" in err
        event_id = err.split("audit event ")[1].split()[0]
        answer = httpx.get(f"{server.url}/v1/events/{event_id}", headers=server.auth)
        assert answer.status_code == 200, answer.text
        assert httpx.get(server.url + "/log/checkpoint").text != before
    stored = answer.json()["event"]
    assert stored["labels"]["identity.action"] == "join_token_minted"
    assert stored["source"]["identity"] == ID and "identity.expires" in stored["labels"]
    assert not any(pending_dir(data).iterdir())
    assert "took 1 queued audit event" in server.log_path.read_text()


def test_a_crash_after_the_append_takes_the_event_once(tmp_path: Path) -> None:
    """The file goes only after the append is durable; taken twice, the id makes it one."""
    data = tmp_path / "data"
    events = sorted((pending_event(n) for n in range(3)), key=lambda e: e.id)  # taken in id order
    for event in events:
        queue_event(data, event)
    kept = {p.name: p.read_bytes() for p in pending_dir(data).iterdir()}
    ledger = open_ledger(data)
    collector = Collector(ledger.log)
    collector.start()
    try:
        first = absorb(data, collector.submit)
        for name, content in kept.items():  # as if it had crashed before removing them
            (pending_dir(data) / name).write_bytes(content)
        again = absorb(data, collector.submit)
    finally:
        collector.stop()
        ledger.close()
    assert first.indices == again.indices == {e.id: i for i, e in enumerate(events)}
    assert [canonical_bytes(e) for e in _stored(data)] == [canonical_bytes(e) for e in events]


def test_a_file_that_is_no_event_is_set_aside_with_the_reason(tmp_path: Path) -> None:
    data = tmp_path / "data"
    good = pending_event(1)
    queue_event(data, good)
    bad = pending_dir(data) / "0000-bad.json"
    bad.write_bytes(b'{"id": "x"}')
    ledger = open_ledger(data)
    collector = Collector(ledger.log)
    collector.start()
    try:
        absorbed = absorb(data, collector.submit)
    finally:
        collector.stop()
        ledger.close()
    assert absorbed.indices == {good.id: 0}
    refused = pending_dir(data) / "0000-bad.json.refused"
    assert absorbed.refused == (refused,)
    assert refused.read_bytes() == b'{"id": "x"}'
    why = (pending_dir(data) / "0000-bad.json.refused.why").read_text()
    assert "is not an audit event" in why and "rename it back" in why
    assert [e.id for e in _stored(data)] == [good.id]


def test_a_token_whose_event_cannot_be_recorded_is_withdrawn(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # minted before the event is recorded: it stayed in the store, valid and unaudited
    pending_dir(data).write_text("a file where the queue's folder goes")
    capsys.readouterr()
    assert main(["ca", "token", "--id", ID, "--data", str(data)]) == 2
    out, err = capsys.readouterr()
    assert out == "" and "cannot record this as an audit event" in err
    assert "nothing was handed out" in err
    assert "the token minted for it was withdrawn and cannot be redeemed" in err
    assert JoinTokens(data).records() == []
    pending_dir(data).unlink()  # once events can be recorded, tokens are minted again
    assert main(["ca", "token", "--id", ID, "--data", str(data)]) == 0
    assert [str(r.spiffe_id) for r in JoinTokens(data).records()] == [ID]


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_issue_whose_certificate_cannot_be_written_says_the_issuance_was_recorded(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    open_ledger(data).close()
    csr = tmp_path / "req.pem"
    csr.write_bytes(make_csr(ec.generate_private_key(ec.SECP256R1())))
    capsys.readouterr()
    # /dev/full passes the check before the work, and every write to it fails (ENOSPC)
    argv = ["ca", "issue", "--id", ID, "--csr", str(csr), "--out", "/dev/full"]
    assert main([*argv, "--data", str(data)]) == 2
    out, err = capsys.readouterr()
    [event] = _stored(data)
    assert out == "" and "--out: cannot write /dev/full" in err
    assert f"audit event {event.id} recorded at ledger index 0" in err
    assert "the issuance recorded" in err and "certificate was written nowhere" in err


def test_the_event_is_canonical_json_on_disk(tmp_path: Path) -> None:
    event = pending_event(7)
    path = queue_event(tmp_path, event)
    assert path.name == f"{event.id}.json"
    assert msgspec.json.decode(path.read_bytes())["id"] == event.id
    assert path.read_bytes() == canonical_bytes(event)
