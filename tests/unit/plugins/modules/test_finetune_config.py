"""Tests of zerog.compute.finetune_config (plugins/modules/finetune_config.py).

Tables (test_finetune_config.yaml): refused inputs with the exact message, accepted inputs
with the exact warnings, exact renderings. The rest covers the file work (atomic write, mode,
owner, idempotence, check mode, masked diff), the YAML emitter (round trips through PyYAML and
through the simulated broker's yaml.v2 decoder) and acceptance by the simulated broker.
"""

from __future__ import annotations

import copy
import grp
import hashlib
import json
import os
import pwd
import stat
import sys

import pytest
import yaml
from ansible.module_utils.common import warnings as ansible_warnings
from ansible_collections.zerog.compute.plugins.module_utils import _broker_schema as schema
from ansible_collections.zerog.compute.plugins.modules import finetune_config
from ansible_collections.zerog.compute.tests.unit.harness import case_file, run_module

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
SIM = os.path.join(REPO, "tests", "sim")

KEY = "2f6c1d4a9b8e7f0a3c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3"
PASSWORD = "Db-Password.For_Tests1"
MODEL = {
    "name": "mobilenet_v2",
    "hash": "0x6b2c9e1f0a8d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3",
    "image": "ghcr.io/example/trainer:1.0",
    "data_type": "image",
    "training_script": "/app/train.py",
    "description": "MobileNet v2",
    "tokenizer": "0x1f0e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0",
}
BASE = {
    "private_keys": ["0x" + KEY],
    "serving_url": "http://203.0.113.10:8080",
    "published_port": 8080,
    "host_addresses": ["203.0.113.10", "2001:db8::10", "provider.example.com"],
    "database_password": PASSWORD,
    "customized_models": [MODEL],
}
ZIP = b"PK\x03\x04\x14\x00\x00\x00"

with open(case_file(__file__), encoding="utf-8") as _fh:
    TABLE = yaml.safe_load(_fh)


def _ids(cases):
    return [pytest.param(c, id=c["id"]) for c in cases]


@pytest.fixture(autouse=True)
def _fresh_warnings():
    """Ansible keeps module warnings in a process-wide registry: start each test empty."""
    ansible_warnings._global_warnings.clear()
    yield
    ansible_warnings._global_warnings.clear()


@pytest.fixture(name="pkg")
def fixture_pkg(tmp_path):
    """A package directory with models/mobilenet_v2.zip, as the role leaves it."""
    pkg = tmp_path / "pkg"
    (pkg / "models").mkdir(parents=True)
    (pkg / "models" / "mobilenet_v2.zip").write_bytes(ZIP)
    return pkg


def make_args(pkg, overrides=None):
    args = copy.deepcopy(BASE)
    args.update({
        "dest": str(pkg / "config.local.yaml"),
        "owner": pwd.getpwuid(os.getuid()).pw_name,
        "group": grp.getgrgid(os.getgid()).gr_name,
    })
    for key, value in (overrides or {}).items():
        if value == "__absent__":
            args.pop(key, None)
        else:
            args[key] = value
    return args


def put_files(pkg, files):
    for rel, content in (files or {}).items():
        path = pkg / rel
        if rel.endswith("/"):
            path.mkdir(parents=True, exist_ok=True)
            continue
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        path.write_bytes(content.encode("latin-1"))


def run(args, check=False, diff=False):
    return run_module(finetune_config.main, args, check_mode=check, diff=diff)


def warnings_given():
    """The warnings the module gave since the test started."""
    return list(ansible_warnings.get_warning_messages())


def expand(text, pkg):
    return text.format(models_dir=str(pkg / "models"), dest=str(pkg / "config.local.yaml"))


def listing(pkg):
    return sorted(p.name for p in pkg.iterdir())


# ------------------------------------------------------------------------ tables


def test_the_table_has_enough_refusals():
    assert len(TABLE["refused"]) >= 25


@pytest.mark.parametrize("case", _ids(TABLE["refused"]))
def test_refused(pkg, case):
    put_files(pkg, case.get("files"))
    before = listing(pkg)
    result = run(make_args(pkg, case["input"]))
    assert result.failed, result.result
    assert result.msg == expand(case["msg"], pkg)
    if "errors" in result.result:
        assert "; ".join(f"{e['option']}: {e['rule']}" for e in result["errors"]) == result.msg
    assert listing(pkg) == before, "nothing may be written when an input is refused"
    dumped = json.dumps(result.result)
    assert KEY not in dumped and KEY.upper() not in dumped and PASSWORD not in dumped


