"""Tests of plugins/module_utils/_dstack.py: one parametrized test per table of test__dstack.yaml.

The ``golden`` section of the table holds data recorded from the upstream ``dstack`` script
(help texts, manifests and app-compose.json written by ``new``, QEMU argv of ``run``); sizes,
ports and GPU shapes are checked against it, and the drift cases start from those manifests.
"""

from __future__ import annotations

import copy
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import yaml
from ansible_collections.zerog.compute.plugins.module_utils import _dstack as ds
from ansible_collections.zerog.compute.tests.unit.harness import case_file

with open(case_file(__file__), encoding="utf-8") as _fh:
    TABLE = yaml.safe_load(_fh)
GOLDEN = TABLE["golden"]
SDK = "/opt/sdk"


def cases(section):
    return [pytest.param(case, id=case["id"]) for case in TABLE[section]]


def golden_manifest(name):
    return copy.deepcopy(GOLDEN["manifests"][name]["manifest"])


def golden_app(manifest_name):
    """app-compose.json that the golden run of the same argument shape wrote."""
    gen = manifest_name.split("@")[1]
    app = copy.deepcopy(GOLDEN["app_compose"][f"new-guide-args@{gen}"])
    app["local_key_provider_enabled"] = "--local-key-provider" in GOLDEN["manifests"][manifest_name]["argv"]
    return app


def wanted(overrides):
    """The wanted VM of the golden 'new-guide-args' call (sdk_dir /opt/sdk), with overrides."""
    image = overrides.pop("image", "0.3")
    name = GOLDEN["images"][image]["name"]
    base = {
        "vcpu": 4, "memory": 8192, "memory_text": "8G", "disk_size": 200, "disk_text": "200G",
        "gpus": {"mode": "listed", "slots": ["2a:00.0"]},
        "port_map": [{"address": "0.0.0.0", "protocol": "tcp", "from": 9090, "to": 9090}],
        "image_path": f"{SDK}/images/{name}", "compose_text": GOLDEN["compose"], "local_key_provider": True,
        "manifest_pin_numa": False, "hugepages": False,
    }
    base.update(overrides)
    return base


def argv_value(argv, *names, default=None):
    for i, arg in enumerate(argv[:-1]):
        if arg in names:
            return argv[i + 1]
    return default


def golden_argv(value):
    if isinstance(value, str) and value.startswith("golden "):
        return GOLDEN["qemu_argv_03"][value[len("golden "):]]
    return value


# -- sizes ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("sizes"))
def test_sizes(case):
    parse = (lambda t: ds.parse_memory(t, case["generation"])) if case["fn"] == "memory" else ds.parse_disk
    if "error" in case:
        with pytest.raises(ds.DstackError) as err:
            parse(case["text"])
        assert err.value.message == case["error"]
    else:
        assert parse(case["text"]) == case["result"]


@pytest.mark.parametrize("name", sorted(GOLDEN["manifests"]))
def test_upstream_size_parsing_matches_golden(name):
    """-m/-d of each golden call, converted like the script, give the manifest's memory and disk."""
    entry = GOLDEN["manifests"][name]
    default_memory = "1G" if name.endswith("@0.3") else "2G"
    memory = argv_value(entry["argv"], "-m", "--memory", default=default_memory)
    disk = argv_value(entry["argv"], "-d", "--disk", default="20G")
    assert ds.upstream_size_mb(memory) == entry["manifest"]["memory"]
    assert ds.upstream_size_mb(disk) // 1024 == entry["manifest"]["disk_size"]


# -- ports ------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("ports"))
def test_parse_port(case):
    if "error" in case:
        with pytest.raises(ds.DstackError) as err:
            ds.parse_port(case["spec"])
        assert err.value.message == case["error"]
    else:
        assert ds.parse_port(case["spec"]) == case["entry"]


@pytest.mark.parametrize("name", sorted(GOLDEN["manifests"]))
def test_ports_match_golden(name):
    """Every --port of a golden call parses to the entry the script stored, in its key order."""
    entry = GOLDEN["manifests"][name]
    specs = [entry["argv"][i + 1] for i, a in enumerate(entry["argv"]) if a in ("-p", "--port")]
    parsed = [ds.parse_port(spec) for spec in specs]
    assert parsed == entry["manifest"]["port_map"]
    assert [list(p) for p in parsed] == [list(p) for p in entry["manifest"]["port_map"]]


@pytest.mark.parametrize("case", cases("conflicts"))
def test_port_conflicts(case):
    entries = [ds.parse_port(s) for s in case["specs"]]
    if case["error"]:
        with pytest.raises(ds.DstackError) as err:
            ds.check_port_conflicts(entries)
        assert err.value.message == case["error"]
    else:
        ds.check_port_conflicts(entries)


def test_filler_port():
    assert ds.filler_port(ds.parse_port("tcp:0.0.0.0:8080:3080")) == \
        {"address": "127.0.0.1", "protocol": "udp", "from": 8080, "to": 3080}
    assert ds.filler_port(ds.parse_port("udp:5353:53")) == \
        {"address": "127.0.0.1", "protocol": "tcp", "from": 5353, "to": 53}


