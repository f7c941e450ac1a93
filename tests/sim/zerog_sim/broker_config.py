"""The 0G fine-tuning broker's configuration as v0.2.2's Go code loads and checks it.

Everything here is pure (no sleeping, no sockets): it decodes ``config.yaml`` with the
broker's Go struct layout through :mod:`zerog_sim.goyaml`, merges it over the built-in
defaults of ``GetConfig()``, and runs, in upstream order, every start-up check that
depends only on the configuration (and on the usage files in the models directory):

1. ``config.GetConfig``: read the file (a missing file is *not* an error), strict YAML
   decode (``log.Fatalf("Error loading configuration: %v")``, exit 1), the
   ``PrivateKeyStore`` loop (a ``null`` network dereferences a nil pointer), and
   ``validateCustomizedModels`` (``panic``);
2. ``log.GetLogger``: ``logrus.ParseLevel`` (``panic(err)`` in ``Main``), formatter;
3. ``storage.New``: network ``ethereum0g`` lookup, every private key through
   go-ethereum's ``crypto.HexToECDSA``, wallet 0, the RPC URL transport, ``gasPrice``,
   the two indexer URLs;
4. ``providercontract.NewProviderContract``: the network picked by ``NETWORK``
   (``ethereumHardhat`` under ``NETWORK=hardhat``), its RPC URL and keys.

A failure is described by :class:`Crash` (how the real process dies: exit code and the
exact text).  Wallet addresses are derived with a small pure-Python secp256k1 and
Keccak-256, so logs show the real address of wallet 0; a private key is never printed.
"""

from __future__ import annotations

import copy
import os
import posixpath
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from zerog_sim import goyaml as gy

# ------------------------------------------------------------------ upstream constants

#: ``const ModelUsagePath`` (relative to the container's working directory ``/``).
MODEL_USAGE_PATH = "./fine-tuning/execution/models"
#: Where the compose file mounts ``./models`` inside the broker container.
DEFAULT_MODELS_DIR = "/fine-tuning/execution/models"
#: Default config path of ``loadConfig`` (``CONFIG_FILE`` overrides it).
DEFAULT_CONFIG_PATH = "/etc/config/config.yaml"

#: ``constant.SCRIPT_MAP`` keys (predefined model root hashes) at v0.2.2.
PREDEFINED_MODEL_HASHES = frozenset(
    {
        "0x8645816c17a8a70ebf32bcc7e621c659e8d0150b1a6bfca27f48f83010c6d12e",
        "0x7f2244b25cd2219dfd9d14c052982ecce409356e0f08e839b79796e270d110a7",
        "0x2084fdd904c9a3317dde98147d4e7778a40e076b5b0eb469f7a8f27ae5b13e7f",
        "0xcb42b5ca9e998c82dd239ef2d20d22a4ae16b3dc0ce0a855c93b52c7c2bab6dc",
        "0x02ed6d3889bebad9e2cd4008066478654c0886b12ad25ea7cf7d31df3441182e",
    }
)

ETHEREUM_0G = "ethereum0g"
ETHEREUM_HARDHAT = "ethereumHardhat"

#: The key ``MockTappdClient.DeriveKey`` returns under ``NETWORK=hardhat``.
MOCK_TEE_KEY = "4c0883a69102937d6231471b5dbb6204fe512961708279b7e1a8d7d7a3c2b9e3"

LOGRUS_LEVELS = ("panic", "fatal", "error", "warning", "info", "debug", "trace")


# ------------------------------------------------------------------------ Go types


def _training_data_type(decode_into: Callable[[gy.GoType], Any]) -> str:
    """``(*TrainingDataType).UnmarshalYAML``: a string that must be ``text`` or ``image``."""
    model_type = decode_into(gy.go_string())
    if model_type not in ("text", "image"):
        raise gy.GoYAMLError(f"unknown model type: {model_type}")
    return model_type


