"""The kit's ``qemu-img`` and ``modprobe`` stand-ins (``zerog_sim.qemu_img``, ``zerog_sim.modprobe``).

Both are what ``dstack`` calls on the host: ``qemu-img create`` for the data disk of ``run`` and
``modprobe vfio`` / ``modprobe vfio_pci`` for ``tag-vfio``. The modprobe cases run in-process
(``os.geteuid`` patched for the unprivileged ones) and check the fixture tree afterwards:
``sys/module/<name>/{initstate,refcnt}`` and ``proc/modules`` in the kernel's format, which must
agree with each other like on a real host. A few cases run the ``bin/`` wrappers as processes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

SIM_DIR = Path(__file__).resolve().parents[1]
BIN_DIR = SIM_DIR / "bin"
sys.path.insert(0, str(SIM_DIR))
from zerog_sim import hostfs, modprobe, profiles, qemu_img  # noqa: E402

LIVE = "Live 0x0000000000000000"

# --------------------------------------------------------------------------------------------
# qemu-img


@pytest.mark.parametrize(("argv", "rc", "stdout", "stderr", "size"), [
    (["create", "-f", "qcow2", "d.img", "200G"], 0,
     "Formatting 'd.img', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib "
     "size=214748364800 lazy_refcounts=off refcount_bits=16\n", "", 214748364800),
    (["create", "-f", "qcow2", "d.img", "0G"], 0,
     "Formatting 'd.img', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib "
     "size=0 lazy_refcounts=off refcount_bits=16\n", "", 0),
    (["create", "-f", "qcow2", "d.img", "1.5k"], 0,
     "Formatting 'd.img', fmt=qcow2 cluster_size=65536 extended_l2=off compression_type=zlib "
     "size=1536 lazy_refcounts=off refcount_bits=16\n", "", 1536),
    (["create", "-q", "-f", "qcow2", "d.img", "1M"], 0, "", "", 1048576),
    (["create", "-f", "raw", "d.img", "4k"], 0, "Formatting 'd.img', fmt=raw size=4096\n", "",
     4096),
    (["create", "-f", "qcow2", "d.img", "20X"], 1, "",
     "qemu-img: Invalid image size specified. You may use k, M, G, T, P or E suffixes for\n"
     "qemu-img: kilobytes, megabytes, gigabytes, terabytes, petabytes and exabytes.\n", None),
    (["create", "-f", "qcow2", "d.img"], 1, "",
     "qemu-img: d.img: Image creation needs a size parameter\n", None),
    (["create", "-f", "qcow2", "no/such/d.img", "1G"], 1,
     "Formatting 'no/such/d.img', fmt=qcow2 cluster_size=65536 extended_l2=off "
     "compression_type=zlib size=1073741824 lazy_refcounts=off refcount_bits=16\n",
     "qemu-img: no/such/d.img: Could not create 'no/such/d.img': No such file or directory\n",
     None),
    (["frobnicate"], 1, "", "qemu-img: Command not found: frobnicate\n", None),
    (["convert", "a", "b"], 70, "", "qemu-img: zerog-sim: not simulated: convert\n", None),
])  # fmt: skip
def test_qemu_img(argv: list[str], rc: int, stdout: str, stderr: str, size: int | None, tmp_path: Path,
                  python_dir: Path) -> None:
    """bin/qemu-img as dstack runs it (found on PATH, run through ``#!/usr/bin/env python``)."""
    env = {"PATH": f"{python_dir}:/usr/bin:/bin"}
    proc = subprocess.run([str(BIN_DIR / "qemu-img"), *argv], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=30, check=False)  # fmt: skip
    assert (proc.returncode, proc.stdout, proc.stderr) == (rc, stdout, stderr)
    if size is None:
        assert not (tmp_path / "d.img").exists()
        return
    info = subprocess.run([str(BIN_DIR / "qemu-img"), "info", "d.img"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, check=True).stdout  # fmt: skip
    assert f"({size} bytes)" in info.splitlines()[2]


@pytest.mark.parametrize(("version_text", "expected"), [
    ("QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1.4+tdx1.1)",
     "qemu-img version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1.4+tdx1.1)\n"
     "Copyright (c) 2003-2023 Fabrice Bellard and the QEMU Project developers\n"),
    ("QEMU emulator version 10.1.0 (Debian 1:10.1.0+ds-5ubuntu2)",
     "qemu-img version 10.1.0 (Debian 1:10.1.0+ds-5ubuntu2)\n"
     "Copyright (c) 2003-2025 Fabrice Bellard and the QEMU Project developers\n"),
])  # fmt: skip
def test_qemu_img_version_follows_the_profile(version_text: str, expected: str, tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str]) -> None:
    """``--version`` names the profile's QEMU build and its release year, like qemu-system-x86_64."""
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"profile": "t", "root": str(tmp_path), "qemu": {"version_text": version_text}}))
    monkeypatch.setenv("ZEROG_SIM_STATE", str(state))
    assert qemu_img.main(["--version"]) == 0
    assert capsys.readouterr().out == expected


