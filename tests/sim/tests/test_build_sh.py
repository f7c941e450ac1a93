"""The stand-in ``build.sh`` of each private-ml-sdk generation, run from a real recursive clone.

The build runs as an unprivileged user (``nobody`` when the tests run as root), with a ``docker``
stub first on PATH whose ``info`` succeeds unless a case says otherwise, and with
``ZEROG_SIM_BUILD_SECONDS`` small so that every build takes well under a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

SIM_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SIM_DIR))
from zerog_sim import sdkrepo  # noqa: E402

NOBODY = 65534
AS_USER = {"user": NOBODY, "group": NOBODY} if os.geteuid() == 0 else {}
TASKS = 31
POKY_ROOT = """\
ERROR:  OE-core's config sanity checker detected a potential misconfiguration.
    Either fix the cause of this error or at your own risk disable the checker (see sanity.conf).
    Following is the list of potential problems / advisories:

    Do not use Bitbake as root.

Summary: There was 1 ERROR message, returning a non-zero exit code.
"""
DOCKER_DOWN = ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
               "Is the docker daemon running?")
DOCKER_STUB = f"""#!/bin/sh
if [ "$1" = info ]; then
    if [ -n "$DOCKER_DOWN" ]; then echo "{DOCKER_DOWN}" >&2; exit 1; fi
    echo "Server Version: 28.2.2"
    exit 0
fi
exit 1
"""
CMDLINE_03 = "console=ttyS0 init=/init dstack.fde=1 panic=1 systemd.unified_cgroup_hierarchy=0"
CMDLINE_05 = ("console=ttyS0 init=/init panic=1 net.ifnames=0 biosdevname=0 mce=off oops=panic "
              "pci=noearly pci=nommconf random.trust_cpu=y random.trust_bootloader=n "
              "tsc=reliable no-kvmclock dstack.rootfs_hash={} dstack.rootfs_size={}")

# Per generation: version, image files (reference dstack-cli.md section 2), tarball top entry.
GENERATIONS = {
    "0.5.5": {
        "tag": "v0.5.5",
        "version": "0.5.5",
        "files": ["bzImage", "digest.txt", "initramfs.cpio.gz", "metadata.json", "ovmf.fd",
                  "rootfs.img.verity", "sha256sum.txt"],
        "top": "{dist}",
    },
    "0.3": {
        "tag": "pms-0.3",
        "version": "0.3.3",
        "files": ["bzImage", "initramfs.cpio.gz", "md5sum.txt", "metadata.json", "ovmf.fd",
                  "rootfs.cpio", "rootfs.iso", "sha256sum.txt"],
        "top": ".",
    },
}


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture(scope="module")
def repos(tmp_path_factory: pytest.TempPathFactory) -> Path:
    dest = tmp_path_factory.mktemp("repos")
    sdkrepo.build_repos(dest)
    for path in [dest, *dest.rglob("*")]:
        path.chmod(path.stat().st_mode | 0o005 | (0o001 if path.is_dir() else 0))
    return dest


@pytest.fixture()
def area():
    """A world-traversable scratch dir (pytest's tmp dirs are private to root)."""
    base = Path(tempfile.mkdtemp(prefix="zerog-build-sh-"))
    base.chmod(0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base)


def checkout(repos: Path, area: Path, generation: str) -> dict:
    """Clone the generation's tag recursively; return paths and the environment to build with."""
    pms = area / "private-ml-sdk"
    subprocess.run(["git", "-c", "protocol.file.allow=always", "-c", "advice.detachedHead=false",
                    "clone", "-q", "--recursive", "--branch", GENERATIONS[generation]["tag"],
                    f"file://{repos / 'private-ml-sdk.git'}", str(pms)],
                   check=True, capture_output=True, env={"PATH": "/usr/bin:/bin",
                                                         "HOME": str(area)})
    head = subprocess.run(["git", "-C", str(pms), "rev-parse", "HEAD"], check=True,
                          capture_output=True, text=True).stdout.strip()
    stubs = area / "stubs"
    stubs.mkdir()
    (stubs / "docker").write_text(DOCKER_STUB)
    (stubs / "docker").chmod(0o755)
    for name in ("work", "home"):
        (area / name).mkdir()
    if AS_USER:
        for path in [area, *area.rglob("*")]:
            os.lchown(path, NOBODY, NOBODY)
    env = {"PATH": f"{stubs}:/usr/bin:/bin", "HOME": str(area / "home"), "LC_ALL": "C",
           "ZEROG_SIM_BUILD_SECONDS": "0.3"}
    return {"pms": pms, "head": head, "work": area / "work", "stubs": stubs, "env": env}


def build(co: dict, as_root: bool = False, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(co["pms"] / "build.sh")], cwd=co["work"], env={**co["env"], **env},
                          capture_output=True, text=True, timeout=120,
                          **({} if as_root else AS_USER), check=False)


