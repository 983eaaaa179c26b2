"""Prometheus scraping the cluster's server pods.

Owns: the config, a fresh TSDB per cluster, start/stop on a fixed port (tests stop and restart
it; 127.0.0.1, or the node address on the real node so that pods such as the operator reach
it), and `sd_targets`, the discovery document. Called by harness (Debian's /usr/bin/prometheus)
and realnode (Prometheus 3 built by hack/build-node-binaries.sh, with
kubernetes_sd_configs role pod: the next paragraph does not apply there).

Debian's 2.42 build has no kubernetes_sd_configs ("field kubernetes_sd_configs not found in type
config.ScrapeConfig": the packagers leave client-go out), so the harness plays Kubernetes service
discovery: it serves the pods it reads from the API server over http_sd_configs (1 s refresh)
with the very `__meta_kubernetes_pod_*` labels role=pod would produce. The relabelling is the
one a real cluster uses: keep pods annotated prometheus.io/scrape=true, address = pod IP +
prometheus.io/port, path from prometheus.io/path, drop every target outside 127.0.0.0/8, target
labels namespace, pod, modeldeploy_name, modeldeploy_revision; 2 s scrape and evaluation.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devcluster import procs
from devcluster.endpoints import is_loopback

SCRAPE_INTERVAL = "2s"


def find_binary() -> str:
    path = shutil.which("prometheus") or "/usr/bin/prometheus"
    if not Path(path).exists():
        raise FileNotFoundError("prometheus not found: run `sudo bash hack/install-system-deps.sh`")
    return path


def _sanitize(name: str) -> str:
    return re.sub(r"[^a-zA-Z0-9_]", "_", name)


def sd_targets(pods: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """http_sd document: one group per pod with a loopback IP, labelled like kubernetes_sd role=pod."""
    groups: list[dict[str, Any]] = []
    for pod in pods:
        meta, status = pod["metadata"], pod.get("status") or {}
        ip = status.get("podIP") or ""
        if not is_loopback(ip):  # never even offered to Prometheus
            continue
        labels = {
            "__meta_kubernetes_namespace": meta["namespace"],
            "__meta_kubernetes_pod_name": meta["name"],
            "__meta_kubernetes_pod_uid": meta.get("uid", ""),
            "__meta_kubernetes_pod_ip": ip,
            "__meta_kubernetes_pod_node_name": (pod.get("spec") or {}).get("nodeName", ""),
            "__meta_kubernetes_pod_phase": status.get("phase", ""),
            "__meta_kubernetes_pod_ready": str(any(
                c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or []
            )).lower(),
        }  # fmt: skip
        for kind in ("label", "annotation"):
            for k, v in (meta.get(kind + "s") or {}).items():
                labels[f"__meta_kubernetes_pod_{kind}_{_sanitize(k)}"] = v
                labels[f"__meta_kubernetes_pod_{kind}present_{_sanitize(k)}"] = "true"
        targets = []
        for c in (pod.get("spec") or {}).get("containers") or []:
            for port in c.get("ports") or []:
                targets.append(f"{ip}:{port['containerPort']}")
        groups.append({"targets": targets or [ip], "labels": labels})
    return groups


# IPv4 addresses of pods: 127.x with the process kubelet, the pod range 198.18.0.0/16 on the real node
LOOPBACK_IP = "127\\.\\d+\\.\\d+\\.\\d+"
POD_RANGE_IP = "198\\.18\\.\\d+\\.\\d+"


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


def config(sd_url: str) -> dict[str, Any]:
    """Process kubelet: pods come from the harness's http_sd document."""
    return {
        "global": _global(),
        "scrape_configs": [
            {
                "job_name": "modeldeploy-pods",
                "http_sd_configs": [{"url": sd_url, "refresh_interval": "1s"}],
                "relabel_configs": relabel(LOOPBACK_IP),
            }
        ],
    }


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
            }
        ],
    }  # fmt: skip


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
