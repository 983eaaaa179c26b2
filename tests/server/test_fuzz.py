"""No input, however malformed, produces a 5xx or kills the server: hypothesis against real HTTP."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client.parser import text_string_to_metric_families

from tests.server.conftest import Artifact, Served

ALLOWED = {200, 400, 404, 405, 413, 422}

scalars = st.one_of(
    st.none(), st.booleans(), st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from([2.35, 0.2, 80.0, -999, -999.25, 1e308]),
    st.text(max_size=8),
)  # fmt: skip
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=6) | st.dictionaries(st.text(max_size=8), children, max_size=6),
    max_leaves=30,
)
rows = st.lists(st.one_of(st.lists(scalars, min_size=0, max_size=5),
                          st.dictionaries(st.sampled_from(["RHOB", "NPHI", "GR", "x"]), scalars, max_size=4)),
                max_size=5)  # fmt: skip
tensor = st.fixed_dictionaries(
    {},
    optional={"name": st.one_of(st.sampled_from(["input-0", "RHOB", "NPHI", "GR"]), st.text(max_size=5), st.none()),
              "shape": st.one_of(st.lists(st.integers(-2, 6), max_size=3), json_values),
              "datatype": st.one_of(st.sampled_from(["FP64", "FP32", "INT64", "BYTES", "BOOL"]), json_values),
              "data": st.one_of(st.lists(scalars, max_size=12), st.lists(st.lists(scalars, max_size=4), max_size=4),
                                json_values)},
)  # fmt: skip
v2_bodies = st.fixed_dictionaries({"inputs": st.lists(tensor, max_size=4)}, optional={"id": json_values})


@pytest.fixture(scope="module")
def fuzzed(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> Served:
    return serve(artifacts["porosity"].settings(cache_dir))


def _check(served: Served, path: str, content: bytes) -> None:
    response = served.client.post(path, content=content)
    assert response.status_code in ALLOWED, (response.status_code, response.text, content[:300])
    if response.status_code != 200:
        assert isinstance(response.json()["error"], str)


FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(body=json_values)
def test_any_json_on_both_endpoints(fuzzed: Served, body: Any) -> None:
    content = json.dumps(body).encode()
    _check(fuzzed, "/v1/models/porosity:predict", content)
    _check(fuzzed, "/v2/models/porosity/infer", content)


@FUZZ
@given(instances=rows)
def test_v1_instances(fuzzed: Served, instances: Any) -> None:
    _check(fuzzed, "/v1/models/porosity:predict", json.dumps({"instances": instances}).encode())


@FUZZ
@given(body=v2_bodies)
def test_v2_tensors(fuzzed: Served, body: Any) -> None:
    _check(fuzzed, "/v2/models/porosity/infer", json.dumps(body).encode())


@FUZZ
@given(content=st.binary(max_size=200))
def test_raw_bytes(fuzzed: Served, content: bytes) -> None:
    _check(fuzzed, "/v2/models/porosity/infer", content)


def test_still_alive_and_no_5xx_counted(fuzzed: Served) -> None:
    assert fuzzed.client.get("/v2/health/ready").status_code == 200
    families = text_string_to_metric_families(fuzzed.client.get("/metrics").text)
    requests = next(f for f in families if f.name == "modeldeploy_requests")
    errors = {
        s.labels["code"]: s.value
        for s in requests.samples
        if s.name == "modeldeploy_requests_total" and s.labels["outcome"] == "error"
    }
    assert errors and all(v == 0 for v in errors.values()), f"fuzzed input produced 5xx: {errors}"


@FUZZ
@given(values=st.lists(st.lists(st.one_of(st.floats(allow_nan=False, allow_infinity=False),
                                          st.integers(-(2**63), 2**63 - 1)), min_size=3, max_size=3),
                       min_size=1, max_size=20))  # fmt: skip
def test_well_formed_numbers_are_predicted_or_refused_never_failed(fuzzed: Served, values: Any) -> None:
    flat = [v for row in values for v in row]
    body = {"inputs": [{"name": "x", "shape": [len(values), 3], "datatype": "FP64", "data": flat}]}
    response = fuzzed.client.post("/v2/models/porosity/infer", content=json.dumps(body).encode())
    assert response.status_code in (200, 422), response.text
