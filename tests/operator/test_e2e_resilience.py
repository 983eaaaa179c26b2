"""End to end, when things go wrong around a canary: Prometheus stops, the operator is killed, the
artifact's digest does not match. Real cluster, real operator process, real pods and traffic.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.operator import e2e_helpers as h
from tests.operator.conftest import E2E

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("outage", "restart", "digest", "manual")
NAME = "iris"
STEPS = [{"setWeight": 20}, {"pause": {"seconds": 8}}, {"setWeight": 50}, {"pause": {"seconds": 8}}]


def status(env: E2E, ns: str) -> dict[str, Any]:
    return dict(h.get_mdep(env.kubeconfig, ns, NAME).get("status") or {})


def condition(st: dict[str, Any], type_: str) -> dict[str, Any]:
    return next(c for c in st.get("conditions", []) if c["type"] == type_)


def test_prometheus_outage_holds_the_canary_and_it_continues_afterwards(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    env, ns = e2e, e2e.namespaces["outage"]
    host = h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url, steps=STEPS, deadline=120)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=30, bad_share=0.0).start()
    watch = h.WeightWatch(env.kubeconfig, ns, NAME)
    stopped = False
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 30, 30, "traffic through the gateway")
        h.apply(env.kubeconfig, ns, h.model_deployment(NAME, env.models["v2"], env.store.url, "2", route=NAME,
                                                       steps=STEPS, deadline=120))  # fmt: skip
        h.wait_for(lambda: status(env, ns).get("canaryWeight") == 20, 60, "canary weight 20")
        env.cluster.stop_prometheus()
        stopped = True
        down_at = time.time()
        held = h.wait_for(
            lambda: (st := status(env, ns)) and condition(st, "Progressing")["reason"] == "PrometheusUnavailable"
            and st,
            30, "the PrometheusUnavailable condition",
        )  # fmt: skip
        time.sleep(10)  # well past the 8 s pause: it must not advance without a judgement
        during = status(env, ns)
        env.cluster.start_prometheus()
        stopped = False
        up_at = time.time()
        final = h.wait_for_phase(env.kubeconfig, ns, NAME, "Healthy", timeout=120,
                                 also=lambda o: o["status"].get("stableVersion") == "2")  # fmt: skip
        watch.settle(0)  # status is written before the route: the weight reaches 0 a moment later
    finally:
        if stopped:
            env.cluster.start_prometheus()
        traffic.stop()
        watch.stop()
    message = condition(held, "Progressing")["message"]
    assert "Prometheus unavailable since" in message, message
    assert during["phase"] == "Progressing" and during["canaryWeight"] == 20 and during.get("canaryRevision")
    assert "RolledBack" not in [x["outcome"] for x in final["status"]["history"]]
    assert final["status"]["history"][-1]["outcome"] == "Promoted"
    seen = h.reasons(env.kubeconfig, ns)
    assert "PrometheusUnavailable" in seen and "PrometheusAvailable" in seen
    assert [w for _, w in watch.changes][-3:] == [20, 50, 0]
    with capsys.disabled():
        print(
            f'\n[e2e] Prometheus down {up_at - down_at:.0f}s during the canary: held at 20% ("{message[:120]}"), '
            f"then promoted {time.time() - up_at:.0f}s after it came back"
        )


def test_a_killed_operator_is_replaced_and_the_new_one_finishes_the_rollout(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    env, ns = e2e, e2e.namespaces["restart"]
    host = h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url, steps=STEPS)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=30, bad_share=0.2).start()
    watch = h.WeightWatch(env.kubeconfig, ns, NAME)
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 30, 30, "traffic through the gateway")
        started = time.time()
        h.apply(env.kubeconfig, ns, h.model_deployment(NAME, env.models["v2"], env.store.url, "2", route=NAME,
                                                       steps=STEPS))  # fmt: skip
        h.wait_for(lambda: status(env, ns).get("canaryWeight") == 20, 60, "canary weight 20")
        env.operator.kill()
        killed = status(env, ns)
        time.sleep(12)  # longer than the pause: nothing moves without an operator
        assert status(env, ns)["currentStep"] == killed["currentStep"]
        assert h.route_weights(env.kubeconfig, ns, NAME)[f"{NAME}-canary"] == 20
        restarted = time.time()
        env.operator = h.Operator(env.kubeconfig, env.prometheus_url, env.operator.log,
                                  namespace=",".join(env.namespaces.values()), image=env.image).start()  # fmt: skip
        final = h.wait_for_phase(env.kubeconfig, ns, NAME, "Healthy", timeout=120,
                                 also=lambda o: o["status"].get("stableVersion") == "2")  # fmt: skip
        watch.settle(0)
    finally:
        traffic.stop()
        watch.stop()
    outcomes = [x["outcome"] for x in final["status"]["history"]]
    assert outcomes[-2:] == ["Deployed", "Promoted"] and outcomes.count("Promoted") == 1
    assert [w for _, w in watch.changes] == [0, 20, 50, 0], watch.changes  # resumed, not restarted
    # from the change on, as in test_e2e_faults: Traefik answers 503 for about a second after a new
    # route appears, before any rollout (the fresh-clone run met one here)
    counts = traffic.counts(since=started)
    failed = [round(t - started, 1) for t, code in list(traffic.answers) if t >= started and code != 200]
    assert set(counts) == {200}, (counts, "seconds after the change:", failed[:5], failed[-5:])
    with capsys.disabled():
        print(
            f"\n[e2e] operator SIGKILLed at weight 20 (step {killed['currentStep']}); the new process promoted "
            f"{time.time() - restarted:.0f}s after starting; requests {sum(counts.values())}, failed 0"
        )


def test_an_artifact_with_a_wrong_digest_is_rolled_back_on_the_first_refusal(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    # the server refuses it (exit code 2, one line): final for the revision, so no waiting for
    # progressDeadlineSeconds (600 here: the test would time out if the operator waited for it)
    env, ns = e2e, e2e.namespaces["digest"]
    h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url, steps=STEPS, deadline=600)
    watch = h.WeightWatch(env.kubeconfig, ns, NAME)
    try:
        wrong = h.Model("v2", env.models["v2"].path, env.models["v1"].sha256)  # v2's bytes, v1's digest
        started = time.time()
        h.apply(env.kubeconfig, ns, h.model_deployment(NAME, wrong, env.store.url, "2", route=NAME, steps=STEPS,
                                                       deadline=600))  # fmt: skip
        final = h.wait_for_phase(env.kubeconfig, ns, NAME, "RolledBack", timeout=90)
    finally:
        watch.stop()
    st = final["status"]
    degraded = condition(st, "Degraded")
    assert degraded["status"] == "True" and degraded["reason"] == "ArtifactRefused", degraded
    assert "refused by its server" in degraded["message"] and "refused:" in degraded["message"]
    assert st["stableVersion"] == "1" and st["history"][-1]["outcome"] == "RolledBack"
    assert [w for _, w in watch.changes] == [0], watch.changes  # it never carried traffic
    assert "RolledBack" in h.reasons(env.kubeconfig, ns)
    with capsys.disabled():
        print(f"\n[e2e] wrong digest: rolled back {time.time() - started:.1f}s after the change: {degraded['message']}")


def test_an_indefinite_pause_waits_for_the_promote_annotation_which_is_consumed(e2e: E2E) -> None:
    env, ns = e2e, e2e.namespaces["manual"]
    steps = [{"setWeight": 30}, {"pause": {}}]
    host = h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url, steps=steps)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=20, bad_share=0.0).start()
    try:
        h.apply(env.kubeconfig, ns, h.model_deployment(NAME, env.models["v2"], env.store.url, "2", route=NAME,
                                                       steps=steps))  # fmt: skip
        paused = h.wait_for_phase(env.kubeconfig, ns, NAME, "Paused", timeout=90)
        assert paused["status"]["canaryWeight"] == 30
        assert condition(paused["status"], "Progressing")["reason"] == "StepPaused"
        time.sleep(8)  # analysis keeps running; nothing advances by itself
        assert status(env, ns)["phase"] == "Paused"
        h.kubectl(env.kubeconfig, "annotate", "mdep", NAME, "-n", ns, "modeldeploy.io/promote=now")
        final = h.wait_for_phase(env.kubeconfig, ns, NAME, "Healthy", timeout=90,
                                 also=lambda o: o["status"].get("stableVersion") == "2")  # fmt: skip
    finally:
        traffic.stop()
    assert "modeldeploy.io/promote" not in (final["metadata"].get("annotations") or {})
    assert final["status"]["history"][-1] == {**final["status"]["history"][-1], "outcome": "Promoted",
                                              "reason": "by annotation"}  # fmt: skip
    assert "PromoteRequested" in h.reasons(env.kubeconfig, ns)
    assert set(traffic.counts()) == {200}
