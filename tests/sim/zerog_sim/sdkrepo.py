"""Build the stand-in nearai/private-ml-sdk git repository (and its dstack submodule).

``python3 -m zerog_sim.sdkrepo --dest DIR [--kit /opt/zerog-sim/kit]`` writes two bare
repositories:

* ``DIR/private-ml-sdk.git``: branch ``main``, history of two commits:

  - the 0.3-era state (stand-in for PMS ``24265c4``, 2025-03-19), tagged ``pms-0.3``.
    Upstream has **no** 0.3 tag (its tags are v0.5.5, v0.5.4.1, v0.5.3.1, v0.5.3 and a stray
    v0.2.14); a real deployment pins the 0.3 era by commit SHA.  The stand-in commit gets a tag
    only so that tests and roles have a stable name for it; its SHA differs from upstream's.
  - the v0.5.5 state (stand-in for PMS ``25c2502``, tip of ``main``), tagged ``v0.5.5`` like
    upstream.

  ``meta-dstack-nvidia/`` is a plain directory (upstream keeps it as a git subtree), and
  ``meta-dstack-nvidia/scripts/bin/dstack`` is a symlink (mode 120000) to ``dstack.py``.
  ``.gitmodules`` declares one submodule, ``meta-dstack-nvidia/dstack``, with the relative URL
  ``../dstack.git`` so that a clone of ``DIR/private-ml-sdk.git`` fetches the submodule from
  ``DIR/dstack.git``.
* ``DIR/dstack.git``: branch ``master``; the commit pinned by the 0.3-era PMS commit (stand-in
  for Dstack-TEE/dstack ``b5588fc``, v0.3.3-51) and its child pinned by v0.5.5 (stand-in for
  tag ``v0.5.5``, ``7bf1843``), tagged ``v0.5.5``.  Each holds
  ``key-provider-build/{run.sh,docker-compose.yaml}`` of its generation; ``run.sh`` execs
  ``python3 -B -m zerog_sim.keyprovider run --generation <gen> --script "$0"`` with
  ``PYTHONPATH=<kit>``.

Commits are made with ``git fast-import`` from fixed authors, dates and file modes, so the SHAs
only depend on the file contents and the ``--kit`` path.

Cloning: since git 2.38.1 (and the 2.30.6+ security backports) ``protocol.file.allow``
defaults to ``user``, which forbids the ``file`` transport (file:// URLs *and* plain local paths)
for submodules.  A recursive clone therefore needs, for example::

    git -c protocol.file.allow=always clone --recursive file://DIR/private-ml-sdk.git

(``-c`` is passed on to the submodule clones) or ``git config --global protocol.file.allow
always`` for the user who clones.  Without it git fails with ``fatal: transport 'file' not
allowed``.

The files that go into the repositories live in ``tests/sim/sdk/<layer>/<part>/``: ``common``
is shared by both generations and ``0.3`` / ``0.5.5`` overlay it.  Text files may contain
``@ZEROG_SIM_KIT@``, replaced by the kit path.  A file whose content starts with ``#!`` is stored
executable (100755); every other file as 100644.

Shebangs: the source tree keeps the ones ansible-test's sanity allows (``#!/usr/bin/env python``,
``#!/usr/bin/env bash``, ``#!/bin/sh``) and the repositories get upstream's, from the explicit
table ``UPSTREAM_SHEBANGS`` (source path -> first line in the repository).  A source file with
a shebang that the table does not list is an error, so nothing slips through unmapped.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

SDK_SOURCE = Path(__file__).resolve().parent.parent / "sdk"
DEFAULT_KIT = "/opt/zerog-sim/kit"
KIT_PLACEHOLDER = "@ZEROG_SIM_KIT@"
GENERATIONS = ("0.3", "0.5.5")
PARTS = ("private-ml-sdk", "dstack")
PMS_REPO = "private-ml-sdk.git"
DSTACK_REPO = "dstack.git"
SUBMODULE_PATH = "meta-dstack-nvidia/dstack"
PMS_TAGS = {"0.3": "pms-0.3", "0.5.5": "v0.5.5"}
DSTACK_TAGS = {"0.5.5": "v0.5.5"}
SYMLINKS = {"private-ml-sdk": {"meta-dstack-nvidia/scripts/bin/dstack": "dstack.py"}}
SKIPPED_NAMES = {"__pycache__", ".pytest_cache", ".ruff_cache"}
# Source path (relative to SDK_SOURCE) -> the first line the file has in the repository:
# upstream's shebang (sim_build.py has no upstream counterpart and keeps the python3 it ran with).
UPSTREAM_SHEBANGS = {
    "0.3/private-ml-sdk/build.sh": "#!/bin/bash",
    "0.5.5/private-ml-sdk/build.sh": "#!/bin/bash",
    "common/private-ml-sdk/meta-dstack-nvidia/repro-build/repro-build.sh": "#! /bin/bash",
    "common/private-ml-sdk/meta-dstack-nvidia/repro-build/check.sh": "#!/bin/bash",
    "common/private-ml-sdk/meta-dstack-nvidia/repro-build/sim_build.py": "#!/usr/bin/env python3",
    "0.3/private-ml-sdk/meta-dstack-nvidia/scripts/bin/dstack.py": "#!/usr/bin/env python3",
    "0.5.5/private-ml-sdk/meta-dstack-nvidia/scripts/bin/dstack.py": "#!/usr/bin/env python3",
    "0.3/dstack/key-provider-build/run.sh": "#!/bin/sh",
    "0.5.5/dstack/key-provider-build/run.sh": "#!/bin/bash",
}
AUTHOR = "zerog-sim <zerog-sim@example.invalid>"

# (repository, generation) -> (commit date as epoch seconds, message)
COMMITS = {
    ("dstack", "0.3"): (
        1737331200,  # 2025-01-20
        "key-provider-build: foreground docker compose (stand-in for Dstack-TEE/dstack b5588fc)",
    ),
    ("dstack", "0.5.5"): (
        1759190400,  # 2025-09-30
        "key-provider-build: run as daemon, restart always (stand-in for Dstack-TEE/dstack v0.5.5)",
    ),
    ("private-ml-sdk", "0.3"): (
        1742342400,  # 2025-03-19
        "0.3-era private-ml-sdk, dstack-nvidia 0.3.3 (stand-in for nearai/private-ml-sdk 24265c4)",
    ),
    ("private-ml-sdk", "0.5.5"): (
        1760918400,  # 2025-10-20
        "private-ml-sdk v0.5.5, dstack-nvidia 0.5.5 (stand-in for nearai/private-ml-sdk 25c2502)",
    ),
}


@dataclass(frozen=True)
class Entry:
    """One file of a repository tree: path, git mode and content (link target for symlinks)."""

    path: str
    mode: str
    data: bytes


def _source_files(root: Path) -> dict[str, Path]:
    """Path relative to ``root`` -> source file, for every regular file below ``root``."""
    found: dict[str, Path] = {}
    if not root.is_dir():
        return found
    for current, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if d not in SKIPPED_NAMES)
        for name in files:
            if name.endswith(".pyc"):
                continue
            path = Path(current) / name
            if path.is_symlink():
                continue
            found[path.relative_to(root).as_posix()] = path
    return found


def tree_entries(generation: str, part: str, kit: str = DEFAULT_KIT) -> list[Entry]:
    """Every file of ``part`` ("private-ml-sdk" or "dstack") at ``generation``, sorted by path."""
    if generation not in GENERATIONS:
        raise ValueError(f"unknown generation {generation!r}; expected one of {GENERATIONS}")
    if part not in PARTS:
        raise ValueError(f"unknown part {part!r}; expected one of {PARTS}")
    sources = _source_files(SDK_SOURCE / "common" / part)
    sources.update(_source_files(SDK_SOURCE / generation / part))
    if not sources:
        raise FileNotFoundError(f"no source files for {part} {generation} under {SDK_SOURCE}")
    entries = []
    for rel, path in sources.items():
        data = with_upstream_shebang(path, path.read_bytes()).replace(KIT_PLACEHOLDER.encode(), kit.encode())
        mode = "100755" if data.startswith(b"#!") else "100644"
        entries.append(Entry(rel, mode, data))
    for rel, target in SYMLINKS.get(part, {}).items():
        entries.append(Entry(rel, "120000", target.encode()))
    if part == "private-ml-sdk":
        gitmodules = f'[submodule "dstack"]\n\tpath = {SUBMODULE_PATH}\n\turl = ../{DSTACK_REPO}\n'
        entries.append(Entry(".gitmodules", "100644", gitmodules.encode()))
    return sorted(entries, key=lambda e: e.path)


def with_upstream_shebang(path: Path, data: bytes) -> bytes:
    """``data`` of the source file ``path`` with the shebang the repository must have."""
    if not data.startswith(b"#!"):
        return data
    key = path.relative_to(SDK_SOURCE).as_posix()
    if key not in UPSTREAM_SHEBANGS:
        raise ValueError(f"{key}: no upstream shebang in sdkrepo.UPSTREAM_SHEBANGS")
    rest = data.split(b"\n", 1)[1] if b"\n" in data else b""
    return UPSTREAM_SHEBANGS[key].encode() + b"\n" + rest


def render_tree(generation: str, part: str, dest: Path, kit: str = DEFAULT_KIT) -> Path:
    """Write the files of ``part`` at ``generation`` into ``dest`` (a work tree without .git)."""
    dest = Path(dest)
    for entry in tree_entries(generation, part, kit):
        target = dest / entry.path
        target.parent.mkdir(parents=True, exist_ok=True)
        if entry.mode == "120000":
            os.symlink(entry.data.decode(), target)
            continue
        target.write_bytes(entry.data)
        target.chmod(0o755 if entry.mode == "100755" else 0o644)
    return dest


def _git_env() -> dict[str, str]:
    """Environment for git that ignores the caller's system and global configuration."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("GIT_")}
    env.update(GIT_CONFIG_NOSYSTEM="1", GIT_CONFIG_GLOBAL=os.devnull, LC_ALL="C")
    return env


