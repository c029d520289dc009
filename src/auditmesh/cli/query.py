"""`auditmesh query | trace | graph`: the questions asked during an incident, from the shell.

The I/O side of analysis/: read a data directory (`--data`) or ask a running server (`--url`,
with the API token from `--token` or AUDITMESH_TOKEN; every such read is audited there), then
render: a rich table or tree, JSON (what the HTTP API returns), ECS NDJSON (events) or
Graphviz DOT (the graph). Local reads never write the ledger; the graph's rollup is kept next
to it in DATA/rollup.db (analysis/rollup.py).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx
import msgspec
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.tree import Tree

from auditmesh.analysis import graph, trace
from auditmesh.analysis.query import (
    CALLS,
    DECISIONS,
    KINDS,
    MAX_QUERY_LIMIT,
    ORDERS,
    Order,
    Query,
    QueryError,
    run,
)
from auditmesh.analysis.rollup import ROLLUP_DB, Rollup
from auditmesh.cli import DEFAULT_DATA, server_url
from auditmesh.cli.main import UserError
from auditmesh.cli.timespec import TIME_HELP, parse_window_ns
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import AuditEvent, canonical_bytes, decode_event
from auditmesh.export.ecs import ecs_document
from auditmesh.ledger.merkle import leaf_hash
from auditmesh.store.base import StoreError

TOKEN_ENV = "AUDITMESH_TOKEN"
PAGE = 1000  # the API's largest page


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    query = sub.add_parser(
        "query",
        help="find events: who called what, when, with which result",
        description=(
            "Events matching every filter given, newest first. --source/--dest take a SPIFFE "
            "ID, a service name, or a name as `graph` prints it (service.namespace, unknown); "
            "--service matches either side. With --calls once, the events `graph` counts: "
            "each call once, the callee's report preferred."
        ),
    )
    add_filter_args(query)
    query.add_argument("--order", choices=ORDERS, default="newest", help="which events come first")
    query.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    query.add_argument("--cursor", help="continue after a page (the `next` a page printed)")
    query.add_argument(
        "--format", choices=("table", "json", "ecs"), default="table", help="output format"
    )
    add_source(query)
    query.set_defaults(func=run_query)

    tr = sub.add_parser(
        "trace",
        help="the call tree of one trace across services",
        description=(
            "Events sharing a trace id as a tree of calls: both sides of a hop merged, with "
            "durations, statuses and policy decisions."
        ),
    )
    tr.add_argument(
        "trace_id",
        metavar="TRACE_ID",
        help="the trace id (32 hex digits), or its first 8 or more as `query` shows them",
    )
    tr.add_argument("--format", choices=("tree", "json"), default="tree", help="output format")
    add_source(tr)
    tr.set_defaults(func=run_trace)

    gr = sub.add_parser(
        "graph",
        help="the service graph: calls, errors, latency, mTLS, denials per edge",
        description=(
            "Edges source service → destination service, each call counted once (the inbound "
            "side preferred), over whole minutes. `query --source CALLER --dest CALLEE --calls "
            "once` with the names printed lists an edge's calls."
        ),
    )
    gr.add_argument("--since", help=f"{TIME_HELP} (default: everything)")
    gr.add_argument(
        "--until",
        help=f"{TIME_HELP}; the graph counts whole minutes, so --since "
        "rounds down and --until up to the minute",
    )
    gr.add_argument(
        "--format", choices=("table", "json", "dot"), default="table", help="output format"
    )
    add_source(gr)
    gr.set_defaults(func=run_graph)


def add_filter_args(parser: argparse.ArgumentParser) -> None:
    """The event filters, shared by `query` and `bundle create` (`query_of` reads them)."""
    parser.add_argument(
        "--source",
        help="caller: SPIFFE ID, service name, service.namespace, or unknown (no identity, "
        "no service)",
    )
    parser.add_argument(
        "--dest",
        help="callee: SPIFFE ID, service name, service.namespace, or unknown (no identity, "
        "no service)",
    )
    parser.add_argument("--service", help="as --source and --dest, on either side of the call")
    parser.add_argument("--path", help="HTTP path, exact or a prefix ending in * (/orders*)")
    parser.add_argument("--status", help="HTTP status (404) or class (5xx)")
    parser.add_argument("--decision", choices=DECISIONS, help="authorization decision")
    parser.add_argument(
        "--trace", help="trace id (32 hex digits), or its first 8 or more as the table shows them"
    )
    parser.add_argument("--kind", choices=KINDS, help="event kind")
    parser.add_argument("--direction", choices=("inbound", "outbound"), help="reporting side")
    parser.add_argument(
        "--calls",
        choices=CALLS,
        help="once: calls only, each once as `graph` counts them (the callee's report, the "
        "caller's when the callee sent none)",
    )
    parser.add_argument("--since", help=f"at or after: {TIME_HELP}")
    parser.add_argument("--until", help=f"before: {TIME_HELP}")


def add_source(parser: argparse.ArgumentParser) -> None:
    """--data DIR or --url URL (with --token), for `local_ledger` or `api_client` to read;
    shared by query, trace, graph and findings."""
    where = parser.add_mutually_exclusive_group()
    where.add_argument("--data", type=Path, help="data directory (default ./auditmesh-data)")
    where.add_argument(
        "--url", type=server_url, help="a running server, e.g. http://127.0.0.1:7600"
    )
    parser.add_argument("--token", help=f"API token for --url (default: ${TOKEN_ENV})")


# -- where the answers come from -------------------------------------------------------


@contextmanager
def local_ledger(data: Path | None) -> Iterator[Ledger]:
    """The ledger of `--data` (default ./auditmesh-data), opened for reading."""
    try:
        ledger = open_ledger(data or DEFAULT_DATA, create=False)
    except StoreError as exc:
        raise UserError(str(exc)) from None
    try:
        yield ledger
    finally:
        ledger.close()


@contextmanager
def api_client(args: argparse.Namespace) -> Iterator[httpx.Client]:
    """A client of the server at `--url`, with the token of `--token` or $AUDITMESH_TOKEN."""
    token = args.token or os.environ.get(TOKEN_ENV)
    if not token:
        raise UserError(
            f"reading from {args.url} needs the API token: --token T or {TOKEN_ENV}=T "
            "(the server prints it at start; it is in DATA/keys/api.token)"
        )
    headers = {"authorization": f"Bearer {token}"}
    with httpx.Client(base_url=args.url.rstrip("/"), headers=headers, timeout=60) as client:
        yield client


def api_get(client: httpx.Client, path: str, params: dict[str, str] | None = None) -> Any:
    """The JSON of a 200; an unreachable server or any other status is a UserError."""
    try:
        response = client.get(path, params=params)
    except httpx.HTTPError as exc:
        raise UserError(f"cannot reach {client.base_url}: {exc}") from None
    if response.status_code != 200:
        try:
            message = response.json()["error"]
        except (ValueError, KeyError, TypeError):
            message = response.text.strip()
        raise UserError(f"{client.base_url}{path}: {response.status_code} {message}")
    return response.json()


def window_params(since: int | None, until: int | None) -> dict[str, str]:
    """The `since` and `until` URL parameters (Unix ns) of a window-only API route."""
    return {k: str(v) for k, v in (("since", since), ("until", until)) if v is not None}


# -- query -----------------------------------------------------------------------------


def query_of(args: argparse.Namespace, order: Order | None = None) -> Query:
    """The Query of `add_filter_args`' arguments, `--limit` and `--order` (or `order`)."""
    now = time.time_ns()
    if args.limit < 1:
        raise UserError(f"--limit: give at least 1, not {args.limit}")
    if args.limit > MAX_QUERY_LIMIT:
        raise UserError(f"--limit: give a number from 1 to {MAX_QUERY_LIMIT:,}")
    since, until = parse_window_ns(args.since, args.until, now, open_ended=True)
    try:
        return Query(
            source=args.source,
            dest=args.dest,
            service=args.service,
            path=args.path,
            status=args.status,
            decision=args.decision,
            trace_id=None if args.trace is None else args.trace.lower(),
            kind=args.kind,
            direction=args.direction,
            calls=args.calls,
            since_ns=since,
            until_ns=until,
            order=order or args.order,
            limit=args.limit,
        )
    except QueryError as exc:
        raise UserError(_as_option(str(exc))) from None


