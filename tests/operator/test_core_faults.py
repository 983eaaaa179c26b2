"""Tick-by-tick scenarios of the pure core for what goes wrong while a canary runs (issue 11).

Canary pods dying while they carry weight, a server that refuses its artifact, a canary that is
never judged, a rolled-back revision asked for again by a new spec generation, and control
requests (annotations) that stay on the object because clearing them failed. One tick = 1 s.
"""

from __future__ import annotations

from modeldeploy_operator import reasons as r
from tests.operator.sim import Sim, cond, deployed, profile, spec_dict

BAD = profile(requests=812, errors=34)  # 4.2% 5xx
LOW = profile(requests=12)
DEAD = profile(requests=0)
REFUSAL = "modeldeploy-server: refused: sha256 of http://127.0.0.1:9/iris/2/model.joblib is 0f0f..., not abab..."


def at_weight(sim: Sim, weight: int) -> None:
    sim.run(30, until=lambda s: s.status.canary_weight == weight)
    assert sim.status.canary_weight == weight


# ------------------------------------------------------------------ C2: dead canary pods while routed
def test_a_routed_canary_whose_pods_all_die_during_a_pause_loses_its_weight_then_is_rolled_back() -> None:
    sim = deployed(steps=[{"setWeight": 50}, {"pause": {"seconds": 900}}])
    v2 = sim.set_version("2")
    at_weight(sim, 50)
    sim.run(5)
    sim.kill(v2)  # OOMKilled under real traffic: no ready endpoint behind <name>-canary
    sim.prom[v2] = DEAD  # dead pods count no requests: the analysis alone would say Inconclusive
    d = sim.tick()
    assert d.route is not None and d.route.canary_weight == 0  # the very next tick takes the traffic away
    assert sim.status.canary_revision == v2 and cond(sim, r.PROGRESSING) == ("True", r.CANARY_UNREADY)
    assert sim.desired[v2] >= 1  # its pods are still asked for: it may come back
    sim.run(90, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK
    assert cond(sim, r.DEGRADED) == ("True", r.PROGRESS_DEADLINE_EXCEEDED)
    assert "lost its ready pods" in (sim.status.message or "") and "CrashLoopBackOff" in (sim.status.message or "")
    assert sim.weights()[-3:] == [50, 0] or sim.weights()[-2:] == [50, 0]


def test_a_routed_canary_whose_pods_come_back_gets_its_weight_back_and_is_judged_again() -> None:
    sim = deployed(steps=[{"setWeight": 50}, {"pause": {"seconds": 30}}])
    v2 = sim.set_version("2")
    at_weight(sim, 50)
    sim.kill(v2)
    sim.run(3)
    assert sim.status.canary_weight == 0
    sim.broken.discard(v2)  # the pods are back (restarted and ready)
    sim.prom[v2] = profile()
    sim.run(3)
    assert sim.status.canary_weight == 50 and sim.status.canary_revision == v2
    sim.run(60, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2
    assert sim.weights() == [0, 50, 0, 50, 0]


def test_a_canary_that_is_never_judged_is_rolled_back_at_the_progress_deadline() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.prom[v2] = LOW  # 12 requests per window, minRequests 50: never Passed, never Failed
    sim.run(120, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK
    assert cond(sim, r.DEGRADED) == ("True", r.PROGRESS_DEADLINE_EXCEEDED)
    msg = sim.status.message or ""
    assert "not judged" in msg and "only 12 canary requests" in msg
    assert sim.status.failed_revision == v2 and sim.status.canary_weight == 0


# ------------------------------------------------------------------ refusal: exit code 2 with one line
def test_a_canary_whose_server_refuses_its_artifact_is_rolled_back_in_seconds_with_the_line() -> None:
    sim = deployed()
    v2 = sim.revision("2")
    sim.kill(v2, exit_code=2, message=REFUSAL)
    sim.set_version("2")
    started = sim.now
    sim.run(60, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK
    assert (sim.now - started).total_seconds() <= 3  # not progressDeadlineSeconds (60)
    assert cond(sim, r.DEGRADED) == ("True", r.ARTIFACT_REFUSED)
    assert REFUSAL in (sim.status.message or "")
    assert sim.status.failed_revision == v2 and sim.weights() == [0]


def test_a_first_deploy_whose_server_refuses_its_artifact_is_degraded_at_once_with_the_line() -> None:
    sim = Sim(spec_dict())
    sim.kill(sim.revision(), exit_code=2, message=REFUSAL)
    sim.run(3)
    assert sim.phase() == r.PHASE_DEGRADED
    assert cond(sim, r.DEGRADED) == ("True", r.ARTIFACT_REFUSED)
    assert REFUSAL in (sim.status.message or "")


def test_a_crash_that_is_not_a_refusal_still_waits_for_the_deadline() -> None:
    sim = deployed()
    v2 = sim.revision("2")
    sim.kill(v2, exit_code=1, message="Traceback ...")
    sim.set_version("2")
    sim.run(30)
    assert sim.phase() == r.PHASE_PROGRESSING  # a crash may be transient: it gets progressDeadlineSeconds


# ------------------------------------------------------------------ H3: failedRevision and new generations
def rolled_back(sim: Sim) -> str:
    v2 = sim.set_version("2")
    sim.prom[v2] = BAD
    sim.run(60, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    assert sim.phase() == r.PHASE_ROLLED_BACK and sim.status.failed_revision == v2
    return v2


def test_reapplying_a_rolled_back_revision_in_a_new_generation_starts_its_canary_again() -> None:
    sim = deployed()
    v2 = rolled_back(sim)
    sim.set_version("1")  # on-call reverts the commit
    sim.run(3)
    assert sim.phase() == r.PHASE_HEALTHY
    sim.prom[v2] = profile()  # the downstream outage that made v2 look bad is over
    sim.set_version("2")  # the team re-applies v2: a new generation
    sim.tick()
    assert sim.status.canary_revision == v2 and sim.phase() == r.PHASE_PROGRESSING
    sim.run(60, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2 and sim.phase() == r.PHASE_HEALTHY


def test_superseding_back_to_a_rolled_back_revision_starts_it_again() -> None:
    sim = deployed()
    v2 = rolled_back(sim)
    v3 = sim.set_version("3")
    sim.run(5)
    assert sim.status.canary_revision == v3
    sim.prom[v2] = profile()
    sim.set_version("2")
    sim.tick()
    assert sim.status.canary_revision == v2


def test_the_same_generation_never_retries_a_rolled_back_revision() -> None:
    sim = deployed()
    rolled_back(sim)
    sim.run(100)  # GitOps re-syncs of an unchanged spec do not bump the generation
    assert sim.phase() == r.PHASE_ROLLED_BACK and sim.reasons().count(r.CANARY_STARTED) == 1


# ------------------------------------------------------------------ control requests applied once
def test_a_retry_whose_annotation_could_not_be_cleared_is_applied_once() -> None:
    sim = deployed()
    v2 = rolled_back(sim)
    sim.clear_fails = True  # every annotation-clearing write fails from now on
    sim.annotations[r.ANNOTATION_RETRY] = "2026-11-21T13:05:00Z"
    sim.run(60, until=lambda s: s.status.canary_revision == v2)
    sim.run(60, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)  # still BAD: rolled back again
    assert sim.phase() == r.PHASE_ROLLED_BACK
    sim.run(30)
    assert sim.reasons().count(r.RETRY_REQUESTED) == 1 and sim.reasons().count(r.CANARY_STARTED) == 2
    sim.annotations[r.ANNOTATION_RETRY] = "2026-11-21T13:09:00Z"  # a new request: a new value
    sim.run(3)
    assert sim.reasons().count(r.RETRY_REQUESTED) == 2 and sim.status.canary_revision == v2


def test_an_abort_that_stays_on_the_object_does_not_abort_the_next_canary() -> None:
    sim = deployed()
    sim.set_version("2")
    at_weight(sim, 10)
    sim.clear_fails = True
    sim.annotations[r.ANNOTATION_ABORT] = "2026-11-21T13:01:00Z"
    sim.tick()
    assert sim.phase() == r.PHASE_ABORTED
    v3 = sim.set_version("3")
    sim.run(60, until=lambda s: s.status.stable_revision == v3)
    assert sim.status.stable_revision == v3 and sim.reasons().count(r.ABORTED) == 1


def test_a_request_that_does_nothing_says_so_once() -> None:
    sim = deployed()
    sim.annotations[r.ANNOTATION_PROMOTE] = "2026-11-21T13:01:00Z"
    sim.tick()
    assert r.ANNOTATION_PROMOTE not in sim.annotations
    ignored = [m for (reason, m) in sim.events() if reason == r.REQUEST_IGNORED]
    assert ignored == ["modeldeploy.io/promote ignored: no canary is running"]


# ------------------------------------------------------------------ M7: a lost status
def test_a_lost_status_keeps_the_serving_revision_and_canaries_the_desired_one() -> None:
    from modeldeploy_operator.api import ModelDeploymentStatus

    sim = deployed()
    v1 = sim.status.stable_revision
    v2 = rolled_back(sim)
    sim.status = ModelDeploymentStatus()  # a restore without status, or `kubectl edit --subresource=status`
    d = sim.tick()
    assert sim.status.stable_revision == v1 and sim.desired[v1] == 2  # not pruned, still serving
    stable_svc = next(s for s in d.services if s["metadata"]["name"] == "iris-stable")
    assert stable_svc["spec"]["selector"]["modeldeploy.io/revision"] == v1
    assert sim.status.canary_revision == v2  # the spec's revision gets a canary, not stable
    assert r.STABLE_ADOPTED in sim.reasons()


# ------------------------------------------------------------------ M5, M6: drain before removing
def canary_selector(d: object) -> str:
    svc = next(s for s in d.services if s["metadata"]["name"] == "iris-canary")  # type: ignore[attr-defined]
    return str(svc["spec"]["selector"]["modeldeploy.io/revision"])


def test_superseding_a_weighted_canary_drains_it_before_pointing_its_service_elsewhere() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.run(22)
    assert sim.status.canary_revision == v2 and sim.status.canary_weight == 50
    v3 = sim.set_version("3")
    d = sim.tick()
    assert d.route is not None and d.route.canary_weight == 0
    # the gateway may still send 50% to <name>-canary for seconds: it keeps v2's ready pods
    assert canary_selector(d) == v2 and sim.desired.get(v2, 0) >= 1
    sim.run(60, until=lambda s: s.status.canary_weight == 10)
    assert canary_selector(sim.decisions[-1]) == v3
    sim.run(15)
    assert v2 not in sim.desired  # gone once drained


def test_a_rollback_takes_the_weight_at_once_and_the_pods_after_the_drain_delay() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.run(22)
    assert sim.status.canary_weight == 50
    sim.prom[v2] = profile(requests=812, errors=34)
    sim.run(30, until=lambda s: s.phase() == r.PHASE_ROLLED_BACK)
    d = sim.decisions[-1]
    assert d.route is not None and d.route.canary_weight == 0
    assert sim.desired[v2] >= 1 and canary_selector(d) == v2  # still answering what is in flight
    sim.run(11)
    assert sim.desired[v2] == 0


def test_server_pods_drain_before_they_stop() -> None:
    from modeldeploy_operator.api import parse_spec
    from modeldeploy_operator.children import pod_template

    pod = pod_template("iris", parse_spec(spec_dict()), "abc", "img")
    (container,) = pod["spec"]["containers"]
    assert container["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    assert pod["spec"]["terminationGracePeriodSeconds"] == 35


# ------------------------------------------------------------------ L1: spec.paused holds promotion too
def test_spec_paused_holds_a_canary_that_reached_promotion() -> None:
    sim = deployed(steps=[{"setWeight": 50}, {"pause": {}}])
    v2 = sim.set_version("2")
    at_weight(sim, 50)
    sim.spec = {**sim.spec, "paused": True}
    sim.annotations[r.ANNOTATION_PROMOTE] = "2026-11-21T13:01:00Z"  # promotion asked while paused
    sim.run(30)
    assert sim.status.stable_revision != v2 and sim.phase() == r.PHASE_PAUSED
    sim.spec = {**sim.spec, "paused": False}
    sim.run(30, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2


# ------------------------------------------------------------------ M11: a cap on concurrent canaries
def test_a_canary_waits_for_a_slot_when_the_operator_caps_concurrent_canaries() -> None:
    sim = deployed()
    v2 = sim.set_version("2")
    sim.may_start_canary = False  # the operator's cap is reached by other ModelDeployments
    sim.run(10)
    assert sim.status.canary_revision is None and sim.phase() == r.PHASE_PROGRESSING
    assert cond(sim, r.PROGRESSING) == ("True", r.CANARY_QUEUED)
    sim.may_start_canary = True
    sim.run(60, until=lambda s: s.status.stable_revision == v2)
    assert sim.status.stable_revision == v2


def test_the_canary_gate_admits_up_to_the_cap_and_nothing_in_the_first_period() -> None:
    from modeldeploy_operator.handlers import CanaryGate

    now = [0.0]
    gate = CanaryGate(cap=2, warmup_seconds=5, clock=lambda: now[0])
    assert not gate.may_start(("ml", "a"))  # right after a restart: canaries in progress not known yet
    now[0] = 6.0
    assert gate.may_start(("ml", "a")) and gate.may_start(("ml", "b"))
    assert not gate.may_start(("ml", "c"))
    gate.done(("ml", "a"), running=False)  # a's canary was promoted
    assert gate.may_start(("ml", "c"))
    gate.done(("ml", "b"), running=True)
    assert gate.may_start(("ml", "b"))  # a running canary always continues
    assert CanaryGate(cap=0, warmup_seconds=5, clock=lambda: 0.0).may_start(("ml", "x"))  # no cap


def test_a_timed_pause_writes_no_new_status_every_tick() -> None:
    # L8: a countdown in the message made every tick of a pause a status write
    sim = deployed(steps=[{"setWeight": 50}, {"pause": {"seconds": 600}}], analysis={"intervalSeconds": 60})
    sim.set_version("2")
    at_weight(sim, 50)
    sim.run(2)
    before = sim.status.model_dump()
    sim.run(20)  # no check due (interval 60 s), nothing happens: the same status
    assert sim.status.model_dump() == before, sim.status.message


def test_pods_of_a_revision_this_object_does_not_own_are_never_adopted() -> None:
    # a ModelDeployment deleted and created again under the same name: the old one's pods are
    # still there until garbage collection, but they are not this object's to serve
    from modeldeploy_operator.api import ModelDeploymentStatus, parse_spec
    from modeldeploy_operator.core import decide
    from modeldeploy_operator.model import Config, Meta, Observed, RevisionState

    spec = parse_spec(spec_dict())
    seen = {"0123456789": RevisionState(ready_replicas=2)}
    meta, config, now = Meta("iris", "ml", "uid-2", 1), Config(), Sim(spec_dict()).now
    d = decide(spec, ModelDeploymentStatus(), Observed(revisions=seen, owned_revisions=frozenset()), now,
               meta=meta, config=config)  # fmt: skip
    assert d.status.stable_revision != "0123456789" and r.STABLE_ADOPTED not in [e.reason for e in d.events]
    owned = Observed(revisions=seen, owned_revisions=frozenset({"0123456789"}))
    assert decide(spec, ModelDeploymentStatus(), owned, now, meta=meta, config=config).status.stable_revision == (
        "0123456789"
    )
