#!/usr/bin/env bash
# Build the project's image from the Dockerfile without a Docker daemon (buildah), cached outside
# the repository; save it as an OCI archive. Called by `make image` and by the real node
# (hack/devcluster), which imports the archive into its containerd.
#
# The base image is the Dockerfile's BASE_IMAGE build argument. Default here: a Python base made
# from Debian packages with mmdebstrap (python3 from Debian bookworm = 3.11) and tagged locally,
# because no container registry is reachable from these machines. IMAGE_BASE=<ref> builds on
# another base (for example the public python:3.11 slim image the Dockerfile defaults to).
# Nothing inside the build containers touches the network: the wheels are downloaded on the host
# into a wheelhouse, mounted read-only into the build (--network none).
#
# Cache key: the content of every file the build copies except README.md (package metadata only,
# and it changes often): pyproject.toml, operator/, server/, hack/image-install.sh; plus the
# Dockerfile and the base. A hit does nothing.
# Prints "IMAGE=<ref>" and "ARCHIVE=<path>" (the last two lines).
#
# `build-image.sh pause` builds the node's pod sandbox image instead (hack/pause/pause.c, static,
# one layer), same output lines.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
repo="$(dirname "$here")"
cache_root="${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}"
# shellcheck source=hack/build-lock.sh
source "$here/build-lock.sh"
build_lock build-image
out="$cache_root/image"
mkdir -p "$out"
log() { printf '[build-image] %s\n' "$*" >&2; }
command -v buildah >/dev/null || { log "buildah missing: run 'sudo bash hack/install-system-deps.sh'"; exit 1; }

if [[ ${1:-} == pause ]]; then
  IMAGE=localhost/modeldeploy/pause:1
  key=$(sha256sum "$here/pause/pause.c" | cut -c1-12)
  archive="$out/pause-$key.oci.tar"
  if [[ ! -f $archive ]]; then
    tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
    gcc -static -Os -s -o "$tmp/pause" "$here/pause/pause.c"
    c=$(buildah from scratch)
    buildah copy --quiet "$c" "$tmp/pause" /pause >/dev/null
    buildah config --entrypoint '["/pause"]' --user 65535:65535 "$c"
    buildah commit --quiet --rm "$c" "$IMAGE" >/dev/null
    buildah push --quiet "$IMAGE" "oci-archive:$archive.tmp:$IMAGE" >&2
    mv "$archive.tmp" "$archive"
    log "pause image: built ($archive)"
  fi
  echo "IMAGE=$IMAGE"; echo "ARCHIVE=$archive"; exit 0
fi

# ---- the base: Debian bookworm's python3 (3.11), made with mmdebstrap from the host's apt sources ----
base_pkgs="python3 python3-venv python3-pip ca-certificates"
if [[ -z "${IMAGE_BASE:-}" ]]; then
  bkey=$(printf '%s\n' "$base_pkgs" bookworm | sha256sum | cut -c1-12)
  IMAGE_BASE="localhost/modeldeploy/python-base:bookworm-$bkey"
  if ! buildah inspect --type image "$IMAGE_BASE" >/dev/null 2>&1; then
    sources=/etc/apt/sources.list.d/debian.sources
    [[ -f $sources ]] || sources=/etc/apt/sources.list
    log "base $IMAGE_BASE: mmdebstrap bookworm ($base_pkgs) from $sources"
    s=$(date +%s)
    rm -f "$out/base.tar"
    mmdebstrap --quiet --variant=minbase --include="${base_pkgs// /,}" \
      --dpkgopt='path-exclude=/usr/share/doc/*' --dpkgopt='path-exclude=/usr/share/man/*' \
      --dpkgopt='path-exclude=/usr/share/locale/*' \
      --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*' \
      bookworm "$out/base.tar" "$sources" >&2
    c=$(buildah from scratch)
    buildah add --quiet "$c" "$out/base.tar" / >/dev/null
    buildah config --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin --cmd python3 "$c"
    buildah commit --quiet --rm "$c" "$IMAGE_BASE" >/dev/null
    rm -f "$out/base.tar"
    log "base $IMAGE_BASE: built in $(( $(date +%s) - s )) s"
  else
    log "base $IMAGE_BASE: cached"
  fi
