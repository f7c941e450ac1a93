"""The preflight role end to end on the controller, against simulated host trees.

One ansible-playbook run with four local hosts: ``inputs`` only validates variables (with a
misspelled, a removed, an ill-typed and an out-of-range one), ``h100`` is the passing profile
h100x1, ``ccoff`` the failing profile gpu_cc_off and ``waived`` the same with its failure
waived. Each host reads its own fixture tree (``preflight_root``) and runs the simulation kit's
stand-ins (``environment:`` gives each host its PATH and state file). A second play runs
preflight again on the hosts that passed, as a playbook importing preflight.yml and then
provider.yml would. A second run in check mode must give the same reports and change nothing.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SIM = os.path.join(REPO, "tests", "sim")
VENV_BIN = os.path.join(REPO, ".venv", "bin")
PLAYBOOK = os.path.join(REPO, "playbooks", "preflight.yml")

if SIM not in sys.path:
    sys.path.insert(0, SIM)

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="materializing a profile creates device nodes (root only)"),
    pytest.mark.skipif(not os.path.exists(os.path.join(VENV_BIN, "ansible-playbook")), reason="no .venv"),
]

_PLAY = """\
- name: {name}
  hosts: all
  gather_facts: false
  environment:
    PATH: "{{{{ sim_bin | default(lookup('ansible.builtin.env', 'PATH')) }}}}"
    ZEROG_SIM_STATE: "{{{{ sim_state | default('') }}}}"
  roles:
    - role: zerog.compute.preflight
