"""`auditmesh ingest envoy | linkerd FILE|-`: access-log files into a running server.

Lines come from `ingest.follow` (a file, a growing file, or stdin), become events through
the pure adapters (`ingest.envoy`, `ingest.linkerd`), and go to `POST /v1/events` in
batches. A line that does not parse, or that the server refuses, is reported on stderr,
written to the rejects file (NDJSON: line number, reason, text) and skipped; the rest goes on.
With `--follow` the position after the last line of each acknowledged batch is stored, so a
restart resumes there: nothing acknowledged is read twice, nothing unacknowledged is lost, and
what is sent twice anyway (a crash between the answer and the store) is deduplicated by the
server, because event ids are derived from the lines.

The rejects file is in line order and has each refused line once, across restarts: a batch's
refused lines (its unparsable lines and the ones the server refused) are written when its
answer is in, in the order they were read, just before its position is stored, and the state
file keeps the rejects file's size with the position. A resumed run first cuts the rejects
file back to that size: what lies past it was written for lines it reads again (a kill between
writing the rejects and storing the position).

Refused lines are also reported to the server, so they show in its metrics
(`auditmesh_ingest_rejected_total{adapter}`, server/metrics.py) and leave an audit trace:
one `system` event with the same reporter as the lines, `ingest:<mesh>:<source>`, labels
`system.action=ingest_refused`, `ingest.refused` (how many), `ingest.first_line`,
`ingest.last_line` and `ingest.rejects_file`. It is sent at the end of a run and, with
`--follow`, whenever the reader has caught up and a minute has passed since the last
report. One attempt, no retries: a report the server does not take is a warning (the
rejects file has every line either way). A run that refuses the same lines again reports
them again: the report says what this run refused.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, wait
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import IO, TypeVar

import httpx
import msgspec

from auditmesh.cli import progress_bar, server_url
from auditmesh.cli.main import UserError
from auditmesh.events import AuditEvent, Error, encode_ndjson, new_event_id
from auditmesh.ingest import envoy, linkerd
from auditmesh.ingest.follow import (
    ROTATE_WAIT_S,
    Line,
    LineSource,
    Position,
    Stream,
    Tail,
    Written,
    load_position,
    load_written,
    save_position,
)

DEFAULT_SERVER = "http://127.0.0.1:7600"
MAX_SHOWN = 20  # refused lines echoed on stderr; the rejects file has all of them
RETRY_S = (0.5, 1.0, 2.0, 4.0, 8.0)
REPORT_EVERY_S = 60.0  # --follow: refused lines reported at most this often
REPORT_TIMEOUT_S = 10.0
# The label server/metrics.py (REFUSED_LABEL) turns into the reject counter.
REFUSED_LABEL = "ingest.refused"

Convert = Callable[[str], AuditEvent]

T = TypeVar("T")
A = TypeVar("A")


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("ingest", help="read mesh access logs into the audit trail")
    ingest_sub = parser.add_subparsers(title="ingest commands", metavar="COMMAND", required=True)

    env = ingest_sub.add_parser(
        "envoy",
        help="Istio/Envoy access logs (Istio's default TEXT format or its JSON fields)",
        description="Read an Istio sidecar's access log (Istio's default TEXT format, or "
        "accessLogEncoding: JSON) and send each line to the server as an audit event.",
    )
    env.add_argument(
        "--format",
        choices=("auto", "text", "json"),
        default="auto",
        help="line format (default auto: a line starting with '{' is JSON)",
    )
    _common(env)
    env.set_defaults(func=run_envoy)

    lkd = ingest_sub.add_parser(
        "linkerd",
        help="Linkerd proxy JSON access logs",
        description="Read a Linkerd proxy's JSON access log (config.linkerd.io/access-log: "
        "json) and send each line to the server as an audit event.",
    )
    _common(lkd)
    lkd.set_defaults(func=run_linkerd)


EXIT_HELP = (
    "Exit status: 0 when every line was taken (or was already in the log); 1 when any line "
    "was refused, though the others were taken (the refused ones are in the rejects file); 2 "
    "when the run stops on an error (a bad argument, a file it cannot read or write, the "
    "server unreachable or refusing a batch); 130 when interrupted."
)


def _common(parser: argparse.ArgumentParser) -> None:
    parser.epilog = EXIT_HELP
    parser.add_argument("file", metavar="FILE|-", help="the access-log file, or - for stdin")
    parser.add_argument(
        "--url",
        "--server",  # its first name, still taken: `--url` is what every other command says
        dest="url",
        metavar="URL",
        type=server_url,
        default=DEFAULT_SERVER,
        help=f"the running server to send to (default {DEFAULT_SERVER}); --server URL is an "
        "older spelling, still accepted",
    )
    parser.add_argument("--batch", type=int, default=500, help="events per request")
    parser.add_argument(
        "--rejects", type=Path, help="where refused lines go (default FILE.rejects)"
    )
    parser.add_argument(
        "--source",
        help="source name in the events' reporter, ingest:<mesh>:<source> (default: the file "
        "name; 'stdin' for -). It seeds the event ids, so keep it stable for a source: give "
        "--source access.log when reading a rotated access.log.1 again",
    )
    parser.add_argument(
        "--follow",
        action="store_true",
        help="keep reading as the file grows, across rotation; resume after a restart",
    )
    parser.add_argument(
        "--state",
        type=Path,
        help="position file for --follow (default: next to the rejects file, FILE.offset)",
    )
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="with --follow: stop once no new line came for this long",
    )
    parser.add_argument(
        "--poll-interval", type=float, default=0.2, metavar="SECONDS", help=argparse.SUPPRESS
    )
    parser.add_argument(
        "--rotate-wait",
        type=float,
        default=ROTATE_WAIT_S,
        metavar="SECONDS",
        help="with --follow: after a rotation, read the old file until it has been quiet this "
        f"long, since a writer may still flush to it (default {ROTATE_WAIT_S:g})",
    )
    parser.add_argument(
        "--retry-for",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="give up when the server cannot take a batch for this long (default 30; "
        "with --follow: never)",
    )
    parser.add_argument("--quiet", action="store_true", help="no progress bar")


def run_envoy(args: argparse.Namespace) -> int:
    parse = {
        "auto": envoy.parse_line,
        "text": envoy.parse_text_line,
        "json": envoy.parse_json_line,
    }[args.format]

    def converter(reporter: str) -> Convert:
        return lambda text: envoy.to_event(parse(text), reporter)

    return _run(args, "envoy", converter)


def run_linkerd(args: argparse.Namespace) -> int:
    def converter(reporter: str) -> Convert:
        return lambda text: linkerd.to_event(linkerd.parse_line(text), reporter)

    return _run(args, "linkerd", converter)


def _text(data: bytes) -> str:
    """A log line as text. A byte that is not UTF-8 (a Latin-1 User-Agent) is kept as its
    escape, `\\xe9`: lines that differ in one such byte keep distinct event ids and what
    was sent can still be read, where U+FFFD would make them one event. In a JSON line
    (Istio JSON, Linkerd) the escape is JSON's, `\\u00e9` (RFC 8259 §7; the byte read as
    ISO-8859-1, as h2o's JSON access logs write it): `\\x` is no JSON escape, so such a
    line was refused as not JSON."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        pass
    if data.lstrip().startswith(b"{"):
        if _ESCAPE_OF_A_RAW_BYTE.search(data):  # malformed JSON: U+FFFD keeps it so (refused)
            return data.decode("utf-8", "replace")
        text = data.decode("utf-8", "surrogateescape")  # bytes 0x80-0xff as U+DC80-U+DCFF
        return _ESCAPED_BYTE.sub(lambda byte: f"\\u00{ord(byte[0]) - 0xDC00:02x}", text)
    return data.decode("utf-8", "backslashreplace")


