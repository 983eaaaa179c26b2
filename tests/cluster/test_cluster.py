"""The local cluster behaves like a real Kubernetes where the operator depends on it.

The API server enforces the ModelDeployment CRD's schema; a pod whose image is absent stays
Pending with the kubelet's reason (nothing is ever pulled: no registry is reachable, and none may
be); a server that refuses its artifact goes into CrashLoopBackOff with its last words in the
container status (what the operator reads); Prometheus can be stopped and started again (the
outage scenarios); the API server refuses loopback addresses in EndpointSlices (why pods and
Services live in 198.18.0.0/15 and not on 127.x).
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from devcluster import Cluster, ClusterError
from modeldeploy_demo import kube as k
from tests.cluster.servers import REPO, server_deployment

pytestmark = pytest.mark.cluster


def test_api_server_rejects_invalid_modeldeployment(cluster: Cluster, ns: str) -> None:
    cluster.apply(REPO / "crds")
    cluster.kubectl("wait", "--for", "condition=Established", "crd/modeldeployments.modeldeploy.io")
    bad = {
        "apiVersion": "modeldeploy.io/v1alpha1", "kind": "ModelDeployment", "metadata": {"name": "bad"},
        "spec": {
            "model": {"uri": "file:///models/m.joblib", "sha256": "a" * 64, "version": "1"},
            "inputs": [{"name": "RHOB"}],
            "rollout": {"steps": [{"setWeight": 150}]},
        },
    }  # fmt: skip
    with pytest.raises(ClusterError) as err:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(bad))
    message = str(err.value)
    assert "spec.rollout.steps[0].setWeight" in message and "150" in message, message
    good = json.loads(json.dumps(bad))
    good["spec"]["rollout"]["steps"][0]["setWeight"] = 50
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(good))
    # a shadow step without its check (minAgreement or maxMeanAbsDiff) is refused by the CRD's rule
    shadow = json.loads(json.dumps(good))
    shadow["metadata"]["name"] = "shadow"
    shadow["spec"]["rollout"]["steps"] = [{"shadow": {"seconds": 60, "percent": 25}}, {"setWeight": 50}]
    with pytest.raises(ClusterError) as err:
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(shadow))
    assert "a shadow step needs analysis.minAgreement" in str(err.value), str(err.value)
    shadow["spec"]["rollout"]["analysis"] = {"minAgreement": 0.98}
    cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(shadow))


def test_a_pod_whose_image_is_absent_stays_pending_with_the_reason(cluster: Cluster, ns: str,
                                                                     model: dict[str, str]) -> None:  # fmt: skip
    absent = "localhost/modeldeploy/absent:1"
    k.apply(cluster.kubeconfig, ns, server_deployment("porosity", model, absent, replicas=1))

    def waiting() -> dict[str, Any] | None:
        items = k.pods(cluster.kubeconfig, ns, "modeldeploy.io/name=porosity")
        cs = (items[0]["status"].get("containerStatuses") or [{}])[0] if items else {}
        state = cs.get("state", {}).get("waiting", {})
        settled = state.get("reason") not in (None, "ContainerCreating")  # the sandbox comes first
        return state if items and items[0]["status"]["phase"] == "Pending" and settled else None

    state = Cluster.wait_for(waiting, 60, what="the missing image's reason")
    assert state["reason"] == "ErrImageNeverPull", state
    assert absent in state["message"], state


def test_crashing_server_goes_into_crashloop_with_its_last_words(cluster: Cluster, ns: str,
                                                                  model: dict[str, str]) -> None:  # fmt: skip
    dep = server_deployment("porosity", model, cluster.env["IMAGE"], replicas=1, sha256="0" * 64)
    dep["spec"]["template"]["spec"]["containers"][0]["terminationMessagePolicy"] = "FallbackToLogsOnError"
    k.apply(cluster.kubeconfig, ns, dep)

    def crashloop() -> dict[str, Any] | None:
        items = k.pods(cluster.kubeconfig, ns, "modeldeploy.io/name=porosity")
        cs = (items[0]["status"].get("containerStatuses") or [{}])[0] if items else {}
        waiting = cs.get("state", {}).get("waiting", {})
        return cs if waiting.get("reason") == "CrashLoopBackOff" and cs.get("restartCount", 0) >= 1 else None

    cs = Cluster.wait_for(crashloop, 120, what="CrashLoopBackOff")
    last = cs["lastState"]["terminated"]
    assert last["exitCode"] != 0
    assert "digest mismatch" in last["message"], "the last line of the server's output explains the crash"
    assert not cs["ready"]


def test_prometheus_can_be_stopped_and_restarted(cluster: Cluster) -> None:
    assert cluster.prometheus_query("vector(1)")[0]["value"][1] == "1"
    cluster.stop_prometheus()
    try:
        with pytest.raises(OSError):
            cluster.prometheus_query("vector(1)")
    finally:
        cluster.start_prometheus()
    assert cluster.prometheus_query("vector(1)")[0]["value"][1] == "1"


def test_api_server_refuses_loopback_endpointslices(cluster: Cluster, ns: str) -> None:
    """No EndpointSlice can hold a 127.x address: the reason pods get 198.18.x addresses."""
    slice_ = {
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {"name": "loopback", "labels": {"kubernetes.io/service-name": "x"}},
        "addressType": "IPv4", "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": [{"addresses": ["127.0.1.2"], "conditions": {"ready": True}}],
    }  # fmt: skip
    with pytest.raises(ClusterError, match=r"may not be in the loopback range"):
        cluster.kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(slice_))
