"""Stand-in for ``qemu-system-x86_64`` as started by private-ml-sdk's ``dstack run``.

The stand-in accepts the command lines both ``dstack`` generations build (see
``dstack-cli.md`` section 1.4), refuses what QEMU refuses with QEMU's wording and exit
status 1, and then boots a miniature CVM guest (:mod:`zerog_sim.guest`) that prints a
serial console on stdout and blocks until the guest powers off or a termination signal
arrives, exactly like the real process that ``dstack run`` waits for.

What is checked, in the order QEMU does it:

1. the command line (unknown options, missing arguments, ``-object`` types, ``-device``
   models, ``-netdev`` and ``-virtfs`` syntax);
2. ``-drive``/``-cdrom`` image files;
3. the TDX accelerator (the profile's ``tdx-guest`` support, KVM's ``tdx`` parameter in the
   fixture tree, ``confidential-guest-support`` pointing at an object);
4. ``hostfwd`` rules: each host socket is really bound, so a port taken by anything on the
   machine (another simulated VM included) fails like QEMU's slirp does;
5. firmware, kernel and initrd files;
6. devices, in command-line order: ``virtio-9p-pci`` (from ``-virtfs``), ``vhost-vsock-pci``
   (the guest CID must not be used by another running simulated VM), ``vfio-pci`` (the BDF must
   be in the profile, bound to ``vfio-pci`` and not assigned to another running VM).

Running VMs are recorded in a registry under ``/run/zerog-sim/vms/`` (``ZEROG_SIM_RUN_DIR``
overrides the base directory).  Messages marked SYNTHESIZED in ``tests/sim/README.md`` were built
from QEMU's format strings rather than copied from a captured run.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import select
import signal
import socket
import sys
import threading
from dataclasses import dataclass, field

from zerog_sim import guest as guest_mod
from zerog_sim import state as state_mod

PROG = "qemu-system-x86_64"
DEFAULT_RUN_DIR = "/run/zerog-sim"
TERM_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)

# Options that take an argument and are simulated.
ARG_OPTIONS = {
    "accel",
    "m",
    "smp",
    "cpu",
    "machine",
    "M",
    "object",
    "chardev",
    "serial",
    "kernel",
    "initrd",
    "bios",
    "cdrom",
    "drive",
    "device",
    "virtfs",
    "netdev",
    "fw_cfg",
    "append",
    "numa",
}
# Options without an argument that are simulated.
FLAG_OPTIONS = {"nographic", "nodefaults", "enable-kvm", "no-reboot", "no-shutdown"}
# Real QEMU options that this stand-in does not simulate (refused with a clear message,
# never with QEMU's "invalid option", which would be a lie).
REAL_UNSIMULATED = {
    "add-fd",
    "set",
    "global",
    "boot",
    "mem-path",
    "mem-prealloc",
    "k",
    "audio",
    "audiodev",
    "name",
    "uuid",
    "fda",
    "fdb",
    "hda",
    "hdb",
    "hdc",
    "hdd",
    "blockdev",
    "mtdblock",
    "sd",
    "snapshot",
    "fsdev",
    "iscsi",
    "usb",
    "usbdevice",
    "display",
    "curses",
    "full-screen",
    "g",
    "vnc",
    "vga",
    "spice",
    "acpitable",
    "smbios",
    "nic",
    "net",
    "tpmdev",
    "dtb",
    "parallel",
    "monitor",
    "qmp",
    "qmp-pretty",
    "mon",
    "debugcon",
    "pidfile",
    "S",
    "overcommit",
    "gdb",
    "s",
    "d",
    "D",
    "seed",
    "L",
    "xen-domid",
    "action",
    "loadvm",
    "daemonize",
    "option-rom",
    "rtc",
    "icount",
    "watchdog-action",
    "echr",
    "incoming",
    "only-migratable",
    "chroot",
    "runas",
    "semihosting",
    "semihosting-config",
    "readconfig",
    "no-user-config",
    "nodefconfig",
    "trace",
    "plugin",
    "msg",
    "dump-vmstate",
    "compat",
    "sandbox",
    "preconfig",
    "h",
    "help",
    "run-with",
    "async-teardown",
    "no-hpet",
    "no-acpi",
    "portrait",
    "rotate",
    "device-help",
    "iothread",
    "cpu-help",
    "kernel-irqchip",
    "sd-card",
    "qtest",
    "qtest-log",
    "trace-unassigned",
}

# User-creatable object types of a QEMU 9.x x86_64 build (``-object help``), without tdx-guest.
OBJECT_TYPES = [
    "acpi-generic-initiator",
    "authz-list",
    "authz-list-file",
    "authz-simple",
    "can-bus",
    "can-host-socketcan",
    "colo-compare",
    "cryptodev-backend",
    "cryptodev-backend-builtin",
    "cryptodev-vhost-user",
    "dbus-vmstate",
    "filter-buffer",
    "filter-dump",
    "filter-mirror",
    "filter-redirector",
    "filter-replay",
    "filter-rewriter",
    "input-barrier",
    "input-linux",
    "iommufd",
    "iothread",
    "main-loop",
    "memory-backend-file",
    "memory-backend-memfd",
    "memory-backend-ram",
    "pr-manager-helper",
    "qtest",
    "rng-builtin",
    "rng-egd",
    "rng-random",
    "secret",
    "secret_keyring",
    "sev-guest",
    "thread-context",
    "throttle-group",
    "tls-cipher-suites",
    "tls-creds-anon",
    "tls-creds-psk",
    "tls-creds-x509",
    "x-remote-object",
]
SIMULATED_OBJECTS = {"tdx-guest", "iommufd", "memory-backend-file", "memory-backend-ram"}

# Device models the stand-in knows, with the properties it accepts.
DEVICE_PROPS: dict[str, set[str]] = {
    "virtio-blk-pci": {"drive", "id", "bus", "addr", "bootindex", "serial"},
    "virtio-net-pci": {"netdev", "id", "bus", "addr", "mac"},
    "vhost-vsock-pci": {"guest-cid", "id", "bus", "addr"},
    "pcie-root-port": {"id", "bus", "chassis", "slot", "port", "addr", "multifunction"},
    "pxb-pcie": {"id", "bus", "addr", "numa_node", "bus_nr"},
    "vfio-pci": {"host", "id", "bus", "addr", "iommufd", "sysfsdev", "x-vga", "rombar"},
}
DEVICE_HELP = """Controller/Bridge/Hub devices:
name "pcie-root-port", bus PCI
name "pxb-pcie", bus PCI, desc "PCI Express Expander Bridge"

