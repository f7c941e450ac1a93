#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module zerog.compute.finetune_config: the 0G fine-tuning broker's config.local.yaml."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: finetune_config
short_description: Write the 0G fine-tuning broker's C(config.local.yaml), validated against its schema
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Writes the configuration file of the 0G fine-tuning provider broker (C(0g-serving-broker),
    C(0g-fine-tuning-server)) from structured input, validated against the configuration schema
    of the pinned broker version before anything is written.
  - The broker parses the file with C(yaml.UnmarshalStrict) and stops (or panics and crash-loops)
    on an unknown key, a value of the wrong YAML type, a private key with a C(0x) prefix, a bad
    customized model or a missing usage file. This module emits only known keys, integers and
    booleans unquoted, every string double-quoted, and refuses every input the broker would
    refuse, with an error that names the option path (for example C(customized_models[1].hash))
    and the rule.
  - The YAML is produced by the module itself (no PyYAML needed on the managed host). The file is
    replaced atomically (a temporary file in the same directory, then a rename), created with
    O(mode) before any secret is written to it, and only when the rendered text differs from
    the file (or its owner, group or mode differ).
  - The diff never shows a private key or the database password; private keys are shown as
    C(<redacted sha256:xxxxxxxx>) (the first 8 hex digits of the SHA-256 of the key, so that a
    key change is visible), the password as C(********).
  - Only the network C(ethereum0g) is written (the one the broker reads unless the container
    runs with C(NETWORK=hardhat)). The top-level C(servingUrl) key, which no broker code reads,
    and C(providerOption) are never written.
