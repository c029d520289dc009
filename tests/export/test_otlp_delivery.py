"""`auditmesh export otlp` against a collector that misbehaves: real sockets (see
`tests/export/collector.py`), real ledgers, the cursor checked after every run."""

from __future__ import annotations

import hashlib
import time
from email.utils import formatdate
from pathlib import Path
from typing import Literal

import grpc
import msgspec
import pytest
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceRequest

from auditmesh.cli.export import otlp_cursor
from auditmesh.cli.main import main
from auditmesh.datadir import Ledger
from auditmesh.events import AuditEvent, canonical_bytes
from auditmesh.export.cursor import load_cursor
from auditmesh.export.otlp import ExportError, OtlpSender
from tests.conftest import fill, generate
from tests.export.collector import Answer, Fail, FakeCollector, Ok, log_indexes
from tests.export.test_otlp import request_for


def big_events(count: int, seed: int = 5) -> list[AuditEvent]:
    """Events near the 64 KiB entry limit, so that a few dozen fill a 4 MiB gRPC request."""
    labels = {f"k{n:02d}": "x" * 1000 for n in range(58)}
    events = [msgspec.structs.replace(e, labels=labels) for e in generate(count, seed=seed)]
    assert 55_000 < len(canonical_bytes(events[0])) < 0xFFFF
    return events


def accept_all(number: int, request: ExportLogsServiceRequest) -> Answer:
    return Ok()


