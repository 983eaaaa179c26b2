"""The real control plane: etcd, kube-apiserver, kube-controller-manager, kube-scheduler.

Owns: locating the cached binaries (hack/versions.env key, KUBEBUILDER_ASSETS), their flags,
ports on 127.0.0.1, the admin kubeconfig, waiting for /readyz, applying the Gateway API CRDs.
Called by realnode (start/stop).

With the real node (`node` set: devcluster.realnode) the API server listens on the node address
in 198.18.0.0/15, Services get 198.19.0.0/16 addresses, every controller runs, and the API server
reaches the kubelet with a client certificate; the aggregation layer is configured (front-proxy
CA and client certificate) for metrics-server (devcluster.metrics). Without `node` (a control plane alone on loopback,
which no harness starts any more) the EndpointSlice controllers are off: the API server refuses
loopback addresses in EndpointSlices.
"""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from devcluster import pki, procs

REPO = Path(__file__).resolve().parents[2]
# the process kubelet: data only (nothing ever connects to a ClusterIP), inside the test range anyway
SERVICE_CIDR = "198.19.0.0/16"
DISABLED_CONTROLLERS = ["-endpointslice", "-endpoint", "-endpointslicemirroring"]
REQUIRED = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "gateway-api-crds.yaml")


def _versions() -> dict[str, str]:
    out: dict[str, str] = {}
    for line in (REPO / "hack" / "versions.env").read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            k, v = line.split("=", 1)
            out[k] = v
    return out


def binaries_dir(build: bool = True) -> Path:
    """The cache folder with every binary; runs hack/build-binaries.sh when something is missing."""
    v = _versions()
    key = (
        f"k8s-{v['KUBERNETES_VERSION']}_etcd-{v['ETCD_VERSION']}_helm-{v['HELM_VERSION']}_gw-{v['GATEWAY_API_VERSION']}"
    )
    root = Path(os.environ.get("MODELDEPLOY_CACHE", Path.home() / ".cache" / "modeldeploy"))
    out = root / "bin" / key
    if all((out / name).exists() for name in REQUIRED):
        return out
    if not build:
        raise FileNotFoundError(f"cluster binaries missing in {out}: run `make binaries`")
    proc = subprocess.run(["bash", str(REPO / "hack" / "build-binaries.sh")], stdout=subprocess.PIPE, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"hack/build-binaries.sh failed with exit code {proc.returncode}")
    return Path(proc.stdout.strip().splitlines()[-1])


def kubectl_path() -> Path:
    return Path(sys.prefix) / "bin" / "kubectl"