# --------------------------------------------------------------------------------------------
# modprobe, in-process


def proc_modules(*lines: str) -> str:
    return "".join(f"{line}\n" for line in lines)


VFIO_PCI_LOADED = proc_modules(  # after `modprobe vfio_pci` on a kernel without any of them
    f"vfio_pci 16384 0 - {LIVE}",
    f"vfio_pci_core 94208 1 vfio_pci, {LIVE}",
    f"irqbypass 12288 1 vfio_pci_core, {LIVE}",
    f"vfio_iommu_type1 49152 0 - {LIVE}",
    f"vfio 69632 3 vfio_iommu_type1,vfio_pci_core,vfio_pci, {LIVE}",
    f"iommufd 110592 1 vfio, {LIVE}",
)
VFIO_PCI_MODULES = ["iommufd", "irqbypass", "vfio", "vfio_iommu_type1", "vfio_pci", "vfio_pci_core"]
MISSING = "modprobe: FATAL: Module {name} not found in directory /lib/modules/{release}\n"

# (id, preloaded (name, refcnt), argv, as_root, rc, stderr, loaded modules, proc/modules or None)
MODPROBE_CASES = [
    ("vfio_pci", [], ["vfio_pci"], True, 0, "", VFIO_PCI_MODULES, VFIO_PCI_LOADED),
    ("dash-name", [], ["vfio-pci"], True, 0, "", VFIO_PCI_MODULES, VFIO_PCI_LOADED),
    ("vfio-with-softdep", [], ["vfio"], True, 0, "", ["iommufd", "vfio", "vfio_iommu_type1"],
     proc_modules(f"vfio_iommu_type1 49152 0 - {LIVE}", f"vfio 69632 1 vfio_iommu_type1, {LIVE}",
                  f"iommufd 110592 1 vfio, {LIVE}")),
    ("extra-words-are-parameters", [], ["msr", "vfio"], True, 0, "", ["msr"],
     proc_modules(f"msr 12288 0 - {LIVE}")),
    ("all", [], ["-a", "msr", "kvm_intel"], True, 0, "", ["irqbypass", "kvm", "kvm_intel", "msr"],
     proc_modules(f"kvm_intel 487424 0 - {LIVE}", f"kvm 1409024 1 kvm_intel, {LIVE}",
                  f"irqbypass 12288 1 kvm, {LIVE}", f"msr 12288 0 - {LIVE}")),
    ("nvidia-is-tainted", [], ["nvidia"], True, 0, "", ["nvidia"],
     proc_modules(f"nvidia 104071168 0 - {LIVE} (OE)")),
    ("unknown", [], ["nosuchmod"], True, 1, MISSING.format(name="nosuchmod", release="{release}"), [], None),
    ("unknown-quiet", [], ["-q", "nosuchmod"], True, 1, "", [], None),
    ("dry-run", [], ["-n", "vfio"], True, 0, "", [], None),
    ("unprivileged", [], ["vfio"], False, 1,
     "modprobe: ERROR: could not insert 'iommufd': Operation not permitted\n", [], None),
    ("unprivileged-already-loaded", [("vfio", 0)], ["vfio"], False, 0, "", ["vfio"], None),
    ("remove-not-loaded", [], ["-r", "vfio"], True, 1, "modprobe: FATAL: Module vfio is not in kernel.\n", [], None),
    ("remove", [("vfio", 0)], ["-r", "vfio"], True, 0, "", [], ""),
    ("remove-in-use", [("vfio", 2)], ["-r", "vfio"], True, 1, "modprobe: FATAL: Module vfio is in use.\n",
     ["vfio"], None),
    ("remove-unprivileged", [("vfio", 0)], ["-r", "vfio"], False, 1,
     "modprobe: ERROR: could not remove 'vfio': Operation not permitted\n", ["vfio"], None),
    ("no-module", [], [], True, 1, "modprobe: ERROR: missing parameters. See -h.\n", [], None),
    ("bad-option", [], ["--frob", "vfio"], True, 1,
     "modprobe: unrecognized option '--frob'\nmodprobe: ERROR: unknown option\n", [], None),
]


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty fixture root as the active state; returns the root."""
    root = tmp_path / "root"
    root.mkdir()
    state = tmp_path / "state.json"
    state.write_text(json.dumps({"profile": "t", "root": str(root)}))
    monkeypatch.setenv("ZEROG_SIM_STATE", str(state))
    return root


def loaded(root: Path) -> list[str]:
    """Modules the fixture tree shows as loaded (``sys/module/<name>/`` directories)."""
    modules = root / "sys" / "module"
    return sorted(p.name for p in modules.iterdir()) if modules.exists() else []


def assert_consistent(root: Path) -> None:
    """``proc/modules`` and ``sys/module`` tell the same story (names and reference counts)."""
    lines = modprobe.parse_modules((root / "proc" / "modules").read_text())
    live = {p.name for p in (root / "sys" / "module").iterdir() if (p / "initstate").exists()}
    assert {m["name"] for m in lines} == live
    for mod in lines:
        assert (root / "sys" / "module" / mod["name"] / "initstate").read_text() == "live\n"
        assert (root / "sys" / "module" / mod["name"] / "refcnt").read_text() == f"{mod['refcount']}\n"
        for user in mod["used_by"]:
            assert user in live


@pytest.mark.parametrize(("preloaded", "argv", "as_root", "rc", "stderr", "modules", "text"),
                         [case[1:] for case in MODPROBE_CASES], ids=[case[0] for case in MODPROBE_CASES])
def test_modprobe(preloaded: list[tuple[str, int]], argv: list[str], as_root: bool, rc: int, stderr: str,
                  modules: list[str], text: str | None, kernel: Path, monkeypatch: pytest.MonkeyPatch,
                  capsys: pytest.CaptureFixture[str]) -> None:
    for name, refcnt in preloaded:
        (kernel / "sys" / "module" / name).mkdir(parents=True)
        (kernel / "sys" / "module" / name / "refcnt").write_text(f"{refcnt}\n")
    monkeypatch.setattr(os, "geteuid", lambda: 0 if as_root else 1000)
    assert modprobe.main(argv) == rc
    assert capsys.readouterr().err == stderr.format(release=os.uname().release)
    assert loaded(kernel) == modules
    proc = kernel / "proc" / "modules"
    if text is None:
        assert not proc.exists()
        assert not (kernel / "var" / "log" / "zerog-sim" / "modprobe.log").exists()
        return
    assert proc.read_text() == text
    log = (kernel / "var" / "log" / "zerog-sim" / "modprobe.log").read_text().splitlines()
    assert json.loads(log[-1])["argv"] == argv
    if text:
        assert_consistent(kernel)


def test_modprobe_vfio_pci_registers_the_driver(kernel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """What ``dstack tag-vfio`` writes to must exist once vfio_pci is loaded."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert modprobe.main(["vfio_pci"]) == 0
    driver = kernel / "sys" / "bus" / "pci" / "drivers" / "vfio-pci"
    assert sorted(p.name for p in driver.iterdir()) == ["bind", "new_id", "remove_id", "unbind"]
    log = (kernel / "var" / "log" / "zerog-sim" / "modprobe.log").read_text().splitlines()
    assert json.loads(log[-1]) == {"argv": ["vfio_pci"], "changed": [
        "iommufd", "vfio", "vfio_iommu_type1", "irqbypass", "vfio_pci_core", "vfio_pci"]}


