"""`auditmesh log checkpoint | prove | verify-proof` on a data directory, and their errors."""

from __future__ import annotations

import base64
import json
import shlex
from collections.abc import Callable
from pathlib import Path

import pytest

from auditmesh.cli.main import main
from auditmesh.datadir import open_ledger
from auditmesh.events import canonical_bytes
from auditmesh.ledger import merkle
from auditmesh.ledger.note import Verifier, generate_key
from auditmesh.ledger.tlogproof import TlogProof, verify_tlog_proof
from tests.conftest import fill, generate
from tests.event_id_spellings import NOT_EVENT_IDS, SPELLINGS, form_told


@pytest.fixture
def data(tmp_path: Path) -> Path:
    ledger = open_ledger(tmp_path / "data", origin="test.auditmesh/log")
    fill(ledger, generate(300))
    ledger.close()
    return tmp_path / "data"


def test_checkpoint_prints_the_signed_note(data: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "checkpoint", "--data", str(data)]) == 0
    assert capsys.readouterr().out.startswith("test.auditmesh/log\n300\n")


def test_prove_writes_a_tlog_proof_that_verifies(data: Path, tmp_path: Path) -> None:
    event = generate(300)[77]
    out = tmp_path / "e.tlog-proof"
    assert main(["log", "prove", event.id, "--data", str(data), "-o", str(out)]) == 0
    proof = TlogProof.parse(out.read_bytes())
    verifier = Verifier.from_vkey((data / "keys" / "log.vkey").read_text())
    checkpoint = verify_tlog_proof(proof, canonical_bytes(event), verifier)
    assert proof.index == 77 and checkpoint.size == 300


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["log", "prove", "nope"], "'nope' is not an event id: give a UUIDv7 as 8-4-4-4-12"),
        (["log", "prove", "01890a5d-ac96-774b-bcce-b302099a8057"], "no event"),
        (["log", "prove", "300"], "no entry 300: the log in"),
    ],
)
def test_prove_errors(
    data: Path, argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main([*argv, "--data", str(data)]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_prove_takes_another_spelling_of_the_event_id(
    data: Path, tmp_path: Path, spelling: str
) -> None:
    """The spellings GET /v1/events/{id} takes (events.parse_event_id). Regression: an
    uppercase urn:uuid: prefix and surrounding whitespace were refused."""
    out = tmp_path / "e.tlog-proof"
    given = SPELLINGS[spelling](generate(300)[77].id)
    assert main(["log", "prove", given, "--data", str(data), "-o", str(out)]) == 0
    assert TlogProof.parse(out.read_bytes()).index == 77


@pytest.mark.parametrize("text", NOT_EVENT_IDS)
def test_prove_says_which_form_to_give_for_text_that_is_no_event_id(
    data: Path, text: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: some of these found an event, others were 'no event ...' (as if the
    event did not exist), and none said which form to give."""
    given = NOT_EVENT_IDS[text](generate(300)[77].id)
    assert main(["log", "prove", given, "--data", str(data)]) == 2
    err = capsys.readouterr().err
    assert form_told(err) and "or the event's index in the log" in err, err


def test_prove_takes_the_index_query_shows(data: Path, tmp_path: Path) -> None:
    out = tmp_path / "by-index.tlog-proof"
    assert main(["log", "prove", "77", "--data", str(data), "-o", str(out)]) == 0
    proof = TlogProof.parse(out.read_bytes())
    verifier = Verifier.from_vkey((data / "keys" / "log.vkey").read_text())
    checkpoint = verify_tlog_proof(proof, canonical_bytes(generate(300)[77]), verifier)
    assert proof.index == 77 and checkpoint.size == 300


def test_a_key_file_that_is_not_there_is_named(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:
        main(["log", "verify", "--data", str(data), "--key", str(data / "nonexist.vkey")])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "nonexist.vkey' is not a verifier key" in err and "No such file or directory" in err


def test_missing_data_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["log", "checkpoint", "--data", str(tmp_path / "none")]) == 2
    assert "no ledger at" in capsys.readouterr().err


def test_verify_holds_the_log_to_a_checkpoint_kept_from_before(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A ledger replaced with its checkpoints (same key: whoever holds the data directory
    holds it) verifies on its own; against a checkpoint the auditor kept, it does not."""
    assert main(["log", "checkpoint", "--data", str(data)]) == 0
    seen = tmp_path / "seen.checkpoint"
    seen.write_text(capsys.readouterr().out)
    verify = ["log", "verify", "--quiet", "--trusted", str(seen), "--data"]

    ledger = open_ledger(data)
    fill(ledger, generate(310)[300:])  # the log grew since: still the same log
    ledger.close()
    assert main([*verify, str(data)]) == 0
    assert "OK: 310 entries recomputed, 2 checkpoint(s) verified" in capsys.readouterr().out

    def replaced(name: str, events: int, seed: int) -> Path:
        other = tmp_path / name
        other.mkdir()
        (other / "keys").mkdir()
        for key in (data / "keys").iterdir():
            (other / "keys" / key.name).write_bytes(key.read_bytes())
        forged = open_ledger(other, origin="test.auditmesh/log")
        fill(forged, generate(events, seed=seed))
        forged.close()
        assert main(["log", "verify", "--quiet", "--data", str(other)]) == 0  # alone: passes
        capsys.readouterr()
        return other

    assert main([*verify, str(replaced("shorter", 100, 7))]) == 1
    assert "fewer entries than a checkpoint you trust" in capsys.readouterr().err
    assert main([*verify, str(replaced("rewritten", 400, 8))]) == 1
    err = capsys.readouterr().err
    assert "the root of a checkpoint you trust differs" in err and "size 300" in err

    assert main(["log", "verify", "--trusted", str(tmp_path / "none"), "--data", str(data)]) == 2
    assert "--trusted" in capsys.readouterr().err


def test_a_key_file_whose_path_has_a_plus_is_read(data: Path, tmp_path: Path) -> None:
    key_file = tmp_path / "log+copy.vkey"
    key_file.write_text((data / "keys" / "log.vkey").read_text())
    assert main(["log", "verify", "--data", str(data), "--key", str(key_file), "--quiet"]) == 0


def _vkey_name(vkey: str) -> str:
    """The `name+hash` part of a verifier key, as the messages name a key."""
    verifier = Verifier.from_vkey(vkey.strip())
    return f"{verifier.name}+{verifier.key_hash:08x}"


@pytest.mark.parametrize("source", ["another data directory", "generate_key"])
def test_another_logs_key_is_one_line_naming_both_keys_and_the_fix(
    source: str, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    if source == "generate_key":
        key = generate_key("example.com/other")[1]
    else:
        other = open_ledger(tmp_path / "other", origin="test.auditmesh/log")
        fill(other, generate(5))
        other.close()
        key = (tmp_path / "other" / "keys" / "log.vkey").read_text().strip()
    ours = _vkey_name((data / "keys" / "log.vkey").read_text())
    assert main(["log", "verify", "--data", str(data), "--key", key]) == 1
    assert capsys.readouterr().err == (  # one line: not wrapped at the console's width
        f"FAILED: {data}: no checkpoint is signed by the given key {_vkey_name(key)}; "
        f"checkpoint #1 is signed by {ours}. Either that key is not this log's, or every "
        "checkpoint was re-signed by another key: check the key against a copy of the log's "
        "key you obtained independently, never against the copy in the log's own data "
        "directory\n"
    )  # the given key may be the right one and the checkpoints forged: never send the
    # auditor to the (possibly compromised) data directory for a key


def test_a_data_directorys_key_that_signs_none_of_its_checkpoints(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    ours = _vkey_name((data / "keys" / "log.vkey").read_text())
    replaced = generate_key("test.auditmesh/log")[1]
    (data / "keys" / "log.vkey").write_text(replaced + "\n")
    assert main(["log", "verify", "--data", str(data), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and (
        f"no checkpoint is signed by the data directory's key {_vkey_name(replaced)} "
        f"(keys/log.vkey); checkpoint #1 is signed by {ours}. The key file or the checkpoints "
        "were replaced" in err
    )


def test_jobs_and_indexes_are_refused_with_url_and_jobs_below_one(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Refused before the server is asked (nothing listens on port 9)."""
    url = ["log", "verify", "--url", "http://127.0.0.1:9", "--key", str(data / "keys/log.vkey")]
    assert main([*url, "--jobs", "2"]) == 2
    assert "--jobs applies to a local ledger (--data) only" in capsys.readouterr().err
    assert main([*url, "--indexes"]) == 2
    assert "--indexes reads the store's columns: use it with --data" in capsys.readouterr().err
    assert main(["log", "verify", "--data", str(data), "--jobs", "0"]) == 2
    assert "--jobs: give at least 1" in capsys.readouterr().err
    assert main(["log", "verify", "--data", str(data), "--jobs", "2", "--quiet"]) == 0


def test_verify_help_says_what_jobs_is_for_and_its_default(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["log", "verify", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps at the console's width
    assert "--jobs N processes, this one included, for a ledger read with --data only" in out


# --- log verify-proof ------------------------------------------------------------------------


def _prove(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], *extra: str) -> str:
    """`log prove 77 -o tmp/77.tlog-proof …`, in tmp_path; the command it says checks it."""
    out = tmp_path / "77.tlog-proof"
    assert main(["log", "prove", "77", "--data", str(data), "-o", str(out), *extra]) == 0
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("check it offline with: auditmesh log "), err
    return err.split(" with: ", 1)[1].split(" (", 1)[0].strip()


def _run(command: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """Run a printed `auditmesh …` command line as pasted; its exit code and output."""
    words = shlex.split(command)
    assert words[0] == "auditmesh"
    code = main(words[1:])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_command_prove_prints_verifies_its_proof_and_event(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    event = tmp_path / "77.json"
    command = _prove(data, tmp_path, capsys, "--event-out", str(event))
    vkey = (data / "keys" / "log.vkey").read_text().strip()
    assert f"--key {vkey} --event {event}" in command
    assert event.read_bytes() == canonical_bytes(generate(300)[77])  # the exact leaf data
    code, out = _run(command, capsys)
    assert code == 0, out
    assert out == (
        f"OK: the event {generate(300)[77].id} in {event} is entry 77 of test.auditmesh/log at "
        f"tree size 300; checkpoint signed by {_vkey_name(vkey)}, root "
        f"{merkle.root([merkle.leaf_hash(canonical_bytes(e)) for e in generate(300)]).hex()}\n"
    )


def test_without_the_event_prove_prints_the_command_with_the_leaf_hash(
    data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command = _prove(data, tmp_path, capsys)
    leaf = merkle.leaf_hash(canonical_bytes(generate(300)[77])).hex()
    assert command.endswith(f"--leaf-hash {leaf}")
    code, out = _run(command, capsys)
    assert code == 0 and out.startswith(f"OK: the leaf {leaf} is entry 77 of "), out


def test_prove_to_stdout_says_how_to_check_the_saved_proof(
    data: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["log", "prove", "77", "--data", str(data)]) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("c2sp.org/tlog-proof@v1\nindex 77\n")
    assert captured.err.startswith(
        "check it offline, once saved as FILE, with: auditmesh log verify-proof FILE --key "
    )


@pytest.fixture
def proven(data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, Path]:
    """Entry 77's proof and event file, as `log prove` wrote them."""
    event = tmp_path / "77.json"
    _prove(data, tmp_path, capsys, "--event-out", str(event))
    return tmp_path / "77.tlog-proof", event


def verify_proof(
    proof: Path, key: Path | str, capsys: pytest.CaptureFixture[str], *leaf: str
) -> tuple[int, str]:
    code = main(["log", "verify-proof", str(proof), "--key", str(key), *leaf])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def test_the_event_in_another_json_form_verifies_in_canonical_form(
    data: Path, tmp_path: Path, proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """Pretty-printed, and as GET /v1/events/ID answers (the event in its `event` member)."""
    proof, event = proven
    value = json.loads(event.read_bytes())
    pretty = tmp_path / "pretty.json"
    pretty.write_text(json.dumps(value, indent=2, sort_keys=False) + "\n")
    answer = tmp_path / "answer.json"
    answer.write_text(json.dumps({"index": 77, "event": value, "checkpoint": "…"}))
    for form in (pretty, answer):
        code, out = verify_proof(proof, data / "keys/log.vkey", capsys, "--event", str(form))
        assert code == 0 and f"in {form} (in RFC 8785 canonical form) is entry 77" in out, out


def test_an_event_file_that_names_a_member_twice_is_refused(
    data: Path, tmp_path: Path, proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The last of two `outcome`s wins in the parse, so the proof held while a reader of the
    file saw the first: such a file does not say one event."""
    proof, event = proven
    value = json.loads(event.read_bytes())
    other = "success" if value["outcome"] != "success" else "failure"
    text = json.dumps(value)
    twice = tmp_path / "twice.json"
    twice.write_text(text[:1] + f'"outcome": "{other}", ' + text[1:])
    code, out = verify_proof(proof, data / "keys/log.vkey", capsys, "--event", str(twice))
    assert code == 2 and "names the member 'outcome' twice" in out, out


def test_a_tampered_event_fails(
    data: Path, tmp_path: Path, proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    proof, event = proven
    value = json.loads(event.read_bytes())
    value["outcome"] = "success" if value["outcome"] != "success" else "failure"
    tampered = tmp_path / "tampered.json"
    tampered.write_text(json.dumps(value))
    code, out = verify_proof(proof, data / "keys/log.vkey", capsys, "--event", str(tampered))
    assert code == 1
    assert (
        out.startswith(
            f"FAILED: {proof}: the proof does not match the event {value['id']} in {tampered} "
            "(in RFC 8785 canonical form) (one of them was altered, or they are of different "
            "entries): inclusion proof does not lead to the root; at leaf 77 of tree size 300"
        )
        and out.count("\n") == 1
    ), out


def test_a_file_that_is_no_event_is_hashed_as_it_is_and_said_so(
    data: Path, tmp_path: Path, proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    proof, _ = proven
    other = tmp_path / "notes.txt"
    other.write_text("not an event\n")
    code, out = verify_proof(proof, data / "keys/log.vkey", capsys, "--event", str(other))
    assert code == 1 and "the proof does not match the bytes of" in out
    assert f"{other} holds no audit event (JSON is malformed" in out and out.count("\n") == 1


def test_a_tampered_proof_hash_fails(
    data: Path, proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    proof, event = proven
    lines = proof.read_bytes().split(b"\n")
    assert lines[2] != b"" and lines[2] != base64.b64encode(bytes(32))
    lines[2] = base64.b64encode(bytes(32))  # the leaf's sibling
    proof.write_bytes(b"\n".join(lines))
    code, out = verify_proof(proof, data / "keys/log.vkey", capsys, "--event", str(event))
    assert code == 1 and out.count("\n") == 1
    assert "the proof does not match the event" in out
    assert "inclusion proof does not lead to the root; at leaf 77 of tree size 300" in out


def test_a_proof_with_another_logs_checkpoint_fails(
    data: Path, tmp_path: Path, proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The path of our entry 77 glued to the checkpoint of another log of the same origin
    name and size: with either log's key, it does not verify."""
    proof, event = proven
    other = open_ledger(tmp_path / "other", origin="test.auditmesh/log")
    fill(other, generate(300, seed=8))
    other.close()
    assert main(["log", "checkpoint", "--data", str(tmp_path / "other")]) == 0
    note = capsys.readouterr().out.encode()
    ours = TlogProof.parse(proof.read_bytes())
    proof.write_bytes(TlogProof(77, ours.proof, note).encode())
    code, out = verify_proof(proof, data / "keys/log.vkey", capsys, "--event", str(event))
    theirs = _vkey_name((tmp_path / "other/keys/log.vkey").read_text())
    given = _vkey_name((data / "keys/log.vkey").read_text())
    assert code == 1 and out == (
        f"FAILED: {proof}: the proof's checkpoint is signed by {theirs}, not by the given key "
        f"{given}. Either that key is not this log's, or the proof is another log's, or its "
        "checkpoint was re-signed by another key: check the key against a copy of the log's "
        "key you obtained independently, never against one that came with the proof\n"
    )
    key = tmp_path / "other/keys/log.vkey"
    code, out = verify_proof(proof, key, capsys, "--event", str(event))
    assert code == 1 and "the proof does not match the event" in out, out


def test_a_wrong_key_fails(
    data: Path, proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    proof, event = proven
    key = generate_key("test.auditmesh/log")[1]
    code, out = verify_proof(proof, key, capsys, "--event", str(event))
    assert code == 1 and out.count("\n") == 1
    assert f"not by the given key {_vkey_name(key)}. Either that key is not this log's" in out


def test_a_re_signed_or_edited_checkpoint_fails(
    data: Path, proven: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    """The checkpoint's size changed after signing: the signature by the key no longer holds."""
    proof, event = proven
    parsed = TlogProof.parse(proof.read_bytes())
    edited = parsed.checkpoint_note.replace(b"\n300\n", b"\n301\n", 1)
    proof.write_bytes(TlogProof(77, parsed.proof, edited).encode())
    code, out = verify_proof(proof, data / "keys/log.vkey", capsys, "--event", str(event))
    assert code == 1 and out == (
        f"FAILED: {proof}: the proof's checkpoint (line {parsed.checkpoint_line}) does not "
        f"verify: invalid signature for key {_vkey_name((data / 'keys/log.vkey').read_text())}\n"
    )


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda b: b.replace(b"index 77\n", b"index 077\n"), "index '077' on line 2 has a leading"),
        (lambda b: b.replace(b"index 77\n", b"index 78\n"), "the proof does not match the event"),
        (lambda b: b.replace(b"=\n", b"!\n", 1), "proof hash on line 3 is not valid base64"),
        (lambda b: b[: b.index(b"\n\n") + 1], "ends before the empty line before the checkpoint"),
        (lambda b: b"PK\x03\x04" + b, "(it is a zip: `auditmesh bundle verify` checks evidence"),
    ],
)
def test_a_malformed_or_moved_proof_fails_naming_the_line(
    edit: Callable[[bytes], bytes],
    message: str,
    data: Path,
    proven: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    proof, event = proven
    proof.write_bytes(edit(proof.read_bytes()))
    code, out = verify_proof(proof, data / "keys/log.vkey", capsys, "--event", str(event))
    assert code == 1 and out.startswith(f"FAILED: {proof}: ") and out.count("\n") == 1, out
    assert message in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--leaf-hash", "abc"], "'abc' is not a leaf hash: give SHA-256(0x00 || event bytes)"),
        ([], "one of the arguments --event --leaf-hash is required"),
        (["--event", "nowhere.json"], "cannot read nowhere.json: No such file or directory"),
    ],
)
def test_verify_proof_usage_errors(
    argv: list[str],
    message: str,
    data: Path,
    proven: tuple[Path, Path],
    capsys: pytest.CaptureFixture[str],
) -> None:
    proof, _ = proven
    try:
        code = main(
            ["log", "verify-proof", str(proof), "--key", str(data / "keys/log.vkey"), *argv]
        )
    except SystemExit as exit_:  # argparse's own errors
        code = int(str(exit_.code))
    assert code == 2 and message in capsys.readouterr().err
