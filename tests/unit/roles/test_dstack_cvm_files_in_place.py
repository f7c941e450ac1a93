"""When zerog.compute.dstack_cvm leaves a 0.5 guest's files alone: the compose text and .user-config.

tasks/main.yml reads every CVM's files with ``zerog.compute.file_contents_info``; define.yml skips
writing the rewritten compose text (and its directory) when ``__dstack_cvm_guest_compose_in_place``,
and deliver.yml skips the ``.user-config`` copy when ``__dstack_cvm_user_config_in_place`` (and the
VM was not changed in this run). A file that is in place but has the wrong owner, group or mode, or
other bytes, must be written again: these tables give the expressions the module's entries for the
role's default paths (CVM ``finetune``) and check each verdict.
"""

from __future__ import annotations

import base64
import json
import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

GUEST_DIR = "/etc/zerog/dstack-cvm/finetune"
GUEST_FILE = GUEST_DIR + "/docker-compose.yml"
CONFIG = "/opt/zerog/broker/0.2.2/config.local.yaml"
USER_CONFIG = "/opt/private-ml-sdk/vms/finetune/shared/.user-config"
TEXT = "services:\n  broker:\n    image: ghcr.io/0glabs/0g-serving-broker:0.2.2\n"
# A throwaway key (Hardhat's second test account), as the simulated hosts use.
KEY = "0x59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
CONFIG_TEXT = f"networks:\n  ethereum0g:\n    privateKeys: ['{KEY}']\n"


def entry(text=None, mode="0600", owner="root", group="root", kind="file"):
    """A file_contents_info entry: a file with ``text``, a directory, or nothing (``text`` None, kind file)."""
    if kind == "dir":
        return {"exists": True, "read": False, "size": 4096, "mode": mode, "xusr": True, "owner": owner, "group": group,
                "content": "", "msg": "a directory, not a file"}
    if text is None:
        return {"exists": False, "read": False, "size": 0, "mode": "", "xusr": False, "owner": "", "group": "",
                "content": "", "msg": "file not found"}
    data = text.encode("utf-8")
    return {"exists": True, "read": True, "size": len(data), "mode": mode, "xusr": False, "owner": owner, "group": group,
            "content": base64.b64encode(data).decode("ascii"), "msg": ""}


def files(**over):
    """The read of a converged 0.5 CVM, with some entries replaced."""
    out = {GUEST_DIR: entry(kind="dir", mode="0700"), GUEST_FILE: entry(TEXT), CONFIG: entry(CONFIG_TEXT, mode="0600"),
           USER_CONFIG: entry(CONFIG_TEXT)}
    names = {"guest_dir": GUEST_DIR, "guest_file": GUEST_FILE, "config": CONFIG, "user_config": USER_CONFIG}
    for key, value in over.items():
        out[names[key]] = value
    return json.dumps(out)


# The current CVM is the role's default list's only one, as tasks/main.yml loops over it (its
# settings and paths, __dstack_cvm_entries); __dstack_cvm_guest_compose is a fact of define.yml.
TASK_VARS = {
    "__dstack_cvm_files": "{{ {'files': item.files | from_json} }}",
    "__dstack_cvm_entry": "{{ __dstack_cvm_entries[0] }}",
    "__dstack_cvm_guest_compose": "{{ item.text }}",
}

# (case, the read, this run's compose text, in place)
GUEST_CASES = [
    ("in place", files(), TEXT, True),
    ("another text this run", files(), TEXT + "  mysql: {}\n", False),
    ("the file lost its last newline", files(guest_file=entry(TEXT.rstrip("\n"))), TEXT, False),
    ("file mode 0644", files(guest_file=entry(TEXT, mode="0644")), TEXT, False),
    ("file owned by another user", files(guest_file=entry(TEXT, owner="builder")), TEXT, False),
    ("file of another group", files(guest_file=entry(TEXT, group="docker")), TEXT, False),
    ("no file", files(guest_file=entry()), TEXT, False),
    ("directory mode 0755", files(guest_dir=entry(kind="dir", mode="0755")), TEXT, False),
    ("directory owned by another user", files(guest_dir=entry(kind="dir", mode="0700", owner="1000")), TEXT, False),
    ("no directory", files(guest_dir=entry(), guest_file=entry()), TEXT, False),
]

guest_results, test_guest_compose_in_place = table_test(
    "dstack_cvm", "__dstack_cvm_guest_compose_in_place", TASK_VARS, GUEST_CASES, ("files", "text"), name="guest_results")

# (case, the read, in place)
USER_CONFIG_CASES = [
    ("in place", files(), TEXT, True),
    ("the configuration changed", files(config=entry(CONFIG_TEXT.replace("0x59", "0x69"))), TEXT, False),
    ("mode 0644", files(user_config=entry(CONFIG_TEXT, mode="0644")), TEXT, False),
    ("mode 0400", files(user_config=entry(CONFIG_TEXT, mode="0400")), TEXT, False),
    ("owned by another user", files(user_config=entry(CONFIG_TEXT, owner="dstack-build")), TEXT, False),
    ("of another group", files(user_config=entry(CONFIG_TEXT, group="1000")), TEXT, False),
    ("not delivered yet", files(user_config=entry()), TEXT, False),
    ("the configuration is missing", files(config=entry(), user_config=entry("")), TEXT, False),
    ("both missing", files(config=entry(), user_config=entry()), TEXT, False),
]

user_config_results, test_user_config_in_place = table_test(
    "dstack_cvm", "__dstack_cvm_user_config_in_place", TASK_VARS, USER_CONFIG_CASES, ("files", "text"),
    name="user_config_results")
