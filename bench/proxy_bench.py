"""The sidecar proxy benchmark of issue 3: auditmesh's sidecar pair against an nginx pair.

Three systems run the same topology on loopback, one after the other:

    wrk ─► outbound proxy ══ mTLS, TLS 1.3, SVIDs of the mesh CA ══► inbound proxy ─► app

The app is one nginx instance answering `200 ok` for both. nginx: two instances with one worker
process each (templates in `bench/proxy/`): the outbound one originates mTLS with a client SVID
and verifies the server against the mesh CA over a keep-alive pool; the inbound one requires and
verifies a client certificate and writes a JSON access-log line per request. auditmesh: two
`auditmesh sidecar` processes enrolled with join tokens, auditing on, and the audit server.
The floor: two `bench.relay` processes, a bare uvloop TLS byte relay with the same certificates
and no HTTP, policy or audit at all: what any CPython proxy pays in this topology. The floor of
an auditing proxy: two `bench.audit_floor` processes, the relay plus request and response heads
parsed (httptools) and one `AuditEvent` built and written per request, on transport callbacks:
what any CPython design of the sidecar's data plane pays at least.

For each system: requests/s and p50/p99 latency (wrk --latency), and CPU microseconds per
request of each proxy (utime + stime from /proc/PID/stat, before and after the measured run,
divided by wrk's request count; the audit server's CPU separately). For auditmesh, every
event is counted in the ledger afterwards: two per request the app served (outbound + inbound).
The target (issue 3): the sidecars' CPU per request ≤ 1.5× nginx's. Nothing here asserts a
speed; the exit status is 1 only when the audit events do not add up (or nothing ran).

nginx and wrk are installed with apt-get when missing (root). Run alone:
`.venv/bin/python -m bench.proxy_bench [--quick]`; from `bench.run`: `proxy_section(quick)`.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import grp
import json
import os
import pwd
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import msgspec
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

import auditmesh
from auditmesh.identity.ca import CAPaths, MeshCA, init_ca
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.tokens import JoinTokens
from auditmesh.serverproc import ServerProcess, free_port
from auditmesh.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from bench.common import Figure

TEMPLATES = Path(__file__).resolve().parent / "proxy"
TD = "cluster.local"
NAMESPACE = "bench"
CLIENT_ID = SpiffeId.kubernetes(TD, NAMESPACE, "client")  # the caller: outbound proxy
APP_ID = SpiffeId.kubernetes(TD, NAMESPACE, "app")  # the callee: inbound proxy
APP_DNS = f"app.{NAMESPACE}.svc.cluster.local"  # the SNI the sidecar sends for service "app"
TARGET_RATIO = 1.5  # issue 3: sidecar CPU per request ≤ 1.5× nginx's
PROXIES = ("outbound", "inbound")
RELAY = "python relay"  # bench/relay.py: the floor of any CPython proxy in this topology
AUDIT_FLOOR = "audit floor"  # bench/audit_floor.py: + HTTP heads parsed, an event per request
CORE_FLOOR = "core floor"  # the same with auditmesh's sans-IO HTTP/1.1 core instead of httptools
SYSTEMS = ("nginx", "auditmesh", RELAY, AUDIT_FLOOR, CORE_FLOOR)
# Longer than the sidecar's request timeout (60 s by default): a request stuck in a sidecar
# still gets its event (an upstream_timeout failure) before the ledger is declared short.
DRAIN_TIMEOUT_S = 75.0
_T0 = time.monotonic()


class BenchError(RuntimeError):
    """The benchmark cannot run (tool missing, a process did not start); the message says why."""


@dataclass(frozen=True, slots=True)
class Load:
    threads: int = 1
    connections: int = 16
    duration_s: int = 15
    warmup_s: int = 3


QUICK = Load(duration_s=5, warmup_s=1)


@dataclass(frozen=True, slots=True)
class Wrk:
    requests: int
    seconds: float
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int  # non-2xx/3xx answers plus socket errors
    output: str


@dataclass(frozen=True, slots=True)
class AuditCount:
    """Ledger entries added by the measured run, against 2 × the requests the app served."""

    expected: int
    counted: int
    outbound: int
    inbound: int
    failures: dict[str, int]  # error.type → events with outcome "failure"
    other: int  # events that are not HTTP events of the measured path

    @property
    def ok(self) -> bool:
        return self.counted == self.expected and self.outbound == self.inbound and not self.other


@dataclass(frozen=True, slots=True)
class Result:
    system: str
    wrk: Wrk
    served: int  # requests the app answered during the measured run
    cpu_s: dict[str, float]  # role → CPU seconds over the measured run
    audit: AuditCount | None = None
    log_lines: dict[str, int] = field(default_factory=dict)  # nginx access-log lines per proxy

    def us_per_request(self, *roles: str) -> float:
        return sum(self.cpu_s[r] for r in roles) * 1e6 / max(self.wrk.requests, 1)

    def total_us(self) -> float:
        """Both proxies and, for auditmesh, the audit server: the whole cost of the trail."""
        return self.us_per_request(*PROXIES, *(r for r in self.cpu_s if r == "audit server"))


# -- processes --------------------------------------------------------------------------


def progress(message: str) -> None:
    print(f"  [{time.monotonic() - _T0:6.1f}s] {message}", flush=True)


def _stat_fields(pid: int) -> list[bytes] | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].split()
    except OSError:
        return None


def cpu_seconds(pids: Sequence[int]) -> float:
    """utime + stime of the processes (stat(5) fields 14 and 15), in seconds."""
    ticks = 0
    for pid in pids:
        fields = _stat_fields(pid)
        if fields is not None:
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            fields = _stat_fields(int(name))
            if fields is not None and int(fields[1]) == pid:
                found.append(int(name))
    return found


class Child:
    """A process in a session of its own, so stopping it stops everything it started."""

    def __init__(self, name: str, argv: Sequence[str], log: Path) -> None:
        self.name = name
        self.log = log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pid(self) -> int:
        return self.proc.pid

    def tree(self) -> list[int]:
        return [self.pid, *children(self.pid)]

    def check(self) -> None:
        if self.proc.poll() is not None:
            raise BenchError(f"{self.name} exited ({self.proc.returncode}):\n{self.tail()}")

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log.read_text(errors="replace")[-chars:]
        except OSError:
            return ""

    def stop(self, sig: signal.Signals = signal.SIGTERM, timeout_s: float = 15.0) -> None:
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.pid, sig)
            try:
                self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                pass
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.pid, signal.SIGKILL)  # whatever is left of the group
        if self.proc.poll() is None:
            self.proc.wait()


def wait_port(port: int, child: Child, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        child.check()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise BenchError(f"{child.name} never listened on port {port}:\n{child.tail()}")


def get(url: str, timeout_s: float = 5.0) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        body: bytes = response.read()
        return body


def wait_ok(url: str, children_: Sequence[Child], timeout_s: float = 20.0) -> None:
    """One request through the pair answers `ok` (retried while the pair comes up)."""
    deadline = time.monotonic() + timeout_s
    problem = ""
    while time.monotonic() < deadline:
        for child in children_:
            child.check()
        try:
            body = get(url)
            if body == b"ok":
                return
            problem = f"answered {body[:200]!r}"
        except OSError as exc:
            problem = str(exc)
        time.sleep(0.2)
    logs = "\n".join(f"--- {c.name}:\n{c.tail(1500)}" for c in children_)
    raise BenchError(f"no `ok` through {url}: {problem}\n{logs}")


# -- tools ------------------------------------------------------------------------------


def ensure_tools() -> tuple[str, str]:
    """Paths of nginx and wrk, installed with apt-get when missing (idempotent)."""

    def find() -> tuple[str | None, str | None]:
        nginx = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/usr/local/sbin")
        return nginx, shutil.which("wrk")

    nginx, wrk = find()
    if nginx and wrk:
        return nginx, wrk
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise BenchError("nginx and wrk are needed: run as root on Debian, or install them")
    progress("installing nginx and wrk with apt-get")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "-q", "nginx", "wrk"]
    if subprocess.run(install, env=env, capture_output=True).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], env=env, capture_output=True)
        done = subprocess.run(install, env=env, capture_output=True, text=True)
        if done.returncode != 0:
            raise BenchError(f"apt-get install nginx wrk failed:\n{done.stderr[-2000:]}")
    nginx, wrk = find()
    if not (nginx and wrk):
        raise BenchError("apt-get installed nginx and wrk but they are not on PATH")
    return nginx, wrk


def versions(nginx: str, wrk: str) -> tuple[str, str]:
    nginx_v = subprocess.run([nginx, "-v"], capture_output=True, text=True).stderr.strip()
    wrk_v = subprocess.run([wrk, "-v"], capture_output=True, text=True).stdout.splitlines()
    return nginx_v.removeprefix("nginx version: "), (wrk_v[0].split(" Copyright")[0] or "wrk")


# -- certificates -----------------------------------------------------------------------


def _csr(key: ec.EllipticCurvePrivateKey) -> bytes:
    csr = x509.CertificateSigningRequestBuilder().subject_name(x509.Name([]))
    return csr.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def write_nginx_certs(data: Path, certs: Path) -> None:
    """SVIDs of the mesh CA for nginx: client.pem (CLIENT_ID), server.pem (APP_ID + APP_DNS).

    The client SVID comes from `MeshCA.issue_svid` as is. nginx's `proxy_ssl_verify` checks a
    DNS name, not a URI SAN, so the server SVID is the one `issue_svid` makes with a DNS SAN
    added, re-signed with the CA key (X509-SVID §2: exactly one URI SAN, other SANs allowed).
    """
    ca = MeshCA.load(data)
    now = datetime.now(UTC)
    certs.mkdir(parents=True, exist_ok=True)
    (certs / "ca.pem").write_bytes(ca.trust_bundle())
    client_key = ec.generate_private_key(ec.SECP256R1())
    (certs / "client.pem").write_bytes(ca.issue_svid(_csr(client_key), CLIENT_ID, now=now))
    (certs / "client-key.pem").write_bytes(_key_pem(client_key))

    server_key = ec.generate_private_key(ec.SECP256R1())
    svid = x509.load_pem_x509_certificate(ca.issue_svid(_csr(server_key), APP_ID, now=now))
    builder = (
        x509.CertificateBuilder()
        .subject_name(svid.subject)
        .issuer_name(svid.issuer)
        .public_key(server_key.public_key())
        .serial_number(svid.serial_number)
        .not_valid_before(svid.not_valid_before_utc)
        .not_valid_after(svid.not_valid_after_utc)
    )
    for ext in svid.extensions:
        value = ext.value
        if isinstance(value, x509.SubjectAlternativeName):
            value = x509.SubjectAlternativeName([*value, x509.DNSName(APP_DNS)])
        builder = builder.add_extension(value, critical=ext.critical)
    ca_key = serialization.load_pem_private_key(CAPaths.under(data).private_key.read_bytes(), None)
    assert isinstance(ca_key, ec.EllipticCurvePrivateKey)
    server_pem = builder.sign(ca_key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)
    (certs / "server.pem").write_bytes(server_pem)
    (certs / "server-key.pem").write_bytes(_key_pem(server_key))
    for key_file in ("client-key.pem", "server-key.pem"):
        (certs / key_file).chmod(0o600)


# -- nginx ------------------------------------------------------------------------------


def _user_line() -> str:
    """As root, the workers run as nobody (Debian has no group `nobody`: use nobody's own)."""
    if os.geteuid() != 0:
        return ""
    nobody = pwd.getpwnam("nobody")
    return f"user nobody {grp.getgrgid(nobody.pw_gid).gr_name};"


def start_nginx(binary: str, name: str, work: Path, values: dict[str, str]) -> Child:
    """One nginx instance from `bench/proxy/{name}.conf.in` inside `nginx.conf.in`."""
    directory = work / f"nginx-{name}"
    directory.mkdir()
    directory.chmod(0o755)  # the worker (nobody) reaches its temp directories
    values = {**values, "DIR": str(directory), "USER": _user_line()}
    server = _fill((TEMPLATES / f"{name}.conf.in").read_text(), values)
    conf = _fill((TEMPLATES / "nginx.conf.in").read_text(), {**values, "SERVER": server})
    (directory / "nginx.conf").write_text(conf)
    argv = [binary, "-p", str(directory), "-c", str(directory / "nginx.conf")]
    return Child(f"nginx {name}", [*argv, "-e", str(directory / "error.log")], directory / "log")


def _fill(template: str, values: dict[str, str]) -> str:
    text = re.sub(r"@@(\w+)@@", lambda m: values[m[1]], template)
    return text


def app_requests(port: int) -> int:
    """The app's request counter (stub_status; the status request itself counts as one)."""
    text = get(f"http://127.0.0.1:{port}/nginx_status").decode()
    return int(text.splitlines()[2].split()[2])


def count_log_lines(path: Path, uri: str) -> int:
    needle = f'"uri":"{uri}"'
    with open(path, encoding="utf-8", errors="replace") as f:
        return sum(needle in line for line in f)


# -- wrk --------------------------------------------------------------------------------

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0}