@pytest.mark.parametrize("case", _ids(TABLE["warned"]))
def test_warned(pkg, case):
    put_files(pkg, case.get("files"))
    result = run(make_args(pkg, case["input"]))
    warnings = warnings_given()
    assert not result.failed, result.msg
    assert warnings == [expand(w, pkg) for w in case["warnings"]]


@pytest.mark.parametrize("case", _ids(TABLE["rendered"]))
def test_rendered(pkg, case):
    result = run(make_args(pkg, case["input"]))
    assert not result.failed, result.msg
    assert result.changed
    text = (pkg / "config.local.yaml").read_text(encoding="utf-8")
    assert text == case["text"]
    assert schema.check_document(yaml.safe_load(text), schema.get_version("0.2.2").schema) == []


# -------------------------------------------------------------------- file work


def test_file_is_private_and_second_run_changes_nothing(pkg):
    args = make_args(pkg)
    first = run(args)
    assert first.changed and not first.failed
    dest = pkg / "config.local.yaml"
    st = dest.stat()
    assert stat.S_IMODE(st.st_mode) == 0o600
    assert (st.st_uid, st.st_gid) == (os.getuid(), os.getgid())
    content, inode, mtime = dest.read_bytes(), st.st_ino, st.st_mtime_ns
    second = run(args)
    assert not second.changed
    assert dest.read_bytes() == content
    assert (dest.stat().st_ino, dest.stat().st_mtime_ns) == (inode, mtime), "an unchanged file is not rewritten"
    assert listing(pkg) == ["config.local.yaml", "models"], "no temporary file is left behind"


def test_a_change_replaces_the_file_atomically(pkg):
    args = make_args(pkg)
    run(args)
    dest = pkg / "config.local.yaml"
    inode = dest.stat().st_ino
    args["price_per_token"] = 7
    result = run(args)
    assert result.changed
    assert "  pricePerToken: 7\n" in dest.read_text()
    assert dest.stat().st_ino != inode, "the new content arrives by rename, not by rewriting in place"
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600


def test_check_mode_writes_nothing_and_predicts(pkg):
    args = make_args(pkg)
    result = run(args, check=True, diff=True)
    assert result.changed and not result.failed
    assert not (pkg / "config.local.yaml").exists()
    assert result["diff"][0]["before"] == ""
    assert "contractAddress:" in result["diff"][0]["after"]
    run(args)
    again = run(args, check=True)
    assert not again.changed


def test_check_mode_on_a_fresh_host_without_the_package(tmp_path):
    args = make_args(tmp_path / "absent", {"check_usage_files": False})
    result = run(args, check=True)
    assert result.changed and not result.failed
    assert not (tmp_path / "absent").exists()


def test_missing_directory_fails_outside_check_mode(tmp_path):
    args = make_args(tmp_path / "absent", {"check_usage_files": False})
    result = run(args)
    assert result.failed
    assert result.msg == (f"Cannot write {tmp_path}/absent/config.local.yaml: directory {tmp_path}/absent does not "
                          "exist. Fix: extract the broker package there first (the provider_config role does).")


def test_dest_that_is_a_directory(pkg):
    (pkg / "config.local.yaml").mkdir()
    result = run(make_args(pkg))
    assert result.failed
    assert result.msg == f"dest: {pkg}/config.local.yaml is a directory; give the path of the configuration file"


def test_only_the_mode_differs(pkg):
    args = make_args(pkg)
    run(args)
    dest = pkg / "config.local.yaml"
    dest.chmod(0o644)
    content = dest.read_bytes()
    predicted = run(args, check=True, diff=True)
    assert predicted.changed
    assert stat.S_IMODE(dest.stat().st_mode) == 0o644
    assert predicted["diff"][1] == {
        "before": {"mode": "0644", "owner": os.getuid(), "group": os.getgid()},
        "after": {"mode": "0600", "owner": os.getuid(), "group": os.getgid()},
        "before_header": f"{dest} (attributes)", "after_header": f"{dest} (attributes)",
    }
    result = run(args)
    assert result.changed
    assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    assert dest.read_bytes() == content


