"""ingest.otlp: OTLP spans and log records → audit events, pure (no sockets).

Spans are built as the OpenTelemetry SDK and the HTTP instrumentations write them, with
the stable HTTP semantic conventions and the older `http.*`/`net.*` names.
"""

from __future__ import annotations

import base64
import gzip
import json
import tracemalloc
import uuid
import zlib
from typing import Any

import msgspec
import pytest
from google.protobuf import json_format
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord, ResourceLogs, ScopeLogs
from opentelemetry.proto.resource.v1.resource_pb2 import Resource
from opentelemetry.proto.trace.v1.trace_pb2 import ResourceSpans, ScopeSpans, Span, Status

from auditmesh.events import (
    HTTP,
    MAX_EVENT_BYTES,
    MAX_LABEL,
    MAX_NAME,
    MAX_REQUEST_ID,
    MAX_TEXT,
    AuditEvent,
    Error,
    Peer,
    Trace,
    canonical_bytes,
    decode_event,
)
from auditmesh.httpbody import BodyTooLarge
from auditmesh.ingest import otlp
from auditmesh.ingest.otlp_http import gunzip
from tests.conftest import generate

TRACE = bytes.fromhex("5b8efff798038103d269b633813fc60c")
SPAN = bytes.fromhex("eee19b7ec3c1b174")
PARENT = bytes.fromhex("eee19b7ec3c1b173")
START = 1_764_300_000_123_456_789
END = START + 12_345_678

Attr = str | int | float | bool | list[str]


def value(v: Attr) -> AnyValue:
    if isinstance(v, bool):
        return AnyValue(bool_value=v)
    if isinstance(v, int):
        return AnyValue(int_value=v)
    if isinstance(v, float):
        return AnyValue(double_value=v)
    if isinstance(v, list):
        return AnyValue(array_value=ArrayValue(values=[AnyValue(string_value=x) for x in v]))
    return AnyValue(string_value=v)


def kvs(attrs: dict[str, Attr]) -> list[KeyValue]:
    return [KeyValue(key=k, value=value(v)) for k, v in attrs.items()]


def span(
    attrs: dict[str, Attr],
    *,
    kind: Span.SpanKind.ValueType = Span.SPAN_KIND_SERVER,
    status: Status | None = None,
    **fields: Any,
) -> Span:
    values: dict[str, Any] = {
        "trace_id": TRACE,
        "span_id": SPAN,
        "parent_span_id": PARENT,
        "name": "GET /orders/{id}",
        "kind": kind,
        "start_time_unix_nano": START,
        "end_time_unix_nano": END,
    }
    values.update(fields)
    return Span(attributes=kvs(attrs), status=status, **values)


def traces(*spans: Span, resource: dict[str, Attr] | None = None) -> ExportTraceServiceRequest:
    res = Resource(attributes=kvs(resource if resource is not None else {"service.name": "shop"}))
    return ExportTraceServiceRequest(
        resource_spans=[ResourceSpans(resource=res, scope_spans=[ScopeSpans(spans=spans)])]
    )


def logs(*records: LogRecord, service: str = "relay") -> ExportLogsServiceRequest:
    res = Resource(attributes=kvs({"service.name": service}))
    return ExportLogsServiceRequest(
        resource_logs=[ResourceLogs(resource=res, scope_logs=[ScopeLogs(log_records=records)])]
    )


def one(request: ExportTraceServiceRequest) -> AuditEvent:
    mapped = otlp.map_traces(request)
    assert mapped.rejected == 0, mapped.reasons
    assert len(mapped.events) == 1
    return mapped.events[0]


STABLE_SERVER: dict[str, Attr] = {
    "http.request.method": "GET",
    "url.path": "/orders/42",
    "url.query": "secret=1",
    "url.scheme": "http",
    "http.route": "/orders/{id}",
    "http.response.status_code": 200,
    "server.address": "orders.shop.svc.cluster.local",
    "server.port": 8080,
    "client.address": "10.1.2.3",
    "client.port": 51234,
    "network.local.address": "10.1.9.9",
    "network.protocol.version": "1.1",
    "user_agent.original": "curl/8.5.0",
    "http.request.body.size": 0,
    "http.response.body.size": 517,
    "http.request.header.x-request-id": ["6d1c2f7e-0c1f-4d8e-9a57-0b6f3f1c2a11"],
}


def test_stable_http_server_span_maps_every_field() -> None:
    event = one(
        traces(
            span(STABLE_SERVER), resource={"service.name": "orders", "k8s.namespace.name": "shop"}
        )
    )
    assert event == AuditEvent(
        id=otlp.span_event_id(TRACE, SPAN, START),
        time_ns=START,
        duration_us=12_345,
        reporter="ingest:otlp:orders",
        kind="http",
        direction="inbound",
        outcome="success",
        source=Peer(ip="10.1.2.3", port=51234),
        destination=Peer(
            service="orders",
            namespace="shop",
            host="orders.shop.svc.cluster.local",
            ip="10.1.9.9",
            port=8080,
        ),
        http=HTTP(
            method="GET",
            path="/orders/42",
            status=200,
            request_bytes=0,
            response_bytes=517,
            protocol="HTTP/1.1",
            user_agent="curl/8.5.0",
            request_id="6d1c2f7e-0c1f-4d8e-9a57-0b6f3f1c2a11",
        ),
        trace=Trace(trace_id=TRACE.hex(), span_id=SPAN.hex(), parent_span_id=PARENT.hex()),
        labels={"http.route": "/orders/{id}"},
        attested=False,
    )


