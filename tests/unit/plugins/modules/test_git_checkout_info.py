"""Tests of the git_checkout_info module against real git repositories.

A superproject like private-ml-sdk (``build.sh``, ``README.md``, tag ``v0.5.5``, the submodule
``meta-dstack-nvidia/dstack``) is built once per module with the git of the machine and copied
for each case of the YAML table beside this file, which names the ``mutate`` steps, the module
``input`` and the expected result. Git's own output is what the module parses, so these cases
fail when git's format and the parser part ways. The parser of ``git submodule status`` lines
also has a table of its own, with the lines git prints.
"""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
import yaml
from ansible_collections.zerog.compute.plugins.modules import git_checkout_info
from ansible_collections.zerog.compute.tests.unit.harness import assert_subset, case_file, run_module, substitute

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.invalid", "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull}


def _load():
    with open(case_file(__file__), encoding="utf-8") as handle:
        return [pytest.param(case, id=case["id"]) for case in yaml.safe_load(handle)]


def git(cwd, *args):
    """Run git in ``cwd`` (the test's HOME and identity); return its stdout."""
    env = dict(os.environ, **GIT_ENV)
    return subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True, text=True).stdout.strip()


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """The superproject and its submodule, committed and tagged: (directory, HEAD, submodule commit)."""
    base = str(tmp_path_factory.mktemp("repos"))
    dstack = os.path.join(base, "dstack")
    os.makedirs(dstack)
    git(dstack, "init", "-q", "-b", "main")
    _write(os.path.join(dstack, "key-provider-build", "run.sh"), "#!/bin/sh\ndocker compose up --build -d\n")
    git(dstack, "add", ".")
    git(dstack, "commit", "-q", "-m", "dstack")
    sdk = os.path.join(base, "sdk")
    os.makedirs(sdk)
    git(sdk, "init", "-q", "-b", "main")
    _write(os.path.join(sdk, "build.sh"), "#!/bin/sh\n")
    _write(os.path.join(sdk, "README.md"), "private-ml-sdk\n")
    git(sdk, "-c", "protocol.file.allow=always", "submodule", "add", "-q", dstack, "meta-dstack-nvidia/dstack")
    git(sdk, "add", ".")
    git(sdk, "commit", "-q", "-m", "sdk")
    git(sdk, "tag", "v0.5.5")
    return sdk, git(sdk, "rev-parse", "HEAD"), git(dstack, "rev-parse", "HEAD")


def build(tmp, template, fixture):
    """The case's directory ``tmp/sdk`` from the fixture kind."""
    sdk = os.path.join(tmp, "sdk")
    if fixture == "repo":
        shutil.copytree(template[0], sdk, symlinks=True)
    elif fixture == "empty":
        os.makedirs(sdk)
        git(sdk, "init", "-q")
    elif fixture == "plain":
        os.makedirs(sdk)
        _write(os.path.join(sdk, "build.sh"), "#!/bin/sh\n")
    elif fixture == "broken":
        os.makedirs(os.path.join(sdk, ".git"))
    elif fixture != "none":
        raise AssertionError(f"unknown fixture {fixture}")
    return sdk


def mutate(sdk, steps):
    for step in steps:
        where = os.path.join(sdk, step.get("in", ""))
        if "append" in step:
            with open(os.path.join(where, step["append"]), "a", encoding="utf-8") as out:
                out.write("# local change\n")
        elif "commit" in step:
            with open(os.path.join(where, step["commit"]), "a", encoding="utf-8") as out:
                out.write("# next commit\n")
            git(where, "commit", "-q", "-am", "next")
        elif "create" in step:
            _write(os.path.join(where, step["create"]), "untracked\n")
        elif "git" in step:
            git(where, *step["git"])
        elif "chown" in step:
            for root, dirs, files in os.walk(os.path.join(sdk, ".git")):
                for name in dirs + files:
                    os.lchown(os.path.join(root, name), step["chown"], step["chown"])
            os.lchown(os.path.join(sdk, ".git"), step["chown"], step["chown"])
        else:
            raise AssertionError(f"unknown step {step}")


