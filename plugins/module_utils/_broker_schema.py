# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The 0G fine-tuning broker's ``config.local.yaml`` schema, as data, per pinned broker version.

Private to the collection (the leading underscore): no stability promise to other collections.

The broker (``0glabs/0g-serving-broker``, ``api/fine-tuning/config/config.go``) loads its file
with ``yaml.UnmarshalStrict`` (gopkg.in/yaml.v2) into typed Go structs: an unknown key, a
repeated key or a value of the wrong YAML type stops it at start. This module holds, for each
broker package version the collection supports:

* the Go struct tree as :class:`Struct` / :class:`ListOf` / :class:`MapOf` of :class:`Scalar`
  kinds (the YAML key names exactly as the ``yaml:"..."`` tags spell them, in struct order);
* the built-in defaults of ``GetConfig()`` (what the broker uses for a key that is absent);
* the network presets (testnet/mainnet: RPC URL, chain id, FineTuningServing contract, storage
  indexers) and the release package facts (asset name, layout, compose image);
* the root hashes of the predefined models (``constant.SCRIPT_MAP``), which customized models
  must not reuse;

plus two pure helpers that reproduce broker behaviour: :func:`check_document` (would a Python
structure decode under the strict parser?) and :func:`name_lookup_hash` (go-ethereum's
``HexToHash`` as the ``/v1/model/:name`` route applies it to a model name).

