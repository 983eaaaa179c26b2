"""The judge's distribution series (classes, prediction bins, input bins, non-finite answers) on the
real server over real HTTP with real scikit-learn models: all created at 0 when the model loads,
counted exactly as the model answered, bins from the verified reference profile when given."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sklearn.datasets import load_iris
from sklearn.linear_model import LinearRegression, LogisticRegression

from modeldeploy_server import binning, profile
from modeldeploy_server.errors import LoadRefused
from modeldeploy_server.metrics import FLUSH_SECONDS, Metrics
from modeldeploy_server.runtime import load_runtime
from tests.server.conftest import Artifact, Served, sha256_of

IRIS_EDGES = np.linspace(0.0, 10.0, 11)[1:-1]  # the declared range [0, 10] split evenly


def _samples(served: Served, name: str) -> dict[tuple[tuple[str, str], ...], float]:
    """Samples of one metric family, keyed by their labels other than model/version/revision."""
    text = served.client.get("/metrics").text
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            if s.name == name:
                key = tuple(sorted((k, v) for k, v in s.labels.items() if k not in ("model", "version", "revision")))
                out[key] = s.value
    return out


def _predict(served: Served, model: str, rows: np.ndarray) -> None:
    for start in range(0, len(rows), 50):  # several requests, batched and single rows alike
        chunk = rows[start : start + 50].tolist()
        r = served.client.post(f"/v1/models/{model}:predict", json={"instances": chunk})
        assert r.status_code == 200, r.text
    r = served.client.post(f"/v1/models/{model}:predict", json={"instances": [rows[0].tolist()]})
    assert r.status_code == 200, r.text


def _input_expected(rows: np.ndarray, names: list[str], edges: dict[str, np.ndarray]) -> dict[Any, float]:
    out: dict[Any, float] = {}
    for j, name in enumerate(names):
        bins = np.searchsorted(edges[name], rows[:, j], side="right")
        for b in range(len(edges[name]) + 1):
            out[(("bin", str(b)), ("feature", name))] = float(np.sum(bins == b))
    return out


def test_classifier_classes_and_input_bins_start_at_zero_and_count_what_the_model_answered(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    art = artifacts["pipe"]
    served = serve(art.settings(cache_dir))
    classes = _samples(served, "modeldeploy_prediction_class_total")
    assert classes == {(("class", c),): 0.0 for c in ("0", "1", "2")}
    inputs = _samples(served, "modeldeploy_input_bin_total")
    assert len(inputs) == 4 * 10 and set(inputs.values()) == {0.0}
    assert _samples(served, "modeldeploy_nonfinite_outputs_total") == {(): 0.0}
    assert _samples(served, "modeldeploy_prediction_bin_total") == {}  # labels, not scores

    rows = art.rows
    _predict(served, "pipe", rows)
    sent = np.vstack([rows, rows[:1]])
    labels, counts = np.unique(art.model.predict(sent), return_counts=True)
    expected = {(("class", str(c)),): float(n) for c, n in zip(labels, counts, strict=True)}
    expected = {(("class", c),): 0.0 for c in ("0", "1", "2")} | expected
    assert _samples(served, "modeldeploy_prediction_class_total") == expected
    names = [i["name"] for i in art.inputs]
    assert _samples(served, "modeldeploy_input_bin_total") == _input_expected(
        sent, names, dict.fromkeys(names, IRIS_EDGES)
    )


def test_multiclass_probabilities_count_the_arg_max_class(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path
) -> None:
    art = artifacts["forest"]  # predict_proba over 3 classes
    served = serve(art.settings(cache_dir))
    _predict(served, "forest", art.rows)
    sent = np.vstack([art.rows, art.rows[:1]])
    winners = np.argmax(art.model.predict_proba(sent), axis=1)
    expected = {(("class", str(c)),): float(np.sum(winners == i)) for i, c in enumerate(art.model.classes_)}
    assert _samples(served, "modeldeploy_prediction_class_total") == expected


def test_binary_probability_scores_fall_in_ten_even_bins(tmp_path: Path, serve: Any, cache_dir: Path) -> None:
    x, y = load_iris(return_X_y=True)
    model = LogisticRegression(max_iter=500).fit(x, (y == 2).astype(int))
    path = tmp_path / "binary.joblib"
    joblib.dump(model, path)
    inputs = [{"name": f"x{j}"} for j in range(4)]  # no ranges: no input bins without a profile
    art = Artifact("binary", path, sha256_of(path), inputs, "predict_proba", model, x)
    served = serve(art.settings(cache_dir))
    assert _samples(served, "modeldeploy_input_bin_total") == {}
    assert _samples(served, "modeldeploy_prediction_class_total") == {}
    assert _samples(served, "modeldeploy_prediction_bin_total") == {(("bin", str(b)),): 0.0 for b in range(10)}
    _predict(served, "binary", x)
    scores = model.predict_proba(np.vstack([x, x[:1]]))[:, 1]
    bins = np.searchsorted(np.linspace(0, 1, 11)[1:-1], scores, side="right")
    expected = {(("bin", str(b)),): float(np.sum(bins == b)) for b in range(10)}
    assert _samples(served, "modeldeploy_prediction_bin_total") == expected


def _write_profile(tmp_path: Path, data: dict[str, Any]) -> tuple[str, str]:
    raw = profile.dumps(data)
    path = tmp_path / "reference.json"
    path.write_bytes(raw)
    return path.as_uri(), profile.sha256(raw)


def test_regressor_bins_come_from_the_verified_reference_profile(
    artifacts: dict[str, Artifact], serve: Any, cache_dir: Path, tmp_path: Path
) -> None:
    art = artifacts["porosity"]
    names = [i["name"] for i in art.inputs]
    data = profile.build(art.rows, names, art.model.predict(art.rows), None)
    uri, digest = _write_profile(tmp_path, data)
    served = serve(art.settings(cache_dir, reference_uri=uri, reference_sha256=digest))
    edges = {f["name"]: np.array(f["edges"]) for f in data["features"]}
    reference = _samples(served, "modeldeploy_input_reference_proportion")
    for f in data["features"]:
        for b, share in enumerate(f["proportions"]):
            assert reference[(("bin", str(b)), ("feature", f["name"]))] == pytest.approx(share)
    value_edges = np.array(data["prediction"]["edges"])
    assert len(_samples(served, "modeldeploy_prediction_bin_total")) == len(value_edges) + 1

    rows = art.rows[:120]
    _predict(served, "porosity", rows)
    sent = np.vstack([rows, rows[:1]])
    assert _samples(served, "modeldeploy_input_bin_total") == _input_expected(sent, names, edges)
    bins = np.searchsorted(value_edges, art.model.predict(sent), side="right")
    expected = {(("bin", str(b)),): float(np.sum(bins == b)) for b in range(len(value_edges) + 1)}
    assert _samples(served, "modeldeploy_prediction_bin_total") == expected


def test_a_profile_that_does_not_match_its_digest_or_its_model_is_refused(
    artifacts: dict[str, Artifact], cache_dir: Path, tmp_path: Path
) -> None:
    art = artifacts["porosity"]
    names = [i["name"] for i in art.inputs]
    data = profile.build(art.rows, names, art.model.predict(art.rows), None)
    uri, digest = _write_profile(tmp_path, data)
    with pytest.raises(LoadRefused, match="sha256|SHA-256|digest"):
        load_runtime(art.settings(cache_dir, reference_uri=uri, reference_sha256="0" * 64))
    with pytest.raises(LoadRefused, match="MODELDEPLOY_REFERENCE_SHA256"):
        load_runtime(art.settings(cache_dir, reference_uri=uri))
    data["features"][0]["name"] = "DT"
    uri, digest = _write_profile(tmp_path, data)
    with pytest.raises(LoadRefused, match=r"feature\(s\) \['DT'\] the model does not take"):
        load_runtime(art.settings(cache_dir, reference_uri=uri, reference_sha256=digest))
    data["features"][0]["proportions"] = [1.0]
    uri, digest = _write_profile(tmp_path, data)
    with pytest.raises(LoadRefused, match=r"features\[0\]\.proportions.*must hold"):
        load_runtime(art.settings(cache_dir, reference_uri=uri, reference_sha256=digest))


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # sklearn warns of the inf it computes
def test_non_finite_answers_are_counted_per_row(tmp_path: Path, serve: Any, cache_dir: Path) -> None:
    """A LinearRegression whose coefficient is inf answers inf for x > 0 and NaN for x == 0."""
    model = LinearRegression().fit(np.array([[0.0], [1.0]]), np.array([0.0, 1.0]))
    model.coef_ = np.array([np.inf])
    path = tmp_path / "inf.joblib"
    joblib.dump(model, path)
    art = Artifact("inf", path, sha256_of(path), [{"name": "x", "min": -1.0, "max": 1.0}], "predict", model,
                   np.zeros((1, 1)))  # fmt: skip
    served = serve(art.settings(cache_dir, compile="off"))
    r = served.client.post("/v1/models/inf:predict", json={"instances": [[0.5], [0.0], [-0.5]]})
    assert r.status_code == 500 and "non-finite" in r.text
    assert _samples(served, "modeldeploy_nonfinite_outputs_total") == {(): 3.0}
    assert set(_samples(served, "modeldeploy_input_bin_total").values()) == {0.0}  # refused rows are not binned


def test_input_series_are_capped() -> None:
    names = [f"f{j}" for j in range(40)]
    lay = binning.layout(names, [(0.0, 1.0)] * 40, None, "predict", None)
    assert lay.input_series == binning.MAX_INPUT_SERIES - binning.MAX_INPUT_SERIES % 10
    assert [name for _, name, _ in lay.features] == names[: binning.MAX_INPUT_SERIES // 10]


def _one_input_metrics() -> tuple[Metrics, Callable[[], float]]:
    metrics = Metrics("m", "1", "r1")
    metrics.set_layout(binning.layout(["x"], [(0.0, 1.0)], ["0", "1"], "predict", None))

    def counted() -> float:  # the counter's value as exported, without the flush a render does
        value = metrics.registry.get_sample_value(
            "modeldeploy_prediction_class_total", {"model": "m", "version": "1", "revision": "r1", "class": "1"}
        )
        return float(value or 0.0)

    return metrics, counted


def test_counts_left_after_a_burst_reach_the_counters_without_another_request() -> None:
    """A scrape renders the counts of the worker it reaches; a worker that answered a burst and
    then went idle must still export its last rows (within FLUSH_SECONDS), not at its next request."""
    metrics, counted = _one_input_metrics()

    async def burst_then_idle() -> tuple[float, float]:
        for _ in range(3):  # the first flushes at once, the next two fall inside FLUSH_SECONDS
            metrics.predicted(np.array([[0.5]]), np.array(["1"]))
        right_after = counted()
        await asyncio.sleep(2 * FLUSH_SECONDS)
        return right_after, counted()

    right_after, later = asyncio.run(burst_then_idle())
    assert right_after == 1.0  # the throttle holds the burst's tail back ...
    assert later == 3.0  # ... only until the timer moves it into the counters


def test_rows_counted_before_the_serving_path_changes_are_kept() -> None:
    """The server sets the layout again when it switches to a faster serving path after loading;
    the rows it answered in between are exported, not dropped with the old tally."""
    metrics, counted = _one_input_metrics()
    for _ in range(2):  # no event loop here: the second row waits for a flush
        metrics.predicted(np.array([[0.5]]), np.array(["1"]))
    metrics.set_layout(binning.layout(["x"], [(0.0, 1.0)], ["0", "1"], "predict", None))
    assert counted() == 2.0


@pytest.mark.parametrize(
    "labels",
    [np.array([0, 2, 1, 2, 2, 0, 1, 1, 2, 0, 2]), np.array(["setosa", "virginica"] * 6, dtype=object),
     np.array([1.0, 0.0] * 6), np.array([0, "virginica", 1] * 4, dtype=object)],  # fmt: skip
    ids=["ints", "strings", "floats", "mixed-objects"],
)
def test_a_large_request_counts_classes_by_the_same_names_as_row_by_row(labels: np.ndarray) -> None:
    """Above SMALL rows the classes are counted on the distinct answers, named as single rows name
    them (sorting every answer as a string cost ~5 ms a 10,000-row request); labels that do not
    sort together (mixed objects) are still counted."""
    assert len(labels) > binning.SMALL
    names = sorted({str(v) for v in labels.tolist()})
    x = np.zeros((len(labels), 1))
    bulk = binning.Tally(binning.layout(["x"], [(0.0, 1.0)], names, "predict", None))
    bulk.add(x, labels)
    single = binning.Tally(bulk.layout)
    for i in range(len(labels)):
        single.add(x[i : i + 1], labels[i : i + 1])
    assert bulk.take() == single.take()
