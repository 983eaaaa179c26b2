# modeldeploy: ONE image with both entrypoints.
#   modeldeploy-server    the inference server (default CMD; the operator renders server pods
#                         with command ["modeldeploy-server"])
#   modeldeploy-operator  the operator (the Helm chart's Deployment sets this command)
# Build: docker build -t modeldeploy/modeldeploy:0.1.0 .   (or podman/buildah build)
# The install steps live in hack/image-install.sh, which tests/packaging runs in a fresh venv.
# Build arguments:
#   BASE_IMAGE  the Python 3.11 base of both stages (default: the public slim image). `make image`
#               uses a base made from Debian packages (hack/build-image.sh).
#   WHEELHOUSE  a folder of wheels mounted into the build (buildah/podman --volume); when set,
#               pip and uv install only from it and the build needs no network.
ARG BASE_IMAGE=python:3.11.14-slim-bookworm

# ---- builder: build the wheel and install it with its dependencies into /opt/modeldeploy ----
FROM ${BASE_IMAGE} AS builder
ARG WHEELHOUSE=
# PIP_BREAK_SYSTEM_PACKAGES: a Debian-packaged Python marks itself externally managed; the
# builder stage is thrown away, so installing uv into it is harmless.
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_BREAK_SYSTEM_PACKAGES=1 \
    UV_NO_CACHE=1 \
    UV_PYTHON_DOWNLOADS=never
RUN if [ -n "$WHEELHOUSE" ]; then export PIP_NO_INDEX=1 PIP_FIND_LINKS="$WHEELHOUSE"; fi \
 && pip install uv==0.13.9
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator/ operator/
COPY server/ server/
COPY hack/image-install.sh hack/image-install.sh
RUN if [ -n "$WHEELHOUSE" ]; then export UV_OFFLINE=1 UV_NO_INDEX=1 UV_FIND_LINKS="$WHEELHOUSE"; fi \
 && sh hack/image-install.sh /opt/modeldeploy /src

# ---- runtime: the same base (no compilers), the virtual environment, a non-root user ----
FROM ${BASE_IMAGE} AS runtime
RUN groupadd --system --gid 10001 modeldeploy \
 && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin modeldeploy
COPY --from=builder /opt/modeldeploy /opt/modeldeploy
# MODELDEPLOY_HOST: inside a container the server must listen on the pod's address.
# XDG_CACHE_HOME: the server's artifact cache goes to /tmp (home is /nonexistent); with a
# read-only root filesystem, mount an emptyDir at /tmp.
ENV PATH=/opt/modeldeploy/bin:$PATH \
    XDG_CACHE_HOME=/tmp/.cache \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    MODELDEPLOY_HOST=0.0.0.0 \
    MODELDEPLOY_PORT=8080
USER 10001:10001
WORKDIR /tmp
# 8080: server HTTP (inference, health, /metrics); 8000: operator /metrics and /healthz.
EXPOSE 8080 8000
CMD ["modeldeploy-server"]