def test_mode_option(pkg):
    result = run(make_args(pkg, {"mode": "0640"}))
    assert not result.failed
    assert stat.S_IMODE((pkg / "config.local.yaml").stat().st_mode) == 0o640


def test_failed_rename_leaves_the_old_file_and_no_temporary(pkg, monkeypatch):
    args = make_args(pkg)
    run(args)
    dest = pkg / "config.local.yaml"
    old = dest.read_bytes()

    def refuse(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(finetune_config.os, "replace", refuse)
    args["price_per_token"] = 9
    result = run(args)
    assert result.failed
    assert result.msg == f"Cannot write {dest}: No space left on device"
    assert dest.read_bytes() == old
    assert listing(pkg) == ["config.local.yaml", "models"]


def test_usage_files_not_checked_when_told(pkg):
    args = make_args(pkg, {"check_usage_files": False, "customized_models": [dict(MODEL, name="qwen-lora")]})
    result = run(args)
    assert not result.failed, result.msg
    assert result["models"] == ["qwen-lora"]


def test_models_dir_option(pkg, tmp_path):
    other = tmp_path / "elsewhere"
    other.mkdir()
    (other / "qwen-lora.zip").write_bytes(ZIP)
    args = make_args(pkg, {"models_dir": str(other), "customized_models": [dict(MODEL, name="qwen-lora")]})
    result = run(args)
    assert not result.failed, result.msg


def test_symlinked_usage_file_warns(pkg, tmp_path):
    target = tmp_path / "real.zip"
    target.write_bytes(ZIP)
    link = pkg / "models" / "mobilenet_v2.zip"
    link.unlink()
    link.symlink_to(target)
    result = run(make_args(pkg))
    warnings = warnings_given()
    assert not result.failed
    assert warnings == [f"customized_models[0].usage_file: {link} is a symbolic link; inside the broker container "
                        "its target may not exist"]


# ------------------------------------------------------------------------ secrets


def _redacted(key):
    return f"<redacted sha256:{hashlib.sha256(key.encode()).hexdigest()[:8]}>"


def test_diff_and_result_never_hold_a_secret(pkg):
    args = make_args(pkg)
    first = run(args, diff=True)
    args["private_keys"] = ["3f6c1d4a9b8e7f0a3c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3"]
    second = run(args, diff=True)
    for result in (first, second):
        dumped = json.dumps(result.result)
        for secret in (KEY, KEY.upper(), PASSWORD, args["private_keys"][0]):
            assert secret not in dumped
    diff = second["diff"][0]
    assert f'      - "{_redacted(KEY)}"\n' in diff["before"]
    assert f'      - "{_redacted(args["private_keys"][0])}"\n' in diff["after"]
    assert '  fineTune: "root:********@tcp(0g-fine-tune-broker-db:3306)/fineTune?parseTime=true"\n' in diff["after"]
    assert second["config"]["networks"]["ethereum0g"]["privateKeys"] == [_redacted(args["private_keys"][0])]
    assert second["config"]["database"] == {"fineTune": "root:********@tcp(0g-fine-tune-broker-db:3306)/fineTune"
                                                        "?parseTime=true"}
    # the file itself holds the real values
    text = (pkg / "config.local.yaml").read_text()
    assert f'      - "{args["private_keys"][0]}"\n' in text and PASSWORD in text


def test_a_hand_written_file_is_masked_in_the_diff(pkg):
    other_key = "0x5a" + "17" * 31
    hand = (
        "networks:\n"
        f"  ethereum0g: {{url: 'https://rpc', chainID: 1, privateKeys: [{other_key}]}}\n"
        "database: {fineTune: \"root:hunter2hunter2@tcp(db:3306)/fineTune\"}\n"
        "service:\n"
        "  customizedModels:\n"
        f"    - hash: '0x{'ab' * 32}'\n"
        f"      tokenizer: 0x{'cd' * 32}\n"
    )
    (pkg / "config.local.yaml").write_text(hand)
    result = run(make_args(pkg), check=True, diff=True)
    before = result["diff"][0]["before"]
    assert before == (
        "networks:\n"
        f"  ethereum0g: {{url: 'https://rpc', chainID: 1, privateKeys: [{_redacted(other_key[2:])}]}}\n"
        "database: {fineTune: \"root:********@tcp(db:3306)/fineTune\"}\n"
        "service:\n"
        "  customizedModels:\n"
        f"    - hash: '0x{'ab' * 32}'\n"
        f"      tokenizer: 0x{'cd' * 32}\n"
    )


def test_known_secrets_are_masked_wherever_they_appear(pkg):
    (pkg / "config.local.yaml").write_text(f"# old password {PASSWORD}\n# key 0x{KEY}\n")
    result = run(make_args(pkg), check=True, diff=True)
    assert result["diff"][0]["before"] == f"# old password ********\n# key {_redacted(KEY)}\n"


def test_keys_are_registered_as_no_log_values_without_their_prefix(pkg, monkeypatch):
    """Ansible masks no_log values in everything a module returns; the key as written (without
    0x) is not the option's value, so the module must register it too."""
    modules = []

    class Recording(finetune_config.AnsibleModule):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            modules.append(self)

    monkeypatch.setattr(finetune_config, "AnsibleModule", Recording)
    run(make_args(pkg))
    assert {KEY, "0x" + KEY, PASSWORD} <= modules[0].no_log_values


# ------------------------------------------------------------------- YAML emitter

TRICKY = [
    "", "plain", "0x", "123", "1e3", "yes", "no", "on", "null", "~", "true", "- dash", "key: value", "#hash",
    "a # comment", "'single'", '"double"', "back\\slash", "line\nbreak", "tab\there", "cr\rhere", "nul\0byte",
    " leading", "trailing ", "caf\u00e9", "\u00a0nbsp", "\u2028sep", "\ufeffbom", "emoji \U0001f680", "del\x7f",
    "bell\x07", "next\x85line", "{flow}", "[seq]", "&anchor", "*alias", "!tag", "%dir", "@at", "`tick`", "|", ">",
    "C:\\path", "http://h:1/x?y=1#z", "0o17", "0b101", ".inf", "2001-12-14", "=",
]


@pytest.mark.parametrize("text", TRICKY, ids=repr)
def test_string_round_trip_through_pyyaml(text):
    emitted = finetune_config.emit_yaml({"k": text, "l": [text], "m": [{"n": text}]})
    assert yaml.safe_load(emitted) == {"k": text, "l": [text], "m": [{"n": text}]}
    assert emitted.isascii()


@pytest.fixture(name="goyaml")
def fixture_goyaml():
    if SIM not in sys.path:
        sys.path.insert(0, SIM)
    return pytest.importorskip("zerog_sim.goyaml", reason="the simulated broker's yaml.v2 decoder is not in tests/sim")


@pytest.mark.parametrize("text", TRICKY, ids=repr)
def test_string_round_trip_through_yaml_v2(goyaml, text):
    """The simulated broker decodes with yaml.v2's rules: the string arrives unchanged."""
    struct = goyaml.go_struct("t", goyaml.Field("k", goyaml.go_string()),
                              goyaml.Field("l", goyaml.go_slice(goyaml.go_string())))
    emitted = finetune_config.emit_yaml({"k": text, "l": [text]})
    assert goyaml.unmarshal_strict(emitted, struct, {"k": "", "l": []}) == {"k": text, "l": [text]}


def test_numbers_and_booleans_round_trip_through_yaml_v2(goyaml):
    struct = goyaml.go_struct(
        "t", goyaml.Field("i", goyaml.go_int("int64")), goyaml.Field("u", goyaml.go_uint("uint64")),
        goyaml.Field("b", goyaml.go_bool()), goyaml.Field("f", goyaml.go_bool()))
    doc = {"i": -(1 << 63), "u": (1 << 64) - 1, "b": True, "f": False}
    assert goyaml.unmarshal_strict(finetune_config.emit_yaml(doc), struct, {"i": 0, "u": 0, "b": False, "f": True}) == doc


@pytest.mark.parametrize(
    ("doc", "text"),
    [
        ({}, "{}\n"),
        ({"a": {}}, "a: {}\n"),
        ({"a": []}, "a: []\n"),
        ({"a": [{}]}, "a:\n  - {}\n"),
        ({"a": 1, "b": True, "c": False, "d": "x"}, 'a: 1\nb: true\nc: false\nd: "x"\n'),
        ({"a": {"b": {"c": -5}}}, "a:\n  b:\n    c: -5\n"),
        ({"a": [1, "x"]}, 'a:\n  - 1\n  - "x"\n'),
        ({"a": [{"b": 1, "c": [2]}, {"d": {"e": "f"}}]},
         'a:\n  - b: 1\n    c:\n      - 2\n  - d:\n      e: "f"\n'),
        ({"odd key": 1}, '"odd key": 1\n'),
    ],
)
def test_emitter_shapes(doc, text):
    assert finetune_config.emit_yaml(doc) == text
    assert yaml.safe_load(text) == doc


@pytest.mark.parametrize(
    ("doc", "error"),
    [
        ({"a": 1.5}, "cannot emit a float scalar"),
        ({"a": None}, "cannot emit a NoneType scalar"),
        ({"a": [[1]]}, "nested sequences are not part of the broker schema"),
        ({1: "a"}, "mapping keys must be strings, got 1"),
        ({"a": "\ud800"}, "a string holds a lone surrogate, which YAML cannot represent"),
    ],
)
def test_emitter_refuses_what_the_schema_never_holds(doc, error):
    with pytest.raises((TypeError, ValueError), match=error):
        finetune_config.emit_yaml(doc)


# ------------------------------------------------------- the simulated broker accepts it


@pytest.fixture(name="sim_broker")
def fixture_sim_broker():
    if SIM not in sys.path:
        sys.path.insert(0, SIM)
    broker = pytest.importorskip("zerog_sim.broker", reason="the simulated broker (tests/sim) is not there")
    if not hasattr(broker, "validate_config_text"):
        pytest.skip("zerog_sim.broker has no validate_config_text(text, models_dir) yet")
    return broker


GOOD = [
    pytest.param({}, id="base"),
    pytest.param(TABLE["rendered"][0]["input"], id="every section"),
    pytest.param({"customized_models": [], "database_password": "__absent__"}, id="no models, default DSN"),
    pytest.param({"customized_models": [MODEL, dict(MODEL, name="qwen-lora", data_type="text",
                                                    hash="0x" + "5e" * 32, usage_file="mobilenet_v2.zip")]},
                 id="two models sharing a usage file"),
    pytest.param({"logger": {"level": "warning", "format": "json", "path": "/tmp/ft.log", "rotation_count": 3},
                  "images": {"execution_image_name": "execution-test-pytorch:v1", "override_image": True},
                  "broker_settings": {"gasPrice": "", "maxGasPrice": "2000000000000", "dataRetentionDays": 7}},
                 id="logger, images and settings"),
]


@pytest.mark.parametrize("overrides", GOOD)
def test_the_simulated_broker_accepts_good_inputs(pkg, sim_broker, overrides):
    result = run(make_args(pkg, overrides))
    assert not result.failed, result.msg
    text = (pkg / "config.local.yaml").read_text(encoding="utf-8")
    ok, error, parsed = sim_broker.validate_config_text(text, str(pkg / "models"))
    assert (ok, error) == (True, None)
    args = make_args(pkg, overrides)
    assert parsed["service"]["servingUrl"] == args["serving_url"]
    assert parsed["networks"]["ethereum0g"]["privateKeys"] == ["<redacted>"]
    assert [m["name"] for m in parsed["service"]["customizedModels"] or []] == result["models"]


@pytest.mark.parametrize(
    ("old", "new", "why"),
    [
        ("    chainID: 16601\n", '    chainID: "16601"\n', "cannot unmarshal !!str `16601` into int64"),
        (f'      - "{KEY}"\n', f'      - "0x{KEY}"\n', "panic: invalid private key: invalid hex character 'x'"),
        ('      dataType: "image"\n', '      dataType: "Image"\n', "unknown model type: Image"),
        ("  pricePerToken: 1\n", "  pricePerToken: 1\n  pricePerByte: 1\n", "field pricePerByte not found in type"),
    ],
    ids=["quoted int", "0x key", "data type case", "unknown key"],
)
def test_the_simulated_broker_refuses_what_the_module_refuses(pkg, sim_broker, old, new, why):
    """Control: the simulated broker is strict, so its acceptance above means something."""
    run(make_args(pkg))
    text = (pkg / "config.local.yaml").read_text(encoding="utf-8")
    assert old in text
    ok, error, _parsed = sim_broker.validate_config_text(text.replace(old, new), str(pkg / "models"))
    assert not ok
    assert why in error
