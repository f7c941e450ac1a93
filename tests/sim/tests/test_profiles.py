"""Host-state profiles: resolution, the active-state contract and the materialized fixture tree.

Expected values come from host-checks.md (formats, device numbers, VERBATIM lines) and the shared
layout contract, written out here by hand; nothing is derived from the code under test.
"""

from __future__ import annotations

import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

SIM_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SIM_DIR))

from zerog_sim import profiles  # noqa: E402
from zerog_sim.state import load_active  # noqa: E402

REQUIRED = {
    "h100x1", "h200x8", "golden_h100x2", "tdx_bios_off", "tdx_module_uninitialized", "hibernation_on",
    "kvm_tdx_unset", "no_sgx_devices", "no_pccs", "iommu_off", "gpu_nvidia_driver", "gpu_cc_off", "no_nvidia_gpu",
    "qemu_no_tdx",
}
# host-checks.md §6 check names (verbatim) + pccs_reachable
SECTION6 = {
    "cpu_tdx_host_flag", "tdx_bios_keyids", "tdx_module_initialized", "kvm_tdx_param", "cmdline_nohibernate",
    "cmdline_kvm_tdx", "tme_enabled", "seamrr_enabled", "sgx_mcheck", "production_platform", "kernel_version",
    "memlock", "sgx_devices", "sgx_bios", "sgx_registration", "qcnl_config", "aesmd", "iommu_enabled", "iommufd",
    "gpu_present", "nvswitch_present", "gpu_iommu_group", "gpu_driver_vfio", "host_no_nvidia_driver", "gpu_cc_mode",
    "gpu_ppcie_mode", "qemu_tdx", "libvirt_tdx", "ovmf_tdvf", "pccs_reachable",
}
EXPECTED_FAILURES = {
    "h100x1": set(),
    "h200x8": set(),
    "golden_h100x2": {"kernel_version", "gpu_iommu_group", "gpu_driver_vfio", "host_no_nvidia_driver", "gpu_cc_mode",
                      "gpu_ppcie_mode", "qemu_tdx"},
    "tdx_bios_off": {"cpu_tdx_host_flag", "tdx_bios_keyids", "tdx_module_initialized", "kvm_tdx_param",
                     "seamrr_enabled"},
    "tdx_module_uninitialized": {"tdx_module_initialized", "kvm_tdx_param"},
    "hibernation_on": {"cpu_tdx_host_flag", "tdx_module_initialized", "kvm_tdx_param", "cmdline_nohibernate"},
    "kvm_tdx_unset": {"tdx_module_initialized", "kvm_tdx_param", "cmdline_kvm_tdx"},
    "no_sgx_devices": {"sgx_devices", "sgx_bios", "sgx_registration", "aesmd"},
    "no_pccs": {"pccs_reachable"},
    "iommu_off": {"iommu_enabled", "iommufd", "gpu_iommu_group", "gpu_driver_vfio"},
    "gpu_nvidia_driver": {"gpu_iommu_group", "gpu_driver_vfio", "host_no_nvidia_driver", "gpu_cc_mode",
                          "gpu_ppcie_mode"},
    "gpu_cc_off": {"gpu_cc_mode"},
    "no_nvidia_gpu": {"gpu_present"},
    "qemu_no_tdx": {"qemu_tdx"},
}
ALL = sorted(profiles.list_profiles())


@pytest.fixture(scope="module")
def trees(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict]]:
    """Every profile materialized once (root, state)."""
    base = tmp_path_factory.mktemp("profiles")
    result = {}
    for name in ALL:
        root = base / name / "root"
        state_file = base / name / "active.json"
        profiles.materialize(name, str(root), str(state_file))
        result[name] = (root, load_active(str(state_file)))
    return result


def test_profile_list_is_exactly_the_required_set() -> None:
    assert set(ALL) == REQUIRED


def test_check_names_are_section6_plus_pccs() -> None:
    assert set(profiles.CHECKS) == SECTION6


@pytest.mark.parametrize("name", sorted(EXPECTED_FAILURES))
def test_expected_failures(name: str) -> None:
    state = profiles.build_state(name, "/nonexistent")
    assert set(state["expected_failures"]) == EXPECTED_FAILURES[name]
    assert state["description"]


