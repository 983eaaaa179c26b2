"""Generic pieces of the demo and of the end-to-end tests: real models, their store, traffic, the operator.

- `train_models(folder)`: real scikit-learn classifiers on the wine data that ships with
  scikit-learn, saved as joblib with their SHA-256: `v1`, `v2`, `v3` (good; three revisions),
  `bad` (a log(|x|) feature step: a reading of exactly 0.0, which the input contract allows,
  becomes -inf and the classifier raises, so the server answers 500 on those rows) and `slow`
  (sleeps `SLOW_SECONDS` on the same rows, inside a FeatureUnion branch built only from numpy and
  the standard library). The server's load-time probes (mid-range, bounds, random rows) never hit
  0.0 exactly, so both load, self-check and turn ready, like a real subtly broken model.
- `rows(...)`, `invalid_instance(...)`: request rows (valid, zero-reading, contract-breaking).
- `publish_models(env)`: the models trained into the cluster's MODEL_STORE_DIR, the folder its
  model store Service serves at MODEL_STORE_URL (where the server pods fetch them).
- `ArtifactServer` (a thread): a model store on 127.0.0.1 for servers run as local processes.
- `Traffic`: bounded concurrent requests through the gateway, every answer kept with its latency
  and the phase it belongs to; `stats()` gives requests, 2xx, 4xx, 5xx, connection errors, p99.
- `Operator`: `modeldeploy-operator` as a process (tick, scale-down delay, namespaces), killable
  with SIGKILL and restarted with the same settings, with its RSS and CPU seconds read from /proc
  (`modeldeploy_demo.incluster.ChartOperator`: the same interface for the chart's operator pod).

Called by `modeldeploy_demo.__main__` and `tests/e2e/`.
"""

from __future__ import annotations

import functools
import hashlib
import http.server
import math
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
from sklearn.datasets import load_wine
from sklearn.dummy import DummyClassifier
from sklearn.ensemble import RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import FeatureUnion, make_pipeline
from sklearn.preprocessing import FunctionTransformer, StandardScaler

# the harness's port picker and poller, re-exported: the demo and tests/e2e import them from here
from devcluster.procs import free_port as free_port
from devcluster.procs import wait_for as wait_for

BIN = Path(sys.executable).parent
# load_wine's feature names, with '/' (not allowed in a contract name) replaced
FEATURES = tuple(n.replace("od280/od315_of_diluted_wines", "od280_od315") for n in load_wine().feature_names)
ZERO_FEATURE = 1  # malic_acid: the reading that is exactly 0.0 in the rows that break `bad` and `slow`
SLOW_SECONDS = 0.6
NULL = -999.0


def _contract() -> list[dict[str, Any]]:
    """Bounds half a range wider than the training data on each side; -999 means 'no reading'."""
    x = load_wine().data
    lo, hi = x.min(axis=0), x.max(axis=0)
    span = hi - lo
    return [
        {"name": n, "min": round(float(a - s / 2), 3), "max": round(float(b + s / 2), 3), "nullValues": [NULL]}
        for n, a, b, s in zip(FEATURES, lo, hi, span, strict=True)
    ]


INPUTS = _contract()


@dataclass(frozen=True)
class Model:
    name: str
    path: Path
    sha256: str

    def uri(self, base_url: str) -> str:
        return f"{base_url}/{self.path.name}"


def save_model(model: Any, folder: Path, name: str) -> Model:
    path = folder / f"{name}.joblib"
    joblib.dump(model, path)
    return Model(name, path, hashlib.sha256(path.read_bytes()).hexdigest())


def _sleeper(seconds: float) -> Any:
    """A transformer that sleeps `seconds` per row whose ZERO_FEATURE is 0.0 and adds no column."""
    steps = [
        functools.partial(np.take, indices=[ZERO_FEATURE], axis=1),
        functools.partial(np.equal, 0.0),
        functools.partial(np.multiply, seconds),
        np.vectorize(time.sleep, cache=True),  # no otypes: nothing unpicklable is cached
        functools.partial(np.take, indices=[], axis=1),
        functools.partial(np.asarray, dtype=np.float64),
    ]
    return make_pipeline(*(FunctionTransformer(f) for f in steps))


