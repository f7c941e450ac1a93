"""Which ``docker compose version --short`` answers zerog.compute.docker takes for Compose v2 or later.

``__docker_compose_v2_pattern`` (roles/docker/vars/main.yml) is the one place the collection
tells Compose v2 from v1: the docker role's verification matches the trimmed answer against it,
and publishes the outcome as ``docker_facts.compose_v2`` for local_kms and provider_config.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

# (case, what `docker compose version --short` printed, Compose v2 or later)
CASES = [
    ("plugin 2.39", "2.39.1\n", True),
    ("with a v", "v2.24.6", True),
    ("Ubuntu docker-compose-v2", "2.24.6+ds1-0ubuntu1~24.04.1", True),
    ("Compose 10", "10.0.0", True),
    ("Compose 3", "3.0.0", True),
    ("Compose v1", "1.29.2", False),
    ("v1 with a v", "v1.29.2", False),
    ("no dot", "2", False),
    ("nothing", "", False),
    ("the long form", "Docker Compose version v2.39.1", False),
    ("version 20 without a dot", "20", False),
]


results, test_compose_v2_pattern = table_test("docker", "item.output | trim is match(__docker_compose_v2_pattern)", {}, CASES,
                                              ("output",), files=("vars",))
