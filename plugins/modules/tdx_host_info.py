#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: read-only checks of an Intel TDX host (CPU, BIOS, kernel, SGX, IOMMU, QEMU)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: tdx_host_info
short_description: Check that a host can run Intel TDX confidential VMs
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Reads, in one round trip, everything that decides whether a host can run TDX confidential VMs
    with NVIDIA GPUs passed through by private-ml-sdk's C(dstack). It reads CPU flags, the C(kvm_intel)
    C(tdx) parameter, the TDX lines of the kernel log, the kernel command line and release, MSRs
    (when C(rdmsr) is installed and the C(msr) module is loaded), SGX device nodes, platform
    registration and the QCNL configuration, the PCCS, IOMMU groups and C(/dev/iommu), the QEMU
    version and its C(tdx-guest) support, the memlock limit, free disk space and memory.
  - Returns one result per check, each with what was found and how to fix a failure, and the raw
    facts. A check that cannot be evaluated (for example the MSR checks without C(rdmsr)) has
    C(ok) V(null); it is neither passed nor failed.
  - Never changes anything. The only network traffic is one TCP connection to the PCCS address
    (from the C(pccs_url) of C(/etc/sgx_default_qcnl.conf), or O(pccs_address)).
  - The kernel log is read with C(dmesg), or with C(journalctl -k -b) when C(dmesg) is not permitted.
    Run with C(become) to read the kernel log and the MSRs.
options:
  root:
    description:
      - Directory under which every file of the host is read (C(<root>/proc/cpuinfo),
        C(<root>/sys/...), C(<root>/dev/...), C(<root>/etc/sgx_default_qcnl.conf), ...).
      - Symbolic links below it are resolved inside it. Commands still run on the host itself.
    type: path
    default: /
  qemu_binary:
    description:
      - The QEMU to check. By default C(/usr/bin/qemu-system-x86_64), where dstack expects it,
        and then C(qemu-system-x86_64) on E(PATH).
    type: path
  gpu_passthrough:
    description:
      - Whether the host must pass GPUs through to TDs. Raises the minimum kernel
        (Canonical C(-intel) 6.14 instead of 6.8) and QEMU (9.2.1 instead of 8.2.2).
    type: bool
    default: true
  vmm_user:
    description:
      - The user that runs QEMU, whose C(memlock) limit is checked.
    type: str
    default: root
  pccs_address:
    description:
      - C(host:port) of the PCCS to test, instead of the one in the C(pccs_url) of
        C(<root>/etc/sgx_default_qcnl.conf).
    type: str
  pccs_timeout:
    description:
      - Seconds to wait for the TCP connection to the PCCS.
    type: float
    default: 3
  disk:
    description:
      - Free space needed on the filesystems of given paths (for example the SDK and the VM directories).
        A path that does not exist yet is measured at its nearest existing parent.
    type: list
    elements: dict
    default: [{path: /, min_free_gib: 50}]
    suboptions:
      path:
        description: Absolute path on the host.
        type: str
        required: true
      min_free_gib:
        description: Free space needed, in GiB.
        type: float
        required: true
  min_memory_gib:
    description:
      - Memory the host needs (compared with C(MemTotal) of C(/proc/meminfo)), in GiB.
    type: float
    default: 64
  command_timeout:
    description:
      - Seconds after which each command is stopped.
    type: int
    default: 30
extends_documentation_fragment:
  - zerog.compute.attributes.read_only
notes:
  - Check names follow the host-check reference of the collection; C(pccs_reachable), C(disk_free)
    and C(memory) are added. BIOS settings cannot be read from the OS; they are inferred from MSRs
    and kernel messages.
seealso:
  - module: zerog.compute.dstack_gpu_info
  - name: Canonical TDX host setup
    description: BIOS settings, kernels and QEMU for TDX hosts.
    link: https://github.com/canonical/tdx
"""

EXAMPLES = r"""
- name: Check the TDX host
  become: true
  zerog.compute.tdx_host_info:
    disk:
      - {path: /opt/private-ml-sdk, min_free_gib: 150}
      - {path: /var/lib/dstack, min_free_gib: 100}
    min_memory_gib: 256
  register: tdx

- name: Show what failed
  ansible.builtin.debug:
    msg: "{{ tdx.checks | selectattr('ok', 'false') | map(attribute='name') | list }}"
