# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""private-ml-sdk ``dstack`` CVMs, for the dstack_cvm module.

Private to the collection (the leading underscore): no stability promise to other collections.

Pure functions and small readers around the checkout's own ``dstack`` script (both generations:
the 0.3-era script the 0G guide was written against and v0.5.x, see dstack-cli.md section 1):

* option parsing that follows the script's own rules (sizes, port mappings, GPU slots) and
  refuses what the script would silently get wrong (``-d 100`` is a 0 GB disk, sub-GB memory
  on v0.5, IPv6 addresses, a single port on 0.3-era scripts);
* the generation of a checkout, from the script's own ``--help`` text;
* readers of ``vm-manifest.json`` and ``shared/app-compose.json``, a comparable view of both,
  the drift between a VM directory and what is wanted, and which drift can be applied in place;
* the systemd unit that supervises ``dstack run``;
* the QEMU processes of a VM directory, found in ``/proc`` (no pidfile exists upstream).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
import time

SCRIPT_REL = "meta-dstack-nvidia/scripts/bin/dstack"
DISTRO_CONF_REL = "meta-dstack-nvidia/meta-dstack/conf/distro/dstack.conf"
MANIFEST_NAME = "vm-manifest.json"
APP_COMPOSE_REL = os.path.join("shared", "app-compose.json")
INSTANCE_INFO_REL = os.path.join("shared", ".instance_info")
DISK_NAME = "hda.img"

GEN_03 = "0.3"
GEN_05 = "0.5"

#: PATH of upstream's sample unit (docs/cvm_dstack_sample.service): sudo's secure_path would
#: otherwise hide /usr/local/bin, where qemu and friends may live.
UNIT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
#: 0.5 images copy app-compose.json into the guest only up to this size (system_setup.rs).
APP_COMPOSE_LIMIT_05 = 256 * 1024
#: First release known to carry PMS 1adf0e0 (one --port emits its hostfwd).
PORT_FIX_VERSION = (0, 5, 5)
#: Where the kernel's process table is read; tests point it at a fake tree.
PROC_ROOT = "/proc"

SIZE_UNITS_MB = {"T": 1024 * 1024, "G": 1024, "M": 1}
SIZE_RE = re.compile(r"^[0-9]+[TtGgMm]?$")
PORT_NUMBER_RE = re.compile(r"^[0-9]{1,5}$")
IPV4_RE = re.compile(r"^(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])(\.(25[0-5]|2[0-4][0-9]|1[0-9]{2}|[1-9]?[0-9])){3}$")
SLOT_RE = re.compile(r"^(?:(?P<domain>[0-9a-fA-F]{4}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<dev>[0-9a-fA-F]{2})\.(?P<fn>[0-7])$")
HELP_RE = re.compile(r"^usage: \S+ \[-h\] \{(?P<commands>[^}]*)\}", re.M)
DISTRO_VERSION_RE = re.compile(r'^\s*DISTRO_VERSION\s*[?:]?=\s*"(?P<version>[^"]+)"', re.M)
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
UNIT_NAME_RE = re.compile(r"^[A-Za-z0-9:_.@-]+\.service$")
ANY_UNIT_RE = re.compile(r"^[A-Za-z0-9:_.@-]+\.(service|target|socket|mount|path|timer|device|scope|slice)$")
#: Characters allowed in paths handed to QEMU and systemd: a comma would split QEMU's
#: -virtfs/-drive option strings, a colon selects a block protocol, and whitespace, quotes,
#: ``%``, ``$`` and ``\\`` would need systemd quoting or expand in ExecStart.
SAFE_PATH_RE = re.compile(r"^/[A-Za-z0-9._/@+-]*$")
#: 64 hex digits not preceded by ``:`` (``sha256:<digest>`` image pins are fine): what an
#: Ethereum private key looks like.
KEY_LIKE_RE = re.compile(r"(?<![0-9A-Za-z:])(?:0x)?[0-9a-fA-F]{64}(?![0-9A-Za-z])")
SPECIAL_GPUS = ("all", "none")


class DstackError(Exception):
    """A request the module refuses, or a state it cannot handle; the message says how to fix it."""

    def __init__(self, message, **details):
        super().__init__(message)
        self.message = message
        self.details = details


# ---------------------------------------------------------------------------------------------
# sizes


