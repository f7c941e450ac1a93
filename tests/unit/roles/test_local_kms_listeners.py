"""When local_kms refuses a provider port open beyond the loopback address (tasks/health.yml).

``__local_kms_open`` and ``__local_kms_listeners_error`` (roles/local_kms/vars/main.yml) read the
health result's sockets (zerog.compute.key_provider_probe with ``listeners: true``, which reads
/proc/net/tcp and tcp6 instead of running ss). The failure's condition is evaluated as health.yml
writes it, for each case: docker publishing the upstream compose on 127.0.0.1 passes; 0.0.0.0,
[::], a bridge address, or tables that could not be read fail.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

CONDITION = "__local_kms_listeners_error is not none or __local_kms_open | length > 0"


def _sock(address, loopback, family="ipv4"):
    return {"address": address, "port": 3443, "family": family, "loopback": loopback}


def _probe(listeners, error=None):
    return {"changed": False, "healthy": True, "outcome": "rejected", "listeners": listeners, "listeners_error": error}


LOOP4 = _sock("127.0.0.1:3443", True)
LOOP6 = _sock("[::1]:3443", True, "ipv6")

# (case, the health result, the open addresses joined, the failure fires)
CASES = [
    ("published on 127.0.0.1 (docker, the upstream compose)", _probe([LOOP4]), "", False),
    ("127.0.0.1 and ::1", _probe([LOOP4, LOOP6]), "", False),
    ("another loopback address", _probe([_sock("127.0.0.53:3443", True)]), "", False),
    ("published on every IPv4 address", _probe([_sock("0.0.0.0:3443", False)]), "0.0.0.0:3443", True),
    ("loopback and every IPv6 address", _probe([LOOP4, _sock("[::]:3443", False, "ipv6")]), "[::]:3443", True),
    ("a bridge address and every address", _probe([_sock("172.17.0.1:3443", False), _sock("0.0.0.0:3443", False)]),
     "172.17.0.1:3443 0.0.0.0:3443", True),
    ("the tables could not be read", _probe(None, "/proc/net/tcp does not exist: ..."), "", True),
    ("no socket listed (the provider answered through another namespace)", _probe([]), "", False),
    ("a probe result without the keys (listeners not asked)",
     {"changed": False, "healthy": True, "outcome": "rejected"}, "", False),
]

TASK_VARS = {"__local_kms_health_result": "{{ item.result }}"}

opens, test_open_addresses = table_test(
    "local_kms", "__local_kms_open | join(' ') == item.want", TASK_VARS,
    [(name, result, want, True) for name, result, want, _fires in CASES], ("result", "want"), name="opens")

fires, test_failure_fires = table_test(
    "local_kms", CONDITION, TASK_VARS, [(name, result, want) for name, result, _open, want in CASES], ("result",),
    name="fires")


def test_the_condition_is_the_one_health_yml_uses():
    with open(os.path.join(os.path.dirname(PLAYBOOK_BIN), "..", "..", "roles", "local_kms", "tasks", "health.yml"),
              encoding="utf-8") as handle:
        assert f"  when: {CONDITION}\n" in handle.read()
