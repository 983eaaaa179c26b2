"""The operator's own Prometheus metrics and its /metrics + /healthz listener.

`handlers` records into these after each tick; `__main__` starts the listener. prometheus_client's
default registry, so process CPU and memory come along.
"""

from __future__ import annotations

import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from prometheus_client import CONTENT_TYPE_LATEST, Counter, Gauge, Histogram, generate_latest

ROLLOUTS = Counter(
    "modeldeploy_operator_rollouts_total", "Rollouts finished, by outcome.", ["namespace", "name", "outcome"]
)
BATCH_RUNS = Counter(
    "modeldeploy_operator_batch_runs_total",
    "Batch scoring runs finished, by outcome.",
    ["namespace", "name", "outcome"],
)
CANARY_WEIGHT = Gauge("modeldeploy_operator_canary_weight", "Current canary traffic percent.", ["namespace", "name"])
ANALYSES = Counter(
    "modeldeploy_operator_analysis_total", "Canary checks run, by verdict.", ["namespace", "name", "verdict"]
)
RECONCILE_ERRORS = Counter(
    "modeldeploy_operator_reconcile_errors_total", "Ticks that failed, by error kind.", ["namespace", "name", "error"]
)
TICK_SECONDS = Histogram(
    "modeldeploy_operator_reconcile_duration_seconds",
    "Duration of one reconcile tick.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)
MALLOC_TRIM_SECONDS = Histogram(
    "modeldeploy_operator_malloc_trim_seconds",
    "Duration of each hand-back of glibc's free heap pages to the kernel (MODELDEPLOY_OPERATOR_MALLOC_TRIM_SECONDS).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25),
)
SHADOW_CONTROL_CALLS = Counter(
    "modeldeploy_operator_shadow_control_calls_total",
    "Control calls to stable pods during shadow steps, by result (ok, http-<code>, unreachable).",
    ["result"],
)
LAST_TICK = Gauge("modeldeploy_operator_last_tick_timestamp_seconds", "Unix time of the last completed tick.")
TICK_LAG = Histogram(
    "modeldeploy_operator_tick_lag_seconds",
    "How much later than one period after its previous tick an object's tick started.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 3, 5, 7.5, 10, 15, 20, 30, 60, 120),
)
API_REQUESTS = Counter(
    "modeldeploy_operator_api_requests_total", "Kubernetes API requests sent by the operator's ticks.", ["verb"]
)
INPUT_DRIFT = Gauge(
    "modeldeploy_operator_input_drift",
    "Stable revision: each input feature's total-variation distance from the reference profile over the drift window.",
    ["namespace", "name", "feature"],
)
INPUT_DRIFTED = Gauge(
    "modeldeploy_operator_input_drifted",
    "1 for each feature the InputDrift=True condition names (a sustained drift of the stable revision), else 0.",
    ["namespace", "name", "feature"],
)


class Health:
    """Liveness: kopf's startup ran, and every object's ticks keep completing.

    Per object: the time of its last completed tick (`tick`) and its last failure (`failed`).
    An object whose last completed tick is older than `stale_after` (its timer died, a call hangs,
    or every tick fails) makes /healthz fail, naming it and why.
    """

    def __init__(self) -> None:
        self.started = False
        self.last: dict[tuple[str, str], float] = {}
        self.errors: dict[tuple[str, str], str] = {}
        self.stale_after = 30.0
        self.lock = threading.Lock()

    def tick(self, namespace: str, name: str) -> None:
        with self.lock:
            self.last[(namespace, name)] = time.time()
            self.errors.pop((namespace, name), None)

    def failed(self, namespace: str, name: str, why: str) -> None:
        with self.lock:
            self.last.setdefault((namespace, name), time.time())  # late from its first failed tick
            self.errors[(namespace, name)] = why

    def forget(self, namespace: str, name: str) -> None:
        with self.lock:
            self.last.pop((namespace, name), None)
            self.errors.pop((namespace, name), None)
        forget_series(namespace, name)

    def problem(self) -> str | None:
        if not self.started:
            return "starting: kopf's startup has not finished"
        now = time.time()
        with self.lock:
            late = sorted((t, key) for key, t in self.last.items() if now - t > self.stale_after)
            errors = dict(self.errors)
        if not late:
            return None
        shown = []
        for t, (ns, name) in late[:5]:
            why = f": {errors[(ns, name)]}" if (ns, name) in errors else ""
            shown.append(f"{ns}/{name} ({now - t:.0f}s{why})")
        more = f" and {len(late) - 5} more" if len(late) > 5 else ""
        return f"no completed reconcile tick for over {self.stale_after:.0f}s: {', '.join(shown)}{more}"


def forget_series(namespace: str, name: str) -> None:
    """Drop every per-object series of a deleted ModelDeployment (no label leak)."""
    for metric in (ROLLOUTS, CANARY_WEIGHT, ANALYSES, RECONCILE_ERRORS, INPUT_DRIFT, INPUT_DRIFTED):
        names = metric._labelnames
        for values in list(metric._metrics):
            got = dict(zip(names, values, strict=True))
            if got.get("namespace") == namespace and got.get("name") == name:
                metric.remove(*values)


HEALTH = Health()


class _Handler(BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        if self.path.split("?", 1)[0] == "/metrics":
            body, ctype, code = generate_latest(), CONTENT_TYPE_LATEST, 200
        elif self.path.split("?", 1)[0] == "/healthz":
            problem = HEALTH.problem()
            body = (problem or "ok").encode() + b"\n"
            ctype, code = "text/plain; charset=utf-8", 503 if problem else 200
        else:
            body, ctype, code = b"not found\n", "text/plain; charset=utf-8", 404
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 (http.server's signature)
        return


def serve(host: str, port: int) -> ThreadingHTTPServer:
    """Start the listener in a daemon thread; returns the server (its port when `port` was 0)."""
    server = ThreadingHTTPServer((host, port), _Handler)
    threading.Thread(target=server.serve_forever, name="metrics", daemon=True).start()
    return server
