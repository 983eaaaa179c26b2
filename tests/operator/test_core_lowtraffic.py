"""Low traffic (issue 13, item 3): when the checks are expected to decide later than the step allows,
the operator says so (condition LowTraffic, one Event per step) and `analysis.lowTraffic` extends the
step, raises the canary's weight or holds. It never promotes an undecided canary except by annotation.

Traffic here is a rate: the canary gets `per_second` x its weight of requests over each check's window.
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from datetime import timedelta
from typing import Any, Literal

import pytest

from modeldeploy_operator import analysis
from modeldeploy_operator import reasons as r
from modeldeploy_operator.analysis import AnalysisPlan, QueryResult
from modeldeploy_operator.api import AnalysisRecord, CheckRecord, parse_spec
from modeldeploy_operator.ladder import decision_eta
from modeldeploy_operator.ratio import routed_canary_replicas
from tests.operator.sim import Sim, cond, deployed, spec_dict

Answer = Callable[[AnalysisPlan], dict[str, QueryResult]]


def traffic(per_second: float) -> Answer:
    """A healthy canary receiving its weight's share of `per_second` requests, over the plan's window."""

    def answer(plan: AnalysisPlan) -> dict[str, QueryResult]:
        n = per_second * plan.weight / 100 * plan.window_seconds
        values = {analysis.REQUESTS: n, analysis.ERRORS: 0.0, analysis.LATENCY_P99: 0.05}
        return {q.name: QueryResult(value=values.get(q.name)) for q in plan.queries}

    return answer


def canary(policy: str | None, per_second: float, **spec: Any) -> tuple[Sim, str]:
    """Steps 10% / pause 10 s / 50% / pause 10 s, checks every 5 s, minRequests 50, deadline 60 s."""
    a: dict[str, Any] = {"intervalSeconds": 5, "minRequests": 50, "failureLimit": 1, "maxErrorRate": 0.01}
    if policy is not None:
        a["lowTraffic"] = policy
    sim = deployed(analysis=a)
    sim.spec.update(spec)
    v2 = sim.set_version("2")
    sim.prom[v2] = traffic(per_second)
    return sim, v2


def low_traffic_events(sim: Sim) -> list[str]:
    return [m for reason, m in sim.events() if reason == r.LOW_TRAFFIC]


def promoted(sim: Sim) -> bool:
    return r.PROMOTED in sim.reasons()


# ------------------------------------------------------------------ unset: said, nothing else changes
def test_unset_says_low_traffic_once_and_rolls_back_at_the_progress_deadline_as_before() -> None:
    # 20 req/s, 10% to the canary: 10 per 5 s window, never minRequests 50 in one window
    sim, v2 = canary(None, 20)
    sim.run(20, until=lambda s: s.status.last_analysis is not None and s.status.last_analysis.step == 1)
    entered = sim.now - timedelta(seconds=6)  # the step started 5 s before its first check
    sim.tick()
    assert sim.status.current_step == 1 and sim.status.canary_weight == 10
    assert cond(sim, r.LOW_TRAFFIC) == ("True", r.LOW_TRAFFIC_REPORTED)
    assert cond(sim, r.PROGRESSING) == ("True", r.STEP_PAUSED)  # today's reason, with the sentence added
    message = sim.status.message or ""
    assert "low traffic at step 2/4 (pause 10s), weight 10%" in message
    assert "minRequests 50 needs about 40 more canary requests: no decision in sight at 2 req/s" in message
    assert "at most intervalSeconds 5s, about 10 arrive in one" in message and "left in its pause" in message
    sim.run(120, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK
    assert cond(sim, r.DEGRADED) == ("True", r.PROGRESS_DEADLINE_EXCEEDED)
    waited = (sim.now - entered).total_seconds()
    assert 70 <= waited <= 72  # pause 10 s + progressDeadlineSeconds 60, as without lowTraffic
    assert "not judged" in (sim.status.message or "") and "low traffic at step 2/4" in (sim.status.message or "")
    assert len(low_traffic_events(sim)) == 1  # one Event for the step, not one per check
    assert all(c.type != r.LOW_TRAFFIC for c in sim.status.conditions)  # gone with the canary
    assert not promoted(sim) and sim.status.stable_revision != v2


def test_enough_traffic_says_nothing() -> None:
    sim, v2 = canary(None, 200)
    sim.run(80, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2
    assert low_traffic_events(sim) == [] and all(c.type != r.LOW_TRAFFIC for c in sim.status.conditions)


# ------------------------------------------------------------------ extend
def test_extend_grows_the_window_until_the_checks_decide_then_promotes() -> None:
    sim, v2 = canary("extend", 20)  # 2 req/s at 10%: minRequests 50 after about 25 s of the step
    sim.run(20)
    assert sim.status.current_step == 1
    assert cond(sim, r.LOW_TRAFFIC) == ("True", r.LOW_TRAFFIC_EXTENDED)
    low = next(c for c in sim.status.conditions if c.type == r.LOW_TRAFFIC)
    assert "lowTraffic extend: the step waits for a decision" in low.message
    sim.run(120, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2 and sim.status.history[-1].reason == "all steps passed"
    assert r.PROGRESS_DEADLINE_EXCEEDED not in sim.reasons()
    assert max(p.window_seconds for p in sim.plans if p.step == 1) >= 25 > 5  # beyond intervalSeconds
    assert all(p.window_seconds <= 5 for p in sim.plans if p.step == 3)  # 10 req/s at 50%: one window decides
    assert sim.weights() == [0, 10, 50, 0]
    assert len(low_traffic_events(sim)) == 1  # step 2 only; step 4 had the traffic


def test_extend_is_bounded_by_the_progress_deadline_and_says_so() -> None:
    sim, v2 = canary("extend", 2)  # 0.2 req/s at 10%: 250 s to minRequests, more than pause + deadline
    sim.run(200, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK and cond(sim, r.DEGRADED) == ("True", r.PROGRESS_DEADLINE_EXCEEDED)
    assert "lowTraffic extend" in (sim.status.message or "")
    assert len(low_traffic_events(sim)) == 1 and not promoted(sim)


# ------------------------------------------------------------------ raiseWeight
def test_raise_weight_doubles_the_share_up_to_the_next_steps_weight_with_its_pods_ready() -> None:
    sim, v2 = canary("raiseWeight", 25, replicas=10)  # 2.5 req/s at 10%: 12.5 per 5 s window
    replicas = 10
    for _ in range(200):
        d = sim.tick()
        if d.route is not None and d.route.canary_weight > 0 and sim.status.canary_revision == v2:
            # a raised weight is applied only once the canary has the pods for it
            assert sim.ready.get(v2, 0) >= routed_canary_replicas(replicas, d.route.canary_weight)
        if sim.status.stable_revision == v2:
            break
    assert sim.status.stable_revision == v2
    assert sim.weights() == [0, 10, 20, 40, 50, 0]  # 2.5 -> 5 -> 10 req/s: 50 in one window at 40%
    raises = [m for reason, m in sim.events() if reason == r.WEIGHT_CHANGED and "lowTraffic raiseWeight" in m]
    assert len(raises) == 2 and "10% -> 20%" in raises[0] and "20% -> 40%" in raises[1]
    assert "at most the next step's 50%" in raises[0]
    assert len(low_traffic_events(sim)) == 1
    assert r.PROGRESS_DEADLINE_EXCEEDED not in sim.reasons()


def test_raise_weight_at_the_last_weight_has_nothing_to_raise_and_says_so() -> None:
    sim, v2 = canary("raiseWeight", 4)  # 2 req/s at 50%: still short in the last step
    sim.run(60, until=lambda s: s.status.current_step == 3 and s.status.last_analysis is not None
            and s.status.last_analysis.step == 3)  # fmt: skip
    sim.run(3)
    assert sim.status.canary_weight == 50 and cond(sim, r.LOW_TRAFFIC) == ("True", r.LOW_TRAFFIC_RAISED)
    assert "no later step has a higher weight than 50%" in (sim.status.message or "")
    sim.run(120, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK and not promoted(sim)
    assert max(sim.weights()) == 50


# ------------------------------------------------------------------ hold
def test_hold_waits_past_the_deadline_for_evidence_and_then_goes_on() -> None:
    sim, v2 = canary("hold", 2)  # 0.2 req/s at 10%: 250 s to minRequests
    sim.run(200)
    assert sim.status.canary_revision == v2 and sim.status.current_step == 1 and sim.status.canary_weight == 10
    assert cond(sim, r.LOW_TRAFFIC) == ("True", r.LOW_TRAFFIC_HELD)
    assert r.PROGRESS_DEADLINE_EXCEEDED not in sim.reasons() and r.ROLLED_BACK not in sim.reasons()
    assert "no progress deadline" in (sim.status.message or "")
    assert sim.status.stable_revision != v2
    sim.run(400, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2 and sim.status.history[-1].reason == "all steps passed"
    assert max(p.window_seconds for p in sim.plans) >= 250
    assert sim.weights() == [0, 10, 50, 0]
    assert len(low_traffic_events(sim)) == 2  # once in step 2, once in step 4 (1 req/s at 50%: 50 s)


def test_hold_still_rolls_back_a_canary_that_fails() -> None:
    sim, v2 = canary("hold", 2)
    sim.run(100)

    def bad(plan: AnalysisPlan) -> dict[str, QueryResult]:
        values = {analysis.REQUESTS: 400.0, analysis.ERRORS: 40.0, analysis.LATENCY_P99: 0.05}
        return {q.name: QueryResult(value=values.get(q.name)) for q in plan.queries}

    sim.prom[v2] = bad
    sim.run(60, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK and cond(sim, r.DEGRADED) == ("True", r.ANALYSIS_FAILED)


# ------------------------------------------------------------------ never promoted undecided
@pytest.mark.parametrize("policy", [None, "extend", "raiseWeight", "hold"])
def test_an_undecided_canary_is_never_promoted_except_by_annotation(policy: str | None) -> None:
    sim, v2 = canary(policy, 0)  # no canary requests at all: every check Inconclusive
    for _ in range(300):
        sim.tick()
        last = sim.status.last_analysis
        assert last is None or last.verdict == "Inconclusive"
        assert sim.status.stable_revision != v2 and not promoted(sim)
        if sim.phase() == r.PHASE_ROLLED_BACK:
            break
    assert "no decision in sight at 0 req/s" in "".join(low_traffic_events(sim))
    if policy == "hold":  # waits for evidence or a person
        assert sim.status.canary_revision == v2 and sim.phase() == r.PHASE_PROGRESSING
        sim.annotations[r.ANNOTATION_PROMOTE] = "yes"
        sim.run(20, until=lambda s: s.status.stable_revision == v2)
        assert sim.status.stable_revision == v2 and sim.status.history[-1].reason == "by annotation"
    else:  # rolled back undecided at the progress deadline, as without lowTraffic
        assert sim.phase() == r.PHASE_ROLLED_BACK
        assert cond(sim, r.DEGRADED) == ("True", r.PROGRESS_DEADLINE_EXCEEDED)


@pytest.mark.parametrize("policy", ["extend", "raiseWeight", "hold"])
def test_a_restarted_operator_continues_identically(policy: str) -> None:
    runs = []
    for roundtrip in (False, True):
        sim = Sim(spec_dict(analysis={"intervalSeconds": 5, "minRequests": 50, "lowTraffic": policy}),
                  roundtrip=roundtrip)  # fmt: skip
        sim.run(5)
        v2 = sim.set_version("2")
        sim.prom[v2] = traffic(10)
        sim.run(150)
        runs.append(sim)
    plain, restarted = runs
    assert plain.trace == restarted.trace and plain.events() == restarted.events()
    assert json.dumps(plain.status.model_dump(mode="json")) == json.dumps(restarted.status.model_dump(mode="json"))


# ------------------------------------------------------------------ the estimate itself
def _record(*checks: CheckRecord, window: int = 30) -> AnalysisRecord:
    inconclusive = any(c.verdict == "Inconclusive" for c in checks)
    verdict: Literal["Inconclusive", "Passed"] = "Inconclusive" if inconclusive else "Passed"
    return AnalysisRecord(time="2026-11-21T13:00:00Z", revision="r", window_seconds=window, verdict=verdict,
                          checks=list(checks))  # fmt: skip


def test_the_estimate_uses_the_judges_more_requests_at_the_windows_rate() -> None:
    a = parse_spec(spec_dict(analysis={"intervalSeconds": 30, "minRequests": 50})).rollout.analysis
    requests = CheckRecord(name=analysis.REQUESTS, query="q", samples=300, verdict="Passed")
    judged = CheckRecord(name="error-rate-increase", query="q", more_requests=1200, verdict="Inconclusive")
    eta = decision_eta(_record(requests, judged), a, grows=False)
    assert eta is not None and eta.check == "error-rate-increase" and eta.rate == 10 and eta.seconds == 120
    assert eta.text() == "error-rate-increase needs about 1200 more canary requests: at 10 req/s that is about 120s"
    far = CheckRecord(name="prediction-shift", query="q", more_requests=None, verdict="Inconclusive")
    eta = decision_eta(_record(requests, judged, far), a, grows=False)
    assert eta is not None and math.isinf(eta.seconds) and eta.check == "prediction-shift"
    # a check undecided for want of another kind of data is not traffic's to fix
    no_data = CheckRecord(name="refusal-ratio", query="q", verdict="Inconclusive", message="refusal-ratio: no data")
    assert decision_eta(_record(requests, no_data), a, grows=False) is None
    # the minRequests floor: reachable in one window at this rate, or only if the window grows
    few = CheckRecord(name=analysis.REQUESTS, query="q", samples=15, verdict="Inconclusive")
    eta = decision_eta(_record(few, window=10), a, grows=False)  # 1.5 req/s x 30 s = 45 < 50
    assert eta is not None and math.isinf(eta.seconds) and eta.more == 35
    eta = decision_eta(_record(few, window=10), a, grows=True)
    assert eta is not None and eta.seconds == pytest.approx(35 / 1.5)