@pytest.mark.parametrize("name", ALL)
def test_state_contract_keys(name: str, trees: dict) -> None:
    root, state = trees[name]
    assert state["profile"] == name
    assert state["root"] == str(root)
    assert isinstance(state["qemu"]["version_text"], str) and state["qemu"]["version_text"].startswith("QEMU emulator")
    assert isinstance(state["qemu"]["tdx_guest"], bool)
    assert state["pccs"]["port"] == 8081 and isinstance(state["pccs"]["enabled"], bool)
    assert isinstance(state["sgx_devices"], bool)
    for dev in state["pci_devices"]:
        assert re.fullmatch(r"[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]", dev["bdf"])
        assert re.fullmatch(r"[0-9a-f]{4}", dev["vendor"]) and re.fullmatch(r"[0-9a-f]{4}", dev["device"])
        assert re.fullmatch(r"[0-9a-f]{6}", dev["class"])
        assert isinstance(dev["numa_node"], int)
        assert dev["iommu_group"] is None or isinstance(dev["iommu_group"], int)
        assert dev["driver"] in (None, "vfio-pci", "nvidia") or dev["vendor"] != "10de"
        assert isinstance(dev["name"], str) and isinstance(dev["in_use"], bool)
        if dev["vendor"] == "10de":
            assert dev["cc_mode"] in ("on", "off", "devtools") and dev["ppcie_mode"] in ("on", "off")
            assert dev["rev"] == "a1"


@pytest.mark.parametrize("name", ALL)
def test_every_symlink_resolves_inside_the_root(name: str, trees: dict) -> None:
    root, _state = trees[name]
    links = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for entry in dirnames + filenames:
            path = os.path.join(dirpath, entry)
            if os.path.islink(path):
                links += 1
                target = os.readlink(path)
                assert not os.path.isabs(target), path
                resolved = os.path.realpath(path)
                assert resolved.startswith(str(root) + os.sep), (path, target)
                assert os.path.exists(resolved), (path, target)
    assert links > 20


# (path under root, exact content) for h100x1, formats from host-checks.md §1-§3 and the kernel
H100X1_FILES = [
    ("proc/cmdline", "BOOT_IMAGE=/vmlinuz-6.17.0-5-generic root=/dev/mapper/ubuntu--vg-ubuntu--lv ro nohibernate "
                     "kvm_intel.tdx=1 intel_iommu=on iommu=pt quiet splash vt.handoff=7\n"),
    ("proc/sys/kernel/osrelease", "6.17.0-5-generic\n"),
    ("sys/module/kvm_intel/parameters/tdx", "Y\n"),
    ("sys/module/kvm_intel/parameters/sgx", "Y\n"),
    ("sys/bus/pci/devices/0000:18:00.0/vendor", "0x10de\n"),
    ("sys/bus/pci/devices/0000:18:00.0/device", "0x2330\n"),
    ("sys/bus/pci/devices/0000:18:00.0/class", "0x030200\n"),
    ("sys/bus/pci/devices/0000:18:00.0/subsystem_vendor", "0x10de\n"),
    ("sys/bus/pci/devices/0000:18:00.0/subsystem_device", "0x16c1\n"),
    ("sys/bus/pci/devices/0000:18:00.0/numa_node", "0\n"),
    ("sys/bus/pci/devices/0000:18:00.0/driver_override", "(null)\n"),
    ("sys/bus/pci/devices/0000:18:00.0/power/control", "auto\n"),
    ("sys/bus/pci/devices/0000:4b:00.0/vendor", "0x15b3\n"),
    ("sys/bus/pci/devices/0000:4b:00.0/class", "0x020000\n"),
    ("sys/bus/pci/devices/0000:00:00.0/class", "0x060000\n"),
    ("sys/kernel/iommu_groups/40/type", "identity\n"),
    ("etc/security/limits.d/99-tdx-memlock.conf", "* soft memlock unlimited\n* hard memlock unlimited\n"),
    ("var/log/mpa_registration.log",
     "INFO: Registration Flow - PLATFORM_ESTABLISHMENT or TCB_RECOVERY passed successfully.\n"),
]

