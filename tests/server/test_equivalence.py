"""Model zoo: every path the server serves gives exactly the artifact's own answers.

For each model family (and every family a fast path covers), the real artifact is loaded with
`load_runtime` (which chooses the serving path), and the served function is compared with the
artifact's own method on 100,000 random rows inside the declared ranges, 20,000 one-decimal rows
(the kind of input the audit's Pipeline(StandardScaler, RandomForest) failed on), the range's
corners and the verification rows on and around every split threshold. Compared in the server's
batch size (256 rows), in small batches (7, 16, 17 rows) and row by row: bit-identical, so 0
class differences.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.compose import ColumnTransformer
from sklearn.datasets import load_iris
from sklearn.ensemble import (
    ExtraTreesClassifier,
    ExtraTreesRegressor,
    GradientBoostingRegressor,
    RandomForestClassifier,
    RandomForestRegressor,
)
from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, RidgeClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import OneHotEncoder, StandardScaler

from modeldeploy_server.runtime import load_runtime
from modeldeploy_server.settings import InputSpec, Settings
from modeldeploy_server.verify import reference_rows
from tests.server.conftest import IRIS_INPUTS, POROSITY_INPUTS, _porosity_data, sha256_of

BATCH = 256  # the server's default MAX_BATCH_ROWS


def _iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return x, y


def _binary() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    return x, (y == 2).astype(int)


def _onehot_iris() -> tuple[np.ndarray, np.ndarray]:
    x, y = load_iris(return_X_y=True)
    x = x.copy()
    x[:, 0] = np.round(x[:, 0])
    return x, y


def _column_lr() -> Any:
    columns = ColumnTransformer([("onehot", OneHotEncoder(handle_unknown="ignore"), [0]),
                                 ("scale", StandardScaler(), [1, 2, 3])])  # fmt: skip
    return make_pipeline(columns, LogisticRegression(max_iter=1000))


Case = tuple[Callable[[], Any], Callable[[], tuple[np.ndarray, np.ndarray]], list[dict[str, Any]], str, str]
ZOO: dict[str, Case] = {
    # name: (model, data, declared inputs, method, the path the server must choose)
    "scaler+forest proba": (lambda: make_pipeline(StandardScaler(), RandomForestClassifier(100, random_state=0)),
                            _iris, IRIS_INPUTS, "predict_proba", "exact-pipeline"),
    "scaler+forest predict": (lambda: make_pipeline(StandardScaler(), RandomForestClassifier(30, random_state=1)),
                              _iris, IRIS_INPUTS, "predict", "exact-pipeline"),
    "onehot+scaler+lr proba": (_column_lr, _onehot_iris, IRIS_INPUTS, "predict_proba", "sklearn"),
    "onehot+scaler+lr predict": (_column_lr, _onehot_iris, IRIS_INPUTS, "predict", "sklearn"),
    "forest proba": (lambda: RandomForestClassifier(100, random_state=0), _iris, IRIS_INPUTS, "predict_proba",
                     "exact-forest"),
    "forest predict": (lambda: RandomForestClassifier(30, random_state=2), _iris, IRIS_INPUTS, "predict",
                       "exact-forest"),
    "extra-trees proba": (lambda: ExtraTreesClassifier(30, random_state=0), _iris, IRIS_INPUTS, "predict_proba",
                          "exact-forest"),
    "lr multiclass proba": (lambda: LogisticRegression(max_iter=1000), _iris, IRIS_INPUTS, "predict_proba",
                            "exact-linear"),
    "lr multiclass predict": (lambda: LogisticRegression(max_iter=1000), _iris, IRIS_INPUTS, "predict",
                              "exact-linear"),
    "lr binary predict": (lambda: LogisticRegression(max_iter=1000), _binary, IRIS_INPUTS, "predict",
                          "exact-linear"),
    "lr binary proba": (lambda: LogisticRegression(max_iter=1000), _binary, IRIS_INPUTS, "predict_proba", "sklearn"),
    "ridge classifier": (lambda: RidgeClassifier(), _iris, IRIS_INPUTS, "predict", "exact-linear"),
    "scaler+lr proba": (lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), _iris,
                        IRIS_INPUTS, "predict_proba", "exact-pipeline"),
    "scaler+lr predict": (lambda: make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000)), _iris,
                          IRIS_INPUTS, "predict", "exact-pipeline"),
    "linear regression": (lambda: LinearRegression(), lambda: _porosity_data(400, 0), POROSITY_INPUTS, "predict",
                          "exact-linear"),
    "ridge": (lambda: Ridge(alpha=0.5), lambda: _porosity_data(400, 0), POROSITY_INPUTS, "predict", "exact-linear"),
    "forest regressor": (lambda: RandomForestRegressor(30, random_state=0), lambda: _porosity_data(400, 0),
                         POROSITY_INPUTS, "predict", "exact-forest"),
    "extra-trees regressor": (lambda: ExtraTreesRegressor(30, random_state=0), lambda: _porosity_data(400, 0),
                              POROSITY_INPUTS, "predict", "exact-forest"),
    "scaler+forest regressor": (lambda: make_pipeline(StandardScaler(), RandomForestRegressor(30, random_state=0)),
                                lambda: _porosity_data(400, 0), POROSITY_INPUTS, "predict", "exact-pipeline"),
    "gradient boosting regressor": (lambda: GradientBoostingRegressor(n_estimators=40, random_state=0),
                                    lambda: _porosity_data(400, 0), POROSITY_INPUTS, "predict", "sklearn"),
}  # fmt: skip


def _rows(settings: Settings, model: Any, runtime: Any) -> np.ndarray:
    rng = np.random.default_rng(7)
    lo = np.array([s.min for s in settings.inputs], dtype=np.float64)
    hi = np.array([s.max for s in settings.inputs], dtype=np.float64)
    uniform = rng.uniform(lo, hi, size=(100_000, len(lo)))
    decimals = np.clip(np.round(rng.uniform(lo, hi, size=(20_000, len(lo))), 1), lo, hi)
    corners = np.array(list(itertools.product(*zip(lo, hi, strict=True))), dtype=np.float64)
    edges = reference_rows(model, runtime.contract, seed=3)  # on, and one step around, every split threshold
    x = np.vstack([uniform, decimals, corners, edges])
    keep = np.ones(len(x), dtype=bool)
    for j, spec in enumerate(settings.inputs):  # the contract refuses null sentinels; they never reach the model
        keep &= ~np.isin(x[:, j], spec.null_values)
    return np.ascontiguousarray(x[keep])


def _identical(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return a.tobytes() == b.tobytes() if a.dtype.kind in "fiub" else bool(np.array_equal(a, b))


@pytest.mark.parametrize("name", list(ZOO))
def test_every_served_path_equals_the_artifacts_method(name: str, tmp_path: Path) -> None:
    make, data, inputs, method, expected_path = ZOO[name]
    x_train, y_train = data()
    model = make().fit(x_train, y_train)
    path = tmp_path / "model.joblib"
    joblib.dump(model, path)
    settings = Settings(model_uri=path.as_uri(), model_sha256=sha256_of(path), model_method=method,  # type: ignore[arg-type]
                        inputs=[InputSpec.model_validate(i) for i in inputs], cache_dir=tmp_path / "cache")  # fmt: skip
    runtime = load_runtime(settings)
    assert runtime.path == expected_path, runtime.notes
    reference = runtime.reference  # the deserialized artifact's own method
    x = _rows(settings, runtime.model, runtime)
    assert len(x) > 120_000
    differing = 0
    for start in range(0, len(x), BATCH):
        chunk = x[start : start + BATCH]
        served, expected = runtime.predict(chunk), reference(chunk)
        if not _identical(served, expected):
            differing += int(np.sum(np.any((served != expected).reshape(len(chunk), -1), axis=1)))
    assert differing == 0, f"{name}: {differing} of {len(x)} rows differ on path {runtime.path}"
    for size in (7, 16, 17):  # small micro-batches (exact-forest walks up to 16 rows in numpy, more in Cython)
        for start in range(0, 700, size):
            chunk = x[-start - size : len(x) - start]
            assert _identical(runtime.predict(chunk), reference(chunk)), (name, size, start)
    picks = np.random.default_rng(1).choice(len(x), 300, replace=False)
    for i in [*range(len(x) - 40, len(x)), *picks]:  # row by row too: the batch of one a lone request gets
        assert _identical(runtime.predict(x[i : i + 1]), reference(x[i : i + 1])), (name, x[i].tolist())
