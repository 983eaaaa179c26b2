"""After promotion, keep watching: the stable revision's inputs against its reference profile (`InputDrift`).

`DriftWatch` is `handlers.Shell.drift`, called each tick after `core.decide` and before the status
write (like `costwatch`), so the rollout's decision never depends on it. For a ModelDeployment with
`spec.model.reference` and a stable revision, every `driftIntervalSeconds` (operator setting, 60 s)
it asks Prometheus two vector queries (`compare.input_queries`: the stable's rows per feature and
bin over the last `driftWindowSeconds`, 600 s, and the training shares the server exports from the
profile it verified) and judges them with the canary check's statistics (`compare.input_drift_of`,
`judge.input_drift`: per feature the total-variation distance with its interval, Bonferroni over
features, at `analysis.confidence`).

The decision (pure: `reading`, `advance`, `transition`):

- a check **drifted** when some feature's lower bound exceeds the threshold (`analysis.maxInputDrift`
  when set, else `DEFAULT_THRESHOLD` = 0.2, the distance of the example alert): at that confidence,
  more than a fifth of that feature's inputs sit in other bins than training put them;
- **sustained**: `InputDrift` turns True after `SUSTAIN` (2) consecutive drifted checks of the same
  stable revision, and back to False after 2 consecutive checks where no feature's lower bound exceeds
  the threshold; a check without data (no rows in the window, no reference series) or with a failed
  query breaks the run and changes nothing. Until the first decision the condition is absent; a first
  check that is not drifted sets it False at once (nothing to confirm).
- One Event per transition (`InputDrifted`, Warning; `InputDriftRecovered`, Normal); the condition's
  message names the revision, each drifted feature with its distance and interval, the threshold, the
  confidence, the window and n (rows). While True the message follows the set of drifted features; the
  status is otherwise not rewritten (the distances of every check are in the metric).
- Metrics: `modeldeploy_operator_input_drift{namespace,name,feature}` (every check's distance) and
  `modeldeploy_operator_input_drifted{namespace,name,feature}` (1 for the features the True condition names).

No rollback and no hold: drift of the stable's inputs is a signal to look at the data and retrain.
What the statistics promise here: each check is the judge's anytime-valid test over one sliding
window, so a check flags a feature whose true distance is at most the threshold with probability at
most 1 − confidence; the windows of consecutive checks overlap, so two consecutive drifted checks are
not twice the evidence: `SUSTAIN` guards against a burst of odd traffic that lasts one check (a batch
client, a test), not against the test's own error rate, which the confidence controls.
The run of consecutive checks is kept in memory (an operator restart starts it over: at most one
check's delay); the condition itself is in status, so a lost write is decided again next check.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime

from modeldeploy_operator import compare, judge
from modeldeploy_operator import metrics as m
from modeldeploy_operator import reasons as r
from modeldeploy_operator.api import Condition, ModelDeploymentSpec
from modeldeploy_operator.conditions import get_condition, set_condition
from modeldeploy_operator.model import Decision, Event, Meta
from modeldeploy_operator.prom import Prometheus
from modeldeploy_operator.settings import OperatorSettings

log = logging.getLogger("modeldeploy.operator")

DEFAULT_THRESHOLD = 0.2
SUSTAIN = 2
Series = Mapping[tuple[str, ...], float]


@dataclass(frozen=True)
class Reading:
    """One check of the stable revision's inputs; `decision` None: nothing to judge (`why`)."""

    revision: str
    window: int
    threshold: float
    confidence: float
    decision: judge.Decision | None
    why: str = ""

    @property
    def drifted(self) -> bool | None:
        """Some feature's lower bound above the threshold; None: no data."""
        if self.decision is None:
            return None
        return any(lo > self.threshold for _, lo, _ in self.decision.per_feature.values())

    def features(self) -> list[tuple[str, float, float, float]]:
        """The drifted features (name, distance, lower, upper), largest distance first."""
        per = self.decision.per_feature if self.decision is not None else {}
        out = [(f, e, lo, hi) for f, (e, lo, hi) in per.items() if lo > self.threshold]
        return sorted(out, key=lambda t: (-t[1], t[0]))

    def describe(self) -> str:
        d = self.decision
        n = f"{d.n_canary:.0f}" if d is not None else "0"
        return (f"threshold {self.threshold:g} at confidence {self.confidence:g}, inputs of the last {self.window} s "
                f"(n {n} rows)")  # fmt: skip