def upstream_size_mb(text):
    """MB for a size, exactly as the script converts it: the last character upper-cased picks
    T, G or M, and anything else means the whole text is a number of MB."""
    factor = SIZE_UNITS_MB.get(text[-1:].upper())
    if factor is None:
        return int(text)
    return int(text[:-1]) * factor


def _size_mb(option, text):
    text = str(text)
    if not SIZE_RE.match(text):
        raise DstackError(f"{option} {text!r} is not a size the dstack script understands. "
                          "Fix: write a whole number with a unit M, G or T, e.g. '8G'.")
    return upstream_size_mb(text)


def parse_memory(text, generation):
    """Memory in MB for ``-m``; refuses a bare number and, on v0.5, a size that is not whole GB."""
    mb = _size_mb("memory", text)
    if str(text)[-1:].isdigit():
        raise DstackError(f"memory {text!r} has no unit: the dstack script reads a bare number as MB "
                          f"({mb} MB). Fix: write the unit, e.g. '{text}M' or '{text}G'.")
    if mb <= 0:
        raise DstackError(f"memory {text!r} is zero. Fix: give the VM memory, e.g. '16G'.")
    if generation == GEN_05 and mb % 1024:
        got = f"{mb // 1024} GB" if mb >= 1024 else "QEMU's default of 128 MiB"
        raise DstackError(
            f"memory {text!r} is {mb} MB, but v0.5 dstack scripts give QEMU '-m {mb // 1024}G' (whole GB, "
            f"rounded down), so the VM would get {got}. Fix: use a whole number of GB, e.g. '{-(-mb // 1024)}G'.")
    return mb


def parse_disk(text):
    """Disk size in GB as stored in the manifest; refuses sizes that would be truncated."""
    mb = _size_mb("disk", text)
    if str(text)[-1:].isdigit():
        raise DstackError(f"disk {text!r} has no unit: the dstack script reads a bare number as MB and keeps "
                          f"whole GB, so it would create a {mb // 1024} GB disk. Fix: write '{text}G'.")
    if mb < 1024 or mb % 1024:
        raise DstackError(f"disk {text!r} is {mb} MB, but the dstack script keeps whole GB ({mb // 1024} GB). "
                          f"Fix: use a whole number of GB, at least '1G', e.g. '{max(1, -(-mb // 1024))}G'.")
    return mb // 1024


def size_text(text):
    """The size as passed on the command line: unit upper-cased (the script upper-cases it too)."""
    text = str(text)
    return text[:-1] + text[-1].upper()


# ---------------------------------------------------------------------------------------------
# port mappings


def parse_port(spec):
    """``proto[:address]:from:to`` -> port_map entry, in the script's key order.

    Follows the script: the value is split on ``:``, four fields give an address, three mean
    ``127.0.0.1``, the protocol is lower-cased. Beyond the script: the protocol must be tcp or
    udp (QEMU's user network knows no other), the address an IPv4 address (IPv6 cannot be written,
    the script splits on every ``:``), both ports 1-65535.
    """
    spec = str(spec)
    fields = spec.split(":")
    fix = "Fix: write 'tcp:0.0.0.0:8080:8080' (protocol, host address, host port, guest port) or 'tcp:8080:8080'."
    if "[" in spec or len(fields) > 4:
        raise DstackError(f"port mapping {spec!r} has {len(fields)} ':'-separated fields, not 3 or 4 (an IPv6 address "
                          f"cannot be given: the dstack script splits the mapping on every ':'). {fix}")
    if len(fields) == 4:
        proto, address, host_port, guest_port = fields
    elif len(fields) == 3:
        proto, host_port, guest_port = fields
        address = "127.0.0.1"
    else:
        raise DstackError(f"port mapping {spec!r} is not protocol[:address]:from:to. {fix}")
    proto = proto.lower()
    if proto not in ("tcp", "udp"):
        raise DstackError(f"port mapping {spec!r}: protocol {proto!r} is not tcp or udp. {fix}")
    if not IPV4_RE.match(address):
        raise DstackError(f"port mapping {spec!r}: {address!r} is not an IPv4 address. "
                          "Fix: use 0.0.0.0 (every host address) or 127.0.0.1 (this host only).")
    ports = []
    for value in (host_port, guest_port):
        if not PORT_NUMBER_RE.match(value) or not 0 < int(value) < 65536:
            raise DstackError(f"port mapping {spec!r}: {value!r} is not a port number 1-65535. {fix}")
        ports.append(int(value))
    return {"address": address, "protocol": proto, "from": ports[0], "to": ports[1]}