_ESCAPED_BYTE = re.compile("[\udc80-\udcff]")
# A backslash (not itself escaped) right before a raw byte: no JSON escape starts so (RFC 8259
# §7), and `\\u00e9` in its place would make the malformed line valid, with other content.
_ESCAPE_OF_A_RAW_BYTE = re.compile(rb"(?<!\\)(?:\\\\)*\\[\x80-\xff]")


# --- the pipeline --------------------------------------------------------------------------


@dataclass(slots=True)
class Counts:
    taken: int = 0
    refused: int = 0
    duplicates: int = 0
    blank: int = 0
    lines: int = 0
    batches: int = 0
    log_size: int = 0


class Rejects:
    """The rejects file, NDJSON `{"line": N, "reason": "...", "text": "..."}` per line;
    created on the first refused line, appended to when reading resumes, after cutting it
    back to `committed`, its state when the position resumed from was stored."""

    def __init__(self, path: Path, *, append: bool, committed: Written | None = None) -> None:
        self.path = path
        self._out: IO[bytes] | None = None
        self._append = append
        try:
            if not append:  # a fresh read: old rejects describe another run
                path.unlink(missing_ok=True)
            elif committed is not None:
                self._cut_back(committed)
        except OSError as exc:
            raise self._unwritable(exc) from None

    def _cut_back(self, committed: Written) -> None:
        """Drop what was written past `committed`: rejects of lines after the stored position."""
        try:
            stat = os.stat(self.path)
        except FileNotFoundError:
            return
        here = (stat.st_dev, stat.st_ino)
        same = committed.inode == 0 or here == (committed.device, committed.inode)
        if committed.path == str(self.path.absolute()) and same and stat.st_size > committed.size:
            os.truncate(self.path, committed.size)

    def write(self, number: int, reason: str, text: str) -> None:
        if self._out is None:
            try:
                self._out = open(self.path, "ab" if self._append else "wb")
            except OSError as exc:
                raise self._unwritable(exc) from None
        record = {"line": number, "reason": reason, "text": text}
        self._out.write(msgspec.json.encode(record) + b"\n")

    def sync(self) -> None:
        if self._out is not None:
            self._out.flush()
            os.fsync(self._out.fileno())

    def written(self) -> Written:
        """The file as it stands (after `sync`), to store with a position."""
        path = str(self.path.absolute())
        try:
            stat = os.fstat(self._out.fileno()) if self._out else os.stat(self.path)
        except FileNotFoundError:
            return Written(path, 0, 0, 0)
        return Written(path, stat.st_dev, stat.st_ino, stat.st_size)

    def close(self) -> None:
        if self._out is not None:
            self._out.close()

    def _unwritable(self, exc: OSError) -> UserError:
        return UserError(
            f"cannot write the rejects file {self.path}: {exc.strerror or exc}; "
            "choose another place with --rejects"
        )


