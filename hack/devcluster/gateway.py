"""The gateway stand-in: an asyncio HTTP reverse proxy on 127.0.0.1 (test harness).

Owns: routing each request by its Host header through the current endpoints.Table (HTTPRoute
hostnames -> weighted Services; else `<svc>.<ns>[.svc[.cluster.local]]` -> that Service), round
robin over ready endpoints, one retry on a connection error to another endpoint, JSON errors
(404 unknown host, 503 no ready endpoint). Called by harness, which swaps in a new table whenever
the API objects change (polled every few hundred milliseconds).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator

import aiohttp
from aiohttp import web

from devcluster.endpoints import Backend, Endpoint, Table, is_loopback

HOP_BY_HOP = {
    "connection", "keep-alive", "proxy-authenticate", "proxy-authorization", "te", "trailer", "trailers",
    "transfer-encoding", "upgrade", "host", "content-length",
}  # fmt: skip
MAX_BODY = 64 * 1024 * 1024
RETRYABLE = (
    aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError, aiohttp.ServerDisconnectedError,
    aiohttp.ClientOSError,
)  # fmt: skip


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers={"x-devcluster-gateway": "error"})


class Gateway:
    def __init__(self) -> None:
        self.table = Table()
        self._counters: dict[str, Iterator[int]] = {}
        self._session: aiohttp.ClientSession | None = None
        self._runner: web.AppRunner | None = None
        self.requests = 0

    async def start(self, host: str, port: int) -> None:
        connector = aiohttp.TCPConnector(limit=512, limit_per_host=128, keepalive_timeout=30, ttl_dns_cache=None)
        self._session = aiohttp.ClientSession(
            connector=connector, auto_decompress=False, timeout=aiohttp.ClientTimeout(total=60, connect=2)
        )
        app = web.Application(client_max_size=MAX_BODY)
        app.router.add_route("*", "/{tail:.*}", self.handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await web.TCPSite(self._runner, host, port, backlog=512).start()

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    def _pick_backend(self, backends: tuple[Backend, ...]) -> Backend | None:
        weighted = [b for b in backends if b.weight > 0]
        if not weighted:
            return None
        if len(weighted) == 1:
            return weighted[0]
        return random.choices(weighted, weights=[b.weight for b in weighted])[0]

    def _pick_endpoint(self, backend: Backend, avoid: Endpoint | None = None) -> Endpoint | None:
        # another endpoint when there is one; else the same again (a stale keep-alive connection
        # to a healthy pod fails once, a fresh one succeeds)
        eps = [e for e in backend.endpoints if e != avoid] or list(backend.endpoints)
        if not eps:
            return None
        counter = self._counters.setdefault(backend.service, itertools.count())
        return eps[next(counter) % len(eps)]

    def _route(self, host: str, path: str) -> tuple[Backend | None, web.Response | None]:
        backends = self.table.lookup(host, path)
        if backends is None:
            return None, _error(404, f"no route for host {host!r} (no HTTPRoute hostname, no Service <name>.<ns>)")
        backend = self._pick_backend(backends)
        if backend is None:
            return None, _error(503, f"no backend with weight > 0 for host {host!r}")
        return backend, None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        host = (request.headers.get("Host") or "").rsplit(":", 1)[0] if request.headers.get("Host") else ""
        if host.startswith("["):
            host = host.strip("[]")
        body = await request.read()
        backend, err = self._route(host, request.path)
        if err is not None or backend is None:
            return err or _error(503, "no backend")
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_BY_HOP}
        headers["X-Forwarded-Host"] = request.headers.get("Host", "")
        headers["X-Forwarded-For"] = request.remote or ""
        tried: Endpoint | None = None
        for attempt in range(2):
            if attempt == 1:  # the table may have changed under us: resolve again
                backend = self._resolve_again(host, request.path, backend)
            ep = self._pick_endpoint(backend, avoid=tried)
            if ep is None:
                return _error(503, f"no ready endpoint for service {backend.service}")
            if not is_loopback(ep.ip):  # never connect outside 127.0.0.0/8
                return _error(502, f"refusing non-loopback endpoint {ep.ip} of {backend.service}")
            tried = ep
            url = f"http://{ep.ip}:{ep.port}{request.rel_url}"
            assert self._session is not None
            try:
                async with self._session.request(request.method, url, headers=headers, data=body) as up:
                    payload = await up.read()
                    out = web.Response(status=up.status, body=payload)
                    for k, v in up.headers.items():
                        if k.lower() not in HOP_BY_HOP:
                            out.headers.add(k, v)
                    out.headers["x-devcluster-pod"] = ep.pod
                    out.headers["x-devcluster-service"] = backend.service
                    return out
            except RETRYABLE as e:  # not connected, or a kept-alive connection closed under us
                if attempt == 1:
                    return _error(502, f"upstream {ep.pod} ({ep.ip}:{ep.port}) failed: {e.__class__.__name__}: {e}")
            except TimeoutError as e:  # no retry: the request may have been processed
                return _error(504, f"upstream {ep.pod} ({ep.ip}:{ep.port}) timed out: {e.__class__.__name__}")
            except aiohttp.ClientError as e:
                return _error(502, f"upstream {ep.pod} ({ep.ip}:{ep.port}) failed: {e.__class__.__name__}: {e}")
        return _error(502, "unreachable")

    def _resolve_again(self, host: str, path: str, previous: Backend) -> Backend:
        backend, _ = self._route(host, path)
        if backend is not None and backend.service == previous.service:
            return backend
        return previous if backend is None else backend
