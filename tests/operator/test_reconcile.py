"""Shell tests: the real kopf handler (`handlers.register` -> the `reconcile` timer) against a fake
API server with resourceVersions (`fake_cluster`). The defects of issue 11's C1, H1 and H2:
decisions made from kopf's stale cached body, a status write that fails, a child write that fails.
"""

from __future__ import annotations

import time
from typing import Any

import pytest

from modeldeploy_operator import metrics
from modeldeploy_operator import reasons as r
from tests.operator.fake_cluster import FakeCluster, FakeProm, Operator, api_error, sim_now
from tests.operator.sim import Sim, profile, spec_dict

BAD = profile(requests=812, errors=34)
LOW = profile(requests=12)


def paused_canary(**rollout: Any) -> tuple[Sim, FakeCluster]:
    """v1 stable, v2 canary at 50% in its pause step; the fake world continues the sim's."""
    rollout.setdefault("steps", [{"setWeight": 50}, {"pause": {}}])
    sim = Sim(spec_dict(**rollout), now=sim_now(), ready_after=0)
    sim.run(10, until=lambda s: s.phase() == r.PHASE_HEALTHY)
    sim.set_version("2")
    sim.run(20, until=lambda s: s.status.canary_weight == 50)
    assert sim.status.canary_weight == 50 and sim.status.current_step == 1
    return sim, FakeCluster(sim)


def test_a_promote_consumed_before_a_stale_tick_is_not_lost(monkeypatch: pytest.MonkeyPatch) -> None:
    sim, world = paused_canary()
    v2 = sim.status.canary_revision
    op = Operator(world, FakeProm(), monkeypatch)
    world.annotate(r.ANNOTATION_PROMOTE, "2026-12-01T00:00:00Z")
    before = world.snapshot()
    op.tick()  # consumes the promote
    # kopf's cache still holds the object as it was before that tick's status write (without
    # the annotation: kopf's metadata patch was seen, the status patch not yet)
    stale = {**before, "metadata": {**before["metadata"], "annotations": {}}}
    op.tick(stale)
    for _ in range(5):
        op.tick()
    assert world.status.get("stableRevision") == v2, world.status.get("message")
    assert op.reasons().count(r.PROMOTE_REQUESTED) == 1 and op.reasons().count(r.PROMOTED) == 1


def test_an_abort_is_not_undone_by_a_stale_tick(monkeypatch: pytest.MonkeyPatch) -> None:
    sim, world = paused_canary()
    op = Operator(world, FakeProm(), monkeypatch)
    world.annotate(r.ANNOTATION_ABORT, "2026-12-01T00:00:00Z")
    before = world.snapshot()
    op.tick()
    assert world.route_weight == 0 and world.status["phase"] == r.PHASE_ABORTED
    aborted_at = len(world.weights)
    op.tick({**before, "metadata": {**before["metadata"], "annotations": {}}})
    op.tick(before)  # a fully stale body, annotation included
    for _ in range(5):
        op.tick()
    assert world.weights[aborted_at:] == []  # never re-exposed
    assert world.status["phase"] == r.PHASE_ABORTED and world.status.get("canaryRevision") is None
    assert op.reasons().count(r.ABORTED) == 1  # one Event per decision
    assert r.ANNOTATION_ABORT not in world.obj["metadata"]["annotations"]