def port_spec(entry):
    """The port_map entry as a ``--port`` value (always with the address)."""
    return f"{entry['protocol']}:{entry['address']}:{entry['from']}:{entry['to']}"


def normalize_port_entry(entry):
    """A manifest port_map entry with the defaults ``run`` applies (tcp, 127.0.0.1)."""
    return {"address": entry.get("address", "127.0.0.1"), "protocol": str(entry.get("protocol", "tcp")).lower(),
            "from": entry.get("from"), "to": entry.get("to")}


def port_key(entry):
    """Sort key of a port_map entry (mappings are compared as a set)."""
    return (entry["protocol"], entry["address"], int(entry["from"]), int(entry["to"]))


def check_port_conflicts(entries):
    """Refuse two mappings of the same host port: QEMU cannot bind the second one."""
    for i, first in enumerate(entries):
        for second in entries[i + 1:]:
            same_addr = first["address"] == second["address"] or "0.0.0.0" in (first["address"], second["address"])
            if first["protocol"] == second["protocol"] and first["from"] == second["from"] and same_addr:
                raise DstackError(
                    f"port mappings {port_spec(first)!r} and {port_spec(second)!r} both use host port "
                    f"{first['from']}/{first['protocol']}: QEMU would fail with 'Could not set up host forwarding "
                    "rule'. Fix: give each mapping its own host port.")


def filler_port(entry):
    """The harmless second mapping that makes a 0.3-era script emit the first one: the same
    ports with the other protocol, on the loopback address only."""
    other = "udp" if entry["protocol"] == "tcp" else "tcp"
    return {"address": "127.0.0.1", "protocol": other, "from": entry["from"], "to": entry["to"]}


def version_tuple(text):
    """``"0.5.4.1"`` -> (0, 5, 4, 1); None when it holds no number."""
    numbers = re.findall(r"\d+", str(text or "").split("-", maxsplit=1)[0])
    return tuple(int(n) for n in numbers) if numbers else None


def needs_port_workaround(mode, generation, distro_version, port_count):
    """Whether a single mapping must get a filler (dstack-cli.md 1.4: with exactly one --port,
    0.3-era scripts emit no hostfwd; fixed by PMS 1adf0e0, first released in v0.5.5)."""
    if port_count != 1 or mode == "never":
        return False
    if mode == "always":
        return True
    if generation == GEN_03:
        return True
    version = version_tuple(distro_version)
    return version is None or version < PORT_FIX_VERSION


# ---------------------------------------------------------------------------------------------
# GPUs


def normalize_slot(value):
    """``0000:18:00.0`` / ``18:00.0`` -> ``18:00.0`` (the form the script and lsgpu use)."""
    match = SLOT_RE.match(str(value).strip())
    if not match:
        raise DstackError(f"GPU {value!r} is not a PCI address. Fix: use the slot shown by "
                          "zerog.compute.dstack_gpu_info (cvm_gpus), e.g. '18:00.0'.")
    slot = f"{match['bus']}:{match['dev']}.{match['fn']}".lower()
    domain = (match["domain"] or "0000").lower()
    return slot if domain == "0000" else f"{domain}:{slot}"


def wanted_gpus(requested, available, generation):
    """``{"mode": "listed"|"all", "slots": [...]}`` for the ``gpus`` option.

    ``all`` becomes the ``available`` list when one is given (only GPUs that discovery found
    ready); otherwise v0.5 scripts resolve it themselves at ``new`` time, and 0.3-era scripts
    would take it as a literal slot, so it is refused there.
    """
    values = [str(v).strip() for v in requested or []]
    lowered = [v.lower() for v in values]
    avail = None if available is None else [normalize_slot(v) for v in available]
    if any(v in SPECIAL_GPUS for v in lowered):
        if len(values) != 1:
            raise DstackError(f"gpus {values!r}: 'all' and 'none' must be the only entry. Fix: give either a list "
                              "of slots, [all] or [none].")
        if lowered[0] == "none":
            return {"mode": "listed", "slots": []}
        if avail is not None:
            return {"mode": "listed", "slots": sorted(avail)}
        if generation == GEN_03:
            raise DstackError("gpus [all] needs available_gpus on 0.3-era dstack scripts, which take 'all' as a "
                              "literal PCI slot. Fix: pass available_gpus (cvm_gpus of zerog.compute.dstack_gpu_info) "
                              "or list the slots.")
        return {"mode": "all", "slots": []}
    slots = [normalize_slot(v) for v in values]
    seen = set()
    for slot in slots:
        if slot in seen:
            raise DstackError(f"GPU {slot} is listed twice. Fix: list each GPU once.")
        seen.add(slot)
        if avail is not None and slot not in avail:
            raise DstackError(
                f"GPU {slot} is not among the GPUs ready for pass-through ({', '.join(avail) or 'none'}). "
                "Fix: pick one of those, or fix the GPU's binding and CC mode (see zerog.compute.dstack_gpu_info).")
    return {"mode": "listed", "slots": slots}


