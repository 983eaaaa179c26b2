"""Tick-by-tick scenarios of the pure core against a fake world (one tick = one second)."""

from __future__ import annotations

import json

import pytest

from modeldeploy_operator import reasons as r
from tests.operator.sim import Sim, cond, deployed, profile, spec_dict

BAD = profile(requests=812, errors=34)  # 4.2% 5xx
LOW = profile(requests=12)
DOWN = profile(fail="ConnectionError talking to http://127.0.0.1:9090: connection refused")


def test_first_deploy_goes_straight_to_stable() -> None:
    sim = Sim(spec_dict())
    sim.tick()
    assert sim.phase() == r.PHASE_DEPLOYING and sim.status.canary_revision is None
    assert cond(sim, r.READY) == ("False", r.STABLE_UNAVAILABLE)
    sim.run(5, until=lambda s: s.phase() == r.PHASE_HEALTHY)
    assert sim.status.stable_version == "1" and cond(sim, r.READY) == ("True", r.STABLE_AVAILABLE)
    assert [h.outcome for h in sim.status.history] == ["Deployed"]
    assert sim.reasons() == [r.STABLE_DEPLOYING, r.STABLE_DEPLOYED]
    assert sim.weights() == [0]


def test_healthy_rollout_weight_sequence_to_promotion() -> None:
    sim = deployed()
    v1 = sim.status.stable_revision
    v2 = sim.set_version("2")
    sim.run(60, until=lambda s: s.status.stable_revision == v2)
    assert sim.weights() == [0, 10, 50, 0]
    assert sim.phase() == r.PHASE_HEALTHY and sim.status.stable_version == "2"
    assert sim.status.scale_down_revision == v1 and sim.status.scale_down_at is not None
    assert [h.outcome for h in sim.status.history] == ["Deployed", "Promoted"]
    assert cond(sim, r.PROGRESSING) == ("False", r.ROLLOUT_COMPLETE)
    assert sim.desired[v1] == 2  # the old revision keeps running for the scale-down delay ...
    sim.run(11)
    assert sim.desired[v1] == 0 and sim.desired[v2] == 2  # ... then it is scaled to 0
    assert r.OLD_REVISION_SCALED_DOWN in sim.reasons()
    # every weight was judged before it was left: a Passed analysis in each pause step
    passed_steps = {p.step for p in sim.plans}
    assert passed_steps == {1, 3}
    order = [x for x in sim.reasons() if x in (r.CANARY_STARTED, r.CANARY_READY, r.WEIGHT_CHANGED, r.PROMOTED)]
    assert order == [r.CANARY_STARTED, r.CANARY_READY, r.WEIGHT_CHANGED, r.WEIGHT_CHANGED, r.PROMOTED]


def test_the_stable_revision_is_never_touched_during_a_canary() -> None:
    sim = deployed()
    v1 = sim.status.stable_revision
    assert v1 is not None
    sim.set_version("2")
    for _ in range(40):
        d = sim.tick()
        if sim.status.canary_revision is None:
            break
        assert sim.desired[v1] == 2
        stable_svc = next(s for s in d.services if s["metadata"]["name"] == "iris-stable")
        assert stable_svc["spec"]["selector"]["modeldeploy.io/revision"] == v1


