"""The hostile boundary (issue 10, the audit's items 2, 2b, 4, 5, 7, 10, 12-22): no client can make
the server report a 5xx, ambiguous or malformed bodies are refused naming what is wrong, the metrics
count each request under what really happened, and the protocol details clients rely on hold.
Every test runs the real app on a real uvicorn server on 127.0.0.1 (raw sockets where a client
misbehaves below HTTP)."""

from __future__ import annotations

import json
import socket
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from sklearn.linear_model import LogisticRegression

from tests.server.conftest import Artifact, Served, raw_request, sha256_of

V1 = "/v1/models/porosity:predict"
V2 = "/v2/models/porosity/infer"
GOOD = [2.35, 0.2, 80.0]


def v2(data: Any, shape: Any = None, datatype: str = "FP64", **extra: Any) -> dict[str, Any]:
    shape = shape if shape is not None else [len(data) // 3, 3]
    return {"inputs": [{"name": "x", "shape": shape, "datatype": datatype, "data": data}], **extra}


@pytest.fixture(scope="module")
def porosity(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> Served:
    return serve(artifacts["porosity"].settings(cache_dir, max_request_rows=50))


def requests_by_code(served: Served) -> dict[tuple[str, str], float]:
    text = served.client.get("/metrics").text
    return {
        (s.labels["code"], s.labels["outcome"]): s.value
        for f in text_string_to_metric_families(text) for s in f.samples if s.name == "modeldeploy_requests_total"
    }  # fmt: skip


def server_errors(served: Served) -> float:
    return sum(v for (code, _), v in requests_by_code(served).items() if code.startswith("5"))


def _port(served: Served) -> int:
    return int(served.url.rsplit(":", 1)[1])


# -- 1. clients cannot manufacture a 5xx -----------------------------------------------------------


def test_a_disconnect_at_every_byte_offset_is_never_a_server_error(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    served = serve(artifacts["porosity"].settings(cache_dir))
    request = raw_request(V2, json.dumps(v2(GOOD * 2)).encode())
    for offset in range(len(request)):
        with socket.create_connection(("127.0.0.1", _port(served))) as sock:
            sock.sendall(request[:offset])
            if offset % 2:  # half the aborts with a reset instead of a FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    deadline = time.monotonic() + 10
    while requests_by_code(served).get(("499", "client_closed"), 0) < 10 and time.monotonic() < deadline:
        time.sleep(0.05)
    counts = requests_by_code(served)
    assert server_errors(served) == 0, counts
    assert counts[("499", "client_closed")] > 0, counts  # the aborted uploads, under their own outcome
    assert served.client.get("/v2/health/ready").status_code == 200


@pytest.mark.parametrize(
    "shape",
    [[2**62] * 240, [2**64, 3], [-1, 3], [1.0, 3], [True, 3], [], "13", [[1], 3], [1] * 9, [10**30, 3]],
    ids=["240x2^62", "2^64", "negative", "float", "bool", "empty", "string", "nested", "9-dims", "10^30"],
)
def test_hostile_shapes_are_422_with_a_short_message(porosity: Served, shape: Any) -> None:
    response = porosity.client.post(V2, content=json.dumps(v2(GOOD, shape=shape)))
    assert response.status_code == 422, response.text
    assert "(shape_mismatch)" in response.json()["error"] and len(response.text) < 400


def test_a_long_shape_is_refused_in_linear_time(porosity: Served) -> None:
    """Today's code multiplied the shape twice (quadratic): 20k entries blocked the loop for ~15 s."""
    body = json.dumps(v2(GOOD, shape=[2**62] * 200_000)).encode()  # 4 MB
    started = time.perf_counter()
    response = porosity.client.post(V2, content=body, timeout=10)
    elapsed = time.perf_counter() - started
    assert response.status_code in (413, 422) and len(response.text) < 400
    assert elapsed < 5, f"{elapsed:.2f}s to refuse a 200k-entry shape"  # linear: about 0.1 s


# -- 2. ambiguous or malformed bodies --------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "shape"),
    [([[2.3, 0.2], [50, 2.3, 0.2, 50]], [2, 3]), ([[2.3, 0.2, 50, 2.3], [0.2, 50]], [2, 3]),
     ([[2.3, 0.2, 50], [2.3, 0.2, 50], []], [2, 3]), ([[[2.3, 0.2, 50]]], [1, 3]),
     ([[2.3], [0.2], [50]], [1, 3])],
    ids=["short-row", "long-row", "extra-row", "too-deep", "mis-nested"],
)  # fmt: skip
def test_ragged_or_misnested_data_is_refused(porosity: Served, data: Any, shape: list[int]) -> None:
    response = porosity.client.post(V2, content=json.dumps(v2(data, shape=shape)))
    assert response.status_code == 422, response.text
    assert "shape_mismatch" in response.text or "wrong_type" in response.text


def test_deeply_nested_data_is_refused(porosity: Served) -> None:
    data: Any = GOOD
    for _ in range(900):
        data = [data]
    response = porosity.client.post(V2, content=json.dumps(v2(data, shape=[1, 3])))
    assert response.status_code == 422 and "(shape_mismatch)" in response.json()["error"], response.text


def test_data_nested_exactly_as_the_shape_is_accepted(porosity: Served) -> None:
    response = porosity.client.post(V2, json=v2([GOOD, GOOD], shape=[2, 3]))
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("path", "body", "key"),
    [(V1, '{"instances": [{"RHOB": -999, "NPHI": 0.2, "GR": 50, "RHOB": 2.3}]}', "RHOB"),
     (V1, '{"instances": [[2350, 0.2, 50]], "instances": [[2.3, 0.2, 50]]}', "instances"),
     (V2, '{"inputs": [{"name": "x", "shape": [1, 3], "datatype": "FP64", "data": [2.3, 0.2, 50], '
          '"data": [2.3, 0.2, 50]}]}', "data")],
    ids=["v1-feature", "v1-instances", "v2-data"],
)  # fmt: skip
def test_duplicate_json_keys_are_refused_naming_the_key(porosity: Served, path: str, body: str, key: str) -> None:
    response = porosity.client.post(path, content=body)
    assert response.status_code == 400, response.text
    assert f"duplicate JSON object key {key!r}" in response.json()["error"]


def test_duplicate_tensor_names_are_refused(porosity: Served) -> None:
    inputs = [{"name": n, "shape": [1], "datatype": "FP64", "data": [v]}
              for n, v in (("RHOB", -999), ("NPHI", 0.2), ("GR", 50), ("RHOB", 2.3))]  # fmt: skip
    response = porosity.client.post(V2, json={"inputs": inputs})
    assert response.status_code == 422, response.text
    assert "feature 'RHOB'" in response.json()["error"] and "(duplicate_feature)" in response.json()["error"]


def test_colons_inside_strings_are_not_mistaken_for_duplicate_keys(porosity: Served) -> None:
    response = porosity.client.post(V2, json=v2(GOOD, id="urn:a:b:c"))
    assert response.status_code == 200 and response.json()["id"] == "urn:a:b:c"


@pytest.mark.parametrize(
    "body", ['{"instances": [[2.35, 0.2, 80]]}'.encode("utf-16"), b'\xef\xbb\xbf{"instances": [[2.35, 0.2, 80]]}'],
    ids=["utf-16", "utf-8-bom"],
)
def test_bodies_that_are_not_utf8_are_400(porosity: Served, body: bytes) -> None:
    response = porosity.client.post(V1, content=body)
    assert response.status_code == 400, response.text


@pytest.mark.parametrize(
    ("ctype", "status"),
    [("text/plain", 415), ("application/x-www-form-urlencoded", 415), ("multipart/form-data; boundary=x", 415),
     ("application/json", 200), ("application/json; charset=utf-8", 200), ("application/vnd.x+json", 200),
     (None, 200)],
)  # fmt: skip
def test_only_json_content_types_are_accepted(porosity: Served, ctype: str | None, status: int) -> None:
    headers = {} if ctype is None else {"content-type": ctype}
    response = porosity.client.post(V1, content=json.dumps({"instances": [GOOD]}), headers=headers)
    assert response.status_code == status, response.text


# -- NaN/inf from the model is a model failure, not an answer --------------------------------------


def test_non_finite_model_outputs_are_a_counted_500(serve: Any, tmp_path: Path) -> None:
    x, y = load_iris(return_X_y=True)
    path = tmp_path / "lr.joblib"
    joblib.dump(LogisticRegression(max_iter=500).fit(x, y), path)
    art = Artifact("lr", path, sha256_of(path), [{"name": n} for n in "abcd"], "predict_proba", None, x)
    served = serve(art.settings(tmp_path / "cache", compile="off"))
    before = requests_by_code(served).get(("500", "error"), 0)
    body = {"inputs": [{"name": "x", "shape": [2, 4], "datatype": "FP64", "data": [1e308] * 4 + [5.1, 3.5, 1.4, 0.2]}]}
    response = served.client.post("/v2/models/lr/infer", json=body)
    assert response.status_code == 500, response.text
    assert "non-finite" in response.json()["error"] and "row 0" in response.json()["error"]
    assert requests_by_code(served)[("500", "error")] == before + 1
    assert served.client.post("/v1/models/lr:predict", json={"instances": [[1e308] * 4]}).status_code == 500


# -- protocol details ------------------------------------------------------------------------------


def test_the_request_id_is_echoed(porosity: Served) -> None:
    assert porosity.client.post(V2, json=v2(GOOD, id="abc-123")).json()["id"] == "abc-123"
    response = porosity.client.post(V2, json=v2(GOOD), headers={"x-request-id": "from-header"})
    assert response.json()["id"] == "from-header"
    assert porosity.client.post(V2, json=v2(GOOD, id=7)).status_code == 400


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [("TRACE", "/v2/health/live", "GET, HEAD"), ("POST", "/v2/health/ready", "GET, HEAD"), ("PUT", "/v2", "GET, HEAD"),
     ("DELETE", "/metrics", "GET, HEAD"), ("GET", V2, "POST"), ("TRACE", "/v2/models/porosity", "GET, HEAD")],
)  # fmt: skip
def test_wrong_methods_are_405_with_allow(porosity: Served, method: str, path: str, allow: str) -> None:
    response = porosity.client.request(method, path)
    assert response.status_code == 405 and response.headers["allow"] == allow


