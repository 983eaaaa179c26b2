#!/usr/bin/env bash
# Build (once) and cache the local cluster's binaries: kube-apiserver, kube-controller-manager,
# kube-scheduler (from the k8s.io/kubernetes module through a generated wrapper module), etcd,
# helm, and the Gateway API CRDs. Versions come from hack/versions.env; the cache folder is keyed
# by them, so a changed pin builds anew and an unchanged one is reused by every clone.
#
# Prints the cache folder on its last line. Honours KUBEBUILDER_ASSETS: when it holds
# kube-apiserver and etcd, those are linked instead of built.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=/dev/null
source "$here/versions.env"
export GOTOOLCHAIN=local CGO_ENABLED=0 GOFLAGS=-mod=mod
key="k8s-${KUBERNETES_VERSION}_etcd-${ETCD_VERSION}_helm-${HELM_VERSION}_gw-${GATEWAY_API_VERSION}"
cache_root="${MODELDEPLOY_CACHE:-$HOME/.cache/modeldeploy}"
# shellcheck source=hack/build-lock.sh
source "$here/build-lock.sh"
build_lock
out="$cache_root/bin/$key"
work="$cache_root/build"
mkdir -p "$out" "$work"
log() { printf '[build-binaries] %s\n' "$*" >&2; }

# go build -v prints one line per package compiled; show a running count instead of thousands of lines.
progress() {
  local what=$1 n=0 line
  while IFS= read -r line; do
    n=$((n + 1))
    if [[ $line == *": "* || $line == *rror* ]]; then printf '%s\n' "$line" >&2; fi
    if (( n % 100 == 0 )); then log "$what: $n packages compiled..."; fi
  done
  log "$what: $n packages compiled"
}

# The wrapper module: requires k8s.io/kubernetes and points every staging module at its published
# tag. hack/build-node-binaries.sh builds kubelet and kube-proxy from it too.
kube_wrapper() {
  local kv=$KUBERNETES_VERSION stv="v0.${KUBERNETES_VERSION#v1.}" dir="$work/kube-$KUBERNETES_VERSION"
  mkdir -p "$dir"
  local kdir
  kdir=$(cd "$dir" && go mod download -json "k8s.io/kubernetes@$kv" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  {
    echo "module modeldeploy.local/kubewrap"
    echo
    echo "go 1.26"
    echo
    echo "require k8s.io/kubernetes $kv"
    echo
    echo "replace ("
    # every staging module the kubernetes go.mod points at ./staging gets its published tag
    grep -E '^\s*k8s\.io/[a-z0-9-]+ => \./staging/' "$kdir/go.mod" | awk -v v="$stv" '{print "\t" $1 " => " $1 " " v}'
    echo ")"
  } >"$dir/go.mod"
  log "kubernetes $kv: $(grep -c ' => ' "$dir/go.mod") staging modules replaced by their $stv tags"
}

build_kube() {
  local kv=$KUBERNETES_VERSION dir="$work/kube-$KUBERNETES_VERSION"
  kube_wrapper
  local ld="-s -w"
  for p in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld+=" -X $p.gitVersion=$kv -X $p.gitMajor=1 -X $p.gitMinor=$(cut -d. -f2 <<<"$kv") -X $p.gitTreeState=clean"
  done
  for cmd in kube-apiserver kube-controller-manager kube-scheduler; do
    if [[ -x "$out/$cmd" ]]; then log "$cmd: cached"; continue; fi
    log "$cmd $kv: building (cold: many minutes on 2 cores)"
    (cd "$dir" && go build -v -trimpath -ldflags "$ld" -o "$out/$cmd.tmp.$$" "k8s.io/kubernetes/cmd/$cmd" 2>&1) | progress "$cmd"
    mv -f "$out/$cmd.tmp.$$" "$out/$cmd"  # a private name: two clones may build at once
  done
}

build_etcd() {
  [[ -x "$out/etcd" ]] && { log "etcd: cached"; return; }
  local dir="$work/etcd-$ETCD_VERSION"
  mkdir -p "$dir"
  printf 'module modeldeploy.local/etcdwrap\n\ngo 1.26\n\nrequire go.etcd.io/etcd/server/v3 %s\n' "$ETCD_VERSION" >"$dir/go.mod"
  log "etcd $ETCD_VERSION: building"
  (cd "$dir" && go build -v -trimpath -ldflags "-s -w" -o "$out/etcd.tmp.$$" go.etcd.io/etcd/server/v3 2>&1) | progress etcd
  mv -f "$out/etcd.tmp.$$" "$out/etcd"
}

build_helm() {
  [[ -x "$out/helm" ]] && { log "helm: cached"; return; }
  log "helm $HELM_VERSION: building"
  local major=${HELM_VERSION%%.*}
  (GOBIN="$work/helm-gobin" go install -v -trimpath \
      -ldflags "-s -w -X helm.sh/helm/$major/internal/version.version=$HELM_VERSION" \
      "helm.sh/helm/$major/cmd/helm@$HELM_VERSION" 2>&1) | progress helm
  mv "$work/helm-gobin/helm" "$out/helm"
}

fetch_gateway_crds() {
  [[ -f "$out/gateway-api-crds.yaml" ]] && { log "gateway-api CRDs: cached"; return; }
  local gdir
  gdir=$(cd "$work" && go mod download -json "sigs.k8s.io/gateway-api@$GATEWAY_API_VERSION" | python3 -c 'import json,sys; print(json.load(sys.stdin)["Dir"])')
  for f in "$gdir"/config/crd/standard/*.yaml; do printf -- '---\n'; cat "$f"; done >"$out/gateway-api-crds.yaml.tmp.$$"
  mv -f "$out/gateway-api-crds.yaml.tmp.$$" "$out/gateway-api-crds.yaml"
  log "gateway-api $GATEWAY_API_VERSION CRDs: $(grep -c '^kind: CustomResourceDefinition' "$out/gateway-api-crds.yaml") CRDs"
}

if [[ -n "${KUBEBUILDER_ASSETS:-}" && -x "$KUBEBUILDER_ASSETS/kube-apiserver" && -x "$KUBEBUILDER_ASSETS/etcd" ]]; then
  log "using KUBEBUILDER_ASSETS=$KUBEBUILDER_ASSETS for kube-apiserver and etcd"
  for b in kube-apiserver etcd kube-controller-manager kube-scheduler; do
    [[ -x "$KUBEBUILDER_ASSETS/$b" ]] && ln -sf "$KUBEBUILDER_ASSETS/$b" "$out/$b"
  done
fi
if [[ -n "${KUBE_WRAPPER_ONLY:-}" ]]; then
  kube_wrapper
  exit 0
fi
build_etcd
fetch_gateway_crds
build_helm
build_kube
echo "$out"
