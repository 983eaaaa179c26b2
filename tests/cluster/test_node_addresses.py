"""The network rule, checked on every config the local cluster renders (no cluster needed).

Every IPv4 address any component is configured with (control plane flags, containerd, CNI,
kubelet, kube-proxy, CoreDNS, Traefik, Prometheus, the model store, the Gateway) is loopback or inside
198.18.0.0/15; the address plan itself stays inside that range. tests/cluster/test_real_node.py
checks the running node's files and listening sockets the same way.
"""

from __future__ import annotations

import ipaddress
import json
import re
from pathlib import Path
from typing import Any

import yaml

from devcluster import controlplane, dns, metrics, network, node, prometheus, realnode, traefik
from devcluster.procs import is_local_address

IPV4 = re.compile(r"(?<![\d.])(\d{1,3}\.\d{1,3}\.\d{1,3}\.\d{1,3})(?:/(\d{1,2}))?(?![\d.])")


def addresses(text: str) -> list[str]:
    return [m.group(0) for m in IPV4.finditer(text)]


def offending(text: str) -> list[str]:
    """Addresses (or networks) in text that are neither loopback nor inside 198.18.0.0/15."""
    bad = []
    for found in addresses(text):
        net = ipaddress.ip_network(found, strict=False)
        allowed = any(net.subnet_of(ipaddress.ip_network(n)) for n in ("127.0.0.0/8", network.RANGE))
        if not allowed and not found.startswith("0.0.0.0"):  # 0.0.0.0/0: the pods' default route
            bad.append(found)
    return bad


def test_the_checker_flags_private_and_public_addresses() -> None:
    assert offending("--service-cluster-ip-range 10.96.0.0/12 --bind 192.168.1.4 8.8.8.8:53") == [
        "10.96.0.0/12", "192.168.1.4", "8.8.8.8"]  # fmt: skip
    assert offending("127.0.0.1:8080 198.18.0.1/16 198.19.0.0/16 198.18.1.7:8080 0.0.0.0/0") == []
    assert offending("198.20.0.1") == ["198.20.0.1"]
    assert is_local_address("198.19.3.4") and is_local_address("127.0.0.1")
    assert not is_local_address("10.0.0.1") and not is_local_address("198.20.0.1")


def test_address_plan_stays_in_the_test_range() -> None:
    for value in (network.NODE_IP, network.POD_CIDR, network.SERVICE_CIDR, network.KUBERNETES_SERVICE_IP,
                  realnode.MODEL_STORE_SERVICE_IP, controlplane.SERVICE_CIDR):  # fmt: skip
        assert offending(value) == [], value
        assert not ipaddress.ip_network(value, strict=False).is_loopback


def _rendered(tmp_path: Path) -> dict[str, Any]:
    """Every config the real node and the control plane write, rendered without starting anything."""
    server = f"https://{network.NODE_IP}:6443"
    cp_real = controlplane.ControlPlane(
        tmp_path / "real", tmp_path / "bin",
        node=(node.NODE_NAME, network.NODE_IP, network.SERVICE_CIDR, network.KUBERNETES_SERVICE_IP),
    )  # fmt: skip
    cp_process = controlplane.ControlPlane(tmp_path / "process", tmp_path / "bin")
    pki = cp_real.pki
    n = node.Node(tmp_path, tmp_path / "bin", tmp_path / "bin", server, pki.ca_cert, pki.tokens,
                  pki.certs["kubelet-serving"])  # fmt: skip
    network.write_cni_config(tmp_path / "cni", tmp_path / "ipam")
    gw = traefik.Traefik(tmp_path, tmp_path / "traefik", server, pki.ca_cert, "token", {})
    ms = metrics.MetricsServer(tmp_path, tmp_path / "ms", tmp_path / "kubeconfig", pki, {}, lambda *a, **k: "")
    ms.port = 4443
    adapter = metrics.MetricsAdapter(tmp_path, tmp_path / "ma", tmp_path / "kubeconfig", pki, {}, lambda *a, **k: "",
                                     prometheus_url=f"http://{network.NODE_IP}:9090")  # fmt: skip
    adapter.port = 4444
    return {
        "apiserver (real node)": " ".join(cp_real.apiserver_argv("http://127.0.0.1:2379")),
        "apiserver (process kubelet)": " ".join(cp_process.apiserver_argv("http://127.0.0.1:2379")),
        "apiserver certificate SANs": (pki.dir / "apiserver.ext").read_text(),
        "kubelet serving certificate SANs": (pki.dir / "kubelet-serving.ext").read_text(),
        "containerd": node.containerd_config(tmp_path / "r", tmp_path / "s", tmp_path / "sock", tmp_path / "cni"),
        "cni": (tmp_path / "cni" / "10-modeldeploy.conflist").read_text(),
        "kubelet": yaml.safe_dump(n.kubelet_config()),
        "kube-proxy": yaml.safe_dump(n.proxy_config()),
        "traefik": gw.config_file.read_text(),
        "gateway": traefik.gateway_manifests(gw.port),
        "prometheus (real node)": yaml.safe_dump(prometheus.kubernetes_config(server, pki.ca_cert, tmp_path / "t")),
        "model store": realnode.model_store_manifests("localhost/modeldeploy/modeldeploy:dev", tmp_path),
        "coredns": dns.corefile(tmp_path / "kubeconfig", "devcluster", 1053),
        "metrics-server": " ".join(ms.argv()),
        "metrics-server objects": metrics.manifests(metrics.RESOURCE, pki.ca_cert, ms.port),
        "metrics-adapter": " ".join(adapter.argv()),
        "metrics-adapter objects": metrics.manifests(metrics.CUSTOM, pki.ca_cert, adapter.port),
    }


def test_every_component_is_configured_with_local_addresses_only(tmp_path: Path) -> None:
    rendered = _rendered(tmp_path)
    bad = {name: offending(text) for name, text in rendered.items() if offending(text)}
    assert bad == {}, f"addresses outside loopback and 198.18.0.0/15: {bad}"
    # and the configs do carry addresses: the check above is not vacuous
    for name in ("apiserver (real node)", "kubelet", "kube-proxy", "cni", "traefik", "coredns", "metrics-server",
                 "metrics-server objects", "metrics-adapter", "metrics-adapter objects"):  # fmt: skip
        assert addresses(rendered[name]), name
    assert network.NODE_IP in rendered["kubelet"] and network.SERVICE_CIDR in rendered["apiserver (real node)"]


def test_cni_config_never_masquerades_and_stays_in_the_pod_range(tmp_path: Path) -> None:
    network.write_cni_config(tmp_path / "cni", tmp_path / "ipam")
    conf = json.loads((tmp_path / "cni" / "10-modeldeploy.conflist").read_text())
    bridge = conf["plugins"][0]
    assert bridge["ipMasq"] is False and bridge["bridge"] == network.BRIDGE
    (rng,) = bridge["ipam"]["ranges"][0]
    assert ipaddress.ip_network(rng["subnet"]).subnet_of(ipaddress.ip_network(network.RANGE))
