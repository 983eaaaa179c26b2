"""A loopback HTTP server for the operator's HTTP clients (Prometheus): a handler class says what a
GET is answered with; `serve` runs it on 127.0.0.1 and yields its URL."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class JSONHandler(BaseHTTPRequestHandler):
    """Answers every GET with `answer()`: (status code, body), as application/json; logs nothing."""

    def answer(self) -> tuple[int, bytes]:
        raise NotImplementedError

    def do_GET(self) -> None:  # noqa: N802
        code, data = self.answer()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


@contextmanager
def serve(handler: type[JSONHandler]) -> Iterator[str]:
    srv = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
