"""Exact fast paths for an sklearn model, each a (name, build) pair; every one is bit-identical by construction.

Owned here: how each candidate computes predictions. A candidate replays the very floating-point
operations of the artifact's own method, in the same order, without its per-call overhead
(validation, joblib dispatch, pipeline bookkeeping):

- `exact-forest`: a bare RandomForest/ExtraTrees classifier or regressor. sklearn casts the rows to
  float32, sums each tree's leaf values into a float64 array in tree order, then divides by the
  number of trees (predict: argmax over that). So does this path, calling each tree's own
  `tree_.predict`. (With `n_jobs` > 1 sklearn itself sums in thread order, so its own last bit
  varies from call to call; this path gives the tree-order sum, one of sklearn's own answers.)
- `exact-linear`: a bare LogisticRegression/RidgeClassifier/LinearRegression/Ridge with float64
  coefficients: `x @ coef_.T + intercept_`, the same BLAS call as sklearn's decision function.
- `exact-pipeline`: a Pipeline of dense float64 StandardScalers (or passthrough) in front of one
  of the above: `x - mean_`, then `/ scale_` (sklearn's transform arithmetic), then the final
  step's exact path on the transformed rows, which is where a tree's float32 cast happens.

Nothing else has a fast path: a compiled graph (ONNX) computes in another precision and order, so
its answers can differ from the artifact's (the audit found 2% of classes flipped for
Pipeline(StandardScaler, RandomForest)); such models are served by their own method.
Called by `fastpath.choose`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_server.contract import Matrix

Predict = Callable[[Matrix], npt.NDArray[Any]]
Build = Callable[[], Predict]
Vector = npt.NDArray[np.float64]


def _forest(model: Any, method: str) -> Build | None:
    from sklearn.ensemble import (
        ExtraTreesClassifier,
        ExtraTreesRegressor,
        RandomForestClassifier,
        RandomForestRegressor,
    )

    if type(model) not in (RandomForestClassifier, ExtraTreesClassifier, RandomForestRegressor, ExtraTreesRegressor):
        return None
    if getattr(model, "n_outputs_", 1) != 1:
        return None
    trees = [e.tree_ for e in model.estimators_]
    count = len(trees)
    if hasattr(model, "classes_"):
        n_classes = int(model.n_classes_)
        classes = model.classes_

        def proba(x: Matrix) -> npt.NDArray[np.float64]:
            x32 = np.ascontiguousarray(x, dtype=np.float32)
            out = np.zeros((x32.shape[0], n_classes), dtype=np.float64)
            for tree in trees:  # the order and arithmetic of RandomForestClassifier.predict_proba
                out += tree.predict(x32)[:, :n_classes]
            out /= count
            return out

        if method == "predict_proba":
            return lambda: proba
        if method == "predict":
            return lambda: lambda x: classes.take(np.argmax(proba(x), axis=1), axis=0)
        return None
    if method != "predict":
        return None

    def regress(x: Matrix) -> npt.NDArray[np.float64]:
        x32 = np.ascontiguousarray(x, dtype=np.float32)
        out = np.zeros(x32.shape[0], dtype=np.float64)
        for tree in trees:
            out += tree.predict(x32)[:, 0]
        out /= count
        return out

    return lambda: regress


def _linear(model: Any, method: str) -> Build | None:
    from sklearn.linear_model import LinearRegression, LogisticRegression, Ridge, RidgeClassifier
    from sklearn.utils.extmath import softmax

    if type(model) not in (LogisticRegression, RidgeClassifier, LinearRegression, Ridge):
        return None
    coef_t, intercept = model.coef_.T, model.intercept_
    if not isinstance(coef_t, np.ndarray) or coef_t.dtype != np.float64:
        return None

    def decision(x: Matrix) -> npt.NDArray[np.float64]:
        scores: npt.NDArray[np.float64] = x @ coef_t + intercept
        return scores.reshape(-1) if scores.ndim > 1 and scores.shape[1] == 1 else scores

    if not hasattr(model, "classes_"):
        return (lambda: decision) if method == "predict" else None
    classes = model.classes_
    if method == "predict":

        def predict(x: Matrix) -> npt.NDArray[Any]:
            scores = decision(x)
            indices = (scores > 0).astype(np.intp) if scores.ndim == 1 else scores.argmax(axis=1)
            return np.asarray(classes.take(indices, axis=0))

        return lambda: predict
    if method == "predict_proba" and isinstance(model, LogisticRegression) and len(classes) > 2:
        return lambda: lambda x: np.asarray(softmax(decision(x), copy=False))
    return None


def _scalers(steps: list[tuple[str, Any]]) -> list[tuple[Vector | None, Vector | None]]:
    """(mean, scale) of each dense float64 StandardScaler step; ValueError for any other step."""
    from sklearn.preprocessing import StandardScaler

    out = []
    for name, step in steps:
        if step is None or (isinstance(step, str) and step == "passthrough"):
            continue
        if type(step) is not StandardScaler:
            raise ValueError(f"step {name!r} is {type(step).__name__}")
        mean = step.mean_ if step.with_mean else None
        scale = step.scale_ if step.with_std else None
        for values in (mean, scale):
            if values is not None and (not isinstance(values, np.ndarray) or values.dtype != np.float64):
                raise ValueError(f"step {name!r} does not hold float64 statistics")
        out.append((mean, scale))
    return out


def _pipeline(model: Any, method: str) -> Build | None:
    from sklearn.pipeline import Pipeline

    if type(model) is not Pipeline or not model.steps:
        return None
    try:
        scalers = _scalers(list(model.steps[:-1]))
    except ValueError:
        return None
    final = model.steps[-1][1]
    inner = _forest(final, method) or _linear(final, method)
    if inner is None:
        return None

    def build() -> Predict:
        last = inner()

        def predict(x: Matrix) -> npt.NDArray[Any]:
            xt = np.array(x, dtype=np.float64)  # StandardScaler.transform works on a float64 copy
            for mean, scale in scalers:
                if mean is not None:
                    xt -= mean
                if scale is not None:
                    xt /= scale
            return last(xt)

        return predict

    return build


def candidates(model: Any, method: str) -> Iterator[tuple[str, Build]]:
    """Every exact path that applies to this model and method (at most one today)."""
    for name, maker in (("exact-forest", _forest), ("exact-linear", _linear), ("exact-pipeline", _pipeline)):
        build = maker(model, method)
        if build is not None:
            yield name, build
