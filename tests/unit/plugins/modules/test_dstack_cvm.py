"""Tests of the dstack_cvm module.

Two kinds:

* **Table cases** (test_dstack_cvm.yaml): every external call is scripted with the harness's
  CommandTable, in order and with its exact argv. The SDK checkout is the simulation kit's
  stand-in tree of the case's generation (``zerog_sim.sdkrepo.render_tree``) with the golden
  image directories, and calls marked ``passthrough`` really run after their argv was checked,
  so ``dstack new`` writes what the stand-in (golden-exact) script writes. systemctl is only
  scripted. ``/proc`` is a fake tree (``proc``), so QEMU processes can be described.
* **Integration tests** at the end: the module runs the stand-in ``dstack`` of both
  generations for real, with a fake ``systemctl`` on PATH that keeps unit states in a file:
  create, re-run, in-place change, refused and accepted recreation, partial directory, removal.

Placeholders in the table: ``@TMP@`` (the case's directory), ``@SDK@`` (the checkout),
``@VM@`` (the VM directory ``@SDK@/vms/<name>``), ``@UNITS@`` (the unit directory).
"""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import yaml
from ansible.module_utils import basic
from ansible_collections.zerog.compute.plugins.module_utils import _dstack as ds
from ansible_collections.zerog.compute.plugins.modules import dstack_cvm
from ansible_collections.zerog.compute.tests.unit.harness import BIN_DIR, CommandTable, assert_subset, case_file, run_module

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
SIM = os.path.join(REPO, "tests", "sim")
if SIM not in sys.path:
    sys.path.insert(0, SIM)

from zerog_sim import sdkrepo  # noqa: E402

with open(case_file(__file__), encoding="utf-8") as _fh:
    TABLE = yaml.safe_load(_fh)
with open(os.path.join(REPO, "tests", "unit", "plugins", "module_utils", "test__dstack.yaml"), encoding="utf-8") as _fh:
    GOLDEN = yaml.safe_load(_fh)["golden"]
SCRIPT = "@SDK@/" + ds.SCRIPT_REL
TIMEOUT = ["timeout", "--kill-after=5", "120s"]
SHOW_PROPS = "--property=LoadState,ActiveState,SubState,UnitFileState,NeedDaemonReload"


def subst(value, env):
    if isinstance(value, str):
        for key in ("@UNITS@", "@VM@", "@SDK@", "@TMP@"):
            value = value.replace(key, env[key])
        return value
    if isinstance(value, list):
        return [subst(v, env) for v in value]
    if isinstance(value, dict):
        return {subst(k, env): subst(v, env) for k, v in value.items()}
    return value


def sdk_tree(generation, dest):
    """The stand-in checkout of a generation."""
    sdkrepo.render_tree(generation, "private-ml-sdk", dest, kit=SIM)


def write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as handle:
        handle.write(text)


def write_images(sdk, which):
    for gen in which:
        image = GOLDEN["images"][gen]
        for name, value in image["files"].items():
            text = value if isinstance(value, str) else json.dumps(value, indent=4) + "\n"
            write(os.path.join(sdk, "images", image["name"], name), text)


def golden_manifest(name):
    return copy.deepcopy(GOLDEN["manifests"][name]["manifest"])


def build_vm(vm_dir, spec, env):
    """A VM directory from a golden manifest and app-compose.json (+ overrides, extra files)."""
    os.makedirs(os.path.join(vm_dir, "shared", "certs"))
    if spec.get("manifest"):
        manifest = golden_manifest(spec["manifest"])
        manifest.update(subst(spec.get("manifest_set", {}), env))
        write(os.path.join(vm_dir, "vm-manifest.json"), json.dumps(manifest, indent=4))
    if spec.get("app_compose"):
        app = copy.deepcopy(GOLDEN["app_compose"][spec["app_compose"]])
        app.update(spec.get("app_compose_set", {}))
        write(os.path.join(vm_dir, "shared", "app-compose.json"), json.dumps(app, indent=4))
    for rel, text in (spec.get("files") or {}).items():
        write(os.path.join(vm_dir, rel), text)


def build_proc(root, procs, env):
    os.makedirs(root)
    for proc in procs or []:
        base = os.path.join(root, str(proc["pid"]))
        os.makedirs(base)
        with open(os.path.join(base, "cmdline"), "wb") as handle:
            handle.write(b"\0".join(a.encode() for a in subst(proc["argv"], env)) + b"\0")
        write(os.path.join(base, "cgroup"), proc.get("cgroup", ""))


