"""`auditmesh export ecs | otlp`: the audit trail to the ELK stack or an OpenTelemetry Collector.

The I/O side of `auditmesh.export`: open the ledger, read committed entries in index order
(`--follow` polls for new ones), hand each to the pure mapping, write or send the result,
and move the cursor only once the output is flushed (ECS) or the collector acknowledged
(OTLP). Reads only; the ledger is never written.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from pathlib import Path
from typing import IO
from urllib.parse import urlsplit, urlunsplit

import msgspec

from auditmesh.cli import (
    add_data_arg,
    output_dir,
    positive_float,
    positive_int,
    progress_bar,
    writable_file,
)
from auditmesh.cli.main import UserError
from auditmesh.cli.timespec import TIME_HELP, parse_time_ns
from auditmesh.datadir import Ledger, open_ledger
from auditmesh.events import AuditEvent, EventError, decode_event
from auditmesh.export.cursor import Cursor, CursorError, check_cursor, load_cursor, save_cursor
from auditmesh.export.ecs import ecs_document
from auditmesh.ledger.merkle import leaf_hash
from auditmesh.store.base import EventFilter, StoreError
from auditmesh.store.sqlite import SQLiteStore

BATCH = 1000
FOLLOW_RETRY_S = 1.0  # --follow: the first pause after a batch the collector could not take
MAX_FOLLOW_RETRY_S = 60.0
Rows = list[tuple[int, bytes]]


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    parser = sub.add_parser("export", help="export the audit trail (ECS NDJSON, OTLP logs)")
    export_sub = parser.add_subparsers(title="export commands", metavar="COMMAND", required=True)

    ecs = export_sub.add_parser(
        "ecs",
        help="Elastic Common Schema NDJSON, one document per event",
        description=(
            "Write every event as one Elastic Common Schema document per line (NDJSON), "
            "ready for Filebeat's ndjson parser or Elastic Agent. event.hash is the event's "
            "Merkle leaf hash and event.sequence its ledger index."
        ),
    )
    _add_reading(ecs)
    ecs.add_argument("-o", "--output", default="-", help="file to write, or - for stdout")
    ecs.add_argument("--since", help=f"only events at or after: {TIME_HELP}")
    ecs.add_argument(
        "--preserve-original",
        action="store_true",
        help="keep the event's canonical JSON in event.original (the leaf hash's input)",
    )
    ecs.add_argument(
        "--cursor",
        type=Path,
        help="resume from and save the position in this file (appends to --output)",
    )
    ecs.set_defaults(func=run_ecs)

    otlp = export_sub.add_parser(
        "otlp",
        help="OTLP log records to an OpenTelemetry Collector",
        description=(
            "Send every event as an OTLP LogRecord with semantic-convention attributes, "
            "resuming from the last index the collector acknowledged."
        ),
    )
    _add_reading(otlp)
    otlp.add_argument("--endpoint", required=True, help="collector URL, e.g. http://host:4318")
    otlp.add_argument(
        "--protocol",
        choices=("http", "grpc"),
        default="http",
        help="OTLP/HTTP with protobuf (default) or OTLP/gRPC",
    )
    otlp.add_argument(
        "--header",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="request header / gRPC metadata, e.g. an authorization token (repeatable)",
    )
    otlp.add_argument(
        "--cursor",
        type=Path,
        help="resume file (default: DATA/export/otlp-<endpoint hash>.cursor)",
    )
    otlp.add_argument(
        "--compression", choices=("none", "gzip"), default="none", help="request compression"
    )
    otlp.add_argument(
        "--batch", type=positive_int, default=512, help="log records per export request"
    )
    otlp.add_argument("--timeout", type=positive_float, default=10.0, help="seconds per request")
    otlp.add_argument(
        "--attempts",
        type=positive_int,
        default=6,
        help="tries per batch on retryable failures, with exponential backoff (default 6); "
        "with --follow a batch that still fails is sent again after a pause (1 s, doubling "
        "up to 60 s), so the export outlives a collector's restart",
    )
    otlp.set_defaults(func=run_otlp)


def _add_reading(parser: argparse.ArgumentParser) -> None:
    add_data_arg(parser)
    parser.add_argument("--follow", action="store_true", help="keep polling for new events")
    parser.add_argument(
        "--poll",
        type=positive_float,
        default=1.0,
        metavar="SECONDS",
        help="poll interval with --follow",
    )
    parser.add_argument(
        "--exit-when-idle",
        type=float,
        metavar="SECONDS",
        help="with --follow: stop once no new event arrived for this long",
    )


def _open(data: Path) -> Ledger:
    try:
        return open_ledger(data, create=False)
    except StoreError as exc:
        raise UserError(str(exc)) from None


def tail(
    store: SQLiteStore,
    start: int,
    *,
    follow: bool,
    poll_s: float,
    idle_exit_s: float | None,
    batch: int = BATCH,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> Iterator[Rows]:
    """Committed entries from `start` on, in index order, in batches of at most `batch`.

    Without `follow`, stops at the log's size when called; with it, polls every `poll_s`
    and stops only after `idle_exit_s` without new entries (never, when None).
    """
    next_index = start
    idle_since = clock()
    while True:
        size = store.size()
        if next_index < size:
            end = min(size, next_index + batch)
            rows = list(store.entries(next_index, end))
            if rows:
                yield rows
                next_index = rows[-1][0] + 1
                idle_since = clock()
                continue
        if not follow:
            return
        if idle_exit_s is not None and clock() - idle_since >= idle_exit_s:
            return
        sleep(poll_s)


@contextmanager
def _progress(done: int, size: int, *, hidden: bool) -> Iterator[Callable[[int], None]]:
    """A progress bar on stderr for a one-off export from `done` to the log's `size`, shown
    only on a terminal (a pipe or a log file gets the summary line alone) and not when
    `hidden` (--follow, which has no end); yields `advance(entries)`."""
    bar = progress_bar("exporting", enabled=not hidden and size > done)
    with bar:
        task = bar.add_task("export", total=size - done)
        yield lambda n: bar.advance(task, n)


def _resume(ledger: Ledger, path: Path | None, target: str) -> Cursor | None:
    """The saved cursor, checked against this log; None to start from 0. The file is checked
    to be one the export can save to, before any event is exported."""
    if path is None:
        return None
    output_dir(path.parent, "--cursor")
    writable_file(path, "--cursor")
    try:
        cursor = load_cursor(path)
        if cursor is None:
            return None
        leaf_at = _leaf_before(ledger, cursor.next_index)
        check_cursor(cursor, origin=ledger.log.origin, target=target, leaf_at=leaf_at)
    except CursorError as exc:
        raise UserError(f"{path}: {exc}") from None
    except OSError as exc:
        raise UserError(f"--cursor: cannot read {path}: {exc.strerror or exc}") from None
    return cursor


def _leaf_before(ledger: Ledger, index: int) -> str | None:
    """The hex leaf hash of entry `index - 1`: "" at 0, None when the log is shorter."""
    if index == 0:
        return ""
    rows = list(ledger.store.entries(index - 1, index))
    return leaf_hash(rows[0][1]).hex() if rows else None


def _save(
    ledger: Ledger, path: Path | None, target: str, rows: Rows, output_size: int | None = None
) -> None:
    if path is None or not rows:
        return
    last_index, last_data = rows[-1]
    leaf = leaf_hash(last_data).hex()
    _store(path, Cursor(last_index + 1, ledger.log.origin, target, leaf, output_size))


def _store(path: Path, cursor: Cursor) -> None:
    try:
        save_cursor(path, cursor)
    except OSError as exc:  # what the check before the export cannot see: a full disk
        raise UserError(
            f"--cursor: cannot save the position {cursor.next_index} to {path}: "
            f"{exc.strerror or exc}; the next run goes on from the one saved before"
        ) from None


def _decode(index: int, data: bytes) -> AuditEvent:
    try:
        return decode_event(data)
    except EventError as exc:  # a stored entry always decoded once; say where if not
        raise UserError(f"ledger entry {index} is not a valid event: {exc}") from None


# -- ecs -------------------------------------------------------------------------------


class _Output:
    """Where ECS lines go, a batch at a time: stdout, or a file. A regular file is fsynced
    after each batch (before the cursor moves past it), and cut back to the end of the last
    whole batch when a write fails (a full disk) or a run died mid-batch (`resume_size`), so
    it never holds a torn line or a batch twice. Pipes and devices (-o /dev/null) are
    written as they are."""

    def __init__(self, stream: IO[bytes], *, regular: bool = False) -> None:
        self._stream = stream
        self._regular = regular
        self._committed = os.fstat(stream.fileno()).st_size if regular else None

    @classmethod
    def open(cls, path: str, *, append: bool, resume_size: int | None) -> _Output:
        try:
            stream = open(path, "ab" if append else "wb", buffering=0)  # nothing held back
        except OSError as exc:
            raise UserError(f"cannot open {path} for writing: {exc.strerror or exc}") from None
        regular = stat.S_ISREG(os.fstat(stream.fileno()).st_mode)
        if regular and resume_size is not None and os.fstat(stream.fileno()).st_size > resume_size:
            os.ftruncate(stream.fileno(), resume_size)  # what a run that died mid-batch left
        return cls(stream, regular=regular)

    @property
    def size(self) -> int | None:
        """A regular file's length after the last whole batch; None for others."""
        return self._committed

    def write_batch(self, data: bytes) -> int | None:
        """Write it all; a regular file's durable length after it (None for others)."""
        try:
            view = memoryview(data)
            while view:
                count = self._stream.write(view)
                if not count:
                    raise OSError(f"the output took no bytes of {len(view)}")
                view = view[count:]
            self._stream.flush()
            if self._regular:
                os.fsync(self._stream.fileno())
                self._committed = os.fstat(self._stream.fileno()).st_size
        except OSError:
            if self._committed is not None:
                with suppress(OSError):
                    os.ftruncate(self._stream.fileno(), self._committed)
            raise
        return self._committed

    def __enter__(self) -> _Output:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stream.close()


