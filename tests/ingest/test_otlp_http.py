"""ingest.otlp_http: the OTLP/HTTP routes in process (ASGI, no sockets), over a real ledger
and collector: encodings, gzip, size limits, error bodies, partial success, exactly-once."""

from __future__ import annotations

import asyncio
import gzip
import json
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from google.rpc import error_details_pb2, status_pb2
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import ExportLogsServiceResponse
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord
from starlette.applications import Starlette

from auditmesh.collector import Collector
from auditmesh.datadir import Ledger
from auditmesh.events import canonical_bytes
from auditmesh.export.otlp import log_records_request
from auditmesh.ingest import otlp, otlp_http
from auditmesh.ledger.merkle import leaf_hash
from tests.conftest import generate
from tests.ingest.test_otlp import (
    SPAN,
    STABLE_SERVER,
    START,
    TRACE,
    event_fields,
    kv_pairs,
    kvs,
    logs,
    span,
    to_otlp_json,
    traces,
)
from tests.ingest.test_otlp_grpc import envoy_export_with_latin1_agent

PROTOBUF = {"Content-Type": "application/x-protobuf"}
JSON = {"Content-Type": "application/json"}
LIMIT = 1024 * 1024


class Client:
    """httpx over its ASGI transport (the transport seam: the real app, no socket), driven
    from synchronous tests on one event loop."""

    def __init__(self, app: Starlette, runner: asyncio.Runner) -> None:
        self._http = httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://otlp.test"
        )
        self._runner = runner

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self._runner.run(self._http.post(path, **options))

    def get(self, path: str) -> httpx.Response:
        return self._runner.run(self._http.get(path))

    def close(self) -> None:
        self._runner.run(self._http.aclose())


@pytest.fixture
def client(collector: Collector) -> Iterator[Client]:
    app = Starlette(routes=otlp_http.routes(collector, max_body_bytes=LIMIT))
    with asyncio.Runner() as runner:
        test_client = Client(app, runner)
        yield test_client
        test_client.close()


def stored(ledger: Ledger, event_id: str) -> bool:
    return ledger.store.event_by_id(uuid.UUID(event_id).bytes) is not None


def test_protobuf_traces_are_stored_before_the_answer(client: Client, ledger: Ledger) -> None:
    body = traces(span(STABLE_SERVER)).SerializeToString()
    response = client.post("/v1/traces", content=body, headers=PROTOBUF)
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-protobuf"
    assert ExportTraceServiceResponse.FromString(response.content) == ExportTraceServiceResponse()
    assert stored(ledger, otlp.span_event_id(TRACE, SPAN, START))


def test_a_retried_export_is_logged_once(client: Client, ledger: Ledger) -> None:
    body = traces(span(STABLE_SERVER)).SerializeToString()
    for _ in range(3):
        assert client.post("/v1/traces", content=body, headers=PROTOBUF).status_code == 200
    assert ledger.log.size == 1


