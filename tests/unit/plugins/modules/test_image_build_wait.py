"""Tests of image_build_wait: the module (state file, lock and log as the role's runner leaves
them, from the YAML table beside this file) and its action plugin (the polling loop and the
progress lines it prints)."""

from __future__ import annotations

import fcntl
import importlib
import os
import threading
import time
from types import SimpleNamespace
from unittest import mock

import pytest
import yaml
from ansible.module_utils import _internal
from ansible_collections.zerog.compute.plugins.modules import image_build_wait
from ansible_collections.zerog.compute.tests.unit.harness import assert_subset, case_file, run_module

NOW = 1_800_000_000


def _load():
    with open(case_file(__file__), encoding="utf-8") as handle:
        return [pytest.param(case, id=case["id"]) for case in yaml.safe_load(handle)]


def write_state(path, fields):
    """The runner's key=value lines; started/finished are given relative to NOW."""
    lines = []
    for key, value in fields.items():
        if key in ("started", "finished"):
            value = NOW + value
        lines.append(f"{key}={value}")
    with open(path, "w", encoding="utf-8") as out:
        out.write("\n".join(lines) + "\n")


@pytest.mark.parametrize("case", _load())
def test_image_build_wait_module(case, tmp_path, monkeypatch):
    state_file = tmp_path / "build.state"
    log = tmp_path / "build.log"
    lock_path = str(state_file) + ".lock"
    if "state" in case:
        write_state(state_file, case["state"])
        age = case.get("state_age", 5)
        os.utime(state_file, (NOW - age, NOW - age))
    if "log" in case:
        log.write_text(case["log"], encoding="utf-8")
    holder = None
    if case.get("lock") in ("held", "free"):
        holder = os.open(lock_path, os.O_WRONLY | os.O_CREAT, 0o644)
        if case["lock"] == "held":
            fcntl.flock(holder, fcntl.LOCK_EX)
    monkeypatch.setattr(image_build_wait.time, "time", lambda: float(NOW))
    args = {"state_file": str(state_file), "log": str(log), "tail_lines": case.get("tail_lines", 20)}
    args.update(case.get("input", {}))
    try:
        result = run_module(image_build_wait.main, args)
    finally:
        if holder is not None:
            os.close(holder)
    expected = dict(case["output"])
    assert result.failed == expected.pop("failed", False), result.result
    assert_subset(expected, result.result)


def test_module_waits_until_the_runner_finishes(tmp_path):
    """Within one poll window the module returns as soon as the runner exits."""
    state_file = str(tmp_path / "build.state")
    write_state(state_file, {"state": "running", "pid": 1, "started": 0})
    holder = os.open(state_file + ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX)

    def finish():
        time.sleep(0.6)
        write_state(state_file, {"state": "exited", "rc": 0, "pid": 1, "started": 0, "finished": 0})
        os.close(holder)

    worker = threading.Thread(target=finish)
    worker.start()
    begin = time.monotonic()
    result = run_module(image_build_wait.main, {"state_file": state_file, "timeout": 30, "poll_interval": 20})
    took = time.monotonic() - begin
    worker.join()
    assert result["state"] == "exited"
    assert result["rc"] == 0
    assert 0.5 < took < 5


def test_module_returns_after_one_poll_window(tmp_path):
    """A build still running is reported after poll_interval seconds, not after the timeout."""
    state_file = str(tmp_path / "build.state")
    write_state(state_file, {"state": "running", "pid": 1, "started": 0})
    holder = os.open(state_file + ".lock", os.O_WRONLY | os.O_CREAT, 0o644)
    fcntl.flock(holder, fcntl.LOCK_EX)
    try:
        begin = time.monotonic()
        result = run_module(image_build_wait.main, {"state_file": state_file, "timeout": 600, "poll_interval": 1})
        took = time.monotonic() - begin
    finally:
        os.close(holder)
    assert result["state"] == "running"
    assert 0.9 < took < 3


# -- the action plugin -------------------------------------------------------------------------

@pytest.fixture
def action():
    """The action plugin's module, imported lazily.

    Importing controller code (ansible.plugins, ansible.errors) marks the whole process as the
    controller, and module warnings then go to Display instead of the module result, which
    would break the warning checks of every module test that runs later in the session.
    """
    saved = _internal.is_controller
    yield importlib.import_module("ansible_collections.zerog.compute.plugins.action.image_build_wait")
    _internal.is_controller = saved


def make_action(action, args, delegate_to=None):
    task = SimpleNamespace(args=args, async_val=0, check_mode=False, delegate_to=delegate_to,
                           action="zerog.compute.image_build_wait")
    connection = SimpleNamespace(_shell=SimpleNamespace(tmpdir="/tmp/x"))
    return action.ActionModule(task, connection, None, None, None)


def answer(state, elapsed, progress="", rc=None, tail=None):
    return {"changed": False, "state": state, "running": state in ("running", "starting"), "rc": rc,
            "elapsed": elapsed, "progress": progress, "tail": tail or [], "polls": 1}


