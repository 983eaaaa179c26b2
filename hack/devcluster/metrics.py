"""The metrics APIs of the real node, started on demand behind the API server's aggregation layer:
metrics-server (`metrics.k8s.io`: pod CPU and memory from the kubelet, for `kubectl top` and the
HPA's CPU target) and the project's custom metrics adapter (hack/metrics-adapter,
`custom.metrics.k8s.io`: the Pods metric `modeldeploy_requests_per_second` from Prometheus, for the
HPA's `targetRequestsPerSecondPerPod`), both built by hack/build-node-binaries.sh and run as host
processes.

Owns: their flags (each serves HTTPS on the node address 198.18.0.1 with a certificate for its
`<name>.kube-system.svc` signed by the cluster CA; metrics-server scrapes the kubelet's
/metrics/resource on the port the Node object reports, with a client certificate the kubelet
accepts, and checks the kubelet's serving certificate against the cluster CA; the adapter queries
Prometheus on the node address), what each may do (rbac_manifests), the objects that register
each (a Service without a selector, its Endpoints on the node address, the APIService with the CA
as caBundle; the API server proxies to the Endpoints' address: `--enable-aggregator-routing`), start
(returns once the APIService is Available) and stop (the APIService is deleted first: an
unavailable aggregated API stalls discovery, hence namespace deletion, for everything else).
Called by devcluster.realnode through its control endpoint (`Cluster.start_metrics_server()` starts
both).

On demand rather than always: no other test needs them, and an aggregated API that is down breaks
discovery (namespace deletion, helm) for every test; started, they are cheap (one scrape of one
kubelet every METRIC_RESOLUTION; one PromQL query per HPA sync).
"""

from __future__ import annotations

import base64
import ssl
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devcluster import network, pki, procs

NAMESPACE = "kube-system"


@dataclass(frozen=True)
class Api:
    """An aggregated API: its group and version and the Service (in NAMESPACE) the APIService names."""

    group: str
    version: str
    service: str

    @property
    def apiservice(self) -> str:
        return f"{self.version}.{self.group}"


RESOURCE = Api("metrics.k8s.io", "v1beta1", "metrics-server")
CUSTOM = Api("custom.metrics.k8s.io", "v1beta2", "metrics-adapter")
# over how long the adapter's rate() runs: a user's prometheus-adapter commonly uses 1m; short here so
# that a load step shows within a test (Prometheus scrapes every 2 s)
RATE_WINDOW = "20s"
# metrics-server's smallest (default 60 s; the HPA controller syncs every 15 s); it must exceed the
# kubelet request timeout (10 s by default: metrics-server refuses to start otherwise), hence 5 s there
METRIC_RESOLUTION = "10s"


def delegation(user: str, role: str) -> list[dict[str, Any]]:
    """What every aggregated API server needs: delegate authentication and authorization of the
    requests the aggregation layer proxies to it, and read the front proxy's CA."""
    return [
        pki.user_binding(user, "ClusterRole", "system:auth-delegator", name=f"{role}:auth-delegator"),
        pki.user_binding(user, "Role", "extension-apiserver-authentication-reader", name=f"{role}:auth-reader",
                         namespace=NAMESPACE),  # fmt: skip
    ]