@dataclass(frozen=True, slots=True)
class Stored:
    index: int
    new: bool  # False: the ledger held this event already (same id), it was not added


class Sender:
    """POSTs batches to /v1/events; returns each event's ledger index, or the server's
    reason when it refused that event. Retries while the server is away or busy."""

    def __init__(self, url: str, *, retry_for: float | None) -> None:
        self.url = url.rstrip("/")
        self._client = httpx.Client(base_url=self.url, timeout=60)
        self._retry_for = retry_for
        self.reached = False  # whether the server ever answered: else its log size is unknown
        self.known_size = self._log_size()

    def close(self) -> None:
        self._client.close()

    def _log_size(self) -> int:
        """The size in the latest checkpoint: every index below it was there before us."""
        try:
            response = self._client.get("/log/checkpoint")
        except httpx.HTTPError:
            return 0
        lines = response.text.split("\n")
        if response.status_code != 200 or len(lines) < 2 or not lines[1].isdigit():
            return 0
        self.reached = True
        return int(lines[1])

    def send(self, events: list[AuditEvent]) -> list[Stored | str]:
        """Each event's `Stored`, or the server's reason for refusing it."""
        results: list[Stored | str] = [""] * len(events)
        todo = list(range(len(events)))
        while todo:
            response = self._post(encode_ndjson([events[i] for i in todo]))
            if response.status_code == 200:
                body = response.json()
                # an index below fresh_from was stored before this batch
                fresh_from = int(body.get("fresh_from", self.known_size))
                for position, index in zip(todo, body["indices"], strict=True):
                    results[position] = Stored(int(index), int(index) >= fresh_from)
                self.known_size = max(self.known_size, int(body["size"]))
                return results
            line = _field(response, "line")
            if (
                response.status_code in (400, 409)
                and isinstance(line, int)
                and 1 <= line <= len(todo)
            ):
                # The batch was refused whole for one event: refuse that one, send the rest
                # (409: the log holds its id with other content, e.g. the same line mapped by
                # an older auditmesh).
                reason = f"refused by the server: {_field(response, 'error')}"
                results[todo.pop(line - 1)] = reason
                continue
            if response.status_code == 413 and len(todo) > 1:
                half = len(todo) // 2
                for part in (todo[:half], todo[half:]):
                    sent = self.send([events[i] for i in part])
                    for position, result in zip(part, sent, strict=True):
                        results[position] = result
                return results
            raise UserError(
                f"the server at {self.url} refused a batch: {response.status_code} "
                f"{response.text.strip()[:500]}"
            )
        return results

    def report(self, event: AuditEvent) -> str | None:
        """POST one event once, without retrying; None when stored, else the reason."""
        try:
            response = self._client.post(
                "/v1/events",
                content=encode_ndjson([event]),
                headers={"content-type": "application/x-ndjson"},
                timeout=REPORT_TIMEOUT_S,
            )
        except httpx.HTTPError as exc:
            return f"{type(exc).__name__}: {exc}"
        if response.status_code != 200:
            return f"{response.status_code} {response.text.strip()[:200]}"
        self.known_size = max(self.known_size, int(response.json()["size"]))
        return None

    def _post(self, body: bytes) -> httpx.Response:
        deadline = None if self._retry_for is None else time.monotonic() + self._retry_for
        attempt = 0
        while True:
            problem: str
            try:
                response = self._client.post(
                    "/v1/events", content=body, headers={"content-type": "application/x-ndjson"}
                )
                if response.status_code < 500:
                    self.reached = True
                    return response
                problem = f"{response.status_code} {response.text.strip()[:200]}"
            except httpx.HTTPError as exc:
                problem = f"{type(exc).__name__}: {exc}"
            pause = RETRY_S[min(attempt, len(RETRY_S) - 1)]
            if deadline is not None and time.monotonic() + pause > deadline:
                raise UserError(
                    f"cannot deliver a batch to {self.url} ({problem}); is `auditmesh server` "
                    "running there (--url URL names another)? Lines before it were "
                    "acknowledged: run again to continue (stored events are not duplicated)"
                )
            print(f"auditmesh: {self.url}: {problem}; retrying in {pause:g} s", file=sys.stderr)
            time.sleep(pause)
            attempt += 1


