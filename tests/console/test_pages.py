"""The web console in headless Chromium against a server filled by `auditmesh demo`.

Each page renders at a laptop's width without JavaScript errors; the graph shows the demo's
edges and denials; a search narrows; an event's inclusion proof verifies in the page and fails
visibly on a tampered ledger; replay shows what a candidate policy would change. Screenshots go
to tests/console/artifacts/.
"""

from __future__ import annotations

import json
import random
import re
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import msgspec
import pytest
from selenium.webdriver.common.by import By

from auditmesh.analysis.query import parse_time
from auditmesh.events import AuditEvent, Peer, Trace, encode_ndjson, event_id_at
from auditmesh.ledger import merkle
from auditmesh.ledger.bundle import verify_bundle
from auditmesh.ledger.note import Verifier
from auditmesh.serverproc import ServerProcess
from tests.conftest import generate
from tests.console.browser import Browser
from tests.console.conftest import SERVER_FLAGS, Demo, Served, logged_in

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(autouse=True)
def no_console_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Every test leaves the browser console free of errors (SEVERE entries)."""
    if "browser" not in request.fixturenames:
        yield
        return
    browser: Browser = request.getfixturevalue("browser")
    browser.console_messages()
    start = len(browser.logs)
    yield
    browser.console_messages()
    errors = [e["message"] for e in browser.logs[start:] if e.get("level") == "SEVERE"]
    assert errors == []


def rfc3339(ns: int) -> str:
    """RFC 3339 UTC to the nanosecond, trailing zeros dropped (analysis/query.py `_iso`)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    whole = datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return whole + (f".{rest:09d}".rstrip("0") if rest else "") + "Z"


def api_events(server: Served, params: dict[str, str]) -> list[dict[str, Any]]:
    answer = httpx.get(
        f"{server.url}/v1/events",
        params={**params, "limit": "1000"},
        headers={"authorization": f"Bearer {server.token}"},
    )
    assert answer.status_code == 200, answer.text
    return [item["event"] for item in answer.json()["events"]]


