"""The last rung of a tick: conditions, phase and message from what the ladder decided, and the
desired children (Deployments per revision, the three Services, the route's weights). Pure.

A mixin of `ladder.Tick` (which sets the attributes declared here); split out for size.
"""

from __future__ import annotations

from datetime import datetime

from modeldeploy_operator import reasons as r
from modeldeploy_operator.api import ModelDeploymentSpec, ModelDeploymentStatus
from modeldeploy_operator.children import Owner, deployment, deployment_name, services
from modeldeploy_operator.conditions import get_condition, set_condition
from modeldeploy_operator.model import Config, Decision, Meta, Observed, RevisionState, RouteWeights, parse_time


def step_weight(spec: ModelDeploymentSpec, i: int) -> int:
    """The weight the canary carries while at step i: the last setWeight before it (0 if none)."""
    return next((s.set_weight for s in reversed(spec.rollout.steps[:i]) if s.set_weight is not None), 0)


def before_weight(spec: ModelDeploymentSpec, st: ModelDeploymentStatus) -> bool:
    """A canary of a rollout with shadow steps that has not reached a weight yet: it serves no user,
    in replica-ratio mode too (the Service `<name>` then selects the stable revision only)."""
    return (
        st.canary_revision is not None
        and any(s.shadow is not None for s in spec.rollout.steps)
        and (st.current_step is None or step_weight(spec, st.current_step) == 0)
    )


def analysed_in_step(st: ModelDeploymentStatus) -> bool:
    last = st.last_analysis
    return (
        last is not None
        and st.step_started_at is not None
        and last.revision == st.canary_revision
        and last.step == st.current_step
        and parse_time(last.time) >= parse_time(st.step_started_at)
    )


def passed_in_step(st: ModelDeploymentStatus) -> bool:
    return analysed_in_step(st) and st.last_analysis is not None and st.last_analysis.verdict == "Passed"


def routed(spec: ModelDeploymentSpec) -> bool:
    routing = spec.rollout.traffic_routing
    return routing is not None and routing.gateway_api is not None


