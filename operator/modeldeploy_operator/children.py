"""Pure builders of the objects a ModelDeployment owns: per-revision Deployments and three Services.

Called by `report.desired_children` (the last rung of a tick), which says which revisions exist
with how many replicas and where the Services point; applied by `Kube.apply` (server-side apply,
only when the object differs from what the operator last applied). Plain dicts, owned by the
ModelDeployment through ownerReferences (so deleting it garbage-collects them).

The pod template renders the server's settings contract (ARCHITECTURE.md) exactly: container
`server`, command `modeldeploy-server`, port 8080 named `http`, the MODELDEPLOY_* environment,
readiness on /v2/health/ready, liveness on /v2/health/live, Prometheus scrape annotations; and a
security context that Pod Security Admission `restricted` admits (uid 10001, read-only root
filesystem, an emptyDir at /tmp).
"""

from __future__ import annotations

import copy
import json
from dataclasses import dataclass
from typing import Any

from modeldeploy_operator import API_VERSION, KIND
from modeldeploy_operator.api import ModelDeploymentSpec

SERVER_PORT = 8080
SERVICE_PORT = 80
LABEL_NAME = "modeldeploy.io/name"
LABEL_REVISION = "modeldeploy.io/revision"


@dataclass(frozen=True)
class Owner:
    """The ModelDeployment that owns the children (for ownerReferences)."""

    name: str
    namespace: str
    uid: str

    def reference(self) -> dict[str, Any]:
        return {
            "apiVersion": API_VERSION,
            "kind": KIND,
            "name": self.name,
            "uid": self.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }


def deployment_name(name: str, revision: str) -> str:
    return f"{name}-{revision}"


DRAIN_SECONDS = 5  # preStop: the pod keeps serving this long after it leaves the endpoints
PROBE_TIMEOUT_SECONDS = 5  # a probe waits behind the model call in progress (kubelet default 1 s: one slow batch)


# Pod Security Admission `restricted`: the image's non-root user, no privilege escalation, no
# capabilities, the runtime's default seccomp profile; the root filesystem is read-only and the
# only writable place is an emptyDir at /tmp.
SERVER_UID = 10001
POD_SECURITY: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": SERVER_UID,
    "runAsGroup": SERVER_UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}
CONTAINER_SECURITY: dict[str, Any] = {
    "readOnlyRootFilesystem": True,
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
}


def pod_labels(name: str, revision: str) -> dict[str, str]:
    return {
        "app.kubernetes.io/name": "modeldeploy-server",
        "app.kubernetes.io/instance": name,
        "app.kubernetes.io/managed-by": "modeldeploy",
        LABEL_NAME: name,
        LABEL_REVISION: revision,
    }


