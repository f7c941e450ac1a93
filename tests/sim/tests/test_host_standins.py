"""The host stand-ins (lspci, nvidia_gpu_tools.py, rdmsr, dmesg) run as executables against profiles.

Expected texts are the recorded golden outputs (golden/stubs.json), the VERBATIM samples of
host-checks.md and the output formats of the real tools (pciutils 3.9.0, msr-tools 1.3 and
util-linux 2.38.1 on Debian 12; gpu-admin-tools cli/*.py), written out by hand.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

SIM_DIR = Path(__file__).resolve().parents[1]
BIN = SIM_DIR / "bin"
GOLDEN = SIM_DIR.parents[1].parent / "shared" / "reference" / "golden"
sys.path.insert(0, str(SIM_DIR))

from zerog_sim import host_dmesg, host_lspci, host_nvtools, host_rdmsr, profiles  # noqa: E402

NVTOOL = str(BIN / "nvidia_gpu_tools.py")
TS = re.compile(r"^\d{4}-\d{2}-\d{2},\d{2}:\d{2}:\d{2}\.\d{3} ", re.M)

# pciutils 3.9.0 (Debian 12) `lspci --help`-style usage, captured from the real binary
LSPCI_USAGE = """Usage: lspci [<switches>]

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

# msr-tools 1.3 usage, captured from the real binary
RDMSR_USAGE = """Usage: rdmsr [options] regno
  --help         -h  Print this help
  --version      -V  Print current version
  --hexadecimal  -x  Hexadecimal output (lower case)
  --capital-hex  -X  Hexadecimal output (upper case)
  --decimal      -d  Signed decimal output
  --unsigned     -u  Unsigned decimal output
  --octal        -o  Octal output
  --c-language   -c  Format output as a C language constant
  --zero-pad     -0  Output leading zeroes
  --raw          -r  Raw binary output
  --all          -a  all processors
  --processor #  -p  Select processor number (default 0)
  --bitfield h:l -f  Output bits [h:l] only
"""


@pytest.fixture(scope="module")
def hosts(tmp_path_factory: pytest.TempPathFactory):
    """``hosts(name)``: state file of profile ``name`` materialized once for read-only use;
    ``hosts(name, fresh=True, **overrides)``: a private copy a test may modify."""
    base = tmp_path_factory.mktemp("hosts")
    cache: dict[str, str] = {}
    counter = {"n": 0}

    def make(name: str, fresh: bool = False, **overrides) -> str:
        if not fresh and not overrides and name in cache:
            return cache[name]
        counter["n"] += 1
        work = base / f"{name}-{counter['n']}"
        state_file = work / "active.json"
        state = profiles.materialize(name, str(work / "root"), str(state_file))
        if overrides:
            state.update(overrides)
            state_file.write_text(json.dumps(state))
        if not fresh and not overrides:
            cache[name] = str(state_file)
        return str(state_file)

    return make


def run(cmd: list[str], state_file: str) -> subprocess.CompletedProcess:
    """Run a stand-in executable (through its bin/ shim) against ``state_file``."""
    env = {k: v for k, v in os.environ.items() if k != "ZEROG_SIM_STATE"}
    env["ZEROG_SIM_STATE"] = state_file
    return subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=30, check=False)