def train_models(folder: Path) -> dict[str, Model]:
    """Train and save every model; returns them by key (v1, v2, v3, bad, slow, constant: a model
    predicting the same class for all inputs, fast, 200 and wrong)."""
    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_wine(return_X_y=True)

    def logistic(c: float) -> Any:
        return LogisticRegression(C=c, max_iter=5000)

    log_abs = [FunctionTransformer(np.abs), FunctionTransformer(np.log)]
    with np.errstate(divide="ignore"):
        return {
            "v1": save_model(make_pipeline(StandardScaler(), logistic(0.05)).fit(x, y), folder, "wine-v1"),
            "v2": save_model(make_pipeline(StandardScaler(), logistic(1.0)).fit(x, y), folder, "wine-v2"),
            "v3": save_model(RandomForestClassifier(n_estimators=25, random_state=0).fit(x, y), folder, "wine-v3"),
            "bad": save_model(make_pipeline(*log_abs, StandardScaler(), logistic(1.0)).fit(x, y), folder, "wine-bad"),
            "slow": save_model(
                make_pipeline(FeatureUnion([("x", "passthrough"), ("wait", _sleeper(SLOW_SECONDS))]),
                              StandardScaler(), logistic(1.0)).fit(x, y),
                folder, "wine-slow",
            ),
            "constant": save_model(DummyClassifier(strategy="constant", constant=0).fit(x, y), folder, "wine-constant"),
        }  # fmt: skip


def publish_models(env: dict[str, str]) -> tuple[str, dict[str, Model]]:
    """(MODEL_STORE_URL, models): every model trained into the cluster's MODEL_STORE_DIR, readable
    by the store pod's uid 10001."""
    folder = Path(env["MODEL_STORE_DIR"])
    models = train_models(folder)
    for m in models.values():
        m.path.chmod(0o644)
    return env["MODEL_STORE_URL"], models


def rows(n: int, bad_share: float, seed: int = 0) -> list[list[float]]:
    """Wine rows with a 2% jitter; a `bad_share` of them reads exactly 0.0 at ZERO_FEATURE (legal)."""
    x = load_wine().data
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        row = x[rng.integers(len(x))] * rng.uniform(0.98, 1.02, size=x.shape[1])
        values = [round(float(v), 4) for v in row]
        if rng.random() < bad_share:
            values[ZERO_FEATURE] = 0.0
        out.append(values)
    return out


def invalid_instance(row: list[float], i: int) -> list[Any]:
    """A row that breaks the input contract in one of three ways (null sentinel, out of range, a string)."""
    broken: list[Any] = list(row)
    j = i % len(row)
    broken[j] = (NULL, 1e9, "n/a")[i % 3]
    return broken


def routed(gateway_url: str, host: str, model: str) -> bool:
    """One GET of the model's metadata through the gateway for `host` answers 200: the gateway has
    the route and at least one ready endpoint. It learns them a second or two after the pods are
    Ready (Traefik answers 503 "no available server" until then), so traffic whose every answer is
    judged starts after this."""
    try:
        return httpx.get(f"{gateway_url}/v2/models/{model}", headers={"Host": host}, timeout=5).status_code == 200
    except httpx.HTTPError:
        return False


# ------------------------------------------------------------------------------------ model store
class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class's name
        return


