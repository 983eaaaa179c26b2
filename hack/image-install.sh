#!/bin/sh
# Install modeldeploy (the wheel built from SRC, with its dependencies) into a fresh virtual
# environment at VENV. The Dockerfile's builder stage RUNs exactly this, and
# tests/packaging/test_image.py runs it too, then starts both entrypoints from the result, so the
# image recipe cannot drift from the package.
#
# usage: sh hack/image-install.sh VENV SRC
# env:   PYTHON (default python3), UV (default uv); UV_NO_CACHE=1 in the image keeps layers small.
set -eu
venv=$1
src=$2
python=${PYTHON:-python3}
uv=${UV:-uv}
wheels=$(mktemp -d)
trap 'rm -rf "$wheels"' EXIT

# The runtime needs no pip: uv installs into the environment from outside.
"$python" -m venv --without-pip "$venv"
"$uv" build --quiet --wheel --out-dir "$wheels" "$src"
# --compile-bytecode: the image runs with PYTHONDONTWRITEBYTECODE on a read-only root filesystem,
# so without .pyc files every process (each server pod, batch shard, operator) compiled
# scikit-learn, SciPy and the rest of the stack from source at start: about 7 s of CPU on an idle core.
"$uv" pip install --quiet --compile-bytecode --python "$venv/bin/python" "$wheels"/modeldeploy-*.whl
# Fail here, not at runtime, when an entrypoint is missing.
for cmd in modeldeploy-server modeldeploy-operator modeldeploy kubectl-modeldeploy; do
  test -x "$venv/bin/$cmd" || { echo "image-install: $venv/bin/$cmd missing" >&2; exit 1; }
done
