"""When local_kms's prerequisites take zerog.compute.docker's verification instead of asking Docker again.

``__local_kms_docker_reuse`` (roles/local_kms/vars/main.yml) is evaluated by ansible-playbook,
with the role's defaults and vars, for each case of the table: it must be true only when the
docker role verified the daemon and Compose v2 (``compose_v2``) in the same play, and local_kms would ask the same.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAY, PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

FACTS = {"play": PLAY, "server_version": "28.3.3", "compose_version": "2.39.1", "compose_v2": True}


def _facts(**change):
    return dict(FACTS, **change)


# (case, docker_facts or None, local_kms variables, expected reuse)
CASES = [
    ("same play, Compose v2", FACTS, {}, True),
    ("no docker role", None, {}, False),
    ("docker_facts not a mapping", "28.3.3", {}, False),
    ("another play", _facts(play="Docker"), {}, False),
    ("no daemon version", _facts(server_version=""), {}, False),
    ("docker_compose false", _facts(compose_version="", compose_v2=False), {}, False),
    ("no compose_v2 (an older fact)", {k: v for k, v in FACTS.items() if k != "compose_v2"}, {}, False),
    ("compose_v2 a string", _facts(compose_v2="True"), {}, False),
    ("another docker info command", FACTS, {"local_kms_docker_info_command": ["sudo", "docker", "info"]}, False),
    ("another compose command", FACTS, {"local_kms_compose_version_command": ["docker-compose", "version"]}, False),
]

TASK_VARS = {
    "docker_facts": "{{ item.facts if item.facts is not none else omit }}",
    "local_kms_docker_info_command": "{{ item.vars.local_kms_docker_info_command | default(['docker', 'info']) }}",
    "local_kms_compose_version_command":
        "{{ item.vars.local_kms_compose_version_command | default(['docker', 'compose', 'version']) }}",
}


results, test_reuse = table_test("local_kms", "__local_kms_docker_reuse", TASK_VARS, CASES, ("facts", "vars"))
