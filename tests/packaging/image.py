"""The Dockerfile as data, and the image's virtual environment built the way the image builds it.

`stages()` parses the Dockerfile (instructions per stage); `install_image_venv()` runs
hack/image-install.sh (the script the builder stage RUNs) into a fresh virtual environment;
`image_env()` is the runtime stage's ENV pointed at that environment. Used by test_image.py and
by the operator-run cluster test (conftest's session fixture `image_venv`).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from pathlib import Path

from tests.packaging.tools import BIN, ROOT

DOCKERFILE = ROOT / "Dockerfile"
VENV_IN_IMAGE = "/opt/modeldeploy"


def stages() -> dict[str, list[str]]:
    """Dockerfile instructions (continuations joined) per stage name."""
    stages: dict[str, list[str]] = {}
    current: list[str] = []
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE.read_text())
    for line in joined.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        m = re.match(r"FROM\s+(\S+)\s+AS\s+(\S+)", line, re.IGNORECASE)
        if m:
            current = stages.setdefault(m.group(2), [])
        current.append(line)
    return stages


def env_of(instructions: list[str]) -> dict[str, str]:
    env: dict[str, str] = {}
    for line in instructions:
        if line.startswith("ENV "):
            for pair in shlex.split(line[4:]):
                key, _, value = pair.partition("=")
                env[key] = value
    return env


def install_image_venv(venv: Path) -> Path:
    env = {**os.environ, "UV": str(BIN / "uv"), "PYTHON": "python3.11"}
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        ["sh", str(ROOT / "hack" / "image-install.sh"), str(venv), str(ROOT)],
        capture_output=True, text=True, env=env, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return venv


def image_env(venv: Path) -> dict[str, str]:
    """The runtime stage's ENV, with the venv where the image has /opt/modeldeploy."""
    env = {k: v.replace(VENV_IN_IMAGE, str(venv)) for k, v in env_of(stages()["runtime"]).items()}
    env["PATH"] = env["PATH"].replace("$PATH", "/usr/bin:/bin")
    return env
