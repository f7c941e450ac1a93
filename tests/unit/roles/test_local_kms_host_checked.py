"""When local_kms takes preflight's host checks for the SGX device nodes and the QCNL configuration.

``__local_kms_host_checked`` (roles/local_kms/vars/main.yml) must be true only when
zerog.compute.preflight read the same host root earlier in the same play and both of its checks
``sgx_devices`` and ``qcnl_config`` passed (not failed and waived, not left unevaluated). The two
modules look at the same files: /dev/sgx_enclave and /dev/sgx_provision as character devices of
major 10 (links followed) and a pccs_url in /etc/sgx_default_qcnl.conf.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAY, PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

ROOT = "/opt/zerog-sim/root"
INFO = {"play": PLAY, "root": ROOT, "passed": ["tdx_module", "sgx_devices", "qcnl_config", "pccs_reachable"]}


def _info(**change):
    return dict(INFO, **change)


# (case, preflight_host_info or None, local_kms_host_root, expected)
CASES = [
    ("same play and root, both passed", INFO, ROOT, True),
    ("root with a trailing slash", _info(root=ROOT + "/"), ROOT, True),
    ("local_kms root with a trailing slash", INFO, ROOT + "/", True),
    ("the real root", _info(root="/"), "/", True),
    ("no preflight", None, ROOT, False),
    ("not a mapping", "sgx_devices", ROOT, False),
    ("another play", _info(play="Preflight"), ROOT, False),
    ("another root", _info(root="/"), ROOT, False),
    ("SGX devices failed or waived", _info(passed=["qcnl_config"]), ROOT, False),
    ("QCNL failed or waived", _info(passed=["sgx_devices"]), ROOT, False),
    ("no passed list", {"play": PLAY, "root": ROOT}, ROOT, False),
]

TASK_VARS = {
    "preflight_host_info": "{{ item.info if item.info is not none else omit }}",
    "local_kms_host_root": "{{ item.root }}",
}


results, test_host_checked = table_test("local_kms", "__local_kms_host_checked", TASK_VARS, CASES, ("info", "root"))
