"""``auditmesh policy``: check Istio policy files and evaluate one request against them.

Place in the house: a thin layer over :mod:`auditmesh.policy` — it loads, prints, and turns
load and request errors into :class:`~auditmesh.cli.main.UserError`. ``check PATH`` validates
and lists the effective policies per workload; ``eval`` prints the Decision as JSON
``{"decision", "policy", "rule", "audit", "dry_run"}``.

``replay`` and ``generate`` read recorded calls from the ledger (read-only) and hand them to
the pure :mod:`auditmesh.policy.replay` and :mod:`auditmesh.policy.generate`; the I/O — ledger,
progress, ``--workloads`` file, output — stays here.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import sys
import time
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import yaml
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table
from rich.text import Text

from auditmesh.cli import add_data_arg, positive_int, writable_file, write_output
from auditmesh.cli.main import UserError
from auditmesh.cli.timespec import TIME_HELP, parse_window_ns
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import AuditEvent, EventError, decode_event
from auditmesh.identity.ca import mesh_trust_domain
from auditmesh.identity.spiffe import SpiffeIdError, parse_trust_domain
from auditmesh.policy.documents import PolicyLoadError
from auditmesh.policy.engine import PolicyEngine
from auditmesh.policy.generate import DEFAULT_MAX_PATHS, Window, generate_policies
from auditmesh.policy.matchers import DEFAULT_TRUST_DOMAIN
from auditmesh.policy.model import (
    ROOT_NAMESPACE,
    AuthorizationPolicy,
    Labels,
    PeerAuthentication,
    PolicySet,
    load_policies,
)
from auditmesh.policy.peerauth import MtlsResolver
from auditmesh.policy.replay import (
    Call,
    Replay,
    ReplayReport,
    WorkloadsError,
    inbound_call,
    parse_workloads,
)
from auditmesh.policy.request import Request, RequestError
from auditmesh.proxy.paths import PathError, normalize
from auditmesh.store.base import EventFilter, StoreError


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser(
        "policy",
        help="check Istio AuthorizationPolicy/PeerAuthentication files, evaluate a request",
        description="Istio security.istio.io policies, evaluated with Istio's semantics.",
    )
    parser.set_defaults(func=lambda args: _usage(parser))
    commands = parser.add_subparsers(title="policy commands", metavar="COMMAND")

    check = commands.add_parser(
        "check",
        help="validate policy files and list the effective policies per workload",
        description="Validate AuthorizationPolicy and PeerAuthentication YAML (a file, or a "
        "directory of *.yaml/*.yml) and list which policies apply to which workloads.",
    )
    check.add_argument("path", metavar="PATH", help="policy file or directory")
    _common(check)
    add_data_arg(check)  # its mesh CA gives the default --trust-domain
    check.set_defaults(func=run_check)

    evaluate = commands.add_parser(
        "eval",
        help="evaluate one request and print the decision as JSON",
        description="Evaluate one request against the policies and print "
        '{"decision", "policy", "rule", "audit", "dry_run"}. Request JSON: {"source": '
        '{"principal", "namespace", "ip"}, "destination": {"namespace", "labels", "ip", '
        '"port"}, "request": {"method", "path", "host", "headers"}, "connection": {"sni"}}; '
        "without a request object the call is a TCP connection. source.principal is the "
        "caller's SPIFFE ID as auditmesh prints it (spiffe://cluster.local/ns/NS/sa/SA) or "
        "without its scheme, as Istio writes principals (cluster.local/ns/NS/sa/SA): Istio "
        "derives source.principal from the SPIFFE ID by dropping spiffe://.",
    )
    evaluate.add_argument("--policies", required=True, metavar="PATH", help="policy file or dir")
    evaluate.add_argument(
        "--request",
        required=True,
        metavar="JSON",
        help="request JSON, @FILE, or @- for stdin; source.principal with or without spiffe://",
    )
    _common(evaluate)
    add_data_arg(evaluate)  # its mesh CA gives the default --trust-domain
    evaluate.set_defaults(func=run_eval)
    _register_recorded(commands)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root-namespace",
        default=ROOT_NAMESPACE,
        metavar="NS",
        help=f"Istio root namespace, whose policies apply mesh-wide (default {ROOT_NAMESPACE})",
    )
    parser.add_argument(
        "--namespace",
        metavar="NS",
        help="namespace for documents without metadata.namespace (like kubectl apply -n)",
    )
    parser.add_argument(
        "--trust-domain",
        metavar="TD",
        help="the mesh's trust domain, which principals written in cluster.local stand for as in "
        f"Istio (default: the mesh CA's in --data, else {DEFAULT_TRUST_DOMAIN})",
    )


def _engine(policies: PolicySet, args: argparse.Namespace) -> PolicyEngine:
    trust_domain = args.trust_domain
    if trust_domain is None and getattr(args, "data", None) is not None:
        trust_domain = mesh_trust_domain(Path(args.data))
    try:
        return PolicyEngine(
            policies, trust_domain=parse_trust_domain(trust_domain or DEFAULT_TRUST_DOMAIN)
        )
    except SpiffeIdError as exc:
        raise UserError(f"--trust-domain: {exc}") from None


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def _load(path: str, args: argparse.Namespace) -> PolicySet:
    try:
        return load_policies(
            path, root_namespace=args.root_namespace, default_namespace=args.namespace
        )
    except PolicyLoadError as exc:
        raise UserError(str(exc)) from None


def _read_request(text: str) -> Request:
    if text.startswith("@"):
        source = text[1:]
        try:
            text = sys.stdin.read() if source == "-" else Path(source).read_text(encoding="utf-8")
        except OSError as exc:
            raise UserError(f"--request: cannot read {source}: {exc.strerror}") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise UserError(f"--request: invalid JSON: {exc}") from None
    try:
        request = Request.from_json(obj)
    except RequestError as exc:
        raise UserError(f"--request: {exc}") from None
    if request.path is None:
        return request
    try:  # as the sidecar (and Istio's Envoy) normalize it before any policy sees it
        return dataclasses.replace(request, path=normalize(request.path))
    except PathError as exc:
        raise UserError(f"--request: request.path: {exc}") from None


def run_eval(args: argparse.Namespace) -> int:
    policies = _load(args.policies, args)
    request = _read_request(args.request)
    decision = _engine(policies, args).evaluate(request)
    print(json.dumps(decision.to_json()))
    return 0


def _labels(labels: Labels) -> str:
    return ",".join(f"{k}={v}" for k, v in labels)


def _workloads(policies: PolicySet) -> dict[str, set[Labels]]:
    """Namespaces with policies, and the label sets their selectors (and the root's) name."""
    root = policies.root_namespace
    items: list[AuthorizationPolicy | PeerAuthentication] = [
        *policies.authorization,
        *policies.peer_authentication,
    ]
    namespaces: dict[str, set[Labels]] = {p.namespace: {()} for p in items}
    namespaces.setdefault(root, {()})
    for policy in items:
        if policy.selector is not None:
            targets = (
                namespaces.values() if policy.namespace == root else [namespaces[policy.namespace]]
            )
            for labels in targets:
                labels.add(policy.selector)
    return namespaces


def run_check(args: argparse.Namespace) -> int:
    policies = _load(args.path, args)
    authz, peer = policies.authorization, policies.peer_authentication
    print(
        f"ok: {len(authz)} AuthorizationPolicy, {len(peer)} PeerAuthentication in "
        f"{len(policies.files)} file(s); root namespace {policies.root_namespace}"
    )
    for skipped in policies.skipped:
        print(f"skipped {skipped.origin}: {skipped.api_version} {skipped.kind} (not a policy kind)")
    engine = _engine(policies, args)
    mtls = MtlsResolver(policies)
    root = policies.root_namespace
    for namespace, label_sets in sorted(_workloads(policies).items()):
        for labels in sorted(label_sets):
            where = (
                namespace if namespace != root else f"{root} (and any namespace without policies)"
            )
            who = f"workloads labelled {_labels(labels)}" if labels else "all workloads"
            print(f"\n{where}: {who}")
            _print_effective(engine, mtls, namespace, dict(labels))
    for first, shadowed in mtls.conflicts():
        print(
            f"\nwarning: PeerAuthentication {shadowed.key} ({shadowed.origin}) is shadowed by "
            f"{first.key}: Istio uses the oldest policy at each level"
        )
    return 0


def _print_effective(
    engine: PolicyEngine, mtls: MtlsResolver, namespace: str, labels: Mapping[str, str]
) -> None:
    applicable = engine.for_workload(namespace, labels).policies
    if not applicable:
        print("  authorization: no policy, every request is allowed")
    elif not any(p.action == "ALLOW" and not p.dry_run for p in applicable):
        print("  authorization: no ALLOW policy, requests not denied are allowed")
    else:
        print("  authorization: requests are denied unless an ALLOW rule matches")
    for policy in applicable:
        rules = f"{len(policy.rules)} rule" + ("" if len(policy.rules) == 1 else "s")
        if policy.action == "ALLOW" and not policy.rules:
            rules = "no rules: allows nothing"
        note = "  (dry-run: evaluated, not enforced)" if policy.dry_run else ""
        print(f"    {policy.action:<6} {policy.key:<40} {rules}{note}")
    decision = mtls.mode(namespace, labels)
    by = f"{decision.level} policy {decision.policy}" if decision.policy else "Istio default"
    print(f"  mTLS: {decision.mode} ({by}){_ports(mtls, namespace, labels)}")


def _ports(mtls: MtlsResolver, namespace: str, labels: Mapping[str, str]) -> str:
    workload = mtls.mode(namespace, labels)
    ports = _port_numbers(mtls, namespace, labels)
    overrides = [
        f"port {port} {decision.mode}"
        for port in ports
        if (decision := mtls.mode(namespace, labels, port)).mode != workload.mode
        or decision.level == "port"
    ]
    return f"; {', '.join(overrides)}" if overrides else ""


def _port_numbers(mtls: MtlsResolver, namespace: str, labels: Mapping[str, str]) -> Iterable[int]:
    policy = mtls.workload_policy(namespace, labels)
    return [port for port, _ in policy.port_modes] if policy else []


# -- replay and generate: policies against recorded calls ------------------------------

READ_BATCH = 2000
PROGRESS_MIN = 20_000  # entries in the window before a progress bar is worth showing
WORKLOADS_HELP = (
    "YAML mapping 'namespace/service: {label: value, ...}': the workload labels selectors "
    "match against (events do not record labels); a workload not listed is taken to carry "
    "{app: <service>}"
)


def _register_recorded(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    replay = commands.add_parser(
        "replay",
        help="run candidate policies over recorded calls and report what would change",
        description="Evaluate a candidate policy set against the inbound calls the ledger "
        "recorded in a window, compare with the recorded decisions (authz.decision; a call "
        "without one was allowed) and report the calls that would be newly denied or newly "
        "allowed, grouped by source -> destination and the deciding policy rule. Read-only. "
        "Recorded events carry no request headers or SNI: conditions on them see none.",
    )
    replay.add_argument("--policies", required=True, metavar="PATH", help="policy file or dir")
    _recorded_args(replay)
    replay.add_argument(
        "--format", choices=("table", "json"), default="table", help="output format"
    )
    replay.add_argument(
        "--examples",
        type=positive_int,
        default=3,
        metavar="N",
        help="example event ids per group (default 3)",
    )
    replay.add_argument(
        "--enforce-dry-run",
        action="store_true",
        help='decide with istio.io/dry-run: "true" policies enforced too',
    )
    _common(replay)
    replay.set_defaults(func=run_replay)

    generate = commands.add_parser(
        "generate",
        help="least-privilege ALLOW policies from observed traffic, as Istio YAML",
        description="Write one Istio AuthorizationPolicy (security.istio.io/v1, ALLOW) per "
        "destination workload that allows the callers, methods and paths observed allowed in "
        "the window: ids in paths (digits, UUIDs, hex) become prefix/*, crowded directories "
        "dir/*, ports appear when a workload served several. Replaying the output over the same "
        "window denies nothing that was allowed.",
    )
    _recorded_args(generate)
    generate.add_argument(
        "--namespace", metavar="NS", help="only workloads in this destination namespace"
    )
    generate.add_argument(
        "-o", "--output", type=Path, metavar="FILE", help="write the YAML here (default stdout)"
    )
    generate.add_argument(
        "--max-paths",
        type=positive_int,
        default=DEFAULT_MAX_PATHS,
        metavar="N",
        help=f"more distinct paths than this under one directory become dir/* "
        f"(default {DEFAULT_MAX_PATHS})",
    )
    generate.add_argument(
        "--root-namespace",
        default=ROOT_NAMESPACE,
        metavar="NS",
        help=f"Istio root namespace, whose policies apply mesh-wide (default {ROOT_NAMESPACE})",
    )
    generate.set_defaults(func=run_generate)


def _recorded_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--since",
        required=True,
        metavar="WHEN",
        help=f"start of the window: {TIME_HELP}",
    )
    parser.add_argument("--until", metavar="WHEN", help="end of the window (default: now)")
    add_data_arg(parser)
    parser.add_argument("--workloads", type=Path, metavar="FILE", help=WORKLOADS_HELP)


@dataclass(frozen=True, slots=True)
class _Window:
    since_ns: int
    until_ns: int  # exclusive

    def describe(self) -> str:
        return f"{_iso(self.since_ns)} .. {_iso(self.until_ns)}"


def _iso(ns: int) -> str:
    moment = datetime.fromtimestamp(ns // 1_000_000_000, tz=UTC)
    return moment.isoformat().replace("+00:00", "Z")


def _window(args: argparse.Namespace) -> _Window:
    now = time.time_ns()
    since, until = parse_window_ns(args.since, args.until, now)
    assert since is not None  # --since is required
    return _Window(since, now if until is None else until)


def _read_workloads(path: Path | None) -> dict[str, dict[str, str]]:
    if path is None:
        return {}
    try:
        obj = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise UserError(f"--workloads: cannot read {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise UserError(f"--workloads: {path}: invalid YAML: {exc}") from None
    try:
        return parse_workloads(obj)
    except WorkloadsError as exc:
        raise UserError(f"--workloads: {path}: {exc}") from None


def _open_ledger(data: Path) -> Ledger:
    try:
        return open_ledger(data, create=False)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def _recorded(ledger: Ledger, window: _Window, what: str) -> Iterator[tuple[int, AuditEvent]]:
    """The ledger's events of the window, in ledger order, with a progress bar on a terminal.

    Ledger order is arrival order, not event time: reading starts at the first entry of the
    window (the store's time index) and every later entry is checked against it.
    """
    store = ledger.store
    first = store.find(EventFilter(since_ns=window.since_ns, until_ns=window.until_ns, limit=1))
    end = store.size()
    start = first[0].index if first else end
    console = Console(stderr=True)
    progress = Progress(
        TextColumn(what),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal or end - start < PROGRESS_MIN,
    )
    with progress:
        task = progress.add_task(what, total=end - start)
        for batch in range(start, end, READ_BATCH):
            rows = list(store.entries(batch, min(end, batch + READ_BATCH)))
            for index, data in rows:
                try:
                    event = decode_event(data)
                except EventError as exc:  # every stored entry decoded once; say where if not
                    raise UserError(f"ledger entry {index} is not a valid event: {exc}") from None
                if window.since_ns <= event.time_ns < window.until_ns:
                    yield index, event
            progress.advance(task, len(rows))


def _no_calls(window: _Window, events: int, where: str = "") -> UserError:
    return UserError(
        f"no inbound calls recorded{where} in the window {window.describe()} "
        f"({events} events in it); widen --since or check --data"
    )


def run_replay(args: argparse.Namespace) -> int:
    policies = _load(args.policies, args)
    workloads = _read_workloads(args.workloads)
    window = _window(args)
    run = Replay(
        _engine(policies, args),
        workloads,
        enforce_dry_run=args.enforce_dry_run,
        examples=args.examples,
    )
    ledger = _open_ledger(args.data)
    try:
        for index, event in _recorded(ledger, window, "replaying"):
            run.add(index, event)
    finally:
        ledger.close()
    report = run.report()
    if report.calls == 0:
        raise _no_calls(window, report.events)
    with _stdout_may_close():
        if args.format == "json":
            document = {
                "policies": args.policies,
                "authorization_policies": len(policies.authorization),
                "window": {"since": _iso(window.since_ns), "until": _iso(window.until_ns)},
                **report.to_json(),
            }
            print(json.dumps(document, indent=2))
        else:
            _print_replay(report, policies, args.policies, window)
    return 0


@contextlib.contextmanager
def _stdout_may_close() -> Iterator[None]:
    """``| head``: the reader has all it wanted; leave quietly."""
    try:
        yield
        sys.stdout.flush()
    except BrokenPipeError:
        # Python's documented recipe: point stdout at devnull so the exit flush is quiet.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


def _print_replay(report: ReplayReport, policies: PolicySet, path: str, window: _Window) -> None:
    # Lines never wrap (ids and paths stay greppable); tables get a fixed width off a terminal.
    console = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 160)
    totals = report.to_json()["totals"]
    assert isinstance(totals, dict)
    recorded, candidate = totals["recorded"], totals["candidate"]
    console.print(
        f"Replayed {report.calls} inbound calls recorded {window.describe()} "
        f"({report.attested} observed by auditmesh sidecars) against "
        f"{len(policies.authorization)} AuthorizationPolicies from {escape(path)}"
    )
    console.print(
        f"recorded: {recorded['allow']} allowed, {recorded['deny']} denied; "
        f"candidate: {candidate['allow']} allowed, {candidate['deny']} denied"
    )
    console.print(
        f"[bold]newly denied: {report.newly_denied_calls}[/]   "
        f"[bold]newly allowed: {report.newly_allowed_calls}[/]   unchanged: {report.unchanged}"
    )
    for title, changes, by in (
        ("Newly denied", report.newly_denied, "denied by"),
        ("Newly allowed", report.newly_allowed, "allowed by"),
    ):
        if not changes:
            continue
        table = Table(title=title, title_justify="left", show_lines=False)
        table.add_column("calls", justify="right")
        table.add_column("source")
        table.add_column("destination")
        table.add_column(by)
        table.add_column("example events")
        for change in changes:
            table.add_row(
                str(change.count),
                Text(change.source),
                Text(change.destination),
                Text(change.reason),
                Text("\n".join(change.examples)),
            )
        console.print()
        console.print(table)
    for caveat in report.caveats:
        console.print(Text(f"note: {caveat}"))


def run_generate(args: argparse.Namespace) -> int:
    if args.output is not None:
        writable_file(args.output, "-o")
    workloads = _read_workloads(args.workloads)
    window = _window(args)
    ledger = _open_ledger(args.data)
    calls: list[Call] = []
    events = 0
    try:
        source = f"ledger {ledger.log.origin} in {ledger.data_dir}"
        for index, event in _recorded(ledger, window, "reading"):
            events += 1
            call = inbound_call(index, event, workloads)
            if call is not None and (args.namespace is None or call.namespace == args.namespace):
                calls.append(call)
    finally:
        ledger.close()
    if not calls:
        where = "" if args.namespace is None else f" to namespace {args.namespace}"
        raise _no_calls(window, events, where)
    until = "" if args.until is None else f" --until {args.until}"
    text = generate_policies(
        calls,
        Window(f"{window.describe()} (--since {args.since}{until})", source),
        workloads=workloads,
        namespace=args.namespace,
        max_paths=args.max_paths,
        root_namespace=args.root_namespace,
    )
    policies = text.count("\n---\n") + text.startswith("---\n")
    if args.output is None:
        with _stdout_may_close():
            sys.stdout.write(text)
        return 0
    write_output(args.output, text, "-o")
    print(
        f"wrote {policies} AuthorizationPolicies from {len(calls)} calls to {args.output}",
        file=sys.stderr,
    )
    return 0
