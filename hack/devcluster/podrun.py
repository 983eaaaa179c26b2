"""One pod's server process as the process kubelet runs it (test harness, not product).

Owns: which containers can run (command[0] == modeldeploy-server), the container's environment
(values, fieldRef downward API, ConfigMap/Secret refs, $(VAR) expansion), loopback pod addresses,
the process with its log file, and the pod status built from the process state (phase, podIP,
conditions, containerStatuses with restartCount, CrashLoopBackOff / Error reasons carrying the
exit code and last log line). Called by kubelet.
"""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from devcluster import procs

Obj = dict[str, Any]
SERVER_COMMAND = "modeldeploy-server"
BACKOFF_INITIAL, BACKOFF_MAX = 1.0, 20.0


def now_iso() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def runnable(pod: Obj) -> str | None:
    """None when the process kubelet can run every container of the pod, else the reason."""
    spec = pod["spec"]
    if spec.get("initContainers"):
        return "init containers are not supported by the process kubelet"
    if len(spec.get("containers") or []) != 1:
        return "the process kubelet runs pods with exactly one container"
    for c in spec.get("containers") or []:
        cmd = c.get("command") or []
        if not cmd or os.path.basename(cmd[0]) != SERVER_COMMAND:
            return (
                f"the process kubelet runs only containers whose command[0] is {SERVER_COMMAND}; "
                f"container {c['name']!r} (image {c.get('image')!r}) has command {cmd!r}"
            )
    return None


class IpPool:
    """Fresh loopback addresses 127.0.x.y (x >= 1: 127.0.0.0/24 is the control plane's), never reused."""

    def __init__(self) -> None:
        self._next = random.randrange(256, 200 * 256)  # random start: several clusters may share the host

    def allocate(self, port: int) -> str:
        for _ in range(60000):
            n, self._next = self._next, self._next + 1
            if self._next >= 255 * 256:
                self._next = 256
            x, y = divmod(n, 256)
            if 1 <= y <= 254 and x >= 1:
                ip = f"127.0.{x}.{y}"
                if procs.port_is_free(ip, port):
                    return ip
        raise RuntimeError("no free loopback address left")


_FIELD_LABEL = re.compile(r"^metadata\.(labels|annotations)\['(.+)'\]$")


def field_ref(pod: Obj, ip: str, path: str) -> str:
    meta = pod["metadata"]
    simple = {
        "metadata.name": meta["name"],
        "metadata.namespace": meta["namespace"],
        "metadata.uid": meta["uid"],
        "spec.nodeName": pod["spec"].get("nodeName", ""),
        "spec.serviceAccountName": pod["spec"].get("serviceAccountName", ""),
        "status.podIP": ip,
        "status.podIPs": ip,
        "status.hostIP": "127.0.0.1",
        "status.hostIPs": "127.0.0.1",
    }
    if path in simple:
        return str(simple[path])
    m = _FIELD_LABEL.match(path)
    if m:
        return str((meta.get(m.group(1)) or {}).get(m.group(2), ""))
    raise ValueError(f"fieldRef {path!r} is not supported by the process kubelet")


_VAR = re.compile(r"\$\(([A-Za-z_][A-Za-z0-9_.-]*)\)")


def expand(value: str, env: dict[str, str]) -> str:
    return _VAR.sub(lambda m: env.get(m.group(1), m.group(0)), value)


