"""Benchmark (marker bench, not run by default): the gateway's cost over calling a pod directly.

Same requests, same concurrency, same server pod: once straight to the pod's 127.x address, once
through the gateway by Host header. Prints both rates and their ratio; asserts nothing about
speed (the machine is shared), only that every request was answered.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from devcluster import Cluster
from tests.cluster.kube import ROW, apply, ready_pods, server_deployment, service

pytestmark = [pytest.mark.cluster, pytest.mark.bench]
N, CONCURRENCY = 2000, 16


async def _rate(url: str, host: str | None) -> float:
    limits = httpx.Limits(max_connections=CONCURRENCY, max_keepalive_connections=CONCURRENCY)
    headers = {"Host": host} if host else {}
    statuses: list[int] = []
    async with httpx.AsyncClient(base_url=url, timeout=30, limits=limits) as client:
        remaining = iter(range(N))

        async def worker() -> None:
            for _ in remaining:
                resp = await client.post("/v1/models/porosity:predict", json={"instances": [ROW]}, headers=headers)
                statuses.append(resp.status_code)

        t0 = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(CONCURRENCY)))
        elapsed = time.perf_counter() - t0
    assert statuses == [200] * N
    return N / elapsed


def test_gateway_overhead(cluster: Cluster, namespace: str, model: dict[str, str]) -> None:
    apply(cluster, namespace, server_deployment("porosity", model, replicas=1),
          service("porosity", {"modeldeploy.io/name": "porosity"}))  # fmt: skip
    pod = ready_pods(cluster, namespace, "modeldeploy.io/name=porosity", 1)[0]
    direct_url = f"http://{pod['status']['podIP']}:8080"
    assert direct_url.startswith("http://127.")
    asyncio.run(_rate(direct_url, None))  # warm-up
    direct = asyncio.run(_rate(direct_url, None))
    via = asyncio.run(_rate(cluster.gateway_url, f"porosity.{namespace}"))
    print(f"\n[bench] {N} requests, {CONCURRENCY} concurrent, 1 pod: direct {direct:.0f} req/s, "
          f"through the gateway {via:.0f} req/s, ratio gateway/direct {via / direct:.2f}")  # fmt: skip
