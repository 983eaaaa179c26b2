"""End to end: canaries that must NOT be rolled back (real operator, Prometheus, server pods, gateway traffic).

- a healthy rollout under steady load is promoted with zero failed requests (no 5xx, no
  connection error), through the promotion switch and the old revision's scale-down;
- a flood of invalid client input during a canary gets 422s and the canary is still promoted;
- a canary that gets no traffic holds as Inconclusive (not rolled back) for three intervals;
- a new revision while a canary runs supersedes it; the stable revision's pods are untouched;
- an indefinite pause waits for the `promote` annotation, which is consumed once.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from modeldeploy_demo import kube as k
from modeldeploy_demo.workload import wait_for
from tests.e2e.conftest import E2E, INTERVAL, NAME, SCALE_DOWN_DELAY

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("healthy", "flood", "idle", "supersede", "manual")
Say = Callable[[str], None]


def pods(e2e: E2E, ns: str, revision: str) -> set[str]:
    items = e2e.kube.core.list_namespaced_pod(ns, label_selector=f"modeldeploy.io/revision={revision}").items
    return {p.metadata.name for p in items if p.metadata and p.metadata.name}


def test_healthy_rollout_under_load_is_promoted_with_zero_failed_requests(e2e: E2E, say: Say) -> None:
    ns, host = e2e.deploy_v1("healthy")
    old = e2e.kube.status(ns, NAME)["stableRevision"]
    traffic = e2e.traffic(host, rate=40, bad_share=0.1, invalid_share=0.05)
    watch = e2e.watch(ns)
    started = time.time()
    k.apply(e2e.kubeconfig, ns, e2e.mdep("v2", "2"))
    st = e2e.kube.wait_for_phase(ns, NAME, "Healthy", 150, also=lambda s: s.get("stableVersion") == "2")
    promoted = time.time()
    # keep the traffic running through the scale-down of the old revision, until its pods are gone
    wait_for(lambda: e2e.kube.replicas(ns, NAME).get(old) == 0 and not pods(e2e, ns, old), SCALE_DOWN_DELAY + 60,
             "the old revision scaled down and its pods gone")  # fmt: skip
    gone = time.time()
    time.sleep(3)
    traffic.stop()
    s = traffic.stats(since=started)
    assert s.failed == 0, f"failed requests during the rollout: {traffic.counts(since=started)}"
    assert s.ok > 500 and s.rejected > 0, s
    assert watch.weights_since(started) == [0, 20, 50, 0] or watch.weights_since(started)[-3:] == [20, 50, 0], (
        watch.weights
    )
    assert [h["outcome"] for h in st["history"]][-2:] == ["Deployed", "Promoted"]
    assert st["lastAnalysis"]["verdict"] == "Passed"
    seen = e2e.reasons(ns)
    for reason in ("CanaryStarted", "CanaryReady", "WeightChanged", "AnalysisPassed", "Promoted",
                   "OldRevisionScaledDown"):  # fmt: skip
        assert reason in seen, (reason, seen)
    say(f"healthy rollout: promoted {promoted - started:.1f}s after the change, old pods gone "
        f"{gone - promoted:.1f}s later; {s.requests} requests ({s.ok} 2xx, {s.rejected} 422), failed {s.failed}, "
        f"client p99 {s.p99 * 1000:.0f} ms")  # fmt: skip
    e2e.figures(healthy_seconds_to_promotion=round(promoted - started, 1), healthy_requests=s.requests,
                healthy_failed_requests=s.failed, healthy_client_p99_ms=round(s.p99 * 1000, 1))  # fmt: skip


def test_a_flood_of_invalid_input_is_rejected_and_the_canary_still_promoted(e2e: E2E, say: Say) -> None:
    ns, host = e2e.deploy_v1("flood")
    traffic = e2e.traffic(host, rate=40, bad_share=0.0, invalid_share=0.7)
    watch = e2e.watch(ns)
    started = time.time()
    # only answered requests count toward minRequests (a 422 is not a judgement of the model): at 20%
    # of 40 req/s with 70% invalid the canary answers ~12 rows per 5 s window, below the default 20
    k.apply(e2e.kubeconfig, ns, e2e.mdep("v2", "2", analysis={"minRequests": 10}))
    st = e2e.kube.wait_for_phase(ns, NAME, "Healthy", 150, also=lambda s: s.get("stableVersion") == "2")
    traffic.stop()
    s = traffic.stats(since=started)
    assert s.rejected > s.ok and s.failed == 0, s
    assert not any(x.get("phase") == "RolledBack" for _, x in watch.statuses), "rolled back on client errors"
    assert st["history"][-1]["outcome"] == "Promoted"
    rejections = k.prometheus_query(
        e2e.cluster.prometheus_url, f'sum(modeldeploy_rejections_total{{namespace="{ns}"}})'
    )
    assert rejections and float(rejections[0]["value"][1]) > 0
    say(f"invalid flood: {s.rejected} of {s.requests} requests answered 422, 0 failed; promoted anyway")


def test_a_canary_without_traffic_holds_inconclusive_and_is_not_rolled_back(e2e: E2E, say: Say) -> None:
    ns, _ = e2e.deploy_v1("idle")
    watch = e2e.watch(ns)
    k.apply(e2e.kubeconfig, ns, e2e.mdep("v2", "2"))
    wait_for(lambda: watch.first_weight(20), 60, "canary weight 20")
    first = wait_for(
        lambda: next((t for t, s in watch.statuses if (s.get("lastAnalysis") or {}).get("verdict") == "Inconclusive"),
                     None), 3 * INTERVAL, "a first Inconclusive analysis")  # fmt: skip
    time.sleep(3 * INTERVAL)  # three more intervals without a single request
    st = e2e.kube.status(ns, NAME)
    assert st["phase"] == "Progressing" and st["canaryWeight"] == 20, st
    assert st["lastAnalysis"]["verdict"] == "Inconclusive", st["lastAnalysis"]
    assert "minRequests" in st["lastAnalysis"]["message"], st["lastAnalysis"]
    assert not st.get("failedRevision") and not st.get("failedChecks"), st
    assert "RolledBack" not in e2e.reasons(ns) and "AnalysisInconclusive" in e2e.reasons(ns)
    inconclusive = sum(1 for _, s in watch.statuses if (s.get("lastAnalysis") or {}).get("verdict") == "Inconclusive")
    say(f"idle canary: held at weight 20 for {time.time() - first:.0f}s after the first Inconclusive check "
        f"({inconclusive} Inconclusive analyses): {st['lastAnalysis']['message']}")  # fmt: skip


def test_a_new_revision_supersedes_the_running_canary_and_leaves_stable_untouched(e2e: E2E, say: Say) -> None:
    hold = [{"setWeight": 20}, {"pause": {}}]  # waits at 20% until promoted
    ns, host = e2e.deploy_v1("supersede", steps=hold)
    stable = e2e.kube.status(ns, NAME)["stableRevision"]
    stable_pods = pods(e2e, ns, stable)
    traffic = e2e.traffic(host, rate=30, bad_share=0.1)
    watch = e2e.watch(ns)
    started = time.time()
    k.apply(e2e.kubeconfig, ns, e2e.mdep("v2", "2", steps=hold))
    wait_for(lambda: watch.first_weight(20, after=started), 60, "the v2 canary at weight 20")
    v2 = e2e.kube.status(ns, NAME)["canaryRevision"]
    k.apply(e2e.kubeconfig, ns, e2e.mdep("v3", "3", steps=hold))
    st = wait_for(lambda: (lambda s: s if s.get("canaryVersion") == "3" and s.get("canaryWeight") == 20 else None)(
        e2e.kube.status(ns, NAME)), 60, "the v3 canary at weight 20")  # fmt: skip
    assert st["stableRevision"] == stable and st["phase"] == "Paused", st
    assert pods(e2e, ns, stable) == stable_pods, "the stable revision's pods changed"
    assert e2e.kube.replicas(ns, NAME)[stable] == 2
    superseded = [h for h in st["history"] if h["outcome"] == "Superseded"]
    assert superseded and superseded[-1]["revision"] == v2 and superseded[-1]["version"] == "2", st["history"]
    assert "CanarySuperseded" in e2e.reasons(ns)
    k.kubectl(e2e.kubeconfig, "annotate", "-n", ns, "mdep", NAME, "modeldeploy.io/promote=yes")
    st = e2e.kube.wait_for_phase(ns, NAME, "Healthy", 90, also=lambda s: s.get("stableVersion") == "3")
    traffic.stop()
    assert traffic.stats(since=started).failed == 0, traffic.counts(since=started)
    weights = watch.weights_since(started)
    assert 0 in weights[weights.index(20) :], f"the new canary restarted its steps from weight 0: {watch.weights}"
    say(f"supersede: v2 canary superseded by v3 at weight 20, stable pods unchanged, v3 promoted; weights {weights}")
    # the superseded canary's pods must not keep running (and serving nothing) forever
    try:
        wait_for(lambda: e2e.kube.replicas(ns, NAME).get(v2, 0) == 0 and not pods(e2e, ns, v2), 30,
                 f"the superseded canary {v2} scaled to 0 or deleted, its pods gone")  # fmt: skip
    except TimeoutError as err:
        raise AssertionError(f"{err}; Deployment replicas by revision: {e2e.kube.replicas(ns, NAME)}") from None


def test_an_indefinite_pause_waits_for_the_promote_annotation_which_is_consumed(e2e: E2E, say: Say) -> None:
    steps = [{"setWeight": 30}, {"pause": {}}]
    ns, host = e2e.deploy_v1("manual", steps=steps)
    traffic = e2e.traffic(host, rate=20, bad_share=0.0)
    started = time.time()
    k.apply(e2e.kubeconfig, ns, e2e.mdep("v2", "2", steps=steps))
    paused = e2e.kube.wait_for_phase(ns, NAME, "Paused", 90)
    assert paused["canaryWeight"] == 30, paused
    progressing = next(c for c in paused["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "StepPaused", progressing
    time.sleep(8)  # analysis keeps running; nothing advances by itself
    assert e2e.kube.status(ns, NAME)["phase"] == "Paused"
    k.kubectl(e2e.kubeconfig, "annotate", "mdep", NAME, "-n", ns, "modeldeploy.io/promote=now")
    final = e2e.kube.wait_for_phase(ns, NAME, "Healthy", 90, also=lambda s: s.get("stableVersion") == "2")
    traffic.stop()
    assert "modeldeploy.io/promote" not in (e2e.kube.mdep(ns, NAME)["metadata"].get("annotations") or {})
    last = final["history"][-1]
    assert last["outcome"] == "Promoted" and last["reason"] == "by annotation", last
    assert "PromoteRequested" in e2e.reasons(ns)
    assert set(traffic.counts(since=started)) == {200}, traffic.counts(since=started)
    say(f"indefinite pause at weight 30 held until the promote annotation; promoted {last}")
