"""What tests/cluster deploys by hand: a real sklearn model, server Deployments, Services.

`store_model` trains the model into the cluster's model store; `server_deployment` renders a
Deployment of the real modeldeploy server from the cluster's image the way the operator's pods
look (labels, Prometheus annotations, probes, env, the `restricted` security context); `service`
a Service for them. Manifests only: the kubectl verbs are modeldeploy_demo.kube's.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import joblib
import numpy as np
from sklearn.linear_model import LinearRegression

from devcluster import Cluster

REPO = Path(__file__).resolve().parents[2]
INPUTS = [
    {"name": "RHOB", "min": 1.5, "max": 3.1, "nullValues": [-999]},
    {"name": "NPHI", "min": -0.05, "max": 0.6},
    {"name": "GR", "min": 0, "max": 300},
]
ROW = [2.35, 0.21, 75.0]


def store_model(cluster: Cluster) -> dict[str, str]:
    """A real LinearRegression over RHOB, NPHI, GR saved with joblib into the cluster's model store
    (MODEL_STORE_DIR); its URI at the model store Service (MODEL_STORE_URL) and its sha256."""
    rng = np.random.default_rng(7)
    x = np.column_stack([rng.uniform(1.5, 3.1, 200), rng.uniform(0, 0.6, 200), rng.uniform(0, 300, 200)])
    y = 0.4 - 0.15 * x[:, 0] + 0.5 * x[:, 1] + 0.0002 * x[:, 2]
    path = Path(cluster.env["MODEL_STORE_DIR"]) / "porosity.joblib"
    joblib.dump(LinearRegression().fit(x, y), path)
    path.chmod(0o644)  # the store pod runs as uid 10001
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    return {"uri": f"{cluster.env['MODEL_STORE_URL']}/{path.name}", "sha256": sha256}


def server_deployment(name: str, model: dict[str, str], image: str, replicas: int = 2, revision: str = "r1",
                      sha256: str | None = None, workers: int = 1) -> dict[str, Any]:  # fmt: skip
    """The server from `image` (imagePullPolicy Never: it is imported, never pulled), as the
    `restricted` level requires: non-root uid 10001, no privilege escalation, no capabilities,
    RuntimeDefault seccomp, read-only root filesystem (the download cache on an emptyDir at /tmp).
    The revision answers with its own model version (GET /v2/models/<name>)."""
    env = {
        "MODELDEPLOY_MODEL_NAME": "porosity", "MODELDEPLOY_MODEL_URI": model["uri"],
        "MODELDEPLOY_MODEL_SHA256": sha256 or model["sha256"], "MODELDEPLOY_MODEL_VERSION": revision,
        "MODELDEPLOY_MODEL_REVISION": revision, "MODELDEPLOY_INPUTS": json.dumps(INPUTS),
        "MODELDEPLOY_HOST": "0.0.0.0",
        "MODELDEPLOY_WORKERS": str(workers),
    }  # fmt: skip
    labels = {"app.kubernetes.io/name": "modeldeploy-server", "modeldeploy.io/name": name,
              "modeldeploy.io/revision": revision}  # fmt: skip
    probe = {"httpGet": {"path": "/v2/health/ready", "port": "http"}, "periodSeconds": 1}
    return {
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": f"{name}-{revision}", "labels": labels},
        "spec": {
            "replicas": replicas,
            "selector": {"matchLabels": labels},
            "template": {
                "metadata": {"labels": labels, "annotations": {
                    "prometheus.io/scrape": "true", "prometheus.io/port": "8080", "prometheus.io/path": "/metrics"}},
                "spec": {"terminationGracePeriodSeconds": 5, "automountServiceAccountToken": False,
                         "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001,
                                             "seccompProfile": {"type": "RuntimeDefault"}},
                         "volumes": [{"name": "tmp", "emptyDir": {}}],
                         "containers": [{
                    "name": "server", "image": image, "imagePullPolicy": "Never", "command": ["modeldeploy-server"],
                    "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                        "capabilities": {"drop": ["ALL"]}},
                    "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "env": [{"name": k, "value": v} for k, v in env.items()] + [
                        {"name": "MODELDEPLOY_POD_NAME", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}],
                    "readinessProbe": probe,
                    "livenessProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}},
                    # a loaded machine may take long to import sklearn: liveness counts only after start-up
                    "startupProbe": {"httpGet": {"path": "/v2/health/live", "port": "http"}, "periodSeconds": 1,
                                     "failureThreshold": 180},
                }]},
            },
        },
    }  # fmt: skip


def service(name: str, selector: dict[str, str]) -> dict[str, Any]:
    return {
        "apiVersion": "v1", "kind": "Service", "metadata": {"name": name},
        "spec": {"selector": selector, "ports": [{"name": "http", "port": 80, "targetPort": "http"}]},
    }  # fmt: skip
