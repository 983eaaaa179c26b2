"""The gateway's routing table and Prometheus's discovery, as pure functions (no cluster needed).

Pods with non-loopback addresses (a real API server hands out 10.x data) must never become
endpoints or scrape targets; Services resolve by the EndpointSlice controller's rules; the
generated Prometheus config is valid for the installed promtool.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devcluster import endpoints, prometheus


def pod(name: str, ip: str, ready: bool = True, labels: dict[str, str] | None = None, ns: str = "a",
        deleting: bool = False, phase: str = "Running") -> dict[str, Any]:  # fmt: skip
    meta: dict[str, Any] = {"name": name, "namespace": ns, "uid": f"u-{name}",
                            "labels": labels or {"app": "m", "modeldeploy.io/name": "m"},
                            "annotations": {"prometheus.io/scrape": "true", "prometheus.io/port": "8080"}}  # fmt: skip
    if deleting:
        meta["deletionTimestamp"] = "2026-01-01T00:00:00Z"
    return {
        "metadata": meta,
        "spec": {"nodeName": "local-kubelet", "containers": [{"name": "server", "ports": [
            {"name": "http", "containerPort": 8080}]}]},
        "status": {"phase": phase, "podIP": ip, "conditions": [{"type": "Ready", "status": str(ready)}]},
    }  # fmt: skip


def svc(name: str, selector: dict[str, str], target: int | str = "http", ns: str = "a") -> dict[str, Any]:
    return {"metadata": {"name": name, "namespace": ns},
            "spec": {"selector": selector, "ports": [{"port": 80, "targetPort": target}]}}  # fmt: skip


def test_only_ready_loopback_pods_become_endpoints() -> None:
    pods = [
        pod("ok", "127.0.5.1"), pod("private", "10.244.0.7"), pod("unready", "127.0.5.2", ready=False),
        pod("going", "127.0.5.3", deleting=True), pod("other-ns", "127.0.5.4", ns="b"), pod("noip", ""),
        pod("pending", "127.0.5.5", phase="Pending"),
    ]  # fmt: skip
    backend = endpoints.service_backend(svc("m", {"app": "m"}), pods)
    assert backend.endpoints == (endpoints.Endpoint("127.0.5.1", 8080, "a/ok"),)


def test_target_port_by_number_and_services_without_selector() -> None:
    pods = [pod("ok", "127.0.5.1")]
    assert endpoints.service_backend(svc("m", {"app": "m"}, 9090), pods).endpoints[0].port == 9090
    assert endpoints.service_backend(svc("m", {}), pods).endpoints == ()
    assert endpoints.service_backend(svc("m", {"app": "m"}, "missing"), pods).endpoints == ()


def test_host_lookup_routes_then_services() -> None:
    pods = [pod("s", "127.0.5.1", labels={"rev": "s"}), pod("c", "127.0.5.2", labels={"rev": "c"})]
    services = [svc("m-stable", {"rev": "s"}), svc("m-canary", {"rev": "c"})]
    route = {"metadata": {"name": "m", "namespace": "a"}, "spec": {"hostnames": ["m.example.com", "*.wild.test"],
             "rules": [{"backendRefs": [{"name": "m-stable", "port": 80, "weight": 90},
                                        {"name": "m-canary", "port": 80, "weight": 10},
                                        {"name": "ghost", "port": 80, "weight": 0}]}]}}  # fmt: skip
    table = endpoints.build_table(pods, services, [route])
    backends = table.lookup("M.Example.com", "/v1/models/m:predict")
    assert backends is not None
    assert [(b.service, b.weight, len(b.endpoints)) for b in backends] == [
        ("a/m-stable", 90, 1), ("a/m-canary", 10, 1), ("a/ghost", 0, 0)]  # fmt: skip
    assert table.lookup("x.wild.test", "/") == backends
    for host in ("m-canary.a", "m-canary.a.svc", "m-canary.a.svc.cluster.local"):
        found = table.lookup(host, "/")
        assert found is not None and found[0].service == "a/m-canary"
    assert table.lookup("m-canary.b", "/") is None
    assert table.lookup("unknown.example.com", "/") is None


def test_path_matches_pick_the_longest_prefix() -> None:
    route = {"metadata": {"name": "r", "namespace": "a"}, "spec": {"hostnames": ["h"], "rules": [
        {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}], "backendRefs": [{"name": "root"}]},
        {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}], "backendRefs": [{"name": "v2"}]},
        {"matches": [{"path": {"type": "Exact", "value": "/x"}}], "backendRefs": [{"name": "x"}]}]}}  # fmt: skip
    table = endpoints.build_table([], [], [route])

    def service(path: str) -> str:
        found = table.lookup("h", path)
        assert found is not None
        return found[0].service

    assert [service(p) for p in ("/", "/v2/models", "/v2", "/v20", "/x", "/x/y")] == [
        "a/root", "a/v2", "a/v2", "a/root", "a/x", "a/root"]  # fmt: skip


def test_discovery_offers_only_loopback_pods_with_kubernetes_sd_labels() -> None:
    groups = prometheus.sd_targets([pod("ok", "127.0.5.1"), pod("private", "10.244.0.7"), pod("noip", "")])
    assert [g["targets"] for g in groups] == [["127.0.5.1:8080"]]
    labels = groups[0]["labels"]
    assert labels["__meta_kubernetes_pod_label_modeldeploy_io_name"] == "m"
    assert labels["__meta_kubernetes_pod_annotation_prometheus_io_scrape"] == "true"
    assert labels["__meta_kubernetes_namespace"] == "a" and labels["__meta_kubernetes_pod_name"] == "ok"


def test_prometheus_config_is_valid_and_drops_non_loopback_targets(tmp_path: Path) -> None:
    cfg = prometheus.config("http://127.0.0.1:1/sd/pods")
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(cfg))
    promtool = shutil.which("promtool") or "/usr/bin/promtool"  # installed by `make binaries`
    check = subprocess.run([promtool, "check", "config", str(path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    relabel = cfg["scrape_configs"][0]["relabel_configs"]
    keeps = [r["regex"] for r in relabel if r.get("action") == "keep"]
    assert "127\\.\\d+\\.\\d+\\.\\d+:\\d+" in keeps  # the final guard on __address__
    assert cfg["global"]["scrape_interval"] == "2s" and cfg["global"]["evaluation_interval"] == "2s"