H100X1_LINKS = [
    ("sys/bus/pci/devices/0000:18:00.0", "../../../devices/pci0000:15/0000:15:00.0/0000:16:00.0/0000:17:00.0/0000:18:00.0"),
    ("sys/bus/pci/devices/0000:00:14.0", "../../../devices/pci0000:00/0000:00:14.0"),
    ("sys/devices/pci0000:00/0000:00:14.0/driver", "../../../bus/pci/drivers/xhci_hcd"),
    ("sys/devices/pci0000:00/0000:00:14.0/iommu_group", "../../../kernel/iommu_groups/8"),
    ("sys/devices/pci0000:15/0000:15:00.0/0000:16:00.0/0000:17:00.0/0000:18:00.0/driver",
     "../../../../../../bus/pci/drivers/vfio-pci"),
    ("sys/devices/pci0000:15/0000:15:00.0/0000:16:00.0/0000:17:00.0/0000:18:00.0/iommu_group",
     "../../../../../../kernel/iommu_groups/40"),
    ("sys/kernel/iommu_groups/40/devices/0000:18:00.0",
     "../../../../devices/pci0000:15/0000:15:00.0/0000:16:00.0/0000:17:00.0/0000:18:00.0"),
    ("sys/bus/pci/drivers/vfio-pci/0000:18:00.0",
     "../../../../devices/pci0000:15/0000:15:00.0/0000:16:00.0/0000:17:00.0/0000:18:00.0"),
    ("sys/class/iommu/dmar0", "../../devices/virtual/iommu/dmar0"),
    ("var/run", "../run"),
]

# (path, major, minor) of character devices: SGX per host-checks.md §2, kvm/vfio/msr per the kernel
H100X1_CHARDEVS = [
    ("dev/sgx_enclave", 10, 125), ("dev/sgx_provision", 10, 126), ("dev/sgx_vepc", 10, 124), ("dev/kvm", 10, 232),
    ("dev/vfio/vfio", 10, 196), ("dev/cpu/0/msr", 202, 0), ("dev/cpu/3/msr", 202, 3),
]


@pytest.mark.parametrize(("rel", "content"), H100X1_FILES)
def test_h100x1_file_contents(rel: str, content: str, trees: dict) -> None:
    root, _state = trees["h100x1"]
    assert (root / rel).read_text() == content


@pytest.mark.parametrize(("rel", "target"), H100X1_LINKS)
def test_h100x1_links(rel: str, target: str, trees: dict) -> None:
    root, _state = trees["h100x1"]
    assert os.readlink(root / rel) == target


def test_h100x1_driver_and_group_through_the_bus_link(trees: dict) -> None:
    root, _state = trees["h100x1"]
    dev = root / "sys/bus/pci/devices/0000:18:00.0"
    assert os.path.basename(os.readlink(dev / "driver")) == "vfio-pci"
    assert os.path.basename(os.readlink(dev / "iommu_group")) == "40"
    assert os.path.realpath(dev / "driver") == str(root / "sys/bus/pci/drivers/vfio-pci")
    assert sorted(os.listdir(root / "sys/bus/pci/drivers/vfio-pci")) == [
        "0000:18:00.0", "bind", "new_id", "remove_id", "uevent", "unbind"]
    assert os.listdir(dev / "vfio-dev") == ["vfio0"]


@pytest.mark.parametrize(("rel", "major", "minor"), H100X1_CHARDEVS)
def test_h100x1_character_devices(rel: str, major: int, minor: int, trees: dict) -> None:
    root, _state = trees["h100x1"]
    st = os.lstat(root / rel)
    assert stat.S_ISCHR(st.st_mode)
    assert (os.major(st.st_rdev), os.minor(st.st_rdev)) == (major, minor)


def test_h100x1_vfio_nodes_and_sockets(trees: dict) -> None:
    root, _state = trees["h100x1"]
    assert sorted(os.listdir(root / "dev/vfio")) == ["40", "devices", "vfio"]
    assert os.listdir(root / "dev/vfio/devices") == ["vfio0"]
    assert stat.S_ISCHR(os.lstat(root / "dev/vfio/40").st_mode)
    assert stat.S_ISCHR(os.lstat(root / "dev/iommu").st_mode)
    assert stat.S_ISSOCK(os.stat(root / "var/run/aesmd/aesm.socket").st_mode)
    qcnl = json.loads((root / "etc/sgx_default_qcnl.conf").read_text())
    assert qcnl["pccs_url"] == "https://localhost:8081/sgx/certification/v4/"


def test_h100x1_cpuinfo_format(trees: dict) -> None:
    text = (trees["h100x1"][0] / "proc/cpuinfo").read_text()
    blocks = text.split("\n\n")
    assert blocks[-1] == "" and len(blocks) == 5
    first = blocks[0].split("\n")
    assert first[0] == "processor\t: 0"
    assert first[3] == "model\t\t: 143"
    assert "vmx flags\t: vnmi preemption_timer" in blocks[0]
    assert first[-1] == "power management:"
    flags = [line for line in first if line.startswith("flags\t\t: ")]
    bugs = [line for line in first if line.startswith("bugs\t\t: ")]
    assert len(flags) == 1 and len(bugs) == 1
    for token in ("tdx_host_platform", "sgx", "sgx_lc", "tme", "vmx"):
        assert token in flags[0].split()
    assert "tdx_pw_mce" not in flags[0] and bugs[0].split()[-1] == "tdx_pw_mce"


