"""Stand-in for NVIDIA gpu-admin-tools ``nvidia_gpu_tools.py`` (host CC / PPCIe mode tool).

Driven by the active host state: the NVIDIA devices (vendor 10de, class 0300/0302 = GPU, 0680 =
NVSwitch) of ``state["pci_devices"]`` with their ``cc_mode``/``ppcie_mode``, driver, parent
bridges (``parent``) and runtime-PM ``power_control``. Output follows the upstream CLI
(gpu-admin-tools ``cli/main.py``, ``cli/per_gpu.py``, ``cli/per_gpu_nvswitch.py``):

* stdout: ``NVIDIA GPU Tools version <v>``, ``Command line arguments: [...]``, the inventory
  (``GPUs:`` / ``Other:``) when no ``--gpu-bdf``/``--gpu-name``/``--devices`` selector is given, and
  ``Topo:`` with the bridge chain of the selected devices;
* stderr: log lines ``YYYY-MM-DD,HH:MM:SS.mmm LEVEL    message`` (``Selected ...``,
  ``... CC mode is on``, ``... PPCIe mode is on``, the set/reset messages, errors).

Without a selector the tool prints the inventory, logs ``No GPU specified, select GPU with
--gpu, --gpu-bdf, or --gpu-name`` and exits 0 without any mode. A GPU bound to the ``nvidia``
driver is refused (``The nvidia driver appears to be using ..., aborting. Specify
--ignore-nvidia-driver to ignore this check.``, exit 1). A BDF that matches no NVIDIA device
logs ``Matching for <bdf> found nothing`` and exits 1.

``--set-cc-mode``/``--set-ppcie-mode`` change the *pending* setting in the state file; the
setting becomes active (visible to a later query) only after a reset, i.e. with
``--reset-after-cc-mode-switch`` / ``--reset-after-ppcie-mode-switch`` in the same call. As on
the hardware, PPCIe on forces CC off, and CC cannot become active while PPCIe is on: the reset
then fails with upstream's ``GpuError: ... failed to switch to CC mode on, current mode is off.``

Two output generations, chosen by the profile key ``nvtools_version``: ``v2025.*``/``v2026.*``
(names ``H100``/``H200``/``Generic-GH100``; runtime-PM warning ``was in D3/control:auto, forced
power control to on. New state D0``) and ``v2024.*`` (names ``H100-SXM``/``H100-PCIE``; the
``has CC mode on`` warning comes before the set/query lines; no PPCIe options).
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import Any

from zerog_sim.state import load_or_exit, not_simulated, save_active

PROG = "nvidia_gpu_tools.py"
NVIDIA = "10de"
GPU_CLASSES = ("030000", "030200")
NVSWITCH_CLASS = "068000"

NEW_NAMES = {
    0x2313: "H100",
    0x2321: "H100",
    0x2330: "H100",
    0x2331: "H100",
    0x2336: "H100",
    0x2337: "H100",
    0x2338: "H100",
    0x2339: "H100",
    0x233D: "H100",
    0x2335: "H200",
    0x233B: "H200",
    0x2322: "H800",
    0x2324: "H800",
    0x233A: "H800",
}
OLD_SXM = {0x2330, 0x2336, 0x2337, 0x2338, 0x2339}
OLD_PCIE = {0x2331, 0x2321, 0x233D}
PPCIE_OPTIONS = (
    "query_ppcie_mode",
    "query_ppcie_settings",
    "set_ppcie_mode",
    "reset_after_ppcie_mode_switch",
    "test_ppcie_mode_switch",
)
SIMULATED_OPTIONS = {
    "devices",
    "gpu",
    "gpu_bdf",
    "gpu_name",
    "no_gpu",
    "log",
    "mmio_access_type",
    "query_cc_mode",
    "set_cc_mode",
    "reset_after_cc_mode_switch",
    "query_ppcie_mode",
    "set_ppcie_mode",
    "reset_after_ppcie_mode_switch",
    "ignore_nvidia_driver",
    "noop",
}


class ToolError(Exception):
    """An exception upstream lets escape main(): printed as a traceback, exit status 1."""

    def __init__(self, exc_type: str, message: str) -> None:
        super().__init__(message)
        self.exc_type = exc_type


def auto_int(text: str) -> int:
    """argparse type used upstream for integer options (``int(x, 0)``)."""
    return int(text, 0)


def create_parser(old_style: bool) -> argparse.ArgumentParser:
    """The upstream option table (help texts omitted: they do not change parsing or usage)."""
    argp = argparse.ArgumentParser(prog=PROG)
    add = argp.add_argument
    add("--devices")
    add("--gpu", type=auto_int, default=-1)
    add("--gpu-bdf")
    add("--gpu-name")
    add("--no-gpu", action="store_true")
    add("--log", choices=["debug", "info", "warning", "error", "critical"], default="info")
    add("--mmio-access-type", choices=["devmem", "sysfs"], default="sysfs")
    for flag in (
        "--recover-broken-gpu",
        "--set-next-sbr-to-fundamental-reset",
        "--reset-with-sbr",
        "--reset-with-flr",
        "--reset-with-os",
        "--remove-from-os",
    ):
        add(flag, action="store_true", default=False)
    add("--sysfs-bind")
    add("--sysfs-unbind", action="store_true")
    for flag in ("--query-ecc-state", "--query-cc-mode", "--query-cc-settings"):
        add(flag, action="store_true", default=False)
    if not old_style:
        add("--query-ppcie-mode", action="store_true", default=False)
        add("--query-ppcie-settings", action="store_true", default=False)
    add("--query-prc-knobs", action="store_true", default=False)
    add("--set-cc-mode", choices=["off", "on", "devtools"])
    add("--reset-after-cc-mode-switch", action="store_true", default=False)
    add("--test-cc-mode-switch", action="store_true", default=False)
    if not old_style:
        add("--reset-after-ppcie-mode-switch", action="store_true", default=False)
        add("--set-ppcie-mode", choices=["off", "on"])
        add("--test-ppcie-mode-switch", action="store_true", default=False)
    add("--set-bar0-firewall-mode", choices=["off", "on"])
    for flag in (
        "--query-bar0-firewall-mode",
        "--query-l4-serial-number",
        "--query-module-name",
        "--verify-boot",
        "--clear-memory",
        "--debug-dump",
        "--nvlink-debug-dump",
        "--knobs-reset-to-defaults-list",
    ):
        add(flag, action="store_true", default=False)
    add("--knobs-reset-to-defaults", nargs="+")
    for flag in (
        "--knobs-reset-to-defaults-assume-no-pending-changes",
        "--knobs-reset-to-defaults-test",
        "--noop",
        "--force-ecc-on-after-reset",
        "--test-ecc-toggle",
        "--query-mig-mode",
        "--force-mig-off-after-reset",
        "--test-mig-toggle",
    ):
        add(flag, action="store_true", default=False)
    add("--block-nvlink", type=auto_int, nargs="+")
    for flag in ("--block-all-nvlinks", "--test-nvlink-blocking", "--dma-test", "--test-pcie-p2p"):
        add(flag, action="store_true", default=False)
    add("--read-sysmem-pa", type=auto_int)
    add("--write-sysmem-pa", type=auto_int, nargs=2)
    add("--read-config-space", type=auto_int)
    add("--write-config-space", type=auto_int, nargs=2)
    add("--read-bar0", type=auto_int)
    add("--write-bar0", type=auto_int, nargs=2)
    add("--read-bar1", type=auto_int)
    add("--write-bar1", type=auto_int, nargs=2)
    add("--ignore-nvidia-driver", action="store_true", default=False)
    add("--debug-dump-fsp-dmem-logs", action="store_true")
    return argp


class Bridge:
    """A PCI bridge on the path to a device (gpu-admin-tools PciBridge / IntelRootPort / PLX)."""

    def __init__(self, dev: dict[str, Any]) -> None:
        self.dev = dev
        self.bdf = dev["bdf"]
        self.children: list[Any] = []

    def __str__(self) -> str:
        vendor = int(self.dev["vendor"], 16)
        device = int(self.dev["device"], 16)
        if self.dev.get("pcie_type") == "root_port" and vendor == 0x8086:
            return f"Intel root port {self.bdf}"
        if vendor == 0x10B5 and self.dev.get("pcie_type") in ("upstream", "downstream"):
            return f"PLX {self.bdf}"
        return f"PciBridge {self.bdf} {device:x}:{vendor:x}"


class NvDevice:
    """An NVIDIA GPU or NVSwitch as the tool sees it."""

    def __init__(self, dev: dict[str, Any], old_style: bool) -> None:
        self.dev = dev
        self.bdf = dev["bdf"]
        self.devid = int(dev["device"], 16)
        self.is_switch = dev["class"] == NVSWITCH_CLASS
        self.old_style = old_style
        self.initialized = False
        regions = {r["index"]: r for r in dev.get("regions", [])}
        if 0 not in regions:
            raise ValueError(f"{self.bdf}: NVIDIA device without a BAR0 region in the profile")
        self.bar0 = int(str(regions[0]["addr"]), 16)
        self.parent: Bridge | None = None

    @property
    def name(self) -> str | None:
        """The tool's device name, or None for an ID the tool does not know (UnknownGpuError)."""
        if self.is_switch:
            return "NVSwitch_gen3" if self.devid == 0x22A3 else None
        if self.old_style:
            if self.devid in OLD_SXM:
                return "H100-SXM"
            if self.devid in OLD_PCIE:
                return "H100-PCIE"
            return None
        if self.devid in NEW_NAMES:
            return NEW_NAMES[self.devid]
        if 0x22F0 <= self.devid < 0x2380:
            return "Generic-GH100"
        return None

    def __str__(self) -> str:
        kind = "NvSwitch" if self.is_switch else "GPU"
        if not self.initialized:
            return f"{kind} {self.bdf} ? {hex(self.devid)} BAR0 0x0"
        return f"{kind} {self.bdf} {self.name} {hex(self.devid)} BAR0 0x{self.bar0:x}"

    def is_gpu(self) -> bool:
        """True for GPUs, False for NVSwitches."""
        return not self.is_switch

    @property
    def driver_loaded(self) -> bool:
        """gpu-admin-tools is_driver_loaded(): the nvidia driver is bound to this GPU."""
        return self.is_gpu() and self.dev.get("driver") == "nvidia"

    def mode(self, key: str) -> str:
        """The active CC or PPCIe mode."""
        return self.dev.get(key) or "off"

    def pending(self, key: str) -> str:
        """The persistent knob: the setting the firmware applies at the next reset."""
        return self.dev.get(f"{key}_pending") or self.mode(key)

    def reset(self) -> None:
        """reset_with_os(): the firmware boots with the persistent knobs; PPCIe on keeps CC off."""
        ppcie = self.pending("ppcie_mode")
        cc = self.pending("cc_mode") if ppcie == "off" and not self.is_switch else "off"
        self.dev["ppcie_mode"] = ppcie
        self.dev["cc_mode"] = cc


