#!/usr/bin/env bash
# The main job against the built-in simulated TDX host.
#
# Brings up the simulated provider hosts of inventories/sim (podman instances with systemd and
# a real dockerd, turned into simulated TDX + H100/H200 hosts by molecule/resources/sim-host.yml)
# and runs playbooks/provider.yml against them, as an operator would against real hosts:
# preflight, Docker, the private-ml-sdk image (built once, copied to the other host), the local
# key provider, the broker configuration, the CVM. One host is meant to be refused by preflight
# (its H100 is not in CC mode) and is left untouched. Ends with the per-host summary and a curl
# of each provider's /v1/model. Set ZEROG_DEMO_KEEP=1 to keep the instances afterwards.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bash scripts/bootstrap.sh
# shellcheck source=scripts/env.sh
source scripts/env.sh

inventory=inventories/sim
read -r -a hosts < <(ansible-inventory -i "$inventory" --list \
  | python3 -c 'import json,sys; print(" ".join(json.load(sys.stdin)["providers"]["hosts"]))')
image=$(bash molecule/resources/image.sh)

cleanup() { [[ "${ZEROG_DEMO_KEEP:-0}" == 1 ]] || podman rm -f -t 2 --volumes "${hosts[@]}" >/dev/null 2>&1 || true; }
trap cleanup EXIT

echo "demo: starting the simulated provider hosts: ${hosts[*]}" >&2
for h in "${hosts[@]}"; do
  # privileged with its own /var/lib/docker: each host runs a real dockerd (build.sh, key provider)
  podman run -d --replace --name "$h" --hostname "$h" --systemd=always --privileged \
    --volume /var/lib/docker "$image" /sbin/init >/dev/null
done
for h in "${hosts[@]}"; do
  for _ in $(seq 60); do
    state=$(podman exec "$h" systemctl is-system-running 2>/dev/null || true)
    [[ "$state" == running || "$state" == degraded ]] && break
    sleep 1
  done
done
ansible-playbook -i "$inventory" molecule/resources/sim-host.yml >/dev/null

reports=$(mktemp -d)
echo "demo: ansible-playbook -i $inventory playbooks/provider.yml (reports in $reports)" >&2
# zerog-demo-cc-off is meant to be refused (GPU CC mode off): the playbook then ends with rc 2.
rc=0
ansible-playbook -i "$inventory" playbooks/provider.yml -e "zerog_provider_report_dir=$reports" || rc=$?

echo >&2
echo "demo: results" >&2
python3 - "$reports" "${hosts[@]}" <<'PY'
import json, pathlib, sys, urllib.request
reports = pathlib.Path(sys.argv[1])
bad = 0
for host in sys.argv[2:]:
    pre = json.loads((reports / f"{host}.json").read_text())
    prov = reports / f"{host}-provider.json"
    if pre["result"] != "pass":
        print(f"  {host}: refused by preflight ({', '.join(pre['failures'])}); nothing was changed on it")
        continue
    if not prov.exists():
        print(f"  {host}: passed preflight but the provider run did not finish")
        bad += 1
        continue
    report = json.loads(prov.read_text())
    print(f"  {host}: serving URL {report['serving_url']}, image {report['image']['version']}")
    for cvm in report["cvms"]:
        print(f"    CVM {cvm['name']}: {cvm['state']}, GPUs {' '.join(cvm['gpus']) or 'none'}; logs: {cvm['logs']}")
    url = report["serving_url"].rstrip("/") + "/v1/model"
    print(f"    $ curl -s {url}")
    try:
        with urllib.request.urlopen(url, timeout=10) as answer:
            print(f"    {answer.read().decode()}  (HTTP {answer.status})")
    except OSError as exc:
        print(f"    no answer: {exc}")
        bad += 1
sys.exit(1 if bad else 0)
PY
# Exactly the host meant to be refused was refused; anything else is a real failure.
[[ $rc -eq 0 || $rc -eq 2 ]] || exit "$rc"
