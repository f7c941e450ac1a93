"""Stand-in for ``qemu-img`` as used by private-ml-sdk's ``dstack run``.

Simulated:

* ``qemu-img create [-q] [-f FMT] [-o OPTS] FILE [SIZE]`` for ``qcow2`` (the default format is
  raw, as in QEMU) and ``raw``.  A qcow2 file is a small placeholder holding a qcow2 v3 header
  with the virtual size, not a usable image; a raw file is created sparse at its full size.
  The ``Formatting '...'`` line is printed as QEMU 8.x prints it, sizes take QEMU's suffixes
  (k/K, M, G, T, P, E; binary; decimals allowed) and a size is required.
* ``qemu-img info FILE`` for files this stand-in created.
* ``qemu-img --version`` / ``-V`` (version taken from the active host state's QEMU text).

Any other subcommand of the real tool fails with exit status 70 and a "not simulated" message.
Runs as ``tests/sim/bin/qemu-img`` or ``python3 -m zerog_sim.qemu_img``.
"""

from __future__ import annotations

import os
import re
import struct
import sys

from zerog_sim import state

PROG = "qemu-img"
QCOW2_MAGIC = b"QFI\xfb"
SUFFIXES = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40,
            "p": 1 << 50, "e": 1 << 60}
SIZE = re.compile(r"^(\d+(?:\.\d+)?)([bBkKmMgGtTpPeE]?)$")
REAL_COMMANDS = {"amend", "bench", "bitmap", "check", "commit", "compare", "convert", "dd",
                 "map", "measure", "snapshot", "rebase", "resize"}
SIZE_ERROR = ("qemu-img: Invalid image size specified. You may use k, M, G, T, P or E "
              "suffixes for\nqemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes "
              "and exabytes.\n")


def fail(message: str) -> int:
    """Print ``qemu-img: message`` on stderr; return exit status 1."""
    sys.stderr.write(f"{PROG}: {message}\n")
    return 1


def parse_size(text: str) -> int | None:
    """QEMU's size syntax -> bytes, or None when invalid."""
    match = SIZE.match(text)
    if not match:
        return None
    value = float(match.group(1)) * SUFFIXES[match.group(2).lower()]
    if value >= 1 << 63:
        return None
    return int(value)


def human(size: int) -> str:
    """QEMU's size_to_str(): three significant digits and a binary unit."""
    units = ["B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB"]
    index = 0
    value = float(size)
    while value >= 1024 and index < len(units) - 1:
        value /= 1024
        index += 1
    return f"{value:0.3g} {units[index]}"


def qcow2_header(size: int) -> bytes:
    """A qcow2 version 3 header (cluster_bits 16, refcount_order 4) for ``size`` bytes."""
    header = struct.pack(">4sIQIIQIIQQIIQQQQII", QCOW2_MAGIC, 3, 0, 0, 16, size, 0, 0, 0,
                         65536, 1, 0, 0, 0, 0, 0, 4, 112)
    return header.ljust(512, b"\0")


