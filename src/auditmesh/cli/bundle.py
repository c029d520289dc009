"""`auditmesh bundle create | verify`: evidence for an auditor, checked offline."""

from __future__ import annotations

import argparse
from pathlib import Path

from auditmesh.analysis.query import ORDERS, Query, QueryError
from auditmesh.analysis.query import run as run_query
from auditmesh.cli import add_data_arg, verifier_key, writable_file, write_output
from auditmesh.cli.main import UserError
from auditmesh.cli.query import add_filter_args, query_of
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.evidence import EvidenceError, evidence_bundle
from auditmesh.ledger.bundle import verify_bundle
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Verifier
from auditmesh.store.base import StoreError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("bundle", help="create and verify evidence bundles")
    bundle_sub = parser.add_subparsers(title="bundle commands", metavar="COMMAND", required=True)

    create = bundle_sub.add_parser(
        "create",
        help="events selected by a query, with proofs, in one zip file",
        description=(
            "The events `auditmesh query` selects with the same filters, --order and --limit "
            "(the newest first unless --order says otherwise), each with its inclusion proof "
            "against the latest signed checkpoint; the bundle lists them in log order."
        ),
    )
    add_data_arg(create)
    create.add_argument("-o", "--output", type=Path, required=True, help="bundle file (.zip)")
    add_filter_args(create)
    create.add_argument(
        "--order",
        choices=ORDERS,
        default="newest",
        help="which events --limit keeps, as in query (default newest)",
    )
    create.add_argument(
        "--limit", type=int, default=1000, help="at most this many events (default 1000)"
    )
    create.set_defaults(func=run_create)

    verify = bundle_sub.add_parser(
        "verify",
        help="check a bundle offline",
        description=(
            "Check an evidence bundle offline, without the server: its checkpoint must be "
            "signed by --key, and each event in it must be proven included in the log at that "
            "checkpoint. Exit 0 only when all of it holds; otherwise one line says what failed."
        ),
    )
    verify.add_argument(
        "file", type=Path, metavar="FILE", help="the bundle (.zip), as `bundle create` wrote it"
    )
    verify.add_argument(
        "--key",
        required=True,
        type=verifier_key,
        help="the log's verifier key you trust, or a file holding it (e.g. DATA/keys/log.vkey)",
    )
    verify.set_defaults(func=run_verify)


def run_create(args: argparse.Namespace) -> int:
    query = query_of(args)
    writable_file(args.output, "-o")
    try:
        ledger = open_ledger(args.data, create=False)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    try:
        latest = ledger.store.latest_checkpoint()
        if latest is None:
            raise UserError("the log has no checkpoint yet; run the server for a second")
        selected, later = _checkpointed(ledger, query, latest.size)
        if not selected:
            raise UserError(
                f"{later} event(s) match, none yet under a signed checkpoint; the server signs "
                "one each second while it runs"
                if later
                else "no event matches that selection (`auditmesh query` with the same filters "
                "shows what there is)"
            )
        try:
            bundle, size = evidence_bundle(ledger, selected)
        except EvidenceError as exc:
            raise UserError(str(exc)) from None
        write_output(args.output, bundle, "-o")
    finally:
        ledger.close()
    print(
        f"wrote {len(selected)} event(s) with proofs against tree size {size} "
        f"to {args.output}\nan auditor checks it with: auditmesh bundle verify {args.output} "
        f"--key '{ledger.vkey}'"
    )
    return 0


def _checkpointed(ledger: Ledger, query: Query, size: int) -> tuple[list[int], int]:
    """Indices of the first `query.limit` matching events, in the query's order, that the
    checkpoint of `size` covers (what can be proven), sorted into log order; and how many
    matched that it does not cover yet."""
    selected: list[int] = []
    later = 0
    cursor: str | None = None
    while True:
        try:
            page = run_query(ledger.store, query, cursor)
        except QueryError as exc:
            raise UserError(str(exc)) from None
        for index, _ in page.rows:
            if index >= size:
                later += 1
            elif len(selected) < query.limit:
                selected.append(index)
        cursor = page.next
        if cursor is None or len(selected) >= query.limit:
            return sorted(selected), later


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
    if report.unverified:
        print(
            f"not checked: {', '.join(report.unverified)} (explanations for the reader; only "
            "the entries, their proofs and the checkpoint are evidence)"
        )
    return 0