# Query's fields, as the options that set them are spelled (its errors name the field).
_OPTION_OF = {"trace_id": "trace", "since_ns": "since", "until_ns": "until"}


def _as_option(message: str) -> str:
    """`status: '6xx' is not …` as the command line says it: `--status: '6xx' is not …`."""
    field, sep, rest = message.partition(": ")
    if not sep or not field.isidentifier():
        return message
    return f"--{_OPTION_OF.get(field, field)}: {rest}"


def _params(query: Query, limit: int, cursor: str | None) -> dict[str, str]:
    params = {
        "source": query.source,
        "dest": query.dest,
        "service": query.service,
        "path": query.path,
        "status": query.status,
        "decision": query.decision,
        "trace": query.trace_id,
        "kind": query.kind,
        "direction": query.direction,
        "calls": query.calls,
        "since": None if query.since_ns is None else str(query.since_ns),
        "until": None if query.until_ns is None else str(query.until_ns),
        "order": query.order,
        "limit": str(limit),
        "cursor": cursor,
    }
    return {key: value for key, value in params.items() if value is not None}


def _remote_events(
    args: argparse.Namespace, query: Query
) -> tuple[list[tuple[int, bytes]], str | None]:
    rows: list[tuple[int, bytes]] = []
    cursor = args.cursor
    with api_client(args) as client:
        while len(rows) < query.limit:
            want = min(PAGE, query.limit - len(rows))
            page = api_get(client, "/v1/events", _params(query, want, cursor))
            for item in page["events"]:
                # the server sends the canonical bytes; re-encoding restores them exactly
                event = decode_event(msgspec.json.encode(item["event"]))
                rows.append((int(item["index"]), canonical_bytes(event)))
            cursor = page["next"]
            if cursor is None:
                break
    return rows, cursor


