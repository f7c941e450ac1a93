#!/usr/bin/env bash
# ansible-test sanity on a copy of the collection placed at .../ansible_collections/zerog/compute
# (ansible-test requires that path), each test in its own virtual environment (--venv).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache="${XDG_CACHE_HOME:-$HOME/.cache}/zerog-compute"

# ansible-test seeds every venv with pip through a get-pip script it downloads from a host
# that is not reachable here. Give it an equivalent built from PyPI instead: the pip wheel of
# the version it pins, run from the wheel itself (pip supports `python pip.whl/pip install`).
pip_version=$(python3 - <<'PY'
import re, ansible_test, os
src = open(os.path.join(os.path.dirname(ansible_test.__file__), "_internal", "python_requirements.py")).read()
print(re.search(r"pip='([0-9.]+)'", src).group(1))
PY
)
get_pip="$HOME/.ansible/test/cache/get_pip_${pip_version//./_}.py"
wheel_dir="$cache/pip-wheels"
if [[ ! -f "$get_pip" ]]; then
  mkdir -p "$wheel_dir" "$(dirname "$get_pip")"
  pip download -q --no-deps --only-binary=:all: -d "$wheel_dir" "pip==$pip_version"
  wheel=$(ls "$wheel_dir"/pip-"$pip_version"-*.whl)
  cat > "$get_pip" <<PY
# Stand-in for get-pip.py ${pip_version}, written by zerog.compute scripts/sanity.sh:
# installs pip (and the packages named on the command line) from the pip wheel on PyPI.
import sys
sys.path.insert(0, "${wheel}")
from pip._internal.cli.main import main
# get-pip's own options: plain pip installs neither setuptools nor wheel unless asked.
args = [a for a in sys.argv[1:] if a not in ("--no-setuptools", "--no-wheel")]
sys.exit(main(["install", "--disable-pip-version-check"] + args))
PY
fi

# Outside this git checkout: inside it, ansible-test would list files through git and skip them.
# A private copy per run, so that runs side by side do not remove each other's files.
mkdir -p "$cache"
top=$(mktemp -d "$cache/sanity.XXXXXX")
trap 'rm -rf "$top"' EXIT
work="$top/ansible_collections/zerog/compute"
mkdir -p "$work"
cd "$repo"
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
  [[ -e "$f" || -L "$f" ]] || continue
  mkdir -p "$work/$(dirname "$f")"
  cp -P "$f" "$work/$f"
done
cd "$work"
ansible-test sanity --venv --python 3.11 --color no "$@"
