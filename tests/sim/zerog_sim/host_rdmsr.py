"""Stand-in for msr-tools ``rdmsr`` (Debian 12's msr-tools 1.3), driven by the active host state.

MSR values come from ``state["msr"]["values"]`` (the same value on every CPU); the per-CPU device
nodes are the fixture's ``dev/cpu/<n>/msr``. Behaviour copied from rdmsr.c and checked against the
real binary: default output is lower-case hex without ``0x`` and without leading zeros, ``-u``
unsigned decimal, ``-d`` signed decimal, ``-x``/``-X``/``-o``/``-c``/``-0`` formats, ``-f h:l``
bit field, ``-p N`` processor (0..255), ``-a`` every CPU as ``CPU n: value``; every usage error
prints the usage text on stderr and exits 127, an unparsable register prints ``Failed to parse
register number.`` on stdout and exits 127, a missing ``/dev/cpu/N/msr`` (msr module not loaded,
or no such CPU) prints ``rdmsr: open: No such file or directory`` and exits 127, an MSR the
profile does not define fails like an unimplemented MSR (``rdmsr: CPU 0 cannot read MSR
0x000000ab``, exit 4). ``-r`` (raw binary) is not simulated.
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

from zerog_sim.hostcli import NO_ARG, REQUIRED_ARG, GetoptError, LongOpt, gnu_getopt
from zerog_sim.state import load_or_exit, not_simulated

PROG = "rdmsr"
SHORTOPTS = "hVxXdoruc0ap:f:"
LONGOPTS = [
    LongOpt("help", NO_ARG, "h"),
    LongOpt("version", NO_ARG, "V"),
    LongOpt("hexadecimal", NO_ARG, "x"),
    LongOpt("capital-hexadecimal", NO_ARG, "X"),
    LongOpt("decimal", NO_ARG, "d"),
    LongOpt("signed-decimal", NO_ARG, "d"),
    LongOpt("unsigned-decimal", NO_ARG, "u"),
    LongOpt("octal", NO_ARG, "o"),
    LongOpt("c-language", NO_ARG, "c"),
    LongOpt("zero-fill", NO_ARG, "0"),
    LongOpt("zero-pad", NO_ARG, "0"),
    LongOpt("raw", NO_ARG, "r"),
    LongOpt("all", NO_ARG, "a"),
    LongOpt("processor", REQUIRED_ARG, "p"),
    LongOpt("cpu", REQUIRED_ARG, "p"),
    LongOpt("bitfield", REQUIRED_ARG, "f"),
]
USAGE = """Usage: rdmsr [options] regno
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
EXIT_USAGE = 127
#: what sscanf(optarg, "%u:%u", ...) accepts (trailing text is ignored, as in C)
BITFIELD_RE = re.compile(r"^\s*\+?(\d+):\s*\+?(\d+)")

# ceil(log10(2**n)) for n = 0..64, as in rdmsr.c
DECDIGITS = [
    1,
    1,
    1,
    1,
    2,
    2,
    2,
    3,
    3,
    3,
    4,
    4,
    4,
    4,
    5,
    5,
    5,
    6,
    6,
    6,
    7,
    7,
    7,
    7,
    8,
    8,
    8,
    9,
    9,
    9,
    10,
    10,
    10,
    10,
    11,
    11,
    11,
    12,
    12,
    12,
    13,
    13,
    13,
    13,
    14,
    14,
    14,
    15,
    15,
    15,
    16,
    16,
    16,
    16,
    17,
    17,
    17,
    18,
    18,
    18,
    19,
    19,
    19,
    19,
    20,
]


class Usage(Exception):
    """Print the usage text and exit 127."""


def c_strtoul(text: str) -> int | None:
    """strtoul(text, &end, 0) requiring the whole string to be consumed; None if it is not."""
    body = text.lstrip()
    try:
        if body.lower().startswith("0x"):
            return int(body[2:], 16) & 0xFFFFFFFFFFFFFFFF if body[2:] else None
        if body.startswith("0") and len(body) > 1:
            return int(body[1:], 8)
        return int(body, 10)
    except ValueError:
        return None


