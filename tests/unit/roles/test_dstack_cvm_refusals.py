"""What dstack_cvm refuses before anything of a CVM is written (tasks/define.yml).

Three lists of roles/dstack_cvm/vars/main.yml, each checked by one assert whose message joins them:
``__dstack_cvm_compose_refusals`` (what the compose file gives: a broker port QEMU can forward, the
file itself, a host port no other CVM took), ``__dstack_cvm_guest_refusals`` (the image's generation,
the configuration, the package files a 0.5 guest cannot receive, the size of .user-config, init.sql)
and ``__dstack_cvm_key_refusals`` (a private key of the configuration in the compose text the guest
gets, which app-compose.json would publish). Each case gives what the role read and lists the
fragments the messages must hold, in order; no fragment means nothing is refused. The key's value
must never be in a message.
"""

from __future__ import annotations

import base64
import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

KEY = "ab" * 32
# As an operator may write it by hand (finetune_config writes the 64 characters, lower case): quoted, 0x, upper case.
CONFIG = f'networks:\n  ethereum0g:\n    privateKeys:\n      - "0x{KEY.upper()}"\nservice:\n  customizedModels: []\n'
CONFIG_RAW = {"read": True, "content": base64.b64encode(CONFIG.encode()).decode()}
COMPOSE_RAW = {"read": True, "content": base64.b64encode(b"services: {}\n").decode()}
UNREADABLE = {"read": False, "msg": "file not found"}
BROKER = {"broker": "finetune-broker", "published": "8080", "guest_ip": "", "sources": ["config.local.yaml"]}
SETTINGS = {"name": "finetune", "package_dir": "/opt/pkg", "image_has_package_files": False}
IMAGE_OK = {"exists": True, "generation": "0.5", "problems": []}

BASE = {
    "i": SETTINGS, "compose_raw": COMPOSE_RAW, "config_raw": CONFIG_RAW, "info": BROKER, "guest_port": 8080,
    "host_port": 8080, "claimed": [], "gen": "0.5", "image": IMAGE_OK, "size": 900,
    "init_sql": {"read": True, "content": ""}, "db_name": "", "guest_compose": "services: {}\n",
}


def _v(**change):
    return dict(BASE, **change)


TASK_VARS = {
    "__dstack_cvm_i": "{{ item.v.i }}",
    "__dstack_cvm_compose_src": "/opt/pkg/docker-compose.yml",
    "__dstack_cvm_config_src": "/opt/pkg/config.local.yaml",
    "__dstack_cvm_vm_compose": "/var/lib/zerog/cvm-compose/finetune/docker-compose.yml",
    "__dstack_cvm_image_path": "/opt/sdk/images/dstack-nvidia-0.5.5",
    "__dstack_cvm_compose_raw": "{{ item.v.compose_raw }}",
    "__dstack_cvm_config_raw": "{{ item.v.config_raw }}",
    "__dstack_cvm_compose_info": "{{ item.v.info }}",
    "__dstack_cvm_guest_port": "{{ item.v.guest_port }}",
    "__dstack_cvm_host_port": "{{ item.v.host_port }}",
    "__dstack_cvm_claimed_ports": "{{ item.v.claimed }}",
    "__dstack_cvm_gen": "{{ item.v.gen }}",
    "__dstack_cvm_image": "{{ item.v.image }}",
    "__dstack_cvm_config_size": "{{ item.v.size }}",
    "__dstack_cvm_init_sql_read": "{{ item.v.init_sql }}",
    "__dstack_cvm_db_name": "{{ item.v.db_name }}",
    "__dstack_cvm_guest_compose": "{{ item.v.guest_compose }}",
}

