"""Tests of the broker schema data and helpers (plugins/module_utils/_broker_schema.py)."""

from __future__ import annotations

import os
import sys

import pytest
import yaml
from ansible_collections.zerog.compute.plugins.module_utils import _broker_schema as schema
from ansible_collections.zerog.compute.tests.unit.harness import case_file

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..", "..", ".."))
SIM = os.path.join(REPO, "tests", "sim")

with open(case_file(__file__), encoding="utf-8") as _fh:
    TABLE = yaml.safe_load(_fh)

V022 = schema.get_version("0.2.2")

#: api/fine-tuning/integration/prod/config.example.yaml at v0.2.2, as the reference quotes it.
CONFIG_EXAMPLE_V0_2_2 = """\
networks:
  ethereum0g:
    url: "https://evmrpc-testnet.0g.ai"
    chainID: 16601
    privateKeys:
      - 1111111111111111111111111111111111111111111111111111111111111111
    transactionLimit: 1000000
    gasEstimationBuffer: 10000
service:
  servingUrl: "<Serving_URL>"
  pricePerToken: 1
  quota:
    cpuCount: 8
    memory: 16
    storage: 10
    gpuType: "H200"
    gpuCount: 1
storageClient:
  indexerStandard: "https://indexer-storage-testnet-standard.0g.ai"
  indexerTurbo: "https://indexer-storage-testnet-turbo.0g.ai"
  uploadArgs:
    finalityRequired: false
    tags: "0x"
    expectedReplica: 1
    skipTx: false
    fragmentSize: 4294967296
logger:
  level: "debug"
  path: "/tmp/fine-tuning.log"
"""


@pytest.mark.parametrize("case", TABLE["name_lookup"], ids=lambda c: c["name"])
def test_name_lookup_hash(case):
    assert schema.name_lookup_hash(case["name"]) == case["hash"]


@pytest.mark.parametrize("case", TABLE["documents"], ids=lambda c: c["id"])
def test_check_document(case):
    assert schema.check_document(case["doc"], V022.schema) == case["problems"]


def test_builtin_defaults_are_a_valid_document():
    assert schema.check_document(V022.defaults, V022.schema) == []


def test_the_shipped_example_only_trips_on_the_unquoted_key():
    """config.example.yaml decodes under the broker (yaml.v2 hands a plain scalar's text to a
    string field), but PyYAML reads the unquoted key as an int, which this collection never
    emits: check_document is deliberately stricter there, and only there."""
    doc = yaml.safe_load(CONFIG_EXAMPLE_V0_2_2)
    assert schema.check_document(doc, V022.schema) == [
        "networks.ethereum0g.privateKeys[0]: must be a string (string), got int",
    ]


def test_builtin_model_hashes_are_the_references():
    assert V022.builtin_hashes == (
        "0x8645816c17a8a70ebf32bcc7e621c659e8d0150b1a6bfca27f48f83010c6d12e",
        "0x7f2244b25cd2219dfd9d14c052982ecce409356e0f08e839b79796e270d110a7",
        "0x2084fdd904c9a3317dde98147d4e7778a40e076b5b0eb469f7a8f27ae5b13e7f",
        "0xcb42b5ca9e998c82dd239ef2d20d22a4ae16b3dc0ce0a855c93b52c7c2bab6dc",
        "0x02ed6d3889bebad9e2cd4008066478654c0886b12ad25ea7cf7d31df3441182e",
    )


def test_presets():
    assert V022.presets == {
        "testnet": {
            "url": "https://evmrpc-testnet.0g.ai",
            "chainID": 16601,
            "contractAddress": "0x4c871c46D901990987EBf39Cb8a16fC73390a4E5",
            "indexerStandard": "https://indexer-storage-testnet-standard.0g.ai",
            "indexerTurbo": "https://indexer-storage-testnet-turbo.0g.ai",
        },
        "mainnet": {
            "url": "https://evmrpc.0g.ai",
            "chainID": 16661,
            "contractAddress": None,
            "indexerStandard": None,
            "indexerTurbo": None,
        },
    }


def test_top_level_keys_in_struct_order():
    assert list(V022.schema.fields) == [
        "contractAddress", "database", "networks", "images", "storageClient", "servingUrl", "service",
        "providerOption", "logger", "settlementCheckInterval", "balanceThresholdInEther", "gasPrice",
        "maxGasPrice", "trainingWorkerCount", "setupWorkerCount", "finalizerWorkerCount",
        "maxSetupRetriesPerTask", "maxExecutorRetriesPerTask", "maxFinalizerRetriesPerTask",
        "maxSettlementRetriesPerTask", "settlementBatchSize", "deliveredTaskAckTimeoutSecs",
        "dataRetentionDays", "maxTaskQueueSize",
    ]


def test_unknown_version():
    with pytest.raises(KeyError, match=r"broker version '0\.2\.0' is not supported; supported: 0\.2\.2"):
        schema.get_version("0.2.0")


@pytest.mark.parametrize(
    ("text", "want"),
    [("", b""), ("0x", b""), ("zz", b""), ("0xabzz12", b"\xab"), ("abc", b"\x0a\xbc"), ("0X1", b"\x01")],
)
def test_go_from_hex(text, want):
    assert schema.go_from_hex(text) == want


def test_role_defaults_agree_with_the_schema():
    """The role pins the same broker version, image and package facts as the schema data."""
    path = os.path.join(REPO, "roles", "provider_config", "defaults", "main.yml")
    with open(path, encoding="utf-8") as fh:
        defaults = yaml.safe_load(fh)
    package = schema.get_version(defaults["provider_config_broker_version"]).package
    assert defaults["provider_config_broker_image_repository"] == package["image_repository"]
    assert defaults["provider_config_broker_image_tag"] == package["image_tag"]
    assert defaults["provider_config_package_url"].endswith(
        "/releases/download/v{{ provider_config_broker_version }}/" + package["asset"])


# -- cross-checks against the simulated broker (an independent implementation) ------------


@pytest.fixture(name="sim_broker_config")
def fixture_sim_broker_config():
    if SIM not in sys.path:
        sys.path.insert(0, SIM)
    return pytest.importorskip("zerog_sim.broker_config", reason="the simulated broker is not in tests/sim")


def test_sim_agrees_on_predefined_hashes(sim_broker_config):
    assert set(V022.builtin_hashes) == set(sim_broker_config.PREDEFINED_MODEL_HASHES)


def test_sim_agrees_on_defaults(sim_broker_config):
    sim = sim_broker_config.default_config()
    for key, value in V022.defaults.items():
        if isinstance(value, dict):
            for sub, subvalue in value.items():
                assert sim[key][sub] == subvalue, f"{key}.{sub}"
        else:
            assert sim[key] == value, key


@pytest.mark.parametrize("case", TABLE["name_lookup"], ids=lambda c: c["name"])
def test_sim_agrees_on_name_lookup(sim_broker_config, case):
    sim = sim_broker_config.hex_to_hash(case["name"])
    assert (None if not any(sim) else "0x" + sim.hex()) == schema.name_lookup_hash(case["name"])
