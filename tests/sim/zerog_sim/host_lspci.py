"""Stand-in for pciutils ``lspci`` (Debian 12's pciutils 3.9.0), driven by the active host state.

Simulated: plain listing, ``-n``/``-nn``, ``-k``, ``-vv`` (with ``-k``: ``Kernel driver in use:``
and ``Kernel modules:`` lines), ``-D``, ``-d [vendor]:[device][:class[:prog-if]]`` and
``-s [[[[domain]:]bus]:][slot][.[func]]`` selection, in any combination and order. Option
parsing and its errors follow pciutils + glibc getopt: an invalid option prints glibc's
``lspci: invalid option -- 'z'`` and the usage text on stderr and exits 1 (checked against the
real lspci 3.9.0; the upstream source also returns 1), a stray operand prints the usage text and
exits 1, and a bad ``-d``/``-s`` value dies with ``lspci: -d: <reason>`` and exit 1.

Valid options whose output is not modelled (``-v`` alone, ``-vvv``, ``-x``, ``-t``, ``-m``, ``-b``,
``-M``, ``-P``, ``-q``, ``-Q``, access options) fail loudly with exit status 70.

The ``-vv`` fields follow lspci's show_verbose(): ``Latency:`` is printed only when the command
register has BusMaster set, ``Region`` lines get ``[disabled]`` when memory (or I/O) decoding is
off, ``NUMA node:``/``IOMMU group:`` come from the same state fields as sysfs.
"""

from __future__ import annotations

import re
import sys
from typing import Any

from zerog_sim.hostcli import GetoptError, gnu_getopt
from zerog_sim.state import load_or_exit, not_simulated

PROG = "lspci"
SHORTOPTS = "nvbxs:d:tPi:mgp:qkMDQA:GO:H:F:"
VERSION = "3.9.0"

USAGE = """Usage: lspci [<switches>]

Basic display modes:
-mm\t\tProduce machine-readable output (single -m for an obsolete format)
-t\t\tShow bus tree

Display options:
-v\t\tBe verbose (-vv or -vvv for higher verbosity)
-k\t\tShow kernel drivers handling each device
-x\t\tShow hex-dump of the standard part of the config space
-xxx\t\tShow hex-dump of the whole config space (dangerous; root only)
-xxxx\t\tShow hex-dump of the 4096-byte extended config space (root only)
-b\t\tBus-centric view (addresses and IRQ's as seen by the bus)
-D\t\tAlways show domain numbers
-P\t\tDisplay bridge path in addition to bus and device number
-PP\t\tDisplay bus path in addition to bus and device number

Resolving of device ID's to names:
-n\t\tShow numeric ID's
-nn\t\tShow both textual and numeric ID's (names & numbers)
-q\t\tQuery the PCI ID database for unknown ID's via DNS
-qq\t\tAs above, but re-query locally cached entries
-Q\t\tQuery the PCI ID database for all ID's via DNS

Selection of devices:
-s [[[[<domain>]:]<bus>]:][<slot>][.[<func>]]\tShow only devices in selected slots
-d [<vendor>]:[<device>][:<class>]\t\tShow only devices with specified ID's

Other options:
-i <file>\tUse specified ID database instead of /usr/share/misc/pci.ids.gz
-p <file>\tLook up kernel modules in a given file instead of default modules.pcimap
-M\t\tEnable `bus mapping' mode (dangerous; root only)

PCI access options:
-A <method>\tUse the specified PCI access method (see `-A help' for a list)
-O <par>=<val>\tSet PCI access parameter (see `-O help' for a list)
-G\t\tEnable PCI access debugging
-H <mode>\tUse direct hardware access (<mode> = 1 or 2)
-F <file>\tRead PCI configuration dump from a given file
"""

#: pci.ids class names (class and subclass) for the classes the profiles use.
CLASS_NAMES = {
    "0200": "Ethernet controller",
    "0300": "VGA compatible controller",
    "0302": "3D controller",
    "0600": "Host bridge",
    "0601": "ISA bridge",
    "0604": "PCI bridge",
    "0680": "Bridge",
    "0880": "System peripheral",
    "0c03": "USB controller",
    "0c05": "SMBus",
    "0c80": "Serial bus controller",
}