def threshold_of(spec: ModelDeploymentSpec) -> float:
    value = spec.rollout.analysis.max_input_drift
    return DEFAULT_THRESHOLD if value is None else float(value)


def reading(
    revision: str, window: int, threshold: float, confidence: float, inputs: Series, reference: Series
) -> Reading:
    """Judge one window's (feature, bin) counts against the reference shares (pure)."""
    d, profiled = compare.input_drift_of(inputs, reference, threshold, confidence, look_ahead=False)
    why = "" if d is not None else f"no binned inputs against a reference profile in the window ({profiled} features)"
    return Reading(revision, window, threshold, confidence, d, why)


@dataclass(frozen=True)
class Run:
    """Consecutive checks of one stable revision that agreed (`drifted`), `count` of them."""

    revision: str
    drifted: bool | None
    count: int


def advance(run: Run | None, now: Reading) -> Run:
    """The run after one more check (pure): a check without data breaks it."""
    drifted = now.drifted
    if run is not None and run.revision == now.revision and drifted is not None and run.drifted == drifted:
        return Run(now.revision, drifted, run.count + 1)
    return Run(now.revision, drifted, 0 if drifted is None else 1)


def _drift_message(now: Reading, features: Sequence[tuple[str, float, float, float]]) -> str:
    per = ", ".join(f"{f} {e:.3g} [{lo:.3g}, {hi:.3g}]" for f, e, lo, hi in features)
    return (f"inputs of stable revision {now.revision} drifted from the reference profile on {SUSTAIN} consecutive "
            f"checks: {per}; total-variation distance [interval], {now.describe()}")  # fmt: skip


def transition(
    conditions: list[Condition], run: Run, now: Reading, generation: int | None, at: datetime
) -> tuple[list[Condition], list[Event]]:
    """The conditions and Events after a check (pure): a flip needs SUSTAIN agreeing checks."""
    old = get_condition(conditions, r.INPUT_DRIFT)
    current = old is not None and old.status == "True"
    if run.drifted is None:
        return conditions, []
    if old is not None and run.drifted == current:
        if current and run.count >= SUSTAIN and now.features():  # still drifted: follow the drifted features
            names = [f for f, *_ in now.features()]
            if names != _named(old):
                text = _drift_message(now, now.features())
                return set_condition(conditions, r.INPUT_DRIFT, "True", r.INPUT_DRIFTED, text, generation, at), []
        return conditions, []
    if run.drifted and run.count >= SUSTAIN:
        text = _drift_message(now, now.features())
        out = set_condition(conditions, r.INPUT_DRIFT, "True", r.INPUT_DRIFTED, text, generation, at)
        return out, [Event("Warning", r.INPUT_DRIFTED, text + " (no rollback: a signal to look at the inputs and "
                           "retrain)")]  # fmt: skip
    if not run.drifted and (old is None or run.count >= SUSTAIN):
        text = (f"inputs of stable revision {now.revision} within the reference profile: no feature's distance "
                f"above the threshold at the confidence; {now.describe()}")  # fmt: skip
        out = set_condition(conditions, r.INPUT_DRIFT, "False", r.NO_INPUT_DRIFT, text, generation, at)
        return out, ([] if old is None else [Event("Normal", r.INPUT_DRIFT_RECOVERED, text)])
    return conditions, []


