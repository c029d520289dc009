"""Evidence bundles: created from a query, verified offline, tampering refused."""

from __future__ import annotations

import io
import json
import shutil
import tracemalloc
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from auditmesh.cli.main import main
from auditmesh.collector import entry_of
from auditmesh.datadir import open_ledger
from auditmesh.events import AuditEvent
from auditmesh.evidence import evidence_bundle
from auditmesh.ledger.bundle import verify_bundle
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Verifier, generate_key
from tests.conftest import fill, generate


@pytest.fixture
def bundle(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[Path, str]:
    ledger = open_ledger(tmp_path / "data", origin="test.auditmesh/log")
    fill(ledger, generate(400))
    vkey = ledger.vkey
    ledger.close()
    out = tmp_path / "evidence.zip"
    code = main(
        ["bundle", "create", "--data", str(tmp_path / "data"), "--status", "403"] + ["-o", str(out)]
    )
    assert code == 0
    assert "auditmesh bundle verify" in capsys.readouterr().out
    return out, vkey


def verify(path: Path, key: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = main(["bundle", "verify", str(path), "--key", key])
    return code, capsys.readouterr().out


def test_bundle_verifies_offline(
    bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, vkey = bundle
    names = zipfile.ZipFile(path).namelist()
    assert {"README.md", "manifest.json", "checkpoint", "log.vkey"} <= set(names)
    code, out = verify(path, vkey, capsys)
    assert code == 0 and "proven included" in out
    assert "not checked: README.md (explanations for the reader" in out  # a lying README


def rewrite(path: Path, change: dict[str, bytes]) -> None:
    original = zipfile.ZipFile(path)
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as out:
        for name in original.namelist():
            out.writestr(name, change.get(name, original.read(name)))
    path.write_bytes(buffer.getvalue())


def test_edited_event_fails(bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, vkey = bundle
    entry = next(n for n in zipfile.ZipFile(path).namelist() if n.startswith("entries/"))
    data = zipfile.ZipFile(path).read(entry)
    rewrite(path, {entry: data.replace(b'"status":403', b'"status":200')})
    code, out = verify(path, vkey, capsys)
    assert code == 1 and "FAILED" in out and entry in out


def forge(path: Path, mutate: Callable[[dict[str, Any]], None], extra: dict[str, bytes]) -> None:
    manifest = json.loads(zipfile.ZipFile(path).read("manifest.json"))
    mutate(manifest)
    rewrite(path, {"manifest.json": json.dumps(manifest).encode()})
    with zipfile.ZipFile(path, "a") as archive, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns when a name is written twice: wanted
        for name, data in extra.items():
            archive.writestr(name, data)


@pytest.mark.parametrize(
    ("mutate", "extra", "message"),
    [
        # the first entry listed twice, the second one's file left unlisted and edited
        (lambda m: m["entries"].__setitem__(1, m["entries"][0]), {}, "in log order, each once"),
        (lambda m: None, {"entries/99999.json": b"{}"}, "which its manifest does not list"),
        (lambda m: m["entries"][0].__setitem__("entry", "entries/x.json"), {}, "names"),
        (lambda m: None, {"README.md": b"trust me"}, "README.md more than once"),
        # claims nothing checks, beside what is proven
        (lambda m: m.__setitem__("approved_by", "the CISO"), {}, "approved_by"),
        (lambda m: m["entries"][0].__setitem__("index_in_ticket", 7), {}, "index_in_ticket"),
    ],
    ids=[
        "listed-twice",
        "unlisted-entry",
        "renamed",
        "duplicate-member",
        "unknown-field",
        "unknown-row-field",
    ],
)
def test_a_bundle_holding_more_or_other_than_it_lists_fails(
    bundle: tuple[Path, str],
    capsys: pytest.CaptureFixture[str],
    mutate: Callable[[dict[str, Any]], None],
    extra: dict[str, bytes],
    message: str,
) -> None:
    path, vkey = bundle
    forge(path, mutate, extra)
    code, out = verify(path, vkey, capsys)
    assert code == 1 and "FAILED" in out and message in out, out


def test_wrong_key_fails(bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]) -> None:
    path, _ = bundle
    _, other = generate_key("test.auditmesh/log")
    code, out = verify(path, other, capsys)
    assert code == 1 and "FAILED" in out


def test_not_a_bundle(
    tmp_path: Path, bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    junk = tmp_path / "junk.zip"
    junk.write_bytes(b"hello")
    code, out = verify(junk, bundle[1], capsys)
    assert code == 1 and "not an evidence bundle" in out


def test_bad_key_text_is_a_usage_error(
    bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_:  # argparse's usage error, from cli.verifier_key
        main(["bundle", "verify", str(bundle[0]), "--key", "nonsense"])
    assert exit_.value.code == 2
    assert "'nonsense' is not a verifier key" in capsys.readouterr().err
    assert main(["bundle", "verify", str(bundle[0]), "--key", "a+b+c"]) == 2
    assert "bad verifier key" in capsys.readouterr().err


def partly_checkpointed(data: Path, events: list[AuditEvent], covered: int) -> None:
    """A ledger of `events` whose only checkpoint covers the first `covered` of them."""
    ledger = open_ledger(data, origin="test.auditmesh/log")
    fill(ledger, events[:covered])
    ledger.log.append([entry_of(e) for e in events[covered:]])
    ledger.close()


def test_bundle_create_selects_like_query(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The filters are query's: a service name for --dest, a status class.
    events = generate(400)
    partly_checkpointed(tmp_path / "data", events, 300)
    data = ["--data", str(tmp_path / "data")]
    out = tmp_path / "payments-4xx.zip"
    args = ["bundle", "create", *data, "--dest", "payments", "--status", "4xx", "-o", str(out)]
    assert main(args) == 0
    wanted = [
        i
        for i, e in enumerate(events[:300])
        if e.destination is not None
        and e.destination.service == "payments"
        and e.http is not None
        and e.http.status is not None
        and 400 <= e.http.status < 500
    ]
    assert wanted and f"wrote {len(wanted)} event(s)" in capsys.readouterr().out
    manifest = json.loads(zipfile.ZipFile(out).read("manifest.json"))
    assert [row["index"] for row in manifest["entries"]] == wanted


def test_bundle_create_limit_keeps_the_events_query_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # `query --limit 5` shows the 5 newest; the bundle proves those (the covered ones), listed
    # in log order. --order oldest keeps the 5 oldest instead.
    events = generate(400)
    partly_checkpointed(tmp_path / "data", events, 300)
    covered = [(e.time_ns, i) for i, e in enumerate(events[:300]) if e.kind == "http"]
    out = tmp_path / "b.zip"
    create = ["bundle", "create", "--data", str(tmp_path / "data"), "--kind", "http", "-o"]

    def bundled(*extra: str) -> list[int]:
        assert main([*create, str(out), "--limit", "5", *extra]) == 0
        capsys.readouterr()
        manifest = json.loads(zipfile.ZipFile(out).read("manifest.json"))
        return [row["index"] for row in manifest["entries"]]

    assert bundled() == sorted(i for _, i in sorted(covered, reverse=True)[:5])
    assert bundled("--order", "oldest") == sorted(i for _, i in sorted(covered)[:5])


def test_bundle_create_says_why_nothing_was_selected(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    events = generate(50)
    partly_checkpointed(tmp_path / "data", events, 10)
    create = ["bundle", "create", "--data", str(tmp_path / "data"), "-o", str(tmp_path / "b.zip")]
    assert main([*create, "--trace", "0" * 32]) == 2
    assert "no event matches that selection" in capsys.readouterr().err
    trace = next(e.trace.trace_id for e in events[10:] if e.trace is not None)
    assert main([*create, "--trace", trace]) == 2
    assert "none yet under a signed checkpoint" in capsys.readouterr().err


def _members(path: Path) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {name: archive.read(name) for name in archive.namelist()}


def _zip(members: dict[str, bytes], method: int = zipfile.ZIP_DEFLATED) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", method) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


def _patch_central(blob: bytes, name: str, offset: int, value: bytes) -> bytes:
    """Overwrite the field at `offset` of `name`'s central directory header (APPNOTE 4.3.12)."""
    out = bytearray(blob)
    at = out.find(b"PK\x01\x02")
    while at >= 0:
        length = int.from_bytes(out[at + 28 : at + 30], "little")
        if out[at + 46 : at + 46 + length] == name.encode():
            out[at + offset : at + offset + len(value)] = value
        at = out.find(b"PK\x01\x02", at + 4)
    return bytes(out)


def _damaged(members: dict[str, bytes], how: str) -> bytes:
    if how == "bad-crc":  # a byte of manifest.json changed, stored: its CRC-32 no longer holds
        blob = _zip(members, zipfile.ZIP_STORED)
        at = blob.index(b'"format"') + 2
        return blob[:at] + bytes([blob[at] ^ 1]) + blob[at + 1 :]
    if how == "encrypted":  # general purpose flag bit 0 (APPNOTE 4.4.4)
        return _patch_central(_zip(members, zipfile.ZIP_STORED), "manifest.json", 8, b"\x01\x00")
    if how == "unknown-method":  # compression method 99 (AE-x encryption)
        return _patch_central(_zip(members, zipfile.ZIP_STORED), "manifest.json", 10, b"c\x00")
    if how == "bad-deflate":  # the deflate stream of manifest.json is not one
        blob = _zip(members)
        at = blob.index(b"manifest.json") + len("manifest.json")
        return blob[:at] + b"\xff\xff" + blob[at + 2 :]
    if how == "version":  # version needed to extract 25.5 (APPNOTE 4.4.3)
        return _patch_central(_zip(members), "manifest.json", 6, b"\xff\x00")
    if how == "bad-offset":  # the end record places the central directory past itself
        out = bytearray(_zip(members))
        end = out.rindex(b"PK\x05\x06") + 16  # offset of the central directory
        out[end : end + 4] = (int.from_bytes(out[end : end + 4], "little") + 9999).to_bytes(
            4, "little"
        )
        return bytes(out)
    if how == "bzip2":  # zipfile inflates bzip2 and LZMA members without bounding the output
        return _zip(members, zipfile.ZIP_BZIP2)
    if how == "lying-size":  # a small declared size before a 2 MiB stream: a zip bomb's shape
        padded = {**members, "manifest.json": members["manifest.json"] + b" " * (1 << 21)}
        size = len(members["manifest.json"]).to_bytes(4, "little")
        return _patch_central(_zip(padded), "manifest.json", 24, size)
    assert how == "no-vkey"
    return _zip({name: data for name, data in members.items() if name != "log.vkey"})


@pytest.mark.parametrize(
    ("how", "message"),
    [
        ("bad-crc", "cannot be read"),
        ("encrypted", "cannot be read"),
        ("unknown-method", "compression method"),
        ("bad-deflate", "cannot be read"),
        ("version", "not an evidence bundle"),
        ("bad-offset", "cannot be read"),
        ("bzip2", "compression method"),
        ("lying-size", "cannot be read"),
        ("no-vkey", "the bundle lacks log.vkey"),
    ],
)
def test_a_damaged_zip_is_refused_not_a_crash(
    bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str], how: str, message: str
) -> None:
    path, vkey = bundle
    path.write_bytes(_damaged(_members(path), how))
    code, out = verify(path, vkey, capsys)
    assert code == 1 and "FAILED" in out and message in out, out


def test_a_lying_member_size_does_not_inflate_past_it(bundle: tuple[Path, str]) -> None:
    # 32 MiB of deflated spaces (about 32 KiB) behind a declared size of a few hundred bytes:
    # zipfile's read() inflated all of it before comparing, whatever the size limit said.
    path, vkey = bundle
    members = _members(path)
    padded = {**members, "manifest.json": members["manifest.json"] + b" " * (32 << 20)}
    size = len(members["manifest.json"]).to_bytes(4, "little")
    blob = _patch_central(_zip(padded), "manifest.json", 24, size)
    del padded
    tracemalloc.start()
    try:
        with pytest.raises(VerificationError, match="cannot be read"):
            verify_bundle(blob, Verifier.from_vkey(vkey))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 4 << 20, peak


def test_a_bundled_key_that_is_not_text_is_only_another_key(
    bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    path, vkey = bundle
    path.write_bytes(_zip({**_members(path), "log.vkey": b"\xff\xfe"}))
    code, out = verify(path, vkey, capsys)
    assert code == 0 and "the key inside the bundle differs from --key" in out, out


def test_the_origin_is_the_keys_not_the_manifests(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The log's key (name test.auditmesh/log) also signed a log with another origin: `log
    # verify` and `log verify-proof` refuse its checkpoints under that key (C2SP
    # tlog-checkpoint: the origin is the expected log's), and so must bundle verify, whose
    # manifest (unsigned, in the bundle) named the other origin as the one to expect.
    first = open_ledger(tmp_path / "a", origin="test.auditmesh/log")
    vkey = first.vkey
    first.close()
    (tmp_path / "b").mkdir()
    shutil.copytree(tmp_path / "a" / "keys", tmp_path / "b" / "keys")
    other = open_ledger(tmp_path / "b", origin="other.auditmesh/log")
    fill(other, generate(20))
    data, _ = evidence_bundle(other, [3])
    other.close()
    path = tmp_path / "other.zip"
    path.write_bytes(data)
    code, out = verify(path, vkey, capsys)
    assert code == 1 and "FAILED" in out and "other.auditmesh/log" in out, out
    # and a manifest naming another origin than its checkpoint is refused as such
    ok = tmp_path / "ok.zip"
    first = open_ledger(tmp_path / "a")
    fill(first, generate(20))
    ok.write_bytes(evidence_bundle(first, [3])[0])
    first.close()
    forge(ok, lambda m: m.__setitem__("origin", "x"), {})
    code, out = verify(ok, vkey, capsys)
    assert code == 1 and "manifest.json" in out and "'x'" in out, out


def test_a_manifest_naming_a_member_twice_is_refused(
    bundle: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Python's json keeps the last "origin", other parsers the first: a reader of the
    # manifest could see another log than the one checked.
    path, vkey = bundle
    raw = zipfile.ZipFile(path).read("manifest.json")
    assert verify(path, vkey, capsys)[0] == 0
    manifest = json.loads(raw)
    doubled = json.dumps(manifest)[:-1] + ', "origin": ' + json.dumps(manifest["origin"]) + "}"
    rewrite(path, {"manifest.json": doubled.encode()})
    code, out = verify(path, vkey, capsys)
    assert code == 1 and "FAILED" in out and "names the member 'origin' twice" in out, out