CONTROL_FLAGS = (
    "I/O",
    "Mem",
    "BusMaster",
    "SpecCycle",
    "MemWINV",
    "VGASnoop",
    "ParErr",
    "Stepping",
    "SERR",
    "FastB2B",
    "DisINTx",
)
STATUS_FLAGS_A = ("Cap", "66MHz", "UDF", "FastB2B", "ParErr")
STATUS_FLAGS_B = (">TAbort", "<TAbort", "<MAbort", ">SERR", "<PERR", "INTx")

_BDF_RE = re.compile(r"^([0-9a-f]{4}):([0-9a-f]{2}):([0-9a-f]{2})\.([0-7])$")


class LspciDie(Exception):
    """pciutils die(): message printed as ``lspci: <msg>``, exit status 1."""


def split_bdf(bdf: str) -> tuple[int, int, int, int]:
    """Split ``DDDD:BB:DD.F`` into integers (domain, bus, device, function)."""
    match = _BDF_RE.match(bdf)
    if not match:
        raise ValueError(f"bad BDF {bdf!r}")
    dom, bus, dev, func = match.groups()
    return int(dom, 16), int(bus, 16), int(dev, 16), int(func)


def _parse_hex_field(text: str, limit: int, what: str) -> int | None:
    """Parse one field of a ``-d`` filter: empty or ``*`` means any."""
    if text in ("", "*"):
        return None
    try:
        value = int(text, 16)
    except ValueError:
        raise LspciDie(f"-d: Invalid {what}") from None
    if value > limit:
        raise LspciDie(f"-d: Invalid {what}")
    return value


def parse_id_filter(text: str) -> dict[str, int | None]:
    """Parse ``[<vendor>]:[<device>][:<class>[:<prog-if>]]`` like pci_filter_parse_id()."""
    fields = text.split(":")
    if len(fields) < 2:
        raise LspciDie("-d: At least two fields must be given")
    if len(fields) > 4:
        raise LspciDie("-d: Too many fields")
    return {
        "vendor": _parse_hex_field(fields[0], 0xFFFF, "vendor ID"),
        "device": _parse_hex_field(fields[1], 0xFFFF, "device ID"),
        "class": _parse_hex_field(fields[2], 0xFFFF, "class code") if len(fields) > 2 else None,
        "progif": _parse_hex_field(fields[3], 0xFF, "programming interface code") if len(fields) > 3 else None,
    }


def _slot_num(text: str, limit: int, what: str) -> int | None:
    if text in ("", "*"):
        return None
    try:
        value = int(text, 16)
    except ValueError:
        raise LspciDie(f"-s: Invalid {what} number") from None
    if value > limit:
        raise LspciDie(f"-s: Invalid {what} number")
    return value


def parse_slot_filter(text: str) -> dict[str, int | None]:
    """Parse ``[[[[<domain>]:]<bus>]:][<slot>][.[<func>]]`` like pci_filter_parse_slot()."""
    result: dict[str, int | None] = {"domain": None, "bus": None, "slot": None, "func": None}
    head, dot, func = text.partition(".")
    parts = head.split(":")
    if len(parts) > 3:
        raise LspciDie("-s: Too many fields")
    if len(parts) == 3:
        result["domain"] = _slot_num(parts[0], 0xFFFFFFFF, "domain")
    if len(parts) >= 2:
        result["bus"] = _slot_num(parts[-2], 0xFF, "bus")
    result["slot"] = _slot_num(parts[-1], 0x1F, "slot")
    if dot:
        result["func"] = _slot_num(func, 7, "function")
    return result


def _matches(dev: dict[str, Any], id_filter: dict[str, int | None] | None, slot_filter: dict[str, int | None] | None) -> bool:
    if id_filter:
        cls = dev["class"]
        wanted = {
            "vendor": int(dev["vendor"], 16),
            "device": int(dev["device"], 16),
            "class": int(cls[:4], 16),
            "progif": int(cls[4:6], 16),
        }
        if any(id_filter[key] is not None and id_filter[key] != wanted[key] for key in wanted):
            return False
    if slot_filter:
        dom, bus, slot, func = split_bdf(dev["bdf"])
        actual = {"domain": dom, "bus": bus, "slot": slot, "func": func}
        if any(slot_filter[key] is not None and slot_filter[key] != actual[key] for key in actual):
            return False
    return True


