#!/usr/bin/env bash
# Build (once) and cache kwok (sigs.k8s.io/kwok, fake nodes whose pods are Running and Ready
# without any process) for `make bench-operator`. The version comes from hack/versions.env; the
# cache folder is keyed by it. Prints the cache folder on its last line.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
cache_root="${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}"
# shellcheck source=hack/build-lock.sh
source "$here/build-lock.sh"
build_lock
out="$cache_root/bin/kwok-$KWOK_VERSION"
mkdir -p "$out" "$cache_root/build"
if [[ ! -x "$out/kwok" ]]; then
  printf '[build-kwok] kwok %s: building\n' "$KWOK_VERSION" >&2
  gobin="$cache_root/build/kwok-gobin.$$"
  (cd "$cache_root/build" && GOBIN="$gobin" nice -n 10 go install -trimpath -ldflags "-s -w" \
    "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION")
  mv -f "$gobin/kwok" "$out/kwok"  # a private name first: two clones may build at once
  rmdir "$gobin"
fi
echo "$out"
