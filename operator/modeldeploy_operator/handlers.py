"""The kopf shell: one timer per ModelDeployment runs observe -> `core.decide` -> apply every tick.

Registered by `__main__` (`register(registry, settings)`) so the tick period comes from settings.
No create/update handlers: the timer is level-based and sees every change within one tick.
Clients live in `memo`; nothing here sleeps; API errors become kopf.TemporaryError (retried next
tick) and are counted; Prometheus errors never raise (the core holds the rollout on them).
"""

from __future__ import annotations

import logging
import time
from datetime import UTC, datetime
from typing import Any

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import ValidationError

from modeldeploy_operator import GROUP, PLURAL, VERSION
from modeldeploy_operator import metrics as m
from modeldeploy_operator.api import ModelDeploymentStatus, SpecError, parse_spec
from modeldeploy_operator.core import decide, invalid_spec, plan_analysis
from modeldeploy_operator.kube import Kube, namespace_going
from modeldeploy_operator.model import Decision, Meta, Observed
from modeldeploy_operator.prom import Prometheus
from modeldeploy_operator.reasons import STATUS_UNREADABLE
from modeldeploy_operator.settings import OperatorSettings

log = logging.getLogger("modeldeploy.operator")


def api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return client.ApiClient()


def status_patch(status: ModelDeploymentStatus) -> dict[str, Any]:
    """Every top-level field, None included (a merge patch deletes the fields that became empty);
    no None inside lists and objects (the API server drops them, and kopf would report the
    difference as an inconsistent patch)."""
    out = status.model_dump(by_alias=True, mode="json", exclude_none=True)
    for name, field in ModelDeploymentStatus.model_fields.items():
        out.setdefault(field.alias or name, None)
    return out


def register(registry: kopf.OperatorRegistry, settings: OperatorSettings) -> None:
    core_config = settings.core_config()

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # in-cluster service account or KUBECONFIG, through the kubernetes client's own loaders
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # our Events carry specific reasons: no log line becomes a generic "Logging" Event
        settings.posting.level = logging.CRITICAL + 10
        settings.peering.standalone = True
        memo.kube = Kube(api_client())
        memo.prom = Prometheus(operator_settings.prometheus_url, operator_settings.prometheus_timeout_seconds)
        m.HEALTH.stale_after = max(30.0, 10 * operator_settings.tick_seconds)
        m.HEALTH.started = True

    operator_settings = settings

    @kopf.timer(
        GROUP, VERSION, PLURAL, interval=settings.tick_seconds, initial_delay=0, registry=registry, id="reconcile"
    )
    def reconcile(body: kopf.Body, patch: kopf.Patch, memo: kopf.Memo, **_: Any) -> None:
        if body.metadata.deletion_timestamp:  # being deleted: its children go with it (garbage collection)
            return
        started = time.monotonic()
        meta = Meta(
            body.metadata.name or "",
            body.metadata.namespace or "",
            body.metadata.uid or "",
            body.metadata.get("generation"),
        )
        labels = {"namespace": meta.namespace, "name": meta.name}
        m.HEALTH.tick(meta.namespace, meta.name)  # the loop is alive, whatever this tick's outcome
        now = datetime.now(UTC)
        try:
            status = ModelDeploymentStatus.model_validate(dict(body.get("status") or {}))
        except ValidationError as err:
            # Starting over would deploy the desired revision straight to stable, skipping its
            # canary: refuse to act until a human looks (kubectl edit --subresource=status).
            m.RECONCILE_ERRORS.labels(error="status-unreadable", **labels).inc()
            kopf.event(
                body, type="Warning", reason=STATUS_UNREADABLE, message=f"status unreadable, not acting: {err}"[:1024]
            )
            raise kopf.TemporaryError(f"status unreadable: {err}", delay=60) from err
        try:
            spec = parse_spec(dict(body.get("spec") or {}))
        except SpecError as err:
            finish(body, patch, invalid_spec(status, str(err), meta=meta, now=now), labels)
            return
        routing = spec.rollout.traffic_routing
        route = routing.gateway_api.http_route if routing is not None and routing.gateway_api is not None else None
        kube: Kube = memo.kube
        prom: Prometheus = memo.prom
        try:
            seen = kube.observe(meta, route)
        except ApiException as err:
            m.RECONCILE_ERRORS.labels(error=f"observe-{err.status}", **labels).inc()
            raise kopf.TemporaryError(
                f"reading children failed: {err.status} {err.reason}", delay=operator_settings.tick_seconds
            ) from err
        plan = plan_analysis(spec, status, now, meta=meta, config=core_config)
        results = (plan, prom.run(plan, now)) if plan is not None else None
        observed = Observed(
            revisions=seen.revisions, annotations=dict(body.metadata.annotations), route=seen.route, analysis=results
        )
        decision = decide(spec, status, observed, now, meta=meta, config=core_config)
        try:
            if decision.apply_children:
                kube.apply(decision, meta, seen)
        except ApiException as err:
            if namespace_going(err):
                if kube.release(meta):
                    log.info("%s/%s: namespace is being deleted; released the finalizer", meta.namespace, meta.name)
                return
            m.RECONCILE_ERRORS.labels(error=f"apply-{err.status}", **labels).inc()
            raise kopf.TemporaryError(
                f"applying children failed: {err.status} {err.reason}", delay=operator_settings.tick_seconds
            ) from err
        finish(body, patch, decision, labels)
        m.TICK_SECONDS.observe(time.monotonic() - started)
        m.LAST_TICK.set(time.time())

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, optional=True)
    def forget(body: kopf.Body, **_: Any) -> None:
        labels = {"namespace": body.metadata.namespace or "", "name": body.metadata.name or ""}
        m.HEALTH.objects.discard((labels["namespace"], labels["name"]))
        try:
            m.CANARY_WEIGHT.remove(labels["namespace"], labels["name"])
        except KeyError:
            pass


def finish(body: kopf.Body, patch: kopf.Patch, d: Decision, labels: dict[str, str]) -> None:
    """Write status, clear consumed annotations, post Events, record metrics."""
    patch.status.update(status_patch(d.status))
    for key in d.clear_annotations:
        patch.metadata.annotations[key] = None
    for e in d.events:
        kopf.event(body, type=e.type, reason=e.reason, message=e.message[:1024])
        log.info("%s/%s %s: %s", labels["namespace"], labels["name"], e.reason, e.message)
    for outcome in d.outcomes:
        m.ROLLOUTS.labels(outcome=outcome, **labels).inc()
    if d.analysis is not None:
        m.ANALYSES.labels(verdict=d.analysis.verdict, **labels).inc()
    m.CANARY_WEIGHT.labels(**labels).set(d.status.canary_weight or 0)