class Renderer:
    """Formats devices the way lspci does for a given numeric/verbosity/kernel setting."""

    def __init__(self, numeric: int, verbose: int, kernel: bool, domains: bool) -> None:
        self.numeric = numeric
        self.verbose = verbose
        self.kernel = kernel
        self.domains = domains

    def slot(self, dev: dict[str, Any]) -> str:
        """The slot name: ``bb:dd.f`` or, with domains shown, ``dddd:bb:dd.f``."""
        return dev["bdf"] if self.domains else dev["bdf"][5:]

    def class_text(self, dev: dict[str, Any]) -> str:
        """The class column: name, ``[cccc]`` appended with -nn, bare number with -n."""
        code = dev["class"][:4]
        name = dev.get("class_name") or CLASS_NAMES.get(code)
        if name is None:
            raise ValueError(f"{dev['bdf']}: no class name known for class {code}")
        if self.numeric == 1:
            return code
        if self.numeric >= 2:
            return f"{name} [{code}]"
        return name

    def pair_text(self, vendor: str, device: str, vendor_name: str | None, device_name: str | None) -> str:
        """A vendor+device name the way pci_lookup_name() formats it for this numeric mode."""
        if self.numeric == 1:
            return f"{vendor}:{device}"
        if vendor_name is None:
            text = f"Device {vendor}:{device}"
            return text if self.numeric < 2 else f"Device [{vendor}:{device}]"
        if device_name is None:
            return f"{vendor_name} Device {device}" if self.numeric < 2 else f"{vendor_name} Device [{vendor}:{device}]"
        text = f"{vendor_name} {device_name}"
        return text if self.numeric < 2 else f"{text} [{vendor}:{device}]"

    def terse(self, dev: dict[str, Any]) -> list[str]:
        """show_terse(): the first line plus, with -v or -k, the Subsystem line."""
        line = f"{self.slot(dev)} {self.class_text(dev)}: "
        line += self.pair_text(dev["vendor"], dev["device"], dev["vendor_name"], dev.get("device_name"))
        rev = dev.get("rev")
        if rev and int(rev, 16):
            line += f" (rev {rev})"
        if self.verbose:
            progif = dev["class"][4:6]
            name = dev.get("prog_if_name") if self.numeric != 1 else None
            if progif != "00" or name:
                line += f" (prog-if {progif}" + (f" [{name}]" if name else "") + ")"
        lines = [line]
        if (self.verbose or self.kernel) and dev.get("header_type", 0) == 0:
            svendor = dev.get("subsystem_vendor")
            if svendor and svendor not in ("0000", "ffff"):
                text = self.pair_text(
                    svendor, dev["subsystem_device"], dev.get("subsystem_vendor_name"), dev.get("subsystem_device_name")
                )
                lines.append(f"\tSubsystem: {text}")
        return lines

    @staticmethod
    def control(dev: dict[str, Any]) -> set[str]:
        """Flags set in the command register (explicit, or derived from ``in_use``)."""
        if "control" in dev and dev["control"] is not None:
            return set(dev["control"])
        return {"Mem", "BusMaster", "SERR", "DisINTx"} if dev.get("in_use") else {"SERR"}

    def very_verbose(self, dev: dict[str, Any]) -> list[str]:
        """show_verbose() lines after the terse part, for -vv."""
        lines: list[str] = []
        if dev.get("physical_slot"):
            lines.append(f"\tPhysical Slot: {dev['physical_slot']}")
        cmd = self.control(dev)
        lines.append("\tControl: " + " ".join(f"{f}{'+' if f in cmd else '-'}" for f in CONTROL_FLAGS))
        status = set(dev.get("status", ["Cap"]))
        parts = [f"{f}{'+' if f in status else '-'}" for f in STATUS_FLAGS_A]
        parts.append(f"DEVSEL={dev.get('devsel', 'fast')}")
        parts += [f"{f}{'+' if f in status else '-'}" for f in STATUS_FLAGS_B]
        lines.append("\tStatus: " + " ".join(parts))
        if "BusMaster" in cmd:
            latency = f"\tLatency: {dev.get('latency', 0)}"
            if dev.get("cache_line_size"):
                latency += f", Cache Line Size: {dev['cache_line_size']} bytes"
            lines.append(latency)
        if dev.get("interrupt_pin") or dev.get("irq"):
            lines.append(f"\tInterrupt: pin {dev.get('interrupt_pin') or '?'} routed to IRQ {dev.get('irq', 0)}")
        if dev.get("numa_node", -1) != -1:
            lines.append(f"\tNUMA node: {dev['numa_node']}")
        if dev.get("iommu_group") is not None:
            lines.append(f"\tIOMMU group: {dev['iommu_group']}")
        lines += [f"\t{extra}" for extra in dev.get("verbose_extra", [])]
        for region in dev.get("regions", []):
            lines.append(self.region(region, cmd))
        d_state = str(dev.get("d_state", 0))
        lines += [f"\t{cap}".replace("@DSTATE@", d_state) for cap in dev.get("capabilities", [])]
        return lines

    @staticmethod
    def region(region: dict[str, Any], cmd: set[str]) -> str:
        """One ``Region N:`` line as show_bases() prints it at -vv."""
        addr = int(str(region["addr"]), 16)
        text = f"\tRegion {region['index']}: "
        if region.get("type", "mem") == "io":
            text += f"I/O ports at {addr:04x}"
            if "I/O" not in cmd:
                text += " [disabled]"
        else:
            bits = region.get("bits", 32)
            pref = "" if region.get("prefetchable") else "non-"
            text += f"Memory at {addr:08x} ({bits}-bit, {pref}prefetchable)"
            if "Mem" not in cmd:
                text += " [disabled]"
        if region.get("size"):
            text += f" [size={region['size']}]"
        return text

    @staticmethod
    def kernel_lines(dev: dict[str, Any]) -> list[str]:
        """show_kernel(): driver in use and the modules whose aliases match the device."""
        lines = []
        if dev.get("driver"):
            lines.append(f"\tKernel driver in use: {dev['driver']}")
        if dev.get("modules"):
            lines.append(f"\tKernel modules: {', '.join(dev['modules'])}")
        return lines

    def device(self, dev: dict[str, Any]) -> str:
        """show_device(): the complete text for one device."""
        lines = self.terse(dev)
        if self.verbose:
            lines += self.very_verbose(dev)
        if self.kernel or self.verbose:
            lines += self.kernel_lines(dev)
        text = "".join(f"{line}\n" for line in lines)
        if self.verbose:
            text += "\n"
        return text