def test_pre_1_21_names_map_like_the_stable_ones() -> None:
    old: dict[str, Attr] = {
        "http.method": "POST",
        "http.target": "/orders/42?secret=1#frag",
        "http.status_code": "201",
        "http.flavor": "2.0",
        "http.user_agent": "python-requests/2.31",
        "http.host": "orders:8080",
        "net.host.port": 8080,
        "net.peer.ip": "2001:db8::1",
        "net.peer.port": 40000,
        "http.request_content_length": 12,
        "http.response_content_length": 34,
    }
    event = one(traces(span(old)))
    assert event.http == HTTP(
        method="POST",
        path="/orders/42",  # the query never enters the record (Metadata depth)
        status=201,
        request_bytes=12,
        response_bytes=34,
        protocol="HTTP/2",
        user_agent="python-requests/2.31",
    )
    assert event.source == Peer(ip="2001:db8::1", port=40000)
    assert event.destination == Peer(service="shop", host="orders", port=8080)


def test_client_span_is_outbound_with_the_called_service_from_url_full() -> None:
    attrs: dict[str, Attr] = {
        "http.request.method": "DELETE",
        "url.full": "https://payments.shop.svc:9443/v1/charges/7?x=1",
        "http.response.status_code": 404,
        "network.peer.address": "10.1.7.7",
        "peer.service": "payments",
    }
    event = one(traces(span(attrs, kind=Span.SPAN_KIND_CLIENT)))
    assert event.direction == "outbound"
    assert event.source == Peer(service="shop")
    assert event.destination == Peer(
        service="payments", host="payments.shop.svc", ip="10.1.7.7", port=9443
    )
    assert event.http is not None and event.http.path == "/v1/charges/7"
    # HTTP semconv "Status": a client span with a 4xx is an error, error.type = status code.
    assert (event.outcome, event.error) == ("failure", Error(type="404"))


def test_client_span_port_defaults_from_the_scheme() -> None:
    attrs: dict[str, Attr] = {"http.method": "GET", "http.url": "https://api.example.com/x"}
    event = one(traces(span(attrs, kind=Span.SPAN_KIND_CLIENT)))
    assert event.destination == Peer(host="api.example.com", port=443)


@pytest.mark.parametrize(
    ("kind", "http_status", "status", "error_type", "outcome", "error"),
    [
        (Span.SPAN_KIND_SERVER, 404, None, None, "success", None),
        (Span.SPAN_KIND_SERVER, 503, None, None, "failure", Error(type="503")),
        (Span.SPAN_KIND_SERVER, 503, None, "503", "failure", Error(type="503")),
        (Span.SPAN_KIND_CLIENT, 302, None, None, "success", None),
        (Span.SPAN_KIND_CLIENT, 403, None, None, "failure", Error(type="403")),
        (Span.SPAN_KIND_SERVER, None, None, None, "unknown", None),
        (
            Span.SPAN_KIND_CLIENT,
            None,
            Status(code=Status.STATUS_CODE_ERROR, message="connect timeout"),
            "java.net.SocketTimeoutException",
            "failure",
            Error(type="java.net.SocketTimeoutException", message="connect timeout"),
        ),
        (
            Span.SPAN_KIND_SERVER,
            200,
            Status(code=Status.STATUS_CODE_ERROR, message="handler raised"),
            None,
            "failure",
            Error(type="_OTHER", message="handler raised"),  # 200 is no error's class
        ),
        (Span.SPAN_KIND_SERVER, 500, Status(code=Status.STATUS_CODE_OK), None, "success", None),
        (Span.SPAN_KIND_SERVER, None, None, "timeout", "failure", Error(type="timeout")),
    ],
)
def test_outcome_follows_http_semconv_status_rules(
    kind: Span.SpanKind.ValueType,
    http_status: int | None,
    status: Status | None,
    error_type: str | None,
    outcome: str,
    error: Error | None,
) -> None:
    attrs: dict[str, Attr] = {"http.request.method": "GET", "url.path": "/"}
    if http_status is not None:
        attrs["http.response.status_code"] = http_status
    if error_type is not None:
        attrs["error.type"] = error_type
    event = one(traces(span(attrs, kind=kind, status=status)))
    assert (event.outcome, event.error) == (outcome, error)


def test_method_other_uses_the_original_method() -> None:
    attrs: dict[str, Attr] = {
        "http.request.method": "_OTHER",
        "http.request.method_original": "PROPFIND",
    }
    assert one(traces(span(attrs))).http == HTTP(method="PROPFIND")


@pytest.mark.parametrize(
    "skipped",
    [
        span({"http.request.method": "GET"}, kind=Span.SPAN_KIND_INTERNAL),
        span({"http.request.method": "GET"}, kind=Span.SPAN_KIND_PRODUCER),
        span({"rpc.system": "grpc", "rpc.service": "Greeter"}),
        span({"db.system": "postgresql"}, kind=Span.SPAN_KIND_CLIENT),
    ],
    ids=["internal", "producer", "grpc-server", "db-client"],
)
def test_spans_that_are_not_http_calls_are_skipped_not_rejected(skipped: Span) -> None:
    mapped = otlp.map_traces(traces(skipped))
    assert (mapped.events, mapped.rejected, mapped.skipped) == ([], 0, 1)
    assert otlp.encode_response("traces", mapped, "protobuf") == b""  # full success