def create(args: list[str]) -> int:
    """``qemu-img create``: write a qcow2 placeholder or a sparse raw file."""
    fmt = "raw"
    quiet = False
    positional = []
    index = 0
    while index < len(args):
        arg = args[index]
        if arg in ("-f", "-o", "-F", "-b") and index + 1 < len(args):
            if arg == "-f":
                fmt = args[index + 1]
            elif arg in ("-F", "-b"):
                return state.not_simulated(PROG, "backing files")
            index += 2
            continue
        if arg == "-q":
            quiet = True
        elif arg.startswith("-") and arg != "-":
            return fail(f"invalid option -- '{arg.lstrip('-')[:1]}'")
        else:
            positional.append(arg)
        index += 1
    if not positional:
        sys.stderr.write(f"{PROG}: Expecting image file name\n"
                         f"Try '{PROG} --help' for more information\n")
        return 1
    if len(positional) > 2:
        sys.stderr.write(f"{PROG}: Unexpected argument: {positional[2]}\n"
                         f"Try '{PROG} --help' for more information\n")
        return 1
    path = positional[0]
    if fmt not in ("qcow2", "raw"):
        if fmt in ("vmdk", "vdi", "vhdx", "vpc", "qed", "luks", "parallels", "qcow"):
            return state.not_simulated(PROG, f"create -f {fmt}")
        return fail(f"Unknown file format '{fmt}'")
    if len(positional) < 2:
        return fail(f"{path}: Image creation needs a size parameter")
    size = parse_size(positional[1])
    if size is None:
        sys.stderr.write(SIZE_ERROR)
        return 1
    if not quiet:
        if fmt == "qcow2":
            print(f"Formatting '{path}', fmt=qcow2 cluster_size=65536 extended_l2=off "
                  f"compression_type=zlib size={size} lazy_refcounts=off refcount_bits=16",
                  flush=True)
        else:
            print(f"Formatting '{path}', fmt=raw size={size}", flush=True)
    try:
        with open(path, "wb") as out:
            if fmt == "qcow2":
                out.write(qcow2_header(size))
            else:
                out.truncate(size)
    except OSError as err:
        return fail(f"{path}: Could not create '{path}': {err.strerror}")
    return 0


def info(args: list[str]) -> int:
    """``qemu-img info`` for the files ``create`` makes."""
    files = [a for a in args if not a.startswith("-")]
    if not files:
        sys.stderr.write(f"{PROG}: Expecting one image file name\n"
                         f"Try '{PROG} --help' for more information\n")
        return 1
    path = files[0]
    try:
        with open(path, "rb") as src:
            head = src.read(32)
        disk = os.stat(path).st_blocks * 512
    except OSError as err:
        return fail(f"Could not open '{path}': Could not open '{path}': {err.strerror}")
    if head[:4] == QCOW2_MAGIC:
        fmt, size = "qcow2", struct.unpack(">Q", head[24:32])[0]
    else:
        fmt, size = "raw", os.path.getsize(path)
    print(f"image: {path}")
    print(f"file format: {fmt}")
    print(f"virtual size: {human(size)} ({size} bytes)")
    print(f"disk size: {human(disk)}")
    if fmt == "qcow2":
        print("cluster_size: 65536")
        print("Format specific information:")
        for line in ("compat: 1.1", "compression type: zlib", "lazy refcounts: false",
                     "refcount bits: 16", "corrupt: false", "extended l2: false"):
            print(f"    {line}")
    print("Child node '/file':")
    print(f"    filename: {path}")
    print("    protocol type: file")
    print(f"    file length: {human(os.path.getsize(path))} ({os.path.getsize(path)} bytes)")
    print(f"    disk size: {human(disk)}")
    return 0


def version() -> int:
    """``qemu-img --version``, from the active state's QEMU version line."""
    from zerog_sim.qemu import copyright_line  # only --version needs the QEMU module

    active = state.load_or_exit(PROG)
    text = active.get("qemu", {}).get("version_text", "")
    match = re.match(r"QEMU emulator version (.+)$", text)
    print(f"qemu-img version {match.group(1) if match else '8.2.2'}")
    print(copyright_line(active))  # the same year as the profile's qemu-system-x86_64
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` without the program name (default: ``sys.argv[1:]``)."""
    argv = sys.argv[1:] if argv is None else argv
    if not argv:
        return fail("Not enough arguments\nTry 'qemu-img --help' for more information")
    command, rest = argv[0], argv[1:]
    if command in ("--version", "-V"):
        return version()
    if command == "create":
        return create(rest)
    if command == "info":
        return info(rest)
    if command in REAL_COMMANDS or command in ("-h", "--help"):
        return state.not_simulated(PROG, command)
    return fail(f"Command not found: {command}")


if __name__ == "__main__":
    sys.exit(main())
