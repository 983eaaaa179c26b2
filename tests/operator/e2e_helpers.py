"""Reusable pieces of the end-to-end tests (issue 5 and issue 7): real models, real processes.

- `train_models(dir)`: real scikit-learn models on iris, saved as joblib with their digests:
  `v1`, `v2` (good), `bad` (a FunctionTransformer(np.reciprocal) before the classifier: a row
  whose value is exactly 0.0 becomes infinite, the classifier raises, the server answers 500;
  0.0 is a legal input, and the server's load-time probes, mid-range and random rows, never hit
  it exactly, so the bad model loads and turns ready like a real subtly broken model).
- `ArtifactServer`: a loopback HTTP server publishing a folder (the "model store").
- `start_server(...)`: the real `modeldeploy-server` console script on 127.0.0.1.
- `Traffic`: a bounded request generator through the gateway (Host header routing), counting
  answers by status code with timestamps.
- `Operator` (modeldeploy_demo.workload's): the real `modeldeploy-operator` as a subprocess.
- `model_deployment(...)`, `http_route(...)` (modeldeploy_demo.kube's, on the cluster's Gateway),
  `get_mdep(...)`, `wait_for_phase(...)`.
"""

from __future__ import annotations

import contextlib
import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from modeldeploy_demo.kube import http_route
from modeldeploy_demo.workload import Model, Operator, free_port, save_model

BIN = Path(sys.executable).parent
FEATURES = ("sepal_length", "sepal_width", "petal_length", "petal_width")
INPUTS = [{"name": n, "min": -5.0, "max": 10.0, "nullValues": [-999]} for n in FEATURES]


def train_models(folder: Path) -> dict[str, Model]:
    folder.mkdir(parents=True, exist_ok=True)
    x, y = load_iris(return_X_y=True)
    return {
        "v1": save_model(LogisticRegression(max_iter=500, C=1.0).fit(x, y), folder, "iris-v1"),
        "v2": save_model(LogisticRegression(max_iter=500, C=0.5).fit(x, y), folder, "iris-v2"),
        "bad": save_model(make_pipeline(FunctionTransformer(np.reciprocal), LogisticRegression(max_iter=500)).fit(x, y),
                     folder, "iris-bad"),
    }  # fmt: skip


class ArtifactServer:
    """Serves `folder` over HTTP on 127.0.0.1 (a thread); `url` is its base URL."""

    def __init__(self, folder: Path) -> None:
        handler = functools.partial(_QuietHandler, directory=str(folder))
        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
        return


def wait_for(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.25) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


@contextlib.contextmanager
def start_server(env: dict[str, str], log: Path) -> Iterator[str]:
    """The real server process on 127.0.0.1:<free port>; yields its base URL once ready."""
    port = free_port()
    full = {**os.environ, **env, "MODELDEPLOY_HOST": "127.0.0.1", "MODELDEPLOY_PORT": str(port)}
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "modeldeploy-server")], env=full, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:

        def ready() -> bool:
            if proc.poll() is not None:
                raise RuntimeError(f"modeldeploy-server exited {proc.returncode}: {log.read_text()[-2000:]}")
            try:
                return httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_for(ready, 60, "the server to be ready")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def rows(n: int, bad_share: float, seed: int = 0) -> list[list[float]]:
    """Iris-like rows; a `bad_share` of them has a first feature of exactly 0.0 (legal; breaks `bad`)."""
    x, _ = load_iris(return_X_y=True)
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        row = [float(v) for v in x[rng.integers(len(x))]]
        if rng.random() < bad_share:
            row[0] = 0.0
        out.append(row)
        del i
    return out