def test_h100x1_proc_tables(trees: dict) -> None:
    root, _state = trees["h100x1"]
    limits = (root / "proc/self/limits").read_text().splitlines()
    assert limits[0] == "Limit                     Soft Limit           Hard Limit           Units     "
    assert "Max locked memory         unlimited            unlimited            bytes     " in limits
    modules = (root / "proc/modules").read_text().splitlines()
    assert "vfio_pci_core 94208 1 vfio_pci, Live 0x0000000000000000" in modules
    assert not [m for m in modules if m.startswith("nvidia")]
    meminfo = (root / "proc/meminfo").read_text().splitlines()
    assert meminfo[0] == "MemTotal:       1056474112 kB"
    assert "HugePages_Total:       0" in meminfo and "Hugepagesize:       2048 kB" in meminfo


def _flags(root: Path) -> set[str]:
    line = next(x for x in (root / "proc/cpuinfo").read_text().splitlines() if x.startswith("flags\t"))
    return set(line.split(": ", 1)[1].split())


def _dmesg(state: dict) -> str:
    return "\n".join(r["msg"] for r in state["dmesg"])


def _gpus(state: dict) -> list[dict]:
    return [d for d in state["pci_devices"] if d["vendor"] == "10de" and d["class"] in ("030000", "030200")]


def _switches(state: dict) -> list[dict]:
    return [d for d in state["pci_devices"] if d["vendor"] == "10de" and d["class"] == "068000"]


def _kernel_ok(release: str, has_gpu: bool) -> bool:
    major, minor = (int(x) for x in release.split(".")[:2])
    if release.endswith("-intel"):
        return (major, minor) >= (6, 14) or ((major, minor) == (6, 8) and not has_gpu)
    return (major, minor) >= (6, 16)


def _qemu_ok(text: str, tdx_guest: bool, has_gpu: bool) -> bool:
    version = tuple(int(x) for x in re.search(r"version (\d+)\.(\d+)\.(\d+)", text).groups())
    if not tdx_guest:
        return False
    if version >= (10, 1, 0):
        return True
    return "+tdx" in text and (not has_gpu or version >= (9, 2, 1))


