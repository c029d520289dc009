"""The ledger benchmarks of issue 2: durable ingest, inclusion proofs, full verify.

Each section prints its figures next to a peer measured in the same run and the issue's target;
`bench.run` collects them into one table. Run alone: `.venv/bin/python -m bench.ledger_bench`
(same flags as `bench.run`). Data lives in a temporary directory, removed at the end.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from auditmesh.events import AuditEvent
from bench import ingest_bench, proof_bench, verify_bench
from bench.common import Figure, generate_events, progress

SECTIONS = ("ingest", "proof", "verify")
BASE_EVENTS = 50_000  # generated once; the verify ledger copies them with fresh ids
QUICK = {
    "events": 5_000,
    "http_events": 3_000,
    "breakdown_events": 3_000,
    "proofs": 200,
    "verify_events": 20_000,
}
QUICK_PROOF_SIZES = (10_000, 100_000)


def count(text: str) -> int:
    """`250000`, `250k`, `1M`, `10m` → an int."""
    text = text.strip().lower().replace("_", "").replace(",", "")
    scale = {"k": 1_000, "m": 1_000_000}.get(text[-1:], 1)
    number = text[:-1] if scale > 1 else text
    try:
        value = int(float(number) * scale)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a count: {text!r} (e.g. 200000, 250k, 1M)") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"a count must be positive, got {text!r}")
    return value


def counts(text: str) -> tuple[int, ...]:
    return tuple(count(part) for part in text.split(",") if part.strip())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--quick", action="store_true", help="small sizes, for a smoke test (about a minute)"
    )
    parser.add_argument(
        "--only",
        choices=SECTIONS,
        action="append",
        help="run only this ledger section (repeatable)",
    )
    parser.add_argument("--events", type=count, help="ingest: events per run (default 100k)")
    parser.add_argument("--http-events", type=count, help="ingest over HTTP (default 60k)")
    parser.add_argument("--batch", type=count, default=1_000, help="events per batch (1000)")
    parser.add_argument(
        "--clients", type=int, default=4, help="concurrent HTTP clients / collector submitters (4)"
    )
    parser.add_argument("--breakdown-events", type=count, help="ingest cost breakdown (20k)")
    parser.add_argument("--proof-sizes", type=counts, help="tree sizes, e.g. 1M,10M (default)")
    parser.add_argument("--proofs", type=count, help="proofs timed per size and mode (2000)")
    parser.add_argument("--verify-events", type=count, help="events in the verified ledger (1M)")


def _pick(args: argparse.Namespace, name: str, default: int) -> int:
    given: int | None = getattr(args, name)
    if given is not None:
        return given
    return QUICK[name] if args.quick else default


def run(args: argparse.Namespace, work: Path) -> list[Figure]:
    sections = args.only or SECTIONS
    ingest = ingest_bench.IngestOptions(
        events=_pick(args, "events", 100_000),
        http_events=_pick(args, "http_events", 60_000),
        batch=args.batch,
        clients=args.clients,
        breakdown_events=_pick(args, "breakdown_events", 20_000),
    )
    sizes: tuple[int, ...] = args.proof_sizes or (
        QUICK_PROOF_SIZES if args.quick else (1_000_000, 10_000_000)
    )
    proofs = proof_bench.ProofOptions(sizes=sizes, proofs=_pick(args, "proofs", 2_000))
    verify = verify_bench.VerifyOptions(events=_pick(args, "verify_events", 1_000_000))
    wanted = max(
        ingest.events if "ingest" in sections else 0,
        min(BASE_EVENTS, verify.events) if "verify" in sections else 0,
    )
    figures: list[Figure] = []
    events: list[AuditEvent] = []
    if wanted:
        progress(f"generating {wanted:,} simulated events (TrafficGenerator, before any timing)")
        events = generate_events(wanted)
    if "ingest" in sections:
        figures += ingest_bench.run(events[: ingest.events], ingest, work / "ingest")
    if "proof" in sections:
        figures += proof_bench.run(proofs, work / "proof")
    if "verify" in sections:
        base = events[: min(BASE_EVENTS, verify.events)]
        figures += verify_bench.run(base, verify, work / "verify")
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    add_arguments(parser)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="auditmesh-bench-") as tmp:
        figures = run(args, Path(tmp))
    from bench.run import print_table

    print_table(figures)


if __name__ == "__main__":
    main()
