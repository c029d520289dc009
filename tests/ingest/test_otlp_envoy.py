"""ingest.otlp case (b): Envoy's OpenTelemetry access logger as Istio's `envoyOtelAls`
provider configures it — the body is Istio's default TEXT line, the attributes are the
provider's `logFormat.labels`, `time_unix_nano` the request's start time. The lines are the
realistic samples in tests/ingest/data; parsing itself is `ingest.envoy`'s and tested there.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue, KeyValueList
from opentelemetry.proto.logs.v1.logs_pb2 import LogRecord

from auditmesh.events import TLS, AuditEvent, canonical_bytes, decode_event
from auditmesh.ingest import envoy, otlp
from tests.ingest.test_otlp import TRACE, Attr, kvs, logs

DATA = Path(__file__).parent / "data"
TEXT_LINES = (DATA / "istio-text.log").read_text().splitlines()
JSON_LINES = (DATA / "istio-json.log").read_text().splitlines()

# The labels of Istio's OpenTelemetry sample (samples/open-telemetry/loki/iop.yaml), as
# Envoy fills them in a sidecar's environment.
SAMPLE_LABELS: dict[str, Attr] = {
    "pod": "reviews-v1-5c7d8b9f6-k2x4p",
    "namespace": "bookinfo",
    "cluster": "Kubernetes",
    "mesh": "cluster.local",
}


def envoy_record(line: str, labels: Mapping[str, Attr] | None = None) -> LogRecord:
    """One record as envoy.access_loggers.open_telemetry sends it: the formatted line (with
    the format's trailing newline) as body, start time in time_unix_nano."""
    return LogRecord(
        time_unix_nano=envoy.parse_text_line(line).start_ns,
        body=AnyValue(string_value=line + "\n"),
        attributes=kvs(dict(labels if labels is not None else SAMPLE_LABELS)),
    )


def expected(line: str, reporter: str, labels: dict[str, str], **extra: Any) -> AuditEvent:
    access = msgspec.structs.replace(envoy.parse_text_line(line), **extra)
    event = envoy.to_event(access, reporter)
    return msgspec.structs.replace(event, labels=labels | event.labels)


def test_every_sample_text_line_maps_like_the_envoy_adapter() -> None:
    request = logs(*(envoy_record(line) for line in TEXT_LINES), service="istio-proxy")
    mapped = otlp.map_logs(request)
    assert mapped.rejected == 0, mapped.reasons
    assert mapped.events == [
        expected(line, "ingest:otlp:istio-proxy", {k: str(v) for k, v in SAMPLE_LABELS.items()})
        for line in TEXT_LINES
    ]
    for event in mapped.events:
        assert event.attested is False
        assert decode_event(canonical_bytes(event)) == event


def test_which_provider_labels_become_event_labels() -> None:
    """Strings and integers under valid label keys, "-" and empty values left out, at most
    32; a header captured as a string array gives its first value; the keys that carry
    fields of the record (peer URI SANs, traceparent) are used there, not repeated."""
    labels: dict[str, Attr] = {
        "pod": "reviews-v1",
        "replicas": 3,
        "ratio": 0.5,
        "canary": True,
        "unset": "-",
        "empty": "",
        "not a key!": "x",
        "captured": ["first", "second"],
        "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        **{f"extra{n:02d}": "v" for n in range(40)},
    }
    (event,) = otlp.map_logs(logs(envoy_record(TEXT_LINES[0], labels))).events
    assert event.labels["pod"] == "reviews-v1"
    assert event.labels["replicas"] == "3"
    assert event.labels["captured"] == "first"
    for absent in ("ratio", "canary", "unset", "empty", "not a key!", "traceparent"):
        assert absent not in event.labels
    assert event.trace is not None and event.trace.trace_id == "0af7651916cd43dd8448eb211c80319c"
    from_provider = {k for k in event.labels if not k.startswith("envoy.")}
    assert from_provider == {"pod", "replicas", "captured"} | {f"extra{n:02d}" for n in range(29)}


def test_overlong_provider_labels_are_cut_and_named_with_the_lines_values() -> None:
    line = TEXT_LINES[0].replace('"GET /', '"GET /' + "a" * 5000, 1)
    labels: dict[str, Attr] = {"pod": "p" * 2000, "namespace": "bookinfo"}
    (event,) = otlp.map_logs(logs(envoy_record(line, labels))).events
    assert event.labels["pod"] == "p" * 1024
    assert event.labels["auditmesh.clipped"] == "pod,http.path"


def test_peer_uri_sans_from_labels_give_identities_and_mtls() -> None:
    inbound = TEXT_LINES[1]  # inbound|9080|| reviews, called by productpage over mTLS
    labels: dict[str, Attr] = {
        "downstream_peer_uri_san": "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-productpage",
        "downstream_local_uri_san": "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews",
        "pod": "reviews-v1-5c7d8b9f6-k2x4p",
    }
    (event,) = otlp.map_logs(logs(envoy_record(inbound, labels))).events
    assert event.direction == "inbound"
    assert event.source is not None and event.destination is not None
    assert event.source.identity == labels["downstream_peer_uri_san"]
    assert event.source.namespace == "bookinfo"
    assert event.destination.identity == labels["downstream_local_uri_san"]
    assert event.tls == TLS(mutual=True)
    assert event.labels["pod"] == "reviews-v1-5c7d8b9f6-k2x4p"
    assert "downstream_peer_uri_san" not in event.labels  # consumed, not repeated


def test_upstream_peer_uri_san_names_the_called_workload() -> None:
    outbound = TEXT_LINES[0]
    san = "spiffe://cluster.local/ns/bookinfo/sa/bookinfo-reviews"
    (event,) = otlp.map_logs(logs(envoy_record(outbound, {"upstream_peer_uri_san": san}))).events
    assert event.direction == "outbound"
    assert event.destination is not None and event.destination.identity == san


def test_the_records_trace_context_is_kept() -> None:
    record = envoy_record(TEXT_LINES[0])
    record.trace_id = TRACE
    (event,) = otlp.map_logs(logs(record)).events
    assert event.trace is not None and event.trace.trace_id == TRACE.hex()
    traced = {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
    (event,) = otlp.map_logs(logs(envoy_record(TEXT_LINES[0], traced))).events
    assert event.trace is not None and event.trace.trace_id == "0af7651916cd43dd8448eb211c80319c"


def test_a_retried_export_yields_the_same_ids() -> None:
    first = otlp.map_logs(logs(*(envoy_record(line) for line in TEXT_LINES))).events
    again = otlp.map_logs(logs(*(envoy_record(line) for line in TEXT_LINES))).events
    assert [e.id for e in first] == [e.id for e in again]
    assert len({e.id for e in first}) == len(TEXT_LINES)


def test_labels_shaped_like_istios_json_log_map_without_a_body() -> None:
    document = json.loads(JSON_LINES[1])
    labels = {k: v for k, v in document.items() if v is not None}
    record = LogRecord(attributes=kvs(labels))
    (event,) = otlp.map_logs(logs(record, service="orders")).events
    line = msgspec.json.encode(labels).decode()
    assert event == envoy.to_event(envoy.parse_json_line(line), "ingest:otlp:orders")
    # a kvlist body (Envoy's `body` configured as a map) works the same way
    body = AnyValue(kvlist_value=KeyValueList(values=kvs(labels)))
    (from_body,) = otlp.map_logs(logs(LogRecord(body=body), service="orders")).events
    assert from_body == event


@pytest.mark.parametrize(
    "status",
    [
        AnyValue(double_value=200.5),
        AnyValue(bool_value=True),
        # no JSON number: NaN and infinity would go into the line as null (unset)
        AnyValue(double_value=float("nan")),
        AnyValue(double_value=float("-inf")),
        AnyValue(bytes_value=b"200"),
        AnyValue(kvlist_value=KeyValueList(values=kvs({"code": 200}))),
    ],
    ids=["fraction", "bool", "nan", "infinity", "bytes", "kvlist"],
)
def test_a_status_of_the_wrong_type_is_rejected_not_dropped(status: AnyValue) -> None:
    labels = {k: v for k, v in json.loads(JSON_LINES[1]).items() if v is not None}
    attributes = [kv for kv in kvs(labels) if kv.key != "response_code"]
    record = LogRecord(attributes=[*attributes, KeyValue(key="response_code", value=status)])
    mapped = otlp.map_logs(logs(record, service="orders"))
    assert (mapped.events, mapped.rejected) == ([], 1)
    assert "response_code: expected a string or an integer" in mapped.error_message()


def test_values_of_any_type_under_other_keys_are_left_aside() -> None:
    labels = {k: v for k, v in json.loads(JSON_LINES[1]).items() if v is not None}
    odd = {
        "ratio": AnyValue(double_value=float("nan")),
        "blob": AnyValue(bytes_value=b"\x00"),
        "nested": AnyValue(kvlist_value=KeyValueList(values=kvs({"a": 1}))),
    }
    extra = [KeyValue(key=key, value=value) for key, value in odd.items()]
    record = LogRecord(attributes=kvs(labels) + extra)
    (event,) = otlp.map_logs(logs(record, service="orders")).events
    line = msgspec.json.encode(labels).decode()
    assert event == envoy.to_event(envoy.parse_json_line(line), "ingest:otlp:orders")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        (TEXT_LINES[0][:60], "the line ends early"),
        (TEXT_LINES[0].replace(" 200 ", " 2OO ", 1), "is not a status code"),
        ("[2026-13-02T09:15:01.101Z] " + TEXT_LINES[0].split("] ", 1)[1], "%START_TIME%"),
    ],
    ids=["truncated", "bad-status", "bad-month"],
)
def test_broken_access_log_lines_are_rejected_with_the_parsers_reason(
    line: str, reason: str
) -> None:
    broken = LogRecord(body=AnyValue(string_value=line))
    mapped = otlp.map_logs(logs(broken, envoy_record(TEXT_LINES[2])))
    assert (len(mapped.events), mapped.rejected) == (1, 1)
    assert "log record #1: Envoy access log: " in mapped.error_message()
    assert reason in mapped.error_message()


