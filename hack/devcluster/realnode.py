"""The cluster daemon with its real node: runs it until SIGTERM (test harness).

Owns: start-up order (guard route and bridge -> control plane on the node address -> containerd
with the pause image and the project's image imported -> cluster DNS (CoreDNS on 198.18.0.1:53)
-> kubelet -> node Ready -> kube-proxy ->
Traefik and its Gateway -> Prometheus 3 (kubernetes_sd_configs) -> the model store Service), the
env file and status.json, the control endpoint (/status, Prometheus stop/start, metrics-server
and the custom metrics adapter start/stop: devcluster.metrics, on demand), one real node
per machine (a lock: kube-proxy's nftables tables and the kubelet's cgroups are machine-wide),
and the teardown of every part. Called by `python -m devcluster run`
(through `up` or devcluster.client.Cluster).

Addresses: everything listens on 127.0.0.1, except the API server, the kubelet, CoreDNS and
Prometheus, which serve on the node address 198.18.0.1 (pods reach the API server through the `kubernetes`
Service and Prometheus at PROMETHEUS_URL; the API server reaches the kubelet for
logs/exec/port-forward). Pods get 198.18.1.x, Services 198.19.x.x.
"""

from __future__ import annotations

import fcntl
import json
import logging
import os
import shutil
import signal
import ssl
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

import yaml

from devcluster import controlplane, dns, metrics, network, node, pki, procs, prometheus, s3, traefik

LOCK_FILE = Path("/run/lock/modeldeploy-node.lock")
MODEL_STORE_NAMESPACE = "modeldeploy-store"
MODEL_STORE_SERVICE_IP = "198.19.0.20"
log = logging.getLogger("devcluster.realnode")


def build_node_binaries(build: bool = True) -> dict[str, Path]:
    """The cache folders of containerd, kubelet/kube-proxy, Prometheus 3 and Traefik by part
    (hack/build-node-binaries.sh builds what is missing, many minutes cold)."""
    cmd = ["bash", str(controlplane.REPO / "hack" / "build-node-binaries.sh")]
    env = {**os.environ, "NODE_BINARIES_CHECK_ONLY": "" if build else "1"}
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, env=env)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/build-node-binaries.sh failed with exit code {proc.returncode}")
    lines = (line.split(" ", 1) for line in proc.stdout.splitlines() if " " in line)
    return {part: Path(folder) for part, folder in lines}


def build_image(*args: str) -> tuple[str, Path]:
    """(image reference, OCI archive) from hack/build-image.sh (cached; rebuilt when sources change)."""
    proc = subprocess.run(["bash", str(controlplane.REPO / "hack" / "build-image.sh"), *args],
                          stdout=subprocess.PIPE, text=True)  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(f"hack/build-image.sh {' '.join(args)} failed with exit code {proc.returncode}")
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    return out["IMAGE"], Path(out["ARCHIVE"])


def model_store_manifests(image: str, store_dir: Path) -> str:
    """A Deployment serving store_dir read-only over HTTP from the project's image (uid 10001), and
    its Service on a fixed ClusterIP (MODEL_STORE_URL), in a namespace of its own: a hostPath
    volume is not allowed under the `restricted` (or `baseline`) Pod Security level."""
    labels = {"app.kubernetes.io/name": "model-store"}
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": MODEL_STORE_NAMESPACE}},
        {"apiVersion": "apps/v1", "kind": "Deployment",
         "metadata": {"name": "model-store", "namespace": MODEL_STORE_NAMESPACE},
         "spec": {"replicas": 1, "selector": {"matchLabels": labels}, "template": {
             "metadata": {"labels": labels},
             "spec": {"automountServiceAccountToken": False, "enableServiceLinks": False,
                      "securityContext": {"runAsNonRoot": True, "runAsUser": 10001, "runAsGroup": 10001},
                      "containers": [{
                          "name": "store", "image": image, "imagePullPolicy": "Never",
                          "command": ["python", "-m", "http.server", "8080", "--directory", "/store"],
                          "ports": [{"containerPort": 8080, "name": "http"}],
                          "readinessProbe": {"tcpSocket": {"port": 8080}, "periodSeconds": 1},
                          "securityContext": {"readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False,
                                              "capabilities": {"drop": ["ALL"]}},
                          "volumeMounts": [{"name": "store", "mountPath": "/store", "readOnly": True}],
                      }],
                      "volumes": [{"name": "store", "hostPath": {"path": str(store_dir), "type": "Directory"}}]},
         }}},
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": "model-store", "namespace": MODEL_STORE_NAMESPACE},
         "spec": {"clusterIP": MODEL_STORE_SERVICE_IP, "selector": labels,
                  "ports": [{"name": "http", "port": 80, "targetPort": "http"}]}},
    ]  # fmt: skip
    return yaml.safe_dump_all(docs, sort_keys=False)


