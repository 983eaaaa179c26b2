"""A canary that answers like a real sklearn model except on a fixed share of rows, where it answers
another class (importable by server processes, like slow_model)."""

from __future__ import annotations

from typing import Any

import numpy as np


class FlipModel:
    """`model`'s classes, shifted to the next class on rows whose first feature, in thousandths, is
    divisible by `every` (a deterministic 1/every share of rows with spread-out inputs)."""

    def __init__(self, model: Any, every: int = 10) -> None:
        self.model, self.every = model, every
        self.classes_ = model.classes_
        self.n_features_in_ = model.n_features_in_

    def predict(self, x: Any) -> np.ndarray:
        y = np.asarray(self.model.predict(x))
        flip = np.round(np.asarray(x, dtype=np.float64)[:, 0] * 1000).astype(np.int64) % self.every == 0
        shifted = self.classes_[(np.searchsorted(self.classes_, y) + 1) % len(self.classes_)]
        return np.where(flip, shifted, y)