@dataclass
class PodProcess:
    """A running (or restarting, or finished) pod on the process kubelet."""

    pod: Obj
    ip: str
    port: int
    argv: list[str]
    env: dict[str, str]
    log: Path
    cwd: Path
    proc: subprocess.Popen[bytes] | None = None
    restart_count: int = 0
    started_at: str = ""
    start_time: str = field(default_factory=now_iso)
    ready: bool = False
    ready_since: str = field(default_factory=now_iso)
    probe_failures: int = 0
    started_mono: float = 0.0
    startup_done: bool = False
    first_failure: float = 0.0
    live_failures: int = 0
    last_live_probe: float = 0.0
    last_terminated: Obj | None = None
    waiting: Obj | None = None
    next_start: float = 0.0
    finished: bool = False  # restartPolicy says never again
    terminating: bool = False

    @property
    def key(self) -> str:
        return f"{self.pod['metadata']['namespace']}/{self.pod['metadata']['name']}"

    @property
    def container(self) -> Obj:
        containers: list[Obj] = self.pod["spec"]["containers"]
        return containers[0]

    def start(self) -> None:
        self.cwd.mkdir(parents=True, exist_ok=True)
        with open(self.log, "a") as f:
            f.write(f"--- devcluster: starting {self.key} on {self.ip}:{self.port} (restart {self.restart_count})\n")
        self.proc = procs.spawn(self.argv, self.log, env=self.env, cwd=self.cwd)
        self.started_at = now_iso()
        self.waiting = None
        self.probe_failures = self.live_failures = 0
        self.started_mono = self.last_live_probe = time.monotonic()
        self.startup_done = False
        self.set_ready(False)

    def set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready, self.ready_since = ready, now_iso()

    def last_log_line(self) -> str:
        try:
            with open(self.log, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log) - 8192))
                lines = [ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()]
        except OSError:
            return ""
        lines = [ln for ln in lines if not ln.startswith("--- devcluster:")]
        return lines[-1][:1000] if lines else ""

    def reap(self) -> bool:
        """Record an exit of the process; True when it exited since the last call."""
        if self.proc is None or self.proc.poll() is None:
            return False
        code = self.proc.returncode
        code = 128 - code if code < 0 else code  # killed by signal N -> 128+N, as a container runtime reports
        self.proc = None
        self.set_ready(False)
        reason = "Completed" if code == 0 else "Error"
        self.last_terminated = {
            "exitCode": code, "reason": reason, "message": self.last_log_line(),
            "startedAt": self.started_at, "finishedAt": now_iso(),
        }  # fmt: skip
        policy = self.pod["spec"].get("restartPolicy", "Always")
        if self.terminating or policy == "Never" or (policy == "OnFailure" and code == 0):
            self.finished = True
            return True
        delay = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** min(self.restart_count, 10))
        self.next_start = time.monotonic() + delay
        self.waiting = {
            "reason": "CrashLoopBackOff",
            "message": f"back-off {delay:.0f}s restarting failed container={self.container['name']} pod={self.key}: "
            f"exit code {code}: {self.last_terminated['message']}",
        }
        return True

    def maybe_restart(self) -> bool:
        if self.proc is None and not self.finished and not self.terminating and time.monotonic() >= self.next_start:
            self.restart_count += 1
            self.start()
            return True
        return False

    def status(self) -> Obj:
        c = self.container
        running = self.proc is not None
        cstatus: Obj = {
            "name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": self.ready and running,
            "restartCount": self.restart_count, "started": running,
            "containerID": f"process://{self.proc.pid}" if self.proc is not None else "",
        }  # fmt: skip
        if running:
            cstatus["state"] = {"running": {"startedAt": self.started_at}}
        elif self.finished and self.last_terminated is not None:
            cstatus["state"] = {"terminated": self.last_terminated}
        else:
            cstatus["state"] = {"waiting": self.waiting or {"reason": "ContainerCreating"}}
        if self.last_terminated is not None and not self.finished:
            cstatus["lastState"] = {"terminated": self.last_terminated}
        if self.finished:
            code = (self.last_terminated or {}).get("exitCode", 1)
            phase = "Succeeded" if code == 0 else "Failed"
        else:
            phase = "Running" if running or self.restart_count or self.last_terminated else "Pending"
        ready = "True" if self.ready and running else "False"
        t0 = self.start_time
        conditions = [
            {"type": "PodReadyToStartContainers", "status": "True", "lastTransitionTime": t0},
            {"type": "Initialized", "status": "True", "lastTransitionTime": t0},
            {"type": "ContainersReady", "status": ready, "lastTransitionTime": self.ready_since},
            {"type": "Ready", "status": ready, "lastTransitionTime": self.ready_since},
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": t0},
        ]
        return {
            "phase": phase, "podIP": self.ip, "podIPs": [{"ip": self.ip}], "hostIP": "127.0.0.1",
            "hostIPs": [{"ip": "127.0.0.1"}], "startTime": self.start_time, "conditions": conditions,
            "containerStatuses": [cstatus],
        }  # fmt: skip


def server_executable() -> str:
    return str(Path(sys.prefix) / "bin" / SERVER_COMMAND)


def unsupported_status(pod: Obj, reason: str, code: str = "UnsupportedByProcessKubelet") -> Obj:
    """A Pending status that says why the process kubelet does not (or not yet) run the pod."""
    t0 = now_iso()
    return {
        "phase": "Pending",
        "conditions": [
            {"type": "PodScheduled", "status": "True", "lastTransitionTime": t0},
            {"type": "Ready", "status": "False", "lastTransitionTime": t0, "reason": code,
             "message": reason},
        ],
        "containerStatuses": [
            {"name": c["name"], "image": c.get("image", ""), "imageID": "", "ready": False, "restartCount": 0,
             "started": False, "state": {"waiting": {"reason": code, "message": reason}}}
            for c in pod["spec"].get("containers") or []
        ],
    }  # fmt: skip