def _refuse_own_file(path: str, data: Path) -> None:
    """Refuse an output that is one of the data directory's own files (however reached: a
    symlink, a hard link): opening it to write cut it to nothing first, so `-o
    DATA/ledger.db` wiped the log the export reads. DATA/export/ holds exports' files."""
    try:
        target = os.stat(path)
    except OSError:
        return  # a new file; or one that open() reports
    for folder, subfolders, files in os.walk(data):
        if Path(folder) == data:
            subfolders[:] = [name for name in subfolders if name != "export"]
        for name in files:
            with suppress(OSError):
                own = os.stat(os.path.join(folder, name))
                if (own.st_dev, own.st_ino) == (target.st_dev, target.st_ino):
                    raise UserError(
                        f"-o {path} is {Path(folder) / name} of the data directory, which "
                        "the export reads and never writes: choose another file"
                    )


def run_ecs(args: argparse.Namespace) -> int:
    since_ns = parse_time_ns(args.since, time.time_ns()) if args.since is not None else None
    encoder = msgspec.json.Encoder()
    with ExitStack() as stack:
        ledger = _open(args.data)
        stack.callback(ledger.close)
        target = "-" if args.output == "-" else str(Path(args.output).resolve())
        cursor = _resume(ledger, args.cursor, target)
        start = 0 if cursor is None else cursor.next_index
        if since_ns is not None:
            # The first index whose event is at or after --since; later entries are still
            # filtered one by one, since ledger order is arrival order, not event time.
            first = ledger.store.find(EventFilter(since_ns=since_ns, limit=1))
            start = max(start, first[0].index if first else ledger.store.size())
        if args.output != "-":
            _refuse_own_file(args.output, ledger.data_dir)
        out = (
            _Output(sys.stdout.buffer)
            if args.output == "-"
            else stack.enter_context(
                _Output.open(
                    args.output,
                    append=bool(args.cursor),
                    resume_size=None if cursor is None else cursor.output_size,
                )
            )
        )
        if args.cursor is not None and cursor is None and out.size is not None:
            # The first run's position before it writes: one that dies after writing a
            # batch, before saving the position past it, has its writing cut off by the
            # next run instead of appended again.
            leaf = _leaf_before(ledger, start) or ""
            _store(args.cursor, Cursor(start, ledger.log.origin, target, leaf, out.size))
        written = 0
        on_screen = args.output == "-" and sys.stdout.isatty()  # no bar across the output
        advance = stack.enter_context(
            _progress(start, ledger.store.size(), hidden=args.follow or on_screen)
        )
        try:
            for rows in tail(
                ledger.store,
                start,
                follow=args.follow,
                poll_s=args.poll,
                idle_exit_s=args.exit_when_idle,
            ):
                lines = []
                for index, data in rows:
                    event = _decode(index, data)
                    if since_ns is not None and event.time_ns < since_ns:
                        continue
                    doc = ecs_document(
                        event,
                        index=index,
                        leaf=leaf_hash(data),
                        original=data if args.preserve_original else None,
                    )
                    lines.append(encoder.encode(doc) + b"\n")
                size = out.write_batch(b"".join(lines))
                _save(ledger, args.cursor, target, rows, size)
                written += len(lines)
                advance(len(rows))
        except BrokenPipeError:  # `| head`: the reader has all it wanted
            # Python's documented recipe: point stdout at devnull so the exit flush is quiet.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 0
        except OSError as exc:  # a full disk, a file-size limit: the partial batch is cut off
            kept = "; the next run with this --cursor goes on from there" if args.cursor else ""
            raise UserError(
                f"cannot write to {args.output}: {exc.strerror or exc} after {written} events{kept}"
            ) from None
    print(f"exported {written} events as ECS", file=sys.stderr)
    return 0


