"""The operator as a user runs it: `helm install` of charts/modeldeploy, the operator a pod.

`ChartOperator` has the interface of `workload.Operator` (start, stop, healthy, metrics, usage,
pid, kill, restart, log, env, started_at), so the end-to-end scenarios run unchanged against it:

- start(): a release in a namespace of its own (Pod Security `restricted`), watching the given
  namespaces, with the cluster's IMAGE (pull policy Never) for the operator and the server pods.
  By default `rbac.namespaced=true`: the operator gets only the chart's Roles in those namespaces.
  It reaches the API server through the `kubernetes` Service and Prometheus through a Service
  `prometheus` in its namespace (no selector; an EndpointSlice names the node address where the
  cluster's Prometheus listens), by name: `http://prometheus.<namespace>.svc:9090`.
- healthy() / metrics(): the pod's /healthz and /metrics on its pod address (198.18.x.x).
- pid: the host pid of the operator container's main process (the one process of this machine
  whose cgroup names the container and whose parent is outside it), so kill() is a real SIGKILL
  of the container, and usage() reads RSS and CPU from /proc as for a local process.
- restart() after kill(): waits until the kubelet restarted the container (the Deployment's
  restartPolicy Always, with the kubelet's back-off) and /healthz answers 200 again; the killed
  container's log (`kubectl logs --previous`) goes to `log` first.
- stop(): deletes the watched namespaces' ModelDeployments while the operator still runs (it
  releases their finalizers), writes `kubectl logs` to `log`, `helm uninstall --wait` and
  deletes the release's namespace.

Called by tests/e2e/conftest.py (MODELDEPLOY_E2E_OPERATOR=chart, the default).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from modeldeploy_demo import kube as k
from modeldeploy_demo.workload import Usage, process_usage, wait_for

REPO = Path(__file__).resolve().parents[2]
CHART = REPO / "charts" / "modeldeploy"
CONTAINER = "operator"
METRICS_PORT = 8000  # the chart's default metricsPort
PROMETHEUS_PORT = 9090  # the port of the `prometheus` Service in the release's namespace


def find_container_pid(container_id: str) -> int | None:
    """Host pid of a container's main process: the process whose cgroup path names the container
    id while its parent's does not (the parent is containerd's shim), or None."""
    inside: dict[int, int] = {}
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            if container_id not in (proc / "cgroup").read_text():
                continue
            stat = (proc / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        inside[int(proc.name)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    roots = [pid for pid, ppid in inside.items() if ppid not in inside]
    return min(roots) if roots else None


class ChartOperator:
    """The chart's operator pod, watching `namespace` (comma-separated), e2e settings."""

    def __init__(self, cluster_env: Mapping[str, str], log: Path, namespace: str, tick: int = 1,
                 scale_down_delay: int = 5, image: str | None = None, cost_refresh: int = 60,
                 rbac_namespaced: bool = True, system_namespace: str | None = None,
                 release: str | None = None) -> None:  # fmt: skip
        self.kubeconfig = Path(cluster_env["KUBECONFIG"])
        self.helm = cluster_env["HELM"]
        self.prometheus = urlsplit(cluster_env["PROMETHEUS_URL"])
        self.log = log
        self.namespaces = [ns for ns in namespace.split(",") if ns]
        suffix = uuid.uuid4().hex[:5]
        self.system = system_namespace or f"mdop-{suffix}"
        self.release = release or f"modeldeploy-{suffix}"  # its own ClusterRole name in cluster RBAC mode
        image = image or cluster_env["IMAGE"]
        repository, tag = image.rsplit(":", 1)
        self.values: dict[str, Any] = {
            "image": {"repository": repository, "tag": tag, "pullPolicy": "Never"},
            "serverImage": image,
            "prometheusUrl": f"http://prometheus.{self.system}.svc:{PROMETHEUS_PORT}",
            "prometheusScrapeIntervalSeconds": 2,  # the cluster's Prometheus scrapes every 2 s
            "watchNamespaces": self.namespaces,
            "rbac": {"namespaced": rbac_namespaced},
            "tickSeconds": tick,
            "scaleDownDelaySeconds": scale_down_delay,
            # status.cost every minute even while nothing else changes (the default waits 5 min)
            "costRefreshSeconds": cost_refresh,
        }
        # the settings the operator gets, under the names a local process would (workload.Operator.env)
        self.env = {
            "MODELDEPLOY_OPERATOR_PROMETHEUS_URL": self.values["prometheusUrl"],
            "MODELDEPLOY_OPERATOR_TICK_SECONDS": str(tick),
            "MODELDEPLOY_OPERATOR_SCALE_DOWN_DELAY_SECONDS": str(scale_down_delay),
            "MODELDEPLOY_OPERATOR_NAMESPACES": ",".join(self.namespaces),
            "MODELDEPLOY_OPERATOR_COST_REFRESH_SECONDS": str(cost_refresh),
            "MODELDEPLOY_OPERATOR_SERVER_IMAGE": image,
        }
        self.pod = ""
        self.pod_ip = ""
        self.container_id = ""
        self.restarts = 0
        self._pid: int | None = None
        self.started_at = 0.0
        self.installed = False

    # --- the release -------------------------------------------------------------------------
    def _kubectl(self, *args: str, input: str | None = None, timeout: float = 120) -> str:
        return k.kubectl(self.kubeconfig, *args, input=input, timeout=timeout)

    def _helm(self, *args: str, timeout: float = 300) -> str:
        proc = subprocess.run([self.helm, "--kubeconfig", str(self.kubeconfig), *args],
                              capture_output=True, text=True, timeout=timeout)  # fmt: skip
        if proc.returncode != 0:
            raise RuntimeError(f"helm {' '.join(args[:2])} failed: {proc.stdout[-1500:]}{proc.stderr[-1500:]}")
        return proc.stdout

    def _prometheus_service(self) -> list[dict[str, Any]]:
        """A Service without selector and its EndpointSlice: the cluster's Prometheus by name."""
        name, port = "prometheus", self.prometheus.port or 80
        labels = {"kubernetes.io/service-name": name, "endpointslice.kubernetes.io/managed-by": "modeldeploy-e2e"}
        return [
            {"apiVersion": "v1", "kind": "Service", "metadata": {"name": name, "namespace": self.system},
             "spec": {"ports": [{"name": "http", "port": PROMETHEUS_PORT, "targetPort": port}]}},
            {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
             "metadata": {"name": name, "namespace": self.system, "labels": labels},
             "addressType": "IPv4", "endpoints": [{"addresses": [self.prometheus.hostname]}],
             "ports": [{"name": "http", "port": port, "protocol": "TCP"}]},
        ]  # fmt: skip

    def start(self, timeout: float = 240.0) -> ChartOperator:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        k.create_namespace(self.kubeconfig, self.system)
        self._kubectl("apply", "-f", "-", input=json.dumps({"apiVersion": "v1", "kind": "List",
                                                             "items": self._prometheus_service()}))  # fmt: skip
        values = self.log.with_suffix(".values.json")
        values.write_text(json.dumps(self.values, indent=2))
        self.installed = True
        try:
            self._helm("upgrade", "--install", self.release, str(CHART), "-n", self.system, "-f", str(values),
                       "--wait", "--timeout", f"{int(timeout)}s", timeout=timeout + 60)  # fmt: skip
            self._refresh()
            wait_for(self.healthy, 120, f"the operator pod's /healthz on {self.url}")
        except Exception as err:
            self._describe()
            raise RuntimeError(f"{err}; pods, events and logs of {self.system} in {self.log}") from err
        return self

    def _describe(self) -> None:
        """The release namespace's pods and events and the operator's log, into `log`."""
        with self.log.open("a") as out:
            for args in (("get", "pods", "-o", "wide"), ("describe", "pods"), ("get", "events"),
                         ("logs", "-l", f"app.kubernetes.io/instance={self.release}", "--tail=200")):  # fmt: skip
                try:
                    text = self._kubectl(*args, "-n", self.system, timeout=60)
                except (RuntimeError, subprocess.TimeoutExpired) as err:
                    text = f"({err})\n"
                out.write(f"----- kubectl {' '.join(args)}\n{text}")

    def _pod(self) -> dict[str, Any]:
        selector = f"app.kubernetes.io/instance={self.release}"
        pods = json.loads(self._kubectl("get", "pods", "-n", self.system, "-l", selector, "-o", "json"))["items"]
        live = [p for p in pods if not p["metadata"].get("deletionTimestamp")]
        assert len(live) == 1, f"expected one operator pod in {self.system}: {[p['metadata']['name'] for p in pods]}"
        return dict(live[0])

    @staticmethod
    def _status(pod: dict[str, Any]) -> dict[str, Any]:
        statuses = (pod.get("status") or {}).get("containerStatuses") or []
        return dict(next((s for s in statuses if s["name"] == CONTAINER), {}))

    def _refresh(self) -> None:
        """Pod name, address, container id and its host pid, once the container runs."""
        pod = self._pod()
        st = self._status(pod)
        assert "running" in (st.get("state") or {}), f"operator container not running: {st}"
        self.pod, self.pod_ip = pod["metadata"]["name"], pod["status"]["podIP"]
        self.container_id = str(st["containerID"]).split("://", 1)[-1]
        self.restarts = int(st.get("restartCount", 0))
        self.started_at = k.parse_time(st["state"]["running"]["startedAt"])  # this process's start
        self._pid = wait_for(lambda: find_container_pid(self.container_id), 30,
                             f"the host process of container {self.container_id[:12]}")  # fmt: skip

    @property
    def pid(self) -> int:
        assert self._pid is not None, "the operator was not started"
        return self._pid

    # --- probes ------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.pod_ip}:{METRICS_PORT}"

    def healthy(self) -> bool:
        try:
            return httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def metrics(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=5).text

    def usage(self) -> Usage:
        return process_usage(self.pid)

    def recent_log(self, lines: int = 400) -> list[str]:
        """The last lines of its log: the killed containers' (in `log` since their restart), then the
        running one's (`kubectl logs --tail`)."""
        before = self.log.read_text(errors="replace").splitlines() if self.log.exists() else []
        now = self._kubectl("logs", "-n", self.system, self.pod, "-c", CONTAINER, f"--tail={lines}", timeout=30)
        return [*before, *now.splitlines()][-lines:]

    # --- failure and restart -----------------------------------------------------------------
    def kill(self) -> None:
        """SIGKILL of the container's main process: no chance to clean up, like a node failure."""
        pid = self.pid
        os.kill(pid, signal.SIGKILL)
        wait_for(lambda: not Path(f"/proc/{pid}").exists() or _zombie(pid), 10, f"pid {pid} gone")

    def restart(self, timeout: float = 180.0) -> ChartOperator:
        """After kill(): the kubelet starts the container again (same pod, same settings); returns
        once it runs and /healthz is green."""
        before = self.restarts

        def restarted() -> bool:
            st = self._status(self._pod())
            return int(st.get("restartCount", 0)) > before and "running" in (st.get("state") or {})

        wait_for(restarted, timeout, "the kubelet to restart the operator container", interval=0.5)
        self._append_log(previous=True)
        self._refresh()
        wait_for(self.healthy, timeout, "the restarted operator's /healthz")
        return self

    # --- logs and teardown -------------------------------------------------------------------
    def _append_log(self, previous: bool = False) -> None:
        args = ["logs", "-n", self.system, self.pod, "-c", CONTAINER, *(["--previous"] if previous else [])]
        try:
            text = self._kubectl(*args, timeout=60)
        except (RuntimeError, subprocess.TimeoutExpired) as err:
            text = f"({err})\n"
        with self.log.open("a") as out:
            out.write(f"----- kubectl {' '.join(args)}\n{text}")

    def stop(self) -> None:
        if not self.installed:
            return
        self.installed = False
        if self.pod and self.healthy():
            for ns in self.namespaces:  # while the operator runs: it releases their finalizers
                try:
                    self._kubectl("delete", "mdep", "--all", "-n", ns, "--ignore-not-found", "--timeout=60s",
                                  timeout=90)  # fmt: skip
                except (RuntimeError, subprocess.TimeoutExpired):
                    pass  # the caller strips the finalizers left behind
            self._append_log()
        try:
            self._helm("uninstall", self.release, "-n", self.system, "--wait", "--timeout", "120s", timeout=180)
        finally:
            self._kubectl("delete", "namespace", self.system, "--wait=false", "--ignore-not-found")
            self.pod = ""


def _zombie(pid: int) -> bool:
    try:
        return any(ln.startswith("State:") and "Z" in ln.split()[1] for ln in
                   Path(f"/proc/{pid}/status").read_text().splitlines())  # fmt: skip
    except (OSError, IndexError):
        return True
