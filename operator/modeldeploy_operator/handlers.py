"""The kopf shell: one timer per ModelDeployment runs `reconcile_once` every tick.

`register(registry, settings)` (called by `__main__`) declares the timer and the startup, login
and delete handlers; `reconcile_once` is a module-level function that tests drive with fake
clients. Each tick it reads the object fresh from the API server (never kopf's cached body,
which can be older than our own last write), observes the children, asks Prometheus when a
check is due, calls `core.decide`, and then, in this order:

1. writes only the changed status fields, with the resourceVersion it decided from: a 409 means
   someone wrote since, nothing of this decision is applied, and the next tick decides again;
2. posts the decision's Events and counts its outcomes (only a written decision is posted, so
   each is posted once);
3. clears the consumed control annotations, again with a resourceVersion (status already records
   each value it acted on, so an annotation that stays is never applied twice);
4. applies the children (a failure is retried by the next tick, which decides from the status
   already written: a rollback stays a rollback, H2).

kopf is given nothing to patch, so no kopf write can fail and stop an object's timer; every
outcome returns normally and the timer keeps ticking. `/healthz` names an object whose ticks stop
completing (`metrics.Health`).
"""

from __future__ import annotations

import json
import logging
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, cast

import kopf
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from pydantic import ValidationError
from urllib3.exceptions import HTTPError

from modeldeploy_operator import GROUP, PLURAL, VERSION, autoscale, batch
from modeldeploy_operator import metrics as m
from modeldeploy_operator.api import ModelDeploymentSpec, ModelDeploymentStatus, SpecError, name_problem, parse_spec
from modeldeploy_operator.children import Owner
from modeldeploy_operator.core import decide, invalid_spec, plan_analysis
from modeldeploy_operator.costwatch import CostWatch
from modeldeploy_operator.driftwatch import DriftWatch
from modeldeploy_operator.kube import BatchObservation, Kube, Observation, namespace_going
from modeldeploy_operator.model import Config, Decision, Event, Meta, Observed
from modeldeploy_operator.prom import Prometheus
from modeldeploy_operator.reasons import APPLY_FAILED, STATUS_UNREADABLE
from modeldeploy_operator.settings import OperatorSettings
from modeldeploy_operator.shadowctl import ShadowControl, resolve_key

log = logging.getLogger("modeldeploy.operator")

# Outcomes of one tick (returned by reconcile_once; the ones in COMPLETE count as a completed tick).
WRITTEN, UNCHANGED, CONFLICT, GONE, DELETING = "written", "unchanged", "conflict", "gone", "deleting"
STANDBY = "standby"  # another replica holds the leader Lease: this one does nothing
COMPLETE = (WRITTEN, UNCHANGED, CONFLICT, GONE, DELETING, STANDBY)


class CountingApiClient(client.ApiClient):
    """The kubernetes client's ApiClient, counting every request it sends by verb
    (`modeldeploy_operator_api_requests_total`: the API cost of the ticks, measured by `make bench-operator`)."""

    def call_api(self, method: str, url: str, *args: Any, **kwargs: Any) -> Any:
        m.API_REQUESTS.labels(verb=method).inc()
        return super().call_api(method, url, *args, **kwargs)


def api_client() -> client.ApiClient:
    try:
        config.load_incluster_config()  # type: ignore[no-untyped-call]
    except ConfigException:
        config.load_kube_config()  # type: ignore[no-untyped-call]
    return CountingApiClient()


def post_event(obj: dict[str, Any], e: Event) -> None:
    """Post a Kubernetes Event about `obj` through kopf's poster (batched, retried)."""
    kopf.event(kopf.Body(cast(kopf.RawBody, obj)), type=e.type, reason=e.reason, message=e.message[:1024])