@pytest.mark.parametrize(
    ("broken", "reason"),
    [
        (span({"http.method": "GET"}, trace_id=bytes(16)), "invalid trace_id"),
        (span({"http.method": "GET"}, trace_id=b"\x01" * 8), "invalid trace_id"),
        (span({"http.method": "GET"}, span_id=b""), "invalid span_id"),
        (span({"http.method": "GET"}, parent_span_id=b"\x01"), "invalid parent_span_id"),
        (span({"http.method": "GET"}, start_time_unix_nano=0), "no start_time"),
        (span({"http.method": "GET"}, end_time_unix_nano=START - 1), "before start"),
        (span({"http.method": "GET", "http.status_code": 999}), "$.http.status"),
        (span({"http.method": "GET", "http.status_code": "teapot"}), "http.status_code"),
        (span({"http.method": "G" * 40}), "$.http.method"),
        (span({"http.method": "GE T"}), "'GE T' is not an HTTP method"),
        (span({"http.request.method": "GET\r\n"}), "is not an HTTP method"),
        (
            span({"http.request.method": "_OTHER", "http.request.method_original": "P(T"}),
            "'P(T' is not an HTTP method",
        ),
        (span({"http.method": "GET", "url.full": "http://[::1"}), "url.full is not a URL"),
    ],
)
def test_http_spans_that_cannot_be_mapped_are_rejected_with_a_reason(
    broken: Span, reason: str
) -> None:
    good = span(STABLE_SERVER, span_id=b"\x02" * 8)
    mapped = otlp.map_traces(traces(good, broken))
    assert (len(mapped.events), mapped.rejected) == (1, 1)
    message = mapped.error_message()
    assert message.startswith("rejected 1 of 2 spans: span 'GET /orders/{id}': ")
    assert reason in message
    response = ExportTraceServiceResponse.FromString(
        otlp.encode_response("traces", mapped, "protobuf")
    )
    assert response.partial_success.rejected_spans == 1
    assert response.partial_success.error_message == message


def test_overlong_values_are_clipped_and_named_not_rejected() -> None:
    # As the sidecar (proxy/record.py) and the Envoy and Linkerd adapters do: an over-long
    # path or header must not leave the call unaudited.
    attrs: dict[str, Attr] = {
        **STABLE_SERVER,
        "url.path": "/" + "a" * 5000,
        "user_agent.original": "u" * 5000,
        "http.request.header.x-request-id": ["r" * 300],
        "http.route": "/" + "o" * 2000,
        "server.address": "h" * 300,
    }
    failed = Status(code=Status.STATUS_CODE_ERROR, message="m" * 5000)
    event = one(traces(span(attrs, status=failed), resource={"service.name": "s" * 300}))
    assert event.http is not None and event.destination is not None and event.error is not None
    assert event.http.path == ("/" + "a" * 5000)[:MAX_TEXT]
    assert event.http.user_agent == "u" * MAX_TEXT
    assert event.http.request_id == "r" * MAX_REQUEST_ID
    assert event.destination.host == "h" * MAX_NAME
    assert event.destination.service == "s" * MAX_NAME
    assert event.error.message == "m" * MAX_TEXT
    assert event.labels["http.route"] == ("/" + "o" * 2000)[:MAX_LABEL]
    assert event.labels["auditmesh.clipped"] == (
        "destination.service,destination.host,error.message,"
        "http.path,http.user_agent,http.request_id,http.route"
    )
    assert "auditmesh.clipped" not in one(traces(span(STABLE_SERVER))).labels


def test_partial_success_message_lists_distinct_reasons_and_counts_all() -> None:
    broken = [span({"http.method": "GET"}, trace_id=bytes(16), name=f"s{i}") for i in range(9)]
    mapped = otlp.map_traces(traces(*broken))
    assert mapped.rejected == 9
    assert len(mapped.reasons) == 5
    assert mapped.error_message().endswith("; …")


def test_an_all_zero_parent_span_id_is_a_root_span() -> None:
    # An all-zero span id is the invalid one, which for a parent means none: the
    # Collector's pdata takes it as the empty SpanID ("InvalidSpanID ... all zero bytes").
    event = one(traces(span(STABLE_SERVER, parent_span_id=bytes(8))))
    assert event.trace is not None
    assert (event.trace.span_id, event.trace.parent_span_id) == (SPAN.hex(), None)


def test_event_id_is_a_uuid7_fixed_by_trace_and_span_id() -> None:
    first = one(traces(span(STABLE_SERVER)))
    again = one(traces(span(STABLE_SERVER, name="renamed")))
    other = one(traces(span(STABLE_SERVER, span_id=b"\x07" * 8)))
    assert first.id == again.id != other.id
    parsed = uuid.UUID(first.id)
    assert parsed.version == 7
    assert parsed.int >> 80 == START // 1_000_000  # RFC 9562 §5.7 unix_ts_ms


