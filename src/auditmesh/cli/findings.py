"""`auditmesh findings`: who misbehaves, with the evidence, optionally as bundles."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from auditmesh.analysis.findings import Finding, detect
from auditmesh.cli.main import UserError
from auditmesh.cli.timespec import parse_time_ns
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import decode_event
from auditmesh.ledger.bundle import BundleEntry, create_bundle
from auditmesh.ledger.tlogproof import TlogProof
from auditmesh.store.base import StoreError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "findings",
        help="who misbehaves: error bursts, floods, new callers, denials, refused handshakes",
        description=(
            "Compare each identity and edge with its own baseline (the earliest quarter of the "
            "range) and report what stands out, with the events that show it."
        ),
    )
    parser.add_argument("--data", type=Path, default=Path("auditmesh-data"), help="data directory")
    parser.add_argument("--since", help="15m, 2h, 7d or an RFC 3339 time (default: all)")
    parser.add_argument("--format", choices=("table", "json"), default="table")
    parser.add_argument(
        "--bundle", type=Path, metavar="DIR", help="write one evidence bundle per finding here"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    since = parse_time_ns(args.since, time.time_ns()) if args.since else None
    try:
        ledger = open_ledger(args.data, create=False)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    try:
        events = [
            (index, event)
            for index, raw in ledger.store.entries(0, ledger.store.size())
            if (event := decode_event(raw)) and (since is None or event.time_ns >= since)
        ]
        findings = detect(events)
        if args.bundle is not None:
            _bundles(ledger, findings, args.bundle)
    finally:
        ledger.close()
    if args.format == "json":
        print(json.dumps([f.to_json() for f in findings], indent=2))
        return 0
    table = Table(title=f"{len(findings)} finding(s) over {len(events)} events")
    for column in ("severity", "kind", "responsible", "at", "evidence", "what"):
        table.add_column(column, overflow="fold")
    for f in findings:
        table.add_row(f.severity, f.kind, f.responsible, f.destination, str(f.count), f.summary)
    Console().print(table)
    return 0


def _bundles(ledger: Ledger, findings: list[Finding], directory: Path) -> None:
    latest = ledger.store.latest_checkpoint()
    if latest is None:
        raise UserError("the log has no checkpoint yet; run the server for a second")
    checkpoint = ledger.log.open_checkpoint(latest.note)
    directory.mkdir(parents=True, exist_ok=True)
    for number, finding in enumerate(findings, start=1):
        entries = []
        for index in finding.indices:
            if index >= latest.size:
                continue
            data = next(d for _, d in ledger.store.entries(index, index + 1))
            proof = tuple(ledger.log.inclusion_proof(index, latest.size))
            entries.append(BundleEntry(index, data, TlogProof(index, proof, latest.note)))
        if entries:
            path = directory / f"{number:02d}-{finding.kind}.zip"
            path.write_bytes(create_bundle(entries, latest.note, checkpoint, ledger.vkey))
    print(f"evidence bundles in {directory}/ (check with `auditmesh bundle verify FILE --key …`)")