def running_tasks(stdout: str) -> list[int]:
    return [int(line.split()[3]) for line in stdout.splitlines()
            if line.startswith("NOTE: Running task ")]


def summary(reused: int) -> str:
    return (f"NOTE: Tasks Summary: Attempted {TASKS} tasks of which {reused} didn't need to be "
            "rerun and all succeeded.")


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
def test_build_writes_dist_and_images(generation: str, repos: Path, area: Path) -> None:
    """Tarballs in repro-build/dist, unpacked into ./images (relative to the CWD)."""
    gen = GENERATIONS[generation]
    co = checkout(repos, area, generation)
    (co["work"] / "images" / f"dstack-nvidia-{gen['version']}").mkdir(parents=True)
    stale = co["work"] / "images" / f"dstack-nvidia-{gen['version']}" / "stale-file"
    stale.write_text("from an older build\n")
    if AS_USER:
        for path in (stale.parent.parent, stale.parent, stale):
            os.lchown(path, NOBODY, NOBODY)
    proc = build(co)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert running_tasks(proc.stdout) == list(range(1, TASKS + 1))
    lines = proc.stdout.splitlines()
    assert lines[-2:] == [summary(0), "Release tar files are in "
                          f"{co['pms']}/meta-dstack-nvidia/repro-build/dist/"]

    dist = co["pms"] / "meta-dstack-nvidia" / "repro-build" / "dist"
    dists = [f"dstack-nvidia-{gen['version']}", f"dstack-nvidia-dev-{gen['version']}"]
    assert sorted(p.name for p in dist.iterdir()) == sorted(f"{d}.tar.gz" for d in dists)
    assert not (co["pms"] / "images").exists()
    assert sorted(p.name for p in (co["work"] / "images").iterdir()) == sorted(dists)
    assert not stale.exists()

    for dist_name in dists:
        image = co["work"] / "images" / dist_name
        assert sorted(p.name for p in image.iterdir()) == gen["files"]
        assert all(0 < (image / f).stat().st_size <= 8192 for f in gen["files"])
        top = gen["top"].format(dist=dist_name)
        with tarfile.open(dist / f"{dist_name}.tar.gz") as tar:
            assert tar.getnames() == [top] + [f"{top}/{f}" for f in gen["files"]]
        raw = {f: (image / f).read_bytes() for f in gen["files"]}
        metadata = json.loads(raw["metadata.json"])
        if generation == "0.5.5":
            rootfs = raw["rootfs.img.verity"]
            assert metadata == {
                "bios": "ovmf.fd", "kernel": "bzImage",
                "cmdline": CMDLINE_05.format(sha256(rootfs), len(rootfs)),
                "initrd": "initramfs.cpio.gz", "rootfs": "rootfs.img.verity",
                "version": "0.5.5", "git_revision": co["head"], "shared_ro": True,
                "is_dev": "-dev-" in dist_name}
            assert list(metadata) == ["bios", "kernel", "cmdline", "initrd", "rootfs",
                                      "version", "git_revision", "shared_ro", "is_dev"]
            sums = "".join(f"{sha256(raw[f])}  {f}\n"
                           for f in ("ovmf.fd", "bzImage", "initramfs.cpio.gz", "metadata.json"))
            assert raw["sha256sum.txt"].decode() == sums
            assert raw["digest.txt"].decode() == sha256(sums.encode()) + "\n"
        else:
            assert metadata == {
                "bios": "ovmf.fd", "kernel": "bzImage", "cmdline": CMDLINE_03,
                "initrd": "initramfs.cpio.gz", "rootfs": "rootfs.iso",
                "rootfs_hash": sha256(raw["rootfs.cpio"]), "version": "0.3.3",
                "git_revision": co["head"], "shared_ro": True, "is_dev": "-dev-" in dist_name}
            assert list(metadata)[5] == "rootfs_hash"
            listed = [f for f in gen["files"] if not f.endswith("sum.txt")]
            assert raw["sha256sum.txt"].decode() == "".join(
                f"{sha256(raw[f])}  {f}\n" for f in listed)
            assert raw["md5sum.txt"].decode() == "".join(
                f"{hashlib.md5(raw[f]).hexdigest()}  {f}\n" for f in listed)
    state = co["pms"] / "meta-dstack-nvidia" / "repro-build" / "build-a" / "bb-build"
    assert len(list((state / "tmp" / "stamps").iterdir())) == TASKS


