"""What an operator checks after zerog.compute.provider_config on a simulated provider host.

The first tests read what converge left. The last ones run the converge playbook again with
ansible-playbook (through molecule's inventory): wrong checksums and a wrong package layout
must be refused with nothing left on the host, and a -vvv --diff run that changes the private
key must never print a key or the database password.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import subprocess

import pytest
import yaml

SCENARIO = os.environ.get("MOLECULE_SCENARIO_DIRECTORY", os.path.dirname(os.path.dirname(__file__)))
EPHEMERAL = os.environ.get("MOLECULE_EPHEMERAL_DIRECTORY", "")
FIXTURES = os.path.join(EPHEMERAL, "fixtures")
INSTALL = "/opt/zerog/broker"
PKG = f"{INSTALL}/0.2.2"

with open(os.path.join(SCENARIO, "converge.yml"), encoding="utf-8") as _fh:
    CONVERGE_VARS = yaml.safe_load(_fh)[0]["vars"]
KEY = CONVERGE_VARS["provider_config_private_keys"][0].removeprefix("0x")
# Hardhat's well-known test account 2: another public test key, never a real wallet.
OTHER_KEY = "5de4111afa1a4b94908f83103eb1f1706367c2e68ca870fc3fb9a804cdab365a"


def listing(host, path):
    """Every entry of a directory, hidden ones included (testinfra's listdir skips them)."""
    return sorted(host.check_output(f"ls -A {path}").split())


def fixture_sha256(name):
    with open(os.path.join(FIXTURES, name + ".sha256"), encoding="ascii") as fh:
        return fh.read().strip()


def controller_db_password(host):
    name = host.check_output("hostname").strip()
    with open(os.path.join(EPHEMERAL, "secrets", name, "mysql_root_password"), encoding="utf-8") as fh:
        return fh.read().strip()


def run_converge(tmp_path, extra_vars, *flags):
    """ansible-playbook converge.yml against the instance, extra vars from a file (never argv)."""
    vars_file = tmp_path / "extra-vars.json"
    vars_file.write_text(json.dumps(extra_vars))
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], *flags,
            "-e", f"@{vars_file}", os.path.join(SCENARIO, "converge.yml")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=900, env=dict(os.environ), check=False)
    return proc.returncode, proc.stdout + proc.stderr


# --------------------------------------------------------------------- after converge


def test_package_unpacked_into_its_versioned_directory(host):
    assert listing(host, INSTALL) == ["0.2.2"], "one version directory, no staging left over"
    assert listing(host, PKG) == sorted([
        f".zerog-package-{fixture_sha256('fine-tuning-broker.tar.gz')}", "README.md", "config.example.yaml",
        "config.local.yaml", "docker-compose.yml", "init.sql", "models", "transformer",
    ])
    marker = host.file(f"{PKG}/.zerog-package-{fixture_sha256('fine-tuning-broker.tar.gz')}").content_string
    assert marker == ("source: http://127.0.0.1:18080/v0.2.2/fine-tuning-broker.tar.gz\n"
                      f"sha256: {fixture_sha256('fine-tuning-broker.tar.gz')}\n")
    assert host.file(f"{PKG}/transformer/transformer/finetune.py").is_file


@pytest.mark.parametrize(
    ("path", "mode"),
    [
        (INSTALL, 0o755),
        (PKG, 0o755),
        (f"{PKG}/config.local.yaml", 0o600),
        (f"{PKG}/docker-compose.yml", 0o600),
        (f"{PKG}/models", 0o755),
        (f"{PKG}/models/mobilenet_v2.zip", 0o644),
        (f"{PKG}/README.md", 0o644),
        (f"{PKG}/transformer/Dockerfile", 0o644),
    ],
)
def test_owner_and_mode(host, path, mode):
    f = host.file(path)
    assert f.exists
    assert (f.user, f.group, f.mode) == ("root", "root", mode)


def test_usage_zip_is_the_controllers(host):
    with open(os.path.join(FIXTURES, "mobilenet_v2.zip"), "rb") as fh:
        want = hashlib.sha256(fh.read()).hexdigest()
    assert host.file(f"{PKG}/models/mobilenet_v2.zip").sha256sum == want


