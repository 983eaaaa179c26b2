"""Shared pytest fixtures. `cluster`: the local cluster with its real node (hack/devcluster), started lazily.

The cluster (control plane, containerd, kubelet, kube-proxy, CoreDNS, Traefik and its Gateway,
Prometheus 3, the model store Service; devcluster.realnode) starts only when a test asks for the
fixture, once per session, in `.cache/pytest-realnode/<pid>/`; one per machine at a time (a
second session waits for the lock). It stops, with every pod, at the end of the session.
Tests marked `bench` are deselected unless `-m` names them.
With MODELDEPLOY_CLUSTER=attach the session uses the cluster `make cluster-up` started instead
(and leaves it running).

Python API (devcluster.Cluster): attributes `kubeconfig` (Path), `env` (dict of the env file:
KUBECONFIG, PROMETHEUS_URL, GATEWAY_URL, ...), `prometheus_url`, `gateway_url`, `api_server`,
`log_dir`, `state_dir`, `node_name`, `kubectl_path`, `helm_path`, `timings`; methods
`kubectl(*args, input=None, check=True)`, `apply(path_or_yaml, namespace=None)`, `api_client()`,
`prometheus_query(q)`, `stop_prometheus()`, `start_prometheus()`, `start_metrics_server()`,
`stop_metrics_server()` (metrics.k8s.io, on demand), `status()`,
`pod_log(namespace, pod)`, `wait_for(predicate, timeout, what=...)`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import Cluster
from devcluster.client import stop_by_pid_file

REPO = Path(__file__).resolve().parents[1]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Benchmarks (marker `bench`) run only when asked for: `pytest -m bench`."""
    for marker in ("bench",):
        if marker in (config.option.markexpr or ""):
            continue
        skipped = [item for item in items if item.get_closest_marker(marker)]
        if skipped:
            config.hook.pytest_deselected(items=skipped)
            items[:] = [item for item in items if not item.get_closest_marker(marker)]


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    if os.environ.get("MODELDEPLOY_CLUSTER") == "attach":
        yield Cluster.attach()
        return
    root = REPO / ".cache" / "pytest-realnode"
    if root.exists():  # folders of sessions that are over: their pytest process is gone
        for old in root.iterdir():
            if old.name.isdigit() and not Path(f"/proc/{old.name}").exists():
                stop_by_pid_file(old, timeout=60)  # and any process such a session left behind
                shutil.rmtree(old, ignore_errors=True)
    c = Cluster.start(root / str(os.getpid()))
    try:
        yield c
    finally:
        c.stop()
        for sub in ("etcd", "prometheus", "node", "model-store"):
            shutil.rmtree(c.state_dir / sub, ignore_errors=True)
