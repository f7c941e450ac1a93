"""What a newcomer sees on the simulated provider hosts: the host answers like a TDX + H100 host."""

import json

import pytest


def profile(host):
    return json.loads(host.file("/etc/zerog-sim/active.json").content_string)["profile"]


def test_stand_ins_come_first_on_path(host):
    for cmd in ("lspci", "nvidia_gpu_tools.py", "qemu-system-x86_64", "qemu-img", "rdmsr", "dmesg"):
        assert host.run(f"command -v {cmd}").stdout.strip() == f"/usr/local/bin/{cmd}"


def test_lspci_lists_the_h100(host):
    out = host.check_output("lspci -d 10de: -nn")
    assert "18:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330]" in out


def test_cc_mode_is_on(host):
    # The tool logs (stderr) the mode line; its inventory goes to stdout.
    res = host.run("nvidia_gpu_tools.py --gpu-bdf=18:00.0 --query-cc-mode")
    assert res.rc == 0
    assert " INFO     GPU 0000:18:00.0 H100 0x2330 BAR0 0x9e000000 CC mode is on\n" in res.stdout + res.stderr


def test_qemu_has_tdx_guest(host):
    assert "tdx-guest" in host.check_output("qemu-system-x86_64 -object help")


def test_sgx_nodes_are_character_devices(host):
    for name, minor in (("sgx_enclave", 125), ("sgx_provision", 126)):
        path = f"/opt/zerog-sim/root/dev/{name}"
        assert host.check_output(f"stat -c '%F %t:%T' {path}") == f"character special file a:{minor:x}"


@pytest.mark.parametrize("tag", ["v0.5.5", "pms-0.3"])
def test_sdk_repository_clones_recursively(host, tag):
    dest = f"/tmp/sdk-{tag}"
    host.run(f"rm -rf {dest}")
    host.check_output(
        f"git -c protocol.file.allow=always clone -q --recursive --branch {tag} "
        f"file:///opt/zerog-sim/git/private-ml-sdk.git {dest}"
    )
    assert host.file(f"{dest}/meta-dstack-nvidia/scripts/bin/dstack").is_symlink
    assert host.file(f"{dest}/meta-dstack-nvidia/dstack/key-provider-build/run.sh").exists
    usage = host.run(f"{dest}/meta-dstack-nvidia/scripts/bin/dstack --help").stdout
    assert usage.startswith("usage: dstack [-h] {new,run,lsgpu")


def test_pccs_answers_only_where_the_profile_has_one(host):
    listening = host.socket("tcp://127.0.0.1:8081").is_listening
    if profile(host) == "no_pccs":
        assert not listening
        assert not host.service("zerog-sim-pccs.service").is_running
    else:
        assert listening
        assert host.service("zerog-sim-pccs.service").is_running
