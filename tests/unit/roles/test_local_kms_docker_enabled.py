"""When local_kms leaves out enabling Docker because zerog.compute.docker just did.

``__local_kms_docker_enabled_here`` (roles/local_kms/vars/main.yml) is evaluated by ansible-playbook,
with the role's defaults and vars, for each case of the table: it must be true only when the docker
role published ``docker_facts`` in the same play (which it does only after it enabled and started
its unit) and named the unit local_kms would enable (``service``, ``local_kms_docker_service``).
A ``docker_facts`` of an older docker role, without ``service``, leaves the task to run.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAY, PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

FACTS = {"play": PLAY, "service": "docker.service", "server_version": "28.3.3", "compose_version": "2.39.1",
         "compose_v2": True}


def _facts(**change):
    return dict(FACTS, **change)


# (case, docker_facts or None, local_kms_docker_service, expected: Docker was enabled in this play)
CASES = [
    ("same play and service", FACTS, "docker.service", True),
    ("another play", _facts(play="Docker"), "docker.service", False),
    ("another service name", FACTS, "docker-ce.service", False),
    ("no service key (an older fact)", {k: v for k, v in FACTS.items() if k != "service"}, "docker.service", False),
    ("no docker_facts", None, "docker.service", False),
    ("docker_facts not a mapping", "28.3.3", "docker.service", False),
]

TASK_VARS = {
    "docker_facts": "{{ item.facts if item.facts is not none else omit }}",
    "local_kms_docker_service": "{{ item.service }}",
}


results, test_docker_enabled_here = table_test("local_kms", "__local_kms_docker_enabled_here", TASK_VARS, CASES,
                                               ("facts", "service"))