@dataclass(slots=True)
class Refused:
    """Lines refused since the last report: how many, the first (with its reason), the last."""

    count: int
    first: int
    reason: str
    last: int


def refused_report(
    reporter: str, refused: Refused, display: str, rejects: Path, time_ns: int
) -> AuditEvent:
    """The `system` event that tells the server about refused lines."""
    first, last = refused.first, refused.last
    message = (
        f"{refused.count} lines of {display} refused (lines {first} to {last}); line {first}: "
        f"{refused.reason}; all of them are in {rejects}"
    )
    return AuditEvent(
        id=new_event_id(lambda: time_ns),
        time_ns=time_ns,
        reporter=reporter,
        kind="system",
        outcome="failure",
        error=Error(type="ingest_refused", message=message[:4096]),
        labels={
            "system.action": "ingest_refused",
            REFUSED_LABEL: str(refused.count),
            "ingest.first_line": str(first),
            "ingest.last_line": str(last),
            "ingest.rejects_file": str(rejects)[:1024],
        },
    )


def _field(response: httpx.Response, name: str) -> object:
    try:
        body = response.json()
    except ValueError:
        return None
    return body.get(name) if isinstance(body, dict) else None


def _resolve(answer: Future[T], call: Callable[[A], T], argument: A) -> None:
    """`answer` gets what `call(argument)` returns, or what it raises (run in a thread)."""
    try:
        answer.set_result(call(argument))
    except BaseException as exc:  # handed to whoever takes the answer
        answer.set_exception(exc)