@pytest.mark.parametrize("case", cases("workaround"))
def test_needs_port_workaround(case):
    assert ds.needs_port_workaround(case["mode"], case["generation"], case["version"], case["ports"]) is case["result"]


# -- GPUs -------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("slots"))
def test_normalize_slot(case):
    if "error" in case:
        with pytest.raises(ds.DstackError) as err:
            ds.normalize_slot(case["value"])
        assert err.value.message == case["error"]
    else:
        assert ds.normalize_slot(case["value"]) == case["slot"]


@pytest.mark.parametrize("case", cases("wanted_gpus"))
def test_wanted_gpus(case):
    call = (case["requested"], case["available"], case["generation"])
    if "error" in case:
        with pytest.raises(ds.DstackError) as err:
            ds.wanted_gpus(*call)
        assert err.value.message == case["error"]
    else:
        assert ds.wanted_gpus(*call) == case["result"]


@pytest.mark.parametrize("name", sorted(TABLE["manifest_gpus"]))
def test_manifest_gpus_of_golden_manifests(name):
    assert ds.manifest_gpus(golden_manifest(name)) == TABLE["manifest_gpus"][name]


# -- the checkout -----------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("help"))
def test_parse_help(case):
    text = case["text"]
    if text.startswith("golden "):
        text = GOLDEN["help"][text[len("golden "):]]
    if "error" in case:
        with pytest.raises(ds.DstackError) as err:
            ds.parse_help(text)
        assert err.value.message == case["error"]
    else:
        assert ds.parse_help(text)[0] == case["generation"]


@pytest.mark.parametrize("case", cases("distro_conf"))
def test_read_distro_version(case, tmp_path):
    if case["text"] is not None:
        conf = tmp_path / ds.DISTRO_CONF_REL
        conf.parent.mkdir(parents=True)
        conf.write_text(case["text"])
    assert ds.read_distro_version(str(tmp_path)) == case["version"]


def test_version_tuple():
    assert ds.version_tuple("0.5.4.1") == (0, 5, 4, 1)
    assert ds.version_tuple("0.3") == (0, 3)
    assert ds.version_tuple(None) is None
    assert ds.version_tuple("main") is None


@pytest.mark.parametrize("case", cases("images"))
def test_resolve_image(case):
    assert ds.resolve_image(case["image"], SDK) == case["path"]


def image_file_text(value):
    """A golden image file's text; metadata.json is stored parsed (mkimage.sh writes indent 4 + newline)."""
    return value if isinstance(value, str) else json.dumps(value, indent=4) + "\n"


def write_image(directory, generation, remove=()):
    for name, value in GOLDEN["images"][generation]["files"].items():
        text = image_file_text(value)
        if name not in remove:
            path = os.path.join(directory, name)
            os.makedirs(os.path.dirname(path), exist_ok=True)
            with open(path, "w", encoding="utf-8") as handle:
                handle.write(text)


@pytest.mark.parametrize("case", cases("check_image"))
def test_check_image(case, tmp_path):
    image = str(tmp_path / "img")
    if case["image"]:
        write_image(image, case["image"], case.get("remove", ()))
    expected = case["error"].replace("@IMG@", image) if case["error"] else None
    assert ds.check_image(image, case["generation"]) == expected


@pytest.mark.parametrize("case", cases("safe_paths"))
def test_check_safe_path(case):
    if case["ok"]:
        assert ds.check_safe_path(case["value"], "vm_dir") == case["value"]
    else:
        with pytest.raises(ds.DstackError) as err:
            ds.check_safe_path(case["value"], "vm_dir")
        assert err.value.message.startswith(f"vm_dir {case['value']!r} must be an absolute path of letters")


# -- VM directory, views, drift ---------------------------------------------------------------

@pytest.mark.parametrize("case", cases("inspect"))
def test_inspect_vm_dir(case, tmp_path):
    vm = tmp_path / "vm"
    for rel, text in (case["files"] or {}).items():
        path = vm / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    info = ds.inspect_vm_dir(str(vm))
    assert {k: info[k] for k in case["expect"]} == case["expect"]


@pytest.mark.parametrize("case", cases("compare"))
def test_compare(case):
    manifest = golden_manifest(case["manifest"])
    manifest.update(case.get("manifest_set", {}))
    app = golden_app(case["manifest"])
    app.update(case.get("app_compose_set", {}))
    vm = {"disk": False, "instance_info": False, **case.get("vm", {})}
    current = ds.current_view(manifest, app, SDK)
    drift = ds.compare(current, ds.wanted_view(wanted(dict(case["wanted"]))), vm)
    expected = [dict(d, reason=getattr(ds, d["reason"])) for d in case["drift"]]
    assert drift == expected


@pytest.mark.parametrize("case", cases("apply_in_place"))
def test_apply_in_place(case):
    manifest = golden_manifest(case["manifest"])
    new = ds.apply_in_place(manifest, wanted(dict(case["wanted"])))
    assert ds.render_json(new) == case["text"]
    assert manifest == golden_manifest(case["manifest"]), "the input manifest must not change"