def test_modprobe_remove_takes_unused_dependencies_along(kernel: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``-r vfio_pci`` also removes vfio_pci_core and irqbypass; vfio stays for vfio_iommu_type1."""
    monkeypatch.setattr(os, "geteuid", lambda: 0)
    assert modprobe.main(["vfio_pci"]) == 0
    assert modprobe.main(["-r", "vfio_pci"]) == 0
    assert loaded(kernel) == ["iommufd", "vfio", "vfio_iommu_type1"]
    assert (kernel / "proc" / "modules").read_text() == proc_modules(
        f"vfio_iommu_type1 49152 0 - {LIVE}", f"vfio 69632 1 vfio_iommu_type1, {LIVE}", f"iommufd 110592 1 vfio, {LIVE}")
    assert_consistent(kernel)


@pytest.fixture
def materialized(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Materialize a profile as the active state; returns its root."""

    def make(name: str) -> Path:
        state = tmp_path / f"{name}.json"
        profiles.materialize(name, str(tmp_path / name), str(state))
        monkeypatch.setenv("ZEROG_SIM_STATE", str(state))
        monkeypatch.setattr(os, "geteuid", lambda: 0)
        return tmp_path / name

    return make


def test_modprobe_on_a_profile_round_trips(materialized, capsys: pytest.CaptureFixture[str]) -> None:
    """Loading the nvidia stack puts its lines on top of the materializer's file; -r restores it."""
    root = materialized("h100x1")
    before = (root / "proc" / "modules").read_text()
    assert_consistent(root)
    assert modprobe.main(["nvidia_drm"]) == 0
    after = (root / "proc" / "modules").read_text()
    assert after == proc_modules(
        f"nvidia_drm 135168 0 - {LIVE} (OE)",
        f"nvidia_modeset 1556480 1 nvidia_drm, {LIVE} (OE)",
        f"nvidia 104071168 1 nvidia_modeset, {LIVE} (OE)",
    ) + before
    assert_consistent(root)
    state = json.loads(Path(os.environ["ZEROG_SIM_STATE"]).read_text())
    assert {"nvidia", "nvidia_modeset", "nvidia_drm"} <= hostfs.loaded_modules(state)
    assert modprobe.main(["-r", "nvidia"]) == 1
    assert capsys.readouterr().err == "modprobe: FATAL: Module nvidia is in use.\n"
    assert modprobe.main(["-r", "nvidia_drm"]) == 0
    assert (root / "proc" / "modules").read_text() == before
    assert_consistent(root)


def test_modprobe_host_nvidia_driver_is_in_use(materialized, capsys: pytest.CaptureFixture[str]) -> None:
    """On the profile with the host driver bound, ``modprobe -r nvidia`` fails like kmod's."""
    root = materialized("gpu_nvidia_driver")
    before = (root / "proc" / "modules").read_text()
    assert modprobe.main(["-r", "nvidia"]) == 1
    assert capsys.readouterr().err == "modprobe: FATAL: Module nvidia is in use.\n"
    assert (root / "proc" / "modules").read_text() == before


@pytest.mark.parametrize("text", [
    "",
    proc_modules(f"a 1 0 - {LIVE}"),
    proc_modules(f"nvidia 104071168 2 nvidia_uvm,nvidia_modeset, {LIVE} (OE)", f"b 12 1 c, {LIVE}"),
])  # fmt: skip
def test_parse_modules_inverts_the_materializers_format(text: str) -> None:
    assert hostfs.modules_text(modprobe.parse_modules(text)) == text


# --------------------------------------------------------------------------------------------
# the bin/ wrappers as processes


@pytest.mark.parametrize(("argv", "as_root", "rc", "stderr", "modules"), [
    (["vfio_pci"], True, 0, "", VFIO_PCI_MODULES),
    (["vfio"], False, 1, "modprobe: ERROR: could not insert 'iommufd': Operation not permitted\n", []),
])  # fmt: skip
def test_modprobe_wrapper(argv: list[str], as_root: bool, rc: int, stderr: str, modules: list[str],
                          python_dir: Path) -> None:
    """bin/modprobe as a process, as root and (when the tests run as root) as nobody."""
    if os.geteuid() != 0:
        pytest.skip("switching to nobody, and loading modules like the real modprobe, need root")
    base = Path(tempfile.mkdtemp(prefix="zerog-modprobe-"))  # world-readable for nobody
    try:
        base.chmod(0o755)
        root = base / "root"
        root.mkdir()
        (base / "state.json").write_text(json.dumps({"profile": "t", "root": str(root)}))
        env = {"PATH": f"{python_dir}:/usr/bin:/bin", "ZEROG_SIM_STATE": str(base / "state.json")}
        proc = subprocess.run([str(BIN_DIR / "modprobe"), *argv], env=env, capture_output=True, text=True,
                              timeout=30, check=False, **({} if as_root else {"user": 65534, "group": 65534}))
        assert (proc.returncode, proc.stderr) == (rc, stderr)
        assert loaded(root) == modules
    finally:
        shutil.rmtree(base)


def test_stand_ins_leave_no_bytecode_in_the_kit(tmp_path: Path, python_dir: Path) -> None:
    """Running the bin/ stand-ins (and the modules they import) writes no __pycache__ into the kit."""
    kit = tmp_path / "kit"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    shutil.copytree(SIM_DIR / "bin", kit / "bin", symlinks=True, ignore=ignore)
    shutil.copytree(SIM_DIR / "zerog_sim", kit / "zerog_sim", ignore=ignore)
    state = tmp_path / "state.json"
    profiles.materialize("h100x1", str(tmp_path / "root"), str(state))
    env = {"PATH": f"{python_dir}:/usr/bin:/bin", "ZEROG_SIM_STATE": str(state)}
    runs = {
        "lspci": ["-n"],
        "dmesg": ["-V"],
        "rdmsr": ["0x3a"],
        "nvidia_gpu_tools.py": ["--help"],
        "qemu-img": ["--version"],
        "qemu-system-x86_64": ["--version"],
        "modprobe": ["-n", "msr"],
    }
    assert sorted(runs) == sorted(p.name for p in (SIM_DIR / "bin").iterdir())
    for name, argv in runs.items():
        proc = subprocess.run([str(kit / "bin" / name), *argv], env=env, capture_output=True, text=True,
                              timeout=30, check=False)  # fmt: skip
        assert proc.returncode == 0, (name, proc.stderr)
    assert sorted(str(p.relative_to(kit)) for p in kit.rglob("__pycache__")) == []
