"""Shared pytest fixtures. `cluster`: the real local cluster (hack/devcluster), started lazily.

The cluster starts only when a test asks for the fixture, once per session, in its own state
folder `.cache/pytest-cluster/<pid>/` (several sessions may run side by side); it stops, with
every pod process, at the end of the session. Pod logs stay in that folder's `logs/`.
Tests marked `bench` or `realnode` are deselected unless `-m` names them.
With MODELDEPLOY_CLUSTER=attach the session uses the cluster `make cluster-up` started instead
(and leaves it running).

`real_cluster`: the same with the real node (containerd, kubelet, kube-proxy, Traefik, Prometheus
3; devcluster.realnode), in `.cache/pytest-realnode/<pid>/`; one per machine at a time. With
MODELDEPLOY_CLUSTER=attach it uses `DEVCLUSTER_DATAPLANE=real make cluster-up`'s.

Python API (devcluster.Cluster): attributes `kubeconfig` (Path), `env` (dict of the env file:
KUBECONFIG, PROMETHEUS_URL, GATEWAY_URL, ...), `prometheus_url`, `gateway_url`, `api_server`,
`log_dir`, `state_dir`, `node_name`, `kubectl_path`, `helm_path`, `timings`; methods
`kubectl(*args, input=None, check=True)`, `apply(path_or_yaml, namespace=None)`, `api_client()`,
`prometheus_query(q)`, `stop_prometheus()`, `start_prometheus()`, `status()`,
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
    """Benchmarks (marker `bench`) and real-node tests (`realnode`) run only when asked for:
    `pytest -m bench`, `pytest -m realnode`."""
    for marker in ("bench", "realnode"):
        if marker in (config.option.markexpr or ""):
            continue
        skipped = [item for item in items if item.get_closest_marker(marker)]
        if skipped:
            config.hook.pytest_deselected(items=skipped)
            items[:] = [item for item in items if not item.get_closest_marker(marker)]


def _session_cluster(folder: str, dataplane: str) -> Iterator[Cluster]:
    if os.environ.get("MODELDEPLOY_CLUSTER") == "attach":
        yield Cluster.attach()
        return
    root = REPO / ".cache" / folder
    if root.exists():  # folders of sessions that are over: their pytest process is gone
        for old in root.iterdir():
            if old.name.isdigit() and not Path(f"/proc/{old.name}").exists():
                stop_by_pid_file(old, timeout=60)  # and any process such a session left behind
                shutil.rmtree(old, ignore_errors=True)
    c = Cluster.start(root / str(os.getpid()), dataplane=dataplane)
    try:
        yield c
    finally:
        c.stop()
        for sub in ("etcd", "prometheus", "pods", "node"):
            shutil.rmtree(c.state_dir / sub, ignore_errors=True)


@pytest.fixture(scope="session")
def cluster() -> Iterator[Cluster]:
    yield from _session_cluster("pytest-cluster", "process")


@pytest.fixture(scope="session")
def real_cluster() -> Iterator[Cluster]:
    yield from _session_cluster("pytest-realnode", "real")
