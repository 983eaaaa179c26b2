# Sourced by the build scripts after they set cache_root: one build at a time per cache folder and
# lock name (default "build"). Two clones building on a fresh machine at once would otherwise write
# the same generated wrapper module and temporary files together (seen: one build read the other's
# half-written go.mod). A script run by one that holds the lock does not take it again.
# shellcheck shell=bash
build_lock() {
  local name=${1:-build} held_var
  held_var="MODELDEPLOY_LOCK_HELD_${name//-/_}"
  [[ -n ${!held_var:-} ]] && return 0
  mkdir -p "$cache_root"
  exec 9>>"$cache_root/$name.lock"
  if ! flock -n 9; then
    printf '[%s] another build holds %s: waiting for it\n' "$(basename "$0" .sh)" "$cache_root/$name.lock" >&2
    flock 9
  fi
  export "$held_var=1"
}
