"""Shadow steps: stable mirrors a share of what it answered to the canary, which compares answers.

Owned here, both sides of it:

- **Stable** (`Mirror`): the operator's control call (`POST /shadow/v1/config`: targets, percent,
  canary revision, tolerance, log count, time to live) is written to a small file in the pod's
  /tmp (so every worker process sees it; it expires by itself, so a dead operator ends the
  shadow). After a user's request has been answered, a sampled `percent` of answered requests
  (the request body as received and stable's own prediction) goes into a bounded queue, drained
  by background senders with a timeout: a full queue, a timeout, an error or a refusal is counted
  (`modeldeploy_shadow_mirrored_total{canary_revision,result}`), never seen by the user.
- **Canary** (`Comparer`): `POST /shadow/v1/compare` parses the mirrored request exactly as a user
  request (same contract, same model path), predicts, and compares row by row with stable's
  answer: agreement (equal classes; numbers within the tolerance), the per-row mean absolute
  difference, each value's difference capped at the configured `diffCap` (1 when absent; the
  operator sends 10 x maxMeanAbsDiff, so regression values in any unit can be judged), its own
  errors and refusals (a disagreement for every row, and a difference of the cap). Counters per
  pair of revisions (`revision` is the canary's own, `stable_revision` the sender's); at most the
  configured number of disagreements is logged (input row, both answers).

Both endpoints need `Authorization: Bearer <MODELDEPLOY_SHADOW_TOKEN>` (the ModelDeployment's own
token; the server has none: both refuse with 403), compared in constant time. They are not user
traffic: never counted in `modeldeploy_requests_total`.
"""

from __future__ import annotations

import asyncio
import hmac
import io
import json
import logging
import math
import os
import random
import tempfile
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from prometheus_client import Counter, Histogram

from modeldeploy_server.errors import Forbidden, MalformedRequest, RequestError
from modeldeploy_server.metrics import BASE_LABELS, Metrics

log = logging.getLogger("modeldeploy_server.shadow")

MIRRORED = "modeldeploy_shadow_mirrored_total"
PAIRS = "modeldeploy_shadow_pairs_total"
AGREEMENTS = "modeldeploy_shadow_agreements_total"
ABS_DIFF = "modeldeploy_shadow_abs_diff_total"
FAILURES = "modeldeploy_shadow_canary_failures_total"
ABS_DIFF_ROWS = "modeldeploy_shadow_row_abs_diff"
RESULTS = ("sent", "queue_full", "timeout", "error", "refused")
DIFF_BUCKETS = (0.0, 1e-9, 1e-6, 1e-4, 1e-3, 0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0, 100.0, 1e3, 1e4, 1e6)
FAILURE_CODES = ("400", "413", "422", "500", "503")
CONFIG_PATH, COMPARE_PATH = "/shadow/v1/config", "/shadow/v1/compare"
H_KIND, H_STABLE, H_TOLERANCE, H_LOG, H_CAP = (
    b"x-modeldeploy-shadow-" + k for k in (b"kind", b"stable-revision", b"tolerance", b"log", b"diff-cap")
)
H_REQUEST_LENGTH, H_JSON_LENGTH = b"x-modeldeploy-shadow-request-length", b"x-modeldeploy-shadow-json-length"
MAX_TTL_SECONDS = 600


@dataclass(frozen=True)
class Config:
    """What the operator asked this stable pod to do (percent 0: nothing)."""

    targets: tuple[str, ...]  # http://<canary pod address>:<port>, one chosen at random per mirrored request
    percent: float
    canary_revision: str
    tolerance: float = 0.0
    log_disagreements: int = 0
    expires_at: float = 0.0
    diff_cap: float = 1.0  # each value's absolute difference counts at most this much

    @classmethod
    def parse(cls, body: Mapping[str, Any], now: float) -> Config:
        """From the control call's JSON; a clear 400 naming the field otherwise."""

        def get(key: str, kind: type | tuple[type, ...], default: Any = None) -> Any:
            value = body.get(key, default)
            if value is None or isinstance(value, bool) or not isinstance(value, kind):
                raise MalformedRequest(f"shadow config: {key} must be {getattr(kind, '__name__', 'a number')}, "
                                       f"got {str(value)[:64]!r}")  # fmt: skip
            return value

        targets = get("targets", list)
        if len(targets) > 64 or not all(_address(t) for t in targets) or (not targets and body.get("percent")):
            raise MalformedRequest(f"shadow config: targets must be 1-64 http://host:port addresses (none only "
                                   f"with percent 0), got "
                                   f"{str(targets)[:128]}")  # fmt: skip
        percent = float(get("percent", (int, float)))
        ttl = float(get("ttlSeconds", (int, float)))
        tolerance = float(get("tolerance", (int, float), 0.0))
        log_count = get("logDisagreements", int, 0)
        revision = get("canaryRevision", str)
        cap = float(get("diffCap", (int, float), 1.0))
        if not 0 <= percent <= 100 or not 0 < ttl <= MAX_TTL_SECONDS or tolerance < 0 or not 0 <= log_count <= 1000:
            raise MalformedRequest(
                f"shadow config: percent {percent:g} (0-100), ttlSeconds {ttl:g} (0-{MAX_TTL_SECONDS}], "
                f"tolerance {tolerance:g} (>= 0), logDisagreements {log_count} (0-1000): out of range"
            )
        if not 0 < cap < math.inf:
            raise MalformedRequest(f"shadow config: diffCap {cap:g} must be a number > 0")
        return cls(tuple(targets), percent, revision[:64], tolerance, log_count, now + ttl, cap)