def run_wrk(wrk: str, url: str, load: Load, seconds: int) -> Wrk:
    argv = [wrk, f"-t{load.threads}", f"-c{load.connections}", f"-d{seconds}s", "--latency"]
    done = subprocess.run(
        [*argv, "--timeout", "5s", url], capture_output=True, text=True, timeout=seconds + 60
    )
    out = done.stdout
    if done.returncode != 0:
        raise BenchError(f"wrk failed ({done.returncode}): {done.stderr}{out}")
    return parse_wrk(out)


def parse_wrk(out: str) -> Wrk:
    def latency(percent: str) -> float:
        match = re.search(rf"^\s+{percent}%\s+([\d.]+)(us|ms|s|m)\s*$", out, re.M)
        if match is None:
            raise BenchError(f"no {percent}% latency in wrk's output:\n{out}")
        return float(match[1]) * _UNITS_MS[match[2]]

    total = re.search(r"(\d+) requests in ([\d.]+)(us|ms|s|m),", out)
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if total is None or rate is None:
        raise BenchError(f"cannot read wrk's output:\n{out}")
    errors = sum(int(n) for n in re.findall(r"Non-2xx or 3xx responses: (\d+)", out))
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out
    )
    if socket_errors is not None:
        errors += sum(int(n) for n in socket_errors.groups())
    return Wrk(
        requests=int(total[1]),
        seconds=float(total[2]) * _UNITS_MS[total[3]] / 1000,
        rps=float(rate[1]),
        p50_ms=latency("50"),
        p99_ms=latency("99"),
        errors=errors,
        output=out,
    )


