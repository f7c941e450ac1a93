"""The stand-in private-ml-sdk / dstack git repositories built by ``zerog_sim.sdkrepo``."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

SIM_DIR = Path(__file__).resolve().parents[1]
GOLDEN = SIM_DIR.parents[1].parent / "shared" / "reference" / "golden"
sys.path.insert(0, str(SIM_DIR))
from zerog_sim import sdkrepo  # noqa: E402

GIT_ENV = {**{k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
           "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": os.devnull, "LC_ALL": "C"}
ALLOW_FILE = ["-c", "protocol.file.allow=always"]

# What a clone of each tag must hold (path -> git mode), beyond .gitmodules and READMEs.
EXPECTED = {
    "pms-0.3": {
        "generation": "0.3",
        "distro_version": "0.3.3",
        "usage": "usage: dstack [-h] {new,run,lsgpu} ...",
        "golden": "dstack-0.3",
        "files": {
            "build.sh": "100755",
            "meta-dstack-nvidia/scripts/bin/dstack": "120000",
            "meta-dstack-nvidia/scripts/bin/dstack.py": "100755",
            "meta-dstack-nvidia/scripts/bin/host_api.py": "100644",
            "meta-dstack-nvidia/repro-build/repro-build.sh": "100755",
            "meta-dstack-nvidia/repro-build/sim_build.py": "100755",
            "meta-dstack-nvidia/meta-dstack/conf/distro/dstack.conf": "100644",
            "meta-dstack-nvidia/dstack": "160000",
        },
        "absent": ["docs/cvm_dstack_sample.service"],
        "kp_generation": "0.3",
        # upstream's first lines (the source tree has the ones ansible-test's sanity allows)
        "shebangs": {
            "build.sh": "#!/bin/bash",
            "meta-dstack-nvidia/scripts/bin/dstack.py": "#!/usr/bin/env python3",
            "meta-dstack-nvidia/repro-build/repro-build.sh": "#! /bin/bash",
            "meta-dstack-nvidia/repro-build/check.sh": "#!/bin/bash",
            "meta-dstack-nvidia/repro-build/sim_build.py": "#!/usr/bin/env python3",
            "key-provider-build/run.sh": "#!/bin/sh",
        },
    },
    "v0.5.5": {
        "generation": "0.5.5",
        "distro_version": "0.5.5",
        "usage": "usage: dstack [-h] {new,run,lsgpu,tag-vfio,serve} ...",
        "golden": "dstack-v0.5.5",
        "files": {
            "build.sh": "100755",
            "meta-dstack-nvidia/scripts/bin/dstack": "120000",
            "meta-dstack-nvidia/scripts/bin/dstack.py": "100755",
            "meta-dstack-nvidia/scripts/bin/host_api.py": "100644",
            "meta-dstack-nvidia/repro-build/repro-build.sh": "100755",
            "meta-dstack-nvidia/repro-build/sim_build.py": "100755",
            "meta-dstack-nvidia/meta-dstack/conf/distro/dstack.conf": "100644",
            "meta-dstack-nvidia/dstack": "160000",
            "docs/cvm_dstack_sample.service": "100644",
        },
        "absent": [],
        "kp_generation": "0.5.5",
        "shebangs": {
            "build.sh": "#!/bin/bash",
            "meta-dstack-nvidia/scripts/bin/dstack.py": "#!/usr/bin/env python3",
            "meta-dstack-nvidia/repro-build/repro-build.sh": "#! /bin/bash",
            "meta-dstack-nvidia/repro-build/check.sh": "#!/bin/bash",
            "meta-dstack-nvidia/repro-build/sim_build.py": "#!/usr/bin/env python3",
            "key-provider-build/run.sh": "#!/bin/bash",
        },
    },
}


def git(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["git", *args], cwd=cwd, env=GIT_ENV, capture_output=True, text=True,
                          check=check, timeout=60)


def git_version() -> tuple[int, ...]:
    text = git("--version").stdout
    return tuple(int(x) for x in re.search(r"(\d+)\.(\d+)\.(\d+)", text).groups())


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    dest = tmp_path_factory.mktemp("repos")
    return dest, sdkrepo.build_repos(dest)


def test_build_is_deterministic(tmp_path: Path, repos: tuple[Path, dict]) -> None:
    """Same inputs, same SHAs (also when rebuilding over an existing destination)."""
    _dest, first = repos
    again = sdkrepo.build_repos(tmp_path / "a")
    assert again == first
    assert sdkrepo.build_repos(tmp_path / "a") == first
    other_kit = sdkrepo.build_repos(tmp_path / "b", kit="/srv/kit")
    assert other_kit["private-ml-sdk"]["refs/tags/v0.5.5"] != first["private-ml-sdk"][
        "refs/tags/v0.5.5"]


def test_history_and_refs(repos: tuple[Path, dict]) -> None:
    """main = v0.5.5 whose parent is pms-0.3; dstack v0.5.5 is pinned by v0.5.5."""
    dest, refs = repos
    pms = dest / "private-ml-sdk.git"
    assert set(refs["private-ml-sdk"]) == {"refs/heads/main", "refs/tags/v0.5.5",
                                           "refs/tags/pms-0.3"}
    assert refs["private-ml-sdk"]["refs/heads/main"] == refs["private-ml-sdk"]["refs/tags/v0.5.5"]
    assert git("--git-dir", str(pms), "rev-parse", "v0.5.5^").stdout.strip() == \
        refs["private-ml-sdk"]["refs/tags/pms-0.3"]
    assert git("--git-dir", str(pms), "symbolic-ref", "HEAD").stdout.strip() == "refs/heads/main"
    log = git("--git-dir", str(pms), "log", "--format=%an <%ae> %aI %cI", "main").stdout
    assert log.splitlines() == [
        "zerog-sim <zerog-sim@example.invalid> 2025-10-20T00:00:00+00:00 2025-10-20T00:00:00+00:00",
        "zerog-sim <zerog-sim@example.invalid> 2025-03-19T00:00:00+00:00 2025-03-19T00:00:00+00:00",
    ]
    dstack = dest / "dstack.git"
    assert refs["dstack"]["refs/tags/v0.5.5"] == refs["dstack"]["refs/heads/master"]
    for tag, generation in (("pms-0.3", "0.3"), ("v0.5.5", "0.5.5")):
        gitlink = git("--git-dir", str(pms), "ls-tree", tag, "meta-dstack-nvidia/dstack").stdout
        assert gitlink.split()[:3] == ["160000", "commit",
                                       refs["submodule_commits"][generation]]
    assert git("--git-dir", str(dstack), "rev-parse", "master^").stdout.strip() == \
        refs["submodule_commits"]["0.3"]
    assert refs["submodule_commits"]["0.3"] != refs["submodule_commits"]["0.5.5"]


@pytest.mark.parametrize("tag", sorted(EXPECTED))
def test_recursive_clone_of_tag(tag: str, repos: tuple[Path, dict], tmp_path: Path) -> None:
    """A recursive clone at each tag has the right tree, submodule and working dstack script."""
    dest, refs = repos
    want = EXPECTED[tag]
    checkout = tmp_path / "private-ml-sdk"
    git(*ALLOW_FILE, "clone", "--quiet", "--recursive", "--branch", tag,
        f"file://{dest / 'private-ml-sdk.git'}", str(checkout))

    staged = {line.split("\t")[1]: line.split()[0]
              for line in git("ls-files", "--stage", cwd=checkout).stdout.splitlines()}
    for path, mode in want["files"].items():
        assert staged.get(path) == mode, path
    assert [p for p, m in staged.items() if m == "160000"] == ["meta-dstack-nvidia/dstack"]
    for path in want["absent"]:
        assert path not in staged
    assert os.readlink(checkout / "meta-dstack-nvidia/scripts/bin/dstack") == "dstack.py"
    assert (checkout / ".gitmodules").read_text() == (
        '[submodule "dstack"]\n\tpath = meta-dstack-nvidia/dstack\n\turl = ../dstack.git\n')
    conf = (checkout / "meta-dstack-nvidia/meta-dstack/conf/distro/dstack.conf").read_text()
    assert f'DISTRO_VERSION = "{want["distro_version"]}"' in conf.splitlines()

    sub = checkout / "meta-dstack-nvidia" / "dstack"
    assert git("rev-parse", "HEAD", cwd=sub).stdout.strip() == \
        refs["submodule_commits"][want["generation"]]
    run_sh = sub / "key-provider-build" / "run.sh"
    assert os.access(run_sh, os.X_OK)
    assert run_sh.read_text().splitlines()[-1] == (
        'PYTHONPATH="/opt/zerog-sim/kit${PYTHONPATH:+:$PYTHONPATH}" exec python3 -B -m zerog_sim.keyprovider run '
        f'--generation {want["kp_generation"]} --script "$0"')
    shebangs = {path: (checkout / path).read_text().splitlines()[0]
                for path in want["shebangs"] if path != "key-provider-build/run.sh"}
    shebangs["key-provider-build/run.sh"] = run_sh.read_text().splitlines()[0]
    assert shebangs == want["shebangs"]
    assert (sub / "key-provider-build" / "docker-compose.yaml").is_file()

    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "LC_ALL": "C", "COLUMNS": "80",
           "PYTHONDONTWRITEBYTECODE": "1"}
    helped = subprocess.run(["/usr/bin/python3", str(checkout / "meta-dstack-nvidia/scripts/bin/"
                                                                "dstack"), "--help"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=30, check=False)
    assert helped.returncode == 0
    golden = GOLDEN / want["golden"] / "help.json"
    if golden.exists():
        assert helped.stdout == json.loads(golden.read_text())["stdout"]
    else:
        assert helped.stdout.splitlines()[0] == want["usage"]


@pytest.mark.parametrize("generation", ["0.3", "0.5.5"])
def test_run_sh_execs_kit_keyprovider(generation: str, tmp_path: Path) -> None:
    """run.sh runs ``python3 -m zerog_sim.keyprovider`` from the kit given to the builder."""
    kit = tmp_path / "kit"
    (kit / "zerog_sim").mkdir(parents=True)
    (kit / "zerog_sim" / "__init__.py").write_text("")
    (kit / "zerog_sim" / "keyprovider.py").write_text(
        "import json, os, sys\nprint(json.dumps([sys.argv[1:], os.getcwd()]))\n")
    tree = sdkrepo.render_tree(generation, "dstack", tmp_path / "dstack", kit=str(kit))
    workdir = tree / "key-provider-build"
    for invoked in (str(workdir / "run.sh"), "./run.sh"):
        proc = subprocess.run([invoked, "ignored-argument"], cwd=workdir, capture_output=True, text=True,
                              env={"PATH": "/usr/bin:/bin"}, timeout=30, check=False)
        assert proc.returncode == 0, proc.stderr
        # $0 as the shell has it, so the stand-in's shell errors name the script like upstream's
        assert json.loads(proc.stdout) == [["run", "--generation", generation, "--script", invoked], str(workdir)]
    assert list(kit.rglob("__pycache__")) == []  # python3 -B: nothing written into the kit


def test_clone_without_file_protocol_fails(repos: tuple[Path, dict], tmp_path: Path) -> None:
    """Modern git refuses the file transport for submodules unless protocol.file.allow=always."""
    if git_version() < (2, 38, 1):
        pytest.skip("git older than 2.38.1 allows the file transport for submodules")
    dest, _refs = repos
    proc = git("clone", "--recursive", f"file://{dest / 'private-ml-sdk.git'}",
               str(tmp_path / "c"), check=False)
    assert proc.returncode != 0
    assert "fatal: transport 'file' not allowed" in proc.stderr


def test_cli(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-B", "-m", "zerog_sim.sdkrepo", "--dest",
                           str(tmp_path / "out"), "--kit", "/opt/zerog-sim/kit"],
                          cwd=SIM_DIR, capture_output=True, text=True, timeout=60, check=False)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads(proc.stdout)
    assert summary["private-ml-sdk"] == str(tmp_path / "out" / "private-ml-sdk.git")
    assert summary["dstack"] == str(tmp_path / "out" / "dstack.git")
    assert summary["clone"] == ("git -c protocol.file.allow=always clone --recursive "
                                f"file://{tmp_path / 'out' / 'private-ml-sdk.git'}")
    assert summary["refs"]["private-ml-sdk"]["refs/tags/pms-0.3"]


@pytest.mark.parametrize(("generation", "part", "error"), [
    ("0.4", "private-ml-sdk", "unknown generation"),
    ("0.3", "poky", "unknown part"),
])
def test_tree_entries_rejects_unknown(generation: str, part: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        sdkrepo.tree_entries(generation, part)


def _source_shebangs() -> dict[str, str]:
    """Source path (relative to tests/sim/sdk) -> first line, for every file starting with ``#!``."""
    found = {}
    for path in sorted(sdkrepo.SDK_SOURCE.rglob("*")):
        if path.is_file() and "__pycache__" not in path.parts and path.read_bytes().startswith(b"#!"):
            found[path.relative_to(sdkrepo.SDK_SOURCE).as_posix()] = path.read_text().splitlines()[0]
    return found


