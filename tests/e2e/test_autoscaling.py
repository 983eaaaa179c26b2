"""End to end: spec.autoscaling under a real load step (real operator, HPA controller, metrics-server,
kubelet, pods, gateway traffic).

A ModelDeployment with a small CPU request and `autoscaling: {minReplicas: 1, maxReplicas: 3,
targetCPUUtilizationPercentage: 40}` idles on one stable pod below its target; a bounded load step
through the gateway raises the pod's CPU use (measured by the kubelet, aggregated by metrics-server
into `metrics.k8s.io`) above it, and kube-controller-manager's HPA controller scales the stable
Deployment out; the operator keeps that count (it never undoes a scale-out) and a canary started
afterwards is sized from the stable's current replicas (`routed_canary_replicas`), not from
`spec.replicas`. When the load step ends, the HPA scales the stable back in after its
`scaleDownStabilizationSeconds` window, under light traffic, and the canary follows. No request fails
meanwhile.

A second ModelDeployment asks for `targetRequestsPerSecondPerPod` instead: the HPA reads the Pods
metric `modeldeploy_requests_per_second` from `custom.metrics.k8s.io`, which the cluster's custom
metrics adapter (hack/metrics-adapter, on the library prometheus-adapter is built on) computes from
the server pods' own `modeldeploy_requests_total` in the real Prometheus; a load step of three times
the target scales the stable out, and the rate the API reports is the rate the client sent.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar

import pytest

from modeldeploy_demo import kube as k
from modeldeploy_demo.workload import wait_for
from modeldeploy_operator.cost import quantity
from modeldeploy_operator.ratio import routed_canary_replicas
from tests.e2e.conftest import E2E, NAME

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("hpa", "rps")
Say = Callable[[str], None]
T = TypeVar("T")
CPU_REQUEST_MILLICORES = 50  # small: a few requests/s of ~1-2 ms of CPU each exceed half of it on a 2-core node
# The scale-out needs one pod's usage under load above 1.1 x TARGET% of the request (the HPA's tolerance); the
# scale-in needs two or three pods' idle usage (4-7m each) plus the light traffic below TARGET% of one request.
# One CI run saw 40 requests/s give only 46-50% of 50m (about 0.5 ms of CPU a request): 60 requests/s against
# 40% (20m) leaves both a margin.
TARGET = 40
SCALE_IN_WINDOW = 20  # behavior.scaleDown.stabilizationWindowSeconds (Kubernetes' default 300 s)
AUTOSCALING = {"minReplicas": 1, "maxReplicas": 3, "targetCPUUtilizationPercentage": TARGET,
               "scaleDownStabilizationSeconds": SCALE_IN_WINDOW}  # fmt: skip
RATE = 60.0  # bounded: 4 workers, at most 300 s


RPS_TARGET = 8.0  # targetRequestsPerSecondPerPod
RPS_RATE = 3 * RPS_TARGET  # the load step: the HPA wants ceil(24 / 8) = 3 pods (maxReplicas 3)
RPS_METRIC = "modeldeploy_requests_per_second"

STEPS = [{"setWeight": 50}, {"pause": {}}]  # held at 50% (the canary's size is what is checked)
LENIENT = {"maxLatencyP99Seconds": 2.0}  # the loaded 2-core node: a slow p99 is not what this test is about


@pytest.fixture(scope="module")
def resource_metrics(e2e: E2E) -> Iterator[None]:
    """metrics-server and the custom metrics adapter on the real node for this module only (torn
    down before the namespaces go)."""
    e2e.cluster.start_metrics_server()
    try:
        yield
    finally:
        e2e.cluster.stop_metrics_server()


def autoscaled(e2e: E2E, model: str, version: str, **kw: Any) -> dict[str, Any]:
    obj = e2e.mdep(model, version, **kw)
    obj["spec"]["serving"] = {"resources": {"requests": {"cpu": f"{CPU_REQUEST_MILLICORES}m", "memory": "256Mi"}}}
    obj["spec"]["autoscaling"] = AUTOSCALING
    return obj


def pod_usage(e2e: E2E, ns: str, revision: str) -> dict[str, float]:
    """CPU millicores of each pod of `revision` from the resource metrics API (as the HPA controller reads it)."""
    path = f"/apis/metrics.k8s.io/v1beta1/namespaces/{ns}/pods?labelSelector=modeldeploy.io/revision%3D{revision}"
    raw = e2e.cluster.kubectl("get", "--raw", path)
    return {
        item["metadata"]["name"]: sum(quantity(c["usage"]["cpu"]) * 1000 for c in item["containers"])
        for item in json.loads(raw)["items"]
    }


def hpa(e2e: E2E, ns: str) -> dict[str, Any]:
    obj: dict[str, Any] = json.loads(e2e.cluster.kubectl("get", "hpa", NAME, "-n", ns, "-o", "json"))
    return obj


def utilization(obj: dict[str, Any]) -> int | None:
    for m in (obj.get("status") or {}).get("currentMetrics") or []:
        if m.get("type") == "Resource" and m["resource"]["name"] == "cpu":
            value = m["resource"]["current"].get("averageUtilization")
            return int(value) if value is not None else None
    return None


def pod_rates(e2e: E2E, ns: str, revision: str) -> dict[str, float]:
    """Requests per second of each pod of `revision` from the custom metrics API, as the HPA reads it."""
    path = (f"/apis/custom.metrics.k8s.io/v1beta2/namespaces/{ns}/pods/%2A/{RPS_METRIC}"
            f"?labelSelector=modeldeploy.io/revision%3D{revision}")  # fmt: skip
    raw = json.loads(e2e.cluster.kubectl("get", "--raw", path))
    return {item["describedObject"]["name"]: quantity(item["value"]) for item in raw["items"]}


def rps_average(obj: dict[str, Any]) -> float | None:
    """The HPA's current average of the Pods metric, in requests per second per pod."""
    for m in (obj.get("status") or {}).get("currentMetrics") or []:
        if m.get("type") == "Pods" and m["pods"]["metric"]["name"] == RPS_METRIC:
            return quantity(m["pods"]["current"]["averageValue"])
    return None