fi

# ---- the cache key ----
key=$(cd "$repo" && {
  printf '%s\n' "$IMAGE_BASE"
  find Dockerfile .dockerignore pyproject.toml hack/image-install.sh operator server -type f \
    ! -path '*/__pycache__/*' ! -name '*.pyc' -print0 | sort -z | xargs -0 sha256sum
} | sha256sum | cut -c1-12)
IMAGE="localhost/modeldeploy/modeldeploy:dev-$key"
archive="$out/modeldeploy-$key.oci.tar"
if [[ -f $archive ]] && buildah inspect --type image "$IMAGE" >/dev/null 2>&1; then
  log "image $IMAGE: cached ($archive)"
  echo "IMAGE=$IMAGE"; echo "ARCHIVE=$archive"; exit 0
fi

# ---- the wheelhouse: every wheel the build installs, downloaded on the host ----
wheels="$out/wheels-$(cd "$repo" && cat pyproject.toml Dockerfile | sha256sum | cut -c1-12)"
if [[ ! -f $wheels/.complete ]]; then
  log "wheelhouse $wheels: downloading"
  rm -rf "$wheels" && mkdir -p "$wheels"
  py="${PYTHON:-$repo/.venv/bin/python}"
  uv_pin=$(sed -n 's/.*pip install \(uv==[0-9.]*\)$/\1/p' "$repo/Dockerfile")
  build_req=$(python3 -c 'import tomllib,sys; print(" ".join(tomllib.load(open(sys.argv[1],"rb"))["build-system"]["requires"]))' "$repo/pyproject.toml")
  "$py" -m uv pip compile --quiet --python-version 3.11 --no-header --output-file "$wheels/requirements.txt" "$repo/pyproject.toml"
  # shellcheck disable=SC2086
  "$py" -m pip download --quiet --disable-pip-version-check --only-binary=:all: --dest "$wheels" \
    -r "$wheels/requirements.txt" "$uv_pin" $build_req >&2
  touch "$wheels/.complete"
fi

log "image $IMAGE: buildah build (base $IMAGE_BASE, no network inside)"
s=$(date +%s)
buildah build --quiet --layers --network none --pull-never \
  --build-arg "BASE_IMAGE=$IMAGE_BASE" --build-arg WHEELHOUSE=/wheelhouse \
  --volume "$wheels:/wheelhouse:ro" \
  --tag "$IMAGE" --file "$repo/Dockerfile" "$repo" >&2
rm -f "$archive.tmp"
buildah push --quiet "$IMAGE" "oci-archive:$archive.tmp:$IMAGE" >&2
mv "$archive.tmp" "$archive"
log "image $IMAGE: built in $(( $(date +%s) - s )) s, archive $(du -m "$archive" | cut -f1) MB"
# earlier builds: all but the 4 newest archives and wheelhouses, and tags without an archive (the
# build cache keeps the layers still in use). Not every older one: another clone's cluster, with
# other sources, may be about to import its archive (deleting it at once broke a second clone's
# cluster start).
keep_newest() { local n=$1; shift; { ls -1dt "$@" 2>/dev/null || true; } | tail -n +"$((n + 1))"; }
keep_newest 4 "$out"/modeldeploy-*.oci.tar | while IFS= read -r old; do [[ $old == "$archive" ]] || rm -f "$old"; done
keep_newest 4 "$out"/wheels-* | while IFS= read -r old; do [[ $old == "$wheels" ]] || rm -rf "$old"; done
for ref in $(buildah images --noheading --format '{{.Name}}:{{.Tag}}' | grep '^localhost/modeldeploy/modeldeploy:dev-'); do
  [[ $ref == "$IMAGE" || -f "$out/modeldeploy-${ref##*:dev-}.oci.tar" ]] || buildah rmi "$ref" >/dev/null 2>&1 || true
done
echo "IMAGE=$IMAGE"; echo "ARCHIVE=$archive"
