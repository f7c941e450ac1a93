# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Record which tasks changed on which host, one JSON file per playbook run.

Test harness only (Molecule scenarios enable it through ANSIBLE_CALLBACK_PLUGINS). With
ZEROG_CHANGES_DIR set, every run of a playbook whose file name is in ZEROG_CHANGES_PLAYBOOKS
(comma-separated, default converge.yml) writes, leaving out what is written on the controller
(tasks delegated to it, and zerog.compute.controller_file), ``<dir>/<NNN>-<check|run>.json``:
``{"playbook": ..., "check_mode": bool, "changed": {"<host>": ["<task name>", ...]},
"ran": {"<host>": {"<action>": n}}, "commands": {"<host>": {"<argv joined by spaces>": n}}}``, so a
verifier can compare what check mode predicted with what the real run then did, and count how
often a module ran (``ran``: tasks that were not skipped, whatever their outcome; a loop counts
once) and how often a command task ran one argv (``commands``: the ``cmd`` list of the
ansible.builtin.command results, retries of one task counted once).
"""

from __future__ import annotations

import json
import os

from ansible import context
from ansible.plugins.callback import CallbackBase

# Actions that write on the controller only, whatever host the task is for.
CONTROLLER_ACTIONS = {"zerog.compute.controller_file"}

DOCUMENTATION = """
name: zerog_changes
type: aggregate
short_description: Record the changed tasks of each run (Molecule harness)
description:
  - Writes the names of the tasks that reported a change, per host, to a JSON file per run.
requirements:
  - ZEROG_CHANGES_DIR set in the environment
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "zerog_changes"
    CALLBACK_NEEDS_ENABLED = False

    def __init__(self):
        super().__init__()
        self._dir = os.environ.get("ZEROG_CHANGES_DIR", "")
        wanted = os.environ.get("ZEROG_CHANGES_PLAYBOOKS", "converge.yml")
        self._wanted = {p.strip() for p in wanted.split(",") if p.strip()}
        self._playbook = None
        self._changed: dict[str, list[str]] = {}
        self._ran: dict[str, dict[str, int]] = {}
        self._commands: dict[str, dict[str, int]] = {}

    def v2_playbook_on_start(self, playbook):
        name = os.path.basename(playbook._file_name)
        self._playbook = name if (self._dir and name in self._wanted) else None

    def _record(self, result):
        if self._playbook is None or not result._result.get("changed", False):
            return
        # Files the playbook writes on the controller (reports) are not changes of the host.
        if (str(result._task.delegate_to or "") in ("localhost", "127.0.0.1")
                or result._task.action in CONTROLLER_ACTIONS):
            return
        host = result._host.get_name()
        name = result._task.get_name()
        tasks = self._changed.setdefault(host, [])
        if name not in tasks:
            tasks.append(name)

    def _count(self, result):
        if self._playbook is None:
            return
        actions = self._ran.setdefault(result._host.get_name(), {})
        action = result._task.action
        actions[action] = actions.get(action, 0) + 1
        argv = result._result.get("cmd") if action in ("ansible.builtin.command", "command") else None
        if isinstance(argv, list):
            commands = self._commands.setdefault(result._host.get_name(), {})
            line = " ".join(str(a) for a in argv)
            commands[line] = commands.get(line, 0) + 1

    def v2_runner_on_ok(self, result):
        self._count(result)
        self._record(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count(result)

    def v2_runner_item_on_ok(self, result):
        self._record(result)

    def v2_playbook_on_stats(self, stats):
        if self._playbook is None:
            return
        os.makedirs(self._dir, exist_ok=True)
        check = bool(context.CLIARGS.get("check", False))
        seq = len([f for f in os.listdir(self._dir) if f.endswith(".json")])
        path = os.path.join(self._dir, f"{seq:03d}-{'check' if check else 'run'}.json")
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"playbook": self._playbook, "check_mode": check, "changed": self._changed, "ran": self._ran,
                       "commands": self._commands},
                      fh, indent=2, sort_keys=True)
