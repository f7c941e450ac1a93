#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: read several small files of the host in one call (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: file_contents_info
short_description: Read several small files of the host in one call
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Returns the content of each file of O(paths), base64-encoded as M(ansible.builtin.slurp) does, in one
    round trip instead of one task per file. A file that is missing, is not a regular file, cannot be read
    or is larger than O(max_size) does not fail the module; its entry says why it was not read, so that the
    caller decides what a missing file means.
  - Never changes anything.
options:
  paths:
    description:
      - The files to read. Symbolic links are followed. A path given twice is read once.
    type: list
    elements: path
    required: true
  max_size:
    description:
      - Files larger than this many bytes are not read (C(read) false in RV(files)), so that a wrong path cannot
        fill the controller's memory.
    type: int
    default: 1048576
notes:
  - The result holds the files' contents. When one of them holds a secret (a private key in a
    configuration file), set C(no_log) on the task, as for M(ansible.builtin.slurp).
extends_documentation_fragment:
  - zerog.compute.attributes.read_only
seealso:
  - module: ansible.builtin.slurp
    description: Reads one file per task, and fails when it cannot.
"""

EXAMPLES = r"""
- name: Read the compose file and the configuration of the broker package
  zerog.compute.file_contents_info:
    paths:
      - /opt/zerog/broker/v0.1.0/docker-compose.yml
      - /opt/zerog/broker/v0.1.0/config.local.yaml
  register: package_files
  no_log: true  # config.local.yaml holds private keys

- name: Fail when the compose file is not there
  ansible.builtin.fail:
    msg: "docker-compose.yml: {{ package_files.files['/opt/zerog/broker/v0.1.0/docker-compose.yml'].msg }}"
  when: not package_files.files['/opt/zerog/broker/v0.1.0/docker-compose.yml'].read
"""

RETURN = r"""
files:
  description:
    - Each path of O(paths), as given (after C(~) expansion), to what was found.
    - C(exists) - something is at the path (a broken symbolic link is not, nor a path that cannot be
      looked at, for example under a directory the module may not enter).
    - C(read) - the file was read; C(content) - its bytes in base64 (empty unless C(read)).
    - C(size) - its size in bytes (0 when it does not exist).
    - C(mode) - its permission bits in octal, for example V(0755) (empty when it does not exist); C(xusr) -
      whether its owner may execute it; C(owner) and C(group) - their names (the number when it has none;
      empty when it does not exist). These are given for directories too.
    - C(msg) - why it was not read (empty when it was).
  returned: always
  type: dict
  sample:
    /opt/zerog/broker/v0.1.0/docker-compose.yml:
      {exists: true, read: true, size: 13, mode: "0644", xusr: false, owner: root, group: root,
       content: c2VydmljZXM6IHt9Cg==, msg: ""}
    /opt/zerog/broker/v0.1.0/init.sql:
      {exists: false, read: false, size: 0, mode: "", xusr: false, owner: "", group: "", content: "", msg: file not found}
"""

import base64
import errno
import grp
import os
import pwd
import stat

from ansible.module_utils.basic import AnsibleModule


def name_of(lookup, number):
    """The name of a uid or gid (``lookup`` is pwd.getpwuid or grp.getgrgid), or the number when it has none."""
    try:
        return lookup(number)[0]
    except KeyError:
        return str(number)


def read_file(path, max_size):
    """The RV(files) entry of ``path``."""
    entry = {"exists": False, "read": False, "size": 0, "mode": "", "xusr": False, "owner": "", "group": "", "content": "",
             "msg": ""}
    try:
        info = os.stat(path)
    except OSError as exc:
        entry["msg"] = "file not found" if exc.errno == errno.ENOENT else f"cannot stat it: {exc.strerror}"
        return entry
    entry.update(exists=True, size=info.st_size, mode=f"{stat.S_IMODE(info.st_mode):04o}", xusr=bool(info.st_mode & stat.S_IXUSR),
                 owner=name_of(pwd.getpwuid, info.st_uid), group=name_of(grp.getgrgid, info.st_gid))
    if not stat.S_ISREG(info.st_mode):
        entry["msg"] = "a directory, not a file" if stat.S_ISDIR(info.st_mode) else "not a regular file"
        return entry
    if info.st_size > max_size:
        entry["msg"] = f"{info.st_size} bytes, more than max_size ({max_size})"
        return entry
    try:
        with open(path, "rb") as handle:
            data = handle.read(max_size + 1)
    except OSError as exc:
        entry["msg"] = f"cannot read it: {exc.strerror}"
        return entry
    if len(data) > max_size:  # grew since the stat
        entry.update(size=len(data), msg=f"more than max_size ({max_size}) bytes")
        return entry
    entry.update(read=True, size=len(data), content=base64.b64encode(data).decode("ascii"))
    return entry


def main():
    module = AnsibleModule(
        argument_spec={
            "paths": {"type": "list", "elements": "path", "required": True},
            "max_size": {"type": "int", "default": 1048576},
        },
        supports_check_mode=True,
    )
    if module.params["max_size"] < 0:
        module.fail_json(msg=f"max_size must be 0 or more, got {module.params['max_size']}.")
    files = {path: read_file(path, module.params["max_size"]) for path in dict.fromkeys(module.params["paths"])}
    module.exit_json(changed=False, files=files)


if __name__ == "__main__":
    main()
