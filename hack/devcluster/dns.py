"""Cluster DNS of the real node: CoreDNS (built by hack/build-node-binaries.sh) as a host process.

Owns: the Corefile (the `kubernetes` plugin for cluster.local and reverse lookups, served on the
node address 198.18.0.1:53, which the kubelet hands to pods as their nameserver), start/stop and
waiting for CoreDNS's /ready (on 127.0.0.1) once the plugin has synced with the API server. No
`forward` plugin: a name outside the cluster gets SERVFAIL, nothing leaves the node. Called by
devcluster.realnode.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from devcluster import network, procs


def corefile(kubeconfig: Path, context: str, ready_port: int) -> str:
    return (
        ".:53 {\n"
        f"    bind {network.NODE_IP}\n"
        "    errors\n"
        f"    ready 127.0.0.1:{ready_port}\n"
        "    kubernetes cluster.local in-addr.arpa {\n"
        f"        kubeconfig {kubeconfig} {context}\n"
        "        ttl 5\n"
        "    }\n"
        "}\n"
    )


class CoreDns:
    def __init__(self, state: Path, binary: Path, kubeconfig: Path, env: dict[str, str]) -> None:
        self.dir = state / "coredns"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.ready_port = procs.free_port()
        self.log = state / "logs" / "coredns.log"
        self.env = env
        self.config_file = self.dir / "Corefile"
        self.config_file.write_text(corefile(kubeconfig, "devcluster", self.ready_port))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.proc = procs.spawn([str(self.binary), "-conf", str(self.config_file)], self.log, env=self.env,
                                cwd=self.dir)  # fmt: skip
        procs.wait_until(self._ready, timeout, 0.2, f"coredns /ready (log {self.log})")

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"coredns exited; see {self.log}")
        try:
            return procs.http_get(f"http://127.0.0.1:{self.ready_port}/ready", 1.0)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, grace=5.0)
            self.proc = None
