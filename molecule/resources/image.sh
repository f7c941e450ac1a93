#!/usr/bin/env bash
# Build (once) the Debian 12 base image every Molecule instance runs, without a registry:
# mmdebstrap from the apt mirror this machine is configured with, imported into podman.
# The image is tagged with a hash of this recipe; a saved copy (podman save | zstd) is kept in
# ~/.cache/zerog-compute so a new checkout on the same machine loads it in seconds.
# Prints the image reference on stdout.
set -euo pipefail

cache_dir="${ZEROG_IMAGE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/zerog-compute}"
suite=bookworm
# python3-yaml serves the simulated host's stand-ins; git the stand-in SDK repository.
include=python3,python-is-python3,python3-apt,python3-yaml,systemd,systemd-sysv,dbus,sudo,iproute2,procps,ca-certificates,git,kmod

# shellcheck source=scripts/env.sh
[[ -n "${ZEROG_DEBIAN_MIRROR:-}" ]] || source "$(dirname "${BASH_SOURCE[0]}")/../../scripts/env.sh"
mirror="${ZEROG_DEBIAN_MIRROR:-}"
[[ -n "$mirror" ]] || { echo "image.sh: no apt mirror found; set ZEROG_DEBIAN_MIRROR" >&2; exit 1; }

recipe_hash=$( { cat "${BASH_SOURCE[0]}"; echo "$mirror"; } | sha256sum | cut -c1-12)
ref="localhost/zerog-debian12:$recipe_hash"
saved="$cache_dir/zerog-debian12-$recipe_hash.tar.zst"

if podman image exists "$ref"; then echo "$ref"; exit 0; fi
mkdir -p "$cache_dir"
exec 9>"$cache_dir/image.lock"
flock 9
if podman image exists "$ref"; then echo "$ref"; exit 0; fi

if [[ -f "$saved" ]]; then
  echo "image.sh: loading $saved" >&2
  zstd -dc "$saved" | podman load >&2
  echo "$ref"; exit 0
fi

echo "image.sh: building $ref from $mirror (about 30 s)" >&2
tmp=$(mktemp -d); trap 'rm -rf "$tmp"' EXIT
# Empty the apt lists but back-date the directory: Ansible's apt cache_valid_time reads its
# mtime, and a freshly emptied lists dir would look up to date and skip `apt-get update`.
# shellcheck disable=SC2016 # the hooks' $1 is expanded by mmdebstrap's shell, not here
mmdebstrap --variant=minbase --include="$include" --skip=cleanup/apt \
  --customize-hook='rm -rf "$1"/var/lib/apt/lists/* "$1"/var/cache/apt/*.bin' \
  --customize-hook='touch -d @0 "$1"/var/lib/apt/lists' \
  --customize-hook='rm -f "$1"/etc/machine-id; : > "$1"/etc/machine-id' \
  "$suite" "$tmp/rootfs.tar" "$mirror" >&2
podman import --change 'CMD ["/sbin/init"]' --change 'STOPSIGNAL SIGRTMIN+3' \
  "$tmp/rootfs.tar" "$ref" >&2
podman save "$ref" | zstd -q -T0 -o "$saved.tmp" && mv "$saved.tmp" "$saved"
# Old recipes' saved copies are dead weight.
find "$cache_dir" -name 'zerog-debian12-*.tar.zst' ! -name "$(basename "$saved")" -delete
echo "$ref"
