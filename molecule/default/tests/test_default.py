"""playbooks/provider.yml on one simulated H100 host, after check, converge and idempotence.

What an operator checks by hand after the playbook, plus what the playbook itself promises:
check mode on the fresh host predicted the changes the real run then made, and the wallet's
private key is nowhere but in the root-only configuration files.
"""

from __future__ import annotations

import json
import os
import pathlib
import re

import pytest

PACKAGE = "/opt/zerog/broker/0.2.2"
SDK = "/opt/private-ml-sdk"
VM = f"{SDK}/vms/finetune"
UNIT = "dstack-cvm-finetune.service"
KEY = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
GET = (
    "python3 -c \"import json, sys, urllib.request; "
    "r = urllib.request.urlopen('http://127.0.0.1:8080' + sys.argv[1], timeout=10); "
    "print(json.dumps(dict(status=r.status, body=json.load(r))))\" "
)
# The simulated guest's own file system (the stand-in QEMU keeps it under the VM directory; on a
# real host it lives inside the TD, encrypted): what the guest holds is not a host file.
GUEST = f"{VM}/.sim-guest/"
# The key as a pattern that does not hold it literally: the test's own grep must not put the key
# in a process argv, where the argv sampler would find it.
KEY_PATTERN = f"{KEY[:32]}[{KEY[32]}]{KEY[33:]}"
# What the argv sampler started by prepare.yml records.
ARGV_SAMPLES = "/var/lib/zerog-argv-samples"


PREDICTED = " (predicted in check mode"
# Where check mode on a fresh host predicts several tasks of the real run with one task (the real
# tasks need what earlier tasks only predicted: a user, a unit, a downloaded file, a VM
# directory), the prediction stands for exactly these; any other change must be predicted by a
# task of the same name.
STANDS_FOR = {
    "zerog.compute.docker : Enable and start docker": [
        "zerog.compute.docker : Restart docker",
    ],
    "zerog.compute.private_ml_sdk : Check out the pinned ref with its submodules": [
        "zerog.compute.private_ml_sdk : Write the git configuration for local mirrors",
        "zerog.compute.private_ml_sdk : Check out the pinned ref with its submodules",
    ],
    "zerog.compute.private_ml_sdk : Start the build": [
        "zerog.compute.private_ml_sdk : Create the runner's directory",
        "zerog.compute.private_ml_sdk : Install the build runner",
        "zerog.compute.private_ml_sdk : Create the build log",
        "zerog.compute.private_ml_sdk : Queue the build",
        "zerog.compute.private_ml_sdk : Start build.sh in the background",
    ],
    # The checkout is v0.5.5 here: its key provider is started by run.sh (detached compose).
    "zerog.compute.local_kms : Start the key provider": [
        "zerog.compute.local_kms : Run run.sh (docker compose up --build -d)",
    ],
    "zerog.compute.provider_config : Install the package": [
        "zerog.compute.provider_config : Create the install directory",
        "zerog.compute.provider_config : Create a staging directory beside the package directory",
        "zerog.compute.provider_config : Copy the offline package from the controller",
        "zerog.compute.provider_config : Unpack the package in the staging directory",
        "zerog.compute.provider_config : Mark the package with its checksum",
        "zerog.compute.provider_config : Move the package into place",
        "zerog.compute.provider_config : Remove the staging directory",
    ],
    "zerog.compute.dstack_cvm : Deliver the files": [
        "zerog.compute.dstack_cvm : Create the directory of the rendered compose text",
        "zerog.compute.dstack_cvm : Keep the compose text of the 0.5 guest (what dstack new reads)",
        "zerog.compute.dstack_cvm : Deliver the configuration as .user-config (0.5)",
    ],
}


def expand(predicted):
    """The real task names a check-mode run's changed tasks stand for."""
    out = set()
    for name in predicted:
        base = name.split(PREDICTED, 1)[0]
        out.update(STANDS_FOR.get(base, [base]) if PREDICTED in name else [name])
    return out


def recorded():
    """What the zerog_changes callback recorded of each run of converge.yml, in order."""
    directory = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "changes"
    return [json.loads(path.read_text(encoding="utf-8")) for path in sorted(directory.glob("*.json"))]


def runs():
    """The recorded runs of converge.yml: [(name, {host: [changed task, ...]}), ...] in order."""
    return [("check" if doc["check_mode"] else "run", doc["changed"]) for doc in recorded()]