def test_json_traces_answer_json_with_partial_success(client: Client, ledger: Ledger) -> None:
    body = to_otlp_json(traces(span(STABLE_SERVER), span({"http.method": "GET"}, span_id=b"")))
    response = client.post(
        "/v1/traces", content=body, headers={"Content-Type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    partial = response.json()["partialSuccess"]
    assert partial["rejectedSpans"] == "1"  # int64 as a string (proto3 JSON mapping)
    assert "invalid span_id" in partial["errorMessage"]
    assert ledger.log.size == 1


def test_audit_event_lines_parsed_by_a_collector_are_stored(client: Client, ledger: Ledger) -> None:
    # What an OpenTelemetry Collector exports (OTLP/JSON) after its filelog receiver's
    # json_parser read a file of audit events: each line's fields as attributes.
    events = generate(5, seed=11)
    records = [
        LogRecord(attributes=[*kv_pairs(event_fields(e)), *kvs({"log.file.name": "audit.log"})])
        for e in events
    ]
    response = client.post(
        "/v1/logs", content=to_otlp_json(logs(*records, service="otelcol")), headers=JSON
    )
    assert response.status_code == 200 and response.json() == {}
    assert all(stored(ledger, e.id) for e in events)
    first = ledger.store.event_by_id(uuid.UUID(events[0].id).bytes)
    assert first is not None
    assert json.loads(first.data)["reporter"] == "ingest:otlp:otelcol"


def test_gzip_logs_are_inflated(client: Client, ledger: Ledger) -> None:
    events = generate(20)
    body = gzip.compress(logs(*map(otlp.audit_log_record, events)).SerializeToString())
    response = client.post(
        "/v1/logs", content=body, headers={**PROTOBUF, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 200
    assert ExportLogsServiceResponse.FromString(response.content) == ExportLogsServiceResponse()
    assert all(stored(ledger, e.id) for e in events)


def test_large_bodies_are_decoded_off_the_event_loop_alike(client: Client, ledger: Ledger) -> None:
    events = generate(400, seed=9)
    body = logs(*map(otlp.audit_log_record, events)).SerializeToString()
    assert otlp_http.INLINE_BYTES < len(body) < LIMIT
    for payload, coding in ((body, "identity"), (gzip.compress(body), "gzip")):
        headers = {**PROTOBUF, "Content-Encoding": coding}
        assert client.post("/v1/logs", content=payload, headers=headers).status_code == 200
    assert ledger.log.size == 400


def test_an_event_whose_id_the_log_holds_with_other_content_is_a_rejected_record(
    client: Client, ledger: Ledger
) -> None:
    # The same event relayed by two services: the second copy differs (its reporter names
    # the relay), so it is refused by name while the rest of its request is stored.
    first, second = generate(2, seed=17)
    once = logs(otlp.audit_log_record(first), service="edge-a").SerializeToString()
    assert client.post("/v1/logs", content=once, headers=PROTOBUF).status_code == 200
    both = logs(otlp.audit_log_record(first), otlp.audit_log_record(second), service="edge-b")
    response = client.post("/v1/logs", content=both.SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200
    partial = ExportLogsServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_log_records == 1
    assert f"event {first.id}: the log holds this id already" in partial.error_message
    assert stored(ledger, second.id) and ledger.log.size == 2
    kept = ledger.store.event_by_id(uuid.UUID(first.id).bytes)
    assert kept is not None and json.loads(kept.data)["reporter"] == "ingest:otlp:edge-a"


def test_records_exported_from_this_very_log_are_rejected_as_sent_back(
    client: Client, collector: Collector, ledger: Ledger
) -> None:
    # Regression: `auditmesh export otlp` pointed at the server of its own ledger had every
    # record rejected as "the log holds this id already, with other content".
    events = generate(6, seed=31)
    events[1] = msgspec.structs.replace(events[1], attested=True)
    collector.submit(events[:5]).result()
    entries = [
        (i, e, canonical_bytes(e), leaf_hash(canonical_bytes(e))) for i, e in enumerate(events)
    ]
    entries[4] = (3, *entries[4][1:])  # claims the entry of another event: a plain conflict
    request = log_records_request(entries, origin=ledger.log.origin)
    response = client.post("/v1/logs", content=request.SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200
    partial = ExportLogsServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_log_records == 5
    reporters = ", ".join(dict.fromkeys(e.reporter for e in events[:4]))
    assert partial.error_message == (
        f"rejected 5 of 6 log records: 4 events are already in this ledger as reported by "
        f"{reporters}: {otlp.SENT_BACK}; event {events[4].id}: the log holds this id already, "
        "with other content"
    )
    assert ledger.log.size == 6 and stored(ledger, events[5].id)  # only the new one added
    kept = ledger.store.event_by_id(uuid.UUID(events[1].id).bytes)
    assert kept is not None and kept.data == canonical_bytes(events[1])


def test_a_record_relayed_before_claims_were_kept_is_still_a_duplicate(
    client: Client, collector: Collector, ledger: Ledger
) -> None:
    """Regression: an event stored by a relay before the receiver kept its record's claims
    (no relayed.* labels), sent again by the same service afterwards (a retry across the
    upgrade), was rejected as an id held with other content; it is the same relayed event,
    taken once, while a real conflict in the same request is still rejected."""
    first, second, third = generate(3, seed=41)
    before = msgspec.structs.replace(
        first, reporter=otlp.REPORTER_PREFIX + "edge-a", attested=False
    )  # what as_received stored then: the record's reporter and attested dropped
    other = msgspec.structs.replace(third, http=None)  # the id of third, other content
    collector.submit([before, other]).result()
    request = logs(
        otlp.audit_log_record(first),
        otlp.audit_log_record(second),
        otlp.audit_log_record(third),
        service="edge-a",
    )
    response = client.post("/v1/logs", content=request.SerializeToString(), headers=PROTOBUF)
    assert response.status_code == 200
    partial = ExportLogsServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_log_records == 1, partial.error_message
    assert f"event {third.id}: the log holds this id already" in partial.error_message
    assert ledger.log.size == 3 and stored(ledger, second.id)
    kept = ledger.store.event_by_id(uuid.UUID(first.id).bytes)
    assert kept is not None and kept.data == canonical_bytes(before)


def test_partial_success_over_protobuf_counts_log_records(client: Client) -> None:
    request = logs(otlp.audit_log_record(generate(1)[0]))
    broken = request.resource_logs[0].scope_logs[0].log_records.add()
    broken.attributes.add(key=otlp.EVENT_ATTRIBUTE).value.string_value = "{}"
    response = client.post("/v1/logs", content=request.SerializeToString(), headers=PROTOBUF)
    partial = ExportLogsServiceResponse.FromString(response.content).partial_success
    assert partial.rejected_log_records == 1
    assert "rejected 1 of 2 log records" in partial.error_message


def test_an_empty_request_is_a_success(client: Client) -> None:
    assert client.post("/v1/traces", content=b"", headers=PROTOBUF).status_code == 200
    response = client.post("/v1/logs", content=b"{}", headers=JSON)
    assert (response.status_code, response.json()) == (200, {})


def status_of(content: bytes) -> status_pb2.Status:
    return status_pb2.Status.FromString(content)


def test_malformed_protobuf_is_400_with_a_bad_request_status(
    client: Client, ledger: Ledger
) -> None:
    response = client.post("/v1/traces", content=b"\x0a\xff\xff\xff\xff\x0f", headers=PROTOBUF)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/x-protobuf"
    status = status_of(response.content)
    assert "ExportTraceServiceRequest" in status.message
    detail = error_details_pb2.BadRequest()
    assert status.details[0].Unpack(detail)
    assert detail.field_violations[0].description == status.message
    assert ledger.log.size == 0


def test_malformed_json_is_400_with_a_json_status(client: Client) -> None:
    response = client.post("/v1/logs", content=b'{"resourceLogs": 7}', headers=JSON)
    assert response.status_code == 400
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert "resourceLogs" in body["message"] or "ExportLogsServiceRequest" in body["message"]
    assert body["details"][0]["@type"].endswith("google.rpc.BadRequest")


def test_broken_gzip_is_400(client: Client) -> None:
    response = client.post(
        "/v1/logs", content=b"not gzip", headers={**PROTOBUF, "Content-Encoding": "gzip"}
    )
    assert response.status_code == 400
    assert "gzip" in status_of(response.content).message


def test_a_body_over_the_limit_is_413(client: Client) -> None:
    response = client.post("/v1/logs", content=bytes(LIMIT + 1), headers=PROTOBUF)
    assert response.status_code == 413
    assert str(LIMIT) in status_of(response.content).message


def test_a_gzip_bomb_is_413_after_decompression(client: Client) -> None:
    bomb = gzip.compress(bytes(16 * LIMIT), compresslevel=9)
    assert len(bomb) < LIMIT // 32
    response = client.post("/v1/logs", content=bomb, headers={**JSON, "Content-Encoding": "gzip"})
    assert response.status_code == 413
    assert "after decompression" in response.json()["message"]


def test_json_with_more_objects_than_a_request_may_hold_is_413(
    client: Client, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each JSON object costs json_format microseconds of Python: a body of empty objects
    is refused by counting, before anything is decoded."""
    monkeypatch.setattr(otlp, "MAX_JSON_OBJECTS", 1_000)
    body = b'{"resourceLogs":[' + b",".join([b"{}"] * 1_000) + b"]}"
    response = client.post("/v1/logs", content=body, headers=JSON)
    assert response.status_code == 413
    status = response.json()
    assert "1,001 JSON objects" in status["message"] and "1,000" in status["message"]
    assert "smaller batches" in status["message"]
    assert ledger.log.size == 0
    fits = b'{"resourceLogs":[' + b",".join([b"{}"] * 998) + b"]}"
    assert client.post("/v1/logs", content=fits, headers=JSON).status_code == 200


@pytest.mark.parametrize(
    "content_type", ["text/plain", "application/protobuf", "application/grpc", ""]
)
def test_unsupported_content_types_are_415(client: Client, content_type: str) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    response = client.post("/v1/traces", content=b"{}", headers=headers)
    assert response.status_code == 415
    assert "application/x-protobuf or application/json" in status_of(response.content).message


def test_unsupported_content_encoding_is_415(client: Client) -> None:
    response = client.post("/v1/traces", content=b"{}", headers={**JSON, "Content-Encoding": "br"})
    assert response.status_code == 415
    assert "'br'" in response.json()["message"]


def test_only_post_is_routed(client: Client) -> None:
    response = client.get("/v1/traces")
    assert response.status_code == 405 and response.headers["allow"] == "POST"
    assert "not an OTLP export" in status_of(response.content).message


def test_a_defect_of_ours_is_500_with_a_status(
    client: Client, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken(*args: object) -> otlp.Mapped:
        raise RuntimeError("a bug")

    monkeypatch.setattr(otlp_http, "map_body", broken)
    response = client.post("/v1/logs", content=b"{}", headers=JSON)
    assert response.status_code == 500
    assert "failed to process this export" in response.json()["message"]


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    body=st.binary(max_size=2048),
    path=st.sampled_from(["/v1/traces", "/v1/logs"]),
    content_type=st.sampled_from(["application/x-protobuf", "application/json"]),
    gzipped=st.booleans(),
)
def test_arbitrary_bodies_never_cause_a_server_error(
    client: Client, body: bytes, path: str, content_type: str, gzipped: bool
) -> None:
    headers = {"Content-Type": content_type}
    if gzipped:
        headers["Content-Encoding"] = "gzip"
    response = client.post(path, content=body, headers=headers)
    assert response.status_code in (200, 400), response.content
    if response.status_code == 400 and content_type == "application/json":
        json.loads(response.content)


def test_a_header_that_is_not_utf8_does_not_lose_the_export(client: Client, ledger: Ledger) -> None:
    """As over gRPC (test_otlp_grpc): a record whose string is not UTF-8 is read with the
    bytes kept as escapes; the export is not 400 Bad Data."""
    body, _lines = envoy_export_with_latin1_agent()
    for headers in (PROTOBUF, {**PROTOBUF, "Content-Encoding": "gzip"}):
        content = gzip.compress(body) if "Content-Encoding" in headers else body
        response = client.post("/v1/logs", content=content, headers=headers)
        assert response.status_code == 200, status_of(response.content).message
        assert ExportLogsServiceResponse.FromString(response.content) == (
            ExportLogsServiceResponse()
        )
    assert ledger.log.size == 3


def test_utf8_repair_leaves_a_valid_message_as_it_is() -> None:
    request = logs(*map(otlp.audit_log_record, generate(3)))
    request.resource_logs[0].scope_logs[0].log_records.add().body.kvlist_value.values.add(
        key="k"
    ).value.array_value.values.add().double_value = 1.5
    for message in (request, traces(span(STABLE_SERVER))):
        body = message.SerializeToString()
        assert otlp._utf8_strings(body, message.DESCRIPTOR) == body
    with pytest.raises(ValueError):
        otlp._utf8_strings(body[:-1], message.DESCRIPTOR)