def reference_failures(root: Path, state: dict) -> set[str]:
    """An independent, minimal reading of the fixture following host-checks.md §6 (see tests/sim/README.md)."""
    failed = set()
    cmdline = (root / "proc/cmdline").read_text().split()
    log = _dmesg(state)
    flags = _flags(root)
    gpus, switches = _gpus(state), _switches(state)
    if "tdx_host_platform" not in flags:
        failed.add("cpu_tdx_host_flag")
    keyids = re.search(r"virt/tdx: BIOS enabled: private KeyID range:? \[(\d+), (\d+)\)", log)
    if not keyids or int(keyids.group(2)) - int(keyids.group(1)) < 2:
        failed.add("tdx_bios_keyids")
    if not re.search(r"virt/tdx: (?:TDX-Module|module) initialized", log) or re.search(
            r"virt/tdx: (module not loaded|module initialization failed|initialization failed:)", log):
        failed.add("tdx_module_initialized")
    if (root / "sys/module/kvm_intel/parameters/tdx").read_text() != "Y\n":
        failed.add("kvm_tdx_param")
    if "nohibernate" not in cmdline:
        failed.add("cmdline_nohibernate")
    if "kvm_intel.tdx=1" not in cmdline:
        failed.add("cmdline_kvm_tdx")
    msr = {int(k, 16): int(v, 16) for k, v in state["msr"]["values"].items()}
    if not (msr[0x982] >> 1) & 1 or "x86/tme: enabled by BIOS" not in log:
        failed.add("tme_enabled")
    if not (msr[0x1401] >> 11) & 1:
        failed.add("seamrr_enabled")
    if msr[0xA0] != 0:
        failed.add("sgx_mcheck")
    if (msr[0xCE] >> 27) & 1:
        failed.add("production_platform")
    if not _kernel_ok((root / "proc/sys/kernel/osrelease").read_text().strip(), bool(gpus)):
        failed.add("kernel_version")
    if "Max locked memory         unlimited            unlimited" not in (root / "proc/self/limits").read_text():
        failed.add("memlock")
    if not all(os.path.exists(root / p) and stat.S_ISCHR(os.stat(root / p).st_mode)
               for p in ("dev/sgx_enclave", "dev/sgx_provision")):
        failed.add("sgx_devices")
    if not (msr[0x3A] >> 18) & 1 or "SGX disabled by BIOS" in log or not {"sgx", "sgx_lc"} <= flags:
        failed.add("sgx_bios")
    efivars = [f for f in os.listdir(root / "sys/firmware/efi/efivars") if f.startswith("SgxRegistrationStatus-")]
    mpa = root / "var/log/mpa_registration.log"
    if len(efivars) != 1 or not mpa.exists() or "passed successfully" not in mpa.read_text():
        failed.add("sgx_registration")
    try:
        if not json.loads((root / "etc/sgx_default_qcnl.conf").read_text()).get("pccs_url"):
            failed.add("qcnl_config")
    except (OSError, ValueError):
        failed.add("qcnl_config")
    if not os.path.exists(root / "var/run/aesmd/aesm.socket"):
        failed.add("aesmd")
    if not state["pccs"]["enabled"]:
        failed.add("pccs_reachable")
    if not os.listdir(root / "sys/kernel/iommu_groups") or "DMAR: IOMMU enabled" not in log:
        failed.add("iommu_enabled")
    vfio_gpus = [d for d in gpus + switches if d["driver"] == "vfio-pci"]
    if not os.path.exists(root / "dev/iommu") or not all(
            os.path.isdir(root / f"sys/bus/pci/devices/{d['bdf']}/vfio-dev") for d in vfio_gpus):
        failed.add("iommufd")
    if not gpus:
        failed.add("gpu_present")
    if len(gpus) >= 8 and len(switches) != 4:
        failed.add("nvswitch_present")
    for dev in gpus + switches:
        link = root / f"sys/bus/pci/devices/{dev['bdf']}/iommu_group"
        members = os.listdir(link / "devices") if os.path.islink(link) else []
        if not members:
            failed.add("gpu_iommu_group")
        for member in members:
            member_dir = link / "devices" / member
            is_bridge = (member_dir / "class").read_text().startswith("0x0604")
            driver = member_dir / "driver"
            if not is_bridge and (not os.path.islink(driver) or os.path.basename(os.readlink(driver)) != "vfio-pci"):
                failed.add("gpu_iommu_group")
        driver = root / f"sys/bus/pci/devices/{dev['bdf']}/driver"
        if not os.path.islink(driver) or os.path.basename(os.readlink(driver)) != "vfio-pci":
            failed.add("gpu_driver_vfio")
    if any(line.startswith("nvidia") for line in (root / "proc/modules").read_text().splitlines()):
        failed.add("host_no_nvidia_driver")
    queryable = [d for d in gpus if d["driver"] != "nvidia"]
    want_cc = "off" if state["gpu_policy"] == "ppcie" else "on"
    if len(queryable) != len(gpus) or any(d["cc_mode"] != want_cc for d in gpus):
        failed.add("gpu_cc_mode")
    want_ppcie = "on" if state["gpu_policy"] == "ppcie" else "off"
    if len(queryable) != len(gpus) or any(d["ppcie_mode"] != want_ppcie for d in gpus + switches):
        failed.add("gpu_ppcie_mode")
    if not _qemu_ok(state["qemu"]["version_text"], state["qemu"]["tdx_guest"], bool(gpus)):
        failed.add("qemu_tdx")
    if not state["libvirt"].get("tdx"):
        failed.add("libvirt_tdx")
    if not os.path.exists(root / "usr/share/ovmf/OVMF.fd"):
        failed.add("ovmf_tdvf")
    return failed


@pytest.mark.parametrize("name", ALL)
def test_fixture_facts_agree_with_expected_failures(name: str, trees: dict) -> None:
    root, state = trees[name]
    assert reference_failures(root, state) == EXPECTED_FAILURES[name]


