"""The process kubelet: a Node whose pods are local modeldeploy-server processes (test harness).

Owns: registering Node `local-kubelet` (Ready, large capacity), renewing its Lease and status
heartbeat, and syncing the pods bound to it: start a process on a fresh 127.0.x.y address,
probes (devcluster.probes), restarts per restartPolicy with back-off, status patches, pod
Events, graceful termination on deletion (SIGTERM, SIGKILL after the grace period, then delete
with grace 0). Pods it cannot run stay Pending with a reason. Called by harness, which feeds it
the pod list every poll.
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from devcluster import podenv, podrun, probes, procs
from devcluster.kubeapi import ApiError, KubeApi, pod_path

NODE = "local-kubelet"
LEASE_SECONDS = 40
HEARTBEAT_SECONDS = 10
log = logging.getLogger("devcluster.kubelet")
Obj = dict[str, Any]


def _microtime() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Kubelet:
    def __init__(self, api: KubeApi, state: Path, version: str) -> None:
        self.api, self.state, self.version = api, state, version
        self.pods: dict[str, podrun.PodProcess] = {}  # by uid
        self.unsupported: set[str] = set()
        self.ips = podrun.IpPool()
        self._patched: dict[str, Obj] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._updated: dict[str, Obj] = {}
        self.prober = probes.Prober(self.event)

    # --- node and lease -------------------------------------------------------------------
    def _node_status(self) -> Obj:
        now = podrun.now_iso()
        cond = [
            ("Ready", "True", "KubeletReady", "process kubelet is posting ready status"),
            ("MemoryPressure", "False", "KubeletHasSufficientMemory", "ok"),
            ("DiskPressure", "False", "KubeletHasNoDiskPressure", "ok"),
            ("PIDPressure", "False", "KubeletHasSufficientPID", "ok"),
        ]
        res = {"cpu": "64", "memory": "256Gi", "pods": "500", "ephemeral-storage": "1Ti"}
        return {
            "capacity": res, "allocatable": res,
            "conditions": [
                {"type": t, "status": s, "reason": r, "message": m, "lastHeartbeatTime": now,
                 "lastTransitionTime": self._started}
                for t, s, r, m in cond
            ],
            "addresses": [{"type": "InternalIP", "address": "127.0.0.1"}, {"type": "Hostname", "address": NODE}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": 0}},
            "nodeInfo": {
                "kubeletVersion": self.version, "kubeProxyVersion": "", "operatingSystem": "linux",
                "architecture": "amd64", "containerRuntimeVersion": "process://devcluster", "osImage": "devcluster",
                "kernelVersion": os.uname().release, "machineID": "", "systemUUID": "", "bootID": "",
            },
        }  # fmt: skip

    async def register(self) -> None:
        self._started = podrun.now_iso()
        labels = {"kubernetes.io/hostname": NODE, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
                  "node.kubernetes.io/instance-type": "process"}  # fmt: skip
        try:
            node = await self.api.create("/api/v1/nodes", {"metadata": {"name": NODE, "labels": labels}})
        except ApiError as e:
            if e.status != 409:
                raise
            node = await self.api.get(f"/api/v1/nodes/{NODE}")
        await self.api.merge_patch(f"/api/v1/nodes/{NODE}/status", {"status": self._node_status()})
        lease = {
            "metadata": {"name": NODE, "namespace": "kube-node-lease", "ownerReferences": [
                {"apiVersion": "v1", "kind": "Node", "name": NODE, "uid": node["metadata"]["uid"]}]},
            "spec": {"holderIdentity": NODE, "leaseDurationSeconds": LEASE_SECONDS, "renewTime": _microtime()},
        }  # fmt: skip
        try:
            await self.api.create("/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", lease)
        except ApiError as e:
            if e.status != 409:
                raise

    async def heartbeat_loop(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            try:
                await self.api.merge_patch(
                    f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{NODE}",
                    {"spec": {"renewTime": _microtime(), "holderIdentity": NODE}},
                )
                await self.api.merge_patch(f"/api/v1/nodes/{NODE}/status", {"status": self._node_status()})
            except (ApiError, httpx.HTTPError) as e:
                log.warning("heartbeat failed: %s", e)

    # --- pods ---------------------------------------------------------------------------------
    async def _start_pod(self, pod: Obj) -> None:
        meta, container = pod["metadata"], pod["spec"]["containers"][0]
        ports = container.get("ports") or [{"containerPort": 8080}]
        port = int(ports[0]["containerPort"])
        ip = self.ips.allocate(port)
        env = await podenv.resolve_env(self.api, self.state, pod, container, ip, port)
        argv = [podrun.server_executable(), *container.get("command", [])[1:], *container.get("args", [])]
        argv = [argv[0]] + [podrun.expand(a, env) for a in argv[1:]]
        name = f"{meta['namespace']}_{meta['name']}"
        pp = podrun.PodProcess(pod, ip, port, argv, env, self.state / "logs" / f"{name}.log",
                               self.state / "pods" / name)  # fmt: skip
        pp.start()
        self.pods[meta["uid"]] = pp
        log.info("started %s on %s:%d (pid %s)", pp.key, ip, port, pp.proc.pid if pp.proc else "-")
        self._started_event(pp)

    async def sync(self, all_pods: list[Obj]) -> dict[str, Obj]:
        """One pass over the pods bound to this node (called by the harness every poll).

        Returns the pods whose status it changed, as the API server answered (by uid), so the
        gateway can route to a pod the moment it is reported Ready.
        """
        self._updated = {}
        mine = [p for p in all_pods if (p.get("spec") or {}).get("nodeName") == NODE]
        seen = set()
        for pod in mine:
            uid = pod["metadata"]["uid"]
            seen.add(uid)
            pp = self.pods.get(uid)
            if pp is not None:
                pp.pod = pod
            if pod["metadata"].get("deletionTimestamp"):
                if pp is None:
                    self._spawn_task(self._finish_delete(pod))
                elif not pp.terminating:
                    pp.terminating = True
                    self._spawn_task(self._terminate(pp))
                continue
            if pp is None and uid not in self.unsupported:
                reason = podrun.runnable(pod)
                if reason is not None:
                    self.unsupported.add(uid)
                    self.event(pod, "Warning", "Failed", reason)
                    await self._patch_status(pod, podrun.unsupported_status(pod, reason))
                    continue
                if pod.get("status", {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                try:
                    await self._start_pod(pod)
                except ApiError as e:  # a ConfigMap or Secret not there yet: try again next poll
                    why = f"cannot build the environment: {e}"
                    await self._patch_status(pod, podrun.unsupported_status(pod, why, "CreateContainerConfigError"))
                except (ValueError, RuntimeError) as e:
                    self.unsupported.add(uid)
                    await self._patch_status(pod, podrun.unsupported_status(pod, f"cannot start: {e}"))
        for uid in list(self.pods):
            if uid not in seen:  # gone from the API (force-deleted): stop the process
                pp = self.pods.pop(uid)
                if pp.proc is not None:
                    await asyncio.to_thread(procs.stop, pp.proc, 2.0)
        self.unsupported &= seen
        for uid in list(self._patched):
            if uid not in seen:
                del self._patched[uid]
        for pp in list(self.pods.values()):
            if not pp.terminating:
                if pp.reap() and pp.waiting is not None:
                    self.event(pp.pod, "Warning", "BackOff", pp.waiting["message"])
                if pp.maybe_restart():
                    self._started_event(pp)
                await self._patch_status(pp.pod, pp.status())
        return self._updated

    def _started_event(self, pp: podrun.PodProcess) -> None:
        pid = pp.proc.pid if pp.proc is not None else 0
        msg = f"Started container {pp.container['name']}: process {pid} on {pp.ip}:{pp.port}"
        self.event(pp.pod, "Normal", "Started", msg)

    def event(self, pod: Obj, type_: str, reason: str, message: str) -> None:
        """Record a core/v1 Event about the pod (fire and forget), as the real kubelet does."""
        meta, now = pod["metadata"], podrun.now_iso()
        body = {
            "metadata": {"generateName": f"{meta['name']}.", "namespace": meta["namespace"]},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": meta["name"],
                               "namespace": meta["namespace"], "uid": meta["uid"]},
            "type": type_, "reason": reason, "message": message[:1000], "count": 1,
            "firstTimestamp": now, "lastTimestamp": now, "reportingComponent": "kubelet", "reportingInstance": NODE,
            "source": {"component": "kubelet", "host": NODE},
        }  # fmt: skip

        async def post() -> None:
            try:
                await self.api.create(f"/api/v1/namespaces/{meta['namespace']}/events", body)
            except (ApiError, httpx.HTTPError) as e:
                log.warning("event %s for %s not recorded: %s", reason, meta["name"], e)

        self._spawn_task(post())

    def _spawn_task(self, coro: Any) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _patch_status(self, pod: Obj, status: Obj) -> None:
        uid = pod["metadata"]["uid"]
        if self._patched.get(uid) == status:
            return
        try:
            self._updated[uid] = await self.api.merge_patch(
                pod_path(pod["metadata"]["namespace"], pod["metadata"]["name"]) + "/status",
                {"metadata": {"uid": uid}, "status": status},
            )
            self._patched[uid] = status
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("status patch of %s failed: %s", pod["metadata"]["name"], e)

    async def _terminate(self, pp: podrun.PodProcess) -> None:
        grace = pp.pod["metadata"].get("deletionGracePeriodSeconds")
        grace = float(grace if grace is not None else pp.pod["spec"].get("terminationGracePeriodSeconds", 30))
        if pp.proc is not None:
            log.info("stopping %s (grace %.0fs)", pp.key, grace)
            self.event(pp.pod, "Normal", "Killing", f"Stopping container {pp.container['name']}")
            await asyncio.to_thread(procs.stop, pp.proc, grace)
            pp.reap()
        self.pods.pop(pp.pod["metadata"]["uid"], None)
        await self._finish_delete(pp.pod)

    async def _finish_delete(self, pod: Obj) -> None:
        meta = pod["metadata"]
        try:
            await self.api.delete(
                pod_path(meta["namespace"], meta["name"]),
                {"gracePeriodSeconds": 0, "preconditions": {"uid": meta["uid"]}},
            )
        except ApiError as e:
            if e.status not in (404, 409):
                log.warning("final delete of %s failed: %s", meta["name"], e)

    async def probe_loop(self, interval: float = 0.5) -> None:
        while True:
            await asyncio.sleep(interval)
            live = [pp for pp in self.pods.values() if pp.proc is not None and not pp.terminating]
            await asyncio.gather(*(self.prober.probe_pod(pp) for pp in live), return_exceptions=True)

    async def shutdown(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        stops = [asyncio.to_thread(procs.stop, pp.proc, 3.0) for pp in self.pods.values() if pp.proc is not None]
        await asyncio.gather(*stops, return_exceptions=True)
        self.pods.clear()
        await self.prober.close()
