#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Documentation of the action plugin zerog.compute.controller_file (it has no module code)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: controller_file
short_description: Write a text file on the Ansible controller, such as a per-host report
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Writes O(content) to O(path) on the B(controller) when the file is missing, its content
    differs or its mode differs, creating the missing directories above it. The file is
    replaced in one step (a complete temporary file in the same directory is renamed over it),
    so a reader never sees half a report.
  - Runs entirely in the controller's worker process, with no connection to the host and no
    module run, whatever C(delegate_to) says. It is the cheap way to leave one file per host on
    the controller, which C(ansible.builtin.copy) delegated to localhost does with two or three
    module runs per host.
  - The file belongs to the user that runs C(ansible-playbook); C(become) does not apply.
options:
  path:
    description:
      - The file on the controller. A relative path is taken from the directory
        C(ansible-playbook) runs in.
    type: path
    required: true
  content:
    description: The text to write, as it is (add the final newline yourself).
    type: str
    required: true
  mode:
    description: Octal mode of the file, as a quoted string.
    type: str
    default: "0644"
  directory_mode:
    description:
      - Octal mode of the directories the module creates above O(path). Directories that exist
        already are left as they are.
    type: str
    default: "0755"
attributes:
  action:
    support: full
    description: Implemented by the action plugin of the same name; there is no module to run on a host.
  check_mode:
    support: full
    description: Reports whether the file would change, and writes nothing.
  diff_mode:
    support: full
    description: Shows the file's content before and after, with its mode in the headers.
  idempotent:
    support: full
    description: A second run with the same content and mode changes nothing.
  platform:
    support: full
    platforms: posix
    description: Writes on the controller only.
notes:
  - A task with C(check_mode=false) writes even in a check-mode run. The collection's playbooks
    do so for their reports, which are the result of the run rather than a change on the host.
seealso:
  - module: ansible.builtin.copy
"""

EXAMPLES = r"""
- name: Write the report of the host on the controller
  zerog.compute.controller_file:
    path: "{{ playbook_dir }}/.reports/{{ inventory_hostname }}.json"
    content: "{{ report | to_nice_json(indent=2) }}\n"
    mode: "0644"
"""

RETURN = r"""
path:
  description: The absolute path of the file on the controller.
  returned: always
  type: str
  sample: /home/operator/provider/.reports/gpu-node-1.json
mode:
  description: The mode the file has (or would have in check mode), in octal.
  returned: always
  type: str
  sample: "0644"
"""
