"""Probes of the process kubelet: startup, readiness and liveness over HTTP on the pod's address.

Owns: probing every running pod twice a second (httpGet on its 127.x address only), the
failureThreshold / periodSeconds / initialDelaySeconds rules, readiness flips, and restarts when
a liveness or startup probe gives up. Called by kubelet (probe loop), which reports the result
in the pod status.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import httpx

from devcluster import podrun, procs

Obj = dict[str, Any]
EventFn = Callable[[Obj, str, str, str], None]


class Prober:
    def __init__(self, event: EventFn) -> None:
        self.event = event
        self._http = httpx.AsyncClient(timeout=1.0, trust_env=False)

    async def close(self) -> None:
        await self._http.aclose()

    async def _http_ok(self, pp: podrun.PodProcess, probe: Obj) -> bool:
        get = probe.get("httpGet") or {}
        port = get.get("port", pp.port)
        port = pp.port if isinstance(port, str) and not port.isdigit() else int(port)
        url = f"http://{pp.ip}:{port}{get.get('path', '/')}"
        try:
            resp = await self._http.get(url, timeout=float(probe.get("timeoutSeconds", 1)))
        except httpx.HTTPError:
            return False
        return 200 <= resp.status_code < 400

    async def probe_pod(self, pp: podrun.PodProcess) -> None:
        c = pp.container
        age = time.monotonic() - pp.started_mono
        if not pp.startup_done:  # startupProbe: the other probes wait until it succeeds once
            await self._startup(pp, c.get("startupProbe"), age)
            if not pp.startup_done:
                return
        rp = c.get("readinessProbe")
        if rp is not None and age < float(rp.get("initialDelaySeconds", 0)):
            return
        if rp is None or "httpGet" not in rp:
            pp.set_ready(True)
        elif await self._http_ok(pp, rp):
            pp.probe_failures = 0
            pp.set_ready(True)
        else:
            # probed every 0.5 s (fast tests), but a ready pod turns unready only after failureThreshold
            # failures spanning failureThreshold x min(periodSeconds, 1 s), as the real kubelet would
            now = time.monotonic()
            if pp.probe_failures == 0:
                pp.first_failure = now
            pp.probe_failures += 1
            threshold = int(rp.get("failureThreshold", 3))
            window = threshold * min(float(rp.get("periodSeconds", 10)), 1.0)
            if pp.ready and pp.probe_failures >= threshold and now - pp.first_failure >= window:
                self.event(pp.pod, "Warning", "Unhealthy", f"Readiness probe failed {pp.probe_failures} times")
                pp.set_ready(False)
            elif not pp.ready:
                pp.set_ready(False)
        await self._liveness(pp, c.get("livenessProbe"), age)

    async def _startup(self, pp: podrun.PodProcess, sp: Obj | None, age: float) -> None:
        if sp is None or "httpGet" not in sp:
            pp.startup_done = True
            pp.last_live_probe = time.monotonic()  # liveness periods count from here
            return
        if age < float(sp.get("initialDelaySeconds", 0)):
            return
        if await self._http_ok(pp, sp):
            pp.startup_done = True
            pp.last_live_probe = time.monotonic()
            return
        budget = float(sp.get("failureThreshold", 3)) * float(sp.get("periodSeconds", 10))
        if age - float(sp.get("initialDelaySeconds", 0)) >= budget and pp.proc is not None:
            self.event(pp.pod, "Warning", "Unhealthy", f"Startup probe failed for {budget:.0f}s, restarting")
            await self._kill_for_restart(pp)

    async def _liveness(self, pp: podrun.PodProcess, lp: Obj | None, age: float) -> None:
        if lp is None or "httpGet" not in lp or pp.proc is None or age < float(lp.get("initialDelaySeconds", 0)):
            return
        now = time.monotonic()
        if now - pp.last_live_probe < max(1.0, float(lp.get("periodSeconds", 10))):
            return
        pp.last_live_probe = now
        if await self._http_ok(pp, lp):
            pp.live_failures = 0
            return
        pp.live_failures += 1
        if pp.live_failures >= int(lp.get("failureThreshold", 3)):
            self.event(pp.pod, "Warning", "Unhealthy", f"Liveness probe failed {pp.live_failures} times, restarting")
            await self._kill_for_restart(pp)

    async def _kill_for_restart(self, pp: podrun.PodProcess) -> None:
        if pp.proc is not None:
            grace = float(pp.pod["spec"].get("terminationGracePeriodSeconds", 30))
            await asyncio.to_thread(procs.stop, pp.proc, grace)