def test_reporter_and_namespace_come_from_the_resource() -> None:
    event = one(traces(span(STABLE_SERVER), resource={"service.namespace": "team-a"}))
    assert event.reporter == "ingest:otlp:unknown_service"
    assert event.destination is not None and event.destination.namespace == "team-a"
    assert event.attested is False


# --- OTLP/JSON -----------------------------------------------------------------------------


def to_otlp_json(message: Any, *, upper: bool = False, snake: bool = False) -> bytes:
    """What an OTLP/JSON client sends: hex ids, lowerCamelCase, int64 as strings, int enums."""
    tree = json_format.MessageToDict(
        message, use_integers_for_enums=True, preserving_proto_field_name=snake
    )

    def fix(node: Any) -> None:
        if isinstance(node, dict):
            for key, item in node.items():
                if key in (
                    "traceId",
                    "spanId",
                    "parentSpanId",
                    "trace_id",
                    "span_id",
                    "parent_span_id",
                ):
                    raw = base64.b64decode(item).hex()
                    node[key] = raw.upper() if upper else raw
                else:
                    fix(item)
        elif isinstance(node, list):
            for item in node:
                fix(item)

    fix(tree)
    return json.dumps(tree).encode()


@pytest.mark.parametrize(("upper", "snake"), [(False, False), (True, False), (False, True)])
def test_otlp_json_decodes_to_the_same_request_as_protobuf(upper: bool, snake: bool) -> None:
    request = traces(span(STABLE_SERVER), span({"http.method": "GET"}, trace_id=bytes(16)))
    body = to_otlp_json(request, upper=upper, snake=snake)
    assert b'"kind": 2' in body and b'"startTimeUnixNano": "1764300000123456789"' in body or snake
    assert otlp.decode_request("traces", body, "json") == request


def test_otlp_json_ignores_unknown_fields() -> None:
    body = json.dumps(
        {
            "resourceSpans": [
                {
                    "futureField": 1,
                    "scopeSpans": [
                        {
                            "spans": [
                                {
                                    "name": "x",
                                    "traceId": TRACE.hex(),
                                    "spanId": SPAN.hex(),
                                    "brandNew": {"a": 1},
                                }
                            ]
                        }
                    ],
                }
            ]
        }
    ).encode()
    decoded = otlp.decode_request("traces", body, "json")
    assert isinstance(decoded, ExportTraceServiceRequest)
    assert decoded.resource_spans[0].scope_spans[0].spans[0].trace_id == TRACE


def test_otlp_json_log_record_ids_are_hex_too() -> None:
    body = json.dumps(
        {
            "resourceLogs": [
                {"scopeLogs": [{"logRecords": [{"traceId": TRACE.hex(), "spanId": SPAN.hex()}]}]}
            ]
        }
    ).encode()
    decoded = otlp.decode_request("logs", body, "json")
    assert isinstance(decoded, ExportLogsServiceRequest)
    record = decoded.resource_logs[0].scope_logs[0].log_records[0]
    assert (record.trace_id, record.span_id) == (TRACE, SPAN)


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"[]",
        b"{",
        b'{"resourceSpans": 3}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"traceId": "zz"}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"kind": [2]}]}]}]}',
        b'{"resourceSpans": [{"scopeSpans": [{"spans": [{"startTimeUnixNano": "soon"}]}]}]}',
        b'{"resourceSpans": [], "x": ' + b"[" * 1100 + b"]" * 1100 + b"}",  # past any depth
    ],
)
def test_malformed_json_is_a_malformed_request(body: bytes) -> None:
    with pytest.raises(otlp.MalformedRequest):
        otlp.decode_request("traces", body, "json")


def with_ids(body: bytes, signal: otlp.Signal, ids: dict[int, dict[str, str]]) -> bytes:
    """An OTLP/JSON body with some ids of its records (by position, from 1) replaced."""
    tree = json.loads(body)
    outer, scopes, items = (
        ("resourceSpans", "scopeSpans", "spans")
        if signal == "traces"
        else ("resourceLogs", "scopeLogs", "logRecords")
    )
    records = [r for res in tree[outer] for scope in res[scopes] for r in scope[items]]
    for position, fields in ids.items():
        for key, text in fields.items():
            if key.startswith("links."):
                records[position - 1]["links"] = [{"traceId": TRACE.hex(), key[6:]: text}]
            else:
                records[position - 1][key] = text
    return json.dumps(tree).encode()


def test_otlp_json_record_with_a_non_hex_id_is_rejected_alone() -> None:
    """Regression: one span with `"traceId": "zz"` made the whole request Bad Data (400),
    where protobuf rejects a span with a bad id alone."""
    spans = [span(STABLE_SERVER, name=f"span {n}", span_id=bytes([n + 1]) * 8) for n in range(5)]
    spans[4] = span({}, kind=Span.SPAN_KIND_INTERNAL, name="span 4")  # not audit data either
    body = with_ids(
        to_otlp_json(traces(*spans)),
        "traces",
        {2: {"traceId": "zz"}, 3: {"links.spanId": "AAECAwQFBgc="}, 5: {"parentSpanId": "x"}},
    )
    mapped = otlp.map_body("traces", body, "json")
    good = otlp.map_traces(traces(spans[0], spans[3]))
    assert mapped.events == good.events and len(good.events) == 2
    assert (mapped.rejected, mapped.skipped) == (3, 0)
    assert mapped.reasons == [
        "span 'span 1': traceId 'zz' is not hex (OTLP/JSON ids are hex strings)",
        "span 'span 2': link spanId 'AAECAwQFBgc=' is not hex (OTLP/JSON ids are hex strings)",
        "span 'span 4': parentSpanId 'x' is not hex (OTLP/JSON ids are hex strings)",
    ]
    assert mapped.error_message().startswith("rejected 3 of 5 spans: span 'span 1': traceId")
    with pytest.raises(otlp.MalformedRequest, match="traceId 'zz' is not hex"):
        otlp.decode_request("traces", body, "json")  # the request itself: not decodable