def waited(predicate: Callable[[], T | None], timeout: float, what: str, seen: Sequence[float]) -> T:
    """wait_for every second; on timeout the HPA's metric values seen meanwhile are in the message."""
    try:
        return wait_for(predicate, timeout, what, interval=1)
    except TimeoutError as e:
        raise AssertionError(f"{e}; HPA metric values seen: {seen}") from e


def scaled_out(
    e2e: E2E, ns: str, current: Callable[[dict[str, Any]], float | None], timeout: float, what: str
) -> tuple[dict[str, Any], list[float]]:
    """The HPA once it wants more than one pod, and its `current(hpa)` metric values seen until then."""
    seen: list[float] = []

    def decided() -> dict[str, Any] | None:
        obj = hpa(e2e, ns)
        if (v := current(obj)) is not None:
            seen.append(v)
        return obj if (obj.get("status") or {}).get("desiredReplicas", 1) > 1 else None

    return waited(decided, timeout, what, seen), seen


def deployed(e2e: E2E, ns: str, obj: dict[str, Any]) -> tuple[str, str]:
    """Route `<name>.<ns>.test` through the gateway, apply `obj`; (host, stable revision) once Healthy."""
    host = f"{NAME}.{ns}.test"
    k.apply(e2e.kubeconfig, ns, k.http_route(NAME, host, k.gateway_ref(e2e.cluster.env)))
    k.apply(e2e.kubeconfig, ns, obj)
    return host, str(e2e.kube.wait_for_phase(ns, NAME, "Healthy", 180)["stableRevision"])


