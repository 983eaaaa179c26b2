"""Watch-backed caches (informers) of the objects a tick reads: ModelDeployments, their
Deployments and pods, and HTTPRoutes.

Without them each tick LISTed Deployments and pods and GETted the object and its route, about four
reads per object every tick: 200 requests/s at 1,000 objects before any write. An `Informer`
LISTs once, then follows a WATCH from that resourceVersion (raw JSON lines, no model classes),
re-LISTs when the watch expires (410) or breaks, and keeps the objects as plain dicts, indexed by
namespace and the `modeldeploy.io/name` label. `Kube` reads from them and folds its own write
responses in (`Informer.offer`), so a tick never decides from an object older than the
operator's own last write; every write still carries the resourceVersion the tick decided from,
so a cache that lags another writer costs a 409 and one tick, never a lost decision.

An informer that has not synced (first LIST not done, or the resource does not exist, such as
HTTPRoutes without the Gateway API CRDs) answers `None`, and `Kube` reads from the API server.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

log = logging.getLogger("modeldeploy.operator.cache")

Key = tuple[str, str]  # (namespace, name)
# list_fn(**kwargs) -> urllib3 response (called with _preload_content=False); watch=True makes it a WATCH
ListFn = Callable[..., Any]


def newer(a: str, b: str) -> bool:
    """resourceVersion a is at least as new as b. They are opaque by contract, but every etcd-backed
    API server hands out increasing integers; anything else counts as newer (the watch wins)."""
    try:
        return int(a) >= int(b)
    except ValueError:
        return True


class Informer:
    def __init__(
        self,
        what: str,
        list_fn: ListFn,
        index_label: str | None = None,
        label_selector: str | None = None,
        timeout_seconds: float = 10.0,
        watch_seconds: int = 300,
        trim: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
    ) -> None:
        self.what, self.list_fn, self.index_label = what, list_fn, index_label
        self.trim = trim or drop_managed_fields
        self.label_selector, self.timeout, self.watch_seconds = label_selector, timeout_seconds, watch_seconds
        self.objects: dict[Key, dict[str, Any]] = {}
        self.index: dict[Key, set[Key]] = {}  # (namespace, label value) -> keys
        self.lock = threading.Lock()
        self.synced = threading.Event()
        self.stopped = threading.Event()

    def start(self) -> Informer:
        threading.Thread(target=self._run, name=f"informer-{self.what}", daemon=True).start()
        return self

    def stop(self) -> None:
        self.stopped.set()

    # ---- reads (any thread)
    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The cached object; raises LookupError when the cache cannot answer (not synced)."""
        if not self.synced.is_set():
            raise LookupError(self.what)
        with self.lock:
            return self.objects.get((namespace, name))

    def by_label(self, namespace: str, value: str) -> list[dict[str, Any]]:
        """Objects in `namespace` whose index label is `value`; LookupError when not synced."""
        if not self.synced.is_set():
            raise LookupError(self.what)
        with self.lock:
            return [self.objects[k] for k in self.index.get((namespace, value), ()) if k in self.objects]

    def offer(self, obj: dict[str, Any]) -> None:
        """An object the operator just wrote (the API server's answer): keep it unless the cache
        already holds a newer version."""
        self._put(obj)

    # ---- the loop
    def _run(self) -> None:
        backoff = 1.0
        while not self.stopped.is_set():
            try:
                rv: str | None = self._list()
                backoff = 1.0
                while rv is not None and not self.stopped.is_set():
                    rv = self._watch(rv)  # None: expired (410), start over with a LIST
            except ApiException as err:
                log.info("%s: %s %s; retrying in %.0fs", self.what, err.status, err.reason, backoff)
            except Exception as err:  # noqa: BLE001 - a broken connection, a timeout: list again
                log.info("%s: watch broke (%s); retrying in %.0fs", self.what, type(err).__name__, backoff)
            self.stopped.wait(backoff)
            backoff = min(backoff * 2, 5.0)  # an API server back from a restart is seen within seconds

    def _call(self, **kwargs: Any) -> Any:
        if self.label_selector:
            kwargs["label_selector"] = self.label_selector
        return self.list_fn(_preload_content=False, **kwargs)

    def _list(self) -> str:
        resp = self._call(_request_timeout=max(self.timeout, 60.0))
        body = json.loads(resp.data)
        items = body.get("items") or []
        kind = str(body.get("kind") or "").removesuffix("List")
        fresh: dict[Key, dict[str, Any]] = {}
        for item in items:
            item.setdefault("kind", kind)  # LIST items carry no kind
            md = item.get("metadata") or {}
            fresh[(md.get("namespace") or "", md.get("name") or "")] = item
        fresh = {key: self.trim(obj) for key, obj in fresh.items()}
        with self.lock:
            self.objects = fresh
            self.index = {}
            for key, obj in fresh.items():
                self._index_add(key, obj)
        self.synced.set()
        return str((body.get("metadata") or {}).get("resourceVersion") or "")

    def _watch(self, rv: str) -> str | None:
        resp = self._call(
            watch=True,
            resource_version=rv,
            allow_watch_bookmarks=True,
            timeout_seconds=self.watch_seconds,
            _request_timeout=(self.timeout, self.watch_seconds + 30),
        )
        try:
            for line in _lines(resp):
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    if obj.get("code") == 410:
                        return None
                    raise RuntimeError(f"watch error: {obj.get('message')}")
                rv = str((obj.get("metadata") or {}).get("resourceVersion") or rv)
                if kind == "BOOKMARK":
                    continue
                if kind == "DELETED":
                    self._drop(obj)
                else:
                    self._put(obj)
        finally:
            resp.release_conn()
        return rv

    # ---- the store
    def _put(self, obj: dict[str, Any]) -> None:
        obj = self.trim(obj)
        md = obj.get("metadata") or {}
        key = (md.get("namespace") or "", md.get("name") or "")
        with self.lock:
            old = self.objects.get(key)
            if old is not None and not newer(
                str(md.get("resourceVersion") or "0"), str(old["metadata"].get("resourceVersion") or "0")
            ):
                return
            if old is not None:
                self._index_drop(key, old)
            self.objects[key] = obj
            self._index_add(key, obj)

    def _drop(self, obj: dict[str, Any]) -> None:
        md = obj.get("metadata") or {}
        key = (md.get("namespace") or "", md.get("name") or "")
        with self.lock:
            old = self.objects.pop(key, None)
            if old is not None:
                self._index_drop(key, old)

    def _label(self, obj: dict[str, Any]) -> str | None:
        if self.index_label is None:
            return None
        return ((obj.get("metadata") or {}).get("labels") or {}).get(self.index_label)

    def _index_add(self, key: Key, obj: dict[str, Any]) -> None:
        value = self._label(obj)
        if value is not None:
            self.index.setdefault((key[0], value), set()).add(key)

    def _index_drop(self, key: Key, obj: dict[str, Any]) -> None:
        value = self._label(obj)
        if value is not None:
            keys = self.index.get((key[0], value))
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self.index[(key[0], value)]