def _local_events(
    args: argparse.Namespace, query: Query
) -> tuple[list[tuple[int, bytes]], str | None]:
    with local_ledger(args.data) as ledger:
        try:
            page = run(ledger.store, query, args.cursor)
        except QueryError as exc:
            raise UserError(_as_option(str(exc))) from None
    return page.rows, page.next


def run_query(args: argparse.Namespace) -> int:
    query = query_of(args)
    rows, cursor = (_remote_events if args.url else _local_events)(args, query)
    out = sys.stdout
    if args.format == "json":
        items = [{"index": i, "event": msgspec.json.decode(d)} for i, d in rows]
        body = {"events": items, "count": len(items), "next": cursor}
        out.write(msgspec.json.encode(body).decode() + "\n")
    elif args.format == "ecs":
        encoder = msgspec.json.Encoder()
        for index, data in rows:
            doc = ecs_document(decode_event(data), index=index, leaf=leaf_hash(data))
            out.write(encoder.encode(doc).decode() + "\n")
    else:
        _event_table([(i, decode_event(d)) for i, d in rows])
    if cursor is not None:
        print(f"more events: add --cursor {cursor}", file=sys.stderr)
    return 0


def format_time(time_ns: int) -> str:
    moment = datetime.fromtimestamp(time_ns // 1_000_000_000, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S}.{time_ns // 1_000_000 % 1000:03d}"


def _console() -> Console:
    """Rich's console; 160 columns when writing to a pipe or file instead of 80."""
    return Console(highlight=False, width=None if sys.stdout.isatty() else 160)


def _event_table(events: list[tuple[int, AuditEvent]]) -> None:
    console = _console()
    if not events:
        console.print("no events match")
        return
    table = Table(box=None, header_style="bold")
    for column in ("time (UTC)", "index", "source → destination", "request", "status"):
        table.add_column(column, no_wrap=column != "request", overflow="fold")
    table.add_column("decision", no_wrap=True)
    table.add_column("duration", justify="right", no_wrap=True)
    table.add_column("trace", no_wrap=True)
    for index, event in events:
        http, authz = event.http, event.authz
        request = event.kind if http is None else f"{http.method or ''} {http.path or ''}"
        status = "" if http is None or http.status is None else str(http.status)
        if status.startswith("5"):
            status = f"[red]{status}[/]"
        decision: str = "" if authz is None else authz.decision
        if decision == "deny":
            decision = f"[bold red]deny[/] {escape(authz.policy or '') if authz else ''}"
        arrow = "→" if event.direction != "outbound" else "⇢"
        parties = f"{trace.peer_name(event.source)} {arrow} {trace.peer_name(event.destination)}"
        table.add_row(
            format_time(int(event.time_ns)),
            str(index),
            escape(parties),
            escape(request.strip()),
            status,
            decision,
            graph.format_duration(event.duration_us) if event.kind in ("http", "tcp") else "",
            "" if event.trace is None else event.trace.trace_id[:8],
        )
    console.print(table)
    console.print(f"{len(events)} events (→ reported by the callee, ⇢ by the caller)")


# -- trace -----------------------------------------------------------------------------


def run_trace(args: argparse.Namespace) -> int:
    if args.url:
        with api_client(args) as client:  # the server resolves a prefix itself
            body = api_get(client, f"/v1/traces/{quote(args.trace_id.strip(), safe='')}")
    else:
        with local_ledger(args.data) as ledger:
            try:
                found = trace.trace_json(ledger.store, args.trace_id)
            except trace.TraceIdError as exc:
                raise UserError(str(exc)) from None
        if found is None:
            raise UserError(trace.not_found(args.trace_id))
        body = found
    if args.format == "json":
        print(msgspec.json.encode(body).decode())
    else:
        _console().print(trace_tree(body))
    return 0


def _call_label(call: dict[str, Any]) -> str:
    parts = [f"[bold]{escape(call['source'])} → {escape(call['destination'])}[/]"]
    if call.get("cut"):
        parts.insert(0, "↑")
    if call["method"] or call["path"]:
        parts.append(escape(f"{call['method'] or ''} {call['path'] or ''}".strip()))
    elif call["kind"] != "http":
        parts.append(call["kind"])
    status = call["status"]
    if status is not None:
        parts.append(f"[red]{status}[/]" if status >= 500 else str(status))
    elif call["outcome"] == "failure":
        parts.append("[red]failed[/]")
    if call["decision"] == "deny":
        parts.append(f"[bold red]denied[/] by {escape(call['policy'] or '?')}")
    elif call["decision"]:
        parts.append(
            f"{call['decision']}" + (f" ({escape(call['policy'])})" if call["policy"] else "")
        )
    parts.append(graph.format_duration(call["duration_us"]))
    if call["error"]:
        parts.append(f"[red]{escape(call['error']['type'])}[/]")
    sides = [name for name in ("outbound", "inbound") if call[name]]
    parts.append(f"[dim]{'+'.join(sides)}[/]" if len(sides) == 2 else f"[dim]{sides[0]} only[/]")
    if not call["mtls"]:
        parts.append("[yellow]plaintext[/]")
    return "  ".join(parts)


def trace_tree(body: dict[str, Any]) -> Tree:
    """The rich tree of `trace.to_json` output (local or from the API)."""
    head = (
        f"trace {body['trace_id']}: {body['calls']} calls from {body['events']} events, "
        f"{graph.format_duration(body['duration_us'])}"
    )
    if body["failures"] or body["denials"]:
        head += f", [red]{body['failures']} failed, {body['denials']} denied[/]"
    if body.get("truncated"):
        head += f" [yellow](only the first {body['events']:,} events of the trace)[/]"
    if body.get("cut_calls"):
        head += f" [yellow]({body['cut_calls']:,} calls nested too deep shown as roots: ↑)[/]"
    tree = Tree(head)
    stack = [(tree, root) for root in reversed(body["roots"])]
    while stack:
        parent, call = stack.pop()
        node = parent.add(_call_label(call))
        stack.extend((node, child) for child in reversed(call["children"]))
    return tree


# -- graph -----------------------------------------------------------------------------


def run_graph(args: argparse.Namespace) -> int:
    now = time.time_ns()
    since, until = parse_window_ns(args.since, args.until, now)
    if args.url:
        with api_client(args) as client:
            body = api_get(client, "/v1/graph", window_params(since, until))
        result = graph.from_json(body)
    else:
        with local_ledger(args.data) as ledger:
            rollup = Rollup(ledger.store, ledger.data_dir / ROLLUP_DB)
            try:
                result = graph.compute(rollup, since_ns=since, until_ns=until, now_ns=now)
            finally:
                rollup.close()
        body = graph.to_json(result)
    if args.format == "json":
        print(msgspec.json.encode(body).decode())
    elif args.format == "dot":
        sys.stdout.write(graph.to_dot(result))
    else:
        _graph_table(result)
    return 0


GRAPH_COLUMNS = (
    "calls",
    "rate while active",
    "errors",
    "denied",
    "mTLS",
    "p50",
    "p95",
    "p99",
    "bytes",
)


def _graph_table(result: graph.Graph) -> None:
    console = _console()
    if not result.edges:
        console.print("no calls in the window")
        return
    names = graph.node_names(result)
    window = ""
    if result.from_ns is not None and result.to_ns is not None:
        window = f" {format_time(result.from_ns)} → {format_time(result.to_ns)} UTC"
    table = Table(title=f"service graph{window}", box=None, header_style="bold")
    table.add_column("caller")
    table.add_column("callee")
    for column in GRAPH_COLUMNS:
        table.add_column(column, justify="right")
    unit = graph.rate_unit(e.active_rate_per_s for e in result.edges)  # one for the table
    for e in result.edges:
        errors = f"{100 * e.error_rate:.1f}%"
        if e.error_rate >= 0.05:
            errors = f"[red]{errors}[/]"
        mtls = f"{100 * e.mtls_share:.0f}%"
        if e.plaintext:
            mtls = f"[yellow]{mtls}[/]"
        table.add_row(
            escape(names[(e.source_namespace, e.source)]),
            escape(names[(e.dest_namespace, e.dest)]),
            str(e.requests),
            graph.format_rate_in(e.active_rate_per_s, unit),
            errors,
            f"[bold magenta]{e.denied} denied[/]" if e.denied else "0",
            mtls,
            graph.format_duration(e.p50_us),
            graph.format_duration(e.p95_us),
            graph.format_duration(e.p99_us),
            _bytes(e.request_bytes + e.response_bytes),
        )
    console.print(table)
    console.print(
        f"{result.requests} calls; each counted once (the callee's report preferred); "
        "latency to two significant digits"
    )
    console.print(escape(graph.RATE_NOTE))


def _bytes(count: int) -> str:
    if count < 1000:
        return f"{count} B"
    value = float(count)
    for unit in ("kB", "MB", "GB", "TB"):
        value /= 1000
        if value < 1000 or unit == "TB":
            break
    return f"{value:.1f} {unit}"
