"""Evidence bundles: created from a query, verified offline, tampering refused."""

from __future__ import annotations

import io
import json
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
from auditmesh.ledger.note import generate_key
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
    ],
    ids=["listed-twice", "unlisted-entry", "renamed", "duplicate-member"],
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
