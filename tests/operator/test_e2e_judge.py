"""End to end, canary against stable (issue 13): the real operator, API server, server pods,
Prometheus and traffic through the gateway, judged by the anytime-valid judge only.

(1) a canary whose input contract refuses 20% more rows than stable's is rolled back on
`maxRefusalRateIncrease`; (2) a canary answering 500 on 30% of the rows is rolled back on
`maxErrorRateIncrease` with the absolute error gate out of the way; (3) a healthy canary under the
same judge is promoted. Each decision record carries both arms' n and the interval.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from tests.operator import e2e_helpers as h
from tests.operator.conftest import E2E

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAME = "iris"
NAMESPACES = ("refusals", "errors", "healthy")
# the absolute gates out of the way: only the judge decides
JUDGED = {"intervalSeconds": 5, "minRequests": 20, "failureLimit": 0, "maxErrorRate": 1.0,
          "maxLatencyP99Seconds": None, "maxErrorRateIncrease": 0.05, "maxRefusalRateIncrease": 0.05}  # fmt: skip


def _check(status: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(c for c in status["lastAnalysis"]["checks"] if c["name"] == name)
    return found


def _rolled_back_on(env: E2E, ns: str, spec: dict[str, Any], check: str, bad_share: float) -> dict[str, Any]:
    host = h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=40, bad_share=bad_share).start()
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 40, 30, "traffic through the gateway")
        h.apply(env.kubeconfig, ns, spec)
        obj = h.wait_for_phase(env.kubeconfig, ns, NAME, "RolledBack", timeout=120)
    finally:
        traffic.stop()
    status: dict[str, Any] = obj["status"]
    record = _check(status, check)
    assert record["verdict"] == "Failed" and record["lower"] > 0.05, record
    assert record["samples"] > 0 and record["samplesStable"] > record["samples"], record
    assert check in status["message"] and "n canary" in status["message"], status["message"]
    assert status["stableVersion"] == "1" and status["history"][-1]["outcome"] == "RolledBack"
    return status


def test_a_canary_refusing_20_percent_more_rows_is_rolled_back_on_refusals(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    spec = h.model_deployment(NAME, e2e.models["v2"], e2e.store.url, "2", route=NAME, analysis=JUDGED)
    narrower = copy.deepcopy(spec["spec"]["inputs"])
    narrower[0]["min"] = 0.5  # the traffic's 20% rows with sepal_length 0.0: stable answers, canary refuses
    spec["spec"]["inputs"] = narrower
    status = _rolled_back_on(e2e, e2e.namespaces["refusals"], spec, "refusal-rate-increase", bad_share=0.2)
    with capsys.disabled():
        print(f"\n[e2e] refusing canary rolled back: {status['message']}")


def test_a_canary_answering_500_is_rolled_back_on_the_increase_over_stable(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    spec = h.model_deployment(NAME, e2e.models["bad"], e2e.store.url, "3", route=NAME, analysis=JUDGED)
    status = _rolled_back_on(e2e, e2e.namespaces["errors"], spec, "error-rate-increase", bad_share=0.3)
    with capsys.disabled():
        print(f"\n[e2e] 5xx canary rolled back: {status['message']}")


def test_a_healthy_canary_under_the_judge_is_promoted(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    ns = e2e.namespaces["healthy"]
    host = h.deploy_v1(e2e.gateway, e2e.kubeconfig, ns, NAME, e2e.models, e2e.store.url)
    traffic = h.Traffic(e2e.gateway_url, host, NAME, rate=40, bad_share=0.2).start()
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 40, 30, "traffic through the gateway")
        spec = h.model_deployment(NAME, e2e.models["v2"], e2e.store.url, "2", route=NAME, analysis=JUDGED,
                                  deadline=120)  # fmt: skip
        h.apply(e2e.kubeconfig, ns, spec)
        obj = h.wait_for_phase(e2e.kubeconfig, ns, NAME, "Healthy", timeout=180,
                               also=lambda o: o["status"].get("stableVersion") == "2")  # fmt: skip
    finally:
        traffic.stop()
    status = obj["status"]
    assert status["history"][-1]["outcome"] == "Promoted"
    for name in ("error-rate-increase", "refusal-rate-increase"):
        record = _check(status, name)
        assert record["verdict"] == "Passed" and record["upper"] <= 0.05 and record["samplesStable"] > 0, record
    with capsys.disabled():
        print(f"\n[e2e] healthy canary promoted; last analysis: {status['lastAnalysis']['message']}")
