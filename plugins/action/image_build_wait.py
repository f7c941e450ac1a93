# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of zerog.compute.image_build_wait: the polling loop, run on the controller.

Ansible cannot print anything while a task retries (``until``), so a build of hours would be
silent. This action calls the module once per poll interval (each call waits on the host for at
most one interval, returning early when the build stops) and prints the build's last progress
line after every call, through Display, which reaches the operator's terminal while the task is
still running.
"""

from __future__ import annotations

import time

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase
from ansible.utils.display import Display

display = Display()

MODULE = "zerog.compute.image_build_wait"


def duration(seconds):
    """3725 -> '1h02m05s'."""
    seconds = max(0, int(seconds or 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m{secs:02d}s"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


def failure(result, timeout, log):
    """The failure message for a wait that did not end with rc 0, or None."""
    where = f" Log: {log}." if log else ""
    last = "\n".join(result.get("tail") or [])
    last = f"\nLast lines of the log:\n{last}" if last else ""
    state = result.get("state")
    if state == "exited" and result.get("rc") == 0:
        return None
    if state == "exited":
        return (f"The image build failed: build.sh exited with rc {result.get('rc')} after "
                f"{duration(result.get('elapsed'))}.{where} Fix the cause shown in the log and run again; "
                f"finished bitbake tasks are not run again.{last}")
    if state in ("running", "starting"):
        return (f"The image build is still running after {duration(timeout)} of waiting; it goes on in the "
                f"background.{where} Run again later: the next run waits for it instead of starting another.{last}")
    if state == "interrupted":
        return (f"The image build stopped without finishing after {duration(result.get('elapsed'))} (killed, "
                f"timed out or the host restarted).{where} Run again: the build resumes from its last "
                f"finished bitbake task.{last}")
    return f"There is no image build to wait for (state {state}).{where}"


class ActionModule(ActionBase):
    """Poll the module until the build stops, printing progress at every poll."""

    TRANSFERS_FILES = False
    _requires_connection = True

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        try:
            timeout = max(0, int(self._task.args.get("timeout", 0)))
            interval = max(1, int(self._task.args.get("poll_interval", 60)))
        except (TypeError, ValueError) as exc:
            raise AnsibleActionFail(f"timeout and poll_interval must be whole numbers of seconds ({exc}).") from exc
        module_args = dict(self._task.args)
        host = self._task.delegate_to or (task_vars or {}).get("inventory_hostname", "")
        deadline = time.monotonic() + timeout
        polls = 0
        while True:
            remaining = int(deadline - time.monotonic()) if timeout else 0
            module_args.update(timeout=max(remaining, 1) if timeout else 0, poll_interval=interval)
            answer = self._execute_module(module_name=MODULE, module_args=module_args, task_vars=task_vars)
            polls += 1
            if answer.get("failed") or answer.get("unreachable"):
                result.update(answer)
                return result
            running = answer.get("running")
            if running and timeout:
                line = answer.get("progress") or "(no output yet)"
                display.display(f"[{host}] image build {answer.get('state')}, {duration(answer.get('elapsed'))}: {line}")
            if not running or not timeout or time.monotonic() >= deadline:
                break
        if timeout and answer.get("state") == "exited":
            line = answer.get("progress") or "(no output)"
            display.display(f"[{host}] image build exited with rc {answer.get('rc')} after "
                            f"{duration(answer.get('elapsed'))}: {line}")
        result.update(answer)
        # Explicit: with "rc" in a result and no "failed", Ansible takes a non-zero rc (and null) for a failure.
        result.update(changed=False, failed=False, polls=polls)
        if timeout:
            msg = failure(answer, timeout, self._task.args.get("log"))
            if msg:
                result.update(failed=True, msg=msg)
        return result
