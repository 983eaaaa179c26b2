"""The e2e scenarios' premises, checked on the real server without a cluster (fast).

The `bad` and `slow` artifacts must be real, loadable models that pass the server's load-time
self-checks (so their canary turns ready) and misbehave only on rows whose malic_acid reads 0.0:
500 for `bad`, SLOW_SECONDS for `slow`; every other row is answered normally, and the traffic's
contract-breaking rows get 422.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from modeldeploy_demo.workload import BIN, INPUTS, SLOW_SECONDS, Model, free_port, invalid_instance, rows, train_models


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Model]:
    return train_models(tmp_path_factory.mktemp("models"))


@contextmanager
def server(model: Model, log: Path) -> Iterator[httpx.Client]:
    port = free_port()
    env = {**os.environ, "MODELDEPLOY_MODEL_NAME": "wine", "MODELDEPLOY_MODEL_URI": model.path.as_uri(),
           "MODELDEPLOY_MODEL_SHA256": model.sha256, "MODELDEPLOY_MODEL_VERSION": model.name,
           "MODELDEPLOY_INPUTS": json.dumps(INPUTS), "MODELDEPLOY_HOST": "127.0.0.1",
           "MODELDEPLOY_PORT": str(port)}  # fmt: skip
    with log.open("wb") as out:
        proc = subprocess.Popen([str(BIN / "modeldeploy-server")], env=env, stdout=out, stderr=subprocess.STDOUT)
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as client:
            deadline = time.monotonic() + 60
            while True:
                assert proc.poll() is None, f"the server refused {model.name}: {log.read_text()[-2000:]}"
                try:
                    if client.get("/v2/health/ready").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                assert time.monotonic() < deadline, f"{model.name} not ready in 60 s"
                time.sleep(0.2)
            yield client
    finally:
        proc.terminate()
        proc.wait(10)


def predict(client: httpx.Client, row: Sequence[object]) -> tuple[int, float]:
    started = time.perf_counter()
    code = client.post("/v1/models/wine:predict", json={"instances": [row]}).status_code
    return code, time.perf_counter() - started


@pytest.mark.parametrize("key", ["bad", "slow"])
def test_the_broken_models_load_and_misbehave_only_on_zero_readings(models: dict[str, Model], key: str,
                                                                    tmp_path: Path) -> None:  # fmt: skip
    good, zero = rows(5, 0.0, seed=1), rows(40, 1.0, seed=2)[:3]
    with server(models[key], tmp_path / "server.log") as client:
        assert all(predict(client, r)[0] == 200 for r in good)
        answers = [predict(client, r) for r in zero]
        assert [predict(client, invalid_instance(good[0], i))[0] for i in range(3)] == [422, 422, 422]
    if key == "bad":
        assert [code for code, _ in answers] == [500, 500, 500], answers
    else:
        assert all(code == 200 and seconds >= SLOW_SECONDS for code, seconds in answers), answers