def server_env(name: str, spec: ModelDeploymentSpec, revision: str) -> list[dict[str, Any]]:
    """The server's settings contract, in a fixed order. MODELDEPLOY_MODEL_SHA256 and the reference only when set."""
    model = spec.model
    env: list[dict[str, Any]] = [
        {"name": "MODELDEPLOY_MODEL_NAME", "value": name},
        {"name": "MODELDEPLOY_MODEL_URI", "value": model.uri},
    ]
    if model.sha256 is not None:
        env.append({"name": "MODELDEPLOY_MODEL_SHA256", "value": model.sha256})
    inputs = [i.model_dump(by_alias=True, mode="json", exclude_none=True) for i in spec.inputs]
    env += [
        {"name": "MODELDEPLOY_MODEL_FORMAT", "value": str(model.effective_format)},
        {"name": "MODELDEPLOY_MODEL_VERSION", "value": model.version},
        {"name": "MODELDEPLOY_MODEL_METHOD", "value": model.method},
        {"name": "MODELDEPLOY_MODEL_REVISION", "value": revision},
        {"name": "MODELDEPLOY_INPUTS", "value": json.dumps(inputs, separators=(",", ":"))},
        {"name": "MODELDEPLOY_HOST", "value": "0.0.0.0"},
        {"name": "MODELDEPLOY_PORT", "value": str(SERVER_PORT)},
        {"name": "MODELDEPLOY_WORKERS", "value": str(spec.serving.workers)},
        {"name": "MODELDEPLOY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}},
        # shadow steps: the ModelDeployment's token, from the first revision on (no restart to shadow)
        {
            "name": "MODELDEPLOY_SHADOW_TOKEN",
            "valueFrom": {"secretKeyRef": {"name": f"{name}-shadow", "key": "token", "optional": True}},
        },
    ]
    if model.reference is not None:  # the training profile: the server verifies it and bins by it
        env.append({"name": "MODELDEPLOY_REFERENCE_URI", "value": model.reference.uri})
        env.append({"name": "MODELDEPLOY_REFERENCE_SHA256", "value": model.reference.sha256})
    return env


def pod_template(name: str, spec: ModelDeploymentSpec, revision: str, image: str) -> dict[str, Any]:
    container: dict[str, Any] = {
        "name": "server",
        "image": image,
        "command": ["modeldeploy-server"],
        "ports": [{"name": "http", "containerPort": SERVER_PORT, "protocol": "TCP"}],
        "env": server_env(name, spec, revision),
        # the server's one refusal line (exit code 2) reaches the pod's status, and so the operator
        "terminationMessagePolicy": "FallbackToLogsOnError",
        # the server answers a probe between two model calls: a slow model (0.6 s a row) kept it waiting
        # past the kubelet's default 1 s, the pod turned unready and the gateway answered 503 for it
        "readinessProbe": {
            "httpGet": {"path": "/v2/health/ready", "port": "http"},
            "periodSeconds": 2,
            "failureThreshold": 2,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
        },
        # keep answering while gateways and kube-proxy still route here after the pod is told to stop
        "lifecycle": {"preStop": {"sleep": {"seconds": DRAIN_SECONDS}}},
        "livenessProbe": {
            "httpGet": {"path": "/v2/health/live", "port": "http"},
            "periodSeconds": 10,
            "failureThreshold": 3,
            "timeoutSeconds": PROBE_TIMEOUT_SECONDS,
        },
        "securityContext": copy.deepcopy(CONTAINER_SECURITY),
        # the server's artifact download cache (the image sets XDG_CACHE_HOME=/tmp/.cache)
        "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
    }
    resources = spec.serving.resources
    if resources is not None:
        container["resources"] = resources.model_dump(by_alias=True, mode="json")
    serving = spec.serving
    if serving.artifact_credentials is not None:
        container["envFrom"] = [{"secretRef": {"name": serving.artifact_credentials.secret_name}}]
    pod_spec: dict[str, Any] = {
        "containers": [container],
        "terminationGracePeriodSeconds": 30 + DRAIN_SECONDS,
        # the server never calls the Kubernetes API: no token unless asked for
        "automountServiceAccountToken": serving.automount_service_account_token,
        "securityContext": copy.deepcopy(POD_SECURITY),
        "volumes": [{"name": "tmp", "emptyDir": {}}],
    }
    if serving.service_account_name is not None:
        pod_spec["serviceAccountName"] = serving.service_account_name
    return {
        "metadata": {
            "labels": pod_labels(name, revision),
            "annotations": {
                "prometheus.io/scrape": "true",
                "prometheus.io/port": str(SERVER_PORT),
                "prometheus.io/path": "/metrics",
            },
        },
        "spec": pod_spec,
    }


def deployment(owner: Owner, spec: ModelDeploymentSpec, revision: str, replicas: int, image: str) -> dict[str, Any]:
    selector = {LABEL_NAME: owner.name, LABEL_REVISION: revision}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {
            "name": deployment_name(owner.name, revision),
            "namespace": owner.namespace,
            "labels": pod_labels(owner.name, revision),
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": selector},
            # a revision's template never changes (its hash names it), so this only matters for
            # node drains: never go below the wanted count of ready pods
            "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
            "template": pod_template(owner.name, spec, revision, image),
        },
    }


def service(owner: Owner, service_name: str, revision: str | None) -> dict[str, Any]:
    """A Service on port 80 -> http; `revision` None selects every revision of the model."""
    selector = {LABEL_NAME: owner.name}
    if revision is not None:
        selector[LABEL_REVISION] = revision
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": service_name,
            "namespace": owner.namespace,
            "labels": {
                "app.kubernetes.io/name": "modeldeploy-server",
                "app.kubernetes.io/instance": owner.name,
                "app.kubernetes.io/managed-by": "modeldeploy",
                LABEL_NAME: owner.name,
            },
            "ownerReferences": [owner.reference()],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "http", "port": SERVICE_PORT, "targetPort": "http", "protocol": "TCP"}],
        },
    }


def services(
    owner: Owner, stable_revision: str, canary_revision: str | None, users_stable_only: bool = False
) -> list[dict[str, Any]]:
    """`<name>-stable`, `<name>-canary` (the stable revision when no canary runs), `<name>` (all; only
    the stable revision while a canary is compared in a shadow step before it carries weight, and
    while a rolled-back canary still has pods)."""
    return [
        service(owner, f"{owner.name}-stable", stable_revision),
        service(owner, f"{owner.name}-canary", canary_revision or stable_revision),
        service(owner, owner.name, stable_revision if users_stable_only else None),
    ]
