"""kubectl, helm and the CLI against the local cluster, for the packaging cluster tests.

`Kube` wraps the test cluster's kubeconfig; `conftest.kube` builds one per session.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any

import yaml

from devcluster import procs
from tests.packaging.tools import BIN, CHART, helm

# Just enough of the Prometheus Operator's CRDs for a server-side dry run of the examples and the
# ServiceMonitor (the real CRDs are large; the schema inside is not what these tests check).
MONITORING_CRDS = [
    {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "plural": plural, "singular": plural[:-1], "listKind": f"{kind}List"},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {"openAPIV3Schema": {"type": "object", "x-kubernetes-preserve-unknown-fields": True}},
                }
            ],
        },
    }
    for kind, plural in (("PrometheusRule", "prometheusrules"), ("ServiceMonitor", "servicemonitors"))
]


class Kube:
    def __init__(self, kubeconfig: Path) -> None:
        self.kubeconfig = str(kubeconfig)
        self.env = {**os.environ, "KUBECONFIG": self.kubeconfig}
        self.prometheus_url = ""
        self.cluster_env: dict[str, str] = {}  # the cluster's env file (IMAGE, MODEL_STORE_DIR, ...)
        # what the tests installed, removed by the session fixture at the end
        self.releases: list[tuple[str, str]] = []
        self.namespaces: set[str] = set()

    def install(self, release: str, namespace: str, *flags: str) -> None:
        """helm install, checked by the objects it creates (no --wait): image.pullPolicy=Never keeps
        the operator pods from the chart's default image (absent here) from running or pulling, so
        no second operator acts on the session's objects; tests/cluster/test_real_node.py runs the
        chart's operator from the built image."""
        self.releases.append((release, namespace))
        self.namespaces.add(namespace)
        self.helm("install", release, str(CHART), "-n", namespace, "--create-namespace",
                  "--set", "image.pullPolicy=Never", *flags)  # fmt: skip

    def run(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(list(args), input=input, capture_output=True, text=True, env=self.env, timeout=180)
        if check and proc.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
        return proc

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return procs.kubectl(self.kubeconfig, *args, input=input, check=check, timeout=180, binary=BIN / "kubectl")

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return self.run(helm(), *args, check=check)

    def apply(self, docs: list[dict[str, Any]] | str, *extra: str) -> str:
        text = docs if isinstance(docs, str) else yaml.safe_dump_all(docs)
        return self.kubectl("apply", "-f", "-", *extra, input=text).stdout

    def get(self, *args: str) -> dict[str, Any]:
        out: dict[str, Any] = json.loads(self.kubectl("get", *args, "-o", "json").stdout)
        return out

    def can_i(self, sa: str, *args: str) -> bool:
        proc = self.kubectl("auth", "can-i", *args, f"--as={sa}", check=False)
        assert proc.stdout.strip() in ("yes", "no"), proc.stdout + proc.stderr
        return proc.stdout.strip() == "yes"

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return self.run(str(BIN / "modeldeploy"), *args, check=False)

    def token_kubeconfig(self, namespace: str, service_account: str, path: Path) -> Path:
        """A kubeconfig that authenticates as the ServiceAccount (a TokenRequest token)."""
        token = self.kubectl("create", "token", service_account, "-n", namespace, "--duration=1h").stdout.strip()
        config = yaml.safe_load(Path(self.kubeconfig).read_text())
        context = next(c for c in config["contexts"] if c["name"] == config["current-context"])
        context["context"]["user"] = "service-account"
        context["context"].pop("namespace", None)
        config["contexts"] = [context]
        config["users"] = [{"name": "service-account", "user": {"token": token}}]
        path.write_text(yaml.safe_dump(config))
        return path