def test_check_mode_predicted_the_converge(host):
    recorded = runs()
    kinds = [kind for kind, _changes in recorded]
    assert "check" in kinds, kinds
    start = len(kinds) - 1 - kinds[::-1].index("check")  # the last check, then converge and idempotence
    recorded = recorded[start:]
    assert [kind for kind, _changes in recorded][:3] == ["check", "run", "run"], kinds
    name = host.backend.name
    predicted = expand(recorded[0][1].get(name, []))
    made = set(recorded[1][1].get(name, []))
    assert made, "the converge changed nothing: the instance was not fresh"
    assert sorted(made - predicted) == [], "changed by converge but not predicted by check mode"
    assert sorted(predicted - made) == [], "predicted by check mode but not changed by converge"
    assert recorded[2][1].get(name, []) == []  # the second run changed nothing


def test_gpus_are_read_once_per_run(host):
    """preflight reads the GPUs, dstack_cvm takes that result: one dstack_gpu_info per host and run.

    Counted in the check run, the converge and the idempotence run alike.
    """
    docs = recorded()
    assert len(docs) >= 3, [doc["check_mode"] for doc in docs]
    name = host.backend.name
    for doc in docs[-3:]:
        ran = doc["ran"][name]
        assert ran.get("zerog.compute.dstack_gpu_info") == 1, ran
        assert ran.get("zerog.compute.tdx_host_info") == 1, ran
        assert ran.get("zerog.compute.dstack_cvm", 0) >= 1, ran


def test_docker_is_asked_once_per_run(host):
    """local_kms and provider_config take the docker role's verification: no bare `docker compose version` runs.

    Converge and idempotence run: only the docker role asks Compose (`--short`). The idempotence
    run builds nothing, so nothing runs a bare `docker info` either (the first converge's build
    asks it as the build user).
    """
    docs = recorded()
    runs = [doc for doc in docs[-3:] if not doc["check_mode"]]
    assert len(runs) >= 2, [doc["check_mode"] for doc in docs[-3:]]
    name = host.backend.name
    for doc in runs:
        commands = doc["commands"][name]
        assert commands.get("docker compose version --short") == 1, commands
        assert "docker compose version" not in commands, commands
    assert "docker info" not in runs[-1]["commands"][name], runs[-1]["commands"][name]


def test_host_and_checkout_are_read_once_per_run(host):
    """local_kms takes preflight's SGX and QCNL checks; private_ml_sdk reads its checkout in one module call.

    In the check run, the converge and the idempotence run, local_kms never runs its own `stat` of
    the SGX device nodes, and no bare git command reads the checkout; in the converge and the
    idempotence run (the build user exists), git_checkout_info reads it once.
    """
    docs = recorded()
    assert len(docs) >= 3, [doc["check_mode"] for doc in docs]
    name = host.backend.name
    for doc in docs[-3:]:
        commands = doc["commands"].get(name, {})
        assert [c for c in commands if c.startswith("stat --dereference")] == [], commands
        assert [c for c in commands if c.startswith(f"git -C {SDK} ")] == [], commands
        if not doc["check_mode"]:
            assert doc["ran"][name].get("zerog.compute.git_checkout_info") == 1, doc["ran"][name]


def test_docker_packages_are_read_in_one_call(host):
    """docker asks dpkg, its cached Compose .deb and its apt source files through deb_packages_info.

    No bare dpkg-query or dpkg-deb runs in any run. The check run and the converge read twice (the
    .deb is fetched in between, for real or predicted); the idempotence run reads once, finds the
    cached .deb by its checksum and so downloads nothing.
    """
    docs = recorded()
    assert len(docs) >= 3, [doc["check_mode"] for doc in docs]
    name = host.backend.name
    for doc in docs[-3:]:
        commands = doc["commands"].get(name, {})
        assert [c for c in commands if c.split(" ", 1)[0] in ("dpkg-query", "dpkg-deb")] == [], commands
    reads = [doc["ran"][name].get("zerog.compute.deb_packages_info") for doc in docs[-3:]]
    assert reads == [2, 2, 1], reads
    assert "ansible.builtin.get_url" not in docs[-1]["ran"][name], docs[-1]["ran"][name]


def test_role_files_are_read_in_one_call_each(host):
    """dstack_cvm reads the files of its CVMs, local_kms run.sh and its compose, each in one call.

    No slurp runs in any run (local_kms's QCNL read is taken from preflight); in the converge and
    the idempotence run, file_contents_info runs once for dstack_cvm and once for local_kms.
    """
    docs = recorded()
    assert len(docs) >= 3, [doc["check_mode"] for doc in docs]
    name = host.backend.name
    for doc in docs[-3:]:
        ran = doc["ran"][name]
        assert "ansible.builtin.slurp" not in ran, ran
        if not doc["check_mode"]:
            assert ran.get("zerog.compute.file_contents_info") == 2, ran


def test_image_is_read_once_in_the_idempotence_run(host):
    """dstack_cvm takes the image private_ml_sdk verified in the same play (private_ml_sdk_facts).

    The idempotence run builds nothing, so private_ml_sdk's read of the image is the only one.
    """
    docs = recorded()
    assert len(docs) >= 3 and not docs[-1]["check_mode"], [doc["check_mode"] for doc in docs]
    ran = docs[-1]["ran"][host.backend.name]
    assert ran.get("zerog.compute.dstack_image_info") == 1, ran


