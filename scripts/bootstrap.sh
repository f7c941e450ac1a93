#!/usr/bin/env bash
# Set up everything the harness needs on a fresh Debian 12 machine (apt and PyPI only):
#   - the apt packages for podman instances and the image build,
#   - .venv with the pinned Python tooling (requirements-dev.txt + constraints-dev.txt),
#   - the podman configuration that works on this kind of machine,
#   - the collection made importable as ansible_collections/zerog/compute.
# Idempotent: when nothing is missing it returns in about a second.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="$repo/.cache"
venv="$repo/.venv"
mkdir -p "$cache"

log() { printf 'bootstrap: %s\n' "$*" >&2; }

# --- 1. apt packages -------------------------------------------------------
apt_packages=(podman runc mmdebstrap zstd python3-venv ca-certificates git uidmap shellcheck)
missing=()
for p in "${apt_packages[@]}"; do
  status=$(dpkg-query -W -f='${Status}' "$p" 2>/dev/null || true)
  [[ "$status" == "install ok installed" ]] || missing+=("$p")
done
if ((${#missing[@]})); then
  if [[ $(id -u) -ne 0 ]]; then
    log "missing apt packages: ${missing[*]}; run this script as root (or install them) first"
    exit 1
  fi
  log "installing apt packages: ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# --- 2. Python tooling -----------------------------------------------------
# Debian's interpreter, not whatever python3 comes first on PATH: the instances run the same 3.11.
py=/usr/bin/python3
stamp="$venv/.zerog-requirements.sha256"
want=$(cat "$repo/requirements-dev.txt" "$repo/constraints-dev.txt" | sha256sum | cut -d' ' -f1)
if [[ ! -x "$venv/bin/python" ]] || [[ "$(cat "$stamp" 2>/dev/null)" != "$want" ]]; then
  log "creating $venv (pinned tooling; about 30 s)"
  [[ -x "$venv/bin/python" ]] || "$py" -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check \
    -r "$repo/requirements-dev.txt" -c "$repo/constraints-dev.txt"
  echo "$want" > "$stamp"
fi

# --- 3. podman configuration ------------------------------------------------
# crun fails on this kernel's hybrid cgroup layout; runc works. Root cannot raise its hard
# limits here, so containers must not ask for more than the current ones.
conf="$cache/containers.conf"
{
  echo "# written by scripts/bootstrap.sh"
  echo "[containers]"
  if ! (ulimit -Hn $(( $(ulimit -Hn) + 1 )) ) 2>/dev/null; then
    echo "default_ulimits = [\"nofile=$(ulimit -Hn):$(ulimit -Hn)\", \"nproc=32768:32768\"]"
  fi
  echo "[engine]"
  echo 'runtime = "runc"'
} > "$conf.new"
if cmp -s "$conf.new" "$conf"; then rm -f "$conf.new"; else mv "$conf.new" "$conf"; fi

# --- 4. the collection, importable and findable ------------------------------
link="$cache/collections/ansible_collections/zerog/compute"
mkdir -p "$(dirname "$link")"
if [[ "$(readlink "$link" 2>/dev/null)" != "$repo" ]]; then
  ln -sfn "$repo" "$link"
fi
log "ready"
