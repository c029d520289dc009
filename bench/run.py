"""`make bench`: ledger, policy, ingest/export, query/graph, sidecar vs nginx; one table.

Every figure is printed next to the peer measured in the same run and, where issue 2 sets one,
its target with PASS/MISS. Nothing here asserts a speed. `--quick` runs small sizes as a smoke
test; see `--help` for the size flags. Data lives in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from bench import ledger_bench
from bench.common import Figure, fmt, machine_line

_DECISIONS = re.compile(r"^(?P<label>[\w.]+):\s+(?P<rate>[\d,]+) decisions/s")


def policy_section(quick: bool) -> list[Figure]:
    """Run `bench/policy_bench.py` (another engineer's) through its own `main`, if it is there."""
    print("\n== Policy engine (bench/policy_bench.py) ==", flush=True)
    try:
        module = importlib.import_module("bench.policy_bench")
    except ModuleNotFoundError as exc:
        if exc.name == "bench.policy_bench":
            print("skipped: bench/policy_bench.py is not there")
        else:
            print(f"skipped: bench/policy_bench.py cannot be imported: {exc}")
        return []
    except Exception as exc:  # someone else's module, work in progress: report, don't stop
        print(f"skipped: bench/policy_bench.py cannot be imported: {exc!r}")
        return []
    main: Callable[[], None] | None = getattr(module, "main", None)
    if main is None:
        print("skipped: bench/policy_bench.py has no main()")
        return []
    argv = ["bench/policy_bench.py", *(["--requests", "5000", "--seconds", "0.5"] if quick else [])]
    captured = io.StringIO()
    saved = sys.argv
    sys.argv = argv
    try:
        with contextlib.redirect_stdout(captured):
            main()
    except Exception as exc:
        print(captured.getvalue(), end="")
        print(f"policy_bench failed: {exc!r}")
        return []
    finally:
        sys.argv = saved
    print(captured.getvalue(), end="", flush=True)
    figures = []
    for line in captured.getvalue().splitlines():
        match = _DECISIONS.match(line)
        if match:
            rate = float(match["rate"].replace(",", ""))
            figures.append(Figure("policy", match["label"], rate, "decisions/s"))
    return figures


def print_table(figures: Sequence[Figure]) -> None:
    print("\n== Summary (ratio = figure / peer measured in the same run) ==")
    header = f"{'section':<16} {'figure':<44} {'value':>18} {'peer':>18} {'ratio':>8}  target"
    print(header)
    print("-" * (len(header) + 20))
    for f in figures:
        ratio = f.ratio()
        peer = "" if f.peer_value is None else fmt(f.peer_value, f.unit)
        target = "" if f.target is None else f"{f.target.text}: {f.target.status(f.value)}"
        print(
            f"{f.section:<16} {f.label:<44} {fmt(f.value, f.unit):>18} {peer:>18} "
            f"{'' if ratio is None else f'{ratio:.3f}':>8}  {target}"
        )
    peers = sorted({f"{f.section}: {f.peer_label}" for f in figures if f.peer_label})
    if peers:
        print("peers: " + "; ".join(peers))


def _load() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    ledger_bench.add_arguments(parser)
    parser.add_argument("--no-policy", action="store_true", help="skip the policy benchmark")
    parser.add_argument(
        "--no-proxy", action="store_true", help="skip the sidecar-vs-nginx benchmark"
    )
    args = parser.parse_args(argv)
    started = time.monotonic()
    print(f"auditmesh benchmarks — {time.strftime('%Y-%m-%d %H:%M:%S %Z')} — {machine_line()}")
    print("command: " + " ".join([sys.executable, "-m", "bench.run", *sys.argv[1:]]))
    print(
        f"load average at start: {_load()} (other work on this machine skews every figure)",
        flush=True,
    )
    with tempfile.TemporaryDirectory(prefix="auditmesh-bench-") as tmp:
        figures = ledger_bench.run(args, Path(tmp))
    if not args.no_policy and not args.only:
        figures += policy_section(args.quick)
    if not args.only:
        from bench import ingest_export_bench, query_bench

        figures += ingest_export_bench.ingest_export_section(args.quick)
        figures += query_bench.section(args.quick)
    if not args.no_proxy and not args.only:
        from bench.proxy_bench import proxy_section  # installs nginx and wrk when missing

        figures += proxy_section(args.quick)
    print_table(figures)
    print(f"\ntotal {time.monotonic() - started:.0f} s; load average at end: {_load()}", flush=True)


if __name__ == "__main__":
    main()