def manifest_gpus(manifest):
    """The GPU part of a manifest of either generation, as ``{"mode", "slots"}``."""
    if isinstance(manifest.get("gpus"), dict):
        conf = manifest["gpus"]
        slots = [g.get("slot") for g in conf.get("gpus", []) + conf.get("bridges", []) if isinstance(g, dict)]
        return {"mode": conf.get("attach_mode", "listed"), "slots": slots}
    return {"mode": "listed", "slots": list(manifest.get("gpu") or [])}


def gpus_equal(current, wanted):
    """GPU sets compare unordered; with attach mode ``all`` only the mode is compared (the
    script resolved the slots itself)."""
    if wanted["mode"] == "all" or current["mode"] == "all":
        return current["mode"] == wanted["mode"]
    return sorted(current["slots"]) == sorted(wanted["slots"])


# ---------------------------------------------------------------------------------------------
# the checkout


def parse_help(text):
    """Generation of a dstack script from its ``--help`` usage line.

    0.3-era scripts have exactly ``{new,run,lsgpu}``; v0.5 scripts add ``tag-vfio`` and
    ``serve``. Returns ``(generation, commands)``.
    """
    match = HELP_RE.search(text or "")
    if not match:
        raise DstackError("The dstack script's --help printed no 'usage: dstack [-h] {...}' line, so this is not "
                          "a private-ml-sdk dstack script. Fix: point sdk_dir at a recursive clone of "
                          "nearai/private-ml-sdk.")
    commands = [c.strip() for c in match["commands"].split(",")]
    if "new" not in commands or "run" not in commands:
        raise DstackError(f"The dstack script offers {{{','.join(commands)}}}, without new and run. "
                          "Fix: point sdk_dir at a recursive clone of nearai/private-ml-sdk.")
    generation = GEN_05 if ("tag-vfio" in commands or "serve" in commands) else GEN_03
    return generation, commands


def read_distro_version(sdk_dir):
    """DISTRO_VERSION of the images this checkout builds (meta-dstack dstack.conf), or None."""
    try:
        with open(os.path.join(sdk_dir, DISTRO_CONF_REL), encoding="utf-8") as handle:
            match = DISTRO_VERSION_RE.search(handle.read())
    except (OSError, UnicodeDecodeError):
        return None
    return match["version"] if match else None


def resolve_path(value, sdk_dir):
    """An absolute, normalised path; a relative one is taken relative to the checkout, which is
    the script's working directory (the 0G flow runs everything from private-ml-sdk/)."""
    value = os.path.expanduser(str(value))
    return os.path.normpath(value if os.path.isabs(value) else os.path.join(sdk_dir, value))


def resolve_image(image, sdk_dir):
    """``dstack-nvidia-0.5.5`` -> ``<sdk_dir>/images/dstack-nvidia-0.5.5``; a value with a ``/``
    is a path (relative to the checkout)."""
    image = str(image).rstrip("/")
    if "/" not in image:
        return os.path.normpath(os.path.join(sdk_dir, "images", image))
    return resolve_path(image, sdk_dir)


