"""The OTLP receivers against the letter of the OTLP specification (opentelemetry-proto
docs/specification.md) and the HTTP semantic conventions: real clients (httpx over the ASGI
app, a grpc channel over a socket) against the real receivers, a real collector and ledger."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Iterator, Sequence

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2
from starlette.applications import Starlette

from auditmesh.collector import Collector
from auditmesh.datadir import Ledger
from auditmesh.ingest import otlp_http
from auditmesh.ingest.otlp_grpc import OtlpGrpcServer
from auditmesh.ledger.log import Entry
from tests.ingest.test_otlp import STABLE_SERVER, span, to_otlp_json, traces
from tests.ingest.test_otlp_grpc import TRACES, export
from tests.ingest.test_otlp_http import JSON, PROTOBUF, Client


@pytest.fixture
def client(collector: Collector) -> Iterator[Client]:
    app = Starlette(routes=otlp_http.routes(collector))
    with asyncio.Runner() as runner:
        test_client = Client(app, runner)
        yield test_client
        test_client.close()


def break_the_store(ledger: Ledger, monkeypatch: pytest.MonkeyPatch) -> None:
    """The ledger's database breaks in a way that is no `StoreUnavailable` (not a locked
    database or a full disk, which the store reports as such): the collector stops."""

    def corrupt(entries: Sequence[Entry]) -> list[int]:
        raise sqlite3.DatabaseError("database disk image is malformed")

    monkeypatch.setattr(ledger.log, "append", corrupt)


# -- a store that fails: retryable, never "drop the data" -----------------------------------
#
# OTLP spec, "Failures" (OTLP/HTTP): "The response body for all HTTP 4xx and HTTP 5xx
# responses MUST be a Protobuf-encoded Status message"; "Retryable Response Codes": 429,
# 502, 503, 504 "SHOULD be retried. All other 4xx or 5xx response status codes MUST NOT be
# retried." And (OTLP/gRPC "Failures"): not-retryable errors are for data that "cannot be
# deserialized or processed"; UNKNOWN is not retryable, so "the client MUST drop the
# telemetry data". A batch that met a broken store is not bad data: the receiver already
# answers 503 / UNAVAILABLE to every later batch (CollectorStopped), and must answer the
# batch that found the store broken alike, or a conforming client drops those audit events.


@pytest.mark.parametrize("encoding", ["protobuf", "json"])
def test_the_batch_that_finds_the_store_broken_is_answered_503_with_a_status(
    client: Client, ledger: Ledger, monkeypatch: pytest.MonkeyPatch, encoding: str
) -> None:
    break_the_store(ledger, monkeypatch)
    request = traces(span(STABLE_SERVER))
    headers = PROTOBUF if encoding == "protobuf" else JSON
    body = request.SerializeToString() if encoding == "protobuf" else to_otlp_json(request)
    answers = [client.post("/v1/traces", content=body, headers=headers) for _ in range(2)]
    for response in answers:  # the first (which met the failure) as the next one
        assert response.status_code == 503, response.content
        assert "retry-after" in response.headers
        assert response.headers["content-type"] == headers["Content-Type"]
        if encoding == "protobuf":
            status = status_pb2.Status.FromString(response.content)
        else:
            status = json_format.Parse(response.content, status_pb2.Status())
        assert "malformed" in status.message


@pytest.fixture
def grpc_channel(collector: Collector) -> Iterator[grpc.Channel]:
    server = OtlpGrpcServer(collector, "127.0.0.1", 0).start()
    try:
        with grpc.insecure_channel(server.address) as channel:
            yield channel
    finally:
        server.stop()


@pytest.mark.integration
def test_the_export_that_finds_the_store_broken_is_unavailable_over_grpc(
    grpc_channel: grpc.Channel, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    break_the_store(ledger, monkeypatch)
    body = traces(span(STABLE_SERVER)).SerializeToString()
    for _ in range(2):
        with pytest.raises(grpc.RpcError) as caught:
            export(grpc_channel, TRACES, body)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE, caught.value.details()
        assert "malformed" in (caught.value.details() or "")


# -- OTLP/JSON as clients write it ------------------------------------------------------------


def test_otlp_json_ids_any_case_int64_as_numbers_or_strings_enums_as_integers_or_names(
    client: Client, ledger: Ledger
) -> None:
    # "JSON Protobuf Encoding": ids are "case-insensitive hex-encoded strings"; "64-bit
    # integer numbers ... either numbers or strings are accepted when decoding"; enums MUST
    # be sent as integers (names are what the standard proto3 mapping also allows: taken).
    attrs = [
        {"key": "http.request.method", "value": {"stringValue": "GET"}},
        {"key": "url.path", "value": {"stringValue": "/a"}},
        {"key": "http.response.status_code", "value": {"intValue": 503}},
    ]
    spans = [
        {
            "traceId": "5B8EFFF798038103D269B633813FC60C",
            "spanId": "EEE19B7EC3C1B174",
            "kind": 2,
            "startTimeUnixNano": 1_764_300_000_123_456_789,
            "endTimeUnixNano": "1764300000223456789",
            "attributes": attrs,
        },
        {
            "traceId": "5b8efff798038103d269b633813fc60c",
            "spanId": "eee19b7ec3c1b175",
            "kind": "SPAN_KIND_CLIENT",
            "startTimeUnixNano": "1764300000123456789",
            "status": {"code": "STATUS_CODE_ERROR"},
            "attributes": [*attrs, {"key": "server.address", "value": {"stringValue": "b"}}],
        },
    ]
    body = {"resourceSpans": [{"scopeSpans": [{"spans": spans}]}]}
    response = client.post("/v1/traces", json=body)
    assert response.status_code == 200 and response.json() == {}, response.content
    assert ledger.log.size == 2