def test_a_load_step_scales_the_stable_out_through_the_hpa_and_a_canary_is_sized_from_it(
    e2e: E2E, resource_metrics: None, say: Say
) -> None:
    ns = e2e.namespaces["hpa"]
    host, stable = deployed(e2e, ns, autoscaled(e2e, "v1", "1"))
    assert e2e.kube.revision_deployment(ns, stable).spec.replicas == 1, "minReplicas 1: one stable pod at rest"

    # at rest: real usage for the stable pod, and the HPA computes a utilization below its target
    idle = wait_for(lambda: pod_usage(e2e, ns, stable) or None, 90, f"metrics.k8s.io usage of the pods of {stable}")
    rest: list[int] = []

    def below_target() -> int | None:
        u = utilization(hpa(e2e, ns))
        rest.extend([u] if u is not None else [])
        return u if u is not None and u < TARGET else None

    at_rest = waited(below_target, 120, f"the HPA's CPU utilization at rest below {TARGET}%", rest)
    assert hpa(e2e, ns)["status"].get("desiredReplicas", 1) == 1, f"scaled out at rest: utilizations {rest}"
    assert e2e.kube.revision_deployment(ns, stable).spec.replicas == 1

    # the load step
    traffic = e2e.traffic(host, rate=RATE, bad_share=0.0, workers=4, max_seconds=300)
    started = time.time()
    decided, seen = scaled_out(e2e, ns, utilization, 180, f"the HPA to scale {stable} out under {RATE:g} requests/s")
    t_desired = time.time() - started
    usage = pod_usage(e2e, ns, stable)
    ready = wait_for(lambda: (e2e.kube.revision_deployment(ns, stable).status.ready_replicas or 0) >= 2 or None, 120,
                     "two ready stable pods")  # fmt: skip
    assert ready
    t_ready = time.time() - started
    desired = int(decided["status"]["desiredReplicas"])
    assert 2 <= desired <= AUTOSCALING["maxReplicas"], decided["status"]
    decided_at = utilization(decided)
    assert decided_at is not None and decided_at > TARGET, decided["status"]
    assert usage and min(usage.values()) > 0, f"metrics.k8s.io under load: {usage}"
    # the operator keeps the HPA's count: the stable Deployment is not scaled back to spec.replicas
    time.sleep(5)
    assert (e2e.kube.revision_deployment(ns, stable).spec.replicas or 0) >= 2

    # a canary during the scale-out: sized from the stable's current replicas at 50%
    k.apply(e2e.kubeconfig, ns, autoscaled(e2e, "v2", "2", steps=STEPS, analysis=LENIENT))

    def at_50() -> dict[str, Any] | None:
        status = e2e.kube.status(ns, NAME)
        return status if status.get("canaryWeight") == 50 else None

    st = wait_for(at_50, 150, "the canary at 50%")
    canary = st["canaryRevision"]

    def proportional() -> tuple[int, int] | None:
        n = e2e.kube.replicas(ns, NAME)
        pair = (n.get(stable, 0), n.get(canary, 0))
        return pair if pair[1] == routed_canary_replicas(pair[0], 50) else None

    stable_n, canary_n = wait_for(proportional, 30, f"canary replicas = routed_canary_replicas(stable, 50): "
                                  f"{e2e.kube.replicas(ns, NAME)}")  # fmt: skip
    assert stable_n >= 2 and canary_n >= 1
    time.sleep(5)
    traffic.stop()
    s = traffic.stats(since=started)
    assert s.failed == 0, f"failed requests during the scale-out: {traffic.counts(since=started)}"
    assert s.ok > 100, s

    # the load step ends: under light traffic the HPA scales the stable back in after its scale-down window,
    # the pod it removes drains while the gateway still sends it requests, and the canary follows the stable
    light = e2e.traffic(host, rate=4.0, bad_share=0.0, workers=2, max_seconds=300)
    ended = time.time()
    low: list[int] = []

    def scaled_in() -> bool | None:
        if (u := utilization(hpa(e2e, ns))) is not None:
            low.append(u)
        return e2e.kube.revision_deployment(ns, stable).spec.replicas == 1 or None

    waited(scaled_in, 240, f"the HPA to scale {stable} back in to 1 after the load", low)
    t_in = time.time() - ended
    selector = f"modeldeploy.io/revision={stable}"
    wait_for(lambda: len(e2e.kube.core.list_namespaced_pod(ns, label_selector=selector).items) == 1 or None, 90,
             "the removed stable pod gone (drained)")  # fmt: skip
    wait_for(lambda: e2e.kube.replicas(ns, NAME).get(canary) == routed_canary_replicas(1, 50) or None, 30,
             f"the canary sized from one stable pod: {e2e.kube.replicas(ns, NAME)}")  # fmt: skip
    time.sleep(3)
    light.stop()
    sl = light.stats(since=ended)
    assert sl.failed == 0, f"failed requests during the scale-in: {light.counts(since=ended)}"
    assert sl.ok > 50, sl
    e2e.figures(hpa_scale_out_desired_seconds=round(t_desired, 1), hpa_scale_out_ready_seconds=round(t_ready, 1),
                hpa_utilization_at_rest_pct=at_rest, hpa_utilization_max_pct=max(seen, default=0),
                hpa_desired_replicas=desired, hpa_scale_in_seconds=round(t_in, 1))  # fmt: skip
    say(
        f"autoscaling: {CPU_REQUEST_MILLICORES}m request, target {TARGET}%: at rest {at_rest}% "
        f"({', '.join(f'{v:.1f}m' for v in idle.values())}); load step {RATE:g} req/s -> utilizations {seen}, "
        f"desiredReplicas {desired} after {t_desired:.1f}s, 2 stable pods ready after {t_ready:.1f}s "
        f"(usage then {', '.join(f'{v:.1f}m' for v in usage.values())}); canary at 50% beside {stable_n} stable pods: "
        f"{canary_n} (routed_canary_replicas); {s.requests} requests, {s.ok} ok, failed {s.failed}; load ended -> "
        f"utilizations {low}, stable back to 1 pod after {t_in:.1f}s (window {SCALE_IN_WINDOW}s); "
        f"{sl.requests} requests meanwhile, failed {sl.failed}"
    )


