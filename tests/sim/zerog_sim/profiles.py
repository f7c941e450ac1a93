"""Host-state profiles: YAML files under ``tests/sim/profiles/`` describing a simulated TDX host.

A profile may name a parent with ``extends: <name>``; the child is deep-merged over the parent
(mappings merge key by key, a ``null`` value deletes the key, anything else replaces), so a
failure profile is a few lines on top of a passing one. Profiles whose name starts with ``_``
are abstract (shared templates, not listed). PCI devices are a mapping keyed by BDF; a device
may name a ``template`` from ``device_templates``.

``build_state(name)`` resolves a profile into the active-state dict (the shared contract keys plus
the host details the stand-ins and the fixture builder need); ``materialize(name, root)`` writes
the fixture tree (see ``zerog_sim.hostfs``) and returns that state; ``python3 -m zerog_sim
materialize --profile NAME --root DIR --state FILE`` does both and writes the state file.

``expected_failures`` lists, by the check names of host-checks.md §6 (plus ``pccs_reachable``),
exactly the checks a host-check module must report as failed on that profile; the semantics
assumed for each check are in ``tests/sim/README.md``.
"""

from __future__ import annotations

import copy
import os
import re
from typing import Any

PROFILE_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "profiles")

#: The checks of host-checks.md §6, verbatim, plus pccs_reachable.
CHECKS = (
    "cpu_tdx_host_flag",
    "tdx_bios_keyids",
    "tdx_module_initialized",
    "kvm_tdx_param",
    "cmdline_nohibernate",
    "cmdline_kvm_tdx",
    "tme_enabled",
    "seamrr_enabled",
    "sgx_mcheck",
    "production_platform",
    "kernel_version",
    "memlock",
    "sgx_devices",
    "sgx_bios",
    "sgx_registration",
    "qcnl_config",
    "aesmd",
    "pccs_reachable",
    "iommu_enabled",
    "iommufd",
    "gpu_present",
    "nvswitch_present",
    "gpu_iommu_group",
    "gpu_driver_vfio",
    "host_no_nvidia_driver",
    "gpu_cc_mode",
    "gpu_ppcie_mode",
    "qemu_tdx",
    "libvirt_tdx",
    "ovmf_tdvf",
)
GPU_CLASSES = ("030000", "030200")
NVSWITCH_CLASS = "068000"
_BDF_RE = re.compile(r"^[0-9a-f]{4}:[0-9a-f]{2}:[0-1][0-9a-f]\.[0-7]$")
_DMESG_RE = re.compile(r"^(?:<(?P<level>[0-7])>)?\[\s*(?P<sec>\d+)\.(?P<usec>\d+)\]\s?(?P<msg>.*)$")


class ProfileError(ValueError):
    """A profile is missing, malformed or inconsistent."""


def profile_path(name: str, profile_dir: str | None = None) -> str:
    """Path of the YAML file of profile ``name``."""
    if not re.match(r"^[A-Za-z0-9_][A-Za-z0-9_.-]*$", name):
        raise ProfileError(f"invalid profile name {name!r}")
    return os.path.join(profile_dir or PROFILE_DIR, f"{name}.yml")


def list_profiles(profile_dir: str | None = None) -> list[str]:
    """Names of the concrete (non-abstract) profiles, sorted."""
    directory = profile_dir or PROFILE_DIR
    return sorted(f[:-4] for f in os.listdir(directory) if f.endswith(".yml") and not f.startswith("_"))


def deep_merge(base: Any, override: Any) -> Any:
    """Merge ``override`` over ``base``: mappings recursively, ``None`` deletes, the rest replaces."""
    if not isinstance(base, dict) or not isinstance(override, dict):
        return copy.deepcopy(override)
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if value is None:
            merged.pop(key, None)
        elif key in merged:
            merged[key] = deep_merge(merged[key], value)
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def load_raw(name: str, profile_dir: str | None = None) -> dict[str, Any]:
    """Read one profile file without resolving ``extends``."""
    import yaml  # only the profile files need PyYAML

    path = profile_path(name, profile_dir)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except FileNotFoundError:
        raise ProfileError(f"no profile {name!r} ({path})") from None
    if not isinstance(data, dict):
        raise ProfileError(f"profile {name!r} is not a mapping")
    return data


