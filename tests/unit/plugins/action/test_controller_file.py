"""Tests of the controller_file action plugin: the table beside this file, case by case.

Each case prepares the controller's side in a temporary directory (the file before, directories),
runs the action with the case's arguments and check/diff flags, and compares the result, the
diff, the file after and the modes of the directories it created.
"""

from __future__ import annotations

import os
import stat
from types import SimpleNamespace

import pytest
import yaml
from ansible.errors import AnsibleActionFail
from ansible_collections.zerog.compute.plugins.action import controller_file
from ansible_collections.zerog.compute.tests.unit.harness import case_file


def _load():
    with open(case_file(__file__), encoding="utf-8") as handle:
        return [pytest.param(case, id=case["id"]) for case in yaml.safe_load(handle)]


def make_action(args, check=False, diff=False):
    task = SimpleNamespace(args=args, async_val=0, check_mode=check, diff=diff, action="zerog.compute.controller_file")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir=None))
    return controller_file.ActionModule(task, connection, None, None, None, None)


def mode_of(path):
    return f"{stat.S_IMODE(os.stat(path).st_mode):04o}"


@pytest.mark.parametrize("case", _load())
def test_controller_file(case, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for directory, mode in (case.get("dirs") or {}).items():
        (tmp_path / directory).mkdir(parents=True)
        os.chmod(tmp_path / directory, int(mode, 8))
    for name in case.get("files", []):
        (tmp_path / name).write_text("not a directory\n", encoding="utf-8")
    args = dict(case["args"])
    target = tmp_path / args["path"]
    if case.get("before"):
        target.write_text(case["before"]["content"], encoding="utf-8")
        os.chmod(target, int(case["before"]["mode"], 8))
    flags = case.get("flags", {})
    action = make_action(args, check=flags.get("check", False), diff=flags.get("diff", False))
    try:
        if "error" in case:
            with pytest.raises(AnsibleActionFail, match=case["error"]):
                action.run(task_vars={})
        else:
            result = action.run(task_vars={})
            for key, value in case["result"].items():
                assert result[key] == value, key
            assert result["path"] == str(target)
            if "diff" in case:
                if case["diff"] is None:
                    assert "diff" not in result
                else:
                    for key, value in case["diff"].items():
                        assert result["diff"][key] == value.replace(args["path"], str(target)), key
        after = case.get("after")
        if after == "absent":
            assert not target.exists()
        elif after:
            assert target.read_text(encoding="utf-8") == after["content"]
            assert mode_of(target) == after["mode"]
        for directory, mode in (case.get("created_dirs") or {}).items():
            assert mode_of(tmp_path / directory) == mode, directory
        for directory in case.get("absent_dirs", []):
            assert not (tmp_path / directory).exists()
        # No temporary file is left beside the target, whatever happened.
        parent = target.parent if target.parent.is_dir() else tmp_path
        assert not [p.name for p in parent.iterdir() if p.name.startswith(".")]
    finally:
        for directory in case.get("dirs") or {}:
            os.chmod(tmp_path / directory, 0o755)


def test_the_write_replaces_the_file_in_one_step(tmp_path, monkeypatch):
    """A failure while writing leaves the old report whole and no temporary file behind."""
    target = tmp_path / "host1.json"
    target.write_text("old\n", encoding="utf-8")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(controller_file.os, "replace", broken_replace)
    with pytest.raises(AnsibleActionFail, match="No space left on device"):
        make_action({"path": str(target), "content": "new\n"}).run(task_vars={})
    assert target.read_text(encoding="utf-8") == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["host1.json"]


def test_a_directory_another_fork_made_meanwhile_is_used(tmp_path, monkeypatch):
    """Forks write their hosts' reports at once: the directory one of them makes first is taken."""
    real_mkdir = os.mkdir
    target = tmp_path / "reports" / "host2.json"

    def other_fork_first(path, *args, **kwargs):
        real_mkdir(path, 0o750)  # the other fork's directory, with its mode
        raise FileExistsError(17, "File exists", str(path))

    monkeypatch.setattr(controller_file.os, "mkdir", other_fork_first)
    result = make_action({"path": str(target), "content": "x\n"}).run(task_vars={})
    assert result["changed"] is True
    assert target.read_text(encoding="utf-8") == "x\n"
    assert mode_of(tmp_path / "reports") == "0750"