class CanaryGate:
    """The operator-wide cap on canaries running at once (M11): an operator upgrade that changes
    every revision (a new default image) must not start a canary for every object at once.

    `may_start` reserves a slot (ticks run in threads); `done` releases it unless the object's
    decision left a canary running. Nothing new starts during the first `warmup_seconds` after
    start, while the canaries already in progress are not all known yet.
    """

    def __init__(self, cap: int, warmup_seconds: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.cap, self.clock = cap, clock
        self.ready_at = clock() + warmup_seconds
        self.running: set[tuple[str, str]] = set()
        self.lock = threading.Lock()

    def may_start(self, key: tuple[str, str]) -> bool:
        if self.cap <= 0:
            return True
        with self.lock:
            if key in self.running:
                return True
            if self.clock() < self.ready_at or len(self.running) >= self.cap:
                return False
            self.running.add(key)
            return True

    def done(self, key: tuple[str, str], running: bool) -> None:
        with self.lock:
            (self.running.add if running else self.running.discard)(key)


@dataclass
class Shell:
    """What one tick needs from the outside world (tests pass fakes with the same methods)."""

    kube: Kube
    prom: Prometheus
    config: Config
    post: Callable[[dict[str, Any], Event], None] = post_event
    gate: CanaryGate = field(default_factory=lambda: CanaryGate(0, 0))
    leader: Callable[[], bool] = lambda: True  # leader.Elector.is_leader when leader election is on
    # the last child-write error said per object (an Event once per distinct error, not per tick)
    apply_errors: dict[tuple[str, str], str] = field(default_factory=dict)
    cost: Callable[[ModelDeploymentSpec, Meta, ModelDeploymentStatus, datetime, bool], None] | None = None  # costwatch
    drift: Callable[[ModelDeploymentSpec, Meta, Decision, datetime], None] | None = None  # driftwatch: InputDrift
    shadow: ShadowControl | None = None  # shadow steps: the token Secret and the stable pods' control calls
    tick_seconds: float = 0.0  # the timer's period: a tick that starts later than that after the last one is lag
    last_start: dict[tuple[str, str], float] = field(default_factory=dict)

    def started(self, key: tuple[str, str]) -> None:
        """Record how late this tick of `key` started (`modeldeploy_operator_tick_lag_seconds`)."""
        now = time.monotonic()
        last = self.last_start.get(key)
        self.last_start[key] = now
        if last is not None and self.tick_seconds > 0:
            m.TICK_LAG.observe(max(0.0, now - last - self.tick_seconds))


def status_changes(old: dict[str, Any], new: ModelDeploymentStatus) -> dict[str, Any]:
    """The top-level status fields that differ, as a merge patch: changed values whole (lists are
    replaced), emptied fields as None (deleted); no None inside lists and objects (the API server
    drops them)."""
    out = new.model_dump(by_alias=True, mode="json", exclude_none=True)
    changed: dict[str, Any] = {k: v for k, v in out.items() if old.get(k) != v and not (v == [] and k not in old)}
    known = {field.alias or name for name, field in ModelDeploymentStatus.model_fields.items()}
    for key in old:
        if key not in out and key in known and old[key] is not None:
            changed[key] = None
    return changed


def _api_message(err: ApiException) -> str:
    """The API server's own sentence from an error body (a Status object), else the raw body."""
    body = str(err.body or "")
    try:
        return str(json.loads(body).get("message") or body)[:600]
    except (ValueError, AttributeError):
        return body[:600]


def reconcile_once(shell: Shell, namespace: str, name: str, now: datetime | None = None) -> str:
    """One tick for one ModelDeployment; returns what happened (never raises an ApiException)."""
    labels = {"namespace": namespace, "name": name}
    shell.started((namespace, name))
    if not shell.leader():
        m.HEALTH.tick(namespace, name)
        return STANDBY
    try:
        outcome = _tick(shell, namespace, name, now or datetime.now(UTC), labels)
    except ApiException as err:
        m.RECONCILE_ERRORS.labels(error=f"api-{err.status}", **labels).inc()
        outcome = f"error: {err.status} {err.reason}"
    except (HTTPError, OSError) as err:  # timed out, refused (an API server restarting), reset
        m.RECONCILE_ERRORS.labels(error="connection", **labels).inc()
        outcome = f"error: {type(err).__name__}: {str(err)[:200]}"
    if outcome == GONE:
        m.HEALTH.forget(namespace, name)
        shell.last_start.pop((namespace, name), None)
    elif outcome in COMPLETE:
        m.HEALTH.tick(namespace, name)
    else:
        m.HEALTH.failed(namespace, name, outcome)
        log.warning("%s/%s: tick failed: %s", namespace, name, outcome)
    return outcome


def _tick(shell: Shell, namespace: str, name: str, now: datetime, labels: dict[str, str]) -> str:
    started = time.monotonic()
    obj = shell.kube.get(namespace, name)
    if obj is None:
        return GONE
    md = obj.get("metadata") or {}
    meta = Meta(name, namespace, md.get("uid") or "", md.get("generation"))
    rv = str(md.get("resourceVersion") or "")
    finalizers = md.get("finalizers") or []
    own = shell.kube.finalizer
    stale = [f for f in finalizers if f in shell.kube.own_finalizers and f != own]
    if stale and own in finalizers:
        # kopf now holds the object under this operator's own name; kopf's old marker, or the
        # unsharded name after a switch to shards, is held by no one and would block deletion forever
        try:
            shell.kube.drop_finalizers(meta, rv, stale)
        except ApiException as err:
            if err.status not in (404, 409):
                raise
        return CONFLICT  # the object changed: decide from a fresh read next tick
    if md.get("deletionTimestamp"):  # being deleted: its children go with it (garbage collection)
        # Our finalizer guards nothing (kopf needs one for its timers; the children are owned). In a
        # namespace being deleted a namespaced kopf no longer watches, so it would never drop it and
        # the namespace would stay Terminating: release it ourselves (kopf's own removal may race; fine).
        if shell.kube.own_finalizers & set(finalizers):
            try:
                if shell.kube.release(meta):
                    log.info("%s/%s: being deleted; released the finalizer", namespace, name)
            except ApiException as err:
                if err.status not in (404, 409):
                    raise
        return DELETING
    raw_status = dict(obj.get("status") or {})
    try:
        status = ModelDeploymentStatus.model_validate(raw_status)
    except ValidationError as err:
        # Starting over would deploy the desired revision straight to stable, skipping its
        # canary: refuse to act until a human looks (kubectl edit --subresource=status).
        m.RECONCILE_ERRORS.labels(error="status-unreadable", **labels).inc()
        shell.post(obj, Event("Warning", STATUS_UNREADABLE, f"status unreadable, not acting: {err}"))
        return "error: status unreadable"
    try:
        spec = parse_spec(dict(obj.get("spec") or {}))
        bad_name = name_problem(name)  # created before the CRD refused such names
        if bad_name is not None:
            raise SpecError(bad_name)
    except SpecError as err:
        return _commit(shell, obj, meta, rv, raw_status, invalid_spec(status, str(err), meta=meta, now=now), labels)
    routing = spec.rollout.traffic_routing
    route = routing.gateway_api.http_route if routing is not None and routing.gateway_api is not None else None
    seen = shell.kube.observe(meta, route)
    plan = plan_analysis(spec, status, now, meta=meta, config=shell.config)
    results = (plan, shell.prom.run(plan, now)) if plan is not None else None
    observed = Observed(
        revisions=seen.revisions,
        annotations=dict(md.get("annotations") or {}),
        route=seen.route,
        analysis=results,
        may_start_canary=shell.gate.may_start((namespace, name)),
        owned_revisions=frozenset(d.removeprefix(f"{name}-") for d in seen.owned_deployments),
        replicas={d.removeprefix(f"{name}-"): n for d, n in seen.owned_deployments.items()},
    )
    decision = decide(spec, status, observed, now, meta=meta, config=shell.config)
    if shell.cost is not None:  # status.cost, about once a minute with another write; never raises
        shell.cost(spec, meta, decision.status, now, bool(status_changes(raw_status, decision.status)))
    if shell.drift is not None:  # InputDrift of the stable revision, every driftIntervalSeconds; never raises
        shell.drift(spec, meta, decision, now)
    batch_plan = _batch(shell, spec, status, meta, decision, seen) if spec.batch or status.batch else None
    scaler = _autoscaler(spec, meta, decision)
    outcome = _commit(shell, obj, meta, rv, raw_status, decision, labels)
    if batch_plan is not None and outcome == WRITTEN:
        for run_outcome in batch_plan.outcomes:
            m.BATCH_RUNS.labels(outcome=run_outcome, **labels).inc()
    running = (decision.status if outcome in (WRITTEN, UNCHANGED) else status).canary_revision is not None
    shell.gate.done((namespace, name), running)
    if outcome not in (WRITTEN, UNCHANGED) or not decision.apply_children:
        return outcome
    try:
        if shell.shadow is not None:
            shell.shadow.ensure_secret(shell.kube.apply_secret, meta)
        shell.kube.apply(decision, meta, seen)
        if batch_plan is not None and batch_plan.cronjobs is not None:
            shell.kube.apply_batch(meta, batch_plan.cronjobs, batch_plan.seen)
        if scaler is not None:  # after the Deployments: the HPA never points at one not there yet
            shell.kube.apply_autoscaling(meta, scaler)
        elif status.autoscaler is not None:
            shell.kube.delete_autoscaling(meta)
    except ApiException as err:
        if namespace_going(err):
            if shell.kube.release(meta):
                log.info("%s/%s: namespace is being deleted; released the finalizer", namespace, name)
            return GONE
        m.RECONCILE_ERRORS.labels(error=f"apply-{err.status}", **labels).inc()
        text = f"applying children failed: {err.status} {err.reason}: {_api_message(err)}"
        if shell.apply_errors.get((namespace, name)) != text:
            shell.apply_errors[(namespace, name)] = text
            shell.post(obj, Event("Warning", APPLY_FAILED, text))
        return f"error: {text}"
    shell.apply_errors.pop((namespace, name), None)
    if shell.shadow is not None:
        shell.shadow.push(decision, meta, seen.revisions)
    m.TICK_SECONDS.observe(time.monotonic() - started)
    m.LAST_TICK.set(time.time())
    return outcome


def _autoscaler(spec: ModelDeploymentSpec, meta: Meta, decision: Decision) -> list[dict[str, Any]] | None:
    """The stable revision's HPA and PDB when spec.autoscaling asks for them (status.autoscaler names the HPA)."""
    stable = decision.status.stable_revision
    if spec.autoscaling is None or stable is None:
        decision.status.autoscaler = None
        return None
    owner = Owner(meta.name, meta.namespace, meta.uid)
    decision.status.autoscaler = meta.name
    return [autoscale.hpa(owner, spec.autoscaling, stable), autoscale.pdb(owner, stable)]


@dataclass
class BatchPlan:
    seen: BatchObservation
    cronjobs: list[dict[str, Any]] | None  # None: the stable template is not known yet, leave them
    outcomes: list[str]


def _batch(
    shell: Shell,
    spec: ModelDeploymentSpec,
    status: ModelDeploymentStatus,
    meta: Meta,
    decision: Decision,
    seen: Observation,
) -> BatchPlan:
    """status.batch[] and its Events into the decision; the CronJobs, rendered from the stable revision's
    pod template (the Deployment applied this tick, else the one observed)."""
    batch_seen = shell.kube.observe_batch(meta)
    stable = decision.status.stable_revision
    dep_name = f"{meta.name}-{stable}"
    template = next((d["spec"]["template"] for d in decision.deployments if d["metadata"]["name"] == dep_name), None)
    template = template or seen.templates.get(dep_name)
    owner = Owner(meta.name, meta.namespace, meta.uid)
    cronjobs = None if stable is None or template is None else [batch.cronjob(owner, e, template) for e in spec.batch]
    prices = shell.config.prices.override(spec.cost)
    previous = {b.name: b for b in status.batch}
    statuses, outcomes = [], []
    for entry in spec.batch:
        cron = batch_seen.cronjobs.get(batch.cronjob_name(meta.name, entry.name))
        jobs = [j for j in batch_seen.jobs if (j["metadata"].get("labels") or {}).get(batch.LABEL_ENTRY) == entry.name]
        summary = batch.summarize(entry, cron, jobs, batch_seen.pods, previous.get(entry.name), prices)
        statuses.append(summary.status)
        decision.events.extend(summary.events)
        outcomes += [summary.outcome] if summary.outcome else []
    decision.status.batch = statuses
    return BatchPlan(batch_seen, cronjobs, outcomes)


def _commit(
    shell: Shell,
    obj: dict[str, Any],
    meta: Meta,
    rv: str,
    old: dict[str, Any],
    d: Decision,
    labels: dict[str, str],
) -> str:
    """Write the decision's status (checked), then post its Events and clear its annotations."""
    changed = status_changes(old, d.status)
    if changed:
        try:
            rv = shell.kube.write_status(meta, rv, changed)
        except ApiException as err:
            if err.status == 409:  # someone wrote since we read: decide again next tick
                m.RECONCILE_ERRORS.labels(error="conflict", **labels).inc()
                return CONFLICT
            raise
    for e in d.events:
        shell.post(obj, e)
        log.info("%s/%s %s: %s", meta.namespace, meta.name, e.reason, e.message)
    for outcome in d.outcomes:
        m.ROLLOUTS.labels(outcome=outcome, **labels).inc()
    if d.analysis is not None:
        m.ANALYSES.labels(verdict=d.analysis.verdict, **labels).inc()
        # every check, not only a changed verdict (the Events): why a canary waited is in the log
        a = d.analysis
        log.info("%s/%s analysis %s: %s at step %s, weight %s%%, window %ss: %s", meta.namespace, meta.name,
                 a.revision, a.verdict, a.step, a.weight, a.window_seconds, a.message)  # fmt: skip
    m.CANARY_WEIGHT.labels(**labels).set(d.status.canary_weight or 0)
    if d.clear_annotations:
        try:
            shell.kube.clear_annotations(meta, rv, d.clear_annotations)
        except ApiException as err:
            # status already records the values acted on: the next tick clears them without acting
            log.info("%s/%s: clearing %s failed (%s)", meta.namespace, meta.name, d.clear_annotations, err.status)
    return WRITTEN if changed else UNCHANGED


def kopf_labels(terms: list[tuple[str, str | None, bool]]) -> dict[str, Any] | None:
    """`settings.parse_selector`'s terms as kopf's label filter (None: every object)."""
    if not terms:
        return None
    out: dict[str, Any] = {}
    for key, value, present in terms:
        out[key] = value if value is not None else kopf.PRESENT if present else kopf.ABSENT
    return out


def exact_names(namespaces: list[str]) -> bool:
    """True when every namespace to watch is a plain name (no kopf glob or negation pattern)."""
    return bool(namespaces) and not any(set(ns) & set("*?[]!") for ns in namespaces)


def register(
    registry: kopf.OperatorRegistry,
    settings: OperatorSettings,
    leader: Callable[[], bool] | None = None,
    namespaces: list[str] | None = None,
) -> None:
    core_config = settings.core_config()
    tick = settings.tick_seconds
    labels = kopf_labels(settings.selector_terms)  # a shard: only the objects its selector matches

    @kopf.on.login(registry=registry)
    def login(**kwargs: Any) -> kopf.ConnectionInfo | None:
        # in-cluster service account or KUBECONFIG, through the kubernetes client's own loaders
        return kopf.login_via_client(**kwargs)

    @kopf.on.startup(registry=registry)
    def startup(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
        # our Events carry specific reasons: no log line becomes a generic "Logging" Event
        settings.posting.level = logging.CRITICAL + 10
        settings.peering.standalone = True
        settings.persistence.finalizer = operator_settings.finalizer
        # kopf's default pool is min(32, cores + 4): 6 threads on 2 cores, each blocked for the whole
        # of a status write; at 1,000 objects ticks queued behind them (make bench-operator)
        settings.execution.max_workers = operator_settings.workers
        kube = Kube(api_client(), operator_settings.api_timeout_seconds, finalizer=operator_settings.finalizer)
        # watch-backed reads (ModelDeployments, Deployments, pods, Services, HTTPRoutes): a tick
        # sends requests only to write; until the caches sync, reads go to the API server
        watched = operator_settings.namespace_list if namespaces is None else namespaces
        if exact_names(watched):
            # kopf lists namespaces to match patterns; the chart grants no namespace list, and kopf
            # retried the forbidden list for ~54 s at every start before watching anything (so a
            # restarted operator pod sat idle that long with /healthz green). With exact names there
            # is nothing to match: no namespace list, and no CRD watch either (a Role cannot grant it;
            # the CRD is installed before the operator, as Helm does, and discovered at start)
            settings.scanning.disabled = True
        if not kube.watch(watched, operator_settings.selector).wait_synced(60.0):
            log.warning("caches not synced within 60s: reading from the API server until they are")
        prom = Prometheus(
            operator_settings.prometheus_url,
            operator_settings.prometheus_timeout_seconds,
            insecure_skip_verify=operator_settings.prometheus_insecure_skip_verify,
            bearer_token_file=operator_settings.prometheus_bearer_token_file or None,
        )
        memo.shell = Shell(
            kube,
            prom,
            core_config,
            cost=CostWatch(kube.deployments_of, prom, operator_settings),
            drift=DriftWatch(prom, operator_settings),
            gate=CanaryGate(operator_settings.max_concurrent_canaries, 1.5 * tick),
            leader=leader or (lambda: True),
            tick_seconds=tick,
            shadow=ShadowControl(resolve_key(shadow_key, operator_settings.shadow_key_secret, kube.core), 3 * tick),
        )
        m.HEALTH.stale_after = max(30.0, operator_settings.stale_ticks * tick)
        m.HEALTH.started = True

    operator_settings = settings
    shadow_key = settings.shadow_key.get_secret_value() if settings.shadow_key is not None else ""

    @kopf.timer(
        GROUP,
        VERSION,
        PLURAL,
        interval=tick,
        # spread the first ticks over one period: a restart must not fire every object at once
        initial_delay=lambda **_: random.uniform(0, tick),
        registry=registry,
        id="reconcile",
        labels=labels,
        backoff=tick,  # an unforeseen exception retries next period, not in kopf's default 60 s
    )
    def reconcile(name: str, namespace: str | None, memo: kopf.Memo, **_: Any) -> None:
        reconcile_once(memo.shell, namespace or "", name)

    @kopf.on.delete(GROUP, VERSION, PLURAL, registry=registry, optional=True, labels=labels)
    def forget(name: str, namespace: str | None, **_: Any) -> None:
        m.HEALTH.forget(namespace or "", name)