class Tool:
    """One run of the stand-in."""

    def __init__(self, state: dict[str, Any], opts: argparse.Namespace, log: logging.Logger, old_style: bool) -> None:
        self.state = state
        self.opts = opts
        self.log = log
        self.old_style = old_style
        self.by_bdf = {d["bdf"]: d for d in state.get("pci_devices", [])}
        self.roots: list[Bridge] = []
        self.bridges: dict[str, Bridge] = {}
        self.restore: list[NvDevice] = []
        self.dirty = False

    def nvidia_paths(self, pattern: str | None = None) -> list[dict[str, Any]]:
        """find_gpus_sysfs(): NVIDIA GPUs and NVSwitches whose BDF contains ``pattern``, by BDF."""
        found = []
        for bdf in sorted(self.by_bdf, key=lambda b: int(b.replace(":", "").replace(".", ""), 16)):
            dev = self.by_bdf[bdf]
            if pattern and pattern not in bdf:
                continue
            if dev["vendor"] != NVIDIA or dev["class"] not in (*GPU_CLASSES, NVSWITCH_CLASS):
                continue
            found.append(dev)
        return found

    def bridge(self, bdf: str) -> Bridge:
        """PciDevices.find_or_init() for a bridge: its own parents first, then itself."""
        if bdf in self.bridges:
            return self.bridges[bdf]
        dev = self.by_bdf[bdf]
        parent = self.bridge(dev["parent"]) if dev.get("parent") else None
        node = Bridge(dev)
        self.bridges[bdf] = node
        if parent is None:
            self.roots.append(node)
        else:
            parent.children.append(node)
        return node

    def init_device(self, dev: dict[str, Any]) -> NvDevice | None:
        """Create the device object: runtime-PM handling, parent chain, name lookup."""
        nvdev = NvDevice(dev, self.old_style)
        control = dev.get("power_control", "on")
        d_state = int(dev.get("d_state", 0))
        if self.old_style:
            if d_state != 0 and control != "on":
                self.log.warning(f"{nvdev} was in D{d_state}, forced power control to on (prev {control}). New state D0")
                self.restore.append(nvdev)
        elif control != "on":
            self.log.warning(f"{nvdev} was in D{d_state}/control:{control}, forced power control to on. New state D0")
            self.restore.append(nvdev)
        if dev.get("parent"):
            nvdev.parent = self.bridge(dev["parent"])
            nvdev.parent.children.append(nvdev)
        if nvdev.name is None:
            self.log.error(
                "Unknown Nvidia device %s: %s",
                f"/sys/bus/pci/devices/{dev['bdf']}",
                f"GPU {dev['bdf']} {hex(nvdev.devid)} not supported",
            )
            return None
        nvdev.initialized = True
        return nvdev

    def find_gpus(self, pattern: str | None = None) -> tuple[list[NvDevice], list[dict[str, Any]]]:
        """find_gpus(): (known devices, unknown NVIDIA devices)."""
        gpus: list[NvDevice] = []
        other: list[dict[str, Any]] = []
        for dev in self.nvidia_paths(pattern):
            nvdev = self.init_device(dev)
            if nvdev is None:
                other.append(dev)
            else:
                gpus.append(nvdev)
        return gpus, other

    def print_topo(self) -> None:
        """print_topo(): the bridge trees of every device created so far."""
        lines = ["Topo:"]

        def walk(node: Any, indent: int) -> None:
            lines.append(" " * indent + " " + str(node))
            for child in getattr(node, "children", []):
                walk(child, indent + 1)

        for root in self.roots:
            walk(root, 1)
        sys.stdout.write("".join(f"{line}\n" for line in lines))
        sys.stdout.flush()

    def select(self) -> list[NvDevice] | int:
        """Device selection exactly in upstream's precedence; an int is an exit status."""
        opts = self.opts
        if opts.gpu_bdf is not None:
            gpus, _others = self.find_gpus(opts.gpu_bdf)
            if not gpus:
                self.log.error(f"Matching for {opts.gpu_bdf} found nothing")
                return 1
            if len(gpus) > 1:
                self.log.error("Matching for {} found more than one GPU {}".format(opts.gpu_bdf, ", ".join(str(g) for g in gpus)))
                return 1
            return gpus
        if opts.gpu_name is not None:
            gpus, _others = self.find_gpus()
            gpus = [g for g in gpus if opts.gpu_name in (g.name or "")]
            if not gpus:
                self.log.error(f"Matching for {opts.gpu_name} found nothing")
                return 1
            return gpus[:1]
        if opts.devices:
            return self.devices_from_string(opts.devices)
        if opts.no_gpu:
            self.log.info("Using no GPU")
            return []
        gpus, other = self.find_gpus()
        out = ["GPUs:"] + [f"  {i} {g}" for i, g in enumerate(gpus)]
        out += ["Other:"] + [f"  {i} NVIDIA device {o['bdf']}" for i, o in enumerate(other)]
        sys.stdout.write("".join(f"{line}\n" for line in out))
        sys.stdout.flush()
        if opts.gpu == -1:
            self.log.info("No GPU specified, select GPU with --gpu, --gpu-bdf, or --gpu-name")
            return 0
        if opts.gpu >= len(gpus):
            raise ToolError("ValueError", "GPU index out of bounds")
        return [gpus[opts.gpu]]

    def devices_from_string(self, spec: str) -> list[NvDevice] | int:
        """find_devices_from_string() for gpus / nvswitches / vvvv:dddd / BDF, with [n] or [n:m]."""
        selected: list[NvDevice] = []
        for item in (s.strip() for s in spec.split(",")):
            base, _sep, index = item.partition("[")
            if base in ("gpus", "nvswitches"):
                want = GPU_CLASSES if base == "gpus" else (NVSWITCH_CLASS,)
                paths = [d for d in self.nvidia_paths() if d["class"] in want]
                if not paths:
                    self.log.warning("No GPU devices found" if base == "gpus" else "No NVSwitch devices found")
                    continue
            elif base.count(":") == 1 and all(len(x) == 4 for x in base.split(":")):
                vendor, device = (x.lower() for x in base.split(":"))
                paths = [d for d in self.nvidia_paths() if d["vendor"] == vendor and d["device"] == device]
                if not paths:
                    self.log.warning(f"No devices found matching vendor:device {int(vendor, 16):x}:{int(device, 16):x}")
                    continue
            elif ":" in base:
                full = base if base.count(":") == 2 else f"0000:{base}"
                if full not in self.by_bdf:
                    self.log.warning(f"No device found at BDF {base}")
                    continue
                if full not in {d["bdf"] for d in self.nvidia_paths()}:
                    return not_simulated(PROG, f"--devices selecting the non-NVIDIA device {full}")
                paths = [self.by_bdf[full]]
            else:
                raise ToolError("ValueError", f"Unknown device specifier: {item}")
            if index:
                index = index.rstrip("]")
                if ":" in index:
                    start, _sep, stop = index.partition(":")
                    paths = paths[int(start) if start else None : int(stop) if stop else None]
                elif int(index) < len(paths):
                    paths = [paths[int(index)]]
                else:
                    self.log.error(f"Index {int(index)} out of range for array of length {len(paths)}")
                    paths = []
            for dev in paths:
                nvdev = self.init_device(dev)
                if nvdev is not None:
                    selected.append(nvdev)
        if not selected:
            self.log.error(f"No devices found matching: {spec}")
            return 1
        return selected

    def mode_warnings(self, dev: NvDevice) -> None:
        """The 'has CC/PPCIe mode ..., some functionality may not work' warnings."""
        if dev.is_gpu() and dev.mode("cc_mode") != "off":
            self.log.warning(f"{dev} has CC mode {dev.mode('cc_mode')}, some functionality may not work")
        if not self.old_style and dev.mode("ppcie_mode") != "off":
            self.log.warning(f"{dev} has PPCIe mode {dev.mode('ppcie_mode')}, some functionality may not work")

    def per_gpu(self, dev: NvDevice) -> bool:
        """main_per_gpu(): nvidia-driver check, CC set (+reset), CC query."""
        opts = self.opts
        if dev.driver_loaded:
            if not opts.ignore_nvidia_driver:
                self.log.error(
                    "The nvidia driver appears to be using %s, aborting. Specify --ignore-nvidia-driver to ignore this check.",
                    dev,
                )
                return False
            self.log.warning(
                "The nvidia driver appears to be using %s, but --ignore-nvidia-driver was specified, continuing.", dev
            )
        if self.old_style:
            self.mode_warnings(dev)
        if opts.set_cc_mode:
            if not dev.is_gpu():
                self.log.error(f"Configuring CC not supported on {dev}")
                return False
            dev.dev["cc_mode_pending"] = opts.set_cc_mode
            self.dirty = True
            self.log.info(f"{dev} CC mode set to {opts.set_cc_mode}. It will be active after GPU reset.")
            if opts.reset_after_cc_mode_switch:
                dev.reset()
                if dev.mode("cc_mode") != opts.set_cc_mode:
                    raise ToolError(
                        "gpu.error.GpuError",
                        f"{dev} failed to switch to CC mode {opts.set_cc_mode}, current mode is {dev.mode('cc_mode')}.",
                    )
                self.log.info(f"{dev} was reset to apply the new CC mode.")
        if opts.query_cc_mode:
            if not dev.is_gpu():
                self.log.error(f"Querying CC mode is not supported on {dev}")
                return False
            self.log.info(f"{dev} CC mode is {dev.mode('cc_mode')}")
        return True

    def per_gpu_or_nvswitch(self, dev: NvDevice) -> bool:
        """main_per_gpu_or_nvswitch(): mode warnings, PPCIe set (+reset), PPCIe query."""
        opts = self.opts
        if self.old_style:
            return True
        self.mode_warnings(dev)
        if opts.set_ppcie_mode:
            if dev.pending("cc_mode") in ("on", "devtools"):
                self.log.info("CC is currently active. It will be turned off before switching to PPCIe.")
            if opts.set_ppcie_mode == "on":
                dev.dev["cc_mode_pending"] = "off"
            dev.dev["ppcie_mode_pending"] = opts.set_ppcie_mode
            self.dirty = True
            self.log.info(f"{dev} PPCIe mode set to {opts.set_ppcie_mode}. It will be active after GPU or switch reset.")
            if opts.reset_after_ppcie_mode_switch:
                dev.reset()
                if dev.mode("ppcie_mode") != opts.set_ppcie_mode:
                    raise ToolError(
                        "gpu.error.GpuError",
                        f"{dev} failed to switch to PPCIe mode {opts.set_ppcie_mode}, current mode is {dev.mode('ppcie_mode')}.",
                    )
                self.log.info(f"{dev} was reset to apply the new PPCIe mode.")
        if opts.query_ppcie_mode:
            self.log.info(f"{dev} PPCIe mode is {dev.mode('ppcie_mode')}")
        return True

    def run(self) -> int:
        """Everything after argument parsing; returns the exit status."""
        selected = self.select()
        if isinstance(selected, int):
            return selected
        if selected:
            self.print_topo()
            for dev in selected:
                self.log.info(f"Selected {dev}")
        for dev in selected:
            if not self.per_gpu(dev) or not self.per_gpu_or_nvswitch(dev):
                return 1
        return 0

    def restore_power(self) -> None:
        """The atexit handlers: restore runtime PM, last registered first."""
        for dev in reversed(self.restore):
            self.log.warning(f"{dev} restoring power control to {dev.dev.get('power_control')}")


