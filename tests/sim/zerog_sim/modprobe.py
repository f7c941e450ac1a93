"""Stand-in for kmod's ``modprobe`` (as used by ``dstack tag-vfio`` and host setup roles).

Modules live in the fixture tree of the active host state, where the kernel shows them:

* a loaded module is the directory ``<root>/sys/module/<name>/`` with ``initstate`` = ``live``
  and ``refcnt``;
* ``<root>/proc/modules`` has one line per module, most recently loaded first, in the kernel's
  format (``name size refcount users, Live 0x0000000000000000 [taint]``, written with
  ``zerog_sim.hostfs.modules_text`` like the materializer does). Loading a module puts its line
  on top and appends it to the users of the modules it needs (refcount + 1); removing it does
  the reverse, so ``lsmod``-style readers and ``/sys/module`` agree.

Loading ``vfio_pci`` also registers the driver directory
``<root>/sys/bus/pci/drivers/vfio-pci/`` (``new_id``, ``remove_id``, ``bind``, ``unbind``).
Every invocation that changes something is appended as a JSON line to
``<root>/var/log/zerog-sim/modprobe.log``.

Known modules are those of a TDX + NVIDIA host kernel (below) plus the optional list
``kernel_modules`` of the active state. Like kmod: ``-`` and ``_`` are interchangeable; the
modules a module needs (``USES``, what ``modules.dep`` lists) are loaded first and its
``post:`` soft dependencies after it; a module that is already live is left alone (exit 0, even
without root); an unknown module fails with ``modprobe: FATAL: Module X not found in directory
/lib/modules/<release>`` (exit 1, silent with ``-q``); loading needs root
(``modprobe: ERROR: could not insert 'X': Operation not permitted``); removing a module that is
not loaded fails with ``modprobe: FATAL: Module X is not in kernel.``, one that other modules
or users hold with ``modprobe: FATAL: Module X is in use.``; ``-r`` also removes the modules
the removed one needed once nothing holds them any more.
Supported options: ``-q``, ``-r``, ``-n``, ``-v``, ``-b``, ``-a`` and their long forms.
Runs as ``tests/sim/bin/modprobe`` or ``python3 -m zerog_sim.modprobe``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
from typing import Any

from zerog_sim import hostfs, state

PROG = "modprobe"
KNOWN = {
    "vfio", "vfio_pci", "vfio_pci_core", "vfio_iommu_type1", "iommufd", "irqbypass", "kvm",
    "kvm_intel", "vhost", "vhost_vsock", "vhost_iotlb", "vsock", "vmw_vsock_virtio_transport_common",
    "nvidia", "nvidia_uvm", "nvidia_modeset", "nvidia_drm", "nouveau", "9p", "9pnet",
    "9pnet_virtio", "overlay", "br_netfilter", "bridge", "tun", "msr", "intel_sgx",
}  # fmt: skip
# Direct dependencies (the modules whose symbols a module uses), in modules.dep order.
USES: dict[str, tuple[str, ...]] = {
    "vfio_pci": ("vfio_pci_core", "vfio"),
    "vfio_pci_core": ("vfio", "irqbypass"),
    "vfio_iommu_type1": ("vfio",),
    "vfio": ("iommufd",),
    "kvm_intel": ("kvm",),
    "kvm": ("irqbypass",),
    "vhost_vsock": ("vmw_vsock_virtio_transport_common", "vhost", "vsock"),
    "vmw_vsock_virtio_transport_common": ("vsock",),
    "vhost": ("vhost_iotlb",),
    "nvidia_uvm": ("nvidia",),
    "nvidia_modeset": ("nvidia",),
    "nvidia_drm": ("nvidia_modeset",),
}
# MODULE_SOFTDEP("post: ...") of vfio: the IOMMU backend is loaded right after it.
SOFTDEPS_POST: dict[str, tuple[str, ...]] = {"vfio": ("vfio_iommu_type1",)}
# Sizes as /proc/modules shows them on a 6.8 kernel (synthesized where not in the profiles).
SIZES = {
    "vfio_pci": 16384, "vfio_pci_core": 94208, "vfio_iommu_type1": 49152, "vfio": 69632,
    "iommufd": 110592, "irqbypass": 12288, "kvm": 1409024, "kvm_intel": 487424,
    "vhost_vsock": 24576, "vmw_vsock_virtio_transport_common": 57344, "vhost": 65536,
    "vhost_iotlb": 16384, "vsock": 61440, "msr": 12288, "nvidia": 104071168,
    "nvidia_uvm": 2076672, "nvidia_modeset": 1556480, "nvidia_drm": 135168,
}  # fmt: skip
DEFAULT_SIZE = 16384
TAINTS = {"nvidia": "(OE)", "nvidia_uvm": "(OE)", "nvidia_modeset": "(OE)", "nvidia_drm": "(OE)"}
OPTIONS = {"-q": "quiet", "--quiet": "quiet", "-r": "remove", "--remove": "remove",
           "-n": "dry_run", "--dry-run": "dry_run", "--show": "dry_run", "-v": "verbose",
           "--verbose": "verbose", "-b": "blacklist", "--use-blacklist": "blacklist",
           "-a": "all", "--all": "all"}  # fmt: skip


def err(message: str, flags: set[str]) -> None:
    """Print ``modprobe: message`` on stderr unless ``-q`` was given."""
    if "quiet" not in flags:
        sys.stderr.write(f"{PROG}: {message}\n")


def module_dir(root: str, name: str) -> str:
    """``<root>/sys/module/<name>``."""
    return os.path.join(root, "sys", "module", name)


def is_loaded(root: str, name: str) -> bool:
    """Whether ``name`` is in the simulated kernel (its ``/sys/module`` directory exists)."""
    return os.path.isdir(module_dir(root, name))


def load_order(name: str) -> list[str]:
    """``name`` and everything modprobe inserts with it, in insertion order (dependencies first)."""
    order: list[str] = []

    def visit(mod: str) -> None:
        if mod in order:
            return
        for dep in USES.get(mod, ()):
            visit(dep)
        order.append(mod)
        for post in SOFTDEPS_POST.get(mod, ()):
            visit(post)

    visit(name)
    return order


def parse_modules(text: str) -> list[dict[str, Any]]:
    """``/proc/modules`` text -> the module records ``hostfs.modules_text`` writes."""
    modules = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 6:
            continue
        users = [] if fields[3] == "-" else [u for u in fields[3].split(",") if u]
        modules.append({"name": fields[0], "size": int(fields[1]), "refcount": int(fields[2]),
                        "used_by": users, "taint": " ".join(fields[6:])})  # fmt: skip
    return modules


class Kernel:
    """The module bookkeeping of the fixture tree: ``proc/modules`` and ``sys/module``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self.proc_modules = os.path.join(root, "proc", "modules")
        try:
            with open(self.proc_modules, encoding="utf-8") as src:
                self.modules = parse_modules(src.read())
        except FileNotFoundError:
            self.modules = []

    def record(self, name: str) -> dict[str, Any] | None:
        """The ``/proc/modules`` record of ``name``, if it has one."""
        return next((m for m in self.modules if m["name"] == name), None)

    def refcount(self, name: str) -> int:
        """Holders of ``name``: ``/sys/module/<name>/refcnt`` (0 when the file is absent)."""
        try:
            with open(os.path.join(module_dir(self.root, name), "refcnt"), encoding="utf-8") as src:
                return int(src.read().strip() or 0)
        except (FileNotFoundError, ValueError):
            return 0

    def _set_refcount(self, name: str, value: int) -> None:
        path = os.path.join(module_dir(self.root, name), "refcnt")
        if os.path.isdir(os.path.dirname(path)):
            _replace(path, f"{value}\n", 0o444)
        entry = self.record(name)
        if entry is not None:
            entry["refcount"] = value

    def insert(self, name: str) -> None:
        """``init_module``: sysfs entry, a new top line and one more holder for each dependency."""
        path = module_dir(self.root, name)
        os.makedirs(path)
        _replace(os.path.join(path, "initstate"), "live\n", 0o444)
        _replace(os.path.join(path, "refcnt"), "0\n", 0o444)
        self.modules.insert(0, {"name": name, "size": SIZES.get(name, DEFAULT_SIZE), "refcount": 0,
                                "used_by": [], "taint": TAINTS.get(name, "")})  # fmt: skip
        for dep in USES.get(name, ()):
            if is_loaded(self.root, dep):
                self._set_refcount(dep, self.refcount(dep) + 1)
                entry = self.record(dep)
                if entry is not None:
                    entry["used_by"].append(name)  # users in load order, as captured lsmod output shows

    def delete(self, name: str) -> None:
        """``delete_module``: the reverse of :meth:`insert`."""
        shutil.rmtree(module_dir(self.root, name))  # links inside are removed, not followed
        self.modules = [m for m in self.modules if m["name"] != name]
        for dep in USES.get(name, ()):
            if is_loaded(self.root, dep):
                self._set_refcount(dep, max(0, self.refcount(dep) - 1))
            entry = self.record(dep)
            if entry is not None and name in entry["used_by"]:
                entry["used_by"].remove(name)

    def save(self) -> None:
        """Write ``proc/modules`` back in the materializer's format."""
        _replace(self.proc_modules, hostfs.modules_text(self.modules), 0o444)


