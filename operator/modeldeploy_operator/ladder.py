"""The rungs of one tick of the rollout state machine (the body of `core.decide`). Pure.

`Tick.run()` climbs: control annotations -> first deploy -> start/supersede/cancel canary ->
judge the last analysis -> canary readiness -> steps -> promotion -> old revision scale-down ->
conditions, phase and desired children. Each rung either finishes the tick (return) or falls
through; everything it learns goes into status, which is the only memory between ticks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime

from modeldeploy_operator import analysis, compare
from modeldeploy_operator import reasons as r
from modeldeploy_operator.analysis import evaluate
from modeldeploy_operator.api import (
    HISTORY_LIMIT,
    AnalysisRecord,
    AnalysisSpec,
    ConditionStatus,
    ControlRequest,
    HistoryEntry,
    ModelDeploymentSpec,
    ModelDeploymentStatus,
    ShadowStep,
)
from modeldeploy_operator.autoscale import base_replicas
from modeldeploy_operator.conditions import get_condition, set_condition
from modeldeploy_operator.model import (
    Config,
    Decision,
    Event,
    Meta,
    Observed,
    RevisionState,
    ShadowTarget,
    fmt_time,
    later,
    parse_time,
    seconds_since,
)
from modeldeploy_operator.ratio import routed_canary_replicas, unrouted_canary
from modeldeploy_operator.report import (
    Hold,
    analysed_in_step,
    before_weight,
    desired_children,
    first_deploy_pending,
    passed_in_step,
    routed,
    state_of,
    status_view,
    step_weight,
)
from modeldeploy_operator.revision import resolve_image, revision_of
from modeldeploy_operator.shadow import diff_cap


def gate_waiting(spec: ModelDeploymentSpec, st: ModelDeploymentStatus, since: float) -> bool:
    """The current step has done its own part and only waits for a Passed analysis."""
    steps = spec.rollout.steps
    i = st.current_step
    if i is None:
        return False
    if i >= len(steps):
        return not st.promote_requested and bool(steps) and steps[-1].set_weight is not None
    shadow = steps[i].shadow
    if shadow is not None:
        return since >= shadow.seconds
    pause = steps[i].pause
    return pause is not None and pause.seconds is not None and since >= pause.seconds


def shadow_step(spec: ModelDeploymentSpec, i: int | None) -> ShadowStep | None:
    steps = spec.rollout.steps
    return steps[i].shadow if i is not None and i < len(steps) else None


# The judge's checks that decide with more canary requests (each record carries `more_requests`).
TRAFFIC_CHECKS = frozenset(
    {compare.ERROR_INCREASE, compare.REFUSAL_INCREASE, compare.PREDICTION_SHIFT, compare.INPUT_DRIFT,
     compare.LATENCY_RATIO}
)  # fmt: skip
# analysis.lowTraffic policies whose checks' window grows with the step while Inconclusive (`core.plan_analysis`).
GROWING = ("extend", "hold")


@dataclass(frozen=True)
class Eta:
    """How long an Inconclusive analysis is expected to stay undecided at the canary's current traffic."""

    check: str  # the check that needs the longest
    more: int | None  # about this many more canary requests (None: more than the judge looks ahead for)
    rate: float  # canary requests per second over the last window, at the weight it was measured at
    seconds: float  # math.inf: no decision in sight at this traffic
    note: str = ""

    def text(self) -> str:
        need = f"about {self.more} more canary requests" if self.more is not None else "far more canary requests"
        at = f"{self.rate:.3g} req/s"
        if math.isinf(self.seconds):
            return f"{self.check} needs {need}: no decision in sight at {at}{self.note}"
        return f"{self.check} needs {need}: at {at} that is about {self.seconds:.0f}s"


def decision_eta(rec: AnalysisRecord, a: AnalysisSpec, *, grows: bool) -> Eta | None:
    """Expected time to a decision of an Inconclusive analysis: for each check that waits for traffic,
    (canary requests still needed) / (canary request rate over the record's window), the longest.

    The rate is the `requests` check's count over the window (the current weight's traffic). The
    `minRequests` floor counts within one window, which is at most intervalSeconds unless the window
    `grows` (lowTraffic extend/hold): below minRequests / intervalSeconds req/s it is never reached.
    The judge's checks need `more_requests` beyond the cumulative counts since the canary started.
    Checks Inconclusive for another reason than traffic (no histogram data, a custom metric without
    data) are not traffic's to fix and are left out. None: nothing waits for traffic.
    """
    if rec.verdict != "Inconclusive" or not rec.window_seconds:
        return None
    req = next((c for c in rec.checks if c.name == analysis.REQUESTS), None)
    if req is None:
        return None
    n = req.samples or 0.0
    rate = n / rec.window_seconds
    worst: Eta | None = None
    for c in rec.checks:
        if c.verdict != "Inconclusive":
            continue
        note = ""
        if c is req:
            least = max(1, a.min_requests)
            more: int | None = math.ceil(least - n)
            if not grows and rate * a.interval_seconds < least:
                note = (
                    f" (minRequests {least} within one window of at most intervalSeconds {a.interval_seconds}s, "
                    f"about {rate * a.interval_seconds:.0f} arrive in one)"
                )
            name = f"minRequests {least}"
        elif c.name in TRAFFIC_CHECKS:
            more, name = c.more_requests, c.name
        else:
            continue
        seconds = math.inf if more is None or rate <= 0 or note else more / rate
        eta = Eta(name, more, rate, seconds, note)
        if worst is None or eta.seconds > worst.seconds:
            worst = eta
    return worst


