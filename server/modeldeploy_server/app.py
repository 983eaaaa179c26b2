"""The HTTP layer: a raw ASGI application (no framework) with a route table.

Owned here: `ROUTES` (method, path pattern, handler; a known path with another method is a 405
with `Allow`, an unknown path a 404), body reading with the size limit and the Content-Type rule
(JSON, or octet-stream with the binary tensor extension; anything else 415), request ids
(`x-request-id` honoured or generated), the `x-modeldeploy-pod` header, turning `RequestError`s
into `{"error": "..."}` responses (the one error handler), logging refusals, and the one place
where a request's metrics are recorded (`App.http`: inference requests and requests no route
answers, whatever their outcome; a client that disconnects is `client_closed` and gets no
response). Loading is `lifecycle.Loader`'s. Called by uvicorn via `create_app` (a factory:
nothing loads at import).
"""

from __future__ import annotations

import logging
import math
import os
import re
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from typing import Any

import orjson
import sklearn

from modeldeploy_server import binning, logs, protocol, shadow
from modeldeploy_server.errors import (
    ClientClosed,
    ContractViolation,
    MalformedRequest,
    MethodNotAllowed,
    NonFiniteOutput,
    NotFound,
    NotReady,
    PayloadTooLarge,
    RequestError,
    UnsupportedMediaType,
)
from modeldeploy_server.lifecycle import Loader
from modeldeploy_server.metrics import CONTENT_TYPE, Metrics
from modeldeploy_server.runtime import Runtime
from modeldeploy_server.service import Answer, DataPlane
from modeldeploy_server.settings import Settings

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

log = logging.getLogger("modeldeploy_server.app")
JSON = b"application/json"
OCTET_STREAM = b"application/octet-stream"
BINARY_HEADER = b"inference-header-content-length"
JSON_TYPES = (b"application/json",)


