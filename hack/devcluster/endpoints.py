"""Service and HTTPRoute resolution for the gateway stand-in (pure functions over API objects).

Owns: which pods back a Service port (the EndpointSlice controller's rules: selector match, pod
Ready, not terminating, named or numeric targetPort), and the host -> weighted backends table
built from Gateway API HTTPRoutes. Only loopback (127.0.0.0/8) pod addresses are ever returned;
anything else is refused here, before any connection could be attempted. Called by gateway.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

Obj = dict[str, Any]
LOOPBACK = ipaddress.ip_network("127.0.0.0/8")
SVC_SUFFIXES = (".svc.cluster.local", ".svc")


@dataclass(frozen=True)
class Endpoint:
    ip: str
    port: int
    pod: str  # namespace/name


@dataclass(frozen=True)
class Backend:
    service: str  # namespace/name
    weight: int
    endpoints: tuple[Endpoint, ...]


@dataclass(frozen=True)
class Rule:
    path_type: str  # PathPrefix or Exact
    path: str
    backends: tuple[Backend, ...]


@dataclass
class Table:
    routes: dict[str, list[Rule]] = field(default_factory=dict)  # hostname (maybe *.suffix) -> rules
    services: dict[str, Backend] = field(default_factory=dict)  # "name.namespace" -> Backend

    def lookup(self, host: str, path: str) -> tuple[Backend, ...] | None:
        """Backends for a request, or None when the host is unknown."""
        host = host.lower().rstrip(".")
        rules = self.routes.get(host)
        if rules is None:
            for pattern, candidate in self.routes.items():
                if pattern.startswith("*.") and host.endswith(pattern[1:]):
                    rules = candidate
                    break
        if rules is not None:
            best: Rule | None = None
            for rule in rules:
                if _path_matches(rule, path) and (best is None or len(rule.path) > len(best.path)):
                    best = rule
            return best.backends if best is not None else None
        for suffix in SVC_SUFFIXES:
            if host.endswith(suffix):
                host = host[: -len(suffix)]
                break
        svc = self.services.get(host)
        return (svc,) if svc is not None else None


def _path_matches(rule: Rule, path: str) -> bool:
    if rule.path_type == "Exact":
        return path == rule.path
    prefix = rule.path.rstrip("/")
    return path == prefix or path.startswith(prefix + "/") or prefix == ""


def is_loopback(ip: str) -> bool:
    try:
        return ipaddress.ip_address(ip) in LOOPBACK
    except ValueError:
        return False


def _ready(pod: Obj) -> bool:
    status = pod.get("status") or {}
    if pod["metadata"].get("deletionTimestamp") or status.get("phase") != "Running":
        return False
    return any(c.get("type") == "Ready" and c.get("status") == "True" for c in status.get("conditions") or [])


def _target_port(pod: Obj, target: int | str) -> int | None:
    if isinstance(target, int):
        return target
    if target.isdigit():
        return int(target)
    for container in pod["spec"].get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == target:
                return int(port["containerPort"])
    return None


def service_backend(svc: Obj, pods: list[Obj], port: int | None = None, weight: int = 1) -> Backend:
    """Ready loopback endpoints of one Service port (the first port when `port` is None)."""
    meta, spec = svc["metadata"], svc.get("spec") or {}
    name = f"{meta['namespace']}/{meta['name']}"
    ports = spec.get("ports") or []
    sport = next((p for p in ports if port is None or p.get("port") == port), None)
    selector: dict[str, str] = spec.get("selector") or {}
    if sport is None or not selector:
        return Backend(name, weight, ())
    target = sport.get("targetPort", sport["port"])
    eps: list[Endpoint] = []
    for pod in pods:
        pmeta = pod["metadata"]
        labels = pmeta.get("labels") or {}
        if pmeta["namespace"] != meta["namespace"] or any(labels.get(k) != v for k, v in selector.items()):
            continue
        ip = (pod.get("status") or {}).get("podIP", "")
        tport = _target_port(pod, target)
        if _ready(pod) and tport is not None and is_loopback(ip):
            eps.append(Endpoint(ip, tport, f"{pmeta['namespace']}/{pmeta['name']}"))
    eps.sort(key=lambda e: e.pod)
    return Backend(name, weight, tuple(eps))


def build_table(pods: list[Obj], services: list[Obj], routes: list[Obj]) -> Table:
    table = Table()
    by_key = {f"{s['metadata']['namespace']}/{s['metadata']['name']}": s for s in services}
    for svc in services:
        meta = svc["metadata"]
        table.services[f"{meta['name']}.{meta['namespace']}"] = service_backend(svc, pods)
    for route in routes:
        ns = route["metadata"]["namespace"]
        spec = route.get("spec") or {}
        rules: list[Rule] = []
        for rule in spec.get("rules") or [{}]:
            backends: list[Backend] = []
            for ref in rule.get("backendRefs") or []:
                if ref.get("kind", "Service") != "Service" or ref.get("group", "") not in ("", "core"):
                    continue
                key = f"{ref.get('namespace', ns)}/{ref['name']}"
                weight = int(ref.get("weight", 1))
                target = by_key.get(key)
                backends.append(
                    service_backend(target, pods, ref.get("port"), weight) if target else Backend(key, weight, ())
                )
            for match in rule.get("matches") or [{}]:
                path = match.get("path") or {}
                rules.append(Rule(path.get("type", "PathPrefix"), path.get("value", "/"), tuple(backends)))
        for host in spec.get("hostnames") or []:
            table.routes.setdefault(host.lower(), []).extend(rules)
    return table
