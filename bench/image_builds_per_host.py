#!/usr/bin/env python
"""Guest image builds performed for N simulated provider hosts (goal: 1).

Starts N simulated provider hosts (podman instances of the Molecule base image, see
molecule/resources), prepares them like the Molecule scenarios (simulation kit, stand-in
private-ml-sdk repository, Docker on the first host only), then deploys zerog.compute.private_ml_sdk
in fleet mode (bench/image_builds/site.yml) twice. It counts the builds each host performed, from
the start lines the role's runner writes to the build log, and prints them:

    hosts: 3, build host zerog-bench-1
    first run: 1 build(s), 96 s; second run: 0 build(s), 41 s
    builds per host: zerog-bench-1=1 zerog-bench-2=0 zerog-bench-3=0
    builds performed for 3 hosts: 1 (goal: 1)

Exits 0 when the first run built exactly once and the second run not at all. The instances and
the controller's image cache are removed at the end (``--keep`` keeps the instances).

    source scripts/env.sh && python3 bench/image_builds_per_host.py [--hosts N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
PLAYBOOKS = REPO / "bench" / "image_builds"
LOG = "/var/log/private-ml-sdk-build.log"
MARKER = "==== zerog.compute: build.sh started"


def run(argv: list[str], log: Path | None = None, env: dict[str, str] | None = None,
        check: bool = True) -> subprocess.CompletedProcess:
    """Run a command; with ``log``, its output goes there and a failure shows its end."""
    if log is None:
        proc = subprocess.run(argv, capture_output=True, text=True, env=env, check=False)
    else:
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"$ {' '.join(argv)}\n")
            out.flush()
            proc = subprocess.run(argv, stdout=out, stderr=subprocess.STDOUT, text=True, env=env, check=False)
    if check and proc.returncode != 0:
        detail = proc.stderr if log is None else "".join(log.read_text().splitlines(True)[-40:])
        raise SystemExit(f"{argv[0]} failed with rc {proc.returncode}:\n{detail}")
    return proc


def start_instances(image: str, names: list[str]) -> None:
    """podman instances running systemd, like molecule/resources/create.yml; the first is privileged."""
    for index, name in enumerate(names):
        extra = ["--privileged", "--volume=/var/lib/docker"] if index == 0 else []
        run(["podman", "run", "--detach", "--replace", f"--name={name}", f"--hostname={name}",
             "--systemd=always", "--label=zerog.bench=image_builds_per_host", *extra, image, "/sbin/init"])
    for name in names:
        for _second in range(120):
            state = run(["podman", "exec", name, "systemctl", "is-system-running"], check=False).stdout.strip()
            if state in ("running", "degraded"):
                break
            time.sleep(1)
        else:
            raise SystemExit(f"{name} did not finish booting in 120 s")


def builds_on(name: str) -> int:
    """How many builds the role's runner started on a host (lines in its build log)."""
    proc = run(["podman", "exec", name, "cat", LOG], check=False)
    if proc.returncode != 0:
        return 0
    return sum(1 for line in proc.stdout.splitlines() if line.startswith(MARKER))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hosts", type=int, default=3, help="number of provider hosts (default 3)")
    parser.add_argument("--build-seconds", type=float, default=4, help="duration of the simulated build")
    parser.add_argument("--keep", action="store_true", help="keep the instances afterwards")
    args = parser.parse_args()
    if args.hosts < 1:
        parser.error("--hosts must be at least 1")
    for tool in ("podman", "ansible-playbook"):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not on PATH: run `source scripts/env.sh` first")

    names = [f"zerog-bench-{i}" for i in range(1, args.hosts + 1)]
    work = Path(tempfile.mkdtemp(prefix="zerog-bench-"))
    log = work / "ansible.log"
    try:
        image = run(["bash", str(REPO / "molecule" / "resources" / "image.sh")]).stdout.strip().splitlines()[-1]
        start_instances(image, names)
        inventory = {"all": {
            "hosts": {n: {"ansible_connection": "containers.podman.podman"} for n in names},
            "children": {"build_host": {"hosts": {names[0]: {}}}},
        }}
        (work / "inventory.json").write_text(json.dumps(inventory))
        extra = {
            # sim-host.yml reads the hosts' profiles from Molecule's view of the platforms.
            "molecule_yml": {"platforms": [{"name": n, "sim_profile": "h100x1"} for n in names]},
            "private_ml_sdk_fleet_cache_dir": str(work / "image-cache"),
            "bench_build_seconds": str(args.build_seconds),
        }
        (work / "extra.json").write_text(json.dumps(extra))
        env = dict(os.environ, ANSIBLE_INJECT_FACT_VARS="False", ANSIBLE_NOCOLOR="1")
        base = ["ansible-playbook", "-i", str(work / "inventory.json"), "-e", f"@{work / 'extra.json'}"]
        run([*base, str(PLAYBOOKS / "prepare.yml")], log=log, env=env)

        results = []
        for _run in range(2):
            before = {n: builds_on(n) for n in names}
            start = time.monotonic()
            run([*base, str(PLAYBOOKS / "site.yml")], log=log, env=env)
            took = time.monotonic() - start
            after = {n: builds_on(n) for n in names}
            results.append(({n: after[n] - before[n] for n in names}, took))

        (first, first_s), (second, second_s) = results
        total_first, total_second = sum(first.values()), sum(second.values())
        print(f"hosts: {len(names)}, build host {names[0]}")
        print(f"first run: {total_first} build(s), {first_s:.0f} s; second run: {total_second} build(s), {second_s:.0f} s")
        print("builds per host: " + " ".join(f"{n}={first[n] + second[n]}" for n in names))
        print(f"builds performed for {len(names)} hosts: {total_first + total_second} (goal: 1)")
        return 0 if total_first == 1 and total_second == 0 else 1
    finally:
        if not args.keep:
            run(["podman", "rm", "--force", "--time=5", "--ignore", "--volumes", *names], check=False)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
