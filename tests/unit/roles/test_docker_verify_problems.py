"""What the docker role's verification refuses (``__docker_verify_problems``, roles/docker/vars/main.yml).

tasks/verify.yml asks ``docker info`` and ``docker compose version --short`` (both with
failed_when false), then one assert fails with every message of this list, joined. Each case gives the
two command results as ansible.builtin.command registers them; the message must name the command, its rc
and stderr, and for Compose the answer or the missing v2.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

INFO_OK = {"changed": False, "rc": 0, "stdout": "28.3.3", "stderr": ""}
INFO_DOWN = {"changed": False, "rc": 1, "stdout": "",
             "stderr": "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"}
COMPOSE_OK = {"changed": False, "rc": 0, "stdout": "2.39.1\n", "stderr": ""}
COMPOSE_V1 = {"changed": False, "rc": 0, "stdout": "1.29.2\n", "stderr": ""}
COMPOSE_NONE = {"changed": False, "rc": 125, "stdout": "",
                "stderr": "unknown shorthand flag: 'f' in -f\nSee 'docker --help'."}
SKIPPED = {"changed": False, "skipped": True, "skip_reason": "Conditional result was False"}

DAEMON = ("`docker info` did not reach the daemon (rc 1): Cannot connect to the Docker daemon at "
          "unix:///var/run/docker.sock. Is the docker daemon running?. See `systemctl status docker.service` and "
          "`journalctl -u docker.service` on the host; a daemon.json the daemon refuses is a common cause (the "
          "previous file is kept next to it when docker_daemon_config_backup is true).")
V2 = ("; Compose v2 or later is required (the Python docker-compose v1 does not provide `docker compose`). "
      "HINT")

# (case, docker_compose, docker info's result, docker compose version's result, the joined messages)
CASES = [
    ("both answer", True, INFO_OK, COMPOSE_OK, ""),
    ("both answer, Compose v10", True, INFO_OK, dict(COMPOSE_OK, stdout="v10.0.0"), ""),
    ("Compose not asked (docker_compose false)", False, INFO_OK, SKIPPED, ""),
    ("the daemon does not answer", True, INFO_DOWN, COMPOSE_OK, DAEMON),
    ("the daemon answers nothing (rc 0, empty version)", True, dict(INFO_OK, stdout="  \n"), COMPOSE_OK,
     "`docker info` did not reach the daemon (rc 0): . See `systemctl status docker.service` and `journalctl -u "
     "docker.service` on the host; a daemon.json the daemon refuses is a common cause (the previous file is kept "
     "next to it when docker_daemon_config_backup is true)."),
    ("Compose v1", True, INFO_OK, COMPOSE_V1, '`docker compose version --short` answered "1.29.2"' + V2),
    ("no compose plugin", True, INFO_OK, COMPOSE_NONE,
     "`docker compose version --short` failed (rc 125): unknown shorthand flag: 'f' in -f\nSee 'docker --help'." + V2),
    ("both fail, both reported", True, INFO_DOWN, COMPOSE_V1,
     DAEMON + ' `docker compose version --short` answered "1.29.2"' + V2),
    ("the daemon down, Compose not asked", False, INFO_DOWN, SKIPPED, DAEMON),
]

TASK_VARS = {
    "docker_compose": "{{ item.compose }}",
    "__docker_info": "{{ item.info }}",
    "__docker_compose_version": "{{ item.version }}",
    "__docker_compose_hint": "HINT",
}

results, test_verify_problems = table_test(
    "docker", "__docker_verify_problems | join(' ') == item.want", TASK_VARS,
    [(name, compose, info, version, want, True) for name, compose, info, version, want in CASES],
    ("compose", "info", "version", "want"))
