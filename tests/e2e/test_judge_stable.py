"""End to end: canary against stable, judged by the anytime-valid judge only (the absolute gates
out of the way; real operator, Prometheus, pods, traffic through the gateway).

- a canary whose input contract refuses 20% more rows than stable's is rolled back on
  `maxRefusalRateIncrease`;
- a canary answering 500 on 30% of the rows is rolled back on `maxErrorRateIncrease`;
- a healthy canary under the same judge is promoted.

Each decision record carries both arms' n and the interval.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import pytest

from modeldeploy_demo import kube as k
from modeldeploy_demo.workload import ZERO_FEATURE
from tests.e2e.conftest import E2E, NAME

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("refusals", "errors", "healthy")
Say = Callable[[str], None]
# the absolute gates out of the way: only the comparison with stable decides
JUDGED = {"maxErrorRate": 1.0, "maxLatencyP99Seconds": None, "maxErrorRateIncrease": 0.05,
          "maxRefusalRateIncrease": 0.05}  # fmt: skip


def check(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["lastAnalysis"]["checks"] if c["name"] == name)
    return found


def rolled_back_on(e2e: E2E, scenario: str, spec: dict[str, Any], name: str, bad_share: float) -> dict[str, Any]:
    ns, host = e2e.deploy_v1(scenario)
    traffic = e2e.traffic(host, rate=40, bad_share=bad_share)
    k.apply(e2e.kubeconfig, ns, spec)
    st = e2e.kube.wait_for_phase(ns, NAME, "RolledBack", 120)
    traffic.stop()
    record = check(st, name)
    assert record["verdict"] == "Failed" and record["lower"] > 0.05, record
    assert record["samples"] > 0 and record["samplesStable"] > record["samples"], record
    assert name in st["message"] and "n canary" in st["message"], st["message"]
    assert st["stableVersion"] == "1" and st["history"][-1]["outcome"] == "RolledBack", st
    return st


def test_a_canary_refusing_20_percent_more_rows_is_rolled_back_on_refusals(e2e: E2E, say: Say) -> None:
    spec = e2e.mdep("v2", "2", analysis=JUDGED)
    narrower = copy.deepcopy(spec["spec"]["inputs"])
    narrower[ZERO_FEATURE]["min"] = 0.5  # the traffic's 20% rows reading 0.0 there: stable answers, canary refuses
    spec["spec"]["inputs"] = narrower
    st = rolled_back_on(e2e, "refusals", spec, "refusal-rate-increase", bad_share=0.2)
    say(f"refusing canary rolled back: {st['message']}")


def test_a_canary_answering_500_is_rolled_back_on_the_increase_over_stable(e2e: E2E, say: Say) -> None:
    st = rolled_back_on(e2e, "errors", e2e.mdep("bad", "3", analysis=JUDGED), "error-rate-increase", bad_share=0.3)
    say(f"5xx canary rolled back on the increase over stable: {st['message']}")


def test_a_healthy_canary_under_the_judge_is_promoted(e2e: E2E, say: Say) -> None:
    ns, host = e2e.deploy_v1("healthy")
    traffic = e2e.traffic(host, rate=40, bad_share=0.2)
    k.apply(e2e.kubeconfig, ns, e2e.mdep("v2", "2", analysis=JUDGED, deadline=120))
    st = e2e.kube.wait_for_phase(ns, NAME, "Healthy", 180, also=lambda s: s.get("stableVersion") == "2")
    traffic.stop()
    assert st["history"][-1]["outcome"] == "Promoted", st["history"]
    for name in ("error-rate-increase", "refusal-rate-increase"):
        record = check(st, name)
        assert record["verdict"] == "Passed" and record["upper"] <= 0.05 and record["samplesStable"] > 0, record
    say(f"healthy canary promoted under the judge; last analysis: {st['lastAnalysis']['message']}")
