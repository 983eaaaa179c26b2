"""Kubernetes I/O for one ModelDeployment: read it fresh, observe its children, write its status,
apply what `core.decide` wants.

Called by `handlers.reconcile_once` every tick. Reads come back as plain dicts (raw JSON,
camelCase, as `kubectl get -o json` shows them). Writes: the status and the clearing of consumed
control annotations are merge patches carrying the resourceVersion the tick decided from
(optimistic concurrency: a concurrent writer makes them fail with 409, and the next tick decides
again from a fresh read); server-side apply for the objects the operator owns (idempotent); a
merge patch of the Deployment's scale for revisions whose template is no longer in the spec; a
merge patch with resourceVersion for the weights of the user's HTTPRoute. Every call has a
timeout and every response is read to the end (the connection goes back to the pool).
ApiException propagates to the caller.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, cast

from kubernetes import client
from kubernetes.client.exceptions import ApiException

from modeldeploy_operator import GROUP, PLURAL, VERSION
from modeldeploy_operator.children import LABEL_NAME, LABEL_REVISION
from modeldeploy_operator.model import Decision, Meta, PodState, RevisionState, RouteState, RouteWeights

FIELD_MANAGER = "modeldeploy-operator"
APPLY = "application/apply-patch+yaml"
MERGE = "application/merge-patch+json"
GATEWAY = ("gateway.networking.k8s.io", "v1", "httproutes")
# The finalizer kopf puts on each ModelDeployment (its timers need one), under our own name
# (`handlers` sets it in kopf's settings); objects of older operators carry kopf's default.
FINALIZER = f"{GROUP}/finalizer"
LEGACY_FINALIZER = "kopf.zalando.org/KopfFinalizerMarker"


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
    )


def _last_line(message: str) -> str:
    """The line that says why a container ended: the server's `refused:` line when the message is
    the tail of its log (terminationMessagePolicy FallbackToLogsOnError), else the last line."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    refused = [line for line in lines if "refused:" in line]
    return (refused or lines or [""])[-1][:300]


class Kube:
    def __init__(self, api: client.ApiClient, timeout_seconds: float = 10.0) -> None:
        self.apps = client.AppsV1Api(api)
        self.core = client.CoreV1Api(api)
        self.custom = client.CustomObjectsApi(api)
        self.t = timeout_seconds

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The ModelDeployment as the API server has it now (None when it is gone)."""
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
        return str(got["metadata"]["resourceVersion"])

    def clear_annotations(self, meta: Meta, resource_version: str, keys: list[str]) -> str:
        """Remove consumed control annotations, only if nothing changed since our status write."""
        body = {"metadata": {"resourceVersion": resource_version, "annotations": dict.fromkeys(keys)}}
        got = _json(
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta.namespace, PLURAL, meta.name, body,
                _content_type=MERGE, _preload_content=False, _request_timeout=self.t,
            )
        )  # fmt: skip
        return str(got["metadata"]["resourceVersion"])

    def observe(self, meta: Meta, http_route: str | None) -> Observation:
        out = Observation()
        selector = f"{LABEL_NAME}={meta.name}"
        deps = _json(
            self.apps.list_namespaced_deployment(
                meta.namespace, label_selector=selector, _preload_content=False, _request_timeout=self.t
            )
        )
        for dep in deps.get("items", []):
            owners = dep["metadata"].get("ownerReferences") or []
            if any(o.get("uid") == meta.uid for o in owners):
                out.owned_deployments[dep["metadata"]["name"]] = int(dep["spec"].get("replicas") or 0)
        pods = _json(
            self.core.list_namespaced_pod(
                meta.namespace, label_selector=selector, _preload_content=False, _request_timeout=self.t
            )
        )
        by_rev: dict[str, list[PodState]] = {}
        for pod in pods.get("items", []):
            rev = (pod["metadata"].get("labels") or {}).get(LABEL_REVISION)
            if rev:
                by_rev.setdefault(rev, []).append(pod_state(pod))
        for rev, states in by_rev.items():
            out.revisions[rev] = RevisionState(ready_replicas=sum(p.ready for p in states), pods=tuple(states))
        if http_route is not None:
            try:
                out.route_body = _json(
                    self.custom.get_namespaced_custom_object(
                        *GATEWAY[:2],
                        meta.namespace,
                        GATEWAY[2],
                        http_route,
                        _preload_content=False,
                        _request_timeout=self.t,
                    )  # fmt: skip
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
            _drain(
                self.apps.patch_namespaced_deployment(
                    name, meta.namespace, dep, field_manager=FIELD_MANAGER, force=True,
                    _content_type=APPLY, _preload_content=False, _request_timeout=self.t,
                )
            )  # fmt: skip
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
            _drain(
                self.core.patch_namespaced_service(
                    svc["metadata"]["name"], meta.namespace, svc, field_manager=FIELD_MANAGER, force=True,
                    _content_type=APPLY, _preload_content=False, _request_timeout=self.t,
                )
            )  # fmt: skip
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
            if not {FINALIZER, LEGACY_FINALIZER} & set(finalizers):
                return False
            kept = [f for f in finalizers if f not in (FINALIZER, LEGACY_FINALIZER)]
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

    def drop_finalizer(self, meta: Meta, resource_version: str, finalizer: str) -> None:
        """Remove one finalizer, only if the object is still at `resource_version` (409 otherwise)."""
        got = self.get(meta.namespace, meta.name)
        if got is None:
            return
        kept = [f for f in got["metadata"].get("finalizers") or [] if f != finalizer]
        body = {"metadata": {"finalizers": kept, "resourceVersion": resource_version}}
        _drain(
            self.custom.patch_namespaced_custom_object(
                GROUP, VERSION, meta.namespace, PLURAL, meta.name, body,
                _content_type=MERGE, _preload_content=False, _request_timeout=self.t,
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
            _drain(
                self.custom.patch_namespaced_custom_object(
                    *GATEWAY[:2], namespace, GATEWAY[2], w.http_route, body,
                    _content_type=MERGE, _preload_content=False, _request_timeout=getattr(self, "t", 10.0),
                )
            )  # fmt: skip
