"""Bad input through playbooks/provider.yml: refused by preflight, before anything changes.

Each case gives one wrong variable value (as extra vars, on top of the demo inventory of
inventories/sim/group_vars that molecule links in) and runs the provider playbook against the
simulated H100 host. The case passes when:

* ansible-playbook fails;
* the task that stopped the host is one of zerog.compute.preflight (the playbook promises that a
  host failing preflight is left untouched), and no task changed anything except the preflight
  report on the controller. Preflight runs each role's own checks (``preflight_role_checks``,
  the roles' tasks/check.yml), whose tasks show under the role's name: only those may run;
* the preflight report (JSON, on the controller) fails an input check whose detail names the
  variable (and holds, where the case gives one, a fragment of the rule), and so does the output;
* a snapshot of the host's files, packages and systemd units is the same before and after.

The cases run the preflight stage only (``--tags preflight``, and ``--skip-tags`` with the tags of
the later stages, so that the ``always`` tasks of the later roles, their own variable checks, do
not run either): a value that slips through preflight then makes the run succeed at once, instead
of installing Docker and building the image. That is only sound if the untagged playbook stops at
preflight too: test_untagged_playbook_stops_at_preflight proves it once.

A case that the playbook does not refuse at preflight is a finding: mark it xfail (strict, so a
fix makes it fail until the mark is removed) with where it is refused instead. None is left.
"""

from __future__ import annotations

import copy
import json
import pathlib
import re
import shlex
import zipfile
from typing import Any

import pytest
import yaml

RUN_TIMEOUT = 300

# The controller-side task of preflight that may report "changed": its JSON report.
REPORT_TASKS = {"zerog.compute.preflight : Write the report of the host on the controller"}

# What the snapshot lists: every file under these roots (with mode, owner, size and mtime), the
# dpkg database, the Docker volume, and the systemd units (loaded ones with their states, and the
# unit files with theirs). /root/.ansible is Ansible's own remote temporary directory.
SNAPSHOT_ROOTS = ["/etc", "/opt", "/usr/local", "/var/lib/dpkg/status", "/var/lib/docker", "/var/lib/systemd",
                  "/var/log", "/home", "/root", "/srv"]

# The placeholder of a usage ZIP that exists on the controller (written by the usage_zip fixture).
USAGE_ZIP = "@usage_zip@"

# Well-formed values, from the role documentation (argument specs), for the entries that a case
# breaks in one place only.
MODEL = {
    "name": "mobilenet_v2",
    "hash": "0x6b2c9e1f0a8d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3",
    "image": "ghcr.io/example/mobilenet-trainer:1.0",
    "data_type": "image",
    "training_script": "/app/train.py",
    "description": "MobileNet v2 image classification",
    "tokenizer": "0x1f0e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
    "usage_file_src": USAGE_ZIP,
}
CVM = {"name": "finetune", "memory": "2G", "disk": "10G"}
# 64 hex digits: the demo inventory's throw-away key (the second Hardhat development account).
HEX64 = "59c6995e998f97a5a0044966f0945389dc9e86dae88c7a8412f4603b6b78690d"
# A predefined model of broker v0.2.2 (constant.SCRIPT_MAP; reference finetune-broker.md §1.5).
BUILTIN_HASH = "0x8645816c17a8a70ebf32bcc7e621c659e8d0150b1a6bfca27f48f83010c6d12e"
DROP = object()


def model(**changes: Any) -> dict[str, Any]:
    """A customized model entry: MODEL with ``changes`` applied (DROP removes a key)."""
    out = copy.deepcopy(MODEL)
    for key, value in changes.items():
        if value is DROP:
            out.pop(key)
        else:
            out[key] = value
    return out


def cvm(**changes: Any) -> dict[str, Any]:
    """A CVM entry: the demo inventory's instance with ``changes`` applied."""
    return {**CVM, **changes}


