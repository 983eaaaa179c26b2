"""Locating and running the packaging tools (helm, hadolint, kubectl) for tests/packaging.

helm comes from hack/build-binaries.sh (cached outside the repository; a no-op when built, prints
the cache folder last), kubectl and hadolint from the virtual environment's PyPI wheels.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

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