def _anon(fields: list[tuple[str, str, str, gy.GoType]]) -> gy.GoType:
    """An anonymous struct (GoName, GoTypeName, yamlKey, type) as reflect names it."""
    name = gy.anonymous_struct_name([(n, t, k) for n, t, k, _typ in fields])
    return gy.go_struct(name, *(gy.Field(k, typ) for _name, _tag, k, typ in fields))


def _build_config_type() -> gy.GoType:
    """``config.Config`` of ``api/fine-tuning/config/config.go`` at v0.2.2."""
    s, i64, u64 = gy.go_string, gy.go_int("int64"), gy.go_uint("uint64")
    go_int, go_uint = gy.go_int("int"), gy.go_uint("uint")
    network = gy.go_struct(
        "config.NetworkConfig",
        gy.Field("url", s()),
        gy.Field("chainID", i64),
        gy.Field("privateKeys", gy.go_slice(s())),
        gy.Field("transactionLimit", u64),
        gy.Field("gasEstimationBuffer", u64),
        # PrivateKeyStore *PrivateKeyStore has no yaml tag: yaml.v2 lowercases the name.
        gy.Field("privatekeystore", gy.go_ptr(gy.go_struct("config.PrivateKeyStore"))),
    )
    customized_model = gy.go_struct(
        "config.CustomizedModel",
        gy.Field("name", s()),
        gy.Field("hash", s()),
        gy.Field("image", s()),
        gy.Field("dataType", gy.go_custom("config.TrainingDataType", _training_data_type, "text")),
        gy.Field("trainingScript", s()),
        gy.Field("description", s()),
        gy.Field("tokenizer", s()),
        gy.Field("usageFile", s()),
    )
    quota = _anon(
        [
            ("CpuCount", "int64", "cpuCount", i64),
            ("Memory", "int64", "memory", i64),
            ("Storage", "int64", "storage", i64),
            ("GpuType", "string", "gpuType", s()),
            ("GpuCount", "int64", "gpuCount", i64),
        ]
    )
    service = gy.go_struct(
        "config.Service",
        gy.Field("servingUrl", s()),
        gy.Field("quota", quota),
        gy.Field("pricePerToken", i64),
        gy.Field("customizedModels", gy.go_slice(customized_model)),
    )
    upload_args = gy.go_struct(
        "config.UploadArgs",
        gy.Field("tags", s()),
        gy.Field("expectedReplica", go_uint),
        gy.Field("skipTx", gy.go_bool()),
        gy.Field("finalityRequired", gy.go_bool()),
        gy.Field("taskSize", go_uint),
        gy.Field("routines", go_int),
        gy.Field("fragmentSize", i64),
    )
    storage_client = gy.go_struct(
        "config.StorageClientConfig",
        gy.Field("indexerStandard", s()),
        gy.Field("indexerTurbo", s()),
        gy.Field("uploadArgs", upload_args),
    )
    images = gy.go_struct(
        "config.Images",
        gy.Field("executionMockImageName", s()),
        gy.Field("executionImageName", s()),
        gy.Field("buildImage", gy.go_bool()),
        gy.Field("overrideImage", gy.go_bool()),
    )
    # openweb3/go-rpc-provider provider_wrapper.Option (untagged fields: lowercased names).
    provider_option = gy.go_struct(
        "providers.Option",
        gy.Field("retrycount", go_int),
        gy.Field("retryinterval", gy.go_duration()),
        gy.Field("requesttimeout", gy.go_duration()),
        gy.Field("maxconnectionperhost", go_int),
    )
    logger = gy.go_struct(
        "config.LoggerConfig",
        gy.Field("format", s("config.LogFormat")),
        gy.Field("level", s()),
        gy.Field("path", s()),
        gy.Field("rotationCount", go_uint),
    )
    fields = [
        gy.Field("contractAddress", s()),
        gy.Field("database", _anon([("FineTune", "string", "fineTune", s())])),
        gy.Field("networks", gy.go_map("config.Networks", gy.go_ptr(network))),
        gy.Field("images", images),
        gy.Field("storageClient", storage_client),
        gy.Field("servingUrl", s()),
        gy.Field("service", service),
        gy.Field("providerOption", provider_option),
        gy.Field("logger", logger),
        gy.Field("settlementCheckInterval", i64),
        gy.Field("balanceThresholdInEther", i64),
        gy.Field("gasPrice", s()),
        gy.Field("maxGasPrice", s()),
        gy.Field("trainingWorkerCount", go_int),
        gy.Field("setupWorkerCount", go_int),
        gy.Field("finalizerWorkerCount", go_int),
    ]
    fields += [
        gy.Field(key, go_uint)
        for key in (
            "maxSetupRetriesPerTask",
            "maxExecutorRetriesPerTask",
            "maxFinalizerRetriesPerTask",
            "maxSettlementRetriesPerTask",
            "settlementBatchSize",
            "deliveredTaskAckTimeoutSecs",
            "dataRetentionDays",
            "maxTaskQueueSize",
        )
    ]
    return gy.go_struct("config.Config", *fields)


