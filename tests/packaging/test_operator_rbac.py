"""The real operator, run with nothing but the chart's RBAC and the chart's settings.

For both RBAC modes the chart is installed, a token of its ServiceAccount is requested, and
`modeldeploy-operator` runs locally from the image's virtual environment (hack/image-install.sh;
the command and MODELDEPLOY_OPERATOR_* env of the chart's rendered Deployment; only Prometheus'
URL and the metrics listener are pointed at loopback) on a
ModelDeployment serving a real joblib model. It must bring the model to Healthy (Deployment,
Services, status) without one Forbidden, and `modeldeploy status --watch` must exit 0 on it.
Cluster mode runs cluster-wide (kopf watches namespaces and the CRD); namespaced mode watches one
namespace with Roles only.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
import subprocess
import time
from pathlib import Path
from typing import Any

import joblib
import numpy as np
import pytest
from sklearn.linear_model import LinearRegression

from tests.packaging.image import image_env
from tests.packaging.tools import Kube, by_kind

pytestmark = pytest.mark.cluster

MODES = {
    # release, release namespace, ModelDeployment namespace, helm flags
    "cluster": ("pkgop", "pkg-op-system", "pkg-op-models", []),
    "namespaced": ("pkgopns", "pkg-opns-system", "pkg-opns-models",
                   ["--set", "rbac.namespaced=true", "--set", "watchNamespaces={pkg-opns-models}"]),
}  # fmt: skip


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _chart_container(kube: Kube, release: str, namespace: str, flags: list[str]) -> dict[str, Any]:
    rendered = kube.helm("get", "manifest", release, "-n", namespace).stdout
    (deploy,) = by_kind(rendered, "Deployment")
    (container,) = deploy["spec"]["template"]["spec"]["containers"]
    return dict(container)


def _model(kube: Kube, name: str, version: int = 1) -> dict[str, str]:
    """A joblib model in the cluster's model store (MODEL_STORE_DIR), fetched by the pods from MODEL_STORE_URL."""
    x = np.array([[0.1, 0.2], [0.4, 0.1], [0.5, 0.9], [0.9, 0.3]])
    artifact = Path(kube.cluster_env["MODEL_STORE_DIR"]) / f"{name}-{version}.joblib"
    joblib.dump(LinearRegression().fit(x, version * x.sum(axis=1)), artifact)
    artifact.chmod(0o644)  # the store pod runs as uid 10001
    sha256 = hashlib.sha256(artifact.read_bytes()).hexdigest()
    return {"uri": f"{kube.cluster_env['MODEL_STORE_URL']}/{artifact.name}", "sha256": sha256, "version": str(version)}


def _wait_healthy(kube: Kube, name: str, namespace: str, generation: int, operator: Any, log: Path) -> dict[str, Any]:
    deadline = time.monotonic() + 180  # a server pod from the image: 8-20 s
    status: dict[str, Any] = {}
    while not (status.get("phase") == "Healthy" and status.get("observedGeneration") == generation):
        assert operator.poll() is None, f"operator exited {operator.returncode}:\n{log.read_text()[-3000:]}"
        assert time.monotonic() < deadline, (
            f"not Healthy in 180 s; status {json.dumps(status)}\n{log.read_text()[-3000:]}"
        )
        time.sleep(1)
        status = kube.get("modeldeployment", name, "-n", namespace).get("status") or {}
    return status