@pytest.fixture
def call(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    """Run a stand-in's main() in-process (fast); returns (rc, stdout, stderr)."""

    def invoke(main, args: list[str], state_file: str, **kwargs) -> tuple[int, str, str]:
        monkeypatch.setenv("ZEROG_SIM_STATE", state_file)
        capsys.readouterr()
        try:
            rc = main(list(args), **kwargs)
        except SystemExit as exc:
            rc = exc.code
        out, err = capsys.readouterr()
        return rc, out, err

    return invoke


# ------------------------------------------------------------------------------------------------ lspci


def test_lspci_reproduces_the_golden_recordings(hosts) -> None:
    outputs = json.loads((GOLDEN / "stubs.json").read_text())["stubs"]["lspci"]["outputs"]
    state = hosts("golden_h100x2")
    for argv, key in (([], "plain"), (["-vvk"], "vvk"), (["-d", "10de:", "-nn"], "d_10de_nn")):
        result = run([str(BIN / "lspci"), *argv], state)
        assert (result.returncode, result.stderr) == (0, "")
        assert result.stdout == outputs[key], key


LSPCI_H100X1 = [
    (["-d", "10de:", "-nn"],
     "18:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)\n"),
    (["-nn", "-d", "10de:"],
     "18:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)\n"),
    (["-d10de:", "-n"], "18:00.0 0302: 10de:2330 (rev a1)\n"),
    (["-nnk", "-d", "10de:"],
     "18:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330] (rev a1)\n"
     "\tSubsystem: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:16c1]\n"
     "\tKernel driver in use: vfio-pci\n"
     "\tKernel modules: nvidiafb, nouveau, nvidia_drm, nvidia\n"),
    (["-D", "-s", "18:00.0"],
     "0000:18:00.0 3D controller: NVIDIA Corporation GH100 [H100 SXM5 80GB] (rev a1)\n"),
    (["-s", "4b:00"],
     "4b:00.0 Ethernet controller: Mellanox Technologies MT2910 Family [ConnectX-7]\n"
     "4b:00.1 Ethernet controller: Mellanox Technologies MT2910 Family [ConnectX-7]\n"),
    (["-d", ":2330"], "18:00.0 3D controller: NVIDIA Corporation GH100 [H100 SXM5 80GB] (rev a1)\n"),
    (["-d", "8086::0600", "-nn"], "00:00.0 Host bridge [0600]: Intel Corporation Device [8086:09a2] (rev 20)\n"),
    (["-d", "10de:2335"], ""),
    (["-vvk", "-s", "18:00.0"],
     "18:00.0 3D controller: NVIDIA Corporation GH100 [H100 SXM5 80GB] (rev a1)\n"
     "\tSubsystem: NVIDIA Corporation GH100 [H100 SXM5 80GB]\n"
     "\tPhysical Slot: 1\n"
     "\tControl: I/O- Mem- BusMaster- SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR+ FastB2B- DisINTx-\n"
     "\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-\n"
     "\tInterrupt: pin A routed to IRQ 255\n"
     "\tNUMA node: 0\n"
     "\tIOMMU group: 40\n"
     "\tRegion 0: Memory at 9e000000 (64-bit, non-prefetchable) [disabled] [size=16M]\n"
     "\tRegion 2: Memory at 21e000000000 (64-bit, prefetchable) [disabled] [size=128G]\n"
     "\tRegion 4: Memory at 220000000000 (64-bit, prefetchable) [disabled] [size=32M]\n"
     "\tCapabilities: [60] Power Management version 3\n"
     "\t\tFlags: PMEClk- DSI- D1- D2- AuxCurrent=0mA PME(D0-,D1-,D2-,D3hot-,D3cold-)\n"
     "\t\tStatus: D3 NoSoftRst+ PME-Enable- DSel=0 DScale=0 PME-\n"
     "\tCapabilities: [68] Null\n"
     "\tKernel driver in use: vfio-pci\n"
     "\tKernel modules: nvidiafb, nouveau, nvidia_drm, nvidia\n\n"),
    (["-vv", "-nn", "-s", "15:00.0"],
     "15:00.0 PCI bridge [0604]: Intel Corporation Device [8086:352a] (rev 04) (prog-if 00 [Normal decode])\n"
     "\tControl: I/O- Mem+ BusMaster+ SpecCycle- MemWINV- VGASnoop- ParErr- Stepping- SERR+ FastB2B- DisINTx+\n"
     "\tStatus: Cap+ 66MHz- UDF- FastB2B- ParErr- DEVSEL=fast >TAbort- <TAbort- <MAbort- >SERR- <PERR- INTx-\n"
     "\tLatency: 0, Cache Line Size: 32 bytes\n"
     "\tInterrupt: pin A routed to IRQ 28\n"
     "\tNUMA node: 0\n"
     "\tIOMMU group: 38\n"
     "\tBus: primary=15, secondary=16, subordinate=18, sec-latency=0\n"
     "\tKernel driver in use: pcieport\n\n"),
    (["--version"], "lspci version 3.9.0\n"),
]


@pytest.mark.parametrize(("argv", "stdout"), LSPCI_H100X1)
def test_lspci_h100x1(argv: list[str], stdout: str, hosts, call) -> None:
    assert call(host_lspci.main, argv, hosts("h100x1")) == (0, stdout, "")


LSPCI_ERRORS = [
    (["-z"], 1, "lspci: invalid option -- 'z'\n" + LSPCI_USAGE),
    (["--help"], 1, "lspci: invalid option -- '-'\n" + LSPCI_USAGE),
    (["-d"], 1, "lspci: option requires an argument -- 'd'\n" + LSPCI_USAGE),
    (["extra"], 1, LSPCI_USAGE),
    (["-d", "10de"], 1, "lspci: -d: At least two fields must be given\n"),
    (["-d", "zz:"], 1, "lspci: -d: Invalid vendor ID\n"),
    (["-d", "10de:1:2:3:4"], 1, "lspci: -d: Too many fields\n"),
    (["-s", "0:99"], 1, "lspci: -s: Invalid slot number\n"),
    (["-s", "zz:0"], 1, "lspci: -s: Invalid bus number\n"),
    (["-s", "0:0.9"], 1, "lspci: -s: Invalid function number\n"),
]


@pytest.mark.parametrize(("argv", "rc", "stderr"), LSPCI_ERRORS)
def test_lspci_errors_like_pciutils(argv: list[str], rc: int, stderr: str, hosts, call) -> None:
    assert call(host_lspci.main, argv, hosts("h100x1")) == (rc, "", stderr)


@pytest.mark.parametrize("argv", [["-v"], ["-vvv"], ["-t"], ["-x"], ["-mm"], ["-b"]])
def test_lspci_unmodelled_options_fail_loudly(argv: list[str], hosts, call) -> None:
    rc, out, err = call(host_lspci.main, argv, hosts("h100x1"))
    assert (rc, out) == (70, "")
    assert err.startswith("lspci: zerog-sim: not simulated: options ")


def test_lspci_h200x8_nvidia_listing_as_dstack_parses_it(hosts, call) -> None:
    lines = call(host_lspci.main, ["-d", "10de:", "-nn"], hosts("h200x8"))[1].splitlines()
    assert len(lines) == 12
    ids = [re.search(r"\[10de:([0-9A-Fa-f]+)\]", line).group(1) for line in lines]
    assert ids == ["22a3"] * 4 + ["2335"] * 8
    assert lines[0] == "07:00.0 Bridge [0680]: NVIDIA Corporation GH100 [H100 NVSwitch] [10de:22a3] (rev a1)"
    assert lines[4] == "18:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H200 SXM 141GB] [10de:2335] (rev a1)"


def test_lspci_no_state_file(tmp_path: Path) -> None:
    result = run([str(BIN / "lspci")], str(tmp_path / "missing.json"))
    assert result.returncode == 70
    assert result.stderr == f"lspci: zerog-sim: no active host state at {tmp_path}/missing.json (set ZEROG_SIM_STATE)\n"


# ------------------------------------------------------------------------------------- nvidia_gpu_tools.py


@pytest.fixture
def nvtool(call):
    """Run nvidia_gpu_tools.py in-process as if started as NVTOOL; timestamps become <TS>."""

    def invoke(state: str, *args: str) -> tuple[int, str, str]:
        rc, out, err = call(host_nvtools.main, list(args), state, argv0=NVTOOL)
        return rc, out, TS.sub("<TS> ", err)

    return invoke


def head(*args: str) -> str:
    return f"NVIDIA GPU Tools version v2025.07.21o\nCommand line arguments: {[NVTOOL, *args]}\n"


H100 = "GPU 0000:18:00.0 H100 0x2330 BAR0 0x9e000000"
H100_TOPO = ("Topo:\n  Intel root port 0000:15:00.0\n   PciBridge 0000:16:00.0 c030:1000\n"
             "    PciBridge 0000:17:00.0 c030:1000\n     " + H100 + "\n")
H100_PM_ON = "<TS> WARNING  GPU 0000:18:00.0 ? 0x2330 BAR0 0x0 was in D3/control:auto, forced power control to on. New state D0\n"
H100_PM_OFF = f"<TS> WARNING  {H100} restoring power control to auto\n"

NVTOOLS_H100X1 = [
    # the VERBATIM single-GPU query shape of host-checks.md §3.6, for this host
    (["--gpu-bdf=18:00.0", "--query-cc-mode"], 0, H100_TOPO,
     H100_PM_ON + f"<TS> INFO     Selected {H100}\n<TS> INFO     {H100} CC mode is on\n"
     f"<TS> WARNING  {H100} has CC mode on, some functionality may not work\n" + H100_PM_OFF),
    (["--gpu-bdf", "0000:18:00.0", "--query-ppcie-mode"], 0, H100_TOPO,
     H100_PM_ON + f"<TS> INFO     Selected {H100}\n<TS> WARNING  {H100} has CC mode on, some functionality may not work\n"
     f"<TS> INFO     {H100} PPCIe mode is off\n" + H100_PM_OFF),
    # pitfall: no selector lists the inventory, exits 0 and prints no mode
    (["--query-cc-mode"], 0, f"GPUs:\n  0 {H100}\nOther:\n",
     H100_PM_ON + "<TS> INFO     No GPU specified, select GPU with --gpu, --gpu-bdf, or --gpu-name\n" + H100_PM_OFF),
    (["--gpu=0", "--query-cc-mode"], 0, f"GPUs:\n  0 {H100}\nOther:\n" + H100_TOPO,
     H100_PM_ON + f"<TS> INFO     Selected {H100}\n<TS> INFO     {H100} CC mode is on\n"
     f"<TS> WARNING  {H100} has CC mode on, some functionality may not work\n" + H100_PM_OFF),
    (["--devices", "gpus", "--query-cc-mode"], 0, H100_TOPO,
     H100_PM_ON + f"<TS> INFO     Selected {H100}\n<TS> INFO     {H100} CC mode is on\n"
     f"<TS> WARNING  {H100} has CC mode on, some functionality may not work\n" + H100_PM_OFF),
    # non-NVIDIA BDF (the ConnectX-7) and a BDF that does not exist
    (["--gpu-bdf=4b:00.0", "--query-cc-mode"], 1, "", "<TS> ERROR    Matching for 4b:00.0 found nothing\n"),
    (["--gpu-bdf=99:00.0", "--query-cc-mode"], 1, "", "<TS> ERROR    Matching for 99:00.0 found nothing\n"),
    (["--gpu=1", "--query-cc-mode"], 1, f"GPUs:\n  0 {H100}\nOther:\n",
     H100_PM_ON + f'Traceback (most recent call last):\n  File "{NVTOOL}", line 31, in <module>\n    main()\n'
     "ValueError: GPU index out of bounds\n" + H100_PM_OFF),
    (["--gpu-bdf=18:00.0", "--query-cc-mode", "--log=warning"], 0, H100_TOPO,
     H100_PM_ON + f"<TS> WARNING  {H100} has CC mode on, some functionality may not work\n" + H100_PM_OFF),
]


@pytest.mark.parametrize(("args", "rc", "stdout", "stderr"), NVTOOLS_H100X1)
def test_nvtools_h100x1(args: list[str], rc: int, stdout: str, stderr: str, hosts, nvtool) -> None:
    assert nvtool(hosts("h100x1"), *args) == (rc, head(*args) + stdout, stderr)


def test_nvtools_refuses_a_gpu_driven_by_nvidia(hosts, nvtool) -> None:
    state = hosts("gpu_nvidia_driver")
    args = ["--gpu-bdf=18:00.0", "--query-cc-mode"]
    assert nvtool(state, *args) == (1, head(*args) + H100_TOPO, (
        f"<TS> INFO     Selected {H100}\n<TS> ERROR    The nvidia driver appears to be using {H100}, aborting. "
        "Specify --ignore-nvidia-driver to ignore this check.\n"))
    args = ["--gpu-bdf=18:00.0", "--query-cc-mode", "--ignore-nvidia-driver"]
    assert nvtool(state, *args) == (0, head(*args) + H100_TOPO, (
        f"<TS> INFO     Selected {H100}\n<TS> WARNING  The nvidia driver appears to be using {H100}, but "
        f"--ignore-nvidia-driver was specified, continuing.\n<TS> INFO     {H100} CC mode is on\n"
        f"<TS> WARNING  {H100} has CC mode on, some functionality may not work\n"))


SW = "NvSwitch 0000:07:00.0 NVSwitch_gen3 0x22a3 BAR0 0xa6000000"
SW_TOPO = ("Topo:\n  Intel root port 0000:04:01.0\n   PciBridge 0000:05:00.0 c030:1000\n"
           "    PciBridge 0000:06:00.0 c030:1000\n     " + SW + "\n")
SW_PM_ON = ("<TS> WARNING  NvSwitch 0000:07:00.0 ? 0x22a3 BAR0 0x0 was in D3/control:auto, forced power control to on. "
            "New state D0\n")
SW_PM_OFF = f"<TS> WARNING  {SW} restoring power control to auto\n"
H200 = "GPU 0000:db:00.0 H200 0x2335 BAR0 0xee000000"

NVTOOLS_H200X8 = [
    (["--gpu-bdf=07:00.0", "--query-ppcie-mode"], 0, SW_TOPO,
     SW_PM_ON + f"<TS> INFO     Selected {SW}\n<TS> WARNING  {SW} has PPCIe mode on, some functionality may not work\n"
     f"<TS> INFO     {SW} PPCIe mode is on\n" + SW_PM_OFF),
    (["--gpu-bdf=07:00.0", "--query-cc-mode"], 1, SW_TOPO,
     SW_PM_ON + f"<TS> INFO     Selected {SW}\n<TS> ERROR    Querying CC mode is not supported on {SW}\n" + SW_PM_OFF),
    (["--gpu-bdf=07:00.0", "--set-cc-mode=off", "--reset-after-cc-mode-switch"], 1, SW_TOPO,
     SW_PM_ON + f"<TS> INFO     Selected {SW}\n<TS> ERROR    Configuring CC not supported on {SW}\n" + SW_PM_OFF),
    (["--gpu-bdf=db:00.0", "--query-cc-mode", "--query-ppcie-mode"], 0,
     "Topo:\n  Intel root port 0000:da:01.0\n   " + H200 + "\n",
     "<TS> WARNING  GPU 0000:db:00.0 ? 0x2335 BAR0 0x0 was in D3/control:auto, forced power control to on. "
     f"New state D0\n<TS> INFO     Selected {H200}\n<TS> INFO     {H200} CC mode is off\n"
     f"<TS> WARNING  {H200} has PPCIe mode on, some functionality may not work\n<TS> INFO     {H200} PPCIe mode is on\n"
     f"<TS> WARNING  {H200} restoring power control to auto\n"),
]


@pytest.mark.parametrize(("args", "rc", "stdout", "stderr"), NVTOOLS_H200X8)
def test_nvtools_h200x8(args: list[str], rc: int, stdout: str, stderr: str, hosts, nvtool) -> None:
    assert nvtool(hosts("h200x8"), *args) == (rc, head(*args) + stdout, stderr)


def test_nvtools_h200x8_inventory_and_ambiguous_bdf(hosts, nvtool) -> None:
    state = hosts("h200x8")
    rc, out, err = nvtool(state, "--query-ppcie-mode")
    inventory = out.split("\n")[2:-1]
    assert rc == 0 and inventory[0] == "GPUs:" and inventory[-1] == "Other:" and len(inventory) == 14
    assert inventory[1] == f"  0 {SW}" and inventory[12] == f"  11 {H200}"
    assert err.count("forced power control to on") == 12 and "CC mode is" not in err and "PPCIe mode is" not in err
    restore = [line for line in err.splitlines() if "restoring power control" in line]
    assert restore[0] == f"<TS> WARNING  {H200} restoring power control to auto" and restore[-1] == SW_PM_OFF.strip()
    rc, out, err = nvtool(state, "--gpu-bdf=00.0", "--query-cc-mode")
    assert rc == 1 and "Topo:" not in out
    assert f"<TS> ERROR    Matching for 00.0 found more than one GPU {SW}, NvSwitch 0000:08:00.0" in err


def test_nvtools_old_tool_version_names_and_options(hosts, nvtool) -> None:
    state = hosts("h100x1", nvtools_version="v2024.02.14o")
    pm_on = "<TS> WARNING  GPU 0000:18:00.0 ? 0x2330 BAR0 0x0 was in D3, forced power control to on (prev auto). " \
            "New state D0\n"
    args = ["--gpu-bdf=18:00.0", "--query-cc-mode"]
    old = "GPU 0000:18:00.0 H100-SXM 0x2330 BAR0 0x9e000000"
    rc, out, err = nvtool(state, *args)
    assert out == f"NVIDIA GPU Tools version v2024.02.14o\nCommand line arguments: {[NVTOOL, *args]}\n" + \
        H100_TOPO.replace(H100, old)
    assert (rc, err) == (0, pm_on + (
        f"<TS> INFO     Selected {old}\n<TS> WARNING  {old} has CC mode on, some "
        f"functionality may not work\n<TS> INFO     {old} CC mode is on\n"
        f"<TS> WARNING  {old} restoring power control to auto\n"))
    rc, _out, err = nvtool(state, "--gpu-bdf=18:00.0", "--query-ppcie-mode")
    assert rc == 2 and err.endswith("nvidia_gpu_tools.py: error: unrecognized arguments: --query-ppcie-mode\n")


@pytest.mark.parametrize(("args", "last_line"), [
    (["--set-cc-mode=bogus"], "nvidia_gpu_tools.py: error: argument --set-cc-mode: invalid choice: 'bogus' "
                              "(choose from 'off', 'on', 'devtools')"),
    (["--gpu=x"], "nvidia_gpu_tools.py: error: argument --gpu: invalid auto_int value: 'x'"),
    (["--set-ppcie-mode", "devtools"], "nvidia_gpu_tools.py: error: argument --set-ppcie-mode: invalid choice: "
                                       "'devtools' (choose from 'off', 'on')"),
])
def test_nvtools_argparse_errors(args: list[str], last_line: str, hosts, nvtool) -> None:
    rc, out, err = nvtool(hosts("h100x1"), *args)
    assert (rc, out) == (2, head(*args))
    assert err.startswith("usage: nvidia_gpu_tools.py [-h]") and err.splitlines()[-1] == last_line


def test_nvtools_unmodelled_option_fails_loudly(hosts, nvtool) -> None:
    rc, out, err = nvtool(hosts("h100x1"), "--gpu-bdf=18:00.0", "--reset-with-sbr")
    assert (rc, out) == (70, head("--gpu-bdf=18:00.0", "--reset-with-sbr"))
    assert err == "nvidia_gpu_tools.py: zerog-sim: not simulated: options --reset-with-sbr\n"


def _modes(state_file: str, bdf: str) -> tuple[str, str]:
    dev = next(d for d in json.loads(Path(state_file).read_text())["pci_devices"] if d["bdf"] == bdf)
    return dev["cc_mode"], dev["ppcie_mode"]


def _query(nvtool, state_file: str, bdf: str) -> list[str]:
    _rc, _out, err = nvtool(state_file, f"--gpu-bdf={bdf}", "--query-cc-mode", "--query-ppcie-mode")
    return re.findall(r"(CC|PPCIe) mode is (\S+)$", err, re.M)


def test_nvtools_set_then_query_cc_round_trip(hosts, nvtool) -> None:
    state = hosts("h100x1", fresh=True)
    assert _query(nvtool, state, "18:00.0") == [("CC", "on"), ("PPCIe", "off")]
    rc, _out, err = nvtool(state, "--gpu-bdf=18:00.0", "--set-cc-mode=off", "--reset-after-cc-mode-switch")
    assert rc == 0
    assert f"<TS> INFO     {H100} CC mode set to off. It will be active after GPU reset.\n" \
           f"<TS> INFO     {H100} was reset to apply the new CC mode.\n" in err
    assert _query(nvtool, state, "18:00.0") == [("CC", "off"), ("PPCIe", "off")]
    assert _modes(state, "0000:18:00.0") == ("off", "off")
    # without the reset flag the new mode is only pending
    assert nvtool(state, "--gpu-bdf=18:00.0", "--set-cc-mode=on")[0] == 0
    assert _query(nvtool, state, "18:00.0") == [("CC", "off"), ("PPCIe", "off")]
    assert nvtool(state, "--gpu-bdf=18:00.0", "--set-cc-mode=on", "--reset-after-cc-mode-switch")[0] == 0
    assert _query(nvtool, state, "18:00.0") == [("CC", "on"), ("PPCIe", "off")]


def test_nvtools_ppcie_and_cc_are_exclusive(hosts, nvtool) -> None:
    state = hosts("h200x8", fresh=True)
    bdf = "18:00.0"
    gpu = "GPU 0000:18:00.0 H200 0x2335 BAR0 0x9e000000"
    # CC on while PPCIe is on: the reset cannot activate CC (upstream's GpuError)
    rc, _out, err = nvtool(state, f"--gpu-bdf={bdf}", "--set-cc-mode=on", "--reset-after-cc-mode-switch")
    assert rc == 1
    assert f"\ngpu.error.GpuError: {gpu} failed to switch to CC mode on, current mode is off.\n" in err
    assert _query(nvtool, state, bdf) == [("CC", "off"), ("PPCIe", "on")]
    # canonical's order: PPCIe off first, then CC on (the pending CC knob is still on)
    assert nvtool(state, f"--gpu-bdf={bdf}", "--set-ppcie-mode=off", "--reset-after-ppcie-mode-switch")[0] == 0
    assert nvtool(state, f"--gpu-bdf={bdf}", "--set-cc-mode=on", "--reset-after-cc-mode-switch")[0] == 0
    assert _query(nvtool, state, bdf) == [("CC", "on"), ("PPCIe", "off")]
    # back to PPCIe: upstream announces that CC is turned off first
    rc, _out, err = nvtool(state, f"--gpu-bdf={bdf}", "--set-ppcie-mode=on", "--reset-after-ppcie-mode-switch")
    assert rc == 0
    assert "<TS> INFO     CC is currently active. It will be turned off before switching to PPCIe.\n" in err
    assert f"<TS> INFO     {gpu} was reset to apply the new PPCIe mode.\n" in err
    assert _query(nvtool, state, bdf) == [("CC", "off"), ("PPCIe", "on")] and _modes(state, "0000:18:00.0") == ("off", "on")


# ------------------------------------------------------------------------------------------------ rdmsr

RDMSR_H100X1 = [
    (["-f", "63:32", "0x87"], 0, "40\n", ""),          # hex without 0x: 0x40 = 64 keys
    (["-u", "-f", "63:32", "0x87"], 0, "64\n", ""),
    (["--unsigned", "--bitfield=63:32", "0x87"], 0, "64\n", ""),
    (["-d", "-f", "63:32", "0x87"], 0, "64\n", ""),
    (["-f", "1:1", "0x982"], 0, "1\n", ""),
    (["-f", "11:11", "0x1401"], 0, "1\n", ""),
    (["-f", "18:18", "0x3a"], 0, "1\n", ""),
    (["0xa0"], 0, "0\n", ""),
    (["-f", "27:27", "0xce"], 0, "0\n", ""),
    (["0x982"], 0, "1780000003\n", ""),
    (["-X", "0x87"], 0, "400000003F\n", ""),
    (["-0", "0x87"], 0, "000000400000003f\n", ""),
    (["-c", "0x87"], 0, "0x400000003f\n", ""),
    (["-0", "-u", "-f", "63:32", "0x87"], 0, "0000000064\n", ""),
    (["-u", "135"], 0, "274877907007\n", ""),
    (["-o", "-f", "63:32", "0x87"], 0, "100\n", ""),
    (["-p", "3", "0xa0"], 0, "0\n", ""),
    (["-a", "-f", "11:11", "0x1401"], 0, "CPU 0: 1\nCPU 1: 1\nCPU 2: 1\nCPU 3: 1\n", ""),
    (["-p", "4", "0xa0"], 127, "", "rdmsr: open: No such file or directory\n"),
    (["0xab"], 4, "", "rdmsr: CPU 0 cannot read MSR 0x000000ab\n"),
    (["0xzz"], 127, "Failed to parse register number.\n", ""),
    (["-z", "0x87"], 127, "", "rdmsr: invalid option -- 'z'\n" + RDMSR_USAGE),
    (["--c", "0x87"], 127, "", "rdmsr: option '--c' is ambiguous; possibilities: '--capital-hexadecimal' "
                               "'--c-language' '--cpu'\n" + RDMSR_USAGE),
    (["-f", "64:0", "0x87"], 127, "", RDMSR_USAGE),
    (["-p", "256", "0x87"], 127, "", RDMSR_USAGE),
    (["0x87", "0x88"], 127, "", RDMSR_USAGE),
    ([], 127, "", RDMSR_USAGE),
    (["-h"], 0, "", RDMSR_USAGE),
    (["-V"], 0, "", "rdmsr: version msr-tools-1.3\n"),
]


@pytest.mark.parametrize(("args", "rc", "stdout", "stderr"), RDMSR_H100X1)
def test_rdmsr_h100x1(args: list[str], rc: int, stdout: str, stderr: str, hosts, call) -> None:
    assert call(host_rdmsr.main, args, hosts("h100x1")) == (rc, stdout, stderr)


@pytest.mark.parametrize(("profile", "args", "stdout"), [
    ("tdx_bios_off", ["-f", "11:11", "0x1401"], "0\n"),
    ("tdx_bios_off", ["-u", "-f", "63:32", "0x87"], "0\n"),
    ("no_sgx_devices", ["-f", "18:18", "0x3a"], "0\n"),
    ("golden_h100x2", ["-f", "63:32", "0x87"], "20\n"),
    ("h200x8", ["-u", "-f", "63:32", "0x87"], "32\n"),
])
def test_rdmsr_profiles(profile: str, args: list[str], stdout: str, hosts, call) -> None:
    assert call(host_rdmsr.main, args, hosts(profile)) == (0, stdout, "")


def test_rdmsr_without_the_msr_module(hosts) -> None:
    state = hosts("h100x1", fresh=True)
    data = json.loads(Path(state).read_text())
    root = Path(data["root"])
    for cpu in os.listdir(root / "dev/cpu"):
        os.unlink(root / "dev/cpu" / cpu / "msr")
    result = run([str(BIN / "rdmsr"), "0x87"], state)
    assert (result.returncode, result.stdout, result.stderr) == (127, "", "rdmsr: open: No such file or directory\n")


# ------------------------------------------------------------------------------------------------ dmesg

H100X1_DMESG = "".join(f"{line}\n" for line in [
    "[    0.000000] Linux version 6.17.0-5-generic (buildd@lcy02-amd64-081) (x86_64-linux-gnu-gcc-15 (Ubuntu "
    "15.2.0-4ubuntu4) 15.2.0, GNU ld (GNU Binutils for Ubuntu) 2.45) #5-Ubuntu SMP PREEMPT_DYNAMIC Mon Sep 22 "
    "10:00:33 UTC 2025",
    "[    0.000000] Command line: BOOT_IMAGE=/vmlinuz-6.17.0-5-generic root=/dev/mapper/ubuntu--vg-ubuntu--lv ro "
    "nohibernate kvm_intel.tdx=1 intel_iommu=on iommu=pt quiet splash vt.handoff=7",
    "[    0.000000] x86/tme: enabled by BIOS",
    "[    0.000000] x86/mktme: BIOS enabled: x86_phys_bits reduced by 7",
    "[    0.964212] DMAR: IOMMU enabled",
    "[    1.530151] sgx: EPC section 0x1020c00000-0x107fffffff",
    "[   10.162072] virt/tdx: BIOS enabled: private KeyID range [64, 128)",
    "[   10.162074] virt/tdx: Disable ACPI S3. Turn off TDX in the BIOS to use ACPI S3.",
    "[   21.678799] virt/tdx: TDX module 1.5.06.00, build number 744, build date 0134d817",
    "[   26.540654] virt/tdx: 8405028 KB allocated for PAMT",
    "[   26.540658] virt/tdx: module initialized",
    "[   27.204511] VFIO - User Level meta-driver version: 0.3",
])

DMESG_CASES = [
    ("h100x1", [], 0, H100X1_DMESG, ""),
    ("h100x1", ["--kernel", "--nopager", "--color=never"], 0, H100X1_DMESG, ""),
    ("hibernation_on", ["-t", "-l", "err"], 0, "virt/tdx: initialization failed: Hibernation support is enabled\n", ""),
    ("hibernation_on", ["--level=err,warn"], 0,
     "[   10.162075] virt/tdx: initialization failed: Hibernation support is enabled\n", ""),
    ("tdx_module_uninitialized", ["-x", "-l", "3"], 0,
     "kern  :err   : [   21.678799] virt/tdx: module not loaded\n", ""),
    ("kvm_tdx_unset", ["--notime"], 0, "".join(
        line.split("] ", 1)[1] + "\n" for line in H100X1_DMESG.splitlines()
        if "PAMT" not in line and "module" not in line).replace(" kvm_intel.tdx=1", ""), ""),
    ("h100x1", ["-r", "-l", "notice"], 0, "<5>" + H100X1_DMESG.splitlines()[0] + "\n", ""),
    ("h100x1", ["-z"], 1, "", "dmesg: invalid option -- 'z'\nTry 'dmesg --help' for more information.\n"),
    ("h100x1", ["--bogus"], 1, "", "dmesg: unrecognized option '--bogus'\nTry 'dmesg --help' for more information.\n"),
    ("h100x1", ["--level=foo"], 1, "", "dmesg: unknown level 'foo'\n"),
    ("h100x1", ["extra"], 1, "", "dmesg: bad usage\nTry 'dmesg --help' for more information.\n"),
    ("h100x1", ["-V"], 0, "dmesg from util-linux 2.38.1\n", ""),
    ("h100x1", ["-T"], 70, "", "dmesg: zerog-sim: not simulated: options -T (simulated: -t, -r, -x, -l, -k, -L, -P)\n"),
    ("h100x1", ["-w"], 70, "", "dmesg: zerog-sim: not simulated: options -w (simulated: -t, -r, -x, -l, -k, -L, -P)\n"),
]


@pytest.mark.parametrize(("profile", "args", "rc", "stdout", "stderr"), DMESG_CASES)
def test_dmesg(profile: str, args: list[str], rc: int, stdout: str, stderr: str, hosts, call) -> None:
    assert call(host_dmesg.main, args, hosts(profile)) == (rc, stdout, stderr)


def test_dmesg_golden_host_keeps_the_verbatim_tdx1_lines(hosts) -> None:
    result = run([str(BIN / "dmesg"), "-l", "info"], hosts("golden_h100x2"))
    tdx = [line for line in result.stdout.splitlines() if "virt/tdx" in line]
    assert tdx == [
        "[    1.289113] virt/tdx: BIOS enabled: private KeyID range [32, 64)",
        "[    1.289117] virt/tdx: Disable ACPI S3. Turn off TDX in the BIOS to use ACPI S3.",
        "[    8.222925] virt/tdx: TDX module: attributes 0x0, vendor_id 0x8086, major_version 1, minor_version 5, "
        "build_date 20240129, build_num 698",
        "[    8.222929] virt/tdx: CMR: [0x100000, 0x6f800000)",
        "[    9.355881] virt/tdx: 1050644 KB allocated for PAMT",
        "[    9.355890] virt/tdx: module initialized",
    ]
    assert result.stdout.splitlines()[0] == ("[    0.000000] Command line: BOOT_IMAGE=/boot/vmlinuz-6.8.0-1006-intel "
                                             "root=UUID=135651d7-8961-4488-ac65-186eef7498f1 ro kvm_intel.tdx=1 "
                                             "nohibernate intel_iommu=on iommu=pt")


def test_dmesg_is_restricted_for_non_root(hosts, call) -> None:
    assert call(host_dmesg.main, [], hosts("h100x1"), euid=1000) == (
        1, "", "dmesg: read kernel buffer failed: Operation not permitted\n")


def test_shims_run_from_a_symlinked_bin(hosts, tmp_path: Path) -> None:
    """The bin/ scripts work through a symlink (as from /usr/local/bin) and take argv[0] from it."""
    state = hosts("h100x1")
    for name in ("lspci", "rdmsr", "dmesg", "nvidia_gpu_tools.py"):
        (tmp_path / name).symlink_to(BIN / name)
    assert run([str(tmp_path / "lspci"), "-n", "-d", "10de:"], state).stdout == "18:00.0 0302: 10de:2330 (rev a1)\n"
    assert run([str(tmp_path / "rdmsr"), "-u", "-f", "63:32", "0x87"], state).stdout == "64\n"
    assert run([str(tmp_path / "dmesg"), "-t", "-l", "notice"], state).stdout.startswith("Linux version 6.17.0-5")
    result = run([str(tmp_path / "nvidia_gpu_tools.py"), "--gpu-bdf=18:00.0", "--query-cc-mode"], state)
    assert result.returncode == 0
    assert result.stdout.splitlines()[1] == (
        f"Command line arguments: ['{tmp_path}/nvidia_gpu_tools.py', '--gpu-bdf=18:00.0', '--query-cc-mode']")
    assert TS.sub("<TS> ", result.stderr).splitlines()[2] == f"<TS> INFO     {H100} CC mode is on"
