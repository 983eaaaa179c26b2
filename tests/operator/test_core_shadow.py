"""Tick-by-tick scenarios of the `shadow` step in the pure core (one tick = one second)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from modeldeploy_operator import reasons as r
from modeldeploy_operator import shadow
from modeldeploy_operator.analysis import AnalysisPlan, QueryResult
from tests.operator.sim import Sim, spec_dict

STEPS = [{"shadow": {"seconds": 20, "percent": 25}}, {"setWeight": 50}, {"pause": {"seconds": 10}}]


def paired(pairs: float, agreements: float, abs_diff: float = 0.0) -> Callable[[AnalysisPlan], dict[str, QueryResult]]:
    """Prometheus for a shadow step: the canary's paired counts; the usual healthy figures otherwise."""
    values = {
        shadow.PAIRS: pairs, shadow.AGREEMENTS: agreements, shadow.ABS_DIFF: abs_diff, shadow.FAILURES: 0,
        shadow.SENT: pairs, shadow.DROPPED: 0, "requests": 200, "errors": 0, "latency-p99": 0.05,
    }  # fmt: skip
    return lambda plan: {q.name: QueryResult(value=values.get(q.name)) for q in plan.queries}


def shadow_sim(**rollout: Any) -> tuple[Sim, str, str]:
    analysis = {"intervalSeconds": 5, "minRequests": 50, "failureLimit": 1, "minAgreement": 0.98}
    sim = Sim(spec_dict(steps=STEPS, analysis=analysis, **rollout))
    sim.run(10, until=lambda s: s.phase() == r.PHASE_HEALTHY)
    v1 = sim.status.stable_revision
    assert v1 is not None
    return sim, v1, sim.set_version("2")


def test_an_equal_candidate_passes_its_shadow_step_then_gets_its_weight() -> None:
    sim, v1, v2 = shadow_sim()
    sim.prom[v2] = paired(5000, 5000)
    shadowed: list[int] = []
    for _ in range(60):
        d = sim.tick()
        if sim.status.stable_revision == v2:
            break
        if d.shadow is not None:
            assert (d.shadow.stable_revision, d.shadow.canary_revision, d.shadow.percent) == (v1, v2, 25)
            assert d.shadow.canary_service == "iris-canary"
            assert sim.status.canary_weight == 0 and d.route is not None and d.route.canary_weight == 0
            shadowed.append(sim.trace[-1][0])
    assert sim.status.stable_revision == v2
    assert shadowed and shadowed[-1] - shadowed[0] >= 19  # the step lasted its 20 s before it ended
    assert sim.weights() == [0, 50, 0]
    shadow_plans = [p for p in sim.plans if p.shadow]
    assert shadow_plans and all(p.step == 0 and p.weight == 0 for p in shadow_plans)
    assert {q.name for q in shadow_plans[0].queries} >= {shadow.PAIRS, shadow.AGREEMENTS}
    assert r.SHADOWING in [c.reason for d in sim.decisions for c in d.status.conditions]


def test_a_candidate_flipping_ten_percent_is_rolled_back_in_its_shadow_step_without_user_weight() -> None:
    sim, v1, v2 = shadow_sim()
    sim.prom[v2] = paired(2000, 1800)
    sim.run(40, until=lambda s: s.status.canary_revision is None and s.status.failed_revision == v2)
    assert sim.status.failed_revision == v2 and sim.status.stable_revision == v1
    assert sim.weights() == [0]  # the route never gave the canary a share
    assert all(d.route is None or d.route.canary_weight == 0 for d in sim.decisions)
    assert sim.status.history[-1].outcome == "RolledBack"
    last = sim.status.last_analysis
    assert last is not None and last.verdict == "Failed"
    check = next(c for c in last.checks if c.name == shadow.AGREEMENT)
    assert check.samples == 2000 and check.value == 0.9
    assert check.lower is not None and check.upper is not None and check.lower < 0.9 < check.upper < 0.98
    assert "n=2000 pairs" in check.message
    assert sim.decisions[-1].shadow is None  # stable stops mirroring


def test_too_few_pairs_hold_the_step_and_roll_back_at_the_progress_deadline() -> None:
    sim, v1, v2 = shadow_sim()
    sim.prom[v2] = paired(10, 10)
    sim.run(45)
    assert sim.status.canary_revision == v2 and sim.status.current_step == 0  # held beyond its 20 s
    assert sim.status.last_analysis is not None and sim.status.last_analysis.verdict == "Inconclusive"
    assert sim.decisions[-1].shadow is not None
    sim.run(60, until=lambda s: s.status.canary_revision is None)
    assert sim.status.failed_revision == v2 and r.PROGRESS_DEADLINE_EXCEEDED in sim.reasons()


def test_replica_ratio_mode_keeps_users_on_stable_during_the_shadow_step() -> None:
    sim, v1, v2 = shadow_sim(trafficRouting=None)
    sim.prom[v2] = paired(5000, 5000)
    selectors: list[dict[str, str]] = []
    for _ in range(60):
        d = sim.tick()
        users = next(s for s in d.services if s["metadata"]["name"] == "iris")
        selectors.append(users["spec"]["selector"])
        if d.shadow is not None or sim.status.current_step is None and sim.status.canary_revision:
            assert users["spec"]["selector"].get("modeldeploy.io/revision") == v1
            assert sim.status.canary_weight == 0
        if sim.status.canary_weight:
            assert "modeldeploy.io/revision" not in users["spec"]["selector"]  # both revisions serve users
        if sim.status.stable_revision == v2:
            break
    assert sim.status.stable_revision == v2
    assert {"modeldeploy.io/name": "iris", "modeldeploy.io/revision": v1} in selectors


def test_replica_ratio_users_never_reach_a_canary_rolled_back_in_its_shadow_step() -> None:
    """The rollback tick scales the canary to 0 while its pods are still ready: `<name>` must keep
    selecting stable only until they are gone, or the EndpointSlice controller adds them for the
    moment before their deletion."""
    sim, v1, v2 = shadow_sim(trafficRouting=None)
    sim.prom[v2] = paired(2000, 1800)
    seen: list[tuple[int, dict[str, str]]] = []  # (canary pods ready as the tick observed them, selector)
    for _ in range(60):
        d = sim.tick()
        users = next(s for s in d.services if s["metadata"]["name"] == "iris")
        seen.append((sim.ready.get(v2, 0), users["spec"]["selector"]))
        if sim.status.failed_revision == v2 and seen[-1][0] == 0:
            break
    assert sim.status.failed_revision == v2 and sim.status.canary_revision is None
    rollback = next(i for i, d in enumerate(sim.decisions) if d.status.failed_revision == v2)
    assert seen[rollback - len(sim.decisions)][0] > 0  # the canary's pods were ready at the rollback tick
    only_stable = {"modeldeploy.io/name": "iris", "modeldeploy.io/revision": v1}
    assert all(sel == only_stable for pods, sel in seen if pods > 0)  # never "every revision" beside canary pods
    assert seen[-1] == (0, {"modeldeploy.io/name": "iris"})  # once they are gone, every revision again


def test_a_restarted_operator_continues_the_shadow_step() -> None:
    sim, v1, v2 = shadow_sim()
    sim.roundtrip = True
    sim.prom[v2] = paired(5000, 5000)
    sim.run(60, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2 and sim.weights() == [0, 50, 0]
