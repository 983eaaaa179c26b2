"""Fixtures of the operator's end-to-end tests (markers cluster, e2e).

`e2e`: per test module, on the session's real local cluster: the CRD applied, one namespace per
name in the module's `NAMESPACES`, real models published by a loopback artifact server, and the
real `modeldeploy-operator` process watching exactly those namespaces (tick 1 s, scale-down delay
5 s). Teardown deletes the namespaces while the operator still runs (kopf's timer finalizer).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.operator import e2e_helpers as h

REPO = Path(__file__).resolve().parents[2]


@dataclass
class E2E:
    kubeconfig: Path
    gateway_url: str
    prometheus_url: str
    cluster: Any
    store: h.ArtifactServer
    models: dict[str, h.Model]
    operator: h.Operator
    namespaces: dict[str, str]


@pytest.fixture(scope="module")
def e2e(cluster: Any, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[E2E]:
    kubeconfig = Path(cluster.kubeconfig)
    h.kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds"))
    h.kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.io")
    suffix = uuid.uuid4().hex[:6]
    namespaces = {key: f"op-{key}-{suffix}" for key in request.module.NAMESPACES}
    for ns in namespaces.values():
        h.kubectl(kubeconfig, "create", "namespace", ns)
    folder = tmp_path_factory.mktemp("models")
    store = h.ArtifactServer(folder)
    models = h.train_models(folder)
    log = Path(cluster.log_dir) / f"operator-e2e-{suffix}.log"
    operator = h.Operator(kubeconfig, cluster.prometheus_url, log, namespace=",".join(namespaces.values())).start()
    env = E2E(kubeconfig, cluster.gateway_url, cluster.prometheus_url, cluster, store, models, operator, namespaces)
    try:
        yield env
    finally:
        if env.operator.proc is None or env.operator.proc.poll() is not None:
            env.operator = h.Operator(kubeconfig, cluster.prometheus_url, log, namespace=",".join(namespaces.values()))
            env.operator.start()
        for ns in namespaces.values():
            h.kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false")
        h.cleanup_namespaces(kubeconfig, list(namespaces.values()))
        env.operator.stop()
        store.close()
