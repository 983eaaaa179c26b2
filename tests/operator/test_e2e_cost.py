"""End to end: status.cost of a ModelDeployment under real traffic (real operator, real pods, real
Prometheus), the printer column, `modeldeploy cost`, a canary's cost per 1k beside stable's and the
maxCostIncrease check in its analysis."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from modeldeploy_operator.model import parse_time
from tests.operator import e2e_helpers as h
from tests.operator.conftest import E2E

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAME = "iris"
NAMESPACES = ("cost",)
RATE = 30.0
RESOURCES = {"requests": {"cpu": "250m", "memory": "256Mi"}}


ANALYSIS = {"intervalSeconds": 5, "minRequests": 20, "failureLimit": 0, "maxErrorRate": 0.02,
            "maxLatencyP99Seconds": 1.0, "maxCostIncrease": 3.0}  # fmt: skip


def _mdep(env: E2E, model: str, version: str, steps: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    obj = h.model_deployment(
        NAME, env.models[model], env.store.url, version, route=NAME, steps=steps, analysis=ANALYSIS
    )
    obj["spec"]["serving"] = {"resources": RESOURCES}
    return obj


def _cost_after(env: E2E, ns: str, after: float, timeout: float) -> dict[str, Any]:
    def fresh() -> dict[str, Any] | None:
        cost = (h.get_mdep(env.kubeconfig, ns, NAME).get("status") or {}).get("cost") or {}
        return cost if cost.get("time") and parse_time(cost["time"]).timestamp() >= after else None

    got: dict[str, Any] = h.wait_for(fresh, timeout, f"status.cost computed after {after:.0f}", interval=1)
    return got


def test_status_cost_under_real_traffic_and_a_canary_beside_stable(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    env = e2e
    ns = env.namespaces["cost"]
    host = f"{NAME}.{ns}.test"
    h.apply(env.kubeconfig, ns, h.http_route(NAME, host, env.gateway))
    h.apply(env.kubeconfig, ns, _mdep(env, "v1", "1"))
    h.wait_for_phase(env.kubeconfig, ns, NAME, "Healthy", timeout=90)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=RATE, bad_share=0.0).start()
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 30, 30, "traffic through the gateway")
        started = time.time()
        cost = _cost_after(env, ns, started + 30, timeout=120)
        at = parse_time(cost["time"]).timestamp()
        window = int(cost["requestsWindow"].removesuffix("m")) * 60
        sent = sum(traffic.counts(since=at - window).values()) - sum(traffic.counts(since=at).values())
        # a canary at 50% until promoted by hand
        h.apply(env.kubeconfig, ns, _mdep(env, "v2", "2", steps=[{"setWeight": 50}, {"pause": {}}]))
        h.wait_for(lambda: h.get_mdep(env.kubeconfig, ns, NAME)["status"].get("canaryWeight") == 50, 90, "canary 50%")
        canary_at = time.time()
        with_canary = _cost_after(env, ns, canary_at + 20, timeout=120)
    finally:
        traffic.stop()
    # 2 pods x (0.25 core x $0.04 + 0.25 GiB x $0.005) per hour x 730 h (the chart's default prices)
    assert cost["monthlyUsd"] == pytest.approx(2 * (0.25 * 0.04 + 0.25 * 0.005) * 730, abs=0.006)
    assert cost["crossoverRequestsPerDay"] == pytest.approx(2 * (0.25 * 0.04 + 0.25 * 0.005) * 24 / 0.0004, abs=1)
    expected = sent * 86_400 / window
    assert cost["requestsPerDay"] == pytest.approx(expected, rel=0.3), (cost, sent, window)
    assert cost["cheaper"] == "selfHosted" and cost["replicas"] == 2
    assert cost["per1kPredictionsUsd"] == pytest.approx(
        cost["monthlyUsd"] / (cost["requestsPerDay"] * 730 / 24 / 1000), rel=1e-3
    )
    assert cost["peakRowsPerSecond"] == pytest.approx(RATE, rel=0.4)
    assert 0 < cost["secondsPerRow"] < 0.5 and cost["replicasForPeak"] >= 1
    last = h.get_mdep(env.kubeconfig, ns, NAME)["status"]["lastAnalysis"]
    gate = next(c for c in last["checks"] if c["name"] == "cost-increase")
    # two sub-millisecond models: over a 5 s window the ratio of mean request times is noise (0.19-1.5
    # seen), so only its presence and the verdict are checked here; tests/e2e/test_cost_gate.py fails a slow one
    assert gate["verdict"] == "Passed" and 0 < gate["value"] <= 3.0 and 'revision="' in gate["query"], last
    canary_1k, stable_1k = with_canary["canaryPer1kPredictionsUsd"], with_canary["per1kPredictionsUsd"]
    assert canary_1k > 0 and stable_1k > 0, with_canary
    columns = h.kubectl(env.kubeconfig, "get", "mdep", NAME, "-n", ns)
    assert "USD/1K" in columns.splitlines()[0] and f"{with_canary['per1kPredictionsUsd']:g}"[:4] in columns, columns
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "modeldeploy"), "--kubeconfig", str(env.kubeconfig), "cost", NAME, "-n", ns],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "self-hosted" in proc.stdout and "canary" in proc.stdout and "Break-even: 1,350 requests/day" in proc.stdout
    with capsys.disabled():
        print(f"\n[e2e] status.cost at {RATE:g} requests/s on 2 pods of 250m / 256Mi:\n{proc.stdout}")