CONFIG_TYPE = _build_config_type()


def default_config() -> dict[str, Any]:
    """The ``Config`` that ``GetConfig()`` fills before decoding the file (v0.2.2)."""
    cfg = gy.zero(CONFIG_TYPE)
    cfg["contractAddress"] = "0x4c871c46D901990987EBf39Cb8a16fC73390a4E5"
    cfg["database"]["fineTune"] = "root:123456@tcp(0g-fine-tune-broker-db:3306)/fineTune?parseTime=true"
    cfg["images"].update(
        executionMockImageName="mock-fine-tuning:latest",
        executionImageName="execution-test-pytorch:v1",
        buildImage=True,
        overrideImage=False,
    )
    cfg["logger"].update(format="text", level="info", path="", rotationCount=50)
    cfg.update(
        settlementCheckInterval=60,
        balanceThresholdInEther=1,
        gasPrice="",
        maxGasPrice="1000000000000",
        trainingWorkerCount=1,
        setupWorkerCount=1,
        finalizerWorkerCount=1,
        maxSetupRetriesPerTask=10,
        maxExecutorRetriesPerTask=1,
        maxFinalizerRetriesPerTask=10,
        maxSettlementRetriesPerTask=10,
        settlementBatchSize=1,
        deliveredTaskAckTimeoutSecs=60 * 60 * 6,
        dataRetentionDays=3,
        maxTaskQueueSize=5,
    )
    return cfg


# ----------------------------------------------------------------- how the process dies

GO_NIL_DEREF = "runtime error: invalid memory address or nil pointer dereference"


@dataclass(frozen=True)
class Crash:
    """How the real broker process ends.

    ``style`` is ``fatal`` (Go ``log.Fatalf``: timestamped line, exit 1), ``panic``
    (Go ``panic(v)``: exit 2), ``sigsegv`` (nil pointer dereference: exit 2) or
    ``logrus_fatal`` (``logrus.Fatal`` with fields: exit 1).
    """

    style: str
    message: str
    fields: tuple[tuple[str, str], ...] = ()
    frame: str = "main.main()"

    @property
    def exit_code(self) -> int:
        """The process exit status (Go exits 2 on an unrecovered panic, 1 on Fatal)."""
        return 2 if self.style in ("panic", "sigsegv") else 1

    @property
    def summary(self) -> str:
        """The broker's own message without timestamps or goroutine dump."""
        if self.style == "fatal":
            return self.message
        if self.style in ("panic", "sigsegv"):
            return "panic: " + self.message
        text = "level=fatal msg=" + logfmt_value(self.message)
        return text + "".join(f" {k}={logfmt_value(v)}" for k, v in self.fields)


def logfmt_value(text: str) -> str:
    """Quote a logrus ``TextFormatter`` value the way ``needsQuoting`` decides."""
    safe = all(c.isascii() and (c.isalnum() or c in "-._/@^+") for c in text)
    return text if safe else gy.go_quote(text)