# -- otlp ------------------------------------------------------------------------------


def otlp_cursor(data: Path, protocol: str, endpoint: str) -> tuple[Path, str]:
    """The default cursor file for a collector and the target it records: one per collector
    however its address is typed (RFC 3986 §6.2.2-6.2.3: scheme and host are
    case-insensitive, and an empty path is "/"), so `http://C:4318/` resumes where
    `http://c:4318` stopped. A cursor an older auditmesh named after the address as typed
    is still used, with the target it recorded."""
    normal = _normal_endpoint(endpoint)
    folder = data / "export"
    path, as_typed = (
        folder / f"otlp-{_digest(normal)}.cursor",
        folder / f"otlp-{_digest(endpoint)}.cursor",
    )
    if as_typed != path and as_typed.exists() and not path.exists():
        return as_typed, f"{protocol}:{endpoint}"
    return path, f"{protocol}:{normal}"


def _normal_endpoint(endpoint: str) -> str:
    parts = urlsplit(endpoint.strip())
    path = parts.path.rstrip("/")
    return urlunsplit((parts.scheme.lower(), parts.netloc.lower(), path, parts.query, ""))


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:16]


_HEADER_NAME = re.compile(r"[0-9a-z_.-]+")  # gRPC metadata keys, also RFC 9110 tokens