def check_image(path, generation):
    """Why the image directory cannot be used with this script generation (None when it can).

    dstack-cli.md 1.8: 0.3-era scripts need ``rootfs_hash`` in metadata.json at ``new``; v0.5
    scripts need ``digest.txt`` and a ``.img``/``.img.verity`` rootfs at ``run``.
    """
    fix = ("Fix: build the image from this checkout (./build.sh) and use images/dstack-nvidia-<version> "
           "of the same checkout: script and image generations must match.")
    metadata_path = os.path.join(path, "metadata.json")
    data, error = read_json(metadata_path)
    if error:
        return f"image {path}: {error}. {fix}"
    if not isinstance(data, dict):
        return f"image {path}: metadata.json is not a JSON object. {fix}"
    rootfs = str(data.get("rootfs", ""))
    if generation == GEN_03 and not data.get("rootfs_hash"):
        return (f"image {path} has no rootfs_hash in metadata.json (a v0.5 image, version "
                f"{data.get('version')}): this 0.3-era script fails with 'Rootfs hash not found in image info'. {fix}")
    if generation == GEN_05:
        if not rootfs.endswith((".img", ".img.verity")):
            return (f"image {path} has rootfs {rootfs!r} (a 0.3.x image, version {data.get('version')}): this v0.5 "
                    f"script fails at run with 'Unsupported rootfs image format'. {fix}")
        if not os.path.isfile(os.path.join(path, "digest.txt")):
            return f"image {path} has no digest.txt, which v0.5 scripts read at run. {fix}"
    return None


# ---------------------------------------------------------------------------------------------
# JSON files of a VM directory


def read_json(path):
    """``(data, None)`` or ``(None, why it cannot be read)``."""
    try:
        with open(path, encoding="utf-8") as handle:
            return json.load(handle), None
    except FileNotFoundError:
        return None, f"{os.path.basename(path)} does not exist"
    except (OSError, UnicodeDecodeError) as exc:
        return None, f"{os.path.basename(path)} cannot be read ({exc})"
    except ValueError as exc:
        return None, f"{os.path.basename(path)} is not valid JSON ({exc})"


def render_json(data):
    """JSON as the script writes it: ``json.dump(indent=4)``, no final newline."""
    return json.dumps(data, indent=4)


def normalize_newlines(text):
    """Text as Python's text mode reads it (the script opens the compose file that way)."""
    return text.replace("\r\n", "\n").replace("\r", "\n")


def app_compose_doc(compose_text, local_key_provider, generation):
    """``shared/app-compose.json`` as ``new`` writes it for this generation."""
    doc = {
        "manifest_version": 1,
        "name": "example",
        "version": "1.0.0",
        "features": [],
        "runner": "docker-compose",
        "docker_compose_file": compose_text,
        "local_key_provider_enabled": bool(local_key_provider),
    }
    if generation == GEN_05:
        doc["secure_time"] = False
    return doc