def test_unknown_versions_are_404_and_the_served_version_answers(porosity: Served) -> None:
    for path in ("/v2/models/porosity/versions/999", "/v2/models/porosity/versions/999/ready"):
        assert porosity.client.get(path).status_code == 404
    assert porosity.client.post("/v2/models/porosity/versions/999/infer", json=v2(GOOD)).status_code == 404
    assert porosity.client.post("/v2/models/porosity/versions/7/infer", json=v2(GOOD)).status_code == 200
    assert porosity.client.get("/v2/models/porosity/versions/7/ready").json() == {"name": "porosity", "ready": True}
    assert porosity.client.get("/v2/models/porosity/config").status_code == 404


def test_unknown_requested_outputs_are_400(porosity: Served) -> None:
    response = porosity.client.post(V2, json=v2(GOOD, outputs=[{"name": "does_not_exist"}]))
    assert response.status_code == 400 and "does_not_exist" in response.json()["error"]
    assert porosity.client.post(V2, json=v2(GOOD, outputs=[{"name": "predict"}])).status_code == 200


@pytest.mark.parametrize(
    ("datatype", "data"),
    [("INT8", [2, 0, 300]), ("UINT8", [2, 0, 256]), ("INT16", [2, 0, 40000]), ("INT64", [2, 0.5, 50]),
     ("FP16", [2.3, 0.2, 70000]), ("FP32", [2.3, 0.2, 1e39])],
)  # fmt: skip
def test_values_outside_their_datatype_are_422(porosity: Served, datatype: str, data: list[float]) -> None:
    response = porosity.client.post(V2, json=v2(data, datatype=datatype))
    assert response.status_code == 422 and "(datatype_mismatch)" in response.json()["error"], response.text


