"""When provider_config takes zerog.compute.docker's verification for its `docker compose version` probe.

``__provider_config_compose_known`` (roles/provider_config/vars/main.yml) must be true only when
the docker role verified Compose v2 or later (``compose_v2``) in the same play.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAY, PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

FACTS = {"play": PLAY, "server_version": "28.3.3", "compose_version": "2.39.1", "compose_v2": True}

# (case, docker_facts or None, expected)
CASES = [
    ("same play, Compose v2", FACTS, True),
    ("no docker role", None, False),
    ("another play", dict(FACTS, play="Docker"), False),
    ("docker_compose false", dict(FACTS, compose_version="", compose_v2=False), False),
    ("no compose_v2 (an older fact)", {k: v for k, v in FACTS.items() if k != "compose_v2"}, False),
    ("docker_facts not a mapping", "2.39.1", False),
]

TASK_VARS = {
    "docker_facts": "{{ item.facts if item.facts is not none else omit }}",
}


results, test_compose_known = table_test("provider_config", "__provider_config_compose_known", TASK_VARS, CASES, ("facts",),
                                         files=("vars",))
