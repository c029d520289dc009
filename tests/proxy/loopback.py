"""A blocking loopback server for tests that need a peer acting outside the event loop."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable


class Listener:
    """Accepts on a free loopback port; each connection goes to `serve` on a thread of its
    own. `accepted` counts the connections so far."""

    def __init__(self, serve: Callable[[socket.socket], None]) -> None:
        self._serve = serve
        self._listener = socket.create_server(("127.0.0.1", 0))
        self.port: int = self._listener.getsockname()[1]
        self.accepted = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._listener.accept()
            except OSError:  # closed
                return
            self.accepted += 1
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self._listener.close()