class ScriptedTable(CommandTable):
    """CommandTable whose entries may also really run (``passthrough``) or leave files behind
    (``effect: {mkdir: [...]}``) once their argv has been checked."""

    def run_command(self, module, args, check_rc=False, data=None, environ_update=None, **kwargs):
        expected = self.calls[self._index] if self._index < len(self.calls) else {}
        rc, out, err = super().run_command(module, args, check_rc=check_rc, data=data, environ_update=environ_update,
                                           **kwargs)
        for path in expected.get("effect", {}).get("mkdir", []):
            os.makedirs(path, exist_ok=True)
        if not expected.get("passthrough"):
            return rc, out, err
        argv = [shutil.which("timeout") if a == f"{BIN_DIR}/timeout" else a for a in args]
        proc = subprocess.run(argv, cwd=kwargs.get("cwd"), env={**os.environ, **(environ_update or {})},
                              capture_output=True, text=True, check=False)
        if "rc" in expected:
            assert proc.returncode == expected["rc"], proc.stderr
        return proc.returncode, proc.stdout, proc.stderr


def expand_calls(calls, show_states, generation):
    """Table shorthand -> CommandTable entries: ``dstack: [--help]`` (answered with the golden
    help text of the generation), ``dstack: [args]`` (runs for real unless ``passthrough:
    false``), ``systemctl: [args]``, ``show: <state>``."""
    out = []
    for call in calls:
        call = dict(call)
        if call.get("dstack") == ["--help"]:
            call["command"] = [*TIMEOUT, SCRIPT, call.pop("dstack")[0]]
            call["out"] = GOLDEN["help"][generation]
        elif "dstack" in call:
            call["command"] = [*TIMEOUT, SCRIPT, *call.pop("dstack")]
            call.setdefault("passthrough", True)
        elif "systemctl" in call:
            call["command"] = [*TIMEOUT, f"{BIN_DIR}/systemctl", *call.pop("systemctl")]
        elif "show" in call:
            unit = call.pop("unit", "dstack-cvm-prov-cvm.service")
            call["command"] = [*TIMEOUT, f"{BIN_DIR}/systemctl", "show", unit, SHOW_PROPS]
            call["out"] = show_states[call.pop("show")]
        out.append(call)
    return out


CASES = [pytest.param(case, id=case["id"]) for case in TABLE["cases"]]


@pytest.fixture
def warnings(monkeypatch):
    """The module's warnings, recorded where AnsibleModule.warn is called (Ansible's own store is
    process-global, and other tests that re-import ansible.module_utils can detach it)."""
    seen = []
    monkeypatch.setattr(basic.AnsibleModule, "warn", lambda self, msg: seen.append(msg))
    return seen


@pytest.mark.parametrize("case", CASES)
def test_dstack_cvm(case, tmp_path, monkeypatch, warnings):
    tmp = str(tmp_path / "t")
    os.makedirs(tmp)
    name = case.get("input", {}).get("name", "prov-cvm")
    env = {"@TMP@": tmp, "@SDK@": os.path.join(tmp, "sdk"), "@UNITS@": os.path.join(tmp, "units")}
    env["@VM@"] = os.path.join(env["@SDK@"], "vms", name)
    if case.get("sdk", "0.3") is not None:
        sdk_tree(case.get("sdk", "0.3"), env["@SDK@"])
        write_images(env["@SDK@"], case.get("images", ["0.3", "0.5"]))
    write(os.path.join(tmp, "compose.yml"), GOLDEN["compose"])
    if case.get("vm"):
        build_vm(env["@VM@"], case["vm"], env)
    if case.get("unit"):
        write(os.path.join(env["@UNITS@"], f"dstack-cvm-{name}.service"), subst(TABLE["unit_texts"][case["unit"]], env))
    for path, text in subst(case.get("setup_files", {}), env).items():
        write(path, text)
    build_proc(os.path.join(tmp, "proc"), case.get("proc"), env)
    monkeypatch.setattr(ds, "PROC_ROOT", os.path.join(tmp, "proc"))

    args = {"name": "prov-cvm", "sdk_dir": "@SDK@", "unit_dir": "@UNITS@", "start_timeout": 0, **case.get("input", {})}
    args = {key: value for key, value in args.items() if value is not None}  # null removes a merged-in option
    calls = expand_calls(case.get("run_command_calls", []), TABLE["show_states"], case.get("sdk", "0.3"))
    table = ScriptedTable(subst(calls, env))
    flags = case.get("flags", {})
    result = run_module(dstack_cvm.main, subst(args, env), check_mode=flags.get("check", False),
                        diff=flags.get("diff", False), commands=table, tmpdir=tmp)

    expected = subst(case.get("output", {}), env)
    assert result.failed is expected.pop("failed", False), result.result
    if "msg" in expected:
        assert result.msg == expected.pop("msg")
    assert warnings == subst(case.get("warnings", []), env)
    assert_subset(expected, result.result)
    for path, want in subst(case.get("files_after", {}), env).items():
        if want is False:
            assert not os.path.lexists(path), f"{path} should not exist"
        elif want is True:
            assert os.path.exists(path), f"{path} should exist"
        elif isinstance(want, dict):
            with open(path, encoding="utf-8") as handle:
                assert_subset(want, json.load(handle), path)
        else:
            with open(path, encoding="utf-8") as handle:
                assert handle.read() == want, path