def test_otlp_json_log_record_with_a_non_hex_id_is_rejected_alone() -> None:
    events = generate(3, seed=8)
    request = logs(*(otlp.audit_log_record(e) for e in events))
    body = with_ids(to_otlp_json(request), "logs", {2: {"spanId": "not-hex", "traceId": "zz"}})
    mapped = otlp.map_body("logs", body, "json")
    assert mapped.events == [otlp.as_received(events[n], "relay") for n in (0, 2)]
    assert mapped.rejected == 1
    assert mapped.reasons == [
        "log record #2: traceId 'zz' is not hex (OTLP/JSON ids are hex strings)"
    ]


def test_otlp_json_rejects_the_record_that_parsing_keeps() -> None:
    """json_format takes a field under its JSON name and its proto name; given both, the
    last one wins: the records that are counted must be those it keeps."""
    good = to_otlp_json(traces(span(STABLE_SERVER)))
    bad = with_ids(to_otlp_json(traces(span(STABLE_SERVER))), "traces", {1: {"spanId": "zz"}})
    both = {"resourceSpans": json.loads(bad)["resourceSpans"]}
    both["resource_spans"] = json.loads(good)["resourceSpans"]
    mapped = otlp.map_body("traces", json.dumps(both).encode(), "json")
    assert (len(mapped.events), mapped.rejected) == (1, 0)
    both = {"resource_spans": both["resource_spans"], "resourceSpans": both["resourceSpans"]}
    mapped = otlp.map_body("traces", json.dumps(both).encode(), "json")
    assert (len(mapped.events), mapped.rejected) == (0, 1)


def test_malformed_protobuf_is_a_malformed_request() -> None:
    with pytest.raises(otlp.MalformedRequest, match="ExportTraceServiceRequest"):
        otlp.decode_request("traces", b"\x0a\xff\xff\xff\xff\x0f", "protobuf")


def test_responses_leave_partial_success_unset_on_full_success() -> None:
    mapped = otlp.map_traces(traces(span(STABLE_SERVER)))
    assert otlp.encode_response("traces", mapped, "json") == b"{}"
    assert otlp.encode_response("logs", otlp.Mapped("logs"), "protobuf") == b""


# --- (c) audit events relayed as log records --------------------------------------------


def test_audit_events_round_trip_through_log_records() -> None:
    events = generate(40, seed=5)
    request = logs(*(otlp.audit_log_record(e) for e in events), service="auditmesh-a")
    mapped = otlp.map_logs(request)
    assert mapped.rejected == 0
    assert mapped.events == [otlp.as_received(e, "auditmesh-a") for e in events]
    for sent, received in zip(events, mapped.events, strict=True):
        assert received.id == sent.id
        assert received.labels[otlp.RELAYED_REPORTER_LABEL] == sent.reporter
        assert msgspec.structs.replace(received, reporter=sent.reporter, labels=sent.labels) == sent
    # and through OTLP/JSON, as an HTTP exporter with the JSON encoding sends them
    via_json = otlp.map_request(otlp.decode_request("logs", to_otlp_json(request), "json"))
    assert via_json.events == mapped.events


def test_audit_log_record_carries_the_canonical_event_and_trace_context() -> None:
    event = generate(1, seed=2)[0]
    record = otlp.audit_log_record(event)
    assert record.event_name == otlp.EVENT_NAME
    assert record.time_unix_nano == event.time_ns
    assert record.attributes[0].key == otlp.EVENT_ATTRIBUTE
    assert record.attributes[0].value.string_value.encode() == canonical_bytes(event)
    assert event.trace is not None and record.trace_id.hex() == event.trace.trace_id


def test_a_relayed_attested_event_is_stored_as_reported() -> None:
    event = msgspec.structs.replace(generate(1)[0], attested=True)
    (received,) = otlp.map_logs(logs(otlp.audit_log_record(event))).events
    assert received.attested is False
    assert received.reporter == "ingest:otlp:relay"


def test_a_relayed_event_keeps_what_its_record_claimed_as_relayed_labels() -> None:
    # Regression: the receiving server lost which identity reported the event, and that it
    # said it was attested: only `ingest:otlp:relay` and `attested: false` were stored.
    event = msgspec.structs.replace(generate(1)[0], attested=True)
    (received,) = otlp.map_logs(logs(otlp.audit_log_record(event))).events
    assert (received.id, received.reporter, received.attested) == (
        event.id,
        "ingest:otlp:relay",
        False,
    )
    assert received.labels == {
        **event.labels,
        "relayed.reporter": event.reporter,
        "relayed.attested": "true",
    }
    assert decode_event(canonical_bytes(received)) == received  # a valid event, as stored


