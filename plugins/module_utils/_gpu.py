# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""NVIDIA GPU and NVSwitch discovery for TDX pass-through, for the dstack_gpu_info module.

Private to the collection (the leading underscore): no stability promise to other collections.

Pure functions: a sysfs scan through :class:`HostFS` (so a copy of a host's tree can be read
through a root prefix), parsers of ``nvidia_gpu_tools.py`` output (keyed on BDF, device id and
mode, never on the GPU name, which changed between tool versions) and of both output generations
of private-ml-sdk's ``dstack lsgpu``, and the policy checks of the host-check reference (single-GPU
CVMs: CC on and PPCIe off on every GPU; HGX 8-GPU PPCIe: all 8 GPUs and 4 NVSwitches in PPCIe
mode with CC off; anything in between is unsupported).
"""

from __future__ import annotations

import re

from ansible_collections.zerog.compute.plugins.module_utils._tdx import INFO, RECOMMENDED, REQUIRED, make_check

NVIDIA = "10de"
GPU_CLASSES = ("030200", "030000")
NVSWITCH_CLASS = "068000"
BRIDGE_CLASS_PREFIX = "0604"

#: device id -> (family, model, form factor). Models are the pci.ids names (2321 is sold as
#: "H100 NVL"; pci.ids calls it "H100L 94GB").
GPU_MODELS = {
    "2330": ("H100", "H100 SXM5 80GB", "sxm"),
    "2331": ("H100", "H100 PCIe", "pcie"),
    "2321": ("H100", "H100 NVL", "pcie"),
    "2336": ("H100", "H100", "sxm"),
    "2337": ("H100", "H100 SXM5 64GB", "sxm"),
    "2338": ("H100", "H100 SXM5 96GB", "sxm"),
    "2339": ("H100", "H100 SXM5 94GB", "sxm"),
    "233d": ("H100", "H100 96GB", "pcie"),
    "2313": ("H100", "H100 CNX", "pcie"),
    "2335": ("H200", "H200 SXM 141GB", "sxm"),
    "233b": ("H200", "H200 NVL", "pcie"),
}
NVSWITCH_MODELS = {"22a3": "H100 NVSwitch"}
#: PPCIe (protected PCIe) is the HGX 8-GPU mode: exactly this many of each.
PPCIE_GPUS = 8
PPCIE_NVSWITCHES = 4
#: drivers that keep an IOMMU group viable for VFIO besides vfio-pci itself
VIABLE_DRIVERS = ("vfio-pci", "pci-stub", "pcieport")
#: nvidia_gpu_tools.py modes (query_cc_mode_hopper)
CC_MODES = ("on", "off", "devtools")


def _hex_id(value):
    """``0x10de`` -> ``10de``; ``0x030200`` -> ``030200``."""
    value = (value or "").strip().lower()
    return value[2:] if value.startswith("0x") else value


def short_slot(bdf):
    """The slot dstack wants: ``0000:18:00.0`` -> ``18:00.0`` (other PCI domains keep theirs)."""
    return bdf[5:] if bdf.startswith("0000:") else bdf


def read_device(fs, bdf):
    """Everything sysfs says about one PCI device."""
    base = f"/sys/bus/pci/devices/{bdf}"
    group = fs.link_name(f"{base}/iommu_group")
    numa = fs.read_value(f"{base}/numa_node")
    try:
        numa_node = int(numa) if numa is not None else None
    except ValueError:
        numa_node = None
    vfio_dev = fs.listdir(f"{base}/vfio-dev")
    override = fs.read_value(f"{base}/driver_override")
    return {
        "bdf": bdf,
        "slot": short_slot(bdf),
        "vendor_id": _hex_id(fs.read_value(f"{base}/vendor")),
        "device_id": _hex_id(fs.read_value(f"{base}/device")),
        "class": _hex_id(fs.read_value(f"{base}/class")),
        "subsystem_device": _hex_id(fs.read_value(f"{base}/subsystem_device")) or None,
        "numa_node": numa_node,
        "iommu_group": int(group) if group is not None and group.isdigit() else None,
        "driver": fs.link_name(f"{base}/driver"),
        "driver_override": None if override in (None, "(null)", "") else override,
        "vfio_dev": vfio_dev[0] if vfio_dev else None,
    }


def group_members(fs, group):
    """Members of IOMMU group ``group``: [{bdf, driver, class, viable}]."""
    if group is None:
        return []
    members = []
    for bdf in fs.listdir(f"/sys/kernel/iommu_groups/{group}/devices") or []:
        base = f"/sys/bus/pci/devices/{bdf}"
        driver = fs.link_name(f"{base}/driver")
        cls = _hex_id(fs.read_value(f"{base}/class"))
        bridge = cls.startswith(BRIDGE_CLASS_PREFIX)
        members.append({"bdf": bdf, "driver": driver, "class": cls, "bridge": bridge,
                        "viable": bridge or driver is None or driver in VIABLE_DRIVERS})
    return members


def classify(dev):
    """('gpu' | 'nvswitch' | 'unsupported' | None, model info) of an NVIDIA device."""
    if dev["vendor_id"] != NVIDIA:
        return None, None
    if dev["class"] in GPU_CLASSES:
        if dev["device_id"] in GPU_MODELS:
            return "gpu", GPU_MODELS[dev["device_id"]]
        return "unsupported", None
    if dev["class"] == NVSWITCH_CLASS:
        if dev["device_id"] in NVSWITCH_MODELS:
            return "nvswitch", ("NVSwitch", NVSWITCH_MODELS[dev["device_id"]], "hgx")
        return "unsupported", None
    return None, None


def scan(fs):
    """Scan ``/sys/bus/pci/devices``: (gpus, nvswitches, unsupported, pci_available)."""
    entries = fs.listdir("/sys/bus/pci/devices")
    gpus, switches, unsupported = [], [], []
    for bdf in entries or []:
        dev = read_device(fs, bdf)
        kind, model = classify(dev)
        if kind is None:
            continue
        if kind == "unsupported":
            what = "NVSwitch" if dev["class"] == NVSWITCH_CLASS else "GPU"
            dev["reason"] = (f"NVIDIA {what} with device id {dev['device_id']} is not an H100/H200 "
                             "confidential-computing device this collection supports.")
            unsupported.append(dev)
            continue
        dev["family"], dev["model"], dev["form_factor"] = model
        dev["group_members"] = group_members(fs, dev["iommu_group"])
        (gpus if kind == "gpu" else switches).append(dev)
    return gpus, switches, unsupported, entries is not None


def parse_proc_modules(text):
    """Names of the loaded kernel modules (``/proc/modules``, what lsmod prints)."""
    return [line.split()[0] for line in (text or "").splitlines() if line.strip()]


# --------------------------------------------------------------------------------------------
# nvidia_gpu_tools.py
# --------------------------------------------------------------------------------------------

#: ``GPU 0000:18:00.0 H200 0x2335 BAR0 0x21c042000000 CC mode is on`` (any name: ``H100-SXM`` in
#: old tool versions, ``H100``/``H200``/``Generic-GH100``/``?`` in new ones, ``NVSwitch_gen3``).
MODE_RE = re.compile(r"(?P<kind>\S+) (?P<bdf>[0-9a-f]{4}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]) (?P<name>\S+) "
                     r"(?P<devid>0x[0-9a-f]+) BAR0 0x[0-9a-f]+ (?P<what>CC|PPCIe) mode is (?P<mode>\S+)\s*$")
VERSION_RE = re.compile(r"^NVIDIA GPU Tools version (\S+)", re.M)
NVIDIA_DRIVER_RE = re.compile(r"The nvidia driver appears to be using")
NOT_FOUND_RE = re.compile(r"Matching for \S+ found nothing")
UNRECOGNIZED_PPCIE_RE = re.compile(r"unrecognized arguments:.*--query-ppcie-mode")
#: the last line of a traceback: ``gpu.error.GpuError: GPU 0000:2a:00.0 ... is not responding``
EXCEPTION_RE = re.compile(r"^[A-Za-z_][\w.]*(?:Error|Exception): ")


def parse_nvtools(stdout, stderr):
    """Modes reported by one ``nvidia_gpu_tools.py`` run.

    Returns {version, modes: {bdf: {device_id, cc_mode, ppcie_mode}}, errors: [lines]}. Only what
    the tool said is returned: a device it printed no mode for is absent.
    """
    text = f"{stdout or ''}\n{stderr or ''}"
    version = VERSION_RE.search(text)
    modes = {}
    errors = []
    for line in text.splitlines():
        match = MODE_RE.search(line)
        if match:
            entry = modes.setdefault(match.group("bdf"), {"device_id": match.group("devid")[2:].zfill(4)})
            key = "cc_mode" if match.group("what") == "CC" else "ppcie_mode"
            entry[key] = match.group("mode")
        elif " ERROR " in line or line.startswith(("Traceback", "nvidia_gpu_tools.py: error")) or EXCEPTION_RE.match(line):
            errors.append(line.strip())
    return {"version": version.group(1) if version else None, "modes": modes, "errors": errors}


def nvtools_args(dev, kind, with_ppcie=True):
    """Arguments of the per-device query: CC (GPUs only) and PPCIe mode."""
    args = [f"--gpu-bdf={dev['bdf']}"]
    if kind == "gpu":
        args.append("--query-cc-mode")
    if with_ppcie:
        args.append("--query-ppcie-mode")
    return args


# --------------------------------------------------------------------------------------------
# dstack lsgpu
# --------------------------------------------------------------------------------------------

_SLOT = r"(?:[0-9a-f]{4}:)?[0-9a-f]{2}:[0-9a-f]{2}\.[0-7]"
LSGPU_HEAD_ROW = re.compile(rf"^(?P<slot>{_SLOT})\s+(?P<numa>-?\d+)\s+(?P<use>Yes|No)\s+(?P<desc>.*)$")
LSGPU_OLD_ROW = re.compile(rf"^(?P<slot>{_SLOT}) (?P<cls>[^:]+): (?P<desc>.*)$")


def parse_lsgpu(text):
    """Both generations of ``dstack lsgpu`` output.

    PMS-0.3: ``ID      Description`` then raw ``lspci`` lines (every NVIDIA function, bridges and
    audio included). PMS-HEAD: ``ID   Numa Node  In Use    Description``, a dashed rule, then
    ``<slot>   <node>   <Yes|No>      <description>`` for 3D controllers only. No GPU at all: no
    output. Returns {generation: '0.3' | '0.5' | None, devices: [{slot, kind, numa_node, in_use,
    description}]}.
    """
    generation = None
    devices = []
    for line in (text or "").splitlines():
        stripped = line.strip()
        if stripped.startswith("ID") and "Numa Node" in stripped:
            generation = "0.5"
            continue
        if stripped.startswith("ID") and "Description" in stripped:
            generation = "0.3"
            continue
        if generation == "0.5":
            match = LSGPU_HEAD_ROW.match(stripped)
            if match:
                devices.append({"slot": match.group("slot"), "kind": "gpu", "numa_node": int(match.group("numa")),
                                "in_use": match.group("use") == "Yes", "description": match.group("desc").strip()})
        elif generation == "0.3":
            match = LSGPU_OLD_ROW.match(stripped)
            if match:
                cls = match.group("cls")
                kind = "gpu" if "3D controller" in cls or "VGA" in cls else "nvswitch" if "Bridge" in cls else "other"
                devices.append({"slot": match.group("slot"), "kind": kind, "numa_node": None, "in_use": None,
                                "description": f"{cls}: {match.group('desc').strip()}"})
    return {"generation": generation, "devices": devices}


def compare_lsgpu(lsgpu, gpus, switches, unsupported):
    """Where ``dstack lsgpu`` and sysfs disagree: GPUs (and, in 0.3 output, NVSwitches)."""
    listed = {d["slot"]: d for d in lsgpu["devices"] if d["kind"] in ("gpu", "nvswitch")}
    sysfs = {d["slot"]: d for d in gpus}
    sysfs.update({d["slot"]: d for d in unsupported if d["class"] in GPU_CLASSES})
    if lsgpu["generation"] == "0.3":
        sysfs.update({d["slot"]: d for d in switches})
        sysfs.update({d["slot"]: d for d in unsupported if d["class"] == NVSWITCH_CLASS})
    missing = sorted(s for s in sysfs if s not in listed)
    extra = sorted(s for s in listed if s not in sysfs)
    numa = []
    for slot, row in sorted(listed.items()):
        dev = sysfs.get(slot)
        if dev is not None and row["numa_node"] is not None and row["numa_node"] != dev["numa_node"]:
            numa.append({"slot": slot, "lsgpu": row["numa_node"], "sysfs": dev["numa_node"]})
    return {"missing_in_lsgpu": missing, "extra_in_lsgpu": extra, "numa_mismatch": numa,
            "agrees": not (missing or extra or numa)}


# --------------------------------------------------------------------------------------------
# Policy and checks
# --------------------------------------------------------------------------------------------

REMEDIATION = {
    "gpu_present": "Install supported H100/H200 GPUs, or check that the device ids are in the supported list "
                   "(dstack's VMM lists only 10de:2335 by default).",
    "nvswitch_present": "PPCIe needs an HGX board with 8 GPUs and 4 NVSwitches; otherwise use single-GPU CVMs "
                        "(policy single).",
    "gpu_iommu_group": "Enable IOMMU (intel_iommu=on, VT-d in the BIOS) and ACS; bind every device of the GPU's "
                       "IOMMU group to vfio-pci (bridges excepted).",
    "gpu_driver_vfio": "modprobe vfio vfio_pci; bind the GPU with 'echo 10de <device> > "
                       "/sys/bus/pci/drivers/vfio-pci/new_id' (or virsh nodedev-detach); blacklist nvidia and "
                       "nouveau on the host.",
    "host_no_nvidia_driver": "Unload and blacklist the NVIDIA driver on the host (the guest has the driver).",
    "gpu_cc_mode": "Single-GPU CVMs: nvidia_gpu_tools.py --gpu-bdf=<bdf> --set-ppcie-mode=off "
                   "--reset-after-ppcie-mode-switch, then --set-cc-mode=on --reset-after-cc-mode-switch. "
                   "PPCIe: --set-cc-mode=off first.",
    "gpu_ppcie_mode": "Single-GPU CVMs: --set-ppcie-mode=off --reset-after-ppcie-mode-switch on every GPU. "
                      "HGX PPCIe: --set-cc-mode=off, then --set-ppcie-mode=on --reset-after-ppcie-mode-switch "
                      "on all 8 GPUs and all 4 NVSwitches.",
    "dstack_lsgpu": "dstack lsgpu matches vendor text, not ids: check lspci's output and the NUMA nodes.",
}


def gpu_check(name, ok, severity, detail):
    """A check of this module, with its remediation."""
    return make_check(name, ok, severity, detail, REMEDIATION.get(name, ""))


def effective_policy(requested, gpus, switches):
    """The policy to check: ``single`` or ``ppcie``; ``auto`` picks ppcie when any device reports
    PPCIe on (the host is, or was meant to be, an HGX PPCIe system), single otherwise."""
    if requested in ("single", "ppcie"):
        return requested
    if any(d.get("ppcie_mode") == "on" for d in gpus + switches):
        return "ppcie"
    return "single"


def _listing(devices):
    return ", ".join(d["slot"] for d in devices)


def mode_problems(dev, kind, policy, allow_devtools):
    """Why the modes of one device do not fit the policy ([] when they do, None when unknown)."""
    cc = dev.get("cc_mode")
    ppcie = dev.get("ppcie_mode")
    problems = []
    if policy == "single":
        if kind != "gpu":
            return []
        if cc is None:
            return None
        if cc == "devtools" and not allow_devtools:
            problems.append("CC mode is devtools (not for production)")
        elif cc not in ("on", "devtools"):
            problems.append(f"CC mode is {cc}")
        if ppcie == "on":
            problems.append("PPCIe mode is on")
        return problems
    if ppcie is None or (kind == "gpu" and cc is None):
        return None
    if ppcie != "on":
        problems.append(f"PPCIe mode is {ppcie}")
    if kind == "gpu" and cc != "off":
        problems.append(f"CC mode is {cc}")
    return problems


def readiness(dev, kind, policy, allow_devtools):
    """(passthrough_ready, reasons) of one device under ``policy``."""
    reasons = []
    if dev["driver"] != "vfio-pci":
        reasons.append(f"bound to {dev['driver']}" if dev["driver"] else "not bound to vfio-pci")
    if dev["iommu_group"] is None:
        reasons.append("no IOMMU group")
    else:
        blocked = [m for m in dev["group_members"] if not m["viable"]]
        if blocked:
            reasons.append("IOMMU group {} has devices on other drivers: {}".format(
                dev["iommu_group"], ", ".join(f"{m['bdf']} ({m['driver']})" for m in blocked)))
    if dev["driver"] == "vfio-pci" and dev["vfio_dev"] is None:
        reasons.append("no vfio-dev (iommufd) character device")
    problems = mode_problems(dev, kind, policy, allow_devtools)
    if dev.get("mode_error"):
        reasons.append(f"CC/PPCIe mode not readable: {dev['mode_error']}")
    elif problems is None:
        reasons.append("CC/PPCIe mode unknown" + (f": {dev['mode_unknown']}" if dev.get("mode_unknown") else ""))
    else:
        reasons.extend(problems)
    return not reasons, reasons


def build_checks(gpus, switches, unsupported, modules, policy, allow_devtools, nvtools_state, lsgpu_cmp):
    """The GPU checks of the host-check summary table for ``policy``."""
    checks = []
    # the devices given to CVMs: PPCIe passes the NVSwitches through too
    devices = gpus + (switches if policy == "ppcie" else [])

    if gpus:
        detail = f"{len(gpus)} supported GPU(s): " + ", ".join(f"{d['slot']} {d['model']}" for d in gpus)
        if unsupported:
            detail += f"; unsupported NVIDIA device(s): {_listing(unsupported)}"
        checks.append(gpu_check("gpu_present", True, REQUIRED, detail + "."))
    else:
        detail = "No supported NVIDIA H100/H200 GPU in /sys/bus/pci/devices"
        if unsupported:
            detail += " (unsupported: " + ", ".join(f"{d['slot']} 10de:{d['device_id']}" for d in unsupported) + ")"
        checks.append(gpu_check("gpu_present", False, REQUIRED, detail + "."))

    if policy == "ppcie":
        ok = len(switches) == PPCIE_NVSWITCHES and len(gpus) == PPCIE_GPUS
        checks.append(gpu_check("nvswitch_present", ok, REQUIRED,
                                f"{len(gpus)} GPU(s) and {len(switches)} NVSwitch(es); PPCIe needs "
                                f"{PPCIE_GPUS} and {PPCIE_NVSWITCHES}."))
    else:
        checks.append(gpu_check("nvswitch_present", None, INFO,
                                f"Not evaluated: single-GPU CVMs do not use NVSwitches ({len(switches)} present)."))

    no_group = [d for d in devices if d["iommu_group"] is None]
    blocked = [d for d in devices if any(not m["viable"] for m in d["group_members"])]
    if not devices:
        checks.append(gpu_check("gpu_iommu_group", None, REQUIRED, "Not evaluated: no GPU."))
    elif no_group or blocked:
        parts = []
        if no_group:
            parts.append(f"no IOMMU group: {_listing(no_group)}")
        for dev in blocked:
            parts.append("group {} of {} has {}".format(
                dev["iommu_group"], dev["slot"],
                ", ".join(f"{m['bdf']} on {m['driver']}" for m in dev["group_members"] if not m["viable"])))
        checks.append(gpu_check("gpu_iommu_group", False, REQUIRED, "; ".join(parts) + "."))
    else:
        checks.append(gpu_check("gpu_iommu_group", True, REQUIRED,
                                "Every IOMMU group holds only vfio-pci devices and bridges: " + ", ".join(
                                    f"{d['slot']} group {d['iommu_group']}" for d in devices) + "."))

    wrong = [d for d in devices if d["driver"] != "vfio-pci"]
    if not devices:
        checks.append(gpu_check("gpu_driver_vfio", None, REQUIRED, "Not evaluated: no GPU."))
    elif wrong:
        checks.append(gpu_check("gpu_driver_vfio", False, REQUIRED, "Not bound to vfio-pci: " + ", ".join(
            f"{d['slot']} ({d['driver'] or 'no driver'})" for d in wrong) + "."))
    else:
        checks.append(gpu_check("gpu_driver_vfio", True, REQUIRED, f"Bound to vfio-pci: {_listing(devices)}."))

    nvidia_modules = [m for m in modules if m.startswith("nvidia")] if modules is not None else None
    if nvidia_modules is None:
        checks.append(gpu_check("host_no_nvidia_driver", None, REQUIRED, "Not evaluated: /proc/modules unreadable."))
    elif nvidia_modules:
        checks.append(gpu_check("host_no_nvidia_driver", False, REQUIRED,
                                "NVIDIA kernel modules loaded on the host: " + ", ".join(nvidia_modules) + "."))
    else:
        checks.append(gpu_check("host_no_nvidia_driver", True, REQUIRED, "No nvidia kernel module is loaded."))

    checks.extend(mode_checks(gpus, switches, policy, allow_devtools, nvtools_state))

    if lsgpu_cmp is None:
        checks.append(gpu_check("dstack_lsgpu", None, INFO, "Not evaluated: no private-ml-sdk checkout given."))
    elif lsgpu_cmp.get("error"):
        checks.append(gpu_check("dstack_lsgpu", False, RECOMMENDED, lsgpu_cmp["error"]))
    else:
        parts = []
        if lsgpu_cmp["missing_in_lsgpu"]:
            parts.append("not listed by dstack lsgpu: " + ", ".join(lsgpu_cmp["missing_in_lsgpu"]))
        if lsgpu_cmp["extra_in_lsgpu"]:
            parts.append("listed by dstack lsgpu but not NVIDIA GPUs in sysfs: " + ", ".join(lsgpu_cmp["extra_in_lsgpu"]))
        for item in lsgpu_cmp["numa_mismatch"]:
            parts.append(f"{item['slot']} NUMA node {item['lsgpu']} in lsgpu, {item['sysfs']} in sysfs")
        detail = "; ".join(parts) + "." if parts else "dstack lsgpu lists the same GPUs as sysfs."
        checks.append(gpu_check("dstack_lsgpu", lsgpu_cmp["agrees"], RECOMMENDED, detail))
    return checks


def mode_checks(gpus, switches, policy, allow_devtools, nvtools_state):
    """gpu_cc_mode and gpu_ppcie_mode.

    A mode the tool was not asked for (no tool given) or cannot report (PPCIe on tools older
    than PPCIe support) is not evaluated; a device the tool failed on (for example one the
    nvidia driver holds, which the tool refuses) fails: its mode cannot be established.
    """
    if not gpus:
        return [gpu_check("gpu_cc_mode", None, REQUIRED, "Not evaluated: no GPU."),
                gpu_check("gpu_ppcie_mode", None, REQUIRED, "Not evaluated: no GPU.")]
    if nvtools_state.get("skipped"):
        reason = f"Not evaluated: {nvtools_state['skipped']}"
        return [gpu_check("gpu_cc_mode", None, REQUIRED, reason), gpu_check("gpu_ppcie_mode", None, REQUIRED, reason)]

    def failed(devs):
        return [d for d in devs if d.get("mode_error")]

    def describe(devs, key):
        return ", ".join(f"{d['slot']} {d.get(key)}" for d in devs)

    def verdict(name, wrong, errors, unknown, fail_text, ok_text):
        parts = []
        if wrong:
            parts.append(fail_text)
        if errors:
            parts.append("mode not readable for " + _error_reasons(errors))
        if parts:
            return gpu_check(name, False, REQUIRED, "; ".join(parts) + ".")
        if unknown:
            return gpu_check(name, None, REQUIRED, "Not evaluated: " + _unknown_reasons(unknown) + ".")
        return gpu_check(name, True, REQUIRED, ok_text)

    errors = failed(gpus)
    readable = [d for d in gpus if not d.get("mode_error")]
    if policy == "single":
        wrong_cc = [d for d in readable if d.get("cc_mode") is not None and
                    not (d["cc_mode"] == "on" or (d["cc_mode"] == "devtools" and allow_devtools))]
        checks = [verdict("gpu_cc_mode", wrong_cc, errors, [d for d in readable if d.get("cc_mode") is None],
                          "single-GPU CVMs need CC mode on for every GPU: " + describe(wrong_cc, "cc_mode"),
                          "CC mode: " + describe(gpus, "cc_mode") + ".")]
        wrong_pp = [d for d in readable if d.get("ppcie_mode") == "on"]
        # CC on excludes PPCIe on (the tool turns CC off when it enables PPCIe), so a tool too old
        # to query PPCIe still proves PPCIe off for a GPU whose CC mode is on.
        unknown_pp = [d for d in readable if d.get("ppcie_mode") is None and d.get("cc_mode") not in ("on", "devtools")]
        inferred = [d for d in readable if d.get("ppcie_mode") is None and d.get("cc_mode") in ("on", "devtools")]
        checks.append(verdict("gpu_ppcie_mode", wrong_pp, errors, unknown_pp,
                              "single-GPU CVMs need PPCIe mode off: it is on for " + _listing(wrong_pp),
                              "PPCIe mode is off on every GPU" + (
                                  " (" + _listing(inferred) + ": the tool does not report PPCIe; off because CC is on)"
                                  if inferred else "") + "."))
        return checks

    wrong_cc = [d for d in readable if d.get("cc_mode") not in (None, "off")]
    checks = [verdict("gpu_cc_mode", wrong_cc, errors, [d for d in readable if d.get("cc_mode") is None],
                      "PPCIe needs CC mode off on every GPU: " + describe(wrong_cc, "cc_mode"),
                      "CC mode is off on every GPU (PPCIe).")]
    devices = gpus + switches
    dev_errors = failed(devices)
    dev_readable = [d for d in devices if not d.get("mode_error")]
    off = [d for d in dev_readable if d.get("ppcie_mode") not in (None, "on")]
    count_ok = len(gpus) == PPCIE_GPUS and len(switches) == PPCIE_NVSWITCHES
    parts = []
    if off:
        parts.append("PPCIe mode not on for " + describe(off, "ppcie_mode"))
    if not count_ok:
        parts.append(f"{len(gpus)} GPU(s) and {len(switches)} NVSwitch(es) instead of {PPCIE_GPUS} and "
                     f"{PPCIE_NVSWITCHES}")
    checks.append(verdict("gpu_ppcie_mode", parts, dev_errors, [d for d in dev_readable if d.get("ppcie_mode") is None],
                          "PPCIe needs all 8 GPUs and 4 NVSwitches in PPCIe mode (partial configurations are "
                          "unsupported): " + "; ".join(parts),
                          "PPCIe mode is on for all 8 GPUs and 4 NVSwitches."))
    return checks


def _error_reasons(devs):
    return ", ".join(f"{d['slot']} ({d['mode_error']})" for d in devs)


def _unknown_reasons(devs):
    return ", ".join(f"{d['slot']} ({d.get('mode_unknown') or 'mode not reported'})" for d in devs)
