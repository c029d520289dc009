"""`auditmesh ingest` against a real server: rejects, summary, exactly-once, --follow."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import cast

import httpx
import msgspec
import pytest

import auditmesh.cli.ingest as cli_ingest
from auditmesh.cli.ingest import Pipeline, Rejects, Sender, Stored
from auditmesh.cli.main import main
from auditmesh.events import AuditEvent, encode_ndjson, to_json_dict
from auditmesh.ingest import envoy, linkerd
from auditmesh.ingest.follow import Line, Position, Tail, load_position
from auditmesh.serverproc import ServerProcess, free_port
from auditmesh.store.base import event_key
from auditmesh.store.sqlite import SQLiteStore

pytestmark = pytest.mark.integration

DATA = Path(__file__).parent / "data"
TEXT_LINES = (DATA / "istio-text.log").read_text().splitlines()
BAD = [
    (2, "garbage that is no access log", "field 1 (%START_TIME%): the line does not start"),
    (
        6,
        TEXT_LINES[0].replace('" 200 -', '" abc -'),
        "field 5 (%RESPONSE_CODE%): 'abc' is not a status code",
    ),
    (11, TEXT_LINES[1].rsplit(" ", 3)[0], "the line ends early"),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    data = tmp_path_factory.mktemp("ingest") / "data"
    extra = ["--checkpoint-interval", "0.2", "--mesh-listen", "off", "--otlp-grpc", "off"]
    with ServerProcess(data, extra=extra) as running:
        yield running


def checkpoint_size(server: ServerProcess) -> int:
    response = httpx.get(server.url + "/log/checkpoint")
    return int(response.text.split("\n")[1]) if response.status_code == 200 else 0


def ledger_size(server: ServerProcess) -> int:
    """The exact size (a checkpoint may still lag behind the last commit by a second)."""
    store = SQLiteStore(server.data_dir, create=False)
    try:
        return store.size()
    finally:
        store.close()


# Returns as soon as a checkpoint covers the log: the bound only matters when none comes,
# and is generous for a loaded 2-vCPU CI runner.
CHECKPOINT_WAIT_S = 60.0


def wait_for_checkpoint(server: ServerProcess, size: int) -> None:
    deadline = time.monotonic() + CHECKPOINT_WAIT_S
    while checkpoint_size(server) < size:
        assert time.monotonic() < deadline, "no checkpoint covers the log"
        time.sleep(0.05)


def stored(server: ServerProcess, event_id: str) -> dict[str, object] | None:
    """Read the ledger file directly: an API read would itself be audited and grow the log."""
    store = SQLiteStore(server.data_dir, create=False)
    try:
        found = store.event_by_id(event_key(event_id))
    finally:
        store.close()
    if found is None:
        return None
    event: dict[str, object] = msgspec.json.decode(found.data)
    return event


def envoy_ids(lines: list[str], source: str) -> list[str]:
    return [envoy.to_event(envoy.parse_line(line), f"ingest:envoy:{source}").id for line in lines]


def summary_numbers(out: str) -> dict[str, int]:
    """taken / refused / already present / lines / log size from the summary line."""
    line = out.strip().splitlines()[-1]
    words = line.replace(",", "").replace(";", "").split()

    def after(*phrase: str) -> int:
        for i in range(len(words) - len(phrase)):
            if tuple(words[i : i + len(phrase)]) == phrase:
                return int(words[i + len(phrase)])
        raise AssertionError(f"{phrase} not in {line!r}")

    lines_at = words.index("lines")
    return {
        "taken": after("taken"),
        "refused": after("refused"),
        "present": after("already", "present"),
        "lines": int(words[lines_at - 1]),
        "size": after("log", "size"),
    }


def test_file_with_bad_lines_then_again(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "mixed.log"
    lines = list(TEXT_LINES)
    for number, text, _ in BAD:
        lines.insert(number - 1, text)
    lines.insert(8, "")  # a blank line is skipped, not refused
    numbers = {text: n for n, text in enumerate(lines, start=1)}
    log.write_text("\n".join(lines) + "\n")
    before = ledger_size(server)

    code = main(["ingest", "envoy", str(log), "--server", server.url, "--batch", "5"])
    out, err = capsys.readouterr()
    assert code == 1
    counts = summary_numbers(out)
    assert counts == {
        "taken": 12,
        "refused": 3,
        "present": 0,
        "lines": len(lines),
        "size": before + 13,  # and the report of the refused lines (a system event)
    }, out
    assert f"refused lines in {log}.rejects" in out
    rejects = [
        msgspec.json.decode(line)
        for line in (tmp_path / "mixed.log.rejects").read_bytes().split(b"\n")
        if line
    ]
    assert [(r["line"], r["text"]) for r in rejects] == [(numbers[t], t) for _, t, _ in BAD]
    for record, (_, text, reason) in zip(rejects, BAD, strict=True):
        assert reason in record["reason"]
        assert f"{log}:{numbers[text]}: {record['reason']}" in err
    # Every good line is in the ledger, exactly as the adapter maps it.
    for text, event_id in zip(TEXT_LINES, envoy_ids(TEXT_LINES, "mixed.log"), strict=True):
        expected = to_json_dict(envoy.to_event(envoy.parse_line(text), "ingest:envoy:mixed.log"))
        assert stored(server, event_id) == expected

    # Again, at once (before a checkpoint covers them): nothing new in the ledger, the same
    # lines refused, the rejects file rewritten.
    code = main(["ingest", "envoy", str(log), "--server", server.url, "--batch", "5"])
    out, _ = capsys.readouterr()
    assert code == 1
    assert summary_numbers(out) | {"lines": 0} == {
        "taken": 0,
        "refused": 3,
        "present": 12,
        "lines": 0,
        "size": before + 14,  # each run reports what it refused
    }, out
    assert len((tmp_path / "mixed.log.rejects").read_bytes().splitlines()) == 3


def test_url_names_the_server_as_in_every_other_command_and_server_still_does(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "by-url.log"
    log.write_text("\n".join(TEXT_LINES[:2]) + "\n")
    assert main(["ingest", "envoy", str(log), "--url", server.url, "--quiet"]) == 0
    assert summary_numbers(capsys.readouterr().out)["taken"] == 2
    for event_id in envoy_ids(TEXT_LINES[:2], "by-url.log"):
        assert stored(server, event_id) is not None
    # --server, its older spelling, names the same server
    assert main(["ingest", "envoy", str(log), "--server", server.url, "--quiet"]) == 0
    counts = summary_numbers(capsys.readouterr().out)
    assert (counts["taken"], counts["present"]) == (0, 2)


def test_lines_that_differ_in_a_byte_that_is_not_utf8_stay_two_events(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = TEXT_LINES[0].replace("2026-03-02", "2026-05-01").encode()
    request_id = b"0a7c3bf2-6e5e-9d2b-a3f3-2d8c4f1a3b11"
    assert request_id in base
    log = tmp_path / "latin1.log"
    latin1 = (b"\xe9", b"\xfc")
    log.write_bytes(b"".join(base.replace(request_id, b"req-" + c) + b"\n" for c in latin1))
    assert main(["ingest", "envoy", str(log), "--server", server.url]) == 0
    counts = summary_numbers(capsys.readouterr().out)
    assert (counts["taken"], counts["present"]) == (2, 0)
    for escaped in ("req-\\xe9", "req-\\xfc"):
        text = base.decode().replace(request_id.decode(), escaped)
        event_id = envoy.to_event(envoy.parse_line(text), "ingest:envoy:latin1.log").id
        event = stored(server, event_id)
        assert event is not None
        assert cast(dict[str, object], event["http"])["request_id"] == escaped


def test_json_and_linkerd_from_stdin(
    server: ServerProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    code = main(["ingest", "envoy", str(DATA / "istio-json.log"), "--server", server.url])
    assert code == 0 and summary_numbers(capsys.readouterr().out)["taken"] == 4

    text = (DATA / "linkerd.log").read_text()
    read_end, write_end = os.pipe()
    os.write(write_end, text.encode())
    os.close(write_end)
    with open(read_end, "rb") as pipe:
        monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(pipe))
        code = main(["ingest", "linkerd", "-", "--server", server.url, "--source", "webapp-7f9"])
    out, _ = capsys.readouterr()
    assert code == 0 and summary_numbers(out)["taken"] == 7, out
    assert not (tmp_path / "stdin.rejects").exists()
    first = linkerd.to_event(linkerd.parse_line(text.splitlines()[0]), "ingest:linkerd:webapp-7f9")
    assert stored(server, first.id) == to_json_dict(first)


def test_linkerd_host_svc_ns_is_stored_as_the_destination_service(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: Linkerd's `"host":"emoji-svc.emojivoto:8080"` reached the ledger with no
    destination service; it is the service emoji-svc of namespace emojivoto, the namespace of
    the caller's identity (envoy.service_of)."""
    record = json.loads((DATA / "linkerd.log").read_text().splitlines()[0])
    record |= {
        "client.id": "web.emojivoto.serviceaccount.identity.linkerd.cluster.local",
        "host": "emoji-svc.emojivoto:8080",
        "uri": "http://emoji-svc.emojivoto:8080/emojivoto.v1.EmojiService/ListAll",
    }
    log = tmp_path / "emojivoto.log"
    log.write_text(json.dumps(record) + "\n")
    assert main(["ingest", "linkerd", str(log), "--url", server.url]) == 0
    assert summary_numbers(capsys.readouterr().out)["taken"] == 1
    event = linkerd.to_event(linkerd.parse_line(json.dumps(record)), "ingest:linkerd:emojivoto.log")
    found = stored(server, event.id)
    assert found is not None and found["destination"] == {
        "service": "emoji-svc",
        "namespace": "emojivoto",
        "port": 8080,
        "host": "emoji-svc.emojivoto:8080",
    }, found