class BrokerCrash(Exception):
    """Raised by the pipeline; carries the :class:`Crash`."""

    def __init__(self, crash: Crash) -> None:
        super().__init__(crash.summary)
        self.crash = crash


def _panic(message: str, frame: str) -> BrokerCrash:
    return BrokerCrash(Crash("panic", message, frame=frame))


# --------------------------------------------------------------- crypto (stdlib only)

_KECCAK_RC = (
    0x0000000000000001, 0x0000000000008082, 0x800000000000808A, 0x8000000080008000,
    0x000000000000808B, 0x0000000080000001, 0x8000000080008081, 0x8000000000008009,
    0x000000000000008A, 0x0000000000000088, 0x0000000080008009, 0x000000008000000A,
    0x000000008000808B, 0x800000000000008B, 0x8000000000008089, 0x8000000000008003,
    0x8000000000008002, 0x8000000000000080, 0x000000000000800A, 0x800000008000000A,
    0x8000000080008081, 0x8000000000008080, 0x0000000080000001, 0x8000000080008008,
)  # fmt: skip
_KECCAK_ROT = (
    (0, 36, 3, 41, 18), (1, 44, 10, 45, 2), (62, 6, 43, 15, 61), (28, 55, 25, 21, 56), (27, 20, 39, 8, 14),
)  # fmt: skip
_MASK64 = (1 << 64) - 1


def _rol(value: int, shift: int) -> int:
    return ((value << shift) | (value >> (64 - shift))) & _MASK64 if shift else value


def _keccak_f(state: list[list[int]]) -> None:
    for rc in _KECCAK_RC:
        c = [state[x][0] ^ state[x][1] ^ state[x][2] ^ state[x][3] ^ state[x][4] for x in range(5)]
        d = [c[(x - 1) % 5] ^ _rol(c[(x + 1) % 5], 1) for x in range(5)]
        for x in range(5):
            for y in range(5):
                state[x][y] ^= d[x]
        b = [[0] * 5 for _row in range(5)]
        for x in range(5):
            for y in range(5):
                b[y][(2 * x + 3 * y) % 5] = _rol(state[x][y], _KECCAK_ROT[x][y])
        for x in range(5):
            for y in range(5):
                state[x][y] = b[x][y] ^ (~b[(x + 1) % 5][y] & b[(x + 2) % 5][y])
        state[0][0] ^= rc


