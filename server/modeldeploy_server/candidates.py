"""Candidate fast paths for an sklearn model, each a (name, exact, build) triple.

Owned here: how each candidate computes predictions. `exact=True` candidates replay the very
floating-point operations of the artifact's method without its per-call overhead (validation,
joblib dispatch), so `fastpath.choose` demands bit-identical output from them; the ONNX candidate
(`exact=False`) is held to classes-identical and the stated tolerance. Called by `fastpath.choose`.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_server.contract import Matrix

Build = Callable[[], Callable[[Matrix], npt.NDArray[Any]]]


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
        return lambda: lambda x: classes.take(np.argmax(proba(x), axis=1), axis=0)
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


def _round_thresholds_down(onx: Any, model: Any) -> None:
    """Make ONNX's float32 split thresholds decide exactly like sklearn's float64 ones on float32 inputs.

    sklearn compares float32(x) <= t (t a float64 midpoint); skl2onnx stores float32(t), which can round
    up, flipping the decision for x == float32(t). Replacing each rounded-up threshold by the float32
    just below it makes `x <= t32` and `x <= t` agree for every float32 x.
    """
    from modeldeploy_server.verify import _trees

    trees = _trees(model)
    if not trees:
        return
    for node in onx.graph.node:
        if not node.op_type.startswith("TreeEnsemble"):
            continue
        attrs = {a.name: a for a in node.attribute}
        values = np.array(attrs["nodes_values"].floats, dtype=np.float32)
        rows = zip(attrs["nodes_treeids"].ints, attrs["nodes_nodeids"].ints, attrs["nodes_featureids"].ints,
                   attrs["nodes_modes"].strings, strict=True)  # fmt: skip
        for k, (tree_id, node_id, feature, mode) in enumerate(rows):
            if mode == b"LEAF":
                continue
            tree = trees[tree_id]
            if mode != b"BRANCH_LEQ" or tree.feature[node_id] != feature:
                raise ValueError(f"ONNX node {k} does not match tree {tree_id} node {node_id}")
            threshold = float(tree.threshold[node_id])
            below = np.float32(threshold)
            if float(below) > threshold:
                below = np.nextafter(below, np.float32(-np.inf))
            values[k] = below
        del attrs["nodes_values"].floats[:]
        attrs["nodes_values"].floats.extend(values.tolist())


def _onnx(model: Any, method: str, width: int) -> Build:
    def build() -> Callable[[Matrix], npt.NDArray[Any]]:
        from skl2onnx import convert_sklearn
        from skl2onnx.common.data_types import DoubleTensorType, FloatTensorType
        from sklearn.base import is_classifier

        from modeldeploy_server.fastpath import _onnx_predict, _session
        from modeldeploy_server.verify import _trees

        # trees: float32 input, as sklearn's trees see it; anything else: double first
        types = (FloatTensorType,) if _trees(model) else (DoubleTensorType, FloatTensorType)
        last: Exception | None = None
        for tensor_type in types:
            try:
                final = model.steps[-1][1] if hasattr(model, "steps") else model
                options = {id(final): {"zipmap": False}} if is_classifier(final) else None
                onx = convert_sklearn(model, initial_types=[("input", tensor_type([None, width]))],
                                      options=options)  # fmt: skip
                _round_thresholds_down(onx, model)
                session = _session(onx.SerializeToString())
                predict = _onnx_predict(session, method)
                predict(np.zeros((1, width), dtype=np.float64))
                return predict
            except Exception as exc:  # skl2onnx/onnxruntime raise many types; try the next input type
                last = exc
        assert last is not None
        raise last

    return build


def candidates(model: Any, method: str) -> Iterator[tuple[str, bool, Build]]:
    width = int(getattr(model, "n_features_in_", 0))
    for name, maker in (("exact-forest", _forest), ("exact-linear", _linear)):
        build = maker(model, method)
        if build is not None:
            yield name, True, build
    if width:
        yield "onnx", False, _onnx(model, method, width)