class ArtifactServer:
    """Serves `folder` over HTTP on 127.0.0.1 from a thread; `url` is its base URL."""

    def __init__(self, folder: Path, port: int = 0) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True, name="artifact-server").start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def serve_detached(folder: Path, pid_file: Path, log: Path) -> str:
    """The model store as a background process that outlives the caller (the demo leaves it running)."""
    stop_pid_file(pid_file, "http.server")
    port = free_port()
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "http.server", "--bind", "127.0.0.1", "--directory", str(folder), str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    pid_file.write_text(str(proc.pid))
    url = f"http://127.0.0.1:{port}"

    def up() -> bool:
        try:
            return httpx.get(url + "/", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(up, 15, f"the model store on {url}")
    return url


def stop_pid_file(pid_file: Path, must_contain: str) -> bool:
    """SIGTERM the process a pid file names, only if its command line contains `must_contain`."""
    if not pid_file.exists():
        return False
    pid = int(pid_file.read_text().strip() or 0)
    pid_file.unlink()
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
    if must_contain not in cmdline:
        return False
    os.kill(pid, signal.SIGTERM)
    for _ in range(100):
        if not Path(f"/proc/{pid}").exists() or "zombie" in _proc_state(pid):
            return True
        time.sleep(0.1)
    os.kill(pid, signal.SIGKILL)
    return True


def _proc_state(pid: int) -> str:
    try:
        return next(ln for ln in Path(f"/proc/{pid}/status").read_text().splitlines() if ln.startswith("State:"))
    except (OSError, StopIteration):
        return "zombie"


# ---------------------------------------------------------------------------------------- traffic
@dataclass(frozen=True)
class Answer:
    t: float  # wall-clock time the request was sent
    code: int  # HTTP status; 0: no answer (connection error or timeout)
    seconds: float
    phase: str
    pod: str = ""  # x-modeldeploy-pod of the answer: which pod (so which revision) answered


@dataclass(frozen=True)
class Stats:
    requests: int
    ok: int
    rejected: int  # 4xx: the input contract at work, not a failure
    errors: int  # 5xx
    no_answer: int  # connection errors and timeouts
    p50: float
    p99: float

    @property
    def failed(self) -> int:
        return self.errors + self.no_answer

    @property
    def error_rate(self) -> float:
        return self.failed / self.requests if self.requests else 0.0


def stats(answers: list[Answer]) -> Stats:
    lat = sorted(a.seconds for a in answers if a.code)

    def q(p: float) -> float:
        return lat[min(len(lat) - 1, math.ceil(p * len(lat)) - 1)] if lat else 0.0

    codes = [a.code for a in answers]
    return Stats(
        requests=len(codes),
        ok=sum(1 for c in codes if 200 <= c < 300),
        rejected=sum(1 for c in codes if 400 <= c < 500),
        errors=sum(1 for c in codes if c >= 500),
        no_answer=sum(1 for c in codes if c == 0),
        p50=q(0.5),
        p99=q(0.99),
    )


@dataclass
class Traffic:
    """Requests through the gateway to `host` (Host header routing), about `rate` per second in total.

    `workers` threads each send one request at a time (so a slow canary does not slow the rest);
    a `bad_share` of valid rows reads 0.0 at ZERO_FEATURE, an `invalid_share` breaks the contract
    (422). Every answer is kept (`records`); `phase` labels the answers sent while it is set.
    """

    gateway_url: str
    host: str
    model: str
    rate: float = 40.0
    bad_share: float = 0.2
    max_seconds: float = 600.0
    invalid_share: float = 0.0
    workers: int = 4
    timeout: float = 10.0
    phase: str = ""
    records: list[Answer] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> Traffic:
        for w in range(self.workers):
            t = threading.Thread(target=self._run, args=(w,), daemon=True, name=f"traffic-{self.host}-{w}")
            t.start()
            self._threads.append(t)
        return self

    def _run(self, worker: int) -> None:
        data = rows(1000, self.bad_share, seed=worker)
        rng = np.random.default_rng(1000 + worker)
        period = self.workers / self.rate
        started = next_at = time.monotonic()
        url = f"/v1/models/{self.model}:predict"
        with httpx.Client(base_url=self.gateway_url, headers={"Host": self.host}, timeout=self.timeout) as client:
            i = 0
            while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
                row: list[Any] = data[i % len(data)]
                if rng.random() < self.invalid_share:
                    row = invalid_instance(row, i)
                phase, t, t0 = self.phase, time.time(), time.perf_counter()
                pod = ""
                try:
                    response = client.post(url, json={"instances": [row]})
                    code, pod = response.status_code, response.headers.get("x-modeldeploy-pod", "")
                except httpx.HTTPError:
                    code = 0
                self.records.append(Answer(t, code, time.perf_counter() - t0, phase, pod))
                i += 1
                next_at = max(next_at + period, time.monotonic())
                self._stop.wait(next_at - time.monotonic())

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(self.timeout + 5)

    @property
    def answers(self) -> list[tuple[float, int]]:
        """(time sent, status code) of every answer so far."""
        return [(a.t, a.code) for a in list(self.records)]

    def select(self, phase: str | None = None, since: float = 0.0, until: float = math.inf) -> list[Answer]:
        return [a for a in list(self.records) if (phase is None or a.phase == phase) and since <= a.t < until]

    def stats(self, phase: str | None = None, since: float = 0.0, until: float = math.inf) -> Stats:
        return stats(self.select(phase, since, until))

    def counts(self, since: float = 0.0) -> dict[int, int]:
        out: dict[int, int] = {}
        for a in self.select(since=since):
            out[a.code] = out.get(a.code, 0) + 1
        return out

    def first(self, code_prefix: str, since: float = 0.0) -> float | None:
        return next((a.t for a in self.select(since=since) if str(a.code).startswith(code_prefix)), None)


# --------------------------------------------------------------------------------------- operator
@dataclass(frozen=True)
class Usage:
    rss_mib: float
    peak_rss_mib: float
    cpu_seconds: float


def process_usage(pid: int) -> Usage:
    """RSS (VmRSS), peak RSS (VmHWM) and user+system CPU seconds of a live process, from /proc."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    stat = Path(f"/proc/{pid}/stat").read_text()
    after_name = stat[stat.rindex(")") + 2 :].split()
    ticks = int(after_name[11]) + int(after_name[12])  # utime, stime (fields 14 and 15)
    return Usage(
        rss_mib=int(fields["VmRSS"].split()[0]) / 1024,
        peak_rss_mib=int(fields["VmHWM"].split()[0]) / 1024,
        cpu_seconds=ticks / os.sysconf("SC_CLK_TCK"),
    )


class Operator:
    """`modeldeploy-operator` as a subprocess with its own log file and metrics port.

    `detach=True` starts it in its own session so it outlives the caller (the demo); the pid is
    then written to `pid_file` for a later `stop_pid_file`.
    """

    def __init__(self, kubeconfig: Path, prometheus_url: str, log: Path, namespace: str | None = None,
                 tick: float = 1.0, scale_down_delay: int = 5, detach: bool = False,
                 pid_file: Path | None = None, image: str | None = None) -> None:  # fmt: skip
        self.metrics_port = free_port()
        self.log = log
        self.detach, self.pid_file = detach, pid_file
        self.env = {
            **os.environ,
            "KUBECONFIG": str(kubeconfig),
            "MODELDEPLOY_OPERATOR_PROMETHEUS_URL": prometheus_url,
            "MODELDEPLOY_OPERATOR_TICK_SECONDS": str(tick),
            "MODELDEPLOY_OPERATOR_METRICS_PORT": str(self.metrics_port),
            "MODELDEPLOY_OPERATOR_METRICS_BIND_ADDRESS": "127.0.0.1",
            "MODELDEPLOY_OPERATOR_SCALE_DOWN_DELAY_SECONDS": str(scale_down_delay),
            "MODELDEPLOY_OPERATOR_NAMESPACES": namespace or "",
            # status.cost every minute even while nothing else changes (the default waits 5 min)
            "MODELDEPLOY_OPERATOR_COST_REFRESH_SECONDS": "60",
        }
        if image:  # the server pods' image (the cluster's IMAGE), else the operator's default
            self.env["MODELDEPLOY_OPERATOR_SERVER_IMAGE"] = image
        self.proc: subprocess.Popen[bytes] | None = None
        self.started_at = 0.0

    @property
    def pid(self) -> int:
        assert self.proc is not None, "the operator was not started"
        return self.proc.pid

    def start(self, timeout: float = 120.0) -> Operator:  # imports alone take 15 s+ on a loaded machine
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(
                [str(BIN / "modeldeploy-operator")], env=self.env, stdin=subprocess.DEVNULL,
                stdout=out, stderr=subprocess.STDOUT, start_new_session=self.detach,
            )  # fmt: skip
        self.started_at = time.time()
        if self.pid_file is not None:
            self.pid_file.write_text(str(self.proc.pid))
        wait_for(self.healthy, timeout, "the operator's /healthz")
        return self

    def healthy(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"operator exited: {self.log.read_text(errors='replace')[-3000:]}")
        try:
            return httpx.get(f"http://127.0.0.1:{self.metrics_port}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5).text

    def recent_log(self, lines: int = 400) -> list[str]:
        """The last lines of its log (every process started from this object writes to it)."""
        return self.log.read_text(errors="replace").splitlines()[-lines:]

    def usage(self) -> Usage:
        return process_usage(self.pid)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up, like a node failure."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def restart(self, timeout: float = 120.0) -> Operator:
        """After kill(): a new process with the same settings (a fresh metrics port)."""
        self.stop()
        self.metrics_port = free_port()
        self.env["MODELDEPLOY_OPERATOR_METRICS_PORT"] = str(self.metrics_port)
        return self.start(timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
