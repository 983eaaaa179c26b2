"""What the shadow-step scenarios share (`test_shadow.py` through the Gateway API router,
`test_shadow_ratio.py` in replica-ratio mode): the traffic's worker count, the flipping candidate,
which pods are stable's, and the `shadow-agreement` check of a decision record."""

from __future__ import annotations

from typing import Any

import numpy as np
from sklearn.datasets import load_wine
from sklearn.neighbors import KNeighborsClassifier

from modeldeploy_demo.workload import rows, save_model
from tests.e2e.conftest import E2E, NAME

WORKERS = 4  # traffic threads: worker w sends rows(1000, 0.0, seed=w)


def flipping_model(e2e: E2E) -> str:
    """A real sklearn classifier (1-nearest-neighbour on the rows the traffic sends) answering v1's class
    on 90% of them and the next class on every tenth: what a subtly different model looks like."""
    if "flip" not in e2e.store.models:
        import joblib

        v1 = joblib.load(e2e.store.models["v1"].path)
        x = np.array([r for w in range(WORKERS) for r in rows(1000, 0.0, seed=w)])
        y = v1.predict(x)
        classes = np.unique(load_wine().target)
        flip = np.arange(len(x)) % 10 == 0
        y = np.where(flip, classes[(np.searchsorted(classes, y) + 1) % len(classes)], y)
        model = KNeighborsClassifier(n_neighbors=1).fit(x, y)
        e2e.store.models["flip"] = save_model(model, e2e.store.models["v1"].path.parent, "wine-flip")
    return "flip"


def stable_pods(st: dict[str, Any]) -> str:
    """The name prefix of the stable revision's pods (the Deployment `<name>-<revision>`)."""
    return f"{NAME}-{st['stableRevision']}-"


def agreement_check(st: dict[str, Any]) -> dict[str, Any]:
    """The `shadow-agreement` check of the last analysis."""
    return next(c for c in st["lastAnalysis"]["checks"] if c["name"] == "shadow-agreement")
