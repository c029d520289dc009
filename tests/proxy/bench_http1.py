"""Micro-benchmark of the sans-IO HTTP/1.1 core: ``python -m tests.proxy.bench_http1``.

Not a test (speed is judged by ``make bench`` against nginx, DESIGN.md): this measures the CPU
the framing core costs per request on its own, next to h11 (same shape, pure Python) and a
bare httptools parse (C, parse only: no state, no serialising) when they are installed. CPU
time (``process_time``) is used so a busy machine skews less; the best of five runs counts.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from auditmesh.proxy.http1 import Connection, Role
from auditmesh.proxy.http1_events import Data, EndOfMessage, Headers, Request, Response

REQUEST = (
    b"GET /api/v1/orders/12345?expand=items HTTP/1.1\r\nHost: orders.default.svc:8080\r\n"
    b"User-Agent: wrk/4.2\r\nAccept: application/json\r\n"
    b"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n"
    b"X-Request-Id: 6f1c2d3e-aaaa-bbbb-cccc-1234567890ab\r\nAccept-Encoding: gzip\r\n\r\n"
)
BODY = b'{"ok": true}\n'
RESPONSE_FIELDS: Headers = (
    (b"content-type", b"application/json"),
    (b"content-length", b"%d" % len(BODY)),
    (b"date", b"Mon, 01 Jan 2026 00:00:00 GMT"),
)
RESPONSE = (
    b"HTTP/1.1 200 OK\r\n" + b"".join(b"%s: %s\r\n" % f for f in RESPONSE_FIELDS) + b"\r\n" + BODY
)


def server_cycle(n: int) -> None:
    """Downstream side: parse a request, serialise a response, reuse the connection."""
    conn = Connection(Role.SERVER)
    response = Response(200, RESPONSE_FIELDS)
    for _ in range(n):
        conn.receive_data(REQUEST)
        conn.next_event()
        conn.next_event()
        conn.send(response)
        conn.send(Data(BODY))
        conn.send(EndOfMessage())
        conn.start_next_cycle()


def client_cycle(n: int) -> None:
    """Upstream side: serialise a request, parse a response, reuse the connection."""
    conn = Connection(Role.CLIENT)
    request = Request(b"GET", b"/api/v1/orders/12345", ((b"host", b"orders:8080"),))
    for _ in range(n):
        conn.send(request)
        conn.send(EndOfMessage())
        conn.receive_data(RESPONSE)
        conn.next_event()
        conn.next_event()
        conn.next_event()
        conn.start_next_cycle()


def stream(n: int, chunked: bool) -> None:
    """1 MiB request body arriving in 64 KiB reads, re-framed onward (bytes per call = 1 MiB)."""
    piece = b"x" * 65536
    framing = b"Transfer-Encoding: chunked" if chunked else b"Content-Length: %d" % (16 * 65536)
    wire = b"%x\r\n%s\r\n" % (len(piece), piece) if chunked else piece
    for _ in range(n):
        down = Connection(Role.SERVER)
        up = Connection(Role.CLIENT)
        down.receive_data(b"POST / HTTP/1.1\r\nHost: a\r\n" + framing + b"\r\n\r\n")
        down.next_event()
        up.send(Request(b"POST", b"/", ((b"host", b"a"), (b"transfer-encoding", b"chunked"))))
        for _ in range(16):
            down.receive_data(wire)
            event = down.next_event()
            up.send(event)  # type: ignore[arg-type]
        if chunked:
            down.receive_data(b"0\r\n\r\n")
        up.send(down.next_event())  # type: ignore[arg-type]


def h11_server_cycle(n: int) -> None:
    import h11

    conn = h11.Connection(h11.SERVER)
    for _ in range(n):
        conn.receive_data(REQUEST)
        conn.next_event()
        conn.next_event()
        conn.send(h11.Response(status_code=200, headers=list(RESPONSE_FIELDS)))
        conn.send(h11.Data(data=BODY))
        conn.send(h11.EndOfMessage())
        conn.start_next_cycle()


def httptools_parse_only(n: int) -> None:
    import httptools

    class Sink:
        def __init__(self) -> None:
            self.fields: list[tuple[bytes, bytes]] = []

        def on_header(self, name: bytes, value: bytes) -> None:
            self.fields.append((name.lower(), value))

    for _ in range(n):
        httptools.HttpRequestParser(Sink()).feed_data(REQUEST)


def rate(run: Callable[[int], None], n: int) -> float:
    run(n // 10)
    best = float("inf")
    for _ in range(5):
        start = time.process_time()
        run(n)
        best = min(best, time.process_time() - start)
    return n / best


def relay_content_length(n: int) -> None:
    stream(n, chunked=False)


def relay_chunked(n: int) -> None:
    stream(n, chunked=True)


RUNS: list[tuple[str, Callable[[int], None], int, str]] = [
    ("auditmesh server cycle (parse request, send response)", server_cycle, 20000, "req/s"),
    ("auditmesh client cycle (send request, parse response)", client_cycle, 20000, "req/s"),
    ("auditmesh body relay, content-length in, chunked out", relay_content_length, 100, "MiB/s"),
    ("auditmesh body relay, chunked in, chunked out", relay_chunked, 100, "MiB/s"),
    ("h11 server cycle (same loop)", h11_server_cycle, 5000, "req/s"),
    ("httptools request parse only (no state, no send)", httptools_parse_only, 50000, "req/s"),
]


def main() -> None:
    for label, run, n, unit in RUNS:
        try:
            print(f"{label:<56} {rate(run, n):>10,.0f} {unit}")
        except ImportError:
            print(f"{label:<56} {'(not installed)':>10}")


if __name__ == "__main__":
    main()
