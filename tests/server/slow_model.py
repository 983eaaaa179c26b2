"""A deliberately slow model for the drain test (importable by the server subprocess)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np


class SlowModel:
    n_features_in_ = 4

    def __init__(self, seconds: float, marker: str | None = None, trigger: float = 1.0) -> None:
        self.seconds = seconds
        self.marker = marker  # a file created when a slow request is inside the model
        self.trigger = trigger  # only rows whose first feature is this are slow

    def predict(self, x: Any) -> np.ndarray:
        # The server predicts its reference row (zeros here) several times on its own: the load-time
        # self-checks, the output type at readiness and again when the serving path is chosen. Those must
        # stay fast and leave no marker; counting calls (the first two were the self-checks) marked one
        # of the server's own calls as the request, so the test sent SIGTERM before its request arrived.
        if float(np.asarray(x)[0][0]) == self.trigger:
            if self.marker:
                Path(self.marker).touch()
            time.sleep(self.seconds)
        return np.zeros(len(x), dtype=np.int64)
