"""A real loopback HTTP server that answers as Prometheus' query API does, or misbehaves on purpose.

`PromHandler.mode` picks the answer (a key of ANSWERS); `PromHandler.seen` records each request's
target (an HTTP proxy receives the absolute URL). Used by the client's tests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


def _vector(value: str) -> str:
    return json.dumps({"status": "success", "data": {"resultType": "vector",
                                                     "result": [{"metric": {}, "value": [1, value]}]}})  # fmt: skip


ANSWERS: dict[str, tuple[int, str, float]] = {
    "http500": (500, "internal error", 0),
    "html": (200, "<html>proxy login</html>", 0),
    "prom_error": (400, json.dumps({"status": "error", "errorType": "bad_data", "error": "parse error"}), 0),
    "nan": (200, _vector("NaN"), 0),
    "inf": (200, _vector("+Inf"), 0),
    "quarter": (200, _vector("0.25"), 0),
    "shape": (200, json.dumps({"status": "success", "data": {"resultType": "matrix", "result": {"x": 1}}}), 0),
    "slow": (200, json.dumps({"status": "success", "data": {"resultType": "vector", "result": []}}), 3.0),
}  # fmt: skip


class PromHandler(BaseHTTPRequestHandler):
    mode = "nan"
    seen: list[str] = []

    def do_GET(self) -> None:  # noqa: N802
        type(self).seen.append(self.path)
        code, body, delay = ANSWERS[type(self).mode]
        time.sleep(delay)
        data = body.encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002
        return


@contextmanager
def serving() -> Iterator[str]:
    """The server's base URL while the block runs."""
    PromHandler.seen = []
    srv = ThreadingHTTPServer(("127.0.0.1", 0), PromHandler)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
