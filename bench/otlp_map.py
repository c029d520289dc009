"""µs to map one Envoy access-log record of an OTLP logs request to its audit event and entry.

    .venv/bin/python -m bench.otlp_map [--records N]

The server's mapping step alone (`ingest.otlp.map_request`: parse Istio's TEXT line, build
and validate the event, encode its entry), best of five passes over the same requests, in one
process: steadier than the end-to-end OTLP bench for comparing two revisions, e.g. with
`git worktree add /tmp/old REV` and `PYTHONPATH=/tmp/old/src:. python -m bench.otlp_map`.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence

from auditmesh.ingest import otlp
from bench.ingest_export_bench import envoy_lines, otlp_bodies


def map_us(records: int, batch: int = 512, passes: int = 5) -> float:
    """The best pass's µs per record."""
    bodies = otlp_bodies(envoy_lines(records, seed=5), batch)
    requests = [otlp.decode_request("logs", body, "protobuf") for body in bodies]
    best = float("inf")
    for _ in range(passes):
        start = time.perf_counter()
        for request in requests:
            otlp.map_request(request)
        best = min(best, time.perf_counter() - start)
    return best / records * 1e6


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=10_240, help="records (10,240)")
    args = parser.parse_args(argv)
    print(f"map_request, Envoy TEXT records: {map_us(args.records):.1f} µs a record")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