def test_claims_equal_to_what_is_stored_add_no_labels() -> None:
    # An event a relay of the same service reported and did not attest: stored as sent, so
    # relaying it again and again is still the same leaf (exactly once).
    event = msgspec.structs.replace(generate(1)[0], reporter="ingest:otlp:relay", attested=False)
    (received,) = otlp.map_logs(logs(otlp.audit_log_record(event))).events
    assert received == event


def test_an_event_relayed_twice_names_the_reporter_claimed_first() -> None:
    event = msgspec.structs.replace(generate(1)[0], attested=True)
    once = otlp.as_received(event, "edge-a")
    twice = otlp.as_received(once, "edge-b")
    assert twice.reporter == "ingest:otlp:edge-b"
    assert twice.labels == once.labels  # the labels the record carried are its own claims
    assert twice.labels["relayed.reporter"] == event.reporter


def test_a_claimed_reporter_past_the_label_limit_is_cut_and_says_so() -> None:
    claimed = "spiffe://cluster.local/ns/shop/sa/" + "x" * 2000  # reporter: up to 2048
    event = msgspec.structs.replace(generate(1)[0], reporter=claimed)
    (received,) = otlp.map_logs(logs(otlp.audit_log_record(event))).events
    label = received.labels["relayed.reporter"]
    assert len(label) == MAX_LABEL and label == claimed[: MAX_LABEL - 1] + "…"
    assert decode_event(canonical_bytes(received)) == received


def test_claim_labels_that_would_outgrow_a_ledger_entry_are_left_out() -> None:
    # An event just under the entry limit as sent: with the claim labels it would be over
    # it, and a record is never refused for what the receiver adds.
    base = msgspec.structs.replace(generate(1)[0], reporter="r" * 1000, attested=True)
    labels = {f"k{i}": "v" * MAX_LABEL for i in range(61)}
    event = msgspec.structs.replace(base, labels=labels)
    filler = MAX_EVENT_BYTES - 10 - len(canonical_bytes(event)) - len(',"pad":""')
    labels["pad"] = "v" * filler
    event = msgspec.structs.replace(base, labels=labels)
    assert len(canonical_bytes(event)) == MAX_EVENT_BYTES - 10
    assert len(canonical_bytes(otlp.as_received(event, "relay"))) > MAX_EVENT_BYTES
    mapped = otlp.map_logs(logs(otlp.audit_log_record(event)))
    assert mapped.rejected == 0, mapped.reasons
    (received,) = mapped.events
    assert received.labels == labels
    assert (received.reporter, received.attested) == ("ingest:otlp:relay", False)


def test_a_relayed_event_too_large_for_a_ledger_entry_is_rejected_alone() -> None:
    small, large = generate(2)
    large = msgspec.structs.replace(large, labels={f"k{i}": "v" * 1024 for i in range(80)})
    mapped = otlp.map_logs(logs(otlp.audit_log_record(large), otlp.audit_log_record(small)))
    assert (len(mapped.events), mapped.rejected) == (1, 1)
    assert "the limit is 65535" in mapped.error_message()


def test_relayed_events_in_bytes_attributes_are_accepted() -> None:
    event = generate(1)[0]
    record = LogRecord(
        attributes=[
            KeyValue(key=otlp.EVENT_ATTRIBUTE, value=AnyValue(bytes_value=canonical_bytes(event)))
        ]
    )
    assert otlp.map_logs(logs(record)).events == [otlp.as_received(event, "relay")]


@pytest.mark.parametrize(
    ("attribute", "reason"),
    [
        (AnyValue(string_value='{"id": "nope"}'), "$.id"),
        (AnyValue(string_value="not json"), "not a valid audit event"),
        (AnyValue(int_value=3), "must be a string"),
    ],
)
def test_invalid_relayed_events_are_rejected(attribute: AnyValue, reason: str) -> None:
    record = LogRecord(attributes=[KeyValue(key=otlp.EVENT_ATTRIBUTE, value=attribute)])
    mapped = otlp.map_logs(logs(record, otlp.audit_log_record(generate(1)[0])))
    assert (len(mapped.events), mapped.rejected) == (1, 1)
    assert reason in mapped.error_message()
    response = ExportLogsServiceResponse.FromString(
        otlp.encode_response("logs", mapped, "protobuf")
    )
    assert response.partial_success.rejected_log_records == 1


def any_value(obj: Any) -> AnyValue:
    """A JSON value as OTLP's AnyValue, the way a Collector's JSON parser writes it."""
    if isinstance(obj, dict):
        return AnyValue(kvlist_value=KeyValueList(values=kv_pairs(obj)))
    if isinstance(obj, list):
        return AnyValue(array_value=ArrayValue(values=[any_value(x) for x in obj]))
    if isinstance(obj, bool):
        return AnyValue(bool_value=obj)
    if isinstance(obj, int):
        return AnyValue(int_value=obj)
    return AnyValue(string_value=obj)


def kv_pairs(obj: dict[str, Any]) -> list[KeyValue]:
    return [KeyValue(key=k, value=any_value(v)) for k, v in obj.items()]