# ---------------------------------------------------------------------------------------------
# integration: the real stand-in dstack of each generation, a fake systemctl on PATH

FAKE_SYSTEMCTL = r"""#!/bin/sh
# systemctl stand-in for the dstack_cvm tests: unit states in files, every call logged.
dir="$FAKE_SYSTEMCTL_STATE"
mkdir -p "$dir"
printf '%s\n' "$*" >> "$dir/log"
unit="$2"
case "$1" in
  show)
    if [ -e "$FAKE_SYSTEMCTL_UNITS/$unit" ]; then echo LoadState=loaded; else echo LoadState=not-found; fi
    echo "ActiveState=$(cat "$dir/$unit.active" 2>/dev/null || echo inactive)"
    echo "UnitFileState=$(cat "$dir/$unit.enabled" 2>/dev/null)"
    echo NeedDaemonReload=no ;;
  start|restart) echo active > "$dir/$unit.active" ;;
  stop) echo inactive > "$dir/$unit.active" ;;
  enable) echo enabled > "$dir/$unit.enabled" ;;
  disable) echo disabled > "$dir/$unit.enabled" ;;
esac
"""


@pytest.fixture
def host(tmp_path, monkeypatch):
    """A checkout per generation with golden images, a compose file, a fake systemctl and /proc."""
    tmp = tmp_path
    bindir = tmp / "bin"
    bindir.mkdir()
    fake = bindir / "systemctl"
    fake.write_text(FAKE_SYSTEMCTL)
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bindir}:{os.environ['PATH']}")
    monkeypatch.setenv("FAKE_SYSTEMCTL_STATE", str(tmp / "systemd-state"))
    monkeypatch.setenv("FAKE_SYSTEMCTL_UNITS", str(tmp / "units"))
    (tmp / "proc").mkdir()
    monkeypatch.setattr(ds, "PROC_ROOT", str(tmp / "proc"))
    (tmp / "compose.yml").write_text(GOLDEN["compose"])
    return tmp


def systemctl_log(host):
    path = host / "systemd-state" / "log"
    return [line.split() for line in path.read_text().splitlines()] if path.exists() else []


def make_sdk(host, generation):
    sdk = host / f"sdk-{generation}"
    sdkrepo.render_tree(generation, "private-ml-sdk", sdk, kit=SIM)
    write_images(str(sdk), ["0.3" if generation == "0.3" else "0.5"])
    return sdk


def call(host, sdk, check=False, diff=False, **params):
    args = {"name": "cvm1", "sdk_dir": str(sdk), "compose_file": str(host / "compose.yml"),
            "image": GOLDEN["images"]["0.3" if sdk.name.endswith("0.3") else "0.5"]["name"],
            "unit_dir": str(host / "units"), "vcpus": 2, "memory": "4G", "disk": "40G",
            "ports": ["tcp:0.0.0.0:8080:3080"], **params}
    args = {key: value for key, value in args.items() if value is not None}
    return run_module(dstack_cvm.main, args, check_mode=check, diff=diff, tmpdir=str(host))


