"""Which prediction classes, prediction bins and input bins the server counts, and counting them.

Owned here: the `Layout` of the judge's distribution series (`metrics` exports them, all created
at 0 when the model loads) and turning one request's rows and answers into counts per series.
Bins come from the reference profile (`profile`) when the server has one, else:
- inputs: a feature declared with both `min` and `max` is split evenly into 10 bins; other
  features are not binned (without a range or a profile there is nothing to split);
- predictions: the positive class's probability of a binary `predict_proba` is split evenly over
  [0, 1] into 10 bins; a regressor's values are binned only from a profile;
- classes: a classifier's classes (`classes_`) count by label; `predict_proba` with more than two
  classes counts the arg-max class.

Cardinality is bounded: at most `MAX_INPUT_SERIES` (features x bins) input series (features in
declared order until the cap is reached; the rest are not binned), `profile.MAX_BINS` bins per
feature and for predictions, `profile.MAX_CLASSES` classes (more: no class series). Bin labels are
the bin's index ("0" is the lowest), so the operator can order them. Called by `metrics`.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from modeldeploy_server.profile import MAX_CLASSES, Binned, Profile

EVEN_BINS = 10
MAX_INPUT_SERIES = 256  # features x bins: 25 features of 10 bins, or 12 of 20
SMALL = 8  # up to this many rows, plain Python (bisect) is cheaper than numpy calls


def even(lo: float, hi: float, bins: int = EVEN_BINS) -> tuple[float, ...]:
    """Inner edges splitting [lo, hi] into `bins` equal bins."""
    return tuple(float(e) for e in np.linspace(lo, hi, bins + 1)[1:-1])


@dataclass(frozen=True)
class Layout:
    """The distribution series of one loaded model."""

    features: tuple[tuple[int, str, tuple[float, ...]], ...]  # (column, name, inner edges)
    classes: tuple[str, ...] | None  # class labels counted (None: not a classifier, or too many)
    score_edges: tuple[float, ...] | None  # prediction bins (binary probability or regressor value)
    score_column: int | None  # which output column is binned (1: binary probabilities; None: 1-D values)
    argmax: bool  # classes from the arg-max of probabilities

    @property
    def input_series(self) -> int:
        return sum(len(edges) + 1 for _, _, edges in self.features)


def layout(
    names: Sequence[str], ranges: Sequence[tuple[float | None, float | None]], classes: Sequence[str] | None,
    method: str, profile: Profile | None,
) -> Layout:  # fmt: skip
    """The series for a model with inputs `names` (declared `ranges`), `classes` (None: a
    regressor or an ONNX model), answering `method`; bins from `profile` when given."""
    features: list[tuple[int, str, tuple[float, ...]]] = []
    used = 0
    for j, (name, (lo, hi)) in enumerate(zip(names, ranges, strict=True)):
        edges: tuple[float, ...] | None = None
        ref = profile.features.get(name) if profile is not None else None
        if ref is not None:
            edges = ref.edges
        elif lo is not None and hi is not None:
            edges = even(lo, hi)
        if edges is None or used + len(edges) + 1 > MAX_INPUT_SERIES:
            continue
        features.append((j, name, edges))
        used += len(edges) + 1
    proba = method == "predict_proba"
    counted = None if classes is None or len(classes) > MAX_CLASSES else tuple(classes)
    score_edges: tuple[float, ...] | None = None
    score_column: int | None = None
    pred: Binned | None = profile.prediction_bins if profile is not None else None
    if proba and counted is not None and len(counted) == 2:
        score_edges, score_column = (pred.edges if pred is not None else even(0.0, 1.0)), 1
    elif not proba and classes is None and pred is not None:
        score_edges = pred.edges  # a regressor: its values' bins come from the profile only
    if proba and counted is not None and len(counted) == 2:
        counted = None  # binary probabilities: the score bins say more than the arg-max
    return Layout(tuple(features), counted, score_edges, score_column, proba)


class Tally:
    """Counts of one layout's series as plain integers in flat slots (input bins, feature by
    feature, then classes, then prediction bins): a request adds to a Python list, never to a
    metric, so counting costs a few microseconds; `metrics` moves the slots into its counters."""

    def __init__(self, lay: Layout) -> None:
        self.layout = lay
        self.slots: list[tuple[str, tuple[str, ...]]] = []  # (family, label values) per slot
        self._features: list[tuple[int, tuple[float, ...], int]] = []  # (column, edges, first slot)
        for column, name, edges in lay.features:
            self._features.append((column, edges, len(self.slots)))
            self.slots += [("input", (name, str(b))) for b in range(len(edges) + 1)]
        self._classes: dict[str, int] = {}
        for label in lay.classes or ():
            self._classes[label] = len(self.slots)
            self.slots.append(("class", (label,)))
        self._score = len(self.slots)
        if lay.score_edges is not None:
            self.slots += [("bin", (str(b),)) for b in range(len(lay.score_edges) + 1)]
        self.counts = [0] * len(self.slots)

    def take(self) -> list[int]:
        """The counts since the last take, and zero them."""
        counts, self.counts = self.counts, [0] * len(self.slots)
        return counts

    def add(self, x: npt.NDArray[np.float64], y: npt.NDArray[Any]) -> None:
        """Count one answered request: its rows `x` by input bin, its answers `y` by class or bin."""
        lay, counts = self.layout, self.counts
        if len(x) <= SMALL:
            for row in x.tolist():
                for column, edges, first in self._features:
                    v = row[column]
                    if v == v:  # not NaN (an optional feature left out is not binned)
                        counts[first + bisect_right(edges, v)] += 1
        else:
            for column, edges, first in self._features:
                self._bulk(first, edges, x[:, column])
        if lay.classes is not None:
            self._add_classes(y)
        if lay.score_edges is not None and y.dtype.kind == "f":
            if lay.score_column is not None:
                if y.ndim != 2 or y.shape[1] <= lay.score_column:
                    return
                values = y[:, lay.score_column]
            else:
                values = y.reshape(len(y), -1)[:, 0]
            self._bulk(self._score, lay.score_edges, values.astype(np.float64, copy=False))

    def _bulk(self, first: int, edges: tuple[float, ...], values: npt.NDArray[np.float64]) -> None:
        counts = self.counts
        if len(values) <= SMALL:
            for v in values.tolist():
                if v == v:
                    counts[first + bisect_right(edges, v)] += 1
            return
        binned = np.bincount(np.searchsorted(edges, values[~np.isnan(values)], side="right"),
                             minlength=len(edges) + 1)  # fmt: skip
        for b in np.flatnonzero(binned).tolist():
            counts[first + b] += int(binned[b])

    def _add_classes(self, y: npt.NDArray[Any]) -> None:
        counts, index, lay = self.counts, self._classes, self.layout
        if lay.argmax:
            if y.ndim == 2 and y.shape[1] == len(index):
                first = self._score - len(index)
                for i in np.argmax(y, axis=1).tolist():
                    counts[first + i] += 1
            return
        if len(y) <= SMALL:
            labels = [str(v) for v in y.reshape(-1).tolist()]
            ones = [1] * len(labels)
        else:
            # the distinct answers first, then their names: sorting 10,000 strings (astype(str)
            # before unique) cost ~5 ms a request, 4x a logistic regression's own predict
            try:
                found, n = np.unique(y.reshape(-1), return_counts=True)
            except TypeError:  # labels of several types (objects) do not sort: by their names then
                found, n = np.unique(y.reshape(-1).astype(str), return_counts=True)
            labels, ones = [str(v) for v in found.tolist()], n.tolist()
        for label, k in zip(labels, ones, strict=True):
            slot = index.get(label)
            if slot is not None:  # a label the model never declared is dropped
                counts[slot] += k
