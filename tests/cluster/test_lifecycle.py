"""The cluster's life cycle from the shell: `python -m devcluster up|status|down`, and no strays.

Starts its own cluster (not the session's) in a temporary folder, runs a server pod, then stops
it with `down` and checks that no process of that cluster is left: not the control plane, not
Prometheus, not the pod's server. Then again with the harness killed by SIGKILL (a crashed test
runner): its children die with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from devcluster import Cluster
from tests.cluster.kube import REPO, apply, ready_pods, server_deployment

pytestmark = pytest.mark.cluster


def devcluster(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO / "hack")}
    return subprocess.run([sys.executable, "-m", "devcluster", *args], capture_output=True, text=True, env=env,
                          timeout=240)  # fmt: skip


def processes_of(state: Path) -> list[int]:
    """Live (non-zombie) processes whose command line or working folder is inside state."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            cwd = os.readlink(proc / "cwd")
            status = (proc / "stat").read_text().split(") ", 1)[1]
        except OSError:
            continue
        if not status.startswith("Z") and (str(state) in cmdline or cwd.startswith(str(state))):
            found.append(int(proc.name))
    return found


def start_with_a_pod(state: Path, model: dict[str, str], workers: int = 1) -> Cluster:
    up = devcluster("up", "--state", str(state))
    assert up.returncode == 0, up.stderr
    assert "KUBECONFIG=" in up.stdout and "GATEWAY_URL=" in up.stdout and "PROMETHEUS_URL=" in up.stdout
    cluster = Cluster.attach(state)
    cluster.kubectl("create", "namespace", "life")
    apply(cluster, "life", server_deployment("porosity", model, replicas=1, workers=workers))
    ready_pods(cluster, "life", "modeldeploy.io/name=porosity", 1, timeout=180)
    status = json.loads(devcluster("status", "--state", str(state)).stdout)
    assert [p["ready"] for p in status["pods"].values()] == [True]
    # control plane (4) + Prometheus + the harness + the server pod, at least
    assert len(processes_of(state)) >= 7, processes_of(state)
    return cluster


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """The test's own cluster folder; whatever happens in the test, its cluster is stopped after."""
    path = tmp_path / "c"
    yield path
    devcluster("down", "--state", str(path))


def test_up_down_leaves_no_process(state: Path, model: dict[str, str]) -> None:
    cluster = start_with_a_pod(state, model)
    again = devcluster("up", "--state", str(state))  # idempotent
    assert again.returncode == 0 and "already running" in again.stderr
    assert f"GATEWAY_URL={cluster.gateway_url}" in again.stdout
    down = devcluster("down", "--state", str(state))
    assert down.returncode == 0 and "stopped" in down.stderr
    assert processes_of(state) == []
    assert devcluster("down", "--state", str(state)).stderr.strip() == "no cluster was running"


def test_killed_harness_takes_its_children_along(state: Path, model: dict[str, str]) -> None:
    start_with_a_pod(state, model, workers=2)  # a server with worker processes of its own
    harness = int((state / "harness.pid").read_text())
    os.kill(harness, signal.SIGKILL)
    # its direct children die with it (parent-death signal); the server's workers are grandchildren
    # that only a later `down` (or the next `up`, or the test fixture) can find by their folder
    Cluster.wait_for(lambda: not [p for p in processes_of(state) if _parent(p) == harness], 15,
                     what="the harness's children gone")  # fmt: skip
    down = devcluster("down", "--state", str(state))
    assert down.returncode == 0, down.stderr
    Cluster.wait_for(lambda: processes_of(state) == [], 10, what=f"no process left of {state}")


def _parent(pid: int) -> int:
    try:
        return int(Path(f"/proc/{pid}/stat").read_text().split(") ", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return 0