# (profile, path under root, expectation): "absent", "present", "empty-dir" or exact text
DIFFERENCES = [
    ("tdx_bios_off", "sys/module/kvm_intel/parameters/tdx", "N\n"),
    ("hibernation_on", "proc/cmdline", "BOOT_IMAGE=/vmlinuz-6.17.0-5-generic root=/dev/mapper/ubuntu--vg-ubuntu--lv "
                                       "ro kvm_intel.tdx=1 intel_iommu=on iommu=pt quiet splash vt.handoff=7\n"),
    ("kvm_tdx_unset", "proc/cmdline", "BOOT_IMAGE=/vmlinuz-6.17.0-5-generic root=/dev/mapper/ubuntu--vg-ubuntu--lv "
                                      "ro nohibernate intel_iommu=on iommu=pt quiet splash vt.handoff=7\n"),
    ("kvm_tdx_unset", "etc/default/grub", "present"),
    ("no_sgx_devices", "dev/sgx_enclave", "absent"),
    ("no_sgx_devices", "dev/sgx_provision", "absent"),
    ("no_sgx_devices", "run/aesmd/aesm.socket", "absent"),
    ("no_sgx_devices", "sys/module/kvm_intel/parameters/sgx", "N\n"),
    ("iommu_off", "sys/kernel/iommu_groups", "empty-dir"),
    ("iommu_off", "dev/iommu", "absent"),
    ("iommu_off", "dev/vfio/40", "absent"),
    ("iommu_off", "sys/bus/pci/devices/0000:18:00.0/iommu_group", "absent"),
    ("iommu_off", "sys/bus/pci/devices/0000:18:00.0/driver", "absent"),
    ("iommu_off", "sys/class/iommu/dmar0", "absent"),
    ("gpu_nvidia_driver", "dev/vfio/40", "absent"),
    ("gpu_nvidia_driver", "sys/bus/pci/devices/0000:18:00.0/vfio-dev", "absent"),
    ("gpu_nvidia_driver", "sys/bus/pci/drivers/nvidia/0000:18:00.0", "present"),
    ("gpu_nvidia_driver", "sys/module/nvidia/initstate", "live\n"),
    ("no_nvidia_gpu", "sys/bus/pci/devices/0000:18:00.0", "absent"),
    ("golden_h100x2", "proc/cmdline", "BOOT_IMAGE=/boot/vmlinuz-6.8.0-1006-intel "
                                      "root=UUID=135651d7-8961-4488-ac65-186eef7498f1 ro kvm_intel.tdx=1 nohibernate "
                                      "intel_iommu=on iommu=pt\n"),
    ("golden_h100x2", "dev/vfio/40", "present"),
    ("golden_h100x2", "dev/vfio/57", "absent"),
    ("h200x8", "sys/bus/pci/devices/0000:07:00.0/class", "0x068000\n"),
    ("h200x8", "sys/bus/pci/devices/0000:07:00.0/device", "0x22a3\n"),
    ("h200x8", "sys/bus/pci/devices/0000:db:00.0/device", "0x2335\n"),
    ("h200x8", "sys/bus/pci/devices/0000:db:00.0/numa_node", "1\n"),
    ("h200x8", "sys/bus/pci/devices/0000:db:00.0/subsystem_device", "0x18be\n"),
]


@pytest.mark.parametrize(("name", "rel", "expect"), DIFFERENCES)
def test_profile_differences(name: str, rel: str, expect: str, trees: dict) -> None:
    path = trees[name][0] / rel
    if expect == "absent":
        assert not os.path.lexists(path)
    elif expect == "present":
        assert os.path.lexists(path)
    elif expect == "empty-dir":
        assert path.is_dir() and os.listdir(path) == []
    else:
        assert path.read_text() == expect


@pytest.mark.parametrize(("name", "present", "absent"), [
    ("h100x1", {"tdx_host_platform", "sgx", "sgx_lc"}, set()),
    ("tdx_bios_off", {"sgx"}, {"tdx_host_platform"}),
    ("hibernation_on", {"sgx"}, {"tdx_host_platform"}),
    ("kvm_tdx_unset", {"tdx_host_platform"}, set()),
    ("tdx_module_uninitialized", {"tdx_host_platform"}, set()),
    ("no_sgx_devices", {"tdx_host_platform"}, {"sgx", "sgx_lc"}),
])
def test_cpu_flags(name: str, present: set, absent: set, trees: dict) -> None:
    flags = _flags(trees[name][0])
    assert present <= flags and not absent & flags


def test_h200x8_inventory(trees: dict) -> None:
    _root, state = trees["h200x8"]
    gpus, switches = _gpus(state), _switches(state)
    assert [g["bdf"][5:] for g in gpus] == [
        "18:00.0", "2a:00.0", "3a:00.0", "5d:00.0", "9a:00.0", "ab:00.0", "ba:00.0", "db:00.0"]
    assert [s["bdf"][5:] for s in switches] == ["07:00.0", "08:00.0", "09:00.0", "0a:00.0"]
    assert {(d["cc_mode"], d["ppcie_mode"], d["driver"]) for d in gpus + switches} == {("off", "on", "vfio-pci")}
    assert {g["name"] for g in gpus} == {"NVIDIA Corporation GH100 [H200 SXM 141GB]"}
    assert state["gpu_policy"] == "ppcie"
    log = _dmesg(state)
    assert "virt/tdx: BIOS enabled: private KeyID range: [32, 64)" in log
    assert "virt/tdx: TDX-Module initialized" in log


