"""The questions over HTTP against a real server: credentials, filters and cursor, trace, graph,
the audit record of every read, reads over the mesh listener with a client certificate, and the
CLI's --url mode."""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import msgspec
import pytest

from auditmesh.cli import query as cli_query
from auditmesh.cli.main import main
from auditmesh.collector import Collector
from auditmesh.datadir import open_ledger
from auditmesh.events import AuditEvent, encode_ndjson, to_json_dict
from auditmesh.identity.ca import MeshCA, init_ca
from auditmesh.identity.spiffe import SpiffeId
from auditmesh.identity.workload import self_issue
from auditmesh.server import api_auth, mesh
from auditmesh.serverproc import ServerProcess, free_port
from tests.analysis.calls import T0
from tests.analysis.test_graph import hand_made
from tests.analysis.test_trace import TRACE, checkout
from tests.conftest import generate

pytestmark = pytest.mark.integration
DAY = 86_400 * 1_000_000_000
AUDITOR = SpiffeId.kubernetes("cluster.local", "security", "auditor")


@dataclass
class Served:
    server: ServerProcess
    mesh_url: str
    token: str
    events: list[AuditEvent]  # in ledger order, before any read

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def get(self, path: str, **params: str | int) -> httpx.Response:
        return httpx.get(self.url + path, params=params, headers=self.auth, timeout=30)


def shifted(events: list[AuditEvent], by: int) -> list[AuditEvent]:
    return [msgspec.structs.replace(e, time_ns=int(e.time_ns) + by) for e in events]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    data = tmp_path_factory.mktemp("queryapi") / "data"
    init_ca(data, "cluster.local", now=datetime.now(UTC) - timedelta(minutes=1))
    port = free_port()
    extra = ["--mesh-listen", f"127.0.0.1:{port}", "--otlp-grpc", "off"]
    events = [
        *generate(400, seed=21),
        *[e for part in checkout().values() for e in part],
        *shifted(hand_made(), DAY),  # a day later: a window of its own for the graph
    ]
    with ServerProcess(data, extra=[*extra, "--checkpoint-interval", "0.2"]) as server:
        answer = httpx.post(server.url + "/v1/events", content=encode_ndjson(events), timeout=30)
        assert answer.status_code == 200, answer.text
        assert answer.json()["indices"] == list(range(len(events)))
        token = (data / "keys" / "api.token").read_text().strip()
        yield Served(server, f"https://127.0.0.1:{port}", token, events)


def audit_reads(served: Served) -> list[dict[str, object]]:
    """Every audit_read event so far (itself a read, and so itself recorded)."""
    page = served.get("/v1/events", kind="audit_read", order="index", limit=1000)
    assert page.status_code == 200
    return [item["event"] for item in page.json()["events"]]


def test_the_token_file_is_private_and_printed_at_start(served: Served) -> None:
    path = served.server.data_dir / "keys" / "api.token"
    assert path.stat().st_mode & 0o777 == 0o600
    assert served.token.startswith("amt_") and len(served.token) > 40
    assert f"API token: {served.token}" in served.server.log_path.read_text()


def test_reads_need_a_token_and_the_public_parts_stay_public(served: Served) -> None:
    event_id = served.events[0].id
    reads = [
        ("/v1/events", {}),
        (f"/v1/events/{event_id}", {}),
        (f"/v1/traces/{TRACE}", {}),
        ("/v1/graph", {}),
        ("/v1/proof/inclusion", {"id": event_id}),
    ]
    for path, params in reads:
        bare = httpx.get(served.url + path, params=params)
        assert bare.status_code == 401, path
        assert bare.headers["www-authenticate"] == 'Bearer realm="auditmesh"'
        assert "API token" in bare.json()["error"]
        wrong = httpx.get(served.url + path, params=params, headers={"authorization": "Bearer x"})
        assert (
            wrong.status_code == 401
            and 'error="invalid_token"' in wrong.headers["www-authenticate"]
        )
        basic = httpx.get(served.url + path, params=params, headers={"authorization": "Basic eA=="})
        assert basic.status_code == 401
        assert served.get(path, **params).status_code == 200, path
    assert httpx.get(served.url + "/log/checkpoint").status_code == 200
    assert httpx.get(served.url + "/log/tile/entries/000.p/1").status_code == 200
    assert httpx.get(served.url + "/metrics").status_code == 200
    consistency = httpx.get(served.url + "/v1/proof/consistency", params={"from": 1, "to": 2})
    assert consistency.status_code == 200


