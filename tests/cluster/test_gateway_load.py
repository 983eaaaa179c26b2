"""The gateway stand-in under modest load loses no request while weights change and a pod goes.

Real traffic (keep-alive, concurrent clients) through the gateway to real server processes while
the HTTPRoute's weights flip and a backing pod is deleted: every request must still be answered
200 (a request caught on a closing connection is retried once on another endpoint). Prints the
throughput it saw; asserts no timing.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx
import pytest

from devcluster import Cluster
from tests.cluster.kube import ROW, apply, pods, predict, ready_pods, server_deployment, service

pytestmark = pytest.mark.cluster


def route(host: str, stable: int, canary: int) -> dict[str, Any]:
    return {
        "apiVersion": "gateway.networking.k8s.io/v1", "kind": "HTTPRoute", "metadata": {"name": "porosity"},
        "spec": {"hostnames": [host], "rules": [{"backendRefs": [
            {"name": "porosity-stable", "port": 80, "weight": stable},
            {"name": "porosity-canary", "port": 80, "weight": canary}]}]},
    }  # fmt: skip


async def _load(url: str, host: str, total: int, concurrency: int, results: Counter[str], seen: Counter[str]) -> None:
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, timeout=15, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                queue.get_nowait()
                resp = await client.post("/v1/models/porosity:predict", json={"instances": [ROW]},
                                         headers={"Host": host})  # fmt: skip
                results[str(resp.status_code) if resp.status_code == 200 else f"{resp.status_code} {resp.text}"] += 1
                seen[resp.headers.get("x-devcluster-service", "-")] += 1

        await asyncio.gather(*(worker() for _ in range(concurrency)))


def test_no_request_lost_while_weights_change_and_a_pod_goes(
    cluster: Cluster, namespace: str, model: dict[str, str]
) -> None:
    ns, host = namespace, f"load.{namespace}.example.test"
    apply(
        cluster, ns,
        server_deployment("porosity", model, replicas=2, revision="stable"),
        server_deployment("porosity", model, replicas=1, revision="canary"),
        service("porosity-stable", {"modeldeploy.io/name": "porosity", "modeldeploy.io/revision": "stable"}),
        service("porosity-canary", {"modeldeploy.io/name": "porosity", "modeldeploy.io/revision": "canary"}),
        route(host, 50, 50),
    )  # fmt: skip
    ready_pods(cluster, ns, "modeldeploy.io/name=porosity", 3)
    with httpx.Client(base_url=cluster.gateway_url, timeout=10) as gw:  # both backends routable

        def both_served() -> bool:
            hit = {predict(gw, host).headers.get("x-devcluster-service") for _ in range(20)}
            return hit == {f"{ns}/porosity-stable", f"{ns}/porosity-canary"}

        Cluster.wait_for(both_served, 10, what="the gateway routes to both services")
    results: Counter[str] = Counter()
    seen: Counter[str] = Counter()
    total = 1500

    async def scenario() -> float:
        t0 = time.monotonic()
        load = asyncio.create_task(_load(cluster.gateway_url, host, total, 16, results, seen))

        async def kubectl(*args: str, input: str | None = None) -> None:
            await asyncio.to_thread(cluster.kubectl, *args, input=input)

        await asyncio.sleep(0.5)
        await kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(route(host, 0, 100)))
        await asyncio.sleep(0.7)
        await kubectl("apply", "-n", ns, "-f", "-", input=json.dumps(route(host, 100, 0)))
        await asyncio.sleep(0.5)
        victim = pods(cluster, ns, "modeldeploy.io/revision=stable")[0]["metadata"]["name"]
        await kubectl("delete", "pod", "-n", ns, victim, "--wait=false")
        await load
        return time.monotonic() - t0

    elapsed = asyncio.run(scenario())
    print(f"\ngateway: {total} requests, 16 concurrent, {elapsed:.1f}s = {total / elapsed:.0f} req/s; "
          f"by service {dict(seen)}")  # fmt: skip
    assert results == Counter({"200": total}), results
    assert set(seen) == {f"{ns}/porosity-stable", f"{ns}/porosity-canary"}