def _address(target: Any) -> bool:
    """http://host:port and nothing else (no path, query, credentials or whitespace)."""
    if not isinstance(target, str) or not target.startswith("http://") or len(target) > 256:
        return False
    rest = target.removeprefix("http://")
    return bool(rest) and not any(c in rest for c in " \r\n\t/?#@\\")


def authorize(token: str | None, header: bytes | None) -> None:
    """403 unless the request carries this ModelDeployment's token (constant-time comparison)."""
    if not token:
        raise Forbidden("shadow endpoints are off: this server has no MODELDEPLOY_SHADOW_TOKEN")
    expected = b"Bearer " + token.encode()
    if header is None or not hmac.compare_digest(header, expected):
        raise Forbidden("shadow endpoint: missing or wrong bearer token")


class Store:
    """The current config in a file every worker of the pod reads (re-read when it changes)."""

    def __init__(self, key: str, directory: str | None = None) -> None:
        safe = "".join(c if c.isalnum() or c in "-_." else "_" for c in key)[:128] or "server"
        self.path = Path(directory or tempfile.gettempdir()) / f"modeldeploy-shadow-{safe}.json"
        self._seen: tuple[float, Config | None] = (-1.0, None)
        self._checked = 0.0

    def write(self, config: Config) -> None:
        tmp = self.path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(asdict(config)))
        os.replace(tmp, self.path)
        self._checked = 0.0

    def current(self, now: float) -> Config | None:
        if now - self._checked >= 0.5:  # a stat at most twice a second per worker
            self._checked = now
            try:
                mtime = self.path.stat().st_mtime
            except FileNotFoundError:
                self._seen = (-1.0, None)
            else:
                if mtime != self._seen[0]:
                    try:
                        raw = json.loads(self.path.read_text())
                        self._seen = (mtime, Config(**{**raw, "targets": tuple(raw["targets"])}))
                    except (OSError, ValueError, TypeError):
                        self._seen = (mtime, None)
        config = self._seen[1]
        return config if config is not None and config.expires_at > now and config.percent > 0 else None


def encode_answer(y: npt.NDArray[Any]) -> bytes:
    """Stable's prediction as .npy bytes (strings as unicode: nothing needs pickle to read it)."""
    out = io.BytesIO()
    np.save(out, y.astype(str) if y.dtype.kind == "O" else y, allow_pickle=False)
    return out.getvalue()


def decode_answer(data: bytes) -> npt.NDArray[Any]:
    try:
        return np.asarray(np.load(io.BytesIO(data), allow_pickle=False))
    except (ValueError, OSError, EOFError) as exc:
        raise MalformedRequest(f"shadow compare: stable's answer is not a .npy array ({exc})") from None


def compare(
    stable: npt.NDArray[Any], canary: npt.NDArray[Any], tolerance: float, cap: float = 1.0
) -> tuple[npt.NDArray[Any], ...]:
    """Per row: agreed (bool) and the mean absolute difference over its values, each capped at `cap`
    (labels: the share of values that differ; another shape: `cap` for every row)."""
    rows = len(stable)
    if canary.shape != stable.shape:  # another number of classes or outputs: nothing agrees
        return np.zeros(rows, dtype=bool), np.full(rows, cap)
    s, c = stable.reshape(rows, -1), canary.reshape(rows, -1)
    if s.dtype.kind in "fiub" and c.dtype.kind in "fiub":
        diff = np.abs(s.astype(np.float64) - c.astype(np.float64))
        exact = s.dtype.kind in "iub" and c.dtype.kind in "iub"  # classes: equal or not
        agreed = np.all(diff == 0 if exact else diff <= tolerance, axis=1)
        return agreed, np.minimum(diff, cap).mean(axis=1)
    same = s.astype(str) == c.astype(str)
    return np.all(same, axis=1), 1.0 - same.mean(axis=1)