@dataclass
class ControlPlane:
    state: Path
    bin: Path
    etcd_port: int = field(default_factory=procs.free_port)
    etcd_peer_port: int = field(default_factory=procs.free_port)
    api_port: int = field(default_factory=procs.free_port)
    kcm_port: int = field(default_factory=procs.free_port)
    sched_port: int = field(default_factory=procs.free_port)
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    argv: dict[str, list[str]] = field(default_factory=dict)  # how each was started (restart)
    # the real node: (node name, node IP, Service CIDR, `kubernetes` Service IP); None: process kubelet
    node: tuple[str, str, str, str] | None = None

    def __post_init__(self) -> None:
        self.pki = pki.generate(self.state / "pki", (self.node[0], self.node[1], self.node[3]) if self.node else None)
        self.kubeconfig = self.state / "kubeconfig"
        self.logs = self.state / "logs"
        self.bind_address = self.node[1] if self.node else "127.0.0.1"

    @property
    def server(self) -> str:
        return f"https://{self.bind_address}:{self.api_port}"

    def write_kubeconfig(self) -> None:
        cfg = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "devcluster",
                    "cluster": {"server": self.server, "certificate-authority": str(self.pki.ca_cert)},
                }
            ],
            "users": [{"name": "admin", "user": {"token": self.pki.admin_token}}],
            "contexts": [{"name": "devcluster", "context": {"cluster": "devcluster", "user": "admin"}}],
            "current-context": "devcluster",
        }
        self.kubeconfig.write_text(yaml.safe_dump(cfg))
        self.kubeconfig.chmod(0o600)

    def start(self, timeout: float = 120.0) -> None:
        self.write_kubeconfig()
        etcd_url, peer_url = f"http://127.0.0.1:{self.etcd_port}", f"http://127.0.0.1:{self.etcd_peer_port}"
        self._spawn("etcd", [
            str(self.bin / "etcd"), "--data-dir", str(self.state / "etcd"), "--name", "devcluster",
            "--listen-client-urls", etcd_url, "--advertise-client-urls", etcd_url,
            "--listen-peer-urls", peer_url, "--initial-advertise-peer-urls", peer_url,
            "--initial-cluster", f"devcluster={peer_url}", "--unsafe-no-fsync", "--log-level", "warn",
        ])  # fmt: skip
        self._spawn("kube-apiserver", self.apiserver_argv(etcd_url))
        self.wait_ready(timeout)
        self._start_controllers()

    def apiserver_argv(self, etcd_url: str) -> list[str]:
        p = self.pki
        if self.node:
            kubelet_client = p.certs["apiserver-kubelet-client"]
            mode = [
                "--service-cluster-ip-range", self.node[2], "--authorization-mode", "Node,RBAC",
                "--enable-admission-plugins", "NodeRestriction",
                "--kubelet-client-certificate", str(kubelet_client[0]), "--kubelet-client-key", str(kubelet_client[1]),
                "--kubelet-certificate-authority", str(p.ca_cert), "--kubelet-preferred-address-types", "InternalIP",
                # the aggregation layer (metrics.k8s.io from metrics-server, started on demand by
                # devcluster.metrics): no APIService points at a Service until then
                "--requestheader-client-ca-file", str(p.certs["front-proxy-ca"][0]),
                "--requestheader-allowed-names", pki.FRONT_PROXY_CLIENT,
                "--requestheader-username-headers", "X-Remote-User",
                "--requestheader-group-headers", "X-Remote-Group",
                "--requestheader-extra-headers-prefix", "X-Remote-Extra-",
                "--proxy-client-cert-file", str(p.certs["front-proxy-client"][0]),
                "--proxy-client-key-file", str(p.certs["front-proxy-client"][1]),
                "--enable-aggregator-routing=true",  # to the Endpoints' address, not through a ClusterIP
            ]  # fmt: skip
        else:
            mode = ["--service-cluster-ip-range", SERVICE_CIDR, "--authorization-mode", "RBAC",
                    "--endpoint-reconciler-type", "none"]  # fmt: skip
        return [
            str(self.bin / "kube-apiserver"), "--etcd-servers", etcd_url,
            "--bind-address", self.bind_address, "--advertise-address", self.bind_address,
            "--secure-port", str(self.api_port),
            "--tls-cert-file", str(p.server_cert), "--tls-private-key-file", str(p.server_key),
            "--client-ca-file", str(p.ca_cert), "--token-auth-file", str(p.token_file), *mode,
            "--service-account-issuer", "https://kubernetes.default.svc.cluster.local",
            "--service-account-key-file", str(p.sa_key), "--service-account-signing-key-file", str(p.sa_key),
            "--allow-privileged=true", "--cert-dir", str(self.state / "certs-apiserver"), "--v", "1",
        ]  # fmt: skip

    def _start_controllers(self) -> None:
        p = self.pki
        common = [
            "--kubeconfig", str(self.kubeconfig), "--authentication-kubeconfig", str(self.kubeconfig),
            "--authorization-kubeconfig", str(self.kubeconfig), "--leader-elect=false", "--bind-address", "127.0.0.1",
        ]  # fmt: skip
        self._spawn("kube-controller-manager", [
            str(self.bin / "kube-controller-manager"), *common, "--secure-port", str(self.kcm_port),
            "--cert-dir", str(self.state / "certs-kcm"), "--service-account-private-key-file", str(p.sa_key),
            "--root-ca-file", str(p.ca_cert),
            "--controllers", "*" if self.node else ",".join(["*", *DISABLED_CONTROLLERS]),
            *(["--service-cluster-ip-range", self.node[2]] if self.node else []),
            "--concurrent-deployment-syncs", "10", "--concurrent-replicaset-syncs", "10",
        ])  # fmt: skip
        self._spawn("kube-scheduler", [
            str(self.bin / "kube-scheduler"), *common, "--secure-port", str(self.sched_port),
            "--cert-dir", str(self.state / "certs-scheduler"),
        ])  # fmt: skip

    def _spawn(self, name: str, argv: list[str]) -> None:
        self.argv[name] = argv
        self.procs[name] = procs.spawn(argv, self.logs / f"{name}.log")

    def restart(self, name: str, timeout: float = 120.0) -> float:
        """Stop one component (SIGTERM, as a node reboot or an upgrade would) and start it again
        with the same flags and data; returns once the API server is ready again, with the seconds
        it took (fault tests: kube-apiserver or etcd restarted in the middle of a rollout)."""
        if name not in self.argv:
            raise ValueError(f"no component {name!r}: one of {', '.join(sorted(self.argv))}")
        started = time.monotonic()
        proc = self.procs.pop(name, None)
        if proc is not None:
            procs.stop(proc, grace=10.0)
        self._spawn(name, self.argv[name])
        self.wait_ready(timeout)
        return time.monotonic() - started

    def _get(self, path: str) -> tuple[int, str]:
        ctx = ssl.create_default_context(cafile=str(self.pki.ca_cert))
        headers = {"Authorization": f"Bearer {self.pki.admin_token}"}
        status, body = procs.http_get(self.server + path, 2.0, headers, context=ctx)
        return status, body.decode(errors="replace")

    def components_healthy(self) -> bool:
        """Controller manager and scheduler answer /healthz on their own (self-signed) ports."""
        ctx = ssl.create_default_context()
        ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # loopback health check of our own children
        for port in (self.kcm_port, self.sched_port):
            try:
                if procs.http_get(f"https://127.0.0.1:{port}/healthz", 2.0, context=ctx)[0] != 200:
                    return False
            except OSError:
                return False
        return True

    def wait_ready(self, timeout: float) -> None:
        def ready() -> bool:
            self.check_alive()
            return self._get("/readyz")[0] == 200

        procs.wait_until(ready, timeout, 0.2, "kube-apiserver /readyz")

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text(errors="replace").splitlines()[-5:]
                raise RuntimeError(f"{name} exited with code {proc.returncode}: " + " | ".join(tail))

    def kubectl(self, *args: str, timeout: float = 120, input_text: str | None = None) -> str:
        return procs.kubectl(self.kubeconfig, *args, input=input_text, timeout=timeout, binary=kubectl_path()).stdout

    def apply_gateway_crds(self) -> None:
        self.kubectl("apply", "--server-side", "-f", str(self.bin / "gateway-api-crds.yaml"))
        self.kubectl("wait", "--for", "condition=Established", "--timeout", "120s", "crd", "--all")

    def stop(self) -> None:
        for name in ("kube-scheduler", "kube-controller-manager", "kube-apiserver", "etcd"):
            proc = self.procs.pop(name, None)
            if proc is not None:
                procs.stop(proc, grace=5.0)
