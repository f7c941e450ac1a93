"""Record the argv of every process seen on this host, until stopped (a test aid, not shipped).

Started by a scenario's prepare as a transient systemd unit, before the playbook runs: every
``--interval`` seconds it reads /proc/<pid>/cmdline of every process and adds the ones it has
not seen yet, one per line (NUL bytes as spaces), to ``--out`` (created 0600, root only). The
verifier then looks for a secret in what ran during the playbook. Processes that start and end
between two samples are missed, so this proves absence only for processes that lived at least
one interval (QEMU, dstack run, docker, the broker, module runs): the exact argv of short runs is
checked by the module unit tests.
"""

from __future__ import annotations

import argparse
import os
import time


def sample(seen: set[bytes]) -> list[bytes]:
    """The cmdlines of this moment that are not in ``seen`` (which is updated)."""
    new = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as handle:
                argv = handle.read().rstrip(b"\0").replace(b"\0", b" ")
        except OSError:
            continue
        if argv and argv not in seen:
            seen.add(argv)
            new.append(argv)
    return new


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=0.1)
    args = parser.parse_args()
    seen: set[bytes] = set()
    fd = os.open(args.out, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    with os.fdopen(fd, "ab", buffering=0) as out:
        while True:
            new = sample(seen)
            if new:
                out.write(b"".join(argv + b"\n" for argv in new))
            time.sleep(args.interval)


if __name__ == "__main__":
    main()