def fits_laptop(browser: Browser) -> None:
    overflow = browser.js("return document.documentElement.scrollWidth - window.innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than a 1366 px window"


def test_login_then_overview(browser: Browser, demo: Demo) -> None:
    browser.open("#/overview")
    assert browser.js("return document.body.dataset.page") == "overview"
    entries = browser.wait_for("#tile-ledger .value").text
    assert int(entries.replace(",", "")) >= len(demo.events)
    assert "checkpoint" in browser.find("#tile-ledger").text
    for tile in ("#tile-requests", "#tile-denials", "#tile-findings"):
        assert browser.find(f"{tile} .value").text.strip() not in ("", "—")
    fits_laptop(browser)
    browser.screenshot("overview")


def test_graph_shows_the_demo_edges(browser: Browser) -> None:
    browser.open("#/graph")
    browser.wait_for("#graph-svg")
    edges = {
        (e["source"], e["dest"]): e
        for e in browser.js(
            """return [...document.querySelectorAll('#graph-svg .edge')].map((e) => ({
                source: e.dataset.source, dest: e.dataset.dest,
                denials: Number(e.dataset.denials), plaintext: e.classList.contains('plaintext'),
                dashed: e.querySelector('path.line').getAttribute('stroke-dasharray')}))"""
        )
    }
    for edge in [("frontend", "catalog"), ("orders", "payments"), ("batch-report", "payments")]:
        assert edge in edges, sorted(edges)
    assert edges[("batch-report", "payments")]["denials"] > 0
    assert edges[("orders", "payments")]["denials"] == 0
    assert edges[("unknown", "frontend")]["plaintext"] and edges[("unknown", "frontend")]["dashed"]
    assert not edges[("orders", "payments")]["dashed"]
    nodes = browser.js(
        "return [...document.querySelectorAll('#graph-svg .node')].map((n) => n.dataset.name)"
    )
    assert {"frontend", "catalog", "orders", "payments", "batch-report"} <= set(nodes)
    fits_laptop(browser)
    browser.screenshot("graph")
    # a red mark on the denied edge; clicking it lists that edge's events
    browser.find('.denial[data-source="batch-report"][data-dest="payments"]').click()
    browser.wait_for("#edge-events tbody tr")
    rows = browser.find_all("#edge-events tbody tr")
    assert rows and all("deny" in r.text or "/charges" in r.text for r in rows)
    assert "batch-report → payments" in browser.find("#edge-detail h2").text
    browser.screenshot("graph-edge-events")


def shown_rate(text: str) -> float:
    """Calls per second from dom.js `fmtRate`'s text (12/s, 7.5/min, 1.1/h, 2.0/day)."""
    value, unit = text.split("/")
    return float(value) / {"s": 1, "min": 60, "h": 3600, "day": 86400}[unit]


def rates_in_table(browser: Browser, since: str) -> dict[tuple[str, str], tuple[int, float]]:
    browser.open(f"#/graph?since={since}")
    browser.wait_for("#edge-table tbody tr")
    found = {}
    for row in browser.find_all("#edge-table tbody tr"):
        source, dest, calls, rate = (c.text for c in row.find_elements(By.CSS_SELECTOR, "td")[:4])
        found[(source, dest)] = (int(calls), shown_rate(rate))
    return found


def test_graph_rates_are_over_the_minutes_with_traffic(browser: Browser, demo: Demo) -> None:
    """Regression: the rate divided an edge's calls by the whole window, so the demo's few
    seconds of traffic read 12.9/h in the 24h window (and 24 times more in the 1h one). The
    rate is over the whole minutes from the edge's first call to its last, the same in any
    window that holds them, and the page says so; the window's average is in each tooltip."""
    times = [e.time_ns for _, e in demo.events if e.kind in ("http", "tcp")]
    minute = 60_000_000_000
    # every edge's calls fall within these whole minutes, so its rate is at least calls / span
    span_s = (max(times) // minute + 1 - min(times) // minute) * 60
    started = time.monotonic()
    day = rates_in_table(browser, "24h")
    assert len(day) >= 8
    for edge, (calls, rate) in day.items():
        assert rate >= calls / span_s * 0.95, (edge, calls, rate, span_s)
    note = browser.find("#rate-help").text
    assert "not the average over the whole window" in note and "the last 24h" in note
    header = browser.find("#edge-table thead th:nth-child(4)")
    assert header.text == "Rate while active" and "first call" in str(header.get_attribute("title"))
    cell = browser.find("#edge-table tbody tr td.rate")
    title = str(cell.get_attribute("title"))
    assert title.startswith(f"{cell.text} while it had calls, ") and "UTC" in title, title
    assert "averaged over the whole window" in title
    browser.find("#edge-table tbody tr").click()
    browser.wait_for("#edge-events tbody tr")
    assert "while it had calls" in browser.find("#edge-detail p").text
    busiest = max(calls for calls, _ in day.values())  # the first row: the list says it is not all
    assert busiest > 50 and browser.find("#edge-more").text.startswith(
        f"The latest 50 of its {busiest} calls"
    )
    assert "selected" in str(browser.find("#edge-table tbody tr").get_attribute("class"))
    browser.screenshot("graph-rates")
    # the same traffic, the same rates, whatever the window: each edge's span (calls / rate)
    # is the same (a minute still running counts whole), but for calls that came between two
    # loads, and the 2 digits a rate is shown to
    for since in ("1h", "7d"):
        loaded = time.monotonic()
        other = rates_in_table(browser, since)
        passed = time.monotonic() - started + 1  # from before the last load to after this one
        started = loaded
        assert other.keys() == day.keys(), since
        for edge, (calls, rate) in other.items():
            before, now = day[edge][0] / day[edge][1], calls / rate
            assert calls == day[edge][0] and 0.92 * before <= now <= 1.08 * before + passed, (
                edge,
                before,
                now,
            )
        day = other


def test_rates_read_in_a_unit_that_shows_them(browser: Browser) -> None:
    """dom.js `fmtRate`: regression, one call in a day read "0.0/h", as if there were none."""
    browser.open("#/overview")
    cases = {12.94: "12.9/s", 0.5: "30.0/min", 1 / 600: "6.0/h", 1 / 86400: "1.0/day"}
    cases |= {1e-9: "< 0.1/day", 0: "0/s"}
    shown = browser.driver.execute_async_script(
        """const [values, done] = arguments;
        import("/console/static/dom.js").then((dom) => done(values.map(dom.fmtRate)));""",
        list(cases),
    )
    assert shown == list(cases.values())


def test_an_empty_graph_says_nothing_matched(chromium: None, tmp_path: Path) -> None:
    """Regression: a window without calls showed "No calls recorded", then the edge panel
    ("Click an edge…") and an empty edge table. Now one panel says nothing matched and offers
    the longer windows; there is no picture, edge panel or table to click."""
    data = tmp_path / "empty"
    with (
        ServerProcess(data, extra=SERVER_FLAGS) as proc,
        logged_in(Served(proc.url, (data / "keys" / "api.token").read_text().strip())) as empty,
    ):
        empty.open("#/graph?since=15m")
        assert empty.js("return document.body.dataset.state") == "ready"
        panel = empty.find("#graph-empty")
        assert "Nothing matched" in panel.text and "in the last 15m" in panel.text
        wider = [a.text for a in empty.find_all("#graph-empty a.button")]
        assert wider == ["1h", "24h", "7d", "1 year"]
        for absent in ("#edge-detail", "#edge-table", "#graph-svg", ".legend"):
            assert empty.find_all(absent) == [], absent
        fits_laptop(empty)
        empty.screenshot("graph-empty")
        empty.find_all("#graph-empty a.button")[-1].click()  # the longest window: still empty
        empty.wait_until("location.hash === '#/graph?since=365d'")
        empty.wait_settled()
        assert "Not in the longest window either" in empty.find("#graph-empty").text
        assert empty.find_all("#edge-detail") == [] and empty.errors() == []


def api_graph(server: Served, since: str) -> dict[str, Any]:
    answer = httpx.get(
        f"{server.url}/v1/graph",
        params={"since": since},
        headers={"authorization": f"Bearer {server.token}"},
    )
    assert answer.status_code == 200, answer.text
    body: dict[str, Any] = answer.json()
    return body


def test_denied_edges_stand_apart_from_errors(browser: Browser, server: Served) -> None:
    """Regression: denials are not errors, so an edge whose every call was denied was drawn
    green (0% errors) with only a small red disc, red as the errors' worst bin. An edge with
    denials has a purple casing and an "N denied" pill, the legend says what they are, and the
    picture, the table, the edge panel and the API agree on which edges and how many."""
    browser.open("#/graph?since=24h")
    browser.wait_for("#edge-table tbody tr")
    browser.screenshot("graph-denials-picture", full=False)
    api = {(e["source"], e["dest"]): e for e in api_graph(server, "24h")["edges"] if e["denials"]}
    fully = api[("batch-report", "payments")]
    assert fully["denials"] == fully["requests"] and fully["error_rate"] < 0.01  # all denied
    drawn = browser.js(
        """return [...document.querySelectorAll('#graph-svg .edge')].map((e) => ({
            source: e.dataset.source, dest: e.dataset.dest, denied: e.classList.contains('denied'),
            casing: e.querySelector('path.casing')?.getAttribute('stroke') || null,
            line: e.querySelector('path.line').getAttribute('stroke')}))"""
    )
    cased = {(e["source"], e["dest"]): e["casing"] for e in drawn if e["denied"]}
    assert cased.keys() == api.keys()
    assert all(e["casing"] is None for e in drawn if not e["denied"])
    error_colours = {e["line"] for e in drawn} | {"#c62828", "#e07b00", "#b59a12", "#2f9e6b"}
    (denied_colour,) = set(cased.values())
    assert denied_colour not in error_colours
    pills = {
        (p.get_attribute("data-source"), p.get_attribute("data-dest")): p.text
        for p in browser.find_all("#graph-svg .denial")
    }
    assert pills == {edge: f"{e['denials']} denied" for edge, e in api.items()}
    legend = browser.find("#legend-denied")
    assert "denied by policy" in legend.text and "not counted as errors" in legend.text
    legend_casing = browser.js(
        "return document.querySelector('#legend-denied line').getAttribute('stroke')"
    )
    assert legend_casing == denied_colour
    table = {}
    for row in browser.find_all("#edge-table tbody tr"):
        cells = [c.text for c in row.find_elements(By.CSS_SELECTOR, "td")]
        table[(cells[0], cells[1])] = (cells[5], "has-denials" in str(row.get_attribute("class")))
    for edge, (shown, marked) in table.items():
        expected = f"{api[edge]['denials']} denied" if edge in api else "0"
        assert (shown, marked) == (expected, edge in api), edge
    # the panel names the denials (not as errors) and lists them
    rows = browser.find_all("#edge-table tbody tr")
    ends = [tuple(c.text for c in r.find_elements(By.CSS_SELECTOR, "td")[:2]) for r in rows]
    rows[ends.index(("batch-report", "payments"))].click()
    note = browser.wait_for("#edge-denials")
    count = fully["denials"]
    assert f"{count} of {count} calls denied (100%) by policy" in note.text
    assert "not counted as errors" in note.text
    link = str(note.find_element(By.CSS_SELECTOR, "a").get_attribute("href"))
    assert "decision=deny" in link and "source=batch-report" in link
    browser.find("#edge-table tbody tr:not(.has-denials)").click()
    browser.wait_until("!document.querySelector('#edge-denials')")
    fits_laptop(browser)
    browser.screenshot("graph-denials")


def test_edge_rates_share_one_unit(browser: Browser) -> None:
    """Regression: the Rate column read "7.0/s" in one row and "48.9/min" in the next, so rows
    could not be compared. One unit per table, the one the largest rate reads best in; a small
    rate in it is never shown as zero."""
    browser.open("#/graph?since=24h")
    browser.wait_for("#edge-table tbody tr")
    cells = [c.text for c in browser.find_all("#edge-table tbody td.rate")]
    units = {text.rsplit("/", 1)[1] for text in cells}
    assert units == {"s"}, cells  # the demo's busiest edges run at several calls a second
    assert "calls per s" in browser.find("#rate-help").text
    shown = browser.driver.execute_async_script(
        """const [cases, done] = arguments;
        import("/console/static/dom.js").then((dom) => done(cases.map((rates) => {
          const unit = dom.rateUnit(rates);
          return rates.map((r) => dom.fmtRateIn(r, unit));
        })));""",
        [[5.2, 0.61, 1 / 60, 1e-5, 0], [0.8, 0.05], [1 / 1800, 1 / 86400], [1e-9], [150, 2]],
    )
    assert shown == [
        ["5.2/s", "0.61/s", "0.017/s", "< 0.01/s", "0/s"],
        ["48.0/min", "3.0/min"],
        ["2.0/h", "0.042/h"],
        ["< 0.01/day"],
        ["150/s", "2.0/s"],
    ]


def test_a_bad_since_keeps_the_page_frame(browser: Browser) -> None:
    """Regression: a window the server refuses (garbage, a time in the future) replaced the
    whole page with the server's error: no header, no window buttons. The frame stays, the
    error shows in place, and a window button leads back to a graph."""
    future = datetime.fromtimestamp(time.time() + 3600, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    for since, said in [
        ("garbage", "neither a duration"),
        (future, "is in the future"),
        ("2999-01-01T00:00:00Z", "out of range"),
    ]:
        browser.open(f"#/graph?since={since}")
        assert browser.find("h1").text == "Service graph", since
        header = [a.text for a in browser.find_all(".view-graph > .row a.button")]
        assert header == ["15m", "1h", "24h", "7d", "1 year"], since
        panel = browser.find("#graph-bad-window")
        assert panel.get_attribute("role") == "alert" and said in panel.text, panel.text
        assert f"since={since}" in panel.text
        assert browser.find_all("#graph-svg") == [] and browser.find_all("#edge-table") == []
        assert browser.js("return document.body.dataset.state") == "ready"
    fits_laptop(browser)
    browser.screenshot("graph-bad-window")
    browser.find_all("#graph-bad-window a.button")[2].click()  # 24h
    browser.wait_until("location.hash === '#/graph?since=24h'")
    browser.wait_for("#graph-svg")
    # the server's 400s are the errors this test expects in the browser console
    browser.console_messages()
    expected = [e for e in browser.logs if "400 (Bad Request)" in str(e["message"])]
    assert len(expected) == 3
    browser.logs[:] = [e for e in browser.logs if e not in expected]


def test_overview_rates_say_what_they_average(browser: Browser, server: Served) -> None:
    """The overview's calls tile read "14.0/min on average": over the whole hour, though the
    demo's calls took a minute or two, while the graph page gives each edge's rate over the
    minutes it had calls. The tile names both: the average over the whole window, and the rate
    while there were calls (the graph page's way, over all edges)."""
    browser.open("#/overview")
    body = api_graph(server, "1h")
    requests = sum(e["requests"] for e in body["edges"])
    first = min(e["active_from_ns"] for e in body["edges"])
    last = max(e["active_to_ns"] for e in body["edges"])
    sub = browser.find("#tile-requests .sub").text
    average = re.search(r"^(\S+) averaged over the whole last 1h$", sub, re.M)
    active = re.search(r"^(\S+) while there were calls \(", sub, re.M)
    assert average and active, sub
    assert shown_rate(average[1]) == pytest.approx(requests / body["window"]["seconds"], rel=0.05)
    # the span ends with the last minute that has calls (one still running counts whole): it
    # can only have grown since the page loaded, as calls came between the two reads
    span_s = (last - first) / 1e9
    assert requests / span_s * 0.95 <= shown_rate(active[1]) <= requests / (span_s - 30) * 1.05
    edges = {(e["source"], e["dest"]) for e in body["edges"] if e["denials"]}
    assert browser.find("#tile-denials .sub").text.endswith(
        f"of calls, on {len(edges)} {'edge' if len(edges) == 1 else 'edges'}"
    )
    assert "/h" not in browser.find("#tile-denials .sub").text  # a window's count, not a rate


def test_search_narrows_and_pages(browser: Browser, demo: Demo) -> None:
    browser.open("#/events?limit=20")
    first_page = [r.get_attribute("data-id") for r in browser.find_all("#results tbody tr")]
    assert len(first_page) == 20
    browser.find("#page-next").click()
    browser.wait_until("location.hash.includes('cursor=')")
    browser.wait_settled()
    second_page = [r.get_attribute("data-id") for r in browser.find_all("#results tbody tr")]
    assert second_page and not set(first_page) & set(second_page)

    browser.open("#/events")
    everything = len(browser.find_all("#results tbody tr"))
    browser.find("#f-service").send_keys("payments")
    browser.find("#f-decision option[value=deny]").click()
    browser.find("#search-run").click()
    browser.wait_until("location.hash.includes('decision=deny')")
    browser.wait_settled()
    rows = browser.find_all("#results tbody tr")
    denied = sum(
        1
        for _, e in demo.events
        if e.authz is not None
        and e.authz.decision == "deny"
        and "payments"
        in {
            e.destination.service if e.destination else None,
            e.source.service if e.source else None,
        }
    )
    assert 0 < len(rows) == min(denied, 50) < everything
    assert all("deny" in r.text and "payments" in r.text for r in rows)
    fits_laptop(browser)
    browser.screenshot("search")


def test_trace_view_shows_the_call_tree(browser: Browser, demo: Demo) -> None:
    per_trace = Counter(e.trace.trace_id for _, e in demo.events if e.trace is not None)
    checkout = {
        e.trace.trace_id
        for _, e in demo.events
        if e.trace is not None and e.http is not None and e.http.path == "/checkout"
    }
    trace_id = max(checkout, key=lambda t: per_trace[t])
    browser.open(f"#/trace/{trace_id}")
    rows = browser.find_all("#trace-tree tbody tr")
    depths = [int(r.get_attribute("data-depth") or 0) for r in rows]
    assert len(rows) >= 2 and max(depths) >= 1
    text = browser.find("#trace-tree").text
    assert "frontend" in text and "orders" in text and "allow" in text
    assert "calls from" in browser.find("#trace-summary").text
    fits_laptop(browser)
    browser.screenshot("trace")


def test_event_proof_verifies_in_the_browser(
    browser: Browser, demo: Demo, denied: tuple[int, AuditEvent]
) -> None:
    index, event = denied
    browser.open(f"#/event/{event.id}")
    verdict = browser.wait_for("#proof-verdict[data-result]")
    assert verdict.get_attribute("data-result") == "verified", verdict.text
    assert f"Verified in your browser: leaf {index} of " in verdict.text
    assert "checkpoint signature verified (Ed25519)" in verdict.text
    fields = browser.find("#event-fields").text
    for shown in ("authz.decision", "deny", "shop/payments-only-orders", event.id):
        assert shown in fields
    steps = browser.find_all("#proof-steps li.good")
    assert len(steps) >= 5
    fits_laptop(browser)
    browser.screenshot("event-verified")


def test_viewing_an_event_is_an_audited_read(
    browser: Browser, server: Served, denied: tuple[int, AuditEvent]
) -> None:
    _, event = denied
    browser.open(f"#/event/{event.id}")
    browser.wait_for("#proof-verdict[data-result]")
    answer = httpx.get(
        f"{server.url}/v1/events",
        params={"kind": "audit_read", "limit": "1000"},
        headers={"authorization": f"Bearer {server.token}"},
    )
    assert answer.status_code == 200, answer.text
    reads = [item["event"] for item in answer.json()["events"]]
    mine = [r for r in reads if r["http"]["path"] == f"/v1/events/{event.id}"]
    assert mine, [r["http"]["path"] for r in reads]
    assert mine[0]["labels"]["read.who"].startswith("token:")


def test_tampered_event_fails_visibly(
    browser: Browser, tampered_server: Served, denied: tuple[int, AuditEvent]
) -> None:
    _, event = denied
    browser.open("#/login", base_url=tampered_server.url)  # another origin: log in there too
    browser.find("#token").send_keys(tampered_server.token)
    browser.find("#login button[type=submit]").click()
    browser.wait_until("document.body.dataset.page === 'overview'")
    browser.open(f"#/event/{event.id}", base_url=tampered_server.url)
    verdict = browser.wait_for("#proof-verdict[data-result]")
    assert verdict.get_attribute("data-result") == "failed"
    assert "NOT verified" in verdict.text
    assert "does not lead to the signed root" in verdict.text
    colour = browser.js("return getComputedStyle(document.getElementById('proof-verdict')).color")
    assert colour == "rgb(180, 35, 24)", colour  # --bad
    # what the tampered server shows is the edit: an "allow" the ledger never signed
    assert "allow" in browser.find("#event-fields").text
    browser.screenshot("event-tampered")


def test_proof_verifier_matches_rfc9162(browser: Browser) -> None:
    """proof.js against the Python RFC 9162 implementation, for many (index, size) pairs."""
    rng = random.Random(9162)
    leaves = [rng.randbytes(rng.randint(0, 40)) for _ in range(70)]
    hashes = [merkle.leaf_hash(data) for data in leaves]
    cases = []
    for size in (1, 2, 3, 4, 5, 7, 8, 9, 16, 31, 33, 64, 70):
        for index in {0, size - 1, size // 2, rng.randrange(size)}:
            proof = merkle.inclusion_proof(index, size, hashes[:size])
            cases.append(
                {
                    "index": index,
                    "size": size,
                    "leaf": leaves[index].hex(),
                    "proof": [p.hex() for p in proof],
                    "root": merkle.root(hashes[:size]).hex(),
                }
            )
    browser.open("#/overview")
    result = browser.driver.execute_async_script(
        """
        const [cases, done] = arguments;
        const fromHex = (x) => Uint8Array.from(x.match(/../g) || [], (b) => parseInt(b, 16));
        import("/console/static/proof.js").then(async (p) => {
          const wrong = [];
          for (const c of cases) {
            const root = await p.rootFromInclusion(
              c.index, c.size, await p.leafHash(fromHex(c.leaf)), c.proof.map(fromHex));
            if (p.hex(root) !== c.root) wrong.push([c.index, c.size]);
            if (c.proof.length) {  // a flipped bit in the path must change the root
              const bad = c.proof.map(fromHex);
              bad[0][0] ^= 1;
              const other = await p.rootFromInclusion(
                c.index, c.size, await p.leafHash(fromHex(c.leaf)), bad);
              if (p.hex(other) === c.root) wrong.push(["flip", c.index, c.size]);
            }
          }
          done(JSON.stringify(wrong));
        }, (e) => done(String(e)));
        """,
        cases,
    )
    assert json.loads(result) == []


def test_findings_name_who_misbehaves_with_evidence(
    browser: Browser, demo: Demo, server: Served, tmp_path: Path
) -> None:
    browser.open("#/findings")
    cards = browser.find_all("#findings-list article")
    assert cards
    denials = browser.find('#findings-list article[data-kind="repeated_denials"]')
    assert "spiffe://cluster.local/ns/shop/sa/batch-report" in denials.text
    assert "payments" in denials.text and "shop/payments-only-orders" in denials.text
    evidence = denials.find_elements(By.CSS_SELECTOR, ".evidence a")
    assert evidence
    fits_laptop(browser)
    browser.screenshot("findings")
    # the evidence bundle the page downloads verifies offline with the log's key
    browser.driver.execute_cdp_cmd(
        "Browser.setDownloadBehavior", {"behavior": "allow", "downloadPath": str(tmp_path)}
    )
    denials.find_element(By.CSS_SELECTOR, "button[data-action=bundle]").click()
    browser.wait_until(
        "document.querySelector('#findings-list .badge.good, #findings-list .badge.bad')"
    )
    # Chromium may show the .zip before its bytes are in: wait for a whole one (a zip ends
    # with its end-of-central-directory record) and no partial download
    deadline = time.monotonic() + 60  # ends as soon as it holds: a bound for a loaded runner
    while time.monotonic() < deadline and not (
        [z for z in tmp_path.glob("*.zip") if b"PK\x05\x06" in z.read_bytes()[-1024:]]
        and not list(tmp_path.glob("*.crdownload"))
    ):
        time.sleep(0.1)
    (bundle,) = tmp_path.glob("*.zip")
    vkey = (demo.data / "keys" / "log.vkey").read_text().strip()
    report = verify_bundle(bundle.read_bytes(), Verifier.from_vkey(vkey))
    badge = denials.find_element(By.CSS_SELECTOR, ".badge.good").text
    assert f"{len(report.indices)} events with proofs saved" == badge
    assert len(report.indices) >= len(evidence)  # every event of it, not only those listed
    # and the search link selects the events behind the finding
    window = {
        k: str(denials.get_attribute(f"data-{k.replace('_', '-')}")) for k in ("start_ns", "end_ns")
    }
    denials.find_element(By.PARTIAL_LINK_TEXT, "Search these events").click()
    browser.wait_until("document.body.dataset.page === 'events'")
    browser.wait_settled()
    rows = browser.find_all("#results tbody tr")
    assert rows and all("deny" in r.text and "batch-report" in r.text for r in rows)
    # regression: the Since field showed raw nanoseconds (1795923020000000000); it shows the
    # time as RFC 3339, to the nanosecond, and the search is the one the nanoseconds made
    since = browser.find("#f-since").get_attribute("value")
    until = browser.find("#f-until").get_attribute("value")
    assert since == rfc3339(int(window["start_ns"])), since
    assert until == rfc3339(int(window["end_ns"]) + 1), until
    by_ns = api_events(
        server,
        dict(
            browser.js(
                "return Object.fromEntries(new URLSearchParams(location.hash.split('?')[1]))"
            ),
            since=window["start_ns"],
            until=str(int(window["end_ns"]) + 1),
        ),
    )
    assert [r.get_attribute("data-id") for r in rows] == [e["id"] for e in by_ns][: len(rows)]
    # an error burst blames the callee: its link selects the calls catalog failed
    browser.open("#/findings")
    burst = browser.find('#findings-list article[data-kind="error_burst"]')
    assert "catalog" in burst.text
    burst.find_element(By.PARTIAL_LINK_TEXT, "Search these events").click()
    browser.wait_until("document.body.dataset.page === 'events'")
    browser.wait_settled()
    rows = browser.find_all("#results tbody tr")
    assert rows and all("catalog" in r.text for r in rows)
    assert all("503" in r.text or "500" in r.text for r in rows)  # the failures, no success


def test_policy_replay_shows_what_would_change(browser: Browser) -> None:
    browser.open("#/replay")
    assert "shop.yaml" in browser.find("#policy-files").text
    browser.js(
        """const t = document.getElementById('policy-text');
        t.value = t.value.replace('sa/orders"]',
                                  'sa/orders", "cluster.local/ns/shop/sa/batch-report"]');
        t.dispatchEvent(new Event('input'));"""
    )
    browser.find("#replay-run").click()
    result = browser.wait_for("#replay-result")
    text = result.text
    assert "Calls the candidate would allow" in text
    assert "spiffe://cluster.local/ns/shop/sa/batch-report" in text
    assert "shop/payments" in text
    fits_laptop(browser)
    browser.screenshot("replay")
    # a least-privilege set generated from the recorded calls denies none of them
    browser.find("#generate").click()
    browser.wait_until("document.getElementById('generate-note').textContent.includes('calls')")
    browser.find('#policy-files button[aria-label="remove shop.yaml"]').click()
    files = [b.text for b in browser.find_all("#policy-files button[data-file]")]
    assert files == ["least-privilege.yaml"]
    assert "kind: AuthorizationPolicy" in str(browser.find("#policy-text").get_attribute("value"))
    browser.find("#replay-run").click()
    browser.wait_until(
        "document.querySelector('#replay-result') && "
        "!document.querySelector('#replay-result').textContent.includes('shop/payments-only')"
    )
    generated = browser.find("#replay-result").text
    assert "Calls the candidate would deny: none." in generated
    browser.screenshot("replay-generated")


def test_a_wrong_token_is_refused_then_login_works(browser: Browser, server: Served) -> None:
    browser.open("#/login")
    # Count the login forms drawn and the API requests still unanswered (the page is not
    # reloaded by logging in, so these hooks stay).
    browser.js(
        """
        window.loginForms = 0;
        new MutationObserver((records) => {
          for (const r of records) for (const n of r.addedNodes) {
            if (n.id === 'login' || (n.querySelector && n.querySelector('#login'))) loginForms++;
          }
        }).observe(document.body, {childList: true, subtree: true});
        window.pending = 0;
        const realFetch = window.fetch;
        window.fetch = (...args) => {
          pending++;
          return realFetch(...args).finally(() => pending--);
        };
        """
    )
    browser.find("#token").send_keys("amt_not-the-token")
    browser.find("#login button[type=submit]").click()
    browser.wait_until("document.querySelector('#login [role=alert]') && window.pending === 0")
    assert "refused" in browser.find("#login [role=alert]").text
    # regression: each of the overview's refused requests drew the form again, wiping what
    # the user had begun to type (and making the alert stale under a test)
    assert browser.js("return window.loginForms") == 1
    assert browser.js("return sessionStorage.getItem('auditmesh.token')") is None
    # the server's 401 is the one error this test expects in the browser console
    browser.console_messages()
    expected = [e for e in browser.logs if "401 (Unauthorized)" in str(e["message"])]
    assert expected
    browser.logs[:] = [e for e in browser.logs if e not in expected]
    browser.login(server.token)
    assert browser.js("return document.body.dataset.page") == "overview"


def test_an_event_altered_in_transit_fails_visibly(
    browser: Browser, denied: tuple[int, AuditEvent]
) -> None:
    """A proxy (here: a script wrapping fetch) that edits the API's answer is caught: the
    event shown is no longer the leaf the log holds."""
    _, event = denied
    edit = """
        const realFetch = window.fetch;
        window.fetch = async (...args) => {
          const response = await realFetch(...args);
          if (!String(args[0]).includes('/v1/events/')) return response;
          const body = await response.json();
          body.event.authz.decision = 'allow';
          return new Response(JSON.stringify(body), {status: 200,
            headers: {'content-type': 'application/json'}});
        };
    """
    added = browser.driver.execute_cdp_cmd(
        "Page.addScriptToEvaluateOnNewDocument", {"source": edit}
    )
    try:
        browser.open(f"#/event/{event.id}")
        verdict = browser.wait_for("#proof-verdict[data-result]")
    finally:
        browser.driver.execute_cdp_cmd(
            "Page.removeScriptToEvaluateOnNewDocument", {"identifier": added["identifier"]}
        )
    assert verdict.get_attribute("data-result") == "failed"
    assert "the leaf the log holds is not the event this page shows" in verdict.text
    assert "differ in authz.decision)" in verdict.text
    browser.screenshot("event-altered-in-transit")


def test_every_page_fits_1280_px(browser: Browser, denied: tuple[int, AuditEvent]) -> None:
    _, event = denied
    browser.driver.set_window_size(1280, 800)
    try:
        for route in (
            "#/overview",
            "#/graph",
            "#/events",
            f"#/event/{event.id}",
            f"#/trace/{event.trace.trace_id if event.trace else ''}",
            "#/findings",
            "#/replay",
        ):
            browser.open(route)
            assert browser.js("return document.body.dataset.state") == "ready", route
            overflow = browser.js("return document.documentElement.scrollWidth - innerWidth")
            assert overflow <= 0, f"{route} is {overflow} px too wide at 1280 px"
    finally:
        browser.driver.set_window_size(1366, 900)


def test_reported_events_are_told_apart_from_observed_ones(
    browser: Browser, server: Served, denied: tuple[int, AuditEvent]
) -> None:
    """An ingested access-log line (attested false, reporter ingest:…) is marked "reported"
    on the search page and the event page; a call our sidecar saw is marked "observed"."""
    base = generate(1, seed=41)[0]
    assert base.trace is not None
    reported = msgspec.structs.replace(base, reporter="ingest:envoy:access.log", attested=False)
    response = httpx.post(f"{server.url}/v1/events", content=encode_ndjson([reported]))
    assert response.status_code == 200, response.text
    browser.open(f"#/events?trace={base.trace.trace_id}")
    [row] = browser.find_all("#results tbody tr")
    badge = row.find_element(By.CSS_SELECTOR, ".provenance")
    assert badge.text == "reported"
    assert "ingest:envoy:access.log" in (badge.get_attribute("title") or "")
    browser.open(f"#/event/{reported.id}")
    assert browser.wait_for(".summary .provenance").text == "reported"
    assert "ingest:envoy:access.log, not seen by a sidecar" in browser.find("#event-reporter").text
    browser.screenshot("event-reported")
    _, observed = denied
    browser.open(f"#/event/{observed.id}")
    assert browser.wait_for(".summary .provenance").text == "observed"


def test_pinning_a_key_checks_it_first(browser: Browser, demo: Demo) -> None:
    """Regression: `garbage-key` was pinned ("Pinned, and it differs…") and its format error
    showed only later, on an event page. The Pin button checks the key and says why not."""
    browser.open("#/overview")
    field = browser.wait_for("#pin-key")
    status = browser.find("#pin-status")
    for wrong, reason in (
        ("garbage-key", "the verifier key is not name+keyid+key"),
        ("log+0badc0de+AWXl5TmBvs+MQ1CPTuH7Y6jZtE8KTeHZzkCxM9X9RkYA", "id does not match"),
    ):
        field.clear()
        field.send_keys(wrong)
        browser.find("#pin-button").click()
        browser.wait_until(
            f"document.getElementById('pin-status').textContent.includes({reason!r})"
        )
        assert status.text.startswith("Refused:") and "nothing is pinned" in status.text
        assert status.get_attribute("role") == "alert"
        assert browser.js("return localStorage.getItem('auditmesh.vkey')") is None
    browser.screenshot("overview-pin-refused", full=False)
    served = (demo.data / "keys" / "log.vkey").read_text().strip()
    field.clear()
    field.send_keys(served)
    browser.find("#pin-button").click()
    browser.wait_until("document.getElementById('pin-status').textContent.includes('same key')")
    assert browser.js("return localStorage.getItem('auditmesh.vkey')") == served
    assert status.get_attribute("role") is None
    # a wrong key keeps the pin there is, and says so
    field.clear()
    field.send_keys("garbage-key")
    browser.find("#pin-button").click()
    browser.wait_until(
        "document.getElementById('pin-status').textContent.includes('pinned before stays')"
    )
    assert browser.js("return localStorage.getItem('auditmesh.vkey')") == served
    # a bad key pinned before pins were checked is named as such on the overview
    browser.js("localStorage.setItem('auditmesh.vkey', 'garbage-key')")
    browser.open("#/overview")
    browser.wait_until(
        "document.getElementById('pin-status').textContent.includes('not a verifier key')"
    )
    browser.find("#unpin-button").click()
    browser.wait_until("document.getElementById('pin-status').textContent.startsWith('Not pinned')")
    assert browser.js("return localStorage.getItem('auditmesh.vkey')") is None


def test_each_findings_link_selects_its_events(
    browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """findings.js `searchFor` on findings of every kind (tests/analysis/test_finding_search.py:
    a TCP error burst, a latency regression blamed on a flooder, a service of two identities):
    the search its link opens selects every event of the finding. Regression: the link was
    guessed from the kind (`dest=RESPONSIBLE&direction=inbound`, `status=5xx`) and selected
    none or half of them."""
    from tests.analysis.test_finding_search import build, selected

    path = tmp_path_factory.mktemp("findings-links") / "data"
    findings = build(path)
    browser.open("#/overview")
    result = browser.driver.execute_async_script(
        """
        const [findings, done] = arguments;
        import("/console/static/pages/findings.js").then(
          (page) => done(JSON.stringify(findings.map(
            (f) => Object.fromEntries(page.searchFor(f))))),
          (e) => done(String(e)));
        """,
        [f.to_json() for f in findings],
    )
    searches = json.loads(result)
    assert len(searches) == len(findings) >= 6
    for finding, params in zip(findings, searches, strict=True):
        assert parse_time(params.pop("since"), 0) == finding.start_ns
        assert parse_time(params.pop("until"), 0) == finding.end_ns + 1
        found = selected(path, finding, params)
        assert found >= set(finding.evidence), (finding.kind, finding.destination, params)


def test_node_pills_never_read_the_same(browser: Browser) -> None:
    """graphdata.js `nodeLabels`: regression, every name longer than 22 characters was cut to
    its first 21, so all SPIFFE IDs of a trust domain read `spiffe://cluster.loca…` and two
    services of a long name in two namespaces read alike. Short names stay whole, a SPIFFE ID
    keeps its end, and names that would still read alike are shown whole."""
    browser.open("#/overview")
    names = [
        "orders",
        "spiffe://cluster.local/ns/shop/sa/web",
        "spiffe://cluster.local/ns/bank/sa/web",
        "spiffe://cluster.local/ns/bank/sa/ledger",
        "spiffe://other.example/ns/bank/sa/ledger",
        "spiffe://east.example/ns/bank/sa/payments-api",
        "spiffe://west.example/ns/bank/sa/payments-api",
        "recommendation-service.shop",
        "recommendation-service.bank",
        "a-very-long-service-name-alone.shop",
    ]
    result = browser.driver.execute_async_script(
        """
        const [names, done] = arguments;
        import("/console/static/pages/graphdata.js").then(
          (graph) => done(JSON.stringify([...graph.nodeLabels(names)])),
          (e) => done(String(e)));
        """,
        names,
    )
    labels = dict(json.loads(result))
    assert len(set(labels.values())) == len(names), labels
    assert labels["orders"] == "orders"
    web = "spiffe://cluster.local/ns/shop/sa/web"
    assert labels[web] == "…" + web[-21:]
    assert labels["spiffe://cluster.local/ns/bank/sa/ledger"] == "…cal/ns/bank/sa/ledger"
    for domain in ("east", "west"):  # two trust domains, one workload path: shown whole
        name = f"spiffe://{domain}.example/ns/bank/sa/payments-api"
        assert labels[name] == name
    assert labels["recommendation-service.shop"] == "recommendation-service.shop"
    assert labels["a-very-long-service-name-alone.shop"] == "a-very-long-service-n…"


def test_the_edge_query_and_time_helpers(browser: Browser) -> None:
    """graphdata.js `edgeQuery` and dom.js `fmtRfc3339` as functions: the names of each kind
    of graph node, and times that parse_time reads back to the same nanosecond."""
    browser.open("#/overview")
    times = [0, 1, -1, -500_000_000, 1_795_923_020_000_000_000, 1_795_923_020_459_057_024]
    times += [random.Random(3339).randrange(-(2**62), 2**63 - 1) for _ in range(50)]
    result = browser.driver.execute_async_script(
        """
        const [times, done] = arguments;
        const modules = ["/console/static/dom.js", "/console/static/pages/graphdata.js"];
        Promise.all(modules.map((m) => import(m)))
          .then(([dom, graph]) => {
            const edge = (sourceService, sourceNamespace, destService, destNamespace) =>
              graph.edgeQuery({ sourceService, sourceNamespace, destService, destNamespace },
                              1795923000000000000);
            done(JSON.stringify({
              times: times.map((t) => dom.fmtRfc3339(BigInt(t))),
              edges: [
                edge("unknown", null, "payments", "shop"),
                edge("orders", "shop", "payments", "shop"),
                edge("spiffe://cluster.local/ns/shop/sa/legacy", "shop", "payments", null),
                edge("unknown", "shop", "unknown", null),
                graph.edgeQuery({ sourceService: "a", destService: "b" }, null),
              ],
            }));
          }, (e) => done(String(e)));
        """,
        [str(t) for t in times],
    )
    answer = json.loads(result)
    for ns, text in zip(times, answer["times"], strict=True):
        assert text == rfc3339(ns) and parse_time(text, 0) == ns, (ns, text)
    since = "2026-11-29T03:30:00Z"
    assert answer["edges"] == [
        {"source": "unknown", "dest": "payments.shop", "calls": "once", "since": since},
        {"source": "orders.shop", "dest": "payments.shop", "calls": "once", "since": since},
        {
            "source": "spiffe://cluster.local/ns/shop/sa/legacy",
            "dest": "payments",
            "calls": "once",
            "since": since,
        },
        {"source": "unknown.shop", "dest": "unknown", "calls": "once", "since": since},
        {"source": "a", "dest": "b", "calls": "once"},
    ]


def test_a_party_with_no_name_reads_unknown_as_the_cli_and_the_graph_say(
    browser: Browser, server: Served
) -> None:
    """Regression: a party with no service, SPIFFE ID or address read `?` in the search
    results and on the event page (where a caller like that read `outside`), while the graph,
    `auditmesh query` and `auditmesh trace` name it `unknown`, the name the filters take."""
    base = generate(1, seed=43)[0]
    trace_id = "5e" * 16
    nameless = [
        msgspec.structs.replace(
            base,
            id=event_id_at(base.time_ns + n, bytes([0x5E + n]) * 10),
            reporter="ingest:envoy:access.log",
            attested=False,
            source=source,
            destination=Peer(namespace="shop"),
            trace=Trace(trace_id=trace_id, span_id=f"{n + 1:016x}"),
        )
        for n, source in enumerate((Peer(), None))
    ]
    response = httpx.post(f"{server.url}/v1/events", content=encode_ndjson(nameless))
    assert response.status_code == 200, response.text
    browser.open(f"#/events?trace={trace_id}&dest=unknown")
    calls = {
        row.get_attribute("data-id"): row.find_elements(By.CSS_SELECTOR, "td")[1].text
        for row in browser.find_all("#results tbody tr")
    }
    # no party at all (an event of no call, or a caller not recorded) is still a dash
    assert calls == {nameless[0].id: "unknown → unknown", nameless[1].id: "— → unknown"}, calls
    for event in nameless:
        browser.open(f"#/event/{event.id}")
        browser.wait_for(".summary .provenance")
        names = [strong.text for strong in browser.find_all(".summary strong")]
        assert names == ["unknown", "unknown"], names
        assert browser.find(".summary").text.startswith("unknown → unknown")
    fits_laptop(browser)
    browser.screenshot("event-unknown-parties")


ENVOY_OUTBOUND = {
    "method": "POST", "path": "/charges", "protocol": "HTTP/1.1", "response_code": 200,
    "response_flags": "-", "response_code_details": "via_upstream", "bytes_received": 11,
    "bytes_sent": 21, "duration": 3, "upstream_service_time": "2", "user_agent": "curl/8",
    "upstream_host": "10.244.1.9:8080", "upstream_local_address": "10.244.1.5:40000",
    "downstream_local_address": "10.96.33.4:8080", "downstream_remote_address": "10.244.1.5:6",
    "route_name": "default",
}  # fmt: skip


def test_an_edge_opens_exactly_the_calls_it_counts(
    browser: Browser, server: Served, tmp_path: Path
) -> None:
    """Regression: with an Envoy outbound line (its caller unknown) the graph showed `unknown →
    payments.shop  1`, and its "Open in event search" asked for dest=payments&direction=inbound:
    the demo's orders and batch-report calls, and not that one. (Runs last: the lines put a
    second namespace in the graph, so its names are qualified from here on.)"""
    now = datetime.now(UTC)
    lines = []
    for n, host in enumerate(("payments.shop", "reviews.bookinfo")):
        lines.append(
            {
                **ENVOY_OUTBOUND,
                "start_time": now.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z",
                "authority": f"{host}.svc.cluster.local:8080",
                "upstream_cluster": f"outbound|8080||{host}.svc.cluster.local",
                "request_id": f"5d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d{n}",
                "traceparent": f"00-{n + 1:032x}-{n + 1:016x}-01",
            }
        )
    log = tmp_path / "access.log"
    log.write_text("".join(json.dumps(line) + "\n" for line in lines))
    ingest = [sys.executable, "-m", "auditmesh", "ingest", "envoy", str(log), "--quiet"]
    result = subprocess.run(
        [*ingest, "--server", server.url], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    [reported] = api_events(server, {"trace": f"{1:032x}"})
    browser.open("#/graph")
    browser.wait_for("#edge-table tbody tr")
    rows = {
        tuple(cell.text for cell in row.find_elements(By.CSS_SELECTOR, "td")[:3]): row
        for row in browser.find_all("#edge-table tbody tr")
    }
    assert ("unknown", "payments.shop", "1") in rows, sorted(rows)
    rows[("unknown", "payments.shop", "1")].click()
    browser.wait_for("#edge-events tbody tr")
    link = str(browser.find("#edge-search").get_attribute("href"))
    query = dict(
        browser.js(
            "return Object.fromEntries(new URLSearchParams(arguments[0]))", link.split("?")[1]
        )
    )
    assert {k: query[k] for k in ("source", "dest", "calls")} == {
        "source": "unknown",
        "dest": "payments.shop",
        "calls": "once",
    }
    assert parse_time(query["since"], 0) % 60_000_000_000 == 0  # the graph's whole minutes
    [listed] = browser.find_all("#edge-events tbody tr")
    shown = f"{reported['id'][:8]}…{reported['id'][-6:]}"  # dom.js shortEventId
    assert shown in listed.text and "outbound" in listed.text
    browser.screenshot("graph-edge-unknown-caller")
    browser.find("#edge-search").click()
    browser.wait_until("document.body.dataset.page === 'events'")
    browser.wait_settled()
    assert [r.get_attribute("data-id") for r in browser.find_all("#results tbody tr")] == [
        reported["id"]
    ]
    assert browser.find("#f-calls").get_attribute("value") == "once"
    assert browser.find("#f-since").get_attribute("value") == query["since"]
    fits_laptop(browser)
    browser.screenshot("search-edge-unknown-caller")
    # every edge: its link finds as many events as the edge counts calls
    browser.open("#/graph")
    browser.wait_for("#edge-table tbody tr")
    edges = browser.find_all("#edge-table tbody tr")
    assert len(edges) >= 9
    for position in range(len(edges)):
        row = browser.find_all("#edge-table tbody tr")[position]
        source, dest, calls = (c.text for c in row.find_elements(By.CSS_SELECTOR, "td")[:3])
        row.click()
        browser.wait_until(
            "(document.querySelector('#edge-detail h2') || {}).textContent === "
            f"{source + ' → ' + dest!r} && (document.querySelector('#edge-events') || "
            "document.getElementById('edge-detail').textContent.includes('No events'))"
        )
        href = str(browser.find("#edge-search").get_attribute("href"))
        params = browser.js(
            "return Object.fromEntries(new URLSearchParams(arguments[0]))", href.split("?")[1]
        )
        assert len(api_events(server, params)) == int(calls), (source, dest, params)
