#!/usr/bin/env python
"""Preflight of 8 simulated hosts against 1 simulated host, side by side (goal: at most 2x).

Materializes N simulated provider hosts on the controller (profiles h100x1 and h200x8 in turn,
each with its own fixture tree, state file and stand-in commands, as in
tests/unit/roles/test_preflight_role.py), then runs ``ansible-playbook playbooks/preflight.yml``
alternately against the first host alone and against all N hosts (``-f N``), a few times, and
prints the median wall times, their ratio, and the CPU time both runs used (for example, one
pair on the 2-core machine of bench/README.md while other work ran):

    run   hosts  forks  median s  runs s
    1     1      1      4.9       4.9
    N     8      8      17.7      17.7
    ratio 8 hosts / 1 host: 3.63 (goal: at most 2.00) ABOVE GOAL
    CPU: 1 host 3.5 s, 8 hosts 22.9 s (x6.6); on 2 core(s) the 8-host run needs at least 11.5 s, so
    the lowest ratio this machine can show is 2.35

The hosts' own work (the modules reading /proc, /sys and the stand-in tools) runs on the
controller's cores here, where a real fleet runs it on each host: the last line is the ratio
the machine allows at best, however well the playbook runs in parallel.

Every run must pass on every host (recap failed=0 and unreachable=0, and a JSON report with
result "pass" and at least one CVM GPU per host); otherwise the bench stops with the output of
that run rather than time a failure. Exits 0 when the ratio meets the goal, 1 when it does not,
2 on a wrong preflight result. Everything it makes lives in one temporary directory, removed at
the end (``--keep`` keeps it).

The hosts are local (``ansible_connection: local``). The playbook is the real one and sets no
environment, so each host's ``ansible_python_interpreter`` is a small wrapper that puts the
host's stand-ins first on PATH and exports its ZEROG_SIM_STATE before starting /usr/bin/python3.

    cd /work/main && source scripts/env.sh && python bench/preflight_fleet.py [--repeat 3] [--hosts 8]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SIM = os.path.join(REPO, "tests", "sim")
PLAYBOOK = os.path.join(REPO, "playbooks", "preflight.yml")
PROFILES = ("h100x1", "h200x8")
GOAL = 2.0

WRAPPER = """\
#!/bin/sh
# Python of simulated host {name}: its stand-ins first on PATH, its own simulation state.
PATH='{bindir}':/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ZEROG_SIM_STATE='{state}'
export PATH ZEROG_SIM_STATE
exec /usr/bin/python3 "$@"
"""


class WrongResult(Exception):
    """The preflight did not pass on every host: nothing worth timing."""


def ansible_playbook() -> str:
    """Return the ansible-playbook of the repository's venv (or the one on PATH)."""
    venv = os.path.join(REPO, ".venv", "bin", "ansible-playbook")
    if os.path.exists(venv):
        return venv
    found = shutil.which("ansible-playbook")
    if not found:
        raise SystemExit("ansible-playbook not found: create the venv and `source scripts/env.sh` first")
    return found


def sim_host(base: str, name: str, profile: str) -> dict:
    """Materialize ``profile`` for host ``name`` under ``base``; return the host's variables."""
    from zerog_sim import profiles  # pylint: disable=import-error,import-outside-toplevel

    sim = profiles.local_host(base, name, profile)
    interpreter = os.path.join(sim["work"], "python")
    with open(interpreter, "w", encoding="utf-8") as handle:
        handle.write(WRAPPER.format(name=name, bindir=sim["bin"], state=sim["state"]))
    os.chmod(interpreter, 0o755)
    return {
        "ansible_connection": "local",
        "ansible_python_interpreter": interpreter,
        # the playbook asks for become; the bench runs as the user it is started by
        "ansible_become": False,
        "preflight_root": sim["root"],
        "preflight_nvtools_path": os.path.join(sim["bin"], "nvidia_gpu_tools.py"),
        "preflight_disk": [{"path": "/", "min_free_gib": 0.001}],
    }


class Pccs:
    """A TCP listener on 127.0.0.1 standing in for the PCCS: accepts and closes every connection."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.address = f"127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn = self.sock.accept()[0]
            except OSError:
                return
            conn.close()

    def close(self) -> None:
        """Stop listening (the accept loop ends)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self.thread.join(timeout=5)


def recap(output: str, host: str) -> dict[str, str]:
    """Return the PLAY RECAP counters of ``host``."""
    for line in output.splitlines():
        if line.startswith(f"{host} ") and "ok=" in line:
            return dict(item.split("=", 1) for item in line.split(":", 1)[1].split())
    raise WrongResult(f"no recap line for {host}")


def check_run(proc: subprocess.CompletedProcess, hosts: list[str], reports: str) -> None:
    """Raise WrongResult unless the preflight passed on every host of the run."""
    if proc.returncode != 0:
        raise WrongResult(f"ansible-playbook exited {proc.returncode}")
    for host in hosts:
        counters = recap(proc.stdout, host)
        if counters.get("failed") != "0" or counters.get("unreachable") != "0":
            raise WrongResult(f"{host}: recap {counters}")
        path = os.path.join(reports, f"{host}.json")
        if not os.path.exists(path):
            raise WrongResult(f"{host}: no report {path}")
        with open(path, encoding="utf-8") as handle:
            report = json.load(handle)
        if report.get("result") != "pass" or report.get("failures") or not report.get("host_checks_run"):
            raise WrongResult(f"{host}: result {report.get('result')}, failures {report.get('failures')}")
        if not report.get("gpus", {}).get("cvm_gpus"):
            raise WrongResult(f"{host}: no CVM GPU in the report")


