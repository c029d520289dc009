"""The HTTP API against a real server process: batches, proofs, tlog-tiles, errors."""

from __future__ import annotations

import base64
import sqlite3
import time
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import httpx
import msgspec
import pytest
from google.rpc import status_pb2

from auditmesh.cli.main import main
from auditmesh.client import RemoteLog
from auditmesh.events import canonical_bytes, encode_ndjson
from auditmesh.ledger import merkle, tiles
from auditmesh.ledger.checkpoint import open_checkpoint
from auditmesh.ledger.note import Verifier
from auditmesh.ledger.tlogproof import TlogProof, verify_tlog_proof
from auditmesh.ledger.verify import verify_log
from auditmesh.serverproc import ServerProcess
from tests.conftest import generate
from tests.event_id_spellings import NOT_EVENT_IDS, SPELLINGS, form_told

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("api") / "data"
    with ServerProcess(data, extra=["--checkpoint-interval", "0.2"]) as running:
        yield running


def auth(server: ServerProcess) -> dict[str, str]:
    """Reads of events need the API token (server/api_auth.py)."""
    token = (server.data_dir / "keys" / "api.token").read_text().strip()
    return {"authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def verifier(server: ServerProcess) -> Verifier:
    return Verifier.from_vkey((server.data_dir / "keys" / "log.vkey").read_text())


@pytest.fixture(scope="module")
def stored(server: ServerProcess) -> list[bytes]:
    """600 events posted as NDJSON then as a JSON array; returns their leaf data in order."""
    events = generate(600, seed=11)
    first = httpx.post(server.url + "/v1/events", content=encode_ndjson(events[:400]))
    assert first.status_code == 200, first.text
    assert first.json()["indices"] == list(range(400))
    array = b"[" + b",".join(canonical_bytes(e) for e in events[400:]) + b"]"
    second = httpx.post(server.url + "/v1/events", content=array)
    assert second.json()["indices"] == list(range(400, 600))
    return [canonical_bytes(e) for e in events]


def test_duplicate_batch_is_not_logged_twice(server: ServerProcess, stored: list[bytes]) -> None:
    again = httpx.post(server.url + "/v1/events", content=b"\n".join(stored[10:20]))
    assert again.json()["indices"] == list(range(10, 20))
    assert again.json()["size"] == 600


def test_an_id_reused_for_another_event_is_refused_with_409(
    server: ServerProcess, stored: list[bytes]
) -> None:
    event = msgspec.json.decode(stored[3])
    event["outcome"] = "failure" if event["outcome"] != "failure" else "success"
    fresh = canonical_bytes(generate(1, seed=98)[0])
    answer = httpx.post(
        server.url + "/v1/events", content=fresh + b"\n" + msgspec.json.encode(event)
    )
    assert answer.status_code == 409, answer.text
    assert answer.json()["line"] == 2
    assert "in the log already, with other content (entry 3)" in answer.json()["error"]
    kept = httpx.get(server.url + f"/v1/events/{event['id']}", headers=auth(server))
    assert kept.json()["event"]["outcome"] != event["outcome"]  # the first content stays
    assert httpx.post(server.url + "/v1/events", content=fresh).status_code == 200  # not kept


def test_invalid_batch_is_refused_whole_naming_line_and_field(
    server: ServerProcess, stored: list[bytes]
) -> None:
    fresh = [canonical_bytes(e) for e in generate(3, seed=99)]
    bad = fresh[2].replace(b'"status":', b'"status":-', 1)
    response = httpx.post(server.url + "/v1/events", content=b"\n".join([fresh[0], fresh[1], bad]))
    assert response.status_code == 400
    body = response.json()
    assert (
        body["line"] == 3 and "$.http.status" in body["error"] and "nothing stored" in body["error"]
    )
    lookup = httpx.get(
        server.url + "/v1/events/" + msgspec.json.decode(fresh[0])["id"], headers=auth(server)
    )
    assert lookup.status_code == 404


def test_malformed_json_and_empty_batches_are_refused(server: ServerProcess) -> None:
    assert httpx.post(server.url + "/v1/events", content=b"{not json").status_code == 400
    empty = httpx.post(server.url + "/v1/events", content=b"\n\n")
    assert empty.status_code == 400 and "empty batch" in empty.json()["error"]


def test_oversized_batch_gets_413(server: ServerProcess) -> None:
    response = httpx.post(server.url + "/v1/events", content=b" " * (17 * 1024 * 1024))
    assert response.status_code == 413


def test_event_comes_back_with_a_proof_that_verifies(
    server: ServerProcess, stored: list[bytes], verifier: Verifier
) -> None:
    event_id = msgspec.json.decode(stored[333])["id"]
    body = httpx.get(server.url + "/v1/events/" + event_id, headers=auth(server)).json()
    assert body["index"] == 333
    assert msgspec.json.decode(stored[333]) == body["event"]
    checkpoint = open_checkpoint(body["checkpoint"].encode(), verifier)
    proof = [base64.b64decode(h) for h in body["proof"]["hashes"]]
    assert body["proof"]["tree_size"] == checkpoint.size
    merkle.verify_inclusion(
        merkle.leaf_hash(stored[333]), 333, checkpoint.size, proof, checkpoint.root_hash
    )


def test_tlog_proof_endpoint(
    server: ServerProcess, stored: list[bytes], verifier: Verifier
) -> None:
    event_id = msgspec.json.decode(stored[5])["id"]
    response = httpx.get(
        server.url + "/v1/proof/inclusion", params={"id": event_id}, headers=auth(server)
    )
    assert response.status_code == 200
    proof = TlogProof.parse(response.content)
    checkpoint = verify_tlog_proof(proof, stored[5], verifier)
    assert proof.index == 5 and checkpoint.size >= 600


def test_unknown_and_malformed_ids(server: ServerProcess) -> None:
    assert httpx.get(server.url + "/v1/events/not-a-uuid", headers=auth(server)).status_code == 400
    missing = httpx.get(
        server.url + "/v1/events/01890a5d-ac96-774b-bcce-b302099a8057", headers=auth(server)
    )
    assert missing.status_code == 404 and "no event" in missing.json()["error"]
    assert httpx.get(server.url + "/v1/proof/inclusion", headers=auth(server)).status_code == 400


def lookups(server: ServerProcess, text: str) -> list[httpx.Response]:
    """GET /v1/events/{text} and GET /v1/proof/inclusion?id={text}."""
    return [
        httpx.get(f"{server.url}/v1/events/{quote(text, safe='')}", headers=auth(server)),
        httpx.get(server.url + "/v1/proof/inclusion", params={"id": text}, headers=auth(server)),
    ]


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_another_spelling_of_an_event_id_finds_the_event(
    server: ServerProcess, stored: list[bytes], spelling: str
) -> None:
    """Regression: with an uppercase urn:uuid: prefix or surrounding whitespace, the id of a
    stored event was answered 400 'not an event id'."""
    event_id = msgspec.json.decode(stored[42])["id"]
    event, proof = lookups(server, SPELLINGS[spelling](event_id))
    assert event.status_code == 200, event.text
    assert event.json()["index"] == 42 and event.json()["event"]["id"] == event_id
    assert proof.status_code == 200, proof.text
    assert TlogProof.parse(proof.content).index == 42


@pytest.mark.parametrize("text", NOT_EVENT_IDS)
def test_text_that_is_no_event_id_gets_a_400_saying_which_form_to_give(
    server: ServerProcess, stored: list[bytes], text: str
) -> None:
    """Regression: a digit replaced by an underscore, or a UUID of another version than 7,
    was answered 404 'no event with id' (no such event can exist); Arabic-Indic digits, a
    sign, misplaced hyphens or {urn:uuid:...} found the event; no 400 said which form to
    give."""
    given = NOT_EVENT_IDS[text](msgspec.json.decode(stored[42])["id"])
    for answer in lookups(server, given):
        assert answer.status_code == 400, answer.text
        assert form_told(answer.json()["error"]), answer.text


def test_consistency_proof(server: ServerProcess, stored: list[bytes]) -> None:
    response = httpx.get(server.url + "/v1/proof/consistency", params={"from": 100, "to": 600})
    proof = [base64.b64decode(h) for h in response.json()["proof"]]
    leaves = [merkle.leaf_hash(d) for d in stored]
    merkle.verify_consistency(100, 600, proof, merkle.root(leaves[:100]), merkle.root(leaves))
    too_far = httpx.get(server.url + "/v1/proof/consistency", params={"from": 1, "to": 10**6})
    assert too_far.status_code == 400
    ambiguous = httpx.get(
        server.url + "/v1/proof/consistency", params=[("from", 100), ("to", 600), ("from", 1)]
    )
    assert ambiguous.status_code == 400 and "from: given more than once" in ambiguous.text


def test_tiles_are_served_per_c2sp(server: ServerProcess, stored: list[bytes]) -> None:
    leaves = [merkle.leaf_hash(d) for d in stored]
    full = httpx.get(server.url + "/log/" + tiles.tile_path(0, 1))
    assert full.content == b"".join(leaves[256:512])
    partial = httpx.get(server.url + "/log/" + tiles.tile_path(0, 2, 10))
    assert partial.content == b"".join(leaves[512:522])
    bundle = httpx.get(server.url + "/log/" + tiles.entries_path(0))
    assert tiles.decode_entry_bundle(bundle.content) == stored[:256]
    assert httpx.get(server.url + "/log/" + tiles.tile_path(0, 9)).status_code == 404
    assert httpx.get(server.url + "/log/tile/0/1.p/0").status_code == 400
    assert full.headers["content-type"] == bundle.headers["content-type"]
    assert full.headers["content-type"] == "application/octet-stream"  # MUST, tlog-tiles
    checkpoint = httpx.get(server.url + "/log/checkpoint")
    assert checkpoint.headers["cache-control"] == "no-cache"  # SHOULD NOT be cached long
    for huge in ("tile/0/" + "x999/" * 7 + "999", "tile/entries/" + "x999/" * 6 + "999"):
        beyond = httpx.get(server.url + "/log/" + huge)
        assert beyond.status_code == 400 and "beyond any log" in beyond.json()["error"]


def test_remote_verify_follows_the_tiles(
    server: ServerProcess,
    stored: list[bytes],
    verifier: Verifier,
    capsys: pytest.CaptureFixture[str],
) -> None:
    remote = RemoteLog(server.url)
    try:
        report = verify_log(remote, verifier)
    finally:
        remote.close()
    assert report.size >= 600
    code = main(["log", "verify", "--url", server.url, "--key", verifier.vkey, "--quiet"])
    assert code == 0, capsys.readouterr()


def test_cli_checkpoint_over_http(
    server: ServerProcess,
    stored: list[bytes],
    verifier: Verifier,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # The batches are durable when answered; the checkpoint covering them comes within the
    # server's interval (0.2 s) after, which a test run alone reaches before it.
    deadline = time.monotonic() + 30
    while True:
        assert main(["log", "checkpoint", "--url", server.url]) == 0
        checkpoint = open_checkpoint(capsys.readouterr().out.encode(), verifier)
        if checkpoint.size >= 600 or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert checkpoint.size >= 600


def test_graceful_stop_signs_a_last_checkpoint(tmp_path: Path) -> None:
    data = tmp_path / "data"
    server = ServerProcess(data, extra=["--checkpoint-interval", "3600"]).start()
    events = generate(50)
    assert httpx.post(server.url + "/v1/events", content=encode_ndjson(events)).status_code == 200
    assert server.stop() == 0
    from auditmesh.datadir import open_ledger

    ledger = open_ledger(data, create=False)
    try:
        latest = ledger.store.latest_checkpoint()
        assert latest is not None and latest.size == 50
    finally:
        ledger.close()


def test_a_write_a_foreign_web_page_makes_a_browser_send_is_refused(
    server: ServerProcess,
) -> None:
    # A form or a no-cors fetch (text/plain needs no preflight) from another site carries
    # that site's Origin; the server's own pages and non-browser clients are let through.
    body = encode_ndjson(generate(1, seed=77))
    for path in ("/v1/events", "/v1/logs", "/console/api/bundle"):
        for origin in ("https://evil.example", "null"):
            forged = httpx.post(
                server.url + path,
                content=body,
                headers={"origin": origin, "content-type": "text/plain"},
            )
            assert forged.status_code == 403, (path, forged.text)
            if path == "/v1/logs":  # OTLP: a google.rpc.Status, protobuf for text/plain
                error = status_pb2.Status.FromString(forged.content).message
            else:
                error = forged.json()["error"]
            assert "only this server's own pages" in error
    own = httpx.post(server.url + "/v1/events", content=body, headers={"origin": server.url})
    assert own.status_code == 200
    assert own.json()["indices"][0] >= own.json()["fresh_from"]  # no forged post stored it
    assert httpx.post(server.url + "/v1/events", content=body).status_code == 200


def test_an_event_too_large_for_a_ledger_entry_is_refused(server: ServerProcess) -> None:
    # tlog-tiles entry bundles give each entry a 16-bit length: a larger event could be
    # stored but never served, and would break every remote verification after it.
    small, large = generate(2, seed=78)
    large = msgspec.structs.replace(large, labels={f"k{i}": "v" * 1024 for i in range(80)})
    answer = httpx.post(server.url + "/v1/events", content=encode_ndjson([small, large]))
    assert answer.status_code == 400 and answer.json()["line"] == 2
    assert "the limit is 65535" in answer.json()["error"]
    stored = httpx.post(server.url + "/v1/events", content=encode_ndjson([small]))
    assert stored.json()["indices"][0] >= stored.json()["fresh_from"]  # nothing was stored


def test_a_ledger_locked_for_a_while_refuses_that_batch_and_takes_the_next(
    tmp_path: Path,
) -> None:
    """Another process holds the ledger's write lock past the 10 s busy timeout (the sqlite3
    shell mid-transaction): the batch gets a 503 saying nothing was stored, and once the
    lock is gone the server takes events again; it does not stay refusing everything."""
    with ServerProcess(tmp_path / "data", extra=["--mesh-listen", "off"]) as server:
        events = generate(4, seed=21)
        first = httpx.post(server.url + "/v1/events", content=encode_ndjson(events[:2]))
        assert first.status_code == 200, first.text
        other = sqlite3.connect(server.data_dir / "ledger.db", isolation_level=None)
        try:
            other.execute("BEGIN IMMEDIATE")
            refused = httpx.post(
                server.url + "/v1/events", content=encode_ndjson(events[2:]), timeout=30
            )
            other.execute("ROLLBACK")
        finally:
            other.close()
        assert refused.status_code == 503, refused.text
        assert "nothing of the batch was stored" in refused.json()["error"]
        again = httpx.post(server.url + "/v1/events", content=encode_ndjson(events[2:]))
        assert again.status_code == 200, again.text
        assert again.json()["indices"] == [2, 3]
    assert main(["log", "verify", "--data", str(server.data_dir), "--quiet"]) == 0
