"""Reading a server's HTTP/1.1 answer off a raw socket, for tests that send requests by hand."""

from __future__ import annotations


def parse_answer(received: bytes) -> tuple[int, dict[str, str], bytes] | None:
    """The status, headers (names in lower case) and body of a whole answer with a
    Content-Length at the start of `received`, else None (not whole yet)."""
    head, sep, body = received.partition(b"\r\n\r\n")
    if not sep:
        return None
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    if len(body) < int(headers["content-length"]):
        return None
    return int(status_line.split()[1]), headers, body
