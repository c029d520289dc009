"""Every error answer on the OTLP/HTTP paths is a google.rpc.Status in the request's encoding
(OTLP spec, "Failures": "The response body for all HTTP 4xx and HTTP 5xx responses MUST be a
Protobuf-encoded Status"), against a real server process over real sockets: another method
than POST (405, which Starlette answered in plain text), a write from a foreign web page
(the origin check's 403, a JSON error), and the default paths of the signals the server does
not take (/v1/metrics, /v1development/profiles: 404 in plain text)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest
from google.protobuf import json_format
from google.rpc import status_pb2

from auditmesh.serverproc import ServerProcess
from tests.ingest.test_otlp import logs

pytestmark = pytest.mark.integration

PROTOBUF = "application/x-protobuf"
JSON = "application/json"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("otlp-http-errors") / "data"
    with ServerProcess(data, extra=["--otlp-grpc", "off"]) as running:
        yield running


def status_of(response: httpx.Response, content_type: str) -> status_pb2.Status:
    """The answer's Status, checked to be in `content_type` (that of the request)."""
    assert response.headers["content-type"] == content_type, response.text
    if content_type == JSON:
        return json_format.Parse(response.content, status_pb2.Status())
    return status_pb2.Status.FromString(response.content)


@pytest.mark.parametrize("path", ["/v1/traces", "/v1/logs"])
@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "OPTIONS", "PATCH"])
def test_another_method_than_post_is_405_with_a_status(
    server: ServerProcess, path: str, method: str
) -> None:
    for content_type in (PROTOBUF, JSON):
        response = httpx.request(method, server.url + path, headers={"Content-Type": content_type})
        assert response.status_code == 405
        assert response.headers["allow"] == "POST"
        assert "POST" in status_of(response, content_type).message
    bare = httpx.request(method, server.url + path)  # no Content-Type: protobuf
    assert bare.status_code == 405
    assert method in status_of(bare, PROTOBUF).message


def test_head_is_405_with_the_status_type(server: ServerProcess) -> None:
    response = httpx.head(server.url + "/v1/logs", headers={"Content-Type": JSON})
    assert response.status_code == 405
    assert response.headers["content-type"] == JSON and response.content == b""


@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_an_export_from_a_foreign_web_page_is_403_with_a_status(
    server: ServerProcess, content_type: str
) -> None:
    body = logs().SerializeToString() if content_type == PROTOBUF else b"{}"
    response = httpx.post(
        server.url + "/v1/traces",
        content=body,
        headers={"Content-Type": content_type, "Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    message = status_of(response, content_type).message
    assert "'https://evil.example' is refused" in message


def test_the_origin_check_elsewhere_still_answers_a_json_error(server: ServerProcess) -> None:
    response = httpx.post(
        server.url + "/v1/events",
        content=b"[]",
        headers={"Content-Type": JSON, "Origin": "https://evil.example"},
    )
    assert response.status_code == 403
    assert "is refused" in response.json()["error"]


@pytest.mark.parametrize("path", ["/v1/metrics", "/v1development/profiles"])
@pytest.mark.parametrize("content_type", [PROTOBUF, JSON])
def test_the_signals_not_taken_are_404_with_a_status(
    server: ServerProcess, path: str, content_type: str
) -> None:
    response = httpx.post(server.url + path, content=b"", headers={"Content-Type": content_type})
    assert response.status_code == 404
    message = status_of(response, content_type).message
    assert "/v1/traces" in message and "/v1/logs" in message
    assert path.rsplit("/", 1)[1] in message  # names what it does not take
    assert "Traceback" not in server.log_path.read_text()
