"""A fake world for tick-by-tick scenario tests of the pure core (no I/O, no clock).

Pods become ready `ready_after` seconds after their Deployment asks for them (never, for a
revision in `broken`); a fake Prometheus answers each planned query from a per-revision profile;
every tick runs `plan_analysis` then `decide` exactly as the kopf shell does, applies the
decision to the fake world, and optionally round-trips the status through JSON (an operator
restart: the next tick sees only what the API server would return).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from modeldeploy_operator import analysis, reasons
from modeldeploy_operator.analysis import AnalysisPlan, QueryResult
from modeldeploy_operator.api import ModelDeploymentStatus, parse_spec
from modeldeploy_operator.children import deployment_name
from modeldeploy_operator.core import decide, plan_analysis
from modeldeploy_operator.model import Config, Decision, Meta, Observed, PodState, RevisionState, RouteState
from modeldeploy_operator.revision import resolve_image, revision_of

START = datetime(2026, 11, 21, 13, 0, 0, tzinfo=UTC)
DIGEST = "ab" * 32


def spec_dict(version: str = "1", **rollout: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "model": {"uri": f"http://127.0.0.1:9/iris/{version}/model.joblib", "sha256": DIGEST, "version": version},
        "inputs": [{"name": "a", "min": 0, "max": 10}],
        "replicas": 2,
        "rollout": {
            "steps": [{"setWeight": 10}, {"pause": {"seconds": 10}}, {"setWeight": 50}, {"pause": {"seconds": 10}}],
            "analysis": {
                "intervalSeconds": 5,
                "minRequests": 50,
                "failureLimit": 1,
                "maxErrorRate": 0.01,
                "maxLatencyP99Seconds": 0.25,
            },
            "trafficRouting": {"gatewayAPI": {"httpRoute": "iris"}},
            "progressDeadlineSeconds": 60,
        },
    }
    base["rollout"].update(rollout)
    return base


def profile(
    requests: float = 200, errors: float = 0, p99: float = 0.05, fail: str | None = None
) -> Callable[[AnalysisPlan], dict[str, QueryResult]]:
    def answer(plan: AnalysisPlan) -> dict[str, QueryResult]:
        if fail is not None:
            return {q.name: QueryResult(error=fail) for q in plan.queries}
        values = {analysis.REQUESTS: requests, analysis.ERRORS: errors, analysis.LATENCY_P99: p99}
        return {q.name: QueryResult(value=values.get(q.name)) for q in plan.queries}

    return answer


HEALTHY = profile()


@dataclass
class Sim:
    spec: dict[str, Any]
    roundtrip: bool = False
    ready_after: float = 2
    config: Config = field(default_factory=lambda: Config(scale_down_delay_seconds=10))
    now: datetime = START
    status: ModelDeploymentStatus = field(default_factory=ModelDeploymentStatus)
    annotations: dict[str, str] = field(default_factory=dict)
    broken: set[str] = field(default_factory=set)
    exit_codes: dict[str, tuple[int, str | None]] = field(default_factory=dict)
    prom: dict[str, Callable[[AnalysisPlan], dict[str, QueryResult]]] = field(default_factory=dict)
    desired: dict[str, int] = field(default_factory=dict)
    ready: dict[str, int] = field(default_factory=dict)
    asked_at: dict[str, datetime] = field(default_factory=dict)
    route_found: bool = True
    may_start_canary: bool = True
    clear_fails: bool = False  # the annotation-clearing write fails (the request stays on the object)
    generation: int = 1
    decisions: list[Decision] = field(default_factory=list)
    trace: list[tuple[int, str | None, int | None, int | None]] = field(default_factory=list)
    plans: list[AnalysisPlan] = field(default_factory=list)

    def revision(self, version: str | None = None) -> str:
        spec = parse_spec(
            self.spec
            if version is None
            else {
                **self.spec,
                "model": {
                    **self.spec["model"],
                    "version": version,
                    "uri": self.spec["model"]["uri"].replace(f"/{self.spec['model']['version']}/", f"/{version}/"),
                },
            }
        )
        return revision_of(spec, resolve_image(spec, self.config.image))

    def set_version(self, version: str) -> str:
        old = self.spec["model"]["version"]
        self.spec = {
            **self.spec,
            "model": {
                **self.spec["model"],
                "version": version,
                "uri": self.spec["model"]["uri"].replace(f"/{old}/", f"/{version}/"),
            },
        }
        self.generation += 1
        return self.revision()

    def kill(self, revision: str, exit_code: int = 137, message: str | None = None) -> None:
        """Every pod of `revision` dies now and never comes back (OOMKilled, a refusal, a crash loop)."""
        self.broken.add(revision)
        self.ready[revision] = 0
        self.exit_codes[revision] = (exit_code, message)

    def observe_revisions(self) -> dict[str, RevisionState]:
        out = {}
        for rev, want in self.desired.items():
            have = self.ready.get(rev, 0)
            if want <= have:
                have = want
            elif rev not in self.broken and self.now - self.asked_at.get(rev, self.now) >= timedelta(
                seconds=self.ready_after
            ):
                have = want
            self.ready[rev] = have
            pods = (
                tuple(
                    PodState(
                        f"pod-{rev}-{i}",
                        ready=False,
                        restart_count=3,
                        waiting_reason="CrashLoopBackOff",
                        waiting_message="back-off 40s restarting failed container",
                        exit_code=self.exit_codes.get(rev, (1, None))[0],
                        terminated_reason="Error",
                        terminated_message=self.exit_codes.get(rev, (1, None))[1],
                    )
                    for i in range(want - have)
                )
                if rev in self.broken
                else ()
            )
            out[rev] = RevisionState(ready_replicas=have, pods=pods)
        return out

    def tick(self, seconds: float = 1) -> Decision:
        spec = parse_spec(self.spec)
        meta = Meta("iris", "ml", "uid-1", self.generation)
        plan = plan_analysis(spec, self.status, self.now, meta=meta, config=self.config)
        results = None
        if plan is not None:
            self.plans.append(plan)
            results = (plan, self.prom.get(plan.revision, HEALTHY)(plan))
        obs = Observed(
            revisions=self.observe_revisions(),
            annotations=dict(self.annotations),
            route=RouteState(found=self.route_found, message="HTTPRoute iris not found"),
            analysis=results,
            may_start_canary=self.may_start_canary,
        )
        d = decide(spec, self.status, obs, self.now, meta=meta, config=self.config)
        if not self.clear_fails:
            for key in d.clear_annotations:
                self.annotations.pop(key, None)
        want: dict[str, int] = {}
        for dep in d.deployments:
            want[dep["metadata"]["labels"]["modeldeploy.io/revision"]] = dep["spec"]["replicas"]
        for name, replicas in d.scales.items():
            want[name.removeprefix("iris-")] = replicas
        for name in d.keep:
            want[name.removeprefix("iris-")] = self.desired.get(name.removeprefix("iris-"), 0)
        for rev, n in want.items():
            if n > self.desired.get(rev, 0):
                self.asked_at[rev] = self.now
        self.desired = want
        if self.roundtrip:  # what a new process would read back from the API server
            self.status = ModelDeploymentStatus.model_validate(
                json.loads(json.dumps(d.status.model_dump(by_alias=True, mode="json")))
            )
        else:
            self.status = d.status
        self.decisions.append(d)
        self.trace.append(
            (int((self.now - START).total_seconds()), d.status.phase, d.status.canary_weight, d.status.current_step)
        )
        self.now += timedelta(seconds=seconds)
        return d

    def run(self, seconds: int, until: Callable[[Sim], bool] | None = None) -> None:
        for _ in range(seconds):
            self.tick()
            if until is not None and until(self):
                return

    def events(self) -> list[tuple[str, str]]:
        return [(e.reason, e.message) for d in self.decisions for e in d.events]

    def reasons(self) -> list[str]:
        return [e.reason for d in self.decisions for e in d.events]

    def weights(self) -> list[int]:
        """The sequence of distinct route canary weights the operator applied."""
        out: list[int] = []
        for d in self.decisions:
            if d.route is not None and (not out or out[-1] != d.route.canary_weight):
                out.append(d.route.canary_weight)
        return out

    def phase(self) -> str | None:
        return self.status.phase


def deployment_names(d: Decision) -> list[str]:
    return [dep["metadata"]["name"] for dep in d.deployments] + list(d.scales)


__all__ = ["Sim", "profile", "spec_dict", "deployment_name", "deployment_names", "HEALTHY", "START"]


def deployed(**rollout: object) -> Sim:
    sim = Sim(spec_dict(**rollout))  # type: ignore[arg-type]
    sim.run(10, until=lambda s: s.phase() == reasons.PHASE_HEALTHY)
    assert sim.phase() == reasons.PHASE_HEALTHY
    return sim


def cond(sim: Sim, type_: str) -> tuple[str, str]:
    c = next(c for c in sim.status.conditions if c.type == type_)
    return c.status, c.reason
