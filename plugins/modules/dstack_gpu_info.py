#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: NVIDIA GPUs and NVSwitches of a TDX host, ready for dstack pass-through."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dstack_gpu_info
short_description: Discover NVIDIA H100/H200 GPUs and NVSwitches for dstack confidential VMs
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Lists the NVIDIA GPUs and NVSwitches of the host from sysfs (vendor C(10de); H100 SXM/PCIe/NVL,
    H200 SXM/NVL and the H100 NVSwitch; other NVIDIA GPUs are listed as unsupported) with their
    PCI address, model, NUMA node, IOMMU group and the drivers of its members, and the bound driver.
  - Reads the confidential-computing (CC) and protected-PCIe (PPCIe) mode of each device with
    NVIDIA's C(nvidia_gpu_tools.py) when O(nvtools_path) is given; without it the modes are
    unknown and the mode checks are not evaluated. The tool's output is matched on PCI address,
    device id and mode, not on the GPU name, which differs between tool versions. Two or more
    devices of a kind are asked in one run (C(--devices gpus), C(--devices nvswitches)); a device
    that run leaves without its modes, and every device when one of its kind is held by the
    nvidia driver or is an unsupported NVIDIA device, is asked on its own (C(--gpu-bdf)).
  - With O(sdk_dir), runs that private-ml-sdk checkout's C(dstack lsgpu), parses both of its output
    generations, and reports where it disagrees with sysfs.
  - Checks the host against the GPU mode policy (single-GPU CVMs, or HGX 8-GPU PPCIe) and returns
    RV(cvm_gpus), the list of slots ready to give to a CVM.
  - Never changes anything (it only queries modes; it never sets them).
options:
  root:
    description:
      - Directory under which sysfs and C(/proc/modules) are read (C(<root>/sys/bus/pci/devices/...)).
        Symbolic links below it are resolved inside it. Commands still run on the host itself.
    type: path
    default: /
  nvtools_path:
    description:
      - Path of NVIDIA's C(nvidia_gpu_tools.py) (gpu-admin-tools, or nvtrust's C(host_tools/python)).
      - When omitted, the CC and PPCIe modes are reported as unknown.
    type: path
  sdk_dir:
    description:
      - A private-ml-sdk checkout; its C(meta-dstack-nvidia/scripts/bin/dstack lsgpu) is run and compared
        with sysfs.
    type: path
  policy:
    description:
      - The GPU mode policy to check.
      - V(single) means one GPU per CVM, so every GPU must have CC mode on and PPCIe mode off.
      - V(ppcie) means an HGX board given whole to one CVM. All 8 GPUs and all 4 NVSwitches must have
        PPCIe mode on, and every GPU CC mode off.
      - V(auto) picks V(ppcie) when any device reports PPCIe mode on, else V(single).
    type: str
    choices: [auto, single, ppcie]
    default: auto
  allow_cc_devtools:
    description:
      - Accept CC mode C(devtools) (debug mode, not for production) as CC on.
    type: bool
    default: false
  command_timeout:
    description:
      - Seconds after which each command is stopped.
    type: int
    default: 120
extends_documentation_fragment:
  - zerog.compute.attributes.read_only
notes:
  - Run with C(become), because C(nvidia_gpu_tools.py) needs root.
  - A GPU is passthrough-ready when it is bound to C(vfio-pci), has a VFIO character device, every
    other member of its IOMMU group is a bridge or bound to C(vfio-pci), C(pci-stub), C(pcieport) or
    no driver, and its modes fit the policy.
seealso:
  - module: zerog.compute.tdx_host_info
  - name: NVIDIA gpu-admin-tools
    description: The tool that queries and sets the CC and PPCIe modes.
    link: https://github.com/NVIDIA/gpu-admin-tools
"""

EXAMPLES = r"""
- name: Discover GPUs and their CC mode
  become: true
  zerog.compute.dstack_gpu_info:
    nvtools_path: /opt/gpu-admin-tools/nvidia_gpu_tools.py
    sdk_dir: /opt/private-ml-sdk
  register: gpu

- name: Pass the ready GPUs to the CVM
  ansible.builtin.debug:
    msg: "dstack new ... {{ gpu.cvm_gpus | map('regex_replace', '^', '-g ') | join(' ') }}"
