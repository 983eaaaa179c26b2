"""A small asyncio client for the local API server (httpx, bearer token, the cluster's CA).

Owns: list/get/create/patch/delete of plain JSON objects by API path. Called by kubelet,
endpoints and gateway. Deliberately tiny: the harness needs a handful of verbs, no models.
"""

from __future__ import annotations

import ssl
from typing import Any

import httpx

Obj = dict[str, Any]


class ApiError(RuntimeError):
    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")
        self.status = status


class KubeApi:
    def __init__(self, server: str, token: str, ca_file: str) -> None:
        ctx = ssl.create_default_context(cafile=ca_file)
        self._http = httpx.AsyncClient(
            base_url=server,
            verify=ctx,
            headers={"Authorization": f"Bearer {token}", "Accept": "application/json"},
            timeout=httpx.Timeout(10.0),
            limits=httpx.Limits(max_connections=20, max_keepalive_connections=10),
            trust_env=False,
        )

    async def close(self) -> None:
        await self._http.aclose()

    async def _call(self, method: str, path: str, **kwargs: Any) -> Obj:
        resp = await self._http.request(method, path, **kwargs)
        if resp.status_code >= 400:
            raise ApiError(resp.status_code, method, path, resp.text)
        data: Obj = resp.json() if resp.content else {}
        return data

    async def list(self, path: str, **params: str) -> list[Obj]:
        items: list[Obj] = (await self._call("GET", path, params=params)).get("items") or []
        return items

    async def get(self, path: str) -> Obj:
        return await self._call("GET", path)

    async def create(self, path: str, body: Obj) -> Obj:
        return await self._call("POST", path, json=body)

    async def put(self, path: str, body: Obj) -> Obj:
        return await self._call("PUT", path, json=body)

    async def merge_patch(self, path: str, body: Obj) -> Obj:
        return await self._call("PATCH", path, json=body, headers={"Content-Type": "application/merge-patch+json"})

    async def delete(self, path: str, body: Obj | None = None) -> Obj:
        return await self._call("DELETE", path, json=body) if body is not None else await self._call("DELETE", path)


def pod_path(ns: str, name: str) -> str:
    return f"/api/v1/namespaces/{ns}/pods/{name}"
