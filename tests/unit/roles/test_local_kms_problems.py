"""Which prerequisites local_kms finds missing, from what it read of the checkout and the host.

``__local_kms_problems`` (roles/local_kms/vars/main.yml) is one list computed from the role's reads
(``file_contents_info`` of the checkout, ``stat`` of the SGX nodes, the QCNL file, the PCCS GET,
``docker info`` and ``docker compose version``), in the order they are looked at. Each case gives
those results as the tasks register them and the ``check`` of every problem expected. The SGX and
QCNL results are not looked at when preflight's checks stand (``__local_kms_host_checked``), nor the
Docker ones when the docker role's verification does (``__local_kms_docker_reuse``): the cases that
take them give no such results. In check mode, what an earlier role provides is deferred
(``__local_kms_deferred``) instead of refused.
"""

from __future__ import annotations

import base64
import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAY, PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

BUILD = "/opt/private-ml-sdk/meta-dstack-nvidia/dstack/key-provider-build"
UNIT = "/etc/systemd/system/zerog-local-kms.service"
COMPOSE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
MISSING = {"exists": False, "read": False, "xusr": False, "content": ""}
COMPOSE_055 = """services:
  gramine-sealing-key-provider:
    restart: always
    ports: ["127.0.0.1:3443:3443"]
  aesmd:
    restart: always
"""
COMPOSE_OPEN = COMPOSE_055.replace("127.0.0.1:3443:3443", "3443:3443")


def files(run_sh="executable", compose=COMPOSE_055):
    """A file_contents_info result of the checkout: run.sh, no 0.3 unit, docker-compose.yaml."""
    out = {f"{BUILD}/{name}": MISSING for name in COMPOSE_NAMES}
    out[UNIT] = MISSING
    out[f"{BUILD}/run.sh"] = (MISSING if run_sh == "missing"
                              else {"exists": True, "read": True, "xusr": run_sh == "executable", "content": ""})
    if compose is not None:
        out[f"{BUILD}/docker-compose.yaml"] = {"exists": True, "read": True, "xusr": False,
                                               "content": base64.b64encode(compose.encode()).decode()}
    return {"files": out}


SGX_OK = {"rc": 0, "stdout_lines": ["/dev/sgx_enclave|character special file|a",
                                    "/dev/sgx_provision|character special file|a"]}
QCNL_OK = {"content": base64.b64encode(b'{"pccs_url": "https://localhost:8081/sgx/certification/v4/"}').decode()}
DOCKER_OK = {"rc": 0, "stdout": "28.3.3", "stderr": ""}
COMPOSE_V2 = {"rc": 0, "stdout": "Docker Compose version v2.39.1", "stderr": ""}
HOST = {"files": files(), "sgx": SGX_OK, "qcnl": QCNL_OK, "pccs": {"status": 200}, "docker": DOCKER_OK,
        "compose": COMPOSE_V2, "preflight": None, "docker_facts": None, "generation": "auto"}


def _host(**change):
    return dict(HOST, **change)


PREFLIGHT = {"play": PLAY, "root": "/", "passed": ["sgx_devices", "qcnl_config"]}
DOCKER_FACTS = {"play": PLAY, "service": "docker.service", "server_version": "28.3.3", "compose_version": "2.39.1",
                "compose_v2": True}