@dataclass
class Request:
    """What a route handler gets: the path's named groups, and the body (read on demand)."""

    app: App
    scope: Scope
    receive: Receive
    params: dict[str, str]
    request_id: str
    received: bytes | None = None  # the body, once read (a shadow step mirrors it)
    json_length: int | None = None  # binary tensor extension: the JSON header's length

    def header(self, name: bytes) -> bytes | None:
        for key, value in self.scope["headers"]:
            if key == name:
                return bytes(value)
        return None

    async def body(self) -> bytes:
        limit = self.app.settings.max_body_bytes
        length = self.header(b"content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise PayloadTooLarge(f"request body of {int(length)} bytes exceeds the limit of {limit} bytes")
        chunks, size = [], 0
        while True:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientClosed("the client disconnected before its request was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise PayloadTooLarge(f"request body exceeds the limit of {limit} bytes")
            chunks.append(chunk)
            if not message.get("more_body", False):
                self.received = chunks[0] if len(chunks) == 1 else b"".join(chunks)
                return self.received


Handler = Callable[[Request], Awaitable[Answer]]


@dataclass(frozen=True)
class Route:
    methods: frozenset[str]
    pattern: re.Pattern[str]
    handler: Handler
    counted: bool = False  # an inference route: every request is counted in the metrics

    @property
    def allow(self) -> bytes:
        return ", ".join(sorted(self.methods)).encode()


def _ok(body: bytes) -> Answer:
    return Answer(body)


async def live(request: Request) -> Answer:
    return _ok(b'{"live":true}')


async def root(request: Request) -> Answer:  # the kserve v1 client's is_server_live
    return _ok(b'{"status":"alive"}')


async def server_ready(request: Request) -> Answer:
    if not request.app.plane.ready:
        raise NotReady(request.app.loader.not_ready_reason())
    return _ok(b'{"ready":true}')


async def server_metadata(request: Request) -> Answer:
    return _ok(request.app.plane.server_metadata())


async def metrics(request: Request) -> Answer:
    return Answer(request.app.metrics.render(), headers=[(b"content-type", CONTENT_TYPE.encode())])


async def model_metadata(request: Request) -> Answer:
    return _ok(request.app.plane.model_metadata(request.params["name"], request.params.get("version")))


async def model_ready(request: Request) -> Answer:
    name = request.params["name"]
    if not request.app.plane.model_ready(name, request.params.get("version")):
        raise NotReady(f"model {name!r} is not ready")
    return _ok(orjson.dumps({"name": name, "ready": True}))


def _content_type(request: Request, binary: bool) -> None:
    value = request.header(b"content-type")
    if value is None:
        return
    media = value.split(b";", 1)[0].strip().lower()
    if media in JSON_TYPES or (media.startswith(b"application/") and media.endswith(b"+json")):
        return
    if binary and media == OCTET_STREAM:
        return
    allowed = "application/json" + (" or application/octet-stream" if binary else "")
    raise UnsupportedMediaType(f"Content-Type {value[:64].decode('latin-1')!r} is not supported; send {allowed}")


async def infer(request: Request) -> Answer:
    plane, name = request.app.plane, request.params["name"]
    plane.check_model(name, request.params.get("version"))
    header = request.header(BINARY_HEADER)
    json_length = None
    if header is not None:
        if not header.isdigit() or len(header) > 12:
            raise MalformedRequest(f"Inference-Header-Content-Length {header[:24].decode('latin-1')!r} is not a size")
        json_length = request.json_length = int(header)
    _content_type(request, json_length is not None)
    body = await request.body()
    return await plane.infer_v2(name, body, json_length, request.request_id)


async def predict(request: Request) -> Answer:
    plane, name = request.app.plane, request.params["name"]
    plane.check_model(name)
    _content_type(request, False)
    return await plane.predict_v1(name, await request.body())


async def model_ready_v1(request: Request) -> Answer:  # the kserve v1 client's is_model_ready
    name = request.params["name"]
    plane = request.app.plane
    plane.check_model(name)
    if not plane.ready:
        raise NotReady(f"model {name!r} is not ready")
    return _ok(orjson.dumps({"name": name, "ready": True}))


async def shadow_config(request: Request) -> Answer:
    """Stable's side of a shadow step: the operator says where to mirror, how much, until when."""
    app = request.app
    shadow.authorize(app.shadow_token, request.header(b"authorization"))
    payload = protocol.decode(await request.body())
    if not isinstance(payload, dict):
        raise MalformedRequest("shadow config: the body must be a JSON object")
    config = shadow.Config.parse(payload, time.time())
    app.shadow_store.write(config)
    answer = {"percent": config.percent, "targets": config.targets, "expiresAt": config.expires_at}
    return _ok(orjson.dumps(answer))


async def shadow_compare(request: Request) -> Answer:
    """The canary's side: answer a request stable answered, compare, count. 200 whatever the canary said."""
    app = request.app
    shadow.authorize(app.shadow_token, request.header(b"authorization"))
    body = await request.body()
    size = shadow.header_int(request.header(shadow.H_REQUEST_LENGTH), "x-modeldeploy-shadow-request-length")
    if size > len(body):
        raise MalformedRequest(f"shadow compare: request length {size} exceeds the body's {len(body)} bytes")
    stable_y = shadow.decode_answer(body[size:])
    stable_revision = (request.header(shadow.H_STABLE) or b"unknown").decode("latin-1")[:64]
    try:
        tolerance = float(request.header(shadow.H_TOLERANCE) or b"0")
    except ValueError:
        raise MalformedRequest("shadow compare: x-modeldeploy-shadow-tolerance is not a number") from None
    try:
        cap = float(request.header(shadow.H_CAP) or b"1")
    except ValueError:
        cap = math.nan
    if not 0 < cap < math.inf:
        raise MalformedRequest("shadow compare: x-modeldeploy-shadow-diff-cap must be a number > 0")
    limit = min(shadow.header_int(request.header(shadow.H_LOG), "x-modeldeploy-shadow-log", 0), 1000)
    json_header = request.header(shadow.H_JSON_LENGTH)
    json_length = None if json_header is None else shadow.header_int(json_header, "x-modeldeploy-shadow-json-length")
    try:
        x, y = await app.plane.mirrored(request.header(shadow.H_KIND) == b"v1", body[:size], json_length)
    except RequestError as exc:
        app.comparer.failed(stable_revision, exc.status, len(stable_y), cap)
        return _ok(orjson.dumps({"rows": len(stable_y), "agreements": 0, "canaryStatus": exc.status}))
    n, k = app.comparer.paired(stable_revision, request.request_id, x, stable_y, y, tolerance, limit, cap)
    return _ok(orjson.dumps({"rows": n, "agreements": k, "canaryStatus": 200}))


GET, POST = frozenset(("GET", "HEAD")), frozenset(("POST",))
_MODEL = r"/v2/models/(?P<name>[^/]+)(?:/versions/(?P<version>[^/]+))?"
ROUTES = (
    Route(GET, re.compile(r"/v2/health/live"), live),
    Route(GET, re.compile(r"/v2/health/ready"), server_ready),
    Route(GET, re.compile(r"/v2/?"), server_metadata),
    Route(GET, re.compile(r"/metrics"), metrics),
    Route(GET, re.compile(_MODEL), model_metadata),
    Route(GET, re.compile(_MODEL + r"/ready"), model_ready),
    Route(POST, re.compile(_MODEL + r"/infer"), infer, counted=True),
    Route(POST, re.compile(r"/v1/models/(?P<name>[^/:]+):predict"), predict, counted=True),
    Route(GET, re.compile(r"/v1/models/(?P<name>[^/:]+)"), model_ready_v1),
    Route(POST, re.compile(shadow.CONFIG_PATH), shadow_config),
    Route(POST, re.compile(shadow.COMPARE_PATH), shadow_compare),
    Route(GET, re.compile(r"/"), root),
)


def route(method: str, path: str) -> tuple[Route, dict[str, str]]:
    """The route for a request; 405 (with `Allow`) when only the method is wrong, else 404."""
    for candidate in ROUTES:
        match = candidate.pattern.fullmatch(path)
        if match is not None:
            if method not in candidate.methods:
                raise MethodNotAllowed(f"{method[:16]} {path[:256]}: use {candidate.allow.decode()}",
                                       headers=((b"allow", candidate.allow),))  # fmt: skip
            return candidate, {k: v for k, v in match.groupdict().items() if v is not None}
    raise NotFound(f"no route for {method[:16]} {path[:256]}")


class App:
    """The ASGI callable: HTTP requests through `ROUTES`, lifespan messages to the `Loader`."""

    def __init__(self, settings: Settings, runtime: Runtime | None = None, load_before_serving: bool = False) -> None:
        self.settings = settings
        self.metrics = Metrics(settings.model_name, settings.model_version, settings.model_revision)
        self.plane = DataPlane(settings, self._loaded)
        self.loader = Loader(settings, self.plane, runtime, load_before_serving)
        self.pod = settings.pod_name.encode("latin-1", "replace")
        self._counter = 0
        self._prefix = f"{os.getpid():x}-{os.urandom(3).hex()}-"
        token = settings.shadow_token
        self.shadow_token = token.get_secret_value() if token is not None else None
        shadow_metrics = shadow.ShadowMetrics(self.metrics)
        key = settings.pod_name or f"{settings.host}-{settings.port}-{settings.model_revision}"
        self.shadow_store = shadow.Store(key)
        self.mirror = shadow.Mirror(self.shadow_store, shadow_metrics, self.shadow_token, settings.model_revision,
                                    settings.shadow_queue, settings.shadow_timeout_seconds)  # fmt: skip
        self.comparer = shadow.Comparer(shadow_metrics)

    def _loaded(self, runtime: Runtime) -> None:
        self.metrics.set_info(runtime.sha256, runtime.format, sklearn.__version__)
        c, profile = runtime.contract, runtime.profile
        ranges = [(s.min, s.max) for s in c.specs]
        self.metrics.set_layout(binning.layout(c.names, ranges, runtime.classes, runtime.method, profile),
                                {k: v.proportions for k, v in profile.features.items()} if profile else None)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            await self.http(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.loader.lifespan(receive, send)

    def _request_id(self, scope: Scope) -> str:
        for key, value in scope["headers"]:
            if key == b"x-request-id" and 0 < len(value) <= 128 and value.isascii() and value.decode().isprintable():
                return str(value.decode())
        self._counter += 1
        return f"{self._prefix}{self._counter:x}"

    async def http(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        request_id = self._request_id(scope)
        counted, status, rows = True, 500, 0
        headers: list[tuple[bytes, bytes]] = []
        mirrored: tuple[shadow.Config, shadow.Item] | None = None
        try:
            found, params = route(scope["method"], scope["path"])
            counted = found.counted
            request = Request(self, scope, receive, params, request_id)
            answer = await found.handler(request)
            if counted and answer.y is not None and request.received is not None:
                config = self.mirror.wanted()
                if config is not None:
                    item = shadow.Item(request_id, found.handler is predict, request.received, request.json_length,
                                       answer.y)  # fmt: skip
                    mirrored = (config, item)
            status, body, rows, headers = 200, answer.body, answer.rows, answer.headers
            if answer.y is not None and answer.x is not None:
                self.metrics.predicted(answer.x, answer.y)
            if answer.json_length is not None:
                headers = [(b"content-type", OCTET_STREAM), (BINARY_HEADER, str(answer.json_length).encode())]
            if self.settings.access_log:
                log.info("request", extra={"fields": self._fields(scope, request_id, status, started)})
        except ClientClosed:
            status = ClientClosed.status
            return  # nobody to answer
        except RequestError as exc:
            status, body, headers = exc.status, orjson.dumps({"error": exc.message}), list(exc.headers)
            if isinstance(exc, ContractViolation):
                self.metrics.reject(exc.reason)
            elif isinstance(exc, NonFiniteOutput):
                self.metrics.nonfinite(exc.rows)
            self._log_refusal(scope, request_id, exc, started)
        except Exception:  # a bug, never the client's fault: 500, logged with its traceback
            log.exception("internal error", extra={"fields": {"request_id": request_id, "path": scope["path"][:256]}})
            body = orjson.dumps({"error": "internal server error"})
        finally:
            if counted:  # the one place a request's outcome is recorded
                self.metrics.observe(status, time.perf_counter() - started, rows)
        if not any(key == b"content-type" for key, _ in headers):
            headers.append((b"content-type", JSON))
        headers += [(b"content-length", str(len(body)).encode()), (b"x-request-id", request_id.encode()),
                    (b"x-modeldeploy-pod", self.pod)]  # fmt: skip
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
        if mirrored is not None:  # after the user has the answer: a queue put, never a wait
            self.mirror.offer(*mirrored)

    def _fields(self, scope: Scope, request_id: str, status: int, started: float) -> dict[str, Any]:
        duration_ms = round((time.perf_counter() - started) * 1000, 3)
        return {"request_id": request_id, "method": scope["method"][:16], "path": scope["path"][:256],
                "status": status, "duration_ms": duration_ms, "pod": self.settings.pod_name}  # fmt: skip

    def _log_refusal(self, scope: Scope, request_id: str, exc: RequestError, started: float) -> None:
        fields = self._fields(scope, request_id, exc.status, started)
        fields["error"] = exc.message
        fields["reason"] = getattr(exc, "reason", None)
        if exc.status == 503:  # not ready yet / draining: expected, and probes ask every few seconds
            level = logging.DEBUG if scope["path"].endswith("/ready") else logging.WARNING
        else:
            level = logging.ERROR if exc.status >= 500 else logging.INFO
        log.log(level, "refused", extra={"fields": fields})


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
