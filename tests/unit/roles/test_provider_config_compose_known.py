"""When provider_config takes zerog.compute.docker's verification for its `docker compose version` probe.

``__provider_config_compose_known`` (roles/provider_config/vars/main.yml) must be true only when
the docker role verified Compose v2 or later in the same play.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, REPO, evaluate

ROLE = os.path.join(REPO, "roles", "provider_config")

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

PLAY = "Evaluate the reuse"
FACTS = {"play": PLAY, "server_version": "28.3.3", "compose_version": "2.39.1"}

# (case, docker_facts or None, expected)
CASES = [
    ("same play, Compose v2", FACTS, True),
    ("Compose with a v", dict(FACTS, compose_version="v2.24.6"), True),
    ("no docker role", None, False),
    ("another play", dict(FACTS, play="Docker"), False),
    ("docker_compose false", dict(FACTS, compose_version=""), False),
    ("Compose v1", dict(FACTS, compose_version="1.29.2"), False),
    ("docker_facts not a mapping", "2.39.1", False),
]

PLAYBOOK = f"""\
- name: {PLAY}
  hosts: localhost
  connection: local
  gather_facts: false
  vars_files:
    - {ROLE}/vars/main.yml
  tasks:
    - name: Case
      ansible.builtin.set_fact:
        __case_result: "{{{{ __provider_config_compose_known | bool }}}}"
      vars:
        docker_facts: "{{{{ item.facts if item.facts is not none else omit }}}}"
      loop: "{{{{ cases }}}}"
      loop_control:
        label: "{{{{ item.name }}}}"
"""


@pytest.fixture(scope="module")
def results(tmp_path_factory):
    cases = [{"name": name, "facts": facts} for name, facts, _want in CASES]
    return evaluate(tmp_path_factory.mktemp("known"), PLAYBOOK, cases)


@pytest.mark.parametrize(("case", "want"), [(c[0], c[2]) for c in CASES], ids=[c[0] for c in CASES])
def test_compose_known(results, case, want):
    assert results[case] is want