@pytest.mark.parametrize("mode", sorted(MODES))
def test_operator_reconciles_with_only_the_charts_rbac(kube: Kube, image_venv: Path, mode: str, tmp_path: Path) -> None:
    release, release_ns, models_ns, flags = MODES[mode]
    kube.namespaces.add(models_ns)
    kube.kubectl("create", "namespace", models_ns)
    kube.install(release, release_ns, "--set", f"serverImage={kube.cluster_env['IMAGE']}", *flags)
    container = _chart_container(kube, release, release_ns, flags)
    sa_kubeconfig = kube.token_kubeconfig(release_ns, f"{release}-modeldeploy", tmp_path / "sa-kubeconfig")
    port = _free_port()
    # the image's ENV and installed entrypoints, then the chart's env (downward-API fields resolved as
    # the kubelet would for a pod in the release namespace), then loopback-only overrides
    pod_fields = {"metadata.namespace": release_ns, "metadata.name": f"{release}-modeldeploy-test"}
    chart_env = {
        e["name"]: e["value"] if "value" in e else pod_fields[e["valueFrom"]["fieldRef"]["fieldPath"]]
        for e in container["env"]
        if "value" in e or "fieldRef" in e["valueFrom"]
    }
    assert {e["name"] for e in container["env"]} == set(chart_env)
    env = (
        image_env(image_venv)
        | chart_env
        | {
            "KUBECONFIG": str(sa_kubeconfig),
            "MODELDEPLOY_OPERATOR_PROMETHEUS_URL": kube.prometheus_url,
            "MODELDEPLOY_OPERATOR_SCRAPE_INTERVAL_SECONDS": "2",  # the local Prometheus scrapes every 2 s
            "MODELDEPLOY_OPERATOR_METRICS_PORT": str(port),
            "MODELDEPLOY_OPERATOR_METRICS_BIND_ADDRESS": "127.0.0.1",
            "MODELDEPLOY_OPERATOR_TICK_SECONDS": "1",
            "HOME": str(tmp_path),
        }
    )
    assert env["MODELDEPLOY_OPERATOR_NAMESPACES"] == ("" if mode == "cluster" else models_ns)
    name = f"rbac-{mode}"
    v1, v2 = _model(kube, name, 1), _model(kube, name, 2)
    kube.apply([{
        "apiVersion": "modeldeploy.io/v1alpha1",
        "kind": "ModelDeployment",
        "metadata": {"name": name, "namespace": models_ns},
        "spec": {"model": v1, "replicas": 1,
                 "inputs": [{"name": "a", "min": 0, "max": 1}, {"name": "b", "min": 0, "max": 1}]},
    }])  # fmt: skip
    log = tmp_path / "operator.log"
    with log.open("wb") as out:
        operator = subprocess.Popen(container["command"], env=env, stdout=out, stderr=subprocess.STDOUT, cwd=tmp_path)
    try:
        status = _wait_healthy(kube, name, models_ns, 1, operator, log)
        assert status["stableRevision"] and status["stableVersion"] == "1"
        # nobody created the shadow-step key: the operator did, with the chart's RBAC, and never logged it
        stored = kube.get("secret", "modeldeploy-shadow-key", "-n", release_ns)
        key = base64.b64decode(stored["data"]["key"]).decode()
        assert len(key) >= 43 and key not in log.read_text()
        assert kube.get("secret", f"{name}-shadow", "-n", models_ns)["data"]["token"]
        deployments = kube.get("deployments", "-n", models_ns, "-l", f"modeldeploy.io/name={name}")["items"]
        assert len(deployments) == 1
        services = {s["metadata"]["name"] for s in kube.get("services", "-n", models_ns)["items"]}
        assert {name, f"{name}-stable", f"{name}-canary"} <= services
        cli = kube.cli("status", name, "-n", models_ns, "--watch", "--timeout", "30")
        assert cli.returncode == 0, cli.stdout + cli.stderr
        assert "Phase:      Healthy" in cli.stdout
        # A new model, then `undo` before it is promoted: the CLI reads the stable revision's model
        # back from its Deployment and writes it into the spec; the operator cancels the canary.
        kube.kubectl("patch", "modeldeployment", name, "-n", models_ns, "--type=merge",
                     "-p", json.dumps({"spec": {"model": v2}}))  # fmt: skip
        undo = kube.cli("undo", name, "-n", models_ns)
        assert undo.returncode == 0, undo.stdout + undo.stderr
        assert "from version 2 to 1" in undo.stdout
        obj = kube.get("modeldeployment", name, "-n", models_ns)
        assert obj["spec"]["model"] == {**v1, "format": "joblib", "method": "predict"}
        status = _wait_healthy(kube, name, models_ns, obj["metadata"]["generation"], operator, log)
        assert status["stableVersion"] == "1" and status.get("canaryRevision") is None
    finally:
        # Delete while the operator runs: kopf's finalizer on the object needs it to go away.
        kube.kubectl("delete", "modeldeployment", name, "-n", models_ns, "--ignore-not-found", "--timeout=60s",
                     check=False)  # fmt: skip
        operator.terminate()
        try:
            operator.wait(20)
        except subprocess.TimeoutExpired:
            operator.kill()
            operator.wait()
    forbidden = sorted(set(re.findall(r'cannot \w+ resource "[\w/.]+" in API group "[\w.]*"', log.read_text())))
    if mode == "namespaced":
        # kopf probes namespaces (and CRDs) cluster-wide unless its scanning is disabled; on 403 it
        # falls back to the exact namespaces it was given. Noise, not a missing permission.
        forbidden = [f for f in forbidden if '"namespaces"' not in f and '"customresourcedefinitions"' not in f]
    assert forbidden == [], f"the operator needed more than the chart grants: {forbidden}"
