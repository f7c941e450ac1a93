"""Evaluate a role's internal variable with ansible-playbook, once per case of a table.

The role-level tests of an internal condition (``__dstack_cvm_gpu_reuse``, ``__local_kms_docker_reuse``)
write a one-task play that loads the role's defaults and vars, sets ``__case_result`` from the
expression for every item of ``cases``, and read back each item's value with :func:`evaluate`.
"""

from __future__ import annotations

import json
import os
import subprocess

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
PLAYBOOK_BIN = os.path.join(VENV_BIN, "ansible-playbook")


def evaluate(base, playbook: str, cases: list[dict]) -> dict:
    """Run ``playbook`` in the directory ``base`` with ``cases`` as extra vars: {case name: __case_result}."""
    (base / "play.yml").write_text(playbook, encoding="utf-8")
    (base / "cases.json").write_text(json.dumps({"cases": cases}), encoding="utf-8")
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, ".cache", "collections"))
    proc = subprocess.run([PLAYBOOK_BIN, "-i", "localhost,", str(base / "play.yml"), "-e", f"@{base / 'cases.json'}"],
                          env=env, cwd=str(base), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    task = json.loads(proc.stdout)["plays"][0]["tasks"][0]
    return {r["item"]["name"]: r["ansible_facts"]["__case_result"] for r in task["hosts"]["localhost"]["results"]}
