"""`auditmesh log checkpoint | prove | verify | verify-proof`: the ledger from an auditor's
seat."""

from __future__ import annotations

import argparse
import functools
import os
import shlex
import sys
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path

import msgspec
from rich.console import Console
from rich.markup import escape
from rich.progress import Progress

from auditmesh.cli import (
    DEFAULT_DATA,
    add_data_arg,
    progress_bar,
    server_url,
    verifier_key,
    writable_file,
    write_output,
)
from auditmesh.cli.main import UserError
from auditmesh.client import RemoteLog, ServerError
from auditmesh.datadir import Ledger, open_ledger, open_reader
from auditmesh.events import EventError, canonical_bytes, decode_event, parse_event_id
from auditmesh.jsonmembers import repeated_member
from auditmesh.ledger import merkle
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import UntrustedNote, Verifier
from auditmesh.ledger.tlogproof import ProofMismatch, TlogProof, verify_tlog_proof_hash
from auditmesh.ledger.verify import LogReader, OpenReader, WrongKey, verify_log
from auditmesh.store.base import StoreError, StoreReader, event_key
from auditmesh.store.indexcheck import check_indexes


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("log", help="inspect, prove and verify the ledger")
    log_sub = parser.add_subparsers(title="log commands", metavar="COMMAND", required=True)

    cp = log_sub.add_parser("checkpoint", help="print the latest signed checkpoint")
    _add_source(cp)
    cp.set_defaults(func=run_checkpoint)

    prove = log_sub.add_parser("prove", help="write a C2SP tlog-proof for one event")
    prove.add_argument(
        "event_id",
        metavar="EVENT",
        help="the event's id (a UUID), or its index in the log (as `auditmesh query` shows it)",
    )
    add_data_arg(prove)
    prove.add_argument("-o", "--output", type=Path, help="write the proof here (default stdout)")
    prove.add_argument(
        "--event-out",
        type=Path,
        metavar="FILE",
        help="also write the event's canonical JSON here: the exact bytes the proof proves "
        "(RFC 8785; a tlog-proof does not carry them), as `log verify-proof --event` takes them",
    )
    prove.set_defaults(func=run_prove)

    check = log_sub.add_parser(
        "verify-proof",
        help="check one C2SP tlog-proof offline",
        description=(
            "Check a C2SP tlog-proof (as `auditmesh log prove`, GET /v1/proof/inclusion or the "
            'console\'s "Save as C2SP tlog-proof" give it) offline: its checkpoint must be '
            "signed by --key, and its inclusion proof must lead from the event's leaf hash "
            "(RFC 9162 §2.1.1) to that checkpoint's root. A proof does not carry the event: "
            "give it with --event, or its leaf hash with --leaf-hash. Exit 0 only when both "
            "hold; otherwise one line says what failed."
        ),
    )
    check.add_argument("proof", type=Path, metavar="PROOF", help="the .tlog-proof file")
    check.add_argument(
        "--key",
        required=True,
        type=verifier_key,
        help="the log's verifier key you trust, or a file holding it (obtained from the log's "
        "operator, not from whoever handed you the proof)",
    )
    leaf = check.add_mutually_exclusive_group(required=True)
    leaf.add_argument(
        "--event",
        type=Path,
        metavar="FILE",
        help="the event's JSON: as `log prove --event-out` or an evidence bundle's entries/N.json "
        "write it, or as GET /v1/events/ID answers (its `event`); its RFC 8785 canonical form "
        "is hashed",
    )
    leaf.add_argument(
        "--leaf-hash",
        type=_leaf_hash,
        metavar="HEX",
        help="the entry's leaf hash instead, SHA-256(0x00 || the event's canonical bytes), in hex",
    )
    check.set_defaults(func=run_verify_proof)

    verify = log_sub.add_parser(
        "verify",
        help="recompute the whole log and check every checkpoint",
        description=(
            "Recompute every leaf from the stored events, rebuild the tree, check every "
            "checkpoint's signature and root. Exit 0 only when everything verifies."
        ),
    )
    _add_source(verify)
    verify.add_argument(
        "--key",
        type=verifier_key,
        help="verifier key to trust, or a file holding it (default: the data directory's "
        "keys/log.vkey; required with --url)",
    )
    verify.add_argument(
        "--jobs",
        type=int,
        metavar="N",
        help="processes, this one included, for a ledger read with --data only (default: one "
        f"per CPU it may use, {len(os.sched_getaffinity(0))} here); a --url log is verified in one",
    )
    verify.add_argument(
        "--indexes",
        action="store_true",
        help="also re-derive every event's query columns from its canonical bytes and compare "
        "(a local ledger, in --jobs processes; it decodes every event, so it takes several "
        "times longer)",
    )
    verify.add_argument(
        "--trusted",
        type=Path,
        action="append",
        default=[],
        metavar="FILE",
        help="a checkpoint you saved before (`auditmesh log checkpoint > FILE`); the log must "
        "still hold its entries with the same root, or it was emptied, cut or rewritten since "
        "(repeatable)",
    )
    verify.add_argument("--quiet", action="store_true", help="no progress bar")
    verify.set_defaults(func=run_verify)


