"""Evaluate a role's internal variable with ansible-playbook, once per case of a table.

The role-level tests of an internal condition (``__dstack_cvm_gpu_reuse``, ``__local_kms_docker_reuse``,
``__private_ml_sdk_checkout_current`` and the others of ``test_*.py`` here) give :func:`evaluate`
the role, the expression, the task variables each case sets (Jinja over ``item``) and the cases: it runs a one-task play named
:data:`PLAY` that loads the role's vars files and sets ``__case_result`` for every case.
:func:`table_test` makes the module-scoped fixture and the parametrized test of such a table.
"""

from __future__ import annotations

import json
import os
import subprocess

import pytest
import yaml

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
VENV_BIN = os.path.join(REPO, ".venv", "bin")
PLAYBOOK_BIN = os.path.join(VENV_BIN, "ansible-playbook")
# The play's name, which the expressions compare with the play name in the published facts.
PLAY = "Evaluate the expression"


def evaluate(base, role: str, expression: str, task_vars: dict[str, str], cases: list[dict],
             files: tuple[str, ...] = ("defaults", "vars"), check_mode: bool = False) -> dict:
    """``expression`` for every case, in the directory ``base``: {case name: __case_result}.

    ``role`` is a directory name under roles/; ``files`` the role's vars files the play loads;
    ``check_mode`` runs the play with ``--check`` (``ansible_check_mode`` cannot be set as a variable).
    """
    role_dir = os.path.join(REPO, "roles", role)
    play = [{
        "name": PLAY, "hosts": "localhost", "connection": "local", "gather_facts": False,
        "vars_files": [os.path.join(role_dir, f, "main.yml") for f in files],
        "tasks": [{
            "name": "Case",
            "ansible.builtin.set_fact": {"__case_result": "{{ (" + expression + ") | bool }}"},
            "vars": task_vars,
            "loop": "{{ cases }}",
            "loop_control": {"label": "{{ item.name }}"},
        }],
    }]
    (base / "play.yml").write_text(yaml.safe_dump(play, sort_keys=False), encoding="utf-8")
    (base / "cases.json").write_text(json.dumps({"cases": cases}), encoding="utf-8")
    env = dict(os.environ, ANSIBLE_STDOUT_CALLBACK="ansible.builtin.json", ANSIBLE_LOCALHOST_WARNING="false",
               ANSIBLE_INVENTORY_UNPARSED_WARNING="false", ANSIBLE_NOCOLOR="1",
               ANSIBLE_COLLECTIONS_PATH=os.path.join(REPO, ".cache", "collections"))
    argv = [PLAYBOOK_BIN, "-i", "localhost,", str(base / "play.yml"), "-e", f"@{base / 'cases.json'}"]
    proc = subprocess.run(argv + (["--check"] if check_mode else []),
                          env=env, cwd=str(base), capture_output=True, text=True, timeout=300, check=False)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    task = json.loads(proc.stdout)["plays"][0]["tasks"][0]
    return {r["item"]["name"]: r["ansible_facts"]["__case_result"] for r in task["hosts"]["localhost"]["results"]}


def table_test(role: str, expression: str, task_vars: dict[str, str], cases: list[tuple], fields: tuple[str, ...],
               files: tuple[str, ...] = ("defaults", "vars"), name: str = "results", check_mode: bool = False):
    """The fixture ``name`` and the test of a table of ``(case name, *values, expected)`` rows.

    ``fields`` names the values, which ``task_vars`` read as ``item.<field>``. Assign both to
    module names (``results, test_x = table_test(...)``) so that pytest collects them; the test
    asserts that ``expression`` is exactly the expected boolean for every row. A second table
    in the same file needs its own ``name``.
    """
    @pytest.fixture(scope="module", name=name)
    def results(tmp_path_factory):
        rows = [{"name": row[0], **dict(zip(fields, row[1:-1], strict=True))} for row in cases]
        return evaluate(tmp_path_factory.mktemp(role), role, expression, task_vars, rows, files=files, check_mode=check_mode)

    @pytest.mark.parametrize(("case", "want"), [(row[0], row[-1]) for row in cases], ids=[row[0] for row in cases])
    def test(request, case, want):
        assert request.getfixturevalue(name)[case] is want

    return results, test
