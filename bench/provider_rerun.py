#!/usr/bin/env python
"""provider.yml on one simulated host: no-op re-run against the first converge, and overhead.

Starts one simulated H100 provider host (a privileged podman instance of the Molecule base
image, turned into a TDX host by molecule/resources/sim-host.yml), then runs the real
playbooks/provider.yml with the demo's inventory variables (inventories/sim/group_vars) twice,
with Ansible's ``ansible.posix.json`` callback so every task's start and end are known:

* re-run ratio = wall time of the second (no-op) run / wall time of the first converge without
  the image build (the first run's time minus the tasks of the build: starting build.sh and
  waiting for it). Goal: at most 0.35, and the second run must change nothing.
* overhead ratio = first converge wall time / summed duration of the tasks that run external
  commands (command, shell, script, apt, git, and the collection's modules that wrap dstack,
  docker, build.sh or probe a service). Goal: at most 1.5.

The host is reached the way an operator reaches a real one (``--connection ssh``, the default):
OpenSSH into the instance, with pipelining (one round trip per task; the example inventory
turns it on for real hosts, docs/operator-guide.md §1.3). ``--connection podman`` uses the Molecule scenarios' connection
instead (podman exec, no pipelining: five round trips per task), to see what the connection costs.

    source scripts/env.sh && python3 bench/provider_rerun.py [--connection ssh|podman] [--keep]

Prints both runs' figures and the ratios; exits 1 when a goal is missed, 2 when a run failed or
the second run changed something. The instance is removed at the end (``--keep`` keeps it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from image_builds_per_host import REPO, run, start_instances

HOST = "zerog-bench-rerun"
# Debian's OpenSSH server, installed in the instance from the mirror its apt already uses.
SSHD_PACKAGE = "openssh-server"
# Tasks whose time is the work itself: the action runs an external program (useradd/usermod for
# user, getent, ip for setup's network facts, dpkg for apt, dockerd --validate, dstack,
# nvidia_gpu_tools.py, ...), talks to a service, or hashes an image as sha256sum would
# (dstack_image_info). finetune_config is not one: it checks and writes a file in Python, as
# template does.
COMMAND_ACTIONS = {
    "ansible.builtin.command", "ansible.builtin.shell", "ansible.builtin.script", "ansible.builtin.apt",
    "ansible.builtin.git", "ansible.builtin.get_url", "ansible.builtin.uri", "ansible.builtin.systemd_service",
    "ansible.builtin.wait_for", "ansible.builtin.unarchive", "ansible.builtin.user", "ansible.builtin.getent",
    "ansible.builtin.setup",
    "zerog.compute.dstack_cvm", "zerog.compute.dstack_gpu_info", "zerog.compute.tdx_host_info",
    "zerog.compute.key_provider_probe", "zerog.compute.image_build_wait", "zerog.compute.dstack_image_info",
    "zerog.compute.docker_daemon_config", "zerog.compute.git_checkout_info", "zerog.compute.deb_packages_info",
    "zerog.compute.provider_status_info",
}
# Actions that run on the controller only (no round trip to the host).
CONTROLLER_ACTIONS = {
    "ansible.builtin.assert", "ansible.builtin.set_fact", "ansible.builtin.debug", "ansible.builtin.fail",
    "ansible.builtin.include_tasks", "ansible.builtin.include_role", "ansible.builtin.include_vars",
    "ansible.builtin.validate_argument_spec", "ansible.builtin.meta", "zerog.compute.controller_file",
}
BUILD_TASKS = ("zerog.compute.private_ml_sdk : Start build.sh", "zerog.compute.private_ml_sdk : Wait for the build")

# How many of the re-run's slowest tasks are listed.
SLOWEST = 12


def seconds(span: dict) -> float:
    """Duration of a json-callback host result (ISO 8601 start/end)."""
    start = datetime.fromisoformat(span["start"].replace("Z", "+00:00"))
    end = datetime.fromisoformat(span["end"].replace("Z", "+00:00"))
    return (end - start).total_seconds()


def timed_run(argv: list[str], env: dict[str, str], out: Path) -> tuple[float, dict]:
    """Run the playbook with the json callback; return wall seconds and the parsed document."""
    start = time.monotonic()
    proc = run(argv, env=env, check=False)
    took = time.monotonic() - start
    out.write_text(proc.stdout)
    # Progress lines (the image build's, printed while it runs) may come before the document.
    begin = 0 if proc.stdout.startswith("{") else proc.stdout.find("\n{\n") + 1
    try:
        doc, _end = json.JSONDecoder().raw_decode(proc.stdout[begin:])
    except json.JSONDecodeError as exc:
        tail = proc.stdout[-3000:] + proc.stderr[-3000:]
        raise SystemExit(f"the playbook did not print JSON (rc {proc.returncode}):\n{tail}") from exc
    stats = doc["stats"].get(HOST, {})
    if proc.returncode != 0 or stats.get("failures") or stats.get("unreachable"):
        raise SystemExit(f"provider.yml failed (rc {proc.returncode}, stats {stats}); output in {out}")
    return took, doc


def kinds(doc: dict) -> str:
    """How many task results ran a module on the host, ran on the controller only, or were skipped."""
    counts = {"host": [0, 0.0], "controller": [0, 0.0], "skipped": [0, 0.0]}
    for play in doc["plays"]:
        for task in play["tasks"]:
            result = task["hosts"].get(HOST)
            if result is None:
                continue
            kind = ("skipped" if result.get("skipped")
                    else "controller" if result.get("action") in CONTROLLER_ACTIONS else "host")
            counts[kind][0] += 1
            counts[kind][1] += seconds(task["task"]["duration"])
    return ", ".join(f"{n} {kind} ({spent:.1f} s)" for kind, (n, spent) in counts.items())


def task_times(doc: dict) -> list[tuple[str, str, float]]:
    """(task name, action, seconds) of every task of the run on the host."""
    out = []
    for play in doc["plays"]:
        for task in play["tasks"]:
            result = task["hosts"].get(HOST)
            if result is None:
                continue
            out.append((task["task"]["name"], result.get("action", ""), seconds(task["task"]["duration"])))
    return out


def reach_over_ssh(work: Path) -> dict[str, str]:
    """Install sshd in the instance, authorize a fresh key; return the host's connection variables."""
    key = work / "id_ed25519"
    run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "zerog-bench", "-f", str(key)])
    run(["podman", "exec", "--env=DEBIAN_FRONTEND=noninteractive", HOST, "sh", "-c",
         f"apt-get update -q && apt-get install -y -q --no-install-recommends {SSHD_PACKAGE}"],
        log=work / "sshd.log")
    run(["podman", "exec", HOST, "install", "-d", "-m", "0700", "/root/.ssh"])
    run(["podman", "cp", f"{key}.pub", f"{HOST}:/root/.ssh/authorized_keys"])
    run(["podman", "exec", HOST, "sh", "-c",
         "chown root:root /root/.ssh/authorized_keys && chmod 0600 /root/.ssh/authorized_keys"
         " && systemctl enable --now ssh"])
    address = run(["podman", "inspect", "--format", "{{.NetworkSettings.IPAddress}}", HOST]).stdout.strip()
    if not address:
        raise SystemExit(f"{HOST} has no address on podman's network: use --connection podman")
    return {
        "ansible_connection": "ansible.builtin.ssh",
        "ansible_host": address,
        "ansible_user": "root",
        "ansible_ssh_private_key_file": str(key),
        # A throwaway instance: its host key is new on every run.
        "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null",
        "ansible_ssh_pipelining": "true",
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the instance and the run outputs")
    parser.add_argument("--connection", choices=("ssh", "podman"), default="ssh",
                        help="how Ansible reaches the host: OpenSSH with pipelining (default), or podman exec")
    args = parser.parse_args()
    for tool in ("podman", "ansible-playbook", *(("ssh", "ssh-keygen") if args.connection == "ssh" else ())):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is not on PATH: run `source scripts/env.sh` first")

    work = Path(tempfile.mkdtemp(prefix="zerog-bench-rerun-"))
    try:
        image = run(["bash", str(REPO / "molecule" / "resources" / "image.sh")]).stdout.strip().splitlines()[-1]
        start_instances(image, [HOST])
        # Host variables: they win over the sim inventory's group connection, and unlike extra
        # variables they do not follow the tasks delegated to the controller.
        host_vars = reach_over_ssh(work) if args.connection == "ssh" else {}
        inventory = work / "inventory"
        inventory.mkdir()
        (inventory / "hosts.yml").write_text(
            json.dumps({"all": {"children": {"providers": {"hosts": {HOST: host_vars}}}}}))
        (inventory / "group_vars").symlink_to(REPO / "inventories" / "sim" / "group_vars")
        env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_INJECT_FACT_VARS="False")
        extra = ["-e", json.dumps({"molecule_yml": {"platforms": [{"name": HOST, "sim_profile": "h100x1"}]},
                                   "zerog_provider_report_dir": str(work / "reports")})]
        run(["ansible-playbook", "-i", str(inventory), *extra, str(REPO / "molecule" / "resources" / "sim-host.yml")],
            log=work / "sim-host.log", env=env)

        json_env = dict(env, ANSIBLE_STDOUT_CALLBACK="ansible.posix.json")
        argv = ["ansible-playbook", "-i", str(inventory), *extra, str(REPO / "playbooks" / "provider.yml")]
        first_s, first = timed_run(argv, json_env, work / "first.json")
        second_s, second = timed_run(argv, json_env, work / "second.json")

        first_tasks = task_times(first)
        build_s = sum(s for name, _a, s in first_tasks if name.startswith(BUILD_TASKS))
        commands_s = sum(s for _n, action, s in first_tasks if action in COMMAND_ACTIONS)
        changed_second = second["stats"][HOST].get("changed", 0)
        first_wo_build = first_s - build_s
        rerun_ratio = second_s / first_wo_build
        overhead_ratio = first_s / commands_s if commands_s else float("inf")

        print(f"connection: {args.connection}{' (pipelining)' if args.connection == 'ssh' else ''}")
        print(f"first converge: {first_s:.1f} s wall, of which image build {build_s:.1f} s "
              f"-> {first_wo_build:.1f} s without the build; {len(first_tasks)} task results")
        print(f"  task results: {kinds(first)}")
        print(f"second run: {second_s:.1f} s wall, changed={changed_second}")
        print(f"  task results: {kinds(second)}")
        print(f"re-run ratio (second / first without build): {rerun_ratio:.2f} (goal: at most 0.35)")
        print(f"tasks running external commands in the first converge: {commands_s:.1f} s")
        print(f"overhead ratio (first converge / command time): {overhead_ratio:.2f} (goal: at most 1.5)")
        print("slowest tasks of the no-op re-run (where the re-run ratio goes):")
        for name, action, spent in sorted(task_times(second), key=lambda task: -task[2])[:SLOWEST]:
            print(f"  {spent:6.1f} s  {100 * spent / second_s:4.1f} %  {name} ({action})")
        if changed_second:
            print("the second run changed something: not a no-op")
            return 2
        return 0 if rerun_ratio <= 0.35 and overhead_ratio <= 1.5 else 1
    finally:
        if args.keep:
            print(f"kept: instance {HOST}, outputs in {work}")
        else:
            run(["podman", "rm", "--force", "--time=5", "--ignore", "--volumes", HOST], check=False)
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
