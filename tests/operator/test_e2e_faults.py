"""End to end, faults around the operator's own writes (issue 11): another writer editing the
ModelDeployment several times a second during a canary (every status write can meet a 409), and
a promote annotation hammered with the same value. Real cluster, operator process, pods, traffic.
"""

from __future__ import annotations

import threading
import time

import pytest

from tests.operator import e2e_helpers as h
from tests.operator.conftest import E2E

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]
NAMESPACES = ("storm",)
NAME = "iris"
STEPS = [{"setWeight": 20}, {"pause": {"seconds": 6}}, {"setWeight": 50}, {"pause": {}}]


class Writer:
    """Another controller (or a person with a script) bumping a label every `period` seconds."""

    def __init__(self, env: E2E, ns: str, period: float) -> None:
        self.env, self.ns, self.period = env, ns, period
        self.writes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            h.kubectl(self.env.kubeconfig, "label", "--overwrite", "mdep", NAME, "-n", self.ns, f"storm={self.writes}")
            self.writes += 1
            self._stop.wait(self.period)

    def start(self) -> Writer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(30)


def conflicts(env: E2E, ns: str) -> float:
    total = 0.0
    for line in env.operator.metrics().splitlines():
        if line.startswith("modeldeploy_operator_reconcile_errors_total{") and f'namespace="{ns}"' in line:
            if 'error="conflict"' in line:
                total += float(line.rsplit(" ", 1)[1])
    return total


def test_a_conflict_storm_and_a_hammered_promote_lose_no_decision_and_apply_none_twice(e2e: E2E, capsys) -> None:  # type: ignore[no-untyped-def]
    env, ns = e2e, e2e.namespaces["storm"]
    host = h.deploy_v1(env.gateway, env.kubeconfig, ns, NAME, env.models, env.store.url, steps=STEPS)
    traffic = h.Traffic(env.gateway_url, host, NAME, rate=30, bad_share=0.0).start()
    watch = h.WeightWatch(env.kubeconfig, ns, NAME)
    writer = Writer(env, ns, 0.3).start()
    try:
        h.wait_for(lambda: traffic.counts().get(200, 0) >= 30, 30, "traffic through the gateway")
        started = time.time()
        h.apply(env.kubeconfig, ns, h.model_deployment(NAME, env.models["v2"], env.store.url, "2", route=NAME,
                                                       steps=STEPS))  # fmt: skip
        h.wait_for_phase(env.kubeconfig, ns, NAME, "Paused", timeout=120)
        for _ in range(8):  # the same request, again and again, while ticks and the writer run
            h.kubectl(env.kubeconfig, "annotate", "--overwrite", "mdep", NAME, "-n", ns,
                      "modeldeploy.io/promote=2026-12-02T00:00:00Z")  # fmt: skip
            time.sleep(0.2)
        final = h.wait_for_phase(env.kubeconfig, ns, NAME, "Healthy", timeout=120,
                                 also=lambda o: o["status"].get("stableVersion") == "2")  # fmt: skip
        took = time.time() - started
        watch.settle(0)
    finally:
        writer.stop()
        traffic.stop()
        watch.stop()
    outcomes = [x["outcome"] for x in final["status"]["history"]]
    assert outcomes[-2:] == ["Deployed", "Promoted"] and outcomes.count("Promoted") == 1
    assert [w for _, w in watch.changes] == [0, 20, 50, 0], watch.changes  # no step lost or repeated
    reasons = h.reasons(env.kubeconfig, ns)
    assert reasons.count("PromoteRequested") == 1 and reasons.count("Promoted") == 1, reasons
    assert reasons.count("WeightChanged") == 2, reasons  # each decision posted once
    # from the change on: before it, Traefik may answer 503 for a second while it first learns the
    # new route's endpoints (the warm-up waits for 30 answers 200)
    counts = traffic.counts(since=started)
    assert set(counts) == {200}, counts
    lost = conflicts(env, ns)
    with capsys.disabled():
        print(f"\n[e2e] conflict storm ({writer.writes} label writes in {took:.0f}s): {lost:.0f} ticks lost to a 409, "
              f"promoted once {took:.0f}s after the change; requests {sum(counts.values())}, failed 0")  # fmt: skip


@pytest.mark.parametrize(
    ("name", "analysis", "refusal"),
    [("iris.v2", None, "metadata.name must be a DNS-1035 label"),
     ("a" * 53, None, "metadata.name must be a DNS-1035 label"),
     ("iris", {"metrics": [{"name": "requests", "query": "sum(x)", "min": 1}]},
      "the name is reserved for a built-in measurement")],
)  # fmt: skip
def test_the_api_server_refuses_what_the_operator_could_not_reconcile(
    e2e: E2E, name: str, analysis: dict[str, object] | None, refusal: str
) -> None:
    # issue 11 M1, M10: the CRD's CEL rules, evaluated by the real API server
    ns = e2e.namespaces["storm"]
    obj = h.model_deployment(name, e2e.models["v1"], e2e.store.url, "1", analysis=analysis)
    with pytest.raises(RuntimeError, match=refusal):
        h.apply(e2e.kubeconfig, ns, obj)
