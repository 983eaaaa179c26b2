"""The local cluster as tests and scripts use it: start/attach/stop, and handy verbs.

Owns: `Cluster`, the object the pytest `cluster` fixture returns. `Cluster.start()` runs the
harness (`python -m devcluster run`) as a child process that dies with its parent;
`Cluster.attach()` uses one already started by `make cluster-up`. Called by tests/conftest.py and
devcluster.__main__.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from devcluster import controlplane, procs, realnode
from devcluster.procs import ClusterError as ClusterError  # re-exported: the error of every verb

T = TypeVar("T")
REPO = controlplane.REPO
DEFAULT_STATE = REPO / ".cache" / "cluster"


def read_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            env[k] = v
    return env


class Cluster:
    """A running local cluster.

    Attributes: state_dir, env (the env file as a dict), kubeconfig (Path), api_server,
    prometheus_url, gateway_url, control_url, log_dir, node_name, kubectl_path, helm_path,
    timings (start-up seconds by phase).
    """

    def __init__(self, state_dir: Path, proc: subprocess.Popen[bytes] | None = None) -> None:
        self.state_dir = state_dir
        self._proc = proc
        self.env = read_env(state_dir / "env")
        self.kubeconfig = Path(self.env["KUBECONFIG"])
        self.api_server = self.env["KUBE_APISERVER_URL"]
        self.prometheus_url = self.env["PROMETHEUS_URL"]
        self.gateway_url = self.env["GATEWAY_URL"]
        self.control_url = self.env["DEVCLUSTER_CONTROL_URL"]
        self.log_dir = Path(self.env["DEVCLUSTER_LOG_DIR"])
        self.node_name = self.env["DEVCLUSTER_NODE"]
        self.kubectl_path = Path(self.env["KUBECTL"])
        self.helm_path = Path(self.env["HELM"])
        status = json.loads((state_dir / "status.json").read_text())
        self.timings: dict[str, float] = status.get("timings_seconds", {})

    # --- life cycle --------------------------------------------------------------------------
    @classmethod
    def start(cls, state_dir: Path = DEFAULT_STATE, timeout: float = 300.0, detach: bool = False) -> Cluster:
        """Start a cluster (devcluster.realnode) whose files live in state_dir; it dies with this
        process unless detach. One per machine: a second one waits for the first to stop."""
        state_dir = state_dir.resolve()
        if (state_dir / "harness.pid").exists() and _alive(int((state_dir / "harness.pid").read_text() or 0)):
            raise ClusterError(f"a cluster is already running in {state_dir} (make cluster-down stops it)")
        controlplane.binaries_dir(build=True)  # builds once when missing (many minutes cold)
        realnode.build_node_binaries(build=True)  # containerd, kubelet, Prometheus 3, Traefik, CoreDNS
        realnode.build_image()  # the project's image (cached by content)
        realnode.build_image("pause")
        (state_dir / "logs").mkdir(parents=True, exist_ok=True)
        for stale in ("env", "ready", "status.json"):
            (state_dir / stale).unlink(missing_ok=True)
        argv = [sys.executable, "-m", "devcluster", "run", "--state", str(state_dir)]
        if not detach:
            argv += ["--parent-pid", str(os.getpid())]
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO / "hack"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        log = open(state_dir / "logs" / "harness.log", "ab")  # noqa: SIM115 - the child's stdout
        try:
            proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=env,
                                    start_new_session=True, cwd=REPO)  # fmt: skip
        finally:
            log.close()
        deadline = time.monotonic() + timeout
        while not (state_dir / "ready").exists():
            if proc.poll() is not None:
                tail = (state_dir / "logs" / "harness.log").read_text(errors="replace").splitlines()[-15:]
                raise ClusterError(f"cluster harness exited with {proc.returncode}:\n" + "\n".join(tail))
            if time.monotonic() > deadline:
                _terminate(proc)
                raise ClusterError(f"cluster not ready within {timeout:.0f}s; see {state_dir / 'logs'}")
            time.sleep(0.1)
        return cls(state_dir, proc)

    @classmethod
    def attach(cls, state_dir: Path = DEFAULT_STATE) -> Cluster:
        """Use a cluster that `make cluster-up` (or another process) started; stop() leaves it running."""
        state_dir = state_dir.resolve()
        pid_file = state_dir / "harness.pid"
        if not (state_dir / "ready").exists() or not pid_file.exists() or not _alive(int(pid_file.read_text())):
            raise ClusterError(f"no running cluster in {state_dir} (make cluster-up starts one)")
        return cls(state_dir)

    def stop(self, timeout: float = 60.0) -> None:
        """Stop the cluster if this object started it (all processes, pods included)."""
        if self._proc is not None:
            _terminate(self._proc, timeout)
            self._proc = None

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- verbs -------------------------------------------------------------------------------
    def kubectl(self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120) -> str:
        """Run kubectl against the cluster; stdout, or ClusterError with stderr when check fails."""
        proc = procs.kubectl(
            self.kubeconfig, *args, input=input, check=check, timeout=timeout, binary=self.kubectl_path
        )
        return proc.stdout if proc.returncode == 0 else proc.stdout + proc.stderr

    def apply(self, manifest: str | Path, namespace: str | None = None) -> str:
        """kubectl apply a file/directory (Path) or YAML text (str)."""
        ns = ["-n", namespace] if namespace else []
        if isinstance(manifest, Path):
            return self.kubectl("apply", *ns, "-f", str(manifest))
        return self.kubectl("apply", *ns, "-f", "-", input=manifest)

    def api_client(self) -> Any:
        """A kubernetes.client.ApiClient for this cluster (the admin token)."""
        from kubernetes import config

        return config.new_client_from_config(config_file=str(self.kubeconfig))  # type: ignore[no-untyped-call]

    def status(self) -> dict[str, Any]:
        """The harness's live view: env, start-up timings, Prometheus state, component pids."""
        code, body = procs.http_get(self.control_url + "/status", 5.0)
        if code != 200:
            raise ClusterError(f"status: HTTP {code}")
        data: dict[str, Any] = json.loads(body)
        return data

    def stop_prometheus(self) -> None:
        """Stop Prometheus (queries then fail to connect); start_prometheus() brings it back, same URL."""
        self._control("/prometheus/stop")

    def start_prometheus(self) -> None:
        """Start Prometheus again on the same port with the same TSDB; returns once it is ready."""
        self._control("/prometheus/start")

    def start_metrics_server(self) -> None:
        """Start metrics-server and the custom metrics adapter and register them as
        `v1beta1.metrics.k8s.io` and `v1beta2.custom.metrics.k8s.io` (devcluster.metrics); returns
        once the API server serves both (the HPA controller reads them: pod CPU, and
        `modeldeploy_requests_per_second` from Prometheus)."""
        self._control("/metrics-server/start", timeout=150.0)

    def stop_metrics_server(self) -> None:
        """Unregister the APIServices, then stop the adapter and metrics-server."""
        self._control("/metrics-server/stop")

    def restart_component(self, name: str) -> float:
        """Restart kube-apiserver or etcd (same flags and data); returns once the API server is
        ready again, with the seconds the restart took."""
        code, body = procs.http_post(self.control_url + f"/controlplane/restart/{name}", 150.0)
        if code != 200:
            raise ClusterError(f"restart {name}: HTTP {code}: {body[:300]!r}")
        return float(json.loads(body)["seconds"])

    def _control(self, path: str, timeout: float = 90.0) -> None:
        code, body = procs.http_post(self.control_url + path, timeout)
        if code != 200:
            raise ClusterError(f"{path}: HTTP {code}: {body[:300]!r}")

    def prometheus_query(self, query: str) -> list[dict[str, Any]]:
        """Instant query; the result vector (each item has 'metric' and 'value')."""
        from urllib.parse import urlencode

        code, body = procs.http_get(f"{self.prometheus_url}/api/v1/query?{urlencode({'query': query})}", 10.0)
        data = json.loads(body)
        if code != 200 or data.get("status") != "success":
            raise ClusterError(f"prometheus query {query!r}: HTTP {code}: {data.get('error', body[:200])}")
        result: list[dict[str, Any]] = data["data"]["result"]
        return result

    def pod_log(self, namespace: str, pod: str) -> str:
        """`kubectl logs` of the pod's current containers."""
        return self.kubectl("logs", "-n", namespace, pod, "--all-containers", check=False)

    @staticmethod
    def wait_for(predicate: Callable[[], T | None], timeout: float = 60.0, interval: float = 0.25,
                 what: str = "condition") -> T:  # fmt: skip
        """Poll predicate until it returns something truthy; return it or raise TimeoutError naming
        `what` (an exception of the predicate counts as "not yet" and is named on timeout)."""
        return procs.wait_for(predicate, timeout, what, interval, retry_on=(Exception,))


def _alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _terminate(proc: subprocess.Popen[bytes], timeout: float = 60.0) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


def stop_by_pid_file(state_dir: Path, timeout: float = 60.0) -> bool:
    """Stop a detached harness (make cluster-down). False when none was running."""
    pid_file = state_dir / "harness.pid"
    pid = int(pid_file.read_text() or 0) if pid_file.exists() else 0
    if not _alive(pid):
        pid_file.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    if _alive(pid):
        os.killpg(pid, signal.SIGKILL)
    for name in ("ready", "harness.pid"):
        (state_dir / name).unlink(missing_ok=True)
    return True