def sha256_text(text):
    """sha256 hex digest of a text (UTF-8)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def app_identity(raw):
    """compose hash and app id of an app-compose.json file's bytes, as the guest computes them
    (sha256 of the file; the app id is its first 20 bytes)."""
    digest = hashlib.sha256(raw).hexdigest()
    return {"compose_hash": digest, "app_id": digest[:40]}


def key_like_values(text):
    """How many 64-hex-digit values (private-key shaped) the compose text holds."""
    return len(KEY_LIKE_RE.findall(text or ""))


def inspect_vm_dir(vm_dir):
    """What a VM directory holds: exists, manifest, app_compose (with their read errors),
    disk and instance_info presence, and whether it is a partial directory."""
    info = {"exists": os.path.lexists(vm_dir), "is_dir": os.path.isdir(vm_dir) and not os.path.islink(vm_dir),
            "manifest": None, "manifest_error": None, "app_compose": None, "app_compose_error": None,
            "app_compose_raw": None, "disk": False, "instance_info": False, "partial": False}
    if not info["exists"] or not info["is_dir"]:
        return info
    info["manifest"], info["manifest_error"] = read_json(os.path.join(vm_dir, MANIFEST_NAME))
    info["app_compose"], info["app_compose_error"] = read_json(os.path.join(vm_dir, APP_COMPOSE_REL))
    if info["app_compose"] is not None:
        with open(os.path.join(vm_dir, APP_COMPOSE_REL), "rb") as handle:
            info["app_compose_raw"] = handle.read()
    if info["manifest"] is not None and not isinstance(info["manifest"], dict):
        info["manifest"], info["manifest_error"] = None, f"{MANIFEST_NAME} is not a JSON object"
    if info["app_compose"] is not None and not isinstance(info["app_compose"], dict):
        info["app_compose"], info["app_compose_error"] = None, "app-compose.json is not a JSON object"
    info["disk"] = os.path.lexists(os.path.join(vm_dir, DISK_NAME))
    info["instance_info"] = os.path.lexists(os.path.join(vm_dir, INSTANCE_INFO_REL))
    info["partial"] = info["manifest"] is None or info["app_compose"] is None
    return info


# ---------------------------------------------------------------------------------------------
# comparable views and drift


def current_view(manifest, app_compose, sdk_dir):
    """The fields the module manages, from an existing manifest and app-compose.json."""
    raw_image = manifest.get("image_path")
    compose = app_compose.get("docker_compose_file")
    return {
        "vcpu": manifest.get("vcpu"),
        "memory": manifest.get("memory"),
        "disk_size": manifest.get("disk_size"),
        "gpus": manifest_gpus(manifest),
        "port_map": sorted((normalize_port_entry(e) for e in manifest.get("port_map") or []), key=port_key),
        "image_path": resolve_path(raw_image, sdk_dir) if raw_image else None,
        "image_path_stored": raw_image,
        "pin_numa": bool(manifest.get("pin_numa", False)),
        "hugepages": bool(manifest.get("hugepages", False)),
        "compose_sha256": sha256_text(compose) if isinstance(compose, str) else None,
        "local_key_provider_enabled": bool(app_compose.get("local_key_provider_enabled", False)),
    }


def wanted_view(wanted):
    """The same fields for what the task asks for."""
    compose = wanted.get("compose_text")
    return {
        "vcpu": wanted["vcpu"],
        "memory": wanted["memory"],
        "disk_size": wanted["disk_size"],
        "gpus": wanted["gpus"],
        "port_map": sorted(wanted["port_map"], key=port_key),
        "image_path": wanted["image_path"],
        "image_path_stored": wanted["image_path"],
        "pin_numa": wanted["manifest_pin_numa"],
        "hugepages": wanted["hugepages"],
        "compose_sha256": sha256_text(compose) if compose is not None else None,
        "local_key_provider_enabled": wanted["local_key_provider"],
    }


MEASURED = ("the local key provider derives the disk key from the TD measurements (MRTD, RTMR0-3); RTMR0 "
            "covers the VM shape (vCPUs, memory, PCI devices, NUMA layout), so the existing hda.img could no "
            "longer be unlocked")
APP_ID = ("the compose text and the local_key_provider_enabled flag are hashed into the app id; a VM that "
          "has booted refuses another app id without a KMS ('App upgrade is not supported without KMS')")
IMAGE = ("another image changes the measured firmware, kernel and command line (MRTD, RTMR1-2) and, on "
         "0.3-era scripts, the rootfs_hash in shared/config.json")
DISK = "hda.img already exists with the old size, and dstack sizes the disk only when it creates it"
HOST_SIDE = "host-side setting read by dstack run; applied at the next start"
NOT_BOOTED = "read by dstack run at the next start; the VM has not booted, so no disk is sealed to its shape yet"
LKP_OFF = ("read by dstack run at the next start; the local key provider is off, so no key bound to the "
           "measurements protects the disk")
ATTACH_ALL = "attach mode 'all' is resolved by dstack new itself"
NO_DISK_YET = "hda.img does not exist yet; dstack run creates it with this size"
SAME_IMAGE = "the same image, stored relative to the working directory; rewritten as an absolute path"


def compare(current, wanted, vm):
    """Drift between an existing VM and what is wanted.

    Each entry: ``field``, ``current``, ``wanted``, ``action`` (``in_place`` = rewrite
    vm-manifest.json, or ``recreate`` = delete the VM directory and run ``new`` again) and
    ``reason``. Fields that cannot be known (compose text in check mode before the file exists)
    are skipped.
    """
    booted = vm["disk"] or vm["instance_info"]
    lkp = current["local_key_provider_enabled"]
    shape = "recreate" if booted and lkp else "in_place"
    shape_reason = MEASURED if shape == "recreate" else (NOT_BOOTED if lkp else LKP_OFF)
    drift = []

    def add(field, action, reason):
        drift.append({"field": field, "current": current[field], "wanted": wanted[field], "action": action,
                      "reason": reason})

    for field in ("vcpu", "memory", "hugepages"):
        if current[field] != wanted[field]:
            add(field, shape, shape_reason)
    if not gpus_equal(current["gpus"], wanted["gpus"]):
        if wanted["gpus"]["mode"] == "all":
            add("gpus", "recreate", ATTACH_ALL)
        else:
            add("gpus", shape, shape_reason)
    if current["disk_size"] != wanted["disk_size"]:
        add("disk_size", "recreate" if vm["disk"] else "in_place", DISK if vm["disk"] else NO_DISK_YET)
    if current["port_map"] != wanted["port_map"]:
        add("port_map", "in_place", HOST_SIDE)
    if current["pin_numa"] != wanted["pin_numa"]:
        add("pin_numa", "in_place", HOST_SIDE)
    if current["image_path"] != wanted["image_path"]:
        add("image_path", "recreate", IMAGE)
    elif current["image_path_stored"] != wanted["image_path_stored"]:
        add("image_path_stored", "in_place", SAME_IMAGE)
    if wanted["compose_sha256"] is not None and current["compose_sha256"] != wanted["compose_sha256"]:
        add("compose_sha256", "recreate", APP_ID)
    if current["local_key_provider_enabled"] != wanted["local_key_provider_enabled"]:
        add("local_key_provider_enabled", "recreate", APP_ID)
    return drift


def apply_in_place(manifest, wanted):
    """A copy of the manifest with the wanted in-place fields, in its own generation's shape
    (key order kept, so the file reads as the script wrote it)."""
    new = dict(manifest)
    new["vcpu"] = wanted["vcpu"]
    new["memory"] = wanted["memory"]
    new["disk_size"] = wanted["disk_size"]
    new["image_path"] = wanted["image_path"]
    new["image"] = os.path.basename(wanted["image_path"].rstrip("/"))
    new["port_map"] = [dict(e) for e in wanted["port_map"]]
    slots = wanted["gpus"]["slots"]
    if isinstance(manifest.get("gpus"), dict):
        new["gpus"] = {"attach_mode": "listed", "gpus": [{"slot": s} for s in slots]}
    else:
        new["gpu"] = list(slots)
    if "pin_numa" in manifest:
        new["pin_numa"] = wanted["manifest_pin_numa"]
    if "hugepages" in manifest:
        new["hugepages"] = wanted["hugepages"]
    return new


def new_args(wanted, compose_path, vm_dir, generation):
    """Arguments of ``dstack new`` (after the script path) for the wanted VM."""
    args = ["new", compose_path, "-o", vm_dir, "-i", wanted["image_path"], "-c", str(wanted["vcpu"]),
            "-m", wanted["memory_text"], "-d", wanted["disk_text"]]
    if wanted["gpus"]["mode"] == "all":
        args += ["-g", "all"]
    for slot in wanted["gpus"]["slots"]:
        args += ["-g", slot]
    for entry in wanted["port_map"]:
        args += ["-p", port_spec(entry)]
    if wanted["local_key_provider"]:
        args.append("--local-key-provider")
    if generation == GEN_05:
        if wanted["manifest_pin_numa"]:
            args.append("--pin-numa")
        if wanted["hugepages"]:
            args.append("--hugepages")
    return args


# ---------------------------------------------------------------------------------------------
# systemd unit


def check_safe_path(value, what):
    """Refuse a path that QEMU option strings or systemd's ExecStart would mangle."""
    if not SAFE_PATH_RE.match(value):
        raise DstackError(f"{what} {value!r} must be an absolute path of letters, digits and . _ / @ + - only: "
                          "QEMU splits -virtfs/-drive values on ',' and systemd expands '%', '$' and whitespace in "
                          "ExecStart. Fix: choose a plainer path.")
    return value