def render(
    devices: list[dict[str, Any]],
    numeric: int = 0,
    verbose: int = 0,
    kernel: bool = False,
    domains: bool = False,
    id_filter: dict[str, int | None] | None = None,
    slot_filter: dict[str, int | None] | None = None,
) -> str:
    """Return lspci's stdout for ``devices`` (state ``pci_devices`` entries) and the given options."""
    shown_domains = domains or any(split_bdf(d["bdf"])[0] for d in devices)
    renderer = Renderer(numeric, verbose, kernel, shown_domains)
    selected = sorted((d for d in devices if _matches(d, id_filter, slot_filter)), key=lambda d: split_bdf(d["bdf"]))
    if verbose:
        # Only the abbreviated golden recording needs this: it lists a subset of devices at -vv.
        selected = [d for d in selected if d.get("verbose_listed", True)]
    return "".join(renderer.device(d) for d in selected)


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in with ``argv`` (without the program name); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    if args == ["--version"]:
        sys.stdout.write(f"lspci version {VERSION}\n")
        return 0
    try:
        options, operands = gnu_getopt(PROG, args, SHORTOPTS)
    except GetoptError as err:
        sys.stderr.write(f"{err}\n{USAGE}")
        return 1
    numeric = verbose = 0
    kernel = domains = False
    id_filter = slot_filter = None
    unsupported: list[str] = []
    try:
        for key, value in options:
            if key == "n":
                numeric += 1
            elif key == "v":
                verbose += 1
            elif key == "k":
                kernel = True
            elif key == "D":
                domains = True
            elif key == "d":
                id_filter = parse_id_filter(value or "")
            elif key == "s":
                slot_filter = parse_slot_filter(value or "")
            else:
                unsupported.append(f"-{key}")
    except LspciDie as err:
        sys.stderr.write(f"{PROG}: {err}\n")
        return 1
    if operands:
        sys.stderr.write(USAGE)
        return 1
    if verbose == 1 or verbose > 2:
        unsupported.append("-" + "v" * verbose)
    if unsupported:
        return not_simulated(PROG, f"options {' '.join(unsupported)} (simulated: -n, -nn, -k, -vv, -D, -d, -s)")
    state = load_or_exit(PROG)
    sys.stdout.write(render(state.get("pci_devices", []), numeric, verbose, kernel, domains, id_filter, slot_filter))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