"""

RETURN = r"""
gpus:
  description: Supported GPUs, by PCI address.
  returned: always
  type: list
  elements: dict
  contains:
    bdf:
      description: Full PCI address.
      type: str
      sample: "0000:18:00.0"
    slot:
      description: The address as dstack takes it (domain 0000 left out).
      type: str
      sample: "18:00.0"
    device_id:
      description: PCI device id (hex, no prefix).
      type: str
      sample: "2335"
    family:
      description: V(H100) or V(H200) (V(NVSwitch) for switches).
      type: str
    model:
      description: Model name.
      type: str
      sample: H200 SXM 141GB
    form_factor:
      description: V(sxm), V(pcie) (V(hgx) for switches).
      type: str
    numa_node:
      description: NUMA node (V(-1) when the platform has none).
      type: int
    iommu_group:
      description: IOMMU group number, V(null) when the IOMMU is off.
      type: int
    group_members:
      description: Every device of the IOMMU group with its driver, class and whether it keeps the group viable for VFIO.
      type: list
      elements: dict
    driver:
      description: Bound driver (V(vfio-pci), V(nvidia), ...), V(null) when none.
      type: str
    vfio_dev:
      description: The VFIO character device (C(vfio0)) when bound to vfio-pci.
      type: str
    cc_mode:
      description: V(on), V(off), V(devtools), another tool state, or V(null) when unknown.
      type: str
    ppcie_mode:
      description: V(on), V(off) or V(null) when unknown (older tools cannot query it).
      type: str
    mode_error:
      description: Why C(nvidia_gpu_tools.py) could not report the modes (the mode checks then fail).
      type: str
    mode_unknown:
      description: Why a mode is not known without an error (tool not given, or too old for PPCIe).
      type: str
    passthrough_ready:
      description: Whether the device can be given to a CVM under the policy now.
      type: bool
    not_ready_reasons:
      description: Why it cannot.
      type: list
      elements: str
nvswitches:
  description: NVSwitches, with the same keys as RV(gpus) (C(cc_mode) is always V(null)).
  returned: always
  type: list
  elements: dict
unsupported:
  description: NVIDIA GPUs and switches whose device id is not supported, with the reason.
  returned: always
  type: list
  elements: dict
policy:
  description: The policy checked (V(single) or V(ppcie)).
  returned: always
  type: str
cvm_gpus:
  description:
    - Slots to pass to the CVM (dstack C(-g)). With V(single), the ready GPUs. With V(ppcie), all GPUs and NVSwitches when
      every one is ready, else none.
  returned: always
  type: list
  elements: str
  sample: ["18:00.0", "2a:00.0"]
nvidia_modules:
  description: NVIDIA kernel modules loaded on the host (should be none).
  returned: always
  type: list
  elements: str
nvtools:
  description: C(path), C(version) of C(nvidia_gpu_tools.py) and C(skipped) (why modes were not read).
  returned: always
  type: dict
lsgpu:
  description:
    - With O(sdk_dir), the parsed C(dstack lsgpu) output (C(generation) V(0.3) or V(0.5), C(devices)) and the
      comparison with sysfs (C(missing_in_lsgpu), C(extra_in_lsgpu), C(numa_mismatch), C(agrees)), or C(error).
  returned: when O(sdk_dir) is set
  type: dict
checks:
  description:
    - V(gpu_present), V(nvswitch_present), V(gpu_iommu_group), V(gpu_driver_vfio), V(host_no_nvidia_driver),
      V(gpu_cc_mode), V(gpu_ppcie_mode) and V(dstack_lsgpu), each with C(name), C(ok) (V(null) when not
      evaluated), C(severity), C(detail) and C(remediation), as in M(zerog.compute.tdx_host_info).
  returned: always
  type: list
  elements: dict
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.zerog.compute.plugins.module_utils import _gpu as gpu
from ansible_collections.zerog.compute.plugins.module_utils._command import CommandFailed, Tool, ToolMissing
from ansible_collections.zerog.compute.plugins.module_utils._tdx import HostFS

DSTACK_SCRIPT = "meta-dstack-nvidia/scripts/bin/dstack"
NO_PPCIE = "this nvidia_gpu_tools.py version cannot query the PPCIe mode"


