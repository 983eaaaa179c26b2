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


class Traefik(procs.HttpReadyProcess):
    def __init__(self, state: Path, binary: Path, server: str, ca_cert: Path, token: str, env: dict[str, str]) -> None:
        super().__init__("traefik", binary, state / "logs" / "traefik.log", env, state / "traefik")
        self.port = procs.free_port()
        self.ping_port = procs.free_port()
        self.url = f"http://127.0.0.1:{self.port}"
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
            # the gateway's own 5xx, one JSON line each: which pod (ServiceAddr), whether it answered (OriginStatus 0:
            # no answer, a 502 of Traefik's), when; for tracing a failed request to what happened to that pod
            "accessLog": {"filePath": str(state / "logs" / "traefik-5xx.log"), "format": "json",
                          "filters": {"statusCodes": ["500-599"]}},
            "global": {"checkNewVersion": False, "sendAnonymousUsage": False},
        }  # fmt: skip
        self.config_file = self.dir / "traefik.yml"
        self.config_file.write_text(yaml.safe_dump(config, sort_keys=False))
        self.config_file.chmod(0o600)

    @property
    def ready_url(self) -> str:
        return f"http://127.0.0.1:{self.ping_port}/ping"

    def argv(self) -> list[str]:
        return [str(self.binary), f"--configFile={self.config_file}"]
