"""The watch-backed caches (`cache.py`) and `Kube`'s use of them: what a tick reads without a
request, and children applied only when they differ (issue 11's scale part; the end-to-end
figures are `make bench-operator`'s)."""

from __future__ import annotations

import json
from typing import Any

from kubernetes import client

from modeldeploy_operator import batch, cost
from modeldeploy_operator.api import parse_spec
from modeldeploy_operator.cache import Caches, Informer, Kind, newer, slim_deployment, slim_pod, slim_service
from modeldeploy_operator.children import Owner, deployment, service
from modeldeploy_operator.kube import APPLIED, Kube, pod_state


def _informer(label: str | None = "modeldeploy.io/name") -> Informer:
    inf = Informer("test", lambda **_: None, index_label=label)
    inf.synced.set()
    return inf


def _obj(name: str, rv: str, label: str = "iris", **extra: Any) -> dict[str, Any]:
    md = {"name": name, "namespace": "ml", "resourceVersion": rv, "labels": {"modeldeploy.io/name": label}}
    return {"metadata": md, **extra}


def test_an_older_resource_version_never_replaces_a_newer_one() -> None:
    inf = _informer()
    inf.offer(_obj("a", "12", spec={"v": "ours"}))  # our own write's answer
    inf._put(_obj("a", "11", spec={"v": "watch, late"}))  # the watch delivers the version before it
    assert inf.get("ml", "a") == _obj("a", "12", spec={"v": "ours"})
    inf._put(_obj("a", "13", spec={"v": "someone else"}))
    assert (inf.get("ml", "a") or {})["spec"] == {"v": "someone else"}
    assert newer("9", "10") is False and newer("10", "9") is True


def test_the_label_index_follows_relabels_and_deletes() -> None:
    inf = _informer()
    inf._put(_obj("a", "1", "iris"))
    inf._put(_obj("b", "2", "iris"))
    inf._put(_obj("c", "3", "wine"))
    assert sorted(o["metadata"]["name"] for o in inf.by_label("ml", "iris")) == ["a", "b"]
    inf._put(_obj("b", "4", "wine"))
    inf._drop(_obj("c", "5", "wine"))
    assert [o["metadata"]["name"] for o in inf.by_label("ml", "iris")] == ["a"]
    assert [o["metadata"]["name"] for o in inf.by_label("ml", "wine")] == ["b"]
    assert inf.by_label("other", "iris") == []


def test_an_unsynced_cache_does_not_answer() -> None:
    inf = Informer("test", lambda **_: None)
    try:
        inf.get("ml", "a")
    except LookupError:
        pass
    else:
        raise AssertionError("an unsynced informer answered")


def test_a_slim_pod_says_what_the_full_pod_says() -> None:
    pod = {
        "metadata": {"name": "p", "namespace": "ml", "labels": {"modeldeploy.io/revision": "r1"},
                     "managedFields": [{"manager": "kubelet"}] * 20, "resourceVersion": "5"},
        "spec": {"containers": [{"name": "server", "image": "x", "env": [{"name": "A", "value": "b" * 500}]}]},
        "status": {
            "phase": "Running",
            "podIP": "127.0.0.7",  # the shadow step calls the pods (shadowctl)
            "hostIP": "127.0.0.1",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{
                "name": "server", "restartCount": 3,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off"}},
                "lastState": {"terminated": {"exitCode": 2, "reason": "Error", "message": "x\nrefused: digest\n"}},
            }],
        },
    }  # fmt: skip
    slim = slim_pod(json.loads(json.dumps(pod)))
    assert pod_state(slim) == pod_state(pod) and pod_state(slim).ip == "127.0.0.7"
    assert len(json.dumps(slim)) < len(json.dumps(pod)) / 3


def _as_served(obj: dict[str, Any]) -> dict[str, Any]:
    """As the API server answers: managedFields, defaults, a status."""
    out = json.loads(json.dumps(obj))
    out["metadata"].update(generation=1, resourceVersion="7", managedFields=[{"manager": "modeldeploy"}] * 5)
    out["status"] = {"replicas": 2, "conditions": [{"type": "Available", "status": "True", "message": "m" * 200}]}
    return out