"""

RETURN = r"""
checks:
  description:
    - One entry per check, in a fixed order.
  returned: always
  type: list
  elements: dict
  contains:
    name:
      description: >-
        Check name: V(cpu_tdx_host_flag), V(tdx_bios_keyids), V(tdx_module_initialized), V(kvm_tdx_param),
        V(cmdline_nohibernate), V(cmdline_kvm_tdx), V(tme_enabled), V(seamrr_enabled), V(sgx_mcheck),
        V(production_platform), V(kernel_version), V(memlock), V(sgx_devices), V(sgx_bios), V(sgx_registration),
        V(qcnl_config), V(aesmd), V(pccs_reachable), V(iommu_enabled), V(iommufd), V(qemu_tdx), V(libvirt_tdx),
        V(ovmf_tdvf), V(disk_free), V(memory).
      type: str
      sample: tdx_module_initialized
    ok:
      description: V(true) passed, V(false) failed, V(null) not evaluated.
      type: bool
      sample: false
    severity:
      description: V(required) (a failure stops the host), V(recommended) or V(info).
      type: str
      sample: required
    detail:
      description: What was found.
      type: str
      sample: "The kernel reports: virt/tdx: module initialization failed (-5)."
    remediation:
      description: How to fix a failure.
      type: str
      sample: Enable the SEAM Loader in the BIOS, update the BIOS or the TDX module and boot with kvm_intel.tdx=1.
facts:
  description: The raw facts the checks were computed from.
  returned: always
  type: dict
  contains:
    cpu:
      description: C(flags) and C(bugs) of the first CPU, and its model name.
      type: dict
    cmdline:
      description: The kernel command line and the settings read from it.
      type: dict
    kernel:
      description: C(release), C(version) (list of int) and C(flavour) (V(intel), V(generic), ...).
      type: dict
    kvm_intel:
      description: C(tdx) and C(sgx) parameters of kvm_intel (V(null) when missing).
      type: dict
    kernel_log:
      description: Source (V(dmesg), V(journalctl) or V(null)), TDX lines, KeyID range, module state and version.
      type: dict
    msr:
      description: MSR values read with C(rdmsr -u) (decimal), and why they are missing if they are.
      type: dict
    sgx:
      description: Device nodes, registration evidence and the aesmd socket.
      type: dict
    qcnl:
      description: The parsed C(/etc/sgx_default_qcnl.conf) and the PCCS address.
      type: dict
    iommu:
      description: IOMMU group names, C(/dev/iommu), and the vfio-dev device of each device bound to vfio-pci.
      type: dict
    qemu:
      description: Binary, version line, parsed version and C(tdx-guest) support.
      type: dict
    memlock:
      description: Limits from the pam limits files and of the module's own process.
      type: dict
    memory:
      description: C(mem_total) and C(mem_available) in bytes.
      type: dict
    disk:
      description: Per path, the free bytes and where they were measured.
      type: list
      elements: dict
  sample:
    kernel: {release: 6.8.0-1028-intel, version: [6, 8, 0], flavour: intel}