def test_fp16_values_are_used_at_fp16_precision(porosity: Served, artifacts: dict[str, Artifact]) -> None:
    model, rows = artifacts["porosity"].model, artifacts["porosity"].rows
    as_fp16 = rows.astype(np.float16).astype(np.float64)
    differs = ~np.isclose(model.predict(as_fp16), model.predict(rows), rtol=1e-3)
    row = rows[np.nonzero(differs)[0][0]]  # a row whose answer depends on the precision
    got = porosity.client.post(V2, json=v2(row.tolist(), datatype="FP16")).json()["outputs"][0]["data"]
    # (within the verified fast path's tolerance; the two candidate answers differ by more than 1e-3)
    assert np.allclose(got, model.predict(row.astype(np.float16).astype(np.float64).reshape(1, -1)), rtol=1e-4)
    assert not np.allclose(got, model.predict(row.reshape(1, -1)), rtol=1e-4)


def test_a_request_over_max_request_rows_is_413(porosity: Served) -> None:
    assert porosity.client.post(V1, json={"instances": [GOOD] * 51}).status_code == 413
    assert porosity.client.post(V2, json=v2(GOOD * 51)).status_code == 413
    assert porosity.client.post(V2, json=v2(GOOD * 50)).status_code == 200


def test_a_half_closed_client_still_gets_its_answer(porosity: Served) -> None:
    with socket.create_connection(("127.0.0.1", _port(porosity)), timeout=10) as sock:
        sock.sendall(raw_request(V1, json.dumps({"instances": [GOOD]}).encode()))
        sock.shutdown(socket.SHUT_WR)
        received = b""
        while chunk := sock.recv(65536):
            received += chunk
    assert received.startswith(b"HTTP/1.1 200"), received[:200]
    assert b'"predictions"' in received