# id: pytest id; extra: the extra vars (passed as JSON with -e); var: the variable the refusal must
# name; fragment: a piece of the rule the message must state (optional); xfail: a finding (see above).
CASES: list[dict[str, Any]] = [
    # -- provider_config_private_keys: 64 hex digits, an optional 0x removed, a valid secp256k1 key
    {"id": "key-too-short", "extra": {"provider_config_private_keys": [HEX64[:40]]},
     "var": "provider_config_private_keys", "fragment": "64 hexadecimal"},
    {"id": "key-not-hex", "extra": {"provider_config_private_keys": ["zz" + HEX64[2:]]},
     "var": "provider_config_private_keys", "fragment": "non-hexadecimal"},
    {"id": "key-0x-wrong-length", "extra": {"provider_config_private_keys": ["0x" + HEX64[:63]]},
     "var": "provider_config_private_keys", "fragment": "63 characters"},
    {"id": "key-zero", "extra": {"provider_config_private_keys": ["0" * 64]},
     "var": "provider_config_private_keys", "fragment": "secp256k1"},
    {"id": "key-none", "extra": {"provider_config_private_keys": []},
     "var": "provider_config_private_keys"},
    {"id": "key-not-a-list", "extra": {"provider_config_private_keys": {"wallet": HEX64}},
     "var": "provider_config_private_keys", "fragment": "convert to list"},
    # -- provider_config_serving_url: http(s)://host[:port], no path, port = published port here
    {"id": "url-with-path", "extra": {"provider_config_serving_url": "http://203.0.113.7:8080/v1"},
     "var": "provider_config_serving_url", "fragment": "no path"},
    {"id": "url-trailing-slash", "extra": {"provider_config_serving_url": "http://203.0.113.7:8080/"},
     "var": "provider_config_serving_url", "fragment": "trailing slash"},
    {"id": "url-not-http", "extra": {"provider_config_serving_url": "ftp://203.0.113.7:8080"},
     "var": "provider_config_serving_url", "fragment": "http"},
    {"id": "url-port-not-published",
     "extra": {"provider_config_serving_url": "http://{{ ansible_facts['default_ipv4']['address'] }}:9090"},
     "var": "provider_config_serving_url", "fragment": "provider_config_published_port"},
    # -- ports
    {"id": "published-port-70000", "extra": {"provider_config_published_port": 70000},
     "var": "provider_config_published_port", "fragment": "65535"},
    {"id": "published-port-not-int", "extra": {"provider_config_published_port": "eighty"},
     "var": "provider_config_published_port", "fragment": "convert to int"},
    {"id": "cvm-port-not-serving-port", "extra": {"dstack_cvm_instances": [cvm(port=9090)]},
     "var": "dstack_cvm_instances", "fragment": "provider_config_serving_url"},
    {"id": "kms-port-0", "extra": {"local_kms_port": 0},
     "var": "local_kms_port", "fragment": "65535"},
    # -- provider_config_customized_models
    {"id": "model-data-type", "extra": {"provider_config_customized_models": [model(data_type="video")]},
     "var": "provider_config_customized_models", "fragment": "data_type must be one of: text, image"},
    {"id": "model-hash-format", "extra": {"provider_config_customized_models": [model(hash="0x1234")]},
     "var": "provider_config_customized_models[0].hash", "fragment": "64 hexadecimal"},
    {"id": "model-builtin-hash", "extra": {"provider_config_customized_models": [model(hash=BUILTIN_HASH)]},
     "var": "provider_config_customized_models[0].hash", "fragment": "predefined"},
    {"id": "model-duplicate-name",
     "extra": {"provider_config_customized_models": [model(), model(name="MobileNet_V2", hash="0x" + HEX64)]},
     "var": "provider_config_customized_models[1].name", "fragment": "unique"},
    {"id": "model-duplicate-hash",
     "extra": {"provider_config_customized_models": [model(), model(name="resnet50")]},
     "var": "provider_config_customized_models[1].hash", "fragment": "unique"},
    {"id": "model-usage-file-missing",
     "extra": {"provider_config_customized_models": [model(usage_file_src="/nonexistent/mobilenet_v2.zip")]},
     "var": "provider_config_customized_models", "fragment": "/nonexistent/mobilenet_v2.zip"},
    {"id": "model-image-missing", "extra": {"provider_config_customized_models": [model(image=DROP)]},
     "var": "provider_config_customized_models", "fragment": "missing required arguments: image"},
    {"id": "model-script-relative", "extra": {"provider_config_customized_models": [model(training_script="train.py")]},
     "var": "provider_config_customized_models[0].training_script", "fragment": "absolute"},
    # -- dstack_cvm_instances
    {"id": "cvm-duplicate-name", "extra": {"dstack_cvm_instances": [cvm(), cvm()]},
     "var": "dstack_cvm_instances", "fragment": "once"},
    {"id": "cvm-name-with-space", "extra": {"dstack_cvm_instances": [cvm(name="fine tune")]},
     "var": "dstack_cvm_instances", "fragment": "fine tune"},
    {"id": "cvm-disk-without-unit", "extra": {"dstack_cvm_instances": [cvm(disk="100")]},
     "var": "dstack_cvm_instances", "fragment": "no unit"},
    {"id": "cvm-memory-bad-unit", "extra": {"dstack_cvm_instances": [cvm(memory="2GB")]},
     "var": "dstack_cvm_instances", "fragment": "2GB"},
    {"id": "cvm-unknown-gpu", "extra": {"dstack_cvm_instances": [cvm(gpus=["99:00.0"])]},
     "var": "dstack_cvm_instances", "fragment": "99:00.0"},
    {"id": "cvm-gpu-not-an-address", "extra": {"dstack_cvm_instances": [cvm(gpus=["GPU0"])]},
     "var": "dstack_cvm_instances[0].gpus", "fragment": "not a PCI address"},
    {"id": "cvm-extra-port-sctp", "extra": {"dstack_cvm_instances": [cvm(extra_ports=["sctp:0.0.0.0:9000:9000"])]},
     "var": "dstack_cvm_instances[0].extra_ports", "fragment": "not tcp or udp"},
    {"id": "cvm-image-missing", "extra": {"dstack_cvm_instances": [cvm(image="dstack-nvidia-9.9.9")]},
     "var": "dstack_cvm_instances", "fragment": "dstack-nvidia-9.9.9"},
    {"id": "cvm-image-empty", "extra": {"dstack_cvm_instances": [cvm(image="")]},
     "var": "dstack_cvm_instances[0].image", "fragment": "drop the key to use dstack_cvm_image"},
    {"id": "cvm-vcpus-not-int", "extra": {"dstack_cvm_instances": [cvm(vcpus="two")]},
     "var": "dstack_cvm_instances", "fragment": "'vcpus' is of type str"},
    # -- private_ml_sdk
    {"id": "sdk-version-empty", "extra": {"private_ml_sdk_version": ""},
     "var": "private_ml_sdk_version", "fragment": "must not be empty"},
    {"id": "sdk-prebuilt-sha256-malformed",
     "extra": {"private_ml_sdk_image_source": "prebuilt", "private_ml_sdk_prebuilt_url": "file:///srv/dstack-nvidia-0.5.5.tar.gz",
               "private_ml_sdk_prebuilt_sha256": "sha256:1234"},
     "var": "private_ml_sdk_prebuilt_sha256", "fragment": "64 hex"},
    {"id": "sdk-build-user-root", "extra": {"private_ml_sdk_build_user": "root"},
     "var": "private_ml_sdk_build_user", "fragment": "root"},
    # -- docker
    {"id": "docker-users-not-a-list", "extra": {"docker_users": {"alice": True}},
     "var": "docker_users", "fragment": "convert to list"},
    {"id": "docker-source-unknown", "extra": {"docker_source": "snap"},
     "var": "docker_source", "fragment": "docker, distribution"},
    # -- provider_config, other
    {"id": "package-sha256-malformed", "extra": {"provider_config_package_sha256": "sha256:abc"},
     "var": "provider_config_package_sha256", "fragment": "64 hex"},
    {"id": "database-password-short", "extra": {"provider_config_database_password": "short"},
     "var": "provider_config_database_password", "fragment": "12 to 128"},
    # -- names: a misspelt variable and an unknown waived check
    {"id": "variable-misspelt", "extra": {"provider_config_serving_ur": "http://203.0.113.7:8080"},
     "var": "provider_config_serving_ur", "fragment": "did you mean provider_config_serving_url"},
    {"id": "waive-unknown-check", "extra": {"preflight_waive": ["sgx_device"]},
     "var": "preflight_waive", "fragment": "did you mean sgx_devices"},
]

