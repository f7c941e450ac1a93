#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: read a git checkout's owner, HEAD, one revision, local changes and submodules (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: git_checkout_info
short_description: Read the state of a git checkout in one call
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Says whether a directory holds a git checkout, who owns it, which commit C(HEAD) and one other
    revision (for example a pinned tag) are, whether tracked files have local changes and what state
    each submodule is in, recursively. This is what a role needs to decide, without the network,
    whether a checkout is already at its pinned release.
  - Git is asked only when the checkout belongs to the user the module runs as. Git refuses to
    read a repository of another user ("detected dubious ownership"), so for such a checkout only
    RV(exists) and RV(owner) are returned and RV(read) is false; run the module as the owner
    (C(become_user)) to read it.
  - C(git status) runs with C(GIT_OPTIONAL_LOCKS=0), so that reading does not rewrite the index, and
    every git command with C(GIT_CEILING_DIRECTORIES) set to the parent of O(path), so that a damaged
    C(.git) fails instead of letting git find a repository above the checkout.
  - Never changes anything.
options:
  path:
    description:
      - The top directory of the work tree (the one that holds C(.git)).
    type: path
    required: true
  revision:
    description:
      - A revision to resolve besides C(HEAD), for example V(refs/tags/v0.5.5^{commit}) or a full
        commit SHA followed by V(^{commit}). RV(revision) is empty when the checkout does not have it.
    type: str
  submodules:
    description:
      - Read C(git submodule status --recursive).
    type: bool
    default: true
  git_path:
    description:
      - Absolute path of C(git); by default it is looked up on C(PATH).
    type: path
  timeout:
    description:
      - Seconds each git command may take (C(git status) reads every tracked file of a large tree).
    type: int
    default: 300
extends_documentation_fragment:
  - zerog.compute.attributes.read_only
seealso:
  - module: ansible.builtin.git
    description: Clones and updates the checkout; this module only reads it.
"""

EXAMPLES = r"""
- name: Read the private-ml-sdk checkout as its owner
  zerog.compute.git_checkout_info:
    path: /opt/private-ml-sdk
    revision: refs/tags/v0.5.5^{commit}
  become: true
  become_user: builder
  register: checkout

- name: Check out the pinned release only when the checkout is not already at it
  ansible.builtin.git:
    repo: https://github.com/nearai/private-ml-sdk
    dest: /opt/private-ml-sdk
    version: v0.5.5
    recursive: true
  become: true
  become_user: builder
  when: not (checkout.head != '' and checkout.head == checkout.revision
             and checkout.changes | length == 0 and checkout.submodules_ok)
"""

RETURN = r"""
path:
  description: Absolute path that was read.
  returned: always
  type: str
  sample: /opt/private-ml-sdk
exists:
  description: Whether O(path) holds C(.git) (a directory, or the file of a linked work tree).
  returned: always
  type: bool
owner:
  description: The user that owns C(.git) (a number when the uid has no name); empty when it does not exist.
  returned: always
  type: str
  sample: builder
read:
  description: Whether git was asked (the checkout exists and belongs to the user the module runs as).
  returned: always
  type: bool
head:
  description: The commit of C(HEAD); empty when git was not asked or the repository has no commit yet.
  returned: always
  type: str
  sample: 25c25025c556ab2f797eeda3bab433f38a8ffb7a
revision:
  description: The commit O(revision) names in the checkout; empty when unset, not asked, or not in the checkout.
  returned: always
  type: str
  sample: 25c25025c556ab2f797eeda3bab433f38a8ffb7a
changes:
  description: The lines of C(git status --porcelain --untracked-files=no) (tracked files with local changes).
  returned: always
  type: list
  elements: str
  sample: [" M build.sh"]
submodules:
  description:
    - One entry per line of C(git submodule status --recursive). C(state) is the line's first character
      as git prints it, as a word - V(current) (space), V(uninitialized) (C(-)), V(other-commit) (C(+))
      or V(conflict) (C(U)).
  returned: always
  type: list
  elements: dict
  sample: [{path: meta-dstack-nvidia/dstack, commit: 4b1e8a8b0c6f4f3e9d2a7c5b1e0f9a8d7c6b5a41, state: current}]
