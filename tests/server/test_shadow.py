"""Shadow steps on the server, over real HTTP between two real servers with real sklearn models:
stable mirrors what it answered, the canary compares, nobody without the token can take part."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Any

import httpx
import joblib
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from devcluster.procs import wait_for
from modeldeploy_server import shadow
from tests.server.conftest import Artifact, Served, sha256_of
from tests.server.flip_model import FlipModel

TOKEN = "t0ken-of-this-modeldeployment"


def rows(n: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.round(rng.uniform([4.3, 2.0, 1.0, 0.1], [7.9, 4.4, 6.9, 2.5], (n, 4)), 3)


def metric(served: Served, name: str, **labels: str) -> float:
    total = 0.0
    for family in text_string_to_metric_families(served.client.get("/metrics").text):
        for s in family.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                total += s.value
    return total


def configure(stable: Served, target: str, percent: float, token: str = TOKEN, **extra: Any) -> httpx.Response:
    body = {"targets": [target], "percent": percent, "canaryRevision": "canary1", "ttlSeconds": 60, **extra}
    return stable.client.post(shadow.CONFIG_PATH, json=body, headers={"authorization": f"Bearer {token}"})


def user_answers(stable: Served, x: np.ndarray) -> list[bytes]:
    """One request per row, alternating V2 and V1, each with its own request id; every answer must be 200."""
    out = []
    for i, row in enumerate(x.tolist()):
        headers = {"x-request-id": f"user-{i}"}
        if i % 2:
            r = stable.client.post("/v1/models/pipe:predict", json={"instances": [row]}, headers=headers)
        else:
            body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": row}]}
            r = stable.client.post("/v2/models/pipe/infer", json=body, headers=headers)
        assert r.status_code == 200, r.text
        out.append(r.content)
    return out


@pytest.fixture(scope="module")
def flip_artifact(artifacts: dict[str, Artifact], tmp_path_factory: pytest.TempPathFactory) -> Artifact:
    pipe = artifacts["pipe"]
    path = tmp_path_factory.mktemp("flip") / "flip.joblib"
    joblib.dump(FlipModel(pipe.model, 10), path)
    return Artifact("pipe", path, sha256_of(path), pipe.inputs, "predict", None, pipe.rows)


def start(serve: Any, artifact: Artifact, cache_dir: Path, revision: str, **overrides: Any) -> Served:
    settings = artifact.settings(cache_dir, model_revision=revision, pod_name=f"pod-{revision}-{time.monotonic_ns()}",
                                 shadow_token=TOKEN, **overrides)  # fmt: skip
    served: Served = serve(settings)
    return served


def test_stable_answers_are_bit_identical_and_an_equal_canary_agrees_on_every_pair(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    stable = start(serve, artifacts["pipe"], cache_dir, "stable1")
    canary = start(serve, artifacts["pipe"], cache_dir, "canary1")
    x = rows(300, 1)
    without = user_answers(stable, x)
    assert configure(stable, canary.url, 100).status_code == 200
    with_shadow = user_answers(stable, x)
    assert with_shadow == without  # byte for byte, ids included
    pair = {"revision": "canary1", "stable_revision": "stable1"}
    wait_for(lambda: metric(canary, "modeldeploy_shadow_pairs_total", **pair) >= 300, 30, "300 pairs", 0.05)
    assert metric(canary, "modeldeploy_shadow_agreements_total", **pair) == 300
    assert metric(canary, "modeldeploy_shadow_abs_diff_total", **pair) == 0
    assert metric(stable, "modeldeploy_shadow_mirrored_total", canary_revision="canary1", result="sent") == 300
    # mirrored requests are not user traffic: the canary's request counter saw none of them
    assert metric(canary, "modeldeploy_requests_total", code="200") == 0
    assert configure(stable, canary.url, 0).status_code == 200  # off: nothing more is mirrored
    user_answers(stable, x[:20])
    assert metric(stable, "modeldeploy_shadow_mirrored_total", canary_revision="canary1") == 300


def test_a_canary_flipping_ten_percent_of_classes_is_measured_at_ninety_percent_agreement(
    artifacts: dict[str, Artifact], flip_artifact: Artifact, serve: Any, cache_dir: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    stable = start(serve, artifacts["pipe"], cache_dir, "stable2")
    canary = start(serve, flip_artifact, cache_dir, "canary1")
    assert configure(stable, canary.url, 50, logDisagreements=3, diffCap=0.5).status_code == 200
    x = rows(1600, 2)
    with caplog.at_level(logging.WARNING, logger="modeldeploy_server.shadow"):
        user_answers(stable, x)
        sent = {"canary_revision": "canary1", "result": "sent"}
        wait_for(lambda: metric(stable, "modeldeploy_shadow_mirrored_total", **sent) > 0 and metric(
            canary, "modeldeploy_shadow_pairs_total", stable_revision="stable2") == metric(
            stable, "modeldeploy_shadow_mirrored_total", **sent), 30, "every mirrored row paired", 0.05)  # fmt: skip
    pairs = metric(canary, "modeldeploy_shadow_pairs_total", stable_revision="stable2")
    agree = metric(canary, "modeldeploy_shadow_agreements_total", stable_revision="stable2")
    assert 650 <= pairs <= 950  # 50% of 1600
    assert 0.86 <= agree / pairs <= 0.94, agree / pairs
    # another class is 1 or 2 apart: each such row counts the step's cap (0.5), sent by stable with the pair
    assert metric(canary, "modeldeploy_shadow_abs_diff_total", stable_revision="stable2") == 0.5 * (pairs - agree)
    logged = [r for r in caplog.records if r.getMessage() == "shadow disagreement"]
    assert len(logged) == 3
    fields = logged[0].__dict__["fields"]
    assert len(fields["input"]) == 4 and fields["stable"] != fields["canary"]


def test_without_the_token_nobody_can_compare_or_configure(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    canary = start(serve, artifacts["pipe"], cache_dir, "canary3")
    y = np.array([2], dtype=np.int64)
    forged = b'{"instances": [[5.0, 3.0, 1.5, 0.2]]}'
    body = forged + shadow.encode_answer(y)
    headers = {"x-modeldeploy-shadow-kind": "v1", "x-modeldeploy-shadow-request-length": str(len(forged)),
               "x-modeldeploy-shadow-stable-revision": "stable3"}  # fmt: skip
    for auth in ({}, {"authorization": "Bearer wrong"}, {"authorization": TOKEN}):
        r = canary.client.post(shadow.COMPARE_PATH, content=body, headers={**headers, **auth})
        assert r.status_code == 403, r.text
        assert configure(canary, "http://127.0.0.1:9", 100, token="wrong").status_code == 403
    assert metric(canary, "modeldeploy_shadow_pairs_total", stable_revision="stable3") == 0
    r = canary.client.post(shadow.COMPARE_PATH, content=body, headers={**headers, "authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 200 and r.json() == {"rows": 1, "agreements": 0, "canaryStatus": 200}
    assert metric(canary, "modeldeploy_shadow_pairs_total", stable_revision="stable3") == 1


def test_a_server_without_a_token_refuses_both_endpoints(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    plain: Served = serve(artifacts["pipe"].settings(cache_dir, pod_name="pod-plain"))
    assert configure(plain, "http://127.0.0.1:9", 100).status_code == 403
    r = plain.client.post(shadow.COMPARE_PATH, content=b"x", headers={"authorization": f"Bearer {TOKEN}"})
    assert r.status_code == 403 and "MODELDEPLOY_SHADOW_TOKEN" in r.json()["error"]


def test_an_unreachable_canary_and_a_full_queue_are_counted_drops_and_no_user_request_fails(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    stable = start(serve, artifacts["pipe"], cache_dir, "stable4", shadow_queue=1, shadow_timeout_seconds=0.5)
    with __import__("socket").socket() as closed:  # a port nobody listens on
        closed.bind(("127.0.0.1", 0))
        target = f"http://127.0.0.1:{closed.getsockname()[1]}"
    assert configure(stable, target, 100).status_code == 200
    user_answers(stable, rows(200, 4))  # every one 200 (asserted inside)
    total = lambda: metric(stable, "modeldeploy_shadow_mirrored_total", canary_revision="canary1")  # noqa: E731
    wait_for(lambda: total() == 200, 30, "200 answers", 0.05)
    sent = metric(stable, "modeldeploy_shadow_mirrored_total", canary_revision="canary1", result="sent")
    assert sent == 0
    assert metric(stable, "modeldeploy_shadow_mirrored_total", canary_revision="canary1", result="error") > 0


@pytest.mark.parametrize(
    ("body", "field"),
    [({"targets": ["ftp://x"], "percent": 5, "canaryRevision": "c", "ttlSeconds": 5}, "targets"),
     ({"targets": ["http://x/evil?"], "percent": 5, "canaryRevision": "c", "ttlSeconds": 5}, "targets"),
     ({"targets": [], "percent": 5, "canaryRevision": "c", "ttlSeconds": 5}, "targets"),
     ({"targets": ["http://x"], "percent": 500, "canaryRevision": "c", "ttlSeconds": 5}, "percent 500"),
     ({"targets": ["http://x"], "percent": 5, "canaryRevision": "c"}, "ttlSeconds"),
     ({"targets": ["http://x"], "percent": True, "canaryRevision": "c", "ttlSeconds": 5}, "percent"),
     ({"targets": ["http://x"], "percent": 5, "canaryRevision": "c", "ttlSeconds": 5, "diffCap": 0}, "diffCap")],
)  # fmt: skip
def test_a_bad_config_names_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(Exception, match=field) as err:
        shadow.Config.parse(body, 0.0)
    assert getattr(err.value, "status", None) == 400


def test_the_config_expires_by_itself(tmp_path: Path) -> None:
    store = shadow.Store("pod-x", str(tmp_path))
    store.write(shadow.Config.parse({"targets": ["http://c:1"], "percent": 25, "canaryRevision": "c", "ttlSeconds": 15},
                                    1000.0))  # fmt: skip
    assert store.current(1010.0) is not None and store.current(1010.0).percent == 25  # type: ignore[union-attr]
    assert store.current(1016.0) is None  # the operator stopped renewing it: the shadow ends


def test_compare_rows_classes_probabilities_and_shapes() -> None:
    agreed, diff = shadow.compare(np.array([0, 1, 2]), np.array([0, 2, 2]), 0.0)
    assert agreed.tolist() == [True, False, True] and diff.tolist() == [0, 1, 0]
    p = np.array([[0.9, 0.1], [0.5, 0.5]])
    q = np.array([[0.89, 0.11], [0.2, 0.8]])
    agreed, diff = shadow.compare(p, q, 0.02)
    assert agreed.tolist() == [True, False] and np.allclose(diff, [0.01, 0.3])
    agreed, diff = shadow.compare(np.array([100.0]), np.array([103.0]), 0.5)
    assert agreed.tolist() == [False] and diff.tolist() == [1.0]  # capped at 1
    agreed, diff = shadow.compare(np.array([100.0, 50.0]), np.array([103.0, 90.0]), 0.5, cap=25.0)
    assert agreed.tolist() == [False, False] and diff.tolist() == [3.0, 25.0]  # a regressor: cap from the step
    agreed, diff = shadow.compare(p, np.array([[1.0, 0, 0], [1, 0, 0]]), 0.5, cap=25.0)
    assert diff.tolist() == [25.0, 25.0]  # another shape: the cap
    agreed, diff = shadow.compare(np.array(["a", "b"], dtype=object), np.array(["a", "c"], dtype=object), 0)
    assert agreed.tolist() == [True, False]
    agreed, _ = shadow.compare(p, np.array([[1.0, 0, 0], [1, 0, 0]]), 0.5)  # another number of classes
    assert not agreed.any()
    y = np.array(["setosa", "virginica"], dtype=object)
    assert shadow.decode_answer(shadow.encode_answer(y)).tolist() == y.tolist()


def test_the_operators_control_calls_turn_mirroring_on_and_off(
    artifacts: dict[str, Artifact], cache_dir: Path, tmp_path: Path
) -> None:
    """ShadowControl as the operator's shell runs it, against two real servers (pod addresses
    127.0.0.2 and 127.0.0.3 on one port, as pods on one container port): the token derived from the
    ModelDeployment is accepted, the canary pairs what stable mirrors, and percent 0 stops it."""
    import threading

    import uvicorn

    from modeldeploy_operator import shadowctl
    from modeldeploy_operator.model import Decision, Meta, PodState, RevisionState, ShadowTarget
    from modeldeploy_server.app import App
    from modeldeploy_server.runtime import load_runtime
    from tests.server.conftest import free_port

    key, meta = b"k" * 32, Meta("pipe", "ml", "uid-9")
    port = free_port()
    servers = []
    for ip, revision in (("127.0.0.2", "stable9"), ("127.0.0.3", "canary9")):
        settings = artifacts["pipe"].settings(cache_dir, model_revision=revision, pod_name=f"pod-{revision}",
                                              shadow_token=shadowctl.token(key, meta))  # fmt: skip
        server = uvicorn.Server(uvicorn.Config(App(settings, load_runtime(settings)), host=ip, port=port,
                                               loop="asyncio", log_config=None, lifespan="on"))  # fmt: skip
        threading.Thread(target=server.run, daemon=True).start()
        servers.append(server)
    wait_for(lambda: all(s.started for s in servers), 30, "both servers started", 0.05)
    try:
        stable = Served(f"http://127.0.0.2:{port}", None, httpx.Client(base_url=f"http://127.0.0.2:{port}"))  # type: ignore[arg-type]
        canary = Served(f"http://127.0.0.3:{port}", None, httpx.Client(base_url=f"http://127.0.0.3:{port}"))  # type: ignore[arg-type]
        revisions = {
            "stable9": RevisionState(1, (PodState("s-0", ready=True, ip="127.0.0.2"),)),
            "canary9": RevisionState(1, (PodState("c-0", ready=True, ip="127.0.0.3"),)),
        }
        control = shadowctl.ShadowControl(key, 15, port=port)
        target = ShadowTarget("stable9", "canary9", "pipe-canary", 100, 0.0, 0)
        control.push(Decision(status=None, shadow=target), meta, revisions)  # type: ignore[arg-type]
        user_answers(stable, rows(40, 9))
        pairs = {"revision": "canary9", "stable_revision": "stable9"}
        wait_for(lambda: metric(canary, "modeldeploy_shadow_pairs_total", **pairs) == 40, 30, "40 pairs", 0.05)
        control.push(Decision(status=None), meta, revisions)  # type: ignore[arg-type]  # the step is over
        user_answers(stable, rows(40, 10))
        assert metric(stable, "modeldeploy_shadow_mirrored_total", canary_revision="canary9") == 40
        assert control.told == {}
        wrong = shadowctl.ShadowControl(b"another operator key" * 2, 15, port=port)
        wrong.push(Decision(status=None, shadow=target), meta, revisions)  # type: ignore[arg-type]
        user_answers(stable, rows(20, 11))
        assert metric(stable, "modeldeploy_shadow_mirrored_total", canary_revision="canary9") == 40  # refused
    finally:
        for server in servers:
            server.should_exit = True


def test_the_operators_shadow_queries_name_the_servers_series(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    """Every metric and label the operator's shadow check asks Prometheus for is one the servers export."""
    from modeldeploy_operator import shadow as check

    stable = start(serve, artifacts["pipe"], cache_dir, "stable5")
    canary = start(serve, artifacts["pipe"], cache_dir, "canary1")
    assert configure(stable, canary.url, 100).status_code == 200
    user_answers(stable, rows(4, 5))
    wait_for(lambda: metric(canary, check.PAIRS_METRIC, stable_revision="stable5") == 4, 30, "4 pairs", 0.05)
    exported = {}
    for served in (stable, canary):
        for family in text_string_to_metric_families(served.client.get("/metrics").text):
            for s in family.samples:
                exported.setdefault(s.name, set()).update(s.labels)
    for promql in check.queries("ns", "pipe", "canary1", "stable5").values():
        name = promql.removeprefix("sum(").split("{", 1)[0]
        labels = set(re.findall(r"(\w+)(?:=|!=)\"", promql)) - {"namespace"}  # namespace: Prometheus' scrape
        assert name in exported, (name, sorted(exported))
        assert labels <= exported[name], (name, labels - exported[name])