# The case the untagged playbook runs once (refused by preflight, so the full run is short).
UNTAGGED_CASE = "docker-users-not-a-list"


def _params() -> list[Any]:
    params = []
    for case in CASES:
        marks = [pytest.mark.xfail(reason=case["xfail"], strict=True)] if "xfail" in case else []
        params.append(pytest.param(case, id=case["id"], marks=marks))
    return params


# -- the host ---------------------------------------------------------------------------------------

_PARTS = ("files", "units", "unit_files")


def snapshot(host) -> dict[str, list[str]]:
    """Files (path, mode, owner, size, mtime), loaded units and unit files of the instance, in one exec."""
    roots = " ".join(shlex.quote(root) for root in SNAPSHOT_ROOTS)
    text = host.check_output(
        f"find {roots} -xdev -path /root/.ansible -prune -o -printf '%p %M %U:%G %s %T@\\n'"
        " && echo @@ && systemctl list-units --all --plain --no-legend --no-pager"
        " && echo @@ && systemctl list-unit-files --no-legend --no-pager"
    )
    parts = text.split("\n@@\n")
    assert len(parts) == len(_PARTS), text[-2000:]
    return {name: sorted(part.splitlines()) for name, part in zip(_PARTS, parts, strict=True)}


def differences(before: dict[str, list[str]], after: dict[str, list[str]]) -> dict[str, dict[str, list[str]]]:
    """What appeared and what vanished, per part of the snapshot (empty parts left out)."""
    out = {}
    for part in _PARTS:
        appeared = sorted(set(after[part]) - set(before[part]))
        vanished = sorted(set(before[part]) - set(after[part]))
        if appeared or vanished:
            out[part] = {"appeared": appeared, "vanished": vanished}
    return out


