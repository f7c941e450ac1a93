#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: a dstack confidential VM of private-ml-sdk, created idempotently and run under systemd."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dstack_cvm
short_description: Create, run, stop and remove a dstack confidential VM of private-ml-sdk
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Manages one Intel TDX confidential VM (CVM) made by the C(dstack) script of a
    nearai/private-ml-sdk checkout (C(<sdk_dir>/meta-dstack-nvidia/scripts/bin/dstack)), with
    either script generation, the 0.3-era one the 0G provider guide was written against or v0.5.x.
    The generation is read from the script's own C(--help) (v0.5 scripts add C(tag-vfio) and C(serve)).
  - O(state=present) runs C(dstack new) when the VM directory does not exist. C(new) is not
    idempotent upstream, so the module reads C(vm-manifest.json) and C(shared/app-compose.json)
    of an existing directory instead, reports what differs in RV(drift) and changes only that.
  - Host-side settings (port forwards, NUMA pinning) and the VM size of a VM whose disk is not
    sealed to its measurements are changed in place, by rewriting C(vm-manifest.json) atomically;
    C(dstack run) reads it at the next start.
  - A change of the compose text or of O(local_key_provider) changes the app id, which a VM that
    has booted refuses without a KMS (C(App upgrade is not supported without KMS)); under the local
    key provider the disk key is derived from the TD measurements, so a change of the VM shape
    (vCPUs, memory, GPUs, hugepages) or of the image makes the existing disk unreadable too. Such a
    change fails unless O(recreate=true), which deletes the VM directory, its disk C(hda.img)
    included, and runs C(dstack new) again. A VM that has never booted (no C(hda.img), no
    C(shared/.instance_info)) loses nothing and is recreated without asking.
  - A partial directory, as a failed C(dstack new) leaves behind (no C(vm-manifest.json) or no
    C(shared/app-compose.json)), is removed before C(new) runs again.
  - C(dstack run) blocks in the foreground, so it runs under a systemd unit per CVM
    (O(unit_name)), written by the module in every state but V(absent). V(started), V(stopped)
    and V(restarted) drive it. There is no C(dstack logs), C(stop) or C(rm) in any version; the
    logs are the unit's journal (RV(logs_command)).
