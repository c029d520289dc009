"""`auditmesh demo`: the whole job on this machine, explained as it happens.

Starts the audit server on a fresh SQLite ledger with its mesh CA, enrolls five services
behind real mTLS sidecars with join tokens, drives traffic with trouble planted in it,
then shows the service graph, the denials and the findings, proves one denied call,
verifies the whole ledger as an outside auditor would, and shows an edit being caught.
"""

from __future__ import annotations

import argparse
import shutil
import signal
import sqlite3
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
from rich.console import Console
from rich.table import Table

from auditmesh.analysis.findings import detect
from auditmesh.analysis.trace import peer_name
from auditmesh.cli.main import UserError
from auditmesh.client import RemoteLog
from auditmesh.datadir import open_ledger
from auditmesh.demo.apps import RunClock
from auditmesh.demo.run import DemoError, drive, load_events, prepare, settle, start_mesh
from auditmesh.events import AuditEvent
from auditmesh.identity.spiffe import short_name
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Verifier
from auditmesh.ledger.tlogproof import TlogProof, verify_tlog_proof
from auditmesh.ledger.verify import verify_log
from auditmesh.store.base import StoreReader


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run a mesh of five services behind audited sidecars, with trouble in it",
        description=__doc__,
    )
    parser.add_argument(
        "--data",
        type=Path,
        default=Path("demo-data"),
        help="where the demo keeps its ledger, emptied at each run; a directory holding files "
        "no demo made is refused, never emptied",
    )
    parser.add_argument(
        "--duration", type=float, default=30.0, help="seconds of traffic, at least 5"
    )
    parser.add_argument(
        "--exit", action="store_true", help="stop at the end instead of serving until Ctrl-C"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.duration < 5:
        raise UserError("--duration must be at least 5 seconds")
    console = Console(highlight=False)
    say = console.print
    try:
        prepare(args.data)
    except DemoError as exc:
        raise UserError(str(exc)) from None
    say("[bold]auditmesh demo[/]: who called what, when, under which policy — provably\n")
    clock = RunClock(args.duration)
    mesh, topology, app_servers = start_mesh(args.data, clock)
    try:
        vkey = (args.data / "keys" / "log.vkey").read_text().strip()
        say(
            f"1. Audit server at {mesh.server.url} (ledger in {args.data}/), mesh CA for "
            f"{mesh.trust_domain}; sidecars enroll at {mesh.mesh_url}"
        )
        say(
            "   Five services, each behind its own mTLS sidecar, enrolled with one-time join "
            "tokens: frontend, catalog, orders, payments, batch-report."
        )
        say(
            "   Policies: payments accepts only orders; batch-report may only read catalog "
            "and orders exports; frontend is PERMISSIVE, everything else STRICT.\n"
        )
        clock.restart()
        say(
            f"2. Driving {args.duration:.0f} s of traffic: shoppers, the batch-report job, and "
            "trouble — a catalog error burst, batch-report hammering orders, denied calls to "
            "payments, a new caller, an intruder without a certificate."
        )
        counts = drive(console, mesh, topology, clock)
        size = settle(args.data)
        events = load_events(args.data)
        say(f"   Done: {sum(counts.values())} calls made; {size} audit events in the ledger.\n")
        _summary(console, events)
        _findings(console, events)
        _prove_denied(console, mesh.server.url, args.data, events, vkey)
        _verify(console, mesh.server.url, vkey, size)
        _tamper_copy(console, args.data, vkey)
        token = (args.data / "keys" / "api.token").read_text().strip()
        say(
            f"\n[bold]Web console[/]: {mesh.server.url}/  (log in with the API token {token})",
            soft_wrap=True,  # the token, whole, for copying
        )
        _try_next(console, args.data, vkey)
        if not args.exit:
            say(f"\nThe mesh keeps running (server {mesh.server.url}); Ctrl-C to stop.")
            _wait_for_interrupt()
    finally:
        mesh.stop()
        for app in app_servers:
            app.close()
    return 0


PROOF_FILE = "denied-call.tlog-proof"  # step 5's proof, C2SP tlog-proof
EVENT_FILE = "denied-call.json"  # the event it proves, its canonical bytes (the leaf data)


def _try_next(console: Console, data: Path, vkey: str) -> None:
    """Commands to paste: each on one line however narrow the terminal (soft wrap leaves
    the wrapping to it, so a copied line is the whole command)."""
    console.print("\n[bold]Try next[/]:")
    auditmesh = command_name()
    commands = [
        f"{auditmesh} findings --data {data}",
        f"{auditmesh} graph --data {data}",
        f"{auditmesh} query --data {data} --decision deny",
        f"{auditmesh} log verify --data {data}",
        f"{auditmesh} bundle create --data {data} --status 403 -o evidence.zip",
        f"{auditmesh} bundle verify evidence.zip --key '{vkey}'",
    ]
    if (data / PROOF_FILE).exists():
        commands.append(
            f"{auditmesh} log verify-proof {data / PROOF_FILE} --event {data / EVENT_FILE} "
            f"--key '{vkey}'"
        )
    for command in commands:
        console.print(f"  {command}", soft_wrap=True, markup=False)


def command_name() -> str:
    """How to type this very `auditmesh` in the user's shell: the bare name when PATH finds
    it (an activated venv), else its path, relative to the current directory when under it
    (`.venv/bin/auditmesh` after `make demo`)."""
    here = Path(sys.executable).parent / "auditmesh"
    found = shutil.which("auditmesh")
    if not here.exists() or (found is not None and Path(found).resolve() == here.resolve()):
        return "auditmesh"
    try:
        relative = here.absolute().relative_to(Path.cwd())
    except ValueError:
        return str(here)
    return str(relative) if relative.parent != Path() else f"./{relative}"


def _wait_for_interrupt() -> None:
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    try:
        while not stop.wait(0.5):
            pass
    except KeyboardInterrupt:
        pass


def _summary(console: Console, events: list[tuple[int, AuditEvent]]) -> None:
    edges: Counter[tuple[str, str]] = Counter()
    errors: Counter[tuple[str, str]] = Counter()
    denied: Counter[tuple[str, str]] = Counter()
    mtls: Counter[tuple[str, str]] = Counter()
    authn = 0
    for _, event in events:
        if event.kind == "authn" and event.outcome == "failure":
            authn += 1
        if event.direction != "inbound" or event.kind not in ("http", "tcp"):
            continue
        # named and counted as `auditmesh graph` does (analysis/rollup.py): a caller with no
        # name is "unknown", and a policy denial is counted as denied, not as failed
        source = (event.source.service if event.source else None) or "unknown"
        dest = (event.destination.service if event.destination else None) or "unknown"
        edge = (source, dest)
        edges[edge] += 1
        was_denied = event.authz is not None and event.authz.decision == "deny"
        errors[edge] += event.outcome == "failure" and not was_denied
        denied[edge] += was_denied
        mtls[edge] += event.tls is not None and event.tls.mutual
    table = Table(title="3. Service graph, from the inbound sidecars' audit events")
    for column in ("caller", "callee", "calls", "failed", "denied", "mTLS"):
        table.add_column(column, justify="right" if column not in ("caller", "callee") else "left")
    for edge, calls in sorted(edges.items()):
        table.add_row(
            edge[0],
            edge[1],
            str(calls),
            str(errors[edge]),
            f"[red]{denied[edge]}[/]" if denied[edge] else "0",
            f"{100 * mtls[edge] // calls}%",
        )
    console.print(table)
    console.print(f"   {authn} refused handshakes (authn failures) were audited too.\n")


def _findings(console: Console, events: list[tuple[int, AuditEvent]]) -> None:
    found = detect(events)
    table = Table(title=f"4. Findings: who misbehaves ({len(found)}), from `auditmesh findings`")
    for column in ("kind", "responsible", "at", "what"):
        table.add_column(column, overflow="fold")
    for finding in found:
        table.add_row(
            finding.kind, short_name(finding.responsible), finding.destination, finding.summary
        )
    console.print(table)
    console.print(
        "   Each names its events; `auditmesh findings --bundle DIR` exports the evidence.\n"
    )


def _prove_denied(
    console: Console, url: str, data: Path, events: list[tuple[int, AuditEvent]], vkey: str
) -> None:
    denied = next(
        (e for _, e in events if e.authz is not None and e.authz.decision == "deny"), None
    )
    if denied is None:
        console.print("5. (no denied call to prove)")
        return
    token_file = data / "keys" / "api.token"
    headers = (
        {"authorization": f"Bearer {token_file.read_text().strip()}"}
        if (token_file.exists())
        else {}
    )
    response = httpx.get(
        url + "/v1/proof/inclusion", params={"id": denied.id}, headers=headers, timeout=30
    )
    if response.status_code != 200:
        raise UserError(f"the server would not prove {denied.id}: {response.text}")
    proof = TlogProof.parse(response.content)
    remote = RemoteLog(url)
    try:
        leaf = next(d for _, d in remote.entries(proof.index, proof.index + 1))
    finally:
        remote.close()
    checkpoint = verify_tlog_proof(proof, leaf, Verifier.from_vkey(vkey))
    path = data / PROOF_FILE
    path.write_bytes(response.content)
    # the proof does not carry its event: the auditor needs it beside the proof
    (data / EVENT_FILE).write_bytes(leaf)
    caller = denied.source  # named by the identity it proved, as policies name it
    src = caller.identity if caller and caller.identity else peer_name(caller)
    http = denied.http
    what = f"{http.method} {http.path}" if http else denied.kind
    dest = peer_name(denied.destination)
    policy = denied.authz.policy if denied.authz and denied.authz.policy else "no policy named"
    console.print(f"5. Proved a denied call: {src} → {dest} {what}, denied by {policy}.")
    console.print(
        f"   Entry {proof.index} of {checkpoint.size}; {len(proof.proof)} hashes up to the signed "
        f"root; proof saved in {path}, the event in {data / EVENT_FILE}.\n"
    )


def _verify(console: Console, url: str, vkey: str, traffic: int) -> None:
    remote = RemoteLog(url)
    try:
        started = time.monotonic()
        report = verify_log(remote, Verifier.from_vkey(vkey))
    finally:
        remote.close()
    reads = report.size - traffic
    console.print(
        f"6. Verified the whole ledger as an outside auditor, over HTTP (C2SP tlog-tiles): "
        f"{report.size} entries recomputed, signed root matches "
        f"({time.monotonic() - started:.1f} s)."
        + (
            f" {reads} of them record reads of events after the traffic (the server audits "
            "those too, such as step 5's proof request)."
            if reads > 0
            else ""
        )
        + "\n"
    )


def _tamper_copy(console: Console, data: Path, vkey: str) -> None:
    copy = data.parent / (data.name + "-tampered")
    shutil.rmtree(copy, ignore_errors=True)
    copy.mkdir()
    for name in ("ledger.db", "ledger.db-wal", "ledger.db-shm", "keys"):
        source = data / name
        if source.is_dir():
            shutil.copytree(source, copy / name)
        elif source.exists():
            shutil.copy2(source, copy / name)
    with sqlite3.connect(copy / "ledger.db") as db:
        (raw,) = db.execute("SELECT data FROM events WHERE idx = 7").fetchone()
        edited = bytes(raw).replace(b'"outcome":"failure"', b'"outcome":"success"', 1)
        if edited == bytes(raw):
            edited = bytes(raw).replace(b'"kind":', b'"kind": ', 1)
        db.execute("UPDATE events SET data = ? WHERE idx = 7", (edited,))
    ledger = open_ledger(copy, create=False)
    try:
        verify_log(StoreReader(ledger.store), Verifier.from_vkey(vkey))
        console.print("[red]7. The edited copy verified — this should never happen[/]")
    except VerificationError as exc:
        console.print(
            "7. Then one stored event was edited in a copy of the ledger and verified again:\n"
            f"   [green]caught[/]: {exc.message} at {exc.where}"
        )
    finally:
        ledger.close()
        shutil.rmtree(copy, ignore_errors=True)
