# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Action plugin of zerog.compute.controller_file: a text file written on the controller.

The reports of the playbooks are files on the controller, one per host. Written with
``ansible.builtin.file`` and ``ansible.builtin.copy`` delegated to localhost, each report cost
two or three module runs (a Python start each) per host and run, about a fifth of a one-host
preflight. This plugin writes the file in the worker process itself: no connection, no module.
"""

from __future__ import annotations

import os
import stat
import tempfile

from ansible.errors import AnsibleActionFail
from ansible.plugins.action import ActionBase

ARGUMENT_SPEC = {
    "path": {"type": "path", "required": True},
    "content": {"type": "str", "required": True},
    "mode": {"type": "str", "default": "0644"},
    "directory_mode": {"type": "str", "default": "0755"},
}


def octal_mode(value, name):
    """'0644' or '644' -> 0o644; anything else is refused, naming the option."""
    text = str(value).strip()
    if not text or len(text) > 4 or any(c not in "01234567" for c in text):
        raise AnsibleActionFail(
            f"{name} must be an octal file mode such as '0644' (got {value!r}); quote it in YAML so that it "
            "stays a string.")
    return int(text, 8)


def missing_parents(path):
    """The directories above ``path`` that do not exist yet, outermost first."""
    out = []
    parent = os.path.dirname(path)
    while parent and not os.path.exists(parent):
        out.append(parent)
        up = os.path.dirname(parent)
        if up == parent:
            break
        parent = up
    return list(reversed(out))


def read_current(path):
    """(text or None, mode or None) of the file at ``path``; refuses what is not a regular file."""
    try:
        info = os.stat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    if not stat.S_ISREG(info.st_mode):
        raise AnsibleActionFail(f"{path} on the controller exists and is not a regular file: remove it or "
                                "choose another path.")
    with open(path, encoding="utf-8", errors="surrogateescape") as handle:
        return handle.read(), stat.S_IMODE(info.st_mode)


def write_atomically(path, content, mode, directory_mode):
    """Create the missing directories, then replace the file by a complete new one."""
    for directory in missing_parents(path):
        try:
            os.mkdir(directory)
        except FileExistsError:
            # Another fork writing its own host's report made it a moment ago.
            continue
        os.chmod(directory, directory_mode)
    directory = os.path.dirname(path) or "."
    handle, temporary = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.")
    try:
        with os.fdopen(handle, "w", encoding="utf-8", errors="surrogateescape") as out:
            out.write(content)
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        if os.path.exists(temporary):
            os.unlink(temporary)
        raise


class ActionModule(ActionBase):
    """Write ``content`` to ``path`` on the controller when it differs (content or mode)."""

    TRANSFERS_FILES = False
    _requires_connection = False

    def run(self, tmp=None, task_vars=None):
        result = super().run(tmp, task_vars)
        del tmp
        _validation, args = self.validate_argument_spec(argument_spec=ARGUMENT_SPEC)
        path = os.path.abspath(args["path"])
        content = args["content"]
        mode = octal_mode(args["mode"], "mode")
        directory_mode = octal_mode(args["directory_mode"], "directory_mode")

        before, before_mode = read_current(path)
        changed = before != content or before_mode != mode
        result.update(changed=changed, path=path, mode=f"{mode:04o}")
        if changed and self._task.diff:
            result["diff"] = {
                "before": before or "", "after": content,
                "before_header": f"{path} (mode {before_mode:04o})" if before_mode is not None else f"{path} (absent)",
                "after_header": f"{path} (mode {mode:04o})",
            }
        if not changed or self._task.check_mode:
            return result
        try:
            write_atomically(path, content, mode, directory_mode)
        except OSError as exc:
            raise AnsibleActionFail(
                f"Cannot write {path} on the controller: {exc.strerror or exc}. The file is written by the user "
                "that runs ansible-playbook (become does not apply on the controller): give that user write "
                "access to the directory, or choose another path.") from exc
        return result
