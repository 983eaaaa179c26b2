"""Compatibility with a real Open Inference Protocol client: tritonclient[http] over loopback."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.server.conftest import Artifact


def test_tritonclient_health_metadata_and_infer(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> None:
    art = artifacts["forest"]
    served = serve(art.settings(cache_dir, compile="off"))
    client = triton.InferenceServerClient(url=served.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("forest")
    meta = client.get_model_metadata("forest")
    assert meta["name"] == "forest" and len(meta["inputs"]) == 4
    rows = art.rows[:10]
    inp = triton.InferInput("input-0", list(rows.shape), "FP64")
    inp.set_data_from_numpy(rows, binary_data=False)
    out = triton.InferRequestedOutput("predict_proba", binary_data=False)
    result = client.infer("forest", [inp], outputs=[out])
    assert np.array_equal(result.as_numpy("predict_proba"), art.model.predict_proba(rows))
    # one tensor per feature, as FP32 (the server widens to float64 exactly)
    per_feature = []
    for j, spec in enumerate(art.inputs):
        t = triton.InferInput(spec["name"], [len(rows)], "FP32")
        t.set_data_from_numpy(rows[:, j].astype(np.float32), binary_data=False)
        per_feature.append(t)
    result = client.infer("forest", per_feature)
    expected = art.model.predict_proba(rows.astype(np.float32).astype(np.float64))
    assert np.array_equal(result.as_numpy("predict_proba"), expected)


def test_tritonclient_sees_a_refusal_as_an_error_naming_the_feature(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    art = artifacts["forest"]
    served = serve(art.settings(cache_dir))
    client = triton.InferenceServerClient(url=served.url.removeprefix("http://"))
    bad = np.array([[5.1, 3.5, -999.0, 0.2]])
    inp = triton.InferInput("input-0", list(bad.shape), "FP64")
    inp.set_data_from_numpy(bad, binary_data=False)
    with pytest.raises(InferenceServerException, match="petal_length"):
        client.infer("forest", [inp])
