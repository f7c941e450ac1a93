"""When dstack_cvm's checks take preflight's GPU discovery instead of reading the GPUs again.

``__dstack_cvm_gpu_reuse`` (roles/dstack_cvm/vars/main.yml) is evaluated by ansible-playbook,
with the role's defaults and vars, for each case of the table: it must be true only when
preflight read the GPUs in the same play with what check.yml would ask.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAY, PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

INFO = {"play": PLAY, "root": "/opt/sim/root", "policy": "auto", "allow_cc_devtools": False, "nvtools_path": "",
        "result": {"cvm_gpus": ["18:00.0"], "gpus": []}}


def _info(**change):
    return dict(INFO, **change)


# (case, preflight_gpu_info or None, dstack_cvm variables, expected reuse)
CASES = [
    ("same inputs", INFO, {}, True),
    ("trailing slash of the root", _info(root="/opt/sim/root/"), {}, True),
    ("both roots /", _info(root="/"), {"dstack_cvm_host_root": "/"}, True),
    ("same nvidia_gpu_tools.py", _info(nvtools_path="/usr/local/bin/nvidia_gpu_tools.py"),
     {"dstack_cvm_nvtools_path": "/usr/local/bin/nvidia_gpu_tools.py"}, True),
    ("no preflight", None, {}, False),
    ("another play", _info(play="Preflight"), {}, False),
    ("another root", _info(root="/"), {}, False),
    ("another policy", _info(policy="single"), {}, False),
    ("CC devtools accepted", _info(allow_cc_devtools=True), {}, False),
    ("another nvidia_gpu_tools.py", _info(nvtools_path="/opt/nvtools.py"), {}, False),
    ("dstack_cvm names the tool, preflight searched", INFO, {"dstack_cvm_nvtools_path": "/opt/nvtools.py"}, False),
    ("preflight's discovery failed", _info(result={"failed": True, "msg": "boom"}), {}, False),
    ("no CVM wants GPUs", INFO, {"dstack_cvm_gpus": "none"}, False),
    ("every CVM absent", INFO, {"dstack_cvm_state": "absent"}, False),
    ("a listed CVM's GPUs", INFO, {"dstack_cvm_gpus": ["18:00.0"]}, True),
]

TASK_VARS = {
    "preflight_gpu_info": "{{ item.info if item.info is not none else omit }}",
    "dstack_cvm_host_root": "{{ item.vars.dstack_cvm_host_root | default('/opt/sim/root') }}",
    "dstack_cvm_nvtools_path": "{{ item.vars.dstack_cvm_nvtools_path | default('') }}",
    "dstack_cvm_gpus": "{{ item.vars.dstack_cvm_gpus | default('auto') }}",
    "dstack_cvm_state": "{{ item.vars.dstack_cvm_state | default('present') }}",
}


results, test_reuse = table_test("dstack_cvm", "__dstack_cvm_gpu_reuse", TASK_VARS, CASES, ("info", "vars"))
