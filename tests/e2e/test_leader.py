"""End to end: two operator replicas with leader election (issue 11 M9). Only the Lease holder
acts; SIGKILLing it mid-canary hands the rollout to the standby, which finishes it without
repeating or losing a step (real operator processes, pods, traffic through the gateway).

The module's own operator is stopped for this: two replicas of our own take its place, started as
local processes (a development install) so that one of them can be SIGKILLed at a chosen moment.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from modeldeploy_demo import kube as k
from modeldeploy_demo.workload import Operator, wait_for
from tests.e2e.conftest import E2E, NAME, SCALE_DOWN_DELAY

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("leader",)
Say = Callable[[str], None]
STEPS = [{"setWeight": 20}, {"pause": {"seconds": 8}}, {"setWeight": 50}, {"pause": {"seconds": 8}}]


def holder(e2e: E2E, ns: str) -> str:
    out = k.kubectl(e2e.kubeconfig, "get", "lease", "modeldeploy-operator", "-n", ns, "-o", "json")
    return str(json.loads(out)["spec"]["holderIdentity"])


def replica(e2e: E2E, ns: str, identity: str) -> Operator:
    log = Path(e2e.cluster.log_dir) / f"operator-e2e-leader-{identity}-{ns}.log"
    op = Operator(e2e.kubeconfig, e2e.cluster.prometheus_url, log, namespace=ns, tick=1.0,
                  scale_down_delay=SCALE_DOWN_DELAY, image=e2e.cluster.env["IMAGE"])  # fmt: skip
    op.env["MODELDEPLOY_OPERATOR_LEADER_ELECTION_NAMESPACE"] = ns
    op.env["MODELDEPLOY_OPERATOR_POD_NAME"] = identity
    return op.start()


def test_only_the_leader_acts_and_a_killed_leader_is_replaced_by_the_standby(e2e: E2E, say: Say) -> None:
    ns = e2e.namespaces["leader"]
    e2e.replace_operator(lambda: replica(e2e, ns, "a"))  # the module's operator has no election
    a = e2e.operator
    wait_for(lambda: holder(e2e, ns) == "a", 30, "replica a holding the Lease")
    b = replica(e2e, ns, "b")
    e2e.cleanups.append(b.stop)
    ns, host = e2e.deploy_v1("leader", steps=STEPS)
    traffic = e2e.traffic(host, rate=30, bad_share=0.2)
    watch = e2e.watch(ns)
    started = time.time()
    k.apply(e2e.kubeconfig, ns, e2e.mdep("v2", "2", steps=STEPS))
    wait_for(lambda: e2e.kube.status(ns, NAME).get("canaryWeight") == 20, 60, "canary weight 20")
    assert holder(e2e, ns) == "a"
    assert "modeldeploy_operator_canary_weight{" not in b.metrics()  # the standby did nothing
    a.kill()
    killed = time.time()
    wait_for(lambda: holder(e2e, ns) == "b", 40, "replica b taking the Lease over")
    took_over = time.time() - killed
    final = e2e.kube.wait_for_phase(ns, NAME, "Healthy", 120, also=lambda s: s.get("stableVersion") == "2")
    watch.settle(0)
    traffic.stop()
    outcomes = [x["outcome"] for x in final["history"]]
    assert outcomes[-2:] == ["Deployed", "Promoted"] and outcomes.count("Promoted") == 1, outcomes
    assert watch.distinct_weights() == [0, 20, 50, 0], watch.weights
    counts = traffic.counts(since=started)
    assert set(counts) == {200}, counts
    say(f"leader SIGKILLed at weight 20: standby took the Lease {took_over:.1f}s later and promoted; "
        f"requests {sum(counts.values())}, failed 0")  # fmt: skip
