"""`auditmesh bundle create | verify`: evidence for an auditor, checked offline."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from auditmesh.cli import add_data_arg, verifier_key
from auditmesh.cli.main import UserError
from auditmesh.cli.timespec import parse_time_ns
from auditmesh.datadir import open_ledger
from auditmesh.evidence import EvidenceError, evidence_bundle
from auditmesh.ledger.bundle import verify_bundle
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Verifier
from auditmesh.store.base import EventFilter, StoreError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("bundle", help="create and verify evidence bundles")
    bundle_sub = parser.add_subparsers(title="bundle commands", metavar="COMMAND", required=True)

    create = bundle_sub.add_parser(
        "create", help="events selected by a query, with proofs, in one zip file"
    )
    add_data_arg(create)
    create.add_argument("-o", "--output", type=Path, required=True, help="bundle file (.zip)")
    create.add_argument("--source", help="caller SPIFFE ID")
    create.add_argument("--dest", help="callee SPIFFE ID")
    create.add_argument("--service", help="destination service name")
    create.add_argument("--status", type=int, help="HTTP status")
    create.add_argument("--trace", help="trace id (32 hex digits)")
    create.add_argument("--since", help="15m, 2h, 7d or an RFC 3339 time")
    create.add_argument("--until", help="15m, 2h, 7d or an RFC 3339 time")
    create.add_argument("--limit", type=int, default=1000, help="at most this many events")
    create.set_defaults(func=run_create)

    verify = bundle_sub.add_parser("verify", help="check a bundle offline")
    verify.add_argument("file", type=Path, metavar="FILE")
    verify.add_argument(
        "--key",
        required=True,
        type=verifier_key,
        help="the log's verifier key you trust, or a file holding it (e.g. DATA/keys/log.vkey)",
    )
    verify.set_defaults(func=run_verify)


def run_create(args: argparse.Namespace) -> int:
    now = time.time_ns()
    where = EventFilter(
        source=args.source,
        dest=args.dest,
        service=args.service,
        status=args.status,
        trace_id=args.trace,
        since_ns=parse_time_ns(args.since, now) if args.since else None,
        until_ns=parse_time_ns(args.until, now) if args.until else None,
        limit=args.limit,
    )
    try:
        ledger = open_ledger(args.data, create=False)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    try:
        latest = ledger.store.latest_checkpoint()
        if latest is None:
            raise UserError("the log has no checkpoint yet; run the server for a second")
        selected = [e.index for e in ledger.store.find(where) if e.index < latest.size]
        if not selected:
            raise UserError("no checkpointed event matches that selection")
        try:
            bundle, size = evidence_bundle(ledger, selected)
        except EvidenceError as exc:
            raise UserError(str(exc)) from None
        args.output.write_bytes(bundle)
    finally:
        ledger.close()
    print(
        f"wrote {len(selected)} event(s) with proofs against tree size {size} "
        f"to {args.output}\nan auditor checks it with: auditmesh bundle verify {args.output} "
        f"--key '{ledger.vkey}'"
    )
    return 0


def run_verify(args: argparse.Namespace) -> int:
    try:
        verifier = Verifier.from_vkey(args.key.strip())
    except ValueError as exc:
        raise UserError(f"bad verifier key: {exc}") from None
    try:
        data = args.file.read_bytes()
    except OSError as exc:
        raise UserError(f"cannot read {args.file}: {exc.strerror}") from None
    try:
        report = verify_bundle(data, verifier)
    except VerificationError as exc:
        print(f"FAILED: {args.file}: {exc}")
        return 1
    print(
        f"OK: {len(report.indices)} event(s) proven included in {report.origin} "
        f"at tree size {report.tree_size}, checkpoint signed by {verifier.name}"
    )
    if not report.key_matches_bundled:
        print("note: the key inside the bundle differs from --key (the bundled one is ignored)")
    return 0
