"""The cluster daemon: runs every part of the local cluster until SIGTERM (test harness).

Owns: start-up order (control plane -> Gateway API CRDs -> Prometheus -> process kubelet ->
gateway -> control endpoint), the poll loop feeding the kubelet and the gateway (pods, Services,
HTTPRoutes every POLL_SECONDS), the env file and status.json, the pid file, and teardown of every
child (also when the parent that asked for it dies). Called by `python -m devcluster run`
(through `up` or devcluster.client.Cluster).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web

from devcluster import controlplane, endpoints, procs, prometheus
from devcluster.gateway import Gateway
from devcluster.kubeapi import ApiError, KubeApi
from devcluster.kubelet import NODE, Kubelet
from devcluster.prometheus import Prometheus

POLL_SECONDS = 0.3
log = logging.getLogger("devcluster")


class Harness:
    def __init__(self, state: Path, parent_pid: int | None = None) -> None:
        self.state = state.resolve()
        self.parent_pid = parent_pid
        self.timings: dict[str, float] = {}
        self._t0 = time.monotonic()
        self.gateway_port = procs.free_port()
        self.control_port = procs.free_port()
        self._stop = asyncio.Event()
        self.pods: list[dict[str, Any]] = []

    def _mark(self, what: str) -> None:
        self.timings[what] = round(time.monotonic() - self._t0, 2)
        log.info("%s after %.2fs", what, self.timings[what])

    def env(self) -> dict[str, str]:
        cp = self.cp
        return {
            "KUBECONFIG": str(cp.kubeconfig),
            "KUBE_APISERVER_URL": cp.server,
            "PROMETHEUS_URL": self.prom.url,
            "GATEWAY_URL": f"http://127.0.0.1:{self.gateway_port}",
            "DEVCLUSTER_CONTROL_URL": f"http://127.0.0.1:{self.control_port}",
            "DEVCLUSTER_STATE_DIR": str(self.state),
            "DEVCLUSTER_LOG_DIR": str(self.state / "logs"),
            "DEVCLUSTER_NODE": NODE,
            "DEVCLUSTER_PID": str(os.getpid()),
            "DEVCLUSTER_BIN_DIR": str(cp.bin),
            "KUBECTL": str(controlplane.kubectl_path()),
            "HELM": str(cp.bin / "helm"),
            "MODELDEPLOY_OPERATOR_PROMETHEUS_URL": self.prom.url,
        }

    def run(self) -> int:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call and probe is noise
        for name in ("env", "ready", "status.json"):
            (self.state / name).unlink(missing_ok=True)
        (self.state / "logs").mkdir(parents=True, exist_ok=True)
        (self.state / "harness.pid").write_text(str(os.getpid()))
        if procs.kill_stale_pods(self.state):
            log.warning("killed server processes left behind by an earlier harness in %s", self.state)
        signal.signal(signal.SIGTERM, self._on_signal_sync)
        signal.signal(signal.SIGINT, self._on_signal_sync)
        self.cp = controlplane.ControlPlane(self.state, controlplane.binaries_dir(build=False))
        self.prom = Prometheus(self.state, prometheus.config(f"http://127.0.0.1:{self.control_port}/sd/pods"))
        try:
            self.cp.start()
            self._mark("apiserver_readyz")
            asyncio.run(self._main())
            return 0
        except _Stopped:
            return 0
        finally:
            signal.signal(signal.SIGTERM, signal.SIG_IGN)  # finish the teardown even if asked twice
            signal.signal(signal.SIGINT, signal.SIG_IGN)
            self.prom.stop()
            self.cp.stop()
            (self.state / "harness.pid").unlink(missing_ok=True)
            (self.state / "ready").unlink(missing_ok=True)
            log.info("stopped")

    def _on_signal_sync(self, signum: int, frame: Any) -> None:
        raise _Stopped()

    async def _main(self) -> None:
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self._stop.set)
        p = self.cp.pki
        self.api = KubeApi(self.cp.server, p.admin_token, str(p.ca_cert))
        self.kubelet = Kubelet(self.api, self.state, "v1.36.3-devcluster")
        self.gateway = Gateway()
        runner: web.AppRunner | None = None
        tasks: list[asyncio.Task[None]] = []
        try:
            crds = loop.create_task(self._apply_gateway_crds())
            await self.kubelet.register()
            await self.gateway.start("127.0.0.1", self.gateway_port)
            runner = await self._control_server()
            await asyncio.to_thread(self.prom.start)
            self._mark("prometheus_ready")
            await crds
            tasks = [
                loop.create_task(self._poll_loop()),
                loop.create_task(self.kubelet.heartbeat_loop()),
                loop.create_task(self.kubelet.probe_loop()),
                loop.create_task(self._watch_parent()),
            ]
            await self._wait_all_ready()
            self._mark("all_ready")
            self._write_env()
            await self._stop.wait()
        finally:
            for t in tasks:
                t.cancel()
            await self.kubelet.shutdown()
            await self.gateway.stop()
            if runner is not None:
                await runner.cleanup()
            await self.api.close()

    async def _apply_gateway_crds(self) -> None:
        await asyncio.to_thread(self.cp.apply_gateway_crds)
        self._mark("gateway_crds")

    async def _wait_all_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.cp.check_alive()
            try:
                node = await self.api.get(f"/api/v1/nodes/{NODE}")
                taints = (node.get("spec") or {}).get("taints") or []
                await self.api.get("/api/v1/namespaces/default/serviceaccounts/default")
                if not taints and await asyncio.to_thread(self.cp.components_healthy):
                    return
            except (ApiError, httpx.HTTPError):
                pass
            await asyncio.sleep(0.2)
        raise TimeoutError(f"controller manager, scheduler or node not ready within {timeout:.0f}s")

    def _write_env(self) -> None:
        env = self.env()
        text = "".join(f"{k}={v}\n" for k, v in env.items())
        (self.state / "env").write_text(text)
        status = {"env": env, "timings_seconds": self.timings, "pid": os.getpid()}
        (self.state / "status.json").write_text(json.dumps(status, indent=2))
        (self.state / "ready").write_text("ok\n")

    async def _poll_loop(self) -> None:
        while True:
            try:
                pods = await self.api.list("/api/v1/pods")
                services = await self.api.list("/api/v1/services")
                try:
                    routes = await self.api.list("/apis/gateway.networking.k8s.io/v1/httproutes")
                except ApiError as e:
                    if e.status != 404:
                        raise
                    routes = []
                # the table first: a pod being deleted leaves it before the kubelet stops its process
                self.pods = pods
                self.gateway.table = endpoints.build_table(pods, services, routes)
                updated = await self.kubelet.sync(pods)
                if updated:  # statuses the kubelet just wrote (a pod became Ready): route by them now
                    pods = [updated.get(p["metadata"]["uid"], p) for p in pods]
                    self.pods = pods
                    self.gateway.table = endpoints.build_table(pods, services, routes)
            except (ApiError, httpx.HTTPError) as e:
                log.warning("poll failed: %s", e)
            except Exception:
                log.exception("poll loop error")
            await asyncio.sleep(POLL_SECONDS)

    async def _watch_parent(self) -> None:
        while self.parent_pid is not None:
            await asyncio.sleep(1.0)
            if os.getppid() != self.parent_pid:
                log.warning("parent %d is gone: stopping", self.parent_pid)
                self._stop.set()
                return

    async def _control_server(self) -> web.AppRunner:
        async def status(_: web.Request) -> web.Response:
            return web.json_response({
                "env": self.env(), "timings_seconds": self.timings, "prometheus_running": self.prom.running,
                "pods": {pp.key: {"ip": pp.ip, "pid": pp.proc.pid if pp.proc else None, "ready": pp.ready,
                                  "restarts": pp.restart_count} for pp in self.kubelet.pods.values()},
                "gateway_requests": self.gateway.requests,
            })  # fmt: skip

        async def prom_stop(_: web.Request) -> web.Response:
            await asyncio.to_thread(self.prom.stop)
            return web.json_response({"prometheus_running": False})

        async def prom_start(_: web.Request) -> web.Response:
            await asyncio.to_thread(self.prom.start)
            return web.json_response({"prometheus_running": True})

        async def sd_pods(_: web.Request) -> web.Response:
            return web.json_response(prometheus.sd_targets(self.pods))

        app = web.Application()
        app.router.add_get("/status", status)
        app.router.add_get("/sd/pods", sd_pods)
        app.router.add_post("/prometheus/stop", prom_stop)
        app.router.add_post("/prometheus/start", prom_start)
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", self.control_port).start()
        return runner


class _Stopped(Exception):
    """SIGTERM/SIGINT before the event loop runs."""


def main(state: Path, parent_pid: int | None) -> int:
    sys.stdout.reconfigure(line_buffering=True)  # type: ignore[union-attr]
    return Harness(state, parent_pid).run()
