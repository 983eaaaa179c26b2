"""The HTTP layer: a raw ASGI application (no framework) with a lifespan that loads the model.

Owned here: routing, body reading with the size limit, request ids (`x-request-id` honoured or
generated), the `x-modeldeploy-pod` header, turning `RequestError`s into `{"error": "..."}`
responses (the one error handler), logging refusals, and the lifespan: the model loads in a
background thread after startup so that liveness answers during a long download, and readiness
turns true only after load + self-check (on the artifact's own method; the verified fast path is
chosen afterwards, in a thread, and swapped in). A load refusal calls `on_refused` (the CLI stops
the server and exits non-zero). Called by uvicorn via `create_app` (a factory: nothing loads at import).
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

import orjson

from modeldeploy_server import logs
from modeldeploy_server.errors import LoadRefused, MethodNotAllowed, NotFound, NotReady, PayloadTooLarge, RequestError
from modeldeploy_server.metrics import CONTENT_TYPE, Metrics
from modeldeploy_server.runtime import Runtime, load_runtime
from modeldeploy_server.service import Service
from modeldeploy_server.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("modeldeploy_server.app")
JSON = b"application/json"
_OK = orjson.dumps({"live": True})
_READY = orjson.dumps({"ready": True})


class ClientDisconnected(Exception):
    pass


class App:
    def __init__(self, settings: Settings, runtime: Runtime | None = None, load_before_serving: bool = False) -> None:
        self.settings = settings
        self.service = Service(settings, Metrics(settings.model_name, settings.model_version, settings.model_revision))
        self.pod = settings.pod_name.encode("latin-1", "replace")
        self.preloaded = runtime
        self.load_before_serving = load_before_serving
        self.refused: str | None = None
        self.on_refused: Callable[[str], None] | None = None
        self._counter = 0
        self._prefix = f"{os.getpid():x}-{os.urandom(3).hex()}-"
        self._load_task: asyncio.Task[None] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(receive, send)

    # -- lifespan -------------------------------------------------------------------------------

    async def lifespan(self, receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                if self.preloaded is not None:
                    self.service.set_runtime(self.preloaded)
                elif self.load_before_serving:
                    try:
                        self.service.set_runtime(await asyncio.to_thread(load_runtime, self.settings, False))
                    except LoadRefused as exc:
                        await send({"type": "lifespan.startup.failed", "message": str(exc)})
                        return
                    self._load_task = asyncio.get_running_loop().create_task(self._compile())
                else:
                    self._load_task = asyncio.get_running_loop().create_task(self._load())
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                self.service.draining = True
                if self._load_task is not None and not self._load_task.done():
                    self._load_task.cancel()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _load(self) -> None:
        try:
            runtime = await asyncio.to_thread(load_runtime, self.settings, False)
        except Exception as exc:  # LoadRefused, or anything unforeseen: never ready, exit non-zero
            self.refused = str(exc) if isinstance(exc, LoadRefused) else f"loading failed: {type(exc).__name__}: {exc}"
            log.error(self.refused, extra={"fields": {"event": "load_refused", "uri": self.settings.model_uri}})
            if self.on_refused is not None:
                self.on_refused(self.refused)
            return
        self.service.set_runtime(runtime)
        log.info("ready", extra={"fields": {"event": "ready", "serving_path": runtime.path}})
        await self._compile()

    async def _compile(self) -> None:
        """After readiness: verify faster paths in a thread, then switch the serving path in the loop."""
        runtime = self.service.runtime
        if runtime is None or runtime.compiled:
            return
        try:
            await asyncio.to_thread(runtime.compile, self.settings)
        except Exception:  # the reference path keeps serving; a failed compilation is only logged
            runtime.predict, runtime.path, runtime.compiled = runtime.reference, "sklearn", True
            log.exception("compiling a fast path failed; serving the artifact's own method")
        self.service.set_runtime(runtime)
        fields = {"event": "compiled", "serving_path": runtime.path, "notes": runtime.notes}
        log.info("serving path chosen", extra={"fields": fields})

    # -- HTTP -----------------------------------------------------------------------------------

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = ""
        for key, value in scope["headers"]:
            if key == b"x-request-id" and 0 < len(value) <= 128 and value.isascii() and value.decode().isprintable():
                request_id = value.decode()
        if not request_id:
            self._counter += 1
            request_id = f"{self._prefix}{self._counter:x}"
        started = time.perf_counter()
        try:
            status, body, ctype = await self._route(scope, receive, request_id)
        except RequestError as exc:
            status, body, ctype = exc.status, orjson.dumps({"error": exc.message}), JSON
            self._log_refusal(scope, request_id, exc, started)
        except ClientDisconnected:
            return
        except Exception:  # a bug, never the client's fault: 500, logged with its traceback
            log.exception("internal error", extra={"fields": {"request_id": request_id, "path": scope["path"]}})
            status, body, ctype = 500, orjson.dumps({"error": "internal server error"}), JSON
        else:
            if self.settings.access_log:
                log.info("request", extra={"fields": self._fields(scope, request_id, status, started)})
        headers = [(b"content-type", ctype), (b"content-length", str(len(body)).encode()),
                   (b"x-request-id", request_id.encode()), (b"x-modeldeploy-pod", self.pod)]  # fmt: skip
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    def _fields(self, scope: Scope, request_id: str, status: int, started: float) -> dict[str, Any]:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        return {"request_id": request_id, "method": scope["method"], "path": scope["path"][:256], "status": status,
                "duration_ms": duration_ms, "pod": self.settings.pod_name}  # fmt: skip

    def _log_refusal(self, scope: Scope, request_id: str, exc: RequestError, started: float) -> None:
        fields = self._fields(scope, request_id, exc.status, started)
        fields["error"] = exc.message
        fields["reason"] = getattr(exc, "reason", None)
        if exc.status == 503:  # not ready yet / draining: expected, and probes ask every few seconds
            level = logging.DEBUG if scope["path"].endswith("/ready") else logging.WARNING
        else:
            level = logging.ERROR if exc.status >= 500 else logging.INFO
        log.log(level, "refused", extra={"fields": fields})

    def _reader(self, scope: Scope, receive: Receive) -> Callable[[], Awaitable[bytes]]:
        limit = self.settings.max_body_bytes

        async def read() -> bytes:
            for key, value in scope["headers"]:
                if key == b"content-length" and value.isdigit() and int(value) > limit:
                    raise PayloadTooLarge(f"request body of {int(value)} bytes exceeds the limit of {limit} bytes")
            chunks, size = [], 0
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise ClientDisconnected()
                chunk = message.get("body", b"")
                size += len(chunk)
                if size > limit:
                    raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
                chunks.append(chunk)
                if not message.get("more_body", False):
                    return chunks[0] if len(chunks) == 1 else b"".join(chunks)

        return read

    async def _route(self, scope: Scope, receive: Receive, request_id: str) -> tuple[int, bytes, bytes]:
        path: str = scope["path"]
        method: str = scope["method"]
        service = self.service
        if path.startswith("/v2/models/"):
            rest = path[len("/v2/models/") :]
            if rest.endswith("/infer"):
                name = rest[: -len("/infer")].split("/versions/", 1)[0]
                if method != "POST":
                    raise MethodNotAllowed(f"{method} {path}: use POST")
                return 200, await service.infer("v2", name, self._reader(scope, receive), request_id), JSON
            if method not in ("GET", "HEAD"):
                raise MethodNotAllowed(f"{method} {path}: use GET")
            if rest.endswith("/ready"):
                name = rest[: -len("/ready")].split("/versions/", 1)[0]
                if not service.model_ready(name):
                    raise NotReady(f"model {name!r} is not ready")
                return 200, _READY, JSON
            return 200, service.model_metadata(rest.split("/versions/", 1)[0]), JSON
        if path.startswith("/v1/models/") and path.endswith(":predict"):
            if method != "POST":
                raise MethodNotAllowed(f"{method} {path}: use POST")
            name = path[len("/v1/models/") : -len(":predict")]
            return 200, await service.infer("v1", name, self._reader(scope, receive), request_id), JSON
        if path == "/v2/health/ready":
            if not service.ready:
                raise NotReady(self.refused or "model is not loaded yet" if not service.draining else "shutting down")
            return 200, _READY, JSON
        if path == "/v2/health/live":
            return 200, _OK, JSON
        if path == "/metrics":
            return 200, service.metrics.render(), CONTENT_TYPE.encode()
        if path in ("/v2", "/v2/"):
            return 200, service.server_metadata(), JSON
        raise NotFound(f"no route for {method} {path[:256]}")


def create_app(settings: Settings | None = None, runtime: Runtime | None = None) -> App:
    """The ASGI application; with no arguments, settings come from the environment."""
    settings = settings or Settings()
    logs.configure(settings.log_level)
    return App(settings, runtime)


def create_worker_app() -> App:
    """For uvicorn's worker processes: load (from the parent's verified cache) before accepting connections,
    so that no worker answers 503 while a sibling already reports ready."""
    settings = Settings()
    logs.configure(settings.log_level)
    return App(settings, load_before_serving=True)
