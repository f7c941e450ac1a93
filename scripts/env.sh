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