submodules_ok:
  description:
    - Git was asked (with O(submodules)) and every submodule is initialized at the commit the superproject
      records; true when there is none.
  returned: always
  type: bool
"""

import os
import pwd

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.zerog.compute.plugins.module_utils._command import CommandFailed, Tool, ToolMissing, fail_command

SUBMODULE_STATES = {" ": "current", "-": "uninitialized", "+": "other-commit", "U": "conflict"}
READ_ENV = {"GIT_OPTIONAL_LOCKS": "0", "GIT_TERMINAL_PROMPT": "0"}


def parse_submodule_status(text):
    """``git submodule status`` lines as [{path, commit, state}]; raises ValueError on a line it does not know."""
    out = []
    for line in text.splitlines():
        if not line.strip():
            continue
        state = SUBMODULE_STATES.get(line[0])
        fields = line[1:].split()
        if state is None or len(fields) < 2:
            raise ValueError(f"unexpected line {line!r}")
        out.append({"path": fields[1], "commit": fields[0], "state": state})
    return out


def owner_name(uid):
    """The name of ``uid``, or the number when it has none."""
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def read_checkout(git, path, revision, submodules):
    """The result keys for the checkout at ``path`` (git run through ``git``, a Tool)."""
    result = {"exists": False, "owner": "", "read": False, "head": "", "revision": "", "changes": [],
              "submodules": [], "submodules_ok": False}
    try:
        info = os.stat(os.path.join(path, ".git"))
    except FileNotFoundError:
        return result
    result.update(exists=True, owner=owner_name(info.st_uid))
    if info.st_uid != os.geteuid():
        return result
    result["read"] = True
    # A damaged .git must not make git take a repository above the checkout for it.
    env = dict(READ_ENV, GIT_CEILING_DIRECTORIES=os.path.dirname(path))
    where = f"Reading the git checkout {path}"
    fix = f"see `git -C {path} status` as {result['owner']}; a damaged checkout can be removed to be cloned again."
    _rc, out, _err = git.run(["-C", path, "rev-parse", "--verify", "--quiet", "HEAD"], where, fix, ok_rcs=(0, 1), env=env)
    result["head"] = out.strip()
    if revision:
        _rc, out, _err = git.run(["-C", path, "rev-parse", "--verify", "--quiet", revision], where, fix, ok_rcs=(0, 1),
                                 env=env)
        result["revision"] = out.strip()
    _rc, out, _err = git.run(["-C", path, "status", "--porcelain", "--untracked-files=no"], where, fix, env=env)
    result["changes"] = [line for line in out.splitlines() if line.strip()]
    if submodules:
        cmd_args = ["-C", path, "submodule", "status", "--recursive"]
        _rc, out, err = git.run(cmd_args, where, fix, env=env)
        try:
            result["submodules"] = parse_submodule_status(out)
        except ValueError as exc:
            raise CommandFailed(f"{where}: git submodule status printed an {exc}.", git.argv(cmd_args), 0, out, err) from exc
    result["submodules_ok"] = bool(submodules) and all(s["state"] == "current" for s in result["submodules"])
    return result


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path", "required": True},
            "revision": {"type": "str"},
            "submodules": {"type": "bool", "default": True},
            "git_path": {"type": "path"},
            "timeout": {"type": "int", "default": 300},
        },
        supports_check_mode=True,
    )
    path = os.path.abspath(module.params["path"])
    git = Tool(module, "git", path=module.params["git_path"], option="git_path", timeout=module.params["timeout"])
    try:
        result = read_checkout(git, path, module.params["revision"], module.params["submodules"])
    except (CommandFailed, ToolMissing) as exc:
        fail_command(module, exc, path=path)
    module.exit_json(changed=False, path=path, **result)


if __name__ == "__main__":
    main()
