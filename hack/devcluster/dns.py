"""Cluster DNS of the real node: CoreDNS (built by hack/build-node-binaries.sh) as a host process.

Owns: the Corefile (the `kubernetes` plugin for cluster.local and reverse lookups, served on the
node address 198.18.0.1:53, which the kubelet hands to pods as their nameserver), start/stop and
waiting for CoreDNS's /ready (on 127.0.0.1) once the plugin has synced with the API server. No
`forward` plugin: a name outside the cluster gets SERVFAIL, nothing leaves the node. Called by
devcluster.realnode.
"""

from __future__ import annotations

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


class CoreDns(procs.HttpReadyProcess):
    def __init__(self, state: Path, binary: Path, kubeconfig: Path, env: dict[str, str]) -> None:
        super().__init__("coredns", binary, state / "logs" / "coredns.log", env, state / "coredns")
        self.ready_port = procs.free_port()
        self.config_file = self.dir / "Corefile"
        self.config_file.write_text(corefile(kubeconfig, "devcluster", self.ready_port))

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.ready_port}/ready"

    def argv(self) -> list[str]:
        return [str(self.binary), "-conf", str(self.config_file)]