@pytest.mark.parametrize(
    "body",
    [
        AnyValue(string_value="[INFO] 2026-03-02 user logged in"),
        AnyValue(string_value='{"level": "info", "msg": "listening"}'),
        AnyValue(kvlist_value=KeyValueList(values=[KeyValue(key="msg")])),
        AnyValue(),
    ],
)
def test_application_logs_are_skipped(body: AnyValue) -> None:
    mapped = otlp.map_logs(logs(LogRecord(body=body, attributes=kvs({"pod": "x"}))))
    assert (mapped.events, mapped.rejected, mapped.skipped) == ([], 0, 1)


@settings(max_examples=300, deadline=None)
@given(
    tail=st.text(max_size=300),
    labels=st.dictionaries(st.text(max_size=30), st.text(max_size=40), max_size=6),
)
def test_arbitrary_access_log_bodies_map_or_are_rejected(tail: str, labels: dict[str, str]) -> None:
    record = LogRecord(
        body=AnyValue(string_value="[2026-03-02T09:15:01.101Z] " + tail),
        attributes=kvs(dict(labels)),
    )
    mapped = otlp.map_logs(logs(record))
    assert len(mapped.events) + mapped.rejected == 1
    for event in mapped.events:
        assert decode_event(canonical_bytes(event)) == event
