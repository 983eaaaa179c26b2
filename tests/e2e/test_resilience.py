"""End to end: the rollout survives its surroundings failing (real operator, Prometheus, pods, traffic).

- Prometheus stopped during a canary: the rollout holds (no step, no rollback), says why in a
  condition and an Event, and continues to promotion once Prometheus is back;
- the operator SIGKILLed in each phase of one rollout (canary waiting for ready, mid-steps,
  during analysis, after promotion before the old revision's scale-down): each new process
  resumes from status alone; the rollout ends promoted once, with no step replayed and no
  failed request;
- the namespace of a ModelDeployment deleted while the operator runs goes away (the operator's
  kopf finalizer is released; nothing is re-created in a terminating namespace).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest

from modeldeploy_demo import kube as k
from modeldeploy_demo.workload import wait_for
from tests.e2e.conftest import E2E, NAME, SCALE_DOWN_DELAY

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("prometheus", "restart", "delete")
# The chart's ClusterRole, not its per-namespace Roles: with rbac.namespaced=true, deleting a watched
# namespace also deletes the Role in it, and the operator may lose the right to release its
# finalizer before it does, so the namespace stays Terminating (seen 2026-12-02; a known defect of
# the namespaced install, in the README, not fixed yet).
E2E_RBAC_NAMESPACED = False
Say = Callable[[str], None]


def condition(st: dict[str, Any], kind: str) -> dict[str, Any]:
    return next((c for c in st.get("conditions") or [] if c["type"] == kind), {})


def test_prometheus_outage_holds_the_canary_then_it_continues(e2e: E2E, say: Say) -> None:
    ns, host = e2e.deploy_v1("prometheus", deadline=300)
    traffic = e2e.traffic(host, rate=40, bad_share=0.1)
    watch = e2e.watch(ns)
    started = time.time()
    k.apply(e2e.kubeconfig, ns, e2e.mdep("v2", "2", deadline=300))
    wait_for(lambda: watch.first_weight(20, after=started), 60, "canary weight 20")
    e2e.cluster.stop_prometheus()
    try:
        st = wait_for(lambda: (lambda s: s if s.get("prometheusUnavailableSince") else None)(
            e2e.kube.status(ns, NAME)), 30, "the operator to notice Prometheus is gone")  # fmt: skip
        noticed = time.time()
        weight = st["canaryWeight"]
        time.sleep(12)  # more than two analysis intervals without Prometheus
        st = e2e.kube.status(ns, NAME)
        held = time.time() - noticed
        assert st["phase"] == "Progressing" and st["canaryWeight"] == weight, st
        assert watch.weights_since(noticed) in ([], [weight]), f"weights moved without Prometheus: {watch.weights}"
        progressing = condition(st, "Progressing")
        assert progressing["reason"] == "PrometheusUnavailable", progressing
        assert "Prometheus" in progressing["message"], progressing
        assert st["lastAnalysis"]["verdict"] == "Error", st["lastAnalysis"]
        assert "PrometheusUnavailable" in e2e.reasons(ns) and "RolledBack" not in e2e.reasons(ns)
    finally:
        e2e.cluster.start_prometheus()
    back = time.time()
    st = e2e.kube.wait_for_phase(ns, NAME, "Healthy", 120, also=lambda s: s.get("stableVersion") == "2")
    traffic.stop()
    assert "PrometheusAvailable" in e2e.reasons(ns)
    assert st["history"][-1]["outcome"] == "Promoted"
    assert traffic.stats(since=started).failed == 0, traffic.counts(since=started)
    say(f"Prometheus outage: held at weight {weight}% for {held:.0f}s ({progressing['message'][:160]}); "
        f"promoted {time.time() - back:.1f}s after Prometheus returned")  # fmt: skip
    e2e.figures(prometheus_outage_held_seconds=round(held, 1),
                prometheus_back_to_promotion_seconds=round(time.time() - back, 1))  # fmt: skip


def test_the_operator_killed_in_every_phase_resumes_from_status(e2e: E2E, say: Say) -> None:
    ns, host = e2e.deploy_v1("restart")
    old = e2e.kube.status(ns, NAME)["stableRevision"]
    traffic = e2e.traffic(host, rate=40, bad_share=0.1)
    watch = e2e.watch(ns)
    started = time.time()
    kills: list[str] = []

    def kill_when(what: str, predicate: Callable[[dict[str, Any]], bool], pause: float = 3.0) -> dict[str, Any]:
        st = wait_for(lambda: (lambda s: s if predicate(s) else None)(e2e.kube.status(ns, NAME)), 90, what)
        e2e.operator.kill()
        kills.append(f"{what} (step {st.get('currentStep')}, weight {st.get('canaryWeight')})")
        time.sleep(pause)  # the world moves on without an operator: pods turn ready, scrapes, time passes
        e2e.restart_operator()
        return st

    k.apply(e2e.kubeconfig, ns, e2e.mdep("v2", "2"))
    kill_when("canary waiting for ready", lambda s: bool(s.get("canaryRevision")) and s.get("currentStep") is None,
              pause=1.0)  # fmt: skip
    kill_when("mid-steps", lambda s: s.get("canaryWeight") == 20)
    kill_when("during analysis (pause at 50%)", lambda s: s.get("currentStep") == 3)  # judged before step 4
    # the Event follows the status write that decided the promotion: a SIGKILL between the two loses
    # it (Events are best-effort; status.history is the record), so the kill waits for it, and the
    # test checks that the restarted operator does not post it again
    kill_when("after promotion, before the old revision's scale-down",
              lambda s: s.get("stableVersion") == "2" and bool(s.get("scaleDownAt")) and "Promoted" in e2e.reasons(ns),
              pause=SCALE_DOWN_DELAY + 1)  # fmt: skip
    wait_for(lambda: e2e.kube.replicas(ns, NAME).get(old) == 0, 30, "the old revision scaled down by the new operator")
    time.sleep(2)
    traffic.stop()
    st = e2e.kube.wait_for_phase(ns, NAME, "Healthy", 30, also=lambda s: s.get("stableVersion") == "2")
    outcomes = [h["outcome"] for h in st["history"]]
    assert outcomes == ["Deployed", "Promoted"], st["history"]
    assert watch.weights_since(started) == [0, 20, 50, 0] or watch.weights_since(started) == [20, 50, 0], (
        f"weights replayed or skipped across restarts: {watch.weights}"
    )
    reasons = e2e.reasons(ns)
    assert reasons.count("Promoted") == 1 and reasons.count("OldRevisionScaledDown") == 1, reasons
    assert traffic.stats(since=started).failed == 0, traffic.counts(since=started)
    say(f"operator SIGKILLed {len(kills)} times: {'; '.join(kills)}; promoted once, weights "
        f"{watch.weights_since(started)}, 0 failed requests")  # fmt: skip


def test_a_namespace_deleted_under_the_running_operator_goes_away(e2e: E2E, say: Say) -> None:
    ns = e2e.namespaces["delete"]
    k.apply(e2e.kubeconfig, ns, e2e.mdep("v1", "1"))
    e2e.kube.wait_for_phase(ns, NAME, "Healthy", 180)
    started = time.time()
    k.kubectl(e2e.kubeconfig, "delete", "namespace", ns, "--wait=false")

    def gone() -> bool:
        return not k.kubectl(e2e.kubeconfig, "get", "namespace", ns, "--ignore-not-found", "-o", "name").strip()

    try:
        # real pods stop gracefully (preStop sleep, then SIGTERM): 30-40 s on the real node
        wait_for(gone, 120, f"namespace {ns} deleted")
    except TimeoutError as err:
        left = k.kubectl(e2e.kubeconfig, "get", "mdep", "-n", ns, "-o",
                         "jsonpath={.items[*].metadata.finalizers}")  # fmt: skip
        raise AssertionError(f"{err}; ModelDeployment finalizers left: {left}") from None
    say(f"namespace deleted under the operator: gone in {time.time() - started:.1f}s")