def test_the_handler_leaves_kopf_nothing_to_patch_and_survives_failed_status_writes(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # kopf's timer stops for good when kopf's own patch of the object fails (H1): the handler
    # must write status itself, and every failure must end as a normal return, tick after tick
    sim, world = paused_canary()
    op = Operator(world, FakeProm(), monkeypatch)
    world.annotate(r.ANNOTATION_PROMOTE, "2026-12-01T00:00:00Z")
    world.fail_status = [api_error(503, "Service Unavailable"), api_error(422, "Unprocessable Entity")]
    for _ in range(6):
        op.tick()
    assert all(p == {} for p in op.patches), op.patches[0]
    assert world.status.get("stableRevision") == sim.status.canary_revision
    assert op.reasons().count(r.PROMOTE_REQUESTED) == 1


def test_a_timed_out_or_refused_connection_is_a_failed_tick_not_a_dead_timer(monkeypatch: pytest.MonkeyPatch) -> None:
    # an API server too busy to answer within the timeout, or restarting (connection refused), raises
    # urllib3 errors, not ApiException: they escaped to kopf, which backs the timer off for 60 s
    from urllib3.exceptions import MaxRetryError, ReadTimeoutError

    sim, world = paused_canary()
    op = Operator(world, FakeProm(), monkeypatch)
    world.annotate(r.ANNOTATION_PROMOTE, "2026-12-01T00:00:00Z")
    world.fail_status = [
        ReadTimeoutError(None, "/apis", "Read timed out. (read timeout=10)"),  # type: ignore[arg-type]
        MaxRetryError(None, "/apis", ConnectionRefusedError(111, "Connection refused")),  # type: ignore[arg-type]
    ]
    for _ in range(6):
        op.tick()  # raises if an error escapes to kopf
    assert world.status.get("stableRevision") == sim.status.canary_revision
    assert op.reasons().count(r.PROMOTE_REQUESTED) == 1


def test_a_rollback_whose_child_write_fails_stays_a_rollback(monkeypatch: pytest.MonkeyPatch) -> None:
    sim, world = paused_canary(
        steps=[{"setWeight": 50}, {"pause": {"seconds": 3600}}],
        analysis={"intervalSeconds": 5, "minRequests": 50, "failureLimit": 0, "maxErrorRate": 0.01},
    )
    v2 = sim.status.canary_revision
    prom = FakeProm(BAD)
    op = Operator(world, prom, monkeypatch)
    world.fail_apply = [api_error(403)]  # the canary's scale-down is refused by an admission webhook
    op.tick()
    assert world.route_weight == 0
    prom.profile = LOW  # the next query sees little data (the weight has been 0 since)
    for _ in range(5):
        op.tick()
    assert world.weights[-1] == 0 and world.weights.count(50) == 1, world.weights
    assert world.status.get("failedRevision") == v2 and world.desired[v2] == 0


def test_a_conflicting_writer_costs_a_tick_not_a_decision(monkeypatch: pytest.MonkeyPatch) -> None:
    sim, world = paused_canary()
    op = Operator(world, FakeProm(), monkeypatch)
    world.annotate(r.ANNOTATION_PROMOTE, "2026-12-01T00:00:00Z")
    world.fail_status = [api_error(409)]  # someone else wrote between our read and our write
    op.tick()
    assert op.reasons() == [] and r.ANNOTATION_PROMOTE in world.obj["metadata"]["annotations"]
    for _ in range(4):
        op.tick()
    assert world.status.get("stableRevision") == sim.status.canary_revision
    assert op.reasons().count(r.PROMOTE_REQUESTED) == 1


def test_only_changed_status_fields_are_sent() -> None:
    from modeldeploy_operator.api import ModelDeploymentStatus
    from modeldeploy_operator.handlers import status_changes

    old = {"phase": "Healthy", "stableRevision": "abc", "canaryRevision": "def", "unknownToUs": 1,
           "lastAnalysis": {"time": "t", "revision": "def", "verdict": "Error",
                            "checks": [{"name": "requests", "query": "q", "threshold": "", "verdict": "Error",
                                        "message": ""}], "message": ""}}  # fmt: skip
    new = ModelDeploymentStatus.model_validate({**old, "phase": "Progressing", "canaryRevision": None})
    assert status_changes(old, new) == {"phase": "Progressing", "canaryRevision": None}
    assert status_changes(new.model_dump(by_alias=True, mode="json", exclude_none=True), new) == {}


def test_health_names_the_objects_whose_ticks_stopped_completing() -> None:
    h = metrics.Health()
    assert h.problem() == "starting: kopf's startup has not finished"
    h.started = True
    assert h.problem() is None
    h.tick("ml", "iris")
    h.tick("ml", "reco")
    assert h.problem() is None
    h.last[("ml", "iris")] = time.time() - 100
    h.failed("ml", "iris", "error: 422 Unprocessable Entity")
    assert h.problem() == ("no completed reconcile tick for over 30s: ml/iris (100s: error: 422 Unprocessable Entity)")
    h.tick("ml", "iris")
    assert h.problem() is None
    h.forget("ml", "reco")
    assert ("ml", "reco") not in h.last


def test_a_child_the_api_server_refuses_is_said_once_as_an_event(monkeypatch: pytest.MonkeyPatch) -> None:
    # issue 11 M10: a refused child (a 422 for an invalid quantity, another owner's Service) used
    # to leave an empty status and no Event; status is now written first, and the refusal is said
    sim, world = paused_canary()
    op = Operator(world, FakeProm(), monkeypatch)
    refused = api_error(422, "Unprocessable Entity")
    refused.body = '{"message":"Deployment.apps \\"iris-abc\\" is invalid: spec.template...: quantities must match"}'
    world.fail_apply = [refused, refused, refused]
    for _ in range(4):
        op.tick()
    failed = [e for e in world.events if e.reason == r.APPLY_FAILED]
    assert len(failed) == 1 and "422" in failed[0].message and "quantities must match" in failed[0].message


def test_the_operator_owns_its_finalizer_and_migrates_kopfs_default(monkeypatch: pytest.MonkeyPatch) -> None:
    # aesthetics review, change 4: `modeldeploy.io/finalizer`, not kopf's generic marker; objects
    # created by an older operator carry the old one, which would block their deletion forever
    from modeldeploy_operator import FINALIZER
    from modeldeploy_operator.kube import LEGACY_FINALIZER

    sim, world = paused_canary()
    world.obj["metadata"]["finalizers"] = [LEGACY_FINALIZER, FINALIZER]  # kopf added ours beside the old
    op = Operator(world, FakeProm(), monkeypatch)
    op.tick()
    assert world.obj["metadata"]["finalizers"] == [FINALIZER]
    world.obj["metadata"]["finalizers"] = [LEGACY_FINALIZER]  # ours not added yet: keep the old one
    op.tick()
    assert world.obj["metadata"]["finalizers"] == [LEGACY_FINALIZER]
    world.obj["metadata"]["finalizers"] = [LEGACY_FINALIZER, FINALIZER]
    world.obj["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"  # deleted before the migration
    op.tick()
    assert world.obj["metadata"]["finalizers"] == [FINALIZER]
    # being deleted, the finalizer guards nothing: released (a namespaced kopf stops watching a
    # namespace being deleted and would never drop it; the namespace would stay Terminating)
    op.tick()
    assert world.obj["metadata"]["finalizers"] == []


def test_a_shard_drops_the_unsharded_finalizer_once_kopf_holds_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    # an object first served by an unsharded operator, then by a shard (its own finalizer name):
    # the unsharded name is held by no running operator and would block the object's deletion
    from modeldeploy_operator import FINALIZER

    sim, world = paused_canary()
    world.finalizer = FINALIZER + "-0123abcd"  # the shard's (OperatorSettings.finalizer)
    world.obj["metadata"]["finalizers"] = [FINALIZER, "example.com/keep"]  # kopf has not added the shard's yet
    op = Operator(world, FakeProm(), monkeypatch)
    op.tick()
    assert world.obj["metadata"]["finalizers"] == [FINALIZER, "example.com/keep"]
    world.obj["metadata"]["finalizers"] = [FINALIZER, "example.com/keep", world.finalizer]
    op.tick()
    assert world.obj["metadata"]["finalizers"] == ["example.com/keep", world.finalizer]
    world.obj["metadata"]["deletionTimestamp"] = "2026-12-02T00:00:00Z"
    op.tick()  # being deleted: the shard releases its own, and leaves another controller's
    assert world.obj["metadata"]["finalizers"] == ["example.com/keep"]
