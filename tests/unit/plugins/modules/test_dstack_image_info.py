"""Tests of the dstack_image_info module: image directories written into tmp_path per case.

Each case of the YAML table beside this file names a ``fixture`` (``image`` for a 0.5.5 or 0.3.3
image laid out as dstack-cli.md section 2 describes it, optionally ``dev`` and in an SDK
``checkout``), a list of ``mutate`` steps applied to it, the module ``input`` and the expected
``output`` (a subset of the result). ``@TMP@`` stands for the case's temporary directory.
"""

from __future__ import annotations

import hashlib
import json
import os

import pytest
import yaml
from ansible.module_utils.common import warnings as ansible_warnings
from ansible_collections.zerog.compute.plugins.modules import dstack_image_info
from ansible_collections.zerog.compute.tests.unit.harness import assert_subset, case_file, run_module, substitute

REVISION = "25c25025c556ab2f797eeda3bab433f38a8ffb7a"
CMDLINE_05 = ("console=ttyS0 init=/init panic=1 net.ifnames=0 biosdevname=0 mce=off oops=panic pci=noearly "
              "pci=nommconf random.trust_cpu=y random.trust_bootloader=n tsc=reliable no-kvmclock "
              "dstack.rootfs_hash={root} dstack.rootfs_size={size}")


def _load():
    with open(case_file(__file__), encoding="utf-8") as handle:
        return [pytest.param(case, id=case["id"]) for case in yaml.safe_load(handle)]


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def image_files(version: str, dev: bool, revision: str | None) -> dict[str, bytes]:
    """A small but well-formed image of either generation."""
    files = {name: f"{name} of {version} dev={dev}\n".encode() * 16 for name in ("bzImage", "initramfs.cpio.gz", "ovmf.fd")}
    if version.startswith("0.3."):
        files["rootfs.cpio"] = b"cpio archive\n" * 32
        files["rootfs.iso"] = b"iso image\n" * 32
        meta = {"bios": "ovmf.fd", "kernel": "bzImage",
                "cmdline": "console=ttyS0 init=/init dstack.fde=1 panic=1 systemd.unified_cgroup_hierarchy=0",
                "initrd": "initramfs.cpio.gz", "rootfs": "rootfs.iso", "rootfs_hash": _sha(files["rootfs.cpio"]),
                "version": version, "shared_ro": True, "is_dev": dev}
        if revision is not None:
            meta["git_revision"] = revision
        files["metadata.json"] = json.dumps(meta, indent=4).encode()
        names = sorted(files)
        files["md5sum.txt"] = "".join(f"{hashlib.md5(files[n]).hexdigest()}  {n}\n" for n in names).encode()
        files["sha256sum.txt"] = "".join(f"{_sha(files[n])}  {n}\n" for n in names).encode()
        return files
    files["rootfs.img.verity"] = b"verity\n" * 512
    meta = {"bios": "ovmf.fd", "kernel": "bzImage",
            "cmdline": CMDLINE_05.format(root=_sha(b"root"), size=len(files["rootfs.img.verity"])),
            "initrd": "initramfs.cpio.gz", "rootfs": "rootfs.img.verity", "version": version,
            "git_revision": revision or "", "shared_ro": True, "is_dev": dev}
    files["metadata.json"] = json.dumps(meta).encode()
    files["sha256sum.txt"] = "".join(
        f"{_sha(files[n])}  {n}\n" for n in ("ovmf.fd", "bzImage", "initramfs.cpio.gz", "metadata.json")).encode()
    files["digest.txt"] = (_sha(files["sha256sum.txt"]) + "\n").encode()
    return files