def drop_managed_fields(obj: dict[str, Any]) -> dict[str, Any]:
    """managedFields are often the largest part of an object and nothing here reads them."""
    (obj.get("metadata") or {}).pop("managedFields", None)
    return obj


def slim_pod(pod: dict[str, Any]) -> dict[str, Any]:
    """What `kube.pod_state` reads of a pod (a full pod is ~5 KB of JSON; 2,000 of them in memory
    would be most of the operator's size)."""
    md, status = pod.get("metadata") or {}, pod.get("status") or {}
    keep_md = ("name", "namespace", "uid", "labels", "resourceVersion", "deletionTimestamp")
    return {
        "metadata": {k: md[k] for k in keep_md if k in md},
        "status": {k: status[k] for k in ("phase", "conditions", "containerStatuses", "podIP") if k in status},
    }


class FrozenJSON(Mapping[str, Any]):
    """A JSON object kept as its compact text and parsed again at each read (every read gets a
    fresh copy). A Deployment's pod template is ~3-5 KB of JSON and ~20-30 KB as Python dicts; a
    tick does not read it (only `status.cost` once a minute and a batch CronJob's rendering do), and
    2,000 of them parsed were a fifth of the operator's heap at 1,000 objects (bench/README.md)."""

    __slots__ = ("_text",)

    def __init__(self, value: Mapping[str, Any]) -> None:
        self._text = json.dumps(value, separators=(",", ":"))

    def thaw(self) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self._text)
        return out

    def __getitem__(self, key: str) -> Any:
        return self.thaw()[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.thaw())

    def __len__(self) -> int:
        return len(self.thaw())

    def __repr__(self) -> str:
        return f"FrozenJSON({self._text})"


