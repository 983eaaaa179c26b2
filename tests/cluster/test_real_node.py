"""The real node: containerd, kubelet, kube-proxy, Traefik, Prometheus 3.

Part of the default suite since the real node became the session's cluster (`pytest -m realnode`
still selects only these). What it proves: a server pod from the project's image runs as uid 10001 with a read-only
root filesystem in a `restricted` Pod Security namespace, fetches its model from the model store
Service, answers through its ClusterIP and through the real Gateway (Traefik) by the HTTPRoute's
weights, and Prometheus finds it through kubernetes_sd_configs; `kubectl logs`/`exec` work; every
component is configured and listening on loopback or 198.18.0.0/15 only.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import pytest

from devcluster import Cluster, network
from modeldeploy_demo import kube as k
from modeldeploy_demo.kube import RESTRICTED
from tests.cluster.servers import INPUTS, REPO, ROW, server_deployment, service
from tests.cluster.test_node_addresses import addresses, offending

pytestmark = [pytest.mark.cluster, pytest.mark.realnode]


def test_node_is_real_and_ready(cluster: Cluster) -> None:
    node = json.loads(cluster.kubectl("get", "node", cluster.node_name, "-o", "json"))
    info = node["status"]["nodeInfo"]
    assert info["containerRuntimeVersion"] == "containerd://2.4.2"
    assert info["kubeletVersion"] == "v1.36.3" and info["kubeProxyVersion"] in ("", "v1.36.3")
    assert {"type": "InternalIP", "address": network.NODE_IP} in node["status"]["addresses"]
    ready = [c for c in node["status"]["conditions"] if c["type"] == "Ready"]
    assert ready and ready[0]["status"] == "True"


def test_prometheus_and_metrics_server_hold_only_their_own_roles(cluster: Cluster) -> None:
    """Least privilege in the harness too: Prometheus may list pods and nodes and read the kubelet's
    metrics (cAdvisor), metrics-server may read nodes,
    pods and the kubelet's metrics, the custom metrics adapter may list pods; none is cluster-admin
    (Prometheus and metrics-server used the admin's credentials, and metrics-server's kubelet client
    certificate was in system:masters)."""

    def can(user: str, *args: str) -> bool:
        return k.can_i(cluster.kubeconfig, user, *args)

    prometheus, metrics_server = "devcluster:prometheus", "devcluster:metrics-server"
    adapter = "devcluster:metrics-adapter"
    assert can(prometheus, "list", "pods", "--all-namespaces") and can(prometheus, "watch", "pods", "-A")
    assert can(metrics_server, "get", "nodes", "--subresource=metrics")
    assert can(adapter, "list", "pods", "-A")
    for user in (metrics_server, adapter):
        assert can(user, "create", "tokenreviews.authentication.k8s.io")  # delegated authentication
    assert not can(adapter, "get", "nodes", "--subresource=metrics")
    for user in (prometheus, metrics_server, adapter):
        for verb in (("get", "secrets", "-A"), ("create", "pods", "-A"), ("delete", "nodes"), ("*", "*")):
            assert not can(user, *verb), (user, verb)
    assert can(prometheus, "get", "nodes", "--subresource=metrics")  # cAdvisor through the kubelet
    token = (cluster.state_dir / "prometheus-token").read_text()
    assert token and token not in (cluster.kubeconfig.read_text())  # not the admin's token
    subject = subprocess.run(["openssl", "x509", "-noout", "-subject", "-in",
                              str(cluster.state_dir / "pki" / "metrics-server-kubelet-client.crt")],
                             capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert "metrics-server" in subject and "system:masters" not in subject, subject


def test_configs_and_listening_sockets_are_local(cluster: Cluster) -> None:
    state = cluster.state_dir
    configs = [
        p
        for p in state.rglob("*")
        if p.is_file()
        and not {"logs", "data", "root"} & set(p.parts)
        and (p.suffix in (".yaml", ".yml", ".toml", ".conflist", ".ext") or p.name in ("kubeconfig", "env"))
    ]
    texts = {str(p): p.read_text(errors="replace") for p in configs}
    bad = {k: offending(v) for k, v in texts.items() if offending(v)}
    assert bad == {}
    assert any(addresses(t) for t in texts.values())
    # every TCP socket in LISTEN on this machine that a cluster component owns
    pids = cluster.status()["pids"]
    inodes: dict[str, str] = {}
    for name, pid in pids.items():
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes[target[8:-1]] = name
    listening: list[tuple[str, str]] = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        f = line.split()
        if f[3] == "0A" and f[9] in inodes:  # LISTEN
            hexip = f[1].split(":")[0]
            ip = ".".join(str(int(hexip[i : i + 2], 16)) for i in (6, 4, 2, 0))
            listening.append((inodes[f[9]], ip))
    assert {name for name, _ in listening} >= {"kube-apiserver", "etcd", "kubelet", "traefik", "prometheus", "coredns"}
    assert [(n, ip) for n, ip in listening if offending(ip) or ip == "0.0.0.0"] == []


def test_restricted_server_pod_behind_service_gateway_and_prometheus(cluster: Cluster, ns: str,
                                                                     model: dict[str, str]) -> None:  # fmt: skip
    c = cluster
    host = f"porosity.{ns}.example.test"
    t0 = time.monotonic()
    k.apply(
        c.kubeconfig,
        ns,
        server_deployment("porosity", model, c.env["IMAGE"], replicas=1, revision="stable"),
        server_deployment("porosity", model, c.env["IMAGE"], replicas=1, revision="canary"),
        service("porosity-stable", {"modeldeploy.io/name": "porosity", "modeldeploy.io/revision": "stable"}),
        service("porosity-canary", {"modeldeploy.io/name": "porosity", "modeldeploy.io/revision": "canary"}),
    )
    pods = k.ready_pods(c.kubeconfig, ns, "modeldeploy.io/name=porosity", 2, timeout=180)
    print(f"\ntwo server pods apply -> Ready: {time.monotonic() - t0:.1f}s")
    ips = {p["metadata"]["labels"]["modeldeploy.io/revision"]: p["status"]["podIP"] for p in pods}
    assert all(network.in_range(ip) for ip in ips.values())
    # the container runs as 10001 with a read-only root filesystem
    pod = pods[0]["metadata"]["name"]
    assert c.kubectl("exec", "-n", ns, pod, "--", "id", "-u").strip() == "10001"
    denied = c.kubectl("exec", "-n", ns, pod, "--", "touch", "/probe", check=False)
    assert "Read-only file system" in denied
    assert c.kubectl("logs", "-n", ns, pod).strip(), "kubectl logs reaches the kubelet"
    # cluster DNS: a Service name resolves inside the pod; a name outside the cluster does not
    resolve = "import socket,sys; print(socket.gethostbyname(sys.argv[1]))"
    store = c.kubectl("exec", "-n", ns, pod, "--", "python", "-c", resolve, "model-store.modeldeploy-store")
    assert store.strip() == c.env["MODEL_STORE_URL"].removeprefix("http://")
    outside = c.kubectl("exec", "-n", ns, pod, "--", "python", "-c", resolve, "example.org", check=False)
    assert "gaierror" in outside
    body = {"instances": [ROW]}
    with httpx.Client(timeout=10, trust_env=False) as http:
        direct = http.post(f"http://{ips['stable']}:8080/v1/models/porosity:predict", json=body)
        assert direct.status_code == 200, direct.text
        cluster_ip = c.kubectl("get", "svc", "-n", ns, "porosity-stable", "-o", "jsonpath={.spec.clusterIP}")
        assert network.in_range(cluster_ip)
        # kube-proxy programs a new Service's rules asynchronously (its sync after the EndpointSlice):
        # a refused connection in the first seconds is that propagation, as on any cluster
        deadline = time.monotonic() + 15
        while True:
            try:
                via_service = http.post(f"http://{cluster_ip}/v1/models/porosity:predict", json=body)
                break
            except httpx.ConnectError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.5)
        assert via_service.json()["predictions"] == direct.json()["predictions"]

        def route(stable: int, canary: int) -> dict[str, Any]:
            return {
                "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "porosity"},
                "spec": {"parentRefs": [{"name": c.env["GATEWAY_NAME"], "namespace": c.env["GATEWAY_NAMESPACE"]}],
                         "hostnames": [host], "rules": [{"backendRefs": [
                             {"name": "porosity-stable", "port": 80, "weight": stable},
                             {"name": "porosity-canary", "port": 80, "weight": canary}]}]},
            }  # fmt: skip

        def revisions(n: int) -> Counter[str]:
            hits: Counter[str] = Counter()
            for _ in range(n):
                r = http.get(f"{c.gateway_url}/v2/models/porosity", headers={"Host": host})
                assert r.status_code == 200, r.text
                hits[",".join(r.json()["versions"])] += 1
            return hits

        k.apply(c.kubeconfig, ns, route(100, 0))
        Cluster.wait_for(lambda: http.get(f"{c.gateway_url}/v2/models/porosity", headers={"Host": host})
                         .status_code == 200, 30, what="route programmed")  # fmt: skip
        assert revisions(20) == Counter({"stable": 20})
        predicted = http.post(f"{c.gateway_url}/v1/models/porosity:predict", json=body, headers={"Host": host})
        assert predicted.json()["predictions"] == direct.json()["predictions"]
        k.apply(c.kubeconfig, ns, route(0, 100))
        Cluster.wait_for(lambda: revisions(5) == Counter({"canary": 5}), 30, what="weights moved to the canary")
        assert revisions(20) == Counter({"canary": 20})
        k.apply(c.kubeconfig, ns, route(50, 50))
        Cluster.wait_for(lambda: len(revisions(20)) == 2, 30, what="both revisions served")
    # Prometheus 3 found both pods through kubernetes_sd_configs (role pod) and scrapes them
    up = Cluster.wait_for(lambda: len(c.prometheus_query(f'up{{namespace="{ns}"}} == 1')) == 2 or None, 60,
                          what="both pods scraped")  # fmt: skip
    assert up


@pytest.mark.bench
def test_gateway_cost_per_request(cluster: Cluster, ns: str, model: dict[str, str]) -> None:
    """Median latency of one predict request through Traefik vs straight to the pod (keep-alive,
    one client, sequential): what the real gateway adds per request. Printed, not asserted."""
    c, host = cluster, f"bench.{ns}.example.test"
    parent = {"name": c.env["GATEWAY_NAME"], "namespace": c.env["GATEWAY_NAMESPACE"]}
    backend = {"name": "porosity-stable", "port": 80}
    k.apply(c.kubeconfig, ns, server_deployment("porosity", model, c.env["IMAGE"], replicas=1, revision="stable"),
          service("porosity-stable", {"modeldeploy.io/name": "porosity", "modeldeploy.io/revision": "stable"}),
          {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "bench"},
           "spec": {"parentRefs": [parent], "hostnames": [host], "rules": [{"backendRefs": [backend]}]}})  # fmt: skip
    (pod,) = k.ready_pods(c.kubeconfig, ns, "modeldeploy.io/name=porosity", 1, timeout=180)
    body = {"instances": [ROW]}

    def median_ms(url: str, headers: dict[str, str], n: int = 400) -> float:
        with httpx.Client(timeout=10, trust_env=False) as http:
            for _ in range(50):  # warm-up
                http.post(url, json=body, headers=headers)
            times = []
            for _ in range(n):
                t = time.perf_counter()
                r = http.post(url, json=body, headers=headers)
                times.append(time.perf_counter() - t)
                assert r.status_code == 200, r.text
        return sorted(times)[n // 2] * 1000

    path = "/v1/models/porosity:predict"
    Cluster.wait_for(lambda: httpx.post(c.gateway_url + path, json=body, headers={"Host": host}, trust_env=False)
                     .status_code == 200, 30, what="route programmed")  # fmt: skip
    direct = median_ms(f"http://{pod['status']['podIP']}:8080{path}", {})
    gateway = median_ms(c.gateway_url + path, {"Host": host})
    print(f"\nmedian predict latency: direct {direct:.2f} ms, through Traefik {gateway:.2f} ms, "
          f"ratio {gateway / direct:.2f}, added {gateway - direct:.2f} ms per request")  # fmt: skip


def test_helm_installs_the_operator_as_a_pod_that_deploys_a_model(cluster: Cluster, model: dict[str, str]) -> None:
    """`helm install` with the built image: the operator runs as a pod (uid 10001, read-only root,
    a `restricted` namespace) under the chart's ServiceAccount, reaches the API server through the
    `kubernetes` Service and renders a ModelDeployment's server pods, which load the model from
    the model store and become Ready."""
    c = cluster
    suffix = os.urandom(3).hex()
    system, apps = f"mds-{suffix}", f"md-{suffix}"  # fresh names: a namespace may take a while to go
    c.apply(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": system, "labels": RESTRICTED}}))
    c.apply(json.dumps({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": apps, "labels": RESTRICTED}}))
    # Watching only its own namespace and uninstalled at the end: the session's other tests run their
    # own operator processes on this cluster, and a second operator acting on their objects made
    # them fail at random (this release used to stay installed, watching every namespace).
    helm = [str(c.helm_path), "--kubeconfig", str(c.kubeconfig)]
    try:
        _helm_install_and_deploy(c, helm, system, apps, model)
    finally:  # the ModelDeployment first, while its operator runs to release the finalizer
        c.kubectl("delete", "-n", apps, "modeldeployment", "porosity", "--timeout=60s", check=False)
        subprocess.run([*helm, "uninstall", "modeldeploy", "-n", system, "--wait", "--timeout", "120s"],
                       capture_output=True, text=True, timeout=180)  # fmt: skip
        c.kubectl("delete", "namespace", apps, system, "--wait=false", check=False)


def _helm_install_and_deploy(c: Cluster, helm: list[str], system: str, apps: str, model: dict[str, str]) -> None:
    repo, tag = c.env["IMAGE"].rsplit(":", 1)
    installed = subprocess.run(
        [*helm, "upgrade", "--install", "modeldeploy",
         str(REPO / "charts" / "modeldeploy"), "-n", system, "--wait", "--timeout", "180s",
         "--set", f"image.repository={repo}", "--set", f"image.tag={tag}", "--set", "image.pullPolicy=Never",
         "--set", f"prometheusUrl={c.prometheus_url}", "--set", f"serverImage={c.env['IMAGE']}",
         "--set", "rbac.namespaced=true", "--set", f"watchNamespaces={{{apps}}}",
         "--set", "tickSeconds=1", "--set", "prometheusScrapeIntervalSeconds=2"],
        capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert installed.returncode == 0, installed.stdout + installed.stderr
    (operator,) = json.loads(c.kubectl("get", "pods", "-n", system, "-o", "json"))["items"]
    name = operator["metadata"]["name"]
    assert c.kubectl("exec", "-n", system, name, "--", "id", "-u").strip() == "10001"
    assert operator["spec"]["serviceAccountName"] == "modeldeploy"
    md = {
        "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "porosity"},
        "spec": {"model": {"uri": model["uri"], "sha256": model["sha256"], "version": "1"},
                 "inputs": INPUTS, "replicas": 1},
    }  # fmt: skip
    c.kubectl("apply", "-n", apps, "-f", "-", input=json.dumps(md))
    pods = k.ready_pods(c.kubeconfig, apps, "modeldeploy.io/name=porosity", 1, timeout=180)
    (server,) = pods[0]["spec"]["containers"]
    assert server["image"] == c.env["IMAGE"]
    assert network.in_range(pods[0]["status"]["podIP"])
    # the operator's own rendering passed `restricted` admission: uid 10001, read-only root
    pod = pods[0]["metadata"]["name"]
    assert c.kubectl("exec", "-n", apps, pod, "--", "id", "-u").strip() == "10001"
    touch = c.kubectl("exec", "-n", apps, pod, "--", "touch", "/probe", check=False)
    assert "Read-only file system" in touch, touch
    assert "porosity" in c.kubectl("logs", "-n", system, name)