def test_verbatim_dmesg_lines(trees: dict) -> None:
    golden = _dmesg(trees["golden_h100x2"][1])
    for line in ("virt/tdx: BIOS enabled: private KeyID range [32, 64)",
                 "virt/tdx: TDX module: attributes 0x0, vendor_id 0x8086, major_version 1, minor_version 5, "
                 "build_date 20240129, build_num 698",
                 "virt/tdx: CMR: [0x100000, 0x6f800000)", "virt/tdx: 1050644 KB allocated for PAMT",
                 "virt/tdx: module initialized"):
        assert line in golden.split("\n")
    h100 = _dmesg(trees["h100x1"][1]).split("\n")
    assert "virt/tdx: TDX module 1.5.06.00, build number 744, build date 0134d817" in h100
    hib = _dmesg(trees["hibernation_on"][1]).split("\n")
    assert "virt/tdx: initialization failed: Hibernation support is enabled" in hib
    assert "virt/tdx: Disable ACPI S3. Turn off TDX in the BIOS to use ACPI S3." not in hib


# ------------------------------------------------------------------ resolution rules


def _write_profiles(directory: Path, files: dict[str, str]) -> None:
    for name, text in files.items():
        (directory / f"{name}.yml").write_text(text)


MINI_BASE = """
abstract: true
description: base
kernel: {release: r, version: v, cmdline: {boot_image: /b, root: /r, linux: a}, modules: {kvm: {size: 1}}}
cpu: {flags: "fpu sgx tdx_host_platform", bugs: "x tdx_pw_mce", list: [1, 2]}
msr: {values: {}}
sgx: {devices: true}
pccs: {enabled: true}
qemu: {version_text: QEMU emulator version 10.1.0, tdx_guest: true}
iommu: {enabled: true}
device_templates:
  nic: {vendor: "15b3", device: "1021", class: "020000", vendor_name: Mellanox Technologies, iommu_group: 3}
pci_devices:
  "0000:4b:00.0": {template: nic, driver: mlx5_core}
  "0000:4b:00.1": {template: nic}
"""


@pytest.mark.parametrize(("child", "check"), [
    ("extends: _b\ndescription: c\ncpu: {list: [3]}\n", lambda s: s["cpu"]["list"] == [3]),
    ("extends: _b\ndescription: c\ncpu: {flags_remove: [sgx]}\n", lambda s: s["cpu"]["flags"] == "fpu tdx_host_platform"),
    ("extends: _b\ndescription: c\npci_devices: {'0000:4b:00.1': null}\n",
     lambda s: [d["bdf"] for d in s["pci_devices"]] == ["0000:4b:00.0"]),
    ("extends: _b\ndescription: c\npci_devices: {'0000:4b:00.0': {driver: ''}}\n",
     lambda s: s["pci_devices"][0]["driver"] is None),
    ("extends: _b\ndescription: c\nkernel: {modules: {kvm: null}}\n", lambda s: s["kernel"]["modules"] == []),
    ("extends: _b\ndescription: c\niommu: {enabled: false}\n",
     lambda s: [d["iommu_group"] for d in s["pci_devices"]] == [None, None]),
    ("extends: _b\ndescription: c\nkernel: {cmdline: {linux: b c}}\n",
     lambda s: s["kernel"]["cmdline"] == "BOOT_IMAGE=/b root=/r ro b c"),
])
def test_resolution_rules(child: str, check, tmp_path: Path) -> None:
    _write_profiles(tmp_path, {"_b": MINI_BASE, "c": child})
    assert profiles.list_profiles(str(tmp_path)) == ["c"]
    assert check(profiles.build_state("c", "/r", str(tmp_path)))