def test_upstream_shebang_table_covers_every_script() -> None:
    """Every script of the source tree is in the table, with a shebang ansible-test's sanity allows."""
    sources = _source_shebangs()
    assert sorted(sources) == sorted(sdkrepo.UPSTREAM_SHEBANGS)
    assert set(sources.values()) <= {"#!/usr/bin/env python", "#!/usr/bin/env bash", "#!/bin/sh"}


@pytest.mark.parametrize("source", sorted(sdkrepo.UPSTREAM_SHEBANGS))
def test_repository_files_get_the_upstream_shebang(source: str, tmp_path: Path) -> None:
    """The rendered file starts with the table's shebang; the rest of it is the source's."""
    layer, part, rel = source.split("/", 2)
    generations = sdkrepo.GENERATIONS if layer == "common" else (layer,)
    data = (sdkrepo.SDK_SOURCE / source).read_bytes()
    for generation in generations:
        tree = sdkrepo.render_tree(generation, part, tmp_path / generation / part)
        rendered = (tree / rel).read_bytes()
        first, rest = rendered.split(b"\n", 1)
        assert first.decode() == sdkrepo.UPSTREAM_SHEBANGS[source]
        assert rest == data.split(b"\n", 1)[1].replace(b"@ZEROG_SIM_KIT@", sdkrepo.DEFAULT_KIT.encode())
        assert os.access(tree / rel, os.X_OK)


def test_unmapped_shebang_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A new script without a table entry stops the build instead of keeping the sanity shebang."""
    source = tmp_path / "sdk"
    shutil.copytree(sdkrepo.SDK_SOURCE, source)
    (source / "common" / "dstack" / "new.sh").write_text("#!/usr/bin/env bash\necho hi\n")
    monkeypatch.setattr(sdkrepo, "SDK_SOURCE", source)
    with pytest.raises(ValueError, match=r"^common/dstack/new\.sh: no upstream shebang in sdkrepo\.UPSTREAM_SHEBANGS$"):
        sdkrepo.tree_entries("0.3", "dstack")
