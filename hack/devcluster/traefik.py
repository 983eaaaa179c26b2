"""Traefik v3 as the real node's Gateway API implementation (a host process, built from source).

Owns: Traefik's static config (one entry point on 127.0.0.1, the kubernetesGateway provider
against the local API server with a token), the GatewayClass and the Gateway that HTTPRoutes
attach to (GATEWAY_NAME in GATEWAY_NAMESPACE, routes from every namespace), start/stop, and
waiting until the Gateway is Programmed. Traefik routes to the ready endpoints of the
EndpointSlices behind each backendRef, by the weights in the HTTPRoute. Called by
devcluster.realnode.

Traefik binds a Gateway listener to the entry point with the same port, so the listener's port is
the entry point's (a free loopback port); GATEWAY_URL is http://127.0.0.1:<that port>.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import yaml

from devcluster import procs

GATEWAY_CLASS = "traefik"
CONTROLLER = "traefik.io/gateway-controller"
GATEWAY_NAME = "modeldeploy"
GATEWAY_NAMESPACE = "modeldeploy-gateway"


def gateway_manifests(port: int) -> str:
    docs = [
        {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": GATEWAY_NAMESPACE}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "GatewayClass", "metadata": {"name": GATEWAY_CLASS},
         "spec": {"controllerName": CONTROLLER}},
        {"apiVersion": "gateway.networking.k8s.io/v1", "kind": "Gateway",
         "metadata": {"name": GATEWAY_NAME, "namespace": GATEWAY_NAMESPACE},
         "spec": {"gatewayClassName": GATEWAY_CLASS, "listeners": [
             {"name": "web", "protocol": "HTTP", "port": port, "allowedRoutes": {"namespaces": {"from": "All"}}},
         ]}},
    ]  # fmt: skip
    return yaml.safe_dump_all(docs, sort_keys=False)


class Traefik:
    def __init__(self, state: Path, binary: Path, server: str, ca_cert: Path, token: str, env: dict[str, str]) -> None:
        self.dir = state / "traefik"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.binary = binary
        self.port = procs.free_port()
        self.ping_port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = state / "logs" / "traefik.log"
        self.env = env
        token_file = self.dir / "token"
        token_file.write_text(token)
        token_file.chmod(0o600)
        config = {
            "entryPoints": {
                "web": {"address": f"127.0.0.1:{self.port}",
                        # a rollout's old pods drain; keep client connections across backend changes
                        "transport": {"respondingTimeouts": {"idleTimeout": "90s"}}},
                "ping": {"address": f"127.0.0.1:{self.ping_port}"},
            },
            "ping": {"entryPoint": "ping"},
            "providers": {"kubernetesGateway": {
                "endpoint": server, "token": token, "certAuthFilePath": str(ca_cert), "throttleDuration": "0s",
            }},
            "log": {"level": "INFO"},
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        }  # fmt: skip
        self.config_file = self.dir / "traefik.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config_file.chmod(0o600)
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 60.0) -> None:
        self.proc = procs.spawn([str(self.binary), f"--configFile={self.config_file}"], self.log,
                                env=self.env, cwd=self.dir)  # fmt: skip
        procs.wait_until(self._ready, timeout, 0.2, f"traefik /ping on 127.0.0.1:{self.ping_port} (log {self.log})")

    def _ready(self) -> bool:
        if self.proc is None or self.proc.poll() is not None:
            raise RuntimeError(f"traefik exited; see {self.log}")
        try:
            return procs.http_get(f"http://127.0.0.1:{self.ping_port}/ping", 1.0)[0] == 200
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is not None:
            procs.stop(self.proc, grace=5.0)
            self.proc = None