@pytest.mark.integration
def test_a_batch_split_to_fit_that_fails_midway_resumes_after_the_delivered_half(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # 100 records of ~62 KiB are over OTLP/gRPC's 4 MiB: the sender splits them in two. The
    # collector takes the first half and refuses the second. The first half is delivered:
    # the next run must start after it, not send it a second time.
    fill(ledger, big_events(100))
    cursor = tmp_path / "otlp.cursor"

    def argv(endpoint: str) -> list[str]:
        return [
            "export", "otlp", "--data", str(ledger.data_dir), "--endpoint", endpoint,
            "--protocol", "grpc", "--batch", "100", "--cursor", str(cursor),
        ]  # fmt: skip

    def second_fails(number: int, request: ExportLogsServiceRequest) -> Answer:
        if number == 0:
            return Ok()
        return Fail(400, grpc.StatusCode.INVALID_ARGUMENT, message="refused by a test")

    with FakeCollector(second_fails, protocol="grpc") as collector:
        assert main(argv(collector.endpoint)) == 2
        assert len(collector.requests) == 2 and collector.accepted == list(range(50))
        err = capsys.readouterr().err
        assert "50 sent, the cursor stays at 50" in err, err
        saved = load_cursor(cursor)
        assert saved is not None and saved.next_index == 50

        collector.answer = accept_all  # the collector is fixed; the user runs it again
        assert main(argv(collector.endpoint)) == 0
    assert collector.accepted == list(range(100))  # each record once, in order
    assert "exported 50 events" in capsys.readouterr().err


@pytest.mark.integration
@pytest.mark.parametrize("protocol", ["http", "grpc"])
def test_a_partial_success_is_not_sent_again_and_the_export_goes_on(
    ledger: Ledger,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    protocol: Literal["http", "grpc"],
) -> None:
    # OTLP "Partial Success": the client MUST NOT retry the rejected records. The second of
    # three requests is taken in part; the export goes on with the third, names the range
    # of the partly rejected one, exits 2, and a second run sends nothing again.
    fill(ledger, generate(30))
    cursor = tmp_path / "otlp.cursor"
    argv = [
        "export", "otlp", "--data", str(ledger.data_dir), "--protocol", protocol,
        "--batch", "10", "--cursor", str(cursor), "--endpoint",
    ]  # fmt: skip

    def second_in_part(number: int, request: ExportLogsServiceRequest) -> Answer:
        return Ok(rejected=3, message="3 records over the attribute limit") if number == 1 else Ok()

    with FakeCollector(second_in_part, protocol=protocol) as collector:
        assert main([*argv, collector.endpoint]) == 2
        sent = [index for request in collector.requests for index in log_indexes(request)]
        assert sent == list(range(30))  # every record once, the export went on after 19
        assert collector.accepted == [*range(10), *range(20, 30)]
        err = capsys.readouterr().err
        assert "rejected 3 of the log records for entries 10..19" in err, err
        assert "3 records over the attribute limit" in err
        assert "exported 27 events" in err
        saved = load_cursor(cursor)
        assert saved is not None and saved.next_index == 30

        collector.answer = accept_all
        assert main([*argv, collector.endpoint]) == 0
    assert len(collector.requests) == 3  # nothing sent a second time
    assert "exported 0 events" in capsys.readouterr().err


@pytest.mark.integration
def test_a_receiver_behind_a_proxy_with_a_smaller_body_limit_gets_smaller_requests(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A collector behind nginx, whose client_max_body_size is 1 MiB by default, answers 413
    # to a default batch of 512 records (about 1.2 MiB). The exporter learns the limit and
    # sends smaller requests; before, every run failed on the same batch.
    limit = 256 * 1024
    fill(ledger, generate(1100))  # batches of 512, 512, 76

    def proxy_limit(number: int, request: ExportLogsServiceRequest) -> Answer:
        if request.ByteSize() > limit:
            return Fail(413, message="<html>413 Request Entity Too Large</html>")
        return Ok()

    with FakeCollector(proxy_limit) as collector:
        argv = ["export", "otlp", "--data", str(ledger.data_dir)]
        argv += ["--endpoint", collector.endpoint, "--cursor", str(tmp_path / "c")]
        assert main(argv) == 0, capsys.readouterr().err
    assert collector.accepted == list(range(1100))  # each once, in order
    first = [r.ByteSize() for r in collector.requests if log_indexes(r)[0] < 512]
    later = [r.ByteSize() for r in collector.requests if log_indexes(r)[0] >= 512]
    assert max(first) > limit and max(later) <= limit  # learnt in the first batch
    assert "exported 1100 events" in capsys.readouterr().err


@pytest.mark.integration
def test_a_single_record_over_the_receivers_limit_is_a_clear_error(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(ledger, big_events(3))

    def tiny_limit(number: int, request: ExportLogsServiceRequest) -> Answer:
        return Fail(413, message="too large") if request.ByteSize() > 20_000 else Ok()

    with FakeCollector(tiny_limit) as collector:
        argv = ["export", "otlp", "--data", str(ledger.data_dir)]
        argv += ["--endpoint", collector.endpoint, "--cursor", str(tmp_path / "c")]
        assert main(argv) == 2
    err = capsys.readouterr().err
    assert "answered 413: too large" in err and "cursor stays at 0" in err, err
    # 3 records refused, then the first half, 1 record, refused too: an error, not a loop.
    assert [len(r.resource_logs[0].scope_logs[0].log_records) for r in collector.requests] == [
        3,
        1,
    ]


def test_retry_after_as_an_http_date_is_honoured() -> None:
    # RFC 9110 §10.2.3: Retry-After is delay-seconds or an HTTP-date. A collector (or the
    # proxy before it) that names the time to come back gets that wait, not the backoff's.
    in_ten = formatdate(time.time() + 10, usegmt=True)

    def busy_once(number: int, request: ExportLogsServiceRequest) -> Answer:
        return Fail(503, headers={"Retry-After": in_ten}) if number == 0 else Ok()

    sleeps: list[float] = []
    with FakeCollector(busy_once) as collector:
        sender = OtlpSender(collector.endpoint, sleep=sleeps.append)
        try:
            sender.export(request_for(generate(2)))
        finally:
            sender.close()
    assert len(sleeps) == 1 and 8.0 <= sleeps[0] <= 10.0, sleeps
    assert collector.accepted == [0, 1]


@pytest.mark.integration
@pytest.mark.parametrize(
    "code", [grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE], ids=str
)
def test_grpc_throttling_waits_the_servers_retry_delay(code: grpc.StatusCode) -> None:
    # OTLP/gRPC Throttling: a server that cannot keep up answers RESOURCE_EXHAUSTED or
    # UNAVAILABLE with a google.rpc.RetryInfo; the client waits its retry_delay, and only
    # with it is RESOURCE_EXHAUSTED retryable (OTLP/gRPC Failures).
    def throttled_once(number: int, request: ExportLogsServiceRequest) -> Answer:
        return Fail(grpc_code=code, retry_delay_s=7) if number == 0 else Ok()

    sleeps: list[float] = []
    with FakeCollector(throttled_once, protocol="grpc") as collector:
        sender = OtlpSender(collector.endpoint, protocol="grpc", sleep=sleeps.append)
        try:
            sender.export(request_for(generate(2)))
        finally:
            sender.close()
    assert sleeps == [7.0]
    assert collector.accepted == [0, 1]


@pytest.mark.integration
def test_grpc_resource_exhausted_without_retry_info_is_not_retried() -> None:
    def exhausted(number: int, request: ExportLogsServiceRequest) -> Answer:
        return Fail(grpc_code=grpc.StatusCode.RESOURCE_EXHAUSTED, message="over quota")

    sleeps: list[float] = []
    with FakeCollector(exhausted, protocol="grpc") as collector:
        sender = OtlpSender(collector.endpoint, protocol="grpc", sleep=sleeps.append)
        try:
            with pytest.raises(ExportError, match="RESOURCE_EXHAUSTED: over quota"):
                sender.export(request_for(generate(2)))
        finally:
            sender.close()
    assert sleeps == [] and len(collector.requests) == 1


@pytest.mark.integration
def test_follow_outlives_a_collector_outage(
    ledger: Ledger, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # The collector answers 503 to its first four requests (a restart), more than one run of
    # --attempts 2 takes. Without --follow that ends the export; with it, the exporter waits
    # and sends again, and every record arrives once, in order.
    fill(ledger, generate(30))

    def down_at_first(number: int, request: ExportLogsServiceRequest) -> Answer:
        return Fail(503) if number < 4 else Ok()

    argv = [
        "export", "otlp", "--data", str(ledger.data_dir), "--cursor", str(tmp_path / "c"),
        "--attempts", "2", "--batch", "10",
    ]  # fmt: skip
    with FakeCollector(down_at_first) as collector:
        assert main([*argv, "--endpoint", collector.endpoint]) == 2  # no --follow: gives up
        assert "gave up after 2 attempts" in capsys.readouterr().err
        collector.answer = down_at_first  # numbering goes on: requests 2 and 3 fail too
        follow = ["--follow", "--poll", "0.1", "--exit-when-idle", "1"]
        assert main([*argv, "--endpoint", collector.endpoint, *follow]) == 0
    err = capsys.readouterr().err
    assert "trying again in 1 s" in err and "exported 30 events" in err
    assert collector.accepted == list(range(30))


def test_one_collector_typed_two_ways_shares_its_cursor(ledger: Ledger) -> None:
    fill(ledger, generate(20))
    with FakeCollector(accept_all) as collector:
        base = ["export", "otlp", "--data", str(ledger.data_dir)]
        assert main([*base, "--endpoint", collector.endpoint]) == 0
        shouted = collector.endpoint.replace("http://", "HTTP://").rstrip("/") + "/"
        assert main([*base, "--endpoint", shouted]) == 0  # nothing new to send
        assert collector.accepted == list(range(20))  # each record once
    assert len(list((ledger.data_dir / "export").glob("otlp-*.cursor"))) == 1


def test_a_cursor_named_after_the_address_as_typed_is_still_used(ledger: Ledger) -> None:
    fill(ledger, generate(20))
    with FakeCollector(accept_all) as collector:
        typed = collector.endpoint + "/"  # how an older auditmesh named its cursor file
        path, target = otlp_cursor(ledger.data_dir, "http", typed)
        assert target == f"http:{collector.endpoint}" and path.name.startswith("otlp-")
        argv = ["export", "otlp", "--data", str(ledger.data_dir), "--endpoint", typed]
        digest = hashlib.sha256(typed.encode()).hexdigest()[:16]  # the old naming
        legacy = ledger.data_dir / "export" / f"otlp-{digest}.cursor"
        assert main([*argv, "--cursor", str(legacy), "--batch", "5", "--attempts", "1"]) == 0
        assert main(argv) == 0  # finds the old file and its recorded target: sends nothing
        assert collector.accepted == list(range(20))


def test_an_endpoint_without_a_scheme_is_refused_naming_the_option(
    ledger: Ledger, capsys: pytest.CaptureFixture[str]
) -> None:
    fill(ledger, generate(2))
    data = str(ledger.data_dir)
    assert main(["export", "otlp", "--endpoint", "127.0.0.1:4318", "--data", data]) == 2
    err = capsys.readouterr().err
    assert "--endpoint: '127.0.0.1:4318' is not an http:// or https:// URL" in err
    assert "e.g. http://127.0.0.1:4318" in err


@pytest.mark.parametrize(
    ("protocol", "header", "said"),
    [
        ("http", "Authorization=Bearer s\u00e9cret", "--header authorization: the value"),
        ("http", "x-token=s3cret\r\nx-admin: 1", "--header x-token: the value"),
        ("grpc", "X Tenant=s3cret", "--header 'x tenant': a name takes"),
    ],
)
def test_a_header_that_cannot_be_sent_is_refused_before_sending(
    ledger: Ledger,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    protocol: Literal["http", "grpc"],
    header: str,
    said: str,
) -> None:
    # A value that is not printable ASCII was a UnicodeEncodeError traceback (HTTP), a line
    # break was retried as "cannot reach" (HTTP), a name with a space got gRPC INTERNAL
    # "Invalid metadata" from the collector's side of the call.
    fill(ledger, generate(3))
    with FakeCollector(accept_all, protocol=protocol) as collector:
        argv = ["export", "otlp", "--data", str(ledger.data_dir), "--protocol", protocol]
        argv += ["--endpoint", collector.endpoint, "--cursor", str(tmp_path / "c")]
        assert main([*argv, "--attempts", "1", "--header", header]) == 2
        assert collector.requests == []
    err = capsys.readouterr().err
    assert said in err and "cr\u00e9t" not in err and "s3cret" not in err, err
