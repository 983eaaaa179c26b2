"""Fixtures of the server tests: real sklearn models as real artifacts, real servers on loopback.

`artifacts`: three trained models saved as joblib (and skops/onnx where useful), each with its
digest, input contract and the in-process rows to compare against: `pipe` (StandardScaler +
LogisticRegression on iris, predict), `forest` (RandomForestClassifier, predict_proba) and
`porosity` (GradientBoostingRegressor on synthetic well logs RHOB/NPHI/GR, predict).
`serve(settings)`: the real ASGI app on uvicorn in a background thread on 127.0.0.1 (a free
port), returning its base URL. `run_cli(...)`: the real `modeldeploy-server` console script.
"""

from __future__ import annotations

import hashlib
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
import joblib
import numpy as np
import pytest
import uvicorn
from sklearn.datasets import load_iris
from sklearn.ensemble import GradientBoostingRegressor, RandomForestClassifier
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from devcluster.procs import free_port as free_port  # tests import it from here
from modeldeploy_server.app import App
from modeldeploy_server.runtime import load_runtime
from modeldeploy_server.settings import InputSpec, Settings
from modeldeploy_server.transport import HalfCloseProtocol

SERVER_BIN = Path(sys.executable).with_name("modeldeploy-server")
REPO_ROOT = Path(__file__).resolve().parents[2]
IRIS_INPUTS = [
    {"name": n, "min": 0.0, "max": 10.0, "nullValues": [-999, -999.25]}
    for n in ("sepal_length", "sepal_width", "petal_length", "petal_width")
]
POROSITY_INPUTS = [
    {"name": "RHOB", "min": 1.5, "max": 3.1, "nullValues": [-999, -999.25]},
    {"name": "NPHI", "min": -0.05, "max": 0.6, "nullValues": [-999]},
    {"name": "GR", "min": 0, "max": 300},
]


@dataclass
class Artifact:
    name: str
    path: Path
    sha256: str
    inputs: list[dict[str, Any]]
    method: str
    model: Any
    rows: np.ndarray
    extra: dict[str, Path] = field(default_factory=dict)

    @property
    def uri(self) -> str:
        return self.path.as_uri()

    def env(self, **overrides: str) -> dict[str, str]:
        import json

        env = {
            "MODELDEPLOY_MODEL_NAME": self.name, "MODELDEPLOY_MODEL_URI": self.uri,
            "MODELDEPLOY_MODEL_SHA256": self.sha256, "MODELDEPLOY_MODEL_VERSION": "7",
            "MODELDEPLOY_MODEL_METHOD": self.method, "MODELDEPLOY_MODEL_REVISION": "abc123",
            "MODELDEPLOY_INPUTS": json.dumps(self.inputs),
        }  # fmt: skip
        env.update(overrides)
        return env

    def settings(self, cache_dir: Path, **overrides: Any) -> Settings:
        values: dict[str, Any] = {
            "model_name": self.name, "model_uri": self.uri, "model_sha256": self.sha256, "model_version": "7",
            "model_method": self.method, "model_revision": "abc123", "cache_dir": cache_dir,
            "inputs": [InputSpec.model_validate(i) for i in self.inputs], "pod_name": "pod-test",
        }  # fmt: skip
        values.update(overrides)
        return Settings(**values)


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _porosity_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    rhob = rng.uniform(1.9, 2.9, n)
    nphi = rng.uniform(0.0, 0.5, n)
    gr = rng.uniform(10, 200, n)
    porosity = (2.65 - rhob) / 1.65 * 0.6 + nphi * 0.4 - gr * 1e-4 + rng.normal(0, 0.01, n)
    return np.column_stack([rhob, nphi, gr]), porosity


@pytest.fixture(scope="session")
def artifacts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Artifact]:
    root = tmp_path_factory.mktemp("artifacts")
    x_iris, y_iris = load_iris(return_X_y=True)
    x_por, y_por = _porosity_data(400, 0)
    models = {
        "pipe": (make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(x_iris, y_iris),
                 IRIS_INPUTS, "predict", x_iris),
        "forest": (RandomForestClassifier(n_estimators=30, random_state=0).fit(x_iris, y_iris),
                   IRIS_INPUTS, "predict_proba", x_iris),
        "porosity": (GradientBoostingRegressor(n_estimators=40, random_state=0).fit(x_por, y_por),
                     POROSITY_INPUTS, "predict", _porosity_data(200, 1)[0]),
    }  # fmt: skip
    out = {}
    for name, (model, inputs, method, rows) in models.items():
        path = root / f"{name}.joblib"
        joblib.dump(model, path)
        out[name] = Artifact(name, path, sha256_of(path), inputs, method, model, np.ascontiguousarray(rows))
    import skops.io as sio

    skops_path = root / "pipe.skops"
    sio.dump(out["pipe"].model, skops_path)
    out["pipe"].extra["skops"] = skops_path
    return out


def raw_request(path: str, body: bytes, headers: str = "Content-Type: application/json\r\n") -> bytes:
    """The bytes of one HTTP/1.1 POST, for tests that must own the connection (a raw socket)."""
    head = f"POST {path} HTTP/1.1\r\nHost: t\r\n{headers}Content-Length: {len(body)}\r\n\r\n"
    return head.encode() + body




@dataclass
class Served:
    url: str
    app: App
    client: httpx.Client


@pytest.fixture(scope="session")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Callable[..., Served]]:
    """Start the real app (model preloaded) on uvicorn in a thread; stopped at session end."""
    servers: list[tuple[uvicorn.Server, threading.Thread, httpx.Client]] = []

    def start(settings: Settings, preload: bool = True) -> Served:
        app = App(settings, load_runtime(settings) if preload else None)
        port = free_port()
        config = uvicorn.Config(app, host="127.0.0.1", port=port, loop="asyncio", http=HalfCloseProtocol,
                                log_config=None, access_log=False, lifespan="on")  # fmt: skip
        server = uvicorn.Server(config)
        thread = threading.Thread(target=server.run, daemon=True)
        thread.start()
        deadline = time.monotonic() + 30
        while not server.started:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.02)
        client = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
        servers.append((server, thread, client))
        return Served(f"http://127.0.0.1:{port}", app, client)

    yield start
    for server, thread, client in servers:
        client.close()
        server.should_exit = True
        thread.join(timeout=10)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("cache")


def run_cli(args: list[str], env: dict[str, str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPLOY_")}
    full_env |= {"MODELDEPLOY_PORT": "0"} | env
    return subprocess.run([str(SERVER_BIN), *args], env=full_env, capture_output=True, text=True, timeout=timeout)


def start_cli(env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("MODELDEPLOY_")} | env
    with log.open("wb") as out:
        return subprocess.Popen([str(SERVER_BIN)], env=full_env, stdout=out, stderr=subprocess.STDOUT)


def wait_ready(url: str, proc: subprocess.Popen[bytes] | None = None, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"server exited with {proc.returncode} before ready")
        try:
            if httpx.get(f"{url}/v2/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise AssertionError("server not ready in time")
