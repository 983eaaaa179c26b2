"""Prometheus 3 scraping the cluster's server pods, found by kubernetes_sd_configs (role pod), and
the containers' CPU and memory from the kubelet's cAdvisor endpoint (role node).

Owns: the config, a fresh TSDB per cluster, start/stop on a fixed port (tests stop and restart
it; on the node address so that pods such as the operator reach it). The relabelling is the one a
user's Prometheus uses: keep pods annotated prometheus.io/scrape=true, address = pod IP +
prometheus.io/port, path from prometheus.io/path, drop every target outside the pod range
198.18.0.0/16, target labels namespace, pod, modeldeploy_name, modeldeploy_revision; 2 s scrape
and evaluation. The kubelet job is a user's too (kube-prometheus' "cadvisor" job): HTTPS to each
node's kubelet port with the cluster CA and Prometheus' own token, path /metrics/cadvisor, keeping
only the two series the operator's `status.cost` reads (CADVISOR_KEEP; cAdvisor's labels
namespace, pod, container). Called by devcluster.realnode (the binary built by hack/build-node-binaries.sh).
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devcluster import network, pki, procs

SCRAPE_INTERVAL = "2s"


def find_binary() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).exists():
        raise FileNotFoundError("prometheus not found: run `sudo bash hack/install-system-deps.sh`")
    return path


# IPv4 addresses of pods: the pod range 198.18.0.0/16
POD_RANGE_IP = "198\\.18\\.\\d+\\.\\d+"
NODE_IP_REGEX = network.NODE_IP.replace(".", "\\.")
# what status.cost's measured usage reads (modeldeploy_operator.costwatch.usage_queries)
CADVISOR_KEEP = "container_cpu_usage_seconds_total|container_memory_working_set_bytes"


def relabel(ip_regex: str) -> list[dict[str, Any]]:
    """The relabelling of a user's Prometheus for annotated pods, restricted to pod addresses
    matching ip_regex (nothing else is ever scraped)."""
    return [
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"], "regex": "true",
         "action": "keep"},
        {"source_labels": ["__meta_kubernetes_pod_ip"], "regex": ip_regex, "action": "keep"},
        {"source_labels": ["__meta_kubernetes_pod_ip", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
         "regex": f"({ip_regex});(\\d+)", "replacement": "$1:$2", "target_label": "__address__"},
        {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"], "regex": "(.+)",
         "target_label": "__metrics_path__"},
        # defence in depth: whatever happened above, only pod addresses in the allowed range survive
        {"source_labels": ["__address__"], "regex": f"{ip_regex}:\\d+", "action": "keep"},
        {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
        {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        {"source_labels": ["__meta_kubernetes_pod_label_modeldeploy_io_name"], "target_label": "modeldeploy_name"},
        {"source_labels": ["__meta_kubernetes_pod_label_modeldeploy_io_revision"],
         "target_label": "modeldeploy_revision"},
    ]  # fmt: skip


def _global() -> dict[str, Any]:
    return {"scrape_interval": SCRAPE_INTERVAL, "evaluation_interval": SCRAPE_INTERVAL,
            "scrape_timeout": SCRAPE_INTERVAL}  # fmt: skip


def kubernetes_config(api_server: str, ca_file: Path, token_file: Path) -> dict[str, Any]:
    """Real node (Prometheus 3): kubernetes_sd_configs role pod against the local API server."""
    return {
        "global": _global(),
        "scrape_configs": [
            {
                "job_name": "modeldeploy-pods",
                "kubernetes_sd_configs": [{
                    "role": "pod", "api_server": api_server,
                    "authorization": {"credentials_file": str(token_file)}, "tls_config": {"ca_file": str(ca_file)},
                }],
                "relabel_configs": relabel(POD_RANGE_IP),
            },
            {
                "job_name": "kubelet-cadvisor",
                "scheme": "https", "metrics_path": "/metrics/cadvisor",
                "kubernetes_sd_configs": [{
                    "role": "node", "api_server": api_server,
                    "authorization": {"credentials_file": str(token_file)}, "tls_config": {"ca_file": str(ca_file)},
                }],
                "authorization": {"credentials_file": str(token_file)}, "tls_config": {"ca_file": str(ca_file)},
                # only the node address (198.18.0.1) is ever scraped
                "relabel_configs": [{"source_labels": ["__address__"], "regex": f"{NODE_IP_REGEX}:\\d+",
                                     "action": "keep"}],
                "metric_relabel_configs": [{"source_labels": ["__name__"], "regex": CADVISOR_KEEP,
                                            "action": "keep"}],
            },
        ],
    }  # fmt: skip


def rbac_manifests(user: str) -> str:
    """What the real node's Prometheus may do: discover pods and nodes (roles pod and node list and
    watch them) and read the kubelet's metrics (`nodes/metrics`: the kubelet asks the API server).
    It used to hold the admin's token."""
    rules = [{"apiGroups": [""], "resources": ["pods", "nodes"], "verbs": ["get", "list", "watch"]},
             {"apiGroups": [""], "resources": ["nodes/metrics"], "verbs": ["get"]}]  # fmt: skip
    docs = pki.user_role(user, "devcluster:prometheus", rules)
    return yaml.safe_dump_all(docs, sort_keys=False)


class Prometheus:
    def __init__(self, state: Path, cfg: dict[str, Any], binary: str | None = None,
                 env: dict[str, str] | None = None, host: str = "127.0.0.1") -> None:  # fmt: skip
        self.dir = state / "prometheus"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = procs.free_port()
        self.host = host
        self.url = f"http://{host}:{self.port}"
        self.config_file = self.dir / "prometheus.yml"
        self.config_file.write_text(yaml.safe_dump(cfg, sort_keys=False))
        self.binary = binary
        self.env = env
        self.log = state / "logs" / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        if self.proc is not None and self.proc.poll() is None:
            return
        self.proc = procs.spawn(
            [
                self.binary or find_binary(), f"--config.file={self.config_file}",
                f"--storage.tsdb.path={self.dir / 'data'}",
                f"--web.listen-address={self.host}:{self.port}", "--web.enable-lifecycle",
                "--storage.tsdb.retention.time=1d", "--log.level=warn",
            ],
            self.log,
            env=self.env,
            cwd=self.dir,
        )  # fmt: skip
        procs.wait_until(self._ready, timeout, 0.2, f"prometheus ready on {self.url} (log {self.log})")

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited; see {self.log}")
        try:
            return procs.http_get(self.url + "/-/ready", 1.0)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, grace=10.0)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None