class ShadowMetrics:
    """The shadow families, with the server's model labels bound (multiprocess-safe like `Metrics`)."""

    def __init__(self, metrics: Metrics) -> None:
        reg = None if metrics.multiprocess else metrics.registry
        self.base = metrics.base
        pair = (*BASE_LABELS, "stable_revision")
        self.mirrored = Counter(MIRRORED.removesuffix("_total"), "Answered requests mirrored to a canary in a "
                                "shadow step, by result (sent, or dropped: queue_full, timeout, error, refused).",
                                (*BASE_LABELS, "canary_revision", "result"), registry=reg)  # fmt: skip
        self.pairs = Counter(PAIRS.removesuffix("_total"), "Mirrored rows answered here and paired with stable's "
                             "answer (shadow step).", pair, registry=reg)  # fmt: skip
        self.agreements = Counter(AGREEMENTS.removesuffix("_total"), "Mirrored rows answered as stable did.", pair,
                                  registry=reg)  # fmt: skip
        self.abs_diff = Counter(ABS_DIFF.removesuffix("_total"), "Sum over mirrored rows of the mean absolute "
                                "difference from stable's answer (each difference capped at the step's diffCap).", pair,
                                registry=reg)  # fmt: skip
        self.failures = Counter(FAILURES.removesuffix("_total"), "Mirrored requests this canary refused or failed, "
                                "by HTTP status.", (*pair, "code"), registry=reg)  # fmt: skip
        self.row_diff = Histogram(ABS_DIFF_ROWS, "Per mirrored row: mean absolute difference from stable's answer "
                                  "(each difference capped at the step's diffCap).", pair, buckets=DIFF_BUCKETS,
                                  registry=reg)  # fmt: skip
        self._canaries: set[str] = set()
        self._stables: set[str] = set()

    def sent(self, canary_revision: str, result: str) -> None:
        if canary_revision not in self._canaries:  # every result from 0: increase() sees the first drop
            self._canaries.add(canary_revision)
            for r in RESULTS:
                self.mirrored.labels(*self.base, canary_revision, r)
        self.mirrored.labels(*self.base, canary_revision, result).inc()

    def stable(self, revision: str) -> tuple[Any, ...]:
        if revision not in self._stables:
            self._stables.add(revision)
            for code in FAILURE_CODES:
                self.failures.labels(*self.base, revision, code)
        return (*self.base, revision)


@dataclass(frozen=True)
class Item:
    request_id: str
    v1: bool
    body: bytes
    json_length: int | None
    y: npt.NDArray[Any]


class Connections:
    """A minimal HTTP/1.1 client for the mirror: one keep-alive connection per sender and target,
    Content-Length bodies only (what the server answers). A user request shares the event loop with
    the senders, so a general client's per-request work (httpx: about 1 ms of CPU) would be theirs too."""

    def __init__(self) -> None:
        self.idle: dict[str, list[tuple[asyncio.StreamReader, asyncio.StreamWriter]]] = {}

    async def post(self, target: str, path: str, headers: list[tuple[str, str]], body: bytes) -> int:
        pool = self.idle.setdefault(target, [])
        if pool:
            try:
                return await self._post(target, pool.pop(), path, headers, body)
            except (ConnectionError, IndexError, ValueError, asyncio.IncompleteReadError):
                pass  # the server closed the idle connection: once more on a new one
        host, _, port = target.removeprefix("http://").rpartition(":")
        return await self._post(target, await asyncio.open_connection(host, int(port)), path, headers, body)

    async def _post(self, target: str, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter], path: str,
                    headers: list[tuple[str, str]], body: bytes) -> int:  # fmt: skip
        reader, writer = conn
        host = target.removeprefix("http://")
        pool = self.idle.setdefault(target, [])
        try:
            head = f"POST {path} HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"
            head += "".join(f"{k}: {v}\r\n" for k, v in headers) + "\r\n"
            writer.write(head.encode("latin-1") + body)
            await writer.drain()
            status = int((await reader.readline()).split(b" ", 2)[1])
            length, keep = 0, True
            while (line := await reader.readline()) not in (b"\r\n", b"\n", b""):
                name, _, value = line.partition(b":")
                key = name.strip().lower()
                if key == b"content-length":
                    length = int(value.strip())
                elif key == b"connection" and value.strip().lower() == b"close":
                    keep = False
            await reader.readexactly(length)
        except BaseException:
            writer.close()
            raise
        if keep:
            pool.append((reader, writer))
        else:
            writer.close()
        return status

    def close(self) -> None:
        for pool in self.idle.values():
            for _, writer in pool:
                writer.close()
        self.idle.clear()


