"""Stand-in for util-linux ``dmesg`` (Debian 12's util-linux 2.38.1), printing the profile's kernel log.

The kernel log is ``state["dmesg"]``: records ``{"level": 0-7, "ts": "<seconds>.<micro>", "msg": text}``
(facility kern). Simulated options: none (``[%5d.%06d] msg``), ``-t``/``--notime``, ``-r``/``--raw``
(``<level>[...] msg``), ``-x``/``--decode`` (``kern  :info  : ``), ``-l``/``--level LIST``,
``-k``/``--kernel``, ``-L``/``--color`` (never colours: output is not a terminal), ``-P``/``--nopager``,
``--time-format notime|raw``. Errors use util-linux wording: an unknown option prints
``dmesg: invalid option -- 'z'`` (or ``dmesg: unrecognized option '--x'``) and ``Try 'dmesg --help' for
more information.``, exit 1; an operand gives ``dmesg: bad usage``; an unknown level ``dmesg: unknown
level 'foo'``. As on Ubuntu (``kernel.dmesg_restrict = 1``), a non-root caller gets ``dmesg: read
kernel buffer failed: Operation not permitted`` and exit 1.

Every other valid option (``-H``, ``-T``, ``-w``, ``-C``, ``-c``, ``-J``, ``-F``, ...) fails loudly with
exit status 70 instead of guessing.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from zerog_sim.hostcli import NO_ARG, OPTIONAL_ARG, REQUIRED_ARG, GetoptError, LongOpt, gnu_getopt
from zerog_sim.state import load_or_exit, not_simulated

PROG = "dmesg"
SHORTOPTS = "CcDdEeF:f:HhJkL::l:n:iPprSs:TtuVWwx"
LONGOPTS = [
    LongOpt("buffer-size", REQUIRED_ARG, "s"),
    LongOpt("clear", NO_ARG, "C"),
    LongOpt("color", OPTIONAL_ARG, "L"),
    LongOpt("colour", OPTIONAL_ARG, "L"),
    LongOpt("console-level", REQUIRED_ARG, "n"),
    LongOpt("console-off", NO_ARG, "D"),
    LongOpt("console-on", NO_ARG, "E"),
    LongOpt("decode", NO_ARG, "x"),
    LongOpt("file", REQUIRED_ARG, "F"),
    LongOpt("facility", REQUIRED_ARG, "f"),
    LongOpt("follow", NO_ARG, "w"),
    LongOpt("follow-new", NO_ARG, "W"),
    LongOpt("human", NO_ARG, "H"),
    LongOpt("help", NO_ARG, "h"),
    LongOpt("json", NO_ARG, "J"),
    LongOpt("kernel", NO_ARG, "k"),
    LongOpt("level", REQUIRED_ARG, "l"),
    LongOpt("since", REQUIRED_ARG, "since"),
    LongOpt("syslog", NO_ARG, "S"),
    LongOpt("raw", NO_ARG, "r"),
    LongOpt("read-clear", NO_ARG, "c"),
    LongOpt("reltime", NO_ARG, "e"),
    LongOpt("show-delta", NO_ARG, "d"),
    LongOpt("ctime", NO_ARG, "T"),
    LongOpt("noescape", NO_ARG, "noescape"),
    LongOpt("notime", NO_ARG, "t"),
    LongOpt("nopager", NO_ARG, "P"),
    LongOpt("until", REQUIRED_ARG, "until"),
    LongOpt("userspace", NO_ARG, "u"),
    LongOpt("version", NO_ARG, "V"),
    LongOpt("time-format", REQUIRED_ARG, "time-format"),
    LongOpt("force-prefix", NO_ARG, "p"),
]
LEVELS = ["emerg", "alert", "crit", "err", "warn", "notice", "info", "debug"]
TRY_HELP = "Try 'dmesg --help' for more information.\n"


class DmesgError(Exception):
    """An error util-linux reports as ``dmesg: <msg>`` (optionally followed by the --help hint)."""

    def __init__(self, message: str, hint: bool = False) -> None:
        super().__init__(message)
        self.hint = hint


def parse_levels(text: str) -> set[int]:
    """Parse a ``--level`` list of names or numbers."""
    levels: set[int] = set()
    for item in text.split(","):
        if item.isdigit() and int(item) < len(LEVELS):
            levels.add(int(item))
        elif item in LEVELS:
            levels.add(LEVELS.index(item))
        else:
            raise DmesgError(f"unknown level '{item}'")
    return levels


def format_record(record: dict[str, Any], notime: bool, raw: bool, decode: bool) -> str:
    """One output line (with newline) for a kernel log record."""
    level = int(record.get("level", 6))
    sec, _sep, micro = str(record["ts"]).partition(".")
    stamp = "" if notime else f"[{int(sec):5d}.{int((micro or '0').ljust(6, '0')[:6]):06d}] "
    if raw:
        return f"<{level}>{stamp}{record['msg']}\n"
    prefix = f"{'kern':<6}:{LEVELS[level]:<6}: " if decode else ""
    return f"{prefix}{stamp}{record['msg']}\n"


def render(
    records: list[dict[str, Any]], notime: bool = False, raw: bool = False, decode: bool = False, levels: set[int] | None = None
) -> str:
    """dmesg's stdout for ``records`` with the given options."""
    return "".join(format_record(r, notime, raw, decode) for r in records if levels is None or int(r.get("level", 6)) in levels)


def main(argv: list[str] | None = None, euid: int | None = None) -> int:
    """Run the stand-in with ``argv`` (without the program name); return the exit status."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        options, operands = gnu_getopt(PROG, args, SHORTOPTS, LONGOPTS)
    except GetoptError as err:
        sys.stderr.write(f"{err}\n{TRY_HELP}")
        return 1
    if ("V", None) in options:
        sys.stdout.write("dmesg from util-linux 2.38.1\n")
        return 0
    notime = raw = decode = False
    levels: set[int] | None = None
    unsupported: list[str] = []
    try:
        if operands:
            raise DmesgError("bad usage", hint=True)
        for key, value in options:
            if key == "t":
                notime = True
            elif key == "r":
                raw = True
            elif key == "x":
                decode = True
            elif key == "l":
                levels = parse_levels(value or "")
            elif key in ("k", "L", "P"):
                continue
            elif key == "time-format" and value in ("notime", "raw"):
                notime = notime or value == "notime"
            elif key == "time-format" and value not in ("delta", "reltime", "ctime", "iso"):
                raise DmesgError(f"unknown time format: {value}")
            else:
                unsupported.append(f"-{key}" if len(key) == 1 else f"--{key}")
    except DmesgError as err:
        sys.stderr.write(f"{PROG}: {err}\n" + (TRY_HELP if err.hint else ""))
        return 1
    if unsupported:
        return not_simulated(PROG, f"options {' '.join(unsupported)} (simulated: -t, -r, -x, -l, -k, -L, -P)")
    state = load_or_exit(PROG)
    if (os.geteuid() if euid is None else euid) != 0 and state.get("kernel", {}).get("dmesg_restrict", 1):
        sys.stderr.write("dmesg: read kernel buffer failed: Operation not permitted\n")
        return 1
    sys.stdout.write(render(state.get("dmesg", []), notime, raw, decode, levels))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
