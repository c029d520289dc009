"""Linkerd JSON access-log parsing and mapping: the docs' sample lines, keys, identities."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from auditmesh.events import MAX_EVENT_BYTES, to_json_dict
from auditmesh.ingest.linkerd import (
    LinkerdLogError,
    LinkerdRecord,
    identity_to_spiffe,
    parse_line,
    to_event,
)

DATA = Path(__file__).parent / "data"
REPORTER = "ingest:linkerd:linkerd.log"
BASE: dict[str, object] = {
    "client.addr": "10.42.0.70:32996",
    "client.id": "traffic.booksapp.serviceaccount.identity.linkerd.cluster.local",
    "host": "webapp:7000",
    "method": "POST",
    "processing_ns": "30036",
    "request_bytes": "33",
    "response_bytes": "0",
    "status": 303,
    "timestamp": "2022-08-23T20:33:42.436964052Z",
    "total_ns": "14122403",
    "trace_id": "",
    "uri": "http://webapp:7000/authors",
    "user_agent": "Go-http-client/1.1",
    "version": "HTTP/2.0",
}


def line(**changes: object) -> str:
    values = {**BASE, **changes}
    return json.dumps({key: value for key, value in values.items() if value is not ...})


def event_of(text: str) -> dict[str, Any]:
    return to_json_dict(to_event(parse_line(text), REPORTER))


def test_every_sample_line_becomes_a_valid_event() -> None:
    lines = (DATA / "linkerd.log").read_text().splitlines()
    events = [event_of(text) for text in lines]
    assert len({e["id"] for e in events}) == len(lines)
    first, _, _, _, probe, failed, qualified = events
    assert first == {
        "id": first["id"],
        "time_ns": "1661286822321746212",
        "reporter": REPORTER,
        "kind": "http",
        "outcome": "success",
        "duration_us": 14441,
        "direction": "inbound",
        "source": {
            "identity": "spiffe://cluster.local/ns/booksapp/sa/traffic",
            "namespace": "booksapp",
            "ip": "10.42.0.70",
            "port": 32996,
        },
        "destination": {"service": "webapp", "port": 7000, "host": "webapp:7000"},
        "tls": {"mutual": True},
        "http": {
            "method": "GET",
            "path": "/",
            "status": 200,
            "response_bytes": 19627,
            "protocol": "HTTP/2.0",
            "user_agent": "Go-http-client/1.1",
        },
        "labels": {
            "linkerd.client_id": "traffic.booksapp.serviceaccount.identity.linkerd.cluster.local",
            "linkerd.processing_ns": "39826",
        },
    }
    # A kubelet probe: no client identity, no mTLS, the pod's address as the host.
    assert "identity" not in probe["source"] and "tls" not in probe
    assert probe["destination"] == {"ip": "10.42.0.69", "port": 7000, "host": "10.42.0.69:7000"}
    assert probe["http"]["path"] == "/ping" and "request_bytes" not in probe["http"]
    assert failed["outcome"] == "failure" and failed["error"] == {
        "type": "500",
        "message": "HTTP 500",
    }
    assert failed["trace"] == {"trace_id": "463ac35c9f6413ad48485a3953bb6124"}
    assert qualified["trace"] == {"trace_id": "0000000000000000a3ce929d0e0e4736"}
    assert qualified["destination"]["service"] == "authors"
    assert qualified["destination"]["namespace"] == "booksapp"


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("traffic.booksapp.serviceaccount.identity.linkerd.cluster.local",
         "spiffe://cluster.local/ns/booksapp/sa/traffic"),
        ("default.emojivoto.serviceaccount.identity.linkerd.example.org",
         "spiffe://example.org/ns/emojivoto/sa/default"),
        ("web.shop.serviceaccount.identity.linkerd-cp.prod.cluster",
         "spiffe://prod.cluster/ns/shop/sa/web"),
        ("spiffe://root.linkerd.cluster.local/ns/shop/sa/web",
         "spiffe://root.linkerd.cluster.local/ns/shop/sa/web"),
        ("my.sa.shop.serviceaccount.identity.linkerd.cluster.local", None),  # ambiguous
        ("webapp.booksapp.svc.cluster.local", None),
        ("-", None),
        ("", None),
        (None, None),
    ],
)  # fmt: skip
def test_identity_to_spiffe(name: str | None, expected: str | None) -> None:
    assert identity_to_spiffe(name) == expected


@pytest.mark.parametrize(
    ("changes", "attribute", "expected"),
    [
        ({"timestamp": "2022-08-23T20:33:42Z"}, "time_ns", 1661286822_000000000),
        ({"request_bytes": ""}, "request_bytes", None),
        ({"response_bytes": "19627"}, "response_bytes", 19627),
        ({"status": "404"}, "status", 404),
        ({"status": ...}, "status", None),
        ({"client.id": "-"}, "client_id", None),
        ({"server.id": "webapp.booksapp.serviceaccount.identity.linkerd.cluster.local"},
         "server_id", "webapp.booksapp.serviceaccount.identity.linkerd.cluster.local"),
        ({"total_ns": "1"}, "total_ns", 1),
        ({"version": "HTTP/1.1"}, "version", "HTTP/1.1"),
        ({"uri": "/ping"}, "uri", "/ping"),
        ({"extra.key": [1, 2]}, "host", "webapp:7000"),
    ],
)  # fmt: skip
def test_fields(changes: dict[str, object], attribute: str, expected: object) -> None:
    assert getattr(parse_line(line(**changes)), attribute) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[  0.001s]  INFO ThreadId(01) linkerd2_proxy: release 2.12", "not a JSON access-log"),
        ('"a string"', "expected an object"),
        (line(timestamp=...), "timestamp: missing"),
        (line(timestamp="23/Aug/2022:20:33:42"), "timestamp: '23/Aug/2022:20:33:42' is not an"),
        (line(status="abc"), "status: 'abc' is not a status code"),
        (line(status=99), "status: 99 is not a status code"),
        (line(status=True), "status: expected a string, got bool"),
        (line(total_ns="1.5"), "total_ns: '1.5' is not a duration in nanoseconds"),
        (line(request_bytes="-3"), "request_bytes: '-3' is not a byte count"),
        (line(method="GE T"), "method: 'GE T' is not an HTTP method"),
        (line(version="HTTP/2.0 and more"), "version:"),
        (line(host={"a": 1}), "host: expected a string, got dict"),
    ],
)
def test_errors(text: str, message: str) -> None:
    with pytest.raises(LinkerdLogError) as error:
        parse_line(text)
    assert message in str(error.value)


@pytest.mark.parametrize(
    ("uri", "path"),
    [
        ("http://webapp:7000/authors?page=2", "/authors?page=2"),
        ("http://webapp:7000", "/"),
        ("/ping", "/ping"),
        ("webapp:7000", "webapp:7000"),  # CONNECT's authority form
        ("http://[::1", "http://[::1"),  # not a URL: kept as written
    ],
)
def test_path_from_uri(uri: str, path: str) -> None:
    assert event_of(line(uri=uri))["http"]["path"] == path


def test_a_host_svc_ns_names_the_service_in_a_namespace_of_the_call() -> None:
    """Regression: `"host":"emoji-svc.emojivoto:8080"` (cluster DNS: the service emoji-svc of
    namespace emojivoto, as Linkerd's own demo logs it) gave no destination service. It does
    when a party's identity is in that namespace; `example.com` stays an external host."""
    web = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
    emoji = "emoji.emojivoto.serviceaccount.identity.linkerd.cluster.local"
    for changes in ({"client.id": web}, {"client.id": "-", "server.id": emoji}):
        event = event_of(line(host="emoji-svc.emojivoto:8080", **changes))
        assert event["destination"]["service"] == "emoji-svc", changes
        assert event["destination"]["namespace"] == "emojivoto", changes
    for host in ("example.com", "emoji-svc.emojivoto:8080"):  # the client is in booksapp
        assert "service" not in event_of(line(host=host))["destination"], host


@pytest.mark.parametrize(
    ("host", "ip", "port"),
    [
        ("emoji-svc.emojivoto:8080", None, 8080),
        ("emoji-svc.emojivoto.svc.cluster.local:8080", None, 8080),
        ("example.com:8443", None, 8443),
        ("10.42.0.69:7000", "10.42.0.69", 7000),
        ("[fd00::1]:7000", "fd00::1", 7000),
        ("emoji-svc.emojivoto", None, None),  # no port written: the scheme's, not known
        ("emoji-svc:99999", None, None),
        ("emoji-svc:", None, None),
    ],
)
def test_a_host_name_keeps_its_port_as_an_address_does(
    host: str, ip: str | None, port: int | None
) -> None:
    """Regression: `"host":"emoji-svc.emojivoto:8080"` was stored with the host but no
    `destination.port`, while `10.42.0.69:7000` kept its port. The log names no address the
    call reached, so the host's port, the one the client asked for, is the destination's."""
    web = "web.emojivoto.serviceaccount.identity.linkerd.cluster.local"
    destination = event_of(line(host=host, **{"client.id": web}))["destination"]
    assert (destination.get("ip"), destination.get("port")) == (ip, port), destination
    assert destination["host"] == host


def test_server_identity_and_request_id() -> None:
    event = event_of(
        line(
            **{"server.id": "webapp.booksapp.serviceaccount.identity.linkerd.cluster.local"},
            trace_id="f47ac10b-58cc-4372-a567-0e02b2c3d479",
        )
    )
    assert event["destination"]["identity"] == "spiffe://cluster.local/ns/booksapp/sa/webapp"
    # Not a trace id (the proxy fell back to x-request-id): kept as the request id.
    assert event["http"]["request_id"] == "f47ac10b-58cc-4372-a567-0e02b2c3d479"
    assert "trace" not in event


@pytest.mark.parametrize("zeros", ["0" * 32, "0" * 16])
def test_an_all_zero_trace_id_is_absent(zeros: str) -> None:
    # W3C Trace Context §3.2.2.3 (and B3): an all-zero trace id is invalid, it names no
    # trace; nor is it the request's id (the proxy's fallback to x-request-id).
    event = event_of(line(trace_id=zeros))
    assert "trace" not in event
    assert "request_id" not in event["http"]


def test_a_line_too_large_for_one_event_is_refused_with_the_reason() -> None:
    # JSON writes a control character as \u0001, six bytes: clipped to the model's limits,
    # such values still make an event over MAX_EVENT_BYTES, which the server would refuse.
    c = "\x01"
    text = line(
        uri="/" + c * 5000,
        user_agent=c * 5000,
        trace_id=c * 300,
        host=c * 300,
        **{"client.id": c * 2000, "server.id": c * 2000},
    )
    with pytest.raises(LinkerdLogError, match="cannot make an audit event of this line: ") as error:
        to_event(parse_line(text), "ingest:linkerd:" + "a-long-source-name/" * 40)
    assert f"over the limit of {MAX_EVENT_BYTES} bytes" in str(error.value)


def test_overlong_fields_are_cut_and_named_not_refused() -> None:
    # As the sidecar does (proxy/record.py): label auditmesh.clipped names what was cut.
    event = event_of(
        line(
            uri="/" + "a" * 5000,
            user_agent="u" * 5000,
            trace_id="r" * 300,
            host="h" * 300,
            **{"client.id": "c" * 2000},
        )
    )
    assert len(event["http"]["path"]) == 4096 and len(event["http"]["user_agent"]) == 4096
    assert len(event["http"]["request_id"]) == 256
    assert len(event["destination"]["host"]) == 253
    assert len(event["labels"]["linkerd.client_id"]) == 1024
    assert event["labels"]["auditmesh.clipped"] == (
        "http.request_id,linkerd.client_id,destination.host,http.path,http.user_agent"
    )
    assert "auditmesh.clipped" not in event_of(line())["labels"]


def test_no_status_is_unknown_outcome() -> None:
    assert event_of(line(status=...))["outcome"] == "unknown"


def test_ids_are_deterministic() -> None:
    text = line()
    assert event_of(text)["id"] == event_of(text)["id"] != event_of(line(total_ns="2"))["id"]


def _parse_or_refuse(text: str) -> LinkerdRecord | None:
    try:
        record = parse_line(text)
    except LinkerdLogError as error:
        assert str(error)
        return None
    try:
        assert to_event(record, REPORTER).attested is False
    except LinkerdLogError as error:
        assert "cannot make an audit event" in str(error)
    return record


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_fuzz_arbitrary_text(text: str) -> None:
    _parse_or_refuse(text)


@settings(max_examples=150, deadline=None)
@given(
    st.fixed_dictionaries(
        {},
        optional={
            key: st.one_of(
                st.none(),
                st.integers(),
                st.booleans(),
                st.text(max_size=30),
                st.sampled_from(["", "-", "200", "10.0.0.1:80", "a.b.serviceaccount.identity.l.c"]),
            )
            for key in (*BASE, "server.id")
        },
    ),
    st.sampled_from(["2022-08-23T20:33:42.436964052Z", "2022-08-23T20:33:42Z", "bad"]),
)
def test_fuzz_fields(values: dict[str, object], timestamp: str) -> None:
    values.setdefault("timestamp", timestamp)
    _parse_or_refuse(json.dumps(values))