# -- one system -------------------------------------------------------------------------


@dataclass
class Mesh:
    """What both systems share: tools, the work directory, the CA, the app."""

    nginx: str
    wrk: str
    work: Path
    data: Path  # the audit server's data directory (holds the mesh CA)
    certs: Path
    app_port: int
    app: Child | None = None


def measure(
    mesh: Mesh,
    system: str,
    entry_port: int,
    roles: dict[str, Callable[[], list[int]]],
    load: Load,
    *,
    settle: Callable[[], None] = lambda: None,
    drain: Callable[[int], None] = lambda served: None,
) -> tuple[Wrk, int, dict[str, float]]:
    """Warm up on /warmup, then the measured run on /; CPU seconds of each role over it.

    `settle` runs before the first CPU reading (the audit trail of the warm-up has landed);
    `drain(served)` after the run and before the last reading (the run's audit trail has).
    """
    base = f"http://127.0.0.1:{entry_port}"
    assert mesh.app is not None
    everyone = {**roles, "app": mesh.app.tree}
    if load.warmup_s > 0:
        progress(f"{system}: warm-up {load.warmup_s} s")
        run_wrk(mesh.wrk, base + "/warmup", load, load.warmup_s)
        time.sleep(0.3)  # requests in flight when wrk stopped
    settle()
    pids = {role: tree() for role, tree in everyone.items()}
    served_before = app_requests(mesh.app_port)
    before = {role: cpu_seconds(p) for role, p in pids.items()}
    wrk_before = resource.getrusage(resource.RUSAGE_CHILDREN)
    progress(f"{system}: wrk -t{load.threads} -c{load.connections} -d{load.duration_s}s")
    result = run_wrk(mesh.wrk, base + "/", load, load.duration_s)
    wrk_after = resource.getrusage(resource.RUSAGE_CHILDREN)
    time.sleep(0.3)
    served = app_requests(mesh.app_port) - served_before - 1
    drain(served)
    cpu = {role: cpu_seconds(p) - before[role] for role, p in pids.items()}
    cpu["wrk"] = (wrk_after.ru_utime + wrk_after.ru_stime) - (
        wrk_before.ru_utime + wrk_before.ru_stime
    )
    progress(
        f"{system}: {result.requests:,} requests, {result.rps:,.0f}/s, "
        f"p50 {result.p50_ms:.2f} ms, p99 {result.p99_ms:.2f} ms; app served {served:,}"
    )
    return result, served, cpu


