"""Tests of the file_contents_info module against real files.

Each case of the YAML table beside this file names the files, directories, links and modes to
make under the case's directory, the module input and the expected result. Every case runs in
normal and in check mode: the module only reads, so both must give the same result and change
nothing.
"""

from __future__ import annotations

import base64
import grp
import os
import pwd

import pytest
import yaml
from ansible_collections.zerog.compute.plugins.modules import file_contents_info
from ansible_collections.zerog.compute.tests.unit.harness import assert_subset, case_file, run_module, substitute


def _load():
    with open(case_file(__file__), encoding="utf-8") as handle:
        return [pytest.param(case, id=case["id"]) for case in yaml.safe_load(handle)]


def marked(value, marks):
    """``value`` with the marks replaced in dict keys too (the paths are the keys of ``files``)."""
    if isinstance(value, dict):
        return {substitute(k, marks): marked(v, marks) for k, v in value.items()}
    return substitute(value, marks)


def make(tmp, case):
    """The case's files under ``tmp``."""
    for rel in case.get("dirs", []):
        os.makedirs(os.path.join(tmp, rel), exist_ok=True)
    for rel, text in case.get("files", {}).items():
        os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
        with open(os.path.join(tmp, rel), "w", encoding="utf-8") as out:
            out.write(text)
    for rel, size in case.get("big", {}).items():
        with open(os.path.join(tmp, rel), "wb") as out:
            out.write(b"\0" * size)
    for rel, target in case.get("links", {}).items():
        os.symlink(target, os.path.join(tmp, rel))
    for rel, mode in case.get("modes", {}).items():
        os.chmod(os.path.join(tmp, rel), int(mode, 8))
    for rel, number in case.get("chown", {}).items():
        os.chown(os.path.join(tmp, rel), number, number)


def snapshot(tmp):
    """Every path under ``tmp`` with its size and mtime (to prove nothing changed)."""
    out = {}
    for root, dirs, files in os.walk(tmp):
        for name in dirs + files:
            path = os.path.join(root, name)
            info = os.lstat(path)
            out[path] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return out


@pytest.mark.parametrize("case", _load())
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_file_contents_info(case, check_mode, tmp_path):
    if case.get("non_root_only") and os.geteuid() == 0:
        pytest.skip("root reads a file whatever its mode")
    if case.get("root_only") and os.geteuid() != 0:
        pytest.skip("needs root to give the file to another user")
    tmp = str(tmp_path)
    make(tmp, case)
    before = snapshot(tmp)
    marks = {"@TMP@": tmp, "@USER@": pwd.getpwuid(os.geteuid()).pw_name, "@GROUP@": grp.getgrgid(os.getegid()).gr_name}
    result = run_module(file_contents_info.main, substitute(case["input"], marks), check_mode=check_mode)
    assert result.failed is case.get("failed", False), result.result
    for text in case.get("msg_contains", []):
        assert text in result.result["msg"]
    assert_subset(marked(case.get("output", {}), marks), result.result)
    for path, text in marked(case.get("decoded", {}), marks).items():
        assert base64.b64decode(result.result["files"][path]["content"]).decode("utf-8") == text
    if "entries" in case:
        assert len(result.result["files"]) == case["entries"]
    assert result.result.get("changed", False) is False
    assert snapshot(tmp) == before