ACTION_CASES = [
    pytest.param(
        {"timeout": 3600, "poll_interval": 60},
        [answer("running", 60, "NOTE: Running task 1 of 31 (a)"), answer("running", 3725, "NOTE: Running task 9 of 31 (b)"),
         answer("exited", 3800, "NOTE: Running task 31 of 31 (c)", rc=0)],
        ["[h1] image build running, 1m00s: NOTE: Running task 1 of 31 (a)",
         "[h1] image build running, 1h02m05s: NOTE: Running task 9 of 31 (b)",
         "[h1] image build exited with rc 0 after 1h03m20s: NOTE: Running task 31 of 31 (c)"],
        {"failed": False, "state": "exited", "rc": 0, "polls": 3},
        id="progress line at every poll, success"),
    pytest.param(
        {"timeout": 3600, "poll_interval": 60, "log": "/var/log/b.log"},
        [answer("starting", 0), answer("exited", 30, "ERROR: x", rc=1, tail=["ERROR: x", "Summary: 1 ERROR"])],
        ["[h1] image build starting, 0s: (no output yet)", "[h1] image build exited with rc 1 after 30s: ERROR: x"],
        {"failed": True, "polls": 2,
         "msg": "The image build failed: build.sh exited with rc 1 after 30s. Log: /var/log/b.log. Fix the cause "
                "shown in the log and run again; finished bitbake tasks are not run again.\n"
                "Last lines of the log:\nERROR: x\nSummary: 1 ERROR"},
        id="build.sh fails"),
    pytest.param(
        {"timeout": 3600, "poll_interval": 60},
        [answer("running", 10, "NOTE: Running task 3 of 31 (x)"), answer("interrupted", 20, "NOTE: Running task 3 of 31 (x)")],
        ["[h1] image build running, 10s: NOTE: Running task 3 of 31 (x)"],
        {"failed": True, "state": "interrupted", "polls": 2,
         "msg": "The image build stopped without finishing after 20s (killed, timed out or the host restarted). "
                "Run again: the build resumes from its last finished bitbake task."},
        id="build killed"),
    pytest.param(
        {"timeout": 0},
        [answer("running", 10, "NOTE: Running task 3 of 31 (x)")],
        [],
        {"failed": False, "state": "running", "polls": 1},
        id="a single look never waits nor fails"),
    pytest.param(
        {"timeout": 3600},
        [answer("absent", 0)],
        [],
        {"failed": True, "state": "absent", "msg": "There is no image build to wait for (state absent)."},
        id="nothing to wait for"),
]


@pytest.mark.parametrize(("args", "answers", "lines", "expected"), ACTION_CASES)
def test_action_polls_and_prints(action, args, answers, lines, expected):
    plugin = make_action(action, dict(args, state_file="/s"))
    calls = []

    def execute(module_name, module_args, task_vars):
        calls.append((module_name, dict(module_args)))
        return dict(answers[len(calls) - 1])

    shown = []
    with mock.patch.object(plugin, "_execute_module", side_effect=execute), \
            mock.patch.object(action.display, "display", side_effect=shown.append):
        result = plugin.run(task_vars={"inventory_hostname": "h1"})
    assert shown == lines
    assert len(calls) == len(answers)
    assert [name for name, margs in calls] == ["zerog.compute.image_build_wait"] * len(answers)
    assert [margs["state_file"] for name, margs in calls] == ["/s"] * len(answers)
    for key, value in expected.items():
        assert result.get(key) == value, key


def test_action_gives_up_at_the_timeout(action, monkeypatch):
    """A build still running when the timeout is reached fails the task and keeps running."""
    clock = iter([0.0, 0.0, 40.0, 40.0, 80.0, 80.0, 80.0])
    monkeypatch.setattr(action.time, "monotonic", lambda: next(clock))
    plugin = make_action(action, {"state_file": "/s", "timeout": 70, "poll_interval": 40}, delegate_to="builder")
    seen = []

    def execute(module_name, module_args, task_vars):
        seen.append((module_args["timeout"], module_args["poll_interval"]))
        return answer("running", 100, "NOTE: Running task 5 of 31 (x)")

    shown = []
    with mock.patch.object(plugin, "_execute_module", side_effect=execute), \
            mock.patch.object(action.display, "display", side_effect=shown.append):
        result = plugin.run(task_vars={"inventory_hostname": "h1"})
    assert seen == [(70, 40), (30, 40)]
    assert shown == ["[builder] image build running, 1m40s: NOTE: Running task 5 of 31 (x)"] * 2
    assert result["failed"] is True
    assert result["msg"] == ("The image build is still running after 1m10s of waiting; it goes on in the background. "
                             "Run again later: the next run waits for it instead of starting another.")


@pytest.mark.parametrize(("seconds", "text"), [(0, "0s"), (59, "59s"), (60, "1m00s"), (3599, "59m59s"),
                                               (3600, "1h00m00s"), (28800, "8h00m00s"), (None, "0s")])
def test_duration(action, seconds, text):
    assert action.duration(seconds) == text


def test_action_refuses_a_non_numeric_timeout(action):
    plugin = make_action(action, {"state_file": "/s", "timeout": "eight hours"})
    with pytest.raises(action.AnsibleActionFail, match="timeout and poll_interval must be whole numbers"):
        plugin.run(task_vars={})
