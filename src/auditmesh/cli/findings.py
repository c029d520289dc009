"""`auditmesh findings`: who misbehaves, with the evidence, optionally as bundles.

The I/O side of analysis/findings.py: read the events of a data directory (all of them, or
those in `--since`/`--until`) and run the pure `detect`, or ask a running server for the
same (`--url`, with the API token, as `auditmesh query` does: GET /v1/findings, audited
there); render a table or JSON, and with `--bundle DIR` (local only) write one evidence
bundle per finding (the format `auditmesh bundle verify` checks offline, plus
`finding.json` saying what the events show). Never writes the ledger.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import sys
import time
import zipfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table
from rich.text import Text

from auditmesh.analysis.findings import Finding, detect
from auditmesh.cli import output_dir, write_output
from auditmesh.cli.main import UserError
from auditmesh.cli.query import add_source, api_client, api_get, local_ledger, window_params
from auditmesh.cli.timespec import TIME_HELP, parse_window_ns
from auditmesh.datadir import Ledger
from auditmesh.events import AuditEvent, decode_event
from auditmesh.evidence import evidence_bundle
from auditmesh.identity.spiffe import short_name
from auditmesh.store.base import EventFilter

SPIFFE_ID = re.compile(r"spiffe://[A-Za-z0-9._/-]+")  # as a finding's summary quotes one


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "findings",
        help="who misbehaves: error bursts, floods, new callers, denials, refused handshakes",
        description=(
            "Compare each identity and edge with its own baseline (the earliest quarter of the "
            "range) and report what stands out, with the events that show it."
        ),
    )
    parser.add_argument("--since", help=f"{TIME_HELP} (default: all)")
    parser.add_argument("--until", help=f"{TIME_HELP} (default: now)")
    parser.add_argument(
        "--format", choices=("table", "json"), default="table", help="output format"
    )
    parser.add_argument(
        "--bundle",
        type=Path,
        metavar="DIR",
        help="write one evidence bundle per finding here (with --data only)",
    )
    add_source(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    now = time.time_ns()
    since, until = parse_window_ns(args.since, args.until, now)
    if args.bundle is not None:  # before the work: a path that cannot hold the bundles
        if args.url:
            raise UserError(
                "--bundle reads the ledger itself: give --data DIR (the server's data "
                "directory) instead of --url"
            )
        output_dir(args.bundle, "--bundle")
    if args.url:
        with api_client(args) as client:
            body = api_get(client, "/v1/findings", window_params(since, until))
        shown: list[dict[str, Any]] = body["findings"]
        findings = [Finding.from_json(item) for item in shown]
        events: int = body["events"]
    else:
        with local_ledger(args.data) as ledger:
            read = load(ledger, since, until)
            findings = detect(read, start_ns=since, end_ns=until)
            if args.bundle is not None:
                _bundles(ledger, findings, args.bundle)
        shown, events = [f.to_json() for f in findings], len(read)
    if args.format == "json":
        print(json.dumps(shown, indent=2))
        return 0
    Console().print(table(findings, events))
    return 0


def table(findings: list[Finding], events: int) -> Table:
    """The findings as a table that fits a terminal of 80 columns: SPIFFE IDs as the short
    names the service graph uses (`orders.shop`; --format json keeps them whole), and the
    columns of short values never folded."""
    names = _short_names(findings)

    def shorten(text: str) -> str:
        return SPIFFE_ID.sub(lambda match: names.get(match.group(), match.group()), text)

    result = Table(
        title=f"{len(findings)} finding(s) over {events} events",
        caption="SPIFFE IDs as SERVICE-ACCOUNT.NAMESPACE; --format json has them whole"
        if names
        else None,
        box=box.SIMPLE_HEAD,
        pad_edge=False,
        collapse_padding=True,
        show_edge=False,
    )
    result.add_column("finding", no_wrap=True)
    result.add_column("responsible", overflow="fold", min_width=12)
    result.add_column("UTC", no_wrap=True)
    result.add_column("events", no_wrap=True, justify="right")
    result.add_column("what", overflow="fold", ratio=1)
    for f in findings:
        start, end = _clock(f.start_ns), _clock(f.end_ns)
        result.add_row(  # Text: what the events named is never read as rich markup
            f"{f.kind}\n{f.severity}",
            Text(f"{shorten(f.responsible)}\nat {shorten(f.destination)}"),
            start if start == end else f"{start}–\n{end}",
            str(f.count),
            Text(shorten(f.summary)),
        )
    return result


def _short_names(findings: list[Finding]) -> dict[str, str]:
    """Each SPIFFE ID the findings name → its short name, for the IDs of the trust domain
    most of them are in (strictly: a tie shortens none). An ID of another trust domain
    stays whole (a foreign `…/ns/shop/sa/orders` must not read as the local orders.shop), as
    do two IDs that would share a short name."""
    ids = {
        i
        for f in findings
        for i in SPIFFE_ID.findall(f"{f.responsible} {f.destination} {f.summary}")
    }
    # the home domain is the one most IDs are in; with a tie there is none (all stay whole)
    top = Counter(_trust_domain(i) for i in ids).most_common(2)
    home = top[0][0] if len(top) == 1 or (top and top[0][1] > top[1][1]) else None
    names = {i: short_name(i) for i in ids if _trust_domain(i) == home}
    uses = Counter(names.values())
    return {i: name for i, name in names.items() if name != i and uses[name] == 1}


def _trust_domain(spiffe_id: str) -> str:
    return spiffe_id.removeprefix("spiffe://").partition("/")[0]


def load(ledger: Ledger, since: int | None, until: int | None) -> list[tuple[int, AuditEvent]]:
    """(index, event) pairs of the ledger in index order, within the bounds when given (the
    store's time index picks them, so a short window of a large ledger reads little)."""
    store = ledger.store
    size = store.size()
    if since is None and until is None:
        return [(index, decode_event(raw)) for index, raw in store.entries(0, size)]
    found = store.find(EventFilter(since_ns=since, until_ns=until, limit=max(size, 1)))
    return [(stored.index, decode_event(stored.data)) for stored in found]


def _clock(time_ns: int) -> str:
    return datetime.fromtimestamp(time_ns / 1e9, UTC).strftime("%H:%M:%S")


def _bundles(ledger: Ledger, findings: list[Finding], directory: Path) -> None:
    if not findings:
        print("no findings, so no evidence bundles", file=sys.stderr)
        return
    latest = ledger.store.latest_checkpoint()
    if latest is None:
        raise UserError("the log has no checkpoint yet; run the server for a second")
    written = 0
    for number, finding in enumerate(findings, start=1):
        # events newer than the latest checkpoint have nothing to be proven against yet
        proven = sorted({i for i in finding.evidence if i < latest.size})
        if not proven:
            print(
                f"finding {number} ({finding.kind}): its events are newer than the latest "
                "checkpoint; no bundle",
                file=sys.stderr,
            )
            continue
        bundle, _ = evidence_bundle(ledger, proven)
        path = directory / f"{number:02d}-{finding.kind}.zip"
        write_output(path, _with_finding(bundle, finding, proven), "--bundle")
        written += 1
    print(
        f"{written} evidence bundle(s) in {directory}/; an auditor checks each with: "
        f"auditmesh bundle verify FILE --key '{ledger.vkey}'",
        file=sys.stderr,
    )


def _with_finding(bundle: bytes, finding: Finding, proven: list[int]) -> bytes:
    """The bundle plus finding.json: what these events show. Verification ignores it (it
    proves nothing by itself); the events it names are the proven entries beside it."""
    described = {**finding.to_json(), "proven_indices": proven}
    buffer = io.BytesIO(bundle)
    with zipfile.ZipFile(buffer, "a", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("finding.json", json.dumps(described, indent=2) + "\n")
    return buffer.getvalue()