def test_a_request_rate_target_scales_the_stable_out_from_the_custom_metrics_api(
    e2e: E2E, resource_metrics: None, say: Say
) -> None:
    ns = e2e.namespaces["rps"]
    obj = e2e.mdep("v1", "1")
    obj["spec"]["autoscaling"] = {"minReplicas": 1, "maxReplicas": 3, "targetRequestsPerSecondPerPod": RPS_TARGET}
    host, stable = deployed(e2e, ns, obj)
    spec = hpa(e2e, ns)["spec"]
    assert [m["type"] for m in spec["metrics"]] == ["Pods"], spec["metrics"]
    assert e2e.kube.revision_deployment(ns, stable).spec.replicas == 1

    traffic = e2e.traffic(host, rate=RPS_RATE, bad_share=0.0, workers=4, max_seconds=240)
    started = time.time()
    what = f"the HPA to scale {stable} out under {RPS_RATE:g} requests/s"
    decided, seen = scaled_out(e2e, ns, rps_average, 150, what)
    t_desired = time.time() - started
    desired = int(decided["status"]["desiredReplicas"])
    assert 2 <= desired <= 3, decided["status"]
    average = rps_average(decided)
    assert average is not None and average > RPS_TARGET, decided["status"]
    wait_for(lambda: (e2e.kube.revision_deployment(ns, stable).status.ready_replicas or 0) >= 2 or None, 120,
             "two ready stable pods")  # fmt: skip
    t_ready = time.time() - started

    # what the API reports is what was sent: the pods' rates add up to the client's rate over the window
    window = 20.0  # devcluster.metrics.RATE_WINDOW
    time.sleep(max(0.0, started + window + 5 - time.time()))
    rates = pod_rates(e2e, ns, stable)
    now = time.time()
    sent = traffic.stats(since=now - window - 2, until=now - 2).ok / window
    traffic.stop()
    s = traffic.stats(since=started)
    assert s.failed == 0, f"failed requests during the scale-out: {traffic.counts(since=started)}"
    assert rates, f"no {RPS_METRIC} for the pods of {stable}"
    assert 0.7 * sent <= sum(rates.values()) <= 1.3 * sent, f"custom metrics API {rates} vs {sent:.1f} req/s sent"
    e2e.figures(hpa_rps_scale_out_desired_seconds=round(t_desired, 1),
                hpa_rps_scale_out_ready_seconds=round(t_ready, 1), hpa_rps_average_at_decision=round(average, 2),
                hpa_rps_desired_replicas=desired)  # fmt: skip
    say(
        f"autoscaling on requests: target {RPS_TARGET:g} req/s per pod, load step {RPS_RATE:g} req/s -> HPA averages "
        f"{[round(v, 2) for v in seen]}, desiredReplicas {desired} after {t_desired:.1f}s, "
        f"2 stable pods ready after {t_ready:.1f}s; "
        f"custom metrics API then {', '.join(f'{v:.1f}' for v in rates.values())} req/s per pod "
        f"(sum {sum(rates.values()):.1f}) against {sent:.1f} sent; {s.requests} requests, failed {s.failed}"
    )
