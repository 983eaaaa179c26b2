"""Fixtures of the operator's end-to-end tests (markers cluster, e2e).

`e2e`: per test module, on the session's real local cluster (the real node): the CRD applied, one
namespace per name in the module's `NAMESPACES` (Pod Security `restricted`), real models trained
into the cluster's MODEL_STORE_DIR (server pods fetch them from MODEL_STORE_URL), and the real
`modeldeploy-operator` process watching exactly those namespaces (tick 1 s, scale-down delay 5 s,
server pods from the cluster's IMAGE). Routes attach to the cluster's Gateway (`gateway`).
Teardown deletes the namespaces while the operator still runs (kopf's timer finalizer).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from modeldeploy_demo.kube import create_namespace, gateway_ref
from tests.operator import e2e_helpers as h

REPO = Path(__file__).resolve().parents[2]


@dataclass
class E2E:
    kubeconfig: Path
    gateway_url: str
    prometheus_url: str
    cluster: Any
    store: Store
    models: dict[str, h.Model]
    operator: h.Operator
    namespaces: dict[str, str]
    gateway: dict[str, str]
    image: str


@dataclass(frozen=True)
class Store:
    url: str


@pytest.fixture(scope="module")
def e2e(cluster: Any, request: pytest.FixtureRequest) -> Iterator[E2E]:
    kubeconfig = Path(cluster.kubeconfig)
    h.kubectl(kubeconfig, "apply", "--server-side", "-f", str(REPO / "crds"))
    h.kubectl(kubeconfig, "wait", "--for=condition=Established", "crd/modeldeployments.modeldeploy.io")
    suffix = uuid.uuid4().hex[:6]
    namespaces = {key: f"op-{key}-{suffix}" for key in request.module.NAMESPACES}
    for ns in namespaces.values():
        create_namespace(kubeconfig, ns)
    models = h.train_models(Path(cluster.env["MODEL_STORE_DIR"]))
    for m in models.values():
        m.path.chmod(0o644)  # the store pod runs as uid 10001
    store = Store(cluster.env["MODEL_STORE_URL"])
    image = cluster.env["IMAGE"]
    log = Path(cluster.log_dir) / f"operator-e2e-{suffix}.log"
    watched = ",".join(namespaces.values())
    operator = h.Operator(kubeconfig, cluster.prometheus_url, log, namespace=watched, image=image).start(120)
    env = E2E(kubeconfig, cluster.gateway_url, cluster.prometheus_url, cluster, store, models, operator, namespaces,
              gateway_ref(cluster.env), image)  # fmt: skip
    try:
        yield env
    finally:
        if env.operator.proc is None or env.operator.proc.poll() is not None:
            env.operator = h.Operator(kubeconfig, cluster.prometheus_url, log, namespace=watched, image=image)
            env.operator.start(120)
        for ns in namespaces.values():
            h.kubectl(kubeconfig, "delete", "namespace", ns, "--wait=false")
        h.cleanup_namespaces(kubeconfig, list(namespaces.values()))
        env.operator.stop()
