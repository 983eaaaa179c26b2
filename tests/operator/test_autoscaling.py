"""spec.autoscaling: the API's rules, the HPA and PDB on the stable revision, and the rollout sized from
the autoscaler's replica count (the real kopf handler against the fake API server).

An HPA actually scaling out and in, through metrics-server on the real node: tests/e2e/test_autoscaling.py.
"""

from __future__ import annotations

from typing import Any

import pytest

from modeldeploy_operator import autoscale
from modeldeploy_operator import reasons as r
from modeldeploy_operator.api import SpecError, parse_spec
from modeldeploy_operator.children import Owner
from modeldeploy_operator.ratio import routed_canary_replicas
from tests.operator.fake_cluster import FakeCluster, FakeProm, Operator, sim_now
from tests.operator.sim import Sim, spec_dict

SCALING = {"minReplicas": 2, "maxReplicas": 10, "targetCPUUtilizationPercentage": 70}
RESOURCES = {"resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}}


def _raw(**scaling: Any) -> dict[str, Any]:
    raw = spec_dict(steps=[{"setWeight": 50}, {"pause": {}}])
    return raw | {"autoscaling": SCALING | scaling, "serving": RESOURCES}


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (_raw(minReplicas=5, maxReplicas=3), "spec.autoscaling: minReplicas (5) must not exceed maxReplicas (3)"),
        (_raw(targetCPUUtilizationPercentage=None), "needs targetCPUUtilizationPercentage or targetRequestsPerSecond"),
        (_raw() | {"serving": {}}, "targetCPUUtilizationPercentage (70) needs serving.resources.requests.cpu"),
        (_raw(maxReplicas=101), "spec.autoscaling.maxReplicas: Input should be less than or equal to 100"),
        (_raw(targetRequestsPerSecondPerPod=0), "spec.autoscaling.targetRequestsPerSecondPerPod: Input should be"),
        (_raw(scaleDownStabilizationSeconds=-1), "spec.autoscaling.scaleDownStabilizationSeconds: Input should be"),
    ],
)  # fmt: skip
def test_bad_autoscaling_is_refused_naming_the_field(raw: dict[str, Any], expected: str) -> None:
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert expected in str(err.value)


def test_the_hpa_scales_the_stable_deployment_and_the_pdb_guards_it() -> None:
    spec = parse_spec(_raw(targetRequestsPerSecondPerPod=1.5))
    assert spec.autoscaling is not None
    owner = Owner("iris", "ml", "uid-1")
    hpa = autoscale.hpa(owner, spec.autoscaling, "rev1")
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "iris-rev1"}
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (2, 10)
    cpu, rps = hpa["spec"]["metrics"]
    assert cpu["resource"] == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 70}}
    assert rps["pods"]["metric"]["name"] == "modeldeploy_requests_per_second"
    assert rps["pods"]["target"] == {"type": "AverageValue", "averageValue": "1500m"}
    pdb = autoscale.pdb(owner, "rev1")
    selector = {"matchLabels": {"modeldeploy.io/name": "iris", "modeldeploy.io/revision": "rev1"}}
    assert pdb["spec"] == {"maxUnavailable": 1, "selector": selector}
    assert [autoscale.base_replicas(spec, n) for n in (None, 1, 6, 40)] == [2, 2, 6, 10]
    assert "behavior" not in hpa["spec"], "unset: the HPA's own scale-in behaviour (300 s window)"


def test_the_scale_in_window_is_the_hpas_scale_down_stabilization() -> None:
    spec = parse_spec(_raw(scaleDownStabilizationSeconds=15))
    assert spec.autoscaling is not None
    hpa = autoscale.hpa(Owner("iris", "ml", "uid-1"), spec.autoscaling, "rev1")
    assert hpa["spec"]["behavior"] == {"scaleDown": {"stabilizationWindowSeconds": 15}}


def test_the_canary_is_sized_from_the_autoscaled_stable_and_promotion_keeps_its_capacity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    sim = Sim(_raw(), now=sim_now(), ready_after=0)
    sim.run(10, until=lambda s: s.phase() == r.PHASE_HEALTHY)
    v1 = sim.status.stable_revision
    world = FakeCluster(sim)
    op = Operator(world, FakeProm(), monkeypatch)
    op.tick()
    assert world.autoscaling["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == f"iris-{v1}"
    assert world.status.get("autoscaler") == "iris"
    world.desired[v1] = 6  # the HPA scaled the stable out
    op.tick()
    assert world.desired[v1] == 6  # the operator does not undo it (spec.replicas is 2)
    world.set_version("2")
    for _ in range(8):
        op.tick()
    v2 = world.status.get("canaryRevision")
    assert v2 and world.status.get("canaryWeight") == 50
    assert world.desired[v2] == routed_canary_replicas(6, 50)  # from the autoscaler's 6, not spec.replicas 2
    world.annotate(r.ANNOTATION_PROMOTE, "2026-12-01T00:00:00Z")
    serving: list[int] = []
    for _ in range(6):
        op.tick()
        serving.append(world.desired.get(world.status["stableRevision"], 0))
    assert world.status.get("stableRevision") == v2
    assert min(serving) == 6  # every tick, the revision behind the stable Service had the capacity that served
    assert world.autoscaling["HorizontalPodAutoscaler"]["spec"]["scaleTargetRef"]["name"] == f"iris-{v2}"
    assert world.autoscaling["PodDisruptionBudget"]["spec"]["selector"]["matchLabels"]["modeldeploy.io/revision"] == v2
    del world.obj["spec"]["autoscaling"]
    op.tick()
    assert world.autoscaling == {} and "autoscaler" not in world.status
