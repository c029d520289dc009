"""Findings over synthetic streams: each planted anomaly is found and attributed; steady
traffic raises nothing."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from auditmesh.analysis.findings import detect
from auditmesh.cli.main import main
from auditmesh.datadir import open_ledger
from auditmesh.events import HTTP, TLS, AuditEvent, Authz, Error, Peer, Trace, new_event_id
from tests.conftest import fill

T0 = 1_764_300_000_000_000_000
S = 1_000_000_000
TD = "spiffe://cluster.local/ns/shop/sa/"


def call(
    t: float,
    src: str,
    dst: str,
    *,
    status: int = 200,
    denied: bool = False,
    mtls: bool = True,
    duration_ms: int = 5,
    body: int = 1000,
    trace: str | None = None,
    rng: random.Random,
) -> AuditEvent:
    time_ns = T0 + int(t * S)
    return AuditEvent(
        id=new_event_id(lambda: time_ns, rng.randbytes),
        time_ns=time_ns,
        duration_us=duration_ms * 1000,
        reporter=TD + dst,
        kind="http",
        direction="inbound",
        source=Peer(
            identity=TD + src if mtls else None, service=src if mtls else None, ip="10.0.0.1"
        ),
        destination=Peer(identity=TD + dst, service=dst, namespace="shop"),
        tls=TLS(mutual=True) if mtls else None,
        http=HTTP(
            method="GET",
            path="/x",
            status=403 if denied else status,
            response_bytes=0 if denied else body,
        ),
        authz=Authz(decision="deny", policy="shop/only-orders") if denied else None,
        trace=None if trace is None else Trace(trace_id=trace),
        outcome="failure" if denied or status >= 500 else "success",
        error=Error(type="x") if status >= 500 else None,
    )


def steady(seconds: int = 100, seed: int = 1) -> list[AuditEvent]:
    rng = random.Random(seed)
    events = []
    t = 0.0
    while t < seconds:
        t += rng.expovariate(10)
        src, dst = rng.choice(
            [("frontend", "catalog"), ("frontend", "orders"), ("orders", "payments")]
        )
        events.append(
            call(
                t,
                src,
                dst,
                status=500 if rng.random() < 0.01 else 200,
                duration_ms=int(rng.lognormvariate(1.5, 0.5)) + 1,
                rng=rng,
            )
        )
    return events


def indexed(events: list[AuditEvent]) -> list[tuple[int, AuditEvent]]:
    return list(enumerate(sorted(events, key=lambda e: e.time_ns)))


@pytest.mark.parametrize("seed", range(8))
def test_steady_traffic_raises_nothing(seed: int) -> None:
    assert detect(indexed(steady(seed=seed))) == []


def test_error_burst_is_found_and_blamed_on_the_failing_service() -> None:
    rng = random.Random(2)
    events = steady()
    events += [call(60 + i * 0.05, "frontend", "catalog", status=503, rng=rng) for i in range(40)]
    [finding] = detect(indexed(events))
    assert finding.kind == "error_burst" and finding.responsible == TD + "catalog"
    assert 59 * S <= finding.start_ns - T0 <= 61 * S and finding.count >= 30
    assert finding.observed > 0.5 and finding.expected < 0.05


def test_failures_passed_on_up_a_trace_blame_the_callee() -> None:
    rng = random.Random(3)
    events = steady()
    for i in range(30):
        trace = f"{i:032x}"
        events.append(
            call(
                60 + i * 0.1,
                "outside",
                "frontend",
                status=502,
                mtls=False,
                duration_ms=10,
                trace=trace,
                rng=rng,
            )
        )
        events.append(
            call(60 + i * 0.1 + 0.001, "frontend", "catalog", status=500, trace=trace, rng=rng)
        )
    kinds = {(f.kind, f.destination) for f in detect(indexed(events))}
    assert ("error_burst", "catalog") in kinds and ("error_burst", "frontend") not in kinds


def test_flood_new_edge_denials_and_plaintext() -> None:
    rng = random.Random(4)
    events = steady()
    events += [
        call(50 + i * 0.02, "batch-report", "orders", body=300_000, rng=rng) for i in range(200)
    ]
    events += [call(70 + i, "batch-report", "payments", denied=True, rng=rng) for i in range(5)]
    events += [call(80 + i, "intruder", "payments", mtls=False, rng=rng) for i in range(3)]
    found = {(f.kind, f.responsible, f.destination): f for f in detect(indexed(events))}
    assert ("excessive_volume", TD + "batch-report", "orders") in found
    assert ("new_edge", TD + "batch-report", "orders") in found
    denials = found[("repeated_denials", TD + "batch-report", "payments")]
    assert denials.count == 5 and "shop/only-orders" in denials.summary
    assert ("plaintext_calls", "10.0.0.1", "payments") in found
    assert all(f[1] not in (TD + "frontend", TD + "orders") for f in found)


def test_cli_table_json_and_bundles(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rng = random.Random(5)
    events = steady(60)
    events += [call(40 + i * 0.05, "frontend", "catalog", status=500, rng=rng) for i in range(30)]
    ledger = open_ledger(tmp_path / "data", origin="test.auditmesh/log")
    fill(ledger, sorted(events, key=lambda e: e.time_ns))
    vkey = ledger.vkey
    ledger.close()
    data = str(tmp_path / "data")
    assert main(["findings", "--data", data, "--format", "json"]) == 0
    assert '"kind": "error_burst"' in capsys.readouterr().out
    assert main(["findings", "--data", data, "--bundle", str(tmp_path / "b")]) == 0
    [bundle] = list((tmp_path / "b").iterdir())
    capsys.readouterr()
    assert main(["bundle", "verify", str(bundle), "--key", vkey]) == 0
    assert "proven included" in capsys.readouterr().out


def test_latency_regression_of_a_service_itself() -> None:
    rng = random.Random(6)
    events = steady()
    events += [
        call(60 + i * 0.25, "frontend", "orders", duration_ms=400, rng=rng) for i in range(80)
    ]  # 20 s (four buckets) at the usual rate: slow, not a flood
    slow = [f for f in detect(indexed(events)) if f.kind == "latency_regression"]
    assert [(f.responsible, f.destination) for f in slow] == [(TD + "orders", "orders")]
    assert slow[0].observed >= 400_000 and slow[0].expected < 50_000
