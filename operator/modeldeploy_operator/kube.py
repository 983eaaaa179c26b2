"""Kubernetes I/O for one ModelDeployment: read it fresh, observe its children, write its status,
apply what `core.decide` wants.

Called by `handlers.reconcile_once` every tick. Reads come back as plain dicts (raw JSON,
camelCase, as `kubectl get -o json` shows them). Writes: the status and the clearing of consumed
control annotations are merge patches carrying the resourceVersion the tick decided from
(optimistic concurrency: a concurrent writer makes them fail with 409, and the next tick decides
again from a fresh read); server-side apply for the objects the operator owns (idempotent); a
merge patch of the Deployment's scale for revisions whose template is no longer in the spec; a
merge patch with resourceVersion for the weights of the user's HTTPRoute; deletion of the
Deployments of revisions no tick wants any more, and of CronJobs, an autoscaler or a budget the
spec dropped. Every call has a
timeout and every response is read to the end (the connection goes back to the pool).
ApiException propagates to the caller.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modeldeploy_operator import FINALIZER, GROUP, PLURAL, VERSION
from modeldeploy_operator.batch import CONFIG_HASH as BATCH_CONFIG
from modeldeploy_operator.batch import LABEL_OF as BATCH_OF
from modeldeploy_operator.cache import Caches, Informer, Kind, slim_deployment, slim_pod, slim_service
from modeldeploy_operator.children import LABEL_NAME, LABEL_REVISION
from modeldeploy_operator.model import Decision, Meta, PodState, RevisionState, RouteState, RouteWeights

FIELD_MANAGER = "modeldeploy-operator"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
GATEWAY = ("gateway.networking.k8s.io", "v1", "httproutes")
# kopf puts a finalizer on each ModelDeployment (its timers need one) under our own name
# (`OperatorSettings.finalizer`, one per shard; `handlers` sets it in kopf's settings and gives it
# to `Kube`); objects of older operators carry kopf's default, this one.
LEGACY_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"
# On each child the operator applies: a digest of what it applied, so that an unchanged child is
# not applied again every tick (`Kube.apply`).
APPLIED = f"{GROUP}/applied"


def finalizer_names(finalizer: str) -> frozenset[str]:
    """Every finalizer name of ours an object may hold, for a process whose own is `finalizer`: its own,
    the unsharded name (after a switch to shards) and kopf's old default marker."""
    return frozenset({finalizer, FINALIZER, LEGACY_FINALIZER})


def digest(manifest: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def namespace_going(err: ApiException) -> bool:
    """The API server's answer to a write into a namespace that is being deleted (403 "unable to
    create new content in namespace X because it is being terminated") or is already gone (404)."""
    body = str(err.body or "")
    return (err.status == 403 and "being terminated" in body) or (err.status == 404 and '"kind":"namespaces"' in body)


def _json(response: Any) -> Any:
    return json.loads(response.data)


def _drain(response: Any) -> None:
    """Read an unwanted response to its end so urllib3 reuses the connection (no new TLS handshake)."""
    getattr(response, "data", None)


@dataclass
class Observation:
    revisions: dict[str, RevisionState] = field(default_factory=dict)
    owned_deployments: dict[str, int] = field(default_factory=dict)  # name -> spec.replicas
    route: RouteState | None = None
    route_body: dict[str, Any] | None = None
    # owned Deployment -> pod template (cached: a `cache.FrozenJSON`, parsed where it is read)
    templates: dict[str, Mapping[str, Any]] = field(default_factory=dict)


@dataclass
class BatchObservation:
    """The batch children of one ModelDeployment: its CronJobs (owned), their Jobs and pods."""

    cronjobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: list[dict[str, Any]] = field(default_factory=list)
    pods: list[dict[str, Any]] = field(default_factory=list)


def pod_state(pod: dict[str, Any]) -> PodState:
    status = pod.get("status") or {}
    ready = any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])
    if (pod.get("metadata") or {}).get("deletionTimestamp"):
        ready = False
    cs: dict[str, Any] = next((c for c in status.get("containerStatuses") or [] if c.get("name") == "server"), {})
    waiting = (cs.get("state") or {}).get("waiting") or {}
    term = (cs.get("state") or {}).get("terminated") or (cs.get("lastState") or {}).get("terminated") or {}
    return PodState(
        name=(pod.get("metadata") or {}).get("name", "?"),
        ready=ready,
        restart_count=int(cs.get("restartCount") or 0),
        waiting_reason=waiting.get("reason"),
        waiting_message=(waiting.get("message") or "")[:300] or None,
        terminated_reason=term.get("reason"),
        terminated_message=_last_line(term.get("message") or "") or None,
        exit_code=term.get("exitCode"),
        phase=status.get("phase"),
        ip=status.get("podIP"),
    )