def test_linkerd_host_port_is_stored_as_the_destination_port(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Regression: `auditmesh ingest linkerd FILE` stored `"host":"emoji-svc.emojivoto:8080"`
    with no `destination.port`, and `10.42.0.69:7000` with its port: a host name's port, the
    one the client asked for, is the destination's port too."""
    template = json.loads((DATA / "linkerd.log").read_text().splitlines()[0])
    hosts = {"emoji-svc.emojivoto:8080": 8080, "10.42.0.69:7000": 7000, "webapp": None}
    records = [
        template | {"host": host, "timestamp": f"2022-08-23T20:33:4{n}.5Z"}
        for n, host in enumerate(hosts)
    ]
    log = tmp_path / "ports.log"
    log.write_text("".join(json.dumps(record) + "\n" for record in records))
    command = [sys.executable, "-m", "auditmesh", "ingest", "linkerd", str(log), "--quiet"]
    result = subprocess.run(
        [*command, "--url", server.url], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    for record, port in zip(records, hosts.values(), strict=True):
        event = linkerd.to_event(linkerd.parse_line(json.dumps(record)), "ingest:linkerd:ports.log")
        found = stored(server, event.id)
        assert found is not None, record["host"]
        destination = cast(dict[str, object], found["destination"])
        assert destination.get("port") == port, destination
        assert destination["host"] == record["host"]


def follow(log: Path, server: ServerProcess, *, idle: str, more: Sequence[str] = ()) -> list[str]:
    """`ingest envoy LOG --follow` that stops after `idle` seconds without a new line."""
    return [
        "ingest", "envoy", str(log), "--server", server.url, "--follow",
        "--exit-when-idle", idle, "--poll-interval", "0.05", *more,
    ]  # fmt: skip


def _follow(argv: list[str], results: list[int]) -> threading.Thread:
    thread = threading.Thread(target=lambda: results.append(main(argv)))
    thread.start()
    return thread


def after_reads(monkeypatch: pytest.MonkeyPatch, *steps: Callable[[], None]) -> None:
    """Run `steps[i]` inside the follower just after its i-th read that returns lines, so
    each change to the file comes while the follower has just had a line and cannot be
    idle, however slow the machine. (Sleeps in the test raced --exit-when-idle: under load
    the follower stopped before the test wrote.)"""
    pending = deque(steps)

    class Stepped(Tail):
        def read(self, max_lines: int) -> list[Line]:
            lines = super().read(max_lines)
            if lines and pending:
                pending.popleft()()
            return lines

    monkeypatch.setattr(cli_ingest, "Tail", Stepped)


def rotate(log: Path, first_line: str) -> None:
    """Rotation: the file renamed beside the path, a new file created under the path."""
    os.rename(log, log.with_name(log.name + ".1"))
    log.write_text(first_line + "\n")


def append(log: Path, text: str) -> None:
    with open(log, "a") as writer:
        writer.write(text)


def test_follow_resumes_after_restart_and_rotation(
    server: ServerProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    log = tmp_path / "access.log"
    argv = follow(log, server, idle="0.8", more=["--rotate-wait", "0.2"])
    lines = [line.replace("2026-03-02", "2026-04-01") for line in TEXT_LINES]
    log.write_text("\n".join(lines[:4]) + "\n")
    before = ledger_size(server)
    after_reads(
        monkeypatch,
        lambda: append(log, lines[4] + "\n" + lines[5][:40]),  # half a line: waits for its end
        lambda: append(log, lines[5][40:] + "\n"),
        lambda: rotate(log, lines[6]),
    )
    results: list[int] = []
    thread = _follow(argv, results)
    thread.join(30)
    assert results == [0]
    out, err = capsys.readouterr()
    assert summary_numbers(out)["taken"] == 7, out
    assert "was rotated" in err
    position = load_position(tmp_path / "access.log.offset")
    assert position is not None and position.inode == os.stat(log).st_ino
    assert position.offset == log.stat().st_size and position.line == 1

    # Restart: only what was appended since is read and sent.
    append(log, "\n".join(lines[7:]) + "\n")
    thread = _follow(argv, results)
    thread.join(30)
    out, _ = capsys.readouterr()
    counts = summary_numbers(out)
    assert results == [0, 0] and counts["taken"] == len(lines) - 7 and counts["lines"] == 5
    assert counts["size"] == before + len(lines)
    for event_id in envoy_ids(lines, "access.log"):
        assert stored(server, event_id) is not None


def test_follow_does_not_stop_idle_while_a_rotated_in_file_waits(
    server: ServerProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # --exit-when-idle shorter than --rotate-wait: the new file's line is still read
    log = tmp_path / "access.log"
    argv = follow(log, server, idle="0.3", more=["--rotate-wait", "1"])
    lines = [line.replace("2026-03-02", "2026-06-01") for line in TEXT_LINES]
    log.write_text(lines[0] + "\n")
    after_reads(monkeypatch, lambda: rotate(log, lines[1]))  # once the first line is read
    results: list[int] = []
    thread = _follow(argv, results)
    thread.join(30)
    assert results == [0]
    out, err = capsys.readouterr()
    assert summary_numbers(out)["taken"] == 2, out
    assert "was rotated" in err


def test_follow_reads_a_file_rewritten_in_place_while_stopped_from_its_start(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # copytruncate while the follower was stopped, and the writer went on past the stored
    # offset: the restart must not resume in the middle of the new lines.
    log = tmp_path / "access.log"
    argv = follow(log, server, idle="0.3")
    old = [line.replace("2026-03-02", "2026-07-01") for line in TEXT_LINES[:5]]
    new = [line.replace("2026-03-02", "2026-07-02") for line in reversed(TEXT_LINES)]
    log.write_text("\n".join(old) + "\n")
    assert main(argv) == 0
    assert summary_numbers(capsys.readouterr().out)["taken"] == 5
    inode = log.stat().st_ino
    with open(log, "r+") as writer:
        writer.truncate(0)
        writer.write("\n".join(new) + "\n")
    assert log.stat().st_ino == inode and log.stat().st_size > len("\n".join(old)) + 1
    assert main(argv) == 0
    out, err = capsys.readouterr()
    counts = summary_numbers(out)
    assert counts["lines"] == counts["taken"] == len(new) and counts["refused"] == 0, out
    assert "was rewritten since the stored position" in err
    position = load_position(tmp_path / "access.log.offset")
    assert position is not None and position.line == len(new) and len(position.before) == 64
    for event_id in envoy_ids(new, "access.log"):
        assert stored(server, event_id) is not None


def test_an_unfinished_last_line_is_told_in_the_summary_and_read_once_ended(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "access.log"
    argv = follow(log, server, idle="0.3")
    lines = [line.replace("2026-03-02", "2026-05-01") for line in TEXT_LINES[:3]]
    log.write_text(lines[0] + "\n" + lines[1] + "\n" + lines[2][:50])  # no newline at the end
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert summary_numbers(out)["taken"] == 2
    assert "the last 50 bytes have no newline yet: the line is read once it ends" in out
    with open(log, "a") as writer:
        writer.write(lines[2][50:] + "\n")
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert summary_numbers(out)["taken"] == 1 and "no newline" not in out


def test_follow_killed_mid_stream_loses_nothing(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """SIGKILL while lines are arriving, restart: every line is in the ledger once."""
    log = tmp_path / "busy.log"
    log.touch()
    base = TEXT_LINES[0]
    lines = [
        base.replace("0a7c3bf2-6e5e-9d2b-a3f3-2d8c4f1a3b11", f"req-{i:05d}") for i in range(400)
    ]
    command = [sys.executable, "-m", "auditmesh", "ingest", "envoy", str(log), "--follow"]
    command += ["--server", server.url, "--poll-interval", "0.02", "--batch", "20"]
    before = ledger_size(server)

    def write() -> None:  # 400 lines over about a second
        with open(log, "a") as writer:
            for start in range(0, 400, 10):
                writer.write("\n".join(lines[start : start + 10]) + "\n")
                writer.flush()
                time.sleep(0.025)

    writer = threading.Thread(target=write)
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    writer.start()
    try:
        deadline = time.monotonic() + 20
        while load_position(tmp_path / "busy.log.offset") is None:
            assert time.monotonic() < deadline, "the follower never stored a position"
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(10)
        writer.join(30)
    assert main([*command[3:], "--exit-when-idle", "0.3"]) == 0  # the restart, in process
    counts = summary_numbers(capsys.readouterr().out)
    assert counts["lines"] < 400  # resumed at the stored position, not from the start
    wait_for_checkpoint(server, before + 400)
    assert checkpoint_size(server) == before + 400
    ids = envoy_ids(lines, "busy.log")
    for event_id in ids[::40] + ids[-1:]:
        assert stored(server, event_id) is not None


def test_a_line_whose_event_id_the_log_holds_with_other_content_is_refused_alone(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # e.g. the same line mapped differently by an older auditmesh: the log keeps its event
    lines = [line.replace("2026-03-02", "2026-08-01") for line in TEXT_LINES[:3]]
    log = tmp_path / "access.log"
    log.write_text("\n".join(lines) + "\n")
    earlier = envoy.to_event(envoy.parse_line(lines[1]), "ingest:envoy:access.log")
    other = msgspec.structs.replace(earlier, labels={**earlier.labels, "mapped.by": "v0"})
    assert httpx.post(server.url + "/v1/events", content=encode_ndjson([other])).status_code == 200
    code = main(["ingest", "envoy", str(log), "--server", server.url])
    out = capsys.readouterr().out
    counts = summary_numbers(out)
    assert (counts["taken"], counts["refused"]) == (2, 1), out
    (rejected,) = [
        json.loads(x) for x in (tmp_path / "access.log.rejects").read_text().splitlines()
    ]
    assert rejected["line"] == 2 and "with other content" in rejected["reason"]
    assert code == 1  # lines were refused


def rejected_lines(path: Path) -> list[int]:
    return [json.loads(record)["line"] for record in path.read_text().splitlines()]


def test_rejects_are_in_line_order_when_the_server_refuses_a_line_of_the_batch_in_flight(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: a line the server refused was written when its batch's answer came, after
    the unparsable lines read while the batch was on its way (lines 3, 2, 6)."""
    lines = [line.replace("2026-03-02", "2026-09-01") for line in TEXT_LINES[:4]]
    earlier = envoy.to_event(envoy.parse_line(lines[1]), "ingest:envoy:ordered.log")
    other = msgspec.structs.replace(earlier, labels={**earlier.labels, "mapped.by": "v0"})
    assert httpx.post(server.url + "/v1/events", content=encode_ndjson([other])).status_code == 200
    log = tmp_path / "ordered.log"
    log.write_text("\n".join([*lines[:2], "garbage 3", *lines[2:], "garbage 6"]) + "\n")
    code = main(["ingest", "envoy", str(log), "--server", server.url, "--batch", "2"])
    out, err = capsys.readouterr()
    assert code == 1 and summary_numbers(out)["refused"] == 3, out
    assert rejected_lines(tmp_path / "ordered.log.rejects") == [2, 3, 6]
    said = [line.split(": ")[0] for line in err.splitlines() if line.startswith(str(log))]
    assert said == [f"{log}:2", f"{log}:3", f"{log}:6"]


class HoldingProxy(ThreadingHTTPServer):
    """An HTTP proxy in front of a server that never answers its `hold`-th POST /v1/events
    (`holding` is set when it comes): a batch the server has not answered yet."""

    def __init__(self, target: str, hold: int) -> None:
        self.target = target
        self.hold = hold
        self.posts = 0
        self.holding = threading.Event()
        self.release = threading.Event()
        super().__init__(("127.0.0.1", 0), _Forward)
        threading.Thread(target=self.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"

    def stop(self) -> None:
        self.release.set()
        self.shutdown()
        self.server_close()


class _Forward(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self._forward(b"")

    def do_POST(self) -> None:
        proxy = cast(HoldingProxy, self.server)
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        if self.path == "/v1/events":
            proxy.posts += 1  # one client, one request at a time
            if proxy.posts == proxy.hold:
                proxy.holding.set()
                proxy.release.wait(30)
                self.close_connection = True
                return
        self._forward(body)

    def _forward(self, body: bytes) -> None:
        proxy = cast(HoldingProxy, self.server)
        headers = {"content-type": self.headers.get("content-type", "application/x-ndjson")}
        answer = httpx.request(
            self.command, proxy.target + self.path, content=body, headers=headers
        )
        self.send_response(answer.status_code)
        self.send_header("content-type", answer.headers.get("content-type", "text/plain"))
        self.send_header("content-length", str(len(answer.content)))
        self.end_headers()
        self.wfile.write(answer.content)

    def log_message(self, format: str, *args: object) -> None:
        pass


def test_rejects_are_written_once_across_a_kill_and_a_resume(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Regression: an unparsable line read while the batch before it was on its way went
    to the rejects file with that batch's position, before its own batch was answered; killed
    then (SIGKILL), the resumed run read it again and wrote it a second time."""
    good = [line.replace("2026-03-02", "2026-09-02") for line in TEXT_LINES[:7]]
    log = tmp_path / "killed.log"
    log.write_text("\n".join([*good[:2], "garbage 3", *good[2:6], "garbage 8", good[6]]) + "\n")
    proxy = HoldingProxy(server.url, hold=2)  # batches of 2: lines 1-2 answered, 3-5 held
    command = [sys.executable, "-m", "auditmesh", "ingest", "envoy", str(log), "--follow"]
    command += ["--server", proxy.url, "--poll-interval", "0.02", "--batch", "2"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert proxy.holding.wait(20), "the second batch never came"
        position = load_position(tmp_path / "killed.log.offset")
        assert position is not None and position.line == 2
        os.kill(first.pid, signal.SIGKILL)
    finally:
        first.wait(10)
        proxy.stop()
    resume = ["ingest", "envoy", str(log), "--follow", "--server", server.url, "--batch", "2"]
    assert main([*resume, "--exit-when-idle", "0.3", "--poll-interval", "0.05"]) == 1
    counts = summary_numbers(capsys.readouterr().out)
    assert (counts["lines"], counts["taken"], counts["refused"]) == (7, 5, 2)
    assert rejected_lines(tmp_path / "killed.log.rejects") == [3, 8]
    for event_id in envoy_ids(good, "killed.log"):
        assert stored(server, event_id) is not None


def test_a_resumed_run_drops_rejects_written_past_the_stored_position(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill between writing a batch's rejects and storing its position leaves rejects of
    lines the next run reads again (imitated here: a record and half of one added after a
    run). The resumed run cuts the file back to the size stored with the position first."""
    good = [line.replace("2026-03-02", "2026-09-03") for line in TEXT_LINES[:4]]
    log = tmp_path / "cut.log"
    log.write_text("\n".join([good[0], "garbage 2", good[1]]) + "\n")
    argv = follow(log, server, idle="0.3")
    assert main(argv) == 1
    rejects = tmp_path / "cut.log.rejects"
    assert rejected_lines(rejects) == [2]
    with open(log, "a") as writer:
        writer.write("\n".join([good[2], "garbage 5", good[3]]) + "\n")
    with open(rejects, "ab") as writer:  # what the killed run wrote for lines 4 to 6
        writer.write(b'{"line":5,"reason":"the line does not start","text":"garbage 5"}\n{"li')
    assert main(argv) == 1
    assert summary_numbers(capsys.readouterr().out)["lines"] == 3  # resumed after line 3
    assert rejected_lines(rejects) == [2, 5]


def test_unreachable_server_and_unwritable_rejects(
    server: ServerProcess, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    log = tmp_path / "a.log"
    log.write_text(TEXT_LINES[0] + "\nnot a line\n")
    nowhere = f"http://127.0.0.1:{free_port()}"
    code = main(["ingest", "envoy", str(log), "--server", nowhere, "--retry-for", "0.6"])
    out, err = capsys.readouterr()
    assert code == 2 and "cannot deliver a batch" in err and "taken 0" in out
    assert "server not reached" in out and "log size" not in out  # not a size of 0
    code = main(
        ["ingest", "envoy", str(log), "--server", server.url, "--rejects", "/nonexistent/x.rejects"]
    )
    assert code == 2 and "cannot write the rejects file" in capsys.readouterr().err
    assert main(["ingest", "envoy", str(tmp_path / "missing.log")]) == 2
    assert "cannot read" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("mesh", "sample", "agent"),
    [
        ("envoy", "istio-json.log", "python-requests/2.31.0"),
        ("linkerd", "linkerd.log", "Go-http-client/1.1"),
    ],
)
def test_json_lines_with_a_byte_that_is_not_utf8_are_taken(
    server: ServerProcess,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    mesh: str,
    sample: str,
    agent: str,
) -> None:
    """A raw Latin-1 byte in a JSON line (Istio JSON, Linkerd) is read as the JSON escape of
    that code point, \\u00e9; as `\\xe9` the line was no JSON and was refused."""
    line = (DATA / sample).read_text().splitlines()[0].replace("-08-23T", "-09-23T")
    line = line.replace("2026-03-02", "2026-06-02")
    log = tmp_path / f"{mesh}-latin1.log"
    log.write_bytes(
        b"".join(
            line.encode().replace(agent.encode(), b"caf" + c) + b"\n" for c in (b"\xe9", b"\xfc")
        )
    )
    assert main(["ingest", mesh, str(log), "--server", server.url]) == 0
    counts = summary_numbers(capsys.readouterr().out)
    assert (counts["taken"], counts["refused"]) == (2, 0)
    for escape, shown in (("\\u00e9", "café"), ("\\u00fc", "cafü")):
        text = line.replace(agent, "caf" + escape)
        reporter = f"ingest:{mesh}:{log.name}"
        if mesh == "envoy":
            event = envoy.to_event(envoy.parse_line(text), reporter)
        else:
            event = linkerd.to_event(linkerd.parse_line(text), reporter)
        found = stored(server, event.id)
        assert found is not None
        assert cast(dict[str, object], found["http"])["user_agent"] == shown
    # a backslash before the raw byte starts no JSON escape: the line is malformed, and
    # reading the byte as \u00e9 would have made it `\\u00e9`, valid JSON with other content
    broken = tmp_path / f"{mesh}-escape.log"
    broken.write_bytes(line.encode().replace(agent.encode(), b"caf\\\xe9") + b"\n")
    assert main(["ingest", mesh, str(broken), "--server", server.url]) == 1  # a line refused
    counts = summary_numbers(capsys.readouterr().out)
    assert (counts["taken"], counts["refused"]) == (0, 1)


def test_the_next_batch_is_read_while_the_last_one_is_sent(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The server's commit and the reading of the next lines overlap; a batch is answered
    before the next one goes, and the stored position is one the server acknowledged."""
    lines = [line.replace("2026-03-02", "2026-08-01") for line in TEXT_LINES]
    next_batch_read = threading.Event()
    seen_while_sending: list[bool] = []
    sent: list[int] = []

    class Watching(Sender):
        def send(self, events: list[AuditEvent]) -> list[Stored | str]:
            # the first batch waits for the reader to reach the second (up to 5 s)
            seen_while_sending.append(next_batch_read.wait(5) if not sent else True)
            sent.append(len(events))
            return super().send(events)

    def convert(text: str) -> AuditEvent:
        if len(converted) == 2:
            next_batch_read.set()
        converted.append(text)
        return envoy.to_event(envoy.parse_line(text), "ingest:envoy:pipelined.log")

    converted: list[str] = []
    state = tmp_path / "state.json"
    sender = Watching(server.url, retry_for=10)
    pipeline = Pipeline(
        convert,
        sender,
        Rejects(tmp_path / "rejects", append=False),
        display="pipelined.log",
        batch=2,
        state=state,
        reporter="ingest:envoy:pipelined.log",
    )
    try:
        for number, text in enumerate(lines[:5], start=1):
            end = Position(str(tmp_path / "pipelined.log"), 1, 1, number * 100, number)
            pipeline.take([Line(number, text.encode(), end)])
        pipeline.flush()
    finally:
        sender.close()
    assert seen_while_sending[0], "the second batch was not read while the first was sent"
    assert sent == [2, 2, 1] and pipeline.counts.taken == 5 and pipeline.counts.batches == 3
    stored = load_position(state)
    assert stored is not None and stored.offset == 500


def test_after_an_interrupt_the_batch_in_flight_is_taken_in_or_left_alone(
    server: ServerProcess, tmp_path: Path
) -> None:
    """^C while a batch is on its way: its answer, if it comes in time, counts and stores
    its position; while it has not come, nothing else uses the sender (the refused-lines
    report waits), and the next run sends the batch again."""
    lines = [line.replace("2026-03-02", "2026-08-02") for line in TEXT_LINES[:3]]
    release = threading.Event()

    class Held(Sender):
        def send(self, events: list[AuditEvent]) -> list[Stored | str]:
            release.wait(10)
            return super().send(events)

    state = tmp_path / "state.json"
    sender = Held(server.url, retry_for=10)
    pipeline = Pipeline(
        lambda text: envoy.to_event(envoy.parse_line(text), "ingest:envoy:held.log"),
        sender,
        Rejects(tmp_path / "rejects", append=False),
        display="held.log",
        batch=2,
        state=state,
        reporter="ingest:envoy:held.log",
    )
    try:
        for number, text in enumerate(lines, start=1):
            end = Position(str(tmp_path / "held.log"), 1, 1, number * 100, number)
            pipeline.take([Line(number, text.encode(), end)])  # the third waits unsent
        assert not pipeline.settle(0.2) and pipeline.counts.taken == 0
        assert load_position(state) is None
        release.set()
        assert pipeline.settle(10) and pipeline.counts.taken == 2
    finally:
        release.set()
        sender.close()
    stored = load_position(state)
    assert stored is not None and stored.offset == 200
