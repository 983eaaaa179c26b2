"""End to end: the real operator process, real API server, real server pods, real Prometheus, real traffic.

(1) a first deployment becomes Healthy, then a good v2 canary walks its Gateway API weights to
promotion with zero failed requests; (2) a canary that answers 500 on part of the inputs is rolled
back by itself, and the seconds from its first 5xx answer to canary weight 0 are printed.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.operator import e2e_helpers as h

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
REPO = Path(__file__).resolve().parents[2]
NAME = "iris"
SCRAPE_SECONDS = 2


@dataclass
class Env:
    kubeconfig: Path
    gateway_url: str
    prometheus_url: str
    store: h.ArtifactServer
    models: dict[str, h.Model]
    operator: h.Operator
    namespaces: dict[str, str]


@pytest.fixture(scope="module")
def env(cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:  # type: ignore[no-untyped-def]
    kubeconfig = Path(cluster.kubeconfig)
    h.kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds"))
    h.kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.io")
    suffix = uuid.uuid4().hex[:6]
    namespaces = {key: f"op-{key}-{suffix}" for key in ("promote", "rollback")}
    for ns in namespaces.values():
        h.kubectl(kubeconfig, "create", "namespace", ns)
    folder = tmp_path_factory.mktemp("models")
    store = h.ArtifactServer(folder)
    models = h.train_models(folder)
    log = Path(cluster.log_dir) / f"operator-e2e-{suffix}.log"
    operator = h.Operator(kubeconfig, cluster.prometheus_url, log, namespace=",".join(namespaces.values())).start()
    try:
        yield Env(kubeconfig, cluster.gateway_url, cluster.prometheus_url, store, models, operator, namespaces)
    finally:
        # while the operator runs: it removes kopf's finalizer from the ModelDeployments it watches
        for ns in namespaces.values():
            h.kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false")
        h.cleanup_namespaces(kubeconfig, list(namespaces.values()))
        operator.stop()
        store.close()


class WeightWatch:
    """Polls the HTTPRoute's canary weight every 0.2 s, recording (time, weight) changes."""

    def __init__(self, kubeconfig: Path, namespace: str) -> None:
        self.changes: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._args = (kubeconfig, namespace)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                w = h.route_weights(*self._args, NAME).get(f"{NAME}-canary", 0)
            except RuntimeError:
                w = -1
            if not self.changes or self.changes[-1][1] != w:
                self.changes.append((time.time(), w))
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def first_time(self, weight: int, after: float) -> float | None:
        return next((t for t, w in self.changes if t >= after and w == weight), None)


def deploy_v1(env: Env, ns: str) -> str:
    host = f"{NAME}.{ns}.test"
    h.apply(env.kubeconfig, ns, h.http_route(NAME, host))
    h.apply(env.kubeconfig, ns, h.model_deployment(NAME, env.models["v1"], env.store.url, "1", route=NAME))
    obj = h.wait_for_phase(env.kubeconfig, ns, NAME, "Healthy", timeout=90)
    assert obj["status"]["stableVersion"] == "1"
    return host


def reasons(env: Env, ns: str) -> list[str]:
    return [
        e["reason"]
        for e in h.events(env.kubeconfig, ns)
        if e.get("involvedObject", {}).get("kind") == "ModelDeployment"
    ]


def test_first_deploy_then_a_good_canary_is_promoted_through_gateway_weights(env: Env, capsys) -> None:  # type: ignore[no-untyped-def]
    ns = env.namespaces["promote"]
    host = deploy_v1(env, ns)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=40, bad_share=0.2).start()
    watch = WeightWatch(env.kubeconfig, ns)
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
    seen = reasons(env, ns)
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
    with capsys.disabled():
        print(
            f"\n[e2e] v2 promoted {promoted - started:.1f}s after the spec change "
            f"(steps 20% / pause 5s / 50% / pause 5s, interval 5s); requests {sum(counts.values())}, failed 0"
        )


def test_a_canary_answering_500_is_rolled_back_by_itself(env: Env, capsys) -> None:  # type: ignore[no-untyped-def]
    ns = env.namespaces["rollback"]
    host = deploy_v1(env, ns)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=40, bad_share=0.3).start()
    watch = WeightWatch(env.kubeconfig, ns)
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 40, 30, "traffic through the gateway")
        started = time.time()
        h.apply(env.kubeconfig, ns, h.model_deployment(NAME, env.models["bad"], env.store.url, "3", route=NAME))
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
    seen = reasons(env, ns)
    assert "AnalysisFailed" in seen and "RolledBack" in seen
    # not retried by itself
    time.sleep(3)
    again = h.get_mdep(env.kubeconfig, ns, NAME)["status"]
    assert again["phase"] == "RolledBack" and again.get("canaryRevision") is None
    with capsys.disabled():
        print(
            f"\n[e2e] bad canary: first 5xx -> canary weight 0 in {weight_0 - first_500:.1f}s "
            f"(analysis interval 5s + scrape {SCRAPE_SECONDS}s + tick 1s); 5xx answers served: {bad_served}; "
            f"decisive: {status['message']}"
        )