def make_logger(level: str) -> logging.Logger:
    """A logger writing upstream's basicConfig format to the current stderr."""
    logger = logging.getLogger(f"zerog_sim.nvtools.{id(sys.stderr)}")
    logger.handlers.clear()
    logger.propagate = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s.%(msecs)03d %(levelname)-8s %(message)s", datefmt="%Y-%m-%d,%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(getattr(logging, level.upper()))
    return logger


def main(argv: list[str] | None = None, argv0: str | None = None) -> int:
    """Run the stand-in with ``argv`` (without argv[0]); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    argv0 = argv0 if argv0 is not None else sys.argv[0]
    state = load_or_exit(PROG)
    version = str(state.get("nvtools_version", "v2025.07.21o"))
    old_style = version.startswith("v2024")
    sys.stdout.write(f"NVIDIA GPU Tools version {version}\n")
    sys.stdout.write(f"Command line arguments: {[argv0, *args]}\n")
    sys.stdout.flush()
    parser = create_parser(old_style)
    try:
        opts = parser.parse_args(args)
    except SystemExit as exc:
        return int(exc.code or 0)
    unsupported = sorted(
        k for k, v in vars(opts).items() if k not in SIMULATED_OPTIONS and v not in (None, False, parser.get_default(k))
    )
    if unsupported:
        return not_simulated(PROG, "options " + ", ".join("--" + k.replace("_", "-") for k in unsupported))
    log = make_logger(opts.log)
    tool = Tool(state, opts, log, old_style)
    try:
        status = tool.run()
    except ToolError as exc:
        sys.stdout.flush()
        sys.stderr.write(
            f'Traceback (most recent call last):\n  File "{argv0}", line 31, in <module>\n    main()\n{exc.exc_type}: {exc}\n'
        )
        status = 1
    if tool.dirty:
        save_active(state)
    tool.restore_power()
    return status


if __name__ == "__main__":
    raise SystemExit(main())