def test_rollback_after_failure_limit() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.prom[v2] = BAD
    sim.run(60, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK
    # failureLimit 1: the second failed check rolls back, in the same tick weight goes to 0
    fails = [x for x in sim.reasons() if x == r.ANALYSIS_FAILED]
    assert len(fails) == 2
    last = sim.decisions[-1]
    assert last.route is not None and last.route.canary_weight == 0
    sim.run(10)  # its pods drain for drainSeconds (test_core_faults), then go to 0
    assert sim.desired[v2] == 0
    assert sim.status.failed_revision == v2
    assert cond(sim, r.DEGRADED) == ("True", r.ANALYSIS_FAILED)
    # the confirmation came two scrapes after the first failure, over only the data since it
    assert [p.window_seconds for p in sim.plans] == [5, 4]
    assert "canary error rate 4.19% > 1% over 4s, n=812" in (sim.status.message or "")
    assert sim.status.history[-1].outcome == "RolledBack"
    # not retried while the spec still asks for it
    sim.run(20)
    assert sim.status.canary_revision is None and sim.reasons().count(r.CANARY_STARTED) == 1
    assert sim.phase() == r.PHASE_ROLLED_BACK


def test_retry_annotation_runs_a_failed_revision_again() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.prom[v2] = BAD
    sim.run(60, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    sim.prom[v2] = profile()
    sim.annotations[r.ANNOTATION_RETRY] = "now"
    sim.tick()
    assert r.ANNOTATION_RETRY not in sim.annotations
    assert sim.status.canary_revision == v2 and sim.status.failed_revision is None
    assert cond(sim, r.DEGRADED)[0] == "False"
    sim.run(60, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2


def test_inconclusive_on_low_traffic_holds_and_never_fails_within_the_progress_deadline() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.prom[v2] = LOW
    sim.run(60)  # (beyond progressDeadlineSeconds it is rolled back: test_core_faults)
    assert sim.status.canary_revision == v2 and sim.status.canary_weight == 10 and sim.status.current_step == 1
    assert sim.status.last_analysis is not None and sim.status.last_analysis.verdict == "Inconclusive"
    assert "only 12 canary requests over 5s (< minRequests 50)" in sim.status.last_analysis.message
    assert cond(sim, r.PROGRESSING) == ("True", r.WAITING_FOR_ANALYSIS)
    assert r.ANALYSIS_FAILED not in sim.reasons() and r.ROLLED_BACK not in sim.reasons()
    assert sim.reasons().count(r.ANALYSIS_INCONCLUSIVE) == 1  # one Event for the quiet spell, not one per check
    # it keeps looking every two scrapes, over the step's window capped at the interval
    assert {p.window_seconds for p in sim.plans[-5:]} == {5} and 12 <= len(sim.plans) <= 16
    sim.prom[v2] = profile()  # traffic arrives: it continues
    sim.run(60, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2


def test_prometheus_outage_holds_then_continues() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.run(5)
    sim.prom[v2] = DOWN
    sim.run(40)  # within progressDeadlineSeconds (60)
    assert sim.status.canary_revision == v2
    assert cond(sim, r.PROGRESSING) == ("True", r.PROMETHEUS_UNAVAILABLE)
    assert sim.status.prometheus_unavailable_since is not None
    assert sim.reasons().count(r.PROMETHEUS_UNAVAILABLE) == 1
    assert r.ROLLED_BACK not in sim.reasons()
    held = sim.status.current_step
    sim.prom[v2] = profile()
    sim.run(60, until=lambda s: s.status.stable_revision == v2)
    assert held is not None and sim.status.stable_revision == v2
    assert r.PROMETHEUS_AVAILABLE in sim.reasons()


def test_prometheus_outage_longer_than_the_progress_deadline_rolls_back() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.run(5)
    sim.prom[v2] = DOWN
    sim.run(120, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK
    assert cond(sim, r.DEGRADED) == ("True", r.PROMETHEUS_UNAVAILABLE)
    assert "Prometheus unavailable for" in sim.status.message and "connection refused" in sim.status.message


def test_progress_deadline_when_the_canary_never_gets_ready() -> None:
    sim = deployed()
    v2 = sim.revision("2")
    sim.broken.add(v2)
    sim.set_version("2")
    sim.run(30)
    assert sim.phase() == r.PHASE_PROGRESSING and sim.status.canary_weight == 0
    assert cond(sim, r.PROGRESSING) == ("True", r.CANARY_WAITING_FOR_READY)
    sim.run(40, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK
    assert cond(sim, r.DEGRADED) == ("True", r.PROGRESS_DEADLINE_EXCEEDED)
    msg = sim.status.message or ""
    assert "not ready after 61s" in msg and "CrashLoopBackOff" in msg and "restarts 3" in msg
    assert sim.weights() == [0]  # it never carried traffic


def test_manual_promote_of_an_indefinite_pause() -> None:
    sim = deployed(steps=[{"setWeight": 20}, {"pause": {}}])
    v2 = sim.set_version("2")
    sim.run(60)
    assert sim.phase() == r.PHASE_PAUSED and sim.status.canary_weight == 20
    assert cond(sim, r.PROGRESSING) == ("True", r.STEP_PAUSED)
    assert sim.status.stable_revision != v2
    sim.annotations[r.ANNOTATION_PROMOTE] = "yes"
    sim.run(10, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2 and r.ANNOTATION_PROMOTE not in sim.annotations
    assert sim.status.history[-1].reason == "by annotation"
    assert r.PROMOTE_REQUESTED in sim.reasons()


def test_analysis_keeps_running_during_an_indefinite_pause() -> None:
    sim = deployed(steps=[{"setWeight": 20}, {"pause": {}}])
    v2 = sim.set_version("2")
    sim.run(20)
    sim.prom[v2] = BAD
    sim.run(30, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK


def test_abort() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.run(15, until=lambda s: s.status.canary_weight == 10)
    assert sim.status.canary_weight == 10
    sim.annotations[r.ANNOTATION_ABORT] = "1"
    d = sim.tick()
    assert d.route is not None and d.route.canary_weight == 0
    sim.run(10)  # drained, then scaled to 0
    assert sim.desired[v2] == 0
    assert sim.phase() == r.PHASE_ABORTED and cond(sim, r.DEGRADED) == ("True", r.ABORTED)
    assert sim.status.history[-1].outcome == "Aborted" and r.ANNOTATION_ABORT not in sim.annotations
    sim.run(10)
    assert sim.status.canary_revision is None  # not restarted by itself


def test_a_new_revision_supersedes_the_canary() -> None:
    sim = deployed()
    v1 = sim.status.stable_revision
    v2 = sim.set_version("2")
    sim.run(22)
    assert sim.status.canary_revision == v2 and sim.status.canary_weight == 50
    v3 = sim.set_version("3")
    d = sim.tick()
    assert sim.status.canary_revision == v3 and sim.status.current_step is None
    assert d.route is not None and d.route.canary_weight == 0  # no weight until v3 is ready
    assert sim.status.stable_revision == v1 and sim.desired[v1] == 2
    sim.run(10)
    assert v2 not in sim.desired  # the superseded canary's Deployment goes away once drained
    assert sim.status.history[-1].outcome == "Superseded"
    sim.run(60, until=lambda s: s.status.stable_revision == v3)
    assert sim.weights() == [0, 10, 50, 0, 10, 50, 0]


def test_reverting_the_spec_to_stable_cancels_the_canary() -> None:
    sim = deployed()
    v1 = sim.status.stable_revision
    sim.set_version("2")
    sim.run(15)
    sim.set_version("1")
    sim.tick()
    assert sim.status.canary_revision is None and sim.status.stable_revision == v1
    assert sim.phase() == r.PHASE_HEALTHY and sim.status.history[-1].outcome == "Cancelled"


def test_spec_paused_holds_the_steps() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.run(12)
    sim.spec = {**sim.spec, "paused": True}
    sim.run(60)
    assert sim.phase() == r.PHASE_PAUSED and sim.status.canary_revision == v2 and sim.status.current_step == 1
    sim.spec = {**sim.spec, "paused": False}
    sim.run(60, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2


def test_replica_ratio_canary_without_a_router() -> None:
    sim = Sim(spec_dict(trafficRouting=None))
    sim.spec["replicas"] = 9
    sim.run(10, until=lambda s: s.phase() == r.PHASE_HEALTHY)
    v1 = sim.status.stable_revision
    v2 = sim.set_version("2")
    seen: list[tuple[int, int | None]] = []
    for _ in range(60):
        sim.tick()
        if sim.status.canary_revision:
            seen.append((sim.desired.get(v2, 0), sim.status.canary_weight))
        assert sim.decisions[-1].route is None
        if sim.status.stable_revision == v2:
            break
        assert sim.desired[v1] == 9
    assert (1, 10) in seen and (9, 50) in seen  # 1 pod beside 9 = 10%; 9 beside 9 = 50%
    assert sim.status.stable_revision == v2


def test_custom_metric_failure_rolls_back_with_its_measurement() -> None:
    metrics = [{"name": "refusal-rate", "query": 'sum(rate(x{revision="{{revision}}"}[{{window}}]))', "max": 0.2}]
    sim = deployed(analysis={"intervalSeconds": 5, "minRequests": 50, "failureLimit": 0, "metrics": metrics})
    v2 = sim.set_version("2")

    def answer(plan):  # type: ignore[no-untyped-def]
        out = profile()(plan)
        q = next(q for q in plan.queries if q.name == "refusal-rate")
        assert f'revision="{v2}"' in q.promql and f"[{plan.window_seconds}s]" in q.promql
        out["refusal-rate"] = out["requests"].__class__(value=0.5)
        return out

    sim.prom[v2] = answer
    sim.run(30, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert "refusal-rate 0.5 outside [<= 0.2] over 5s" in (sim.status.message or "")


def test_status_lasttransitiontime_moves_only_when_status_changes() -> None:
    sim = deployed()
    before = {c.type: c.last_transition_time for c in sim.status.conditions}
    sim.run(10)
    after = {c.type: c.last_transition_time for c in sim.status.conditions}
    assert before == after
    sim.set_version("2")
    sim.tick()
    progressing = next(c for c in sim.status.conditions if c.type == r.PROGRESSING)
    assert progressing.status == "True" and progressing.last_transition_time != before[r.PROGRESSING]


def test_history_is_bounded() -> None:
    sim = deployed()
    for v in range(2, 16):
        sim.set_version(str(v))
        sim.tick()
    assert len(sim.status.history) == 10
    assert sim.status.history[-1].outcome == "Superseded"


SCENARIOS = {
    "healthy": lambda s: None,
    "rollback": lambda s: s.prom.__setitem__(s.revision("2"), BAD),
    "inconclusive": lambda s: s.prom.__setitem__(s.revision("2"), LOW),
    "outage": lambda s: s.prom.__setitem__(s.revision("2"), DOWN),
    "not-ready": lambda s: s.broken.add(s.revision("2")),
}


@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_a_restarted_operator_continues_identically(scenario: str) -> None:
    """Every tick's status round-trips through JSON (all a new process has) and nothing changes."""
    runs = []
    for roundtrip in (False, True):
        sim = Sim(spec_dict(), roundtrip=roundtrip)
        sim.run(5)
        SCENARIOS[scenario](sim)
        sim.set_version("2")
        sim.run(40)
        sim.annotations[r.ANNOTATION_RETRY] = "x"
        sim.set_version("3")
        sim.run(40)
        runs.append(sim)
    plain, restarted = runs
    assert plain.trace == restarted.trace
    assert plain.events() == restarted.events()
    assert [d.route for d in plain.decisions] == [d.route for d in restarted.decisions]
    assert json.dumps(plain.status.model_dump(mode="json")) == json.dumps(restarted.status.model_dump(mode="json"))
    phases = {p for _, p, _, _ in plain.trace}
    assert len(phases) >= 3, phases


def test_an_operator_down_for_a_while_resumes_from_status() -> None:
    """No ticks for 30 s in the middle of a pause: the next tick picks up where status says."""
    sim = deployed(steps=[{"setWeight": 10}, {"pause": {"seconds": 60}}, {"setWeight": 50}])
    v2 = sim.set_version("2")
    sim.run(15)
    assert sim.status.current_step == 1
    saved = json.loads(json.dumps(sim.status.model_dump(by_alias=True, mode="json")))
    fresh = Sim(sim.spec, roundtrip=True)
    fresh.generation, fresh.desired, fresh.ready = sim.generation, dict(sim.desired), dict(sim.ready)
    fresh.status = type(sim.status).model_validate(saved)
    from datetime import timedelta

    fresh.now = sim.now + timedelta(seconds=30)
    fresh.run(60, until=lambda s: s.status.stable_revision == v2)
    assert fresh.status.stable_revision == v2
    assert fresh.weights() == [10, 50, 0]


def test_one_failed_check_that_is_not_confirmed_does_not_roll_back() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    answers = iter([BAD])

    def flaky(plan):  # type: ignore[no-untyped-def]
        return next(answers, profile())(plan)

    sim.prom[v2] = flaky
    sim.run(60, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2 and sim.reasons().count(r.ANALYSIS_FAILED) == 1
    assert sim.status.history[-1].outcome == "Promoted"


def test_a_first_deploy_that_never_gets_ready_is_degraded_and_a_fixed_spec_replaces_it() -> None:
    sim = Sim(spec_dict())
    sim.broken.add(sim.revision())
    sim.run(62)
    assert sim.phase() == r.PHASE_DEGRADED
    assert cond(sim, r.DEGRADED) == ("True", r.PROGRESS_DEADLINE_EXCEEDED)
    assert "CrashLoopBackOff" in next(c.message for c in sim.status.conditions if c.type == r.DEGRADED)
    assert sim.reasons().count(r.PROGRESS_DEADLINE_EXCEEDED) == 1
    v2 = sim.set_version("2")  # nothing was ever served: the fix replaces it directly, no canary
    sim.tick()
    assert sim.phase() == r.PHASE_DEPLOYING and cond(sim, r.DEGRADED)[0] == "False"
    sim.run(5, until=lambda s: s.phase() == r.PHASE_HEALTHY)
    assert sim.status.stable_revision == v2 and [h.outcome for h in sim.status.history] == ["Superseded", "Deployed"]


def test_an_invalid_spec_is_reported_once_and_touches_nothing() -> None:
    from modeldeploy_operator.core import invalid_spec
    from modeldeploy_operator.model import Meta

    sim = deployed()
    msg = "spec.rollout.steps[0].setWeight: Input should be less than or equal to 100 (got 150)"
    d1 = invalid_spec(sim.status, msg, meta=Meta("iris", "ml", "uid-1", 5), now=sim.now)
    assert d1.status.phase == r.PHASE_INVALID and not d1.apply_children and d1.status.observed_generation == 5
    assert [e.reason for e in d1.events] == [r.INVALID_SPEC] and d1.status.message == msg
    d2 = invalid_spec(d1.status, msg, meta=Meta("iris", "ml", "uid-1", 5), now=sim.now)
    assert d2.events == []
    assert d2.status.stable_revision == sim.status.stable_revision


def test_an_inconclusive_confirmation_keeps_confirming_fast_over_a_growing_window() -> None:
    sim = deployed(analysis={"intervalSeconds": 10, "minRequests": 50, "failureLimit": 1})
    v2 = sim.set_version("2")
    answers = iter([BAD, LOW, BAD])

    def sequence(plan):  # type: ignore[no-untyped-def]
        return next(answers)(plan)

    sim.prom[v2] = sequence
    sim.run(60, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK
    # first check over the step's 10 s; then every two scrapes over the data since the failure
    assert [p.window_seconds for p in sim.plans] == [10, 4, 8]
    assert sim.status.failed_check_at is None and sim.status.failed_checks is None