def query_modes(module, path, devices, timeout, unsupported=()):
    """Ask nvidia_gpu_tools.py for the modes of each (device, kind).

    Sets ``cc_mode``/``ppcie_mode`` from what the tool printed; ``mode_error`` when the tool
    failed for the device (the mode cannot be established), ``mode_unknown`` when this tool
    version cannot report the PPCIe mode. Several devices of a kind are asked in one run
    (``--devices gpus`` / ``--devices nvswitches``) when the tool can select them all; a device
    that run left without its modes (the tool stops at the first device it fails on) is then
    asked on its own, which names its error. Returns {path, version, skipped}.
    """
    tool = Tool(module, "nvidia_gpu_tools.py", path=path, option="nvtools_path", timeout=timeout)
    state = {"path": path, "version": None, "skipped": None}
    try:
        tool.path  # noqa: B018 - validates the explicit path (absolute)
    except ToolMissing as exc:
        state["skipped"] = str(exc)
        return state
    if not os.path.isfile(path):
        state["skipped"] = f"nvidia_gpu_tools.py not found at {path} (option nvtools_path), CC and PPCIe modes unknown."
        return state
    ppcie = {"supported": True}
    done = set()
    for kind, selector in (("gpu", "gpus"), ("nvswitch", "nvswitches")):
        group = [dev for dev, k in devices if k == kind]
        if _batchable(group, kind, unsupported) and (kind == "gpu" or ppcie["supported"]):
            parsed = _query(tool, ["--devices", selector], kind, ppcie, f"Querying the modes of the {selector}")
            if parsed is not None:
                state["version"] = state["version"] or parsed["version"]
                for dev in group:
                    if _apply(dev, kind, parsed["modes"].get(dev["bdf"]), ppcie["supported"]):
                        done.add(dev["bdf"])
    for dev, kind in devices:
        if dev["bdf"] in done:
            continue
        if kind == "nvswitch" and not ppcie["supported"]:
            dev["mode_unknown"] = NO_PPCIE
            continue
        if dev["driver"] == "nvidia":
            # the tool aborts on such a GPU unless told to ignore the driver, which is unsafe
            dev["mode_error"] = "the host nvidia driver uses it, and nvidia_gpu_tools.py refuses such a GPU"
            continue
        rc, parsed = _query_one(tool, dev, kind, ppcie)
        if parsed is None:
            continue
        state["version"] = state["version"] or parsed["version"]
        found = parsed["modes"].get(dev["bdf"], {})
        if found and found["device_id"] != dev["device_id"]:
            dev["mode_error"] = f"the tool reported device id {found['device_id']} for {dev['bdf']}"
            continue
        _apply(dev, kind, found, ppcie["supported"])
        if rc != 0:
            dev["mode_unknown"] = None
            lines = parsed["errors"] or parsed["last"]
            dev["mode_error"] = f"nvidia_gpu_tools.py exited with rc {rc}" + (f": {lines[-1]}" if lines else "")
        elif not _complete(dev, kind, ppcie["supported"]):
            dev["mode_error"] = "nvidia_gpu_tools.py printed no mode for it"
    return state


def _batchable(group, kind, unsupported):
    """Whether one ``--devices`` run selects exactly ``group`` and can answer for all of it.

    Only with two or more devices (one is asked by BDF anyway), none driven by the nvidia
    driver (the tool would abort there) and no unsupported NVIDIA device of the same class (the
    selector would take it too).
    """
    if len(group) < 2 or any(dev["driver"] == "nvidia" for dev in group):
        return False
    return not any((dev["class"] == gpu.NVSWITCH_CLASS) == (kind == "nvswitch") for dev in unsupported)


def _modes_args(kind, with_ppcie):
    return (["--query-cc-mode"] if kind == "gpu" else []) + (["--query-ppcie-mode"] if with_ppcie else [])


def _query(tool, selector_args, kind, ppcie, what):
    """One run with ``selector_args``: its parsed output (plus rc and last line), or None.

    Tools that predate PPCIe (2024 versions) reject ``--query-ppcie-mode`` with rc 2: that is
    remembered in ``ppcie`` and GPUs are asked again for their CC mode only (None for NVSwitches).
    """
    rc, out, err = _run(tool, selector_args + _modes_args(kind, ppcie["supported"]), what)
    if rc == 2 and ppcie["supported"] and gpu.UNRECOGNIZED_PPCIE_RE.search(err or ""):
        ppcie["supported"] = False
        if kind == "nvswitch":
            return None
        rc, out, err = _run(tool, selector_args + _modes_args(kind, False), what)
    parsed = gpu.parse_nvtools(out, err)
    parsed["rc"] = rc
    parsed["last"] = (err or out or "").strip().splitlines()[-1:]
    return parsed


def _query_one(tool, dev, kind, ppcie):
    parsed = _query(tool, [f"--gpu-bdf={dev['bdf']}"], kind, ppcie, f"Querying the modes of {dev['bdf']}")
    if parsed is None:
        dev["mode_unknown"] = NO_PPCIE
        return None, None
    return parsed["rc"], parsed


def _complete(dev, kind, with_ppcie):
    return not ((kind == "gpu" and dev["cc_mode"] is None) or (with_ppcie and dev["ppcie_mode"] is None))


def _apply(dev, kind, found, with_ppcie):
    """Take the modes the tool printed for ``dev``; True when they are all there."""
    if not found or found["device_id"] != dev["device_id"]:
        return False
    if kind == "gpu":
        dev["cc_mode"] = found.get("cc_mode")
    dev["ppcie_mode"] = found.get("ppcie_mode")
    complete = _complete(dev, kind, with_ppcie)
    if complete and not with_ppcie:
        dev["mode_unknown"] = NO_PPCIE
    return complete


