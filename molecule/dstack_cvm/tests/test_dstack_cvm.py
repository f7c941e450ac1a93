"""zerog.compute.dstack_cvm on the simulated hosts, after converge, idempotence and side_effect.

State expected here: CVM ``finetune`` recreated with the alternative compose (one more broker
environment variable), killed once, stopped and started again; on the 0.5.5 host the second CVM
was removed. What the broker answers comes from the stand-in broker inside the simulated guest,
which reads the configuration the role delivered: a missing or misplaced file makes it fail.
"""

from __future__ import annotations

import json

import pytest

VM = "/opt/private-ml-sdk/vms/finetune"
UNIT = "dstack-cvm-finetune.service"
SCRIPT = "/opt/private-ml-sdk/meta-dstack-nvidia/scripts/bin/dstack"
PACKAGE = "/opt/zerog/broker/0.2.2"
KEY = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
GENERATION = {"zerog-cvm-055": "0.5", "zerog-cvm-03": "0.3"}
MODELS = {"zerog-cvm-055": [], "zerog-cvm-03": ["mobilenet_v2"]}
GET_MODELS = (
    "python3 -c \"import json, urllib.request; "
    "print(json.dumps(json.load(urllib.request.urlopen('http://127.0.0.1:8080/v1/model', timeout=10))))\""
)


def generation(host):
    """0.3 or 0.5, by instance name."""
    return GENERATION[host.backend.name]


def app_compose(host):
    """The VM's shared/app-compose.json, parsed."""
    return json.loads(host.file(f"{VM}/shared/app-compose.json").content_string)


def test_unit_supervises_dstack_run(host):
    unit = host.file(f"/etc/systemd/system/{UNIT}").content_string
    assert f"ExecStart={SCRIPT} run {VM} --kp-port 3443\n" in unit
    assert "WorkingDirectory=/opt/private-ml-sdk\n" in unit
    assert "Restart=always\nRestartSec=2\n" in unit
    service = host.service(UNIT)
    assert service.is_running
    assert service.is_enabled


def test_broker_serves_the_configured_models(host):
    answer = json.loads(host.check_output(GET_MODELS))
    assert [m["name"] for m in answer] == MODELS[host.backend.name]


def test_killed_dstack_run_was_restarted(host):
    journal = host.check_output(f"journalctl -u {UNIT} -o cat --no-pager")
    assert f"{UNIT}: Main process exited, code=killed, status=9/KILL" in journal
    assert f"{UNIT}: Scheduled restart job, restart counter is at 1." in journal


def test_private_key_only_in_root_only_files(host):
    doc = app_compose(host)
    assert KEY not in host.file(f"{VM}/shared/app-compose.json").content_string
    assert "GIN_MODE=release" in doc["docker_compose_file"]  # the recreated VM runs the other compose
    config = f"{VM}/shared/.user-config" if generation(host) == "0.5" else f"{VM}/shared/config.local.yaml"
    delivered = host.file(config)
    assert (delivered.user, delivered.group, delivered.mode) == ("root", "root", 0o600)
    assert KEY in delivered.content_string
    assert delivered.content_string == host.file(f"{PACKAGE}/config.local.yaml").content_string


def test_05_guest_gets_the_configuration_as_user_config(host):
    if generation(host) != "0.5":
        pytest.skip("0.5 guests only")
    compose = app_compose(host)["docker_compose_file"]
    assert "- /dstack/user_config:/etc/config.yaml\n" in compose
    assert "./" not in compose  # no relative bind: a 0.5 guest would get empty directories
    assert "MYSQL_DATABASE: fineTune\n" in compose
    kept = host.file("/etc/zerog/dstack-cvm/finetune/docker-compose.yml")
    assert (kept.mode, host.file("/etc/zerog/dstack-cvm/finetune").mode) == (0o600, 0o700)
    assert kept.content_string == compose  # dstack new stored the kept text as it is
    # inside the simulated guest: the whitelist copy, linked where the compose mounts it
    guest = f"{VM}/.sim-guest/dstack"
    assert host.file(f"{guest}/user_config").linked_to == f"{guest}/.host-shared/.user-config"
    assert KEY in host.file(f"{guest}/.host-shared/.user-config").content_string
    assert not host.file(f"{VM}/shared/config.local.yaml").exists


def test_03_guest_gets_the_package_files_in_tapp(host):
    if generation(host) != "0.3":
        pytest.skip("0.3 guests only")
    compose = app_compose(host)["docker_compose_file"]
    assert "- ./config.local.yaml:/etc/config.yaml\n" in compose
    tapp = f"{VM}/.sim-guest/tapp"
    for name in ("config.local.yaml", "init.sql", "transformer/Dockerfile", "transformer/transformer/finetune.py",
                 "models/mobilenet_v2.zip"):
        assert host.file(f"{tapp}/{name}").content == host.file(f"{PACKAGE}/{name}").content, name


def test_03_single_port_gets_a_second_mapping(host):
    if generation(host) != "0.3":
        pytest.skip("0.3 scripts only")
    manifest = json.loads(host.file(f"{VM}/vm-manifest.json").content_string)
    assert [(p["protocol"], p["address"], p["from"], p["to"]) for p in manifest["port_map"]] == [
        ("tcp", "0.0.0.0", 8080, 8080),
        ("udp", "127.0.0.1", 8080, 8080),
    ]
    qemu = host.check_output(f"pgrep -a -f '[p]ath={VM}/shared'")  # [p]: not the shell running pgrep
    assert "user,id=nic0_td,hostfwd=tcp:0.0.0.0:8080-:8080,hostfwd=udp:127.0.0.1:8080-:8080 " in qemu


def test_removed_cvm_left_nothing(host):
    if host.backend.name != "zerog-cvm-055":
        pytest.skip("the 0.5.5 host has a second CVM")
    assert not host.file("/etc/systemd/system/dstack-cvm-second.service").exists
    assert not host.file("/opt/private-ml-sdk/vms/second").exists
    assert not host.file("/etc/zerog/dstack-cvm/second").exists
    assert host.run("pgrep -f '[p]ath=/opt/private-ml-sdk/vms/second/shared'").rc == 1


def test_firewall_rules_follow_the_cvms(host):
    if host.backend.name != "zerog-cvm-055":
        pytest.skip("ufw is installed on the 0.5.5 host only")
    added = host.check_output("ufw show added").splitlines()
    assert added[1:] == ["ufw allow 8080/tcp comment 'dstack CVM finetune'"]  # 8090 went with the second CVM