def _add_source(parser: argparse.ArgumentParser) -> None:
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--data", type=Path, help="data directory (default ./auditmesh-data)")
    group.add_argument(
        "--url", type=server_url, help="a running server, e.g. http://127.0.0.1:7600"
    )


def _open(data: Path | None) -> Ledger:
    try:
        return open_ledger(data or DEFAULT_DATA, create=False)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def run_checkpoint(args: argparse.Namespace) -> int:
    if args.url:
        try:
            remote = RemoteLog(args.url)
        except ServerError as exc:
            raise UserError(str(exc)) from None
        sys.stdout.write(remote.checkpoint_note.decode(errors="replace"))
        remote.close()
        return 0
    ledger = _open(args.data)
    try:
        latest = ledger.store.latest_checkpoint()
        if latest is None:
            raise UserError("the log has no checkpoint yet (the server signs one each second)")
        sys.stdout.write(latest.note.decode())
    finally:
        ledger.close()
    return 0


def _index_of(ledger: Ledger, event: str) -> int:
    """The log index of EVENT: an event id (in any form `parse_event_id` takes, as the API
    does), or an index as `auditmesh query` shows it."""
    number = event.strip()
    try:
        event_id = parse_event_id(event)
    except ValueError as exc:
        if not (number.isascii() and number.isdigit()):
            raise UserError(
                f"{exc}; or the event's index in the log, as `auditmesh query` shows it"
            ) from None
    else:
        stored = ledger.store.event_by_id(event_key(event_id))
        if stored is None:
            raise UserError(f"no event {event_id} in {ledger.data_dir}")
        return stored.index
    index = int(number)
    if index >= ledger.log.size:
        raise UserError(f"no entry {index}: the log in {ledger.data_dir} has {ledger.log.size}")
    return index


def run_prove(args: argparse.Namespace) -> int:
    if args.event_out is not None and args.event_out == args.output:
        raise UserError("give the proof (-o) and the event (--event-out) different files")
    if args.output is not None:  # checked before the work, as bundle create's -o
        writable_file(args.output, "-o")
    if args.event_out is not None:
        writable_file(args.event_out, "--event-out")
    ledger = _open(args.data)
    try:
        index = _index_of(ledger, args.event_id)
        latest = ledger.store.latest_checkpoint()
        if latest is None or latest.size <= index:
            raise UserError(
                f"event {args.event_id} (index {index}) is not covered by a checkpoint "
                "yet; the server signs one each second while it runs"
            )
        proof = ledger.log.inclusion_proof(index, latest.size)
        text = TlogProof(index, tuple(proof), latest.note, None).encode()
        ((_, entry),) = ledger.store.entries(index, index + 1)
        vkey = ledger.vkey
    finally:
        ledger.close()
    if args.event_out:
        write_output(args.event_out, entry, "--event-out")
    if args.output:
        write_output(args.output, text, "-o")
        print(
            f"wrote the proof of index {index} at tree size {latest.size} to {args.output}"
            + (f", the event to {args.event_out}" if args.event_out else "")
        )
    else:
        sys.stdout.write(text.decode())
    print(_verify_proof_command(args.output, args.event_out, vkey, entry), file=sys.stderr)
    return 0


