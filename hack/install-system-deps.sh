#!/usr/bin/env bash
# Install the Debian packages the local cluster needs (Prometheus 2.42 with promtool), once.
# Idempotent: does nothing when both are present; runs `apt-get update` only when the package
# lists are missing or the install fails on a stale list. Must run as root (CI and dev machines).
# Called by `make binaries` (hence `make test`) and usable by hand.
#
# `install-system-deps.sh node`: the real node's packages instead (runc, CNI plugins, nftables,
# iptables, conntrack; buildah and mmdebstrap for the image; gcc for the pause binary), called by
# `make node-binaries` and `make image`.
set -euo pipefail
log() { printf '[install-system-deps] %s\n' "$*" >&2; }

apt_install() { # packages...: install the missing ones
  local missing=() p
  for p in "$@"; do dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p"); done
  (( ${#missing[@]} )) || { log "present: $*"; return 0; }
  if [[ $(id -u) -ne 0 ]]; then log "missing and not root: run 'sudo apt-get install -y ${missing[*]}'"; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null || apt-get update -qq
  log "apt-get install -y ${missing[*]}"
  if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

if [[ ${1:-} == node ]]; then
  apt_install runc containernetworking-plugins nftables iptables conntrack buildah mmdebstrap gcc libc6-dev
  exit 0
fi

if command -v prometheus >/dev/null && command -v promtool >/dev/null; then
  log "prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}'): present"
  exit 0
fi
if [[ $(id -u) -ne 0 ]]; then
  log "prometheus/promtool missing and not root: run 'sudo apt-get install -y prometheus'"
  exit 1
fi
export DEBIAN_FRONTEND=noninteractive
if ! compgen -G '/var/lib/apt/lists/*_Packages*' >/dev/null; then
  log "apt package lists missing: apt-get update"
  apt-get update -qq
fi
log "apt-get install -y prometheus"
if ! apt-get install -y -qq --no-install-recommends prometheus >/dev/null; then
  log "install failed; refreshing package lists and retrying"
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends prometheus >/dev/null
fi
# Debian's package may start its own service where an init system runs; the cluster runs its own
# instance on a free port with its own config and data, so a system service is not needed.
log "prometheus $(prometheus --version 2>&1 | head -1 | awk '{print $3}'): installed"