def run_args(vm_dir, kp_port, generation, pin_numa):
    """Arguments of ``dstack run`` (after the script path)."""
    args = ["run", vm_dir, "--kp-port", str(kp_port)]
    if generation == GEN_03 and pin_numa:
        # 0.3-era run takes --pin-numa as type=bool: any non-empty value is true
        args += ["--pin-numa", "1"]
    return args


def render_unit(name, sdk_dir, script, args, restart, restart_sec, after):
    """The systemd unit that supervises ``dstack run`` (modelled on upstream's
    docs/cvm_dstack_sample.service)."""
    deps = " ".join(["network-online.target", *after])
    return "\n".join([
        "# Managed by zerog.compute.dstack_cvm: changes are overwritten.",
        "[Unit]",
        f"Description=dstack CVM {name}",
        f"After={deps}",
        f"Wants={deps}",
        # a VM that dies at once (missing image, port taken) must not restart forever
        "StartLimitIntervalSec=600",
        "StartLimitBurst=5",
        "",
        "[Service]",
        "Type=simple",
        "User=root",
        f"WorkingDirectory={sdk_dir}",
        f"Environment=PATH={UNIT_PATH}",
        # the script's own lines (host API port, QEMU command line) reach the journal at once
        "Environment=PYTHONUNBUFFERED=1",
        "ExecStart=" + " ".join([script, *args]),
        f"Restart={restart}",
        f"RestartSec={restart_sec}",
        # QEMU (and its sudo on 0.3) dies with dstack run, so it frees its ports and GPUs
        "KillMode=control-group",
        "TimeoutStopSec=30",
        "",
        "[Install]",
        "WantedBy=multi-user.target",
        "",
    ])