def keccak256(data: bytes) -> bytes:
    """Ethereum's Keccak-256 (original padding, not NIST SHA3-256)."""
    rate = 136
    padded = bytearray(data) + b"\x01" + b"\x00" * ((rate - (len(data) + 1) % rate) % rate)
    padded[-1] |= 0x80
    state = [[0] * 5 for _row in range(5)]
    for offset in range(0, len(padded), rate):
        block = padded[offset : offset + rate]
        for i in range(rate // 8):
            state[i % 5][i // 5] ^= int.from_bytes(block[8 * i : 8 * i + 8], "little")
        _keccak_f(state)
    out = b"".join(state[i % 5][i // 5].to_bytes(8, "little") for i in range(4))
    return out


SECP256K1_P = 2**256 - 2**32 - 977
SECP256K1_N = 0xFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFEBAAEDCE6AF48A03BBFD25E8CD0364141
_G = (
    0x79BE667EF9DCBBAC55A06295CE870B07029BFCDB2DCE28D959F2815B16F81798,
    0x483ADA7726A3C4655DA4FBFC0E1108A8FD17B448A68554199C47D08FFB10D4B8,
)


def _point_add(p: tuple[int, int] | None, q: tuple[int, int] | None) -> tuple[int, int] | None:
    if p is None:
        return q
    if q is None:
        return p
    if p[0] == q[0] and (p[1] + q[1]) % SECP256K1_P == 0:
        return None
    if p == q:  # noqa: SIM108 - doubling and addition read better apart
        lam = 3 * p[0] * p[0] * pow(2 * p[1], -1, SECP256K1_P)
    else:
        lam = (q[1] - p[1]) * pow(q[0] - p[0], -1, SECP256K1_P)
    x = (lam * lam - p[0] - q[0]) % SECP256K1_P
    return x, (lam * (p[0] - x) - p[1]) % SECP256K1_P


def _scalar_mult(k: int) -> tuple[int, int]:
    result: tuple[int, int] | None = None
    addend: tuple[int, int] | None = _G
    while k:
        if k & 1:
            result = _point_add(result, addend)
        addend = _point_add(addend, addend)
        k >>= 1
    assert result is not None
    return result


def checksum_address(raw: bytes) -> str:
    """EIP-55 mixed-case hex of a 20-byte address (go-ethereum ``Address.Hex()``)."""
    hexaddr = raw.hex()
    digest = keccak256(hexaddr.encode()).hex()
    return "0x" + "".join(c.upper() if int(digest[i], 16) >= 8 else c for i, c in enumerate(hexaddr))


def private_key_to_address(secret: int) -> str:
    """``crypto.PubkeyToAddress`` of the key with scalar ``secret``."""
    x, y = _scalar_mult(secret)
    return checksum_address(keccak256(x.to_bytes(32, "big") + y.to_bytes(32, "big"))[12:])


_GO_SPACE = set("\t\n\v\f\r \x85\xa0\u1680\u2028\u2029\u202f\u205f\u3000") | {chr(c) for c in range(0x2000, 0x200B)}


def go_trim_space(text: str) -> str:
    """Go's ``strings.TrimSpace`` (Unicode White_Space)."""
    start, end = 0, len(text)
    while start < end and text[start] in _GO_SPACE:
        start += 1
    while end > start and text[end - 1] in _GO_SPACE:
        end -= 1
    return text[start:end]


_HEX_VALUES = {c: int(c, 16) for c in "0123456789abcdefABCDEF"}


def hex_to_ecdsa(hexkey: str) -> int:
    """go-ethereum v1.14 ``crypto.HexToECDSA``: the secret scalar, or ``ValueError(text)``."""
    raw = hexkey.encode("utf-8", "surrogateescape")
    for i in range(1, len(raw), 2):
        for byte in (raw[i - 1], raw[i]):
            if chr(byte) not in _HEX_VALUES:
                raise ValueError(f"invalid hex character {gy.go_quote_rune(byte)} in private key")
    if len(raw) % 2 == 1:
        if chr(raw[-1]) not in _HEX_VALUES:
            raise ValueError(f"invalid hex character {gy.go_quote_rune(raw[-1])} in private key")
        raise ValueError("invalid hex data for private key")
    if len(raw) // 2 * 8 != 256:
        raise ValueError("invalid length, need 256 bits")
    secret = int(raw.decode(), 16)
    if secret >= SECP256K1_N:
        raise ValueError("invalid private key, >=N")
    if secret <= 0:
        raise ValueError("invalid private key, zero or negative")
    return secret


def go_hex_decode_prefix(text: str) -> bytes:
    """``hex.DecodeString`` result bytes even on error (decoded before the bad pair)."""
    raw = text.encode("utf-8", "surrogateescape")
    out = bytearray()
    for i in range(1, len(raw), 2):
        a, b = chr(raw[i - 1]), chr(raw[i])
        if a not in _HEX_VALUES or b not in _HEX_VALUES:
            break
        out.append(_HEX_VALUES[a] * 16 + _HEX_VALUES[b])
    return bytes(out)


def hex_to_hash(text: str) -> bytes:
    """go-ethereum ``common.HexToHash``: ``FromHex`` then keep/left-pad to 32 bytes."""
    if text[:2] in ("0x", "0X"):
        text = text[2:]
    if len(text.encode("utf-8", "surrogateescape")) % 2 == 1:
        text = "0" + text
    data = go_hex_decode_prefix(text)[-32:]
    return b"\x00" * (32 - len(data)) + data


# ------------------------------------------------------------------- startup pipeline


@dataclass
class Wallet:
    """A parsed wallet: its checksummed address (the key itself is never kept)."""

    address: str


@dataclass
class StartupPlan:
    """Everything the config-driven start-up checks established."""

    config: dict[str, Any]
    config_found: bool
    models: list[dict[str, str]] = field(default_factory=list)
    storage_wallet: Wallet | None = None
    contract_network: str = ETHEREUM_0G
    contract_wallet: Wallet | None = None
    log_level: str = "info"
    formatter_ok: bool = True


def go_read_file(path: str, display: str | None = None) -> bytes | None:
    """``os.ReadFile`` as ``loadConfig`` uses it: ``None`` when the file does not exist.

    Other failures raise :class:`BrokerCrash` with Go's ``*PathError`` text (a bind
    mount of a missing host file shows up as a directory: ``read ...: is a directory``).
    ``display`` is the path those messages name (default ``path``): the path the broker
    process itself opens, e.g. ``/etc/config.yaml`` inside its container when ``path`` is
    the host file behind that bind mount.
    """
    name = path if display is None else display
    try:
        is_dir = stat.S_ISDIR(os.stat(path).st_mode)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _fatal_load(f"open {name}: {_errno_text(exc)}") from None
    if is_dir:
        raise _fatal_load(f"read {name}: is a directory")
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise _fatal_load(f"open {name}: {_errno_text(exc)}") from None


def _errno_text(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _fatal_load(err: str) -> BrokerCrash:
    return BrokerCrash(Crash("fatal", f"Error loading configuration: {err}"))


def decode_config(data: bytes | None) -> dict[str, Any]:
    """``loadConfig`` + strict decode over the defaults; fatal on a YAML error."""
    cfg = default_config()
    if data is None:
        return cfg
    try:
        return gy.unmarshal_strict(data, CONFIG_TYPE, cfg)
    except gy.GoYAMLError as exc:
        raise _fatal_load(str(exc)) from None


def go_join(*parts: str) -> str:
    """Go's ``filepath.Join`` (lexical clean, absolute parts are not special)."""
    joined = "/".join(p for p in parts if p)
    return posixpath.normpath(joined) if joined else ""


def validate_customized_models(cfg: dict[str, Any], models_dir: str) -> list[dict[str, str]]:
    """``validateCustomizedModels``: panics exactly as upstream; returns the models."""
    frame = "github.com/0glabs/0g-serving-broker/fine-tuning/config.validateCustomizedModels()"
    hashes: set[str] = set()
    names: set[str] = set()
    models = []
    for model in cfg["service"]["customizedModels"] or []:
        digest = model["hash"].lower()
        if not digest.startswith("0x"):
            if len(digest.encode("utf-8", "surrogateescape")) % 2 == 1:
                raise _panic("invalid hash length", frame)
            digest = "0x" + digest
        if digest in PREDEFINED_MODEL_HASHES:
            raise _panic("duplicate customized model hash with predefined models", frame)
        if digest in hashes:
            raise _panic("duplicate customized model hash", frame)
        hashes.add(digest)
        if model["name"].lower() in names:
            raise _panic("duplicate customized model name", frame)
        names.add(model["name"].lower())
        usage = model["usageFile"] or f"{model['name']}.zip"
        path = os.path.abspath(go_join(models_dir, usage))
        if not os.path.exists(path) or os.path.isdir(path):
            raise _panic(f"Model {model['name']} detail usage file not found", frame)
        models.append({**model, "usageFile": path})
    return models


def _check_networks(cfg: dict[str, Any]) -> None:
    """The ``range instance.Networks`` loop: a ``null`` network is a nil pointer."""
    for network in (cfg["networks"] or {}).values():
        if network is None:
            raise BrokerCrash(
                Crash(
                    "sigsegv",
                    GO_NIL_DEREF,
                    frame="github.com/0glabs/0g-serving-broker/fine-tuning/config.GetConfig.func1()",
                )
            )


def _check_logger(cfg: dict[str, Any], plan: StartupPlan) -> None:
    level = cfg["logger"]["level"].lower()
    level = "warning" if level == "warn" else level
    if level not in LOGRUS_LEVELS:
        raise _panic(f"not a valid logrus Level: {gy.go_quote(cfg['logger']['level'])}", "main.main()")
    plan.log_level = level
    plan.formatter_ok = cfg["logger"]["format"] in ("text", "json")


def _network(cfg: dict[str, Any], name: str, frame: str) -> dict[str, Any]:
    networks = cfg["networks"] or {}
    if name not in networks:
        raise _panic(f"no supported network of name {name} was found. Ensure that the config for it exists.", frame)
    return networks[name]


def _wallets(network: dict[str, Any], frame: str) -> list[Wallet]:
    """``newEthereumWallets``: every key must parse; ``nil`` keys is an error."""
    keys = network["privateKeys"]
    if keys is None:
        raise _panic("no keys found, ensure your configuration is properly set", frame)
    wallets = []
    for key in keys:
        try:
            secret = hex_to_ecdsa(go_trim_space(key))
        except ValueError as exc:
            raise _panic(f"invalid private key: {exc}", frame) from None
        wallets.append(Wallet(private_key_to_address(secret)))
    return wallets


def _url_scheme(rawurl: str) -> str | None:
    """The scheme Go's ``url.Parse`` finds, lower-cased; ``None`` if it has none."""
    for i, ch in enumerate(rawurl):
        if ch.isascii() and ch.isalpha():
            continue
        if i > 0 and (ch.isdigit() or ch in "+-."):
            continue
        if ch == ":" and i > 0:
            return rawurl[:i].lower()
        return None
    return None


def rpc_dial_error(rawurl: str) -> str | None:
    """Why go-ethereum-style ``rpc.DialContext`` fails for ``rawurl`` before any I/O.

    http(s) dial lazily; ws(s) would connect (assumed reachable inside the CVM); an URL
    without a scheme is an IPC socket path.
    """
    if rawurl.startswith(":"):
        return f"parse {gy.go_quote(rawurl)}: missing protocol scheme"
    scheme = _url_scheme(rawurl)
    if scheme in ("http", "https", "ws", "wss", "stdio"):
        return None
    if scheme is None:
        if rawurl == "":
            return "dial unix: missing address"
        try:
            if stat.S_ISSOCK(os.stat(rawurl).st_mode):
                return None
        except OSError:
            return f"dial unix {rawurl}: connect: no such file or directory"
        return f"dial unix {rawurl}: connect: connection refused"
    return f"no known transport for URL scheme {gy.go_quote(scheme)}"


def _go_parse_uint_error(text: str) -> str | None:
    if gy.go_parse_int(text, 10, unsigned=True) is not None:
        return None
    digits = text != "" and all(c in "0123456789" for c in text)
    reason = "value out of range" if digits else "invalid syntax"
    return f"strconv.ParseUint: parsing {gy.go_quote(text)}: {reason}"


LogFunc = Callable[[str, str, dict[str, str]], None]


def _check_storage_client(cfg: dict[str, Any], plan: StartupPlan, log: LogFunc | None) -> None:
    """``storage.New``: wallet 0 of ``ethereum0g``, RPC transport, gas price, indexers."""
    frame = "github.com/0glabs/0g-serving-broker/fine-tuning/internal/storage.New(...)"
    network = _network(cfg, ETHEREUM_0G, frame)
    wallets = _wallets(network, frame)
    if not wallets:
        raise _panic("invalid index in list of wallets", frame)
    plan.storage_wallet = wallets[0]
    if log is not None:
        log("info", "Wallet and URL", {"url": network["url"], "wallet": wallets[0].address})
    dial = rpc_dial_error(network["url"])
    if dial is not None:
        raise BrokerCrash(
            Crash("logrus_fatal", "Failed to connect to fullnode", fields=(("error", dial), ("url", network["url"])))
        )
    if cfg["gasPrice"] != "":
        bad = _go_parse_uint_error(cfg["gasPrice"])
        if bad is not None:
            raise _panic(f"invalid gas price: {bad}", "main.main()")
    for url in (cfg["storageClient"]["indexerStandard"], cfg["storageClient"]["indexerTurbo"]):
        dial = rpc_dial_error(url)
        if dial is not None:
            raise _panic(dial, "main.main()")


def _check_contract(cfg: dict[str, Any], plan: StartupPlan, network_env: str) -> None:
    """``NewProviderContract``: the network chosen by ``NETWORK``, its RPC URL and keys."""
    name = ETHEREUM_HARDHAT if network_env == "hardhat" else ETHEREUM_0G
    plan.contract_network = name
    network = _network(cfg, name, "main.main()")
    dial = rpc_dial_error(network["url"])
    if dial is not None:
        raise _panic(dial, "main.main()")
    wallets = _wallets(network, "main.main()")
    if not wallets:
        raise BrokerCrash(Crash("panic", "runtime error: index out of range [0] with length 0", frame="main.main()"))
    plan.contract_wallet = wallets[0]


def load_and_check(
    data: bytes | None,
    models_dir: str,
    network_env: str = "",
    *,
    on_logger: Callable[[StartupPlan], None] | None = None,
    log: LogFunc | None = None,
) -> StartupPlan:
    """Run every config-driven start-up check in upstream order.

    ``data`` is the config file's bytes (``None``: no file).  ``on_logger`` is called
    once the logger exists (the image build starts there); ``log(level, msg, fields)``
    receives the entries upstream logs in between (``Wallet and URL``).  Raises
    :class:`BrokerCrash` at the first check that kills the real broker.
    """
    cfg = decode_config(data)
    plan = StartupPlan(config=cfg, config_found=data is not None)
    _check_networks(cfg)
    plan.models = validate_customized_models(cfg, models_dir)
    _check_logger(cfg, plan)
    if on_logger is not None:
        on_logger(plan)
    _check_storage_client(cfg, plan, log)
    _check_contract(cfg, plan, network_env)
    return plan


def _first_log_crash(plan: StartupPlan) -> None:
    """A bad ``logger.format`` leaves a nil formatter: the first entry logged crashes.

    The first entry at ``info`` or more verbose is ``Wallet and URL`` (or the image build
    debug lines), so only ``warning`` and quieter levels survive start-up.
    """
    if not plan.formatter_ok and plan.log_level in ("info", "debug", "trace"):
        raise BrokerCrash(Crash("sigsegv", GO_NIL_DEREF, frame="github.com/sirupsen/logrus.(*Entry).write(...)"))


def redacted(cfg: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``cfg`` with every private key replaced by ``"<redacted>"``."""
    out = copy.deepcopy(cfg)
    for network in (out.get("networks") or {}).values():
        if network and network.get("privateKeys") is not None:
            network["privateKeys"] = ["<redacted>"] * len(network["privateKeys"])
    return out


def validate_config_text(
    text: str | bytes | None, models_dir: str, *, network: str = ""
) -> tuple[bool, str | None, dict[str, Any] | None]:
    """Would the v0.2.2 broker start with this ``config.yaml`` text?

    ``text`` ``None`` means "no config file".  ``models_dir`` stands for the
    container's ``/fine-tuning/execution/models`` (the host's ``./models``).
    ``network`` is the ``NETWORK`` environment variable.  TEE, database, docker and the
    chain are not consulted.

    Returns ``(ok, error_message, parsed)``: ``error_message`` is the broker's own text
    (``Error loading configuration: ...`` or ``panic: ...``); ``parsed`` is the
    effective configuration (defaults merged, private keys redacted) or ``None`` when the
    YAML itself was rejected.
    """
    data = text.encode("utf-8", "surrogateescape") if isinstance(text, str) else text
    try:
        cfg = decode_config(data)
    except BrokerCrash as exc:
        return False, exc.crash.summary, None
    try:
        load_and_check(data, models_dir, network, on_logger=_first_log_crash)
    except BrokerCrash as exc:
        return False, exc.crash.summary, redacted(cfg)
    return True, None, redacted(cfg)
