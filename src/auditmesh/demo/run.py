"""`auditmesh demo`, the main job on one machine: a shop mesh behind real sidecars, traffic
with trouble in it, and the answers — edges, denials, findings, a verified ledger.

Layout of the demo's data directory (everything real, nothing simulated):
    DIR/               the audit server's ledger, keys and mesh CA
    DIR/mesh/NAME/     each sidecar's config, identity, spool and log
    DIR/policies/      the Istio policies every sidecar enforces
    DIR/DEMO           says the directory is the demo's, for the next run to replace
"""

from __future__ import annotations

import os
import shutil
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from auditmesh.datadir import DataDirBusy, writer_lock
from auditmesh.demo.apps import App, RunClock, RunningApp, serve
from auditmesh.demo.scenario import CALLS, NAMESPACE, POLICIES, SERVED, SERVICES
from auditmesh.demo.traffic import Drivers
from auditmesh.events import AuditEvent, decode_event
from auditmesh.meshproc import LocalMesh, address
from auditmesh.serverproc import free_port
from auditmesh.store.sqlite import SQLiteStore


class DemoError(Exception):
    """The demo cannot run here; the message says why."""


@dataclass
class Topology:
    inbound: dict[str, int]  # service -> its sidecar's inbound (mTLS) port
    outbound: dict[str, dict[str, int]]  # service -> dependency -> local outbound port
    apps: dict[str, int]  # service -> app port (behind its sidecar)


DEMO_MARK = "DEMO"
"""A file the demo puts in its data directory: only a directory holding it (or all of an
earlier demo's files) is one the next demo may replace."""
_MARK_TEXT = (
    "Made by `auditmesh demo`: the next demo run with this --data replaces the directory.\n"
)
_EARLIER_DEMO = ("ledger.db", "mesh", "policies", "denied-call.tlog-proof")


def prepare(data: Path) -> None:
    """An empty `data` directory for a new run: a directory an earlier demo made is
    replaced; anything else, above all a ledger a server writes to, is left alone."""
    if data.exists() and not data.is_dir():
        raise DemoError(f"{data} is not a directory: pick another --data")
    names = set(os.listdir(data)) if data.exists() else set()
    if names:
        if not _made_by_demo(data, names):
            what = "a ledger" if "ledger.db" in names else "files"
            raise DemoError(
                f"{data} holds {what} that no demo made; the demo starts from an empty "
                "directory and would delete them: pick another --data"
            )
        try:
            # a demo still serving (`make demo` in another terminal)
            with writer_lock(data, "auditmesh demo (checking that no demo serves)"):
                pass
        except DataDirBusy as exc:
            raise DemoError(str(exc)) from None
        shutil.rmtree(data)
    data.mkdir(parents=True, exist_ok=True)
    (data / DEMO_MARK).write_text(_MARK_TEXT)


def _made_by_demo(data: Path, names: set[str]) -> bool:
    """The mark, a regular file named exactly so (not a `demo/` folder on a file system
    that ignores case) holding the demo's words; or every file an earlier demo left."""
    mark = data / DEMO_MARK
    if DEMO_MARK in names and mark.is_file() and not mark.is_symlink():
        try:
            return mark.read_text() == _MARK_TEXT
        except (OSError, UnicodeDecodeError):
            return False
    return names.issuperset(_EARLIER_DEMO)


def start_mesh(data: Path, clock: RunClock) -> tuple[LocalMesh, Topology, list[RunningApp]]:
    mesh = LocalMesh.start(data)
    policies = mesh.data / "policies"
    policies.mkdir()
    (policies / "shop.yaml").write_text(POLICIES)
    inbound = {name: free_port() for name in SERVED}
    outbound = {name: {dep: free_port() for dep in CALLS[name]} for name in SERVICES}
    servers = [serve(App(name, clock, outbound[name])) for name in SERVED]
    apps = {running.app.name: running.port for running in servers}
    try:
        for name in SERVICES:
            config: dict[str, Any] = {
                "policies": str(policies),
                "audit": {"flush_ms": 100},
                "outbound": [
                    {
                        "service": dep,
                        "listen": address(port),
                        "upstream": address(inbound[dep]),
                        "identity": str(mesh.identity(NAMESPACE, dep)),
                    }
                    for dep, port in outbound[name].items()
                ],
            }
            if name in inbound:
                config["inbound"] = {
                    "listen": address(inbound[name]),
                    "app": address(apps[name]),
                }
            mesh.start_sidecar(name, NAMESPACE, config)
    except BaseException:
        mesh.stop()
        for running in servers:
            running.close()
        raise
    return mesh, Topology(inbound, outbound, apps), servers


def drive(console: Console, mesh: LocalMesh, topology: Topology, clock: RunClock) -> Counter[str]:
    drivers = Drivers(
        clock,
        frontend_port=topology.inbound["frontend"],
        batch_ports=topology.outbound["batch-report"],
        intruder_target=topology.inbound["orders"],
        bundle=mesh.bundle_path,
    )
    drivers.start()
    columns = (
        TextColumn("   traffic"),
        BarColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.description}"),
    )
    try:
        with Progress(*columns, console=console) as progress:
            task = progress.add_task("", total=1.0)

            def show(fraction: float) -> None:
                counts = drivers.counts
                progress.update(
                    task,
                    completed=fraction,
                    description=f"{sum(counts.values())} calls, {counts['batch denied']} denied",
                )

            while clock.fraction() < 1.0:
                show(clock.fraction())
                time.sleep(0.25)
            drivers.stop.set()
            drivers.join()  # the calls in flight count too: the bar ends on the final tally
            show(1.0)
    finally:
        drivers.stop.set()
        drivers.join()
    return drivers.counts


def settle(data: Path, quiet_s: float = 1.5, timeout_s: float = 30) -> int:
    """Wait until the sidecars' emitters have delivered: the ledger stops growing."""
    deadline = time.monotonic() + timeout_s
    size, since = -1, time.monotonic()
    while time.monotonic() < deadline:
        current = ledger_size(data)
        if current != size:
            size, since = current, time.monotonic()
        elif time.monotonic() - since >= quiet_s:
            break
        time.sleep(0.2)
    return size


def ledger_size(data: Path) -> int:
    store = SQLiteStore(data, create=False)
    try:
        return store.size()
    finally:
        store.close()


def load_events(data: Path) -> list[tuple[int, AuditEvent]]:
    store = SQLiteStore(data, create=False)
    try:
        return [(index, decode_event(raw)) for index, raw in store.entries(0, store.size())]
    finally:
        store.close()
