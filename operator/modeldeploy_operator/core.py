"""The pure core: `decide(spec, status, observed, now)` -> desired children, new status, Events.

Called once per tick by the kopf timer (`handlers`), and by the scenario tests with fake
observations. No I/O, no clock: time is a parameter and every duration is computed from times
stored in status, so a fresh process fed the same status continues identically.

The rollout is a ladder of early returns (after Argo Rollouts' canary.go), run every tick:

1. annotations (retry, abort, promote) are consumed;
2. no stable revision yet: deploy the desired one straight to stable;
3. the desired revision differs from stable (and is not a rolled-back one): start a canary;
   a different one while a canary runs supersedes it (stable untouched, steps restart);
4. the canary's last analysis (run by the shell from `plan_analysis`) is judged: more than
   `failureLimit` failures, or Prometheus failing longer than `progressDeadlineSeconds`, roll back;
5. canary not ready yet: wait, or roll back at the progress deadline with the pods' reason;
6. steps: `setWeight` scales the canary and then applies the weight; a timed pause waits and then
   needs a Passed analysis in the step (if the canary carries weight); an indefinite pause waits
   for `modeldeploy.io/promote`; when the step's Inconclusive checks are expected to decide later
   than the step allows, `analysis.lowTraffic` says so and extends, raises the weight or holds
   (`Tick.low_traffic`);
7. after the last step: scale the canary to full size, switch the stable Service to it, schedule
   the old revision's scale-down `scale_down_delay_seconds` later.
"""

from __future__ import annotations

from datetime import datetime

from modeldeploy_operator import analysis, cost
from modeldeploy_operator import reasons as r
from modeldeploy_operator.analysis import AnalysisPlan
from modeldeploy_operator.api import ModelDeploymentSpec, ModelDeploymentStatus
from modeldeploy_operator.conditions import set_condition
from modeldeploy_operator.ladder import GROWING, Tick, gate_waiting, shadow_step
from modeldeploy_operator.model import Config, Decision, Event, Meta, Observed, seconds_since
from modeldeploy_operator.report import analysed_in_step

__all__ = ["decide", "invalid_spec", "plan_analysis"]


def plan_analysis(
    spec: ModelDeploymentSpec, status: ModelDeploymentStatus, now: datetime, *, meta: Meta, config: Config
) -> AnalysisPlan | None:
    """The check due this tick, if any.

    Every intervalSeconds while the canary carries weight, over the window since the step started
    (at most one interval, at least two scrapes); as soon as a step's own wait is over when it
    waits for a judgement; two scrapes after an Inconclusive check (judge as soon as there is
    enough data); and two scrapes after a Failed check, over only the data since that check:
    `failureLimit` then asks for independent confirmations of a breach without making a bad
    canary serve users for (failureLimit + 1) whole intervals.

    The window is at most intervalSeconds, except with `analysis.lowTraffic` extend or hold after an
    Inconclusive check: then it spans the whole step so far, so that `minRequests` accumulates at any
    traffic (the step waits for a decision rather than judging the same short window again).
    """
    st = status
    weight = st.canary_weight or 0
    shadowing = shadow_step(spec, st.current_step) is not None  # judged on mirrored requests, at weight 0
    if st.canary_revision is None or st.current_step is None or st.step_started_at is None:
        return None
    if weight <= 0 and not shadowing:
        return None
    a = spec.rollout.analysis
    since = seconds_since(st.step_started_at, now)
    floor = analysis.window_seconds(0, a.interval_seconds, config.scrape_interval_seconds)
    span = since
    cap = a.interval_seconds
    if analysed_in_step(st):
        assert st.last_analysis is not None
        since_last = seconds_since(st.last_analysis.time, now)
        if st.failed_check_at is not None:
            # confirm a failure quickly, over new data only: the window starts at the failed check
            due, span = since_last >= floor, seconds_since(st.failed_check_at, now)
        elif st.last_analysis.verdict == "Inconclusive":
            # not enough data yet: look again as soon as there can be more (the window grows)
            due = since_last >= floor
            if a.low_traffic in GROWING:  # ... beyond intervalSeconds: the step waits for a decision
                cap = max(cap, int(span))
        else:
            due = since_last >= a.interval_seconds
    else:
        due = since >= a.interval_seconds or (gate_waiting(spec, st, since) and since >= floor)
    if not due:
        return None
    window = analysis.window_seconds(span, cap, config.scrape_interval_seconds)
    factor = cost.pod_price_factor(config.prices, spec, st.cost) if a.max_cost_increase is not None else 1.0
    since_canary = None if st.canary_started_at is None else int(seconds_since(st.canary_started_at, now))
    return analysis.plan(
        a, meta.namespace, meta.name, st.canary_revision, st.current_step, weight, window, st.stable_revision, factor,
        since_canary=since_canary, shadowing=shadowing,
    )  # fmt: skip


def invalid_spec(status: ModelDeploymentStatus, message: str, *, meta: Meta, now: datetime) -> Decision:
    """A spec the models refuse: say so in status (and once as an Event), touch no child."""
    st = status.model_copy(deep=True)
    events = []
    if st.observed_generation != meta.generation or st.phase != r.PHASE_INVALID:
        events.append(Event("Warning", r.INVALID_SPEC, message))
    st.observed_generation = meta.generation
    st.phase = r.PHASE_INVALID
    st.message = message
    st.conditions = set_condition(st.conditions, r.PROGRESSING, "False", r.INVALID_SPEC, message, meta.generation, now)
    return Decision(status=st, events=events, apply_children=False)


def decide(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    observed: Observed,
    now: datetime,
    *,
    meta: Meta,
    config: Config,
) -> Decision:
    """One tick of the rollout state machine. Pure: same inputs, same Decision."""
    return Tick(spec, status, observed, now, meta, config).run()