@pytest.mark.parametrize("case", _load())
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_git_checkout_info(case, check_mode, template, tmp_path, monkeypatch):
    if case.get("root_only") and os.geteuid() != 0:
        pytest.skip("needs root to give the checkout to another user")
    # The module runs git with the test's environment: no configuration of the machine's user.
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    tmp = str(tmp_path)
    sdk = build(tmp, template, case.get("fixture", "repo"))
    mutate(sdk, case.get("mutate", []))
    marks = {"@TMP@": tmp, "@HEAD@": template[1], "@SUB@": template[2]}
    if case.get("no_git"):
        empty = tmp_path / "bin"
        empty.mkdir()
        monkeypatch.setenv("PATH", str(empty))
    result = run_module(git_checkout_info.main, substitute(case["input"], marks), check_mode=check_mode)
    assert result.failed is case.get("failed", False), result.result
    for text in substitute(case.get("msg_contains", []), marks):
        assert text in result.result["msg"]
    assert_subset(substitute(case.get("output", {}), marks), result.result)
    if case.get("head_differs"):
        assert len(result.result["head"]) == 40 and result.result["head"] != template[1]
    if "submodule_state" in case:
        (sub,) = result.result["submodules"]
        assert sub["state"] == case["submodule_state"] and sub["commit"] != template[2]
    if result.failed and not case.get("no_git"):
        assert result.result["cmd"][-1] in ("HEAD", "--untracked-files=no", "--recursive")
    # Reading leaves the checkout as it was: no change, and no index rewritten by git status.
    assert result.result.get("changed", False) is False


# (case, what git submodule status printed, entries or None for a line the parser refuses)
SUBMODULE_LINES = [
    ("current with describe",
     " 4b1e8a8b0c6f4f3e9d2a7c5b1e0f9a8d7c6b5a41 meta-dstack-nvidia/dstack (v0.5.5)\n",
     [{"path": "meta-dstack-nvidia/dstack", "commit": "4b1e8a8b0c6f4f3e9d2a7c5b1e0f9a8d7c6b5a41", "state": "current"}]),
    ("uninitialized, no describe",
     "-4b1e8a8b0c6f4f3e9d2a7c5b1e0f9a8d7c6b5a41 meta-dstack-nvidia/dstack\n",
     [{"path": "meta-dstack-nvidia/dstack", "commit": "4b1e8a8b0c6f4f3e9d2a7c5b1e0f9a8d7c6b5a41", "state": "uninitialized"}]),
    ("recursive, one moved",
     " 1111111111111111111111111111111111111111 meta-dstack-nvidia (heads/main)\n"
     "+2222222222222222222222222222222222222222 meta-dstack-nvidia/dstack (v0.5.5-1-g2222222)\n",
     [{"path": "meta-dstack-nvidia", "commit": "1" * 40, "state": "current"},
      {"path": "meta-dstack-nvidia/dstack", "commit": "2" * 40, "state": "other-commit"}]),
    ("conflict", "U0000000000000000000000000000000000000000 poky\n",
     [{"path": "poky", "commit": "0" * 40, "state": "conflict"}]),
    ("nothing", "", []),
    ("unknown state", "*4b1e8a8b0c6f4f3e9d2a7c5b1e0f9a8d7c6b5a41 poky\n", None),
    ("no path", " 4b1e8a8b0c6f4f3e9d2a7c5b1e0f9a8d7c6b5a41\n", None),
]


@pytest.mark.parametrize(("text", "want"), [(c[1], c[2]) for c in SUBMODULE_LINES], ids=[c[0] for c in SUBMODULE_LINES])
def test_parse_submodule_status(text, want):
    if want is None:
        with pytest.raises(ValueError, match="unexpected line"):
            git_checkout_info.parse_submodule_status(text)
    else:
        assert git_checkout_info.parse_submodule_status(text) == want