def rbac_manifests() -> str:
    """What metrics-server may do, as upstream's manifests grant its ServiceAccount (read nodes and
    pods, get the kubelet's metrics: `nodes/metrics`, the kubelet asks the API server whether its
    client certificate's user may), and what the adapter may do (list the pods a selector names),
    each with delegation. Nothing else (metrics-server used to run with the admin's kubeconfig and a
    kubelet client certificate in system:masters)."""
    server, server_role = pki.METRICS_SERVER_USER, "devcluster:metrics-server"
    adapter, adapter_role = pki.ADAPTER_USER, "devcluster:metrics-adapter"
    server_rules = [{"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]},
                    {"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]}]  # fmt: skip
    adapter_rules = [{"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list"]}]
    docs = [
        *pki.user_role(server, server_role, server_rules), *delegation(server, server_role),
        *pki.user_role(adapter, adapter_role, adapter_rules), *delegation(adapter, adapter_role),
    ]  # fmt: skip
    return yaml.safe_dump_all(docs, sort_keys=False)


def manifests(api: Api, ca_cert: Path, port: int) -> str:
    ca = base64.b64encode(ca_cert.read_bytes()).decode()
    docs = [
        {"apiVersion": "v1", "kind": "Service", "metadata": {"name": api.service, "namespace": NAMESPACE},
         "spec": {"ports": [{"name": "https", "port": 443, "targetPort": port}]}},
        {"apiVersion": "v1", "kind": "Endpoints", "metadata": {"name": api.service, "namespace": NAMESPACE},
         "subsets": [{"addresses": [{"ip": network.NODE_IP}], "ports": [{"name": "https", "port": port}]}]},
        {"apiVersion": "apiregistration.k8s.io/v1", "kind": "APIService", "metadata": {"name": api.apiservice},
         "spec": {"group": api.group, "version": api.version, "groupPriorityMinimum": 100,
                  "versionPriority": 100, "caBundle": ca,
                  "service": {"name": api.service, "namespace": NAMESPACE, "port": 443}}},
    ]  # fmt: skip
    return yaml.safe_dump_all(docs, sort_keys=False)


class AggregatedServer(procs.HttpReadyProcess):
    """A host process serving `api` behind the aggregation layer; subclasses give `argv()`."""

    api: Api

    def __init__(
        self, state: Path, binary: Path, kubeconfig: Path, keys: pki.Pki, env: dict[str, str],
        kubectl: Callable[..., str],
    ) -> None:  # fmt: skip
        name = self.api.service
        super().__init__(name, binary, state / "logs" / f"{name}.log", env, state / name)
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

    def serving_args(self) -> list[str]:
        """Flags both servers share (the generic API server's): identity, delegation, where to listen."""
        serving, kc = self.pki.certs[self.api.service], str(self.kubeconfig)
        return [
            str(self.binary), "--authentication-kubeconfig", kc, "--authorization-kubeconfig", kc,
            "--bind-address", network.NODE_IP, "--secure-port", str(self.port),
            "--tls-cert-file", str(serving[0]), "--tls-private-key-file", str(serving[1]),
            "--cert-dir", str(self.dir / "certs"),
        ]  # fmt: skip

    def _ready(self) -> bool:  # HTTPS with the cluster CA (the base class speaks plain HTTP)
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited; see {self.log}")
        try:
            return procs.http_get(self.ready_url, 1.0, context=self._ctx)[0] == 200
        except OSError:
            return False

    def start(self, timeout: float = 60.0) -> None:
        """Start, register and wait until the API server serves the API (the APIService Available)."""
        if self.running:
            return
        self.port = procs.free_port(network.NODE_IP)
        super().start(timeout)
        self.kubectl("apply", "-f", "-", input_text=manifests(self.api, self.pki.ca_cert, self.port))
        self.kubectl("wait", "--for=condition=Available", f"--timeout={int(timeout)}s",
                     f"apiservice/{self.api.apiservice}", timeout=timeout + 10)  # fmt: skip

    def stop(self) -> None:
        try:
            for kind, name in (("apiservice", self.api.apiservice), ("-n kube-system endpoints", self.api.service),
                               ("-n kube-system service", self.api.service)):  # fmt: skip
                self.kubectl("delete", *kind.split(), name, "--ignore-not-found", "--wait=false", timeout=20)
        except (RuntimeError, subprocess.TimeoutExpired):
            pass  # the API server is already gone (teardown)
        super().stop()


class MetricsServer(AggregatedServer):
    """metrics-server; its /readyz needs one scrape of the kubelet first."""

    api = RESOURCE

    def argv(self) -> list[str]:
        client = self.pki.certs["metrics-server-kubelet-client"]
        return [
            *self.serving_args(), "--kubeconfig", str(self.kubeconfig),
            "--kubelet-client-certificate", str(client[0]), "--kubelet-client-key", str(client[1]),
            "--kubelet-certificate-authority", str(self.pki.ca_cert),
            "--kubelet-preferred-address-types", "InternalIP", "--kubelet-use-node-status-port",
            "--metric-resolution", METRIC_RESOLUTION, "--kubelet-request-timeout", "5s", "--v", "1",
        ]  # fmt: skip


class MetricsAdapter(AggregatedServer):
    """hack/metrics-adapter: `modeldeploy_requests_per_second` of each pod from `prometheus_url`."""

    api = CUSTOM

    def __init__(self, *args: Any, prometheus_url: str, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.prometheus_url = prometheus_url

    def argv(self) -> list[str]:
        return [*self.serving_args(), "--lister-kubeconfig", str(self.kubeconfig),
                "--prometheus-url", self.prometheus_url, "--rate-window", RATE_WINDOW]  # fmt: skip
