"""ingest.otlp: HTTP spans with the semantic-convention names real SDKs send, stable and
older (OpenTelemetry semantic conventions, HTTP spans; each test names the version)."""

from __future__ import annotations

import pytest
from opentelemetry.proto.trace.v1.trace_pb2 import Span

from tests.ingest.test_otlp import Attr, one, span, traces


def test_semconv_1_20_protocol_names_give_the_protocol() -> None:
    # Semantic conventions v1.20.0 (HTTP spans) replaced `http.flavor` by
    # `net.protocol.name` ("http") and `net.protocol.version` ("1.1", "2.0"); v1.21 renamed
    # them `network.protocol.*` (the registry lists both as deprecated, "renamed").
    # Instrumentations that stay on v1.20 by default (the semconv migration guide tells
    # them to, until users opt in) still send these names.
    old: dict[str, Attr] = {"http.method": "GET", "http.target": "/a", "http.status_code": 200}
    event = one(traces(span({**old, "net.protocol.name": "http", "net.protocol.version": "2.0"})))
    assert event.http is not None and event.http.protocol == "HTTP/2"
    event = one(traces(span({**old, "net.protocol.version": "1.1"})))
    assert event.http is not None and event.http.protocol == "HTTP/1.1"


@pytest.mark.parametrize(
    "attrs",
    [
        # v1.20 and before: `net.host.port` is "Conditionally Required: If not default (80
        # for http scheme, 443 for https)", and `http.scheme` is required on server spans.
        {
            "http.method": "GET",
            "http.target": "/a",
            "http.scheme": "https",
            "net.host.name": "orders.shop",
            "http.status_code": 200,
        },
        # v1.21/v1.22: `server.port` likewise "If not default", `url.scheme` required; in
        # the stable conventions the port of a Host header without one is the scheme's.
        {
            "http.request.method": "GET",
            "url.path": "/a",
            "url.scheme": "https",
            "server.address": "orders.shop",
            "http.response.status_code": 200,
        },
    ],
    ids=["v1.20", "v1.21"],
)
def test_a_server_spans_port_defaults_from_its_scheme(attrs: dict[str, Attr]) -> None:
    event = one(traces(span(attrs, kind=Span.SPAN_KIND_SERVER)))
    assert event.destination is not None
    assert (event.destination.host, event.destination.port) == ("orders.shop", 443)


def test_a_server_span_without_a_host_gets_no_guessed_port() -> None:
    # Without server.address (Host) the span does not say which authority was asked for:
    # the application may listen on any port, so none is made up from the scheme.
    event = one(traces(span({"http.request.method": "GET", "url.scheme": "https"})))
    assert event.destination is not None and event.destination.port is None


def test_a_port_in_the_host_header_is_the_port() -> None:
    # Before v1.18 `http.host` carried the Host header as sent, port included.
    attrs: dict[str, Attr] = {
        "http.method": "GET",
        "http.target": "/a",
        "http.scheme": "https",
        "http.host": "orders.shop:8443",
    }
    event = one(traces(span(attrs)))
    assert event.destination is not None
    assert (event.destination.host, event.destination.port) == ("orders.shop", 8443)


def test_a_server_span_identified_by_its_url_names_host_and_port() -> None:
    # Before v1.18 a server span carried one of four sets of attributes: "http.url", or
    # http.scheme, http.host, http.target, or http.scheme, http.server_name, net.host.port,
    # http.target, or http.scheme, net.host.name, net.host.port, http.target. The first
    # set (http.url alone) names the authority the caller asked for too.
    attrs: dict[str, Attr] = {
        "http.method": "GET",
        "http.url": "https://orders.shop:8443/a?b=1",
        "http.status_code": 200,
    }
    event = one(traces(span(attrs)))
    assert event.destination is not None and event.http is not None
    assert (event.destination.host, event.destination.port) == ("orders.shop", 8443)
    assert event.http.path == "/a"
    event = one(traces(span({**attrs, "http.url": "http://orders.shop/a"})))
    assert event.destination is not None
    assert (event.destination.host, event.destination.port) == ("orders.shop", 80)


def test_a_server_span_identified_by_its_server_name_names_the_host() -> None:
    attrs: dict[str, Attr] = {
        "http.method": "GET",
        "http.target": "/a",
        "http.scheme": "http",
        "http.server_name": "orders.shop",
        "net.host.port": 8080,
    }
    event = one(traces(span(attrs)))
    assert event.destination is not None
    assert (event.destination.host, event.destination.port) == ("orders.shop", 8080)


def test_semconv_1_17_socket_addresses_name_the_ips() -> None:
    # Up to v1.17 the socket's addresses were `net.peer.ip` ("Remote address of the peer")
    # and `net.host.ip` ("Like net.peer.ip but for the host IP"); v1.18 renamed them
    # net.sock.peer.addr / net.sock.host.addr, v1.21 network.peer/local.address. On a
    # client span the peer is the server called; on a server span the host is this one.
    client: dict[str, Attr] = {
        "http.method": "GET",
        "http.url": "https://orders.shop/a",
        "net.peer.name": "orders.shop",
        "net.peer.ip": "10.0.0.7",
        "http.status_code": 200,
    }
    event = one(traces(span(client, kind=Span.SPAN_KIND_CLIENT)))
    assert event.destination is not None
    assert (event.destination.host, event.destination.ip) == ("orders.shop", "10.0.0.7")
    server: dict[str, Attr] = {
        "http.method": "GET",
        "http.target": "/a",
        "net.peer.ip": "10.0.0.8",
        "net.host.ip": "10.0.0.2",
        "http.status_code": 200,
    }
    event = one(traces(span(server)))
    assert event.source is not None and event.source.ip == "10.0.0.8"
    assert event.destination is not None and event.destination.ip == "10.0.0.2"