IGNORED_BECAUSE = {
    r.ANNOTATION_PROMOTE: "no canary is running",
    r.ANNOTATION_ABORT: "no canary is running",
    r.ANNOTATION_RETRY: "no revision is rolled back",
}


def canary_size(spec: ModelDeploymentSpec, weight: int) -> tuple[int, int]:
    """(canary pods, effective canary weight) for a requested weight: router or replica ratio."""
    if routed(spec):
        return routed_canary_replicas(spec.replicas, weight), weight
    return unrouted_canary(spec.replicas, weight)


class Tick:
    def __init__(
        self,
        spec: ModelDeploymentSpec,
        status: ModelDeploymentStatus,
        observed: Observed,
        now: datetime,
        meta: Meta,
        config: Config,
    ) -> None:
        if spec.autoscaling is not None:  # the autoscaler's stable size stands in for spec.replicas everywhere
            current = observed.replicas.get(status.stable_revision) if status.stable_revision else None
            spec = spec.model_copy(update={"replicas": base_replicas(spec, current)})
        self.spec, self.obs, self.now, self.meta, self.config = spec, observed, now, meta, config
        self.st = status.model_copy(deep=True)
        self.image = resolve_image(spec, config.image)
        self.rev = revision_of(spec, self.image)
        self.version = spec.model.version
        self.d = Decision(status=self.st)
        self.canary_replicas = 0
        self.held = Hold()  # what holds the rollout this tick (`hold`): Progressing's reason and message
        self.limit = spec.rollout.progress_deadline_seconds
        self.requests: set[str] = set()  # control annotations not acted on before (new values)
        self.acted: set[str] = set()

    # ----------------------------------------------------------------- helpers
    def revision_state(self, revision: str | None) -> RevisionState:
        return state_of(self.obs, revision)

    def finish(self) -> Decision:
        """The derived status view and the desired children of the status the ladder built."""
        self.st = self.d.status = status_view(self.spec, self.st, self.obs, self.meta, self.now, self.held, self.rev)
        kids = desired_children(self.spec, self.st, self.obs, self.meta, self.rev, self.image, self.canary_replicas)
        self.d.deployments.extend(kids.deployments)
        self.d.scales.update(kids.scales)
        self.d.keep.extend(kids.keep)
        self.d.services, self.d.route = kids.services, kids.route
        return self.d

    def event(self, reason: str, message: str, warning: bool = False) -> None:
        self.d.events.append(Event("Warning" if warning else "Normal", reason, message))

    def history(self, revision: str, version: str, outcome: str, why: str) -> None:
        entry = HistoryEntry(
            revision=revision, version=version, outcome=outcome, time=fmt_time(self.now), reason=why[:512]
        )
        self.st.history = [*self.st.history, entry][-HISTORY_LIMIT:]
        self.d.outcomes.append(outcome)

    def hold(self, reason: str, message: str, *, paused: bool = False) -> None:
        """Progressing's reason and message this tick; `paused`: it waits for a person."""
        self.held = Hold(reason, message, paused)

    def _set(self, type_: str, status: ConditionStatus, reason: str, message: str = "") -> None:
        """Set one condition of the status being built (at this tick's generation and time)."""
        self.st.conditions = set_condition(
            self.st.conditions, type_, status, reason, message, self.meta.generation, self.now
        )

    def step_text(self, i: int) -> str:
        steps = self.spec.rollout.steps
        if i >= len(steps):
            return "promotion"
        s = steps[i]
        if s.set_weight is not None:
            what = f"setWeight {s.set_weight}"
        elif s.shadow is not None:
            what = f"shadow {s.shadow.percent}% for {s.shadow.seconds}s"
        else:
            what = f"pause {s.pause.seconds}s" if s.pause and s.pause.seconds is not None else "pause until promoted"
        return f"step {i + 1}/{len(steps)} ({what})"

    # ----------------------------------------------------------------- the ladder
    def run(self) -> Decision:
        st = self.st
        ann = self.obs.annotations
        # A request is acted on once: its value is recorded in status in the same (checked) write
        # that records what it did, and the annotation is cleared only after that write.
        present = {a: ann[a] for a in r.CONTROL_ANNOTATIONS if a in ann}
        handled = {c.annotation: c.value for c in st.control_requests}
        self.requests = {a for a, v in present.items() if handled.get(a) != v}
        st.control_requests = [ControlRequest(annotation=a, value=v) for a, v in present.items()]
        self.d.clear_annotations = list(present)
        if r.ANNOTATION_RETRY in self.requests and st.failed_revision is not None:
            self.acted.add(r.ANNOTATION_RETRY)
            self.event(r.RETRY_REQUESTED, f"retrying revision {st.failed_revision} (version {st.failed_version})")
            st.failed_revision = st.failed_version = None
        if (
            st.failed_revision is not None
            and st.observed_generation is not None
            and self.meta.generation is not None
            and self.meta.generation != st.observed_generation
        ):
            # A new spec generation is a new request (as in Argo Rollouts): a rolled-back revision it
            # asks for again is started again. An unchanged spec (a GitOps re-sync) never retries it.
            if self.rev == st.failed_revision:
                self.event(
                    r.RETRY_REQUESTED,
                    f"spec generation {self.meta.generation} asks again for rolled-back revision "
                    f"{st.failed_revision} (version {st.failed_version}): starting its canary again",
                )
            st.failed_revision = st.failed_version = None
        if st.stable_revision is None and not st.history:
            self.adopt()
        if st.stable_revision is None or first_deploy_pending(self.st):
            self.first_deploy()
        else:
            self.canary()
        self.scale_down_old()
        if st.draining_until is not None and (
            seconds_since(st.draining_until, self.now) >= 0 or st.draining_revision == st.canary_revision
        ):
            st.draining_revision = st.draining_until = None
        for a in sorted(self.requests - self.acted):
            self.event(r.REQUEST_IGNORED, f"{a} ignored: {IGNORED_BECAUSE[a]}")
        return self.finish()

    def adopt(self) -> None:
        """Empty status beside serving pods of another revision (status lost or wiped): that revision
        is stable (the one with the most ready pods), so the spec's revision gets a canary and the
        serving one is neither replaced at once nor pruned (M7)."""
        serving = sorted(
            (
                (state.ready_replicas, rev)
                for rev, state in self.obs.revisions.items()
                if rev != self.rev and (self.obs.owned_revisions is None or rev in self.obs.owned_revisions)
            ),
            reverse=True,
        )
        if not serving or serving[0][0] <= 0:
            return
        ready, rev = serving[0]
        self.st.stable_revision, self.st.stable_version = rev, "unknown"
        self.event(
            r.STABLE_ADOPTED,
            f"status was empty while revision {rev} serves with {ready} ready pods: it is stable; "
            f"revision {self.rev} (version {self.version}) gets a canary",
            warning=True,
        )

    def first_deploy(self) -> None:
        st = self.st
        if st.stable_revision != self.rev:
            if st.stable_revision is not None:  # never served: replace it, nothing to protect
                self.history(
                    st.stable_revision, st.stable_version or "", r.OUTCOME_SUPERSEDED, "replaced before it was ready"
                )
            st.stable_revision, st.stable_version = self.rev, self.version
            st.step_started_at = fmt_time(self.now)
            self._set(r.DEGRADED, "False", r.AS_EXPECTED)
            self.event(r.STABLE_DEPLOYING, f"deploying revision {self.rev} (version {self.version}) as stable")
        ready = self.revision_state(self.rev).ready_replicas
        if ready >= self.spec.replicas:
            st.step_started_at = None
            self.history(self.rev, self.version, r.OUTCOME_DEPLOYED, "first deployment")
            self.event(
                r.STABLE_DEPLOYED, f"revision {self.rev} (version {self.version}) is serving, {ready} pods ready"
            )
            self._set(r.DEGRADED, "False", r.AS_EXPECTED)
            return
        waited = seconds_since(st.step_started_at, self.now)
        why = self.revision_state(self.rev).problems()
        msg = f"waiting for {self.spec.replicas} ready pods of revision {self.rev}, {ready} ready: {why}"
        self.hold(r.STABLE_DEPLOYING, msg)
        refused = self.revision_state(self.rev).refusal()
        if refused is not None or waited > self.limit:
            if refused is not None:  # final for this revision: no point waiting for the deadline
                reason, text = r.ARTIFACT_REFUSED, f"revision {self.rev} refused by its server: {refused}"
            else:
                reason = r.PROGRESS_DEADLINE_EXCEEDED
                text = (
                    f"revision {self.rev} not ready after {waited:.0f}s (progressDeadlineSeconds {self.limit}): {why}"
                )
            degraded = get_condition(st.conditions, r.DEGRADED)
            if degraded is None or degraded.status != "True" or degraded.reason != reason:
                self.event(reason, text, warning=True)
            self._set(r.DEGRADED, "True", reason, text)

    def canary(self) -> None:
        st = self.st
        if st.canary_revision is not None and self.rev != st.canary_revision:
            old, old_v = st.canary_revision, st.canary_version or ""
            if self.rev == st.stable_revision:
                self.history(old, old_v, r.OUTCOME_CANCELLED, "the spec returned to the stable revision")
                self.event(
                    r.CANARY_CANCELLED,
                    f"canary {old} (version {old_v}) cancelled: the spec is back at stable {self.rev}",
                )
            else:
                self.history(
                    old, old_v, r.OUTCOME_SUPERSEDED, f"superseded by revision {self.rev} (version {self.version})"
                )
                self.event(
                    r.CANARY_SUPERSEDED,
                    f"canary {old} (version {old_v}) superseded by revision {self.rev} (version {self.version})",
                )
            self.drain()
            self.clear_canary()
        if st.canary_revision is None and self.rev not in (st.stable_revision, st.failed_revision):
            if self.spec.paused:
                self.hold(
                    r.ROLLOUT_PAUSED, f"spec.paused: revision {self.rev} (version {self.version}) waits", paused=True
                )
                return
            if not self.obs.may_start_canary:
                self.hold(
                    r.CANARY_QUEUED,
                    f"revision {self.rev} (version {self.version}) waits for a canary slot "
                    "(the operator's MODELDEPLOY_OPERATOR_MAX_CONCURRENT_CANARIES is reached)",
                )
                return
            self.start_canary()
        if st.canary_revision is None:
            return
        if r.ANNOTATION_ABORT in self.requests:
            self.acted.add(r.ANNOTATION_ABORT)
            self.rollback(r.ABORTED, f"aborted by annotation {r.ANNOTATION_ABORT}", r.OUTCOME_ABORTED)
            return
        if r.ANNOTATION_PROMOTE in self.requests:
            self.acted.add(r.ANNOTATION_PROMOTE)
            if not st.promote_requested:
                st.promote_requested = True
                self.event(r.PROMOTE_REQUESTED, f"promotion of canary {st.canary_revision} requested by annotation")
                if st.current_step is not None:
                    self.enter_step(len(self.spec.rollout.steps))
        if self.judge() or self.refused():
            return
        if st.current_step is None:
            if not self.wait_ready(canary_size(self.spec, 0), since=st.canary_started_at):
                return
            self.event(r.CANARY_READY, f"canary {st.canary_revision} (version {st.canary_version}) is ready")
            w = 0 if routed(self.spec) or before_weight(self.spec, st) else canary_size(self.spec, 0)[1]
            st.canary_weight = w
            self.enter_step(len(self.spec.rollout.steps) if st.promote_requested else 0)
        self.steps()

    def start_canary(self) -> None:
        st = self.st
        st.canary_revision, st.canary_version = self.rev, self.version
        st.canary_started_at = fmt_time(self.now)
        st.current_step = st.step_started_at = None
        st.canary_weight, st.failed_checks = 0, 0
        st.promote_requested = st.prometheus_unavailable_since = st.failed_check_at = None
        st.canary_unready_since = None
        self._set(r.DEGRADED, "False", r.AS_EXPECTED)
        self.event(
            r.CANARY_STARTED,
            f"canary revision {self.rev} (version {self.version}) started beside stable "
            f"{st.stable_revision} (version {st.stable_version})",
        )

    def drain(self) -> None:
        """The canary is losing its weight: keep its pods (and <name>-canary on them) for
        drainSeconds, since gateways apply a weight change seconds after it is written (M5, M6)."""
        st = self.st
        if routed(self.spec) and (st.canary_weight or 0) > 0 and st.canary_revision is not None:
            st.draining_revision = st.canary_revision
            st.draining_until = later(self.now, self.config.drain_seconds)

    def clear_canary(self) -> None:
        st = self.st
        st.canary_revision = st.canary_version = st.canary_started_at = None
        st.current_step = st.step_started_at = st.failed_checks = None
        st.promote_requested = st.prometheus_unavailable_since = st.failed_check_at = None
        st.canary_weight, st.canary_unready_since = 0, None
        self.drop_low_traffic()

    def drop_low_traffic(self) -> None:
        self.st.conditions = [c for c in self.st.conditions if c.type != r.LOW_TRAFFIC]

    def enter_step(self, i: int) -> None:
        self.st.current_step = i
        self.st.step_started_at = fmt_time(self.now)
        self.drop_low_traffic()  # said once per step: a new step may say it again
        self.event(
            r.STEP_STARTED, f"canary {self.st.canary_revision}: {self.step_text(i)} at weight {self.st.canary_weight}%"
        )

    def wait_ready(self, size: tuple[int, int], since: str | None) -> bool:
        """Canary scaled to size[0]: True when that many pods are ready; rolls back at the deadline."""
        st = self.st
        self.canary_replicas = max(self.canary_replicas, size[0])
        state = self.revision_state(st.canary_revision)
        if state.ready_replicas >= size[0]:
            return True
        waited = seconds_since(since, self.now)
        msg = f"canary {st.canary_revision}: {state.ready_replicas}/{size[0]} pods ready"
        if waited > self.limit:
            text = (
                f"canary {st.canary_revision} (version {st.canary_version}) not ready after {waited:.0f}s "
                f"(progressDeadlineSeconds {self.limit}): {state.problems()}"
            )
            self.event(r.PROGRESS_DEADLINE_EXCEEDED, text, warning=True)
            self.rollback(r.PROGRESS_DEADLINE_EXCEEDED, text, r.OUTCOME_ROLLED_BACK)
        else:
            self.hold(r.CANARY_WAITING_FOR_READY, f"{msg}; {state.problems()}" if state.pods else msg)
        return False

    def refused(self) -> bool:
        """A canary pod terminated with the server's refusal (exit code 2): roll back now, with its line."""
        st = self.st
        line = self.revision_state(st.canary_revision).refusal()
        if line is None:
            return False
        text = f"canary {st.canary_revision} (version {st.canary_version}) refused by its server: {line}"
        self.rollback(r.ARTIFACT_REFUSED, text, r.OUTCOME_ROLLED_BACK)
        return True

    def carrying(self, i: int) -> bool:
        """Does the canary still have the ready pods the weight of step i needs? Checked every tick.

        Routed: when it does not, its weight goes to 0 at once (the gateway would send that share to
        a Service without endpoints) and comes back when the pods do, with the step's clock
        restarted so the weight is judged again; rolled back when they are not back within
        progressDeadlineSeconds. Replica ratio: unready pods leave the endpoints by themselves,
        so only the deadline applies.
        """
        st = self.st
        held = step_weight(self.spec, i)
        if held <= 0:
            return True
        need = canary_size(self.spec, held)[0]
        self.canary_replicas = max(self.canary_replicas, need)
        state = self.revision_state(st.canary_revision)
        if state.ready_replicas >= need:
            if st.canary_unready_since is not None:
                st.canary_unready_since = None
                old, st.canary_weight = st.canary_weight, canary_size(self.spec, held)[1]
                st.step_started_at = fmt_time(self.now)
                self.event(
                    r.WEIGHT_CHANGED,
                    f"canary {st.canary_revision} has {state.ready_replicas} ready pods again: "
                    f"weight {old}% -> {st.canary_weight}%, {self.step_text(i)} starts over",
                )
            return True
        if st.canary_unready_since is None:
            st.canary_unready_since = fmt_time(self.now)
            old = st.canary_weight
            if routed(self.spec):
                st.canary_weight = 0
            self.event(
                r.CANARY_UNREADY,
                f"canary {st.canary_revision} has {state.ready_replicas}/{need} ready pods at weight {old}%: "
                f"weight -> {st.canary_weight}%; {state.problems()}",
                warning=True,
            )
        lost = seconds_since(st.canary_unready_since, self.now)
        if lost > self.limit:
            text = (
                f"canary {st.canary_revision} (version {st.canary_version}) lost its ready pods {lost:.0f}s ago "
                f"(progressDeadlineSeconds {self.limit}): {state.problems()}"
            )
            self.event(r.PROGRESS_DEADLINE_EXCEEDED, text, warning=True)
            self.rollback(r.PROGRESS_DEADLINE_EXCEEDED, text, r.OUTCOME_ROLLED_BACK)
            return False
        self.hold(
            r.CANARY_UNREADY,
            f"canary {st.canary_revision}: {state.ready_replicas}/{need} pods ready at {self.step_text(i)}, "
            f"weight {st.canary_weight}% until they are back: {state.problems()}",
        )
        return False

    def not_judged(self, i: int, waited: float) -> bool:
        """Waiting for a passing analysis longer than progressDeadlineSeconds: roll back (True).

        Not with lowTraffic hold: lack of evidence is no verdict, so the canary waits at its weight
        for one (or for the promote or abort annotation)."""
        if waited <= self.limit or self.holding():
            return False
        text = (
            f"canary {self.st.canary_revision} (version {self.st.canary_version}) not judged "
            f"{waited:.0f}s after its wait ended (progressDeadlineSeconds {self.limit}): {self.waiting_text(i)}"
        )
        low = get_condition(self.st.conditions, r.LOW_TRAFFIC)
        if low is not None and low.status == "True":
            text += f"; {low.message}"
        self.event(r.PROGRESS_DEADLINE_EXCEEDED, text, warning=True)
        self.rollback(r.PROGRESS_DEADLINE_EXCEEDED, text, r.OUTCOME_ROLLED_BACK)
        return True

    def judge(self) -> bool:
        """Act on this tick's analysis, if one ran. True when the canary was rolled back."""
        st = self.st
        if self.obs.analysis is None:
            return False
        plan, results = self.obs.analysis
        if plan.revision != st.canary_revision or st.current_step is None:
            return False
        a = self.spec.rollout.analysis
        previous = st.last_analysis
        rec = evaluate(a, plan, results, fmt_time(self.now))
        st.last_analysis = self.d.analysis = rec
        if rec.verdict == "Error":
            if st.prometheus_unavailable_since is None:
                st.prometheus_unavailable_since = fmt_time(self.now)
                self.event(r.PROMETHEUS_UNAVAILABLE, f"holding the canary, not judging it: {rec.message}", warning=True)
            down = seconds_since(st.prometheus_unavailable_since, self.now)
            if down > self.limit:
                text = f"Prometheus unavailable for {down:.0f}s (> progressDeadlineSeconds {self.limit}): {rec.message}"
                self.rollback(r.PROMETHEUS_UNAVAILABLE, text, r.OUTCOME_ROLLED_BACK)
                return True
        elif st.prometheus_unavailable_since is not None:
            st.prometheus_unavailable_since = None
            self.event(r.PROMETHEUS_AVAILABLE, "Prometheus answers again; analysis continues")
        if rec.verdict == "Passed":
            st.failed_check_at = None
        if rec.verdict == "Failed":
            st.failed_check_at = fmt_time(self.now)
            st.failed_checks = (st.failed_checks or 0) + 1
            self.event(
                r.ANALYSIS_FAILED,
                f"check failed ({st.failed_checks} failed, failureLimit {a.failure_limit}): {rec.message}",
                warning=True,
            )
            if st.failed_checks > a.failure_limit:
                self.rollback(r.ANALYSIS_FAILED, rec.message, r.OUTCOME_ROLLED_BACK)
                return True
        elif rec.verdict != (previous.verdict if previous else None):  # a quiet canary: one Event, not one per check
            reason = r.ANALYSIS_PASSED if rec.verdict == "Passed" else r.ANALYSIS_INCONCLUSIVE
            if rec.verdict != "Error":
                self.event(reason, rec.message)
        return False

    def rollback(self, reason: str, message: str, outcome: str) -> None:
        st = self.st
        rev, ver = st.canary_revision or "", st.canary_version or ""
        self.history(rev, ver, outcome, message)
        self.event(
            r.ABORTED if outcome == r.OUTCOME_ABORTED else r.ROLLED_BACK,
            f"canary {rev} (version {ver}) rolled back to stable {st.stable_revision}: {message}",
            warning=True,
        )
        st.failed_revision, st.failed_version = rev, ver
        self._set(r.DEGRADED, "True", reason, message)
        self.drain()
        self.clear_canary()
        self.canary_replicas = 0

    def steps(self) -> None:
        st = self.st
        steps = self.spec.rollout.steps
        for _ in range(len(steps) + 2):
            assert st.current_step is not None
            i = st.current_step
            if not self.carrying(i):
                return
            self.canary_replicas = max(self.canary_replicas, canary_size(self.spec, st.canary_weight or 0)[0])
            if self.spec.paused:  # holds promotion too, even one asked for by annotation (as in Argo Rollouts)
                self.hold(
                    r.ROLLOUT_PAUSED,
                    f"spec.paused: holding at {self.step_text(i)}, weight {st.canary_weight}%",
                    paused=True,
                )
                return
            if i >= len(steps):
                self.promote()
                return
            step = steps[i]
            if step.set_weight is not None:
                if not self.wait_ready(canary_size(self.spec, step.set_weight), since=st.step_started_at):
                    return
                if self.obs.route is not None and not self.obs.route.found:
                    self.hold(r.ROUTE_NOT_FOUND, self.obs.route.message)
                    return
                old, st.canary_weight = st.canary_weight, canary_size(self.spec, step.set_weight)[1]
                self.event(r.WEIGHT_CHANGED, f"canary {st.canary_revision} weight {old}% -> {st.canary_weight}%")
                self.enter_step(i + 1)
                continue
            since = seconds_since(st.step_started_at, self.now)
            if step.shadow is not None:
                if self.shadowing(i, step.shadow, since):
                    return
                self.enter_step(i + 1)
                continue
            assert step.pause is not None
            if step.pause.seconds is None:
                self.hold(
                    r.STEP_PAUSED,
                    f"{self.step_text(i)}: paused at weight {st.canary_weight}% until {r.ANNOTATION_PROMOTE} is set",
                    paused=True,
                )
                return
            if since < step.pause.seconds:
                low = self.low_traffic(i, step.pause.seconds - since, "left in its pause", step.pause.seconds)
                self.hold(
                    r.STEP_PAUSED,
                    f"{self.step_text(i)}: at weight {st.canary_weight}% until "
                    f"{later(parse_time(st.step_started_at or fmt_time(self.now)), step.pause.seconds)}{low}",
                )
                return
            if (st.canary_weight or 0) > 0 and not passed_in_step(st):
                if not self.not_judged(i, since - step.pause.seconds):
                    left = self.deadline_left(since - step.pause.seconds)
                    low = self.low_traffic(i, left, "left", step.pause.seconds)
                    self.hold(r.WAITING_FOR_ANALYSIS, f"{self.waiting_text(i)}{low}")
                return
            self.enter_step(i + 1)

    def shadowing(self, i: int, step: ShadowStep, since: float) -> bool:
        """A shadow step: stable mirrors `percent` of its requests to the canary until the step's time
        is over and its check passed (True: the step goes on)."""
        st = self.st
        assert st.canary_revision is not None and st.stable_revision is not None
        a = self.spec.rollout.analysis
        if since >= step.seconds and passed_in_step(st):
            return False
        self.d.shadow = ShadowTarget(
            st.stable_revision, st.canary_revision, f"{self.meta.name}-canary", step.percent,
            a.agreement_tolerance, a.shadow.log_disagreements, diff_cap(a.max_mean_abs_diff),
        )  # fmt: skip
        if since < step.seconds:
            until = later(parse_time(st.step_started_at or fmt_time(self.now)), step.seconds)
            self.hold(
                r.SHADOWING,
                f"{self.step_text(i)}: {step.percent}% of stable's requests mirrored to canary "
                f"{st.canary_revision} (no user weight) until {until}",
            )
        elif not self.not_judged(i, since - step.seconds):
            self.hold(r.WAITING_FOR_ANALYSIS, self.waiting_text(i))
        else:
            self.d.shadow = None
        return True

    def waiting_text(self, i: int) -> str:
        last = self.st.last_analysis
        got = (
            f"; last: {last.verdict} ({last.message})"
            if last is not None and last.revision == self.st.canary_revision
            else ""
        )
        return f"{self.step_text(i)}: waiting for a passing analysis at weight {self.st.canary_weight}%{got}"

    # ----------------------------------------------------------------- analysis.lowTraffic
    def holding(self) -> bool:
        """lowTraffic hold once the step's checks have run: no progress deadline for their decision.
        What they decide still counts (Failed past failureLimit, Prometheus down past the deadline)."""
        return self.spec.rollout.analysis.low_traffic == "hold" and analysed_in_step(self.st)

    def deadline_left(self, waited: float) -> float:
        """The budget of a step whose own wait is over: progressDeadlineSeconds left before the canary
        is rolled back undecided; none (0) with lowTraffic hold, where the step is already late."""
        return 0.0 if self.spec.rollout.analysis.low_traffic == "hold" else max(0.0, self.limit - waited)

    def low_traffic(self, i: int, budget: float, where: str, pause: int) -> str:
        """The step's checks are Inconclusive and expected to decide later than `budget` seconds from
        now (the pause's remaining seconds while it runs, then the progress deadline's): say so in
        the LowTraffic condition (one Event per step) and act by analysis.lowTraffic. Returns the
        sentence for the Progressing message ('' when traffic is not short)."""
        st = self.st
        a = self.spec.rollout.analysis
        last = st.last_analysis
        if last is None or not analysed_in_step(st) or (st.canary_weight or 0) <= 0:
            return ""
        eta = decision_eta(last, a, grows=a.low_traffic in GROWING)
        if eta is None or eta.seconds <= budget:
            return ""
        started = parse_time(st.step_started_at or fmt_time(self.now))
        deadline = f"rolled back at {later(started, pause + self.limit)} if still undecided"
        raised: tuple[int, int, int, int] | None = None
        if a.low_traffic == "extend":
            reason = r.LOW_TRAFFIC_EXTENDED
            then = (
                f"lowTraffic extend: the step waits for a decision, its checks' window growing with it; {deadline} "
                f"(progressDeadlineSeconds {self.limit}s after its pause)"
            )
        elif a.low_traffic == "hold":
            reason = r.LOW_TRAFFIC_HELD
            then = (
                f"lowTraffic hold: held at weight {st.canary_weight}%, its checks' window growing, until they "
                f"decide or {r.ANNOTATION_PROMOTE} is set (no progress deadline)"
            )
        elif a.low_traffic == "raiseWeight":
            reason = r.LOW_TRAFFIC_RAISED
            raised = self.raise_target(i)
            if raised is None:
                then = f"lowTraffic raiseWeight: no later step has a higher weight than {st.canary_weight}%; {deadline}"
            else:
                cur, eff, pods, cap = raised
                then = f"lowTraffic raiseWeight: weight {cur}% -> {eff}% (at most the next step's {cap}%)"
                ready = self.revision_state(st.canary_revision).ready_replicas
                if ready < pods:
                    then += f" once {pods} canary pods are ready ({ready} now)"
                    raised = None
                else:
                    then += f", {self.step_text(i)} starts over at it"
        else:
            reason = r.LOW_TRAFFIC_REPORTED
            then = f"{deadline} (set analysis.lowTraffic to extend, raiseWeight or hold to act on it)"
        message = (
            f"low traffic at {self.step_text(i)}, weight {st.canary_weight}%: {eta.text()}, "
            f"more than the {budget:.0f}s {where}; {then}"
        )
        old = get_condition(st.conditions, r.LOW_TRAFFIC)
        if old is None or old.status != "True":
            self.event(r.LOW_TRAFFIC, message, warning=True)
        self._set(r.LOW_TRAFFIC, "True", reason, message)
        if raised is not None:
            cur, eff, _, cap = raised
            st.canary_weight = eff
            st.step_started_at = fmt_time(self.now)  # the new weight is judged over its own window, for a whole pause
            self.event(
                r.WEIGHT_CHANGED,
                f"canary {st.canary_revision} weight {cur}% -> {eff}% (lowTraffic raiseWeight, at most the next "
                f"step's {cap}%): {self.step_text(i)} starts over",
            )
        return f"; {message}"

    def raise_target(self, i: int) -> tuple[int, int, int, int] | None:
        """lowTraffic raiseWeight: (weight now, raised weight, canary pods it needs, cap). Doubled, at
        most the next setWeight step's weight (the exposure the owner planned next, reached sooner,
        never beyond it); None when no later step has a higher one."""
        cur = self.st.canary_weight or 0
        steps = self.spec.rollout.steps
        cap = next((s.set_weight for s in steps[i + 1 :] if s.set_weight is not None), None)
        if cur <= 0 or cap is None:
            return None
        pods, eff = canary_size(self.spec, min(2 * cur, cap))
        if eff <= cur:  # replica ratio: doubling may round to the same share; try the cap itself
            pods, eff = canary_size(self.spec, cap)
        if eff <= cur:
            return None
        self.canary_replicas = max(self.canary_replicas, pods)
        return cur, eff, pods, cap

    def promote(self) -> None:
        st = self.st
        steps = self.spec.rollout.steps
        if gate_waiting(self.spec, st, 0) and (st.canary_weight or 0) > 0 and not passed_in_step(st):
            waited = seconds_since(st.step_started_at, self.now)
            if not self.not_judged(len(steps), waited):
                low = self.low_traffic(len(steps), self.deadline_left(waited), "left", 0)
                self.hold(r.WAITING_FOR_ANALYSIS, f"{self.waiting_text(len(steps))}{low}")
            return
        if not self.wait_ready((self.spec.replicas, 100), since=st.step_started_at):
            return
        old, old_v = st.stable_revision, st.stable_version
        rev, ver = st.canary_revision or "", st.canary_version or ""
        how = "by annotation" if st.promote_requested else "all steps passed"
        self.history(rev, ver, r.OUTCOME_PROMOTED, how)
        self.event(
            r.PROMOTED,
            f"revision {rev} (version {ver}) promoted to stable ({how}); previous stable {old} "
            f"(version {old_v}) scales down in {self.config.scale_down_delay_seconds}s",
        )
        st.scale_down_revision, st.scale_down_at = old, later(self.now, self.config.scale_down_delay_seconds)
        st.stable_revision, st.stable_version = rev, ver
        self.clear_canary()
        self.canary_replicas = 0

    def scale_down_old(self) -> None:
        st = self.st
        if st.scale_down_revision is None or st.scale_down_at is None:
            return
        if st.scale_down_revision in (st.stable_revision, st.canary_revision):
            st.scale_down_revision = st.scale_down_at = None
        elif seconds_since(st.scale_down_at, self.now) >= 0:
            self.event(r.OLD_REVISION_SCALED_DOWN, f"previous stable revision {st.scale_down_revision} scaled to 0")
            st.scale_down_at = None