def test_events_are_filtered_and_paged_with_the_cursor(served: Served) -> None:
    catalog = [
        i
        for i, e in enumerate(served.events)
        if e.destination is not None and e.destination.service == "catalog"
    ]
    got: list[int] = []
    params: dict[str, str | int] = {"dest": "catalog", "order": "index", "limit": 37}
    while True:
        page = served.get("/v1/events", **params)
        assert page.status_code == 200, page.text
        body = page.json()
        assert body["count"] == len(body["events"]) <= 37
        got.extend(item["index"] for item in body["events"])
        if body["next"] is None:
            break
        params["cursor"] = body["next"]
    assert got == catalog
    first = served.get("/v1/events", dest="catalog", limit=1).json()["events"][0]
    assert first["event"] == to_json_dict(served.events[first["index"]])
    bad = served.get("/v1/events", status="7xx")
    assert bad.status_code == 400 and "status" in bad.json()["error"]
    assert served.get("/v1/events", colour="red").status_code == 400
    other = served.get("/v1/events", dest="orders", cursor=params["cursor"])
    assert other.status_code == 400 and "cursor" in other.json()["error"]


def test_a_trace_over_http(served: Served) -> None:
    body = served.get(f"/v1/traces/{TRACE.upper()}").json()
    assert (body["trace_id"], body["calls"], body["events"]) == (TRACE, 5, 8)
    root = body["roots"][0]
    assert [c["destination"] for c in root["children"]] == ["orders", "catalog"]
    assert root["children"][0]["children"][0]["decision"] == "deny"
    assert served.get(f"/v1/traces/{'0' * 32}").status_code == 404
    assert served.get("/v1/traces/xyz").status_code == 400
    assert served.get(f"/v1/traces/{TRACE[:8]}").json()["trace_id"] == TRACE  # as query shows
    assert served.get("/v1/traces/ffffffff").json()["error"].startswith("no trace id stored")


def test_the_graph_over_http_matches_the_hand_computation(served: Served) -> None:
    response = served.get("/v1/graph", since=str(T0 + DAY), until=str(T0 + DAY + 60 * 10**9))
    body = response.json()
    edges = {(e["source"], e["dest"]): e for e in body["edges"]}
    catalog = edges[("frontend", "catalog")]
    assert (catalog["requests"], catalog["errors"], catalog["p50_us"], catalog["p95_us"]) == (
        10,
        2,
        500,
        1200,
    )
    assert edges[("frontend", "orders")]["requests"] == 3
    assert edges[("batch-report", "payments")]["denials"] == 4
    assert body["requests"] == 18 and body["window"]["seconds"] == 60
    assert served.get("/v1/graph", since="soon").status_code == 400
    assert served.get("/v1/graph", since="99999999d").status_code == 400
    assert served.get("/v1/graph", service="x").status_code == 400


@pytest.mark.parametrize("path", ["/v1/events", "/v1/graph"])
def test_a_repeated_parameter_or_an_empty_window_is_refused(served: Served, path: str) -> None:
    twice = httpx.get(
        served.url + path, params=[("since", "2h"), ("since", "1h")], headers=served.auth
    )
    assert twice.status_code == 400
    assert twice.json()["error"].startswith("since: given more than once")
    backwards = served.get(path, since="1h", until="2h")
    assert backwards.status_code == 400 and "is not after since" in backwards.json()["error"]
    future = served.get(path, since="2200-01-01T00:00:00Z")
    if path == "/v1/graph":  # its window ends now
        assert future.status_code == 400 and "is in the future" in future.json()["error"]
    else:  # events have no end without until: a producer's clock may run ahead
        assert future.status_code == 200 and future.json()["events"] == []


def test_every_read_is_recorded_with_who_what_and_how_many(served: Served) -> None:
    page = served.get("/v1/events", dest="payments", status="403", limit=7).json()
    assert page["count"] == 7
    trace_body = served.get(f"/v1/traces/{TRACE}").json()
    reads = audit_reads(served)
    by_path = {r["http"]["path"]: r for r in reads}  # type: ignore[index]
    listed = by_path["/v1/events?dest=payments&status=403&limit=7"]
    assert listed["labels"] == {
        "read.who": api_auth.token_id(served.token),
        "read.via": "token",
        "read.route": "/v1/events",
        "read.count": "7",
    }
    assert listed["kind"] == "audit_read" and listed["reporter"] == "auditmesh-server"
    assert listed["source"]["ip"] == "127.0.0.1"  # type: ignore[index]
    traced = by_path[f"/v1/traces/{TRACE}"]
    assert traced["labels"]["read.count"] == str(trace_body["events"])  # type: ignore[index]
    assert served.token not in json.dumps(reads)


def test_reading_the_audit_reads_is_audited_once_per_read(served: Served) -> None:
    before = audit_reads(served)
    after = audit_reads(served)
    assert len(after) == len(before) + 1  # the first listing's own record, nothing more
    assert after[-1]["labels"]["read.count"] == str(len(before))  # type: ignore[index]