@dataclass(frozen=True, slots=True)
class Unparsed:
    """A line refused before sending, and why."""

    reason: str
    text: str


# A line taken in hand: its event to send, or why it is refused.
Entry = tuple[Line, AuditEvent | Unparsed]
MAX_HELD_REJECTS = 8 << 20  # bytes of refused lines' text held for one batch at most


@dataclass(slots=True)
class Batch:
    """Lines read since the batch before, to commit together: the answer to their events
    (already there when they have none), the lines in reading order, the position after."""

    answer: Future[list[Stored | str]]
    entries: list[Entry]
    consumed: Position | None


class Pipeline:
    """Lines → events → batches → server, with rejects and the stored position."""

    def __init__(
        self,
        convert: Convert,
        sender: Sender,
        rejects: Rejects,
        *,
        display: str,
        batch: int,
        state: Path | None,
        reporter: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.convert = convert
        self.sender = sender
        self.rejects = rejects
        self.display = display
        self.batch = batch
        self.state = state
        self.reporter = reporter
        self.counts = Counts(log_size=sender.known_size)
        self._clock = clock
        self._unreported: Refused | None = None  # refused lines the server has not heard of
        self._reported_at = clock()
        self._entries: list[Entry] = []  # read since the last batch was cut
        self._events = 0  # events among them
        self._held = 0  # bytes of refused lines' text among them
        self._consumed: Position | None = None  # end of the last line taken in hand
        self._saved: Position | None = None
        self._in_flight: Batch | None = None  # the batch being sent

    def take(self, lines: list[Line]) -> None:
        for line in lines:
            self.counts.lines += 1
            text = _text(line.data)
            if line.too_long:
                self._hold(line, Unparsed("line longer than 1 MiB (cut here)", text[:4096]))
            elif not text.strip():
                self.counts.blank += 1
            else:
                try:
                    event = self.convert(text)
                except ValueError as exc:
                    self._hold(line, Unparsed(str(exc), text))
                else:
                    self._entries.append((line, event))
                    self._events += 1
            self._consumed = line.end
            if self._events >= self.batch or self._held >= MAX_HELD_REJECTS:
                self.flush(wait=False)

    def _hold(self, line: Line, refused: Unparsed) -> None:
        """A refused line waits for its batch: written when that batch is committed."""
        self._entries.append((line, refused))
        self._held += len(refused.text)

    def flush(self, *, wait: bool = True) -> None:
        """Send what is pending; once the server has answered, write the batch's refused
        lines and store the position. Without `wait`, the batch goes from a thread of its own
        while the next one is read and converted (the server's commit and our parsing
        overlap): its answer is taken in by the next flush, before that one's batch goes, so
        batches still go one at a time and in order, and the position stored is always one
        the server has acknowledged."""
        if self._entries:
            entries, self._entries = self._entries, []
            self._events = self._held = 0
            self._collect()
            answer: Future[list[Stored | str]] = Future()
            events = [item for _, item in entries if isinstance(item, AuditEvent)]
            self._in_flight = Batch(answer, entries, self._consumed)
            if events:
                threading.Thread(
                    target=_resolve, args=(answer, self.sender.send, events), daemon=True
                ).start()
            else:
                answer.set_result([])
        if wait:
            self._collect()
            self._save(self._consumed)

    def settle(self, timeout_s: float) -> bool:
        """After an interrupt: take in the batch in flight if its answer comes within
        `timeout_s` (its lines then count, and its position is stored); False when it is
        still being sent or its send failed (the next run sends it again: the ledger keeps
        each event once), so nothing else may use the sender meanwhile."""
        if self._in_flight is None:
            return True
        done, _ = wait([self._in_flight.answer], timeout=timeout_s)
        if not done:
            return False
        try:
            self._collect()
        except UserError:
            return False
        return True

    def _collect(self) -> None:
        """Take in the answer to the batch in flight, if any (raises what its send raised);
        then write its refused lines, in reading order, and store its position."""
        if self._in_flight is None:
            return
        batch, self._in_flight = self._in_flight, None
        results = iter(batch.answer.result())
        seen: set[int] = set()
        sent = False
        for line, item in batch.entries:
            if isinstance(item, Unparsed):
                self._refuse(line.number, item.reason, item.text)
                continue
            sent = True
            result = next(results)
            if isinstance(result, str):
                self._refuse(line.number, result, _text(line.data))
            elif not result.new or result.index in seen:
                self.counts.duplicates += 1
            else:
                self.counts.taken += 1
                seen.add(result.index)
        if sent:
            self.counts.batches += 1
        self.counts.log_size = self.sender.known_size
        self._save(batch.consumed)

    def _save(self, consumed: Position | None) -> None:
        self.rejects.sync()
        if self.state is not None and consumed not in (None, self._saved):
            assert consumed is not None
            try:
                save_position(self.state, consumed, self.rejects.written())
            except OSError as exc:
                raise UserError(
                    f"cannot store the position in {self.state}: {exc.strerror or exc}; "
                    "choose another place with --state"
                ) from None
            self._saved = consumed

    def report_refused(self, *, final: bool) -> None:
        """Tell the server about the lines refused since the last report (module docstring);
        unless `final`, only when REPORT_EVERY_S has passed since the last one."""
        if not self._unreported:
            return
        if not final and self._clock() - self._reported_at < REPORT_EVERY_S:
            return
        refused, self._unreported = self._unreported, None
        self._reported_at = self._clock()
        event = refused_report(
            self.reporter, refused, self.display, self.rejects.path, time.time_ns()
        )
        problem = self.sender.report(event)
        if problem is not None:
            print(
                f"auditmesh: could not report {refused.count} refused lines to the server "
                f"({problem}); they are in {self.rejects.path}",
                file=sys.stderr,
            )
        self.counts.log_size = self.sender.known_size

    def _refuse(self, number: int, reason: str, text: str) -> None:
        self.counts.refused += 1
        if self._unreported is None:
            self._unreported = Refused(1, number, reason, number)
        else:
            self._unreported.count += 1
            self._unreported.last = number
        if self.counts.refused <= MAX_SHOWN:
            print(f"{self.display}:{number}: {reason}", file=sys.stderr)
        elif self.counts.refused == MAX_SHOWN + 1:
            print(f"{self.display}: more refused lines: see {self.rejects.path}", file=sys.stderr)
        self.rejects.write(number, reason, text)


def _run(args: argparse.Namespace, mesh: str, converter: Callable[[str], Convert]) -> int:
    if not 1 <= args.batch <= 10_000:
        raise UserError("--batch must be between 1 and 10000")
    stdin = args.file == "-"
    source_name = args.source or ("stdin" if stdin else Path(args.file).name)
    if not source_name or len(source_name) > 1024:
        raise UserError("--source must be 1 to 1024 characters")
    reporter = f"ingest:{mesh}:{source_name}"
    rejects_path: Path = args.rejects or Path("stdin.rejects" if stdin else f"{args.file}.rejects")
    state: Path | None = None
    if args.follow and not stdin:
        state = args.state or rejects_path.with_name(
            rejects_path.name.removesuffix(".rejects") + ".offset"
        )
    committed: Written | None = None  # the rejects file when the position was stored
    interrupted = False
    failure: UserError | None = None
    with ExitStack() as stack:
        source: LineSource
        if stdin:
            source, display = Stream(sys.stdin.buffer.fileno()), "stdin"
        else:
            resume = load_position(state) if state else None
            committed = load_written(state) if state else None
            try:
                tail = Tail(
                    Path(args.file),
                    follow=args.follow,
                    resume=resume,
                    rotate_wait_s=args.rotate_wait,
                )
            except OSError as exc:
                raise UserError(f"cannot read {args.file}: {exc.strerror or exc}") from None
            stack.callback(tail.close)
            source, display = tail, args.file
        resumed = isinstance(source, Tail) and source.resumed
        rejects = Rejects(rejects_path, append=resumed, committed=committed)
        stack.callback(rejects.close)
        sender = Sender(args.url, retry_for=None if args.follow else args.retry_for)
        stack.callback(sender.close)
        pipeline = Pipeline(
            converter(reporter),
            sender,
            rejects,
            display=display,
            batch=args.batch,
            state=state,
            reporter=reporter,
        )
        started = time.monotonic()
        try:
            _loop(args, source, pipeline)
        except KeyboardInterrupt:
            interrupted = True
        except UserError as exc:
            failure = exc
        if failure is None:  # the server is reachable: one try, never blocks an exit for long
            try:
                if pipeline.settle(REPORT_TIMEOUT_S):  # no batch still on its way after ^C
                    pipeline.report_refused(final=True)
            except KeyboardInterrupt:
                interrupted = True
    counts = pipeline.counts
    elapsed = time.monotonic() - started
    summary = (
        f"{display}: taken {counts.taken}, refused {counts.refused}, already present "
        f"{counts.duplicates}; {counts.lines} lines in {elapsed:.2f} s"
        f" ({counts.lines / elapsed if elapsed > 0 else 0:,.0f} lines/s); "
        + (f"log size {counts.log_size}" if pipeline.sender.reached else "server not reached")
    )
    if counts.refused:
        summary += f"; refused lines in {rejects_path}"
    if isinstance(source, Tail) and source.held:
        summary += (
            f"; the last {source.held} bytes have no newline yet: the line is read once it "
            "ends (the next run starts before it)"
        )
    print(summary + (" (interrupted)" if interrupted else ""))
    if failure is not None:
        raise failure
    if interrupted:
        return 130
    return 1 if counts.refused else 0


def _loop(args: argparse.Namespace, source: LineSource, pipeline: Pipeline) -> None:
    bar = isinstance(source, Tail) and not args.follow
    progress = progress_bar("ingesting", enabled=bar and not args.quiet, count_bytes=True)
    with progress:
        task = progress.add_task("ingest", total=source.size if isinstance(source, Tail) else None)
        last_line = time.monotonic()
        while True:
            lines = source.read(pipeline.batch)
            if isinstance(source, Tail):
                for note in source.notes:
                    print(f"auditmesh: {note}", file=sys.stderr)
                source.notes.clear()
            if lines:
                pipeline.take(lines)
                last_line = time.monotonic()
                end = lines[-1].end
                if end is not None:
                    progress.update(task, completed=end.offset)
                continue
            pipeline.flush()  # nothing more for now: send what is pending
            pipeline.report_refused(final=False)
            if source.done:
                return
            idle = time.monotonic() - last_line
            # not idle while a rotated-in file waits to be read (--rotate-wait)
            rotating = isinstance(source, Tail) and source.rotating
            if args.exit_when_idle is not None and idle >= args.exit_when_idle and not rotating:
                return
            source.wait(args.poll_interval)