def event_fields(event: AuditEvent) -> dict[str, Any]:
    """The event's JSON fields, with time_ns as the integer a JSON parser reads."""
    fields: dict[str, Any] = json.loads(canonical_bytes(event))
    fields["time_ns"] = int(fields["time_ns"])
    return fields


def test_event_fields_as_attributes_are_an_event() -> None:
    # An audit-event log file read by the Collector's filelog receiver with json_parser: the
    # line's fields become attributes, beside the receiver's own (log.file.name).
    events = generate(20, seed=9)
    records = [
        LogRecord(attributes=[*kv_pairs(event_fields(e)), *kvs({"log.file.name": "audit.log"})])
        for e in events
    ]
    mapped = otlp.map_logs(logs(*records, service="collector"))
    assert mapped.rejected == 0, mapped.reasons
    assert mapped.events == [otlp.as_received(e, "collector") for e in events]


def test_event_fields_as_a_map_body_or_a_json_line_are_an_event() -> None:
    event = generate(1, seed=3)[0]
    as_map = LogRecord(body=any_value(event_fields(event)))
    as_line = LogRecord(body=AnyValue(string_value=canonical_bytes(event).decode()))
    mapped = otlp.map_logs(logs(as_map, as_line))
    assert mapped.events == [otlp.as_received(event, "relay")] * 2


def test_event_fields_without_a_reporter_get_the_ingesting_one() -> None:
    fields = event_fields(generate(1)[0])
    del fields["reporter"]
    (event,) = otlp.map_logs(logs(LogRecord(attributes=kv_pairs(fields)))).events
    assert event.reporter == "ingest:otlp:relay" and event.attested is False


def test_invalid_event_fields_are_rejected_naming_the_field() -> None:
    fields = event_fields(generate(1, seed=4)[0])
    fields["http"] = {"status": 99}
    fields["kind"] = "http"
    mapped = otlp.map_logs(logs(LogRecord(attributes=kv_pairs(fields))))
    assert (mapped.events, mapped.rejected) == ([], 1)
    assert "not a valid audit event" in mapped.error_message()
    assert "$.http.status" in mapped.error_message()


def test_what_a_record_says_of_reporter_and_attested_is_replaced_not_refused() -> None:
    event = generate(1, seed=6)[0]
    fields = event_fields(event) | {"reporter": "", "attested": "yes"}
    (received,) = otlp.map_logs(logs(LogRecord(attributes=kv_pairs(fields)))).events
    # neither is a claim (no reporter, no boolean): no relayed.* labels either
    assert received == msgspec.structs.replace(event, reporter="ingest:otlp:relay", attested=False)


def test_event_fields_keep_what_they_claimed_as_relayed_labels() -> None:
    event = msgspec.structs.replace(generate(1, seed=8)[0], attested=True)
    for record in (
        LogRecord(attributes=kv_pairs(event_fields(event))),
        LogRecord(body=AnyValue(string_value=canonical_bytes(event).decode())),
    ):
        (received,) = otlp.map_logs(logs(record, service="otelcol")).events
        assert received.labels == {
            **event.labels,
            "relayed.reporter": event.reporter,
            "relayed.attested": "true",
        }
        assert received == otlp.as_received(event, "otelcol")


def test_records_sent_back_are_rejected_in_one_reason_that_says_so() -> None:
    events = generate(8, seed=12)
    mapped = otlp.map_logs(logs(*(otlp.audit_log_record(e) for e in events)))
    by_position = {n: events[n].reporter for n in range(6)}
    mapped.leave_out([*by_position, 7], sent_back=by_position)
    assert (mapped.rejected, len(mapped.events)) == (7, 1)
    reporters = list(dict.fromkeys(by_position.values()))
    message = mapped.error_message()
    assert message.startswith(
        f"rejected 7 of 8 log records: 6 events are already in this ledger as reported by "
        f"{', '.join(reporters[:3])}"
    )
    assert f"{otlp.SENT_BACK}; event {events[7].id}: the log holds this id already" in message
    assert not message.endswith("…")


def test_an_absurdly_nested_json_line_is_skipped_not_a_crash() -> None:
    # Regression: msgspec raised RecursionError out of map_logs, failing the whole export.
    deep = '{"id":"x","time_ns":"1","kind":"http","outcome":"success","labels":'
    deep += "[" * 5000 + "]" * 5000 + "}"
    mapped = otlp.map_logs(logs(LogRecord(body=AnyValue(string_value=deep))))
    assert (mapped.events, mapped.rejected, mapped.skipped) == ([], 0, 1)


@pytest.mark.parametrize(
    "body",
    [
        AnyValue(string_value='{"level": "info", "msg": "user logged in"}'),
        AnyValue(string_value="{not json"),
        any_value({"id": 1, "kind": "http"}),  # some fields of an event, not all four
    ],
)
def test_logs_that_only_look_like_events_are_skipped(body: AnyValue) -> None:
    mapped = otlp.map_logs(logs(LogRecord(body=body)))
    assert (mapped.events, mapped.rejected, mapped.skipped) == ([], 0, 1)


def test_ordinary_application_logs_are_skipped() -> None:
    record = LogRecord(
        time_unix_nano=START,
        body=AnyValue(string_value="user logged in"),
        attributes=kvs({"http.request.method": "GET"}),
    )
    mapped = otlp.map_logs(logs(record))
    assert (mapped.events, mapped.rejected, mapped.skipped) == ([], 0, 1)