def _replace(path: str, text: str, mode: int) -> None:
    """Write ``text`` to ``path`` atomically with ``mode`` (the files are read-only, like procfs)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.zerog-sim.tmp"
    with open(tmp, "w", encoding="utf-8") as out:
        out.write(text)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


def load(kernel: Kernel, name: str, flags: set[str], done: list[str]) -> None:
    """Insert ``name`` with its dependencies (no-op for loaded modules)."""
    for mod in load_order(name):
        if is_loaded(kernel.root, mod):
            continue
        if "verbose" in flags:
            print(f"insmod /lib/modules/{os.uname().release}/kernel/{mod}.ko")
        if "dry_run" in flags:
            continue
        kernel.insert(mod)
        if mod == "vfio_pci":
            driver = os.path.join(kernel.root, "sys", "bus", "pci", "drivers", "vfio-pci")
            os.makedirs(driver, exist_ok=True)
            for attr in ("new_id", "remove_id", "bind", "unbind"):
                if not os.path.exists(os.path.join(driver, attr)):
                    with open(os.path.join(driver, attr), "w", encoding="utf-8"):
                        pass
        done.append(mod)


def remove(kernel: Kernel, name: str, flags: set[str], done: list[str]) -> int:
    """``modprobe -r name``: remove it, then the modules it needed that nothing holds any more."""
    if not is_loaded(kernel.root, name):
        err(f"FATAL: Module {name} is not in kernel.", flags)
        return 1
    if kernel.refcount(name) > 0:
        err(f"FATAL: Module {name} is in use.", flags)
        return 1
    if os.geteuid() != 0:
        err(f"ERROR: could not remove '{name}': Operation not permitted", flags)
        return 1
    if "dry_run" in flags:
        return 0
    kernel.delete(name)
    done.append(name)
    for dep in USES.get(name, ()):
        if is_loaded(kernel.root, dep) and kernel.refcount(dep) == 0:
            remove(kernel, dep, flags | {"quiet"}, done)
    return 0


def record(root: str, entry: dict[str, Any]) -> None:
    """Append one JSON line to ``<root>/var/log/zerog-sim/modprobe.log``."""
    logdir = os.path.join(root, "var", "log", "zerog-sim")
    os.makedirs(logdir, exist_ok=True)
    with open(os.path.join(logdir, "modprobe.log"), "a", encoding="utf-8") as out:
        out.write(json.dumps(entry) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Entry point; ``argv`` without the program name (default: ``sys.argv[1:]``)."""
    argv = sys.argv[1:] if argv is None else argv
    flags: set[str] = set()
    names: list[str] = []
    for arg in argv:
        if arg.startswith("-") and not names:
            if arg not in OPTIONS:
                sys.stderr.write(f"{PROG}: unrecognized option '{arg}'\n"
                                 f"{PROG}: ERROR: unknown option\n")  # fmt: skip
                return 1
            flags.add(OPTIONS[arg])
        else:
            names.append(arg)
    if not names:
        sys.stderr.write(f"{PROG}: ERROR: missing parameters. See -h.\n")
        return 1
    if "all" not in flags and "remove" not in flags:
        names = names[:1]  # the rest are module parameters
    active = state.load_or_exit(PROG)
    root = active["root"]
    known = KNOWN | {m.replace("-", "_") for m in active.get("kernel_modules", [])}
    release = os.uname().release
    kernel = Kernel(root)
    changed: list[str] = []
    status = 0
    for raw in names:
        name = raw.replace("-", "_")
        if "remove" in flags:
            status = remove(kernel, name, flags, changed)
            if status:
                break
            continue
        if name not in known:
            err(f"FATAL: Module {name} not found in directory /lib/modules/{release}", flags)
            status = 1
            break
        if is_loaded(root, name):
            continue  # already in the kernel: kmod stops here, dependencies untouched
        missing = [m for m in load_order(name) if not is_loaded(root, m)]
        if missing and os.geteuid() != 0 and "dry_run" not in flags:
            err(f"ERROR: could not insert '{missing[0]}': Operation not permitted", flags)
            status = 1
            break
        load(kernel, name, flags, changed)
    if changed:
        kernel.save()
        record(root, {"argv": argv, "changed": changed})
    return status


if __name__ == "__main__":
    sys.exit(main())
