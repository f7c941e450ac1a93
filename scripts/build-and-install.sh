#!/usr/bin/env bash
# Build the collection tarball the way Galaxy would, then install it into a temporary path and
# prove the installed copy is usable (its modules' docs load, its roles are found).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
dest=${1:-$repo/tests/output/build}
rm -rf "$dest"; mkdir -p "$dest"
cd "$repo"
ansible-galaxy collection build --force --output-path "$dest" .
tarball=$(ls "$dest"/zerog-compute-*.tar.gz)
ansible-galaxy collection install --force -p "$dest/installed" "$tarball"
installed="$dest/installed/ansible_collections/zerog/compute"
test -f "$installed/MANIFEST.json"
# Nothing from the development tree may ship.
if tar -tzf "$tarball" | grep -E '(^|/)(\.venv|\.cache|tests/output|__pycache__)(/|$)'; then
  echo "build: development files leaked into $tarball" >&2; exit 1
fi
# The installed collection, alone on the collections path, lists its modules.
ANSIBLE_COLLECTIONS_PATH="$dest/installed" ansible-doc -t module -l zerog.compute
# Its playbooks run by their collection names, with the example inventory an operator copies.
for pb in provider preflight destroy; do
  ANSIBLE_COLLECTIONS_PATH="$dest/installed" \
    ansible-playbook --syntax-check -i "$installed/inventories/example" "zerog.compute.$pb"
done
echo "build: $tarball installs and loads"
