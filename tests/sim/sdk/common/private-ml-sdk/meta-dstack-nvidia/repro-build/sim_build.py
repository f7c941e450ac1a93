#!/usr/bin/env python
"""Simulated guest image build for the zerog.compute stand-in of nearai/private-ml-sdk.

Upstream ``repro-build.sh`` builds a Docker image (``Dockerfile.repro``) and runs bitbake in it
for hours.  None of that can run in the simulation, so ``repro-build.sh`` calls this script for
the two Docker steps:

``builder-image``
    stands for ``docker build ... -t dstack-build``; prints a cached-build transcript.  The
    caller has already checked that ``docker info`` works for the invoking user.
``container --build-dir DIR --meta-dir META [--tar-release]``
    stands for ``docker run --user $(id -u):$(id -g) ... build.sh guest ./bb-build``:

    * refuses to run as root with poky's sanity-check message (bitbake runs as the host uid),
    * runs a fixed list of bitbake-like tasks, printing ``NOTE: Running task N of M (...)``
      over ``ZEROG_SIM_BUILD_SECONDS`` seconds in total (default 8),
    * keeps one stamp per finished task under ``DIR/bb-build/tmp/stamps`` so that a build
      that was killed resumes at the first unfinished task, like bitbake with its stamps,
    * then writes the images like ``mkimage.sh``: ``DIR/images/dstack-nvidia[-dev]-<v>/`` and,
      with ``--tar-release``, ``DIR/images/dstack-nvidia[-dev]-<v>.tar.gz``.

``META`` is ``$REPO_ROOT/$META_SUBDIR`` (the meta-dstack-nvidia directory).  The version comes
from ``DISTRO_VERSION`` in ``META/meta-dstack/conf/distro/dstack.conf``, as upstream, and
``git_revision`` is the checkout's HEAD.  0.5.x
images hold bzImage, initramfs.cpio.gz, ovmf.fd, rootfs.img.verity, metadata.json,
sha256sum.txt (over ovmf.fd, bzImage, initramfs.cpio.gz, metadata.json) and digest.txt (sha256
of sha256sum.txt); their tarballs have a top-level ``dstack-nvidia[-dev]-<v>/`` directory.
0.3.x images hold bzImage, initramfs.cpio.gz, ovmf.fd, rootfs.cpio, rootfs.iso, metadata.json
(with ``rootfs_hash`` = sha256 of rootfs.cpio), md5sum.txt and sha256sum.txt; their tarballs
were made from ``.``.  Payload files are small deterministic placeholders, and archives are
reproducible (fixed mtimes and owners).
"""

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import time

DEFAULT_SECONDS = 8.0
CMDLINE_05 = ("console=ttyS0 init=/init panic=1 net.ifnames=0 biosdevname=0 mce=off oops=panic "
              "pci=noearly pci=nommconf random.trust_cpu=y random.trust_bootloader=n "
              "tsc=reliable no-kvmclock dstack.rootfs_hash={root_hash} "
              "dstack.rootfs_size={data_size}")
CMDLINE_03 = "console=ttyS0 init=/init dstack.fde=1 panic=1 systemd.unified_cgroup_hierarchy=0"
ROOT_REFUSAL = """\
ERROR:  OE-core's config sanity checker detected a potential misconfiguration.
    Either fix the cause of this error or at your own risk disable the checker (see sanity.conf).
    Following is the list of potential problems / advisories:

    Do not use Bitbake as root.

Summary: There was 1 ERROR message, returning a non-zero exit code."""
RECIPES = (
    ("meta-dstack/recipes-core/dstack-ovmf/dstack-ovmf_git.bb",
     ("do_fetch", "do_unpack", "do_patch", "do_configure", "do_compile", "do_deploy")),
    ("meta-dstack/recipes-kernel/linux/linux-yocto_%.bbappend",
     ("do_fetch", "do_unpack", "do_kernel_configme", "do_compile", "do_deploy")),
    ("meta-dstack/recipes-core/dstack-guest/dstack-guest.bb",
     ("do_fetch", "do_unpack", "do_configure", "do_compile", "do_install", "do_package")),
    ("meta-nvidia/recipes-graphics/nvidia/nvidia.bb",
     ("do_fetch", "do_unpack", "do_compile", "do_install", "do_package")),
    ("meta-dstack/recipes-core/images/dstack-initramfs.bb",
     ("do_rootfs", "do_image", "do_image_complete")),
    ("meta-dstack/recipes-core/images/dstack-nvidia-rootfs.bb",
     ("do_rootfs", "do_image", "do_image_complete")),
    ("meta-dstack/recipes-core/images/dstack-nvidia-dev-rootfs.bb",
     ("do_rootfs", "do_image", "do_image_complete")),
)


