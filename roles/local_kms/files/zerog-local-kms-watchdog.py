# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Watchdog of the 0.3 local key provider (installed by zerog.compute.local_kms).

dstack's 0.3 ``key-provider-build/run.sh`` is ``docker compose up --build`` in the foreground,
and its compose file has no restart policy. When the provider container dies (an HTTP request
crashes it), compose keeps running, because the ``pccs-proxy`` container never stops. The
provider's port then refuses connections while the systemd unit still looks healthy.

Run by a timer. It restarts the unit when two things are true: the provider's port refuses
connections, and the port was seen open since the unit last started. That second condition
keeps the watchdog away from a first ``--build``, which can take many minutes before the port
opens. The "seen open" mark is kept per unit start (systemd's InvocationID) in the state
directory.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys


def unit_properties(unit: str) -> dict[str, str]:
    """ActiveState and InvocationID of ``unit``."""
    result = subprocess.run(
        ["systemctl", "show", "--property=ActiveState", "--property=InvocationID", unit],
        capture_output=True,
        text=True,
        check=False,
    )
    properties = {}
    for line in result.stdout.splitlines():
        key, _sep, value = line.partition("=")
        properties[key] = value
    return properties


def port_state(host: str, port: int, timeout: float) -> str:
    """``open``, ``refused`` or ``unknown`` (any other error: no conclusion)."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return "open"
    except ConnectionRefusedError:
        return "refused"
    except OSError:
        return "unknown"


def load_mark(path: str) -> dict[str, object]:
    """The saved mark, or an empty one."""
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_mark(path: str, mark: dict[str, object]) -> None:
    """Write the mark atomically."""
    tmp = f"{path}.tmp"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump(mark, handle)
    os.replace(tmp, path)


def main(argv: list[str] | None = None) -> int:
    """Check once; restart the unit if its provider died after having been up."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--unit", required=True)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--timeout", type=float, default=3.0)
    parser.add_argument("--state-dir", required=True)
    args = parser.parse_args(argv)

    os.makedirs(args.state_dir, mode=0o755, exist_ok=True)
    mark_path = os.path.join(args.state_dir, "watchdog.json")
    properties = unit_properties(args.unit)
    invocation = properties.get("InvocationID", "")
    if properties.get("ActiveState") != "active" or not invocation:
        return 0  # stopped on purpose, or systemd is already restarting it
    mark = load_mark(mark_path)
    if mark.get("invocation") != invocation:
        mark = {"invocation": invocation, "seen_open": False}
    state = port_state(args.host, args.port, args.timeout)
    if state == "open":
        mark["seen_open"] = True
    elif state == "refused" and mark["seen_open"]:
        print(
            f"{args.host}:{args.port} refuses connections although it was open since {args.unit} started: "
            f"the provider container died and run.sh does not notice. Restarting {args.unit}.",
            flush=True,
        )
        subprocess.run(["systemctl", "restart", "--no-block", args.unit], check=False)
        mark = {}
    save_mark(mark_path, mark)
    return 0


if __name__ == "__main__":
    sys.exit(main())