# -- the playbook run ------------------------------------------------------------------------------


def later_stage_tags(repo: pathlib.Path) -> list[str]:
    """The tags of provider.yml's tasks other than preflight's (read from the playbook itself)."""
    plays = yaml.safe_load((repo / "playbooks" / "provider.yml").read_text(encoding="utf-8"))
    tags: set[str] = set()
    for play in plays:
        for task in play.get("pre_tasks", []) + play.get("tasks", []):
            tags.update(task.get("tags", []))
    return sorted(tags - {"preflight", "always"})


# The output the task parser below reads: the default callback with every ok and skipped result,
# on stdout only (no log file, no extra callbacks).
RUN_ENV = {
    "ANSIBLE_STDOUT_CALLBACK": "ansible.builtin.default",
    "ANSIBLE_DISPLAY_OK_HOSTS": "true",
    "ANSIBLE_DISPLAY_SKIPPED_HOSTS": "true",
    "ANSIBLE_RETRY_FILES_ENABLED": "false",
}
RUN_UNSET = ("ANSIBLE_LOG_PATH", "ANSIBLE_CALLBACKS_ENABLED")


_TASK = re.compile(r"^(?:TASK|RUNNING HANDLER) \[(?P<name>.*)\] \**$")
_RESULT = re.compile(r"^(?P<status>ok|changed|fatal|failed|skipping|included): \[")


def results(output: str) -> list[tuple[str, str]]:
    """(task name, status) of every host result the default callback printed, in order."""
    events = []
    task = ""
    for line in output.splitlines():
        header = _TASK.match(line)
        if header:
            task = header.group("name")
            continue
        result = _RESULT.match(line)
        if result:
            events.append((task, result.group("status")))
    return events


def expand(extra: dict[str, Any], usage_zip: pathlib.Path) -> dict[str, Any]:
    """The case's extra vars with the usage ZIP placeholder replaced by the real file."""
    return json.loads(json.dumps(extra).replace(USAGE_ZIP, str(usage_zip)))