@dataclass
class Traffic:
    """Steady requests through the gateway to `host`, at most `rate` per second, until stopped."""

    gateway_url: str
    host: str
    model: str
    rate: float = 40.0
    bad_share: float = 0.2
    max_seconds: float = 600.0
    answers: list[tuple[float, int]] = field(default_factory=list)
    pods: list[tuple[float, str]] = field(default_factory=list)  # (sent at, the answering pod's x-modeldeploy-pod)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Traffic:
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"traffic-{self.host}")
        self._thread.start()
        return self

    def _run(self) -> None:
        data = rows(2000, self.bad_share)
        started = time.monotonic()
        with httpx.Client(base_url=self.gateway_url, headers={"Host": self.host}, timeout=5) as client:
            i = 0
            while not self._stop.is_set() and time.monotonic() - started < self.max_seconds:
                t = time.time()
                try:
                    resp = client.post(f"/v1/models/{self.model}:predict", json={"instances": [data[i % len(data)]]})
                    self.answers.append((t, resp.status_code))
                    self.pods.append((t, resp.headers.get("x-modeldeploy-pod", "")))
                except httpx.HTTPError:
                    self.answers.append((t, 0))
                i += 1
                self._stop.wait(max(0.0, 1 / self.rate - (time.time() - t)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def counts(self, since: float = 0.0) -> dict[int, int]:
        out: dict[int, int] = {}
        for t, code in list(self.answers):
            if t >= since:
                out[code] = out.get(code, 0) + 1
        return out

    def first(self, code_prefix: str, since: float = 0.0) -> float | None:
        return next((t for t, c in list(self.answers) if t >= since and str(c).startswith(code_prefix)), None)


def model_deployment(name: str, model: Model, base_url: str, version: str, *, route: str | None = None,
                     steps: list[dict[str, Any]] | None = None, analysis: dict[str, Any] | None = None,
                     replicas: int = 2, deadline: int = 60) -> dict[str, Any]:  # fmt: skip
    rollout: dict[str, Any] = {
        "steps": steps if steps is not None else [{"setWeight": 20}, {"pause": {"seconds": 5}},
                                                  {"setWeight": 50}, {"pause": {"seconds": 5}}],
        "analysis": analysis or {"intervalSeconds": 5, "minRequests": 20, "failureLimit": 0,
                                 "maxErrorRate": 0.02, "maxLatencyP99Seconds": 1.0},
        "progressDeadlineSeconds": deadline,
    }  # fmt: skip
    if route is not None:
        rollout["trafficRouting"] = {"gatewayAPI": {"httpRoute": route}}
    return {
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": model.uri(base_url), "sha256": model.sha256, "version": version},
            "inputs": INPUTS,
            "replicas": replicas,
            "rollout": rollout,
        },
    }


def kubectl(kubeconfig: Path, *args: str, input: str | None = None) -> str:
    proc = subprocess.run([str(BIN / "kubectl"), f"--kubeconfig={kubeconfig}", *args], input=input,
                          capture_output=True, text=True, timeout=60)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
    return proc.stdout


def apply(kubeconfig: Path, namespace: str, obj: dict[str, Any]) -> None:
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", input=json.dumps(obj))


def get_mdep(kubeconfig: Path, namespace: str, name: str) -> dict[str, Any]:
    return dict(json.loads(kubectl(kubeconfig, "get", "mdep", name, "-n", namespace, "-o", "json")))


def route_weights(kubeconfig: Path, namespace: str, name: str) -> dict[str, int]:
    route = json.loads(kubectl(kubeconfig, "get", "httproute", name, "-n", namespace, "-o", "json"))
    return {ref["name"]: ref.get("weight", 1) for rule in route["spec"]["rules"] for ref in rule["backendRefs"]}


def wait_for_phase(kubeconfig: Path, namespace: str, name: str, phase: str, timeout: float,
                   also: Callable[[dict[str, Any]], bool] = lambda _: True) -> dict[str, Any]:  # fmt: skip
    def check() -> dict[str, Any] | None:
        obj = get_mdep(kubeconfig, namespace, name)
        status = obj.get("status") or {}
        return obj if status.get("phase") == phase and also(obj) else None

    try:
        return dict(wait_for(check, timeout, f"{namespace}/{name} phase {phase}", interval=0.5))
    except TimeoutError as err:
        status = get_mdep(kubeconfig, namespace, name).get("status") or {}
        raise TimeoutError(f"{err}; status: {json.dumps(status)[:3000]}") from None


def events(kubeconfig: Path, namespace: str) -> list[dict[str, Any]]:
    out = json.loads(kubectl(kubeconfig, "get", "events", "-n", namespace, "-o", "json"))
    return sorted(out["items"], key=lambda e: e.get("lastTimestamp") or e.get("eventTime") or "")


def cleanup_namespaces(kubeconfig: Path, namespaces: list[str], timeout: float = 60) -> None:
    """Wait (bounded) until the ModelDeployments of `namespaces` are gone; call while the operator runs."""

    def gone() -> bool:
        for ns in namespaces:
            try:
                if json.loads(kubectl(kubeconfig, "get", "mdep", "-n", ns, "-o", "json"))["items"]:
                    return False
            except RuntimeError:  # namespace already gone
                continue
        return True

    with contextlib.suppress(TimeoutError):
        wait_for(gone, timeout, "ModelDeployments to be deleted", interval=0.5)


class WeightWatch:
    """Polls the HTTPRoute's canary weight every 0.2 s, recording (time, weight) changes."""

    def __init__(self, kubeconfig: Path, namespace: str, name: str) -> None:
        self.changes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._args = (kubeconfig, namespace, name)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                w = route_weights(*self._args).get(f"{self._args[2]}-canary", 0)
            except RuntimeError:
                w = -1
            if not self.changes or self.changes[-1][1] != w:
                self.changes.append((time.time(), w))
            self._stop.wait(0.2)

    def settle(self, weight: int = 0, timeout: float = 15) -> None:
        """Wait until the route's canary weight is `weight`: status is written before the route (so a
        decision survives a failed route write), so a phase can be seen a moment before its weight."""
        wait_for(lambda: self.changes and self.changes[-1][1] == weight, timeout, f"canary weight {weight}")

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def first_time(self, weight: int, after: float) -> float | None:
        return next((t for t, w in self.changes if t >= after and w == weight), None)


def deploy_v1(gateway: dict[str, str], kubeconfig: Path, ns: str, name: str, models: dict[str, Model], store_url: str,
              **kw: Any) -> str:  # fmt: skip
    """An HTTPRoute on `gateway` with host `<name>.<ns>.test` and a ModelDeployment at v1, waited to
    Healthy (two pods from the image: 8-20 s each); returns the host."""
    host = f"{name}.{ns}.test"
    apply(kubeconfig, ns, http_route(name, host, gateway))
    apply(kubeconfig, ns, model_deployment(name, models["v1"], store_url, "1", route=name, **kw))
    obj = wait_for_phase(kubeconfig, ns, name, "Healthy", timeout=180)
    assert obj["status"]["stableVersion"] == "1"
    return host


def assert_promoted_once(final: dict[str, Any]) -> None:
    """The rollout ended with exactly one promotion of the canary after the first deployment."""
    outcomes = [x["outcome"] for x in final["status"]["history"]]
    assert outcomes[-2:] == ["Deployed", "Promoted"] and outcomes.count("Promoted") == 1, outcomes


def reasons(kubeconfig: Path, ns: str) -> list[str]:
    """Reasons of the Events about ModelDeployments in `ns`, oldest first."""
    return [e["reason"] for e in events(kubeconfig, ns) if e.get("involvedObject", {}).get("kind") == "ModelDeployment"]


def operator_usage(operator: Operator) -> tuple[float, float]:
    """(resident bytes, CPU seconds) of the operator process, from its own /metrics."""
    values = {}
    for line in operator.metrics().splitlines():
        if line.startswith(("process_resident_memory_bytes ", "process_cpu_seconds_total ")):
            name, value = line.split()
            values[name] = float(value)
    return values["process_resident_memory_bytes"], values["process_cpu_seconds_total"]
