"""A fake API server for one ModelDeployment and its children, for shell tests of the kopf handler.

It has what the bugs of issue 11 need and nothing more: resourceVersions that move on every
write, conditional writes (a stale resourceVersion gets 409), kopf's own unconditional merge
patches (`kopf_patch`, what kopf does with a handler's `patch`), pods that are ready as soon as
they are asked for unless their revision is dead, one HTTPRoute whose canary weight is recorded
on every change, and queues of errors to inject into status writes and child applies.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import kopf
from kubernetes.client.exceptions import ApiException

from modeldeploy_operator import handlers
from modeldeploy_operator.analysis import AnalysisPlan, QueryResult
from modeldeploy_operator.kube import BatchObservation, Observation
from modeldeploy_operator.model import Config, Decision, Event, Meta, RevisionState, RouteState
from modeldeploy_operator.settings import OperatorSettings
from tests.operator.sim import HEALTHY, Sim

Profile = Callable[[AnalysisPlan], dict[str, QueryResult]]


def api_error(status: int, reason: str = "") -> ApiException:
    return ApiException(status=status, reason=reason or {409: "Conflict", 403: "Forbidden"}.get(status, "Error"))


def merge(into: dict[str, Any], patch: dict[str, Any]) -> None:
    """RFC 7386 merge patch."""
    for k, v in patch.items():
        if v is None:
            into.pop(k, None)
        elif isinstance(v, dict) and isinstance(into.get(k), dict):
            merge(into[k], v)
        else:
            into[k] = copy.deepcopy(v)


class FakeProm:
    def __init__(self, profile: Profile = HEALTHY) -> None:
        self.profile = profile

    def run(self, plan: AnalysisPlan, at: datetime) -> dict[str, QueryResult]:
        return self.profile(plan)


class FakeCluster:
    def __init__(self, sim: Sim) -> None:
        self.obj: dict[str, Any] = {
            "apiVersion": "modeldeploy.io/v1alpha1",
            "kind": "ModelDeployment",
            "metadata": {"name": "iris", "namespace": "ml", "uid": "uid-1", "generation": sim.generation,
                         "resourceVersion": "1", "annotations": {}},
            "spec": copy.deepcopy(sim.spec),
            "status": sim.status.model_dump(by_alias=True, mode="json", exclude_none=True),
        }  # fmt: skip
        self.rv = 1
        self.desired: dict[str, int] = dict(sim.desired)
        self.dead: set[str] = set()
        self.route_weight = sim.status.canary_weight or 0
        self.weights: list[int] = [self.route_weight]
        self.fail_status: list[ApiException] = []
        self.fail_apply: list[ApiException] = []
        self.events: list[Event] = []
        self.finalizer = "modeldeploy.io/finalizer"  # an unsharded operator's (Kube.finalizer)
        # the revisions' pod templates (the stable one renders the batch CronJobs) and batch children
        self.templates: dict[str, dict[str, Any]] = {
            dep["metadata"]["name"]: dep["spec"]["template"] for d in sim.decisions for dep in d.deployments
        }
        self.batch = BatchObservation()
        self.autoscaling: dict[str, dict[str, Any]] = {}  # kind -> the applied HPA / PDB

    # ---------------------------------------------------------------- what people and kopf do
    def _bump(self) -> str:
        self.rv += 1
        self.obj["metadata"]["resourceVersion"] = str(self.rv)
        return str(self.rv)

    def snapshot(self) -> dict[str, Any]:
        return copy.deepcopy(self.obj)

    def set_version(self, version: str) -> None:
        """A user applies model version `version` (its uri has the version as a folder, as sim's)."""
        model = self.obj["spec"]["model"]
        uri = model["uri"].replace(f"/{model['version']}/", f"/{version}/")
        self.obj["spec"]["model"] = {**model, "version": version, "uri": uri}
        self.obj["metadata"]["generation"] += 1
        self._bump()

    def annotate(self, key: str, value: str | None) -> None:
        merge(self.obj["metadata"], {"annotations": {key: value}})
        self._bump()

    def kopf_patch(self, patch: kopf.Patch) -> None:
        """What kopf does with a handler's patch: metadata, then status, unconditionally."""
        raw = dict(patch)
        if raw.get("metadata"):
            merge(self.obj["metadata"], raw["metadata"])
            self._bump()
        if raw.get("status"):
            merge(self.obj.setdefault("status", {}), raw["status"])
            self._bump()

    @property
    def status(self) -> dict[str, Any]:
        return dict(self.obj.get("status") or {})

    # ---------------------------------------------------------------- the Kube interface
    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.snapshot()

    def _check(self, rv: str) -> None:
        if rv != self.obj["metadata"]["resourceVersion"]:
            raise api_error(409)

    def write_status(self, meta: Meta, rv: str, changed: dict[str, Any]) -> str:
        if self.fail_status:
            raise self.fail_status.pop(0)
        self._check(rv)
        merge(self.obj.setdefault("status", {}), changed)
        return self._bump()

    def clear_annotations(self, meta: Meta, rv: str, keys: list[str]) -> str:
        self._check(rv)
        merge(self.obj["metadata"], {"annotations": dict.fromkeys(keys)})
        return self._bump()

    def observe(self, meta: Meta, http_route: str | None) -> Observation:
        out = Observation()
        for rev, n in self.desired.items():
            out.owned_deployments[f"iris-{rev}"] = n
            out.revisions[rev] = RevisionState(ready_replicas=0 if rev in self.dead else n)
        out.route = RouteState(True)
        out.route_body = {"metadata": {"resourceVersion": "1"}, "spec": {"rules": []}}
        out.templates = {name: t for name, t in self.templates.items() if name in out.owned_deployments}
        return out

    def apply_autoscaling(self, meta: Meta, objects: list[dict[str, Any]]) -> None:
        self.autoscaling = {o["kind"]: o for o in objects}

    def delete_autoscaling(self, meta: Meta) -> None:
        self.autoscaling = {}

    def observe_batch(self, meta: Meta) -> BatchObservation:
        return copy.deepcopy(self.batch)

    def apply_batch(self, meta: Meta, cronjobs: list[dict[str, Any]], seen: BatchObservation) -> None:
        kept = {c["metadata"]["name"]: self.batch.cronjobs.get(c["metadata"]["name"], {}) for c in cronjobs}
        self.batch.cronjobs = {c["metadata"]["name"]: {**c, "status": kept[c["metadata"]["name"]].get("status", {})}
                               for c in cronjobs}  # fmt: skip

    def apply(self, decision: Decision, meta: Meta, seen: Observation) -> None:
        if decision.route is not None and decision.route.canary_weight != self.route_weight:
            self.route_weight = decision.route.canary_weight
            self.weights.append(self.route_weight)
        if self.fail_apply:  # the route went first; a Deployment write is refused
            raise self.fail_apply.pop(0)
        self.templates.update({dep["metadata"]["name"]: dep["spec"]["template"] for dep in decision.deployments})
        want = {dep["metadata"]["labels"]["modeldeploy.io/revision"]: dep["spec"]["replicas"]
                for dep in decision.deployments}  # fmt: skip
        want.update({name.removeprefix("iris-"): n for name, n in decision.scales.items()})
        kept = [name.removeprefix("iris-") for name in decision.keep]
        want.update({rev: self.desired.get(rev, 0) for rev in kept})
        self.desired = want

    @property
    def own_finalizers(self) -> frozenset[str]:  # as Kube.own_finalizers
        from modeldeploy_operator.kube import finalizer_names

        return finalizer_names(self.finalizer)

    def release(self, meta: Meta) -> bool:
        held = self.obj["metadata"].get("finalizers") or []
        kept = [f for f in held if f not in self.own_finalizers]
        if kept == held:
            return False
        self.obj["metadata"]["finalizers"] = kept
        self._bump()
        return True

    def drop_finalizers(self, meta: Meta, rv: str, finalizers: list[str]) -> None:
        self._check(rv)
        self.obj["metadata"]["finalizers"] = [f for f in self.obj["metadata"]["finalizers"] if f not in finalizers]
        self._bump()


class Operator:
    """The real kopf handler (from `handlers.register`) with fake clients in its memo."""

    def __init__(self, world: FakeCluster, prom: FakeProm, monkeypatch: Any) -> None:
        registry = kopf.OperatorRegistry()
        handlers.register(registry, OperatorSettings())
        (self.fn,) = [h.fn for h in registry._spawning.get_all_handlers() if h.id == "reconcile"]
        self.world, self.prom = world, prom
        self.memo = kopf.Memo()
        config = Config(scale_down_delay_seconds=10, drain_seconds=0)
        self.memo.kube, self.memo.prom = world, prom  # the names of the memo before issue 11
        if hasattr(handlers, "Shell"):
            self.memo.shell = handlers.Shell(world, prom, config, post=lambda obj, e: world.events.append(e))  # type: ignore[arg-type]

        def kopf_event(obj: Any, *, type: str, reason: str, message: str = "", **_: Any) -> None:  # noqa: A002
            world.events.append(Event(type, reason, message))

        monkeypatch.setattr(kopf, "event", kopf_event)
        self.patches: list[dict[str, Any]] = []

    def tick(self, body: dict[str, Any] | None = None) -> None:
        """One timer call, with kopf's cached body (fresh unless a stale one is given)."""
        raw = body if body is not None else self.world.snapshot()
        patch = kopf.Patch()
        try:
            self.fn(
                body=kopf.Body(raw), patch=patch, memo=self.memo, name="iris", namespace="ml",
                meta=kopf.Meta(kopf.Body(raw)), spec=raw["spec"], status=raw.get("status") or {},
                logger=None, uid="uid-1", labels={}, annotations=raw["metadata"].get("annotations") or {},
                resource=None,
            )  # fmt: skip
        except kopf.TemporaryError:
            pass  # kopf would retry after the delay: the next tick
        self.patches.append(dict(patch))
        self.world.kopf_patch(patch)

    def reasons(self) -> list[str]:
        return [e.reason for e in self.world.events]


def sim_now() -> datetime:
    """Start the fake world's clock a minute ago, so the handler's real clock continues it."""
    return datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=60)
