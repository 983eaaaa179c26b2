"""Happy paths with real sklearn models: the server's answers equal in-process predictions.

Reference path (MODELDEPLOY_COMPILE=off): bit-identical to the artifact's own method on the same
rows. Exact fast paths (exact-forest, exact-linear, exact-pipeline): bit-identical too, through
HTTP here and on 120k rows per model family in test_equivalence.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from modeldeploy_server.runtime import load_runtime
from tests.server.conftest import Artifact, Served


def _expected(art: Artifact, rows: np.ndarray) -> np.ndarray:
    return np.asarray(getattr(art.model, art.method)(rows))


def _v2(served: Served, art: Artifact, rows: np.ndarray) -> np.ndarray:
    body = {"inputs": [{"name": "x", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]}
    response = served.client.post(f"/v2/models/{art.name}/infer", content=orjson.dumps(body))
    assert response.status_code == 200, response.text
    out = response.json()["outputs"][0]
    assert out["name"] == art.method
    return np.array(out["data"]).reshape(out["shape"])


def _v1(served: Served, art: Artifact, rows: np.ndarray, as_objects: bool) -> np.ndarray:
    names = [i["name"] for i in art.inputs]
    instances: Any = [dict(zip(names, r, strict=True)) for r in rows.tolist()] if as_objects else rows.tolist()
    response = served.client.post(f"/v1/models/{art.name}:predict", content=orjson.dumps({"instances": instances}))
    assert response.status_code == 200, response.text
    return np.array(response.json()["predictions"])


@pytest.mark.parametrize("name", ["pipe", "forest", "porosity"])
def test_reference_path_is_bit_identical(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path, name: str
) -> None:
    art = artifacts[name]
    served = serve(art.settings(cache_dir, compile="off"))
    assert served.app.plane.runtime is not None and served.app.plane.runtime.path == "sklearn"
    expected = _expected(art, art.rows)
    assert np.array_equal(_v2(served, art, art.rows), expected)
    assert np.array_equal(_v1(served, art, art.rows, as_objects=False), expected)
    assert np.array_equal(_v1(served, art, art.rows[:20], as_objects=True), expected[:20])
    for i in range(5):  # single rows too
        assert np.array_equal(_v1(served, art, art.rows[i : i + 1], as_objects=False), expected[i : i + 1])


@pytest.mark.parametrize("name", ["pipe", "forest", "porosity"])
def test_chosen_fast_path_honours_its_guarantee(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path, name: str
) -> None:
    art = artifacts[name]
    served = serve(art.settings(cache_dir))
    runtime = served.app.plane.runtime
    assert runtime is not None
    expected = _expected(art, art.rows)
    got = _v2(served, art, art.rows)
    assert runtime.path.startswith("exact") or runtime.path == "sklearn", runtime.path
    assert np.array_equal(got, expected), runtime.path


def test_forest_uses_a_verified_fast_path(artifacts: dict[str, Artifact], cache_dir: Path) -> None:
    runtime = load_runtime(artifacts["forest"].settings(cache_dir))
    assert runtime.path == "exact-forest", runtime.notes
    assert any(note.startswith("exact-forest: verified") for note in runtime.notes), runtime.notes


def test_a_candidate_that_disagrees_is_rejected(
    artifacts: dict[str, Artifact], cache_dir: Path, monkeypatch: Any
) -> None:
    from modeldeploy_server import candidates

    def wrong(model: Any, method: str) -> Iterator[Any]:
        yield "bogus", lambda: lambda x: np.zeros(len(x), dtype=np.int64)

    from collections.abc import Iterator

    monkeypatch.setattr(candidates, "candidates", wrong)
    runtime = load_runtime(artifacts["pipe"].settings(cache_dir))
    assert runtime.path == "sklearn"
    assert any("bogus: rejected" in note for note in runtime.notes)


def test_v2_one_tensor_per_feature_and_metadata(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> None:
    art = artifacts["porosity"]
    served = serve(art.settings(cache_dir, compile="off"))
    rows = art.rows[:4]
    inputs = [{"name": spec["name"], "shape": [4], "datatype": "FP64", "data": rows[:, j].tolist()}
              for j, spec in enumerate(art.inputs)]  # fmt: skip
    response = served.client.post("/v2/models/porosity/infer", json={"id": "r1", "inputs": inputs})
    assert response.status_code == 200
    assert response.json()["outputs"][0]["data"] == _expected(art, rows).tolist()
    meta = served.client.get("/v2/models/porosity").json()
    assert meta["name"] == "porosity" and meta["versions"] == ["7"]
    assert [i["name"] for i in meta["inputs"]] == ["RHOB", "NPHI", "GR"]
    assert meta["parameters"]["contract"][0] == {"name": "RHOB", "min": 1.5, "max": 3.1,
                                                 "nullValues": [-999.0, -999.25], "required": True}  # fmt: skip
    assert served.client.get("/v2/models/porosity/ready").status_code == 200
    assert served.client.get("/v2/health/live").status_code == 200


def test_request_id_is_honoured_and_pod_header_set(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> None:
    served = serve(artifacts["pipe"].settings(cache_dir))
    response = served.client.post("/v1/models/pipe:predict", json={"instances": [[5.0, 3.0, 1.5, 0.2]]},
                                  headers={"x-request-id": "abc-123"})  # fmt: skip
    assert response.headers["x-request-id"] == "abc-123"
    assert response.headers["x-modeldeploy-pod"] == "pod-test"
    generated = served.client.get("/v2/health/live").headers["x-request-id"]
    assert generated and generated != "abc-123"


def test_concurrent_requests_are_micro_batched_and_correct(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    import concurrent.futures

    import httpx

    art = artifacts["forest"]
    served = serve(art.settings(cache_dir, compile="off"))
    expected = _expected(art, art.rows)

    def one(i: int) -> bool:
        with httpx.Client(base_url=served.url) as client:
            r = client.post("/v1/models/forest:predict", json={"instances": [art.rows[i].tolist()]})
            return bool(np.array_equal(np.array(r.json()["predictions"]), expected[i : i + 1]))

    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        assert all(pool.map(one, range(len(art.rows))))
    batcher = served.app.plane.batcher
    assert batcher is not None and batcher.batched_requests >= len(art.rows)


def test_ready_on_the_reference_path_then_switches_to_the_verified_one(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    import time

    art = artifacts["forest"]
    served = serve(art.settings(cache_dir), preload=False)
    deadline = time.monotonic() + 120
    while served.client.get("/v2/health/ready").status_code != 200:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    while not (params := served.client.get("/v2/models/forest").json()["parameters"])["compiled"]:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert params["serving_path"] == "exact-forest"
    got = _v2(served, art, art.rows)
    assert np.array_equal(got, _expected(art, art.rows))