# (case, what was read, fragments of the messages of each list, in order)
CASES = [
    ("all well (a 0.5 guest)", BASE, [], [], []),
    ("all well (a 0.3 guest mounting its package files)",
     _v(gen="0.3", info=dict(BROKER, sources=["config.local.yaml", "transformer", "models"])), [], [], []),
    ("no broker service", _v(info=dict(BROKER, broker="")), ["has no broker service publishing a port"], [], []),
    ("the broker publishes no host port", _v(guest_port=0), ["has no broker service publishing a port"], [], []),
    ("the broker publishes on 127.0.0.1 in the guest", _v(info=dict(BROKER, guest_ip="127.0.0.1")),
     ["publishes the port on 127.0.0.1 only"], [], []),
    ("the compose file cannot be read", _v(compose_raw=UNREADABLE),
     ["The compose file /opt/pkg/docker-compose.yml of CVM finetune cannot be read (file not found)"], [], []),
    ("the host port is another CVM's", _v(claimed=[8080]),
     ["would forward host port 8080, which another CVM of dstack_cvm_instances already uses"], [], []),
    ("a compose without a broker and a taken port: both", _v(info=dict(BROKER, broker=""), claimed=[8080]),
     ["has no broker service", "would forward host port 8080"], [], []),
    ("an unknown generation of a missing image", _v(gen="", image={"exists": False, "generation": "", "problems": []}),
     [], ["is unknown (it does not exist)", "dstack_cvm_generation"], []),
    ("an unknown generation of a broken image",
     _v(gen="", image={"exists": True, "generation": "", "problems": ["no metadata.json"]}),
     [], ["is unknown (no metadata.json)"], []),
    ("the configuration cannot be read", _v(config_raw=UNREADABLE),
     [], ["The broker configuration /opt/pkg/config.local.yaml of CVM finetune cannot be read"], []),
    ("a 0.5 guest, transformer/ and models/ mounted",
     _v(info=dict(BROKER, sources=["config.local.yaml", "transformer", "models"])),
     [], ["mounts ./transformer, ./models from the package", "dstack_cvm_image_has_package_files"], []),
    ("a 0.5 guest, transformer/ and models/ in the broker image",
     _v(i=dict(SETTINGS, image_has_package_files=True),
        info=dict(BROKER, sources=["config.local.yaml", "transformer", "models"])),
     [], [], []),
    ("a 0.5 guest, a configuration over the .user-config limit", _v(size=1048577),
     [], ["has 1048577 bytes; a 0.5 guest copies .user-config only up to 1048576 bytes"], []),
    ("a 0.5 guest, init.sql unreadable",
     _v(info=dict(BROKER, sources=["config.local.yaml", "init.sql"]), init_sql={"read": False, "msg": "file not found"}),
     [], ["/opt/pkg/init.sql cannot be read (file not found)"], []),
    ("a 0.5 guest, init.sql with other SQL",
     _v(info=dict(BROKER, sources=["config.local.yaml", "init.sql"]), init_sql={"read": True, "content": ""}),
     [], ['is not the single "CREATE DATABASE IF NOT EXISTS'], []),
    ("a 0.5 guest, init.sql the package's",
     _v(info=dict(BROKER, sources=["config.local.yaml", "init.sql"]), db_name="fineTune"), [], [], []),
    ("a 0.3 guest takes every package file and any size",
     _v(gen="0.3", size=5000000, info=dict(BROKER, sources=["config.local.yaml", "init.sql"])),
     [], [], []),
    ("the key in the compose text (as given, 0x and upper case)", _v(guest_compose=f"environment:\n  K: 0x{KEY.upper()}\n"),
     [], [], ["The compose text of CVM finetune (/var/lib/zerog/cvm-compose/finetune/docker-compose.yml) contains a "
              "private key of /opt/pkg/config.local.yaml", "Fix: keep the key in the configuration file only."]),
    ("the key in the compose text (lower case, no prefix)", _v(guest_compose=f"command: run --key {KEY}\n"),
     [], [], ["contains a private key"]),
    ("no compose text (check mode before the files exist)", _v(guest_compose=""), [], [], []),
    ("no configuration read: no key to look for", _v(config_raw=UNREADABLE, guest_compose=f"K: {KEY}\n"),
     [], ["cannot be read"], []),
]


def _expression(listname):
    return (f"({listname} | join(' ') | length == 0) if item.want | length == 0 else "
            f"({listname} | join(' ') is search(item.want | map('regex_escape') | join('.*')) "
            f"and '{KEY}' not in ({listname} | join(' ') | lower))")


compose, test_compose_refusals = table_test(
    "dstack_cvm", _expression("__dstack_cvm_compose_refusals"), TASK_VARS,
    [(name, v, want, True) for name, v, want, _g, _k in CASES], ("v", "want"), name="compose")
guest, test_guest_refusals = table_test(
    "dstack_cvm", _expression("__dstack_cvm_guest_refusals"), TASK_VARS,
    [(name, v, want, True) for name, v, _c, want, _k in CASES], ("v", "want"), name="guest")
keys, test_key_refusals = table_test(
    "dstack_cvm", _expression("__dstack_cvm_key_refusals"), TASK_VARS,
    [(name, v, want, True) for name, v, _c, _g, want in CASES], ("v", "want"), name="keys")

# In check mode a compose file that is not there yet is not refused (provider_config writes it later).
checks, test_missing_compose_in_check_mode = table_test(
    "dstack_cvm", _expression("__dstack_cvm_compose_refusals"), TASK_VARS,
    [("the compose file not there yet", _v(compose_raw=UNREADABLE), [], True),
     ("a taken port is refused in check mode too", _v(claimed=[8080]), ["would forward host port 8080"], True)],
    ("v", "want"), name="checks", check_mode=True)


def test_define_yml_asserts_the_three_lists():
    path = os.path.join(os.path.dirname(PLAYBOOK_BIN), "..", "..", "roles", "dstack_cvm", "tasks", "define.yml")
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    assert "that: __dstack_cvm_compose_refusals | length == 0" in text
    assert "that: (__dstack_cvm_guest_refusals + __dstack_cvm_key_refusals) | length == 0" in text
    # The key is refused before the compose text of a 0.5 guest is written.
    assert text.index("__dstack_cvm_key_refusals) | length == 0") < text.index("- name: Keep the compose text")
