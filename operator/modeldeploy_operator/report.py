"""The last rung of a tick, as pure functions of what the ladder decided: the derived status
view (observedGeneration, conditions, phase, message; `status_view`) and the desired children
(Deployments per revision, the three Services, the route's weights; `desired_children`).

`ladder.Tick.finish` calls both with the status it built and its `Hold` (what holds the rollout
this tick, or nothing).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from modeldeploy_operator import reasons as r
from modeldeploy_operator.api import ModelDeploymentSpec, ModelDeploymentStatus
from modeldeploy_operator.children import Owner, deployment, deployment_name, services
from modeldeploy_operator.conditions import get_condition, set_condition
from modeldeploy_operator.model import Meta, Observed, RevisionState, RouteWeights, parse_time


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


@dataclass(frozen=True)
class Hold:
    """What holds the rollout this tick: Progressing's reason and message, and whether it waits for
    a person (`paused`: spec.paused, or a pause step without seconds), which makes the phase
    Paused. The default, ROLLOUT_COMPLETE, holds nothing."""

    reason: str = r.ROLLOUT_COMPLETE
    message: str = ""
    paused: bool = False


@dataclass
class Children:
    """The desired children: the desired revision's Deployment in full, the other revisions only
    scaled, Deployments kept as they are (a draining canary), the Services and the route."""

    deployments: list[dict[str, Any]] = field(default_factory=list)
    scales: dict[str, int] = field(default_factory=dict)
    keep: list[str] = field(default_factory=list)
    services: list[dict[str, Any]] = field(default_factory=list)
    route: RouteWeights | None = None


def state_of(obs: Observed, revision: str | None) -> RevisionState:
    return obs.revisions.get(revision or "", RevisionState())


def first_deploy_pending(st: ModelDeploymentStatus) -> bool:
    return st.canary_revision is None and st.step_started_at is not None


def rolled_back_pods_remain(st: ModelDeploymentStatus, obs: Observed) -> bool:
    """No canary runs and the rolled-back revision still has pods (scaled to 0 this tick, or
    terminating): `<name>` selects the stable revision only until they are gone. Selecting every
    revision at once let the EndpointSlice controller add the canary's still-ready pods to
    `<name>` for the moment before their deletion, so users of a canary rolled back in its
    shadow step (replica-ratio mode) could reach the pods that never had their weight."""
    failed = st.failed_revision
    if st.canary_revision is not None or failed is None or failed == st.stable_revision:
        return False
    pods = state_of(obs, failed)
    return pods.ready_replicas > 0 or bool(pods.pods)


def status_view(
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    obs: Observed,
    meta: Meta,
    now: datetime,
    hold: Hold,
    desired_revision: str,
) -> ModelDeploymentStatus:
    """`status` with its derived fields set from the rest of it: observedGeneration, the Ready,
    Progressing and Degraded conditions, phase, message, and canaryWeight 0 without a canary.
    A new status; `status` is not changed."""
    st, gen = status.model_copy(), meta.generation
    st.observed_generation = gen
    assert st.stable_revision is not None
    stable = state_of(obs, st.stable_revision)
    ready = stable.ready_replicas
    if ready >= spec.replicas:
        ready_c = (
            "True",
            r.STABLE_AVAILABLE,
            f"{ready}/{spec.replicas} pods of stable revision {st.stable_revision} (version {st.stable_version}) ready",
        )
    else:
        ready_c = (
            "False",
            r.STABLE_UNAVAILABLE,
            f"{ready}/{spec.replicas} pods of stable revision {st.stable_revision} ready: {stable.problems()}",
        )
    st.conditions = set_condition(st.conditions, r.READY, ready_c[0], ready_c[1], ready_c[2], gen, now)  # type: ignore[arg-type]
    degraded = get_condition(st.conditions, r.DEGRADED)
    failed_now = st.failed_revision is not None and st.failed_revision == desired_revision
    pending = first_deploy_pending(st)
    if st.canary_revision is not None or pending:
        reason, msg = hold.reason, hold.message
        if st.prometheus_unavailable_since is not None and st.last_analysis is not None:
            reason = r.PROMETHEUS_UNAVAILABLE
            msg = (
                f"holding: Prometheus unavailable since {st.prometheus_unavailable_since} "
                f"({st.last_analysis.message}); {msg}"
            )
        st.conditions = set_condition(st.conditions, r.PROGRESSING, "True", reason, msg, gen, now)
        if pending:
            st.phase = r.PHASE_DEGRADED if degraded is not None and degraded.status == "True" else r.PHASE_DEPLOYING
        elif hold.paused and reason == hold.reason:  # not when Prometheus' outage is the news
            st.phase = r.PHASE_PAUSED
        elif st.current_step is not None and st.current_step >= len(spec.rollout.steps):
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
        if hold.reason in (r.ROLLOUT_PAUSED, r.CANARY_QUEUED):
            st.conditions = set_condition(st.conditions, r.PROGRESSING, "True", hold.reason, hold.message, gen, now)
            st.phase = r.PHASE_PAUSED if hold.paused else r.PHASE_PROGRESSING
            st.message = hold.message
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
    return st


def desired_children(
    spec: ModelDeploymentSpec,
    st: ModelDeploymentStatus,
    obs: Observed,
    meta: Meta,
    desired_revision: str,
    image: str,
    canary_replicas: int,
) -> Children:
    """The children of the status `st`: stable at spec.replicas, the canary at `canary_replicas`
    (at least 1), a revision being scaled down or rolled back at its size, a draining one kept."""
    assert st.stable_revision is not None
    out = Children()
    owner = Owner(meta.name, meta.namespace, meta.uid)
    want: dict[str, int] = {st.stable_revision: spec.replicas}
    if st.canary_revision is not None:
        want[st.canary_revision] = max(canary_replicas, 1)
    draining = st.draining_revision if st.draining_revision not in want else None
    if draining is not None:
        out.keep.append(deployment_name(meta.name, draining))
    if st.scale_down_revision is not None and st.scale_down_revision not in want:
        want[st.scale_down_revision] = spec.replicas if st.scale_down_at is not None else 0
    if st.failed_revision is not None and st.failed_revision not in want and st.failed_revision != draining:
        want[st.failed_revision] = 0
    for rev, replicas in want.items():
        if rev == desired_revision:  # only the desired revision's template is known: the others are only scaled
            out.deployments.append(deployment(owner, spec, rev, replicas, image))
        else:
            out.scales[deployment_name(meta.name, rev)] = replicas
    ready_canary = st.canary_revision if st.current_step is not None else None
    out.services = services(
        owner, st.stable_revision, ready_canary or draining or st.canary_revision,
        users_stable_only=(before_weight(spec, st) and draining is None) or rolled_back_pods_remain(st, obs),
    )  # fmt: skip
    routing = spec.rollout.traffic_routing
    if routing is not None and routing.gateway_api is not None:
        w = st.canary_weight or 0
        out.route = RouteWeights(
            routing.gateway_api.http_route, f"{meta.name}-stable", f"{meta.name}-canary", 100 - w, w
        )
    return out