def _verify_proof_command(proof: Path | None, event: Path | None, vkey: str, entry: bytes) -> str:
    """The command that checks the proof `log prove` wrote, to paste as it is: with the
    event file when one was written, else with the leaf hash of `entry`."""
    words = ["auditmesh", "log", "verify-proof", str(proof or "FILE"), "--key", vkey]
    words += ["--event", str(event)] if event else ["--leaf-hash", merkle.leaf_hash(entry).hex()]
    where = "" if proof else ", once saved as FILE,"
    also = "" if event else " (or write the event too with --event-out FILE, and give --event FILE)"
    return f"check it offline{where} with: {shlex.join(words)}{also}"


def _leaf_hash(value: str) -> bytes:
    """`--leaf-hash`: a SHA-256 hash in hex."""
    try:
        raw = bytes.fromhex(value)
    except ValueError:
        raw = b""
    if len(raw) != merkle.HASH_SIZE:
        raise argparse.ArgumentTypeError(
            f"{value!r} is not a leaf hash: give SHA-256(0x00 || event bytes) as 64 hex digits"
        )
    return raw


@dataclass(frozen=True, slots=True)
class _Leaf:
    """What `verify-proof` hashes, named for its messages; `unread` says why a file's bytes
    were hashed as they are rather than as an event's canonical form."""

    hash: bytes
    name: str
    unread: str | None = None


def _event_leaf(path: Path) -> _Leaf:
    """The leaf of the event in `path`: the RFC 8785 bytes of the event it holds (exact
    canonical bytes, another rendering of the same JSON, or an API answer with the event in
    its `event` member); the file's bytes as they are if it holds no event this version
    reads (the ledger's entries are opaque bytes: an event of a later version still proves)."""
    raw = _read(path)
    try:
        event = decode_event(raw)
    except EventError as exc:
        inner = _event_member(raw)
        try:
            if inner is None:
                raise exc from None
            event = decode_event(inner)
        except EventError as error:
            unread = f"{path} holds no audit event ({error}), so its bytes were hashed as they are"
            return _Leaf(merkle.leaf_hash(raw), f"the bytes of {path}", unread)
    data = canonical_bytes(event)
    if data != raw and (twice := repeated_member(raw)) is not None:
        # JSON parsers keep one of the two (RFC 8259 §4): what was proven is not what a
        # reader of the file may see
        raise UserError(
            f"{path} names the member {twice!r} twice, so it does not say one event: give "
            "the event's exact bytes (`auditmesh log prove --event-out FILE`)"
        )
    form = "" if data == raw else " (in RFC 8785 canonical form)"
    return _Leaf(merkle.leaf_hash(data), f"the event {event.id} in {path}{form}")


def _event_member(raw: bytes) -> bytes | None:
    """The `event` of a JSON object that has one, as GET /v1/events/ID answers and as each
    item of `auditmesh query --format json` shows it."""
    try:
        body = msgspec.json.decode(raw)
    except msgspec.MsgspecError:
        return None
    if isinstance(body, dict) and isinstance(event := body.get("event"), dict):
        return msgspec.json.encode(event)
    return None


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {path}: {exc.strerror}") from None


