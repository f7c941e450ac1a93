"""Tests of the shared command runner (plugins/module_utils/_command.py)."""

from __future__ import annotations

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.zerog.compute.plugins.module_utils._command import (
    CommandFailed,
    Tool,
    explain,
    fail_command,
)
from ansible_collections.zerog.compute.tests.unit.harness import (
    CommandTable,
    case_file,
    load_cases,
    run_case,
)


def probe_main():
    """A minimal module using Tool the way the collection's modules do."""
    module = AnsibleModule(
        argument_spec={
            "args": {"type": "list", "elements": "str", "default": []},
            "lspci_path": {"type": "path"},
            "timeout": {"type": "int", "default": 30},
            "ok_rcs": {"type": "list", "elements": "int", "default": [0]},
            "stdin": {"type": "str", "no_log": True},
        },
        supports_check_mode=True,
    )
    tool = Tool(module, "lspci", path=module.params["lspci_path"], option="lspci_path",
                timeout=module.params["timeout"])
    try:
        rc, out, err = tool.run(module.params["args"], what="Listing PCI devices",
                                fix="check the PCI bus.", ok_rcs=module.params["ok_rcs"],
                                data=module.params["stdin"])
    except CommandFailed as exc:
        fail_command(module, exc)
    except Exception as exc:  # ToolMissing
        fail_command(module, exc)
    module.exit_json(changed=False, rc=rc, out=out, err=err)


@pytest.mark.parametrize("case", load_cases(case_file(__file__)))
def test_command_runner(case):
    result = run_case(probe_main, case)
    expected = case["output"]
    assert result.failed == expected.get("failed", False), result.result
    for key, value in expected.items():
        if key == "msg":
            assert result.msg == value
        elif key != "failed":
            assert result.result[key] == value, key


@pytest.mark.parametrize(
    ("what", "why", "fix", "want"),
    [
        ("Reading X", "it is gone.", None, "Reading X: it is gone."),
        ("Reading X", "it is gone.", "put it back.", "Reading X: it is gone. Fix: put it back."),
    ],
)
def test_explain(what, why, fix, want):
    assert explain(what, why, fix) == want


def test_argv_with_and_without_timeout():
    class FakeModule:
        def get_bin_path(self, name, required=False, opt_dirs=None):
            return f"/usr/bin/{name}"

    tool = Tool(FakeModule(), "lspci", timeout=10)
    assert tool.argv(["-nn"]) == ["/usr/bin/timeout", "--kill-after=5", "10s", "/usr/bin/lspci", "-nn"]
    assert tool.argv(["-nn"], timeout=0) == ["/usr/bin/lspci", "-nn"]


def test_relative_explicit_path_is_refused():
    class FakeModule:
        def get_bin_path(self, name, required=False, opt_dirs=None):
            raise AssertionError("must not look up an explicit path")

    tool = Tool(FakeModule(), "dstack", path="meta/dstack", option="sdk_dir")
    assert not tool.available()


def test_table_rejects_unexpected_argv():
    table = CommandTable([{"command": ["lspci", "-nn"]}])
    with pytest.raises(AssertionError, match="argv"):
        table.run_command(None, ["/testbin/lspci", "-vvk"])


def test_table_rejects_extra_call():
    table = CommandTable([])
    with pytest.raises(AssertionError, match="unexpected extra call"):
        table.run_command(None, ["/testbin/lspci"])


def test_table_reports_unused_calls():
    table = CommandTable([{"command": ["lspci"]}])
    with pytest.raises(AssertionError, match="never made"):
        table.assert_all_called()


def test_table_checks_environment():
    table = CommandTable([{"command": ["lspci"], "environ": {"LC_ALL": "C"}}])
    with pytest.raises(AssertionError, match="environ"):
        table.run_command(None, ["/testbin/lspci"], environ_update={"LC_ALL": "en_US.UTF-8"})