def _headers(pairs: list[str]) -> dict[str, str]:
    """--header KEY=VALUE pairs, checked before anything is sent: a value that is not
    printable ASCII (`é`, a line break) was a UnicodeEncodeError traceback over HTTP, and
    retried as "cannot reach" or refused as gRPC INTERNAL. The value is never echoed: it is
    usually a token."""
    headers: dict[str, str] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--header {pair!r}: expected KEY=VALUE")
        key, value = key.strip().lower(), value.strip()
        if not _HEADER_NAME.fullmatch(key):
            raise UserError(
                f"--header {key!r}: a name takes letters, digits, '-', '_' and '.' only"
            )
        if not (value.isascii() and value.isprintable()):
            raise UserError(
                f"--header {key}: the value must be printable ASCII (HTTP header and gRPC "
                "metadata values); encode other text, e.g. as base64"
            )
        headers[key] = value
    return headers


def run_otlp(args: argparse.Namespace) -> int:
    from auditmesh.export.otlp import ExportError, OtlpSender, PartlyRejected, log_records_request

    headers = _headers(args.header)
    if args.cursor is None:
        cursor_path, target = otlp_cursor(args.data, args.protocol, args.endpoint)
    else:  # a cursor the user names records the address as typed
        cursor_path, target = args.cursor, f"{args.protocol}:{args.endpoint}"
    sent = 0
    refused: list[str] = []  # "N of entries A..B (reason)", per partly rejected request
    rejected = 0
    sent_back = False  # the receiver holds records of ours in its own ledger: the source
    with ExitStack() as stack:
        ledger = _open(args.data)
        stack.callback(ledger.close)
        resumed = _resume(ledger, cursor_path, target)
        start = 0 if resumed is None else resumed.next_index
        try:
            sender = OtlpSender(
                args.endpoint,
                protocol=args.protocol,
                headers=headers,
                timeout_s=args.timeout,
                compression=args.compression,
                attempts=args.attempts,
            )
        except ValueError as exc:
            raise UserError(f"--endpoint: {exc}") from None
        stack.callback(sender.close)
        advance = stack.enter_context(_progress(start, ledger.store.size(), hidden=args.follow))
        for rows in tail(
            ledger.store,
            start,
            follow=args.follow,
            poll_s=args.poll,
            idle_exit_s=args.exit_when_idle,
            batch=args.batch,
        ):
            pause = FOLLOW_RETRY_S
            while rows:
                entries = [(i, _decode(i, data), data, leaf_hash(data)) for i, data in rows]
                request = log_records_request(entries, origin=ledger.log.origin)
                try:
                    sender.export(request)
                except ExportError as exc:
                    # A batch split to fit the receiver's size limit may fail after its first
                    # requests were taken: the cursor moves past those, so none is sent twice.
                    taken, rows = rows[: exc.delivered], rows[exc.delivered :]
                    if taken:
                        _save(ledger, cursor_path, target, taken)
                        sent += len(taken)
                        advance(len(taken))
                    if isinstance(exc, PartlyRejected):
                        # Answered: OTLP forbids sending it again, so the cursor moved past it.
                        # The receiver does not say which records it refused: name the range.
                        first, last = taken[-exc.count][0], taken[-1][0]
                        sent -= exc.rejected
                        rejected += exc.rejected
                        sent_back = sent_back or exc.sent_back
                        refused.append(f"{exc.rejected} of entries {first}..{last} ({exc.reason})")
                        print(
                            f"{args.endpoint} rejected {exc.rejected} of the log records for "
                            f"entries {first}..{last}: {exc.reason}; OTLP forbids sending them "
                            "again, so the export goes on past them",
                            file=sys.stderr,
                        )
                        continue
                    failed = f"{args.endpoint} did not take entries {rows[0][0]}..{rows[-1][0]}"
                    if not (args.follow and exc.retryable):
                        raise UserError(
                            f"{failed}: {exc}; {sent} sent, the cursor stays at {rows[0][0]}"
                        ) from None
                    # --follow outlives a collector's restart or outage (OTLP "Retries": the
                    # client keeps data it could not send), pausing longer each time.
                    print(f"{failed}: {exc}; trying again in {pause:g} s", file=sys.stderr)
                    time.sleep(pause)
                    pause = min(pause * 2, MAX_FOLLOW_RETRY_S)
                    continue
                _save(ledger, cursor_path, target, rows)
                sent += len(rows)
                advance(len(rows))
                rows = []
    print(f"exported {sent} events as OTLP log records to {args.endpoint}", file=sys.stderr)
    if refused and sent_back:
        raise UserError(
            f"{args.endpoint} is the server of this very ledger ({args.data}, log "
            f"{ledger.log.origin}), or of a copy of it: it holds these events already, so it "
            f"added nothing and rejected {rejected} records, first {refused[0]}. To hand the "
            "trail on, give --endpoint another auditmesh server or an OpenTelemetry Collector"
        )
    if refused:
        raise UserError(
            f"the receiver rejected records: {'; '.join(refused)}. They stay in the ledger; "
            "its partial-success message says why"
        )
    return 0