# --- gzip -----------------------------------------------------------------------------------


def test_gunzip_inflates_single_and_concatenated_members() -> None:
    assert gunzip(gzip.compress(b"abc"), 10) == b"abc"
    assert gunzip(gzip.compress(b"abc") + gzip.compress(b"def"), 10) == b"abcdef"
    assert gunzip(gzip.compress(b""), 0) == b""


def test_gunzip_stops_a_bomb_at_the_limit() -> None:
    bomb = gzip.compress(bytes(50 * 1024 * 1024), compresslevel=9)
    assert len(bomb) < 100_000
    with pytest.raises(BodyTooLarge):
        gunzip(bomb, 1024 * 1024)
    with pytest.raises(BodyTooLarge):
        gunzip(gzip.compress(b"abcd"), 3)


def test_gunzip_of_many_members_never_copies_the_rest_of_the_body() -> None:
    # zlib copies the input left after a member's end (unused_data); inflating the rest
    # from that copy made a body of 20-byte empty members quadratic: a 19 MiB one kept a
    # server thread busy for most of an hour. Peak memory shows whether the rest is copied.
    members = gzip.compress(b"") * (256 * 1024 // 20)
    body = members + gzip.compress(b"end")
    tracemalloc.start()
    try:
        assert gunzip(body, 1024) == b"end"
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < len(members) // 8


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"plain",
        gzip.compress(b"abcdef")[:-6],
        gzip.compress(b"x") + b"junk",
        zlib.compress(b"deflate, not gzip"),
    ],
)
def test_gunzip_refuses_what_is_not_whole_gzip(body: bytes) -> None:
    with pytest.raises(otlp.MalformedRequest):
        gunzip(body, 1024)


# --- fuzzing -------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(body=st.binary(max_size=512), signal=st.sampled_from(["traces", "logs"]))
def test_arbitrary_protobuf_bytes_decode_or_fail_cleanly(body: bytes, signal: str) -> None:
    sig: otlp.Signal = "traces" if signal == "traces" else "logs"
    try:
        request = otlp.decode_request(sig, body, "protobuf")
    except otlp.MalformedRequest:
        return
    mapped = otlp.map_request(request)
    otlp.encode_response(sig, mapped, "protobuf")


_scalar = st.one_of(
    st.text(max_size=30),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.booleans(),
    st.floats(allow_nan=True),
    st.lists(st.text(max_size=10), max_size=3),
)
_keys = st.sampled_from(
    sorted(STABLE_SERVER)
    + [
        "http.method",
        "http.target",
        "http.status_code",
        "url.full",
        "http.url",
        "error.type",
        "net.peer.name",
        "net.peer.port",
        "http.host",
        "peer.service",
        "http.flavor",
    ]
)


@settings(max_examples=300, deadline=None)
@given(
    attrs=st.dictionaries(_keys, _scalar, max_size=12),
    kind=st.sampled_from([Span.SPAN_KIND_SERVER, Span.SPAN_KIND_CLIENT]),
    start=st.integers(min_value=0, max_value=2**64 - 1),
    length=st.integers(min_value=0, max_value=2**40),
)
def test_arbitrary_http_attributes_map_or_are_rejected(
    attrs: dict[str, Attr], kind: Span.SpanKind.ValueType, start: int, length: int
) -> None:
    method = attrs.get("http.request.method")
    if not (isinstance(method, str) and method):
        attrs["http.request.method"] = "GET"  # else the span is not HTTP and is skipped
    end = min(start + length, 2**64 - 1)
    mapped = otlp.map_traces(
        traces(span(attrs, kind=kind, start_time_unix_nano=start, end_time_unix_nano=end))
    )
    assert len(mapped.events) + mapped.rejected == 1
    for event in mapped.events:
        assert decode_event(canonical_bytes(event)) == event


def test_resources_without_records_are_not_read(monkeypatch: pytest.MonkeyPatch) -> None:
    """A request of many resources with attributes but no span (a 20 MiB one took about a
    minute of CPU) reads each resource's attributes only for the records it holds."""
    read: list[int] = []
    of = otlp._Origin.of

    def counted(resource: Resource) -> otlp._Origin:
        read.append(1)
        return of(resource)

    monkeypatch.setattr(otlp._Origin, "of", counted)
    request = traces(span(STABLE_SERVER))
    empty = Resource(attributes=kvs({"service.name": "idle", "k8s.namespace.name": "shop"}))
    request.resource_spans.extend(
        [ResourceSpans(resource=empty, scope_spans=[ScopeSpans()]) for _ in range(1_000)]
    )
    assert one(request).reporter == "ingest:otlp:shop"
    assert len(read) == 1


def test_a_reason_given_twice_is_said_once_and_leaves_nothing_out() -> None:
    """Two records rejected for the same reason: one reason, and no "; …" (nothing left
    unsaid); past the reasons kept, the rest is "…"."""
    mapped = otlp.Mapped("logs")
    mapped.reject("same reason")
    mapped.reject("same reason")
    assert mapped.error_message() == "rejected 2 of 2 log records: same reason"
    for number in range(20):
        mapped.reject(f"reason {number}")
    assert mapped.error_message().endswith("; …")
