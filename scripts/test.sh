#!/usr/bin/env bash
# The whole test suite: every quality gate, the unit tests and every Molecule scenario.
# Sets everything up first (scripts/bootstrap.sh), so it works on a fresh machine.
#
#   bash scripts/test.sh                 # everything (what CI runs)
#   ZEROG_GATES="unit sanity" bash scripts/test.sh   # only some gates while developing
#   ZEROG_SCENARIOS="smoke" bash scripts/test.sh     # only some Molecule scenarios
#
# Ends with one line `total: N passed, N failed` counting every test case and every gate that
# is not made of test cases; exits non-zero when anything failed.
set -uo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo" || exit 1
bash scripts/bootstrap.sh || { echo "total: 0 passed, 1 failed"; exit 1; }
# shellcheck source=scripts/env.sh
source scripts/env.sh

out="$repo/tests/output"
rm -rf "$out"; mkdir -p "$out/junit" "$out/logs"
all_gates="yamllint ansible-lint ruff role-docs changelog build sanity unit molecule"
gates="${ZEROG_GATES:-$all_gates}"

passed=0 failed=0
declare -a report=()

# Count the test cases of junit files written by a gate.
junit_counts() {  # prints "<passed> <failed>"
  python3 - "$@" <<'PY'
import sys, xml.etree.ElementTree as ET
p = f = 0
for path in sys.argv[1:]:
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        f += 1
        continue
    for tc in root.iter("testcase"):
        if tc.find("failure") is not None or tc.find("error") is not None:
            f += 1
        elif tc.find("skipped") is None:
            p += 1
print(p, f)
PY
}

# run_gate NAME CMD...: a gate that counts as one check.
run_gate() {
  local name=$1; shift
  local log="$out/logs/$name.log" start=$SECONDS rc
  printf '==> %s\n' "$name"
  "$@" >"$log" 2>&1; rc=$?
  if ((rc == 0)); then
    passed=$((passed + 1)); report+=("PASS  $name ($((SECONDS - start)) s)")
  else
    failed=$((failed + 1)); report+=("FAIL  $name ($((SECONDS - start)) s): see tests/output/logs/$name.log")
    tail -n 40 "$log"
  fi
}

# run_junit_gate NAME JUNIT_GLOB CMD...: a gate whose test cases are counted one by one.
run_junit_gate() {
  local name=$1 glob=$2; shift 2
  local log="$out/logs/$name.log" start=$SECONDS rc p f
  printf '==> %s\n' "$name"
  "$@" >"$log" 2>&1; rc=$?
  # shellcheck disable=SC2086
  read -r p f < <(junit_counts $glob)
  if ((rc != 0 && f == 0)); then f=1; fi   # a crash before any test case counts as a failure
  passed=$((passed + p)); failed=$((failed + f))
  if ((rc == 0)); then
    report+=("PASS  $name: $p passed ($((SECONDS - start)) s)")
  else
    report+=("FAIL  $name: $p passed, $f failed ($((SECONDS - start)) s): see tests/output/logs/$name.log")
    tail -n 60 "$log"
  fi
}

want() { [[ " $gates " == *" $1 "* ]]; }

want yamllint && run_gate yamllint yamllint --strict .
want ansible-lint && run_gate ansible-lint ansible-lint --profile production --strict
want ruff && run_gate ruff ruff check .
want role-docs && run_gate role-docs python3 scripts/role-docs.py --check
want changelog && run_gate changelog antsibull-changelog lint
want build && run_gate build bash scripts/build-and-install.sh "$out/build"
want sanity && run_gate sanity bash scripts/sanity.sh
want unit && run_junit_gate unit "$out/junit/unit.xml" \
  pytest --junitxml="$out/junit/unit.xml" -o junit_family=xunit2

if want molecule; then
  scenarios="${ZEROG_SCENARIOS:-$(for d in molecule/*/molecule.yml; do basename "$(dirname "$d")"; done | sort | tr '\n' ' ')}"
  for s in $scenarios; do
    # Each scenario's testinfra verifier writes its own junit file.
    run_junit_gate "molecule-$s" "$out/junit/molecule-$s.xml" \
      env PYTEST_ADDOPTS="--junitxml=$out/junit/molecule-$s.xml" molecule test -s "$s"
  done
fi

printf '\n'; printf '%s\n' "${report[@]}"
printf '\ntotal: %d passed, %d failed\n' "$passed" "$failed"
((failed == 0))
