"""After promotion: the stable revision's inputs against its reference profile (`InputDrift`).

The decision is pure over (feature, bin) counts shaped like Prometheus' answers: a feature whose
inputs moved out of their training bins sets InputDrift=True (naming it, with its distance, the
window and n) only after two consecutive drifted checks; a one-off burst does not; recovery takes two
quiet checks; each transition posts one Event. `DriftWatch` is driven with a fake Prometheus.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from modeldeploy_operator import driftwatch as dw
from modeldeploy_operator import metrics as m
from modeldeploy_operator.analysis import QueryResult
from modeldeploy_operator.api import ModelDeploymentStatus, parse_spec
from modeldeploy_operator.conditions import get_condition
from modeldeploy_operator.model import Decision, Meta
from modeldeploy_operator.settings import OperatorSettings
from tests.operator.fake_cluster import FakeCluster, Operator, sim_now
from tests.operator.fake_cluster import FakeProm as FakeAnalysisProm
from tests.operator.sim import Sim, spec_dict

T0 = datetime(2026, 12, 2, 6, 0, 0, tzinfo=UTC)
SHARES = {"GR": [0.25] * 4, "RHOB": [0.25] * 4}
REFERENCE = {(f, str(b)): v for f, vs in SHARES.items() for b, v in enumerate(vs)}


def counts(gr: list[float], rhob: list[float] | None = None) -> dict[tuple[str, str], float]:
    rhob = rhob if rhob is not None else [100.0] * 4
    return {(f, str(b)): v for f, vs in (("GR", gr), ("RHOB", rhob)) for b, v in enumerate(vs)}


TRAINING = counts([100.0] * 4)  # 400 rows like training
SHIFTED = counts([0.0, 0.0, 40.0, 360.0])  # GR's inputs moved to its top bins: distance 0.65
EMPTY: dict[tuple[str, str], float] = {}


def read(inputs: dict[tuple[str, str], float], revision: str = "r1", threshold: float = 0.2) -> dw.Reading:
    return dw.reading(revision, 600, threshold, 0.95, inputs, REFERENCE)


def drive(*windows: dict[tuple[str, str], float]) -> tuple[list[Any], list[list[Any]]]:
    """Checks one after another: the conditions and the Events after each."""
    conditions: list[Any] = []
    run = None
    seen, events = [], []
    for i, w in enumerate(windows):
        now = read(w)
        run = dw.advance(run, now)
        conditions, ev = dw.transition(conditions, run, now, 3, T0 + timedelta(minutes=i))
        seen.append(get_condition(conditions, "InputDrift"))
        events.append(ev)
    return seen, events


def test_one_check_judges_each_feature_with_the_canary_checks_statistics() -> None:
    shifted = read(SHIFTED)
    assert shifted.drifted is True
    assert [f for f, *_ in shifted.features()] == ["GR"]
    (name, est, lo, hi) = shifted.features()[0]
    assert est == pytest.approx(0.65) and 0.2 < lo <= est <= hi
    assert read(TRAINING).drifted is False
    assert read(EMPTY).drifted is None and read(EMPTY).decision is None
    # a small sample of the same shift is not enough evidence: not drifted (lower bound below 0.2)
    assert read(counts([0.0, 0.0, 1.0, 3.0], [1.0] * 4)).drifted is False


def test_a_sustained_drift_sets_input_drift_true_naming_the_feature_distance_window_and_n() -> None:
    seen, events = drive(TRAINING, SHIFTED, SHIFTED)
    assert [c.status for c in seen] == ["False", "False", "True"]
    assert events[:2] == [[], []]  # the first quiet check sets False without an Event
    (event,) = events[2]
    assert (event.type, event.reason) == ("Warning", "InputDrifted")
    c = seen[2]
    assert c.reason == "InputDrifted" and c.observed_generation == 3
    assert "GR 0.65 [" in c.message and "RHOB" not in c.message
    assert "stable revision r1" in c.message and "inputs of the last 600 s (n 400 rows)" in c.message
    assert "threshold 0.2 at confidence 0.95" in c.message
    assert c.last_transition_time == "2026-12-02T06:02:00Z"
    assert "retrain" in event.message and "GR" in event.message


def test_a_one_off_drifted_check_changes_nothing() -> None:
    seen, events = drive(TRAINING, SHIFTED, TRAINING, SHIFTED, TRAINING)
    assert {c.status for c in seen} == {"False"}
    assert events == [[]] * 5


def test_no_data_or_a_change_of_stable_revision_breaks_the_run() -> None:
    seen, _ = drive(SHIFTED, EMPTY, SHIFTED)
    assert seen == [None, None, None]  # undecided: no condition yet, and the gap restarted the run
    run = dw.advance(dw.advance(None, read(SHIFTED, "r1")), read(SHIFTED, "r2"))
    assert (run.revision, run.count) == ("r2", 1)


def test_recovery_takes_two_quiet_checks_and_posts_one_event() -> None:
    seen, events = drive(SHIFTED, SHIFTED, TRAINING, SHIFTED, TRAINING, TRAINING, TRAINING)
    assert [c.status if c else None for c in seen] == [None, "True", "True", "True", "True", "False", "False"]
    assert [[e.reason for e in ev] for ev in events] == [[], ["InputDrifted"], [], [], [], ["InputDriftRecovered"], []]
    assert seen[5].reason == "NoInputDrift" and seen[5].last_transition_time == "2026-12-02T06:05:00Z"


def test_while_drifted_the_message_follows_the_drifted_features_without_an_event() -> None:
    both = counts([0.0, 0.0, 40.0, 360.0], [400.0, 0.0, 0.0, 0.0])
    seen, events = drive(SHIFTED, SHIFTED, both)
    assert dw.named_features([seen[1]]) == ["GR"]
    assert dw.named_features([seen[2]]) == ["RHOB", "GR"]  # largest distance first
    assert events[2] == [] and seen[2].last_transition_time == seen[1].last_transition_time


def test_the_threshold_is_max_input_drift_else_the_documented_default() -> None:
    ref = {"uri": "http://127.0.0.1:9/profile.json", "sha256": "cd" * 32}
    plain = parse_spec({**spec_dict(), "model": {**spec_dict()["model"], "reference": ref}})
    assert dw.threshold_of(plain) == dw.DEFAULT_THRESHOLD == 0.2
    raw = spec_dict()
    raw["model"]["reference"] = ref
    raw["rollout"]["analysis"]["maxInputDrift"] = 0.7
    assert dw.threshold_of(parse_spec(raw)) == 0.7
    assert read(SHIFTED, threshold=0.7).drifted is False  # 0.65 is within 0.7


class FakeProm:
    def __init__(self) -> None:
        self.inputs: dict[tuple[str, str], float] = TRAINING
        self.asked: list[str] = []
        self.fail = False

    def query(self, promql: str, at: datetime, by: tuple[str, ...] = ()) -> QueryResult:
        self.asked.append(promql)
        if self.fail:
            return QueryResult(error="ConnectionError talking to prometheus")
        return QueryResult(series=REFERENCE if "reference_proportion" in promql else self.inputs)


def test_the_watch_checks_the_stable_revision_every_interval_into_the_ticks_decision() -> None:
    raw = spec_dict()
    raw["model"]["reference"] = {"uri": "http://127.0.0.1:9/profile.json", "sha256": "cd" * 32}
    spec = parse_spec(raw)
    prom = FakeProm()
    watch = dw.DriftWatch(prom, OperatorSettings(drift_interval_seconds=60, drift_window_seconds=300))  # type: ignore[arg-type]
    meta = Meta("wells", "geo", "uid", 4)

    def tick(at: datetime, stable: str | None = "r1", conditions: list[Any] | None = None) -> Decision:
        d = Decision(status=ModelDeploymentStatus(stable_revision=stable, conditions=conditions or []))
        watch(spec, meta, d, at)
        return d

    d = tick(T0)
    assert get_condition(d.status.conditions, "InputDrift").status == "False"  # type: ignore[union-attr]
    assert prom.asked[0] == ('sum by (feature, bin) (increase(modeldeploy_input_bin_total{namespace="geo",'
                             'model="wells",revision="r1"}[300s]))')  # fmt: skip
    assert "modeldeploy_input_reference_proportion" in prom.asked[1]
    conditions = d.status.conditions
    assert tick(T0 + timedelta(seconds=30), conditions=conditions).events == [] and len(prom.asked) == 2  # not due
    prom.inputs = SHIFTED
    d = tick(T0 + timedelta(seconds=60), conditions=conditions)
    assert d.events == [] and get_condition(d.status.conditions, "InputDrift").status == "False"  # type: ignore[union-attr]
    d = tick(T0 + timedelta(seconds=120), conditions=conditions)
    assert [e.reason for e in d.events] == ["InputDrifted"]
    assert get_condition(d.status.conditions, "InputDrift").status == "True"  # type: ignore[union-attr]
    labels = {"namespace": "geo", "name": "wells"}
    assert m.INPUT_DRIFT.labels(feature="GR", **labels)._value.get() == pytest.approx(0.65)
    assert m.INPUT_DRIFTED.labels(feature="GR", **labels)._value.get() == 1
    assert m.INPUT_DRIFTED.labels(feature="RHOB", **labels)._value.get() == 0
    # a failed query changes nothing and does not raise
    prom.fail = True
    assert tick(T0 + timedelta(seconds=180), conditions=d.status.conditions).events == []
    # no stable revision (or no reference): the condition and the series go
    gone = tick(T0 + timedelta(seconds=240), stable=None, conditions=d.status.conditions)
    assert get_condition(gone.status.conditions, "InputDrift") is None
    assert not [v for v in m.INPUT_DRIFT._metrics if v[:2] == ("geo", "wells")]


def test_the_kopf_tick_writes_input_drift_and_posts_its_event_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Through the real handler and a fake API server: the condition reaches status, the Event is posted once,
    and the rollout is untouched (no rollback)."""
    raw = spec_dict()
    raw["model"]["reference"] = {"uri": "http://127.0.0.1:9/profile.json", "sha256": "cd" * 32}
    sim = Sim(raw, now=sim_now(), ready_after=0)
    sim.run(10, until=lambda s: s.phase() == "Healthy")
    world = FakeCluster(sim)
    op = Operator(world, FakeAnalysisProm(), monkeypatch)
    prom = FakeProm()
    prom.inputs = SHIFTED
    watch = dw.DriftWatch(prom, OperatorSettings(drift_interval_seconds=60))  # type: ignore[arg-type]
    op.memo.shell.drift = watch
    for _ in range(4):
        watch.last.clear()  # every tick is a check (the handler runs on the real clock)
        op.tick()
    (c,) = [c for c in world.status["conditions"] if c["type"] == "InputDrift"]
    assert (c["status"], c["reason"]) == ("True", "InputDrifted") and "GR 0.65" in c["message"]
    assert op.reasons().count("InputDrifted") == 1
    assert world.status["phase"] == "Healthy" and world.status["stableRevision"] == sim.status.stable_revision