def test_binary_header_values_that_are_not_sizes_are_400(porosity: Served) -> None:
    for value in ("-1", "abc", "99999999999999999999", "1000"):
        response = porosity.client.post(V2, json=v2(GOOD), headers={"inference-header-content-length": value})
        assert response.status_code == 400, (value, response.text)


def test_hostile_request_ids_are_replaced(porosity: Served) -> None:
    for value in ("x" * 500, "a\tb"):
        response = porosity.client.post(V1, json={"instances": [GOOD]}, headers={"x-request-id": value})
        assert response.status_code == 200 and response.headers["x-request-id"] != value


# -- metrics count what happened -------------------------------------------------------------------


def test_each_outcome_is_counted_under_its_own_code(porosity: Served) -> None:
    before = requests_by_code(porosity)
    porosity.client.post(V1, json={"instances": [[9.0, 0.2, 80.0]]})  # 422
    porosity.client.get("/v2/nothing-here")  # 404, route
    porosity.client.request("TRACE", V1)  # 405
    after = requests_by_code(porosity)
    for key in (("422", "rejected"), ("404", "rejected"), ("405", "rejected")):
        assert after[key] == before.get(key, 0) + 1, key
    text = porosity.client.get("/metrics").text
    buckets = {s.labels["outcome"] for f in text_string_to_metric_families(text) for s in f.samples
               if s.name == "modeldeploy_request_duration_seconds_count" and s.value > 0}  # fmt: skip
    assert {"success", "rejected"} <= buckets


def test_not_ready_is_503_unavailable_not_error(artifacts: dict[str, Artifact], serve: Any, cache_dir: Path) -> None:
    from modeldeploy_server.app import App

    app = App(artifacts["porosity"].settings(cache_dir))  # lifespan not run: nothing loaded
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": json.dumps({"instances": [GOOD]}).encode(), "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    import asyncio

    scope = {"type": "http", "method": "POST", "path": V1, "headers": []}
    asyncio.run(app(scope, receive, send))
    assert sent[0]["status"] == 503
    assert b'code="503"' in app.metrics.render()
    assert 'code="503",model="porosity",outcome="unavailable"' in app.metrics.render().decode()
