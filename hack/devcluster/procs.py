"""Child processes of the harness: each in its own process group, killed with the harness.

Owns: spawning (new session + parent-death signal so nothing outlives the harness), stopping a
process group with SIGTERM then SIGKILL, free loopback ports, the local-address rule, and the
shape of a host process that is ready on an HTTP GET, and the one way to run kubectl (`kubectl`,
raising `ClusterError`). Called by controlplane, prometheus, kubelet, realnode, dns and traefik,
and by the demo and the tests through `kubectl`.
"""

from __future__ import annotations

import ctypes
import ipaddress
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any, TypeVar

_PR_SET_PDEATHSIG = 1


class ClusterError(RuntimeError):
    pass


def kubectl(kubeconfig: Path | str, *args: str, input: str | None = None, timeout: float = 120,
            check: bool = True, binary: Path | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
    """Run the environment's kubectl (the wheel's, not /usr/bin's) against `kubeconfig`; with
    `check`, a non-zero exit raises ClusterError naming the command, its exit code and stderr."""
    kubectl_bin = binary or Path(sys.prefix) / "bin" / "kubectl"
    proc = subprocess.run([str(kubectl_bin), f"--kubeconfig={kubeconfig}", *args], input=input,
                          capture_output=True, text=True, timeout=timeout)  # fmt: skip
    if check and proc.returncode != 0:
        raise ClusterError(f"kubectl {' '.join(args)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it when the harness dies."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except OSError:
        pass


def spawn(
    argv: Sequence[str],
    log_path: Path,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen[bytes]:
    """Start argv in a new process group with stdout+stderr appended to log_path."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    log: IO[bytes] = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=dict(env) if env is not None else None,
            cwd=cwd,
            start_new_session=True,
            preexec_fn=_die_with_parent,  # noqa: PLW1509 - no threads in the child before exec
        )
    finally:
        log.close()


def stop(proc: subprocess.Popen[bytes], grace: float = 5.0) -> int | None:
    """SIGTERM the process group, SIGKILL it after `grace` seconds; return the exit code."""
    if proc.poll() is None:
        _signal_group(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            pass
    _signal_group(proc.pid, signal.SIGKILL)  # stragglers in the group, if any
    try:
        return proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        return None


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port that is free on host right now (bound and released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind((host, port))
        except OSError:
            return False
        return True


T = TypeVar("T")


def wait_for(predicate: Callable[[], T | None], timeout: float, what: str = "condition", interval: float = 0.25,
             retry_on: tuple[type[Exception], ...] = ()) -> T:  # fmt: skip
    """Poll until predicate() returns something truthy and return it, or TimeoutError naming `what`
    with the last value (and the last error). An exception of a `retry_on` type counts as "not yet";
    any other propagates at once. The one poller of the harness, the demo and the tests
    (`Cluster.wait_for`, `modeldeploy_demo.workload.wait_for`)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    error: Exception | None = None
    while True:
        try:
            last = predicate()
            if last:
                return last
        except retry_on as e:
            error = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r}"
                               + (f"; last error: {error}" if error else "") + ")")  # fmt: skip
        time.sleep(interval)


def wait_until(predicate: object, timeout: float, interval: float = 0.1, what: str = "condition") -> None:
    """Poll a zero-argument callable until it returns truthy; TimeoutError naming `what`."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except RuntimeError:
            raise  # fatal (a process died): no point waiting
        except Exception as e:  # noqa: BLE001 - reported if the wait times out
            last_error = e
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}" + (f": {last_error}" if last_error else ""))


_NO_PROXY_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


LOCAL_NETWORKS = (ipaddress.ip_network("127.0.0.0/8"), ipaddress.ip_network("198.18.0.0/15"))


def is_local_address(host: str) -> bool:
    """Loopback, or the range the real node creates on this machine (198.18.0.0/15): the only
    addresses the harness, its tools and the tests may connect to."""
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False
    return any(addr in net for net in LOCAL_NETWORKS)


def http_get(
    url: str, timeout: float = 2.0, headers: Mapping[str, str] | None = None, **ssl_args: Any
) -> tuple[int, bytes]:
    """GET a local URL (see is_local_address) without any proxy; (status, body), HTTP errors
    included as statuses."""
    host = urllib.parse.urlsplit(url).hostname or ""
    if not is_local_address(host):
        raise ValueError(f"refusing to connect to host {host!r}: neither loopback nor 198.18.0.0/15")
    req = urllib.request.Request(url, headers=dict(headers or {}))
    handlers: list[urllib.request.BaseHandler] = [urllib.request.ProxyHandler({})]
    if ssl_args:
        handlers.append(urllib.request.HTTPSHandler(context=ssl_args["context"]))
    opener = urllib.request.build_opener(*handlers) if ssl_args else _NO_PROXY_OPENER
    try:
        with opener.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


def http_post(url: str, timeout: float = 30.0) -> tuple[int, bytes]:
    host = urllib.parse.urlsplit(url).hostname or ""
    if not host.startswith("127."):
        raise ValueError(f"refusing to connect to non-loopback host {host!r}")
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with _NO_PROXY_OPENER.open(req, timeout=timeout) as resp:
            return int(resp.status), resp.read()
    except urllib.error.HTTPError as e:
        return int(e.code), e.read()


class HttpReadyProcess:
    """A long-running host process that is ready when an HTTP GET on `ready_url` answers 200.

    Subclasses give `ready_url` and `argv()`; used by devcluster.dns and devcluster.traefik.
    """

    grace = 5.0

    def __init__(self, name: str, binary: Path, log: Path, env: dict[str, str], workdir: Path) -> None:
        self.name = name
        self.binary = binary
        self.log = log
        self.env = env
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def ready_url(self) -> str:
        raise NotImplementedError

    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self, timeout: float = 60.0) -> None:
        self.proc = spawn(self.argv(), self.log, env=self.env, cwd=self.dir)
        wait_until(self._ready, timeout, 0.2, f"{self.name} {self.ready_url} (log {self.log})")

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"{self.name} exited; see {self.log}")
        try:
            return http_get(self.ready_url, 1.0)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc, grace=self.grace)
            self.proc = None