options:
  name:
    description:
      - Name of the VM. It is the directory name (the script's instance id) and part of the
        default O(unit_name).
    type: str
    required: true
  sdk_dir:
    description:
      - Absolute path of the private-ml-sdk checkout (a recursive clone). The script runs with
        it as working directory, as in the 0G guide and upstream's sample unit.
    type: path
    required: true
  vm_dir:
    description:
      - Directory of the VM (the script's C(-o)). A relative path is taken relative to O(sdk_dir).
      - It is always passed to the script as an absolute path, because the script keeps paths as
        typed and C(dstack run) would otherwise depend on its working directory.
      - Defaults to C(<sdk_dir>/vms/<name>), next to the script's own C(vms/) default.
    type: path
  state:
    description:
      - V(present) creates the VM directory (or brings it in line) and writes the unit; a running
        VM keeps running (RV(restart_required) tells when it runs with an older manifest).
      - V(started) also enables and starts the unit (restarts it when the manifest or the unit
        changed) and waits until QEMU runs with every port forward.
      - V(stopped) stops the unit and any QEMU still running for the VM directory.
      - V(restarted) always restarts the unit.
      - V(absent) stops, disables and deletes the unit, stops any QEMU of the VM and deletes the
        VM directory with its disk.
      - V(started), V(stopped) and V(restarted) without O(compose_file) or O(compose) only drive the
        unit of an existing VM, without comparing it.
    type: str
    choices: [present, started, stopped, restarted, absent]
    default: present
  compose_file:
    description:
      - Path of the Docker compose file that the CVM runs (the script's positional argument),
        on the managed host. A relative path is taken relative to O(sdk_dir).
      - Its text is stored in C(shared/app-compose.json), which is hashed into the app id and served
        to anyone who asks the guest for its attestation info; never put secrets in it.
    type: path
  compose:
    description:
      - The compose text itself, instead of O(compose_file). It is written to a private temporary
        file for C(dstack new).
    type: str
  image:
    description:
      - The guest image, a directory name under C(<sdk_dir>/images/) (V(dstack-nvidia-0.5.5)) or a
        path (with a C(/); relative paths are taken relative to O(sdk_dir)).
      - It is stored in the manifest as an absolute path. The image must come from the same checkout
        generation as the script (0.3.x images carry C(rootfs_hash), 0.5.x images C(digest.txt)).
      - Required with O(compose_file) or O(compose).
    type: str
  vcpus:
    description:
      - Number of vCPUs (C(-c)).
    type: int
    default: 1
  memory:
    description:
      - Memory with a unit C(M), C(G) or C(T) (C(-m)), as the script parses it.
      - A bare number is refused (the script would read MB). On v0.5 scripts it must be whole GB,
        because they give QEMU C(-m <GB>G) rounded down (C(512M) would become C(0G)).
    type: str
    default: 2G
  disk:
    description:
      - Size of the VM disk C(hda.img) with a unit (C(-d)); whole GB.
      - A bare number is refused, because the script reads C(-d 100) as 100 MB and keeps whole GB,
        which is a 0 GB disk.
    type: str
    default: 20G
  gpus:
    description:
      - PCI addresses of the GPUs (and, for an HGX PPCIe CVM, NVSwitches) to pass through,
        C(18:00.0) or C(0000:18:00.0); stored in the script's short form.
      - V([all]) takes every GPU of O(available_gpus) when given; without it, v0.5 scripts resolve
        C(all) themselves (GPUs and NVSwitches found by C(lspci)), and 0.3-era scripts cannot.
      - V([]) or V([none]) gives no GPU.
    type: list
    elements: str
    default: []
  available_gpus:
    description:
      - The GPUs that are ready for pass-through, usually RV(zerog.compute.dstack_gpu_info#module:cvm_gpus).
        Every GPU of O(gpus) must be one of them.
    type: list
    elements: str
  ports:
    description:
      - Port forwards from the host into the guest, C(proto[:address]:from:to) (address
        C(127.0.0.1) when left out). Protocol tcp or udp, an IPv4 address (the script cannot
        express IPv6), ports 1-65535, each host port once.
    type: list
    elements: str
    default: []
  port_workaround:
    description:
      - 0.3-era scripts (and v0.5 before PMS C(1adf0e0)) emit no C(hostfwd) at all when exactly one
        port is given. With V(auto) a single mapping gets a harmless second one (O(port_filler))
        unless the checkout builds version 0.5.5 or later; V(always) and V(never) force the choice.
      - The second mapping appears in the manifest and is reported in RV(port_workaround).
    type: str
    choices: [auto, always, never]
    default: auto
  port_filler:
    description:
      - The second mapping added by O(port_workaround). Defaults to the same ports with the other
        protocol on C(127.0.0.1) only (a C(tcp:0.0.0.0:8080:8080) mapping gets C(udp:127.0.0.1:8080:8080)).
    type: str
  local_key_provider:
    description:
      - Let the guest get its disk key from the local key provider (C(--local-key-provider)). It is
        part of C(app-compose.json), so changing it later needs O(recreate) on a VM that has booted.
    type: bool
    default: true
  kp_port:
    description:
      - TCP port of the local key provider on the host (C(dstack run --kp-port)).
    type: int
    default: 3443
  pin_numa:
    description:
      - Pin the vCPUs to the NUMA node of the GPU (C(taskset)). v0.5 scripts store it in the manifest;
        0.3-era scripts take it on C(dstack run) and only with exactly one GPU.
    type: bool
    default: false
  hugepages:
    description:
      - Back the guest memory with pre-reserved hugepages (v0.5 scripts only). The pages must be
        reserved on the host beforehand.
    type: bool
    default: false
  recreate:
    description:
      - Allow deleting and recreating a VM that has booted when a change cannot be applied in place
        (see the description). Its disk C(hda.img) and everything in its directory are lost.
    type: bool
    default: false
  unit_name:
    description:
      - Name of the systemd unit. Defaults to C(dstack-cvm-<name>.service).
    type: str
  unit_dir:
    description:
      - Directory the unit file is written to.
    type: path
    default: /etc/systemd/system
  unit_after:
    description:
      - Units the VM unit is ordered after and wants, for example the local key provider's unit.
    type: list
    elements: str
    default: []
  restart_policy:
    description:
      - C(Restart=) of the unit. V(always) restarts a VM whose C(dstack run) ended for any reason.
        That is needed because QEMU exits 0 when it is stopped by a signal and when a TDX guest
        reboots (a guest boot failure reboots), so V(on-failure) would leave such a VM down.
        A VM that exits five times within ten minutes is left failed.
    type: str
    choices: [always, on-failure]
    default: always
  restart_sec:
    description:
      - Seconds between the end of C(dstack run) and its restart (C(RestartSec=)).
    type: int
    default: 10
  enabled:
    description:
      - Whether the unit starts at boot. Unset means enabled for V(started) and V(restarted), and
        left as it is otherwise.
    type: bool
  start_timeout:
    description:
      - With V(started) and V(restarted), seconds to wait for QEMU to run; its command line is
        then checked for every port forward. V(0) skips the wait and the check.
    type: int
    default: 60
  command_timeout:
    description:
      - Seconds after which each external command is stopped.
    type: int
    default: 120
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
    details:
      - The script's C(--help), C(systemctl show) and C(/proc) are read in check mode too.
      - On a fresh host, a missing checkout, image or compose file is reported as a warning, and the
        VM counts as to be created.
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - Three parts, the managed fields of C(vm-manifest.json) and C(app-compose.json) (the compose
        text as its sha256 only), the unit file, and the unit's state.
  idempotent:
    description: When run twice in a row outside check mode, with the same arguments, the second invocation indicates no change.
    support: full
    details:
      - V(restarted) always restarts, as its name says.
notes:
  - Run with C(become); QEMU and the unit need root.
  - Needs systemd on the managed host. C(dstack run) needs the local key provider on O(kp_port)
    when O(local_key_provider=true), and the GPUs bound to C(vfio-pci).
  - Recreation deletes everything in the VM directory, files placed in C(shared/) included; deliver
    such files after this module.
  - There is no option to keep C(hda.img) on V(absent) or recreation. Under the local key provider
    its key is bound to the measurements and to C(shared/.instance_info), so a disk kept without
    its VM directory can never be opened again; use V(stopped) to keep a VM.
  - A guest whose boot fails (a C(boot.error) line in the journal) makes QEMU exit 0; with
    O(restart_policy=always) it is booted again and again. Read the journal, not the exit status.
  - The 0.3-era script runs QEMU through C(sudo) when GPUs are given, so C(sudo) must be installed.
seealso:
  - module: zerog.compute.dstack_gpu_info
  - name: private-ml-sdk
    description: The SDK whose dstack script this module drives.
    link: https://github.com/nearai/private-ml-sdk
"""

EXAMPLES = r"""
- name: Find the GPUs ready for pass-through
  become: true
  zerog.compute.dstack_gpu_info:
    sdk_dir: /opt/private-ml-sdk
  register: gpu

- name: Run the fine-tuning CVM
  become: true
  zerog.compute.dstack_cvm:
    name: finetune
    sdk_dir: /opt/private-ml-sdk
    compose_file: /etc/zerog/finetune/docker-compose.yml
    image: dstack-nvidia-0.5.5
    vcpus: 16
    memory: 128G
    disk: 500G
    gpus: ["{{ gpu.cvm_gpus[0] }}"]
    available_gpus: "{{ gpu.cvm_gpus }}"
    ports: ["tcp:0.0.0.0:8080:3080"]
    unit_after: [dstack-key-provider.service]
    state: started
  register: cvm

- name: Say where the logs are
  ansible.builtin.debug:
    msg: "Logs: {{ cvm.logs_command }}"

- name: Give the CVM more memory (under the local key provider this needs a new VM and disk)
  become: true
  zerog.compute.dstack_cvm:
    name: finetune
    sdk_dir: /opt/private-ml-sdk
    compose_file: /etc/zerog/finetune/docker-compose.yml
    image: dstack-nvidia-0.5.5
    vcpus: 16
    memory: 192G
    disk: 500G
    gpus: ["18:00.0"]
    ports: ["tcp:0.0.0.0:8080:3080"]
    recreate: true
    state: started

- name: Stop it
  become: true
  zerog.compute.dstack_cvm:
    name: finetune
    sdk_dir: /opt/private-ml-sdk
    state: stopped

- name: Remove it with its disk
  become: true
  zerog.compute.dstack_cvm:
    name: finetune
    sdk_dir: /opt/private-ml-sdk
    state: absent
"""

RETURN = r"""
vm_dir:
  description: The VM directory (absolute).
  returned: always
  type: str
  sample: /opt/private-ml-sdk/vms/finetune
generation:
  description: Generation of the dstack script, V(0.3) or V(0.5); V(null) when the checkout does not exist yet (check mode).
  returned: always
  type: str
  sample: "0.5"
sdk_version:
  description: C(DISTRO_VERSION) of the images the checkout builds, V(null) when unknown.
  returned: always
  type: str
  sample: 0.5.5
actions:
  description: What was done, or would be done in check mode, in order.
  returned: always
  type: list
  elements: str
  sample: ["dstack new: the VM directory does not exist", "write /etc/systemd/system/dstack-cvm-finetune.service"]
drift:
  description:
    - How the existing VM differs from the task, one entry per field with C(field), C(current), C(wanted),
      C(action) (V(in_place) or V(recreate)) and C(reason). Fields are C(vcpu), C(memory) (MB), C(disk_size)
      (GB), C(gpus), C(port_map), C(pin_numa), C(hugepages), C(image_path), C(image_path_stored),
      C(compose_sha256) and C(local_key_provider_enabled).
  returned: always
  type: list
  elements: dict
  sample: [{"field": "memory", "current": 8192, "wanted": 16384, "action": "recreate",
            "reason": "the local key provider derives the disk key from the TD measurements ..."}]
commands:
  description: The C(dstack) command lines run (or that would run in check mode) to create the VM.
  returned: always
  type: list
  elements: list
manifest:
  description: The VM's C(vm-manifest.json) after the task; V(null) in check mode before the VM exists.
  returned: always
  type: dict
app:
  description:
    - C(compose_hash) (sha256 of C(shared/app-compose.json)) and C(app_id) (its first 20 bytes), as the guest
      computes them, for checking attestation reports. V(null) in check mode before the VM exists.
  returned: always
  type: dict
  sample: {"compose_hash": "5d0c...", "app_id": "5d0c..."}
port_workaround:
  description: The second port mapping added for a single O(ports) entry (C(filler)) and why (C(reason)); V(null) when none.
  returned: always
  type: dict
recreated:
  description: Whether the VM directory was deleted and created again.
  returned: always
  type: bool
restart_required:
  description: The VM runs with an older manifest or unit; restart it (O(state=restarted)) to apply them.
  returned: always
  type: bool
running:
  description: Whether the unit is active after the task (as far as known in check mode).
  returned: always
  type: bool
qemu:
  description: With V(started) and V(restarted), the QEMU process found (C(pid), C(hostfwd) as port specs, C(in_unit)).
  returned: when QEMU was checked
  type: dict
unit_name:
  description: The systemd unit.
  returned: always
  type: str
  sample: dstack-cvm-finetune.service
unit_path:
  description: The unit file.
  returned: always
  type: str
  sample: /etc/systemd/system/dstack-cvm-finetune.service
unit_file:
  description: The unit file's text as the module writes it; V(null) with V(absent).
  returned: always
  type: str
logs_command:
  description: How to follow the VM's console and the script's output (C(dstack logs) does not exist).
  returned: always
  type: str
  sample: journalctl -u dstack-cvm-finetune.service -f
enabled:
  description: Whether the unit starts at boot after the task.
  returned: always
  type: bool
"""

import json
import os
import shutil
import tempfile
import time

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.zerog.compute.plugins.module_utils import _dstack as ds
from ansible_collections.zerog.compute.plugins.module_utils._command import (
    CommandFailed,
    Tool,
    ToolMissing,
    explain,
    fail_command,
)

ACTIVE_STATES = ("active", "activating", "reloading")
SHOW_PROPERTIES = "LoadState,ActiveState,SubState,UnitFileState,NeedDaemonReload"


class Cvm:
    """One CVM: its checkout, directory and unit, and the work of one task."""

    def __init__(self, module):
        self.module = module
        self.p = module.params
        self.check = module.check_mode
        p = self.p
        if not ds.NAME_RE.match(p["name"]):
            raise ds.DstackError(f"name {p['name']!r} must be 1-64 letters, digits, '.', '_' or '-', starting with a "
                                 "letter or digit (it is a directory and unit name).")
        self.name = p["name"]
        if not os.path.isabs(p["sdk_dir"]):
            raise ds.DstackError(f"sdk_dir {p['sdk_dir']!r} must be an absolute path.")
        self.sdk_dir = ds.check_safe_path(os.path.normpath(p["sdk_dir"]), "sdk_dir")
        self.script = os.path.join(self.sdk_dir, ds.SCRIPT_REL)
        vm_dir = ds.resolve_path(p["vm_dir"], self.sdk_dir) if p["vm_dir"] else os.path.join(self.sdk_dir, "vms", self.name)
        self.vm_dir = ds.check_safe_path(vm_dir, "vm_dir")
        real_vm, real_sdk = os.path.realpath(self.vm_dir), os.path.realpath(self.sdk_dir)
        if real_vm == real_sdk or real_sdk.startswith(real_vm.rstrip("/") + "/") or real_vm == "/":
            raise ds.DstackError(f"vm_dir {self.vm_dir} is the checkout or one of its parents; it would be deleted "
                                 "with the VM. Fix: use a directory of its own, e.g. <sdk_dir>/vms/<name>.")
        self.unit_name = p["unit_name"] or f"dstack-cvm-{self.name}.service"
        if not ds.UNIT_NAME_RE.match(self.unit_name):
            raise ds.DstackError(f"unit_name {self.unit_name!r} is not a systemd service name (letters, digits, "
                                 "':', '_', '.', '@', '-', ending in .service).")
        for unit in p["unit_after"]:
            if not ds.ANY_UNIT_RE.match(unit):
                raise ds.DstackError(f"unit_after entry {unit!r} is not a systemd unit name (e.g. dstack-key-provider.service).")
        self.unit_path = os.path.join(p["unit_dir"], self.unit_name)
        if p["kp_port"] < 1 or p["kp_port"] > 65535:
            raise ds.DstackError(f"kp_port {p['kp_port']} is not a port number 1-65535.")
        timeout = p["command_timeout"]
        self.dstack = Tool(module, "dstack", path=self.script, option="sdk_dir", timeout=timeout)
        self.systemctl = Tool(module, "systemctl", timeout=timeout)
        self.generation = None
        self.distro_version = None
        self.compose_path = None
        self.unit = {}
        self.manifest = None
        self.app = None
        self.wanted = None
        self.filler = None
        self.before_view = None
        self.after_view = None
        self.unit_before = None
        self.unit_text = None
        self.manifest_changed = False
        self.unit_changed = False
        self.recreated = False
        self.stopped_for_recreate = False
        self.actions = []
        self.result = {
            "changed": False, "name": self.name, "vm_dir": self.vm_dir, "sdk_dir": self.sdk_dir, "generation": None,
            "sdk_version": None, "actions": self.actions, "drift": [], "commands": [], "manifest": None, "app": None,
            "port_workaround": None, "recreated": False, "restart_required": False, "running": False,
            "unit_name": self.unit_name, "unit_path": self.unit_path, "unit_file": None,
            "logs_command": f"journalctl -u {self.unit_name} -f",
        }

    # -- helpers -------------------------------------------------------------------------------
    def act(self, text):
        """Record a change (done, or planned in check mode)."""
        self.actions.append(text)

    def ctl(self, *args, what, fix=None):
        """Run systemctl unless in check mode."""
        if self.check:
            return
        self.systemctl.run(list(args), what=what, fix=fix or f"see 'systemctl status {self.unit_name}' and "
                           f"'{self.result['logs_command']}'.")

    @property
    def defined(self):
        return self.p["compose"] is not None or self.p["compose_file"] is not None

    @property
    def active(self):
        return self.unit.get("ActiveState") in ACTIVE_STATES and not self.stopped_for_recreate

    @property
    def enabled(self):
        return self.unit.get("UnitFileState") == "enabled"

    # -- reading -------------------------------------------------------------------------------
    def query_unit(self):
        """systemctl show of the unit."""
        _rc, out, _err = self.systemctl.run(
            ["show", self.unit_name, f"--property={SHOW_PROPERTIES}"], what=f"Reading the state of {self.unit_name}",
            fix="the managed host must run systemd (dstack run is supervised by a unit).")
        self.unit = ds.parse_show(out)
        self.result["running"] = self.active

    def detect(self):
        """Generation of the checkout's script (from its --help) and the image version it builds."""
        if not os.path.exists(self.script):
            msg = explain(f"Using the private-ml-sdk checkout {self.sdk_dir}", f"{self.script} does not exist.",
                          "clone nearai/private-ml-sdk recursively into sdk_dir first.")
            if not self.check:
                raise ds.DstackError(msg)
            self.module.warn(msg + " Check mode goes on as if it existed.")
            return
        _rc, out, _err = self.dstack.run(["--help"], what="Reading the command line of the dstack script", cwd=self.sdk_dir,
                                         fix="sdk_dir must be a private-ml-sdk checkout whose dstack script runs with the "
                                             "host's python3 (3.10 or later for v0.5).")
        self.generation, _commands = ds.parse_help(out)
        self.distro_version = ds.read_distro_version(self.sdk_dir)
        self.result["generation"] = self.generation
        self.result["sdk_version"] = self.distro_version
        built = ds.version_tuple(self.distro_version)
        if built and built[:2] != ds.version_tuple(self.generation):
            self.module.warn(f"The checkout's dstack script is a {self.generation} script, but its images are version "
                             f"{self.distro_version}; script and image generations must match.")

    def read_compose(self):
        """The compose text as the script will store it; None when not known yet (check mode)."""
        if self.p["compose"] is not None:
            text = self.p["compose"]
        else:
            path = ds.resolve_path(self.p["compose_file"], self.sdk_dir)
            self.compose_path = path
            if not os.path.isfile(path):
                msg = f"compose_file {path} does not exist."
                if self.check:
                    self.module.warn(msg + " Check mode cannot compare the compose text.")
                    return None
                raise ds.DstackError(msg + " Fix: write the compose file before this task (a missing file makes "
                                           "dstack new fail and leave a partial directory).")
            try:
                with open(path, encoding="utf-8") as handle:
                    text = handle.read()
            except UnicodeDecodeError as exc:
                raise ds.DstackError(f"compose_file {path} is not UTF-8 text ({exc}). Fix: save it as UTF-8.") from exc
            except OSError as exc:
                raise ds.DstackError(f"compose_file {path} cannot be read ({exc.strerror}).") from exc
        text = ds.normalize_newlines(text)
        if not text.strip():
            raise ds.DstackError("The compose text is empty. Fix: give the compose file the CVM runs.")
        return text

    def build_wanted(self):
        """The VM the task asks for, validated against the script generation."""
        p, gen = self.p, self.generation
        if p["vcpus"] < 1:
            raise ds.DstackError(f"vcpus {p['vcpus']} must be at least 1.")
        memory = ds.parse_memory(p["memory"], gen)
        disk = ds.parse_disk(p["disk"])
        gpus = ds.wanted_gpus(p["gpus"], p["available_gpus"], gen)
        ports = [ds.parse_port(spec) for spec in p["ports"]]
        ds.check_port_conflicts(ports)
        if ds.needs_port_workaround(p["port_workaround"], gen, self.distro_version, len(ports)):
            self.filler = ds.parse_port(p["port_filler"]) if p["port_filler"] else ds.filler_port(ports[0])
            ports.append(self.filler)
            ds.check_port_conflicts(ports)
            self.result["port_workaround"] = {
                "filler": ds.port_spec(self.filler),
                "reason": "with exactly one --port, dstack scripts before PMS 1adf0e0 (0.3-era ones, and v0.5 before "
                          "v0.5.5) emit no hostfwd, so a second, harmless mapping is added",
            }
        if p["hugepages"] and gen == ds.GEN_03:
            raise ds.DstackError("hugepages needs a v0.5 dstack script; the 0.3-era 'new' has no --hugepages. "
                                 "Fix: set hugepages to false.")
        if p["pin_numa"] and gen == ds.GEN_03 and len(gpus["slots"]) != 1:
            raise ds.DstackError("pin_numa on a 0.3-era dstack script works only with exactly one GPU (it is ignored "
                                 "otherwise). Fix: give one GPU or set pin_numa to false.")
        image_path = ds.check_safe_path(ds.resolve_image(p["image"], self.sdk_dir), "image")
        compose = self.read_compose()
        if compose is not None:
            if ds.key_like_values(compose):
                self.module.warn("The compose text holds a 64-hex-digit value that looks like a private key. "
                                 "app-compose.json is hashed into the app id and served to anyone who asks the guest "
                                 "for its attestation info: deliver secrets another way.")
            size = len(ds.render_json(ds.app_compose_doc(compose, p["local_key_provider"], gen)).encode("utf-8"))
            if gen == ds.GEN_05 and size > ds.APP_COMPOSE_LIMIT_05:
                raise ds.DstackError(f"app-compose.json would be {size} bytes; 0.5 images copy it into the guest only up "
                                     f"to {ds.APP_COMPOSE_LIMIT_05} bytes. Fix: shorten the compose file.")
        return {
            "vcpu": p["vcpus"], "memory": memory, "memory_text": ds.size_text(p["memory"]), "disk_size": disk,
            "disk_text": ds.size_text(p["disk"]), "gpus": gpus, "port_map": ports, "image_path": image_path,
            "compose_text": compose, "local_key_provider": p["local_key_provider"],
            "manifest_pin_numa": bool(p["pin_numa"]) and gen != ds.GEN_03, "hugepages": bool(p["hugepages"]),
        }

    # -- the VM directory ---------------------------------------------------------------------
    def ensure_vm(self):
        """Create the VM directory, or compare it and apply what differs."""
        wanted = self.wanted = self.build_wanted()
        self.after_view = ds.wanted_view(wanted)
        vm = ds.inspect_vm_dir(self.vm_dir)
        if vm["exists"] and not vm["is_dir"]:
            raise ds.DstackError(f"vm_dir {self.vm_dir} exists but is not a directory (or is a symbolic link). "
                                 "Fix: move it away or choose another vm_dir.")
        if not vm["exists"]:
            self.create("the VM directory does not exist")
            return
        if vm["partial"]:
            why = vm["manifest_error"] or vm["app_compose_error"]
            if (vm["disk"] or vm["instance_info"]) and not self.p["recreate"]:
                raise ds.DstackError(
                    f"{self.vm_dir} holds a VM disk (hda.img) or instance info but {why}, so the VM cannot run. Fix: "
                    "restore the file, or set recreate: true to delete the directory and create the VM again (the "
                    "VM disk hda.img will be lost).")
            self.stop_for_recreate()
            self.remove_vm(f"partial VM directory ({why}), as a failed dstack new leaves behind")
            self.create("the partial directory was removed")
            return
        current = self.before_view = ds.current_view(vm["manifest"], vm["app_compose"], self.sdk_dir)
        drift = ds.compare(current, self.after_view, vm)
        self.result["drift"] = drift
        recreate = [d for d in drift if d["action"] == "recreate"]
        if recreate:
            booted = vm["disk"] or vm["instance_info"]
            fields = ", ".join(f"{d['field']} ({d['reason']})" for d in recreate)
            if booted and not self.p["recreate"]:
                raise ds.DstackError(
                    f"The VM {self.name} differs from the task in what cannot change on a VM that has booted: {fields}. "
                    f"Fix: set recreate: true to delete {self.vm_dir} and create the VM again; the VM disk "
                    "(hda.img) will be lost, with everything the guest stored on it. Or revert the change.",
                    drift=drift)
            self.stop_for_recreate()
            note = "recreate requested" if booted else "the VM never booted, so nothing is lost"
            self.remove_vm(f"{', '.join(d['field'] for d in recreate)} cannot change in place ({note})")
            self.create("the VM directory was removed to apply the change")
            self.recreated = True
            return
        self.manifest = vm["manifest"]
        self.app = ds.app_identity(vm["app_compose_raw"])
        if drift:
            self.rewrite_manifest(vm["manifest"], [d["field"] for d in drift])

    def create(self, reason):
        """dstack new, then check that the manifest holds what was asked."""
        wanted, gen = self.wanted, self.generation
        problem = ds.check_image(wanted["image_path"], gen) if gen else None
        if problem:
            if not self.check:
                raise ds.DstackError(problem)
            self.module.warn(problem + " (check mode goes on)")
        compose_path = self.compose_path
        if self.p["compose"] is not None:
            compose_path = os.path.join(self.module.tmpdir, f"dstack-cvm-{self.name}-compose.yaml")
        args = ds.new_args(wanted, compose_path, self.vm_dir, gen)
        self.result["commands"].append([self.script, *args])
        self.act(f"dstack new: {reason}")
        if self.filler:
            self.module.warn(f"The single port mapping gets a second one, {ds.port_spec(self.filler)}: "
                             f"{self.result['port_workaround']['reason']}.")
        if self.check:
            return
        if self.p["compose"] is not None:
            fd = os.open(compose_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8", newline="") as handle:
                handle.write(self.p["compose"])
        try:
            self.dstack.run(args, what=f"Creating the VM directory {self.vm_dir} with dstack new", cwd=self.sdk_dir,
                            fix="correct what the error names (image, compose file, GPU or port values); the partial "
                                "directory dstack new leaves is removed, so the task can simply run again.")
        except CommandFailed as exc:
            vm = ds.inspect_vm_dir(self.vm_dir)
            if vm["is_dir"] and vm["partial"] and not vm["disk"]:
                shutil.rmtree(self.vm_dir)
                exc.message += f" The partial directory {self.vm_dir} was removed."
            raise
        vm = ds.inspect_vm_dir(self.vm_dir)
        if vm["partial"]:
            raise ds.DstackError(f"dstack new returned 0 but {vm['manifest_error'] or vm['app_compose_error']}. "
                                 "Fix: check the dstack script of the checkout.")
        made = ds.current_view(vm["manifest"], vm["app_compose"], self.sdk_dir)
        wrong = ds.compare(made, self.after_view, vm)
        if wrong:
            raise ds.DstackError(
                "dstack new wrote a VM that differs from what was asked: "
                + "; ".join(f"{d['field']} is {d['current']!r}, not {d['wanted']!r}" for d in wrong)
                + ". Fix: check that the checkout's dstack script is a private-ml-sdk 0.3 or v0.5 script.", drift=wrong)
        self.manifest = vm["manifest"]
        self.app = ds.app_identity(vm["app_compose_raw"])

    def rewrite_manifest(self, manifest, fields):
        """Apply in-place drift: rewrite vm-manifest.json atomically, in the script's format."""
        new = ds.apply_in_place(manifest, self.wanted)
        self.act(f"rewrite {os.path.join(self.vm_dir, ds.MANIFEST_NAME)}: {', '.join(fields)}")
        if self.filler and "port_map" in fields:
            self.module.warn(f"The single port mapping gets a second one, {ds.port_spec(self.filler)}: "
                             f"{self.result['port_workaround']['reason']}.")
        self.manifest = new
        self.manifest_changed = True
        if self.check:
            return
        path = os.path.join(self.vm_dir, ds.MANIFEST_NAME)
        fd, tmp = tempfile.mkstemp(dir=self.vm_dir, prefix=".vm-manifest.", suffix=".tmp")
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(ds.render_json(new))
        self.module.atomic_move(tmp, path)

    def stop_for_recreate(self):
        """Stop the unit and any QEMU of the VM before its directory is deleted."""
        if self.unit.get("ActiveState") in ACTIVE_STATES:
            self.act(f"stop {self.unit_name}")
            self.ctl("stop", self.unit_name, what=f"Stopping {self.unit_name} before the VM directory is deleted")
            self.stopped_for_recreate = True
        self.kill_leftovers("before the VM directory is deleted", unit_stopped=self.stopped_for_recreate)

    def remove_vm(self, reason):
        """rm -rf the VM directory (after making sure it is one)."""
        entries = os.listdir(self.vm_dir)
        if entries and ds.MANIFEST_NAME not in entries and "shared" not in entries:
            raise ds.DstackError(f"{self.vm_dir} holds neither vm-manifest.json nor shared/, so it is not a dstack VM "
                                 "directory; it was not deleted. Fix: check vm_dir.")
        self.act(f"remove {self.vm_dir}: {reason}")
        if not self.check:
            shutil.rmtree(self.vm_dir)

    def kill_leftovers(self, why, unit_stopped=False, only_strays=False):
        """Stop the QEMU processes of the VM directory that are still running.

        ``only_strays`` keeps the unit's own processes; after the unit was stopped
        (``unit_stopped``) its processes are gone, except in check mode, where the stop only
        was planned: they are then not reported as left over.
        """
        skip_unit = only_strays or (unit_stopped and self.check)
        procs = [proc for proc in ds.find_vm_processes(self.vm_dir)
                 if not (skip_unit and ds.in_unit(proc, self.unit_name))]
        if not procs:
            return
        pids = [proc["pid"] for proc in procs]
        self.act(f"stop QEMU of {self.vm_dir} (pid {', '.join(map(str, pids))}) {why}")
        if not self.check:
            ds.terminate(pids)

    # -- the unit ------------------------------------------------------------------------------
    def ensure_unit(self):
        """Write the unit file when it differs; daemon-reload when needed."""
        gen = self.generation
        args = ds.run_args(self.vm_dir, self.p["kp_port"], gen, self.p["pin_numa"])
        text = ds.render_unit(self.name, self.sdk_dir, self.script, args, self.p["restart_policy"], self.p["restart_sec"],
                              self.p["unit_after"])
        self.unit_text = text
        self.result["unit_file"] = text
        self.unit_before = _read_text(self.unit_path)
        if self.unit_before != text:
            self.act(f"write {self.unit_path}")
            self.unit_changed = True
            if not self.check:
                _write_file(self.module, self.unit_path, text)
        if self.unit_changed or self.unit.get("NeedDaemonReload") == "yes":
            self.act("systemctl daemon-reload")
            self.ctl("daemon-reload", what=f"Reloading systemd for {self.unit_path}")

    def drive(self, state):
        """Bring the unit to the wanted state."""
        if state == "started":
            strays = [proc for proc in ds.find_vm_processes(self.vm_dir) if not ds.in_unit(proc, self.unit_name)]
            if strays:
                raise ds.DstackError(
                    f"QEMU runs for {self.vm_dir} outside {self.unit_name} (pid "
                    f"{', '.join(str(proc['pid']) for proc in strays)}), probably a 'dstack run' started by hand; starting "
                    "the unit would boot the same VM twice. Fix: stop that process, or use state: restarted, which "
                    "stops it and starts the unit.")
        want_enabled = self.p["enabled"]
        if want_enabled is None and state in ("started", "restarted"):
            want_enabled = True
        if want_enabled is True and not self.enabled:
            self.act(f"enable {self.unit_name}")
            self.ctl("enable", self.unit_name, what=f"Enabling {self.unit_name}")
        elif want_enabled is False and self.enabled:
            self.act(f"disable {self.unit_name}")
            self.ctl("disable", self.unit_name, what=f"Disabling {self.unit_name}")
        self.result["enabled"] = bool(want_enabled) if want_enabled is not None else self.enabled
        if state == "present":
            if self.stopped_for_recreate:
                self.start("it ran before the VM was recreated")
            elif self.active and (self.manifest_changed or self.unit_changed):
                self.result["restart_required"] = True
            self.result["running"] = self.active or self.stopped_for_recreate
        elif state == "started":
            if not self.active:
                self.start("state started")
            elif self.manifest_changed or self.unit_changed:
                self.act(f"restart {self.unit_name}: the manifest or the unit changed")
                self.ctl("restart", self.unit_name, what=f"Restarting {self.unit_name}")
            self.result["running"] = True
            self.verify()
        elif state == "restarted":
            self.kill_leftovers("running outside the unit", only_strays=True)
            self.act(f"restart {self.unit_name}")
            self.ctl("restart", self.unit_name, what=f"Restarting {self.unit_name}")
            self.result["running"] = True
            self.verify()
        elif state == "stopped":
            if self.active:
                self.act(f"stop {self.unit_name}")
                self.ctl("stop", self.unit_name, what=f"Stopping {self.unit_name}")
            self.kill_leftovers("left running", unit_stopped=self.active)
            self.result["running"] = False

    def start(self, why):
        """Start the unit (clearing a failed state first, which may hold a start limit)."""
        if self.unit.get("ActiveState") == "failed":
            self.act(f"reset-failed {self.unit_name}")
            self.ctl("reset-failed", self.unit_name, what=f"Clearing the failed state of {self.unit_name}")
        self.act(f"start {self.unit_name}: {why}")
        self.ctl("start", self.unit_name, what=f"Starting {self.unit_name}")

    def verify(self):
        """Wait for QEMU and check that it forwards every port of the manifest."""
        wait = self.p["start_timeout"]
        if self.check or wait <= 0:
            return
        if self.manifest is None:
            self.manifest, _err = ds.read_json(os.path.join(self.vm_dir, ds.MANIFEST_NAME))
        port_map = (self.manifest or {}).get("port_map") or []
        deadline = time.monotonic() + wait
        while True:
            procs = ds.find_vm_processes(self.vm_dir)
            mine = [proc for proc in procs if ds.in_unit(proc, self.unit_name)] or procs
            if mine:
                proc = mine[0]
                self.result["qemu"] = {"pid": proc["pid"], "in_unit": ds.in_unit(proc, self.unit_name),
                                       "hostfwd": [ds.port_spec(r) for r in ds.hostfwd_rules(proc["argv"])]}
                missing = ds.missing_forwards(port_map, proc["argv"])
                if missing:
                    raise ds.DstackError(
                        f"QEMU of {self.name} (pid {proc['pid']}) runs without the port forward(s) {', '.join(missing)}: "
                        "with exactly one --port, 0.3-era dstack scripts emit no hostfwd. Fix: set port_workaround: "
                        "always (a second, harmless mapping is added) and run the task again.", qemu=self.result["qemu"])
                return
            if time.monotonic() >= deadline:
                raise ds.DstackError(
                    f"QEMU of {self.name} was not running {wait} s after {self.unit_name} was started. Fix: read "
                    f"'{self.result['logs_command']}' (dstack run's errors and the guest console, boot.error lines "
                    "included) and 'systemctl status " + self.unit_name + "'.", journal=self.journal_tail())
            time.sleep(0.5)

    def journal_tail(self):
        """The last lines of the unit's journal, for a failure message (best effort)."""
        journalctl = Tool(self.module, "journalctl", timeout=self.p["command_timeout"])
        if not journalctl.available():
            return []
        try:
            _rc, out, _err = journalctl.run(["-u", self.unit_name, "-n", "30", "--no-pager", "-o", "cat"],
                                            what="Reading the unit's journal", ok_rcs=None)
        except CommandFailed:
            return []
        return out.splitlines()

    # -- absent --------------------------------------------------------------------------------
    def absent(self):
        """Stop and delete the unit, stop QEMU, delete the VM directory."""
        if os.path.islink(self.vm_dir):
            raise ds.DstackError(f"vm_dir {self.vm_dir} is a symbolic link; it is not deleted. Fix: point vm_dir at the "
                                 "VM directory itself.")
        vm = ds.inspect_vm_dir(self.vm_dir)
        if vm["manifest"] is not None and vm["app_compose"] is not None:
            self.before_view = ds.current_view(vm["manifest"], vm["app_compose"], self.sdk_dir)
        self.unit_before = _read_text(self.unit_path)
        was_active = self.unit.get("ActiveState") in ACTIVE_STATES
        if was_active:
            self.act(f"stop {self.unit_name}")
            self.ctl("stop", self.unit_name, what=f"Stopping {self.unit_name}")
        if self.enabled:
            self.act(f"disable {self.unit_name}")
            self.ctl("disable", self.unit_name, what=f"Disabling {self.unit_name}")
        if self.unit_before is not None:
            self.act(f"remove {self.unit_path}")
            if not self.check:
                os.unlink(self.unit_path)
            self.act("systemctl daemon-reload")
            self.ctl("daemon-reload", what=f"Reloading systemd after removing {self.unit_path}")
        self.kill_leftovers("left running", unit_stopped=was_active)
        if vm["exists"]:
            self.remove_vm("state absent")
        self.result["running"] = False
        self.result["enabled"] = False

    # -- the whole task ------------------------------------------------------------------------
    def run(self):
        """Do the task; returns the result."""
        state = self.p["state"]
        self.query_unit()
        if state == "absent":
            self.absent()
        else:
            self.detect()
            if self.defined:
                self.ensure_vm()
            else:
                vm = ds.inspect_vm_dir(self.vm_dir)
                if vm["partial"] or not vm["is_dir"]:
                    msg = (f"The VM {self.name} does not exist at {self.vm_dir} (or is incomplete), and the task gives "
                           "no compose_file or compose to create it. Fix: add compose_file (or compose) and image.")
                    if not self.check:
                        raise ds.DstackError(msg)
                    self.module.warn(msg)
                else:
                    self.manifest = vm["manifest"]
                    self.app = ds.app_identity(vm["app_compose_raw"])
            self.ensure_unit()
            self.drive(state)
        self.result["changed"] = bool(self.actions)
        self.result["manifest"] = self.manifest
        self.result["app"] = self.app
        self.result["recreated"] = self.recreated
        if self.module._diff:
            self.result["diff"] = self.diff(state)
        return self.result

    def diff(self, state):
        """before/after of the managed fields, the unit file and the unit's state."""
        after_view = None if state == "absent" else (self.after_view or self.before_view)
        after_unit = "" if state == "absent" else (self.unit_text or "")
        was = {"active": self.unit.get("ActiveState") in ACTIVE_STATES, "enabled": self.enabled}
        now = {"active": self.result["running"], "enabled": self.result.get("enabled", self.enabled)}
        return [
            {"before_header": f"{self.vm_dir} (vm-manifest.json, shared/app-compose.json)",
             "after_header": f"{self.vm_dir} (vm-manifest.json, shared/app-compose.json)",
             "before": _view_text(self.before_view), "after": _view_text(after_view)},
            {"before_header": self.unit_path, "after_header": self.unit_path,
             "before": self.unit_before or "", "after": after_unit},
            {"before_header": f"{self.unit_name} (state)", "after_header": f"{self.unit_name} (state)",
             "before": _view_text(was), "after": _view_text(now)},
        ]


def _view_text(view):
    if view is None:
        return ""
    return json.dumps(view, indent=2) + "\n"


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except FileNotFoundError:
        return None


def _write_file(module, path, text):
    """Atomically replace a root-owned 0644 file."""
    parent = os.path.dirname(path)
    if not os.path.isdir(parent):
        os.makedirs(parent, mode=0o755)
    fd, tmp = tempfile.mkstemp(dir=parent, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)
    os.chmod(tmp, 0o644)
    module.atomic_move(tmp, path)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "sdk_dir": {"type": "path", "required": True},
            "vm_dir": {"type": "path"},
            "state": {"type": "str", "choices": ["present", "started", "stopped", "restarted", "absent"], "default": "present"},
            "compose_file": {"type": "path"},
            "compose": {"type": "str"},
            "image": {"type": "str"},
            "vcpus": {"type": "int", "default": 1},
            "memory": {"type": "str", "default": "2G"},
            "disk": {"type": "str", "default": "20G"},
            "gpus": {"type": "list", "elements": "str", "default": []},
            "available_gpus": {"type": "list", "elements": "str"},
            "ports": {"type": "list", "elements": "str", "default": []},
            "port_workaround": {"type": "str", "choices": ["auto", "always", "never"], "default": "auto"},
            "port_filler": {"type": "str"},
            "local_key_provider": {"type": "bool", "default": True},
            "kp_port": {"type": "int", "default": 3443},
            "pin_numa": {"type": "bool", "default": False},
            "hugepages": {"type": "bool", "default": False},
            "recreate": {"type": "bool", "default": False},
            "unit_name": {"type": "str"},
            "unit_dir": {"type": "path", "default": "/etc/systemd/system"},
            "unit_after": {"type": "list", "elements": "str", "default": []},
            "restart_policy": {"type": "str", "choices": ["always", "on-failure"], "default": "always"},
            "restart_sec": {"type": "int", "default": 10},
            "enabled": {"type": "bool"},
            "start_timeout": {"type": "int", "default": 60},
            "command_timeout": {"type": "int", "default": 120},
        },
        mutually_exclusive=[("compose", "compose_file")],
        required_if=[("state", "present", ("compose", "compose_file"), True)],
        required_by={"compose": "image", "compose_file": "image"},
        supports_check_mode=True,
    )
    try:
        result = Cvm(module).run()
    except ds.DstackError as exc:
        module.fail_json(msg=exc.message, **exc.details)
    except (CommandFailed, ToolMissing) as exc:
        fail_command(module, exc)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
