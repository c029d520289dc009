"""ingest.otlp: HTTP spans with the semantic-convention names real SDKs send, stable and
older (OpenTelemetry semantic conventions, HTTP spans; each test names the version)."""

from __future__ import annotations

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