"""

import socket
import stat

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.zerog.compute.plugins.module_utils import _tdx as tdx
from ansible_collections.zerog.compute.plugins.module_utils._command import CommandFailed, Tool, ToolMissing

QEMU_DIRS = ["/usr/bin"]


def read_kernel_log(module, timeout):
    """(text, source, reason): dmesg, else journalctl -k -b."""
    reasons = []
    for name, args in (("dmesg", []), ("journalctl", ["-k", "-b", "--no-pager"])):
        tool = Tool(module, name, timeout=timeout)
        try:
            rc, out, err = tool.run(args, what=f"Reading the kernel log with {name}", ok_rcs=None)
        except (ToolMissing, CommandFailed) as exc:
            reasons.append(str(exc))
            continue
        if rc == 0 and out.strip():
            return out, name, None
        last = (err or out or "").strip().splitlines()
        reasons.append(f"{name} exited with rc {rc}" + (f" ({last[-1]})" if last else ""))
    return None, None, "; ".join(reasons)


def read_msrs(module, timeout):
    """MSR values by name (decimal), plus ``_reason`` when some could not be read."""
    tool = Tool(module, "rdmsr", timeout=timeout)
    if not tool.available():
        return {"_reason": "rdmsr is not installed (package msr-tools)"}
    values = {}
    for key, register, field in tdx.MSR_READS:
        try:
            rc, out, err = tool.run(tdx.rdmsr_args(register, field), what="Reading an MSR", ok_rcs=None)
        except CommandFailed as exc:
            values.setdefault("_errors", {})[key] = exc.message
            continue
        value, reason, no_device = tdx.parse_rdmsr(rc, out, err)
        if no_device:
            return {"_reason": f"{reason} (load the msr kernel module: modprobe msr)"}
        if value is None:
            values.setdefault("_errors", {})[key] = reason
        values[key] = value
    if values.get("_errors"):
        values["_reason"] = "; ".join(f"{k}: {v}" for k, v in values["_errors"].items())
    return values


def read_qemu(module, binary, timeout):
    """QEMU binary, version and tdx-guest support."""
    tool = Tool(module, "qemu-system-x86_64", path=binary, option="qemu_binary", search_paths=QEMU_DIRS,
                timeout=timeout)
    try:
        path = tool.path
        _rc, out, _err = tool.run(["--version"], what="Reading the QEMU version")
        _rc, types_out, _err = tool.run(["-object", "help"], what="Listing QEMU object types")
    except (ToolMissing, CommandFailed) as exc:
        return {"binary": binary or "qemu-system-x86_64", "error": str(exc), "text": None, "version": None,
                "package": None, "tdx_guest": False}
    info = tdx.parse_qemu_version(out)
    info["binary"] = path
    info["tdx_guest"] = "tdx-guest" in tdx.parse_object_types(types_out)
    info["error"] = None
    return info


def read_libvirt(module, timeout):
    tool = Tool(module, "virsh", timeout=timeout)
    if not tool.available():
        return None
    try:
        _rc, out, _err = tool.run(["domcapabilities"], what="Reading libvirt domain capabilities")
    except CommandFailed as exc:
        return {"error": exc.message}
    return tdx.parse_domcapabilities(out)


def read_registration(module, fs, timeout):
    """mpa_manage output, the MPA log and the SgxRegistrationStatus UEFI variables."""
    mpa_out = None
    tool = Tool(module, "mpa_manage", timeout=timeout)
    if tool.available():
        try:
            _rc, mpa_out, _err = tool.run(["-get_registration_status"], what="Reading the SGX registration status")
        except CommandFailed:
            mpa_out = None
    log_text = fs.read("/var/log/mpa_registration.log")
    efivars = None
    if fs.is_dir("/sys/firmware/efi/efivars"):
        efivars = fs.glob_prefix("/sys/firmware/efi/efivars", "SgxRegistrationStatus-")
    return mpa_out, log_text, efivars


def tcp_probe(host, port, timeout):
    """None when a TCP connection to host:port succeeds, else the reason."""
    try:
        conn = socket.create_connection((host, port), timeout=timeout)
    except OSError as exc:
        return exc.strerror or str(exc)
    conn.close()
    return None


def memlock_files(fs):
    files = []
    main_text = fs.read("/etc/security/limits.conf")
    if main_text is not None:
        files.append(("/etc/security/limits.conf", main_text))
    for name in fs.listdir("/etc/security/limits.d") or []:
        if name.endswith(".conf"):
            path = f"/etc/security/limits.d/{name}"
            files.append((path, fs.read(path, "")))
    return files


def main():
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "default": "/"},
            "qemu_binary": {"type": "path"},
            "gpu_passthrough": {"type": "bool", "default": True},
            "vmm_user": {"type": "str", "default": "root"},
            "pccs_address": {"type": "str"},
            "pccs_timeout": {"type": "float", "default": 3},
            "disk": {"type": "list", "elements": "dict", "default": [{"path": "/", "min_free_gib": 50}],
                     "options": {"path": {"type": "str", "required": True},
                                 "min_free_gib": {"type": "float", "required": True}}},
            "min_memory_gib": {"type": "float", "default": 64},
            "command_timeout": {"type": "int", "default": 30},
        },
        supports_check_mode=True,
    )
    p = module.params
    fs = tdx.HostFS(p["root"])
    timeout = p["command_timeout"]
    gpu = p["gpu_passthrough"]

    pccs_override = None
    if p["pccs_address"]:
        pccs_override = tdx.parse_address(p["pccs_address"])
        if pccs_override[0] is None:
            module.fail_json(msg=f"pccs_address {p['pccs_address']!r} is not host:port.")
    for item in p["disk"]:
        if not item["path"].startswith("/"):
            module.fail_json(msg=f"disk path {item['path']!r} must be absolute.")

    cpu = tdx.parse_cpuinfo(fs.read("/proc/cpuinfo"))
    cmdline_text = fs.read("/proc/cmdline")
    cmdline = tdx.parse_cmdline(cmdline_text) if cmdline_text is not None else None
    release = fs.read_value("/proc/sys/kernel/osrelease")
    kernel = tdx.parse_kernel_release(release)
    kvm = {"tdx": tdx.read_sysfs_bool(fs, "/sys/module/kvm_intel/parameters/tdx"),
           "sgx": tdx.read_sysfs_bool(fs, "/sys/module/kvm_intel/parameters/sgx")}

    log_text, log_source, log_reason = read_kernel_log(module, timeout)
    log = tdx.parse_kernel_log(log_text) if log_text is not None else None
    msr = read_msrs(module, timeout)
    qemu = read_qemu(module, p["qemu_binary"], timeout)
    libvirt = read_libvirt(module, timeout)
    mpa_out, mpa_log, efivars = read_registration(module, fs, timeout)

    sgx_nodes = {name: tdx.char_device(fs.stat(f"/dev/{name}"), major=10)
                 for name in ("sgx_enclave", "sgx_provision", "sgx_vepc")}
    sock_path = "/var/run/aesmd/aesm.socket"
    sock_stat = fs.stat(sock_path)
    aesmd = {"path": sock_path, "is_socket": sock_stat is not None and stat.S_ISSOCK(sock_stat.st_mode)}

    qcnl = tdx.parse_qcnl(fs.read("/etc/sgx_default_qcnl.conf"))
    address = pccs_override or ((qcnl["pccs_host"], qcnl["pccs_port"]) if qcnl["pccs_host"] and qcnl["pccs_port"]
                                else None)
    pccs_result = tcp_probe(address[0], address[1], p["pccs_timeout"]) if address else None

    groups = fs.listdir("/sys/kernel/iommu_groups")
    dev_iommu = tdx.char_device(fs.stat("/dev/iommu"))
    cdevs = tdx.vfio_cdevs(fs)

    limits = tdx.parse_limits_memlock(memlock_files(fs), p["vmm_user"])
    proc_limits = tdx.parse_proc_limits(fs.read("/proc/self/limits"))
    meminfo = tdx.parse_meminfo(fs.read("/proc/meminfo"))
    disk = []
    for item in p["disk"]:
        measured_at, free = fs.free_bytes(item["path"])
        disk.append({"path": item["path"], "min_free_gib": item["min_free_gib"], "measured_at": measured_at,
                     "free_bytes": free})
    ovmf = next((path for path in tdx.OVMF_PATHS if fs.exists(path)), None)

    checks = [
        tdx.check_cpu_flag(cpu),
        tdx.check_keyids(log, msr),
        tdx.check_module_initialized(log),
        tdx.check_kvm_param(kvm["tdx"]),
        tdx.check_nohibernate(cmdline, log),
        tdx.check_cmdline_kvm(cmdline, kvm["tdx"]),
        tdx.check_msr_bit("tme_enabled", msr, "tme_activate_enable", 1, "MSR 0x982[1] (TME enable)",
                          log_fact=None if log is None else log["tme"],
                          log_detail={True: "The kernel reports 'x86/tme: enabled by BIOS' (MSR not read).",
                                      False: "The kernel reports 'x86/tme: not enabled by BIOS'."}),
        tdx.check_msr_bit("seamrr_enabled", msr, "seamrr_enable", 1, "MSR 0x1401[11] (SEAMRR enable)"),
        tdx.check_sgx_mcheck(msr),
        tdx.check_msr_bit("production_platform", msr, "pre_production", 0, "MSR 0xce[27] (pre-production)"),
        tdx.check_kernel(release, gpu),
        tdx.check_memlock(limits, proc_limits, p["vmm_user"]),
        tdx.check_sgx_devices(sgx_nodes),
        tdx.check_sgx_bios(cpu, log, msr),
        tdx.check_sgx_registration(mpa_out, mpa_log, efivars),
        tdx.check_qcnl(qcnl),
        tdx.check_aesmd(aesmd),
        tdx.check_pccs(address, pccs_result),
        tdx.check_iommu(groups, cmdline, log),
        tdx.check_iommufd(dev_iommu, cdevs),
        tdx.check_qemu(qemu, gpu),
        tdx.check_libvirt(libvirt),
        tdx.check_ovmf(ovmf),
        tdx.check_disk(disk),
        tdx.check_memory(meminfo, p["min_memory_gib"]),
    ]

    log_facts = {"source": log_source, "error": log_reason}
    if log is not None:
        log_facts.update(log)
    facts = {
        "cpu": {"flags": cpu["flags"], "bugs": cpu["bugs"], "model_name": cpu["model_name"]},
        "cmdline": cmdline,
        "kernel": kernel,
        "kvm_intel": kvm,
        "kernel_log": log_facts,
        "msr": {k: v for k, v in msr.items() if k != "_errors"},
        "sgx": {"devices": sgx_nodes, "aesmd_socket": aesmd, "efivars_registration": efivars,
                "mpa_registration_log": mpa_log is not None},
        "qcnl": qcnl,
        "pccs": {"address": f"{address[0]}:{address[1]}" if address else None, "error": pccs_result},
        "iommu": {"groups": groups or [], "dev_iommu": dev_iommu, "vfio_cdevs": cdevs,
                  "intel_iommu_on": cmdline["intel_iommu_on"] if cmdline else None},
        "qemu": qemu,
        "libvirt": libvirt,
        "ovmf": ovmf,
        "memlock": {"limits": limits, "process": proc_limits},
        "memory": meminfo,
        "disk": disk,
    }
    module.exit_json(changed=False, checks=checks, facts=facts)


if __name__ == "__main__":
    main()
