"""The resource metrics API of the real node: metrics-server (built by hack/build-node-binaries.sh)
as a host process behind the API server's aggregation layer, started on demand.

Owns: metrics-server's flags (it serves HTTPS on the node address 198.18.0.1 with a certificate
for `metrics-server.kube-system.svc` signed by the cluster CA; it scrapes the kubelet's
/metrics/resource on the port the Node object reports, with a client certificate the kubelet
accepts, and checks the kubelet's serving certificate against the cluster CA), the objects that
register it (a Service without a selector, its Endpoints on the node address, the APIService
`v1beta1.metrics.k8s.io` with the CA as caBundle; the API server proxies to the Endpoints'
address: `--enable-aggregator-routing`), start (returns once the APIService is Available) and
stop (the APIService is deleted first: an unavailable aggregated API stalls discovery, hence
namespace deletion, for everything else). Called by devcluster.realnode through its control
endpoint (`Cluster.start_metrics_server()`).

On demand rather than always: no other test needs it, and an aggregated API that is down breaks
discovery (namespace deletion, helm) for every test; started, it is cheap (one scrape of one
kubelet every METRIC_RESOLUTION).
"""

from __future__ import annotations

import base64
import ssl
import subprocess
from collections.abc import Callable
from pathlib import Path

import yaml

from devcluster import network, pki, procs

APISERVICE = "v1beta1.metrics.k8s.io"
NAMESPACE = "kube-system"
SERVICE = "metrics-server"
# metrics-server's smallest (default 60 s; the HPA controller syncs every 15 s); it must exceed the
# kubelet request timeout (10 s by default: metrics-server refuses to start otherwise), hence 5 s there
METRIC_RESOLUTION = "10s"


def rbac_manifests() -> str:
    """What metrics-server may do, as upstream's manifests grant its ServiceAccount: read nodes and
    pods, get the kubelet's metrics (`nodes/metrics`: the kubelet asks the API server whether its
    client certificate's user may), delegate authentication and authorization of the requests the
    aggregation layer proxies to it, and read the front proxy's CA. Nothing else (it used to run
    with the admin's kubeconfig and a kubelet client certificate in system:masters)."""
    user, role = pki.METRICS_SERVER_USER, "devcluster:metrics-server"
    rules = [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
             {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]  # fmt: skip
    docs = [
        *pki.user_role(user, role, rules),
        pki.user_binding(user, "ClusterRole", "system:auth-delegator", name=f"{role}:auth-delegator"),
        pki.user_binding(user, "Role", "extension-apiserver-authentication-reader", name=f"{role}:auth-reader",
                         namespace=NAMESPACE),  # fmt: skip
    ]
    return yaml.safe_dump_all(docs, sort_keys=False)


def manifests(ca_cert: Path, port: int) -> str:
    ca = base64.b64encode(ca_cert.read_bytes()).decode()
    docs = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": SERVICE, "namespace": NAMESPACE},
         "subsets": [{"addresses": [{"ip": network.NODE_IP}], "ports": [{"name": "https", "port": port}]}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": APISERVICE},
         "spec": {"group": "metrics.k8s.io", "version": "v1beta1", "groupPriorityMinimum": 100,
                  "versionPriority": 100, "caBundle": ca,
                  "service": {"name": SERVICE, "namespace": NAMESPACE, "port": 443}}},
    ]  # fmt: skip
    return yaml.safe_dump_all(docs, sort_keys=False)


class MetricsServer(procs.HttpReadyProcess):
    def __init__(
        self, state: Path, binary: Path, kubeconfig: Path, keys: pki.Pki, env: dict[str, str],
        kubectl: Callable[..., str],
    ) -> None:  # fmt: skip
        super().__init__("metrics-server", binary, state / "logs" / "metrics-server.log", env, state / "metrics-server")
        self.port = 0  # chosen at start: the node address exists only while the node's network is up
        self.kubeconfig = kubeconfig
        self.pki = keys
        self.kubectl = kubectl
        self._ctx = ssl.create_default_context(cafile=str(keys.ca_cert))
        self._ctx.check_hostname = False  # our own child on the node address; the chain is still verified

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def ready_url(self) -> str:
        return f"https://{network.NODE_IP}:{self.port}/readyz"

    def argv(self) -> list[str]:
        serving, client = self.pki.certs["metrics-server"], self.pki.certs["metrics-server-kubelet-client"]
        kc = str(self.kubeconfig)
        return [
            str(self.binary), "--kubeconfig", kc, "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
            "--bind-address", network.NODE_IP, "--secure-port", str(self.port),
            "--tls-cert-file", str(serving[0]), "--tls-private-key-file", str(serving[1]),
            "--cert-dir", str(self.dir / "certs"),
            "--kubelet-client-certificate", str(client[0]), "--kubelet-client-key", str(client[1]),
            "--kubelet-certificate-authority", str(self.pki.ca_cert),
            "--kubelet-preferred-address-types", "InternalIP", "--kubelet-use-node-status-port",
            "--metric-resolution", METRIC_RESOLUTION, "--kubelet-request-timeout", "5s", "--v", "1",
        ]  # fmt: skip

    def _ready(self) -> bool:  # HTTPS with the cluster CA (the base class speaks plain HTTP)
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited; see {self.log}")
        try:
            return procs.http_get(self.ready_url, 1.0, context=self._ctx)[0] == 200
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> None:
        """Start, register and wait until the API server serves metrics.k8s.io (the APIService
        Available); /readyz needs one scrape of the kubelet first."""
        if self.running:
            return
        self.port = procs.free_port(network.NODE_IP)
        super().start(timeout)
        self.kubectl("apply", "-f", "-", input_text=manifests(self.pki.ca_cert, self.port))
        self.kubectl("wait", "--for=condition=Available", f"--timeout={int(timeout)}s", f"apiservice/{APISERVICE}",
                     timeout=timeout + 10)  # fmt: skip

    def stop(self) -> None:
        try:
            for kind, name in (("apiservice", APISERVICE), ("-n kube-system endpoints", SERVICE),
                               ("-n kube-system service", SERVICE)):  # fmt: skip
                self.kubectl("delete", *kind.split(), name, "--ignore-not-found", "--wait=false", timeout=20)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # the API server is already gone (teardown)
        super().stop()