def run_verify_proof(args: argparse.Namespace) -> int:
    """C2SP tlog-proof §"Verifying a tlog proof": the leaf hash (step 1) here, the rest by
    verify_tlog_proof_hash; each failure is one line naming what failed."""
    console = Console(stderr=True)
    try:
        verifier = Verifier.from_vkey(args.key.strip())
    except ValueError as exc:
        raise UserError(f"bad verifier key: {exc}") from None
    if args.event:
        leaf = _event_leaf(args.event)
    else:
        leaf = _Leaf(args.leaf_hash, f"the leaf {args.leaf_hash.hex()}")
    data = _read(args.proof)
    where = str(args.proof)
    try:
        proof = TlogProof.parse(data)
    except ValueError as exc:
        zipped = data.startswith(b"PK\x03\x04")  # a zip's local file header
        hint = " (it is a zip: `auditmesh bundle verify` checks evidence bundles)" if zipped else ""
        _failed(console, f"{where}: not a C2SP tlog-proof: {exc}{hint}")
        return 1
    key = f"{verifier.name}+{verifier.key_hash:08x}"
    try:
        checkpoint = verify_tlog_proof_hash(proof, leaf.hash, verifier)
    except UntrustedNote as exc:
        _failed(
            console,
            f"{where}: the proof's checkpoint is signed by {', '.join(exc.signers) or 'no key'}, "
            f"not by the given key {key}. Either that key is not this log's, or the proof is "
            "another log's, or its checkpoint was re-signed by another key: check the key "
            "against a copy of the log's key you obtained independently, never against one "
            "that came with the proof",
        )
        return 1
    except ProofMismatch as exc:
        unread = f"; {leaf.unread}" if leaf.unread else ""
        _failed(
            console,
            f"{where}: the proof does not match {leaf.name} (one of them was altered, or they "
            f"are of different entries): {exc}{unread}",
        )
        return 1
    except VerificationError as exc:
        _failed(
            console,
            f"{where}: the proof's checkpoint (line {proof.checkpoint_line}) does not verify: "
            f"{exc}",
        )
        return 1
    print(
        f"OK: {leaf.name} is entry {proof.index} of {checkpoint.origin} at tree size "
        f"{checkpoint.size}; checkpoint signed by {key}, root {checkpoint.root_hash.hex()}"
    )
    return 0


