# shellcheck shell=bash
# Sourced by the other scripts: the environment every tool of the harness runs in.
ZEROG_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export ZEROG_REPO
export PATH="$ZEROG_REPO/.venv/bin:$PATH"
export CONTAINERS_CONF="$ZEROG_REPO/.cache/containers.conf"
export ANSIBLE_COLLECTIONS_PATH="$ZEROG_REPO/.cache/collections"
export ANSIBLE_NOCOLOR=1
export ANSIBLE_FORCE_COLOR=0
export PY_COLORS=0
export NO_COLOR=1
export LC_ALL=C.UTF-8

# The Debian mirror of this machine's apt (the only package source reachable here): the base
# image of the simulated hosts is built from it, and their apt uses it.
zerog_debian_mirror() {
  local f
  for f in /etc/apt/sources.list.d/*.sources; do
    [[ -f "$f" ]] || continue
    awk '/^URIs:/ {print $2; exit}' "$f" && return 0
  done
  awk '$1 == "deb" {print $2; exit}' /etc/apt/sources.list 2>/dev/null
}
ZEROG_DEBIAN_MIRROR="${ZEROG_DEBIAN_MIRROR:-$(zerog_debian_mirror)}"
export ZEROG_DEBIAN_MIRROR
# Controller-side fixtures of the simulated hosts (the stand-in broker package).
export ZEROG_SIM_FIXTURES="${ZEROG_SIM_FIXTURES:-$ZEROG_REPO/.cache/sim-fixtures}"
