# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The TCP sockets listening on a port, read from /proc/net/tcp and /proc/net/tcp6.

Private to the collection (the leading underscore): no stability promise to other collections.
What ``ss --listening --tcp --numeric 'sport = :PORT'`` lists, without running ss (iproute2 need
not be on the host) and without a task of its own: key_provider_probe returns it with its probe.
"""

from __future__ import annotations

import ipaddress
import os
import sys

#: The state column of a listening socket (TCP_LISTEN in include/net/tcp_states.h).
TCP_LISTEN = "0A"
#: The tables of the kernel, and the address family of each.
TABLES = (("net/tcp", 4), ("net/tcp6", 6))


def _address(hex_address, family):
    """An address of the table as text: 32-bit words in the host's byte order, hexadecimal."""
    raw = bytes.fromhex(hex_address)
    if len(raw) != (4 if family == 4 else 16):
        raise ValueError(f"an IPv{family} address of {len(raw)} bytes")
    if sys.byteorder == "little":
        raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(raw)


def _text(address):
    """An address as ss prints it: an IPv4-mapped one as ::ffff:a.b.c.d on every Python version."""
    mapped = getattr(address, "ipv4_mapped", None)
    return f"::ffff:{mapped}" if mapped is not None else str(address)


def _loopback(address):
    """127.0.0.0/8, ::1, or an IPv4-mapped loopback address (::ffff:127.x.y.z)."""
    mapped = getattr(address, "ipv4_mapped", None)
    return bool(address.is_loopback or (mapped is not None and mapped.is_loopback))


def parse(text, family, port):
    """The listening sockets on ``port`` in one table's text: a list of dicts (address, port, family, loopback)."""
    found = []
    for number, line in enumerate(text.splitlines()):
        fields = line.split()
        if number == 0 or len(fields) < 4:
            continue  # the header, or a blank line
        local, state = fields[1], fields[3]
        if state != TCP_LISTEN or ":" not in local:
            continue
        hex_address, hex_port = local.rsplit(":", 1)
        if int(hex_port, 16) != port:
            continue
        address = _address(hex_address, family)
        shown = f"[{_text(address)}]" if family == 6 else str(address)
        found.append({"address": f"{shown}:{port}", "port": port, "family": f"ipv{family}",
                      "loopback": _loopback(address)})
    return found


def listeners(port, root="/proc"):
    """The sockets listening on ``port``, as (list, error). error is None, or why the tables could not be read.

    A missing tcp6 table (IPv6 disabled) is not an error; a missing tcp table is (not Linux, or no /proc).
    """
    found = []
    for table, family in TABLES:
        path = os.path.join(root, table)
        try:
            with open(path, encoding="ascii") as handle:
                text = handle.read()
        except FileNotFoundError:
            if family == 6:
                continue
            return None, f"{path} does not exist: the listening sockets cannot be read (is /proc mounted?)."
        except (OSError, UnicodeDecodeError) as exc:
            return None, f"{path} cannot be read: {exc}."
        try:
            found.extend(parse(text, family, port))
        except ValueError as exc:
            return None, f"{path} is not in the kernel's format: {exc}."
    return found, None