def _run(tool, args, what):
    try:
        return tool.run(args, what=what, ok_rcs=None)
    except CommandFailed as exc:  # timeout
        return exc.rc, exc.stdout, exc.stderr


def run_lsgpu(module, sdk_dir, timeout):
    """Parsed ``dstack lsgpu`` output, or {'error': ...}."""
    script = os.path.join(sdk_dir, DSTACK_SCRIPT)
    if not os.path.exists(script):
        return {"error": f"{script} does not exist: sdk_dir is not a private-ml-sdk checkout."}
    tool = Tool(module, "dstack", path=script, option="sdk_dir", timeout=timeout)
    try:
        _rc, out, _err = tool.run(["lsgpu"], what="Listing GPUs with dstack lsgpu", cwd=sdk_dir)
    except (CommandFailed, ToolMissing) as exc:
        return {"error": getattr(exc, "message", str(exc))}
    return gpu.parse_lsgpu(out)


def main():
    module = AnsibleModule(
        argument_spec={
            "root": {"type": "path", "default": "/"},
            "nvtools_path": {"type": "path"},
            "sdk_dir": {"type": "path"},
            "policy": {"type": "str", "choices": ["auto", "single", "ppcie"], "default": "auto"},
            "allow_cc_devtools": {"type": "bool", "default": False},
            "command_timeout": {"type": "int", "default": 120},
        },
        supports_check_mode=True,
    )
    p = module.params
    fs = HostFS(p["root"])
    gpus, switches, unsupported, pci_ok = gpu.scan(fs)
    if not pci_ok:
        module.fail_json(msg=f"Reading PCI devices: {fs.path('/sys/bus/pci/devices')} does not exist. Fix: check "
                             "that sysfs is mounted (and the root option).")
    for dev in gpus + switches:
        dev["cc_mode"] = None
        dev["ppcie_mode"] = None
        dev["mode_error"] = None
        dev["mode_unknown"] = None

    if p["nvtools_path"]:
        nvtools = query_modes(module, p["nvtools_path"], [(d, "gpu") for d in gpus] + [(d, "nvswitch") for d in switches],
                              p["command_timeout"], unsupported)
    else:
        nvtools = {"path": None, "version": None,
                   "skipped": "nvidia_gpu_tools.py not given (option nvtools_path), CC and PPCIe modes unknown."}
    if nvtools["skipped"]:
        for dev in gpus + switches:
            dev["mode_unknown"] = nvtools["skipped"]

    modules_text = fs.read("/proc/modules")
    modules = gpu.parse_proc_modules(modules_text) if modules_text is not None else None

    lsgpu = None
    lsgpu_cmp = None
    if p["sdk_dir"]:
        lsgpu = run_lsgpu(module, p["sdk_dir"], p["command_timeout"])
        if "error" in lsgpu:
            lsgpu_cmp = {"error": f"dstack lsgpu failed: {lsgpu['error']}"}
        else:
            lsgpu_cmp = gpu.compare_lsgpu(lsgpu, gpus, switches, unsupported)
            lsgpu.update(lsgpu_cmp)

    policy = gpu.effective_policy(p["policy"], gpus, switches)
    for dev in gpus:
        dev["passthrough_ready"], dev["not_ready_reasons"] = gpu.readiness(dev, "gpu", policy, p["allow_cc_devtools"])
    for dev in switches:
        # NVSwitches are only passed through in PPCIe mode
        dev["passthrough_ready"], dev["not_ready_reasons"] = gpu.readiness(dev, "nvswitch", "ppcie", False)
    if policy == "single":
        cvm_gpus = [d["slot"] for d in gpus if d["passthrough_ready"]]
    else:
        everything = gpus + switches
        complete = len(gpus) == gpu.PPCIE_GPUS and len(switches) == gpu.PPCIE_NVSWITCHES
        cvm_gpus = [d["slot"] for d in everything] if complete and all(d["passthrough_ready"] for d in everything) else []

    checks = gpu.build_checks(gpus, switches, unsupported, modules, policy, p["allow_cc_devtools"], nvtools, lsgpu_cmp)
    result = {
        "changed": False, "gpus": gpus, "nvswitches": switches, "unsupported": unsupported, "policy": policy,
        "cvm_gpus": cvm_gpus, "nvidia_modules": [m for m in modules or [] if m.startswith("nvidia")],
        "nvtools": nvtools, "checks": checks,
    }
    if lsgpu is not None:
        result["lsgpu"] = lsgpu
    module.exit_json(**result)


if __name__ == "__main__":
    main()
