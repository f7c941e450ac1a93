"""Tests of the dstack_gpu_info module: a sysfs tree per case and the exact external calls.

Each case of the YAML table beside this file describes PCI ``devices`` (written as the kernel
lays them out: ``/sys/devices/pci<dom:bus>/<bdf>`` with relative ``driver``, ``iommu_group`` and
``/sys/bus/pci/devices`` links), the loaded ``modules`` (``/proc/modules``), the module
``input``, the exact ``run_command_calls`` and the expected ``output`` (subset; ``checks`` by
name). ``@TMP@`` is the case's temporary directory: ``@TMP@/nvidia_gpu_tools.py`` and an SDK
checkout ``@TMP@/sdk`` exist there as files (the table decides what running them prints).
"""

from __future__ import annotations

import os

import pytest
import yaml
from ansible_collections.zerog.compute.plugins.modules import dstack_gpu_info
from ansible_collections.zerog.compute.tests.unit.harness import CommandTable, assert_subset, case_file, run_module, substitute


def _load():
    with open(case_file(__file__), encoding="utf-8") as handle:
        table = yaml.safe_load(handle)
    return table, [pytest.param(case, id=case["id"]) for case in table["cases"]]


TABLE, CASES = _load()


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def _link(link, target):
    os.makedirs(os.path.dirname(link), exist_ok=True)
    os.symlink(os.path.relpath(target, os.path.dirname(link)), link)


def build_sysfs(root, devices):
    """PCI devices, their drivers and IOMMU groups, laid out like sysfs."""
    os.makedirs(os.path.join(root, "sys", "bus", "pci", "devices"))
    os.makedirs(os.path.join(root, "sys", "kernel", "iommu_groups"))
    for dev in devices:
        bdf = dev["bdf"]
        real = os.path.join(root, "sys", "devices", f"pci{bdf[:7]}", bdf)
        for name in ("vendor", "device", "class"):
            _write(os.path.join(real, name), f"0x{dev[name]}\n")
        _write(os.path.join(real, "numa_node"), f"{dev.get('numa_node', -1)}\n")
        _write(os.path.join(real, "driver_override"), "(null)\n")
        _link(os.path.join(root, "sys", "bus", "pci", "devices", bdf), real)
        if dev.get("driver"):
            driver_dir = os.path.join(root, "sys", "bus", "pci", "drivers", dev["driver"])
            os.makedirs(driver_dir, exist_ok=True)
            _link(os.path.join(real, "driver"), driver_dir)
        if dev.get("iommu_group") is not None:
            group = os.path.join(root, "sys", "kernel", "iommu_groups", str(dev["iommu_group"]))
            _link(os.path.join(real, "iommu_group"), group)
            _link(os.path.join(group, "devices", bdf), real)
        if dev.get("vfio_dev"):
            os.makedirs(os.path.join(real, "vfio-dev", dev["vfio_dev"]))


@pytest.mark.parametrize("case", CASES)
def test_dstack_gpu_info(case, tmp_path):
    tmp = str(tmp_path)
    root = os.path.join(tmp, "root")
    os.makedirs(root)
    if case.get("devices") is not None:
        build_sysfs(root, TABLE["topologies"][case["devices"]] if isinstance(case["devices"], str) else case["devices"])
    if case.get("modules") is not None:
        _write(os.path.join(root, "proc", "modules"), "".join(
            f"{name} 16384 0 - Live 0x0000000000000000\n" for name in case["modules"]))
    _write(os.path.join(tmp, "nvidia_gpu_tools.py"), "#!/usr/bin/env python3\n")
    _write(os.path.join(tmp, "sdk", "meta-dstack-nvidia", "scripts", "bin", "dstack"), "#!/usr/bin/env python3\n")
    args = {"root": root}
    args.update(substitute(case.get("input", {}), {"@TMP@": tmp}))
    table = CommandTable(substitute(case.get("run_command_calls", []), {"@TMP@": tmp}), case.get("missing_binaries", []))
    result = run_module(dstack_gpu_info.main, args, check_mode=case.get("check_mode", False), commands=table)
    expected = substitute(case["output"], {"@TMP@": tmp})
    assert result.failed == expected.get("failed", False), result.result
    if result.failed:
        assert result.msg == expected["msg"].replace("@ROOT@", root)
        return
    assert not result.changed
    checks = {c["name"]: c for c in result["checks"]}
    assert list(checks) == TABLE["check_order"]
    for name, ok in expected.pop("ok", {}).items():
        assert checks[name]["ok"] is ok, (name, checks[name])
    assert_subset(expected.pop("checks", {}), checks, "checks")
    assert_subset(expected, result.result)