def run_nginx(mesh: Mesh, load: Load) -> Result:
    out_port, in_port = free_port(), free_port()
    values = {
        "APP_PORT": str(mesh.app_port),
        "OUTBOUND_PORT": str(out_port),
        "INBOUND_PORT": str(in_port),
        "INBOUND_NAME": APP_DNS,
        "INBOUND_ID": str(APP_ID),
        "CERTS": str(mesh.certs),
    }
    started: list[Child] = []
    try:
        inbound = start_nginx(mesh.nginx, "inbound", mesh.work, values)
        started.append(inbound)
        outbound = start_nginx(mesh.nginx, "outbound", mesh.work, values)
        started.append(outbound)
        wait_port(in_port, inbound)
        wait_port(out_port, outbound)
        wait_ok(f"http://127.0.0.1:{out_port}/check", started)
        roles = {"outbound": outbound.tree, "inbound": inbound.tree}
        wrk, served, cpu = measure(mesh, "nginx", out_port, roles, load)
    finally:
        for child in reversed(started):
            child.stop(signal.SIGQUIT)  # graceful: flushes the buffered access logs
    lines = {
        role: count_log_lines(mesh.work / f"nginx-{role}" / "access.json", "/") for role in PROXIES
    }
    return Result("nginx", wrk, served, cpu, log_lines=lines)


def run_relay(mesh: Mesh, load: Load) -> Result:
    """The floor: `bench.relay`, a bare uvloop TLS byte relay, as both proxies (same certs)."""
    return _run_floor(mesh, load, RELAY, "relay", [])


def run_audit_floor(mesh: Mesh, load: Load) -> Result:
    """The floor of an auditing proxy: `bench.audit_floor` (the relay, plus request and
    response heads parsed and one audit event written per request) as both proxies; each
    proxy's events are counted in its file afterwards."""
    return _run_audit_floor(mesh, load, AUDIT_FLOOR, "httptools")


def run_core_floor(mesh: Mesh, load: Load) -> Result:
    """`bench.audit_floor --parser core`: what the sans-IO core costs over httptools."""
    return _run_audit_floor(mesh, load, CORE_FLOOR, "core")


def _run_audit_floor(mesh: Mesh, load: Load, system: str, parser: str) -> Result:
    files = {role: mesh.work / f"audit-floor-{parser}-{role}.ndjson" for role in PROXIES}
    result = _run_floor(mesh, load, system, "audit_floor", files, ["--parser", parser])
    counted = {role: _count_events(path) for role, path in files.items()}
    return dataclasses.replace(result, log_lines=counted)