def _read_trusted(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise UserError(f"--trusted {path}: cannot read it: {exc.strerror or exc}") from None


def run_verify(args: argparse.Namespace) -> int:
    console = Console(stderr=True)
    with ExitStack() as stack:
        reader: LogReader
        open_again: OpenReader | None = None  # a remote log is verified in this process
        jobs = _jobs(args)
        if args.url and args.indexes:  # refused before a whole remote log is read
            raise UserError("--indexes reads the store's columns: use it with --data")
        if args.url:
            try:
                remote = RemoteLog(args.url)
            except ServerError as exc:
                raise UserError(str(exc)) from None
            stack.callback(remote.close)
            reader, where = remote, args.url
            if not args.key:
                raise UserError("with --url, give the verifier key to trust with --key")
            vkey = args.key
        else:
            try:
                ledger = open_ledger(args.data or DEFAULT_DATA, create=False, scan=True)
            except StoreError as exc:
                _failed(console, f"cannot read the log: {exc}")
                return 1
            stack.callback(ledger.close)
            reader, where = StoreReader(ledger.store), str(ledger.data_dir)
            open_again = functools.partial(open_reader, ledger.data_dir)
            vkey = args.key or ledger.vkey
        try:
            verifier = Verifier.from_vkey(vkey.strip())
        except ValueError as exc:
            raise UserError(f"bad verifier key: {exc}") from None
        trusted = [_read_trusted(path) for path in args.trusted]
        progress = progress_bar("verifying", enabled=not args.quiet)
        failure = None
        with progress:  # transient: a failure's message is not followed by a stale bar
            task = progress.add_task("verify", total=None)
            try:
                report = verify_log(
                    reader,
                    verifier,
                    jobs=jobs,
                    open_reader=open_again,
                    progress=lambda done, total: progress.update(task, completed=done, total=total),
                    trusted=trusted,
                )
            except WrongKey as exc:
                failure = _wrong_key(exc, given=args.key is not None)
            except VerificationError as exc:
                failure = str(exc)
            except (ServerError, StoreError, ValueError, OSError) as exc:
                failure = f"cannot read the log: {exc}"
            except Exception as exc:  # a damaged database file surfaces as sqlite3 errors
                failure = f"{type(exc).__name__}: {exc}"
        if failure is not None:
            _failed(console, f"{where}: {failure}")
            return 1
        if not args.url and (rows := ledger.store.row_count()) != report.size:
            _failed(
                console,
                f"{where}: the events table holds {rows} rows but the log has {report.size} "
                "entries: rows outside the log (an index below 0?) would show in queries with no "
                "proof behind them",
            )
            return 1
        if args.indexes:
            try:
                checked = _check_indexes(ledger.data_dir, report.size, jobs, progress)
            except VerificationError as exc:
                _failed(console, f"{where}: {exc}")
                return 1
    latest = report.latest
    root = "(no checkpoint)" if latest is None else latest.root_hash.hex()
    verified = (
        f"OK: {report.size} entries recomputed, {report.checkpoints} checkpoint(s) verified "
        f"with {verifier.name}"
        + (f" and {report.trusted} you trusted from before" if report.trusted else "")
    )
    # The Merkle log covers the canonical bytes only: say whether the columns queries select
    # by (derived from them, stored beside them) were checked too.
    if args.indexes:
        print(
            f"{verified}, the query columns of {checked} entries match their canonical bytes; "
            f"latest root {root}"
        )
    elif args.url:
        print(
            f"{verified}; latest root {root}; the server's query index columns are not served, "
            "so not checked (`log verify --indexes` at its data directory checks them)"
        )
    else:
        print(
            f"{verified}; latest root {root}; query index columns not checked (--indexes "
            "re-derives and compares them)"
        )
    if report.unsigned:
        first = report.size - report.unsigned
        console.print(
            f"[yellow]note[/]: entries {first}..{report.size - 1} are not covered by a signed "
            "checkpoint yet (a running server signs one each second; if it has stopped, they "
            "were appended after its last checkpoint, or a later checkpoint was removed)"
        )
    return 0


def _jobs(args: argparse.Namespace) -> int:
    """--jobs, or one per CPU this process may use; None unless given, so that it can be
    refused with --url (a remote log is read through one client, in this process)."""
    if args.url and args.jobs is not None:
        raise UserError(
            "--jobs applies to a local ledger (--data) only: a --url log is verified in one process"
        )
    jobs: int = len(os.sched_getaffinity(0)) if args.jobs is None else args.jobs
    if jobs < 1:
        raise UserError("--jobs: give at least 1")
    return jobs


def _wrong_key(exc: WrongKey, *, given: bool) -> str:
    """No checkpoint is signed by the key: name it and the signers, as `name+hash` (C2SP
    signed-note: a signature line names its key), and say what to do."""
    signers = f"{exc.where} is signed by {', '.join(exc.signers)}"
    if given:
        return (  # either the key is another log's, or every checkpoint was re-signed
            f"no checkpoint is signed by the given key {exc.key}; {signers}. Either that key "
            "is not this log's, or every checkpoint was re-signed by another key: check the "
            "key against a copy of the log's key you obtained independently, never against "
            "the copy in the log's own data directory"
        )
    return (
        f"no checkpoint is signed by the data directory's key {exc.key} (keys/log.vkey); "
        f"{signers}. The key file or the checkpoints were replaced: give a copy of the log's "
        "key you trust with --key"
    )


def _failed(console: Console, text: str) -> None:
    """FAILED and `text` on one line at any width (soft wrap: a terminal wraps it, a pipe or
    a log file keeps one line); `text` is printed as is, not read as rich markup."""
    console.print(f"[bold red]FAILED[/]: {escape(text)}", soft_wrap=True, highlight=False)


def _check_indexes(data_dir: Path, size: int, jobs: int, progress: Progress) -> int:
    with progress:
        task = progress.add_task("indexes", total=size)
        return check_indexes(
            data_dir,
            size,
            jobs=jobs,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
