"""Both host-check modules against every simulated host profile (tests/sim/profiles).

Each profile is materialized into a fixture tree (``zerog_sim.profiles.materialize``, what
``python3 -m zerog_sim materialize`` runs); the
modules then read that tree through their ``root`` option and run the simulation kit's stand-in
commands (dmesg, rdmsr, qemu-system-x86_64, nvidia_gpu_tools.py, ...) found on a PATH that holds
only the kit's ``bin`` directory, ``timeout`` and Debian's python3 (as ``python3`` and ``python``). The profile's
``expected_failures`` must be exactly the checks reported as failed.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import socket
import sys

import pytest
from ansible_collections.zerog.compute.plugins.modules import dstack_gpu_info, tdx_host_info
from ansible_collections.zerog.compute.tests.unit.harness import run_module

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
SIM = os.path.join(REPO, "tests", "sim")
SIM_BIN = os.path.join(SIM, "bin")
PROFILE_DIR = os.path.join(SIM, "profiles")
DEBIAN_PYTHON = "/usr/bin/python3"

if SIM not in sys.path:
    sys.path.insert(0, SIM)

from zerog_sim import profiles  # noqa: E402

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="materializing a profile creates device nodes (root only)")


def _profile_names():
    return profiles.list_profiles() if os.path.isdir(PROFILE_DIR) else []


def _bin_dir(workdir):
    """A PATH directory with the kit's stand-ins, timeout and Debian's python3, nothing else."""
    bindir = os.path.join(workdir, "bin")
    os.mkdir(bindir)
    for name in sorted(os.listdir(SIM_BIN)):
        os.symlink(os.path.join(SIM_BIN, name), os.path.join(bindir, name))
    os.symlink("/usr/bin/timeout", os.path.join(bindir, "timeout"))
    # the stand-ins start with "#!/usr/bin/env python" (or python3): both are Debian's python3
    os.symlink(DEBIAN_PYTHON, os.path.join(bindir, "python3"))
    os.symlink(DEBIAN_PYTHON, os.path.join(bindir, "python"))
    return bindir


@contextlib.contextmanager
def _pccs(enabled):
    """A listening socket on 127.0.0.1 when the profile's PCCS runs, else a closed port."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    if enabled:
        sock.listen(4)
    else:
        sock.close()
    try:
        yield f"127.0.0.1:{port}"
    finally:
        sock.close()


def evaluate(name, workdir):
    """Materialize profile ``name`` under ``workdir`` and run both modules on it.

    Runs in a worker process (it sets PATH and ZEROG_SIM_STATE for the stand-ins). Returns the
    profile's state, the tdx_host_info result, the dstack_gpu_info results with the policy
    auto-detected and declared, and whether the state file changed.
    """
    os.makedirs(workdir)
    root = os.path.join(workdir, "root")
    state_file = os.path.join(workdir, "active.json")
    state = profiles.materialize(name, root, state_file)
    with open(state_file, encoding="utf-8") as handle:
        before = handle.read()
    bindir = _bin_dir(workdir)
    os.environ["PATH"] = bindir
    os.environ["ZEROG_SIM_STATE"] = state_file
    nvtools = os.path.join(bindir, "nvidia_gpu_tools.py")
    with _pccs(state["pccs"]["enabled"]) as address:
        host = run_module(tdx_host_info.main, {"root": root, "pccs_address": address,
                                               "disk": [{"path": "/", "min_free_gib": 0.001}]})
    auto = run_module(dstack_gpu_info.main, {"root": root, "nvtools_path": nvtools})
    declared = run_module(dstack_gpu_info.main, {"root": root, "nvtools_path": nvtools,
                                                 "policy": state["gpu_policy"]})
    with open(state_file, encoding="utf-8") as handle:
        unchanged = handle.read() == before
    return {"state": state, "host": host, "auto": auto, "declared": declared, "state_unchanged": unchanged}


def _evaluate_star(args):
    return args[0], evaluate(*args)


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    """Every profile evaluated once, two at a time (the stand-ins are separate processes)."""
    base = tmp_path_factory.mktemp("profiles")
    jobs = [(name, str(base / name)) for name in _profile_names()]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        return dict(pool.map(_evaluate_star, jobs))


@pytest.mark.parametrize("name", _profile_names())
def test_profile_fails_exactly_the_expected_checks(name, results):
    res = results[name]
    host, gpus = res["host"], res["auto"]
    assert not host.failed, host.msg
    assert not gpus.failed, gpus.msg
    checks = host["checks"] + gpus["checks"]
    names = [c["name"] for c in checks]
    assert len(names) == len(set(names)), "a check is reported twice"
    missing = set(profiles.CHECKS) - set(names)
    assert not missing, f"checks not reported: {sorted(missing)}"
    failed = {c["name"] for c in checks if c["ok"] is False}
    expected = set(res["state"]["expected_failures"])
    details = {c["name"]: c["detail"] for c in checks if c["name"] in failed ^ expected}
    assert failed == expected, f"unexpected: {sorted(failed - expected)}, missing: {sorted(expected - failed)}; {details}"
    # What stops a host: every failed required check is an expected failure, and the expected
    # failures that are not required are exactly the informational aesmd check (see README).
    required_failed = {c["name"] for c in checks if c["ok"] is False and c["severity"] == "required"}
    assert expected - required_failed <= {"aesmd"}
    # the kernel log, MSR, QEMU and file-based checks are always evaluated on a simulated host
    always = {"cpu_tdx_host_flag", "tdx_bios_keyids", "tdx_module_initialized", "kvm_tdx_param", "tme_enabled",
              "seamrr_enabled", "sgx_mcheck", "production_platform", "kernel_version", "memlock", "qemu_tdx",
              "pccs_reachable", "disk_free", "memory", "sgx_registration", "sgx_devices", "sgx_bios",
              "qcnl_config", "iommu_enabled", "iommufd", "host_no_nvidia_driver", "gpu_present"}
    unevaluated = sorted(c["name"] for c in checks if c["name"] in always and c["ok"] is None)
    assert not unevaluated, unevaluated


@pytest.mark.parametrize("name", _profile_names())
def test_declared_policy_gives_the_same_result(name, results):
    """Auto-detection picks the profile's policy; declaring it explicitly changes nothing."""
    res = results[name]
    auto, declared = res["auto"], res["declared"]
    if auto["gpus"]:
        assert auto["policy"] == res["state"]["gpu_policy"]
    assert [(c["name"], c["ok"]) for c in declared["checks"]] == [(c["name"], c["ok"]) for c in auto["checks"]]
    assert declared["cvm_gpus"] == auto["cvm_gpus"]


@pytest.mark.parametrize("name", _profile_names())
def test_modules_change_nothing(name, results):
    """The stand-ins record changes (mode switches) in the state file: a read-only run leaves it alone."""
    assert results[name]["state_unchanged"]
    assert not results[name]["host"].changed
    assert not results[name]["auto"].changed


@pytest.mark.parametrize(("name", "cvm_gpus"), [
    ("h100x1", ["18:00.0"]),
    ("golden_h100x2", ["18:00.0"]),
    ("gpu_cc_off", []),
    ("iommu_off", []),
    ("h200x8", ["07:00.0", "08:00.0", "09:00.0", "0a:00.0", "18:00.0", "2a:00.0", "3a:00.0", "5d:00.0",
                "9a:00.0", "ab:00.0", "ba:00.0", "db:00.0"]),
])
def test_cvm_gpus(name, cvm_gpus, results):
    if name not in results:
        pytest.skip(f"no profile {name}")
    assert sorted(results[name]["auto"]["cvm_gpus"]) == cvm_gpus
