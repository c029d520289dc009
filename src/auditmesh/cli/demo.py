"""`auditmesh demo`: the ledger's whole job on one machine, explained as it happens.

Starts a server on a fresh SQLite ledger, sends it a realistic stream of calls between
the services of a small shop, then shows a signed checkpoint, proves one event, verifies
the whole log, and shows that an edited event is caught.
"""

from __future__ import annotations

import argparse
import shutil
import sqlite3
import time
from pathlib import Path

import httpx
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from auditmesh.cli.main import UserError
from auditmesh.client import RemoteLog
from auditmesh.datadir import open_ledger
from auditmesh.events import encode_ndjson
from auditmesh.ledger.errors import VerificationError
from auditmesh.ledger.note import Verifier
from auditmesh.ledger.tlogproof import TlogProof, verify_tlog_proof
from auditmesh.ledger.verify import verify_log
from auditmesh.serverproc import ServerProcess
from auditmesh.simulate import TrafficGenerator
from auditmesh.store.base import StoreReader

BATCH = 500


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "demo",
        help="run the audit ledger end to end on this machine, explained step by step",
        description=__doc__,
    )
    parser.add_argument(
        "--data", type=Path, default=Path("demo-data"), help="fresh data directory (replaced)"
    )
    parser.add_argument("--events", type=int, default=20_000, help="how many calls to audit")
    parser.add_argument("--seed", type=int, default=7, help="seed of the traffic generator")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.events < 1:
        raise UserError("--events must be at least 1")
    console = Console(highlight=False)
    say = console.print
    if args.data.exists():
        if not (args.data / "ledger.db").exists():
            raise UserError(f"{args.data} exists and is not a demo ledger; pick another --data")
        shutil.rmtree(args.data)
    say("[bold]auditmesh demo[/]: a tamper-evident record of every call between services\n")
    with ServerProcess(args.data) as server:
        vkey = (args.data / "keys" / "log.vkey").read_text().strip()
        say(f"1. Started the audit server at {server.url} on a fresh SQLite ledger in {args.data}/")
        say(f"   It signs checkpoints with the key [cyan]{vkey}[/]\n")
        sent, denied_id = _send_traffic(console, server.url, args.events, args.seed)
        say(
            f"2. Sent {sent} audited calls between frontend, catalog, orders, payments and "
            "batch-report.\n   Each batch was acknowledged only after it was on disk.\n"
        )
        note = _wait_for_checkpoint(server.url, sent)
        say("3. The latest signed checkpoint (C2SP tlog-checkpoint in a signed note):")
        say(f"[dim]{note.decode().rstrip()}[/]")
        say("   Line 1 names the log, line 2 counts its entries, line 3 is the Merkle root.\n")
        proof_path = args.data / "denied-call.tlog-proof"
        _prove(console, server.url, denied_id, vkey, proof_path)
        _verify_remote(console, server.url, vkey)
    _tamper_copy(console, args.data, vkey)
    say("\n[bold]Try next[/]:")
    say(f"  auditmesh server --data {args.data}            # serve this ledger again")
    say(f"  auditmesh log verify --data {args.data}        # recompute everything")
    say(f"  auditmesh bundle create --data {args.data} --status 403 -o evidence.zip")
    say(f"  auditmesh bundle verify evidence.zip --key '{vkey}'")
    return 0


def _send_traffic(console: Console, url: str, count: int, seed: int) -> tuple[int, str]:
    generator = TrafficGenerator(seed=seed, start_ns=time.time_ns() - count * 2_000_000)
    denied_id = ""
    sent = 0
    with (
        httpx.Client(base_url=url, timeout=60) as client,
        Progress(
            TextColumn("   auditing calls"), BarColumn(), MofNCompleteColumn(), console=console
        ) as progress,
    ):
        task = progress.add_task("send", total=count)
        while sent < count:
            batch = list(generator.events(min(BATCH, count - sent)))
            for event in batch:
                if not denied_id and event.authz is not None and event.authz.decision == "deny":
                    denied_id = event.id
            response = client.post(
                "/v1/events",
                content=encode_ndjson(batch),
                headers={"content-type": "application/x-ndjson"},
            )
            if response.status_code != 200:
                raise UserError(f"the server refused a batch: {response.text}")
            sent += len(batch)
            progress.update(task, completed=sent)
    return sent, denied_id or batch[0].id


def _wait_for_checkpoint(url: str, size: int) -> bytes:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        response = httpx.get(url + "/log/checkpoint")
        if response.status_code == 200 and f"\n{size}\n".encode() in response.content:
            return response.content
        time.sleep(0.2)
    raise UserError("the server signed no checkpoint covering the demo traffic within 10 s")


def _prove(console: Console, url: str, event_id: str, vkey: str, path: Path) -> None:
    response = httpx.get(url + "/v1/events/" + event_id)
    event = response.json()
    proof_text = httpx.get(url + "/v1/proof/inclusion", params={"id": event_id}).content
    path.write_bytes(proof_text)
    proof = TlogProof.parse(proof_text)
    leaf = httpx.get(url + "/v1/events/" + event_id).json()
    data = _leaf_data(url, leaf["index"])
    checkpoint = verify_tlog_proof(proof, data, Verifier.from_vkey(vkey))
    http = event["event"]["http"]
    console.print(
        f"4. Proved one event: {event['event']['source']['service']} → "
        f"{event['event']['destination']['service']} {http['method']} {http['path']} "
        f"was [red]denied[/] ({event['event']['authz']['policy']})."
    )
    console.print(
        f"   It is entry {proof.index} of {checkpoint.size}; the proof ({len(proof.proof)} hashes) "
        f"is in {path} and checks against the signed root.\n"
    )


def _leaf_data(url: str, index: int) -> bytes:
    remote = RemoteLog(url)
    try:
        return next(data for _, data in remote.entries(index, index + 1))
    finally:
        remote.close()


def _verify_remote(console: Console, url: str, vkey: str) -> None:
    remote = RemoteLog(url)
    try:
        started = time.monotonic()
        report = verify_log(remote, Verifier.from_vkey(vkey))
        seconds = time.monotonic() - started
    finally:
        remote.close()
    console.print(
        f"5. Verified the whole log as an outside auditor would, over HTTP (C2SP tlog-tiles): "
        f"{report.size} entries recomputed and the signed root matches ({seconds:.1f} s).\n"
    )


def _tamper_copy(console: Console, data_dir: Path, vkey: str) -> None:
    copy = data_dir.parent / (data_dir.name + "-tampered")
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(data_dir, copy)
    with sqlite3.connect(copy / "ledger.db") as db:
        (data,) = db.execute("SELECT data FROM events WHERE idx = 42").fetchone()
        db.execute(
            "UPDATE events SET data = ? WHERE idx = 42",
            (bytes(data).replace(b'"status":', b'"status":2', 1),),
        )
    ledger = open_ledger(copy, create=False)
    try:
        verify_log(StoreReader(ledger.store), Verifier.from_vkey(vkey))
        console.print("[red]6. The edited copy verified — this should never happen[/]")
    except VerificationError as exc:
        console.print(
            f"6. Then we edited one stored event in a copy ({copy}/) and verified it again:\n"
            f"   [green]caught[/]: {exc.message} at {exc.where}"
        )
    finally:
        ledger.close()
        shutil.rmtree(copy, ignore_errors=True)
