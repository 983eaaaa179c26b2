"""End to end: two operator replicas with leader election (issue 11 M9). Only the Lease holder
acts; SIGKILLing it mid-canary hands the rollout to the standby, which finishes it without
repeating or losing a step. Real cluster, real operator processes, real pods and traffic.
"""

from __future__ import annotations

import json
import time

import pytest

from tests.operator import e2e_helpers as h
from tests.operator.conftest import E2E

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("leader",)
NAME = "iris"
STEPS = [{"setWeight": 20}, {"pause": {"seconds": 8}}, {"setWeight": 50}, {"pause": {"seconds": 8}}]


def holder(env: E2E, ns: str) -> str:
    out = h.kubectl(env.kubeconfig, "get", "lease", "modeldeploy-operator", "-n", ns, "-o", "json")
    return str(json.loads(out)["spec"]["holderIdentity"])


def replica(env: E2E, ns: str, identity: str) -> h.Operator:
    op = h.Operator(env.kubeconfig, env.prometheus_url, env.operator.log.with_name(f"operator-{identity}.log"),
                    namespace=ns, image=env.image)  # fmt: skip
    op.env["MODELDEPLOY_OPERATOR_LEADER_ELECTION_NAMESPACE"] = ns
    op.env["MODELDEPLOY_OPERATOR_POD_NAME"] = identity
    return op.start()


def test_only_the_leader_acts_and_a_killed_leader_is_replaced_by_the_standby(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    env, ns = e2e, e2e.namespaces["leader"]
    env.operator.stop()  # the module's operator has no election: two replicas of our own instead
    replicas = {"a": replica(env, ns, "a")}
    h.wait_for(lambda: holder(env, ns) == "a", 30, "replica a holding the Lease")
    replicas["b"] = replica(env, ns, "b")
    env.operator = replicas["b"]  # the fixture's teardown needs a running operator
    host = h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url, steps=STEPS)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=30, bad_share=0.2).start()
    watch = h.WeightWatch(env.kubeconfig, ns, NAME)
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 30, 30, "traffic through the gateway")
        h.apply(env.kubeconfig, ns, h.model_deployment(NAME, env.models["v2"], env.store.url, "2", route=NAME,
                                                       steps=STEPS))  # fmt: skip
        h.wait_for(lambda: (h.get_mdep(env.kubeconfig, ns, NAME).get("status") or {}).get("canaryWeight") == 20,
                   60, "canary weight 20")  # fmt: skip
        assert holder(env, ns) == "a"
        assert "modeldeploy_operator_canary_weight{" not in replicas["b"].metrics()  # the standby did nothing
        replicas["a"].kill()
        killed = time.time()
        h.wait_for(lambda: holder(env, ns) == "b", 40, "replica b taking the Lease over")
        took_over = time.time() - killed
        final = h.wait_for_phase(env.kubeconfig, ns, NAME, "Healthy", timeout=120,
                                 also=lambda o: o["status"].get("stableVersion") == "2")  # fmt: skip
        watch.settle(0)
    finally:
        traffic.stop()
        watch.stop()
    outcomes = [x["outcome"] for x in final["status"]["history"]]
    assert outcomes[-2:] == ["Deployed", "Promoted"] and outcomes.count("Promoted") == 1
    assert [w for _, w in watch.changes] == [0, 20, 50, 0], watch.changes
    counts = traffic.counts()
    assert set(counts) == {200}, counts
    with capsys.disabled():
        print(f"\n[e2e] leader SIGKILLed at weight 20: standby took the Lease {took_over:.1f}s later and promoted; "
              f"requests {sum(counts.values())}, failed 0")  # fmt: skip
