"""A KServe 0.21 Python model server serving a joblib sklearn model (run inside the kserve venv).

What KServe's sklearnserver does, reduced to the v1 path: load with joblib, predict the
`instances`. Usage: python kserve_sklearn.py <name> <model.joblib> <http_port>
"""

from __future__ import annotations

import sys
from typing import Any

import joblib
import kserve
import numpy as np


class SKLearnModel(kserve.Model):  # type: ignore[misc]
    def __init__(self, name: str, path: str) -> None:
        super().__init__(name)
        self.path = path
        self.model: Any = None

    def load(self) -> bool:
        self.model = joblib.load(self.path)
        self.ready = True
        return True

    def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
        instances = np.asarray(payload["instances"])
        return {"predictions": self.model.predict(instances).tolist()}


if __name__ == "__main__":
    name, path, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
    model = SKLearnModel(name, path)
    model.load()
    kserve.ModelServer(http_port=port, grpc_port=port + 1, enable_grpc=False, workers=1).start([model])
