"""Tests of the TDX host parsers and checks (plugins/module_utils/_tdx.py)."""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.plugins.module_utils import _tdx
from ansible_collections.zerog.compute.tests.unit.harness import assert_subset, case_file, load_cases


def _plain(value):
    """Tuples as lists, so that YAML lists compare with function results."""
    if isinstance(value, tuple):
        return [_plain(v) for v in value]
    if isinstance(value, list):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", load_cases(case_file(__file__)))
def test_table(case):
    result = _plain(getattr(_tdx, case["func"])(*case["args"]))
    if "want" in case:
        assert result == case["want"]
    else:
        assert_subset(case["want_subset"], result)
    if isinstance(result, dict) and "severity" in result:
        assert result["severity"] in _tdx.SEVERITIES
        assert result["remediation"], "every check carries a remediation"


@pytest.fixture
def tree(tmp_path):
    """A small host tree with the links a real root has (absolute /var/run, relative sysfs)."""
    root = tmp_path / "root"
    (root / "run" / "aesmd").mkdir(parents=True)
    (root / "run" / "aesmd" / "aesm.socket").write_text("")
    (root / "var").mkdir()
    os.symlink("/run", root / "var" / "run")
    dev = root / "sys" / "devices" / "pci0000:17" / "0000:18:00.0"
    dev.mkdir(parents=True)
    (dev / "vendor").write_text("0x10de\n")
    (root / "sys" / "bus" / "pci" / "devices").mkdir(parents=True)
    os.symlink("../../../devices/pci0000:17/0000:18:00.0", root / "sys" / "bus" / "pci" / "devices" / "0000:18:00.0")
    os.symlink("../../../bus/pci/drivers/vfio-pci", dev / "driver")
    os.symlink("/loop", root / "loop")
    return root


@pytest.mark.parametrize(("path", "want"), [
    ("/var/run/aesmd/aesm.socket", "run/aesmd/aesm.socket"),
    ("/sys/bus/pci/devices/0000:18:00.0/vendor", "sys/devices/pci0000:17/0000:18:00.0/vendor"),
    ("/var/run/../etc/x", "etc/x"),
    ("/../../run", "run"),
])
def test_hostfs_resolves_links_inside_root(tree, path, want):
    fs = _tdx.HostFS(str(tree))
    assert fs.path(path) == os.path.join(str(tree), want)


def test_hostfs_reads(tree):
    fs = _tdx.HostFS(str(tree))
    assert fs.read_value("/sys/bus/pci/devices/0000:18:00.0/vendor") == "0x10de"
    assert fs.link_name("/sys/bus/pci/devices/0000:18:00.0/driver") == "vfio-pci"
    assert fs.read("/nonexistent", "none") == "none"
    assert fs.listdir("/var/run/aesmd") == ["aesm.socket"]
    assert fs.listdir("/nothing") is None
    assert fs.stat("/loop") is None  # a link loop is "missing", not a crash
    assert fs.free_bytes("/var/run/not/yet/created")[0] == "/var/run"


def test_hostfs_root_slash_is_identity():
    fs = _tdx.HostFS("/")
    assert fs.path("/proc/cpuinfo") == "/proc/cpuinfo"


def test_char_device(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mknod needs root")
    node = tmp_path / "sgx_enclave"
    os.mknod(node, 0o600 | 0o020000, os.makedev(10, 125))
    assert _tdx.char_device(os.stat(node), major=10) == {
        "exists": True, "is_char": True, "major": 10, "minor": 125, "major_ok": True}
    assert _tdx.char_device(None) == {"exists": False, "is_char": False, "major": None, "minor": None}


def test_every_check_has_a_remediation():
    names = ["cpu_tdx_host_flag", "tdx_bios_keyids", "tdx_module_initialized", "kvm_tdx_param", "cmdline_nohibernate",
             "cmdline_kvm_tdx", "tme_enabled", "seamrr_enabled", "sgx_mcheck", "production_platform", "kernel_version",
             "memlock", "sgx_devices", "sgx_bios", "sgx_registration", "qcnl_config", "aesmd", "pccs_reachable",
             "iommu_enabled", "iommufd", "qemu_tdx", "libvirt_tdx", "ovmf_tdvf", "disk_free", "memory"]
    assert sorted(_tdx.REMEDIATION) == sorted(names)