def _last_line(message: str) -> str:
    """The line that says why a container ended: the server's `refused:` line when the message is
    the tail of its log (terminationMessagePolicy FallbackToLogsOnError), else the last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    refused = [line for line in lines if "refused:" in line]
    return (refused or lines or [""])[-1][:300]


class Kube:
    """Reads come from `caches` (watch-backed, with the operator's own writes folded in) when given
    and synced, else from the API server; children are applied only when they differ."""

    def __init__(
        self, api: client.ApiClient, timeout_seconds: float = 10.0, caches: Caches | None = None,
        finalizer: str = FINALIZER,
    ) -> None:  # fmt: skip
        self.finalizer = finalizer  # kopf's on the objects this process acts on (a shard has its own)
        self.own_finalizers = finalizer_names(finalizer)
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.batch = client.BatchV1Api(api)
        self.autoscaling = client.AutoscalingV2Api(api)
        self.policy = client.PolicyV1Api(api)
        self.t = timeout_seconds
        self.caches = caches
        # (plural, namespace, name) -> (digest, generation) of what this process last applied
        self.applied: dict[tuple[str, str, str], tuple[str, int | None]] = {}
        self.applied_lock = threading.Lock()

    def watch(self, namespaces: list[str], selector: str = "") -> Caches:
        """Start the informers over `namespaces` (empty: the whole cluster) and the ModelDeployments
        matching `selector` (a shard); reads use them once synced."""
        self.caches = self.informers(namespaces, selector).start()
        return self.caches

    def informers(self, namespaces: list[str], selector: str = "") -> Caches:
        """The informers `watch` starts (not started)."""
        ns = namespaces or [""]

        def kind(what: str, namespaced: Any, cluster: Any, label: str | None, trim: Any = None) -> Kind:
            # children: indexed by (and listed with) the modeldeploy.io/name label; objects: the shard's selector
            select = label if label is not None else selector if what == "modeldeployments" else ""
            return Kind({
                n: Informer(
                    f"{what}@{n or '*'}", functools.partial(namespaced, n) if n else cluster,
                    index_label=label, label_selector=select or None, timeout_seconds=self.t, trim=trim,
                )
                for n in ns
            })  # fmt: skip

        c, g = self.custom, GATEWAY
        return Caches(
            mds=kind(
                "modeldeployments",
                functools.partial(c.list_namespaced_custom_object, GROUP, VERSION, plural=PLURAL),
                functools.partial(c.list_cluster_custom_object, GROUP, VERSION, PLURAL),
                None,
            ),
            deployments=kind(
                "deployments",
                self.apps.list_namespaced_deployment,
                self.apps.list_deployment_for_all_namespaces,
                LABEL_NAME,
                slim_deployment,
            ),  # fmt: skip
            pods=kind(
                "pods", self.core.list_namespaced_pod, self.core.list_pod_for_all_namespaces, LABEL_NAME, slim_pod
            ),
            services=kind(
                "services",
                self.core.list_namespaced_service,
                self.core.list_service_for_all_namespaces,
                LABEL_NAME,
                slim_service,
            ),
            routes=kind(
                "httproutes",
                functools.partial(c.list_namespaced_custom_object, g[0], g[1], plural=g[2]),
                functools.partial(c.list_cluster_custom_object, g[0], g[1], g[2]),
                None,
            ),
        )

    def _cached(self, kind: str, namespace: str, name: str) -> tuple[bool, dict[str, Any] | None]:
        """(answered, object) from the cache of `kind`; answered is False without a synced cache."""
        if self.caches is None:
            return False, None
        try:
            return True, getattr(self.caches, kind).get(namespace, name)
        except LookupError:
            return False, None

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ModelDeployment as the cache has it (with our own last write), else as the API server
        has it now (None when it is gone)."""
        _, obj = self._cached("mds", namespace, name)
        if obj is not None:
            return obj
        try:
            return cast(
                dict[str, Any],
                _json(
                    self.custom.get_namespaced_custom_object(
                        GROUP, VERSION, namespace, PLURAL, name, _preload_content=False, _request_timeout=self.t
                    )
                ),
            )
        except ApiException as err:
            if err.status == 404:
                return None
            raise

    def write_status(self, meta: Meta, resource_version: str, changed: dict[str, Any]) -> str:
        """Merge-patch the changed status fields, only if the object is still at `resource_version`
        (409 otherwise); returns the new resourceVersion."""
        body = {"metadata": {"resourceVersion": resource_version}, "status": changed}
        got = _json(
            self.custom.patch_namespaced_custom_object_status(
                GROUP, VERSION, meta.namespace, PLURAL, meta.name, body,
                _content_type=MERGE, _preload_content=False, _request_timeout=self.t,
            )
        )  # fmt: skip
        self._offer("mds", got)
        return str(got["metadata"]["resourceVersion"])

    def _offer(self, kind: str, obj: dict[str, Any]) -> None:
        """Fold the API server's answer to our own write into the cache (the watch may lag it)."""
        caches = getattr(self, "caches", None)
        if caches is not None:
            getattr(caches, kind).offer(obj)

    def clear_annotations(self, meta: Meta, resource_version: str, keys: list[str]) -> str:
        """Remove consumed control annotations, only if nothing changed since our status write."""
        body = {"metadata": {"resourceVersion": resource_version, "annotations": dict.fromkeys(keys)}}
        got = _json(
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta.namespace, PLURAL, meta.name, body,
                _content_type=MERGE, _preload_content=False, _request_timeout=self.t,
            )
        )  # fmt: skip
        self._offer("mds", got)
        return str(got["metadata"]["resourceVersion"])

    def _children(self, kind: str, meta: Meta) -> list[dict[str, Any]]:
        """The objects of `kind` labelled with the ModelDeployment's name: cached, else LISTed."""
        if self.caches is not None:
            try:
                return cast(list[dict[str, Any]], getattr(self.caches, kind).by_label(meta.namespace, meta.name))
            except LookupError:
                pass
        lister = self.apps.list_namespaced_deployment if kind == "deployments" else self.core.list_namespaced_pod
        got = _json(
            lister(meta.namespace, label_selector=f"{LABEL_NAME}={meta.name}", _preload_content=False,
                   _request_timeout=self.t)
        )  # fmt: skip
        return cast(list[dict[str, Any]], got.get("items", []))

    def deployments_of(self, meta: Meta) -> list[dict[str, Any]]:
        """The Deployments labelled with the ModelDeployment's name (cached, else LISTed)."""
        return self._children("deployments", meta)

    def observe(self, meta: Meta, http_route: str | None) -> Observation:
        out = Observation()
        for dep in self._children("deployments", meta):
            owners = dep["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == meta.uid for o in owners):
                out.owned_deployments[dep["metadata"]["name"]] = int(dep["spec"].get("replicas") or 0)
                template = dep["spec"].get("template")  # not `or {}`: a FrozenJSON's truth value parses it
                out.templates[dep["metadata"]["name"]] = {} if template is None else template
        by_rev: dict[str, list[PodState]] = {}
        for pod in self._children("pods", meta):
            rev = (pod["metadata"].get("labels") or {}).get(LABEL_REVISION)
            if rev:
                by_rev.setdefault(rev, []).append(pod_state(pod))
        for rev, states in by_rev.items():
            out.revisions[rev] = RevisionState(ready_replicas=sum(p.ready for p in states), pods=tuple(states))
        answered, cached_route = self._cached("routes", meta.namespace, http_route) if http_route else (False, None)
        if http_route is not None:
            try:
                if answered and cached_route is None:
                    raise ApiException(status=404, reason="Not Found")
                out.route_body = (
                    copy.deepcopy(cached_route)
                    if cached_route is not None
                    else _json(
                        self.custom.get_namespaced_custom_object(
                            *GATEWAY[:2],
                            meta.namespace,
                            GATEWAY[2],
                            http_route,
                            _preload_content=False,
                            _request_timeout=self.t,
                        )  # fmt: skip
                    )
                )
            except ApiException as err:
                if err.status != 404:
                    raise
                out.route = RouteState(False, f"HTTPRoute {meta.namespace}/{http_route} not found")
            else:
                names = {
                    ref.get("name")
                    for rule in out.route_body.get("spec", {}).get("rules", [])
                    for ref in rule.get("backendRefs", [])
                }
                missing = sorted({f"{meta.name}-stable", f"{meta.name}-canary"} - names)
                out.route = RouteState(
                    not missing, f"HTTPRoute {http_route} lacks backendRefs {', '.join(missing)}" if missing else ""
                )
        return out

    def apply(self, decision: Decision, meta: Meta, seen: Observation) -> None:
        if decision.route is not None and seen.route_body is not None and seen.route is not None and seen.route.found:
            self.set_weights(meta.namespace, decision.route, seen.route_body)
        wanted: set[str] = set(decision.keep)
        for dep in decision.deployments:
            name = dep["metadata"]["name"]
            wanted.add(name)
            self._apply("deployments", dep, self.apps.patch_namespaced_deployment)
        for name, replicas in decision.scales.items():
            wanted.add(name)
            if name in seen.owned_deployments and seen.owned_deployments[name] != replicas:
                _drain(
                    self.apps.patch_namespaced_deployment_scale(
                        name, meta.namespace, {"spec": {"replicas": replicas}},
                        _content_type=MERGE, _preload_content=False, _request_timeout=self.t,
                    )
                )  # fmt: skip
        for svc in decision.services:
            self._apply("services", svc, self.core.patch_namespaced_service)
        for name in seen.owned_deployments.keys() - wanted:
            try:
                _drain(
                    self.apps.delete_namespaced_deployment(
                        name, meta.namespace, _preload_content=False, _request_timeout=self.t
                    )
                )
            except ApiException as err:
                if err.status != 404:
                    raise

    def observe_batch(self, meta: Meta) -> BatchObservation:
        out = BatchObservation()
        selector = f"{BATCH_OF}={meta.name}"
        kw: dict[str, Any] = {"label_selector": selector, "_preload_content": False, "_request_timeout": self.t}
        for cron in _json(self.batch.list_namespaced_cron_job(meta.namespace, **kw)).get("items", []):
            if any(o.get("uid") == meta.uid for o in cron["metadata"].get("ownerReferences") or []):
                out.cronjobs[cron["metadata"]["name"]] = cron
        out.jobs = _json(self.batch.list_namespaced_job(meta.namespace, **kw)).get("items", [])
        out.pods = _json(self.core.list_namespaced_pod(meta.namespace, **kw)).get("items", [])
        return out

    def apply_batch(self, meta: Meta, cronjobs: list[dict[str, Any]], seen: BatchObservation) -> None:
        """Apply the CronJobs whose rendering changed (server-side apply); delete owned ones no entry wants."""
        for cron in cronjobs:
            name = cron["metadata"]["name"]
            have = (seen.cronjobs.get(name) or {}).get("metadata", {}).get("annotations") or {}
            if have.get(BATCH_CONFIG) == cron["metadata"]["annotations"][BATCH_CONFIG]:
                continue
            _drain(
                self.batch.patch_namespaced_cron_job(
                    name, meta.namespace, cron, field_manager=FIELD_MANAGER, force=True,
                    _content_type=APPLY, _preload_content=False, _request_timeout=self.t,
                )
            )  # fmt: skip
        for name in seen.cronjobs.keys() - {c["metadata"]["name"] for c in cronjobs}:
            try:
                _drain(
                    self.batch.delete_namespaced_cron_job(
                        name, meta.namespace, propagation_policy="Background", _preload_content=False,
                        _request_timeout=self.t,
                    )
                )  # fmt: skip
            except ApiException as err:
                if err.status != 404:
                    raise

    def _apply(self, kind: str, manifest: dict[str, Any], patch: Any) -> None:
        """Server-side apply `manifest` unless the cached object is what this process last applied:
        the same digest (annotation `modeldeploy.io/applied`), the same generation (nobody changed
        its spec since) and, for a Service, the same selector. A new process applies everything once."""
        md = manifest["metadata"]
        ns, name = md["namespace"], md["name"]
        want = digest(manifest)
        answered, live = self._cached(kind, ns, name)
        key = (kind, ns, name)
        with self.applied_lock:
            record = self.applied.get(key)
        if answered and live is not None and record is not None and record[0] == want:
            live_md = live.get("metadata") or {}
            same = (live_md.get("annotations") or {}).get(APPLIED) == want and live_md.get("generation") == record[1]
            if kind == "services":
                same = same and (live.get("spec") or {}).get("selector") == manifest["spec"].get("selector")
            if same:
                return
        body = {**manifest, "metadata": {**md, "annotations": {**(md.get("annotations") or {}), APPLIED: want}}}
        got = _json(
            patch(name, ns, body, field_manager=FIELD_MANAGER, force=True,
                  _content_type=APPLY, _preload_content=False, _request_timeout=self.t)
        )  # fmt: skip
        with self.applied_lock:
            self.applied[key] = (want, (got.get("metadata") or {}).get("generation"))
        self._offer(kind, got)

    def apply_autoscaling(self, meta: Meta, objects: list[dict[str, Any]]) -> None:
        """Server-side apply the stable revision's HorizontalPodAutoscaler and PodDisruptionBudget."""
        for obj in objects:
            api: Any = self.autoscaling.patch_namespaced_horizontal_pod_autoscaler
            if obj["kind"] == "PodDisruptionBudget":
                api = self.policy.patch_namespaced_pod_disruption_budget
            _drain(
                api(
                    obj["metadata"]["name"], meta.namespace, obj, field_manager=FIELD_MANAGER, force=True,
                    _content_type=APPLY, _preload_content=False, _request_timeout=self.t,
                )
            )  # fmt: skip

    def delete_autoscaling(self, meta: Meta) -> None:
        """spec.autoscaling removed: the HPA and PDB go (the operator sizes the stable again)."""
        for delete, name in (
            (self.autoscaling.delete_namespaced_horizontal_pod_autoscaler, meta.name),
            (self.policy.delete_namespaced_pod_disruption_budget, f"{meta.name}-stable"),
        ):
            try:
                _drain(delete(name, meta.namespace, _preload_content=False, _request_timeout=self.t))
            except ApiException as err:
                if err.status != 404:
                    raise

    def release(self, meta: Meta) -> bool:
        """Drop kopf's finalizer from a ModelDeployment whose namespace is being deleted; True if dropped.

        A namespaced kopf stops watching a namespace once it terminates, so it never sees the object's
        deletion and would hold its finalizer (and the namespace) forever. Nothing is left to clean up:
        the children are owned and garbage-collected. resourceVersion makes a concurrent change win.
        """
        try:
            got = self.custom.get_namespaced_custom_object(
                GROUP, VERSION, meta.namespace, PLURAL, meta.name, _request_timeout=self.t
            )
            obj = cast(dict[str, Any], got)
            finalizers = obj["metadata"].get("finalizers") or []
            if not self.own_finalizers & set(finalizers):
                return False
            kept = [f for f in finalizers if f not in self.own_finalizers]
            body = {"metadata": {"finalizers": kept, "resourceVersion": obj["metadata"]["resourceVersion"]}}
            _drain(
                self.custom.patch_namespaced_custom_object(
                    GROUP, VERSION, meta.namespace, PLURAL, meta.name, body,
                    _content_type=MERGE, _preload_content=False, _request_timeout=self.t,
                )
            )  # fmt: skip
        except ApiException as err:
            if err.status == 404:
                return False
            raise
        return True

    def drop_finalizers(self, meta: Meta, resource_version: str, finalizers: list[str]) -> None:
        """Remove these finalizers, only if the object is still at `resource_version` (409 otherwise)."""
        got = self.get(meta.namespace, meta.name)
        if got is None:
            return
        kept = [f for f in got["metadata"].get("finalizers") or [] if f not in finalizers]
        body = {"metadata": {"finalizers": kept, "resourceVersion": resource_version}}
        _drain(
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta.namespace, PLURAL, meta.name, body,
                _content_type=MERGE, _preload_content=False, _request_timeout=self.t,
            )
        )  # fmt: skip

    def apply_secret(self, manifest: dict[str, Any]) -> None:
        """Server-side apply of a Secret the operator owns (it never reads one back)."""
        meta = manifest["metadata"]
        _drain(
            self.core.patch_namespaced_secret(
                meta["name"], meta["namespace"], manifest, field_manager=FIELD_MANAGER, force=True,
                _content_type=APPLY, _preload_content=False, _request_timeout=self.t,
            )
        )  # fmt: skip

    def set_weights(self, namespace: str, w: RouteWeights, route: dict[str, Any]) -> None:
        rules = route.get("spec", {}).get("rules", [])
        changed = False
        for rule in rules:
            for ref in rule.get("backendRefs", []):
                want = {w.stable_service: w.stable_weight, w.canary_service: w.canary_weight}.get(ref.get("name"))
                if want is not None and ref.get("weight", 1) != want:
                    ref["weight"] = want
                    changed = True
        if changed:
            body = {"metadata": {"resourceVersion": route["metadata"]["resourceVersion"]}, "spec": {"rules": rules}}
            resp = self.custom.patch_namespaced_custom_object(
                *GATEWAY[:2], namespace, GATEWAY[2], w.http_route, body,
                _content_type=MERGE, _preload_content=False, _request_timeout=getattr(self, "t", 10.0),
            )  # fmt: skip
            data = getattr(resp, "data", None)  # read to the end either way (the connection is reused)
            if data:
                self._offer("routes", json.loads(data))