def _count_events(path: Path) -> int:
    """Events of `/` requests (the load's path; not the readiness check's) in a floor's file."""
    with open(path, encoding="utf-8", errors="replace") as f:
        return sum('"path":"/"' in line for line in f)


def _run_floor(
    mesh: Mesh,
    load: Load,
    system: str,
    module: str,
    files: dict[str, Path] | list[Path],
    options: Sequence[str] = (),
) -> Result:
    out_port, in_port = free_port(), free_port()
    certs = mesh.certs
    command = [sys.executable, "-m", f"bench.{module}", *options]
    if isinstance(files, dict):
        events = {role: ["--events", str(path)] for role, path in files.items()}
    else:
        events = {role: [] for role in PROXIES}
    inbound_argv = [
        *command, "--listen", str(in_port), "--connect", f"127.0.0.1:{mesh.app_port}",
        "--server-cert", str(certs / "server.pem"), "--server-key", str(certs / "server-key.pem"),
        "--client-ca", str(certs / "ca.pem"), *events["inbound"],
    ]  # fmt: skip
    outbound_argv = [
        *command, "--listen", str(out_port), "--connect", f"127.0.0.1:{in_port}",
        "--client-cert", str(certs / "client.pem"), "--client-key", str(certs / "client-key.pem"),
        "--server-ca", str(certs / "ca.pem"), "--sni", APP_DNS, *events["outbound"],
    ]  # fmt: skip
    started: list[Child] = []
    try:
        for role, argv in (("inbound", inbound_argv), ("outbound", outbound_argv)):
            started.append(Child(f"{module} {role}", argv, mesh.work / f"{module}-{role}.log"))
        inbound, outbound = started
        wait_port(in_port, inbound)
        wait_port(out_port, outbound)
        wait_ok(f"http://127.0.0.1:{out_port}/check", started)
        roles = {"outbound": outbound.tree, "inbound": inbound.tree}
        wrk, served, cpu = measure(mesh, system, out_port, roles, load)
    finally:
        for child in reversed(started):
            child.stop(signal.SIGTERM)
    return Result(system, wrk, served, cpu)


def _sidecar_config(mesh: Mesh, url: str, name: str, extra: dict[str, object]) -> Path:
    directory = mesh.work / f"sidecar-{name}"
    directory.mkdir()
    spiffe_id = SpiffeId.kubernetes(TD, NAMESPACE, name)
    token = JoinTokens(mesh.data).mint(spiffe_id, now=datetime.now(UTC))
    config = {
        "workload": {"name": name, "namespace": NAMESPACE},
        "server": {"url": url, "bundle": str(mesh.data / "ca" / "ca.pem"), "join_token": token},
        "data_dir": str(directory / "data"),
        **extra,
    }
    path = directory / "sidecar.yaml"
    path.write_text(json.dumps(config, indent=2))  # JSON is YAML
    return path


class Ledger:
    """Counts the audit server's ledger entries (a reader next to the running server)."""

    def __init__(self, data: Path) -> None:
        self.store = SQLiteStore(data, create=False)

    def size(self) -> int:
        return self.store.size()

    def wait_stable(self, at_least: int = 0, timeout_s: float = DRAIN_TIMEOUT_S) -> int:
        """The size once it is ≥ at_least and has not moved for 0.6 s (3 flush intervals)."""
        deadline = time.monotonic() + timeout_s
        last, since = -1, time.monotonic()
        while time.monotonic() < deadline:
            size = self.size()
            if size != last:
                last, since = size, time.monotonic()
            elif size >= at_least and time.monotonic() - since >= 0.6:
                return size
            time.sleep(0.1)
        return last

    def count(self, start: int, end: int, expected: int) -> AuditCount:
        directions = {"outbound": 0, "inbound": 0}
        failures: dict[str, int] = {}
        other = 0
        for _, data in self.store.entries(start, end):
            event = msgspec.json.decode(data)
            http = event.get("http") or {}
            if event.get("kind") != "http" or http.get("path") != "/":
                other += 1
                continue
            direction = event.get("direction")
            if direction not in directions:
                other += 1
                continue
            directions[direction] += 1
            if event.get("outcome") == "failure":
                kind = (event.get("error") or {}).get("type", "unknown")
                failures[kind] = failures.get(kind, 0) + 1
        return AuditCount(
            expected=expected,
            counted=end - start,
            outbound=directions["outbound"],
            inbound=directions["inbound"],
            failures=failures,
            other=other,
        )

    def close(self) -> None:
        self.store.close()