class _Stopped(Exception):
    """SIGTERM/SIGINT during start-up."""


class RealNode:
    def __init__(self, state: Path, parent_pid: int | None = None) -> None:
        self.state = state.resolve()
        self.parent_pid = parent_pid
        self.timings: dict[str, float] = {}
        self._t0 = time.monotonic()
        self.control_port = 0  # bound when the cluster is up (_serve_control)
        self._stop = threading.Event()
        self._starting = True
        self.worker = ThreadPoolExecutor(max_workers=1)
        self.cp: controlplane.ControlPlane | None = None
        self.node: node.Node | None = None
        self.traefik: traefik.Traefik | None = None
        self.prom: prometheus.Prometheus | None = None
        self.dns: dns.CoreDns | None = None
        self.s3: s3.S3Store | None = None
        self.metrics: metrics.MetricsServer | None = None
        self.adapter: metrics.MetricsAdapter | None = None
        self.ip_forward: str | None = None
        self.image = ""
        self.store_dir = self.state / "model-store"

    def _mark(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self._t0, 2)
        log.info("%s after %.2fs", what, self.timings[what])

    def env(self) -> dict[str, str]:
        assert self.cp and self.prom and self.traefik
        return {
            "KUBECONFIG": str(self.cp.kubeconfig),
            "KUBE_APISERVER_URL": self.cp.server,
            "PROMETHEUS_URL": self.prom.url,
            "GATEWAY_URL": self.traefik.url,
            "GATEWAY_NAME": traefik.GATEWAY_NAME,
            "GATEWAY_NAMESPACE": traefik.GATEWAY_NAMESPACE,
            "MODEL_STORE_DIR": str(self.store_dir),
            "MODEL_STORE_URL": f"http://{MODEL_STORE_SERVICE_IP}",
            "IMAGE": self.image,
            "DEVCLUSTER_CONTROL_URL": f"http://127.0.0.1:{self.control_port}",
            "DEVCLUSTER_STATE_DIR": str(self.state),
            "DEVCLUSTER_LOG_DIR": str(self.state / "logs"),
            "DEVCLUSTER_NODE": node.NODE_NAME,
            "DEVCLUSTER_PID": str(os.getpid()),
            "DEVCLUSTER_BIN_DIR": str(self.cp.bin),
            "KUBECTL": str(controlplane.kubectl_path()),
            "HELM": str(self.cp.bin / "helm"),
            "MODELDEPLOY_OPERATOR_PROMETHEUS_URL": self.prom.url,
            **(self.s3.env_keys() if self.s3 else {}),
        }

    # --- life cycle ---------------------------------------------------------------------------
    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        for name in ("env", "ready", "status.json"):
            (self.state / name).unlink(missing_ok=True)
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        (self.state / "harness.pid").write_text(str(os.getpid()))
        signal.signal(signal.SIGTERM, self._on_signal)
        signal.signal(signal.SIGINT, self._on_signal)
        lock = self._lock()
        try:
            self._start()
            self._write_env()
            self._starting = False
            threading.Thread(target=self._watch, daemon=True).start()
            self._stop.wait()
            return 0
        except _Stopped:
            return 0
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish the teardown even if asked twice
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self._teardown()
            (self.state / "harness.pid").unlink(missing_ok=True)
            (self.state / "ready").unlink(missing_ok=True)
            lock.close()
            log.info("stopped")

    def _on_signal(self, signum: int, frame: Any) -> None:
        if self._starting:
            raise _Stopped()
        self._stop.set()

    def _lock(self) -> IO[str]:
        LOCK_FILE.parent.mkdir(parents=True, exist_ok=True)
        f = open(LOCK_FILE, "a+")  # noqa: SIM115 - held for the harness's life
        deadline = time.monotonic() + 600
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return f
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"another real-node cluster holds {LOCK_FILE} (one per machine)") from None
                if self._mark_once("waiting_for_lock"):
                    log.warning("another real-node cluster runs on this machine: waiting for %s", LOCK_FILE)
                time.sleep(1.0)

    def _mark_once(self, what: str) -> bool:
        if what in self.timings:
            return False
        self._mark(what)
        return True

    def _start(self) -> None:
        bins = build_node_binaries(build=False)
        self.image, image_archive = build_image()
        pause_ref, pause_archive = build_image("pause")
        shutil.rmtree(self.state / "etcd", ignore_errors=True)  # a fresh cluster: new CA, no stale objects
        self.ip_forward = network.read_ip_forward()
        network.up()
        self._mark("network")
        self.cp = controlplane.ControlPlane(
            self.state, controlplane.binaries_dir(build=False),
            node=(node.NODE_NAME, network.NODE_IP, network.SERVICE_CIDR, network.KUBERNETES_SERVICE_IP),
        )  # fmt: skip
        self.cp.start()
        self._mark("apiserver_readyz")
        crds = threading.Thread(target=self.cp.apply_gateway_crds)
        crds.start()
        p = self.cp.pki
        self.node = node.Node(self.state, bins["containerd"], bins["kube"], self.cp.server, p.ca_cert, p.tokens,
                              p.certs["kubelet-serving"])  # fmt: skip
        self.node.start_containerd()
        self._mark("containerd")
        for ref, archive in ((pause_ref, pause_archive), (self.image, image_archive)):
            if self.node.import_image(archive, ref):
                self._mark(f"imported {ref}")
        self.dns = dns.CoreDns(self.state, bins["coredns"] / "coredns", self.cp.kubeconfig,
                               node.child_env(bins["coredns"]))  # fmt: skip
        self.dns.start()
        self._mark("dns_ready")
        self.node.start_kubelet()
        self._wait(self._node_ready, 120, "node Ready")
        self._mark("node_ready")
        self.node.start_kube_proxy()
        self._wait(lambda: self._get("/api/v1/namespaces/default/serviceaccounts/default")[0] == 200, 60,
                   "the default ServiceAccount")  # fmt: skip
        crds.join()
        self.traefik = traefik.Traefik(self.state, bins["traefik"] / "traefik", self.cp.server, p.ca_cert,
                                       p.admin_token, node.child_env(bins["traefik"]))  # fmt: skip
        self.traefik.start()
        self.cp.kubectl("apply", "-f", "-", input_text=traefik.gateway_manifests(self.traefik.port))
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.store_dir.chmod(0o755)
        self.cp.kubectl("apply", "-f", "-", input_text=model_store_manifests(self.image, self.store_dir))
        token_file = self.state / "prometheus-token"
        token_file.write_text(p.tokens[pki.PROMETHEUS_USER])
        token_file.chmod(0o600)
        # the identities' roles exist from the start (metrics-server itself is started on demand)
        for rbac in (prometheus.rbac_manifests(pki.PROMETHEUS_USER), metrics.rbac_manifests()):
            self.cp.kubectl("apply", "-f", "-", input_text=rbac)
        self.prom = prometheus.Prometheus(
            self.state, prometheus.kubernetes_config(self.cp.server, p.ca_cert, token_file),
            binary=str(bins["prometheus"] / "prometheus"), env=node.child_env(bins["prometheus"]),
            host=network.NODE_IP,  # the operator's pod queries it too
        )  # fmt: skip
        self.prom.start()
        self._mark("prometheus_ready")
        ms_kubeconfig = node.token_kubeconfig(self.state / "metrics-server.kubeconfig", self.cp.server, p.ca_cert,
                                              pki.METRICS_SERVER_USER, p.tokens[pki.METRICS_SERVER_USER])  # fmt: skip
        self.metrics = metrics.MetricsServer(self.state, bins["metrics-server"] / "metrics-server", ms_kubeconfig,
                                             p, node.child_env(bins["metrics-server"]), self.cp.kubectl)  # fmt: skip
        ad_kubeconfig = node.token_kubeconfig(self.state / "metrics-adapter.kubeconfig", self.cp.server, p.ca_cert,
                                              pki.ADAPTER_USER, p.tokens[pki.ADAPTER_USER])  # fmt: skip
        self.adapter = metrics.MetricsAdapter(self.state, bins["metrics-adapter"] / "metrics-adapter", ad_kubeconfig,
                                              p, node.child_env(bins["metrics-adapter"]), self.cp.kubectl,
                                              prometheus_url=self.prom.url)  # fmt: skip
        self.s3 = s3.S3Store(self.state, network.NODE_IP)  # pods and this machine both reach the node address
        try:
            self.s3.start()
            self._mark("s3_ready")
        except (RuntimeError, TimeoutError, OSError) as exc:  # the cluster works without it; S3_* stay unset
            log.warning("S3 store did not start (%s); the env file has no S3_* keys", exc)
            self.s3.stop()
            self.s3 = None
        self.cp.kubectl("wait", "--for=condition=Programmed", "--timeout=60s", "-n", traefik.GATEWAY_NAMESPACE,
                        f"gateway/{traefik.GATEWAY_NAME}")  # fmt: skip
        self._mark("gateway_programmed")
        self.cp.kubectl("rollout", "status", "-n", MODEL_STORE_NAMESPACE, "deployment/model-store", "--timeout=120s")
        # through kube-proxy: ready once the EndpointSlice and the nftables rules caught up
        self._wait(lambda: procs.http_get(f"http://{MODEL_STORE_SERVICE_IP}/", 2.0)[0] == 200, 60,
                   "the model store Service")  # fmt: skip
        self._mark("all_ready")

    def _wait(self, predicate: Any, timeout: float, what: str) -> None:
        def check() -> bool:
            assert self.cp and self.node
            self.cp.check_alive()
            self.node.check_alive()
            return bool(predicate())

        procs.wait_until(check, timeout, 0.2, what)

    def _get(self, path: str) -> tuple[int, Any]:
        assert self.cp
        ctx = ssl.create_default_context(cafile=str(self.cp.pki.ca_cert))
        headers = {"Authorization": f"Bearer {self.cp.pki.admin_token}"}
        status, body = procs.http_get(self.cp.server + path, 5.0, headers, context=ctx)
        return status, json.loads(body) if status == 200 else None

    def _node_ready(self) -> bool:
        status, obj = self._get(f"/api/v1/nodes/{node.NODE_NAME}")
        if status != 200:
            return False
        conditions = (obj.get("status") or {}).get("conditions") or []
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def _write_env(self) -> None:
        # the control port is bound before it is written down: a port picked at start and bound after the
        # bring-up was taken meanwhile by one of the components' loopback connections (EADDRINUSE, seen once)
        self._serve_control()
        env = self.env()
        (self.state / "env").write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        status = {"env": env, "timings_seconds": self.timings, "pid": os.getpid()}
        (self.state / "status.json").write_text(json.dumps(status, indent=2))
        (self.state / "ready").write_text("ok\n")

    def _watch(self) -> None:
        """Stop when a component dies or the parent that asked for the cluster is gone."""
        while not self._stop.wait(1.0):
            if self.parent_pid is not None and os.getppid() != self.parent_pid:
                log.warning("parent %d is gone: stopping", self.parent_pid)
                self._stop.set()
            try:
                assert self.cp and self.node
                self.cp.check_alive()
                self.node.check_alive()
            except RuntimeError as e:
                log.error("%s: stopping", e)
                self._stop.set()

    def _serve_control(self) -> None:
        harness = self

        class Handler(BaseHTTPRequestHandler):
            def _reply(self, code: int, obj: Any) -> None:
                body = json.dumps(obj).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                if self.path != "/status":
                    return self._reply(404, {"error": "not found"})
                assert harness.prom
                self._reply(200, {"env": harness.env(), "timings_seconds": harness.timings,
                                  "prometheus_running": harness.prom.running,
                                  "metrics_server_running": bool(harness.metrics and harness.metrics.running),
                                  "pids": harness.pids()})  # fmt: skip

            def do_POST(self) -> None:  # noqa: N802
                assert harness.prom
                # on the one long-lived worker: a child dies with the thread that started it
                # (parent-death signal), and request threads end with the request
                if self.path == "/prometheus/stop":
                    harness.worker.submit(harness.prom.stop).result()
                    return self._reply(200, {"prometheus_running": False})
                if self.path == "/prometheus/start":
                    harness.worker.submit(harness.prom.start).result()
                    return self._reply(200, {"prometheus_running": True})
                if self.path in ("/metrics-server/start", "/metrics-server/stop") and harness.metrics:
                    try:
                        harness.worker.submit(harness.metrics_apis, self.path.endswith("start")).result()
                    except (RuntimeError, TimeoutError, subprocess.SubprocessError) as exc:
                        return self._reply(500, {"error": f"{self.path}: {exc}"})
                    return self._reply(200, {"metrics_server_running": harness.metrics.running})
                name = self.path.removeprefix("/controlplane/restart/")
                if self.path.startswith("/controlplane/restart/") and harness.cp and name in harness.cp.argv:
                    seconds = harness.worker.submit(harness.cp.restart, name).result()
                    return self._reply(200, {"restarted": name, "seconds": round(seconds, 2)})
                self._reply(404, {"error": "not found"})

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                pass

        server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.control_port = int(server.server_address[1])
        threading.Thread(target=server.serve_forever, daemon=True).start()

    def metrics_apis(self, start: bool) -> None:
        """Start (or stop) both metrics APIs: the resource metrics (metrics-server) and the custom
        metrics (the adapter); on the worker thread, see the control endpoint."""
        parts = [p for p in (self.metrics, self.adapter) if p is not None]
        for part in parts if start else reversed(parts):
            if start:
                part.start()
            else:
                part.stop()

    def pids(self) -> dict[str, int]:
        """Process ids of every component by name (Prometheus only while it runs)."""
        out: dict[str, int] = {}
        for group in (self.cp.procs if self.cp else {}, self.node.procs if self.node else {}):
            out.update({name: p.pid for name, p in group.items() if p.poll() is None})
        for name, part in (("traefik", self.traefik), ("prometheus", self.prom), ("coredns", self.dns),
                           ("metrics-server", self.metrics), ("metrics-adapter", self.adapter)):  # fmt: skip
            if part is not None and part.proc is not None and part.proc.poll() is None:
                out[name] = part.proc.pid
        return out

    def _teardown(self) -> None:
        t0 = time.monotonic()
        for part in (self.adapter, self.metrics, self.s3, self.prom, self.traefik, self.dns):
            if part is not None:
                part.stop()
        done: list[str] = []
        if self.node is not None:
            done += self.node.stop()
        if self.cp is not None:
            self.cp.stop()
        if self.ip_forward is not None:
            done += network.down(self.ip_forward)
        log.info("teardown in %.1fs: %s", time.monotonic() - t0, "; ".join(done))


def main(state: Path, parent_pid: int | None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    return RealNode(state, parent_pid).run()