"""

# preflight twice in the same run: the facts the first play published (preflight_gpu_info) are
# in hostvars in the second and must not be taken for unknown input variables
TEST_PLAY = _PLAY.format(name="Preflight of simulated hosts") + "\n" + _PLAY.format(name="Preflight again")


def _env():
    env = dict(os.environ)
    env.update({
        "PATH": f"{VENV_BIN}:{env.get('PATH', '')}",
        "ANSIBLE_COLLECTIONS_PATH": os.path.join(REPO, ".cache", "collections"),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_INJECT_FACT_VARS": "false",
        "ANSIBLE_LOCALHOST_WARNING": "false",
        "ANSIBLE_HOST_KEY_CHECKING": "false",
        "ANSIBLE_RETRY_FILES_ENABLED": "false",
    })
    return env


def _sim_host(base, name, profile):
    """Materialize ``profile`` for host ``name``; return its host vars."""
    from zerog_sim import profiles

    sim = profiles.local_host(base, name, profile)
    return {"sim_bin": sim["bin"], "sim_state": sim["state"], "preflight_root": sim["root"],
            "preflight_nvtools_path": os.path.join(sim["bin"], "nvidia_gpu_tools.py"),
            "preflight_disk": [{"path": "/", "min_free_gib": 0.001}]}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("preflight"))
    pccs = socket.socket()
    pccs.bind(("127.0.0.1", 0))
    pccs.listen(128)  # never accepted: each probe of each play takes a slot of the backlog
    common = {"ansible_connection": "local", "ansible_python_interpreter": "/usr/bin/python3",
              "preflight_pccs_address": f"127.0.0.1:{pccs.getsockname()[1]}"}
    hosts = {
        "inputs": dict(common, preflight_host_checks=False, preflight_wiave=["x"], preflight_old_knob=True,
                       preflight_min_memory_gib=-1, preflight_pccs_address="pccs.example:99999",
                       preflight_gpu_policy="multi"),
        "h100": dict(common, **_sim_host(base, "h100", "h100x1")),
        "ccoff": dict(common, **_sim_host(base, "ccoff", "gpu_cc_off")),
        "waived": dict(common, preflight_waive=["gpu_cc_mode"], **_sim_host(base, "waived", "gpu_cc_off")),
    }
    # an unknown choice stops layer one at the role's own argument validation: keep it out of the
    # host that checks the other input errors, and check it on its own host
    hosts["choice"] = dict(common, preflight_host_checks=False, preflight_gpu_policy="multi")
    del hosts["inputs"]["preflight_gpu_policy"]
    # the inventory in a directory of its own, apart from the playbook: the reports must land in
    # preflight_report_dir's default, .reports/ beside the inventory (not beside the playbook)
    os.makedirs(os.path.join(base, "inventory"))
    inventory = os.path.join(base, "inventory", "hosts.json")
    with open(inventory, "w", encoding="utf-8") as handle:
        json.dump({"all": {"hosts": hosts}}, handle)
    play = os.path.join(base, "play.yml")
    with open(play, "w", encoding="utf-8") as handle:
        handle.write(TEST_PLAY)
    reports = os.path.join(base, "inventory", ".reports")
    removed = json.dumps({"__preflight_removed_variables": {"preflight_old_knob": "replaced by preflight_waive"}})
    results = []
    snapshots = []
    try:
        for extra in ([], ["--check"]):
            proc = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "-i", inventory, play, "-e", removed,
                                   *extra], env=_env(), cwd=base, capture_output=True, text=True, timeout=300,
                                  check=False)
            results.append(proc)
            snapshots.append({name: _read(reports, name) for name in hosts})
    finally:
        pccs.close()
    yield {"runs": results, "reports": snapshots, "base": base}
    shutil.rmtree(base, ignore_errors=True)


def _read(reports, host):
    path = os.path.join(reports, f"{host}.json")
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def _recap(output, host):
    for line in output.splitlines():
        if line.startswith(f"{host} ") and "ok=" in line:
            return dict(item.split("=") for item in line.split(":", 1)[1].split())
    raise AssertionError(f"no recap line for {host}:\n{output[-3000:]}")


def test_input_errors_are_all_reported(runs):
    report = runs["reports"][0]["inputs"]
    assert report["result"] == "fail"
    assert report["host_checks_run"] is False
    assert [(c["name"], c["detail"]) for c in report["checks"]] == [
        ("input:preflight_old_knob", "preflight_old_knob was removed: replaced by preflight_waive."),
        ("input:preflight_wiave", "preflight_wiave is not a variable of the collection; did you mean preflight_waive?"),
        ("input:preflight_min_memory_gib", "preflight_min_memory_gib must be more than 0."),
        ("input:preflight_pccs_address", "preflight_pccs_address must be empty or host:port with a port from 1 to 65535."),
    ]
    assert all(c["severity"] == "required" and c["ok"] is False and c["remediation"] for c in report["checks"])
    assert _recap(runs["runs"][0].stdout, "inputs")["failed"] == "1"


def test_unknown_choice_stops_at_argument_validation(runs):
    assert runs["reports"][0]["choice"] is None
    out = runs["runs"][0].stdout
    assert "value of preflight_gpu_policy must be one of: auto, single, ppcie, got: multi" in out
    assert _recap(out, "choice")["failed"] == "1"


def test_passing_host(runs):
    report = runs["reports"][0]["h100"]
    assert report["result"] == "pass", [c for c in report["checks"] if c["ok"] is False]
    assert report["failures"] == []
    assert report["gpus"]["cvm_gpus"] == ["18:00.0"]
    assert report["platform"]["kernel"] == "6.17.0-5-generic"
    assert _recap(runs["runs"][0].stdout, "h100")["failed"] == "0"


def test_reports_default_to_dot_reports_beside_the_inventory(runs):
    """Without preflight_report_dir the reports go beside the inventory, not the playbook."""
    listing = sorted(os.listdir(os.path.join(runs["base"], "inventory", ".reports")))
    assert listing == sorted(f"{host}.json" for host in ("inputs", "h100", "ccoff", "waived", "choice")
                             if runs["reports"][0][host] is not None)
    assert "h100.json" in listing
    assert not os.path.exists(os.path.join(runs["base"], ".reports"))
    assert not os.path.exists(os.path.join(runs["base"], "reports"))


def test_failing_host_stops_with_its_failure(runs):
    report = runs["reports"][0]["ccoff"]
    assert report["result"] == "fail"
    assert report["failures"] == ["gpu_cc_mode"]
    check = next(c for c in report["checks"] if c["name"] == "gpu_cc_mode")
    assert check["detail"] == "single-GPU CVMs need CC mode on for every GPU: 18:00.0 off."
    out = runs["runs"][0].stdout
    assert "Preflight failed on ccoff: 1 required check(s) failed (gpu_cc_mode)." in out
    assert "FAIL    required    gpu_cc_mode" in out
    assert _recap(out, "ccoff")["failed"] == "1"


def test_waived_failure_does_not_stop_the_host(runs):
    report = runs["reports"][0]["waived"]
    assert report["result"] == "pass"
    assert report["waived"] == ["gpu_cc_mode"]
    assert report["summary"]["waived"] == 1
    assert "WAIVED  required    gpu_cc_mode" in runs["runs"][0].stdout
    assert _recap(runs["runs"][0].stdout, "waived")["failed"] == "0"


def test_second_preflight_in_one_run(runs):
    """The passing hosts go on to the second play; the GPU discovery the first published is no input error."""
    for proc in runs["runs"]:
        assert "PLAY [Preflight again]" in proc.stdout
        for host in ("h100", "waived"):
            report = runs["reports"][runs["runs"].index(proc)][host]
            assert report["result"] == "pass", [c for c in report["checks"] if c["ok"] is False]
            assert [c["name"] for c in report["checks"] if c["name"].startswith("input:")] == []
            assert _recap(proc.stdout, host)["failed"] == "0"
    gpu_tasks = [line for line in runs["runs"][0].stdout.splitlines()
                 if line.startswith("TASK [zerog.compute.preflight : Publish the GPU discovery")]
    assert len(gpu_tasks) == 2


def test_check_mode_rerun_changes_nothing(runs):
    """The second run, in check mode, finds every report up to date and changes nothing."""
    first, second = runs["reports"]
    assert first == second
    for host in ("h100", "waived"):
        assert _recap(runs["runs"][1].stdout, host)["changed"] == "0"
        assert _recap(runs["runs"][1].stdout, host)["failed"] == "0"


def test_playbook_syntax():
    proc = subprocess.run([os.path.join(VENV_BIN, "ansible-playbook"), "--syntax-check", "-i", "localhost,", PLAYBOOK],
                          env=_env(), capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