def parse_show(text):
    """``systemctl show --property=...`` output -> dict."""
    props = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            props[key.strip()] = value.strip()
    return props


# ---------------------------------------------------------------------------------------------
# QEMU processes


def _read(path, binary=False):
    try:
        with open(path, "rb" if binary else "r") as handle:
            return handle.read()
    except OSError:
        return None


def _virtfs_path(argv):
    for i, arg in enumerate(argv[:-1]):
        if arg == "-virtfs":
            for part in argv[i + 1].split(","):
                if part.startswith("path="):
                    return part[len("path="):]
    return None


def find_vm_processes(vm_dir, proc_root=None):
    """QEMU processes of a VM directory: those whose ``-virtfs local,path=`` is
    ``<vm_dir>/shared`` (a relative path is resolved against the process's working directory).
    ``sudo`` and ``taskset`` wrappers are left out. Each: pid, argv, cgroup."""
    proc_root = proc_root or PROC_ROOT
    target = os.path.realpath(os.path.join(vm_dir, "shared"))
    found = []
    try:
        entries = os.listdir(proc_root)
    except OSError:
        return found
    for entry in sorted(entries, key=lambda e: (len(e), e)):
        if not entry.isdigit():
            continue
        raw = _read(os.path.join(proc_root, entry, "cmdline"), binary=True)
        if not raw:
            continue
        argv = [a.decode("utf-8", "replace") for a in raw.rstrip(b"\0").split(b"\0")]
        if os.path.basename(argv[0]) in ("sudo", "taskset", "timeout", "env"):
            continue
        path = _virtfs_path(argv)
        if path is None:
            continue
        if not os.path.isabs(path):
            try:
                cwd = os.readlink(os.path.join(proc_root, entry, "cwd"))
            except OSError:
                continue
            path = os.path.join(cwd, path)
        if os.path.realpath(path) != target:
            continue
        found.append({"pid": int(entry), "argv": argv, "cgroup": _read(os.path.join(proc_root, entry, "cgroup")) or ""})
    return found


def in_unit(process, unit_name):
    """Whether the process runs in the unit's cgroup."""
    return any(line.rstrip("/").endswith("/" + unit_name) or f"/{unit_name}/" in line
               for line in process["cgroup"].splitlines())


def hostfwd_rules(argv):
    """Port forwards of QEMU's ``-netdev user`` option, as port_map entries."""
    rules = []
    for i, arg in enumerate(argv[:-1]):
        if arg != "-netdev" or not argv[i + 1].startswith("user"):
            continue
        for part in argv[i + 1].split(","):
            if not part.startswith("hostfwd="):
                continue
            match = re.match(r"^hostfwd=(tcp|udp)?:([^:]*):(\d+)-[^:]*:(\d+)$", part)
            if match:
                rules.append({"address": match[2] or "0.0.0.0", "protocol": match[1] or "tcp",
                              "from": int(match[3]), "to": int(match[4])})
    return rules


def missing_forwards(port_map, argv):
    """port_map entries that QEMU's command line does not forward."""
    have = {port_key(r) for r in hostfwd_rules(argv)}
    return [port_spec(e) for e in port_map if port_key(normalize_port_entry(e)) not in have]


def terminate(pids, timeout=10.0, interval=0.2):
    """SIGTERM the processes, wait, SIGKILL what is left; returns the pids signalled."""
    signalled = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
            signalled.append(pid)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + timeout
    alive = list(signalled)
    while alive and time.monotonic() < deadline:
        time.sleep(interval)
        alive = [pid for pid in alive if _alive(pid)]
    for pid in alive:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return signalled


def _alive(pid):
    """Whether a process still runs (a zombie counts as gone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    stat = _read(os.path.join("/proc", str(pid), "stat")) or ""
    fields = stat.rpartition(")")[2].split()
    return not (fields and fields[0] == "Z")