def run_auditmesh(mesh: Mesh, load: Load) -> Result:
    mesh_port, out_port, in_port = free_port(), free_port(), free_port()
    extra = ["--mesh-listen", f"127.0.0.1:{mesh_port}", "--otlp-grpc", "off"]
    server = ServerProcess(mesh.data, extra=extra)
    started: list[Child] = []
    ledger: Ledger | None = None
    try:
        server.start()
        assert server.proc is not None
        server_pid = server.proc.pid
        url = f"https://127.0.0.1:{mesh_port}"
        inbound_config = _sidecar_config(
            mesh,
            url,
            "app",
            {
                "inbound": {
                    "listen": f"127.0.0.1:{in_port}",
                    "app": f"127.0.0.1:{mesh.app_port}",
                    "mtls": "STRICT",
                }
            },
        )
        outbound_config = _sidecar_config(
            mesh,
            url,
            "client",
            {
                "outbound": [
                    {
                        "service": "app",
                        "listen": f"127.0.0.1:{out_port}",
                        "upstream": f"127.0.0.1:{in_port}",
                        "identity": str(APP_ID),
                    }
                ]
            },
        )
        for role, config in (("inbound", inbound_config), ("outbound", outbound_config)):
            argv = [sys.executable, "-m", "auditmesh", "sidecar", "--config", str(config)]
            started.append(Child(f"sidecar {role}", argv, config.parent / "sidecar.log"))
        inbound, outbound = started
        wait_port(in_port, inbound)
        wait_port(out_port, outbound)
        wait_ok(f"http://127.0.0.1:{out_port}/check", started)
        progress(f"auditmesh: sidecars pid {outbound.pid} (outbound), {inbound.pid} (inbound)")
        ledger = Ledger(mesh.data)
        marks: dict[str, int] = {}

        def settle() -> None:
            assert ledger is not None
            marks["start"] = ledger.wait_stable()

        def drain(served: int) -> None:
            assert ledger is not None
            started_at = time.monotonic()
            marks["end"] = ledger.wait_stable(at_least=marks["start"] + 2 * served)
            progress(f"auditmesh: ledger caught up {time.monotonic() - started_at:.1f} s after")

        roles = {
            "outbound": outbound.tree,
            "inbound": inbound.tree,
            "audit server": lambda: [server_pid, *children(server_pid)],
        }
        wrk, served, cpu = measure(
            mesh, "auditmesh", out_port, roles, load, settle=settle, drain=drain
        )
        audit = ledger.count(marks["start"], marks["end"], 2 * served)
    finally:
        if ledger is not None:
            ledger.close()
        for child in reversed(started):
            child.stop(signal.SIGTERM)
        try:
            server.stop()
        except subprocess.TimeoutExpired:
            server.kill()
    return Result("auditmesh", wrk, served, cpu, audit=audit)


# -- the whole benchmark ----------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Report:
    nginx_version: str
    wrk_version: str
    load: Load
    results: dict[str, Result]

    @property
    def cpu_ratio(self) -> float | None:
        nginx, ours = self.results.get("nginx"), self.results.get("auditmesh")
        if nginx is None or ours is None:
            return None
        return ours.us_per_request(*PROXIES) / nginx.us_per_request(*PROXIES)

    @property
    def audit_ok(self) -> bool:
        ours = self.results.get("auditmesh")
        return ours is None or ours.audit is None or ours.audit.ok


@contextlib.contextmanager
def _terminate_cleanly() -> Iterator[None]:
    """SIGTERM unwinds like Ctrl-C, so the `finally` blocks stop every child."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run(load: Load, systems: Sequence[str] = SYSTEMS, keep: bool = False) -> Report:
    """The systems, one after the other, on one mesh CA and one app."""
    nginx, wrk = ensure_tools()
    nginx_v, wrk_v = versions(nginx, wrk)
    work = Path(tempfile.mkdtemp(prefix="auditmesh-proxy-bench-"))
    work.chmod(0o755)  # nginx's workers run as nobody
    results: dict[str, Result] = {}
    mesh = Mesh(nginx, wrk, work, work / "server", work / "certs", free_port())
    try:
        with _terminate_cleanly():
            init_ca(mesh.data, TD, now=datetime.now(UTC) - timedelta(minutes=1))
            write_nginx_certs(mesh.data, mesh.certs)
            mesh.app = start_nginx(nginx, "app", work, {"APP_PORT": str(mesh.app_port)})
            wait_port(mesh.app_port, mesh.app)
            runners = {
                "nginx": run_nginx,
                "auditmesh": run_auditmesh,
                RELAY: run_relay,
                AUDIT_FLOOR: run_audit_floor,
                CORE_FLOOR: run_core_floor,
            }
            for system in systems:
                results[system] = runners[system](mesh, load)
    finally:
        if mesh.app is not None:
            mesh.app.stop(signal.SIGQUIT)
        if keep:
            print(f"  work directory kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return Report(nginx_v, wrk_v, load, results)


def _row(label: str, values: Sequence[float | None], fmt: str, ratio: bool = True) -> str:
    """One table row: a cell per system, then each other system's ratio to nginx (first)."""
    cells = ["—" if v is None else format(v, fmt) for v in values]
    line = f"| {label:<40} |" + "".join(f" {c:>12} |" for c in cells)
    base = values[0]
    for value in values[1:]:
        shown = f"{value / base:.2f}×" if ratio and base and value is not None else ""
        line += f" {shown:>9} |"
    return line