def slim_deployment(dep: dict[str, Any]) -> dict[str, Any]:
    """What the operator reads of a Deployment: its metadata (the applied digest, the generation,
    owners, labels), spec.replicas, and the pod template frozen (`FrozenJSON`); not its status."""
    spec = dep.get("spec") or {}
    out = {"metadata": drop_managed_fields(dep).get("metadata") or {}, "spec": {"replicas": spec.get("replicas")}}
    if "template" in spec:
        out["spec"]["template"] = FrozenJSON(spec["template"])
    return out


def slim_service(svc: dict[str, Any]) -> dict[str, Any]:
    """What the operator reads of a Service: metadata and spec.selector (`Kube._apply`)."""
    spec = svc.get("spec") or {}
    return {"metadata": drop_managed_fields(svc).get("metadata") or {}, "spec": {"selector": spec.get("selector")}}


def _lines(resp: Any) -> Iterator[str]:
    for line in iter_resp_lines(resp):  # type: ignore[no-untyped-call]
        text = line.decode() if isinstance(line, bytes) else line
        if text.strip():
            yield text


class Kind:
    """One kind of object over the watched namespaces: an informer per namespace, or one for the
    whole cluster (namespace "")."""

    def __init__(self, informers: dict[str, Informer]) -> None:
        self.informers = informers

    def _for(self, namespace: str) -> Informer:
        informer = self.informers.get(namespace) or self.informers.get("")
        if informer is None:
            raise LookupError(namespace)
        return informer

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._for(namespace).get(namespace, name)

    def by_label(self, namespace: str, value: str) -> list[dict[str, Any]]:
        return self._for(namespace).by_label(namespace, value)

    def offer(self, obj: dict[str, Any]) -> None:
        namespace = (obj.get("metadata") or {}).get("namespace") or ""
        try:
            self._for(namespace).offer(obj)
        except LookupError:
            pass

    def start(self) -> None:
        for informer in self.informers.values():
            informer.start()

    def stop(self) -> None:
        for informer in self.informers.values():
            informer.stop()

    def wait_synced(self, deadline: float) -> bool:
        return all(i.synced.wait(max(0.0, deadline - time.monotonic())) for i in self.informers.values())


class Caches:
    """The informers of one operator: ModelDeployments, their Deployments and pods (label
    `modeldeploy.io/name` present), HTTPRoutes."""

    def __init__(self, mds: Kind, deployments: Kind, pods: Kind, services: Kind, routes: Kind) -> None:
        self.mds, self.deployments, self.pods, self.services, self.routes = mds, deployments, pods, services, routes
        self.kinds = (mds, deployments, pods, services, routes)

    def start(self) -> Caches:
        for kind in self.kinds:
            kind.start()
        return self

    def stop(self) -> None:
        for kind in self.kinds:
            kind.stop()

    def wait_synced(self, timeout: float) -> bool:
        """True when the ModelDeployments, Deployments and pods are cached (routes may never be:
        without the Gateway API CRDs there is nothing to list)."""
        deadline = time.monotonic() + timeout
        return all(k.wait_synced(deadline) for k in (self.mds, self.deployments, self.pods, self.services))