def test_config_has_the_key_and_the_simulated_broker_starts_with_it(host):
    text = host.file(f"{PKG}/config.local.yaml").content_string
    assert f'      - "{KEY}"\n' in text
    url = re.search(r'^  servingUrl: "http://([0-9.]+):8080"$', text, re.M)
    assert url is not None and url.group(1) in host.check_output("hostname -I").split()
    check = ("import sys; from zerog_sim.broker import validate_config_text; "
             "ok, err, parsed = validate_config_text(open(sys.argv[1]).read(), sys.argv[2]); "
             "print(ok, err, [m['name'] for m in parsed['service']['customizedModels']])")
    out = host.check_output(f"PYTHONPATH=/opt/zerog-sim/kit python3 -c \"{check}\" {PKG}/config.local.yaml {PKG}/models")
    assert out.strip() == "True None ['mobilenet_v2']"


def test_compose_file(host):
    text = host.file(f"{PKG}/docker-compose.yml").content_string
    assert "#PORT#" not in text
    compose = yaml.safe_load(text)
    broker = compose["services"]["0g-fine-tune-broker"]
    mysql = compose["services"]["mysql"]
    assert compose["name"] == "zerog-finetune-broker"
    assert broker["ports"] == ["8080:3080"]
    assert broker["image"] == ("ghcr.io/0glabs/0g-serving-broker:0.2.1"
                               "@sha256:5f0c3a1e9d2b4c6a8e7f9d1b3c5a7e9f1d3b5c7a9e1f3d5b7c9a1e3f5d7b9c1a")
    assert "ports" not in mysql, "MySQL is never published on a host port"
    assert compose["networks"] == {"broker": {"name": "zerog-finetune-broker", "external": False}}
    # One password, three places: compose, the DSN, the controller's secrets file.
    config = host.file(f"{PKG}/config.local.yaml").content_string
    dsn = re.search(r'fineTune: "root:([^@]*)@tcp\(0g-fine-tune-broker-db:3306\)/fineTune\?parseTime=true"', config)
    assert dsn is not None
    assert mysql["environment"]["MYSQL_ROOT_PASSWORD"] == dsn.group(1) == controller_db_password(host)
    assert len(dsn.group(1)) == 32 and dsn.group(1) != "123456"


# ------------------------------------------------------------------ refusals, -vvv


@pytest.mark.parametrize(
    ("extra", "reason"),
    [
        pytest.param({"provider_config_package_sha256": "e" * 64},
                     "did not match " + "e" * 64, id="wrong checksum from the release page"),
        pytest.param({"provider_config_package_sha256": "e" * 64,
                      "provider_config_package_src": os.path.join(FIXTURES, "fine-tuning-broker.tar.gz")},
                     "Nothing was copied to the host.", id="wrong checksum of an offline package"),
        pytest.param({"provider_config_package_url": "http://127.0.0.1:18080/v0.2.2/not-a-broker.tar.gz",
                      "provider_config_package_sha256": "@not-a-broker.tar.gz"},
                     "has no fine-tuning-broker/config.example.yaml", id="package without the release layout"),
    ],
)
def test_bad_package_is_refused_and_leaves_nothing(host, tmp_path, extra, reason):
    extra = dict(extra, provider_config_install_dir="/opt/zerog-refused/broker")
    if extra["provider_config_package_sha256"].startswith("@"):
        extra["provider_config_package_sha256"] = fixture_sha256(extra["provider_config_package_sha256"][1:])
    rc, out = run_converge(tmp_path, extra)
    assert rc != 0
    assert reason in out
    assert not host.file("/opt/zerog-refused").exists
    assert listing(host, INSTALL) == ["0.2.2"]


def test_verbose_diff_run_never_shows_a_key(host, tmp_path):
    """Last test of the file: it leaves the other key in place (the instance is destroyed next)."""
    password = controller_db_password(host)
    secrets = [KEY, KEY.upper(), OTHER_KEY, OTHER_KEY.upper(), password]
    rc, out = run_converge(tmp_path, {"provider_config_private_keys": [OTHER_KEY]}, "-vvv", "--diff")
    assert rc == 0, out[-3000:]
    assert f'"<redacted sha256:{hashlib.sha256(KEY.encode()).hexdigest()[:8]}>"' in out
    assert f'"<redacted sha256:{hashlib.sha256(OTHER_KEY.encode()).hexdigest()[:8]}>"' in out
    for secret in secrets:
        assert secret not in out
    assert f'      - "{OTHER_KEY}"\n' in host.file(f"{PKG}/config.local.yaml").content_string