def test_config_is_root_only(host):
    config = host.file(f"{PACKAGE}/config.local.yaml")
    assert (config.user, config.group, config.mode) == ("root", "root", 0o600)
    assert KEY in config.content_string


def test_cvm_unit_active_and_enabled(host):
    service = host.service(UNIT)
    assert service.is_running
    assert service.is_enabled
    unit = host.file(f"/etc/systemd/system/{UNIT}").content_string
    assert f"ExecStart={SDK}/meta-dstack-nvidia/scripts/bin/dstack run {VM} --kp-port 3443\n" in unit


def test_key_provider_listens_on_loopback_only(host):
    assert host.socket("tcp://127.0.0.1:3443").is_listening
    assert not host.socket("tcp://0.0.0.0:3443").is_listening


def test_cvm_boots_the_image_the_checkout_built(host):
    manifest = json.loads(host.file(f"{VM}/vm-manifest.json").content_string)
    image = manifest.get("image_path") or manifest.get("image")
    assert image.rstrip("/").endswith("images/dstack-nvidia-0.5.5")
    metadata = json.loads(host.file(f"{SDK}/images/dstack-nvidia-0.5.5/metadata.json").content_string)
    assert metadata["version"] == "0.5.5"


def test_port_answers_with_the_configured_models(host):
    answer = json.loads(host.check_output(GET + "/v1/model"))
    assert answer["status"] == 200
    assert answer["body"] == []  # inventories/sim configures no customized model on a 0.5 guest


def test_report_on_the_controller(host):
    report_dir = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "reports"
    report = json.loads((report_dir / f"{host.backend.name}-provider.json").read_text(encoding="utf-8"))
    assert report["check_mode"] is False
    assert report["image"]["version"] == "0.5.5"
    assert report["verify"]["key_provider"]["ok"] is True
    assert [(c["name"], c["state"], c["port"]) for c in report["cvms"]] == [("finetune", "started", 8080)]
    assert report["cvms"][0]["logs"] == f"journalctl -u {UNIT} -f"
    assert len(report["cvms"][0]["gpus"]) == 1
    preflight = json.loads((report_dir / f"{host.backend.name}.json").read_text(encoding="utf-8"))
    assert preflight["result"] == "pass"


@pytest.mark.parametrize(
    "where,command",
    [
        ("the journal", "journalctl --no-pager -o cat"),
        ("a process's argv", "ps -eo args"),
        ("a process's environment", "sh -c 'cat /proc/[0-9]*/environ 2>/dev/null | tr \"\\0\" \"\\n\"'"),
    ],
)
def test_private_key_not_in(host, where, command):
    assert KEY not in host.check_output(command), f"the private key is in {where}"


def test_private_key_only_in_root_only_config_files(host):
    found = host.check_output(
        f"grep -rlsE {KEY_PATTERN} / --exclude-dir=proc --exclude-dir=sys --exclude-dir=dev --exclude-dir=run || true"
    ).split()
    allowed = {f"{PACKAGE}/config.local.yaml", f"{VM}/shared/.user-config"}
    on_host = {path for path in found if not path.startswith(GUEST)}
    assert on_host <= allowed, f"the private key is in {sorted(on_host - allowed)}"
    assert f"{PACKAGE}/config.local.yaml" in on_host
    for path in on_host:
        f = host.file(path)
        assert (f.user, f.mode) == ("root", 0o600), path


def test_private_key_not_in_ansible_log():
    """Every run of the scenario (check, converge, idempotence) was made at -vvv --diff (molecule.yml)."""
    log = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "ansible.log"
    text = log.read_text(encoding="utf-8")
    assert "zerog.compute.dstack_cvm" in text  # the log holds the runs
    assert re.search(r"^.*<[^>]+> EXEC ", text, re.M), "the runs were not logged at -vvv"
    assert re.search(r"^--- before", text, re.M), "the runs were not logged with --diff"
    assert KEY not in text


def test_private_key_not_in_any_argv_sampled_during_the_runs(host):
    """The argv of every process the sampler saw from prepare on (molecule/resources/argv_sampler.py)."""
    samples = host.file(ARGV_SAMPLES)
    assert (samples.user, samples.mode) == ("root", 0o600)
    seen = samples.content_string
    # the sampler ran through the playbook: it saw the CVM's dstack run, its QEMU and the broker image build
    for proof in ("/meta-dstack-nvidia/scripts/bin/dstack run", "qemu-system-x86_64", "docker"):
        assert proof in seen, f"no sampled argv holds {proof!r}: the sampler did not run during the playbook"
    assert KEY not in seen
    assert KEY.upper() not in seen.upper()
