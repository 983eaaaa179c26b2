"""A deliberately slow model for the drain test (importable by the server subprocess)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


class SlowModel:
    n_features_in_ = 4

    def __init__(self, seconds: float, marker: str | None = None) -> None:
        self.seconds = seconds
        self.marker = marker  # a file created when a slow request is inside the model
        self.calls = 0

    def predict(self, x: Any) -> np.ndarray:
        self.calls += 1
        if self.calls > 2:  # the load-time self-checks are fast; requests are slow
            if self.marker:
                Path(self.marker).touch()
            time.sleep(self.seconds)
        return np.zeros(len(x), dtype=np.int64)
