#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: the state and progress of a guest image build running in the background."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: image_build_wait
short_description: Wait for a background private-ml-sdk image build and show its progress
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Follows a build of private-ml-sdk's guest images started in the background by the runner of the
    M(zerog.compute.private_ml_sdk) role (C(private-ml-sdk-build SDK_DIR LOG STATE_FILE)). The runner
    holds O(lock_file) for as long as any process of the build lives, appends the output of
    C(build.sh) to O(log) after a start marker line, and writes O(state_file) as C(key=value) lines
    (C(state=running), C(pid), C(started); then C(state=exited), C(rc), C(finished)). The role writes
    C(state=queued) just before it starts the runner.
  - With O(timeout) V(0) it looks once and returns the build's state. With a O(timeout), it waits
    until the build is no longer running, printing the last progress line of the log (by default
    bitbake's C(Running task N of M)) on the controller every O(poll_interval) seconds, so that an
    operator sees a build of hours advance. Each poll is one short connection to the host.
  - A build that was killed (a timeout, a reboot, C(kill)) leaves the state C(running) with no
    process holding the lock; that is reported as V(interrupted).
  - With a O(timeout), the task fails unless the build exited with rc V(0), and says why (exit
    status, interruption or timeout) with the last lines of the log. It never changes anything.
options:
  state_file:
    description: The runner's state file.
    type: path
    required: true
  lock_file:
    description: The lock the runner holds while the build runs. Defaults to O(state_file) with C(.lock) appended.
    type: path
  log:
    description: The build log the runner appends to.
    type: path
  progress_regex:
    description:
      - Python regular expression of a progress line. The last matching line after the last
        O(start_marker) is reported; without one, the last non-empty line.
    type: str
    default: 'Running (?:setscene )?task \d+ of \d+'
  start_marker:
    description: Beginning of the line the runner writes to O(log) when a build starts.
    type: str
    default: '==== zerog.compute: build.sh started'
  timeout:
    description:
      - Seconds to wait in total for the build to stop running. V(0) looks once and never fails.
      - Through the action plugin, each poll is a module call that waits at most O(poll_interval).
    type: int
    default: 0
  poll_interval:
    description: Seconds between two progress lines (and two connections to the host).
    type: int
    default: 60
  start_grace:
    description:
      - Seconds a C(queued) state may wait for the runner to take the lock before the build is
        reported V(interrupted).
    type: int
    default: 120
  tail_lines:
    description: How many of the last log lines to return in RV(tail).
    type: int
    default: 20
attributes:
  action:
    support: full
    description: The action plugin of the same name runs the polling loop and prints the progress.
  async:
    support: none
    description: The build itself runs asynchronously; this task only watches it.
extends_documentation_fragment:
  - zerog.compute.attributes.read_only
seealso:
  - module: zerog.compute.dstack_image_info
"""

EXAMPLES = r"""
- name: Start the build in the background
  ansible.builtin.command:
    argv: [/usr/local/lib/zerog-compute/private-ml-sdk-build, /opt/private-ml-sdk,
           /var/log/private-ml-sdk-build.log, /opt/private-ml-sdk/.zerog-build.state]
  async: 28800
  poll: 0
  become: true
  become_user: dstack-build
  changed_when: true

- name: Wait for it, showing bitbake's task counter every minute
  zerog.compute.image_build_wait:
    state_file: /opt/private-ml-sdk/.zerog-build.state
    log: /var/log/private-ml-sdk-build.log
    timeout: 28920
    poll_interval: 60
"""

RETURN = r"""
state:
  description:
    - V(absent) (no state file), V(starting) (queued, the runner has not taken the lock yet),
      V(running), V(exited) or V(interrupted).
  returned: always
  type: str
  sample: running
running:
  description: Whether the build is V(starting) or V(running).
  returned: always
  type: bool
rc:
  description: Exit status of C(build.sh) when RV(state) is V(exited), else V(null).
  returned: always
  type: int
pid:
  description: Process id of the runner, from the state file.
  returned: always
  type: int
started:
  description: When the build started (seconds since the epoch), from the state file.
  returned: always
  type: int
finished:
  description: When it exited (seconds since the epoch), from the state file.
  returned: always
  type: int
elapsed:
  description: Seconds the build has run (until it exited, or until now).
  returned: always
  type: int
progress:
  description: The last progress line of the current build, or its last non-empty line, or an empty string.
  returned: always
  type: str
  sample: "NOTE: Running task 1234 of 5678 (/meta-dstack/.../linux-yocto_6.9.bb:do_compile)"
tail:
  description: The last O(tail_lines) lines of the current build's log.
  returned: always
  type: list
  elements: str
polls:
  description: How many times the host was asked.
  returned: always
  type: int
"""

import errno
import fcntl
import os
import re
import time

from ansible.module_utils.basic import AnsibleModule

TAIL_BYTES = 1 << 18
MAX_LINE = 400


def read_state(path):
    """The key=value lines of the state file as a dict; None when there is no file."""
    try:
        with open(path, encoding="utf-8", errors="replace") as src:
            text = src.read()
    except FileNotFoundError:
        return None
    state = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            state[key.strip()] = value.strip()
    return state


def lock_held(path):
    """True when another process holds the runner's lock (a shared probe, released at once)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
            return True
        raise
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def as_int(value):
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def probe(state_file, lock_file, start_grace, now):
    """Where the build stands: (state, details dict)."""
    state = read_state(state_file)
    held = lock_held(lock_file)
    info = {"rc": None, "pid": None, "started": None, "finished": None}
    if state is None:
        return ("running" if held else "absent"), info
    info.update(pid=as_int(state.get("pid")), started=as_int(state.get("started")),
                finished=as_int(state.get("finished")))
    recorded = state.get("state", "")
    if recorded == "exited":
        info["rc"] = as_int(state.get("rc"))
        return "exited", info
    if held:
        return "running", info
    if recorded == "queued":
        age = now - os.path.getmtime(state_file)
        return ("starting" if age < start_grace else "interrupted"), info
    return "interrupted", info


def log_view(path, marker, regex, tail_lines):
    """(progress line, last lines) of the current build in the log."""
    if not path:
        return "", []
    try:
        with open(path, "rb") as src:
            src.seek(0, os.SEEK_END)
            size = src.tell()
            src.seek(max(0, size - TAIL_BYTES))
            chunk = src.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        return "", []
    lines = [line.rstrip("\r").split("\r")[-1].rstrip()[:MAX_LINE] for line in chunk.split("\n")]
    if size > TAIL_BYTES:
        lines = lines[1:]  # the first line of the chunk is probably cut
    starts = [i for i, line in enumerate(lines) if line.startswith(marker)]
    if starts:
        lines = lines[starts[-1]:]
    body = [line for line in lines if line.strip()]
    progress = ""
    for line in reversed(body):
        if regex.search(line):
            progress = line
            break
    if not progress:
        plain = [line for line in body if not line.startswith("==== zerog.compute:")]
        progress = plain[-1] if plain else ""
    return progress, body[-tail_lines:] if tail_lines > 0 else []


def main():
    module = AnsibleModule(
        argument_spec={
            "state_file": {"type": "path", "required": True},
            "lock_file": {"type": "path"},
            "log": {"type": "path"},
            "progress_regex": {"type": "str", "default": r"Running (?:setscene )?task \d+ of \d+"},
            "start_marker": {"type": "str", "default": "==== zerog.compute: build.sh started"},
            "timeout": {"type": "int", "default": 0},
            "poll_interval": {"type": "int", "default": 60},
            "start_grace": {"type": "int", "default": 120},
            "tail_lines": {"type": "int", "default": 20},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        regex = re.compile(p["progress_regex"])
    except re.error as exc:
        module.fail_json(msg=f"progress_regex is not a valid regular expression: {exc}.")
    lock_file = p["lock_file"] or p["state_file"] + ".lock"
    # One module call waits at most one poll interval; the action plugin repeats the calls.
    window = min(p["poll_interval"], p["timeout"]) if p["timeout"] > 0 else 0
    deadline = time.time() + max(window, 0)
    while True:
        now = time.time()
        state, info = probe(p["state_file"], lock_file, p["start_grace"], now)
        if state not in ("starting", "running") or now >= deadline:
            break
        time.sleep(min(1.0, max(deadline - now, 0.05)))
    progress, tail = log_view(p["log"], p["start_marker"], regex, p["tail_lines"])
    end = info["finished"] if state == "exited" and info["finished"] else int(time.time())
    elapsed = max(0, end - info["started"]) if info["started"] else 0
    module.exit_json(changed=False, state=state, running=state in ("starting", "running"), elapsed=elapsed,
                     progress=progress, tail=tail, polls=1, **info)


if __name__ == "__main__":
    main()
