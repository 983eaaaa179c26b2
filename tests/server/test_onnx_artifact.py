"""ONNX artifacts: opened from their verified bytes, and only when self-contained.

A graph can store a tensor as "external data": a file name that onnxruntime reads from beside the
model (or the working directory), bytes the digest never covered. Such an artifact is refused;
an ordinary ONNX artifact is served with float64 outputs.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.runtime import load_runtime
from modeldeploy_server.settings import InputSpec, Settings
from tests.server.conftest import Artifact, sha256_of


def _graph(external: str | None) -> bytes:
    weights = numpy_helper.from_array(np.full(3, 0.5, dtype=np.float32), "w")
    if external is not None:
        weights.ClearField("raw_data")
        weights.data_location = TensorProto.EXTERNAL
        for key, value in {"location": external, "offset": "0", "length": "12"}.items():
            entry = weights.external_data.add()
            entry.key, entry.value = key, value
    node = helper.make_node("Add", ["x", "w"], ["y"])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 3])
    graph = helper.make_graph([node], "g", [x], [y], [weights])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()


def _settings(path: Path, cache: Path) -> Settings:
    return Settings(model_uri=path.as_uri(), model_sha256=sha256_of(path), cache_dir=cache,
                    inputs=[InputSpec(name=n) for n in "abc"])  # fmt: skip


def test_onnx_with_external_data_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    planted = np.arange(3, dtype=np.float32).tobytes()
    for where in (cache, tmp_path):  # beside the cached artifact, and the working directory
        (where / "weights.bin").write_bytes(planted)
    monkeypatch.chdir(tmp_path)
    for location in ("weights.bin", str(tmp_path / "weights.bin"), "../weights.bin"):
        path = tmp_path / "model.onnx"
        path.write_bytes(_graph(location))
        with pytest.raises(LoadRefused, match=r"stores tensors \['w'\] as external data files"):
            load_runtime(_settings(path, cache))
    assert sorted(p.name for p in cache.iterdir()) == ["weights.bin"]  # the refused artifacts are gone


def test_self_contained_onnx_is_served_as_float64(tmp_path: Path) -> None:
    path = tmp_path / "model.onnx"
    path.write_bytes(_graph(None))
    runtime = load_runtime(_settings(path, tmp_path / "cache"))
    y = runtime.predict(np.array([[1.0, 2.0, 3.0]]))
    assert y.dtype == np.float64 and y.tolist() == [[1.5, 2.5, 3.5]]
    assert os.listdir(tmp_path / "cache") == [f"{sha256_of(path)}.artifact"]


def test_a_forest_compiled_to_onnx_is_its_own_reference(artifacts: dict[str, Artifact], tmp_path: Path) -> None:
    from skl2onnx import to_onnx

    art = artifacts["porosity"]
    path = tmp_path / "model.onnx"
    path.write_bytes(to_onnx(art.model, art.rows[:1].astype(np.float32)).SerializeToString())
    runtime = load_runtime(art.settings(tmp_path, model_uri=path.as_uri(), model_sha256=sha256_of(path)))
    assert runtime.path == "onnx" and runtime.predict is runtime.reference