def say(line: str = "", err: bool = False) -> None:
    """Print one line unbuffered (the build is watched while it runs)."""
    print(line, file=sys.stderr if err else sys.stdout, flush=True)


def distro_version(meta_dir: str) -> str:
    """DISTRO_VERSION from the layer's dstack.conf."""
    conf = os.path.join(meta_dir, "meta-dstack", "conf", "distro", "dstack.conf")
    with open(conf) as src:
        match = re.search(r'^DISTRO_VERSION\s*\??=\s*"([^"]+)"', src.read(), re.MULTILINE)
    if not match:
        raise SystemExit(f"ERROR: DISTRO_VERSION not set in {conf}")
    return match.group(1)


def git_value(meta_dir: str, *args: str) -> str:
    """Output of a git query on the checkout, or "" when it is not a usable git work tree."""
    proc = subprocess.run(["git", "-C", meta_dir, *args], capture_output=True, text=True, check=False)
    return proc.stdout.strip() if proc.returncode == 0 else ""


def placeholder(name: str, dist: str, size: int = 3072) -> bytes:
    """A few KB of deterministic filler standing in for a real image file."""
    data = f"zerog-sim placeholder {name} of {dist}\n".encode()
    block = data
    while len(data) < size:
        block = hashlib.sha256(block).digest()
        data += block
    return data[:size]


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_files(version: str, dist: str, dev: bool, revision: str) -> dict[str, bytes]:
    """The files of one image directory, in the layout of the generation's mkimage.sh."""
    files = {name: placeholder(name, dist) for name in ("bzImage", "initramfs.cpio.gz", "ovmf.fd")}
    if version.startswith("0.3."):
        files["rootfs.cpio"] = placeholder("rootfs.cpio", dist, 4096)
        files["rootfs.iso"] = placeholder("rootfs.iso", dist, 4096)
        metadata = {
            "bios": "ovmf.fd",
            "kernel": "bzImage",
            "cmdline": CMDLINE_03,
            "initrd": "initramfs.cpio.gz",
            "rootfs": "rootfs.iso",
            "rootfs_hash": sha256(files["rootfs.cpio"]),
            "version": version,
            "git_revision": revision,
            "shared_ro": True,
            "is_dev": dev,
        }
        files["metadata.json"] = (json.dumps(metadata, indent=4) + "\n").encode()
        listed = sorted(files)
        files["md5sum.txt"] = "".join(
            f"{hashlib.md5(files[n]).hexdigest()}  {n}\n" for n in listed).encode()
        files["sha256sum.txt"] = "".join(f"{sha256(files[n])}  {n}\n" for n in listed).encode()
        return files
    files["rootfs.img.verity"] = placeholder("rootfs.img.verity", dist, 4096)
    rootfs = files["rootfs.img.verity"]
    metadata = {
        "bios": "ovmf.fd",
        "kernel": "bzImage",
        "cmdline": CMDLINE_05.format(root_hash=sha256(rootfs), data_size=len(rootfs)),
        "initrd": "initramfs.cpio.gz",
        "rootfs": "rootfs.img.verity",
        "version": version,
        "git_revision": revision,
        "shared_ro": True,
        "is_dev": dev,
    }
    files["metadata.json"] = (json.dumps(metadata, indent=4) + "\n").encode()
    files["sha256sum.txt"] = "".join(
        f"{sha256(files[n])}  {n}\n"
        for n in ("ovmf.fd", "bzImage", "initramfs.cpio.gz", "metadata.json")).encode()
    files["digest.txt"] = (sha256(files["sha256sum.txt"]) + "\n").encode()
    return files


