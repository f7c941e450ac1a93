"""Unit-test harness for zerog.compute modules.

Two pieces, used together by every module test:

* :func:`run_module` runs a module's ``main()`` with arguments (and check/diff mode) and returns
  what it exited or failed with, as a :class:`ModuleResult`, without touching stdout or calling
  ``sys.exit``.
* :class:`CommandTable` replaces ``AnsibleModule.run_command`` (and ``get_bin_path``) with a
  script of the exact calls expected, in order: each entry gives the argv, optionally the
  environment the call must see, and the rc/stdout/stderr to answer with. A call that is not
  the next expected one fails the test at once; calls left over fail it at the end.

Tables are usually written in YAML next to the test (community.general's style) and loaded with
:func:`load_cases`::

    - id: two GPUs in CC mode
      input: {sdk_dir: /opt/sdk}
      flags: {check: true}
      run_command_calls:
        - command: [/testbin/lspci, -nn]
          environ: {LC_ALL: C}
          rc: 0
          out: "..."
          err: ""
      output:
        changed: false
        gpus: [...]
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import Any
from unittest import mock

import yaml
from ansible.module_utils import basic
from ansible.module_utils.testing import patch_module_args

BIN_DIR = "/testbin"


class _Exit(Exception):
    def __init__(self, kwargs: dict[str, Any], failed: bool):
        super().__init__(kwargs.get("msg", ""))
        self.kwargs = kwargs
        self.failed = failed


@dataclass
class ModuleResult:
    """What a module returned: the keyword arguments of exit_json or fail_json."""

    failed: bool
    result: dict[str, Any]
    warnings: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> Any:
        return self.result[key]

    def get(self, key: str, default: Any = None) -> Any:
        return self.result.get(key, default)

    @property
    def changed(self) -> bool:
        return bool(self.result.get("changed", False))

    @property
    def msg(self) -> str:
        return str(self.result.get("msg", ""))


def _exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    raise _Exit(kwargs, failed=False)


def _fail_json(self, msg, **kwargs):
    kwargs["msg"] = msg
    kwargs["failed"] = True
    raise _Exit(kwargs, failed=True)


class CommandTable:
    """The exact, ordered external calls a module is expected to make.

    :param calls: list of dicts with ``command`` (argv list, required), ``environ`` (mapping
        that must equal the non-default part of the call's ``environ_update``; omitted means
        "not checked"), ``data`` (expected stdin, omitted means not checked), ``rc`` (default
        0), ``out``/``err`` (default ""). A bare command name in ``command[0]`` is completed
        with ``/testbin/``.
    :param missing: program names that ``get_bin_path`` must not find.
    """

    def __init__(self, calls: list[dict[str, Any]] | None = None, missing: list[str] | None = None):
        self.calls = [dict(c) for c in (calls or [])]
        self.missing = set(missing or [])
        self.seen: list[list[str]] = []
        self._index = 0

    # -- replacements for AnsibleModule methods --------------------------------------------
    def get_bin_path(self, module, arg, required=False, opt_dirs=None):
        if arg in self.missing:
            if required:
                module.fail_json(msg=f"Failed to find required executable {arg!r}")
            return None
        return f"{BIN_DIR}/{arg}"

    def run_command(self, module, args, check_rc=False, data=None, environ_update=None, **kwargs):
        argv = [str(a) for a in args] if isinstance(args, (list, tuple)) else [str(args)]
        self.seen.append(argv)
        if self._index >= len(self.calls):
            raise AssertionError(f"unexpected extra call #{self._index + 1}: {argv}")
        expected = self.calls[self._index]
        self._index += 1
        want = [str(a) for a in expected["command"]]
        if want and "/" not in want[0]:
            want[0] = f"{BIN_DIR}/{want[0]}"
        assert argv == want, f"call #{self._index}: argv\n  got  {argv}\n  want {want}"
        if "environ" in expected:
            got_env = dict(environ_update or {})
            assert got_env == expected["environ"], f"call #{self._index}: environ {got_env} != {expected['environ']}"
        if "data" in expected:
            assert data == expected["data"], f"call #{self._index}: stdin differs"
        rc = int(expected.get("rc", 0))
        out = expected.get("out", "")
        err = expected.get("err", "")
        if check_rc and rc != 0:
            module.fail_json(msg=err or out, rc=rc, stdout=out, stderr=err, cmd=argv)
        return rc, out, err

    def assert_all_called(self) -> None:
        left = self.calls[self._index:]
        assert not left, f"{len(left)} expected call(s) never made, first: {left[0]['command']}"


@contextlib.contextmanager
def _patched(table: CommandTable | None):
    patches = [
        mock.patch.object(basic.AnsibleModule, "exit_json", _exit_json),
        mock.patch.object(basic.AnsibleModule, "fail_json", _fail_json),
    ]
    if table is not None:
        def get_bin_path(self, arg, required=False, opt_dirs=None):
            return table.get_bin_path(self, arg, required, opt_dirs)

        def run_command(self, args, **kwargs):
            return table.run_command(self, args, **kwargs)

        patches.append(mock.patch.object(basic.AnsibleModule, "get_bin_path", get_bin_path))
        patches.append(mock.patch.object(basic.AnsibleModule, "run_command", run_command))
    with contextlib.ExitStack() as stack:
        for p in patches:
            stack.enter_context(p)
        yield


def run_module(main, args: dict[str, Any] | None = None, *, check_mode: bool = False, diff: bool = False,
               commands: CommandTable | None = None, tmpdir: str | None = None) -> ModuleResult:
    """Run a module's ``main`` with ``args`` and return how it ended.

    Internal arguments (``_ansible_check_mode``, ``_ansible_diff``) are added from the flags.
    With ``commands``, every external call is checked against that table, and the table must
    be used up when the module ends (also when it fails).
    """
    full = dict(args or {})
    full["_ansible_check_mode"] = check_mode
    full["_ansible_diff"] = diff
    if tmpdir is not None:
        full["_ansible_tmpdir"] = tmpdir
        full["_ansible_remote_tmp"] = tmpdir
    outcome = None
    with patch_module_args(full), _patched(commands):
        try:
            main()
        except _Exit as e:
            outcome = e
    if outcome is None:
        raise AssertionError("the module returned without calling exit_json or fail_json")
    if commands is not None:
        commands.assert_all_called()
    warnings = list(outcome.kwargs.get("warnings", []))
    return ModuleResult(failed=outcome.failed, result=outcome.kwargs, warnings=warnings)


def load_cases(path: str) -> list[Any]:
    """Load a YAML case table; returns pytest params with the case ``id`` as test id."""
    import pytest

    with open(path, encoding="utf-8") as fh:
        cases = yaml.safe_load(fh) or []
    return [pytest.param(case, id=case["id"]) for case in cases]


def case_file(test_file: str) -> str:
    """The YAML table beside a test file: test_foo.py -> test_foo.yaml."""
    return os.path.splitext(test_file)[0] + ".yaml"


def run_case(main, case: dict[str, Any], tmpdir: str | None = None) -> ModuleResult:
    """Run one table case: input, flags, run_command_calls, missing_binaries."""
    flags = case.get("flags", {})
    table = CommandTable(case.get("run_command_calls", []), case.get("missing_binaries", []))
    return run_module(main, case.get("input", {}), check_mode=flags.get("check", False),
                      diff=flags.get("diff", False), commands=table, tmpdir=tmpdir)


def assert_subset(expected: Any, actual: Any, path: str = "result") -> None:
    """Every key of ``expected`` is in ``actual`` with the same value (recursively for dicts;
    lists must match element-wise and in length)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{path}: expected a mapping, got {actual!r}"
        for k, v in expected.items():
            assert k in actual, f"{path}: missing key {k!r} (have {sorted(actual)})"
            assert_subset(v, actual[k], f"{path}.{k}")
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected), \
            f"{path}: expected {len(expected)} items, got {actual!r}"
        for i, (e, a) in enumerate(zip(expected, actual, strict=False)):
            assert_subset(e, a, f"{path}[{i}]")
    else:
        assert actual == expected, f"{path}: {actual!r} != {expected!r}"


def substitute(value: Any, marks: dict[str, str]) -> Any:
    """``value`` (str, list or dict, nested) with every mark replaced, e.g. ``{"@TMP@": tmp}``."""
    if isinstance(value, str):
        for key, repl in marks.items():
            value = value.replace(key, repl)
        return value
    if isinstance(value, list):
        return [substitute(v, marks) for v in value]
    if isinstance(value, dict):
        return {k: substitute(v, marks) for k, v in value.items()}
    return value
