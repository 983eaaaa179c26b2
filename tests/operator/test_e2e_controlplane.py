"""End to end, faults of the control plane and the machine during a canary (issue 11):
kube-apiserver restarted, then etcd restarted, in the middle of a rollout; an abort annotation
hammered with one value while every core is busy. Real cluster (the harness restarts a component
with the same flags and data), operator process, server pods, traffic through the gateway.
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import pytest

from tests.operator import e2e_helpers as h
from tests.operator.conftest import E2E

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("restarts", "abort")
NAME = "iris"


def weights(watch: h.WeightWatch) -> list[int]:
    """The canary weights the route went through; reads that failed while the API server was
    down (-1) are not weights."""
    out: list[int] = []
    for _, w in watch.changes:
        if w >= 0 and (not out or out[-1] != w):
            out.append(w)
    return out


def last_tick(env: E2E) -> float:
    for line in env.operator.metrics().splitlines():
        if line.startswith("modeldeploy_operator_last_tick_timestamp_seconds "):
            return float(line.split()[1])
    return 0.0


def recovered_after(env: E2E, ready_at: float) -> float:
    """Seconds from the API server being ready again to the operator's next completed tick."""
    h.wait_for(lambda: last_tick(env) > ready_at, 60, "a completed tick after the restart")
    return last_tick(env) - ready_at


def test_the_api_server_and_etcd_restarted_mid_canary_lose_no_decision(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    env, ns = e2e, e2e.namespaces["restarts"]
    steps = [{"setWeight": 20}, {"pause": {"seconds": 10}}, {"setWeight": 50}, {"pause": {"seconds": 10}}]
    host = h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url, steps=steps)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=30, bad_share=0.0).start()
    watch = h.WeightWatch(env.kubeconfig, ns, NAME)
    costs: dict[str, tuple[float, float]] = {}
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 30, 30, "traffic through the gateway")
        started = time.time()
        h.apply(env.kubeconfig, ns, h.model_deployment(NAME, env.models["v2"], env.store.url, "2", route=NAME,
                                                       steps=steps))  # fmt: skip
        h.wait_for(lambda: h.get_mdep(env.kubeconfig, ns, NAME)["status"].get("canaryWeight") == 20, 90, "weight 20")
        for component in ("kube-apiserver", "etcd"):
            took = env.cluster.restart_component(component)
            costs[component] = (took, recovered_after(env, time.time()))
        final = h.wait_for_phase(env.kubeconfig, ns, NAME, "Healthy", timeout=180,
                                 also=lambda o: o["status"].get("stableVersion") == "2")  # fmt: skip
        watch.settle(0)
    finally:
        traffic.stop()
        watch.stop()
    h.assert_promoted_once(final)
    assert weights(watch) == [0, 20, 50, 0], watch.changes  # no step lost, repeated or restarted
    reasons = h.reasons(env.kubeconfig, ns)
    assert reasons.count("Promoted") == 1 and reasons.count("WeightChanged") == 2, reasons
    # from the change on: before it, Traefik may answer 503 for a second while it first learns the
    # new route's endpoints (the warm-up waits for 30 answers 200)
    counts = traffic.counts(since=started)
    assert set(counts) == {200}, counts
    with capsys.disabled():
        for component, (took, lag) in costs.items():
            print(f"\n[e2e] {component} restarted mid-canary: API server ready again after {took:.1f}s, the operator's "
                  f"next completed tick {lag:.1f}s later")  # fmt: skip
        print(f"[e2e] promoted once, weights {weights(watch)}; requests {sum(counts.values())}, failed 0")


class CpuStress:
    """One busy process per core for at most `seconds` (the machine under load, bounded)."""

    def __init__(self, seconds: float, processes: int = 2) -> None:
        code = f"import time\nend = time.time() + {seconds}\nwhile time.time() < end:\n    pass\n"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(processes)]

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait(10)


def test_abort_hammered_under_cpu_stress_is_applied_once(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    env, ns = e2e, e2e.namespaces["abort"]
    steps = [{"setWeight": 20}, {"pause": {}}]
    host = h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url, steps=steps)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=30, bad_share=0.0).start()
    watch = h.WeightWatch(env.kubeconfig, ns, NAME)
    stress: CpuStress | None = None
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 30, 30, "traffic through the gateway")
        started = time.time()
        h.apply(env.kubeconfig, ns, h.model_deployment(NAME, env.models["v2"], env.store.url, "2", route=NAME,
                                                       steps=steps))  # fmt: skip
        paused: dict[str, Any] = h.wait_for_phase(env.kubeconfig, ns, NAME, "Paused", timeout=120)
        canary = paused["status"]["canaryRevision"]
        h.wait_for(lambda: any(canary in p for _, p in traffic.pods), 30, "a request answered by the canary")
        stress = CpuStress(40)
        asked = time.time()
        for _ in range(8):  # one request, sent again and again while ticks run on busy cores
            h.kubectl(env.kubeconfig, "annotate", "--overwrite", "mdep", NAME, "-n", ns,
                      "modeldeploy.io/abort=2026-12-02T03:00:00Z")  # fmt: skip
            time.sleep(0.2)
        final = h.wait_for_phase(env.kubeconfig, ns, NAME, "Aborted", timeout=90)
        watch.settle(0, timeout=30)
        zero = watch.first_time(0, asked) or time.time()
        time.sleep(5)  # requests keep flowing: none may reach the aborted canary now
    finally:
        if stress is not None:
            stress.stop()
        traffic.stop()
        watch.stop()
    outcomes = [x["outcome"] for x in final["status"]["history"]]
    assert outcomes.count("Aborted") == 1 and final["status"]["stableVersion"] == "1"
    assert weights(watch) == [0, 20, 0], watch.changes
    reasons = h.reasons(env.kubeconfig, ns)
    assert reasons.count("Aborted") == 1, reasons  # applied once, whatever the number of writes
    # Traefik follows a route change within a fraction of a second; allow one second for it
    late = [(t, p) for t, p in traffic.pods if canary in p and t > zero + 1.0]
    assert not late, late[:5]
    counts = traffic.counts(since=started)  # from the change on, as in the test above
    assert set(counts) == {200}, counts
    with capsys.disabled():
        print(
            f"\n[e2e] abort annotated 8 times under CPU stress (2 busy processes): weight 0 {zero - asked:.1f}s "
            f"after the first annotation, aborted once, 0 requests served by the canary after; "
            f"requests {sum(counts.values())}, failed 0"
        )
