"""End to end: a slower model costs more. A canary that sleeps 0.6 s on 15% of its rows (answers
stay correct, p99 within the 1 s limit) is rolled back by `maxCostIncrease`: its pod time per
request, hence its cost per prediction, is many times stable's."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from modeldeploy_demo import kube as k
from tests.e2e.conftest import E2E, NAME

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("cost",)
Say = Callable[[str], None]


def test_a_canary_that_costs_more_per_prediction_is_rolled_back_on_max_cost_increase(e2e: E2E, say: Say) -> None:
    ns, host = e2e.deploy_v1("cost")
    traffic = e2e.traffic(host, rate=30, bad_share=0.15, workers=6)
    started = time.time()
    analysis = {"maxCostIncrease": 2.0, "maxLatencyP99Seconds": 2.0}  # the slow rows stay within p99
    k.apply(e2e.kubeconfig, ns, e2e.mdep("slow", "3", analysis=analysis))
    st = e2e.kube.wait_for_phase(ns, NAME, "RolledBack", 150)
    took = time.time() - started
    traffic.stop()
    check = next(c for c in st["lastAnalysis"]["checks"] if c["name"] == "cost-increase")
    assert check["verdict"] == "Failed" and check["value"] > 2.0, check
    assert "canary cost per prediction" in st["message"] and "> 2x" in st["message"], st["message"]
    assert traffic.stats(since=started).errors == 0, "a slow model is not a failing one: no 5xx expected"
    say(f"slow canary: rolled back on maxCostIncrease 2 {took:.1f}s after the change; decisive: {st['message']}")
