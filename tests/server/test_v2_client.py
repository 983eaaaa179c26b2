"""Compatibility with real Open Inference Protocol clients over loopback, in their DEFAULT modes:
tritonclient[http] and the kserve SDK (InferenceRESTClient, v2 and v1) send binary tensor data
(`Inference-Header-Content-Length`) and ask for binary outputs unless told otherwise."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tritonclient.http as triton
from tritonclient.utils import InferenceServerException

from tests.server.conftest import Artifact, Served


@pytest.fixture(scope="module")
def forest(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> Served:
    return serve(artifacts["forest"].settings(cache_dir))


def test_tritonclient_defaults_health_metadata_and_binary_infer(forest: Served, artifacts: dict[str, Artifact]) -> None:
    art = artifacts["forest"]
    client = triton.InferenceServerClient(url=forest.url.removeprefix("http://"))
    assert client.is_server_live() and client.is_server_ready()
    assert client.is_model_ready("forest") and client.is_model_ready("forest", "7")
    assert not client.is_model_ready("forest", "999") and not client.is_model_ready("nope")
    assert "binary_tensor_data" in client.get_server_metadata()["extensions"]
    meta = client.get_model_metadata("forest")
    rows = art.rows[:10]
    inp = triton.InferInput("input-0", list(rows.shape), "FP64")
    inp.set_data_from_numpy(rows)  # default: binary data
    result = client.infer("forest", [inp], request_id="my-request-42")  # default: binary outputs
    out = result.get_output("predict_proba")
    assert "binary_data_size" in out["parameters"] and "data" not in out
    got = result.as_numpy("predict_proba")
    np.testing.assert_allclose(got, art.model.predict_proba(rows), rtol=1e-12, atol=0)
    assert result.get_response()["id"] == "my-request-42"
    # the metadata declares what the answers carry
    (declared,) = meta["outputs"]
    assert declared["datatype"] == out["datatype"] == "FP64"
    assert declared["shape"] == [-1, 3] and out["shape"] == [10, 3]
    # one INT64 tensor per feature, binary too
    per_feature = []
    whole = np.rint(rows).astype(np.int64)
    for j, spec in enumerate(art.inputs):
        t = triton.InferInput(spec["name"], [len(rows)], "INT64")
        t.set_data_from_numpy(whole[:, j].copy())
        per_feature.append(t)
    got = client.infer("forest", per_feature).as_numpy("predict_proba")
    np.testing.assert_allclose(got, art.model.predict_proba(whole.astype(np.float64)), rtol=1e-12, atol=0)
    with pytest.raises(InferenceServerException, match="unknown output"):
        client.infer("forest", [inp], outputs=[triton.InferRequestedOutput("nope")])


def test_tritonclient_json_mode_still_works(forest: Served, artifacts: dict[str, Artifact]) -> None:
    art = artifacts["forest"]
    client = triton.InferenceServerClient(url=forest.url.removeprefix("http://"))
    rows = art.rows[:5]
    inp = triton.InferInput("input-0", list(rows.shape), "FP64")
    inp.set_data_from_numpy(rows, binary_data=False)
    out = triton.InferRequestedOutput("predict_proba", binary_data=False)
    result = client.infer("forest", [inp], outputs=[out])
    assert "data" in result.get_output("predict_proba")
    np.testing.assert_allclose(result.as_numpy("predict_proba"), art.model.predict_proba(rows), rtol=1e-12)


def test_tritonclient_sees_a_refusal_as_an_error_naming_the_feature(forest: Served) -> None:
    client = triton.InferenceServerClient(url=forest.url.removeprefix("http://"))
    bad = np.array([[5.1, 3.5, -999.0, 0.2]])
    inp = triton.InferInput("input-0", list(bad.shape), "FP64")
    inp.set_data_from_numpy(bad)
    with pytest.raises(InferenceServerException, match="petal_length"):
        client.infer("forest", [inp])


def test_kserve_rest_client_defaults_v2_and_v1(forest: Served, artifacts: dict[str, Artifact]) -> None:
    from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig

    art = artifacts["forest"]
    rows = art.rows[:7]

    async def run() -> None:
        v2 = InferenceRESTClient(RESTConfig(protocol="v2"))
        try:
            assert await v2.is_server_live(forest.url) and await v2.is_server_ready(forest.url)
            assert await v2.is_model_ready(forest.url, "forest")
            tensor = InferInput("input-0", list(rows.shape), "FP64")
            tensor.set_data_from_numpy(rows)  # default: binary data
            request = InferRequest("forest", infer_inputs=[tensor], request_id="kserve-req-7")
            response = await v2.infer(forest.url, request, model_name="forest")
            assert response.id == "kserve-req-7"
            got = response.outputs[0].as_numpy()
            np.testing.assert_allclose(got, art.model.predict_proba(rows), rtol=1e-12, atol=0)
        finally:
            await v2.close()
        v1 = InferenceRESTClient(RESTConfig(protocol="v1"))
        try:
            assert await v1.is_server_live(forest.url)
            assert await v1.is_model_ready(forest.url, "forest")
            answer = await v1.infer(forest.url, {"instances": rows.tolist()}, model_name="forest")
            np.testing.assert_allclose(answer["predictions"], art.model.predict_proba(rows), rtol=1e-12)
        finally:
            await v1.close()

    asyncio.run(run())
