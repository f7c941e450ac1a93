"""Write the fixture tree of a simulated host from its active state.

The tree mirrors the real Linux layout under ``state["root"]`` so production code needs only a
root-path prefix: ``proc/`` (cpuinfo, cmdline, version, meminfo, modules, self/limits,
sys/kernel/osrelease), ``sys/`` (PCI devices nested under ``sys/devices/pciDDDD:BB/`` with
``sys/bus/pci/devices/<bdf>`` links, ``driver``/``iommu_group``/``subsystem`` links relative like the
kernel's, ``sys/kernel/iommu_groups``, ``sys/module``, ``sys/class/iommu``, efivars), ``dev/`` (real
character devices made with os.mknod: SGX 10:124-126, kvm 10:232, iommu, vfio, msr), ``etc/``
(os-release, default/grub, sgx_default_qcnl.conf, security/limits.d), ``run/aesmd/aesm.socket``
(a socket inode; ``var/run`` links to ``../run``), ``var/log/mpa_registration.log`` and
``usr/share/ovmf/OVMF.fd``.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
from typing import Any

MISC_MAJOR = 10
SGX_NODES = (("sgx_enclave", 125), ("sgx_provision", 126), ("sgx_vepc", 124))
KVM_MINOR = 232
IOMMUFD_MINOR = 122  # misc dynamic minor: any free number, as on a real host
VFIO_MINOR = 196
VFIO_GROUP_MAJOR = 511  # dynamically allocated char majors on a real host
VFIO_CDEV_MAJOR = 510
MSR_MAJOR = 202
SGX_EFIVAR = "SgxRegistrationStatus-304e0796-d515-4698-ac6e-e76cb1a71c28"
MPA_SUCCESS = "INFO: Registration Flow - PLATFORM_ESTABLISHMENT or TCB_RECOVERY passed successfully."
PCI_DRIVER_FILES = ("bind", "unbind", "new_id", "remove_id", "uevent")


def _makedirs(path: str) -> None:
    if not os.path.isdir(path):
        os.makedirs(path, exist_ok=True)


def _write(root: str, rel: str, text: str | bytes, mode: int = 0o644) -> str:
    path = os.path.join(root, rel)
    _makedirs(os.path.dirname(path))
    data = text.encode() if isinstance(text, str) else text
    with open(path, "wb") as handle:
        handle.write(data)
    os.chmod(path, mode)
    return path


def _symlink(root: str, rel_link: str, rel_target: str) -> None:
    """Create ``root/rel_link`` as a relative symlink to ``root/rel_target``."""
    link = os.path.join(root, rel_link)
    _makedirs(os.path.dirname(link))
    target = os.path.relpath(os.path.join(root, rel_target), os.path.dirname(link))
    os.symlink(target, link)


def _mknod(root: str, rel: str, kind: int, major: int = 0, minor: int = 0, mode: int = 0o600) -> None:
    path = os.path.join(root, rel)
    _makedirs(os.path.dirname(path))
    os.mknod(path, mode | kind, os.makedev(major, minor))
    os.chmod(path, mode)


def cpuinfo_text(cpu: dict[str, Any]) -> str:
    """/proc/cpuinfo in the x86 show_cpuinfo() format, one block per processor."""
    count = int(cpu.get("count", 4))
    cores = int(cpu.get("cores", max(count // 2, 1)))
    threads = max(count // cores, 1)
    blocks = []
    for i in range(count):
        rows = [
            ("processor", str(i)),
            ("vendor_id", cpu.get("vendor_id", "GenuineIntel")),
            ("cpu family", str(cpu.get("family", 6))),
            ("model", str(cpu["model"])),
            ("model name", cpu["model_name"]),
            ("stepping", str(cpu["stepping"])),
            ("microcode", cpu["microcode"]),
            ("cpu MHz", cpu.get("mhz", "2000.000")),
            ("cache size", cpu["cache_size"]),
            ("physical id", "0"),
            ("siblings", str(count)),
            ("core id", str(i // threads)),
            ("cpu cores", str(cores)),
            ("apicid", str(i)),
            ("initial apicid", str(i)),
            ("fpu", "yes"),
            ("fpu_exception", "yes"),
            ("cpuid level", str(cpu.get("cpuid_level", 32))),
            ("wp", "yes"),
            ("flags", cpu["flags"]),
            ("vmx flags", cpu["vmx_flags"]),
            ("bugs", cpu["bugs"]),
            ("bogomips", cpu["bogomips"]),
            ("clflush size", "64"),
            ("cache_alignment", "64"),
            ("address sizes", cpu["address_sizes"]),
        ]
        lines = [f"{key}{chr(9) * (2 if len(key) < 8 else 1)}: {value}" for key, value in rows]
        lines.append("power management:")
        blocks.append("\n".join(lines) + "\n\n")
    return "".join(blocks)


def meminfo_text(mem: dict[str, Any]) -> str:
    """/proc/meminfo with the usual fields (kB fields: label padded to 16, value to 8)."""
    total = int(mem.get("total_kb", 1056474112))
    free = int(mem.get("free_kb", total * 9 // 10))
    hp_total = int(mem.get("hugepages_total", 0))
    hp_free = int(mem.get("hugepages_free", hp_total))
    hp_size = int(mem.get("hugepagesize_kb", 2048))
    kb = [
        ("MemTotal", total),
        ("MemFree", free),
        ("MemAvailable", int(mem.get("available_kb", free + total // 50))),
        ("Buffers", 412316),
        ("Cached", 6153472),
        ("SwapCached", 0),
        ("Active", 3285004),
        ("Inactive", 4012736),
        ("Active(anon)", 1046528),
        ("Inactive(anon)", 0),
        ("Active(file)", 2238476),
        ("Inactive(file)", 4012736),
        ("Unevictable", 30932),
        ("Mlocked", 27860),
        ("SwapTotal", 8388604),
        ("SwapFree", 8388604),
        ("Zswap", 0),
        ("Zswapped", 0),
        ("Dirty", 132),
        ("Writeback", 0),
        ("AnonPages", 762704),
        ("Mapped", 517888),
        ("Shmem", 46724),
        ("KReclaimable", 612448),
        ("Slab", 2418396),
        ("SReclaimable", 612448),
        ("SUnreclaim", 1805948),
        ("KernelStack", 41840),
        ("PageTables", 21536),
        ("SecPageTables", 0),
        ("NFS_Unstable", 0),
        ("Bounce", 0),
        ("WritebackTmp", 0),
        ("CommitLimit", total // 2 + 8388604),
        ("Committed_AS", 5632108),
        ("VmallocTotal", 13743895347199),
        ("VmallocUsed", 1075624),
        ("VmallocChunk", 0),
        ("Percpu", 423936),
        ("HardwareCorrupted", 0),
        ("AnonHugePages", 0),
        ("ShmemHugePages", 0),
        ("ShmemPmdMapped", 0),
        ("FileHugePages", 0),
        ("FilePmdMapped", 0),
        ("Unaccepted", 0),
    ]
    lines = [f"{label + ':':<16}{value:8d} kB" for label, value in kb]
    lines += [
        f"HugePages_Total:   {hp_total:5d}",
        f"HugePages_Free:    {hp_free:5d}",
        "HugePages_Rsvd:        0",
        "HugePages_Surp:        0",
        f"{'Hugepagesize:':<16}{hp_size:8d} kB",
        f"{'Hugetlb:':<16}{hp_total * hp_size:8d} kB",
        f"{'DirectMap4k:':<16}{1425316:8d} kB",
        f"{'DirectMap2M:':<16}{30371840:8d} kB",
        f"{'DirectMap1G:':<16}{max(total - 31797156, 0):8d} kB",
    ]
    return "\n".join(lines) + "\n"


def limits_text(memlock: dict[str, Any]) -> str:
    """/proc/self/limits (the kernel's ``%-25s %-20s %-20s %-10s`` table)."""
    rows = [
        ("Limit", "Soft Limit", "Hard Limit", "Units"),
        ("Max cpu time", "unlimited", "unlimited", "seconds"),
        ("Max file size", "unlimited", "unlimited", "bytes"),
        ("Max data size", "unlimited", "unlimited", "bytes"),
        ("Max stack size", "8388608", "unlimited", "bytes"),
        ("Max core file size", "0", "unlimited", "bytes"),
        ("Max resident set", "unlimited", "unlimited", "bytes"),
        ("Max processes", "1031322", "1031322", "processes"),
        ("Max open files", "1024", "1048576", "files"),
        ("Max locked memory", str(memlock.get("soft", "unlimited")), str(memlock.get("hard", "unlimited")), "bytes"),
        ("Max address space", "unlimited", "unlimited", "bytes"),
        ("Max file locks", "unlimited", "unlimited", "locks"),
        ("Max pending signals", "1031322", "1031322", "signals"),
        ("Max msgqueue size", "819200", "819200", "bytes"),
        ("Max nice priority", "0", "0", ""),
        ("Max realtime priority", "0", "0", ""),
        ("Max realtime timeout", "unlimited", "unlimited", "us"),
    ]
    return "".join(f"{a:<25} {b:<20} {c:<20} {d:<10}\n" for a, b, c, d in rows)


def modules_text(modules: list[dict[str, Any]]) -> str:
    """/proc/modules: ``name size refcount deps state address [taint]``."""
    lines = []
    for mod in modules:
        deps = "".join(f"{d}," for d in mod["used_by"]) or "-"
        line = f"{mod['name']} {mod['size']} {mod['refcount']} {deps} Live 0x0000000000000000"
        if mod.get("taint"):
            line += f" {mod['taint']}"
        lines.append(line)
    return "".join(f"{line}\n" for line in lines)


def grub_text(grub: dict[str, str]) -> str:
    """/etc/default/grub as Ubuntu ships it, with the profile's command-line variables."""
    return (
        "# If you change this file or any /etc/default/grub.d/*.cfg file,\n"
        "# run 'update-grub' afterwards to update /boot/grub/grub.cfg.\n"
        "# For full documentation of the options in these files, see:\n"
        "#   info -f grub -n 'Simple configuration'\n\n"
        "GRUB_DEFAULT=0\nGRUB_TIMEOUT_STYLE=hidden\nGRUB_TIMEOUT=0\n"
        "GRUB_DISTRIBUTOR=`( . /etc/os-release; echo ${NAME:-Ubuntu} ) 2>/dev/null || echo Ubuntu`\n"
        f'GRUB_CMDLINE_LINUX_DEFAULT="{grub["GRUB_CMDLINE_LINUX_DEFAULT"]}"\n'
        f'GRUB_CMDLINE_LINUX="{grub["GRUB_CMDLINE_LINUX"]}"\n'
    )


def loaded_modules(state: dict[str, Any]) -> set[str]:
    """Modules loaded on the host: the profile's plus any the modprobe stand-in loaded since."""
    names = {m["name"] for m in state["kernel"]["modules"]}
    module_dir = os.path.join(state["root"], "sys", "module")
    if os.path.isdir(module_dir):
        names |= {n for n in os.listdir(module_dir) if os.path.exists(os.path.join(module_dir, n, "initstate"))}
    return names


def device_dirs(devices: list[dict[str, Any]]) -> dict[str, str]:
    """Map each BDF to its real directory ``sys/devices/pciDDDD:BB/<ancestors>/<bdf>``."""
    by_bdf = {d["bdf"]: d for d in devices}
    result: dict[str, str] = {}
    for dev in devices:
        chain = [dev["bdf"]]
        while by_bdf[chain[0]].get("parent"):
            chain.insert(0, by_bdf[chain[0]]["parent"])
        top = chain[0]
        result[dev["bdf"]] = os.path.join("sys", "devices", f"pci{top[:7]}", *chain)
    return result


def _pci_device_files(root: str, rel: str, dev: dict[str, Any]) -> None:
    hexfile = {
        "vendor": dev["vendor"],
        "device": dev["device"],
        "class": dev["class"],
        "subsystem_vendor": dev.get("subsystem_vendor") or "0000",
        "subsystem_device": dev.get("subsystem_device") or "0000",
        "revision": dev.get("rev") or "00",
    }
    for name, value in hexfile.items():
        _write(root, os.path.join(rel, name), f"0x{value}\n", 0o444)
    _write(root, os.path.join(rel, "numa_node"), f"{dev['numa_node']}\n")
    _write(root, os.path.join(rel, "driver_override"), "(null)\n")
    _write(root, os.path.join(rel, "enable"), "1\n" if dev.get("in_use") or dev.get("driver") else "0\n", 0o600)
    _write(root, os.path.join(rel, "power", "control"), f"{dev['power_control']}\n")
    _write(root, os.path.join(rel, "power", "runtime_status"), "suspended\n" if dev.get("d_state") == 3 else "active\n", 0o444)
    for name in ("remove", "rescan", "reset"):
        _write(root, os.path.join(rel, name), "", 0o200)
    _symlink(root, os.path.join(rel, "subsystem"), os.path.join("sys", "bus", "pci"))


def rebuild_pci(state: dict[str, Any]) -> None:
    """(Re)create every PCI, IOMMU-group and VFIO part of the tree from ``state``."""
    root = state["root"]
    for rel in ("sys/bus/pci", "sys/kernel/iommu_groups", "dev/vfio"):
        shutil.rmtree(os.path.join(root, rel), ignore_errors=True)
    sys_devices = os.path.join(root, "sys", "devices")
    if os.path.isdir(sys_devices):
        for name in os.listdir(sys_devices):
            if name.startswith("pci"):
                shutil.rmtree(os.path.join(sys_devices, name))
    devices = state["pci_devices"]
    dirs = device_dirs(devices)
    os.makedirs(os.path.join(root, "sys", "kernel", "iommu_groups"), exist_ok=True)
    drivers_dir = os.path.join("sys", "bus", "pci", "drivers")
    os.makedirs(os.path.join(root, "sys", "bus", "pci", "devices"), exist_ok=True)
    for name in ("rescan", "resource_alignment", "drivers_autoprobe", "drivers_probe", "uevent"):
        _write(root, os.path.join("sys", "bus", "pci", name), "1\n" if name == "drivers_autoprobe" else "", 0o644)
    modules = loaded_modules(state)
    bound = {d["driver"] for d in devices if d.get("driver")}
    if "vfio_pci" in modules:
        bound.add("vfio-pci")
    for driver in sorted(bound):
        for name in PCI_DRIVER_FILES:
            _write(root, os.path.join(drivers_dir, driver, name), "", 0o200)
    groups: dict[int, list[dict[str, Any]]] = {}
    for dev in devices:
        rel = dirs[dev["bdf"]]
        _pci_device_files(root, rel, dev)
        _symlink(root, os.path.join("sys", "bus", "pci", "devices", dev["bdf"]), rel)
        if dev.get("driver"):
            _symlink(root, os.path.join(rel, "driver"), os.path.join(drivers_dir, dev["driver"]))
            _symlink(root, os.path.join(drivers_dir, dev["driver"], dev["bdf"]), rel)
        if dev.get("iommu_group") is not None:
            group = int(dev["iommu_group"])
            groups.setdefault(group, []).append(dev)
            group_rel = os.path.join("sys", "kernel", "iommu_groups", str(group))
            _symlink(root, os.path.join(rel, "iommu_group"), group_rel)
            _symlink(root, os.path.join(group_rel, "devices", dev["bdf"]), rel)
        if dev.get("vfio_dev") and state["iommu"].get("iommufd"):
            minor = int(dev["vfio_dev"][4:])
            _write(root, os.path.join(rel, "vfio-dev", dev["vfio_dev"], "dev"), f"{VFIO_CDEV_MAJOR}:{minor}\n", 0o444)
            _mknod(root, os.path.join("dev", "vfio", "devices", dev["vfio_dev"]), stat.S_IFCHR, VFIO_CDEV_MAJOR, minor)
    for group in groups:
        _write(
            root,
            os.path.join("sys", "kernel", "iommu_groups", str(group), "type"),
            f"{state['iommu'].get('group_type', 'DMA-FQ')}\n",
        )
    if "vfio" in modules or any(d.get("driver") == "vfio-pci" for d in devices):
        _mknod(root, os.path.join("dev", "vfio", "vfio"), stat.S_IFCHR, MISC_MAJOR, VFIO_MINOR, 0o666)
    vfio_groups = sorted(g for g, members in groups.items() if any(m.get("driver") == "vfio-pci" for m in members))
    for minor, group in enumerate(vfio_groups):
        _mknod(root, os.path.join("dev", "vfio", str(group)), stat.S_IFCHR, VFIO_GROUP_MAJOR, minor)


def build_tree(state: dict[str, Any]) -> None:
    """Create the whole fixture tree under ``state["root"]`` (which must be absent or empty)."""
    root = state["root"]
    if os.path.exists(root) and os.listdir(root):
        raise FileExistsError(f"fixture root {root} exists and is not empty")
    os.makedirs(root, exist_ok=True)
    kernel = state["kernel"]
    # /proc
    _write(root, "proc/cpuinfo", cpuinfo_text(state["cpu"]), 0o444)
    _write(root, "proc/cmdline", kernel["cmdline"] + "\n", 0o444)
    _write(root, "proc/version", kernel["version"] + "\n", 0o444)
    _write(root, "proc/sys/kernel/osrelease", kernel["release"] + "\n", 0o444)
    _write(root, "proc/sys/kernel/dmesg_restrict", f"{kernel['dmesg_restrict']}\n")
    _write(root, "proc/meminfo", meminfo_text(state["memory"]), 0o444)
    _write(root, "proc/modules", modules_text(kernel["modules"]), 0o444)
    _write(root, "proc/self/limits", limits_text(state["memlock"]), 0o444)
    # /sys/module
    for mod in kernel["modules"]:
        _write(root, f"sys/module/{mod['name']}/initstate", "live\n", 0o444)
        _write(root, f"sys/module/{mod['name']}/refcnt", f"{mod['refcount']}\n", 0o444)
    for param, value in kernel["kvm_intel"].items():
        _write(root, f"sys/module/kvm_intel/parameters/{param}", f"{value}\n", 0o444)
    rebuild_pci(state)
    iommu = state["iommu"]
    os.makedirs(os.path.join(root, "sys", "kernel", "iommu_groups"), exist_ok=True)  # empty when IOMMU is off
    os.makedirs(os.path.join(root, "sys", "class", "iommu"), exist_ok=True)
    if iommu.get("enabled"):
        for unit in range(int(iommu.get("dmar_units", 2))):
            _write(root, f"sys/devices/virtual/iommu/dmar{unit}/uevent", "")
            _symlink(root, f"sys/class/iommu/dmar{unit}", f"sys/devices/virtual/iommu/dmar{unit}")
    sgx = state["sgx"]
    os.makedirs(os.path.join(root, "sys", "firmware", "efi", "efivars"), exist_ok=True)
    if sgx.get("registration"):
        _write(root, f"sys/firmware/efi/efivars/{SGX_EFIVAR}", b"\x07\x00\x00\x00\x01", 0o644)
        _write(root, "var/log/mpa_registration.log", MPA_SUCCESS + "\n")
    # /dev
    if sgx.get("devices"):
        for name, minor in SGX_NODES:
            _mknod(root, f"dev/{name}", stat.S_IFCHR, MISC_MAJOR, minor, 0o660)
    _mknod(root, "dev/kvm", stat.S_IFCHR, MISC_MAJOR, KVM_MINOR, 0o660)
    if iommu.get("iommufd"):
        _mknod(root, "dev/iommu", stat.S_IFCHR, MISC_MAJOR, IOMMUFD_MINOR, 0o660)
    if state["msr"]["module_loaded"]:
        for cpu in range(int(state["cpu"].get("count", 4))):
            _mknod(root, f"dev/cpu/{cpu}/msr", stat.S_IFCHR, MSR_MAJOR, cpu, 0o600)
    # /etc
    if state.get("os_release"):
        _write(root, "etc/os-release", state["os_release"])
    _write(root, "etc/default/grub", grub_text(kernel["grub"]))
    if sgx.get("qcnl") is not None:
        _write(root, "etc/sgx_default_qcnl.conf", json.dumps(sgx["qcnl"], indent=2) + "\n")
    if state["memlock"].get("limits_d"):
        _write(root, "etc/security/limits.d/99-tdx-memlock.conf", "* soft memlock unlimited\n* hard memlock unlimited\n")
    # /run, /var, /usr
    os.makedirs(os.path.join(root, "run"), exist_ok=True)
    os.makedirs(os.path.join(root, "var"), exist_ok=True)
    os.symlink("../run", os.path.join(root, "var", "run"))
    if sgx.get("aesmd_socket"):
        _mknod(root, "run/aesmd/aesm.socket", stat.S_IFSOCK, mode=0o777)
    if state.get("ovmf"):
        _write(root, "usr/share/ovmf/OVMF.fd", "zerog-sim placeholder for a TDX-capable OVMF (TDVF) image\n")
