"""Tests of zerog.compute.docker_daemon_config, driven by test_docker_daemon_config.yaml."""

from __future__ import annotations

import os
from typing import Any

import pytest
from ansible.module_utils.common import warnings as ansible_warnings
from ansible_collections.zerog.compute.plugins.modules import docker_daemon_config
from ansible_collections.zerog.compute.tests.unit.harness import (
    assert_subset,
    case_file,
    load_cases,
    run_case,
)


def substitute(value: Any, names: dict[str, str]) -> Any:
    """Replace {path} and {tmpdir} in every string of a case (JSON braces are left alone)."""
    if isinstance(value, str):
        for name, real in names.items():
            value = value.replace("{" + name + "}", real)
        return value
    if isinstance(value, list):
        return [substitute(v, names) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, names) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", load_cases(case_file(__file__)))
def test_docker_daemon_config(case, tmp_path):
    etc = tmp_path / "etc" / "docker"
    etc.mkdir(parents=True)
    module_tmp = tmp_path / "module-tmp"
    module_tmp.mkdir()
    path = etc / "daemon.json"
    case = substitute(case, {"path": str(path), "tmpdir": str(module_tmp)})

    existed = "existing" in case or "existing_bytes" in case
    if "existing" in case:
        path.write_text(case["existing"], encoding="utf-8")
    elif "existing_bytes" in case:
        path.write_bytes(bytes(case["existing_bytes"]))
    if existed:
        os.chmod(path, int(case.get("existing_mode", "0644"), 8))
    case.setdefault("input", {}).setdefault("path", str(path))

    result = run_case(docker_daemon_config.main, case, tmpdir=str(module_tmp))

    expected = dict(case["output"])
    assert result.failed == expected.pop("failed", False), result.result
    assert_subset(expected, result.result)

    warnings = [w.event.msg for w in ansible_warnings.get_warnings()]
    assert warnings == case.get("warnings", [])

    if "file_after" in case:
        if case["file_after"] is None:
            assert not path.exists()
        else:
            assert path.read_text(encoding="utf-8") == case["file_after"]
            want_mode = case.get("mode_after", case.get("existing_mode", "0644"))
            assert oct(path.stat().st_mode & 0o777) == oct(int(want_mode, 8))

    backups = sorted(p.name for p in etc.iterdir() if p.name != "daemon.json")
    if case.get("backup"):
        assert len(backups) == 1, backups
        assert (etc / backups[0]).read_text(encoding="utf-8") == case["existing"]
        assert result["backup_file"] == str(etc / backups[0])
    else:
        assert backups == []
        assert "backup_file" not in result.result


@pytest.mark.parametrize(
    ("target", "patch", "want"),
    [
        ({"a": 1}, {"b": 2}, {"a": 1, "b": 2}),
        ({"a": {"x": 1, "y": 2}}, {"a": {"y": None, "z": 3}}, {"a": {"x": 1, "z": 3}}),
        ({"a": [1, 2]}, {"a": [3]}, {"a": [3]}),
        ({"a": 1}, {"a": {"b": 2}}, {"a": {"b": 2}}),
        ({"a": {"b": 2}}, {"a": "flat"}, {"a": "flat"}),
        ({}, {"a": {"b": None}}, {"a": {}}),
    ],
)
def test_merge_patch_follows_rfc_7386(target, patch, want):
    before = repr(target)
    assert docker_daemon_config.merge_patch(target, patch) == want
    assert repr(target) == before  # the input is not modified