def _git(*args: str, repo: Path | None = None, stdin: bytes | None = None) -> str:
    """Run git and return its stdout (raises CalledProcessError with stderr on failure)."""
    cmd = ["git"] + (["--git-dir", str(repo)] if repo else []) + list(args)
    proc = subprocess.run(cmd, input=stdin, capture_output=True, env=_git_env(), check=False)
    if proc.returncode:
        raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)
    return proc.stdout.decode()


def _data(payload: bytes) -> bytes:
    return b"data %d\n" % len(payload) + payload + b"\n"


def _commit_stream(
    branch: str, mark: int, parent: int | None, when: int, message: str, entries: list[Entry], gitlinks: dict[str, str]
) -> bytes:
    """One fast-import commit that replaces the whole tree with ``entries`` and ``gitlinks``."""
    person = f"{AUTHOR} {when} +0000".encode()
    out = [
        b"commit refs/heads/%s\n" % branch.encode(),
        b"mark :%d\n" % mark,
        b"author " + person + b"\n",
        b"committer " + person + b"\n",
        _data(message.encode()),
    ]
    if parent is not None:
        out.append(b"from :%d\n" % parent)
    out.append(b"deleteall\n")
    for entry in entries:
        out.append(b"M %s inline %s\n" % (entry.mode.encode(), entry.path.encode()))
        out.append(_data(entry.data))
    for path, sha in sorted(gitlinks.items()):
        out.append(b"M 160000 %s %s\n" % (sha.encode(), path.encode()))
    return b"".join(out)


