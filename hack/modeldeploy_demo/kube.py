"""Manifests and cluster verbs of the demo and the end-to-end tests.

- `model_deployment(...)`, `http_route(...)`, `service_route(...)`: the objects a user writes
  (plain dicts); the route attaches to the cluster's Gateway (`gateway_ref(env)`: GATEWAY_NAMESPACE/GATEWAY_NAME).
- `kubectl(...)`, `apply(...)`, `get(...)`, `pods(...)`, `ready_pods(...)`, `can_i(...)`,
  `token_kubeconfig(...)`, `create_namespace(...)` (Pod Security `restricted`): the real kubectl
  against a kubeconfig. The one module of kubectl verbs: the demo, tests/e2e, tests/cluster and
  tests/packaging all use these.
- `Kube`: cheap reads through one API client (polled several times a second): the
  ModelDeployment, the HTTPRoute's canary weight, Events, Deployment replicas.
- `Watch`: a thread recording every change of the route's canary weight and of the rollout's
  status (phase, step, weight, last analysis) with wall-clock times.
- `first_sample(...)`, `served(...)`: Prometheus facts (first scrape that saw a 5xx of a
  revision; requests a revision served).

Called by `modeldeploy_demo.__main__`, `tests/e2e/`, `tests/cluster/` and `tests/packaging/`.
"""

from __future__ import annotations

import json
import math
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import urllib3
import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from devcluster import procs
from modeldeploy_demo.workload import BIN, INPUTS, Model, wait_for

GROUP, VERSION, PLURAL = "modeldeploy.io", "v1alpha1", "modeldeployments"
Obj = dict[str, Any]
NO_FINALIZERS = json.dumps({"metadata": {"finalizers": None}})
DEFAULT_STEPS: list[Obj] = [{"setWeight": 20}, {"pause": {"seconds": 5}}, {"setWeight": 50}, {"pause": {"seconds": 5}}]
DEFAULT_ANALYSIS: Obj = {"intervalSeconds": 5, "minRequests": 20, "failureLimit": 0, "maxErrorRate": 0.02,
                         "maxLatencyP99Seconds": 0.5}  # fmt: skip


def model_deployment(name: str, model: Model, base_url: str, version: str, *, route: str | None = None,
                     steps: list[Obj] | None = None, analysis: Obj | None = None, replicas: int = 2,
                     deadline: int = 60, sha256: str | None = None) -> Obj:  # fmt: skip
    """A ModelDeployment of `model` served from the store at `base_url` (sha256 overrides the digest)."""
    rollout: Obj = {
        "steps": DEFAULT_STEPS if steps is None else steps,
        "analysis": {**DEFAULT_ANALYSIS, **(analysis or {})},
        "progressDeadlineSeconds": deadline,
    }
    if route is not None:
        rollout["trafficRouting"] = {"gatewayAPI": {"httpRoute": route}}
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "ModelDeployment",
        "metadata": {"name": name},
        "spec": {
            "model": {"uri": model.uri(base_url), "sha256": sha256 or model.sha256, "version": version},
            "inputs": INPUTS,
            "replicas": replicas,
            "rollout": rollout,
        },
    }


# the level every namespace of the demo and the e2e scenarios enforces (the server pods must pass it)
RESTRICTED = {
    "pod-security.kubernetes.io/enforce": "restricted",
    "pod-security.kubernetes.io/enforce-version": "latest",
}


def gateway_ref(env: Mapping[str, str]) -> Obj:
    """The parentRef of the cluster's Gateway, from its env file (GATEWAY_NAME, GATEWAY_NAMESPACE)."""
    return {"name": env["GATEWAY_NAME"], "namespace": env["GATEWAY_NAMESPACE"]}


def http_route(name: str, host: str, gateway: Obj) -> Obj:
    """The user's HTTPRoute on `gateway` (a parentRef): all traffic to `<name>-stable`; the operator
    moves the weights."""
    refs = [{"name": f"{name}-stable", "port": 80, "weight": 100}, {"name": f"{name}-canary", "port": 80, "weight": 0}]
    return {
        "apiVersion": "gateway.networking.k8s.io/v1",
        "kind": "HTTPRoute",
        "metadata": {"name": name},
        "spec": {"parentRefs": [gateway], "hostnames": [host], "rules": [{"backendRefs": refs}]},
    }


