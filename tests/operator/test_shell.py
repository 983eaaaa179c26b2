"""The shell's small pure parts: settings from env, the listener, pod states from raw pods, route weights.

(The health verdict and status writes: `test_reconcile`.)
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from modeldeploy_operator import metrics
from modeldeploy_operator.handlers import exact_names
from modeldeploy_operator.kube import pod_state
from modeldeploy_operator.settings import OperatorSettings


def test_settings_from_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_NAMESPACES", " ml-a, ml-b ,,")
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_TICK_SECONDS", "1")
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_SERVER_IMAGE", "registry.local/md:1")
    s = OperatorSettings()
    assert s.namespace_list == ["ml-a", "ml-b"] and s.tick_seconds == 1.0
    assert s.core_config().image == "registry.local/md:1" and s.core_config().scale_down_delay_seconds == 30
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_NAMESPACES", "")
    assert OperatorSettings().namespace_list == []


def test_metrics_listener_serves_metrics_and_healthz() -> None:
    server = metrics.serve("127.0.0.1", 0)
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        metrics.CANARY_WEIGHT.labels(namespace="ml", name="iris").set(20)
        text = httpx.get(f"{url}/metrics").text
        assert 'modeldeploy_operator_canary_weight{name="iris",namespace="ml"} 20.0' in text
        assert "process_resident_memory_bytes" in text
        metrics.HEALTH.started = False
        assert httpx.get(f"{url}/healthz").status_code == 503
        metrics.HEALTH.started = True
        assert httpx.get(f"{url}/healthz").text == "ok\n"
        assert httpx.get(f"{url}/nope").status_code == 404
    finally:
        server.shutdown()
        server.server_close()


def test_pod_state_reads_waiting_and_last_terminated_reasons() -> None:
    pod = {
        "metadata": {"name": "iris-abc-1"},
        "status": {
            "phase": "Running",
            "conditions": [{"type": "Ready", "status": "False"}],
            "containerStatuses": [{
                "name": "server", "restartCount": 4,
                "state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 1m20s"}},
                "lastState": {"terminated": {"reason": "Error", "exitCode": 2, "message": "digest mismatch"}},
            }],
        },
    }  # fmt: skip
    state = pod_state(pod)
    assert not state.ready
    assert state.problem() == (
        "pod iris-abc-1: waiting: CrashLoopBackOff (back-off 1m20s), "
        "last terminated: Error exit code 2 (digest mismatch), restarts 4"
    )
    ready = pod_state({"metadata": {"name": "p"}, "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
    assert ready.ready and ready.problem() is None
    deleting = {
        "metadata": {"name": "p", "deletionTimestamp": "x"},
        "status": {"conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert not pod_state(deleting).ready


class _RecordingCustomApi:
    def __init__(self) -> None:
        self.patches: list[tuple[object, ...]] = []

    def patch_namespaced_custom_object(self, *args: object, **kwargs: object) -> None:
        self.patches.append((*args, kwargs.get("_content_type")))


def test_route_weights_are_patched_only_on_our_backend_refs_and_only_when_they_differ() -> None:
    from modeldeploy_operator.kube import GATEWAY, MERGE, Kube
    from modeldeploy_operator.model import RouteWeights

    kube = Kube.__new__(Kube)
    api = _RecordingCustomApi()
    kube.custom = api  # type: ignore[assignment]
    route = {
        "metadata": {"name": "iris", "resourceVersion": "42"},
        "spec": {"rules": [
            {"backendRefs": [{"name": "iris-stable", "port": 80, "weight": 100},
                             {"name": "iris-canary", "port": 80, "weight": 0},
                             {"name": "someone-else", "port": 80, "weight": 7}]},
            {"matches": [{"path": {"type": "PathPrefix", "value": "/v2"}}],
             "backendRefs": [{"name": "iris-stable", "port": 80}, {"name": "iris-canary", "port": 80}]},
        ]},
    }  # fmt: skip
    weights = RouteWeights("iris", "iris-stable", "iris-canary", 80, 20)
    kube.set_weights("ml", weights, route)
    ((group, version, ns, plural, name, body, ctype),) = api.patches
    assert (group, version, plural) == GATEWAY and (ns, name, ctype) == ("ml", "iris", MERGE)
    assert body["metadata"] == {"resourceVersion": "42"}  # optimistic concurrency: a concurrent edit -> 409
    refs = [[(r["name"], r.get("weight")) for r in rule["backendRefs"]] for rule in body["spec"]["rules"]]
    assert refs == [[("iris-stable", 80), ("iris-canary", 20), ("someone-else", 7)],
                    [("iris-stable", 80), ("iris-canary", 20)]]  # fmt: skip
    assert body["spec"]["rules"][1]["matches"] == route["spec"]["rules"][1]["matches"]
    kube.set_weights("ml", weights, route)  # already there: no second patch
    assert len(api.patches) == 1


def test_prometheus_tls_is_verified_by_default_and_a_token_can_be_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 11 M12: an https Prometheus was queried without certificate verification
    from modeldeploy_operator.prom import Prometheus

    for name in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE"):  # a bundle there is taken (test_prom_environment)
        monkeypatch.delenv(name, raising=False)
    prom = Prometheus("https://prometheus.example.invalid", 1.0)
    assert prom.client._session.verify is True
    token = tmp_path / "token"
    token.write_text("s3cret\n")
    url = "https://prometheus.example.invalid"
    prom = Prometheus(url, 1.0, insecure_skip_verify=True, bearer_token_file=str(token))
    assert prom.client._session.verify is False and prom.client.headers == {"Authorization": "Bearer s3cret"}


def test_a_shard_selector_is_parsed_checked_and_given_to_kopf_and_the_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    import kopf
    from kubernetes import client

    from modeldeploy_operator.handlers import kopf_labels
    from modeldeploy_operator.kube import Kube

    monkeypatch.setenv("MODELDEPLOY_OPERATOR_SELECTOR", "modeldeploy.io/shard=a, !canary-free ,team")
    s = OperatorSettings()
    assert s.selector_terms == [("modeldeploy.io/shard", "a", True), ("canary-free", None, False), ("team", None, True)]
    assert kopf_labels(s.selector_terms) == {
        "modeldeploy.io/shard": "a",
        "canary-free": kopf.ABSENT,
        "team": kopf.PRESENT,
    }
    assert s.lease_name.startswith("modeldeploy-operator-") and s.lease_name != OperatorSettings(selector="").lease_name
    # each shard puts its own finalizer: kopf removes its finalizer from objects its filters do not
    # match, so a shared name made the shards undo each other's finalizer several times a second
    other = OperatorSettings(selector="!modeldeploy.io/shard")
    assert s.finalizer.startswith("modeldeploy.io/finalizer-") and s.finalizer != other.finalizer
    assert len(s.finalizer.split("/")[1]) <= 63  # a qualified name's name part
    caches = Kube(client.ApiClient()).informers(["ml"], s.selector)
    assert caches.mds.informers["ml"].label_selector == s.selector  # the shard's objects only
    assert caches.pods.informers["ml"].label_selector == "modeldeploy.io/name"  # children: by their own label
    assert caches.routes.informers["ml"].label_selector is None
    for bad, why in (("shard!=a", "only key=value, key and !key"), ("-x=1", "is not a label key"),
                     ("k=a b", "is not a label value")):  # fmt: skip
        monkeypatch.setenv("MODELDEPLOY_OPERATOR_SELECTOR", bad)
        with pytest.raises(ValueError, match=why) as err:
            OperatorSettings()
        assert "selector" in str(err.value)
    assert kopf_labels([]) is None and OperatorSettings(selector="").lease_name == "modeldeploy-operator"
    assert OperatorSettings(selector="").finalizer == "modeldeploy.io/finalizer"  # unsharded: unchanged


def test_the_tick_pool_size_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    assert OperatorSettings().workers == 16  # kopf's own default is min(32, cores + 4): 6 on 2 cores
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_WORKERS", "40")
    assert OperatorSettings().workers == 40
    monkeypatch.setenv("MODELDEPLOY_OPERATOR_WORKERS", "0")
    with pytest.raises(ValueError, match="workers"):
        OperatorSettings()


def test_exact_namespaces_switch_kopf_scanning_off_and_patterns_keep_it() -> None:
    # exact names: kopf need not list namespaces (forbidden under the chart's RBAC; it retried ~54 s)
    assert exact_names(["team-a", "team-b"])
    assert not exact_names([])  # all namespaces: cluster-wide, kopf scans
    assert not exact_names(["team-*"]) and not exact_names(["!kube-system"]) and not exact_names(["t[ab]"])
