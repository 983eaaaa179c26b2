"""The shell's side of shadow steps: the ModelDeployment's token, its Secret, the control calls.

Owned here: `token()` (HMAC-SHA256 of namespace/name/uid under the operator's key, so the
operator never needs to read a Secret back), the `<name>-shadow` Secret every server pod gets its
`MODELDEPLOY_SHADOW_TOKEN` from (applied once per object and process, before its Deployments), and
`ShadowControl.push`: while `Decision.shadow` is set, every ready stable pod is told, each tick,
where the ready canary pods are, which percent to mirror and for how long (three ticks: a dead
or deposed operator's shadow ends by itself); when it is no longer set, the pods that were told
get percent 0 once. A control call that fails is logged and counted, never raised: the next tick
sends it again, and a stable pod that is not told mirrors nothing (the check stays Inconclusive).
"""

from __future__ import annotations

import hashlib
import hmac
import logging
from collections.abc import Callable
from typing import Any

import httpx

from modeldeploy_operator import metrics as m
from modeldeploy_operator.children import SERVER_PORT, Owner
from modeldeploy_operator.model import Decision, Meta, RevisionState

log = logging.getLogger("modeldeploy_operator.shadow")
CONFIG_PATH = "/shadow/v1/config"  # the server's control endpoint (modeldeploy_server.shadow)
TOKEN_KEY = "token"


def secret_name(name: str) -> str:
    return f"{name}-shadow"


def token(key: bytes, meta: Meta) -> str:
    return hmac.new(key, f"{meta.namespace}/{meta.name}/{meta.uid}".encode(), hashlib.sha256).hexdigest()


def secret(owner: Owner, value: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": secret_name(owner.name),
            "namespace": owner.namespace,
            "labels": {"app.kubernetes.io/managed-by": "modeldeploy", "modeldeploy.io/name": owner.name},
            "ownerReferences": [owner.reference()],
        },
        "type": "Opaque",
        "stringData": {TOKEN_KEY: value},
    }


def _addresses(state: RevisionState, port: int) -> list[str]:
    return sorted(f"http://{p.ip}:{port}" for p in state.pods if p.ready and p.ip)


class ShadowControl:
    def __init__(self, key: bytes, ttl_seconds: float, timeout_seconds: float = 2.0, port: int = SERVER_PORT) -> None:
        self.key, self.ttl, self.port = key, ttl_seconds, port
        self.client = httpx.Client(timeout=timeout_seconds, trust_env=False)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # not a log line per pod and tick; failures are ours
        self.told: dict[tuple[str, str], list[str]] = {}  # object -> stable pods told to mirror
        self.applied: set[tuple[str, str, str]] = set()  # objects whose Secret this process applied

    def ensure_secret(self, apply: Callable[[dict[str, Any]], None], meta: Meta) -> None:
        """Apply `<name>-shadow` once per object and process (before its Deployments need it)."""
        key = (meta.namespace, meta.name, meta.uid)
        if key not in self.applied:
            apply(secret(Owner(meta.name, meta.namespace, meta.uid), token(self.key, meta)))
            self.applied.add(key)

    def push(self, decision: Decision, meta: Meta, revisions: dict[str, RevisionState]) -> None:
        target = decision.shadow
        obj = (meta.namespace, meta.name)
        if target is None:
            for address in self.told.pop(obj, []):
                self._send(meta, address, {"targets": [], "percent": 0, "canaryRevision": "", "ttlSeconds": 1})
            return
        stable = _addresses(revisions.get(target.stable_revision, RevisionState()), self.port)
        canary = _addresses(revisions.get(target.canary_revision, RevisionState()), self.port)
        if not canary:
            return
        body = {"targets": canary, "percent": target.percent, "canaryRevision": target.canary_revision,
                "tolerance": target.tolerance, "logDisagreements": target.log_disagreements,
                "diffCap": target.diff_cap,
                "ttlSeconds": self.ttl}  # fmt: skip
        self.told[obj] = sorted({*self.told.get(obj, []), *stable})
        for address in stable:
            self._send(meta, address, body)

    def _send(self, meta: Meta, address: str, body: dict[str, Any]) -> None:
        headers = {"authorization": f"Bearer {token(self.key, meta)}"}
        try:
            r = self.client.post(address + CONFIG_PATH, json=body, headers=headers)
            result = "ok" if r.status_code == 200 else f"http-{r.status_code}"
            if r.status_code != 200:
                log.warning("%s/%s: shadow control call to %s: %s %s", meta.namespace, meta.name, address,
                            r.status_code, r.text[:200])  # fmt: skip
        except httpx.HTTPError as err:
            result = "unreachable"
            log.warning("%s/%s: shadow control call to %s failed: %s", meta.namespace, meta.name, address, err)
        m.SHADOW_CONTROL_CALLS.labels(result=result).inc()