def render(report: Report) -> str:
    """The results as a Markdown table plus the audit count and the target, ready for docs."""
    nginx, ours = report.results.get("nginx"), report.results.get("auditmesh")
    shown = [report.results.get(system) for system in SYSTEMS]

    def pick(get: Callable[[Result], float | None]) -> list[float | None]:
        return [None if r is None else get(r) for r in shown]

    header = "".join(f" {system:>12} |" for system in SYSTEMS)
    header += "".join(f" {'÷ nginx':>9} |" for _ in SYSTEMS[1:])
    rule = "".join(f"{'-' * 13}:|" for _ in SYSTEMS) + "".join(f"{'-' * 10}:|" for _ in SYSTEMS[1:])
    lines = [
        f"| {'per system':<40} |{header}",
        f"|{'-' * 42}|{rule}",
        _row("requests/s", pick(lambda r: r.wrk.rps), ",.0f"),
        _row("latency p50 (ms)", pick(lambda r: r.wrk.p50_ms), ".2f"),
        _row("latency p99 (ms)", pick(lambda r: r.wrk.p99_ms), ".2f"),
        _row("CPU µs/request, outbound proxy", pick(lambda r: r.us_per_request("outbound")), ".1f"),
        _row("CPU µs/request, inbound proxy", pick(lambda r: r.us_per_request("inbound")), ".1f"),
        _row("**CPU µs/request, both proxies**", pick(lambda r: r.us_per_request(*PROXIES)), ".1f"),
        _row(
            "CPU µs/request, audit server",
            [r.us_per_request("audit server") if r is ours and r else None for r in shown],
            ".1f",
            ratio=False,
        ),
        _row("CPU µs/request, proxies + audit server", pick(Result.total_us), ".1f"),
        _row("CPU µs/request, app (same nginx)", pick(lambda r: r.us_per_request("app")), ".1f"),
        _row("CPU µs/request, wrk", pick(lambda r: r.us_per_request("wrk")), ".1f"),
        _row("requests (wrk)", pick(lambda r: r.wrk.requests), ",d", ratio=False),
        _row("errors (wrk: non-2xx + socket)", pick(lambda r: r.wrk.errors), ",d", ratio=False),
    ]
    out = "\n".join(lines) + "\n"
    if nginx is not None:
        logged = ", ".join(f"{role} {n:,}" for role, n in nginx.log_lines.items())
        out += f"\nnginx: app served {nginx.served:,}; access-log lines: {logged}.\n"
    if ours is not None and ours.audit is not None:
        a = ours.audit
        verdict = "all there" if a.ok else "MISMATCH"
        out += (
            f"\nauditmesh audit trail: app served {ours.served:,} requests (wrk counted "
            f"{ours.wrk.requests:,}), expected 2 × {ours.served:,} = {a.expected:,} events, "
            f"the ledger gained {a.counted:,} ({a.outbound:,} outbound, {a.inbound:,} inbound, "
            f"{sum(a.failures.values()):,} with outcome failure{_failures(a)}, {a.other:,} other): "
            f"{verdict}.\n"
        )
    ratio = report.cpu_ratio
    if ratio is not None:
        status = "PASS" if ratio <= TARGET_RATIO else "MISS"
        out += (
            f"\ntarget (issue 3): sidecar CPU per request ≤ {TARGET_RATIO}× nginx's: "
            f"measured {ratio:.2f}× → **{status}**\n"
        )
    relay = report.results.get(RELAY)
    if relay is not None and nginx is not None:
        floor = relay.us_per_request(*PROXIES)
        out += (
            f"\nfloor: a bare CPython TLS byte relay pair (bench/relay.py: no HTTP parsing, no "
            f"policy, no audit) costs {floor / nginx.us_per_request(*PROXIES):.2f}× nginx's CPU "
            "per request"
        )
        if ours is not None:
            out += f"; the sidecars cost {ours.us_per_request(*PROXIES) / floor:.2f}× the relay's"
        out += ".\n"
    for system, what in (
        (AUDIT_FLOOR, "httptools"),
        (CORE_FLOOR, "auditmesh's sans-IO HTTP/1.1 core, as the sidecar parses"),
    ):
        audited = report.results.get(system)
        if audited is None or nginx is None:
            continue
        cost = audited.us_per_request(*PROXIES)
        written = ", ".join(f"{role} {n:,}" for role, n in audited.log_lines.items())
        out += (
            f"\n{system}: an auditing proxy at its least (bench/audit_floor.py: the relay, plus "
            f"request and response heads parsed with {what}, one audit event written per "
            f"request, callbacks only): {cost / nginx.us_per_request(*PROXIES):.2f}× nginx's CPU "
            f"per request (events written: {written}; requests: {audited.wrk.requests:,})"
        )
        if ours is not None:
            out += f"; the sidecars cost {ours.us_per_request(*PROXIES) / cost:.2f}× this floor"
        out += ".\n"
    return out


