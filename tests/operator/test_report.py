"""The last rung of a tick as pure functions (`report`): the derived status view and the desired
children are computed from a status, what was observed and a `Hold`, without a `Tick`."""

from __future__ import annotations

from datetime import UTC, datetime

from modeldeploy_operator import reasons as r
from modeldeploy_operator.api import ModelDeploymentStatus, parse_spec
from modeldeploy_operator.model import Meta, Observed, RevisionState, RouteWeights
from modeldeploy_operator.report import Hold, desired_children, status_view
from tests.operator.sim import spec_dict

NOW = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
META = Meta("iris", "ml", "uid-1", generation=3)
SPEC = parse_spec(spec_dict("2", steps=[{"setWeight": 20}, {"pause": {}}]))
READY = Observed(revisions={"s1": RevisionState(ready_replicas=2), "c2": RevisionState(ready_replicas=1)})


def _canary() -> ModelDeploymentStatus:
    return ModelDeploymentStatus(
        stable_revision="s1", stable_version="1", canary_revision="c2", canary_version="2",
        current_step=1, canary_weight=20, step_started_at="2026-12-04T11:59:00Z",
    )  # fmt: skip


def test_the_status_view_is_a_new_status_derived_from_the_old_one_and_the_hold() -> None:
    st = _canary()
    before = st.model_dump()
    waiting = Hold(r.STEP_PAUSED, "step 2/2 (pause until promoted)", paused=True)  # for a person
    paused = status_view(SPEC, st, READY, META, NOW, waiting, "c2")
    assert st.model_dump() == before  # the input is not changed
    assert paused.phase == r.PHASE_PAUSED and paused.message == "step 2/2 (pause until promoted)"
    assert paused.observed_generation == 3 and paused.canary_weight == 20
    assert [(c.type, c.status) for c in paused.conditions] == [("Ready", "True"), ("Progressing", "True"),
                                                                ("Degraded", "False")]  # fmt: skip
    # a timed pause, or nothing holding it: still progressing (a canary runs)
    timed = Hold(r.STEP_PAUSED, "step 2/2 (pause 60s)")
    assert status_view(SPEC, st, READY, META, NOW, timed, "c2").phase == r.PHASE_PROGRESSING
    assert status_view(SPEC, st, READY, META, NOW, Hold(), "c2").phase == r.PHASE_PROGRESSING
    # no canary, stable ready: Healthy, and the weight is 0 whatever the status said
    done = ModelDeploymentStatus(stable_revision="s1", stable_version="1", canary_weight=20)
    healthy = status_view(SPEC, done, READY, META, NOW, Hold(), "s1")
    assert healthy.phase == r.PHASE_HEALTHY and healthy.canary_weight == 0 and done.canary_weight == 20
    one_ready = Observed(revisions={"s1": RevisionState(ready_replicas=1)})
    short = status_view(SPEC, done, one_ready, META, NOW, Hold(), "s1")
    assert short.phase == r.PHASE_DEGRADED and short.message.startswith("1/2 pods of stable revision s1 ready")


def test_the_desired_children_follow_the_status_alone() -> None:
    kids = desired_children(SPEC, _canary(), READY, META, "c2", "modeldeploy:1", 1)
    assert [d["metadata"]["name"] for d in kids.deployments] == ["iris-c2"]  # only the desired revision in full
    assert kids.scales == {"iris-s1": 2} and kids.keep == []
    assert kids.route == RouteWeights("iris", "iris-stable", "iris-canary", 80, 20)
    assert sorted(s["metadata"]["name"] for s in kids.services) == ["iris", "iris-canary", "iris-stable"]
    # rolled back: the failed revision is scaled to 0, the route gives it nothing
    rolled = ModelDeploymentStatus(stable_revision="s1", stable_version="1", failed_revision="c2", canary_weight=0)
    back = desired_children(SPEC, rolled, READY, META, "c2", "modeldeploy:1", 0)
    assert back.deployments[0]["spec"]["replicas"] == 0 and back.scales == {"iris-s1": 2}
    assert back.route == RouteWeights("iris", "iris-stable", "iris-canary", 100, 0)
