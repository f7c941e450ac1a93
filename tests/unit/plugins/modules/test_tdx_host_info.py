"""Tests of the tdx_host_info module: a fixture tree per case and the exact external calls.

The YAML table beside this file has three parts: ``calls`` (named external calls: argv, rc,
stdout, stderr), ``sequences`` (named lists of calls) and ``cases``. A case lists its calls by
name (``seq:<name>`` expands a sequence), changes the healthy base tree of :data:`BASE_TREE`
(``tree: {files, chardevs, sockets, remove}``), gives module ``input`` and the ``checks``
expected (name -> subset of the check), plus optional ``facts`` (subset) or ``failed``/``msg``.
``@ROOT@``, ``@PCCS_PORT@`` (a listening socket) and ``@CLOSED_PORT@`` (nothing listens) are
replaced everywhere.
"""

from __future__ import annotations

import copy
import os
import socket
import stat

import pytest
import yaml
from ansible_collections.zerog.compute.plugins.modules import tdx_host_info
from ansible_collections.zerog.compute.tests.unit.harness import CommandTable, assert_subset, case_file, run_module, substitute

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the fixture trees hold device nodes (mknod needs root)")

#: A healthy Ubuntu 25.10 TDX host (the TDX2.0 generation of host-checks.md).
BASE_TREE = {
    "files": {
        "/proc/cpuinfo": "processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Platinum 8480+\n"
                         "flags\t\t: fpu vmx smx sgx tme movdir64b tdx_host_platform sgx_lc\nbugs\t\t: spectre_v1 tdx_pw_mce\n\n",
        "/proc/cmdline": "BOOT_IMAGE=/vmlinuz-6.17.0-5-generic root=/dev/sda2 ro "
                         "nohibernate kvm_intel.tdx=1 intel_iommu=on iommu=pt quiet splash\n",
        "/proc/sys/kernel/osrelease": "6.17.0-5-generic\n",
        "/proc/meminfo": "MemTotal:       1056474112 kB\nMemFree:        1031875584 kB\nMemAvailable:   1052004352 kB\n",
        "/proc/self/limits": "Limit                     Soft Limit           Hard Limit           Units     \n"
                             "Max locked memory         unlimited            unlimited            bytes     \n",
        "/sys/module/kvm_intel/parameters/tdx": "Y\n",
        "/sys/module/kvm_intel/parameters/sgx": "Y\n",
        "/sys/kernel/iommu_groups/0/type": "identity\n",
        "/sys/kernel/iommu_groups/1/type": "identity\n",
        "/etc/sgx_default_qcnl.conf": '{\n  "pccs_url": "https://127.0.0.1:@PCCS_PORT@/sgx/certification/v4/",\n'
                                      '  "use_secure_cert": false\n}\n',
        "/etc/security/limits.d/99-tdx-memlock.conf": "* soft memlock unlimited\n* hard memlock unlimited\n",
        "/var/log/mpa_registration.log": "INFO: Registration Flow - PLATFORM_ESTABLISHMENT or TCB_RECOVERY passed "
                                         "successfully.\n",
        "/usr/share/ovmf/OVMF.fd": "TDVF\n",
    },
    "chardevs": {
        "/dev/sgx_enclave": [10, 125],
        "/dev/sgx_provision": [10, 126],
        "/dev/sgx_vepc": [10, 124],
        "/dev/iommu": [10, 122],
    },
    "sockets": ["/run/aesmd/aesm.socket"],
    "links": {"/var/run": "/run"},
}


def _load():
    with open(case_file(__file__), encoding="utf-8") as handle:
        table = yaml.safe_load(handle)
    return table, [pytest.param(case, id=case["id"]) for case in table["cases"]]


TABLE, CASES = _load()


def _calls(names):
    out = []
    for item in names:
        if isinstance(item, dict):
            out.append(item)
        elif item.startswith("seq:"):
            out.extend(_calls(TABLE["sequences"][item[4:]]))
        else:
            out.append(TABLE["calls"][item])
    return copy.deepcopy(out)


def build_tree(root, spec):
    """Create the files, device nodes, sockets and links of ``spec`` under ``root``."""
    def real(path):
        full = os.path.join(root, path.lstrip("/"))
        os.makedirs(os.path.dirname(full), exist_ok=True)
        return full

    for path, target in spec.get("links", {}).items():
        os.symlink(target, real(path))
    for path, text in spec["files"].items():
        if text is not None:
            with open(real(path), "w", encoding="utf-8") as handle:
                handle.write(text)
    for path, numbers in spec["chardevs"].items():
        if numbers is not None:
            os.mknod(real(path), 0o600 | stat.S_IFCHR, os.makedev(*numbers))
    for path in spec["sockets"]:
        os.mknod(real(path), 0o777 | stat.S_IFSOCK)


def merged_tree(change):
    tree = copy.deepcopy(BASE_TREE)
    for key in ("files", "chardevs"):
        tree[key].update((change or {}).get(key, {}))
    for path in (change or {}).get("remove", []):
        tree["files"].pop(path, None)
        tree["chardevs"].pop(path, None)
        if path in tree["sockets"]:
            tree["sockets"].remove(path)
    return tree


@pytest.fixture
def ports():
    listening = socket.socket()
    listening.bind(("127.0.0.1", 0))
    listening.listen(4)
    closed = socket.socket()
    closed.bind(("127.0.0.1", 0))
    closed_port = closed.getsockname()[1]
    closed.close()
    yield {"@PCCS_PORT@": str(listening.getsockname()[1]), "@CLOSED_PORT@": str(closed_port)}
    listening.close()


@pytest.mark.parametrize("case", CASES)
def test_tdx_host_info(case, tmp_path, ports):
    root = str(tmp_path / "root")
    marks = dict(ports, **{"@ROOT@": root})
    os.makedirs(root)
    build_tree(root, substitute(merged_tree(case.get("tree")), marks))
    args = {"root": root, "disk": [{"path": "/", "min_free_gib": 0.001}]}
    args.update(substitute(case.get("input", {}), marks))
    table = CommandTable(substitute(_calls(case.get("run_command_calls", [])), marks),
                         case.get("missing_binaries", ["virsh", "mpa_manage", "journalctl"]))
    result = run_module(tdx_host_info.main, args, check_mode=case.get("check_mode", False), commands=table)
    expected = substitute(case.get("output", {}), marks)
    assert result.failed == expected.get("failed", False), result.result
    if result.failed:
        assert result.msg == expected["msg"]
        return
    assert not result.changed
    checks = {c["name"]: c for c in result["checks"]}
    assert list(checks) == TABLE["check_order"]
    assert_subset(expected.get("checks", {}), checks, "checks")
    for name, want_ok in (expected.get("ok") or {}).items():
        assert checks[name]["ok"] is want_ok, (name, checks[name])
    if "all_ok_except" in expected:
        others = {n: c["ok"] for n, c in checks.items() if n not in expected["all_ok_except"]}
        assert all(ok is True for ok in others.values()), others
    assert_subset(expected.get("facts", {}), result["facts"], "facts")