@pytest.mark.parametrize("generation", sorted(GENERATIONS))
def test_built_image_fits_its_dstack(generation: str, repos: Path, area: Path, python_dir: Path) -> None:
    """The checkout's own dstack accepts the image it built (new, then run for 0.5.5)."""
    gen = GENERATIONS[generation]
    co = checkout(repos, area, generation)
    assert build(co).returncode == 0
    work = co["work"]
    (work / "docker-compose.yaml").write_text("services: {}\n")
    dstack = co["pms"] / "meta-dstack-nvidia" / "scripts" / "bin" / "dstack"
    env = {"PATH": "/usr/bin:/bin", "HOME": str(work), "LC_ALL": "C"}
    image = f"images/dstack-nvidia-{gen['version']}"
    new = subprocess.run(["/usr/bin/python3", str(dstack), "new", "docker-compose.yaml", "-o",
                          "cvm", "-i", image], cwd=work, env=env, capture_output=True, text=True,
                         timeout=30, **AS_USER, check=False)
    assert new.returncode == 0, new.stderr
    if generation == "0.3":
        metadata = json.loads((work / image / "metadata.json").read_text())
        assert json.loads((work / "cvm/shared/config.json").read_text())["rootfs_hash"] == \
            metadata["rootfs_hash"]
        return
    (co["stubs"] / "qemu-img").symlink_to(SIM_DIR / "bin" / "qemu-img")
    run = subprocess.run(["/usr/bin/python3", str(dstack), "run", "cvm", "--dry-run"], cwd=work,
                         env={**env, "PATH": f"{co['stubs']}:{python_dir}:/usr/bin:/bin"}, capture_output=True, text=True,
                         timeout=30, **AS_USER, check=False)
    assert run.returncode == 0, run.stderr
    vm_config = json.loads(json.loads((work / "cvm/shared/.sys-config.json").read_text())[
        "vm_config"])
    assert vm_config["os_image_hash"] == (work / image / "digest.txt").read_text().strip()
    assert f"file={image}/rootfs.img.verity,if=none,id=virtio-disk0,format=raw \n" in run.stdout


def test_root_is_refused(repos: Path, area: Path) -> None:
    """bitbake runs as the invoking uid; as root poky's sanity check stops the build."""
    if os.geteuid() != 0:
        pytest.skip("needs root")
    co = checkout(repos, area, "0.5.5")
    proc = build(co, as_root=True)
    assert proc.returncode == 1
    assert proc.stderr == POKY_ROOT
    assert running_tasks(proc.stdout) == []
    assert not (co["pms"] / "meta-dstack-nvidia" / "repro-build" / "dist").exists()
    assert not (co["work"] / "images").exists()


