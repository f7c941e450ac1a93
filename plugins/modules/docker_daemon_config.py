#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Merge keys into Docker's daemon.json, validated by dockerd before it replaces the file."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: docker_daemon_config
short_description: Merge keys into Docker's daemon.json without losing the others
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Reads the existing daemon configuration file (by default C(/etc/docker/daemon.json)), merges
    O(config) into it and writes the result only when it differs from what is there.
  - The merge follows JSON Merge Patch (RFC 7386) semantics. Objects are merged key by key,
    recursively, so keys that the file has and O(config) does not name (an C(nvidia) runtime
    written by C(nvidia-ctk), registry mirrors, ...) survive. Any other value, a list included,
    replaces the value in the file. A V(null) value removes the key.
  - Before the file is replaced, the candidate is checked with C(dockerd --validate --config-file)
    (Docker Engine 23.0 and later), together with the command-line flags the service passes to
    C(dockerd) (O(validate_flags)), so that a key that conflicts with a flag is caught too. An
    invalid candidate fails the task and leaves the file untouched.
  - The file is replaced atomically; an existing file keeps its owner, group and mode, a new one
    is created with mode C(0644).
  - A missing file and an empty file both count as an empty object; when the merged result is an
    empty object and there is no file, none is created.
options:
  path:
    description:
      - The daemon configuration file.
    type: path
    default: /etc/docker/daemon.json
  config:
    description:
      - The keys to merge into the file, as a JSON object (a YAML mapping).
      - Nested objects are merged recursively; lists and scalars replace the value in the file;
        V(null) removes the key.
    type: dict
    default: {}
  validate:
    description:
      - How the merged candidate is checked before it replaces the file.
      - V(auto) runs C(dockerd --validate) when C(dockerd) is installed and supports it
        (Docker Engine 23.0 and later). When it is missing or older (Debian 12 ships 20.10), only
        the JSON is checked and a warning says so (not in check mode when C(dockerd) is missing,
        as on a fresh host Docker is not installed yet).
      - V(always) fails when C(dockerd --validate) cannot be run.
      - V(never) checks nothing beyond the JSON itself.
      - Validation runs only when the file would change.
    type: str
    choices: [auto, always, never]
    default: auto
  validate_flags:
    description:
      - The command-line flags the docker service passes to C(dockerd), added to the validation
        command so that a key that is also given as a flag (for example C(hosts) against
        C(-H fd://)) is refused before the daemon would refuse to start.
      - Both Docker's and the distributions' C(docker.service) pass
        V(["-H", "fd://", "--containerd=/run/containerd/containerd.sock"]).
    type: list
    elements: str
    default: []
  dockerd_path:
    description:
      - Absolute path of C(dockerd). By default it is looked up on E(PATH) and in the sbin
        directories.
    type: path
  backup:
    description:
      - Keep a time-stamped copy of the file before it is replaced.
    type: bool
    default: false
  timeout:
    description:
      - Seconds that C(dockerd --validate) may take.
    type: int
    default: 60
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - In check mode the candidate is still validated with C(dockerd) when it can be, from a
        temporary file, so that check mode reports an invalid configuration.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
    details:
      - The merged object is compared with the file's object (not its text), so a file written
        by hand with another layout is left alone when it already holds the keys.
notes:
  - Restarting C(dockerd) after a change is left to the caller (a handler).
  - Merging into a file that is not a JSON object fails, and nothing is written.
seealso:
  - name: Daemon configuration file
    description: The keys C(daemon.json) accepts.
    link: https://docs.docker.com/reference/cli/dockerd/#daemon-configuration-file
"""

EXAMPLES = r"""
- name: Rotate container logs, keep whatever else daemon.json holds
  zerog.compute.docker_daemon_config:
    config:
      log-driver: json-file
      log-opts:
        max-size: 50m
        max-file: "3"
    validate_flags: ["-H", "fd://", "--containerd=/run/containerd/containerd.sock"]
  notify: Restart docker

- name: Drop a key that an earlier run added
  zerog.compute.docker_daemon_config:
    config:
      live-restore: null
"""

RETURN = r"""
path:
  description: The daemon configuration file.
  returned: always
  type: str
  sample: /etc/docker/daemon.json
config:
  description: The configuration after the merge (what the file holds, or would hold in check mode).
  returned: always
  type: dict
  sample: {"log-driver": "json-file", "runtimes": {"nvidia": {"path": "nvidia-container-runtime", "args": []}}}
validation:
  description:
    - How the candidate was checked.
    - V(dockerd) means C(dockerd --validate) accepted it, V(json) that only the JSON could be
      checked, V(none) that nothing was validated (nothing changed, or O(validate=never)).
  returned: always
  type: str
  sample: dockerd
backup_file:
  description: The copy of the file made before it was replaced.
  returned: when O(backup=true) and the file was replaced
  type: str
  sample: /etc/docker/daemon.json.12345.2026-01-01@10:00:00~
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.zerog.compute.plugins.module_utils._command import (
    CommandFailed,
    Tool,
    ToolMissing,
    explain,
    fail_command,
)

UNKNOWN_VALIDATE_FLAG = "unknown flag: --validate"
CANDIDATE_NAME = "daemon.json.candidate"


class ConfigError(Exception):
    """The existing file cannot be merged into."""


def merge_patch(target, patch):
    """Apply a JSON Merge Patch (RFC 7386) and return the result; the inputs are not changed."""
    if not isinstance(patch, dict):
        return patch
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            result.pop(key, None)
        elif isinstance(value, dict):
            result[key] = merge_patch(result.get(key), value)
        else:
            result[key] = value
    return result


def canonical(data):
    """A text form that tells apart values Python compares equal (True and 1, 1 and 1.0)."""
    return json.dumps(data, sort_keys=True, separators=(",", ":"))


def render(data):
    """The text written to the file: two-space indentation, keys in their order, final newline."""
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def read_current(path):
    """Return ``(text, data)`` of the file; a missing or blank file is ``("", {})``."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        return "", {}
    except OSError as exc:
        raise ConfigError(explain(f"Reading {path}", f"{exc.strerror}.", "check the path and its permissions.")) from exc
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigError(explain(f"Reading {path}", "it is not UTF-8 text.", "repair or remove the file.")) from exc
    if not text.strip():
        return text, {}
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise ConfigError(explain(
            f"Merging into {path}",
            f"it is not valid JSON ({exc}).",
            "repair the file by hand (dockerd refuses to start with it too); nothing was written.",
        )) from exc
    if not isinstance(data, dict):
        raise ConfigError(explain(
            f"Merging into {path}",
            f"it holds a JSON {type(data).__name__}, not an object.",
            "repair the file by hand; nothing was written.",
        ))
    return text, data


def validate_candidate(module, candidate, path, mode, flags):
    """Check the candidate file; return the validation kind (``dockerd`` or ``json``)."""
    dockerd = Tool(module, "dockerd", path=module.params["dockerd_path"], option="dockerd_path",
                   timeout=module.params["timeout"])
    if not dockerd.available():
        if mode == "always":
            raise ToolMissing(explain(
                f"Validating the merged {path}",
                "dockerd was not found on PATH or in the sbin directories.",
                "install Docker Engine first, set dockerd_path, or set validate=auto.",
            ))
        if not module.check_mode:
            module.warn(f"dockerd was not found, so the new {path} was checked as JSON only.")
        return "json"
    what = f"Validating the merged {path} with dockerd --validate"
    args = ["--validate", "--config-file", candidate, *flags]
    rc, out, err = dockerd.run(args, what=what, ok_rcs=None)
    if rc == 0:
        return "dockerd"
    if UNKNOWN_VALIDATE_FLAG in err:
        if mode == "always":
            raise CommandFailed(explain(
                what,
                f"{dockerd.path} has no --validate option (it came with Docker Engine 23.0).",
                "install Docker Engine 23.0 or later, or set validate=auto.",
            ), dockerd.argv(args), rc, out, err)
        module.warn(
            f"{dockerd.path} has no --validate option (Docker Engine before 23.0), so the new {path} "
            "was checked as JSON only; the daemon's restart will show whether it accepts it."
        )
        return "json"
    lines = (err or out).strip().splitlines()
    reason = lines[-1].replace(candidate, f"<candidate for {path}>") if lines else f"rc {rc}, no output"
    raise CommandFailed(explain(
        what,
        f"dockerd refused it: {reason}",
        f"correct the keys given to merge (or the keys already in {path}); the file was not changed.",
    ), dockerd.argv(args), rc, out, err)


def write_file(module, path, text, existed):
    """Atomically replace ``path`` with ``text``; return the backup file name or None."""
    parent = os.path.dirname(path) or "."
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755)
    staged = os.path.join(module.tmpdir, CANDIDATE_NAME + ".write")
    with open(staged, "w", encoding="utf-8") as fh:
        fh.write(text)
    backup_file = None
    if existed and module.params["backup"]:
        backup_file = module.backup_local(path)
    module.atomic_move(staged, path)
    if not existed:
        os.chmod(path, 0o644)
    return backup_file


def run(module):
    """Do the work; returns the result dictionary."""
    path = module.params["path"]
    mode = module.params["validate"]
    before_text, current = read_current(path)
    existed = os.path.exists(path)
    merged = merge_patch(current, module.params["config"])
    result = {"changed": False, "path": path, "config": merged, "validation": "none"}

    if canonical(merged) == canonical(current) or (not existed and not merged):
        return result

    after_text = render(merged)
    result["changed"] = True
    if module._diff:
        result["diff"] = {"before": before_text, "after": after_text,
                          "before_header": path, "after_header": path}

    if mode != "never":
        candidate = os.path.join(module.tmpdir, CANDIDATE_NAME)
        with open(candidate, "w", encoding="utf-8") as fh:
            fh.write(after_text)
        result["validation"] = validate_candidate(module, candidate, path, mode, module.params["validate_flags"])

    if not module.check_mode:
        backup_file = write_file(module, path, after_text, existed)
        if backup_file:
            result["backup_file"] = backup_file
    return result


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "default": "/etc/docker/daemon.json"},
            "config": {"type": "dict", "default": {}},
            "validate": {"type": "str", "choices": ["auto", "always", "never"], "default": "auto"},
            "validate_flags": {"type": "list", "elements": "str", "default": []},
            "dockerd_path": {"type": "path"},
            "backup": {"type": "bool", "default": False},
            "timeout": {"type": "int", "default": 60},
        },
        supports_check_mode=True,
    )
    try:
        result = run(module)
    except ConfigError as exc:
        module.fail_json(msg=str(exc), path=module.params["path"])
    except (CommandFailed, ToolMissing) as exc:
        fail_command(module, exc, path=module.params["path"])
    module.exit_json(**result)


if __name__ == "__main__":
    main()