Storage devices:
{ninep}name "virtio-blk-pci", bus PCI, alias "virtio-blk"

Network devices:
name "virtio-net-pci", bus PCI, alias "virtio-net"

Misc devices:
name "vfio-pci", bus PCI, desc "VFIO-based PCI device assignment"
{vsock}"""

SIZE_HINT = "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively."


class QemuError(Exception):
    """A startup failure, printed the way QEMU's ``error_report`` prints it."""

    def __init__(self, message: str, location: str | None = None, raw: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.location = location
        self.raw = raw

    def render(self) -> str:
        """Return the text QEMU writes to stderr."""
        if self.raw:
            return self.message
        if self.location:
            return f"{PROG}: {self.location}: {self.message}"
        return f"{PROG}: {self.message}"


class NotSimulated(QemuError):
    """A real QEMU option or value that the simulation does not implement (exit status 70)."""

    def render(self) -> str:
        where = f"{self.location}: " if self.location else ""
        return f"{PROG}: zerog-sim: not simulated: {where}{self.message}"


@dataclass
class Opt:
    """One ``-option value`` pair from the command line."""

    name: str
    value: str
    location: str
    props: dict[str, str] = field(default_factory=dict)
    multi: dict[str, list[str]] = field(default_factory=dict)


@dataclass
class HostFwd:
    """One parsed ``hostfwd=`` rule of a ``-netdev user``."""

    rule: str
    proto: str
    host_addr: str
    host_port: int
    guest_addr: str
    guest_port: int


@dataclass
class Config:
    """Everything the command line asked for, in QEMU's terms."""

    memory_mb: int = 128
    vcpus: int = 1
    cpu: str = ""
    accel: str = ""
    machine: dict[str, str] = field(default_factory=dict)
    machine_location: str = ""
    objects: list[Opt] = field(default_factory=list)
    chardevs: list[Opt] = field(default_factory=list)
    serials: list[Opt] = field(default_factory=list)
    devices: list[Opt] = field(default_factory=list)  # includes the -virtfs pseudo devices
    drives: list[Opt] = field(default_factory=list)  # includes -cdrom pseudo drives
    netdevs: list[Opt] = field(default_factory=list)
    numa: list[Opt] = field(default_factory=list)
    fw_cfg: list[Opt] = field(default_factory=list)
    kernel: str | None = None
    initrd: str | None = None
    bios: str | None = None
    append: str = ""
    nographic: bool = False
    nodefaults: bool = False
    no_shutdown: bool = False


# --------------------------------------------------------------------------------------------
# State and registry
# --------------------------------------------------------------------------------------------


def load_state() -> dict:
    """Return the active host profile (raises ``state.StateError`` when there is none)."""
    return state_mod.load_active()


def run_dir() -> str:
    """Base directory of the running-VM registry."""
    return os.environ.get("ZEROG_SIM_RUN_DIR", DEFAULT_RUN_DIR)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class Registry:
    """Records running simulated VMs (guest CID, GPUs) so others can detect collisions."""

    def __init__(self, base: str) -> None:
        self.dir = os.path.join(base, "vms")
        self._lock_fd: int | None = None
        self.entry_path: str | None = None

    def __enter__(self) -> Registry:
        os.makedirs(self.dir, exist_ok=True)
        self._lock_fd = os.open(os.path.join(self.dir, ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        return self

    def __exit__(self, *exc: object) -> None:
        if self._lock_fd is not None:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)
            os.close(self._lock_fd)
            self._lock_fd = None

    def running(self) -> list[dict]:
        """Entries of VMs whose process is still alive (stale entries are removed)."""
        entries = []
        for name in sorted(os.listdir(self.dir)):
            if not name.endswith(".json"):
                continue
            path = os.path.join(self.dir, name)
            try:
                with open(path, encoding="utf-8") as handle:
                    entry = json.load(handle)
            except (OSError, ValueError):
                continue
            if entry.get("pid") == os.getpid():
                continue
            if not _pid_alive(int(entry.get("pid", 0))):
                with contextlib.suppress(OSError):
                    os.unlink(path)
                continue
            entries.append(entry)
        return entries

    def register(self, entry: dict) -> None:
        """Write this process's entry."""
        self.entry_path = os.path.join(self.dir, f"{os.getpid()}.json")
        tmp = self.entry_path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as handle:
            json.dump(entry, handle, indent=2)
        os.replace(tmp, self.entry_path)

    def unregister(self) -> None:
        """Remove this process's entry."""
        if self.entry_path:
            with contextlib.suppress(OSError):
                os.unlink(self.entry_path)
            self.entry_path = None


# --------------------------------------------------------------------------------------------
# Command-line parsing
# --------------------------------------------------------------------------------------------


def split_opts(text: str) -> list[str]:
    """Split a QemuOpts string on commas, where ``,,`` stands for a literal comma."""
    parts: list[str] = []
    buf: list[str] = []
    i = 0
    while i < len(text):
        char = text[i]
        if char == ",":
            if i + 1 < len(text) and text[i + 1] == ",":
                buf.append(",")
                i += 2
                continue
            parts.append("".join(buf))
            buf = []
        else:
            buf.append(char)
        i += 1
    parts.append("".join(buf))
    return parts


def parse_opts(opt: Opt, implied: str | None, repeatable: tuple[str, ...] = ()) -> None:
    """Fill ``opt.props`` (last value wins) and ``opt.multi`` (every value of repeatable keys)."""
    for index, part in enumerate(split_opts(opt.value)):
        if "=" in part:
            key, value = part.split("=", 1)
        elif index == 0 and implied:
            key, value = implied, part
        elif part.startswith("no") and len(part) > 2:
            key, value = part[2:], "off"
        else:
            key, value = part, "on"
        if not key:
            raise QemuError(f"Invalid parameter '{part}'", opt.location)
        opt.props[key] = value
        if key in repeatable:
            opt.multi.setdefault(key, []).append(value)


def parse_size(text: str, default_suffix: str = "M") -> int | None:
    """Parse a QEMU size (``4G``, ``4096M``, ``1024``) into MiB, or ``None`` if malformed."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtTpPeE]?)[bB]?", text.strip())
    if not match:
        return None
    number = float(match.group(1))
    suffix = (match.group(2) or default_suffix).upper()
    factor = {"K": 1 / 1024, "M": 1, "G": 1024, "T": 1024**2, "P": 1024**3, "E": 1024**4}[suffix]
    return int(number * factor)


def qemu_version(state: dict) -> tuple[int, int]:
    """Major and minor version out of ``state["qemu"]["version_text"]``."""
    text = state.get("qemu", {}).get("version_text", "")
    match = re.search(r"version (\d+)\.(\d+)", text)
    if not match:
        return (8, 2)
    return (int(match.group(1)), int(match.group(2)))


def copyright_line(state: dict) -> str:
    """The copyright line QEMU prints after its version (year of that release series)."""
    qemu = state.get("qemu", {})
    year = qemu.get("copyright_year")
    if year is None:
        major, _minor = qemu_version(state)
        year = 2015 + major  # 6.x: 2021, 7.x: 2022, 8.x: 2023, 9.x: 2024, 10.x: 2025
    return f"Copyright (c) 2003-{year} Fabrice Bellard and the QEMU Project developers"


def object_types(state: dict) -> list[str]:
    """``-object help`` list for the active profile."""
    types = list(OBJECT_TYPES)
    if state.get("qemu", {}).get("tdx_guest"):
        types.append("tdx-guest")
    return sorted(types)


def parse_argv(argv: list[str], state_getter) -> Config:
    """Parse ``argv`` like QEMU.  ``--version``/``help`` requests print and raise ``SystemExit(0)``."""
    cfg = Config()
    i = 0
    while i < len(argv):
        arg = argv[i]
        if not arg.startswith("-") or arg == "-":
            raise NotSimulated("a positional disk image argument is not simulated", arg)
        name = arg[2:] if arg.startswith("--") else arg[1:]
        if name == "version":
            state = state_getter()
            print(state.get("qemu", {}).get("version_text", "QEMU emulator version 0.0.0"))
            print(copyright_line(state))
            raise SystemExit(0)
        if name in FLAG_OPTIONS:
            if name == "nographic":
                cfg.nographic = True
            elif name == "nodefaults":
                cfg.nodefaults = True
            elif name == "enable-kvm":
                cfg.accel = "kvm"
            elif name == "no-shutdown":
                cfg.no_shutdown = True
            i += 1
            continue
        if name in ARG_OPTIONS:
            if i + 1 >= len(argv):
                raise QemuError("requires an argument", arg)
            opt = Opt(name="machine" if name == "M" else name, value=argv[i + 1], location=f"{arg} {argv[i + 1]}")
            _handle_option(cfg, opt, state_getter)
            i += 2
            continue
        if name in REAL_UNSIMULATED:
            raise NotSimulated("option not simulated", arg)
        raise QemuError("invalid option", arg)
    return cfg


def _handle_option(cfg: Config, opt: Opt, state_getter) -> None:
    """Store one option, doing the checks QEMU does while parsing the command line."""
    name, value = opt.name, opt.value
    if name == "object":
        if value == "help":
            print("List of user creatable objects:")
            for obj in object_types(state_getter()):
                print(f"  {obj}")
            raise SystemExit(0)
        parse_opts(opt, "qom-type")
        qom_type = opt.props.get("qom-type", "")
        if qom_type not in object_types(state_getter()):
            raise QemuError(f"Parameter 'qom-type' does not accept value '{qom_type}'", opt.location)
        if qom_type not in SIMULATED_OBJECTS:
            raise NotSimulated(f"object type '{qom_type}'", opt.location)
        if "id" not in opt.props:
            raise QemuError("Parameter 'id' is missing", opt.location)
        cfg.objects.append(opt)
    elif name == "device":
        if value == "help":
            state = state_getter()
            qemu = state.get("qemu", {})
            ninep = 'name "virtio-9p-pci", bus PCI, alias "virtio-9p"\n' if qemu.get("virtfs", True) else ""
            vsock = 'name "vhost-vsock-pci", bus PCI\n' if qemu.get("vhost_vsock", True) else ""
            print(DEVICE_HELP.format(ninep=ninep, vsock=vsock), end="")
            raise SystemExit(0)
        parse_opts(opt, "driver")
        driver = opt.props.get("driver", "")
        if driver not in DEVICE_PROPS:
            raise QemuError(f"'{driver}' is not a valid device model name", opt.location)
        cfg.devices.append(opt)
    elif name == "machine":
        parse_opts(opt, "type")
        cfg.machine.update(opt.props)
        cfg.machine_location = opt.location
        mtype = cfg.machine.get("type", "q35")
        if mtype not in ("q35", "pc-q35") and not mtype.startswith("pc-q35-"):
            raise NotSimulated(f"machine type '{mtype}'", opt.location)
    elif name == "accel":
        parse_opts(opt, "accel")
        accel = opt.props.get("accel", "")
        if accel != "kvm":
            raise NotSimulated(f"accelerator '{accel}'", opt.location)
        cfg.accel = accel
    elif name == "netdev":
        parse_opts(opt, "type", repeatable=("hostfwd", "guestfwd"))
        ntype = opt.props.get("type", "")
        if ntype != "user":
            raise NotSimulated(f"netdev type '{ntype}'", opt.location)
        if "id" not in opt.props:
            raise QemuError("Parameter 'id' is missing", opt.location)
        cfg.netdevs.append(opt)
    elif name == "virtfs":
        parse_opts(opt, "fsdriver")
        if opt.props.get("fsdriver") != "local":
            raise NotSimulated(f"virtfs driver '{opt.props.get('fsdriver')}'", opt.location)
        if "mount_tag" not in opt.props:
            raise QemuError("Usage: -virtfs fsdriver,mount_tag=tag", opt.location)
        if "path" not in opt.props:
            raise QemuError(
                "Usage: -virtfs fsdriver,path=/share_path/,security_model="
                "[mapped-xattr|mapped-file|passthrough|none],mount_tag=tag",
                opt.location,
            )
        opt.props["driver"] = "virtio-9p-pci"
        cfg.devices.append(opt)
    elif name == "chardev":
        parse_opts(opt, "backend")
        if opt.props.get("backend") != "stdio":
            raise NotSimulated(f"chardev backend '{opt.props.get('backend')}'", opt.location)
        if "id" not in opt.props:
            raise QemuError("Parameter 'id' is missing", opt.location)
        cfg.chardevs.append(opt)
    elif name == "serial":
        if not (value.startswith("chardev:") or value in ("stdio", "mon:stdio", "none")):
            raise NotSimulated(f"serial backend '{value}'", opt.location)
        cfg.serials.append(opt)
    elif name == "m":
        size = parse_size(value.split(",")[0].removeprefix("size="))
        if size is None:
            raise QemuError("Parameter 'size' expects a non-negative number below 2^64\n" + SIZE_HINT, opt.location)
        cfg.memory_mb = size or 128  # QEMU treats 0 as "use the default size"
    elif name == "smp":
        parse_opts(opt, "cpus")
        try:
            cfg.vcpus = int(opt.props.get("cpus", "1"), 0)
        except ValueError as exc:
            raise QemuError("Parameter 'cpus' expects an integer", opt.location) from exc
    elif name == "cpu":
        cfg.cpu = value
    elif name == "drive":
        parse_opts(opt, None)
        unknown = set(opt.props) - {
            "file",
            "if",
            "id",
            "format",
            "media",
            "index",
            "readonly",
            "cache",
            "aio",
            "discard",
            "snapshot",
        }
        if unknown:
            raise QemuError(f"Invalid parameter '{sorted(unknown)[0]}'", opt.location)
        cfg.drives.append(opt)
    elif name == "cdrom":
        opt.props = {"file": value, "media": "cdrom", "if": "ide"}
        cfg.drives.append(opt)
    elif name in ("kernel", "initrd", "bios"):
        setattr(cfg, name, value)
    elif name == "append":
        cfg.append = value
    elif name == "fw_cfg":
        parse_opts(opt, None)
        if "name" not in opt.props:
            raise QemuError("invalid argument(s)", opt.location)
        cfg.fw_cfg.append(opt)
    elif name == "numa":
        parse_opts(opt, "type")
        cfg.numa.append(opt)


def parse_hostfwd(rule: str) -> HostFwd:
    """Parse ``[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport`` like QEMU's slirp code."""

    def fail(reason: str) -> QemuError:
        return QemuError(f"Invalid host forwarding rule '{rule}' ({reason})")

    if ":" not in rule:
        raise fail("No : separators")
    proto, rest = rule.split(":", 1)
    if proto not in ("tcp", "udp", ""):
        raise fail("Bad protocol name")
    if ":" not in rest:
        raise fail("Missing : separator")
    host_addr, rest = rest.split(":", 1)
    if host_addr and not _is_ipv4(host_addr):
        raise fail("Bad host address")
    if "-" not in rest:
        raise fail("Bad host port separator")
    host_port_text, rest = rest.split("-", 1)
    host_port = _to_int(host_port_text)
    if host_port is None or not 0 <= host_port <= 65535:
        raise fail("Bad host port")
    if ":" not in rest:
        raise fail("Missing guest address")
    guest_addr, guest_port_text = rest.split(":", 1)
    if guest_addr and not _is_ipv4(guest_addr):
        raise fail("Bad guest address")
    guest_port = _to_int(guest_port_text)
    if guest_port is None or not 1 <= guest_port <= 65535:
        raise fail("Bad guest port")
    return HostFwd(
        rule=rule, proto=proto or "tcp", host_addr=host_addr, host_port=host_port, guest_addr=guest_addr, guest_port=guest_port
    )


def _is_ipv4(text: str) -> bool:
    try:
        socket.inet_aton(text)
    except OSError:
        return False
    return True


def _to_int(text: str) -> int | None:
    try:
        return int(text, 0)
    except ValueError:
        return None


def normalize_bdf(host: str) -> str:
    """``18:00.0`` -> ``0000:18:00.0`` (QEMU's default PCI domain is 0)."""
    host = host.lower()
    return host if host.count(":") == 2 else f"0000:{host}"


# --------------------------------------------------------------------------------------------
# Startup checks
# --------------------------------------------------------------------------------------------


class Machine:
    """Carries a parsed configuration through QEMU's startup phases."""

    def __init__(self, cfg: Config, state: dict) -> None:
        self.cfg = cfg
        self.state = state
        self.qemu = state.get("qemu", {})
        self.listeners: list[tuple[HostFwd, socket.socket]] = []
        self.cid: int | None = None
        self.gpus: list[dict] = []
        self.shared_dir: str | None = None
        self.tdx = False

    # Phase 2: block devices --------------------------------------------------------------
    def check_drives(self) -> None:
        for drive in self.cfg.drives:
            path = drive.props.get("file")
            if path and not os.path.exists(path):
                raise QemuError(f"Could not open '{path}': No such file or directory", drive.location)

    # Phase 3: accelerator --------------------------------------------------------------
    def check_accel(self) -> None:
        cgs = self.cfg.machine.get("confidential-guest-support")
        if not cgs:
            return
        target = next((o for o in self.cfg.objects if o.props.get("id") == cgs), None)
        if target is None:
            major, minor = qemu_version(self.state)
            raise QemuError(
                f"Property 'pc-q35-{major}.{minor}-machine.confidential-guest-support' can't find value '{cgs}'",
                self.cfg.machine_location,
            )
        if target.props.get("qom-type") != "tdx-guest":
            raise NotSimulated(f"confidential guest support object '{target.props.get('qom-type')}'")
        root = self.state.get("root", "/")
        param = os.path.join(root, "sys/module/kvm_intel/parameters/tdx")
        if os.path.exists(param):
            with open(param, encoding="utf-8") as handle:
                if handle.read().strip() not in ("Y", "1"):
                    raise QemuError("vm-type TDX not supported by KVM")
        self.tdx = True

    # Phase 4: netdevs (hostfwd) ----------------------------------------------------------
    def bind_hostfwds(self) -> None:
        for netdev in self.cfg.netdevs:
            for rule in netdev.multi.get("hostfwd", []):
                try:
                    fwd = parse_hostfwd(rule)
                except QemuError as exc:
                    exc.location = netdev.location
                    raise
                kind = socket.SOCK_STREAM if fwd.proto == "tcp" else socket.SOCK_DGRAM
                sock = socket.socket(socket.AF_INET, kind)
                if kind == socket.SOCK_STREAM:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    sock.bind((fwd.host_addr or "0.0.0.0", fwd.host_port))
                    if kind == socket.SOCK_STREAM:
                        sock.listen(16)
                except OSError as exc:
                    sock.close()
                    raise QemuError(f"Could not set up host forwarding rule '{rule}'") from exc
                self.listeners.append((fwd, sock))

    # Phase 5: firmware, kernel, initrd -------------------------------------------------
    def check_boot_files(self) -> None:
        cfg = self.cfg
        if cfg.initrd and not cfg.kernel:
            raise QemuError("-initrd cannot be used without -kernel option")
        if cfg.bios and not os.path.isfile(cfg.bios):
            raise QemuError(f"qemu: could not load PC BIOS '{cfg.bios}'", raw=True)
        if cfg.kernel and not os.path.isfile(cfg.kernel):
            raise QemuError(f"qemu: could not open kernel file '{cfg.kernel}': No such file or directory", raw=True)
        if cfg.initrd and not os.path.isfile(cfg.initrd):
            raise QemuError(
                f"qemu: error reading initrd {cfg.initrd}: Failed to open file "
                f"\u201c{cfg.initrd}\u201d: No such file or directory",
                raw=True,
            )

    # Phase 6: devices --------------------------------------------------------------------
    def realize_devices(self, others: list[dict]) -> None:
        buses = {"pcie.0"}
        drive_ids = {d.props["id"] for d in self.cfg.drives if "id" in d.props}
        netdev_ids = {n.props["id"] for n in self.cfg.netdevs}
        iommufd_ids = {o.props["id"] for o in self.cfg.objects if o.props.get("qom-type") == "iommufd"}
        used_drives: set[str] = set()
        for dev in self.cfg.devices:
            driver = dev.props["driver"]
            if dev.name == "virtfs":
                self._realize_virtfs(dev)
                continue
            for prop in dev.props:
                if prop != "driver" and prop not in DEVICE_PROPS[driver]:
                    raise QemuError(f"Property '{driver}.{prop}' not found", dev.location)
            bus = dev.props.get("bus")
            if bus and bus not in buses:
                raise QemuError(f"Bus '{bus}' not found", dev.location)
            if driver in ("pcie-root-port", "pxb-pcie") and "id" in dev.props:
                buses.add(dev.props["id"])
            elif driver == "virtio-blk-pci":
                ref = dev.props.get("drive", "")
                if ref not in drive_ids:
                    raise QemuError(f"Property '{driver}.drive' can't find value '{ref}'", dev.location)
                if ref in used_drives:
                    raise QemuError(f"Property '{driver}.drive' can't take value '{ref}', it's in use", dev.location)
                used_drives.add(ref)
            elif driver == "virtio-net-pci":
                ref = dev.props.get("netdev", "")
                if ref and ref not in netdev_ids:
                    raise QemuError(f"Property '{driver}.netdev' can't find value '{ref}'", dev.location)
            elif driver == "vhost-vsock-pci":
                self._realize_vsock(dev, others)
            elif driver == "vfio-pci":
                ref = dev.props.get("iommufd")
                if ref and ref not in iommufd_ids:
                    raise QemuError(f"Property '{driver}.iommufd' can't find value '{ref}'", dev.location)
                self._realize_vfio(dev, others)

    def _realize_virtfs(self, dev: Opt) -> None:
        if not self.qemu.get("virtfs", True):
            raise QemuError("'virtio-9p-pci' is not a valid device model name", dev.location)
        path = dev.props["path"]
        if not os.path.isdir(path):
            fsdev = dev.props.get("id", dev.props["mount_tag"])
            raise QemuError(
                f"cannot initialize fsdev '{fsdev}': failed to open '{path}': No such file or directory", dev.location
            )
        if dev.props["mount_tag"] == "host-shared":
            self.shared_dir = os.path.abspath(path)

    def _realize_vsock(self, dev: Opt, others: list[dict]) -> None:
        if not self.qemu.get("vhost_vsock", True):
            raise QemuError("vhost-vsock: failed to open vhost device: No such file or directory", dev.location)
        cid = _to_int(dev.props.get("guest-cid", "0"))
        if cid is None or cid <= 2 or cid >= 0xFFFFFFFF:
            raise QemuError("vhost-vsock: guest-cid property must be greater than 2", dev.location)
        if any(entry.get("cid") == cid for entry in others):
            raise QemuError("vhost-vsock: unable to set guest cid: Address already in use", dev.location)
        self.cid = cid

    def _realize_vfio(self, dev: Opt, others: list[dict]) -> None:
        host = dev.props.get("host") or dev.props.get("sysfsdev", "").rsplit("/", 1)[-1]
        if not host:
            raise QemuError(
                "vfio-pci: No provided host device - Use -device vfio-pci,host=DDDD:BB:DD.F "
                "or -device vfio-pci,sysfsdev=PATH_TO_DEVICE",
                dev.location,
            )
        bdf = normalize_bdf(host)
        sysfs = f"/sys/bus/pci/devices/{bdf}"
        devices = self.state.get("pci_devices", [])
        found = next((d for d in devices if normalize_bdf(d.get("bdf", "")) == bdf), None)
        if found is None:
            raise QemuError(f"vfio {sysfs}: no such host device: No such file or directory", dev.location)
        vfio_dev = f"{sysfs}/vfio-dev"
        if found.get("driver") != "vfio-pci" or found.get("iommu_group") is None:
            raise QemuError(
                f"vfio {bdf}: vfio {vfio_dev}: couldn't open directory {vfio_dev}: No such file or directory", dev.location
            )
        bound = [d for d in devices if d.get("driver") == "vfio-pci" and d.get("iommu_group") is not None]
        index = bound.index(found)
        busy = any(bdf in entry.get("gpus", []) for entry in others) or any(g["bdf"] == bdf for g in self.gpus)
        if busy:
            raise QemuError(f"vfio {bdf}: vfio {vfio_dev}: Failed to open /dev/vfio/devices/vfio{index}", dev.location)
        self.gpus.append({**found, "bdf": bdf})

    # Console ----------------------------------------------------------------------------
    def console_on_stdout(self) -> bool:
        """Whether the guest's first serial port is wired to this process's stdout."""
        stdio_ids = {c.props["id"] for c in self.cfg.chardevs}
        if self.cfg.serials:
            first = self.cfg.serials[0].value
            if first.startswith("chardev:"):
                return first.split(":", 1)[1] in stdio_ids
            return first in ("stdio", "mon:stdio")
        return self.cfg.nographic and not self.cfg.nodefaults


# --------------------------------------------------------------------------------------------
# Host forwarding (slirp) at run time
# --------------------------------------------------------------------------------------------


class Forwarder:
    """Serves the bound ``hostfwd`` sockets, passing connections to the guest network."""

    def __init__(
        self, listeners: list[tuple[HostFwd, socket.socket]], network: guest_mod.GuestNetwork, stop: threading.Event
    ) -> None:
        self.listeners = listeners
        self.network = network
        self.stop = stop
        self.threads: list[threading.Thread] = []

    def start(self) -> None:
        for fwd, sock in self.listeners:
            if fwd.proto != "tcp":
                continue  # UDP rules hold their host port but forward nothing (see README)
            thread = threading.Thread(target=self._accept_loop, args=(fwd, sock), daemon=True)
            thread.start()
            self.threads.append(thread)

    def close(self) -> None:
        for _fwd, sock in self.listeners:
            with contextlib.suppress(OSError):
                sock.close()

    def _accept_loop(self, fwd: HostFwd, sock: socket.socket) -> None:
        sock.settimeout(0.2)
        while not self.stop.is_set():
            try:
                client, _addr = sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(fwd, client), daemon=True).start()

    def _serve(self, fwd: HostFwd, client: socket.socket) -> None:
        target = self.network.lookup("tcp", fwd.guest_addr or guest_mod.GUEST_IP, fwd.guest_port)
        upstream = None
        if target is not None:
            try:
                upstream = socket.create_connection(target, timeout=2)
            except OSError:
                upstream = None
        if upstream is None:
            # Nothing listens on that guest port: the guest resets slirp's connection and the
            # host client sees its accepted connection closed.
            with contextlib.suppress(OSError):
                client.close()
            return
        _pipe(client, upstream, self.stop)


def _pipe(left: socket.socket, right: socket.socket, stop: threading.Event) -> None:
    """Copy bytes both ways until either side closes."""
    sockets = [left, right]
    try:
        for sock in sockets:
            sock.setblocking(False)
        while not stop.is_set():
            readable, _w, _x = select.select(sockets, [], [], 0.2)
            for sock in readable:
                other = right if sock is left else left
                try:
                    data = sock.recv(65536)
                except BlockingIOError:
                    continue
                if not data:
                    return
                other.setblocking(True)
                other.sendall(data)
                other.setblocking(False)
    except OSError:
        return
    finally:
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.close()


# --------------------------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------------------------


def _sender_name(pid: int) -> str:
    """First word of ``/proc/<pid>/cmdline``, as QEMU's ``qemu_get_pid_name`` reports it."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as handle:
            raw = handle.read()
    except OSError:
        return "<unknown process>"
    first = raw.split(b"\0", 1)[0].decode(errors="replace")
    return first or "<unknown process>"


def _start(cfg: Config, state: dict) -> tuple[Machine, Registry]:
    """Run the startup checks, holding the registry lock so CID/GPU checks are atomic."""
    machine = Machine(cfg, state)
    machine.check_drives()
    machine.check_accel()
    registry = Registry(run_dir())
    with registry:
        others = registry.running()
        try:
            machine.bind_hostfwds()
            machine.check_boot_files()
            machine.realize_devices(others)
        except QemuError:
            for _fwd, sock in machine.listeners:
                sock.close()
            raise
        registry.register(
            {
                "pid": os.getpid(),
                "cid": machine.cid,
                "gpus": [g["bdf"] for g in machine.gpus],
                "hostfwd": [fwd.rule for fwd, _sock in machine.listeners],
                "vm_dir": os.path.dirname(machine.shared_dir) if machine.shared_dir else None,
            }
        )
    return machine, registry


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``qemu-system-x86_64`` stand-in."""
    argv = list(sys.argv[1:] if argv is None else argv)
    state_cache: dict = {}

    def state_getter() -> dict:
        if "state" not in state_cache:
            state_cache["state"] = load_state()
        return state_cache["state"]

    try:
        cfg = parse_argv(argv, state_getter)
        state = state_getter()
        machine, registry = _start(cfg, state)
    except SystemExit as exc:
        sys.stdout.flush()
        return int(exc.code or 0)
    except NotSimulated as exc:
        print(exc.render(), file=sys.stderr)
        return state_mod.EXIT_NOT_SIMULATED
    except QemuError as exc:
        print(exc.render(), file=sys.stderr)
        return 1
    except state_mod.StateError as exc:
        print(f"{PROG}: zerog-sim: {exc}", file=sys.stderr)
        return state_mod.EXIT_NOT_SIMULATED
    except OSError as exc:  # e.g. the registry directory cannot be created
        print(f"{PROG}: zerog-sim: {exc}", file=sys.stderr)
        return state_mod.EXIT_NOT_SIMULATED

    signal.pthread_sigmask(signal.SIG_BLOCK, TERM_SIGNALS)
    stop = threading.Event()
    network = guest_mod.GuestNetwork()
    forwarder = Forwarder(machine.listeners, network, stop)
    spec = guest_mod.BootSpec(
        kernel=os.path.abspath(cfg.kernel) if cfg.kernel else None,
        initrd=os.path.abspath(cfg.initrd) if cfg.initrd else None,
        bios=os.path.abspath(cfg.bios) if cfg.bios else None,
        append=cfg.append,
        memory_mb=cfg.memory_mb,
        vcpus=cfg.vcpus,
        tdx=machine.tdx,
        shared_dir=machine.shared_dir,
        drives=[os.path.abspath(d.props["file"]) for d in cfg.drives if d.props.get("file") and d.props.get("media") != "cdrom"],
        cdroms=[os.path.abspath(d.props["file"]) for d in cfg.drives if d.props.get("file") and d.props.get("media") == "cdrom"],
        gpus=machine.gpus,
        cid=machine.cid,
        has_network=bool(cfg.netdevs),
    )
    console = guest_mod.Console(enabled=machine.console_on_stdout())
    vm = guest_mod.Guest(spec, console, network, stop)
    forwarder.start()
    thread = threading.Thread(target=vm.run, name="guest", daemon=True)
    thread.start()
    try:
        while True:
            info = signal.sigtimedwait(TERM_SIGNALS, 0.1)
            if info is not None:
                if info.si_pid:
                    message = (
                        f"{PROG}: terminating on signal {info.si_signo} from pid {info.si_pid} ({_sender_name(info.si_pid)})"
                    )
                else:
                    message = f"{PROG}: terminating on signal {info.si_signo}"
                print(message, file=sys.stderr, flush=True)
                break
            if not thread.is_alive() and not cfg.no_shutdown:
                break
    finally:
        stop.set()
        thread.join(timeout=15)
        forwarder.close()
        registry.unregister()
    if vm.outcome == "crashed":
        return state_mod.EXIT_NOT_SIMULATED
    return 0


if __name__ == "__main__":
    sys.exit(main())