def resolve(name: str, profile_dir: str | None = None, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    """Load profile ``name`` with its ``extends`` chain merged (single inheritance)."""
    if name in _seen:
        raise ProfileError(f"profile inheritance loop: {' -> '.join((*_seen, name))}")
    data = load_raw(name, profile_dir)
    parent = data.pop("extends", None)
    if parent:
        data = deep_merge(resolve(parent, profile_dir, (*_seen, name)), data)
    data.pop("abstract", None)
    return data


def _cmdline(parts: dict[str, Any]) -> str:
    words = [
        f"BOOT_IMAGE={parts['boot_image']}",
        f"root={parts['root']}",
        "ro",
        parts.get("linux", ""),
        parts.get("linux_default", ""),
        parts.get("suffix", ""),
    ]
    return " ".join(w for w in words if w)


def _dmesg_records(profile: dict[str, Any], cmdline: str) -> list[dict[str, Any]]:
    """The kernel log: automatic boot lines plus every group's lines, sorted by time."""
    kernel = profile["kernel"]
    records = [
        {"level": 5, "ts": "0.000000", "msg": kernel["version"]},
        {"level": 6, "ts": "0.000000", "msg": f"Command line: {cmdline}"},
    ]
    for group, lines in (profile.get("dmesg") or {}).items():
        for line in lines or []:
            match = _DMESG_RE.match(line)
            if not match:
                raise ProfileError(f"dmesg group {group}: line without [timestamp]: {line!r}")
            records.append(
                {
                    "level": int(match.group("level") or 6),
                    "ts": f"{int(match.group('sec'))}.{match.group('usec').ljust(6, '0')[:6]}",
                    "msg": match.group("msg"),
                }
            )
    return sorted(records, key=lambda r: tuple(int(x) for x in r["ts"].split(".")))


def _flag_line(text: str, remove: list[str] | None) -> str:
    drop = set(remove or [])
    return " ".join(tok for tok in text.split() if tok not in drop)


def update_d_state(dev: dict[str, Any]) -> None:
    """Derive the PCI power state unless the profile fixed it: an idle vfio-pci device whose
    runtime PM is ``auto`` sits in D3hot, everything else in D0."""
    if dev.get("d_state_auto", True):
        idle = dev["driver"] == "vfio-pci" and not dev["in_use"] and dev["power_control"] == "auto"
        dev["d_state"] = 3 if idle else 0


def _devices(profile: dict[str, Any], iommu_enabled: bool) -> list[dict[str, Any]]:
    """Resolve templates and derived fields of every PCI device; return them sorted by BDF."""
    templates = profile.get("device_templates") or {}
    devices = []
    for bdf, spec in (profile.get("pci_devices") or {}).items():
        if spec is None:
            continue
        if not _BDF_RE.match(bdf):
            raise ProfileError(f"bad BDF {bdf!r} (want dddd:bb:dd.f, lower-case hex)")
        template = spec.get("template")
        if template and template not in templates:
            raise ProfileError(f"{bdf}: unknown device template {template!r}")
        dev = deep_merge(templates.get(template, {}), spec) if template else copy.deepcopy(spec)
        dev.pop("template", None)
        dev["bdf"] = bdf
        for key in ("vendor", "device", "class", "vendor_name"):
            if key not in dev:
                raise ProfileError(f"{bdf}: missing {key}")
        for key in ("vendor", "device", "subsystem_vendor", "subsystem_device", "class", "rev"):
            if dev.get(key) is not None:
                dev[key] = str(dev[key]).lower()
        dev.setdefault("rev", "00")
        dev.setdefault("numa_node", -1)
        dev.setdefault("iommu_group", None)
        if not dev.get("driver"):  # "" unbinds a driver a template or parent profile set
            dev["driver"] = None
        dev.setdefault("in_use", False)
        dev.setdefault("power_control", "on")
        dev.setdefault("header_type", 0)
        if not iommu_enabled:
            dev["iommu_group"] = None
        vendor_text = dev["vendor_name"]
        dev["name"] = f"{vendor_text} {dev['device_name']}" if dev.get("device_name") else f"{vendor_text} Device {dev['device']}"
        nvidia = dev["vendor"] == "10de" and dev["class"] in (*GPU_CLASSES, NVSWITCH_CLASS)
        if nvidia:
            dev.setdefault("cc_mode", "off")
            dev.setdefault("ppcie_mode", "off")
            if not any(r.get("index") == 0 for r in dev.get("regions", [])):
                raise ProfileError(f"{bdf}: NVIDIA device needs a region with index 0 (BAR0)")
        dev["d_state_auto"] = "d_state" not in dev
        update_d_state(dev)
        if dev["driver"] == "vfio-pci" and dev["iommu_group"] is None:
            raise ProfileError(f"{bdf}: vfio-pci cannot bind a device without an IOMMU group")
        devices.append(dev)
    devices.sort(key=lambda d: d["bdf"])
    known = {d["bdf"] for d in devices}
    vfio_index = 0
    for dev in devices:
        if dev.get("parent") and dev["parent"] not in known:
            raise ProfileError(f"{dev['bdf']}: parent {dev['parent']} is not a device of the profile")
        if dev["driver"] == "vfio-pci":
            dev["vfio_dev"] = f"vfio{vfio_index}"
            vfio_index += 1
        else:
            dev["vfio_dev"] = None
    return devices


def build_state(name: str, root: str, profile_dir: str | None = None) -> dict[str, Any]:
    """Resolve profile ``name`` into the active-state dict for a fixture tree at ``root``."""
    profile = resolve(name, profile_dir)
    for key in ("description", "kernel", "cpu", "msr", "sgx", "pccs", "qemu", "iommu"):
        if key not in profile:
            raise ProfileError(f"profile {name!r}: missing {key}")
    failures = profile.get("expected_failures") or []
    unknown = sorted(set(failures) - set(CHECKS))
    if unknown:
        raise ProfileError(f"profile {name!r}: unknown check names in expected_failures: {unknown}")
    policy = profile.get("gpu_policy", "single")
    if policy not in ("single", "ppcie"):
        raise ProfileError(f"profile {name!r}: gpu_policy must be single or ppcie")
    kernel = profile["kernel"]
    cmdline = _cmdline(kernel["cmdline"])
    iommu = profile["iommu"]
    devices = _devices(profile, bool(iommu.get("enabled")))
    nvtools = str(profile.get("nvtools_version", "v2025.07.21o"))
    if nvtools.startswith("v2024") and any(d["vendor"] == "10de" and d["device"] in ("2335", "233b") for d in devices):
        raise ProfileError(f"profile {name!r}: {nvtools} names no H200; use a v2025 tool version")
    cpu = copy.deepcopy(profile["cpu"])
    cpu["flags"] = _flag_line(cpu["flags"], cpu.pop("flags_remove", None))
    cpu["bugs"] = _flag_line(cpu["bugs"], cpu.pop("bugs_remove", None))
    modules = []
    for mod_name, mod in (kernel.get("modules") or {}).items():
        if mod is None:
            continue
        used_by = list(mod.get("used_by") or [])
        modules.append(
            {
                "name": mod_name,
                "size": int(mod["size"]),
                "refcount": int(mod.get("refcount", len(used_by))),
                "used_by": used_by,
                "taint": mod.get("taint", ""),
            }
        )
    qemu = profile["qemu"]
    pccs = profile["pccs"]
    return {
        # keys of the shared layout contract
        "profile": name,
        "root": os.path.abspath(root),
        "qemu": {"version_text": str(qemu["version_text"]), "tdx_guest": bool(qemu["tdx_guest"])},
        "pccs": {"enabled": bool(pccs["enabled"]), "port": int(pccs.get("port", 8081))},
        "sgx_devices": bool(profile["sgx"].get("devices")),
        "pci_devices": devices,
        # host details
        "description": str(profile["description"]).strip(),
        "expected_failures": sorted(failures, key=CHECKS.index),
        "gpu_policy": policy,
        "nvtools_version": nvtools,
        "os_release": str(profile.get("os_release") or ""),
        "kernel": {
            "release": str(kernel["release"]),
            "version": str(kernel["version"]),
            "cmdline": cmdline,
            "grub": {
                "GRUB_CMDLINE_LINUX_DEFAULT": kernel["cmdline"].get("linux_default", ""),
                "GRUB_CMDLINE_LINUX": kernel["cmdline"].get("linux", ""),
            },
            "kvm_intel": {k: str(v) for k, v in (kernel.get("kvm_intel") or {}).items()},
            "dmesg_restrict": int(kernel.get("dmesg_restrict", 1)),
            "modules": modules,
        },
        "dmesg": _dmesg_records(profile, cmdline),
        "cpu": cpu,
        "memory": profile.get("memory") or {},
        "memlock": profile.get("memlock") or {"soft": "unlimited", "hard": "unlimited", "limits_d": True},
        "msr": {
            "module_loaded": bool(profile["msr"].get("module_loaded", True)),
            "values": {str(k).lower(): str(v).lower() for k, v in (profile["msr"].get("values") or {}).items()},
        },
        "sgx": copy.deepcopy(profile["sgx"]),
        "iommu": copy.deepcopy(iommu),
        "libvirt": copy.deepcopy(profile.get("libvirt") or {}),
        "ovmf": bool(profile.get("ovmf", True)),
    }


def materialize(
    profile_name: str, dest_root: str, state_file: str | None = None, profile_dir: str | None = None
) -> dict[str, Any]:
    """Build the fixture tree of ``profile_name`` under ``dest_root``; return the state.

    With ``state_file`` the state is also written there (atomically). ``dest_root`` must not
    exist or be empty.
    """
    from zerog_sim import hostfs
    from zerog_sim.state import save_active

    state = build_state(profile_name, dest_root, profile_dir)
    hostfs.build_tree(state)
    if state_file:
        save_active(state, state_file)
    return state


def set_driver(state: dict[str, Any], bdf: str, driver: str | None, state_file: str | None = None) -> None:
    """Rebind device ``bdf`` to ``driver`` (or unbind with None) in the state and the fixture tree.

    Keeps the ``driver`` link, ``/sys/bus/pci/drivers/*``, ``/dev/vfio/<group>``, ``vfio-dev`` and
    ``/dev/vfio/devices`` consistent; saves the state when ``state_file`` is given.
    """
    from zerog_sim import hostfs
    from zerog_sim.state import save_active

    devices = {d["bdf"]: d for d in state["pci_devices"]}
    if bdf not in devices:
        raise ProfileError(f"no PCI device {bdf}")
    dev = devices[bdf]
    if driver == "vfio-pci" and dev.get("iommu_group") is None:
        raise ProfileError(f"{bdf}: vfio-pci cannot bind a device without an IOMMU group")
    dev["driver"] = driver
    update_d_state(dev)
    index = 0
    for item in sorted(state["pci_devices"], key=lambda d: d["bdf"]):
        item["vfio_dev"] = f"vfio{index}" if item["driver"] == "vfio-pci" else None
        index += item["driver"] == "vfio-pci"
    hostfs.rebuild_pci(state)
    if state_file:
        save_active(state, state_file)


BIN_DIR = os.path.join(os.path.dirname(PROFILE_DIR), "bin")


def local_host(base: str, name: str, profile: str, profile_dir: str | None = None) -> dict[str, str]:
    """A simulated host on this machine, for runs with ``ansible_connection: local``.

    Under ``<base>/<name>``: the fixture tree of ``profile`` (``root``), its state file
    (``state``) and a bin directory (``bin``) holding the stand-in commands of tests/sim/bin plus
    ``timeout``, ``python3`` and ``python``, so that a PATH of that directory alone finds what
    the modules run. Returns those three paths and the work directory (``work``).
    """
    work = os.path.join(base, name)
    os.makedirs(work)
    root = os.path.join(work, "root")
    state = os.path.join(work, "active.json")
    materialize(profile, root, state, profile_dir)
    bindir = os.path.join(work, "bin")
    os.mkdir(bindir)
    for tool in sorted(os.listdir(BIN_DIR)):
        os.symlink(os.path.join(BIN_DIR, tool), os.path.join(bindir, tool))
    for tool, target in (("timeout", "/usr/bin/timeout"), ("python3", "/usr/bin/python3"), ("python", "/usr/bin/python3")):
        os.symlink(target, os.path.join(bindir, tool))
    return {"work": work, "root": root, "state": state, "bin": bindir}