def service_route(name: str, host: str, gateway: Obj) -> Obj:
    """The user's HTTPRoute of a replica-ratio ModelDeployment (no spec.rollout.trafficRouting): all
    traffic to the Service `<name>`, whose selector the operator sets (every revision, or the
    stable one only); the operator never touches this route."""
    route = http_route(name, host, gateway)
    route["spec"]["rules"] = [{"backendRefs": [{"name": name, "port": 80}]}]
    return route


def kubectl(kubeconfig: Path | str, *args: str, input: str | None = None, timeout: float = 120) -> str:
    return procs.kubectl(kubeconfig, *args, input=input, timeout=timeout, binary=BIN / "kubectl").stdout


def apply(kubeconfig: Path, namespace: str, *objs: Obj) -> None:
    """kubectl apply of `objs` into `namespace`, in one call."""
    kubectl(kubeconfig, "apply", "-n", namespace, "-f", "-", input="\n---\n".join(json.dumps(o) for o in objs))


def apply_text(kubeconfig: Path | str, docs: list[Obj] | str, *extra: str) -> str:
    """kubectl apply of objects or YAML text (several documents) with `extra` flags (a namespace,
    `--dry-run=server`, ...); kubectl's output."""
    text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
    return kubectl(kubeconfig, "apply", "-f", "-", *extra, input=text)


def get(kubeconfig: Path | str, *args: str) -> Obj:
    """`kubectl get ARGS -o json`, parsed."""
    out: Obj = json.loads(kubectl(kubeconfig, "get", *args, "-o", "json"))
    return out


def pods(kubeconfig: Path | str, namespace: str, selector: str) -> list[Obj]:
    return list(get(kubeconfig, "pods", "-n", namespace, "-l", selector)["items"])


def ready_pods(kubeconfig: Path | str, namespace: str, selector: str, n: int, timeout: float = 180) -> list[Obj]:
    """Exactly `n` pods match `selector`, none terminating, all Ready; returns them."""

    def check() -> list[Obj] | None:
        items = [p for p in pods(kubeconfig, namespace, selector) if not p["metadata"].get("deletionTimestamp")]
        ok = [p for p in items if any(c["type"] == "Ready" and c["status"] == "True"
                                      for c in p["status"].get("conditions", []))]  # fmt: skip
        return ok if len(ok) == n and len(items) == n else None

    return wait_for(check, timeout, f"{n} ready pods {selector} in {namespace}", interval=1)


def can_i(kubeconfig: Path | str, user: str, *args: str) -> bool:
    """`kubectl auth can-i ARGS --as=USER`: what the API server's authorizer answers for that user
    (a ServiceAccount as system:serviceaccount:NS:NAME)."""
    proc = procs.kubectl(kubeconfig, "auth", "can-i", *args, f"--as={user}", check=False, binary=BIN / "kubectl")
    answer = (proc.stdout.strip().splitlines() or [""])[0]
    assert answer in ("yes", "no"), f"kubectl auth can-i {' '.join(args)} --as={user}: {proc.stdout}{proc.stderr}"
    return answer == "yes"


def token_kubeconfig(kubeconfig: Path | str, namespace: str, service_account: str, path: Path) -> Path:
    """A copy of `kubeconfig` that authenticates as the ServiceAccount (a TokenRequest token, 1 h)."""
    token = kubectl(kubeconfig, "create", "token", service_account, "-n", namespace, "--duration=1h").strip()
    cfg = yaml.safe_load(Path(kubeconfig).read_text())
    context = next(c for c in cfg["contexts"] if c["name"] == cfg["current-context"])
    context["context"]["user"] = "service-account"
    context["context"].pop("namespace", None)
    cfg["contexts"] = [context]
    cfg["users"] = [{"name": "service-account", "user": {"token": token}}]
    path.write_text(yaml.safe_dump(cfg))
    path.chmod(0o600)
    return path


