"""End to end: a canary that answers every request with 200, fast, but predicts one class for
everything is rolled back on `maxPredictionShift` (the total-variation distance between its and
stable's predicted classes over the same window since it started, from the server's per-class
counters through Prometheus), with the distance, its interval and both arms' n in the message.
"""

from __future__ import annotations

import re
from collections.abc import Callable

import pytest

from modeldeploy_demo import kube as k
from tests.e2e.conftest import E2E, NAME

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("shift",)


def test_a_canary_predicting_one_class_for_everything_is_rolled_back_on_prediction_shift(
    e2e: E2E, say: Callable[[str], None]
) -> None:
    ns, host = e2e.deploy_v1("shift")
    traffic = e2e.traffic(host, rate=30, bad_share=0.0, workers=6)
    analysis = {"maxPredictionShift": 0.2}
    k.apply(e2e.kubeconfig, ns, e2e.mdep("constant", "2", analysis=analysis))
    st = e2e.kube.wait_for_phase(ns, NAME, "RolledBack", 120)
    traffic.stop()
    assert st["stableVersion"] == "1", st
    checks = {c["name"]: c for c in st["lastAnalysis"]["checks"]}
    shift = checks["prediction-shift"]
    assert shift["verdict"] == "Failed" and shift["lower"] > 0.2, shift
    assert shift["samples"] > 0 and shift["samplesStable"] > 0, shift
    assert shift["lower"] <= shift["value"] <= shift["upper"], shift
    # it answered: no 5xx, so only the shift could fail it
    assert all(c["verdict"] != "Failed" for name, c in checks.items() if name != "prediction-shift"), checks
    assert traffic.counts().get(500, 0) == 0, traffic.counts()
    found = re.search(r"prediction-shift (\S+) in \[(\S+), (\S+)\] at 0.95 vs threshold 0.2 \(n canary (\d+), stable "
                      r"(\d+)\)", st["message"])  # fmt: skip
    assert found is not None, st["message"]
    say(f"one-class canary rolled back on the prediction shift: {st['message']}")