@pytest.mark.parametrize(("files", "message"), [
    ({"c": "extends: c\n"}, "inheritance loop"),
    ({"c": "extends: _b\ndescription: c\nexpected_failures: [gpu_mode]\n"}, "unknown check names"),
    ({"c": "extends: _b\ndescription: c\npci_devices: {'0000:4c:00.0': {device: '1021', class: '020000', "
           "vendor_name: X}}\n"}, "0000:4c:00.0: missing vendor"),
    ({"c": "extends: _b\ndescription: c\niommu: {enabled: false}\n"
           "pci_devices: {'0000:4b:00.0': {driver: vfio-pci}}\n"}, "without an IOMMU group"),
    ({"c": "extends: _b\ndescription: c\npci_devices: {'0000:4B:00.0': {template: nic}}\n"}, "bad BDF"),
    ({"c": "extends: _b\ndescription: c\ndmesg: {x: ['no timestamp']}\n"}, "without [timestamp]"),
    ({"c": "extends: _missing\n"}, "no profile '_missing'"),
])
def test_resolution_errors(files: dict, message: str, tmp_path: Path) -> None:
    _write_profiles(tmp_path, {"_b": MINI_BASE, **files})
    with pytest.raises(profiles.ProfileError, match=re.escape(message)):
        profiles.build_state("c", "/r", str(tmp_path))


def test_materialize_refuses_a_non_empty_root(tmp_path: Path) -> None:
    (tmp_path / "root").mkdir()
    (tmp_path / "root" / "x").write_text("")
    with pytest.raises(FileExistsError):
        profiles.materialize("h100x1", str(tmp_path / "root"))


def test_set_driver_rebinds_consistently(tmp_path: Path) -> None:
    state = profiles.materialize("h100x1", str(tmp_path / "root"), str(tmp_path / "s.json"))
    root = tmp_path / "root"
    dev = root / "sys/bus/pci/devices/0000:18:00.0"
    profiles.set_driver(state, "0000:18:00.0", "nvidia", str(tmp_path / "s.json"))
    assert os.path.basename(os.readlink(dev / "driver")) == "nvidia"
    assert not os.path.lexists(root / "dev/vfio/40") and not os.path.lexists(dev / "vfio-dev")
    assert os.path.lexists(root / "sys/class/iommu/dmar0")
    saved = {d["bdf"]: d for d in load_active(str(tmp_path / "s.json"))["pci_devices"]}
    assert saved["0000:18:00.0"]["driver"] == "nvidia" and saved["0000:18:00.0"]["vfio_dev"] is None
    profiles.set_driver(state, "0000:18:00.0", "vfio-pci")
    assert os.readlink(dev / "driver") == "../../../../../../bus/pci/drivers/vfio-pci"
    assert stat.S_ISCHR(os.lstat(root / "dev/vfio/40").st_mode)
    assert os.listdir(dev / "vfio-dev") == ["vfio0"]


def test_cli_materialize_and_list(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(SIM_DIR)}
    run = subprocess.run([sys.executable, "-B", "-m", "zerog_sim", "materialize", "--profile", "no_pccs", "--root",
                          str(tmp_path / "root"), "--state", str(tmp_path / "active.json")],
                         capture_output=True, text=True, env=env, check=False)
    assert run.returncode == 0, run.stderr
    state = json.loads((tmp_path / "active.json").read_text())
    assert state["profile"] == "no_pccs" and state["pccs"] == {"enabled": False, "port": 8081}
    assert (tmp_path / "root/proc/cpuinfo").exists()
    listed = subprocess.run([sys.executable, "-B", "-m", "zerog_sim", "list-profiles"], capture_output=True, text=True,
                            env=env, check=True)
    assert listed.stdout.split() == sorted(REQUIRED)
    bad = subprocess.run([sys.executable, "-B", "-m", "zerog_sim", "materialize", "--profile", "nope", "--root",
                          str(tmp_path / "r2"), "--state", str(tmp_path / "s2.json")],
                         capture_output=True, text=True, env=env, check=False)
    assert bad.returncode == 1 and "no profile 'nope'" in bad.stderr


def test_local_host_lays_out_a_host_a_local_connection_can_use(tmp_path):
    sim = profiles.local_host(str(tmp_path), "h100", "h100x1")
    assert sim == {"work": str(tmp_path / "h100"), "root": str(tmp_path / "h100" / "root"),
                   "state": str(tmp_path / "h100" / "active.json"), "bin": str(tmp_path / "h100" / "bin")}
    assert json.loads(Path(sim["state"]).read_text(encoding="utf-8"))
    assert Path(sim["root"], "sys", "bus", "pci", "devices").is_dir()
    tools = sorted(os.listdir(sim["bin"]))
    assert set(os.listdir(profiles.BIN_DIR)) | {"timeout", "python3", "python"} == set(tools)
    for tool in tools:
        assert os.access(os.path.join(sim["bin"], tool), os.X_OK), tool
    with pytest.raises(FileExistsError):
        profiles.local_host(str(tmp_path), "h100", "h100x1")
