"""A pod container's environment on the process kubelet (test harness, not product).

Owns: env values with $(VAR) expansion, valueFrom fieldRef (downward API), configMapKeyRef and
secretKeyRef, envFrom; then MODELDEPLOY_HOST/PORT forced to the pod's loopback address and a
home and cache folder of the pod's own. Called by kubelet when it starts a pod.
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

from devcluster.kubeapi import ApiError, KubeApi
from devcluster.podrun import expand, field_ref, server_executable

Obj = dict[str, Any]


async def resolve_env(api: KubeApi, state: Path, pod: Obj, container: Obj, ip: str, port: int) -> dict[str, str]:
    """The container's environment as the kubelet would build it, plus the pod's own address."""
    ns = pod["metadata"]["namespace"]
    env: dict[str, str] = {}
    for src in container.get("envFrom") or []:
        ref = src.get("configMapRef") or src.get("secretRef")
        if ref is None:
            continue
        data = await _object_data(api, ns, "configmaps" if "configMapRef" in src else "secrets", ref)
        env.update({src.get("prefix", "") + k: v for k, v in data.items()})
    for item in container.get("env") or []:
        name = item["name"]
        if "valueFrom" not in item:
            env[name] = expand(item.get("value", ""), env)
            continue
        vf = item["valueFrom"]
        if "fieldRef" in vf:
            env[name] = field_ref(pod, ip, vf["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in vf or "secretKeyRef" in vf:
            kind = "configmaps" if "configMapKeyRef" in vf else "secrets"
            ref = vf.get("configMapKeyRef") or vf["secretKeyRef"]
            value = (await _object_data(api, ns, kind, ref)).get(ref["key"])
            if value is None and not ref.get("optional"):
                raise ValueError(f"env {name}: key {ref['key']!r} not found in {kind[:-1]} {ref.get('name')!r}")
            if value is not None:
                env[name] = value
        else:
            raise ValueError(f"env {name}: valueFrom {sorted(vf)} is not supported by the process kubelet")
    # the pod's own address, always: the server must never bind 0.0.0.0 or a 10.x address here
    env["MODELDEPLOY_HOST"], env["MODELDEPLOY_PORT"] = ip, str(port)
    base = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}
    base["PATH"] = f"{Path(server_executable()).parent}:{base.get('PATH', '/usr/bin:/bin')}"
    # a pod's own home and cache (a container's filesystem is its own): pods share no artifact cache
    home = state / "pods" / f"{pod['metadata']['namespace']}_{pod['metadata']['name']}"
    base["HOME"], base["XDG_CACHE_HOME"] = str(home), str(home / ".cache")
    return {**base, **env}


async def _object_data(api: KubeApi, ns: str, kind: str, ref: Obj) -> dict[str, str]:
    try:
        obj = await api.get(f"/api/v1/namespaces/{ns}/{kind}/{ref['name']}")
    except ApiError as e:
        if e.status == 404 and ref.get("optional"):
            return {}
        raise
    data: dict[str, str] = dict(obj.get("data") or {})
    if kind == "secrets":
        data = {k: base64.b64decode(v).decode() for k, v in data.items()}
    return data