def create_namespace(kubeconfig: Path, name: str) -> None:
    """A namespace enforcing Pod Security `restricted`, as the server pods are meant to run."""
    ns = {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": name, "labels": RESTRICTED}}
    kubectl(kubeconfig, "create", "-f", "-", input=json.dumps(ns))


def install_crds(kubeconfig: Path, crds: Path) -> None:
    kubectl(kubeconfig, "apply", "--server-side", "--force-conflicts", "-f", str(crds))
    kubectl(kubeconfig, "wait", "--for=condition=Established", "--timeout=60s", "crd/modeldeployments.modeldeploy.io")


def parse_time(text: str) -> float:
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


class Kube:
    """Reads through one kubernetes API client (cheap enough to poll every 0.2 s)."""

    def __init__(self, kubeconfig: Path) -> None:
        self.api = config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
        self.custom = client.CustomObjectsApi(self.api)
        self.core = client.CoreV1Api(self.api)
        self.apps = client.AppsV1Api(self.api)

    def mdep(self, namespace: str, name: str) -> Obj:
        obj: Any = self.custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
        return dict(obj)

    def status(self, namespace: str, name: str) -> Obj:
        return dict(self.mdep(namespace, name).get("status") or {})

    def route_weights(self, namespace: str, name: str) -> dict[str, int]:
        route: Any = self.custom.get_namespaced_custom_object(
            "gateway.networking.k8s.io", "v1", namespace, "httproutes", name
        )
        return {ref["name"]: ref.get("weight", 1) for rule in route["spec"]["rules"] for ref in rule["backendRefs"]}

    def events(self, namespace: str, kind: str = "ModelDeployment") -> list[Obj]:
        """Events about objects of `kind`, oldest first: {time, type, reason, message}."""
        out = []
        for e in self.core.list_namespaced_event(namespace).items:
            if e.involved_object.kind != kind:
                continue
            when = e.last_timestamp or e.event_time or e.first_timestamp
            out.append({"time": when.timestamp() if when else 0.0, "type": e.type, "reason": e.reason,
                        "message": e.message or "", "count": e.count or 1})  # fmt: skip
        return sorted(out, key=lambda e: float(e["time"]))

    def replicas(self, namespace: str, name: str) -> dict[str, int]:
        """spec.replicas of each revision's Deployment of `name`, by revision label."""
        deps = self.apps.list_namespaced_deployment(namespace, label_selector=f"modeldeploy.io/name={name}")
        out: dict[str, int] = {}
        for d in deps.items:
            labels = (d.metadata.labels if d.metadata else None) or {}
            out[labels.get("modeldeploy.io/revision", "?")] = (d.spec.replicas if d.spec else None) or 0
        return out

    def revision_deployment(self, namespace: str, revision: str) -> Any:
        """The one Deployment of a revision (by its revision label; a V1Deployment)."""
        deps = self.apps.list_namespaced_deployment(namespace, label_selector=f"modeldeploy.io/revision={revision}")
        assert len(deps.items) == 1, f"{len(deps.items)} Deployments of revision {revision}"
        return deps.items[0]

    def wait_for_phase(self, namespace: str, name: str, phase: str, timeout: float,
                       also: Callable[[Obj], bool] = lambda _: True) -> Obj:  # fmt: skip
        """Wait until status.phase == phase (and also(status)); returns the status."""

        def check() -> Obj | None:
            st = self.status(namespace, name)
            return st if st.get("phase") == phase and also(st) else None

        try:
            return wait_for(check, timeout, f"{namespace}/{name} phase {phase}", interval=0.25)
        except TimeoutError as err:
            raise TimeoutError(f"{err}; status: {json.dumps(self.status(namespace, name))[:3000]}") from None


def _digest(st: Obj) -> tuple[Any, ...]:
    last = st.get("lastAnalysis") or {}
    return (st.get("phase"), st.get("currentStep"), st.get("canaryWeight"), st.get("canaryRevision"),
            st.get("stableRevision"), last.get("time"), st.get("prometheusUnavailableSince"))  # fmt: skip


class Watch:
    """Records (time, canary weight in the HTTPRoute) and (time, status) on every change, every 0.2 s."""

    def __init__(self, kube: Kube, namespace: str, name: str, route: str | None = None) -> None:
        self.kube, self.namespace, self.name, self.route = kube, namespace, name, route or name
        self.weights: list[tuple[float, int]] = []
        self.polls: list[tuple[float, int]] = []  # every read: the route had this weight after this time
        self.statuses: list[tuple[float, Obj]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name=f"watch-{namespace}")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            now = time.time()
            try:
                w = self.kube.route_weights(self.namespace, self.route).get(f"{self.route}-canary", 0)
                self.polls.append((now, w))
                if not self.weights or self.weights[-1][1] != w:
                    self.weights.append((now, w))
                st = self.kube.status(self.namespace, self.name)
                if not self.statuses or _digest(self.statuses[-1][1]) != _digest(st):
                    self.statuses.append((now, st))
            except (ApiException, OSError, urllib3.exceptions.HTTPError):
                pass  # a transient API error (or the API server restarting): the next poll records the change
            self._stop.wait(0.2)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)

    def first_weight(self, weight: int, after: float = 0.0) -> float | None:
        return next((t for t, w in list(self.weights) if t >= after and w == weight), None)

    def last_read(self, weight: int, before: float) -> float | None:
        """The start of the last read before `before` that found `weight`: the route still had it then,
        so a request sent earlier was routed by it (the gateway applies a change later still)."""
        return max((t for t, w in list(self.polls) if t < before and w == weight), default=None)

    def weights_since(self, since: float) -> list[int]:
        return [w for t, w in list(self.weights) if t >= since]

    def max_weight(self, since: float = 0.0) -> int:
        return max([0, *self.weights_since(since)])

    def distinct_weights(self) -> list[int]:
        """The canary weights the route went through, in order (each change once)."""
        return [w for _, w in list(self.weights)]

    def settle(self, weight: int = 0, timeout: float = 15) -> None:
        """Wait until the route's canary weight is `weight`: status is written before the route (a
        decision survives a failed route write), so a phase can be seen a moment before its weight."""
        wait_for(lambda: self.weights and self.weights[-1][1] == weight, timeout, f"canary weight {weight}")