@pytest.mark.parametrize(("case", "env", "rc", "stderr"), [
    ("docker-daemon-unreachable", {"DOCKER_DOWN": "1"}, 1, DOCKER_DOWN + "\n"),
    ("docker-not-installed", {"NO_DOCKER": "1"}, 127,
     "{repro}: line {line}: docker: command not found\n"),
    ("not-x86_64", {"FAKE_ARCH": "aarch64"}, 1,
     "exec /bin/sh: exec format error\n"
     "The command '/bin/sh -c apt-get update' returned a non-zero code: 1\n"),
])
def test_build_prerequisites(case: str, env: dict, rc: int, stderr: str, repos: Path,
                             area: Path) -> None:
    """Docker usable by the user and an x86_64 host, else the build fails before any task."""
    co = checkout(repos, area, "0.5.5")
    extra = dict(env)
    if extra.pop("NO_DOCKER", None):
        (co["stubs"] / "docker").unlink()
    arch = extra.pop("FAKE_ARCH", None)
    if arch:
        uname = co["stubs"] / "uname"
        uname.write_text(f"#!/bin/sh\necho {arch}\n")
        uname.chmod(0o755)
    proc = build(co, **extra)
    # build.sh calls "$HERE/$META_SUBDIR/repro-build/..." with META_SUBDIR=meta-dstack-nvidia/
    repro = f"{co['pms']}/meta-dstack-nvidia//repro-build/repro-build.sh"
    docker_line = next(n for n, text in enumerate(
        Path(repro).read_text().splitlines(), start=1) if text == "docker info > /dev/null")
    assert proc.returncode == rc
    assert proc.stderr == stderr.format(repro=repro, line=docker_line)
    assert running_tasks(proc.stdout) == []
    assert not (co["pms"] / "meta-dstack-nvidia" / "repro-build" / "build-a").exists()


def test_interrupted_build_resumes(repos: Path, area: Path) -> None:
    """SIGTERM mid-build; the next run continues after the last finished task."""
    co = checkout(repos, area, "0.3")
    proc = subprocess.Popen([str(co["pms"] / "build.sh")], cwd=co["work"],
                            env={**co["env"], "ZEROG_SIM_BUILD_SECONDS": "20"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **AS_USER)
    try:
        for line in proc.stdout:
            if line.startswith(f"NOTE: Running task 6 of {TASKS} "):
                break
        os.killpg(proc.pid, signal.SIGTERM)
        proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode != 0
    dist = co["pms"] / "meta-dstack-nvidia" / "repro-build" / "dist"
    assert not dist.exists()
    stamps = co["pms"] / "meta-dstack-nvidia/repro-build/build-a/bb-build/tmp/stamps"
    done = len(list(stamps.iterdir()))
    assert 5 <= done < TASKS

    again = build(co)
    assert again.returncode == 0, again.stderr
    assert running_tasks(again.stdout) == list(range(done + 1, TASKS + 1))
    assert summary(done) in again.stdout.splitlines()
    assert sorted(p.name for p in (co["work"] / "images").iterdir()) == [
        "dstack-nvidia-0.3.3", "dstack-nvidia-dev-0.3.3"]


def test_rebuild_reuses_everything_and_is_reproducible(repos: Path, area: Path) -> None:
    """A second build runs no task and produces byte-identical tarballs."""
    co = checkout(repos, area, "0.5.5")
    assert build(co).returncode == 0
    dist = co["pms"] / "meta-dstack-nvidia" / "repro-build" / "dist"
    first = {p.name: p.read_bytes() for p in dist.iterdir()}
    again = build(co)
    assert again.returncode == 0, again.stderr
    assert running_tasks(again.stdout) == []
    assert summary(TASKS) in again.stdout.splitlines()
    assert {p.name: p.read_bytes() for p in dist.iterdir()} == first


def test_repro_build_without_n_checks_reproducibility(repos: Path, area: Path) -> None:
    """Without -n, a second build into build-b is compared with build-a."""
    co = checkout(repos, area, "0.5.5")
    repro = co["pms"] / "meta-dstack-nvidia" / "repro-build" / "repro-build.sh"
    proc = subprocess.run([str(repro)], cwd=co["work"], env=co["env"], capture_output=True,
                          text=True, timeout=120, **AS_USER, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "dstack-nvidia-0.5.5: reproducible" in proc.stdout.splitlines()
    assert "dstack-nvidia-dev-0.5.5: reproducible" in proc.stdout.splitlines()
    assert (repro.parent / "build-b" / "images" / "dstack-nvidia-0.5.5").is_dir()
