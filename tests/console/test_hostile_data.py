"""The console in headless Chromium over events an attacker shaped: names and paths as long as
the event model takes them, and names with characters that hide themselves or reorder the
text around them. Events are attacker-influenced (a reported access log names any service),
so none of them may push the status and decision off the page or make a call read as another.

A server of its own on a fresh ledger, filled with a few events over POST /v1/events: no demo.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys

from auditmesh.events import HTTP, AuditEvent, Authz, Peer, Trace, encode_ndjson, event_id_at
from auditmesh.serverproc import ServerProcess
from tests.console.browser import Browser
from tests.console.conftest import SERVER_FLAGS, Served, logged_in

pytestmark = [pytest.mark.integration]

NOW_NS = (time.time_ns() // 1_000_000_000 - 60) * 1_000_000_000  # a minute ago, whole seconds
LONG_NAME = "s" * 253  # the longest service name an event takes
LONG_PATH = "/" + "a" * 4000  # near the longest path
LONG_TRACE = "ab" * 16
BIDI_NAME = "tropersbo\u202e"  # a right-to-left override: what follows reads backwards
BIDI_TRACE = "cd" * 16


def _event(number: int, source: str, path: str, status: int, trace_id: str) -> AuditEvent:
    return AuditEvent(
        id=event_id_at(NOW_NS + number, bytes([number]) * 10),
        time_ns=NOW_NS + number * 1_000_000,
        reporter="ingest:envoy:access.log",
        kind="http",
        outcome="failure" if status >= 500 else "success",
        direction="inbound",
        source=Peer(service=source, namespace="shop"),
        destination=Peer(service="payments", namespace="shop"),
        http=HTTP(method="POST", path=path, status=status),
        authz=Authz(decision="deny" if status == 403 else "allow", policy="shop/p"),
        trace=Trace(trace_id=trace_id, span_id=f"{number + 1:016x}"),
    )


EVENTS = [
    _event(1, LONG_NAME, LONG_PATH, 503, LONG_TRACE),
    _event(2, "orders", LONG_PATH + "/x", 403, LONG_TRACE),
    _event(3, BIDI_NAME, "/charges\u202e", 200, BIDI_TRACE),
]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, chromium: None) -> Iterator[Served]:
    data: Path = tmp_path_factory.mktemp("hostile") / "data"
    with ServerProcess(data, extra=SERVER_FLAGS) as proc:
        stored = httpx.post(f"{proc.url}/v1/events", content=encode_ndjson(EVENTS))
        assert stored.status_code == 200, stored.text
        yield Served(proc.url, (data / "keys" / "api.token").read_text().strip())


@pytest.fixture(scope="module")
def page(served: Served) -> Iterator[Browser]:
    with logged_in(served) as opened:
        yield opened


def on_screen(page: Browser, css: str) -> None:
    """No horizontal scrolling, and every element `css` selects lies inside the window."""
    overflow = page.js("return document.documentElement.scrollWidth - innerWidth")
    assert overflow <= 0, f"the page is {overflow} px wider than the window"
    rights = page.js(
        "return [...document.querySelectorAll(arguments[0])]"
        ".map((e) => e.getBoundingClientRect().right)",
        css,
    )
    assert rights and max(rights) <= page.js("return innerWidth"), (css, rights)


def test_long_names_and_paths_keep_the_status_on_screen(page: Browser) -> None:
    """Regression: a 253-character caller or a 4 KiB path without a space widened the search
    table, the trace, the event page and the graph's edge table thousands of pixels past the
    window, with the status, the decision and the links to the events out of sight."""
    page.open(f"#/events?trace={LONG_TRACE}")
    assert len(page.find_all("#results tbody tr")) == 2
    on_screen(page, "#results tbody .badge, #results tbody a")
    page.screenshot("hostile-search")
    page.open(f"#/trace/{LONG_TRACE}")
    on_screen(page, "#trace-tree tbody .badge, #trace-tree tbody a")
    page.screenshot("hostile-trace")
    page.open(f"#/event/{EVENTS[0].id}")
    page.wait_for("#proof-verdict[data-result]")
    on_screen(page, ".summary .badge, #proof-verdict")
    page.screenshot("hostile-event")
    page.open("#/graph")
    page.wait_for("#edge-table tbody tr")
    on_screen(page, "#edge-table tbody td")


def test_characters_that_hide_themselves_are_shown(page: Browser) -> None:
    """Regression: a caller named `tropersbo` + U+202E (right-to-left override) made the
    search's `tropersbo → payments` read `tropersbostnemyap →`, and the trace's likewise: event
    data could reorder what the page says about who called whom. Such characters are written
    out, as [U+202E], in the text and in the titles."""
    page.open(f"#/events?trace={BIDI_TRACE}")
    [row] = page.find_all("#results tbody tr")
    call = row.find_elements(By.CSS_SELECTOR, "td")[1].text
    assert call == "tropersbo[U+202E] → payments", call
    assert "/charges[U+202E]" in row.text
    page.open(f"#/trace/{BIDI_TRACE}")
    assert "tropersbo[U+202E] → payments" in page.find("#trace-tree").text
    page.open(f"#/event/{EVENTS[2].id}")
    page.wait_for("#proof-verdict[data-result]")
    assert page.find(".summary").text.startswith("tropersbo[U+202E] → payments")
    assert page.find(".summary .provenance").get_attribute("title") == (
        "reported by ingest:envoy:access.log, not observed by an auditmesh sidecar"
    )
    hidden = page.js("return /[\\u202a-\\u202e\\u2066-\\u2069]/.test(document.body.innerText)")
    assert hidden is False
    # the proof is of the event as stored, with its character: the page only shows it
    assert page.find("#proof-verdict").get_attribute("data-result") == "verified"


def test_short_ids_read_apart_and_show_the_whole_id(page: Browser) -> None:
    """Regression: findings and replay listed event ids by their first 13 characters, which in
    a UUIDv7 are its millisecond: every event of one millisecond read the same, and no link
    said which event it was before it was opened. A short id now ends with the id's last
    digits, and each link's title is the whole id (as the search's "open" and trace links)."""
    same_ms = [event_id_at(NOW_NS, bytes([n]) * 10) for n in (1, 2)]
    assert same_ms[0][:13] == same_ms[1][:13]
    page.open("#/overview")
    result = page.driver.execute_async_script(
        """
        const [ids, done] = arguments;
        import("/console/static/dom.js")
          .then((dom) => done(JSON.stringify(ids.map((id) => {
            const link = dom.eventLink(id, dom.shortEventId(id));
            return [link.textContent, link.title];
          }))))
          .catch((e) => done(JSON.stringify(String(e))));
        """,
        same_ms,
    )
    shown = json.loads(result)
    assert isinstance(shown, list), shown
    assert shown[0][0] != shown[1][0], shown
    assert [title for _, title in shown] == same_ms
    page.open(f"#/events?trace={LONG_TRACE}")
    first = page.find("#results tbody tr")
    event_id = first.get_attribute("data-id")
    links = first.find_elements(By.CSS_SELECTOR, "a")
    assert [link.get_attribute("title") for link in links] == [LONG_TRACE, event_id]


def test_the_graph_edges_and_key_field_work_from_the_keyboard(page: Browser) -> None:
    """Regression: the graph's edge table answered clicks only (rows not focusable), and the
    overview's key field had no label but its placeholder."""
    page.open("#/graph")
    page.wait_for("#edge-table tbody tr")
    rows = page.find_all("#edge-table tbody tr")
    assert all(row.get_attribute("tabindex") == "0" for row in rows)
    target = next(r for r in rows if r.find_elements(By.CSS_SELECTOR, "td")[0].text == "orders")
    page.js("arguments[0].focus()", target)
    assert page.js("return document.activeElement") == target
    target.send_keys(Keys.ENTER)
    page.wait_for("#edge-events tbody tr")
    assert page.find("#edge-detail h2").text == "orders → payments"
    page.open("#/overview")
    label = page.find("label[for=pin-key]")
    assert label.text and page.find("#pin-key").get_attribute("placeholder")


def test_an_edge_that_needs_a_look_opens_its_events(page: Browser, served: Served) -> None:
    """Regression: each edge of the overview's "Edges that need a look" linked to the graph
    page as a whole; it opens the search for that edge's calls."""
    page.open("#/overview?since=24h")
    page.wait_for("#trouble-edges tbody tr")
    rows = page.find_all("#trouble-edges tbody tr")
    link = next(r.find_element(By.CSS_SELECTOR, "a") for r in rows if r.text.startswith("orders →"))
    link.click()
    page.wait_until("document.body.dataset.page === 'events'")
    page.wait_settled()
    shown = [r.get_attribute("data-id") for r in page.find_all("#results tbody tr")]
    assert shown == [EVENTS[1].id]
