"""Findings over synthetic streams: each planted anomaly is found and attributed; steady
traffic raises nothing."""

from __future__ import annotations

import json
import random
import zipfile
from pathlib import Path

import msgspec
import pytest

from auditmesh.analysis.findings import BUNDLE_CAP, EVIDENCE_CAP, detect
from auditmesh.cli.main import main
from auditmesh.datadir import open_ledger
from auditmesh.events import HTTP, TLS, AuditEvent, Authz, Error, Peer, Trace, new_event_id
from auditmesh.simulate import TrafficGenerator
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
    span: str | None = None,
    parent: str | None = None,
    direction: str = "inbound",
    error: str | None = None,
    ip: str = "10.0.0.1",
    rng: random.Random,
) -> AuditEvent:
    time_ns = T0 + int(t * S)
    return AuditEvent(
        id=new_event_id(lambda: time_ns, rng.randbytes),
        time_ns=time_ns,
        duration_us=duration_ms * 1000,
        reporter=TD + dst,
        kind="http",
        direction="outbound" if direction == "outbound" else "inbound",
        source=Peer(identity=TD + src if mtls else None, service=src if mtls else None, ip=ip),
        destination=Peer(identity=TD + dst, service=dst, namespace="shop"),
        tls=TLS(mutual=True) if mtls else None,
        http=HTTP(
            method="GET",
            path="/x",
            status=403 if denied else status,
            response_bytes=0 if denied else body,
        ),
        authz=Authz(decision="deny", policy="shop/only-orders") if denied else None,
        trace=None if trace is None else Trace(trace_id=trace, span_id=span, parent_span_id=parent),
        outcome="failure" if denied or status >= 500 or error else "success",
        error=Error(type=error or "x") if status >= 500 or error else None,
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
    # a flood on an edge that did not exist before is one finding, the new edge, with its
    # volume; every call denied is one finding too, the denials
    new = found[("new_edge", TD + "batch-report", "orders")]
    assert "200 calls, 60.0 MB of responses" in new.summary
    assert ("excessive_volume", TD + "batch-report", "orders") not in found
    denials = found[("repeated_denials", TD + "batch-report", "payments")]
    assert denials.count == 5 and "shop/only-orders" in denials.summary
    assert ("new_edge", TD + "batch-report", "payments") not in found
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
    # every failure of the burst is in it, not only the EVIDENCE_CAP listed
    out = capsys.readouterr().out
    assert "OK: 30 event(s) proven" in out
    assert "not checked: README.md, finding.json (explanations for the reader" in out


def test_latency_regression_of_a_service_itself() -> None:
    rng = random.Random(6)
    events = steady()
    events += [
        call(60 + i * 0.25, "frontend", "orders", duration_ms=400, rng=rng) for i in range(80)
    ]  # 20 s (four buckets) at the usual rate: slow, not a flood
    slow = [f for f in detect(indexed(events)) if f.kind == "latency_regression"]
    assert [(f.responsible, f.destination) for f in slow] == [(TD + "orders", "orders")]
    assert slow[0].observed >= 400_000 and slow[0].expected < 50_000


def authn_failure(t: float, ip: str, reason: str, *, rng: random.Random) -> AuditEvent:
    time_ns = T0 + int(t * S)
    return AuditEvent(
        id=new_event_id(lambda: time_ns, rng.randbytes),
        time_ns=time_ns,
        reporter=TD + "orders",
        kind="authn",
        direction="inbound",
        source=Peer(ip=ip, port=40000),
        destination=Peer(identity=TD + "orders", service="orders", namespace="shop"),
        tls=TLS(mutual=False, peer_cert_sha256="ab" * 32) if reason == "bad_certificate" else None,
        outcome="failure",
        error=Error(type=reason, message="refused"),
        attested=True,
    )


@pytest.mark.parametrize("seed", range(10))
def test_generated_mesh_traffic_raises_only_the_steady_denials(seed: int) -> None:
    """TrafficGenerator: random 5xx and 404s on every edge, and batch-report's calls to
    payments, all denied. The denials are a finding (the same caller, refused over and over,
    naming the policy); no allowed edge raises anything."""
    events = list(TrafficGenerator(seed=seed, start_ns=T0).events(3000 if seed % 2 else 800))
    [finding] = detect(list(enumerate(events)))
    denied = [(i, e) for i, e in enumerate(events) if e.authz and e.authz.decision == "deny"]
    assert finding.kind == "repeated_denials" and finding.destination == "payments"
    assert finding.responsible == TD + "batch-report" and finding.source == "batch-report"
    assert "shop/payments-only" in finding.summary
    assert dict(finding.details)["policy"] == "shop/payments-only"
    assert finding.count == len(denied) and finding.ratio is None
    assert finding.start_ns == denied[0][1].time_ns and finding.end_ns == denied[-1][1].time_ns
    assert finding.indices == tuple(i for i, _ in denied[:EVIDENCE_CAP])
    assert finding.event_ids == tuple(e.id for _, e in denied[:EVIDENCE_CAP])
    assert finding.evidence == tuple(i for i, _ in denied[:BUNDLE_CAP])  # what a bundle holds


def test_findings_are_deterministic() -> None:
    rng = random.Random(7)
    events = steady()
    events += [call(60 + i * 0.05, "frontend", "catalog", status=503, rng=rng) for i in range(40)]
    events += [call(70 + i, "batch-report", "payments", denied=True, rng=rng) for i in range(5)]
    first = [f.to_json() for f in detect(indexed(events))]
    second = [f.to_json() for f in detect(indexed(list(reversed(events))))]
    assert first == second and len(first) == 2
    assert json.loads(json.dumps(first)) == first  # plain JSON values


def test_error_burst_window_and_numbers() -> None:
    rng = random.Random(8)
    events = steady()
    burst = [call(60 + i * 0.05, "frontend", "catalog", status=503, rng=rng) for i in range(40)]
    [finding] = detect(indexed(events + burst))
    # 100 s → buckets of 5 s on the clock; the burst (60 s – 62 s) is in [60 s, 65 s)
    start = T0 + 60 * S
    assert (finding.start_ns, finding.end_ns) == (start, start + 5 * S)
    in_window = [e for e in events + burst if start <= e.time_ns < start + 5 * S]
    catalog = [e for e in in_window if e.destination and e.destination.service == "catalog"]
    failed = [e for e in catalog if e.outcome == "failure"]
    assert finding.count == len(failed) and finding.observed == len(failed) / len(catalog)
    assert finding.ratio is None or finding.ratio > 10
    assert set(finding.event_ids) <= {e.id for e in failed}
    details = dict(finding.details)
    assert details["calls"] == str(len(catalog)) and "frontend" in details["callers"]


def test_time_bounds_select_the_events() -> None:
    rng = random.Random(9)
    events = steady()
    events += [call(60 + i * 0.05, "frontend", "catalog", status=503, rng=rng) for i in range(40)]
    assert [f.kind for f in detect(indexed(events))] == ["error_burst"]
    assert detect(indexed(events), end_ns=T0 + 59 * S) == []
    assert detect(indexed(events), start_ns=T0 + 63 * S) == []


def test_volume_counts_what_was_served_and_names_the_numbers() -> None:
    rng = random.Random(10)
    events = steady()
    events += [call(t * 0.5, "batch-report", "orders", body=2000, rng=rng) for t in range(200)]
    flood = [
        call(70 + i * 0.01, "batch-report", "orders", body=50_000, rng=rng) for i in range(300)
    ]
    denied = [
        call(30 + i * 0.01, "batch-report", "payments", denied=True, rng=rng) for i in range(300)
    ]
    for t in range(0, 100, 2):  # payments' caller is a known edge, denied at a steady pace
        denied.append(call(t + 0.5, "batch-report", "payments", denied=True, rng=rng))
    found = detect(indexed(events + flood + denied))
    [volume] = [f for f in found if f.kind == "excessive_volume"]
    assert (volume.responsible, volume.source, volume.destination) == (
        TD + "batch-report",
        "batch-report",
        "orders",
    )
    start = T0 + 70 * S  # buckets of 5 s on the clock
    assert (volume.start_ns, volume.end_ns) == (start, start + 5 * S)
    assert volume.unit == "response bytes per bucket"
    window = [e for e in events + flood if start <= e.time_ns < start + 5 * S]
    served = [e for e in window if e.source and e.source.service == "batch-report"]
    assert volume.count == len(served) and 300 < len(served) <= 310
    assert volume.observed == sum(e.http.response_bytes or 0 for e in served if e.http)
    assert volume.expected == pytest.approx(10 * 2000, rel=0.2)
    assert volume.ratio is not None and volume.ratio > 50
    assert {f.kind for f in found} == {"excessive_volume", "repeated_denials"}


def test_a_rare_edge_quiet_at_first_is_not_new_but_a_busy_one_is() -> None:
    rng = random.Random(11)
    events = steady()
    events += [call(t, "batch-report", "catalog", rng=rng) for t in (55, 70, 85, 99)]
    events += [call(50 + i * 0.5, "orders", "catalog", rng=rng) for i in range(100)]
    [new] = detect(indexed(events))
    assert (new.kind, new.responsible, new.source, new.destination) == (
        "new_edge",
        TD + "orders",
        "orders",
        "catalog",
    )
    assert new.start_ns == T0 + 50 * S and new.count == 100 and new.expected == 0


def test_plaintext_calls_are_blamed_on_each_caller() -> None:
    rng = random.Random(12)
    events = steady()
    events += [call(70 + i, "x", "payments", mtls=False, ip="10.9.9.9", rng=rng) for i in range(2)]
    events += [call(80, "x", "orders", mtls=False, ip="10.9.9.8", rng=rng)]
    found = {(f.kind, f.responsible, f.destination): f for f in detect(indexed(events))}
    assert set(found) == {
        ("plaintext_calls", "10.9.9.9", "payments"),
        ("plaintext_calls", "10.9.9.8", "orders"),
    }
    assert found[("plaintext_calls", "10.9.9.9", "payments")].count == 2


def test_failed_authentications_by_source_with_their_reasons() -> None:
    rng = random.Random(13)
    events = steady()
    events += [
        authn_failure(70 + i, "203.0.113.9", reason, rng=rng)
        for i, reason in enumerate(["not_tls", "bad_certificate", "not_tls", "not_tls"])
    ]
    events += [
        authn_failure(75, "203.0.113.10", "not_tls", rng=rng)
    ]  # once: a retry, not a pattern
    [finding] = detect(indexed(events))
    assert (finding.kind, finding.responsible, finding.destination) == (
        "failed_authentication",
        "203.0.113.9",
        "orders",
    )
    assert finding.count == 4 and (finding.start_ns, finding.end_ns) == (T0 + 70 * S, T0 + 73 * S)
    details = dict(finding.details)
    assert details["reasons"] == "not_tls ×3, bad_certificate ×1"
    assert details["presented_cert_sha256"] == "ab" * 32
    assert "not_tls" in finding.summary and "203.0.113.9" in finding.summary


@pytest.fixture(scope="module")
def troubled(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    rng = random.Random(14)
    events = steady(60)  # 20 failures over 5 s: about double catalog's usual calls, not a flood
    events += [call(40 + i * 0.25, "frontend", "catalog", status=500, rng=rng) for i in range(20)]
    events += [call(45 + i, "batch-report", "payments", denied=True, rng=rng) for i in range(4)]
    path = tmp_path_factory.mktemp("findings") / "data"
    ledger = open_ledger(path, origin="test.auditmesh/findings")
    fill(ledger, sorted(events, key=lambda e: e.time_ns), checkpoint_every=500)
    vkey = ledger.vkey
    ledger.close()
    return path, vkey


def test_cli_table_names_who_and_what(
    troubled: tuple[Path, str], capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "250")  # rich folds cells to the terminal's width
    assert main(["findings", "--data", str(troubled[0])]) == 0
    out = capsys.readouterr().out
    assert "2 finding(s)" in out and "error_burst" in out and "repeated_denials" in out
    assert "batch-report" in out and "catalog" in out


def test_cli_json_and_time_bounds(
    troubled: tuple[Path, str], capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(troubled[0])
    assert main(["findings", "--data", data, "--format", "json"]) == 0
    found = json.loads(capsys.readouterr().out)
    assert [f["kind"] for f in found] == ["error_burst", "repeated_denials"]
    assert found[0]["responsible"] == TD + "catalog" and found[0]["observed"] >= 0.4
    assert found[1]["details"]["policy"] == "shop/only-orders"
    until = "2025-11-28T03:20:35Z"  # T0 is 03:20:00 UTC: the first 35 s hold neither
    assert main(["findings", "--data", data, "--format", "json", "--until", until]) == 0
    assert json.loads(capsys.readouterr().out) == []


def test_cli_bundles_verify_and_describe_their_finding(
    troubled: tuple[Path, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data, vkey = troubled
    out_dir = tmp_path / "bundles"
    assert main(["findings", "--data", str(data), "--bundle", str(out_dir)]) == 0
    assert "2 evidence bundle(s)" in capsys.readouterr().err
    bundles = sorted(out_dir.iterdir())
    assert [b.name for b in bundles] == ["01-error_burst.zip", "02-repeated_denials.zip"]
    for bundle in bundles:
        assert main(["bundle", "verify", str(bundle), "--key", vkey]) == 0
        assert "proven included" in capsys.readouterr().out
        with zipfile.ZipFile(bundle) as archive:
            described = json.loads(archive.read("finding.json"))
            proven = sorted(
                int(n[len("entries/") : -5]) for n in archive.namelist() if n.startswith("entries/")
            )
        assert described["proven_indices"] == proven == sorted(described["indices"])


def chain(
    i: int, t: float, *, callee_status: int, callee_skew_ms: float = 0.0, rng: random.Random
) -> list[AuditEvent]:
    """One call outside → frontend → catalog as three sidecars record it: frontend's inbound
    span A, its outbound span B (child of A), catalog's inbound span C (child of B)."""
    trace, (a, b, c) = f"{i:032x}", (f"{i:08x}a0000000", f"{i:08x}b0000000", f"{i:08x}c0000000")
    failed = callee_status >= 500
    return [
        call(t, "outside", "frontend", status=502 if failed else 200, mtls=False,
             trace=trace, span=a, rng=rng),
        call(t + 0.001, "frontend", "catalog", status=callee_status, trace=trace, span=b,
             parent=a, direction="outbound", rng=rng),
        call(t + 0.001 + callee_skew_ms / 1000, "frontend", "catalog", status=callee_status,
             trace=trace, span=c, parent=b, rng=rng),
    ]  # fmt: skip


@pytest.mark.parametrize("skew_ms", [0.0, -3.0, -500.0])
def test_a_callee_whose_clock_lags_is_still_the_one_blamed(skew_ms: float) -> None:
    # The parent links decide what is further down the trace, not the hosts' clocks.
    rng = random.Random(7)
    events = steady()
    for i in range(30):
        events += chain(i, 60 + i * 0.1, callee_status=500, callee_skew_ms=skew_ms, rng=rng)
    bursts = {f.destination for f in detect(indexed(events)) if f.kind == "error_burst"}
    assert bursts == {"catalog"}


def test_a_caller_answering_504_for_a_slow_callee_is_not_blamed() -> None:
    # orders' outbound call to payments timed out (UT) while payments, slowly, succeeded.
    rng = random.Random(8)
    events = steady()
    for i in range(30):
        trace, a, b = f"{i:032x}", f"{i:08x}a0000000", f"{i:08x}b0000000"
        t = 60 + i * 0.2
        events += [
            call(t, "frontend", "orders", status=504, trace=trace, span=a, rng=rng),
            call(t, "orders", "payments", status=504, error="upstream_timeout", trace=trace,
                 span=b, parent=a, direction="outbound", rng=rng),
        ]  # fmt: skip
    assert [f for f in detect(indexed(events)) if f.kind == "error_burst"] == []


def test_failures_the_callers_caused_are_not_the_services() -> None:
    # 40 malformed requests (the sidecar answers 400, DPE) and hang-ups (DC) at catalog.
    rng = random.Random(9)
    events = steady()
    for i in range(40):
        kind = "downstream_protocol_error" if i % 2 else "downstream_disconnect"
        events.append(call(60 + i * 0.05, "frontend", "catalog", status=400, error=kind, rng=rng))
    assert [f for f in detect(indexed(events)) if f.kind == "error_burst"] == []


def test_an_expired_certificate_is_blamed_on_whose_it_was() -> None:
    # 40 relays at catalog's inbound sidecar cut as an SVID expired (proxy/tcp.py): the
    # caller's (`peer_…`) is not catalog's failure; catalog's own (`local_…`) is.
    def cut(reason: str) -> list[AuditEvent]:
        rng = random.Random(11)
        return [
            call(60 + i * 0.05, "frontend", "catalog", error=reason, rng=rng) for i in range(40)
        ]

    callers = detect(indexed(steady() + cut("peer_certificate_expired")))
    assert [f for f in callers if f.kind == "error_burst"] == []
    own = detect(indexed(steady() + cut("local_certificate_expired")))
    assert {f.destination for f in own if f.kind == "error_burst"} == {"catalog"}


def test_an_outage_of_a_quiet_service_is_found() -> None:
    # payments takes a call every 30 s: no bucket ever holds 5 failures, the outage does.
    rng = random.Random(10)
    events = [call(t * 30.0, "orders", "payments", rng=rng) for t in range(120)]
    events += [call(3600 + t * 30.0, "orders", "payments", status=503, rng=rng) for t in range(120)]
    [finding] = detect(indexed(events))
    assert (finding.kind, finding.destination, finding.count) == ("error_burst", "payments", 120)


def test_a_slow_and_failing_service_is_not_said_to_be_flooded() -> None:
    rng = random.Random(12)
    events = steady()
    events += [
        call(60 + i * 0.25, "frontend", "orders", status=500, duration_ms=400, rng=rng)
        for i in range(80)
    ]
    found = {f.kind: f for f in detect(indexed(events))}
    slow = found["latency_regression"]
    assert "while orders was failing (orders failed" in slow.summary
    assert "flooded" not in slow.summary


def test_services_of_one_name_in_two_namespaces_are_judged_apart() -> None:
    """Regression: findings keyed services by name alone, so bank's payments failing every
    call was diluted by shop's healthy payments into no finding at all."""
    rng = random.Random(5)
    events = []
    for second in range(100):
        for k in range(9):
            events.append(call(second + k / 10, "orders", "payments", rng=rng))
        bank = call(second + 0.95, "ledger", "payments", status=500 if second >= 60 else 200,
                    rng=rng)  # fmt: skip
        assert bank.destination is not None
        events.append(
            msgspec.structs.replace(
                bank, destination=msgspec.structs.replace(bank.destination, namespace="bank")
            )
        )
    found = detect(list(enumerate(events)))
    bursts = [f for f in found if f.kind == "error_burst"]
    assert [f.destination for f in bursts] == ["payments.bank"]
    assert bursts[0].responsible == TD + "payments"