def run_preflight(base: str, inventory: str, hosts: list[str], env: dict[str, str], tag: str) -> float:
    """Run the preflight playbook on ``hosts``; check that it passed; return its wall and CPU seconds."""
    reports = os.path.join(base, "reports", tag)
    extra = json.dumps({"preflight_report_dir": reports})
    argv = [ansible_playbook(), "-i", inventory, PLAYBOOK, "-f", str(len(hosts)), "-l", ",".join(hosts), "-e", extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, cwd=base, capture_output=True, text=True, timeout=900, check=False)
    elapsed = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    # CPU time of ansible-playbook and everything it waited for: with local hosts, the modules too.
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    try:
        check_run(proc, hosts, reports)
    except WrongResult as exc:
        sys.stderr.write(proc.stdout[-6000:] + proc.stderr[-3000:])
        raise WrongResult(f"preflight of {len(hosts)} host(s), run {tag}: {exc}") from None
    return elapsed, cpu


def ansible_env(base: str) -> dict[str, str]:
    """Return the environment of ansible-playbook: the repo's collections, temp dirs inside ``base``."""
    env = dict(os.environ)
    env.update({
        "ANSIBLE_COLLECTIONS_PATH": os.path.join(REPO, ".cache", "collections"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_HOST_KEY_CHECKING": "false",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
        "ANSIBLE_LOCAL_TEMP": os.path.join(base, "ansible-local"),
        "ANSIBLE_REMOTE_TMP": os.path.join(base, "ansible-remote"),
        "ANSIBLE_HOME": os.path.join(base, "ansible-home"),
    })
    return env


def table(rows: list[tuple[str, int, list[float]]]) -> str:
    """Format the timings: one line per host count."""
    lines = [f"{'run':<6}{'hosts':<7}{'forks':<7}{'median s':<10}runs s"]
    for label, count, times in rows:
        runs = " ".join(f"{t:.1f}" for t in times)
        lines.append(f"{label:<6}{count:<7}{count:<7}{statistics.median(times):<10.1f}{runs}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Run the bench; return the exit status."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--repeat", type=int, default=3, help="pairs of runs (1 host, then N hosts); default 3")
    parser.add_argument("--hosts", type=int, default=8, help="hosts of the fleet run; default 8")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directory (path printed)")
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.hosts < 2:
        parser.error("--repeat must be at least 1 and --hosts at least 2")
    if SIM not in sys.path:
        sys.path.insert(0, SIM)

    base = tempfile.mkdtemp(prefix="zerog-bench-preflight-")
    pccs = Pccs()
    try:
        names = [f"sim{i + 1}" for i in range(args.hosts)]
        hosts = {}
        for i, name in enumerate(names):
            hosts[name] = sim_host(base, name, PROFILES[i % len(PROFILES)])
            hosts[name]["preflight_pccs_address"] = pccs.address
        inventory = os.path.join(base, "inventory.json")
        with open(inventory, "w", encoding="utf-8") as handle:
            json.dump({"all": {"hosts": hosts}}, handle)
        env = ansible_env(base)
        print(f"{args.hosts} simulated hosts ({', '.join(PROFILES)} in turn) in {base}; {args.repeat} pair(s) of runs")

        single: list[float] = []
        fleet: list[float] = []
        single_cpu: list[float] = []
        fleet_cpu: list[float] = []
        for rep in range(args.repeat):
            wall, cpu = run_preflight(base, inventory, names[:1], env, f"{rep}-1")
            single.append(wall)
            single_cpu.append(cpu)
            wall, cpu = run_preflight(base, inventory, names, env, f"{rep}-{args.hosts}")
            fleet.append(wall)
            fleet_cpu.append(cpu)
            print(f"pair {rep + 1}: 1 host {single[-1]:.1f} s ({single_cpu[-1]:.1f} CPU s), "
                  f"{args.hosts} hosts {fleet[-1]:.1f} s ({fleet_cpu[-1]:.1f} CPU s)", flush=True)
    except WrongResult as exc:
        print(f"WRONG RESULT, nothing timed: {exc}", file=sys.stderr)
        return 2
    finally:
        pccs.close()
        if args.keep:
            print(f"kept {base}")
        else:
            shutil.rmtree(base, ignore_errors=True)

    ratio = statistics.median(fleet) / statistics.median(single)
    print()
    print(table([("1", 1, single), ("N", args.hosts, fleet)]))
    verdict = "OK" if ratio <= GOAL else "ABOVE GOAL"
    print(f"ratio {args.hosts} hosts / 1 host: {ratio:.2f} (goal: at most {GOAL:.2f}) {verdict}")
    # The hosts are local: their modules run on this machine's cores too, beside the controller's
    # forks. However well the collection parallelises, the fleet run cannot take less wall time
    # than its CPU time spread over every core: that bounds the ratio this machine can show.
    cores = os.cpu_count() or 1
    floor = max(1.0, statistics.median(fleet_cpu) / cores / statistics.median(single))
    print(f"CPU: 1 host {statistics.median(single_cpu):.1f} s, {args.hosts} hosts {statistics.median(fleet_cpu):.1f} s "
          f"(x{statistics.median(fleet_cpu) / statistics.median(single_cpu):.1f}); on {cores} core(s) the "
          f"{args.hosts}-host run needs at least {statistics.median(fleet_cpu) / cores:.1f} s, "
          f"so the lowest ratio this machine can show is {floor:.2f}")
    return 0 if ratio <= GOAL else 1


if __name__ == "__main__":
    sys.exit(main())
