"""Locating and running the packaging tools (helm, hadolint, kubectl) for tests/packaging.

helm comes from hack/build-binaries.sh (cached outside the repository; a no-op when built, prints
the cache folder last), kubectl and hadolint from the virtual environment's PyPI wheels. `Kube` is
the packaging cluster tests' session (`conftest.kube`): the kubeconfig, helm installs and what to
remove at the end, the CLI; its kubectl verbs are modeldeploy_demo.kube's.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

from devcluster import procs
from modeldeploy_demo import kube as k

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "modeldeploy"
BIN = Path(sys.executable).parent


@functools.cache
def helm() -> str:
    out = subprocess.run(
        ["bash", str(ROOT / "hack" / "build-binaries.sh")], capture_output=True, text=True, check=True
    ).stdout
    path = Path(out.strip().splitlines()[-1]) / "helm"
    assert path.is_file(), f"hack/build-binaries.sh did not produce {path}"
    return str(path)


def run(args: list[str], *, check: bool = True, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(args, capture_output=True, text=True, env=env, timeout=300)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def template(*set_args: str, namespace: str = "modeldeploy-system", release: str = "modeldeploy") -> str:
    """helm template of the chart; set_args are extra helm flags (--set ..., -f ...)."""
    return run([helm(), "template", release, str(CHART), "--namespace", namespace, *set_args]).stdout


def docs(rendered: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(rendered) if d]


def by_kind(rendered: str, kind: str) -> list[dict[str, Any]]:
    return [d for d in docs(rendered) if d["kind"] == kind]


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

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        return procs.kubectl(self.kubeconfig, *args, input=input, check=check, timeout=180, binary=BIN / "kubectl")

    def helm(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([helm(), *args], check=check, env=self.env)

    def apply(self, docs: list[dict[str, Any]] | str, *extra: str) -> str:
        return k.apply_text(self.kubeconfig, docs, *extra)

    def get(self, *args: str) -> dict[str, Any]:
        return k.get(self.kubeconfig, *args)

    def can_i(self, user: str, *args: str) -> bool:
        return k.can_i(self.kubeconfig, user, *args)

    def cli(self, *args: str) -> subprocess.CompletedProcess[str]:
        return run([str(BIN / "modeldeploy"), *args], check=False, env=self.env)

    def token_kubeconfig(self, namespace: str, service_account: str, path: Path) -> Path:
        return k.token_kubeconfig(self.kubeconfig, namespace, service_account, path)