@pytest.fixture(scope="module")
def usage_zip(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """A usage ZIP on the controller, for the model entries that must be valid but for one key."""
    path = tmp_path_factory.mktemp("usage") / "mobilenet_v2.zip"
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("mobilenet_v2/README.md", "usage of the test model\n")
    return path


@pytest.fixture(scope="module")
def baseline(host) -> dict[str, list[str]]:
    """The host before the first case."""
    return snapshot(host)


def tail(text: str, size: int = 4000) -> str:
    """The end of a long output, for an assertion message."""
    return text if len(text) <= size else "...\n" + text[-size:]


def refused_at_preflight(host, run, case: dict[str, Any], usage_zip: pathlib.Path, report_dir: pathlib.Path,
                         skip_stages: list[str] | None) -> list[tuple[str, str]]:
    """Run the case with ``run`` (the provider_playbook fixture) and assert everything the module
    docstring promises; return the task results.

    ``skip_stages`` (the later stages' tags) runs the preflight stage only: ``--tags preflight`` and,
    so that the ``always`` tasks of the later roles do not run either, ``--skip-tags`` with them;
    ``None`` runs the playbook without tags.
    """
    before = snapshot(host)
    tags = ["--tags", "preflight", "--skip-tags", ",".join(skip_stages)] if skip_stages else []
    rc, output, seconds = run(*tags, report_dir=report_dir, extra=expand(case["extra"], usage_zip), env=RUN_ENV,
                              unset=RUN_UNSET, timeout=RUN_TIMEOUT)
    after = snapshot(host)
    print(f"{case['id']}: rc {rc} in {seconds:.1f} s ({'preflight stage only' if skip_stages else 'untagged'})")
    events = results(output)
    failures = [task for task, status in events if status in ("fatal", "failed")]
    changed = sorted({task for task, status in events if status == "changed"} - REPORT_TASKS)
    assert rc != 0, f"the playbook accepted {case['var']}:\n{tail(output)}"
    # The last failure is the one that stopped the host (preflight rescues its own argument check).
    assert failures and failures[-1].startswith("zerog.compute.preflight : "), tail(output)
    assert changed == []
    report = json.loads((report_dir / f"{host.backend.get_hostname()}.json").read_text(encoding="utf-8"))
    assert report["result"] == "fail"
    refusals = [check["detail"] for check in report["checks"]
                if check["name"].startswith("input") and check["ok"] is False]
    naming = [detail for detail in refusals if case["var"] in detail]
    assert naming, refusals
    if "fragment" in case:
        assert [detail for detail in naming if case["fragment"] in detail], naming
    assert case["var"] in output
    assert differences(before, after) == {}
    return events


@pytest.mark.parametrize("case", _params())
def test_bad_input_is_refused_before_any_change(host, provider_playbook, repo_dir, case, usage_zip, tmp_path,
                                                baseline):
    refused_at_preflight(host, provider_playbook, case, usage_zip, tmp_path, skip_stages=later_stage_tags(repo_dir))


def check_task_patterns(repo: pathlib.Path) -> list[re.Pattern[str]]:
    """'<role FQCN> : <task>' of every task in the roles' tasks/check.yml and the files it imports,
    as patterns (a templated part of a name matches anything)."""
    patterns: list[re.Pattern[str]] = []

    def read(role: pathlib.Path, path: pathlib.Path) -> None:
        for task in yaml.safe_load(path.read_text(encoding="utf-8")) or []:
            parts = re.split(r"\{\{.*?\}\}", f"zerog.compute.{role.name} : {task['name']}")
            patterns.append(re.compile(".*".join(re.escape(part) for part in parts) + "$"))
            imported = task.get("ansible.builtin.import_tasks")
            if imported:
                read(role, role / "tasks" / imported)

    for check in sorted((repo / "roles").glob("*/tasks/check.yml")):
        read(check.parents[1], check)
    return patterns


def test_untagged_playbook_stops_at_preflight(host, provider_playbook, repo_dir, usage_zip, tmp_path, baseline):
    """The whole playbook, without tags, on one of the cases: no task after preflight runs.

    Before its report, preflight runs the roles' own checks, whose tasks show under the role's name;
    those are the only tasks of other roles that may run, and the last task is preflight's.
    """
    case = next(c for c in CASES if c["id"] == UNTAGGED_CASE)
    events = refused_at_preflight(host, provider_playbook, case, usage_zip, tmp_path, skip_stages=None)
    tasks = [task for task, _status in events if " : " in task]
    assert tasks[-1].startswith("zerog.compute.preflight : ")
    others = {task for task in tasks if not task.startswith("zerog.compute.preflight : ")}
    patterns = check_task_patterns(repo_dir)
    assert others
    assert [task for task in sorted(others) if not any(p.match(task) for p in patterns)] == []


def test_the_cases_left_the_host_as_it_was(host, baseline):
    """After every case (refused or not), the host is as it was before the first one."""
    assert differences(baseline, snapshot(host)) == {}


def test_the_table_is_sound(repo_dir):
    ids = [case["id"] for case in CASES]
    assert len(ids) == len(set(ids))
    assert len(ids) >= 25
    untagged = [case for case in CASES if case["id"] == UNTAGGED_CASE]
    assert len(untagged) == 1 and "xfail" not in untagged[0]
    # every case names a variable of its extra vars (or the option of one it breaks)
    for case in CASES:
        assert any(case["var"].startswith(name) for name in case["extra"]), case["id"]
    # the preflight-only runs skip exactly the stages after preflight
    assert later_stage_tags(repo_dir) == ["docker", "dstack_cvm", "local_kms", "private_ml_sdk",
                                          "provider_config", "report", "verify"]