options:
  dest:
    description:
      - Path of the configuration file, normally C(<package dir>/config.local.yaml) (the broker's
        compose file mounts it at C(/etc/config.yaml)).
      - Its directory must exist, except in check mode.
    type: path
    required: true
  broker_version:
    description:
      - The broker package version whose schema, defaults, presets and predefined model hashes
        apply.
    type: str
    default: "0.2.2"
    choices: ["0.2.2"]
  network:
    description:
      - Preset for the RPC URL, chain id, FineTuningServing contract address and 0G Storage
        indexers, each of which can be overridden.
      - V(testnet) is what the v0.2.2 package ships (RPC C(https://evmrpc-testnet.0g.ai), chain
        id C(16601), contract C(0x4c871c46D901990987EBf39Cb8a16fC73390a4E5), the testnet
        standard and turbo indexers). The Galileo testnet moved to chain id C(16602) with broker
        v0.2.3; to use that chain, override O(chain_id) and O(contract_address).
      - V(mainnet) sets RPC C(https://evmrpc.0g.ai) and chain id C(16661); the broker v0.2.x
        sources name no mainnet contract or indexers, so O(contract_address),
        O(storage_client.indexer_standard) and O(storage_client.indexer_turbo) are then required.
    type: str
    default: testnet
    choices: [testnet, mainnet]
  rpc_url:
    description:
      - EVM RPC URL (C(networks.ethereum0g.url)); an absolute C(http) or C(https) URL.
      - Defaults to the O(network) preset.
    type: str
  chain_id:
    description:
      - Chain id (C(networks.ethereum0g.chainID)), a positive integer. Defaults to the O(network) preset.
    type: int
  contract_address:
    description:
      - FineTuningServing contract address (C(contractAddress)), C(0x) and 40 hexadecimal digits.
      - Defaults to the O(network) preset; always written, because the broker's built-in
        default depends on the image version.
    type: str
  private_keys:
    description:
      - Wallet private keys (C(networks.ethereum0g.privateKeys)), each exactly 64 hexadecimal
        characters. A C(0x) prefix is removed; anything else is refused. Give them as quoted
        strings (an unquoted key made only of digits is read as a number and loses its leading
        zeros).
      - Only the first key is used by the broker (it pays gas and signs); the others must still
        be valid keys. Keep them in ansible-vault.
    type: list
    elements: raw
    required: true
  transaction_limit:
    description:
      - Gas limit of each transaction (C(networks.ethereum0g.transactionLimit)), at least 1.
    type: int
    default: 1000000
  gas_estimation_buffer:
    description:
      - Gas added to O(transaction_limit) (C(networks.ethereum0g.gasEstimationBuffer)), at least 0.
    type: int
    default: 10000
  serving_url:
    description:
      - The public URL registered on chain (C(service.servingUrl)), to which clients append
        C(/v1/...), so C(http://host[:port]) or C(https://host[:port]) with no path, query or
        trailing slash.
      - When its host is this host (one of O(host_addresses), C(localhost) or a loopback
        address) and O(published_port) is set, its port (explicit, or 80/443 from the scheme)
        must equal O(published_port).
    type: str
    required: true
  published_port:
    description:
      - The host port the broker's compose file publishes (the C(#PORT#) of C("#PORT#:3080")).
      - Used only to check O(serving_url).
    type: int
  host_addresses:
    description:
      - Addresses and names of this host (IP addresses, host names, public DNS names) used to
        decide whether O(serving_url) points at this host directly. The role passes the host's
        facts.
    type: list
    elements: str
    default: []
  price_per_token:
    description:
      - Price per token in neuron (C(service.pricePerToken)), an integer of at least 0.
    type: int
    default: 1
  quota:
    description:
      - The service quota (C(service.quota)). Unknown keys are refused; absent keys take the
        values of the package's C(config.example.yaml).
    type: dict
    suboptions:
      cpu_count:
        description: CPU count (C(cpuCount)), at least 1; also caps each training container.
        type: int
        default: 8
      memory:
        description: Memory in GB (C(memory)), at least 1; also caps each training container.
        type: int
        default: 16
      storage:
        description: Storage in GB (C(storage)), at least 1.
        type: int
        default: 10
      gpu_type:
        description: GPU type shown to clients (C(gpuType)), a non-empty string.
        type: str
        default: H200
      gpu_count:
        description: GPUs given to each training container (C(gpuCount)), at least 1.
        type: int
        default: 1
  customized_models:
    description:
      - Customized models (C(service.customizedModels)); needs broker image 0.2.1 or later.
      - Names must be unique ignoring case; hashes must be unique and must not be a predefined
        model's hash. A warning (with the reason) is given for a name that the broker's
        C(/v1/model/<name>) lookup mistakes for a hash.
    type: list
    elements: dict
    suboptions:
      name:
        description:
          - Model name, non-empty, without C(/), control characters or surrounding spaces.
          - Prefer a name whose first character is not a hex digit (C(0-9), C(a-f)).
        type: str
        required: true
      hash:
        description:
          - 0G Storage root hash of the model ZIP, C(0x) and 64 hex digits (written in lower case).
        type: str
        required: true
      image:
        description: Docker image reference the training runs in, pullable by the host daemon.
        type: str
        required: true
      data_type:
        description: Training data type (C(dataType)).
        type: str
        choices: [text, image]
        default: text
      training_script:
        description: Absolute path of the training script inside O(customized_models[].image).
        type: str
        required: true
      description:
        description: Free-text description.
        type: str
        default: ""
      tokenizer:
        description: 0G Storage root hash of the tokenizer ZIP, C(0x) and 64 hex digits (written in lower case).
        type: str
        required: true
      usage_file:
        description:
          - File name (no directory) of the model's usage ZIP in O(models_dir); defaults to
            C(<name>.zip). It must exist when O(check_usage_files=true).
        type: str
  storage_client:
    description:
      - 0G Storage client settings (C(storageClient)).
    type: dict
    suboptions:
      indexer_standard:
        description: Standard indexer URL (C(http)/C(https)). Defaults to the O(network) preset.
        type: str
      indexer_turbo:
        description: Turbo indexer URL (C(http)/C(https)), the one the broker uses. Defaults to the O(network) preset.
        type: str
      upload_args:
        description:
          - Upload arguments (C(uploadArgs)); absent keys take the package's example values.
        type: dict
        suboptions:
          tags:
            description: C(0x) and an even number of hex digits; V(0x) for none.
            type: str
            default: "0x"
          expected_replica:
            description: Expected replicas, at least 0.
            type: int
            default: 1
          skip_tx:
            description: Skip the submission transaction.
            type: bool
            default: false
          finality_required:
            description: Wait for finality.
            type: bool
            default: false
          fragment_size:
            description: Fragment size in bytes (int64).
            type: int
            default: 4294967296
          task_size:
            description: Upload task size, at least 0. Not written unless set.
            type: int
          routines:
            description: Upload routines (int). Not written unless set.
            type: int
  logger:
    description:
      - Logger settings (C(logger)); only the keys given are written.
    type: dict
    suboptions:
      level:
        description: Log level (written in lower case).
        type: str
        choices: [trace, debug, info, warn, warning, error, fatal, panic]
      format:
        description: Log format.
        type: str
        choices: [text, json]
      path:
        description: Log file path inside the container (rotated hourly); empty for none.
        type: str
      rotation_count:
        description: Rotated files kept, at least 0.
        type: int
  images:
    description:
      - Execution image settings (C(images)); only the keys given are written.
    type: dict
    suboptions:
      execution_image_name:
        description: Training execution image reference.
        type: str
      execution_mock_image_name:
        description: Mock execution image reference.
        type: str
      build_image:
        description: Build the execution image at start.
        type: bool
      override_image:
        description: Rebuild the execution image even if present.
        type: bool
  database_password:
    description:
      - MySQL root password. The module writes C(database.fineTune), the broker's Go MySQL DSN,
        with user C(root), this password, host C(0g-fine-tune-broker-db) port C(3306), database
        C(fineTune) and C(parseTime=true); the password must match C(MYSQL_ROOT_PASSWORD) of the
        compose file.
      - 12 to 128 characters from C(A-Z a-z 0-9 . _ ~ + = -) (it appears unescaped in the DSN
        and in C(docker-compose.yml), where C($) starts an interpolation); the published default
        C(123456) is refused.
      - When not set, C(database) is not written and the broker uses its built-in DSN with the
        published default password (a warning says so).
    type: str
  broker_settings:
    description:
      - Further top-level broker settings, keyed exactly as the broker spells them, for example
        C(settlementCheckInterval), C(balanceThresholdInEther), C(gasPrice), C(maxGasPrice),
        C(trainingWorkerCount), C(setupWorkerCount), C(finalizerWorkerCount),
        C(maxSetupRetriesPerTask), C(maxExecutorRetriesPerTask), C(maxFinalizerRetriesPerTask),
        C(maxSettlementRetriesPerTask), C(settlementBatchSize), C(deliveredTaskAckTimeoutSecs),
        C(dataRetentionDays), C(maxTaskQueueSize).
      - Integers are range-checked for their Go type; C(gasPrice) and C(maxGasPrice) are decimal
        wei strings (or empty). Keys covered by other options are refused with the option to use.
    type: dict
  models_dir:
    description:
      - Host directory the compose file mounts as the broker's models directory.
      - Defaults to C(models) beside O(dest).
    type: path
  check_usage_files:
    description:
      - Whether each customized model's usage file must exist in O(models_dir) (the broker panics
        and crash-loops without it).
      - The role turns it off only in check mode when the usage files are about to be copied.
    type: bool
    default: true
  variable_prefix:
    description:
      - Prefix put before every option path in errors and warnings, so that they name the
        caller's variable (the role passes V(provider_config_)).
    type: str
    default: ""
  owner:
    description: Owner of O(dest) (name or numeric id).
    type: str
    default: root
  group:
    description: Group of O(dest) (name or numeric id).
    type: str
    default: root
  mode:
    description:
      - Mode of O(dest), an octal string such as V("0600") (or an integer); a warning is given if
        it lets other users read the keys.
    type: raw
    default: "0600"
attributes:
  check_mode:
    description: Can run in check_mode and return changed status prediction without modifying target.
    support: full
  diff_mode:
    description: Will return details on what has changed (or possibly needs changing in check_mode), when in diff mode.
    support: full
    details:
      - Private keys and the database password are masked in both sides of the diff.
  idempotent:
    description: When run twice in a row with the same arguments, the second run reports no change.
    support: full
  action_group:
    description: Use C(group/zerog.compute.all) in C(module_defaults) to set defaults for this module.
    support: full
    membership:
      - zerog.compute.all
  platform:
    description: Target OS/families that can be operated against.
    support: N/A
    platforms: posix
notes:
  - The rules come from the broker's Go code (v0.2.2, C(api/fine-tuning/config/config.go),
    C(api/common/config), go-ethereum C(HexToECDSA)/C(HexToHash)); see the collection's
    reference C(finetune-broker.md).
seealso:
  - name: 0G fine-tuning provider guide
    description: The upstream operator guide this module replaces the manual steps of.
    link: https://docs.0g.ai/developer-hub/building-on-0g/compute-network/fine-tuning-provider
"""

EXAMPLES = r"""
- name: Broker configuration for the testnet
  zerog.compute.finetune_config:
    dest: /opt/zerog/broker/0.2.2/config.local.yaml
    private_keys: ["{{ vault_provider_private_key }}"]
    serving_url: "http://{{ ansible_facts['default_ipv4']['address'] }}:8080"
    published_port: 8080
    host_addresses: "{{ ansible_facts['all_ipv4_addresses'] }}"
    database_password: "{{ vault_broker_db_password }}"
    quota:
      cpu_count: 16
      memory: 64
      storage: 200
      gpu_type: H100
      gpu_count: 1
    customized_models:
      - name: mobilenet_v2
        hash: "0x6b2c9e1f0a8d4c3b2a1908f7e6d5c4b3a29180f7e6d5c4b3a29180f7e6d5c4b3"
        image: ghcr.io/example/mobilenet-trainer:1.0
        data_type: image
        training_script: /app/train.py
        description: MobileNet v2 image classification
        tokenizer: "0x1f0e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"

- name: Mainnet needs the contract and indexers
  zerog.compute.finetune_config:
    dest: /opt/zerog/broker/0.2.2/config.local.yaml
    network: mainnet
    contract_address: "{{ broker_mainnet_contract }}"
    storage_client:
      indexer_standard: "{{ broker_mainnet_indexer_standard }}"
      indexer_turbo: "{{ broker_mainnet_indexer_turbo }}"
    private_keys: ["{{ vault_provider_private_key }}"]
    serving_url: https://finetune.example.com
    broker_settings:
      settlementCheckInterval: 120
      maxTaskQueueSize: 10
"""

RETURN = r"""
dest:
  description: Path of the configuration file.
  returned: always
  type: str
  sample: /opt/zerog/broker/0.2.2/config.local.yaml
config:
  description:
    - The configuration as written, in the broker's key names, with private keys and the
      database password masked.
  returned: success
  type: dict
  sample:
    contractAddress: "0x4c871c46D901990987EBf39Cb8a16fC73390a4E5"
    networks:
      ethereum0g:
        url: https://evmrpc-testnet.0g.ai
        chainID: 16601
        privateKeys: ["<redacted sha256:3f1a9c02>"]
models:
  description: Names of the customized models written.
  returned: success
  type: list
  elements: str
  sample: [mobilenet_v2]
errors:
  description: Every refused input, as the option path and the rule it breaks.
  returned: failure
  type: list
  elements: dict
  sample: [{option: "customized_models[1].hash", rule: "must be 0x followed by 64 hexadecimal digits"}]
"""

import grp
import hashlib
import ipaddress
import os
import pwd
import re
import tempfile
from urllib.parse import urlsplit

from ansible.module_utils.basic import AnsibleModule
from ansible.module_utils.parsing.convert_bool import boolean
from ansible_collections.zerog.compute.plugins.module_utils import _broker_schema as schema

# ------------------------------------------------------------------------ YAML emitter

_ESCAPES = {"\\": "\\\\", '"': '\\"', "\0": "\\0", "\t": "\\t", "\n": "\\n", "\r": "\\r"}
_PLAIN_KEY = re.compile(r"^[A-Za-z][A-Za-z0-9_]*$")


def yaml_quote(text):
    """``text`` as a YAML double-quoted scalar, printable ASCII only (everything else escaped)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError("a string holds a lone surrogate, which YAML cannot represent")
        elif code <= 0xFF:
            out.append(f"\\x{code:02x}")
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def yaml_scalar(value):
    """A scalar as YAML: booleans and integers plain (unquoted), strings double-quoted."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return yaml_quote(value)
    raise TypeError(f"cannot emit a {type(value).__name__} scalar")


def _yaml_key(key):
    if not isinstance(key, str):
        raise TypeError(f"mapping keys must be strings, got {key!r}")
    return key if _PLAIN_KEY.match(key) else yaml_quote(key)


def _emit_mapping(mapping, indent, lines):
    pad = " " * indent
    for key, value in mapping.items():
        head = f"{pad}{_yaml_key(key)}:"
        if isinstance(value, dict):
            if value:
                lines.append(head)
                _emit_mapping(value, indent + 2, lines)
            else:
                lines.append(head + " {}")
        elif isinstance(value, list):
            if value:
                lines.append(head)
                _emit_sequence(value, indent + 2, lines)
            else:
                lines.append(head + " []")
        else:
            lines.append(f"{head} {yaml_scalar(value)}")


def _emit_sequence(items, indent, lines):
    pad = " " * indent
    for item in items:
        if isinstance(item, dict) and item:
            sub = []
            _emit_mapping(item, indent + 2, sub)
            sub[0] = f"{pad}- {sub[0][indent + 2:]}"
            lines.extend(sub)
        elif isinstance(item, dict):
            lines.append(f"{pad}- {{}}")
        elif isinstance(item, list):
            raise TypeError("nested sequences are not part of the broker schema")
        else:
            lines.append(f"{pad}- {yaml_scalar(item)}")


def emit_yaml(doc):
    """Block-style YAML for a mapping of mappings, lists and scalars (the broker schema's shapes)."""
    if not isinstance(doc, dict):
        raise TypeError("the document must be a mapping")
    lines = []
    _emit_mapping(doc, 0, lines)
    return "\n".join(lines) + "\n" if lines else "{}\n"


# ---------------------------------------------------------------------------- checking

_HEX64 = re.compile(r"^[0-9a-fA-F]{64}$")
_ROOT_HASH = re.compile(r"^0x[0-9a-fA-F]{64}$")
_ADDRESS = re.compile(r"^0x[0-9a-fA-F]{40}$")
_HEX_BYTES = re.compile(r"^0[xX](?:[0-9a-fA-F]{2})*$")
_DECIMAL = re.compile(r"^-?[0-9]+$")
_UINT_TEXT = re.compile(r"^[0-9]+$")
_DB_PASSWORD = re.compile(r"^[A-Za-z0-9._~+=-]{12,128}$")
# Docker's reference grammar (distribution/reference): [domain[:port]/]path[:tag][@digest]
_REF_COMPONENT = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*"
_REF_DOMAIN = r"(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9])(?:\.(?:[A-Za-z0-9]|[A-Za-z0-9][A-Za-z0-9-]*[A-Za-z0-9]))*"
_IMAGE_REF = re.compile(
    rf"^(?:{_REF_DOMAIN}(?::[0-9]+)?/)?{_REF_COMPONENT}(?:/{_REF_COMPONENT})*"
    r"(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@sha256:[0-9a-f]{64})?$"
)
#: secp256k1 group order: a private key must be in 1..N-1 (go-ethereum ToECDSA).
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_REDACTED_PASSWORD = "********"

QUOTA_KEYS = {"cpu_count": "cpuCount", "memory": "memory", "storage": "storage", "gpu_type": "gpuType",
              "gpu_count": "gpuCount"}
MODEL_KEYS = ("name", "hash", "image", "data_type", "training_script", "description", "tokenizer", "usage_file")
UPLOAD_KEYS = {"tags": "tags", "expected_replica": "expectedReplica", "skip_tx": "skipTx",
               "finality_required": "finalityRequired", "fragment_size": "fragmentSize", "task_size": "taskSize",
               "routines": "routines"}
LOGGER_KEYS = {"level": "level", "format": "format", "path": "path", "rotation_count": "rotationCount"}
IMAGES_KEYS = {"execution_image_name": "executionImageName", "execution_mock_image_name": "executionMockImageName",
               "build_image": "buildImage", "override_image": "overrideImage"}
#: Top-level broker keys that broker_settings may not set, and where they come from instead.
COVERED_KEYS = {
    "contractAddress": "set it with {p}contract_address",
    "database": "set the password with {p}database_password",
    "networks": "use {p}rpc_url, {p}chain_id, {p}private_keys, {p}transaction_limit and {p}gas_estimation_buffer",
    "images": "use {p}images",
    "storageClient": "use {p}storage_client",
    "servingUrl": "the top-level servingUrl is never read by the broker; use {p}serving_url (service.servingUrl)",
    "service": "use {p}serving_url, {p}price_per_token, {p}quota and {p}customized_models",
    "providerOption": "not supported by this module",
    "logger": "use {p}logger",
}


class Checker:
    """Collects refused inputs (option path + rule) and warnings while the document is built."""

    def __init__(self, prefix=""):
        self.prefix = prefix
        self.errors = []
        self.warnings = []

    def name(self, path):
        return f"{self.prefix}{path}"

    def error(self, path, rule):
        self.errors.append((self.name(path), rule))

    def warn(self, path, text):
        self.warnings.append(f"{self.name(path)}: {text}")

    # -- typed readers: each returns the checked value, or None after recording an error --
    def text(self, path, value, required=True, allow_empty=False):
        if value is None:
            if required:
                self.error(path, "is required")
            return None
        if not isinstance(value, str):
            self.error(path, f"must be a string, got {_type_name(value)} (quote it)")
            return None
        if any(0xD800 <= ord(c) <= 0xDFFF for c in value):
            self.error(path, "must be valid Unicode text (it holds a lone surrogate)")
            return None
        if not allow_empty and value.strip() == "":
            self.error(path, "must not be empty")
            return None
        return value

    def integer(self, path, value, go_type, minimum=None, required=True):
        if value is None:
            if required:
                self.error(path, "is required")
            return None
        if isinstance(value, bool) or not isinstance(value, (int, str)) or (
                isinstance(value, str) and not _DECIMAL.match(value.strip())):
            self.error(path, f"must be an integer ({go_type.go_type}), got {_type_name(value)}")
            return None
        number = int(value)
        low = go_type.minimum if minimum is None else max(minimum, go_type.minimum)
        if not low <= number <= go_type.maximum:
            if number > go_type.maximum:
                self.error(path, f"must be at most {go_type.maximum} ({go_type.go_type}), got {number}")
            else:
                self.error(path, f"must be at least {low} ({go_type.go_type}), got {number}")
            return None
        return number

    def flag(self, path, value):
        if value is None:
            return None
        try:
            return boolean(value, strict=True)
        except TypeError:
            self.error(path, f"must be a boolean (true or false), got {_type_name(value)} {value!r}")
            return None

    def choice(self, path, value, choices, fold_case=False):
        text = self.text(path, value)
        if text is None:
            return None
        key = text.lower() if fold_case else text
        if key not in choices:
            self.error(path, f"must be one of {', '.join(choices)}, got {text!r}")
            return None
        return key

    def mapping(self, path, value, known):
        """A dict option: refuses a non-mapping and every unknown key; ``None`` is empty."""
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.error(path, f"must be a mapping, got {_type_name(value)}")
            return None
        for key in value:
            if key not in known:
                self.error(f"{path}.{key}", f"unknown key; known keys: {', '.join(known)}")
        return value


def _type_name(value):
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "an integer"
    if isinstance(value, float):
        return "a float"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


def check_http_url(chk, path, value, bare=False):
    """An absolute http(s) URL; with ``bare``, nothing after host[:port] (no path, query, slash)."""
    text = chk.text(path, value)
    if text is None:
        return None
    if any(c.isspace() for c in text):
        chk.error(path, "must be an absolute http:// or https:// URL without spaces")
        return None
    parts = urlsplit(text)
    if parts.scheme not in ("http", "https") or not text.lower().startswith(parts.scheme + "://"):
        chk.error(path, f"must be an absolute http:// or https:// URL, got {text!r}")
        return None
    if "@" in parts.netloc:
        chk.error(path, "must not carry user information (user@host)")
        return None
    try:
        port = parts.port
    except ValueError:
        chk.error(path, f"has an invalid port in {text!r}")
        return None
    if not parts.hostname or port == 0:
        chk.error(path, f"must name a host (and a port from 1 to 65535 if any), got {text!r}")
        return None
    if bare and (parts.path or "?" in text or "#" in text):
        chk.error(path, f"must be http(s)://host[:port] with no path, query or trailing slash "
                        f"(clients append /v1/...), got {text!r}")
        return None
    return text


def _normal_host(host):
    host = host.strip().lower()
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    host = host.split("%", 1)[0]
    try:
        return str(ipaddress.ip_address(host))
    except ValueError:
        return host.rstrip(".")


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_serving_url(chk, params):
    url = check_http_url(chk, "serving_url", params["serving_url"], bare=True)
    if url is None:
        return None
    parts = urlsplit(url)
    host = _normal_host(parts.hostname)
    here = {_normal_host(a) for a in params["host_addresses"] or [] if isinstance(a, str) and a.strip()}
    local = host in here or _is_loopback(host)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    published = params["published_port"]
    if published is not None and 1 <= published <= 65535 and local and port != published:
        chk.error("serving_url", f"port {port} must equal {chk.name('published_port')} {published}: the URL's host "
                                 f"{parts.hostname} is this host, where the compose file publishes the broker on "
                                 f"host port {published}")
    if _is_loopback(host):
        chk.warn("serving_url", f"{url} is a loopback address: it is registered on chain and clients on other "
                                "hosts cannot reach it")
    if local and parts.scheme == "https":
        chk.warn("serving_url", f"{url} points at this host with https, but the broker itself serves plain "
                                "HTTP; put a TLS proxy in front or use http")
    return url


def check_private_keys(chk, keys, module):
    if not isinstance(keys, list) or not keys:
        chk.error("private_keys", "must list at least one key (the broker uses the first one)")
        return None
    good = []
    for index, key in enumerate(keys):
        path = f"private_keys[{index}]"
        if not isinstance(key, str):
            chk.error(path, f"must be a quoted string of 64 hexadecimal characters, got {_type_name(key)} "
                            "(an unquoted key made of digits is read as a number and loses leading zeros)")
            continue
        bare = key.strip()
        if bare[:2] in ("0x", "0X"):
            bare = bare[2:]
        if bare:
            module.no_log_values.add(bare)
        if not _HEX64.match(bare):
            what = "non-hexadecimal characters" if re.search(r"[^0-9a-fA-F]", bare) else f"{len(bare)} characters"
            chk.error(path, f"must be exactly 64 hexadecimal characters after removing an optional 0x prefix "
                            f"(got {what})")
            continue
        if not 0 < int(bare, 16) < SECP256K1_N:
            chk.error(path, "is not a valid secp256k1 private key (it must be from 1 to n-1)")
            continue
        good.append(bare)
    if len(keys) > 1:
        chk.warn("private_keys", "only the first key is used by the broker (wallet 0 pays gas and signs); "
                                 "the others are only checked")
    return good if len(good) == len(keys) else None


def check_image_ref(chk, path, value):
    text = chk.text(path, value)
    if text is None:
        return None
    if not _IMAGE_REF.match(text):
        chk.error(path, f"must be a Docker image reference ([registry/]name[:tag][@sha256:digest], "
                        f"lower-case name), got {text!r}")
        return None
    return text


def check_quota(chk, value, example):
    given = chk.mapping("quota", value, list(QUOTA_KEYS))
    if given is None:
        return None
    out = {}
    defaults = example["quota"]
    for key, yaml_key in QUOTA_KEYS.items():
        raw = given.get(key, defaults[yaml_key])
        if key == "gpu_type":
            out[yaml_key] = chk.text(f"quota.{key}", raw)
        else:
            out[yaml_key] = chk.integer(f"quota.{key}", raw, schema.INT64, minimum=1)
    return out


def check_models(chk, models, version, models_dir, check_files):
    if models is None:
        return []
    if not isinstance(models, list):
        chk.error("customized_models", f"must be a list of mappings, got {_type_name(models)}")
        return None
    out = []
    names = {}
    hashes = {}
    builtin = set(version.builtin_hashes)
    for index, item in enumerate(models):
        base = f"customized_models[{index}]"
        given = chk.mapping(base, item, list(MODEL_KEYS))
        if given is None:
            continue
        name = chk.text(f"{base}.name", given.get("name"))
        if name is not None and (name != name.strip() or "/" in name
                                 or any(ord(c) < 0x20 or ord(c) == 0x7F for c in name)):
            chk.error(f"{base}.name", "must have no '/', control characters or surrounding spaces "
                                      "(it is a URL path segment and the default usage file name)")
            name = None
        if name is not None:
            folded = name.lower()
            if folded in names:
                first = chk.name(f"customized_models[{names[folded]}].name")
                chk.error(f"{base}.name", f"{name!r} repeats {first} ignoring case; names must be unique "
                                          "ignoring case (the broker panics 'duplicate customized model name')")
            else:
                names[folded] = index
            seen_as = schema.name_lookup_hash(name)
            if seen_as is not None:
                chk.warn(f"{base}.name", f"{name!r} is mistaken for a hash by GET /v1/model/<name> and "
                                         f"/v1/model/desc/<name>: go-ethereum HexToHash decodes its leading hex "
                                         f"digits to the non-zero hash {seen_as}, so lookup by name fails; "
                                         "prefer a name whose first character is not a hex digit (0-9, a-f)")
        root = chk.text(f"{base}.hash", given.get("hash"))
        if root is not None and not _ROOT_HASH.match(root):
            chk.error(f"{base}.hash", "must be 0x followed by 64 hexadecimal digits (a 0G Storage root hash)")
            root = None
        if root is not None:
            root = root.lower()
            if root in builtin:
                chk.error(f"{base}.hash", f"{root} is the hash of one of broker {version.version}'s predefined "
                                          "models (the broker panics 'duplicate customized model hash with "
                                          "predefined models')")
            elif root in hashes:
                chk.error(f"{base}.hash", f"repeats {chk.name(f'customized_models[{hashes[root]}].hash')}; hashes must be unique "
                                          "(the broker panics 'duplicate customized model hash')")
            else:
                hashes[root] = index
        image = check_image_ref(chk, f"{base}.image", given.get("image"))
        data_type = chk.choice(f"{base}.data_type", given.get("data_type", "text"), schema.DATA_TYPES)
        script = chk.text(f"{base}.training_script", given.get("training_script"))
        if script is not None and not script.startswith("/"):
            chk.error(f"{base}.training_script", f"must be an absolute path inside the image, got {script!r}")
            script = None
        description = chk.text(f"{base}.description", given.get("description", ""), allow_empty=True)
        tokenizer = chk.text(f"{base}.tokenizer", given.get("tokenizer"))
        if tokenizer is not None and not _ROOT_HASH.match(tokenizer):
            chk.error(f"{base}.tokenizer", "must be 0x followed by 64 hexadecimal digits (the 0G Storage root "
                                           "hash of the tokenizer ZIP)")
            tokenizer = None
        usage = given.get("usage_file")
        if usage is None and name is not None:
            usage = f"{name}.zip"
        usage = chk.text(f"{base}.usage_file", usage) if usage is not None else None
        if usage is not None and ("/" in usage or usage in (".", "..") or "\0" in usage):
            chk.error(f"{base}.usage_file", f"must be a file name in the models directory (no '/'), got {usage!r}")
            usage = None
        if usage is not None and check_files:
            check_usage_file(chk, f"{base}.usage_file", usage, name, models_dir)
        out.append({"name": name, "hash": root, "image": image, "dataType": data_type, "trainingScript": script,
                    "description": description, "tokenizer": tokenizer.lower() if tokenizer else tokenizer,
                    "usageFile": usage})
    return out


def check_usage_file(chk, path, usage, name, models_dir):
    full = os.path.join(models_dir, usage)
    if not os.path.isfile(full):
        chk.error(path, f"{usage} is not a file in {models_dir} (the broker panics 'Model {name} detail usage "
                        "file not found' and crash-loops); put the model's usage ZIP there first")
        return
    if os.path.islink(full):
        chk.warn(path, f"{full} is a symbolic link; inside the broker container its target may not exist")
    try:
        with open(full, "rb") as handle:
            magic = handle.read(4)
    except OSError as exc:
        chk.error(path, f"{full} cannot be read: {exc.strerror}")
        return
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        chk.warn(path, f"{full} is not a ZIP file; clients download it as {name}.zip")


def check_storage_client(chk, value, preset, network, version):
    given = chk.mapping("storage_client", value, ["indexer_standard", "indexer_turbo", "upload_args"])
    if given is None:
        return None
    out = {}
    for key, yaml_key in (("indexer_standard", "indexerStandard"), ("indexer_turbo", "indexerTurbo")):
        raw = given.get(key)
        if raw is None:
            raw = preset[yaml_key]
            if raw is None:
                chk.error(f"storage_client.{key}", f"is required for network={network}: broker "
                                                   f"{version.version} names no verified {network} indexer")
                continue
        out[yaml_key] = check_http_url(chk, f"storage_client.{key}", raw)
    upload = chk.mapping("storage_client.upload_args", given.get("upload_args"), list(UPLOAD_KEYS))
    if upload is None:
        return out
    merged = {k: version.example["uploadArgs"][v] for k, v in UPLOAD_KEYS.items() if v in version.example["uploadArgs"]}
    merged.update(upload)
    args = {}
    for key, yaml_key in UPLOAD_KEYS.items():
        if key not in merged:
            continue
        path = f"storage_client.upload_args.{key}"
        field = version.schema.fields["storageClient"].fields["uploadArgs"].fields[yaml_key]
        if key == "tags":
            tags = chk.text(path, merged[key])
            if tags is not None and not _HEX_BYTES.match(tags):
                chk.error(path, "must be 0x followed by an even number of hex digits (hexutil.MustDecode panics "
                                "otherwise); use \"0x\" for no tags")
                tags = None
            args[yaml_key] = tags
        elif field is schema.BOOL:
            args[yaml_key] = chk.flag(path, merged[key])
        else:
            args[yaml_key] = chk.integer(path, merged[key], field)
    out["uploadArgs"] = args
    return out


def check_logger(chk, value):
    given = chk.mapping("logger", value, list(LOGGER_KEYS))
    if given is None:
        return None
    out = {}
    for key, yaml_key in LOGGER_KEYS.items():
        if given.get(key) is None:
            continue
        path = f"logger.{key}"
        if key == "level":
            out[yaml_key] = chk.choice(path, given[key], schema.LOG_LEVELS, fold_case=True)
        elif key == "format":
            out[yaml_key] = chk.choice(path, given[key], schema.LOG_FORMATS)
        elif key == "path":
            out[yaml_key] = chk.text(path, given[key], allow_empty=True)
        else:
            out[yaml_key] = chk.integer(path, given[key], schema.UINT)
    return out


def check_images(chk, value):
    given = chk.mapping("images", value, list(IMAGES_KEYS))
    if given is None:
        return None
    out = {}
    for key, yaml_key in IMAGES_KEYS.items():
        if given.get(key) is None:
            continue
        path = f"images.{key}"
        if key.endswith("_name"):
            out[yaml_key] = check_image_ref(chk, path, given[key])
        else:
            out[yaml_key] = chk.flag(path, given[key])
    return out


def check_broker_settings(chk, value, version):
    if value is None:
        return {}
    if not isinstance(value, dict):
        chk.error("broker_settings", f"must be a mapping, got {_type_name(value)}")
        return None
    fields = version.schema.fields
    out = {}
    for key, raw in value.items():
        path = f"broker_settings.{key}"
        if key in COVERED_KEYS:
            chk.error(path, COVERED_KEYS[key].format(p=chk.prefix))
            continue
        field = fields.get(key)
        if not isinstance(field, schema.Scalar):
            chk.error(path, f"is not a key of the broker {version.version} configuration (keys are spelled as "
                            "the broker spells them, e.g. settlementCheckInterval)")
            continue
        if field is schema.STR:
            text = chk.text(path, raw, allow_empty=True)
            if text is not None and text != "" and (not _UINT_TEXT.match(text) or int(text) > schema.UINT64_MAX):
                chk.error(path, f"must be a decimal amount of wei (digits only, at most {schema.UINT64_MAX}) "
                                f"or empty, got {text!r}")
                text = None
            out[key] = text
        else:
            out[key] = chk.integer(path, raw, field)
    return out


def check_database_password(chk, password, version):
    pkg = version.package
    if password is None:
        chk.warn("database_password", f"not set: the broker uses its built-in DSN with the published default MySQL "
                                      f"password {pkg['db_default_password']}, which the compose file must keep")
        return None
    if not isinstance(password, str):
        chk.error("database_password", f"must be a string, got {_type_name(password)}")
        return None
    if password == pkg["db_default_password"]:
        chk.error("database_password", "must not be the published default password of the package")
        return None
    if not _DB_PASSWORD.match(password):
        chk.error("database_password",
                  "must be 12 to 128 characters from A-Z a-z 0-9 . _ ~ + = - (it appears unescaped in the DSN and in "
                  "docker-compose.yml, where $ starts an interpolation)")
        return None
    return f"{pkg['db_user']}:{password}@tcp({pkg['db_container']}:3306)/{pkg['db_name']}?parseTime=true"


def build_document(params, version, chk, module):
    """Check every input and build the configuration document (broker key names, struct order)."""
    network = params["network"]
    preset = version.presets[network]
    example = version.example

    contract = params["contract_address"]
    if contract is None:
        contract = preset["contractAddress"]
        if contract is None:
            chk.error("contract_address", f"is required for network={network}: broker {version.version} names no "
                                          f"verified FineTuningServing contract on {network}")
    elif chk.text("contract_address", contract) is not None and not _ADDRESS.match(contract):
        chk.error("contract_address", "must be 0x followed by 40 hexadecimal digits")
        contract = None
    dsn = check_database_password(chk, params["database_password"], version)

    rpc_url = check_http_url(chk, "rpc_url", preset["url"] if params["rpc_url"] is None else params["rpc_url"])
    chain_id = params["chain_id"]
    if chain_id is None:
        chain_id = preset["chainID"]
    else:
        chain_id = chk.integer("chain_id", chain_id, schema.INT64, minimum=1)
        for other, other_preset in version.presets.items():
            if chain_id is not None and other != network and other_preset["chainID"] == chain_id:
                chk.warn("chain_id", f"{chain_id} is the {other} chain id, but network is {network}")
    published = params["published_port"]
    if published is not None and not 1 <= published <= 65535:
        chk.error("published_port", f"must be a port from 1 to 65535, got {published}")
    keys = check_private_keys(chk, params["private_keys"], module)
    limit = chk.integer("transaction_limit", params["transaction_limit"], schema.UINT64, minimum=1)
    buffer = chk.integer("gas_estimation_buffer", params["gas_estimation_buffer"], schema.UINT64)

    images = check_images(chk, params["images"])
    storage = check_storage_client(chk, params["storage_client"], preset, network, version)
    serving_url = check_serving_url(chk, params)
    quota = check_quota(chk, params["quota"], example)
    price = chk.integer("price_per_token", params["price_per_token"], schema.INT64, minimum=0)
    models_dir = params["models_dir"] or os.path.join(os.path.dirname(params["dest"]), "models")
    models = check_models(chk, params["customized_models"], version, models_dir, params["check_usage_files"])
    logger = check_logger(chk, params["logger"])
    settings = check_broker_settings(chk, params["broker_settings"], version)

    doc = {"contractAddress": contract}
    if dsn is not None:
        doc["database"] = {"fineTune": dsn}
    doc["networks"] = {schema.NETWORK_KEY: {
        "url": rpc_url, "chainID": chain_id, "privateKeys": keys, "transactionLimit": limit,
        "gasEstimationBuffer": buffer,
    }}
    if images:
        doc["images"] = images
    doc["storageClient"] = storage
    service = {"servingUrl": serving_url, "quota": quota, "pricePerToken": price}
    if models:
        service["customizedModels"] = models
    doc["service"] = service
    if logger:
        doc["logger"] = logger
    for key in version.schema.fields:  # struct order
        if settings and key in settings:
            doc[key] = settings[key]
    return doc


# ---------------------------------------------------------------------------- masking


def redact_key(key):
    """How a private key is shown: a short SHA-256 prefix, never the key."""
    return f"<redacted sha256:{hashlib.sha256(key.encode('ascii')).hexdigest()[:8]}>"


_DSN_PASSWORD = re.compile(r"([A-Za-z0-9_.-]*:)([^@\s\"']*)(@tcp\()")
_KEY_TOKEN = re.compile(r"(?<![0-9A-Za-z])(?:0[xX])?([0-9a-fA-F]{64})(?![0-9A-Za-z])")
_PUBLIC_HASH_LINE = re.compile(r"^\s*(?:-\s+)?[\"']?(?:hash|tokenizer)[\"']?\s*:")


def mask_document(doc):
    """A copy of ``doc`` with the private keys and the DSN password replaced."""
    masked = dict(doc)
    if "networks" in doc:
        masked["networks"] = {}
        for name, net in doc["networks"].items():
            net = dict(net)
            net["privateKeys"] = [redact_key(k) for k in net.get("privateKeys") or []]
            masked["networks"][name] = net
    if "database" in doc:
        masked["database"] = {"fineTune": _DSN_PASSWORD.sub(rf"\g<1>{_REDACTED_PASSWORD}\g<3>", doc["database"]["fineTune"])}
    return masked


def mask_text(text, secrets):
    """Mask a file's text whatever its layout: every 64-hex-digit token outside ``hash:`` and
    ``tokenizer:`` lines, every DSN password, and every known secret value."""
    lines = []
    for line in text.splitlines(True):
        if not _PUBLIC_HASH_LINE.match(line):
            line = _KEY_TOKEN.sub(lambda m: redact_key(m.group(1)), line)
        line = _DSN_PASSWORD.sub(rf"\g<1>{_REDACTED_PASSWORD}\g<3>", line)
        lines.append(line)
    masked = "".join(lines)
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):
        masked = masked.replace(secret, _REDACTED_PASSWORD)
    return masked


# ------------------------------------------------------------------------- file work


def resolve_id(module, value, what):
    """A user or group id from a name or a number; fails the module when the name is unknown."""
    text = str(value).strip()
    if text.isdigit():
        return int(text)
    try:
        return pwd.getpwnam(text).pw_uid if what == "owner" else grp.getgrnam(text).gr_gid
    except KeyError:
        rule = f"no {'user' if what == 'owner' else 'group'} {text!r} exists on this host"
        module.fail_json(msg=f"{what}: {rule}", errors=[{"option": what, "rule": rule}])
    return None  # pragma: no cover - fail_json does not return


def parse_mode(module, mode):
    if isinstance(mode, int) and not isinstance(mode, bool):
        value = mode
    elif isinstance(mode, str) and re.match(r"^0?[0-7]{3,4}$", mode.strip()):
        value = int(mode.strip(), 8)
    else:
        rule = f"must be an octal string such as '0600', got {mode!r}"
        module.fail_json(msg=f"mode: {rule}", errors=[{"option": "mode", "rule": rule}])
    if not 0 <= value <= 0o7777:
        rule = f"must be from 0000 to 7777 (octal), got {value:o}"
        module.fail_json(msg=f"mode: {rule}", errors=[{"option": "mode", "rule": rule}])
    return value


def write_atomic(path, data, mode, uid, gid):
    """Write ``data`` to ``path`` through a temporary file in the same directory and a rename.

    The temporary file gets ``mode`` and the owner before any byte is written to it.
    """
    directory = os.path.dirname(path) or "."
    fd, tmp = tempfile.mkstemp(prefix=".finetune_config.", dir=directory)
    try:
        os.fchmod(fd, mode)
        if (os.fstat(fd).st_uid, os.fstat(fd).st_gid) != (uid, gid):
            os.fchown(fd, uid, gid)
        with os.fdopen(fd, "wb") as handle:
            fd = None
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        tmp = None
        dir_fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        if fd is not None:
            os.close(fd)
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            dest=dict(type="path", required=True),
            broker_version=dict(type="str", default=schema.DEFAULT_VERSION, choices=sorted(schema.VERSIONS)),
            network=dict(type="str", default="testnet", choices=["testnet", "mainnet"]),
            rpc_url=dict(type="str"),
            chain_id=dict(type="int"),
            contract_address=dict(type="str"),
            private_keys=dict(type="list", elements="raw", required=True, no_log=True),
            transaction_limit=dict(type="int", default=1000000),
            gas_estimation_buffer=dict(type="int", default=10000),
            serving_url=dict(type="str", required=True),
            published_port=dict(type="int"),
            host_addresses=dict(type="list", elements="str", default=[]),
            price_per_token=dict(type="int", default=1, no_log=False),
            quota=dict(type="dict"),
            customized_models=dict(type="list", elements="dict"),
            storage_client=dict(type="dict"),
            logger=dict(type="dict"),
            images=dict(type="dict"),
            database_password=dict(type="str", no_log=True),
            broker_settings=dict(type="dict"),
            models_dir=dict(type="path"),
            check_usage_files=dict(type="bool", default=True),
            variable_prefix=dict(type="str", default=""),
            owner=dict(type="str", default="root"),
            group=dict(type="str", default="root"),
            mode=dict(type="raw", default="0600"),
        ),
        supports_check_mode=True,
    )
    params = module.params
    dest = params["dest"]
    version = schema.get_version(params["broker_version"])
    mode = parse_mode(module, params["mode"])
    uid = resolve_id(module, params["owner"], "owner")
    gid = resolve_id(module, params["group"], "group")

    chk = Checker(params["variable_prefix"])
    doc = build_document(params, version, chk, module)
    if not chk.errors:
        problems = schema.check_document(doc, version.schema)
        if problems:  # a bug of this module, never the user's input
            module.fail_json(msg="Internal error: the rendered configuration does not match the broker schema: "
                                 + "; ".join(problems))
    for warning in chk.warnings:
        module.warn(warning)
    if chk.errors:
        module.fail_json(msg="; ".join(f"{path}: {rule}" for path, rule in chk.errors),
                         errors=[{"option": path, "rule": rule} for path, rule in chk.errors], dest=dest)
    if mode & 0o077:
        module.warn(f"mode {mode:04o} lets users other than the owner read the private keys in {dest}")

    header = (f"# config.local.yaml of the 0G fine-tuning broker {version.version}, written by "
              "zerog.compute.finetune_config.\n# Changes made by hand are replaced on the next run.\n")
    data = (header + emit_yaml(doc)).encode("utf-8")
    secrets = list(module.no_log_values)
    masked_after = header + emit_yaml(mask_document(doc))
    result = {"changed": False, "dest": dest, "config": mask_document(doc),
              "models": [m["name"] for m in doc["service"].get("customizedModels", [])]}

    if os.path.isdir(dest):
        module.fail_json(msg=f"dest: {dest} is a directory; give the path of the configuration file", **result)
    directory = os.path.dirname(dest) or "."
    before = None
    attrs_before = None
    if os.path.lexists(dest):
        try:
            with open(dest, "rb") as handle:
                before = handle.read()
            st = os.stat(dest)
        except OSError as exc:
            module.fail_json(msg=f"Cannot read {dest}: {exc.strerror}", **result)
        attrs_before = {"mode": f"{st.st_mode & 0o7777:04o}", "owner": st.st_uid, "group": st.st_gid}
    elif not os.path.isdir(directory) and not module.check_mode:
        module.fail_json(msg=f"Cannot write {dest}: directory {directory} does not exist. Fix: extract the broker "
                             "package there first (the provider_config role does).", **result)
    attrs_after = {"mode": f"{mode:04o}", "owner": uid, "group": gid}
    content_changed = before != data
    attrs_changed = attrs_before is not None and attrs_before != attrs_after
    result["changed"] = content_changed or attrs_changed

    if module._diff:
        if before is None:
            masked_before = ""
        else:
            try:
                masked_before = mask_text(before.decode("utf-8"), secrets)
            except UnicodeDecodeError:
                masked_before = "<content that is not UTF-8 text>\n"
        diffs = [{"before": masked_before, "after": masked_after, "before_header": dest, "after_header": dest}]
        if attrs_changed:
            diffs.append({"before": attrs_before, "after": attrs_after, "before_header": f"{dest} (attributes)",
                          "after_header": f"{dest} (attributes)"})
        result["diff"] = diffs

    if result["changed"] and not module.check_mode:
        try:
            if content_changed:
                write_atomic(dest, data, mode, uid, gid)
            else:
                os.chown(dest, uid, gid)
                os.chmod(dest, mode)
        except OSError as exc:
            module.fail_json(msg=f"Cannot write {dest}: {exc.strerror or exc}", **result)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
