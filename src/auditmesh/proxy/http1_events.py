"""Vocabulary of the sans-IO HTTP/1.1 core: events, sentinels, errors and limits.

Place in the house: the sidecar's listener drives :class:`auditmesh.proxy.http1.Connection` and
exchanges these values with it; nothing here does I/O or parsing. Events are immutable value
objects (frozen dataclasses with slots) so the proxy can forward a received event to the other
side unchanged, or a modified copy (``dataclasses.replace``).

Headers everywhere are a tuple of ``(name, value)`` byte pairs in wire order, names lowercased
(RFC 9110 §5.1: field names are case-insensitive), values without surrounding whitespace
(RFC 9112 §5: OWS is not part of the field value). Helpers live in
:mod:`auditmesh.proxy.headers`.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

Headers: TypeAlias = tuple[tuple[bytes, bytes], ...]


@dataclass(frozen=True, slots=True)
class Request:
    """A request head (RFC 9112 §3). ``http_version`` is what was received, e.g. ``b"1.0"``;
    :meth:`Connection.send` always writes HTTP/1.1 (RFC 9110 §6.2)."""

    method: bytes
    target: bytes
    headers: Headers
    http_version: bytes = b"1.1"


@dataclass(frozen=True, slots=True)
class InformationalResponse:
    """A 1xx interim response (RFC 9110 §15.2): 100 Continue, 101 Switching Protocols, 103."""

    status: int
    headers: Headers = ()


@dataclass(frozen=True, slots=True)
class Response:
    """A final response head (RFC 9112 §4). An empty ``reason`` is sent as the standard phrase."""

    status: int
    headers: Headers
    http_version: bytes = b"1.1"
    reason: bytes = b""


@dataclass(frozen=True, slots=True)
class Data:
    """A piece of message content, already de-chunked; never buffered whole (RFC 9112 §6)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class EndOfMessage:
    """The end of a message; ``trailers`` only ever come with chunked framing (RFC 9112 §7.1.2)."""

    trailers: Headers = ()


@dataclass(frozen=True, slots=True)
class ConnectionClosed:
    """The peer closed its sending side (EOF) at a message boundary."""


Event: TypeAlias = (
    Request | InformationalResponse | Response | Data | EndOfMessage | ConnectionClosed
)


class Sentinel(enum.Enum):
    """Non-event results of :meth:`Connection.next_event`."""

    NEED_DATA = "NEED_DATA"  #: feed more bytes with receive_data()
    PAUSED = "PAUSED"  #: stop reading the socket: cycle done, or protocol switch pending/done


NEED_DATA: Final[Literal[Sentinel.NEED_DATA]] = Sentinel.NEED_DATA
PAUSED: Final[Literal[Sentinel.PAUSED]] = Sentinel.PAUSED


class ProtocolError(Exception):
    """A message that cannot be framed safely.

    ``status_hint`` is the status the proxy should answer with when it still can: 400, 414, 431,
    501 or 505 for a bad request from the peer, 502 for a bad response from an upstream peer, 500
    for a misuse of the API on our side. ``reason`` names the problem and the rule it breaks.
    """

    def __init__(self, status_hint: int, reason: str) -> None:
        super().__init__(status_hint, reason)
        self.status_hint = status_hint
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.reason} (status {self.status_hint})"


class RemoteProtocolError(ProtocolError):
    """The peer sent something we refuse; the connection must not be reused."""


class LocalProtocolError(ProtocolError):
    """We were asked to do something HTTP/1.1 forbids (a bug in the caller)."""


@dataclass(frozen=True, slots=True)
class Limits:
    """Bounds on what a peer can make us hold in memory before a message is framed."""

    max_header_bytes: int = 16 * 1024  #: whole header section incl. start line (→ 431)
    max_headers: int = 100  #: field lines in a header or trailer section (→ 431)
    max_request_line: int = 8 * 1024  #: request-line length without CRLF (→ 414)
    max_chunk_line: int = 4 * 1024  #: chunk-size line incl. chunk extensions (→ 400)

    def __post_init__(self) -> None:
        if min(self.max_header_bytes, self.max_headers, self.max_request_line) < 1:
            raise ValueError("limits must be positive")
        if self.max_chunk_line < 18:
            raise ValueError("max_chunk_line must leave room for a 16-digit chunk size")