def prometheus_query(prometheus_url: str, query: str, at: float | None = None) -> list[Obj]:
    """An instant query, now or at the Unix time `at`."""
    params = {"query": query} if at is None else {"query": query, "time": f"{at:.3f}"}
    resp = httpx.get(f"{prometheus_url}/api/v1/query", params=params, timeout=10)
    data = resp.json()
    if data.get("status") != "success":
        raise RuntimeError(f"prometheus query {query!r}: {data.get('error', resp.text[:200])}")
    result: list[Obj] = data["data"]["result"]
    return result


def selector(namespace: str, model: str, revision: str, extra: str = "") -> str:
    return f'{{namespace="{namespace}",model="{model}",revision="{revision}"{extra}}}'


def first_sample(prometheus_url: str, series: str, lookback: str = "15m") -> float | None:
    """Timestamp of the first scrape that stored a sample of `series` with a value above 0."""
    times = [float(t) for s in prometheus_query(prometheus_url, f"{series}[{lookback}]")
             for t, v in s["values"] if float(v) > 0]  # fmt: skip
    return min(times) if times else None


def served(prometheus_url: str, namespace: str, model: str, revision: str, lookback: str = "15m") -> float:
    """Requests a revision answered (every code), from its pods' counters (max over the lookback)."""
    q = f"sum(max_over_time(modeldeploy_requests_total{selector(namespace, model, revision)}[{lookback}]))"
    result = prometheus_query(prometheus_url, q)
    value = float(result[0]["value"][1]) if result else 0.0
    return 0.0 if math.isnan(value) else value