def _named(c: Condition) -> list[str]:
    """The features a True condition's message names (see `_drift_message`)."""
    body = c.message.split(" checks: ", 1)[-1].split("; total-variation", 1)[0]
    return [part.split(" ", 1)[0] for part in body.split("], ") if part]


def named_features(conditions: list[Condition]) -> list[str]:
    c = get_condition(conditions, r.INPUT_DRIFT)
    return _named(c) if c is not None and c.status == "True" else []


class DriftWatch:
    """`handlers.Shell.drift`: every `interval` seconds per object, one check of the stable's inputs,
    its condition and Events into the tick's decision. Never raises."""

    def __init__(self, prom: Prometheus, settings: OperatorSettings) -> None:
        self.prom = prom
        self.interval, self.window = settings.drift_interval_seconds, settings.drift_window_seconds
        self.window = max(self.window, int(4 * settings.scrape_interval_seconds))
        self.last: dict[tuple[str, str], datetime] = {}
        self.runs: dict[tuple[str, str], Run] = {}
        self.exported: set[tuple[str, str]] = set()  # objects with metric series
        self.lock = threading.Lock()

    def __call__(self, spec: ModelDeploymentSpec, meta: Meta, decision: Decision, now: datetime) -> None:
        key = (meta.namespace, meta.name)
        status = decision.status
        stable = status.stable_revision
        if self.interval <= 0 or spec.model.reference is None or stable is None:
            if get_condition(status.conditions, r.INPUT_DRIFT) is not None:
                status.conditions = [c for c in status.conditions if c.type != r.INPUT_DRIFT]
            self.forget(*key)
            return
        with self.lock:
            last = self.last.get(key)
            if last is not None and (now - last).total_seconds() < self.interval:
                return
            self.last[key] = now
        try:
            now_reading = self.measure(spec, meta, stable, now)
        except Exception:
            log.exception("%s/%s: drift check failed", meta.namespace, meta.name)
            return
        if now_reading is None:
            with self.lock:
                self.runs.pop(key, None)
            return
        with self.lock:
            run = advance(self.runs.get(key), now_reading)
            self.runs[key] = run
        status.conditions, events = transition(status.conditions, run, now_reading, meta.generation, now)
        decision.events.extend(events)
        self.export(meta, now_reading, named_features(status.conditions))

    def measure(self, spec: ModelDeploymentSpec, meta: Meta, stable: str, now: datetime) -> Reading | None:
        """One check (I/O: two Prometheus queries); None when a query failed."""
        inputs_q, reference_q = compare.input_queries(meta.namespace, meta.name, stable, self.window)
        answers = []
        for promql in (inputs_q, reference_q):
            res = self.prom.query(promql, now, ("feature", "bin"))
            if res.error is not None or res.series is None:
                log.info("%s/%s: drift query failed: %s: %s", meta.namespace, meta.name, promql, res.error)
                return None
            answers.append(res.series)
        confidence = spec.rollout.analysis.confidence
        return reading(stable, self.window, threshold_of(spec), confidence, answers[0], answers[1])

    def export(self, meta: Meta, now: Reading, named: list[str]) -> None:
        if now.decision is None:
            return
        with self.lock:
            self.exported.add((meta.namespace, meta.name))
        for feature, (estimate, _, _) in now.decision.per_feature.items():
            m.INPUT_DRIFT.labels(namespace=meta.namespace, name=meta.name, feature=feature).set(estimate)
            m.INPUT_DRIFTED.labels(namespace=meta.namespace, name=meta.name, feature=feature).set(
                1 if feature in named else 0
            )

    def forget(self, namespace: str, name: str) -> None:
        with self.lock:
            self.runs.pop((namespace, name), None)
            self.last.pop((namespace, name), None)
            had = (namespace, name) in self.exported
            self.exported.discard((namespace, name))
        if had:
            for metric in (m.INPUT_DRIFT, m.INPUT_DRIFTED):
                for values in list(metric._metrics):
                    if values[:2] == (namespace, name):
                        metric.remove(*values)