def _fast_import(
    repo: Path, branch: str, commits: list[tuple[str, list[Entry], dict[str, str]]], tags: dict[str, str], part: str
) -> dict[str, str]:
    """Create ``repo`` (bare) with a linear history; return ref -> SHA."""
    _git("init", "--bare", "--quiet", f"--initial-branch={branch}", str(repo))
    stream = []
    for number, (generation, entries, gitlinks) in enumerate(commits, start=1):
        when, message = COMMITS[(part, generation)]
        stream.append(_commit_stream(branch, number, number - 1 or None, when, message, entries, gitlinks))
    for tag, generation in tags.items():
        number = [commit[0] for commit in commits].index(generation) + 1
        stream.append(b"reset refs/tags/%s\nfrom :%d\n\n" % (tag.encode(), number))
    _git("fast-import", "--quiet", "--done", repo=repo, stdin=b"".join(stream) + b"done\n")
    refs = _git("for-each-ref", "--format=%(refname) %(objectname)", repo=repo)
    return dict(line.split(" ", 1) for line in refs.splitlines())


def build_repos(dest: Path, kit: str = DEFAULT_KIT) -> dict[str, dict[str, str]]:
    """(Re)create ``dest/dstack.git`` and ``dest/private-ml-sdk.git``; return their refs."""
    dest = Path(dest).resolve()
    dest.mkdir(parents=True, exist_ok=True)
    for name in (PMS_REPO, DSTACK_REPO):
        if (dest / name).exists():
            shutil.rmtree(dest / name)

    dstack_refs = _fast_import(
        dest / DSTACK_REPO,
        "master",
        [(gen, tree_entries(gen, "dstack", kit), {}) for gen in GENERATIONS],
        {tag: gen for gen, tag in DSTACK_TAGS.items()},
        "dstack",
    )
    dstack_commits = {
        "0.3": _git("rev-parse", "master~1", repo=dest / DSTACK_REPO).strip(),
        "0.5.5": dstack_refs["refs/heads/master"],
    }
    pms_refs = _fast_import(
        dest / PMS_REPO,
        "main",
        [(gen, tree_entries(gen, "private-ml-sdk", kit), {SUBMODULE_PATH: dstack_commits[gen]}) for gen in GENERATIONS],
        {tag: gen for gen, tag in PMS_TAGS.items()},
        "private-ml-sdk",
    )
    return {"private-ml-sdk": pms_refs, "dstack": dstack_refs, "submodule_commits": dstack_commits}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python3 -m zerog_sim.sdkrepo", description="Build the stand-in private-ml-sdk and dstack bare git repositories."
    )
    parser.add_argument("--dest", required=True, help="directory that receives the .git repos")
    parser.add_argument("--kit", default=DEFAULT_KIT, help="kit path baked into run.sh (default: %(default)s)")
    args = parser.parse_args(argv)
    refs = build_repos(Path(args.dest), args.kit)
    dest = Path(args.dest).resolve()
    summary = {
        "private-ml-sdk": str(dest / PMS_REPO),
        "dstack": str(dest / DSTACK_REPO),
        "refs": refs,
        "clone": f"git -c protocol.file.allow=always clone --recursive file://{dest / PMS_REPO}",
    }
    json.dump(summary, sys.stdout, indent=2)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