@pytest.mark.parametrize("generation", ["0.3", "0.5.5"])
def test_lifecycle_with_the_standin_script(host, generation):
    sdk = make_sdk(host, generation)
    vm = sdk / "vms" / "cvm1"

    checked = call(host, sdk, check=True, diff=True)
    assert checked.changed and not checked.failed, checked.result
    assert not vm.exists() and not (host / "units").exists()
    assert checked["diff"][0]["before"] == ""

    first = call(host, sdk)
    assert first.changed and not first.failed, first.result
    manifest = json.loads((vm / "vm-manifest.json").read_text())
    assert manifest["image_path"] == str(sdk / "images" / GOLDEN["images"]["0.3" if generation == "0.3" else "0.5"]["name"])
    assert manifest["vcpu"] == 2 and manifest["memory"] == 4096 and manifest["disk_size"] == 40
    expected_ports = [{"address": "0.0.0.0", "protocol": "tcp", "from": 8080, "to": 3080}]
    if generation == "0.3":  # a single mapping gets the filler, so that the script emits the hostfwd
        expected_ports.append({"address": "127.0.0.1", "protocol": "udp", "from": 8080, "to": 3080})
        assert first["port_workaround"]["filler"] == "udp:127.0.0.1:8080:3080"
    else:
        assert first["port_workaround"] is None
    assert manifest["port_map"] == expected_ports
    assert first["commands"] == checked["commands"]
    raw = (vm / "shared" / "app-compose.json").read_bytes()
    assert json.loads(raw)["docker_compose_file"] == GOLDEN["compose"]
    assert first["app"]["app_id"] == first["app"]["compose_hash"][:40]
    unit = (host / "units" / "dstack-cvm-cvm1.service").read_text()
    assert f"ExecStart={sdk}/meta-dstack-nvidia/scripts/bin/dstack run {vm} --kp-port 3443\n" in unit
    assert f"WorkingDirectory={sdk}\n" in unit

    again = call(host, sdk)
    assert not again.changed and not again.failed, again.result
    assert again["drift"] == []

    bigger = call(host, sdk, vcpus=4, diff=True)
    assert bigger.changed and bigger["actions"] == [f"rewrite {vm}/vm-manifest.json: vcpu"]
    assert json.loads((vm / "vm-manifest.json").read_text())["vcpu"] == 4
    assert (vm / "vm-manifest.json").read_text().startswith('{\n    "id": "cvm1",')
    assert '"vcpu": 2' in bigger["diff"][0]["before"] and '"vcpu": 4' in bigger["diff"][0]["after"]

    # the VM has booted once (its disk exists): the compose cannot change any more
    (vm / "hda.img").write_text("")
    (host / "compose.yml").write_text(GOLDEN["compose"] + "  extra:\n    image: busybox\n")
    refused = call(host, sdk, vcpus=4)
    assert refused.failed and "(hda.img) will be lost" in refused.msg
    assert (vm / "hda.img").exists()

    redone = call(host, sdk, vcpus=4, recreate=True)
    assert redone.changed and redone["recreated"] and not (vm / "hda.img").exists(), redone.result
    assert redone["app"]["compose_hash"] != first["app"]["compose_hash"]
    assert json.loads((vm / "shared" / "app-compose.json").read_text())["docker_compose_file"].endswith("busybox\n")

    started = call(host, sdk, vcpus=4, state="started", start_timeout=0)
    assert started.changed and started["running"]
    assert started["actions"] == ["enable dstack-cvm-cvm1.service", "start dstack-cvm-cvm1.service: state started"]

    gone = call(host, sdk, state="absent")
    assert gone.changed and not vm.exists() and not (host / "units" / "dstack-cvm-cvm1.service").exists()
    assert (sdk / "images").is_dir()
    unit_calls = [c for c in systemctl_log(host) if c[0] != "show"]
    assert unit_calls == [["daemon-reload"], ["enable", "dstack-cvm-cvm1.service"], ["start", "dstack-cvm-cvm1.service"],
                          ["stop", "dstack-cvm-cvm1.service"], ["disable", "dstack-cvm-cvm1.service"], ["daemon-reload"]]
    assert not call(host, sdk, state="absent").changed


@pytest.mark.parametrize("generation", ["0.3", "0.5.5"])
def test_partial_directory_from_a_failed_new_is_cleaned(host, generation):
    sdk = make_sdk(host, generation)
    script = sdk / ds.SCRIPT_REL
    failed = subprocess.run([str(script), "new", str(host / "missing.yml"), "-o", str(sdk / "vms" / "cvm1"), "-i", "x"],
                            cwd=sdk, capture_output=True, text=True, check=False)
    assert failed.returncode == 1 and "Compose file not found" in failed.stderr
    assert sorted(os.listdir(sdk / "vms" / "cvm1")) == ["shared"]

    result = call(host, sdk)
    assert not result.failed and result.changed, result.result
    assert result["actions"][:2] == [
        f"remove {sdk}/vms/cvm1: partial VM directory (vm-manifest.json does not exist), as a failed dstack new leaves behind",
        "dstack new: the partial directory was removed",
    ]
    assert (sdk / "vms" / "cvm1" / "vm-manifest.json").exists()


def test_compose_content_is_passed_through_a_private_file(host):
    sdk = make_sdk(host, "0.5.5")
    result = call(host, sdk, compose_file=None, compose="services:\r\n  a:\r\n    image: x\r\n", ports=[])
    assert not result.failed, result.result
    compose_path = result["commands"][0][2]
    assert compose_path == str(host / "dstack-cvm-cvm1-compose.yaml")
    assert oct(os.stat(compose_path).st_mode & 0o777) == "0o600"
    app = json.loads((sdk / "vms" / "cvm1" / "shared" / "app-compose.json").read_text())
    assert app["docker_compose_file"] == "services:\n  a:\n    image: x\n"
    again = call(host, sdk, compose_file=None, compose="services:\n  a:\n    image: x\n", ports=[])
    assert not again.changed, again.result
