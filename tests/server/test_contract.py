"""Every refusal of the hostile boundary, over real HTTP: status, message (row, feature, reason), metrics."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from tests.server.conftest import Artifact, Served, _porosity_data, sha256_of


@pytest.fixture(scope="module")
def porosity(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> Served:
    return serve(artifacts["porosity"].settings(cache_dir, max_body_bytes=4096))


GOOD = [2.35, 0.2, 80.0]
V1 = "/v1/models/porosity:predict"
V2 = "/v2/models/porosity/infer"


def v2(data: Any, shape: Any = None, datatype: str = "FP64", name: str = "input-0") -> dict[str, Any]:
    shape = shape if shape is not None else [len(data) // 3, 3]
    return {"inputs": [{"name": name, "shape": shape, "datatype": datatype, "data": data}]}


CASES = [
    # (path, body, reason, row, feature, fragment)
    (V1, {"instances": [GOOD, [2350.0, 0.2, 80.0]]}, "out_of_range", 1, "RHOB", "2350.0 is outside"),
    (V1, {"instances": [[-999.25, 0.2, 80.0]]}, "null_sentinel", 0, "RHOB", "null sentinel"),
    (V1, {"instances": [[2.35, -999, 80.0]]}, "null_sentinel", 0, "NPHI", "null sentinel"),
    (V1, {"instances": [[2.35, None, 80.0]]}, "null", 0, "NPHI", "null is not a number"),
    (V1, {"instances": [[2.35, "0.2", 80.0]]}, "wrong_type", 0, "NPHI", "string '0.2'"),
    (V1, {"instances": [[True, 0.2, 80.0]]}, "wrong_type", 0, "RHOB", "boolean true"),
    (V1, {"instances": [GOOD, [2.35, 0.2]]}, "wrong_length", 1, None, "has 2 values, expected 3"),
    (V1, {"instances": []}, "empty", None, None, "no rows"),
    (V1, {"instances": [{"RHOB": 2.35, "NPHI": 0.2}]}, "missing_feature", 0, "GR", "required feature is missing"),
    (V1, {"instances": [{"RHOB": 2.35, "NPHI": 0.2, "GR": 80, "DT": 1}]}, "unknown_feature", 0, "DT", "unknown"),
    (V1, {"rows": [GOOD]}, "invalid_body", None, None, '"instances"'),
    (V2, v2([*GOOD, 2.35, 0.2]), "shape_mismatch", None, None, "holds 3 values but data has 5"),
    (V2, v2([*GOOD, 1.0], shape=[1, 4]), "shape_mismatch", None, None, "expected [N, 3]"),
    (V2, v2(GOOD, datatype="BYTES"), "datatype_mismatch", None, None, "not numeric"),
    (V2, v2([2.35, 0.2, 80.5], datatype="INT64"), "datatype_mismatch", 0, "RHOB", "not an integer"),
    (V2, v2([*GOOD, 2.35, 0.2, 1e9]), "out_of_range", 1, "GR", "outside the declared range [0.0, 300.0]"),
    (V2, {"inputs": []}, "empty", None, None, "empty"),
    (V2, {"inputs": [{"name": "RHOB", "shape": [1], "datatype": "FP64", "data": [2.35]}]},
     "missing_feature", None, "NPHI", "missing"),
    (V2, {"inputs": [{"name": "RHOB", "shape": [1], "datatype": "FP64", "data": [2.35]},
                     {"name": "XX", "shape": [1], "datatype": "FP64", "data": [2.35]}]},
     "unknown_feature", None, "XX", "unknown input"),
]  # fmt: skip


def _rejections(served: Served, reason: str) -> float:
    for line in served.client.get("/metrics").text.splitlines():
        if line.startswith("modeldeploy_rejections_total{") and f'reason="{reason}"' in line:
            return float(line.rsplit(" ", 1)[1])
    return 0.0


@pytest.mark.parametrize(("path", "body", "reason", "row", "feature", "fragment"), CASES)
def test_refusals_name_row_feature_and_reason_and_are_counted(
    porosity: Served, path: str, body: Any, reason: str, row: int | None, feature: str | None, fragment: str
) -> None:
    before = _rejections(porosity, reason)
    response = porosity.client.post(path, content=json.dumps(body))
    assert response.status_code == 422, response.text
    message = response.json()["error"]
    where = "request" if row is None else f"row {row}"  # body-level refusals are not about a row
    assert f"({reason})" in message and message.startswith(where) and fragment in message
    if feature is not None:
        assert f"feature {feature!r}" in message
    assert _rejections(porosity, reason) == before + 1


@pytest.mark.parametrize(
    ("token", "reason"), [("NaN", "nan"), ("Infinity", "infinite"), ("-Infinity", "infinite"), ("1e999", "infinite")]
)
def test_non_finite_numbers_from_python_clients_are_422_not_400(porosity: Served, token: str, reason: str) -> None:
    response = porosity.client.post(V1, content='{"instances": [[2.35, ' + token + ", 80]]}")
    assert response.status_code == 422
    assert response.json()["error"].startswith("row 0, feature 'NPHI'") and f"({reason})" in response.json()["error"]


def test_first_violation_named_and_total_counted(porosity: Served) -> None:
    response = porosity.client.post(V1, json={"instances": [[1.0, 0.2, 80], [2.35, 0.9, -5]]})
    assert response.status_code == 422
    assert response.json()["error"].startswith("row 0, feature 'RHOB'")
    assert "[3 violations in total]" in response.json()["error"]


@pytest.mark.parametrize(
    "body", [b"{", b"not json", b"\xff\xfe", b'{"instances": [[1,2,3]]', b"[" * 2000, b"[" * 1500 + b"]" * 1500]
)
def test_malformed_json_is_400(porosity: Served, body: bytes) -> None:
    response = porosity.client.post(V1, content=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith("malformed JSON")


def test_body_over_the_limit_is_413(porosity: Served) -> None:
    body = json.dumps({"instances": [GOOD] * 400})
    assert len(body) > 4096
    response = porosity.client.post(V1, content=body)
    assert response.status_code == 413
    assert "exceeds the limit of 4096 bytes" in response.json()["error"]


def test_chunked_body_over_the_limit_is_413(porosity: Served) -> None:
    def chunks() -> Any:
        for _ in range(100):
            yield b" " * 100

    response = porosity.client.post(V1, content=chunks())
    assert response.status_code == 413


def test_unknown_model_is_404_and_unknown_path_404(porosity: Served) -> None:
    assert porosity.client.post("/v1/models/other:predict", json={"instances": [GOOD]}).status_code == 404
    assert porosity.client.post("/v2/models/other/infer", json=v2(GOOD)).status_code == 404
    assert porosity.client.get("/v2/models/other").status_code == 404
    assert porosity.client.get("/nothing").json()["error"].startswith("no route")


def test_wrong_method_is_405(porosity: Served) -> None:
    assert porosity.client.get(V2).status_code == 405


def test_request_counter_by_code_and_outcome(porosity: Served) -> None:
    def count(code: str) -> float:
        for line in porosity.client.get("/metrics").text.splitlines():
            if line.startswith("modeldeploy_requests_total{") and f'code="{code}"' in line:
                return float(line.rsplit(" ", 1)[1])
        return 0.0

    ok, bad = count("200"), count("422")
    assert porosity.client.post(V1, json={"instances": [GOOD]}).status_code == 200
    assert porosity.client.post(V1, json={"instances": [[9, 9, 9]]}).status_code == 422
    assert (count("200"), count("422")) == (ok + 1, bad + 1)
    text = porosity.client.get("/metrics").text
    assert 'code="422",model="porosity",outcome="rejected",revision="abc123",version="7"' in text


def test_optional_feature_may_be_absent_or_null(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> None:
    from sklearn.ensemble import HistGradientBoostingRegressor

    x, y = _porosity_data(300, 0)
    x[::7, 2] = float("nan")
    model = HistGradientBoostingRegressor(max_iter=20).fit(x, y)
    import joblib

    path = cache_dir.parent / "optional.joblib"
    joblib.dump(model, path)
    inputs = [dict(i) for i in artifacts["porosity"].inputs]
    inputs[2]["required"] = False
    art = Artifact("opt", path, sha256_of(path), inputs, "predict", model, x)
    served = serve(art.settings(cache_dir))
    response = served.client.post("/v1/models/opt:predict", json={"instances": [{"RHOB": 2.3, "NPHI": 0.2}]})
    assert response.status_code == 200, response.text
    assert response.json()["predictions"] == model.predict([[2.3, 0.2, float("nan")]]).tolist()
    response = served.client.post("/v1/models/opt:predict", json={"instances": [[2.3, 0.2, None]]})
    assert response.status_code == 200
    response = served.client.post("/v1/models/opt:predict", json={"instances": [[2.3, None, 1.0]]})
    assert response.status_code == 422 and "(null)" in response.json()["error"]