def write_tarball(path: str, files: dict[str, bytes], top: str, mtime: int) -> None:
    """A reproducible .tar.gz; ``top`` is the directory entry that holds the files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as tar:
        members = [(top, None)] + [(f"{top}/{name}", files[name]) for name in sorted(files)]
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.mtime = mtime
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tar.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tar.addfile(info, io.BytesIO(data))
    with open(path + ".tmp", "wb") as raw, gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=mtime) as gz:
        gz.write(buf.getvalue())
    os.replace(path + ".tmp", path)


def build_seconds() -> float:
    """Total simulated task time from ZEROG_SIM_BUILD_SECONDS."""
    raw = os.environ.get("ZEROG_SIM_BUILD_SECONDS", "")
    try:
        value = float(raw) if raw else DEFAULT_SECONDS
    except ValueError:
        raise SystemExit(f"ERROR: ZEROG_SIM_BUILD_SECONDS must be a number, not {raw!r}") from None
    return max(value, 0.0)


def run_tasks(build_dir: str) -> None:
    """Run (or resume) the simulated bitbake tasks."""
    tasks = [(recipe, task) for recipe, names in RECIPES for task in names]
    stamps = os.path.join(build_dir, "bb-build", "tmp", "stamps")
    os.makedirs(stamps, exist_ok=True)
    delay = build_seconds() / len(tasks)
    say("Loading cache...done.")
    say("Parsing recipes...done.")
    say("NOTE: Resolving any missing task queue dependencies")
    say("Initialising tasks...done.")
    say("NOTE: Executing Tasks")
    reused = 0
    for number, (recipe, task) in enumerate(tasks, start=1):
        stamp = os.path.join(stamps, f"{number:03d}.{os.path.basename(recipe)}.{task}")
        if os.path.exists(stamp):
            reused += 1
            continue
        say(f"NOTE: Running task {number} of {len(tasks)} "
            f"(/meta-dstack/meta-dstack-nvidia/{recipe}:{task})")
        time.sleep(delay)
        with open(stamp, "w"):
            pass
    say(f"NOTE: Tasks Summary: Attempted {len(tasks)} tasks of which {reused} didn't need to "
        "be rerun and all succeeded.")


def container(build_dir: str, meta_dir: str, tar_release: bool) -> int:
    """The part upstream runs inside the ``dstack-build`` container."""
    if os.getuid() == 0:
        say(ROOT_REFUSAL, err=True)
        return 1
    version = distro_version(meta_dir)
    run_tasks(build_dir)
    revision = git_value(meta_dir, "rev-parse", "HEAD")
    mtime = int(git_value(meta_dir, "log", "-1", "--format=%ct") or 0)
    images = os.path.join(build_dir, "images")
    os.makedirs(images, exist_ok=True)
    for dev in (False, True):
        dist = f"dstack-nvidia-dev-{version}" if dev else f"dstack-nvidia-{version}"
        files = image_files(version, dist, dev, revision)
        target = os.path.join(images, dist)
        os.makedirs(target, exist_ok=True)
        for name, data in files.items():
            with open(os.path.join(target, name), "wb") as out:
                out.write(data)
        if tar_release:
            top = "." if version.startswith("0.3.") else dist
            write_tarball(os.path.join(images, f"{dist}.tar.gz"), files, top, mtime)
    return 0


def builder_image(meta_dir: str) -> int:
    """Transcript of a cached ``docker build -t dstack-build -f Dockerfile.repro``."""
    base = "ubuntu:22.04" if distro_version(meta_dir).startswith("0.3.") else "ubuntu:24.04"
    for line in (
        "Sending build context to Docker daemon  2.048kB",
        f"Step 1/4 : FROM {base}",
        " ---> Using cache",
        "Step 2/4 : RUN apt-get update && apt-get install -y build-essential chrpath diffstat "
        "lz4 wireguard-tools python3 locales git file gawk wget libclang-dev xorriso",
        " ---> Using cache",
        "Step 3/4 : RUN locale-gen en_US.UTF-8",
        " ---> Using cache",
        "Step 4/4 : ENV LANG=en_US.UTF-8",
        " ---> Using cache",
        "Successfully tagged dstack-build:latest",
    ):
        say(line)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", maxsplit=1)[0])
    steps = parser.add_subparsers(dest="step", required=True)
    image = steps.add_parser("builder-image")
    image.add_argument("--meta-dir", required=True)
    run = steps.add_parser("container")
    run.add_argument("--build-dir", required=True)
    run.add_argument("--meta-dir", required=True)
    run.add_argument("--tar-release", action="store_true")
    args = parser.parse_args()
    if args.step == "builder-image":
        return builder_image(args.meta_dir)
    return container(args.build_dir, args.meta_dir, args.tar_release)


if __name__ == "__main__":
    sys.exit(main())
