"""The container image recipe: hadolint, and the Dockerfile's install steps run for real.

hack/image-install.sh (the one script the Dockerfile's builder stage RUNs) installs the project's
wheel into a fresh virtual environment, and both entrypoints are started from it the way the
image starts them: `modeldeploy-server` (the image's CMD, with the image's ENV) serves a real
joblib model, `modeldeploy-operator --help` runs. The image itself is built by `make image`
(buildah, no Docker daemon); the test of that build is marked `realnode` (opt-in, with the real
node that runs the image: tests/cluster/test_real_node.py).
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import pytest

from tests.packaging.image import DOCKERFILE, VENV_IN_IMAGE, image_env, stages
from tests.packaging.tools import BIN, ROOT, run


def test_hadolint_is_clean() -> None:
    proc = run([str(BIN / "hadolint"), "--no-color", str(DOCKERFILE)], check=False)
    assert proc.returncode == 0 and not proc.stdout.strip(), proc.stdout + proc.stderr


def test_dockerfile_shape() -> None:
    by_stage = stages()
    assert list(by_stage) == ["builder", "runtime"]
    bases = {name: lines[0].split()[1] for name, lines in by_stage.items()}
    # one base for both stages, a build argument whose default is a pinned slim Python 3.11
    assert bases == {"builder": "${BASE_IMAGE}", "runtime": "${BASE_IMAGE}"}, bases
    default = re.search(r"^ARG BASE_IMAGE=(\S+)$", DOCKERFILE.read_text(), re.MULTILINE)
    assert default and re.fullmatch(r"python:3\.11\.\d+-slim-\w+", default.group(1)), default
    runtime = by_stage["runtime"]
    assert f"COPY --from=builder {VENV_IN_IMAGE} {VENV_IN_IMAGE}" in runtime
    assert "USER 10001:10001" in runtime
    assert runtime[-1] == 'CMD ["modeldeploy-server"]'
    text = " ".join(runtime)
    for compiler_hint in ("apt-get", "gcc", "build-essential", "pip install"):
        assert compiler_hint not in text, f"runtime stage installs something: {compiler_hint}"
    builder = by_stage["builder"]
    install = [line for line in builder if line.endswith(f"sh hack/image-install.sh {VENV_IN_IMAGE} /src")]
    assert len(install) == 1 and install[0].startswith("RUN "), builder
    # with a wheelhouse (make image), pip and uv never reach an index: the build needs no network
    assert 'export UV_OFFLINE=1 UV_NO_INDEX=1 UV_FIND_LINKS="$WHEELHOUSE"' in install[0]
    pip = [line for line in builder if "pip install uv==" in line]
    assert len(pip) == 1 and 'export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE"' in pip[0], pip


def test_dockerignore_lets_in_what_the_builder_copies() -> None:
    allowed = {
        line[1:].rstrip("/") for line in (ROOT / ".dockerignore").read_text().splitlines() if line.startswith("!")
    }
    for line in stages()["builder"]:
        if line.startswith("COPY ") and "--from" not in line:
            for src in line.split()[1:-1]:
                assert src.rstrip("/") in allowed, f"{src} is COPYed but .dockerignore excludes it"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_operator_entrypoint_starts(image_venv: Path) -> None:
    env = image_env(image_venv)
    proc = subprocess.run(["modeldeploy-operator", "--help"], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    cli = subprocess.run(["kubectl-modeldeploy", "--help"], capture_output=True, text=True, env=env, timeout=60)
    assert cli.returncode == 0 and "status" in cli.stdout, cli.stdout + cli.stderr


def test_the_environment_carries_compiled_bytecode(image_venv: Path) -> None:
    """The image runs with PYTHONDONTWRITEBYTECODE on a read-only root: without .pyc files shipped,
    every server pod, batch shard and operator compiled scikit-learn and SciPy at start
    (two server pods took 9.9 s from apply to Ready, 4.8 s with them)."""
    site = next((image_venv / "lib").glob("python3.*/site-packages"))
    for module in ("sklearn/base.py", "scipy/stats/_stats_py.py", "numpy/__init__.py", "kopf/__init__.py",
                   "modeldeploy_server/app.py"):  # fmt: skip
        source = site / module
        cached = list((source.parent / "__pycache__").glob(f"{source.stem}.cpython-3*.pyc"))
        assert cached, f"no compiled bytecode for {module}"
    assert image_env(image_venv)["PYTHONDONTWRITEBYTECODE"] == "1"


def test_server_entrypoint_serves_a_real_model(image_venv: Path, tmp_path: Path) -> None:
    import joblib
    import numpy as np
    from sklearn.linear_model import LinearRegression

    x = np.array([[1.0, 2.0], [2.0, 1.0], [3.0, 4.0], [4.0, 3.0]])
    model = LinearRegression().fit(x, x @ np.array([2.0, 3.0]) + 1.0)
    artifact = tmp_path / "model.joblib"
    joblib.dump(model, artifact)
    port = _free_port()
    env = image_env(image_venv) | {
        # The image listens on 0.0.0.0 in its pod; here only loopback is allowed.
        "MODELDEPLOY_HOST": "127.0.0.1",
        "MODELDEPLOY_PORT": str(port),
        "MODELDEPLOY_MODEL_NAME": "lin",
        "MODELDEPLOY_MODEL_URI": artifact.as_uri(),
        "MODELDEPLOY_MODEL_SHA256": hashlib.sha256(artifact.read_bytes()).hexdigest(),
        "MODELDEPLOY_MODEL_VERSION": "1",
        "MODELDEPLOY_INPUTS": json.dumps([{"name": "a", "min": 0, "max": 10}, {"name": "b", "min": 0, "max": 10}]),
    }
    cmd = json.loads(stages()["runtime"][-1].removeprefix("CMD "))
    server = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, f"server exited: {server.stdout.read() if server.stdout else ''}"
            try:
                with urllib.request.urlopen(f"{base}/v2/health/ready", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                pass
            assert time.monotonic() < deadline, "server not ready within 60 s"
            time.sleep(0.2)
        body = json.dumps({"instances": [{"a": 1.0, "b": 1.0}]}).encode()
        req = urllib.request.Request(
            f"{base}/v1/models/lin:predict", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(req, timeout=10) as resp:
            predictions = json.loads(resp.read())["predictions"]
        assert predictions == pytest.approx([6.0])
    finally:
        server.terminate()
        server.wait(timeout=20)


@pytest.mark.realnode
def test_make_image_builds_a_non_root_image_offline() -> None:
    """hack/build-image.sh (make image): buildah, no network inside the build (a host wheelhouse),
    on a base made from Debian packages; the result runs as 10001 with the server as its command."""
    proc = run(["bash", str(ROOT / "hack" / "build-image.sh")], check=False)
    assert proc.returncode == 0, proc.stderr[-2000:]
    out = dict(line.split("=", 1) for line in proc.stdout.splitlines() if "=" in line)
    assert Path(out["ARCHIVE"]).stat().st_size > 50_000_000
    inspect = json.loads(run(["buildah", "inspect", "--type", "image", out["IMAGE"]]).stdout)
    config = inspect["OCIv1"]["config"]
    assert config["User"] == "10001:10001"
    assert config["Cmd"] == ["modeldeploy-server"]
    assert "PATH=/opt/modeldeploy/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in config["Env"]
