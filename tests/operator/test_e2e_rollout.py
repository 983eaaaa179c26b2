"""End to end: the real operator process, real API server, real server pods, real Prometheus, real traffic.

(1) a first deployment becomes Healthy, then a good v2 canary walks its Gateway API weights to
promotion with zero failed requests; (2) a canary that answers 500 on part of the inputs is rolled
back by itself, and the seconds from its first 5xx answer to canary weight 0 are printed.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.operator import e2e_helpers as h
from tests.operator.conftest import E2E

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]
NAME = "iris"
SCRAPE_SECONDS = 2


NAMESPACES = ("promote", "rollback")


def test_first_deploy_then_a_good_canary_is_promoted_through_gateway_weights(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    env = e2e
    ns = env.namespaces["promote"]
    host = h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=40, bad_share=0.2).start()
    watch = h.WeightWatch(env.kubeconfig, ns, NAME)
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 40, 30, "traffic through the gateway")
        started = time.time()
        h.apply(env.kubeconfig, ns, h.model_deployment(NAME, env.models["v2"], env.store.url, "2", route=NAME))
        obj = h.wait_for_phase(env.kubeconfig, ns, NAME, "Healthy", timeout=150,
                               also=lambda o: o["status"].get("stableVersion") == "2")  # fmt: skip
        promoted = time.time()
        time.sleep(8)  # past the scale-down delay (5 s): the old revision's pods go away under traffic
    finally:
        traffic.stop()
        watch.stop()
    status = obj["status"]
    assert [x["outcome"] for x in status["history"]][-2:] == ["Deployed", "Promoted"]
    weights = [w for t, w in watch.changes if t >= started]
    assert weights[:3] == [20, 50, 0], watch.changes
    assert status["lastAnalysis"]["verdict"] == "Passed" and status["lastAnalysis"]["checks"][0]["samples"] >= 20
    counts = traffic.counts()
    failed = {code: n for code, n in counts.items() if code != 200}
    assert not failed, f"failed requests during the rollout: {failed} of {sum(counts.values())}"
    jsonpath = "jsonpath={range .items[*]}{.metadata.labels.modeldeploy\\.io/revision}={.spec.replicas} {end}"
    deps = h.kubectl(env.kubeconfig, "get", "deploy", "-n", ns, "-o", jsonpath)
    replicas = dict(item.split("=") for item in deps.split())
    assert replicas[status["stableRevision"]] == "2" and sorted(replicas.values()) == ["0", "2"], replicas
    seen = h.reasons(env.kubeconfig, ns)
    for reason in (
        "StableDeployed",
        "CanaryStarted",
        "CanaryReady",
        "WeightChanged",
        "AnalysisPassed",
        "Promoted",
        "OldRevisionScaledDown",
    ):
        assert reason in seen, (reason, seen)
    assert 'modeldeploy_operator_rollouts_total{name="iris",namespace="' + ns + '",outcome="Promoted"} 1.0' in (
        env.operator.metrics()
    )
    rss, cpu = h.operator_usage(env.operator)
    with capsys.disabled():
        print(f"\n[e2e] operator process: {rss / 2**20:.0f} MiB resident, {cpu:.1f} s CPU since start")
        print(
            f"\n[e2e] v2 promoted {promoted - started:.1f}s after the spec change "
            f"(steps 20% / pause 5s / 50% / pause 5s, interval 5s); requests {sum(counts.values())}, failed 0"
        )


def test_a_canary_answering_500_is_rolled_back_by_itself(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    env = e2e
    ns = env.namespaces["rollback"]
    host = h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=40, bad_share=0.3).start()
    watch = h.WeightWatch(env.kubeconfig, ns, NAME)
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 40, 30, "traffic through the gateway")
        started = time.time()
        # failureLimit 1 (the API's default): one failure and its confirmation two scrapes later
        analysis = {"intervalSeconds": 5, "minRequests": 20, "failureLimit": 1, "maxErrorRate": 0.02}
        bad = h.model_deployment(NAME, env.models["bad"], env.store.url, "3", route=NAME, analysis=analysis)
        h.apply(env.kubeconfig, ns, bad)
        obj = h.wait_for_phase(env.kubeconfig, ns, NAME, "RolledBack", timeout=120)
        time.sleep(4)  # answers after weight 0 must all be the stable model's
    finally:
        traffic.stop()
        watch.stop()
    status = obj["status"]
    first_500 = traffic.first("5", since=started)
    assert first_500 is not None
    weight_0 = watch.first_time(0, after=first_500)
    assert weight_0 is not None, watch.changes
    late = [t for t, c in traffic.answers if c >= 500 and t > weight_0 + 2]
    assert not late, f"{len(late)} 5xx answers more than 2 s after weight 0"
    assert status["stableVersion"] == "1" and status.get("canaryRevision") is None
    assert status["failedRevision"] and status["history"][-1]["outcome"] == "RolledBack"
    degraded = next(c for c in status["conditions"] if c["type"] == "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "AnalysisFailed"
    assert "canary error rate" in status["message"] and "> 2%" in status["message"], status["message"]
    bad_served = sum(1 for t, c in traffic.answers if c >= 500)
    seen = h.reasons(env.kubeconfig, ns)
    assert "AnalysisFailed" in seen and "RolledBack" in seen
    # not retried by itself
    time.sleep(3)
    again = h.get_mdep(env.kubeconfig, ns, NAME)["status"]
    assert again["phase"] == "RolledBack" and again.get("canaryRevision") is None
    with capsys.disabled():
        print(
            f"\n[e2e] bad canary: first 5xx -> canary weight 0 in {weight_0 - first_500:.1f}s "
            f"(interval 5s, failureLimit 1, scrape {SCRAPE_SECONDS}s, tick 1s); 5xx answers served: {bad_served}; "
            f"decisive: {status['message']}"
        )