def _failures(audit: AuditCount) -> str:
    """Failures are expected only for requests in flight when wrk stopped (downstream gone)."""
    if not audit.failures:
        return ""
    return " [" + ", ".join(f"{k}: {n:,}" for k, n in sorted(audit.failures.items())) + "]"


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def source_state() -> str:
    """Where the measured auditmesh comes from: its commit, and whether its sources differ."""
    package = Path(auditmesh.__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(package), *args], capture_output=True, text=True, check=True
        ).stdout

    try:
        head = git("rev-parse", "--short", "HEAD").strip()
        changed = [line[3:] for line in git("status", "--porcelain", "--", ".").splitlines()]
    except (OSError, subprocess.CalledProcessError):
        return f"auditmesh from {package} (not a git checkout)"
    dirty = f" + uncommitted changes in {', '.join(changed)}" if changed else ""
    return f"auditmesh from {package} at commit {head}{dirty}"


def machine() -> str:
    model = "unknown CPU"
    with contextlib.suppress(OSError), open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return f"{os.cpu_count()} CPUs ({model}), {memory:.0f} GiB RAM, {sys.platform}"


def proxy_section(quick: bool) -> list[Figure]:
    """For `bench.run`: run both systems, print the table, return the figures (none on error)."""
    from bench.common import Figure, Target

    print("\n== Sidecar proxy vs nginx (bench/proxy_bench.py) ==", flush=True)
    try:
        report = run(QUICK if quick else Load())
    except Exception:
        traceback.print_exc()
        print("proxy benchmark failed; no figures")
        return []
    print(render(report), flush=True)
    nginx, ours = report.results["nginx"], report.results["auditmesh"]
    both = nginx.us_per_request(*PROXIES)
    section = "proxy"
    figures = [
        Figure(section, "sidecar pair requests/s", ours.wrk.rps, "req/s", "nginx", nginx.wrk.rps),
        Figure(
            section, "sidecar pair p50 latency", ours.wrk.p50_ms, "ms", "nginx", nginx.wrk.p50_ms
        ),
        Figure(
            section, "sidecar pair p99 latency", ours.wrk.p99_ms, "ms", "nginx", nginx.wrk.p99_ms
        ),
        Figure(
            section,
            "sidecar pair CPU per request",
            ours.us_per_request(*PROXIES),
            "µs",
            "nginx",
            both,
            Target(f"≤ {TARGET_RATIO}× nginx", TARGET_RATIO * both, higher_is_better=False),
        ),
        Figure(section, "audit server CPU per request", ours.us_per_request("audit server"), "µs"),
    ]
    floors = (
        (RELAY, "bare Python TLS relay pair CPU per request (floor)"),
        (AUDIT_FLOOR, "auditing proxy floor pair CPU per request (httptools + an event each)"),
        (CORE_FLOOR, "the same floor with the sidecar's sans-IO HTTP/1.1 core"),
    )
    for system, label in floors:
        floor = report.results.get(system)
        if floor is not None:
            figures.append(
                Figure(section, label, floor.us_per_request(*PROXIES), "µs", "nginx", both)
            )
    if ours.audit is not None:
        audit = ours.audit
        expected = "2 × requests the app served"
        figures.append(
            Figure(
                section, "audit events in ledger", audit.counted, "events", expected, audit.expected
            )
        )
    return figures


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="5 s runs, 1 s warm-up (< 1 min)")
    parser.add_argument("--duration", type=int, help="seconds of each measured run (15)")
    parser.add_argument("--warmup", type=int, help="seconds of warm-up per system (3)")
    parser.add_argument("--connections", type=int, help="wrk connections (16)")
    parser.add_argument("--threads", type=int, help="wrk threads (1)")
    parser.add_argument("--only", choices=SYSTEMS, help="run one system only")
    parser.add_argument("--keep", action="store_true", help="keep the work directory (logs)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else Load()
    load = Load(
        threads=args.threads or base.threads,
        connections=args.connections or base.connections,
        duration_s=args.duration or base.duration_s,
        warmup_s=args.warmup if args.warmup is not None else base.warmup_s,
    )
    command = " ".join([sys.executable, "-m", "bench.proxy_bench", *(argv or sys.argv[1:])])
    print(f"proxy benchmark — {time.strftime('%Y-%m-%d %H:%M:%S %Z')} — {machine()}")
    print(f"command: {command}")
    print(f"{source_state()}; load average at start: {load_average()}", flush=True)
    try:
        report = run(load, (args.only,) if args.only else SYSTEMS, args.keep)
    except BenchError as exc:
        print(f"proxy benchmark cannot run: {exc}", file=sys.stderr)
        return 2
    print(f"\nnginx {report.nginx_version}, wrk {report.wrk_version}, load {load}\n")
    print(render(report))
    print(f"load average at end: {load_average()}", flush=True)
    if not report.results:
        return 1
    return 0 if report.audit_ok else 1


if __name__ == "__main__":
    sys.exit(main())