# (case, the reads, the checks of the problems expected, True)
CASES = [
    ("nothing missing", HOST, [], True),
    ("no run.sh, no compose file", _host(files=files(run_sh="missing", compose=None)), ["sdk_checkout"], True),
    ("run.sh not executable, no compose file", _host(files=files(run_sh="plain", compose=None)),
     ["sdk_checkout", "compose_file"], True),
    ("the 0.5.5 checkout, 0.3 asked for", _host(generation="0.3"), ["generation"], True),
    ("the 0.5.5 checkout, 0.5.5 asked for", _host(generation="0.5.5"), [], True),
    ("published on every address", _host(files=files(compose=COMPOSE_OPEN)), ["published_port", "loopback_only"], True),
    ("no SGX device nodes", _host(sgx={"rc": 1, "stdout_lines": []}), ["sgx_enclave", "sgx_provision"], True),
    ("an SGX node of another major",
     _host(sgx={"rc": 0, "stdout_lines": [SGX_OK["stdout_lines"][0], "/dev/sgx_provision|character special file|1"]}),
     ["sgx_provision"], True),
    ("no QCNL file", _host(qcnl={"failed": True, "msg": "file not found"}), ["qcnl_config"], True),
    ("QCNL without a pccs_url", _host(qcnl={"content": base64.b64encode(b'{"pccs_url": ""}').decode()}),
     ["qcnl_config"], True),
    ("preflight's host checks stand (nothing read)", _host(sgx=None, qcnl=None, preflight=PREFLIGHT), [], True),
    ("no PCCS", _host(pccs={"status": -1, "msg": "Status code was -1 and not [200]: Request failed"}), ["pccs"], True),
    ("PCCS answers 404", _host(pccs={"status": 404}), ["pccs"], True),
    ("no Docker daemon", _host(docker={"rc": 1, "stderr": "Cannot connect"}, compose={"skipped": True}),
     ["docker"], True),
    ("Compose v1", _host(compose={"rc": 0, "stdout": "docker-compose version 1.29.2", "stderr": ""}),
     ["docker_compose"], True),
    ("the docker role's verification stands (nothing asked)",
     _host(docker=None, compose=None, docker_facts=DOCKER_FACTS), [], True),
    ("everything missing, in order",
     _host(files=files(run_sh="plain", compose=None), sgx={"rc": 1, "stdout_lines": []},
           qcnl={"failed": True}, pccs={"status": 500}, docker={"rc": 127, "stderr": ""}, compose={"skipped": True}),
     ["sdk_checkout", "compose_file", "sgx_enclave", "sgx_provision", "qcnl_config", "pccs", "docker"], True),
]

TASK_VARS = {
    "__local_kms_files": "{{ item.host.files }}",
    "__local_kms_sgx": "{{ item.host.sgx if item.host.sgx is not none else omit }}",
    "__local_kms_qcnl": "{{ item.host.qcnl if item.host.qcnl is not none else omit }}",
    "__local_kms_pccs": "{{ item.host.pccs }}",
    "__local_kms_docker_info": "{{ item.host.docker if item.host.docker is not none else omit }}",
    "__local_kms_compose_version": "{{ item.host.compose if item.host.compose is not none else omit }}",
    "preflight_host_info": "{{ item.host.preflight if item.host.preflight is not none else omit }}",
    "docker_facts": "{{ item.host.docker_facts if item.host.docker_facts is not none else omit }}",
    "local_kms_generation": "{{ item.host.generation }}",
}

results, test_problems = table_test(
    "local_kms", "(__local_kms_problems | map(attribute='check') | list) == item.checks"
    " and __local_kms_refusals == __local_kms_problems and __local_kms_deferred == []",
    TASK_VARS, CASES, ("host", "checks"))

# In check mode what zerog.compute.private_ml_sdk and zerog.compute.docker provide is deferred.
CHECK_CASES = [
    ("fresh host: no checkout, no Docker CLI",
     _host(files=files(run_sh="missing", compose=None), docker={"rc": 2, "msg": "[Errno 2] No such file or directory"},
           compose={"skipped": True}),
     [], ["sdk_checkout", "docker"], True),
    ("fresh host without a PCCS", _host(files=files(run_sh="missing", compose=None), pccs={"status": 503}),
     ["pccs"], ["sdk_checkout"], True),
    ("Compose v1 and a generation mismatch",
     _host(generation="0.3", compose={"rc": 0, "stdout": "docker-compose version 1.29.2", "stderr": ""}),
     ["generation"], ["docker_compose"], True),
]

check_results, test_problems_in_check_mode = table_test(
    "local_kms", "(__local_kms_refusals | map(attribute='check') | list) == item.refused"
    " and (__local_kms_deferred | map(attribute='check') | list) == item.deferred",
    TASK_VARS, CHECK_CASES, ("host", "refused", "deferred"), name="check_results", check_mode=True)