class Mirror:
    """Stable's side: sampling, the bounded queue and the background senders."""

    def __init__(self, store: Store, metrics: ShadowMetrics, token: str | None, revision: str, queue_size: int,
                 timeout: float, senders: int = 4) -> None:  # fmt: skip
        self.store, self.metrics, self.token, self.revision = store, metrics, token, revision
        self.queue_size, self.timeout, self.senders = queue_size, timeout, senders
        self.queue: asyncio.Queue[tuple[Config, Item]] | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.connections: list[Connections] = []

    def wanted(self) -> Config | None:
        """The config when this answered request is in the sampled share, else None (cheap: one random draw)."""
        if not self.token:
            return None
        config = self.store.current(time.time())
        if config is None or random.random() * 100 >= config.percent:
            return None
        return config

    def offer(self, config: Config, item: Item) -> None:
        if self.queue is None:
            self.queue = asyncio.Queue(self.queue_size)
            self.connections = [Connections() for _ in range(self.senders)]
            self.tasks = [asyncio.create_task(self._send_loop(c)) for c in self.connections]
        try:
            self.queue.put_nowait((config, item))
        except asyncio.QueueFull:
            self.metrics.sent(config.canary_revision, "queue_full")

    async def _send_loop(self, connections: Connections) -> None:
        assert self.queue is not None
        while True:
            config, item = await self.queue.get()
            try:
                result = await asyncio.wait_for(self._send(connections, config, item), self.timeout)
            except asyncio.CancelledError:
                raise
            except TimeoutError:
                result = "timeout"
            except Exception as exc:  # the canary is down or unreachable: a counted drop
                log.debug("mirror failed", extra={"fields": {"error": str(exc)[:200]}})
                result = "error"
            self.metrics.sent(config.canary_revision, result)

    async def _send(self, connections: Connections, config: Config, item: Item) -> str:
        headers = [
            ("authorization", f"Bearer {self.token}"), ("x-request-id", item.request_id),
            (H_KIND.decode(), "v1" if item.v1 else "v2"), (H_STABLE.decode(), self.revision),
            (H_TOLERANCE.decode(), repr(config.tolerance)), (H_LOG.decode(), str(config.log_disagreements)),
            (H_CAP.decode(), repr(config.diff_cap)),
            (H_REQUEST_LENGTH.decode(), str(len(item.body))), ("content-type", "application/octet-stream"),
        ]  # fmt: skip
        if item.json_length is not None:
            headers.append((H_JSON_LENGTH.decode(), str(item.json_length)))
        body = item.body + encode_answer(item.y)
        status = await connections.post(random.choice(config.targets), COMPARE_PATH, headers, body)
        if status in (401, 403):
            return "refused"
        return "sent" if status < 300 else "error"

    async def close(self) -> None:
        for task in self.tasks:
            task.cancel()
        for connections in self.connections:
            connections.close()


class Comparer:
    """The canary's side: counters per stable revision, and the bounded disagreement log."""

    def __init__(self, metrics: ShadowMetrics) -> None:
        self.metrics = metrics
        self.logged = 0

    def failed(self, stable_revision: str, code: int, rows: int, cap: float = 1.0) -> None:
        labels = self.metrics.stable(stable_revision)
        self.metrics.failures.labels(*labels, str(code)).inc()
        if code != 503:  # not ready (draining): no answer of this canary's to compare, not a disagreement
            self.metrics.pairs.labels(*labels).inc(rows)
            self.metrics.abs_diff.labels(*labels).inc(rows * cap)

    def paired(self, stable_revision: str, request_id: str, x: npt.NDArray[Any], stable: npt.NDArray[Any],
               canary: npt.NDArray[Any], tolerance: float, log_limit: int,
               cap: float = 1.0) -> tuple[int, int]:  # fmt: skip
        labels = self.metrics.stable(stable_revision)
        agreed, diffs = compare(stable, canary, tolerance, cap)
        n, k = len(agreed), int(agreed.sum())
        self.metrics.pairs.labels(*labels).inc(n)
        self.metrics.agreements.labels(*labels).inc(k)
        self.metrics.abs_diff.labels(*labels).inc(float(diffs.sum()))
        hist = self.metrics.row_diff.labels(*labels)
        for d in diffs.tolist():
            hist.observe(d)
        if k < n and self.logged < log_limit:
            for row in np.nonzero(~agreed)[0][: log_limit - self.logged].tolist():
                self.logged += 1
                same_shape = canary.shape == stable.shape
                log.warning("shadow disagreement", extra={"fields": {
                    "request_id": request_id, "row": row, "input": np.asarray(x[row]).tolist(),
                    "stable": np.asarray(stable[row]).tolist(),
                    "canary": np.asarray(canary[row]).tolist() if same_shape else np.asarray(canary).tolist()[:8],
                    "stable_revision": stable_revision}})  # fmt: skip
        return n, k


def header_int(value: bytes | None, name: str, default: int | None = None) -> int:
    if value is None and default is not None:
        return default
    if value is None or not value.isdigit() or len(value) > 12:
        raise MalformedRequest(f"shadow compare: header {name} must be a size")
    return int(value)


def compare_error(exc: RequestError) -> int:
    return exc.status