Sources: the collection's reference ``finetune-broker.md`` (sections 1.1-1.5, 2.1, 3, 6, 7).
"""

from __future__ import annotations

import string

# ----------------------------------------------------------------------------- Go kinds

INT64_MIN = -(1 << 63)
INT64_MAX = (1 << 63) - 1
UINT64_MAX = (1 << 64) - 1


class Scalar:
    """A Go scalar field type: its name, the YAML type it needs, and the integer range."""

    def __init__(self, go_type, yaml_type, minimum=None, maximum=None):
        self.go_type = go_type
        self.yaml_type = yaml_type  # "str", "int" or "bool"
        self.minimum = minimum
        self.maximum = maximum

    def __repr__(self):
        return f"Scalar({self.go_type})"


STR = Scalar("string", "str")
BOOL = Scalar("bool", "bool")
INT = Scalar("int", "int", INT64_MIN, INT64_MAX)  # Go int is 64 bits on amd64
INT64 = Scalar("int64", "int", INT64_MIN, INT64_MAX)
UINT = Scalar("uint", "int", 0, UINT64_MAX)  # Go uint is 64 bits on amd64
UINT64 = Scalar("uint64", "int", 0, UINT64_MAX)


class Struct:
    """A Go struct: an ordered mapping of YAML key -> field type (struct order)."""

    def __init__(self, go_name, fields):
        self.go_name = go_name
        self.fields = dict(fields)  # insertion-ordered (Python >= 3.7)

    def __repr__(self):
        return f"Struct({self.go_name})"


class ListOf:
    """A Go slice."""

    def __init__(self, elem):
        self.elem = elem


class MapOf:
    """A Go map with string keys."""

    def __init__(self, value):
        self.value = value


# ------------------------------------------------------------------- schema of v0.2.2

_NETWORK_CONFIG = Struct("config.NetworkConfig", [
    ("url", STR),
    ("chainID", INT64),
    ("privateKeys", ListOf(STR)),
    ("transactionLimit", UINT64),
    ("gasEstimationBuffer", UINT64),
])

_CUSTOMIZED_MODEL = Struct("config.CustomizedModel", [
    ("name", STR),
    ("hash", STR),
    ("image", STR),
    ("dataType", STR),  # TrainingDataType: a string, exactly "text" or "image"
    ("trainingScript", STR),
    ("description", STR),
    ("tokenizer", STR),
    ("usageFile", STR),
])

_SERVICE = Struct("config.Service", [
    ("servingUrl", STR),
    ("quota", Struct("quota", [
        ("cpuCount", INT64),
        ("memory", INT64),
        ("storage", INT64),
        ("gpuType", STR),
        ("gpuCount", INT64),
    ])),
    ("pricePerToken", INT64),
    ("customizedModels", ListOf(_CUSTOMIZED_MODEL)),
])

_IMAGES = Struct("config.Images", [
    ("executionMockImageName", STR),
    ("executionImageName", STR),
    ("buildImage", BOOL),
    ("overrideImage", BOOL),
])

_STORAGE_CLIENT = Struct("config.StorageClientConfig", [
    ("indexerStandard", STR),
    ("indexerTurbo", STR),
    ("uploadArgs", Struct("config.UploadArgs", [
        ("tags", STR),
        ("expectedReplica", UINT),
        ("skipTx", BOOL),
        ("finalityRequired", BOOL),
        ("taskSize", UINT),
        ("routines", INT),
        ("fragmentSize", INT64),
    ])),
])

_LOGGER = Struct("config.LoggerConfig", [
    ("format", STR),
    ("level", STR),
    ("path", STR),
    ("rotationCount", UINT),
])

#: ``config.Config`` of v0.2.2 (identical keys in v0.2.1 and 0glabs HEAD ``7aa521a``).
#: ``providerOption`` (go-rpc-provider options) is a struct this collection never emits; it is
#: listed so that the key is known, with no fields accepted.
CONFIG_V0_2_2 = Struct("config.Config", [
    ("contractAddress", STR),
    ("database", Struct("database", [("fineTune", STR)])),
    ("networks", MapOf(_NETWORK_CONFIG)),
    ("images", _IMAGES),
    ("storageClient", _STORAGE_CLIENT),
    ("servingUrl", STR),  # dead: nothing reads Config.ServingUrl; never emitted
    ("service", _SERVICE),
    ("providerOption", Struct("providers.Option", [])),
    ("logger", _LOGGER),
    ("settlementCheckInterval", INT64),
    ("balanceThresholdInEther", INT64),
    ("gasPrice", STR),
    ("maxGasPrice", STR),
    ("trainingWorkerCount", INT),
    ("setupWorkerCount", INT),
    ("finalizerWorkerCount", INT),
    ("maxSetupRetriesPerTask", UINT),
    ("maxExecutorRetriesPerTask", UINT),
    ("maxFinalizerRetriesPerTask", UINT),
    ("maxSettlementRetriesPerTask", UINT),
    ("settlementBatchSize", UINT),
    ("deliveredTaskAckTimeoutSecs", UINT),
    ("dataRetentionDays", UINT),
    ("maxTaskQueueSize", UINT),
])

#: The built-in defaults of ``GetConfig()`` at v0.2.2 (what an absent key means).
DEFAULTS_V0_2_2 = {
    "contractAddress": "0x4c871c46D901990987EBf39Cb8a16fC73390a4E5",
    "database": {"fineTune": "root:123456@tcp(0g-fine-tune-broker-db:3306)/fineTune?parseTime=true"},
    "gasPrice": "",
    "images": {
        "executionMockImageName": "mock-fine-tuning:latest",
        "executionImageName": "execution-test-pytorch:v1",
        "buildImage": True,
        "overrideImage": False,
    },
    "logger": {"format": "text", "level": "info", "path": "", "rotationCount": 50},
    "settlementCheckInterval": 60,
    "balanceThresholdInEther": 1,
    "maxGasPrice": "1000000000000",
    "trainingWorkerCount": 1,
    "setupWorkerCount": 1,
    "finalizerWorkerCount": 1,
    "maxSetupRetriesPerTask": 10,
    "maxExecutorRetriesPerTask": 1,
    "maxFinalizerRetriesPerTask": 10,
    "maxSettlementRetriesPerTask": 10,
    "settlementBatchSize": 1,
    "deliveredTaskAckTimeoutSecs": 60 * 60 * 6,
    "dataRetentionDays": 3,
    "maxTaskQueueSize": 5,
}

#: ``constant.SCRIPT_MAP`` keys at v0.2.2: root hashes of the predefined models.
BUILTIN_MODEL_HASHES_V0_2_2 = (
    "0x8645816c17a8a70ebf32bcc7e621c659e8d0150b1a6bfca27f48f83010c6d12e",
    "0x7f2244b25cd2219dfd9d14c052982ecce409356e0f08e839b79796e270d110a7",
    "0x2084fdd904c9a3317dde98147d4e7778a40e076b5b0eb469f7a8f27ae5b13e7f",
    "0xcb42b5ca9e998c82dd239ef2d20d22a4ae16b3dc0ce0a855c93b52c7c2bab6dc",
    "0x02ed6d3889bebad9e2cd4008066478654c0886b12ad25ea7cf7d31df3441182e",
)

#: Network presets of v0.2.2. ``None`` means "no verified value: the operator must give it".
#: testnet is what the v0.2.2 package itself ships (config.example.yaml's RPC, chain id and
#: indexers; config.go's default contract). Galileo moved to chain 16602 with v0.2.3, whose
#: contract is not pinned by the reference: override chain_id and contract_address for it.
#: mainnet (chain 16661, RPC https://evmrpc.0g.ai) has no FineTuningServing contract or storage
#: indexers in the v0.2.x sources, so those must be given.
PRESETS_V0_2_2 = {
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

#: config.example.yaml values of v0.2.2 used as module defaults (service and upload args).
EXAMPLE_V0_2_2 = {
    "transactionLimit": 1000000,
    "gasEstimationBuffer": 10000,
    "pricePerToken": 1,
    "quota": {"cpuCount": 8, "memory": 16, "storage": 10, "gpuType": "H200", "gpuCount": 1},
    "uploadArgs": {
        "finalityRequired": False,
        "tags": "0x",
        "expectedReplica": 1,
        "skipTx": False,
        "fragmentSize": 4294967296,
    },
}

#: The release package (api/Makefile target ``package-fine-tuning``). The asset name is
#: unverified upstream: URL and checksum are role variables.
PACKAGE_V0_2_2 = {
    "asset": "fine-tuning-broker.tar.gz",
    "url": "https://github.com/0glabs/0g-serving-broker/releases/download/v0.2.2/fine-tuning-broker.tar.gz",
    "top_dir": "fine-tuning-broker",
    "files": ("README.md", "config.example.yaml", "docker-compose.yml", "init.sql", "transformer/Dockerfile"),
    "dirs": ("models", "transformer"),
    # The v0.2.2 package's compose runs image 0.2.1 (same config keys as 0.2.2).
    "image_repository": "ghcr.io/0glabs/0g-serving-broker",
    "image_tag": "0.2.1",
    "container_port": 3080,
    "db_container": "0g-fine-tune-broker-db",
    "db_name": "fineTune",
    "db_user": "root",
    "db_default_password": "123456",
}


class BrokerVersion:
    """Everything version-specific about one broker package version."""

    def __init__(self, version, schema, defaults, presets, example, builtin_hashes, package):
        self.version = version
        self.schema = schema
        self.defaults = defaults
        self.presets = presets
        self.example = example
        self.builtin_hashes = tuple(builtin_hashes)
        self.package = package


VERSIONS = {
    "0.2.2": BrokerVersion("0.2.2", CONFIG_V0_2_2, DEFAULTS_V0_2_2, PRESETS_V0_2_2, EXAMPLE_V0_2_2,
                           BUILTIN_MODEL_HASHES_V0_2_2, PACKAGE_V0_2_2),
}
DEFAULT_VERSION = "0.2.2"

#: The only network the broker reads (``NETWORK=hardhat`` selects ``ethereumHardhat``, dev only).
NETWORK_KEY = "ethereum0g"
#: ``dataType`` values accepted by ``TrainingDataType.UnmarshalYAML`` (case-sensitive).
DATA_TYPES = ("text", "image")
#: ``logrus.ParseLevel`` accepts these (lower-cased input).
LOG_LEVELS = ("panic", "fatal", "error", "warn", "warning", "info", "debug", "trace")
#: ``log.LogFormat`` values.
LOG_FORMATS = ("text", "json")


def get_version(version):
    """The :class:`BrokerVersion` for ``version``; raises KeyError with the supported list."""
    try:
        return VERSIONS[version]
    except KeyError:
        raise KeyError(f"broker version {version!r} is not supported; supported: {', '.join(sorted(VERSIONS))}") from None


# -------------------------------------------------------------------- pure helpers


def _is_int(value):
    return isinstance(value, int) and not isinstance(value, bool)


def check_document(doc, schema, path=""):
    """Problems that would stop the strict parser decoding ``doc`` into ``schema``.

    ``doc`` is the Python structure about to be emitted (dicts, lists, str, int, bool). Returns
    a list of ``"path: problem"`` strings, empty when every key is known and every value has
    the YAML type (and integer range) of its Go field. ``None`` is refused everywhere: this
    collection never emits ``null``.
    """
    problems = []
    where = path or "<document>"
    if isinstance(schema, Struct):
        if not isinstance(doc, dict):
            return [f"{where}: must be a mapping ({schema.go_name}), got {type(doc).__name__}"]
        for key, value in doc.items():
            sub = f"{path}.{key}" if path else str(key)
            if key not in schema.fields:
                problems.append(f"{sub}: unknown key (field not found in type {schema.go_name})")
                continue
            problems.extend(check_document(value, schema.fields[key], sub))
    elif isinstance(schema, MapOf):
        if not isinstance(doc, dict):
            return [f"{where}: must be a mapping, got {type(doc).__name__}"]
        for key, value in doc.items():
            if not isinstance(key, str):
                problems.append(f"{where}: map keys must be strings, got {key!r}")
                continue
            problems.extend(check_document(value, schema.value, f"{path}.{key}"))
    elif isinstance(schema, ListOf):
        if not isinstance(doc, list):
            return [f"{where}: must be a list, got {type(doc).__name__}"]
        for index, value in enumerate(doc):
            problems.extend(check_document(value, schema.elem, f"{path}[{index}]"))
    elif isinstance(schema, Scalar):
        if schema.yaml_type == "str" and not isinstance(doc, str):
            problems.append(f"{where}: must be a string ({schema.go_type}), got {type(doc).__name__}")
        elif schema.yaml_type == "bool" and not isinstance(doc, bool):
            problems.append(f"{where}: must be a boolean, got {type(doc).__name__}")
        elif schema.yaml_type == "int":
            if not _is_int(doc):
                problems.append(f"{where}: must be an integer ({schema.go_type}), got {type(doc).__name__}")
            elif not schema.minimum <= doc <= schema.maximum:
                problems.append(f"{where}: {doc} is out of the range of {schema.go_type} "
                                f"({schema.minimum}..{schema.maximum})")
    else:  # pragma: no cover - a schema bug
        raise TypeError(f"unknown schema node {schema!r}")
    return problems


_HEX = frozenset(string.hexdigits.encode("ascii"))


def go_from_hex(text):
    """go-ethereum ``common.FromHex``: the bytes ``hex.DecodeString`` yields before any error.

    A ``0x``/``0X`` prefix is dropped, an odd length gets a leading ``0``, then pairs of hex
    digits are decoded up to the first pair holding a non-hex byte (Go works on UTF-8 bytes).
    """
    raw = text.encode("utf-8")
    if len(raw) >= 2 and raw[0:1] == b"0" and raw[1:2] in (b"x", b"X"):
        raw = raw[2:]
    if len(raw) % 2 == 1:
        raw = b"0" + raw
    out = bytearray()
    for i in range(0, len(raw), 2):
        if raw[i] not in _HEX or raw[i + 1] not in _HEX:
            break
        out.append(int(raw[i:i + 2], 16))
    return bytes(out)


def name_lookup_hash(name):
    """The hash ``GET /v1/model/:name`` derives from ``name``, or ``None`` if it looks up by name.

    The handler does ``hash := ethcommon.HexToHash(name)`` and only falls back to the name when
    that hash is all zeros. ``HexToHash`` keeps the last 32 bytes of ``FromHex`` (left-padded).
    Returns the ``0x``-prefixed 64-digit hash when it is not zero (the name is mistaken for a
    hash, so lookup by name fails), else ``None``.
    """
    data = go_from_hex(name)[-32:]
    if not any(data):
        return None
    return "0x" + data.rjust(32, b"\0").hex()