def test_a_mesh_client_certificate_reads_and_is_named(served: Served) -> None:
    data = served.server.data_dir
    credentials = self_issue(MeshCA.load(data), AUDITOR, datetime.now(UTC), timedelta(hours=1))
    with httpx.Client(base_url=served.mesh_url, verify=credentials.client_context()) as client:
        page = client.get("/v1/events", params={"source": "frontend", "limit": 2})
        assert page.status_code == 200, page.text
        assert page.json()["count"] == 2
        assert client.get(f"/v1/traces/{TRACE}").status_code == 200
        # submission there stays the sidecars' own: events reported by the caller only
        others = client.post("/v1/events", content=encode_ndjson(generate(1)))
        assert others.status_code == 403
    reads = audit_reads(served)
    mine = [r for r in reads if r["labels"]["read.who"] == str(AUDITOR)]  # type: ignore[index]
    assert len(mine) == 2
    assert mine[0]["labels"]["read.via"] == "mtls"  # type: ignore[index]
    assert mine[0]["source"]["identity"] == str(AUDITOR)  # type: ignore[index]
    anonymous_context = ssl.create_default_context(cadata=(data / "ca" / "ca.pem").read_text())
    anonymous_context.check_hostname = False
    with httpx.Client(base_url=served.mesh_url, verify=anonymous_context) as client:
        assert client.get("/v1/events").status_code == 401
    assert api_auth.PEER_KEY == mesh.PEER_KEY


def test_the_cli_reads_a_server_with_the_token(
    served: Served, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(cli_query, "PAGE", 4)  # several pages for one answer
    args = ["query", "--url", served.url, "--dest", "payments", "--order", "index"]
    assert main([*args, "--limit", "10", "--format", "json", "--token", served.token]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert remote["count"] == 10 and remote["next"] is not None
    local_args = ["query", "--data", str(served.server.data_dir), "--dest", "payments"]
    assert main([*local_args, "--order", "index", "--limit", "10", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == remote["events"]
    monkeypatch.setenv("AUDITMESH_TOKEN", served.token)
    assert main(["trace", TRACE, "--url", served.url]) == 0
    assert "orders → payments" in capsys.readouterr().out
    assert main(["graph", "--url", served.url, "--format", "dot"]) == 0
    assert capsys.readouterr().out.startswith("digraph auditmesh {")
    monkeypatch.delenv("AUDITMESH_TOKEN")
    assert main(["graph", "--url", served.url]) == 2
    assert "needs the API token" in capsys.readouterr().err
    assert main(["graph", "--url", served.url, "--token", "nope"]) == 2
    assert "401" in capsys.readouterr().err


def test_the_server_answers_503_when_a_read_cannot_be_audited(tmp_path: Path) -> None:
    """In process: a stopped collector cannot record the read, so the data is withheld."""
    ledger = open_ledger(tmp_path / "data", origin="test/503")
    collector = Collector(ledger.log)
    collector.start()
    collector.stop()
    sent: list[dict[str, object]] = []

    async def secret(scope: object, receive: object, send: api_auth.Send) -> None:
        api_auth.set_read_count(scope, 1)  # type: ignore[arg-type]
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"secret"})

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b""}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    middleware = api_auth.ApiAuth(secret, token="t", collector=collector)
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/graph",
        "query_string": b"",
        "headers": [(b"authorization", b"Bearer t")],
        "client": ("127.0.0.1", 5000),
    }
    try:
        asyncio.run(middleware(scope, receive, send))  # type: ignore[arg-type]
    finally:
        ledger.close()
    assert sent[0]["status"] == 503
    assert b"could not be audited" in sent[1]["body"]  # type: ignore[operator]
    assert all(b"secret" not in m.get("body", b"") for m in sent)  # type: ignore[operator]


def test_an_edges_calls_over_http_and_through_the_cli(
    served: Served, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the console's "Open in event search" asks: each edge's ends with calls=once over
    the graph's window select as many events as the edge counts; the CLI's --url passes
    --calls on."""
    window = {"since": str(T0 + DAY), "until": str(T0 + DAY + 60 * 10**9)}
    body = served.get("/v1/graph", **window).json()
    assert body["edges"]
    for edge in body["edges"]:
        page = served.get(
            "/v1/events", source=edge["source"], dest=edge["dest"], calls="once", limit=1000,
            since=str(body["window"]["from_ns"]), until=str(body["window"]["to_ns"]),
        )  # fmt: skip
        assert page.status_code == 200, page.text
        assert page.json()["count"] == edge["requests"], edge
    both = served.get("/v1/events", source="frontend", dest="orders", limit=1000, **window)
    assert both.json()["count"] == 6  # both reports of each of the 3 calls
    assert served.get("/v1/events", calls="twice").status_code == 400
    argv = ["query", "--source", "frontend", "--dest", "orders", "--calls", "once"]
    argv += ["--since", window["since"], "--format", "json", "--token", served.token]
    assert main([*argv, "--url", served.url]) == 0
    remote = json.loads(capsys.readouterr().out)
    assert main([*argv[:-2], "--data", str(served.server.data_dir)]) == 0
    assert json.loads(capsys.readouterr().out)["events"] == remote["events"]
    assert remote["count"] == 3
    assert {item["event"]["direction"] for item in remote["events"]} == {"inbound"}