def test_a_slim_deployment_and_service_say_what_the_operator_reads_in_a_fraction_of_the_memory() -> None:
    import tracemalloc

    owner = Owner("iris", "ml", "uid-1")
    spec = parse_spec({"model": {"uri": "s3://models/iris.skops", "version": "1", "sha256": "a" * 64},
                       "serving": {"resources": {"requests": {"cpu": "250m", "memory": "256Mi"}}},
                       "batch": [{"name": "nightly", "schedule": "0 2 * * *", "input": {"uri": "s3://in/x.parquet"},
                                  "output": {"uri": "s3://out/"}}]})  # fmt: skip
    full = _as_served(deployment(owner, spec, "rev1", 2, "modeldeploy:1"))
    slim = slim_deployment(json.loads(json.dumps(full)))
    assert slim["metadata"] == {k: v for k, v in full["metadata"].items() if k != "managedFields"}
    assert slim["spec"]["replicas"] == 2 and "status" not in slim
    # the pod template reads the same wherever it is read: the cost probe, a batch CronJob
    assert slim["spec"]["template"].thaw() == full["spec"]["template"] == dict(slim["spec"]["template"])
    assert cost.fleet_of(slim) == cost.fleet_of(full) and cost.fleet_of(slim).cpu_cores == 0.25
    entry = spec.batch[0]
    from_slim = batch.cronjob(owner, entry, slim["spec"]["template"])
    assert from_slim == batch.cronjob(owner, entry, full["spec"]["template"])
    svc = _as_served(service(owner, "iris-canary", "rev1"))
    slim_svc = slim_service(json.loads(json.dumps(svc)))
    assert slim_svc["spec"]["selector"] == svc["spec"]["selector"] and "managedFields" not in slim_svc["metadata"]
    # 1,000 of them, as the informer keeps them
    text = json.dumps(full)
    tracemalloc.start()
    fulls = [json.loads(text) for _ in range(1000)]
    full_bytes = tracemalloc.get_traced_memory()[0]
    del fulls
    tracemalloc.stop()
    tracemalloc.start()
    slims = [slim_deployment(json.loads(text)) for _ in range(1000)]
    slim_bytes = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    assert len(slims) == 1000 and slim_bytes < full_bytes / 3, (slim_bytes, full_bytes)
    print(f"1,000 Deployments: {full_bytes / 1e6:.1f} MB as dicts, {slim_bytes / 1e6:.1f} MB slim")


class _Resp:
    def __init__(self, obj: dict[str, Any]) -> None:
        self.data = json.dumps(obj).encode()


class _Server:
    """Answers server-side applies like the API server: generation moves when the spec changes."""

    def __init__(self) -> None:
        self.objects: dict[str, dict[str, Any]] = {}
        self.applies = 0

    def patch(self, name: str, namespace: str, body: dict[str, Any], **_: Any) -> _Resp:
        self.applies += 1
        old = self.objects.get(name)
        gen = (old["metadata"]["generation"] if old else 0) + (0 if old and old["spec"] == body["spec"] else 1)
        rv = str(int(old["metadata"]["resourceVersion"]) + 1 if old else 1)
        self.objects[name] = {**body, "metadata": {**body["metadata"], "generation": gen, "resourceVersion": rv}}
        return _Resp(self.objects[name])

    def edit_spec(self, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Someone else changes the spec (kubectl scale, edit): generation and resourceVersion move."""
        obj = self.objects[name]
        md = obj["metadata"]
        md.update(generation=md["generation"] + 1, resourceVersion=str(int(md["resourceVersion"]) + 1))
        obj["spec"] = spec
        return json.loads(json.dumps(obj))


def _kube() -> tuple[Kube, Informer]:
    kube = Kube(client.ApiClient())  # no request is sent: applies go to _Server.patch
    deployments = _informer()
    kinds = {k: Kind({"": _informer()}) for k in ("mds", "pods", "services", "routes")}
    kube.caches = Caches(deployments=Kind({"": deployments}), **kinds)
    return kube, deployments


def _dep(replicas: int, image: str = "server:1") -> dict[str, Any]:
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "iris-abc", "namespace": "ml", "labels": {"modeldeploy.io/name": "iris"}},
        "spec": {"replicas": replicas, "template": {"spec": {"containers": [{"image": image}]}}},
    }


def test_an_unchanged_child_is_applied_once_and_a_change_or_a_foreign_edit_applies_again() -> None:
    kube, _ = _kube()
    server = _Server()
    for _ in range(3):  # three ticks wanting the same Deployment: one apply
        kube._apply("deployments", _dep(1), server.patch)
    assert server.applies == 1
    live = server.objects["iris-abc"]
    assert live["metadata"]["annotations"][APPLIED]  # the digest rides on the object
    kube._apply("deployments", _dep(2), server.patch)  # the decision changed: applied
    assert server.applies == 2
    kube.caches.deployments.offer(server.edit_spec("iris-abc", {"replicas": 5}))  # type: ignore[union-attr]
    kube._apply("deployments", _dep(2), server.patch)  # someone scaled it: put back
    assert server.applies == 3 and server.objects["iris-abc"]["spec"]["replicas"] == 2
    kube._apply("deployments", _dep(2), server.patch)
    assert server.applies == 3


def test_a_new_process_applies_each_child_once() -> None:
    kube, _ = _kube()
    server = _Server()
    kube._apply("deployments", _dep(1), server.patch)
    fresh, _ = _kube()  # a restarted operator: the same cached object, no record of its own
    fresh.caches.deployments.offer(server.objects["iris-abc"])  # type: ignore[union-attr]
    fresh._apply("deployments", _dep(1), server.patch)
    fresh._apply("deployments", _dep(1), server.patch)
    assert server.applies == 2
