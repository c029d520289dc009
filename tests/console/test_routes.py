"""The console's JSON routes in process (httpx's ASGI transport over a real ledger): the token,
the overview's figures, the layout endpoint, policy files, and replay with its audit record."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette

from auditmesh.collector import Collector
from auditmesh.console.routes import routes
from auditmesh.datadir import Ledger
from auditmesh.demo.scenario import POLICIES
from auditmesh.events import decode_event
from auditmesh.ledger.bundle import verify_bundle
from auditmesh.ledger.note import Verifier
from auditmesh.server.api_auth import load_or_create_token
from tests.conftest import START_NS, fill, generate

ONLY_ORDERS_PAYS = POLICIES  # the demo's: payments accepts only orders

# How long a test waits for a read's audit record to be committed. The wait ends as soon as
# it is, so the bound only matters when it never is; generous for a loaded 2-vCPU CI runner.
AUDIT_WAIT_S = 60.0


class AsgiClient:
    """Synchronous requests to an ASGI app, each on its own event loop."""

    def __init__(self, app: Starlette, token: str) -> None:
        self.app = app
        self.headers = {"authorization": f"Bearer {token}"}

    def request(self, method: str, path: str, **options: Any) -> httpx.Response:
        headers = {**self.headers, **options.pop("headers", {})}
        headers = {k: v for k, v in headers.items() if v}

        async def send() -> httpx.Response:
            transport = httpx.ASGITransport(app=self.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://console") as c:
                return await c.request(method, path, headers=headers, **options)

        return asyncio.run(send())

    def get(self, path: str, **options: Any) -> httpx.Response:
        return self.request("GET", path, **options)

    def post(self, path: str, **options: Any) -> httpx.Response:
        return self.request("POST", path, **options)


@pytest.fixture
def client(ledger: Ledger) -> Iterator[tuple[AsgiClient, Ledger]]:
    fill(ledger, generate(400))
    collector = Collector(ledger.log)
    collector.start()
    try:
        token = load_or_create_token(ledger.data_dir)
        yield AsgiClient(Starlette(routes=routes(ledger, collector)), token), ledger
    finally:
        collector.stop()


def test_the_page_is_public_and_locked_down(client: tuple[AsgiClient, Ledger]) -> None:
    test_client, _ = client
    page = test_client.get("/", headers={"authorization": ""})
    assert page.status_code == 200 and '<script type="module"' in page.text
    assert "script-src 'self'" in page.headers["content-security-policy"]
    script = test_client.get("/console/static/proof.js", headers={"authorization": ""})
    assert script.status_code == 200 and "rootFromInclusion" in script.text
    assert "javascript" in script.headers["content-type"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/console/api/overview"),
        ("POST", "/console/api/layout"),
        ("GET", "/console/api/policies"),
        ("POST", "/v1/policy/replay"),
    ],
)
def test_json_needs_the_token(client: tuple[AsgiClient, Ledger], method: str, path: str) -> None:
    test_client, _ = client
    for header in ({}, {"authorization": "Bearer amt_wrong"}):
        answer = test_client.request(method, path, headers={"authorization": "", **header})
        assert answer.status_code == 401, answer.text
        assert answer.headers["www-authenticate"].startswith("Bearer")


def test_overview_figures(client: tuple[AsgiClient, Ledger]) -> None:
    test_client, ledger = client
    body = test_client.get("/console/api/overview").json()
    assert body["entries"] == 400
    assert body["checkpoint"]["size"] == 400
    assert body["vkey"] == ledger.vkey and body["origin"] == ledger.log.origin
    assert body["checkpoint"]["age_s"] >= 0


def test_layout_endpoint(client: tuple[AsgiClient, Ledger]) -> None:
    test_client, _ = client
    answer = test_client.post(
        "/console/api/layout", json={"nodes": ["a", "b"], "edges": [["a", "b"]]}
    )
    positions = answer.json()["positions"]
    assert positions["a"][0] < positions["b"][0]
    bad = test_client.post("/console/api/layout", json={"nodes": ["a"], "edges": [["a", "x"]]})
    assert bad.status_code == 400 and "not in the node list" in bad.json()["error"]
    wrong = test_client.post("/console/api/layout", json={"nodes": "a"})
    assert wrong.status_code == 400 and "bad request body" in wrong.json()["error"]


def test_policy_files_from_the_data_dir(client: tuple[AsgiClient, Ledger]) -> None:
    test_client, ledger = client
    assert test_client.get("/console/api/policies").json() == {"files": []}
    (ledger.data_dir / "policies").mkdir()
    (ledger.data_dir / "policies" / "shop.yaml").write_text(POLICIES)
    files = test_client.get("/console/api/policies").json()["files"]
    assert files == [{"name": "shop.yaml", "text": POLICIES}]
    (ledger.data_dir / "policies" / "deny.bin").write_bytes(b"\x00")  # neither policy nor note
    refused = test_client.get("/console/api/policies")
    assert refused.status_code == 409
    assert "deny.bin" in refused.json()["error"]


def test_replay_reports_changes_and_is_audited(client: tuple[AsgiClient, Ledger]) -> None:
    test_client, ledger = client
    since = str(START_NS - 1)  # the generated traffic starts here, long ago
    body = {"policies": [{"name": "shop.yaml", "text": ONLY_ORDERS_PAYS}], "since": since}
    answer = test_client.post("/v1/policy/replay", json=body)
    assert answer.status_code == 200, answer.text
    result = answer.json()
    assert result["totals"]["calls"] > 0
    assert "ALLOW shop/payments-only-orders" in result["policies"]
    # the generated traffic lets batch-report reach catalog with POSTs now and then, or not:
    # either way every change names its source, destination and deciding rule
    for change in result["newly_denied"] + result["newly_allowed"]:
        assert change["source"] and change["destination"] and change["examples"]
    deadline = time.monotonic() + AUDIT_WAIT_S
    while ledger.log.size == 400 and time.monotonic() < deadline:
        time.sleep(0.01)
    (_, data), *_ = ledger.store.entries(400, 401)
    record = decode_event(data)
    assert record.kind == "audit_read"
    assert record.labels["read.route"] == "/v1/policy/replay"
    assert record.labels["read.count"] == str(result["totals"]["calls"])
    assert record.labels["read.who"].startswith("token:")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"policies": [{"name": "bad.yaml", "text": "a: [x"}]}, "bad.yaml: line"),
        ({"policies": []}, "no policy files"),
        ({"policies": [{"name": "a.yaml", "text": "{}"}], "since": "later"}, "since:"),
        ({"policies": [{"name": "a.yaml", "text": "{}"}], "since": "1h", "until": "2h"}, "until"),
        ({"policies": [{"name": "../a.yaml", "text": "{}"}]}, "not a usable file name"),
        ({"policies": [{"name": "a.yaml", "text": "{}"}], "workloads": {"x": {}}}, "namespace"),
    ],
)
def test_replay_errors_say_what_is_wrong(
    client: tuple[AsgiClient, Ledger], body: dict[str, object], message: str
) -> None:
    test_client, ledger = client
    answer = test_client.post("/v1/policy/replay", json=body)
    assert answer.status_code == 400 and message in answer.json()["error"], answer.text
    assert ledger.log.size == 400  # nothing read, nothing audited


def last_record(ledger: Ledger, size: int) -> dict[str, str]:
    deadline = time.monotonic() + AUDIT_WAIT_S
    while ledger.log.size == size and time.monotonic() < deadline:
        time.sleep(0.01)
    (_, data), *_ = ledger.store.entries(size, size + 1)
    record = decode_event(data)
    assert record.kind == "audit_read"
    return dict(record.labels)


def test_findings_over_a_window_are_audited(client: tuple[AsgiClient, Ledger]) -> None:
    test_client, ledger = client
    answer = test_client.get("/v1/findings", params={"since": str(START_NS - 1)})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["events"] == 400
    for finding in body["findings"]:
        assert finding["responsible"] and finding["event_ids"] and finding["summary"]
    labels = last_record(ledger, 400)
    assert labels["read.route"] == "/v1/findings" and labels["read.count"] == "400"
    for params, message in (
        ({"since": "soon"}, "since:"),
        ({"who": "x"}, "unknown parameter"),
        ([("since", "1h"), ("since", "2h")], "given more than once"),
        ({"since": "1h", "until": "2h"}, "is not after since"),
    ):
        refused = test_client.get("/v1/findings", params=params)
        assert refused.status_code == 400 and message in refused.json()["error"]


def test_evidence_bundle_verifies_offline(client: tuple[AsgiClient, Ledger]) -> None:
    test_client, ledger = client
    answer = test_client.post("/console/api/bundle", json={"indices": [5, 3, 5]})
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "application/zip"
    assert "attachment" in answer.headers["content-disposition"]
    report = verify_bundle(answer.content, Verifier.from_vkey(ledger.vkey))
    assert report.indices == (3, 5)
    assert last_record(ledger, 400)["read.count"] == "2"
    for indices, message in (
        ([], "at least one"),
        ([400], "not covered"),
        ([-1, 3], "-1 is not a ledger index"),
    ):
        refused = test_client.post("/console/api/bundle", json={"indices": indices})
        assert refused.status_code == 400 and message in refused.json()["error"]


def test_generated_set_allows_what_was_allowed(client: tuple[AsgiClient, Ledger]) -> None:
    test_client, ledger = client
    since = str(START_NS - 1)
    answer = test_client.get("/console/api/policies/generated", params={"since": since})
    assert answer.status_code == 200, answer.text
    made = answer.json()
    assert made["file"]["name"] == "least-privilege.yaml" and made["calls"] > 0
    assert "kind: AuthorizationPolicy" in made["file"]["text"]
    assert last_record(ledger, 400)["read.route"] == "/console/api/policies/generated"
    replayed = test_client.post(
        "/v1/policy/replay", json={"policies": [made["file"]], "since": since}
    ).json()
    assert replayed["totals"]["newly_denied"] == 0
    empty = test_client.get("/console/api/policies/generated", params={"since": "1s"})
    assert empty.status_code == 404 and "no inbound calls" in empty.json()["error"]
