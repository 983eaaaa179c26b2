"""spec.autoscaling, pure parts: the stable revision's HorizontalPodAutoscaler and PodDisruptionBudget,
and the replica count the rollout works with.

With autoscaling the HPA `<name>` owns the stable Deployment's replica count; the operator reads it
back each tick (`base_replicas`: the stable Deployment's current spec.replicas, kept within
[minReplicas, maxReplicas]) and uses it wherever `spec.replicas` would be used: the canary is sized
from it at each step, and at promotion the canary is scaled to it before the Services switch, so
the HPA, now pointed at the new stable Deployment, starts from the capacity that served. The PDB
`<name>-stable` keeps all but one stable pod through voluntary disruptions (node drains).

Metrics: `targetCPUUtilizationPercentage` is a Resource metric (the resource metrics API, served
by metrics-server or the kubelet's resource metrics through it); `targetRequestsPerSecondPerPod`
is the Pods metric `modeldeploy_requests_per_second` (a custom metrics API adapter must serve it,
for example prometheus-adapter with a rule over `rate(modeldeploy_requests_total[1m])`).
Called by `ladder.Tick` (base_replicas) and the shell (`handlers`, which applies the objects).
"""

from __future__ import annotations

from typing import Any

from modeldeploy_operator.api import AutoscalingSpec, ModelDeploymentSpec
from modeldeploy_operator.children import LABEL_NAME, LABEL_REVISION, Owner, deployment_name

RPS_METRIC = "modeldeploy_requests_per_second"


def base_replicas(spec: ModelDeploymentSpec, current: int | None) -> int:
    """The stable pod count the rollout works with: spec.replicas, or the autoscaler's (within bounds)."""
    a = spec.autoscaling
    if a is None:
        return spec.replicas
    return min(max(current if current is not None else a.min_replicas, a.min_replicas), a.max_replicas)


def _labels(owner: Owner) -> dict[str, str]:
    return {"app.kubernetes.io/managed-by": "modeldeploy", LABEL_NAME: owner.name}


def hpa(owner: Owner, a: AutoscalingSpec, stable_revision: str) -> dict[str, Any]:
    metrics: list[dict[str, Any]] = []
    if a.target_cpu_utilization_percentage is not None:
        target = {"type": "Utilization", "averageUtilization": a.target_cpu_utilization_percentage}
        metrics.append({"type": "Resource", "resource": {"name": "cpu", "target": target}})
    if a.target_requests_per_second_per_pod is not None:
        value = f"{round(a.target_requests_per_second_per_pod * 1000)}m"
        target = {"type": "AverageValue", "averageValue": value}
        metrics.append({"type": "Pods", "pods": {"metric": {"name": RPS_METRIC}, "target": target}})
    spec: dict[str, Any] = {
        "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment",
                           "name": deployment_name(owner.name, stable_revision)},  # fmt: skip
        "minReplicas": a.min_replicas,
        "maxReplicas": a.max_replicas,
        "metrics": metrics,
    }
    if a.scale_down_stabilization_seconds is not None:
        spec["behavior"] = {"scaleDown": {"stabilizationWindowSeconds": a.scale_down_stabilization_seconds}}
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": {
            "name": owner.name,
            "namespace": owner.namespace,
            "labels": _labels(owner),
            "ownerReferences": [owner.reference()],
        },  # fmt: skip
        "spec": spec,
    }


def pdb(owner: Owner, stable_revision: str) -> dict[str, Any]:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": {
            "name": f"{owner.name}-stable",
            "namespace": owner.namespace,
            "labels": _labels(owner),
            "ownerReferences": [owner.reference()],
        },  # fmt: skip
        "spec": {
            "maxUnavailable": 1,
            "selector": {"matchLabels": {LABEL_NAME: owner.name, LABEL_REVISION: stable_revision}},
        },
    }