@pytest.mark.parametrize("case", cases("new_args"))
def test_new_args(case):
    args = ds.new_args(wanted(dict(case["wanted"])), "/opt/c.yml", f"{SDK}/vms/prov-cvm", case["generation"])
    assert args == case["argv"]


@pytest.mark.parametrize("case", cases("run_args"))
def test_run_args(case):
    assert ds.run_args("/opt/sdk/vms/a", case.get("kp_port", 3443), case["generation"], case["pin_numa"]) == case["argv"]


def test_app_compose_doc_matches_golden_bytes():
    """The JSON the module predicts for app-compose.json is what the script wrote (key order, indent)."""
    for gen, key in (("0.3", "new-guide-args@0.3"), ("0.5", "new-guide-args@0.5.5")):
        doc = ds.app_compose_doc(GOLDEN["compose"], True, gen)
        assert doc == GOLDEN["app_compose"][key]
        assert list(doc) == list(GOLDEN["app_compose"][key])


def test_app_identity():
    assert ds.app_identity(b"abc") == {
        "compose_hash": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        "app_id": "ba7816bf8f01cfea414140de5dae2223b00361a3",
    }


@pytest.mark.parametrize("case", cases("key_like"))
def test_key_like_values(case):
    text = GOLDEN["compose"] if case["text"] == "golden" else case["text"]
    assert ds.key_like_values(text) == case["count"]


def test_normalize_newlines():
    assert ds.normalize_newlines("a\r\nb\rc\n") == "a\nb\nc\n"


# -- systemd ----------------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("units"))
def test_render_unit(case):
    text = ds.render_unit(case["name"], SDK, f"{SDK}/{ds.SCRIPT_REL}", case["args"], case["restart"], case["restart_sec"],
                          case["after"])
    assert text == case["text"]


@pytest.mark.parametrize("case", cases("show"))
def test_parse_show(case):
    assert ds.parse_show(case["text"]) == case["props"]


# -- QEMU processes ---------------------------------------------------------------------------

@pytest.mark.parametrize("case", cases("hostfwd"))
def test_hostfwd_rules(case):
    assert ds.hostfwd_rules(golden_argv(case["argv"])) == case["rules"]


@pytest.mark.parametrize("case", cases("missing_forwards"))
def test_missing_forwards(case):
    port_map = golden_manifest(case["manifest"])["port_map"]
    assert ds.missing_forwards(port_map, golden_argv(case["argv"])) == case["missing"]


def build_proc(root, procs, tmp):
    """A fake /proc: <pid>/cmdline (NUL-separated), cgroup, cwd symlink; plus non-pid entries."""
    os.makedirs(os.path.join(root, "self"))
    with open(os.path.join(root, "self", "cmdline"), "wb") as handle:
        handle.write(b"qemu-system-x86_64\0")
    os.makedirs(os.path.join(root, "sys", "kernel"))
    for proc in procs:
        if proc["pid"] == "self":
            continue
        base = os.path.join(root, str(proc["pid"]))
        os.makedirs(base)
        argv = [a.replace("@VM@", os.path.join(tmp, "vms", "cvm")).replace("@TMP@", tmp) for a in proc["argv"]]
        with open(os.path.join(base, "cmdline"), "wb") as handle:
            handle.write(b"\0".join(a.encode() for a in argv) + b"\0")
        with open(os.path.join(base, "cgroup"), "w", encoding="utf-8") as handle:
            handle.write(proc["cgroup"])
        if "cwd" in proc:
            os.symlink(proc["cwd"].replace("@TMP@", tmp), os.path.join(base, "cwd"))


@pytest.mark.parametrize("case", cases("processes"))
def test_find_vm_processes(case, tmp_path):
    tmp = str(tmp_path)
    build_proc(os.path.join(tmp, "proc"), case["procs"], tmp)
    found = ds.find_vm_processes(os.path.join(tmp, case["vm"]), proc_root=os.path.join(tmp, "proc"))
    assert [{"pid": p["pid"], "in_unit": ds.in_unit(p, "dstack-cvm-cvm.service")} for p in found] == case["found"]


def test_terminate_stops_and_kills(tmp_path):
    """A process that exits on SIGTERM, and one that ignores it and is killed after the timeout."""
    polite = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    stubborn = subprocess.Popen([sys.executable, "-c",
                                 "import signal, sys, time\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                                 "print('ready', flush=True)\ntime.sleep(60)"], stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout.readline() == b"ready\n"
        started = time.monotonic()
        # reap as soon as they exit, so that _alive sees them gone (a zombie counts as gone too)
        assert ds.terminate([polite.pid, stubborn.pid], timeout=0.6, interval=0.05) == [polite.pid, stubborn.pid]
        assert polite.wait(timeout=5) == -signal.SIGTERM
        assert stubborn.wait(timeout=5) == -signal.SIGKILL
        assert time.monotonic() - started < 5
    finally:
        for proc in (polite, stubborn):
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        stubborn.stdout.close()


def test_terminate_ignores_a_vanished_process():
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    assert ds.terminate([proc.pid], timeout=0.1) == []
