"""The shell's side of shadow steps: the ModelDeployment's token, its Secret, the control calls.

Owned here: `resolve_key()`, the operator's key: MODELDEPLOY_OPERATOR_SHADOW_KEY when set, else
the `key` of the Secret MODELDEPLOY_OPERATOR_SHADOW_KEY_SECRET names (`<namespace>/<name>`, the
chart's `modeldeploy-shadow-key` in the release namespace), which the operator creates with a random
key (`secrets.token_urlsafe(32)`) when nobody has: every operator process, after a restart, an
upgrade or a leader change, then derives the same tokens, so the stable pods it did not start still
accept its control calls. The key is never logged. That one Secret is the only one the operator
reads (the chart's Role grants `get` on it by name). `token()` (HMAC-SHA256 of namespace/name/uid
under that key, so the operator never reads a `<name>-shadow` Secret back), the `<name>-shadow`
Secret every server pod gets its
`MODELDEPLOY_SHADOW_TOKEN` from (applied once per object and process, before its Deployments), and
`ShadowControl.push`: while `Decision.shadow` is set, every ready stable pod is told, each tick,
where the ready canary pods are, which percent to mirror and for how long (three ticks: a dead
or deposed operator's shadow ends by itself); when it is no longer set, the pods that were told
get percent 0 once. A control call that fails is logged and counted, never raised: the next tick
sends it again, and a stable pod that is not told mirrors nothing (the check stays Inconclusive).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
from collections.abc import Callable
from typing import Any

import httpx
from kubernetes.client.exceptions import ApiException
from urllib3.exceptions import HTTPError

from modeldeploy_operator import metrics as m
from modeldeploy_operator.children import SERVER_PORT, Owner
from modeldeploy_operator.model import Decision, Meta, RevisionState

log = logging.getLogger("modeldeploy_operator.shadow")
CONFIG_PATH = "/shadow/v1/config"  # the server's control endpoint (modeldeploy_server.shadow)
TOKEN_KEY = "token"


KEY_FIELD = "key"  # the data field of the key Secret


def key_secret(namespace: str, name: str, key: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/managed-by": "modeldeploy"}},
        "type": "Opaque",
        "stringData": {KEY_FIELD: key},
    }


def load_key(core: Any, namespace: str, name: str, timeout: float = 10.0) -> bytes:
    """The `key` of Secret namespace/name; when there is none, that Secret is created with a random
    key first (a 409: another process created it at the same moment, and its key is read back)."""
    for _ in range(3):
        try:
            found = core.read_namespaced_secret(name, namespace, _request_timeout=timeout)
        except ApiException as err:
            if err.status != 404:
                raise
        else:
            value = (found.data or {}).get(KEY_FIELD)
            if not value:
                raise ValueError(f"Secret {namespace}/{name} has no data.{KEY_FIELD}")
            return base64.b64decode(value)
        key = secrets.token_urlsafe(32)
        try:
            core.create_namespaced_secret(namespace, key_secret(namespace, name, key), _request_timeout=timeout)
        except ApiException as err:
            if err.status != 409:
                raise
            continue
        log.info("created Secret %s/%s with a random shadow-step key", namespace, name)
        return key.encode()
    raise ValueError(f"Secret {namespace}/{name} was created and deleted again while being read")


def resolve_key(configured: str, secret_ref: str, core: Any) -> bytes:
    """The operator's shadow-step key (module docstring); a random key of this process only when the
    Secret cannot be read or created (the reason is logged, never the key)."""
    if configured:
        return configured.encode()
    if secret_ref:
        namespace, _, name = secret_ref.partition("/")
        try:
            key = load_key(core, namespace, name)
            log.info("shadow-step tokens use the key of Secret %s", secret_ref)
            return key
        except ApiException as err:
            why = f"{err.status} {err.reason}"
        except (HTTPError, ValueError) as err:
            why = type(err).__name__ if isinstance(err, HTTPError) else str(err)
        log.warning("shadow key Secret %s: %s; shadow-step tokens use a random key of this process (stable "
                    "pods started before a restart will refuse its control calls)", secret_ref, why)  # fmt: skip
    else:
        log.warning("neither MODELDEPLOY_OPERATOR_SHADOW_KEY nor MODELDEPLOY_OPERATOR_SHADOW_KEY_SECRET is set: "
                    "shadow-step tokens use a random key of this process")  # fmt: skip
    return os.urandom(32)


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