def format_value(data: int, highbit: int, lowbit: int, mode: str, fill: bool, c_lang: bool) -> str:
    """Format one MSR value the way rdmsr_on_cpu() does (without the trailing newline)."""
    bits = highbit - lowbit + 1
    if bits < 64:
        data = (data >> lowbit) & ((1 << bits) - 1)
    if mode == "d" and data & (1 << (bits - 1)):
        data &= ~(1 << (bits - 1))
        data = -data
    if mode in ("x", "X"):
        width = (bits + 3) // 4 if fill else 1
        text = f"{data:0{width}x}" if mode == "x" else f"{data:0{width}X}"
        return f"0x{text}" if c_lang else text
    if mode == "o":
        width = (bits + 2) // 3 if fill else 1
        text = f"{data:0{width}o}"
        return f"0{text}" if c_lang else text
    if mode == "u":
        if c_lang:
            return f"{data}U"
        return f"{data:0{DECDIGITS[bits]}d}" if fill else str(data)
    # signed decimal
    if fill and not c_lang:
        return f"{data:0{DECDIGITS[bits - 1] + 1}d}"
    return str(data)


def parse(args: list[str]) -> dict[str, Any]:
    """Parse the command line; raises Usage, GetoptError or returns the settings."""
    options, operands = gnu_getopt(PROG, args, SHORTOPTS, LONGOPTS)
    settings: dict[str, Any] = {
        "mode": "x",
        "fill": False,
        "c": False,
        "cpu": 0,
        "high": 63,
        "low": 0,
        "raw": False,
        "help": False,
        "version": False,
    }
    for key, value in options:
        if key == "h":
            settings["help"] = True
            return settings
        if key == "V":
            settings["version"] = True
            return settings
        if key in "xXdou":
            settings["mode"] = key
        elif key == "r":
            settings["raw"] = True
        elif key == "c":
            settings["c"] = True
        elif key == "0":
            settings["fill"] = True
        elif key == "a":
            settings["cpu"] = -1
        elif key == "p":
            cpu = c_strtoul(value or "")
            if cpu is None or cpu > 255:
                raise Usage
            settings["cpu"] = cpu
        elif key == "f":
            match = BITFIELD_RE.match(value or "")
            if not match:
                raise Usage
            settings["high"], settings["low"] = int(match.group(1)), int(match.group(2))
            if settings["high"] > 63 or settings["low"] > settings["high"]:
                raise Usage
    if len(operands) != 1:
        raise Usage
    settings["reg"] = operands[0]
    return settings


def main(argv: list[str] | None = None) -> int:
    """Run the stand-in with ``argv`` (without the program name); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        settings = parse(args)
    except GetoptError as err:
        sys.stderr.write(f"{err}\n{USAGE}")
        return EXIT_USAGE
    except Usage:
        sys.stderr.write(USAGE)
        return EXIT_USAGE
    if settings["help"]:
        sys.stderr.write(USAGE)
        return 0
    if settings["version"]:
        sys.stderr.write("rdmsr: version msr-tools-1.3\n")
        return 0
    reg = c_strtoul(settings["reg"])
    if reg is None:
        sys.stdout.write("Failed to parse register number.\n")
        return EXIT_USAGE
    reg &= 0xFFFFFFFF
    if settings["raw"]:
        return not_simulated(PROG, "-r (raw binary output)")
    state = load_or_exit(PROG)
    root = state["root"]
    values = {int(str(k), 16): int(str(v), 16) for k, v in state.get("msr", {}).get("values", {}).items()}
    if settings["cpu"] == -1:
        cpu_dir = os.path.join(root, "dev", "cpu")
        cpus = sorted(int(n) for n in os.listdir(cpu_dir) if n[:1].isdigit()) if os.path.isdir(cpu_dir) else []
        if not cpus:
            sys.stderr.write("rdmsr: open: No such file or directory\n")
            return EXIT_USAGE
    else:
        cpus = [settings["cpu"]]
    for cpu in cpus:
        if not os.path.exists(os.path.join(root, "dev", "cpu", str(cpu), "msr")):
            sys.stdout.flush()
            sys.stderr.write("rdmsr: open: No such file or directory\n")
            return EXIT_USAGE
        if reg not in values:
            sys.stdout.flush()
            sys.stderr.write(f"rdmsr: CPU {cpu} cannot read MSR 0x{reg:08x}\n")
            return 4
        text = format_value(values[reg], settings["high"], settings["low"], settings["mode"], settings["fill"], settings["c"])
        prefix = f"CPU {cpu}: " if settings["cpu"] == -1 else ""
        sys.stdout.write(f"{prefix}{text}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
