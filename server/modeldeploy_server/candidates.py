"""Exact fast paths for an sklearn model, each a (name, build) pair; every one is bit-identical by construction.

Owned here: how each candidate computes predictions. A candidate replays the very floating-point
operations of the artifact's own method, in the same order, without its per-call overhead
(validation, joblib dispatch, pipeline bookkeeping):

- `exact-forest`: a bare RandomForest/ExtraTrees classifier or regressor. sklearn casts the rows to
  float32, sums each tree's leaf values into a float64 array in tree order, then divides by the
  number of trees (predict: argmax over that). So does this path: for a large batch by calling
  each tree's own `tree_.predict`, for a small one by walking all trees at once (`_Packed`).
  (With `n_jobs` > 1 sklearn itself sums in thread order, so its own last bit varies from call
  to call; this path gives the tree-order sum, one of sklearn's own answers.)
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


SMALL_BATCH = 16  # up to this many rows, all trees are walked at once (numpy); above, tree by tree (Cython)


class _Packed:
    """All trees of a forest in flat arrays, walked for every (row, tree) pair at once.

    A leaf points to itself, so walking on until no node moves ends at each tree's leaf. Each split
    compares float32(x) with the float64 threshold, NaN going where the tree's `missing_go_to_left`
    says: the decisions of sklearn's `Tree.apply`. The leaf values are summed in tree order from 0.0
    (`np.add.accumulate` is sequential), then divided by the number of trees: sklearn's float64
    arithmetic, so the result is bit-identical for any number of rows.
    """

    def __init__(self, trees: list[Any], width: int) -> None:
        offsets = np.cumsum([0] + [int(t.node_count) for t in trees[:-1]]).astype(np.intp)
        lefts, rights, features, thresholds, missing, values = [], [], [], [], [], []
        for offset, tree in zip(offsets, trees, strict=True):
            ids = np.arange(int(tree.node_count), dtype=np.intp)
            left, right = np.asarray(tree.children_left, np.intp), np.asarray(tree.children_right, np.intp)
            leaf = (left == -1) & (right == -1)
            lefts.append(np.where(leaf, ids, left) + offset)
            rights.append(np.where(leaf, ids, right) + offset)
            features.append(np.where(leaf, 0, np.asarray(tree.feature, np.intp)))
            thresholds.append(np.asarray(tree.threshold, np.float64))
            go_left = getattr(tree, "missing_go_to_left", None)
            missing.append(np.zeros(len(ids), bool) if go_left is None else np.asarray(go_left, bool))
            values.append(np.asarray(tree.value, np.float64)[:, 0, :width])
        self.roots = offsets
        self.left, self.right = np.concatenate(lefts), np.concatenate(rights)
        self.feature, self.threshold = np.concatenate(features), np.concatenate(thresholds)
        self.missing, self.value = np.concatenate(missing), np.concatenate(values)
        self.count = len(trees)

    def mean(self, x32: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
        rows = np.arange(len(x32))[:, None]
        node = np.broadcast_to(self.roots, (len(x32), self.count))
        while True:
            v = x32[rows, self.feature[node]]
            go_left = v <= self.threshold[node]
            nan = np.isnan(v)
            if nan.any():
                go_left = np.where(nan, self.missing[node], go_left)
            moved = np.where(go_left, self.left[node], self.right[node])
            if np.array_equal(moved, node):
                break
            node = moved
        leaves = self.value[node]  # rows x trees x outputs
        padded = np.concatenate([np.zeros((len(x32), 1, leaves.shape[2])), leaves], axis=1)
        out: npt.NDArray[np.float64] = np.add.accumulate(padded, axis=1)[:, -1]
        out /= self.count
        return out


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
    classifier = hasattr(model, "classes_")
    width = int(model.n_classes_) if classifier else 1
    if method not in (("predict", "predict_proba") if classifier else ("predict",)):
        return None

    def build() -> Predict:
        packed = _Packed(trees, width)

        def mean(x: Matrix) -> npt.NDArray[np.float64]:
            x32 = np.ascontiguousarray(x, dtype=np.float32)
            if len(x32) <= SMALL_BATCH:
                return packed.mean(x32)
            out = np.zeros((x32.shape[0], width), dtype=np.float64)
            for tree in trees:  # the order and arithmetic of the forest's predict_proba / predict
                out += tree.predict(x32)[:, :width]
            out /= count
            return out

        if not classifier:
            return lambda x: mean(x)[:, 0]
        if method == "predict_proba":
            return mean
        classes = model.classes_
        return lambda x: classes.take(np.argmax(mean(x), axis=1), axis=0)

    return build


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
