"""Verification rows: the inputs on which a fast path must reproduce the artifact's own predictions.

Owned here: a deterministic set of rows spread over each feature's declared range (or, where the
contract has no bounds, over the range the model itself reveals: a tree's split thresholds, a
scaler's mean +- 4 standard deviations), plus, for tree models (bare, or behind StandardScalers,
mapped back to input space), rows placed exactly on split thresholds (as float32, the precision
trees compare in, and as float64) and one step either side, where a path that rounds thresholds
differently would show it. Called by `fastpath.choose` and the model-zoo equivalence test.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from modeldeploy_server.contract import Contract, Matrix

N_RANDOM = 512
MAX_THRESHOLDS_PER_FEATURE = 2000


def trees(model: Any) -> list[Any]:
    """The fitted `Tree` objects of a bare tree model (none for anything else)."""
    if hasattr(model, "tree_"):
        return [model.tree_]
    estimators = getattr(model, "estimators_", None)
    if estimators is None:
        return []
    flat = np.asarray(estimators, dtype=object).ravel()
    return [e.tree_ for e in flat if hasattr(e, "tree_")]


def _scaled_trees(model: Any, width: int) -> tuple[list[Any], np.ndarray, np.ndarray]:
    """The trees and the (mean, scale) that maps an input feature to what the trees compare.

    A bare tree model sees its inputs; a Pipeline of StandardScalers in front of trees sees
    (x - mean) / scale, so its thresholds are mapped back to input space as t * scale + mean.
    """
    mean, scale = np.zeros(width), np.ones(width)
    steps = getattr(model, "steps", None)
    if not steps:
        return trees(model), mean, scale
    for _, step in steps[:-1]:
        if step is None or isinstance(step, str):
            continue
        m, s = getattr(step, "mean_", None), getattr(step, "scale_", None)
        if type(step).__name__ != "StandardScaler" or m is None or len(m) != width:
            return [], mean, scale
        if step.with_mean:
            mean = mean + scale * np.asarray(m, dtype=np.float64)
        if step.with_std and s is not None:
            scale = scale * np.asarray(s, dtype=np.float64)
    return trees(steps[-1][1]), mean, scale


def _thresholds(model: Any, width: int) -> list[np.ndarray]:
    """Split thresholds per input feature, in input space (bare trees, or scalers in front of trees)."""
    per: list[list[float]] = [[] for _ in range(width)]
    found, mean, scale = _scaled_trees(model, width)
    for tree in found:
        for feature, threshold in zip(tree.feature, tree.threshold, strict=True):
            if 0 <= feature < width:
                per[feature].append(float(threshold) * scale[feature] + mean[feature])
    return [np.unique(np.array(v, dtype=np.float64)) for v in per]


def _scaler_bounds(model: Any, width: int) -> tuple[np.ndarray, np.ndarray] | None:
    steps = getattr(model, "steps", None)
    first = steps[0][1] if steps else model
    mean, scale = getattr(first, "mean_", None), getattr(first, "scale_", None)
    if mean is None or scale is None or len(mean) != width:
        return None
    return np.asarray(mean) - 4 * np.asarray(scale), np.asarray(mean) + 4 * np.asarray(scale)


def reference_rows(model: Any, contract: Contract, seed: int = 0) -> Matrix:
    """Deterministic verification rows inside the contract (never NaN, never a null sentinel)."""
    width = contract.width
    rng = np.random.default_rng(seed)
    lo, hi = contract.lo.copy(), contract.hi.copy()
    thresholds = _thresholds(model, width)
    scaler = _scaler_bounds(model, width)
    for j in range(width):
        if np.isfinite(lo[j]) and np.isfinite(hi[j]):
            continue
        if len(thresholds[j]):
            t_lo, t_hi = thresholds[j][0] - 1.0, thresholds[j][-1] + 1.0
        elif scaler is not None:
            t_lo, t_hi = float(scaler[0][j]), float(scaler[1][j])
        else:
            t_lo, t_hi = -10.0, 10.0
        lo[j] = lo[j] if np.isfinite(lo[j]) else min(t_lo, hi[j] - 1.0)
        hi[j] = hi[j] if np.isfinite(hi[j]) else max(t_hi, lo[j] + 1.0)
    rows = [contract.reference_row(), lo.reshape(1, -1), hi.reshape(1, -1), rng.uniform(lo, hi, size=(N_RANDOM, width))]
    for j, values in enumerate(thresholds):
        # every split threshold of feature j, as the float32 the tree compares against, and one float32 step
        # either side: where a path that rounds thresholds differently (ONNX stores float32) would disagree
        if not len(values):
            continue
        if len(values) > MAX_THRESHOLDS_PER_FEATURE:
            values = rng.choice(values, size=MAX_THRESHOLDS_PER_FEATURE, replace=False)
        at = values.astype(np.float32)
        below, above = np.nextafter(at, np.float32(-np.inf)), np.nextafter(at, np.float32(np.inf))
        for value in (at, below, above, values, np.nextafter(values, -np.inf), np.nextafter(values, np.inf)):
            block = rng.uniform(lo, hi, size=(len(values), width))
            block[:, j] = value.astype(np.float64)
            rows.append(block)
    x = np.vstack(rows)
    x = np.clip(x, lo, hi)
    keep = np.ones(len(x), dtype=bool)
    for j, sentinel in contract.sentinels:
        keep &= ~np.isin(x[:, j], sentinel)
    return np.ascontiguousarray(x[keep])
