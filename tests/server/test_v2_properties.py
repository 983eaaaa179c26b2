"""Property: whatever V2 request structure a client sends (shapes of any length and size, every
datatype, data nested right, wrong or raggedly, duplicate tensors, JSON or the binary extension),
the real server answers 200 or a 4xx, never a 5xx, and in time linear in the body (each example
has a deadline; a quadratic shape check blew through it at a few thousand dimensions)."""

from __future__ import annotations

import json
import struct
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.server.conftest import Artifact, Served

NAMES = ["x", "RHOB", "NPHI", "GR", "DT", "RHOB"]
DATATYPES = ["FP64", "FP32", "FP16", "INT8", "INT16", "INT32", "INT64", "UINT8", "UINT64", "BOOL", "BYTES", "fp64"]
ALLOWED = {200, 400, 404, 413, 415, 422}

sizes = st.one_of(st.integers(0, 4), st.integers(0, 2**64 + 5), st.sampled_from([2**62, 2**63, 2**64 - 1, -1]))
shapes = st.one_of(
    st.lists(sizes, max_size=4),
    st.lists(st.just(2**62), min_size=100, max_size=3000),  # long shapes: refused in linear time
    st.lists(st.integers(1, 3), min_size=5, max_size=12),
)
numbers = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-(2**65), 2**65),
    st.sampled_from([2.35, 0.2, 80.0, -999, 1e308, 300, 65504.0, 70000.0]),
)  # fmt: skip
values = st.one_of(numbers, st.none(), st.booleans(), st.text(max_size=3))
data = st.recursive(st.lists(values, max_size=12), lambda inner: st.lists(inner, max_size=4), max_leaves=40)


@st.composite
def tensors(draw: st.DrawFn) -> dict[str, Any]:
    tensor: dict[str, Any] = {"name": draw(st.sampled_from(NAMES)), "shape": draw(shapes),
                              "datatype": draw(st.sampled_from(DATATYPES))}  # fmt: skip
    if draw(st.booleans()):
        tensor["data"] = draw(data)
    elif draw(st.booleans()):
        tensor["parameters"] = {"binary_data_size": draw(st.one_of(st.integers(-4, 200), st.just(24)))}
    return tensor


@st.composite
def requests(draw: st.DrawFn) -> tuple[bytes, dict[str, str]]:
    body: dict[str, Any] = {"inputs": draw(st.lists(tensors(), max_size=5))}
    if draw(st.booleans()):
        body["id"] = draw(st.one_of(st.text(max_size=8), st.integers()))
    if draw(st.booleans()):
        body["outputs"] = [{"name": draw(st.sampled_from(["predict", "nope"]))}]
    header = json.dumps(body).encode()
    if any("parameters" in t for t in body["inputs"]) or draw(st.booleans()):
        raw = draw(st.one_of(st.binary(max_size=64), st.just(struct.pack("<3d", 2.35, 0.2, 80.0))))
        return header + raw, {"inference-header-content-length": str(len(header)),
                              "content-type": "application/octet-stream"}  # fmt: skip
    return header, {"content-type": "application/json"}


@pytest.fixture(scope="module")
def served(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> Served:
    return serve(artifacts["porosity"].settings(cache_dir, max_request_rows=1000))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests())
def test_no_v2_structure_yields_a_5xx_or_takes_more_than_linear_time(served: Served, request: Any) -> None:
    body, headers = request
    bound = 0.5 + len(body) / 20_000  # linear: about 1 ms per 10 kB here
    elapsed, response = post_timed(served, body, headers)
    assert response.status_code in ALLOWED, (response.status_code, response.text[:300], body[:300])
    # a quadratic check took seconds for a 3,000-entry shape, every time; a loaded CI machine once
    # took 0.76 s for a 2 kB body that passed when Hypothesis re-ran it: the best of three is timed
    for _ in range(2):
        if elapsed < bound:
            break
        elapsed = min(elapsed, post_timed(served, body, headers)[0])
    assert elapsed < bound, (elapsed, len(body))
    if response.status_code != 200:
        assert len(response.content) < 1000  # messages never echo a whole shape or body


def post_timed(served: Served, body: bytes, headers: dict[str, str]) -> tuple[float, Any]:
    started = time.perf_counter()
    response = served.client.post("/v2/models/porosity/infer", content=body, headers=headers)
    return time.perf_counter() - started, response


def test_after_the_properties_no_5xx_was_counted(served: Served) -> None:
    text = served.client.get("/metrics").text
    errors = [line for line in text.splitlines()
              if line.startswith("modeldeploy_requests_total{") and 'code="5' in line]  # fmt: skip
    assert errors and all(line.endswith(" 0.0") for line in errors), errors
