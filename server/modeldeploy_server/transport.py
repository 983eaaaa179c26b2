"""What the server changes in uvicorn: half-closed connections get their answer; SIGTERM stops cleanly.

Owned here: `HalfCloseProtocol` (uvicorn's httptools protocol, except that a client which sends a
complete request and then shuts down its sending side still gets the answer, after which the
connection closes; uvicorn's own closes at once and the answer is lost) and `Server` (uvicorn's
server, except that a SIGTERM/SIGINT stop is not re-raised after the graceful shutdown, so a clean
stop exits 0). Called by `__main__` and the tests' servers.
"""

from __future__ import annotations

import signal
from types import FrameType

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol


class HalfCloseProtocol(HttpToolsProtocol):
    def eof_received(self) -> bool | None:  # type: ignore[override]
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete and not cycle.more_body:
            cycle.keep_alive = False  # answer this request, then close
            return True  # keep the transport open for writing
        return None  # nothing complete to answer: close, as uvicorn does (a partial body is a disconnect)


class Server(uvicorn.Server):
    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        super().handle_exit(sig, frame)
        if sig in (signal.SIGTERM, signal.SIGINT) and sig in self._captured_signals:
            self._captured_signals.remove(sig)  # a requested stop that completed gracefully is a clean exit