class Report:
    spec: ModelDeploymentSpec
    st: ModelDeploymentStatus
    obs: Observed
    now: datetime
    meta: Meta
    config: Config
    d: Decision
    rev: str
    image: str
    canary_replicas: int
    progress: tuple[str, str]

    def state(self, revision: str | None) -> RevisionState:
        return self.obs.revisions.get(revision or "", RevisionState())

    def first_deploy_pending(self) -> bool:
        return self.st.canary_revision is None and self.st.step_started_at is not None

    def finish(self) -> Decision:
        st, gen, now = self.st, self.meta.generation, self.now
        st.observed_generation = gen
        assert st.stable_revision is not None
        stable = self.state(st.stable_revision)
        ready = stable.ready_replicas
        if ready >= self.spec.replicas:
            ready_c = (
                "True",
                r.STABLE_AVAILABLE,
                f"{ready}/{self.spec.replicas} pods of stable revision {st.stable_revision} "
                f"(version {st.stable_version}) ready",
            )
        else:
            ready_c = (
                "False",
                r.STABLE_UNAVAILABLE,
                f"{ready}/{self.spec.replicas} pods of stable revision {st.stable_revision} ready: {stable.problems()}",
            )
        st.conditions = set_condition(st.conditions, r.READY, ready_c[0], ready_c[1], ready_c[2], gen, now)  # type: ignore[arg-type]
        degraded = get_condition(st.conditions, r.DEGRADED)
        failed_now = st.failed_revision is not None and st.failed_revision == self.rev
        if st.canary_revision is not None or self.first_deploy_pending():
            reason, msg = self.progress
            if st.prometheus_unavailable_since is not None and st.last_analysis is not None:
                reason = r.PROMETHEUS_UNAVAILABLE
                msg = (
                    f"holding: Prometheus unavailable since {st.prometheus_unavailable_since} "
                    f"({st.last_analysis.message}); {msg}"
                )
            st.conditions = set_condition(st.conditions, r.PROGRESSING, "True", reason, msg, gen, now)
            if self.first_deploy_pending():
                st.phase = r.PHASE_DEGRADED if degraded is not None and degraded.status == "True" else r.PHASE_DEPLOYING
            elif reason in (r.ROLLOUT_PAUSED, r.STEP_PAUSED) and (
                self.spec.paused or st.current_step is not None and self.is_indefinite()
            ):
                st.phase = r.PHASE_PAUSED
            elif st.current_step is not None and st.current_step >= len(self.spec.rollout.steps):
                st.phase = r.PHASE_PROMOTING
            else:
                st.phase = r.PHASE_PROGRESSING
            st.message = msg
        elif failed_now and degraded is not None and degraded.status == "True":
            st.conditions = set_condition(
                st.conditions,
                r.PROGRESSING,
                "False",
                r.ROLLED_BACK if degraded.reason != r.ABORTED else r.ABORTED,
                degraded.message,
                gen,
                now,
            )
            st.phase = r.PHASE_ABORTED if degraded.reason == r.ABORTED else r.PHASE_ROLLED_BACK
            st.message = (
                f"revision {st.failed_revision} (version {st.failed_version}) {st.phase}: {degraded.message}; "
                f"serving stable {st.stable_revision} (version {st.stable_version})"
            )
        else:
            if not failed_now and degraded is not None and degraded.status == "True":
                st.conditions = set_condition(st.conditions, r.DEGRADED, "False", r.AS_EXPECTED, "", gen, now)
            reason, msg = self.progress
            if reason in (r.ROLLOUT_PAUSED, r.CANARY_QUEUED):
                st.conditions = set_condition(st.conditions, r.PROGRESSING, "True", reason, msg, gen, now)
                st.phase = r.PHASE_PAUSED if reason == r.ROLLOUT_PAUSED else r.PHASE_PROGRESSING
                st.message = msg
            else:
                st.conditions = set_condition(
                    st.conditions,
                    r.PROGRESSING,
                    "False",
                    r.ROLLOUT_COMPLETE,
                    f"serving revision {st.stable_revision} (version {st.stable_version})",
                    gen,
                    now,
                )
                st.phase = r.PHASE_HEALTHY if ready_c[0] == "True" else r.PHASE_DEGRADED
                st.message = ready_c[2]
        if get_condition(st.conditions, r.DEGRADED) is None:
            st.conditions = set_condition(st.conditions, r.DEGRADED, "False", r.AS_EXPECTED, "", gen, now)
        if st.canary_revision is None:
            st.canary_weight = 0
        self.children()
        return self.d

    def rolled_back_pods_remain(self) -> bool:
        """No canary runs and the rolled-back revision still has pods (scaled to 0 this tick, or
        terminating): `<name>` selects the stable revision only until they are gone. Selecting every
        revision at once let the EndpointSlice controller add the canary's still-ready pods to
        `<name>` for the moment before their deletion, so users of a canary rolled back in its
        shadow step (replica-ratio mode) could reach the pods that never had their weight."""
        st = self.st
        failed = st.failed_revision
        if st.canary_revision is not None or failed is None or failed == st.stable_revision:
            return False
        pods = self.state(failed)
        return pods.ready_replicas > 0 or bool(pods.pods)

    def is_indefinite(self) -> bool:
        i = self.st.current_step
        steps = self.spec.rollout.steps
        if i is None or i >= len(steps):
            return False
        pause = steps[i].pause
        return pause is not None and pause.seconds is None

    def children(self) -> None:
        st, spec, meta = self.st, self.spec, self.meta
        assert st.stable_revision is not None
        owner = Owner(meta.name, meta.namespace, meta.uid)
        want: dict[str, int] = {st.stable_revision: spec.replicas}
        if st.canary_revision is not None:
            want[st.canary_revision] = max(self.canary_replicas, 1)
        draining = st.draining_revision if st.draining_revision not in want else None
        if draining is not None:
            self.d.keep.append(deployment_name(meta.name, draining))
        if st.scale_down_revision is not None and st.scale_down_revision not in want:
            want[st.scale_down_revision] = spec.replicas if st.scale_down_at is not None else 0
        if st.failed_revision is not None and st.failed_revision not in want and st.failed_revision != draining:
            want[st.failed_revision] = 0
        for rev, replicas in want.items():
            if rev == self.rev:  # only the desired revision's template is known: the others are only scaled
                self.d.deployments.append(deployment(owner, spec, rev, replicas, self.image))
            else:
                self.d.scales[deployment_name(meta.name, rev)] = replicas
        ready_canary = st.canary_revision if st.current_step is not None else None
        self.d.services = services(
            owner, st.stable_revision, ready_canary or draining or st.canary_revision,
            users_stable_only=(before_weight(spec, st) and draining is None) or self.rolled_back_pods_remain(),
        )  # fmt: skip
        routing = spec.rollout.traffic_routing
        if routing is not None and routing.gateway_api is not None:
            w = st.canary_weight or 0
            self.d.route = RouteWeights(
                routing.gateway_api.http_route, f"{meta.name}-stable", f"{meta.name}-canary", 100 - w, w
            )