def write_fixture(tmp: str, fixture: dict) -> str:
    """Write the fixture; returns the image directory."""
    version = fixture.get("version", "0.5.5")
    dev = fixture.get("dev", False)
    name = f"dstack-nvidia-dev-{version}" if dev else f"dstack-nvidia-{version}"
    if fixture.get("checkout"):
        sdk = os.path.join(tmp, "sdk")
        conf = os.path.join(sdk, "meta-dstack-nvidia", "meta-dstack", "conf", "distro", "dstack.conf")
        os.makedirs(os.path.dirname(conf))
        with open(conf, "w", encoding="utf-8") as out:
            out.write(f'DISTRO_NAME = "dstack"\nDISTRO_VERSION = "{fixture["checkout"]}"\n')
        image_dir = os.path.join(sdk, "images", name)
    else:
        image_dir = os.path.join(tmp, name)
    if fixture.get("image", True):
        os.makedirs(image_dir)
        for fname, data in image_files(version, dev, fixture.get("revision", REVISION)).items():
            with open(os.path.join(image_dir, fname), "wb") as out:
                out.write(data)
    return image_dir


def mutate(image_dir: str, steps: list[dict]) -> None:
    """Damage the image the way a step says."""
    for step in steps:
        path = os.path.join(image_dir, step.get("file", ""))
        if "remove" in step:
            os.remove(os.path.join(image_dir, step["remove"]))
        elif "append" in step:
            with open(path, "ab") as out:
                out.write(step["append"].encode())
        elif "write" in step:
            with open(path, "wb") as out:
                out.write(step["write"].encode())
        elif "truncate" in step:
            os.truncate(path, step["truncate"])
        elif "metadata" in step:
            # Change metadata.json and re-seal the sums, as a different (but complete) build would.
            meta_path = os.path.join(image_dir, "metadata.json")
            with open(meta_path, encoding="utf-8") as src:
                meta = json.load(src)
            meta.update(step["metadata"])
            for key in [k for k, v in step["metadata"].items() if v is None]:
                del meta[key]
            with open(meta_path, "w", encoding="utf-8") as out:
                json.dump(meta, out)
            reseal(image_dir)
        else:
            raise AssertionError(f"unknown step {step}")


def reseal(image_dir: str) -> None:
    """Rewrite sha256sum.txt (same entries) and digest.txt after a change."""
    sums = os.path.join(image_dir, "sha256sum.txt")
    with open(sums, encoding="utf-8") as src:
        names = [line.split()[1] for line in src if line.strip()]
    data = {}
    for name in names:
        with open(os.path.join(image_dir, name), "rb") as src:
            data[name] = src.read()
    with open(sums, "w", encoding="utf-8") as out:
        out.write("".join(f"{_sha(data[n])}  {n}\n" for n in names))
    if os.path.exists(os.path.join(image_dir, "digest.txt")):
        with open(sums, "rb") as src:
            digest = _sha(src.read())
        with open(os.path.join(image_dir, "digest.txt"), "w", encoding="utf-8") as out:
            out.write(digest + "\n")


@pytest.mark.parametrize("case", _load())
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_dstack_image_info(case, check_mode, tmp_path):
    tmp = str(tmp_path)
    image_dir = write_fixture(tmp, case.get("fixture", {}))
    mutate(image_dir, case.get("mutate", []))
    result = run_module(dstack_image_info.main, substitute(case["input"], {"@TMP@": tmp}), check_mode=check_mode)
    expected = substitute(case["output"], {"@TMP@": tmp})
    assert result.failed == expected.pop("failed", False), result.result
    warnings = expected.pop("warnings", [])
    assert [w.event.msg for w in ansible_warnings.get_warnings()] == warnings
    assert_subset(expected, result.result)
    if not result.failed:
        assert result.changed is False
        assert sorted(result["files"]) == result["files"]


def test_digest_is_sha256_of_sha256sum(tmp_path):
    """The digest returned equals digest.txt of a 0.5 image and is computed for a 0.3 one."""
    for version in ("0.5.5", "0.3.3"):
        image_dir = write_fixture(str(tmp_path / version), {"version": version})
        with open(os.path.join(image_dir, "sha256sum.txt"), "rb") as src:
            want = _sha(src.read())
        result = run_module(dstack_image_info.main, {"path": image_dir})
        assert result["digest"] == want
        assert result["ok"] is True
