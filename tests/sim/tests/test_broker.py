"""The stand-in 0G fine-tuning broker: config rules, Go YAML semantics, HTTP and process life.

Expected values are written by hand from the upstream Go code (see broker_cases.yml and
/work/shared/reference/finetune-broker.md), never computed by the code under test.
"""

from __future__ import annotations

import http.client
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

SIM_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SIM_DIR))
from zerog_sim import broker_config as bc  # noqa: E402
from zerog_sim import broker_http as bh  # noqa: E402
from zerog_sim import goyaml as gy  # noqa: E402
from zerog_sim.broker import validate_config_text  # noqa: E402

TABLE = yaml.safe_load(Path(__file__).with_name("broker_cases.yml").read_text(encoding="utf-8"))
KEY_ONES = "1" * 64
ADDRESS_ONES = "0x19E7E376E7C213B7E7e7e46cc70A5dD086DAff2A"  # address of private key 0x11..11


def _replace_once(text: str, pairs: list[list[str]]) -> str:
    for old, new in pairs:
        assert text.count(old) == 1, f"{old!r} must occur once"
        text = text.replace(old, new)
    return text


def build_text(case: dict[str, Any]) -> str | None:
    """The config text of a table case (None: no config file)."""
    if not case.get("base"):
        return case["config"]
    text = TABLE["base"]
    if case.get("with_model_block"):
        block = _replace_once(TABLE["model_block"], case.get("replace_in_model", []))
        block += case.get("append_to_model", "")
        text = _replace_once(text, [["    gpuCount: 1\n", "    gpuCount: 1\n" + block]])
    text = _replace_once(text, case.get("replace", []))
    return text + case.get("append", "")


def make_models(models_dir: Path, names: list[str]) -> None:
    """Create usage files (names ending in / are directories)."""
    models_dir.mkdir(parents=True, exist_ok=True)
    for name in names:
        target = models_dir / name
        if name.endswith("/"):
            target.mkdir(parents=True)
        else:
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"PK\x05\x06" + bytes(18))


def dig(value: Any, dotted: str) -> Any:
    for part in dotted.split("."):
        value = value[int(part)] if isinstance(value, list) else value[part]
    return value


# ---------------------------------------------------------------------- config table


def test_table_is_large_enough() -> None:
    assert len(TABLE["cases"]) >= 30
    assert len({c["id"] for c in TABLE["cases"]}) == len(TABLE["cases"])


@pytest.mark.parametrize("case", TABLE["cases"], ids=[c["id"] for c in TABLE["cases"]])
def test_config_table(case: dict[str, Any], tmp_path: Path) -> None:
    models_dir = tmp_path / "models"
    make_models(models_dir, case.get("models", []))
    ok, message, parsed = validate_config_text(build_text(case), str(models_dir), network=case.get("network", ""))
    if case["expect"] == "ok":
        assert (ok, message) == (True, None)
    else:
        assert (ok, message) == (False, case["expect"])
    for dotted, expected in (case.get("parsed") or {}).items():
        assert parsed is not None
        assert dig(parsed, dotted) == expected, dotted


def test_yaml_rejection_returns_no_parsed_config(tmp_path: Path) -> None:
    ok, message, parsed = validate_config_text("fooBar: 1\n", str(tmp_path))
    assert (ok, parsed) == (False, None)
    assert (
        message == "Error loading configuration: yaml: unmarshal errors:\n  line 1: field fooBar not found in type config.Config"
    )


def test_private_key_never_in_parsed(tmp_path: Path) -> None:
    ok, _error, parsed = validate_config_text(TABLE["base"], str(tmp_path))
    assert ok
    assert KEY_ONES not in repr(parsed)


# ------------------------------------------------------- Go YAML rules, not PyYAML's

ONE_FIELD = {
    "int64": gy.go_struct("t", gy.Field("v", gy.go_int("int64"))),
    "uint": gy.go_struct("t", gy.Field("v", gy.go_uint("uint"))),
    "bool": gy.go_struct("t", gy.Field("v", gy.go_bool())),
    "string": gy.go_struct("t", gy.Field("v", gy.go_string())),
}


@pytest.mark.parametrize(
    ("gotype", "text", "expected", "pyyaml"),
    [
        ("bool", "y", True, "y"),  # YAML 1.1 short forms: Go true, PyYAML a string
        ("bool", "N", False, "N"),
        ("bool", "on", True, True),
        ("bool", "Off", False, False),
        ("int64", "0o17", 15, "0o17"),  # Go ParseInt base 0 knows 0o
        ("int64", "010", 8, 8),
        ("int64", "08", 8, "08"),  # not octal: Go falls back to the float rules
        ("int64", "0x_1F", 31, 31),
        ("int64", "1:30", None, 90),  # sexagesimal: PyYAML int, Go a string
        ("int64", "3.99", 3, 3.99),  # floats are truncated into ints
        ("int64", "-.inf", -(2**63), float("-inf")),  # amd64 conversion of -Inf
        ("uint", "1e3", 1000, "1e3"),
        ("string", "0x1F", "0x1F", 31),  # strings keep the source text
        ("string", "~", "", None),
        ("string", "2001-12-14", "2001-12-14", "2001-12-14"),
    ],
)
def test_go_scalar_rules(gotype: str, text: str, expected: Any, pyyaml: Any) -> None:
    data = f"v: {text}\n"
    assert yaml.safe_load(data)["v"] == pyyaml or str(yaml.safe_load(data)["v"]) == str(pyyaml)
    t = ONE_FIELD[gotype]
    if expected is None:
        with pytest.raises(gy.GoYAMLError) as err:
            gy.unmarshal_strict(data, t, gy.zero(t))
        assert str(err.value) == f"yaml: unmarshal errors:\n  line 1: cannot unmarshal !!str `{text}` into int64"
    else:
        assert gy.unmarshal_strict(data, t, gy.zero(t)) == {"v": expected}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("<<: [{v: [a]}, 5]\n", "yaml: map merge requires map or sequence of maps as the value"),
        ("v: *nope\n", "yaml: unknown anchor 'nope' referenced"),
        ("<<: 5\n", "yaml: map merge requires map or sequence of maps as the value"),
        ("v: !!binary 'not base64!'\n", "yaml: !!binary value contains invalid base64 data"),
        ("v: !!float abc\n", "yaml: cannot decode !!str `abc` as a !!float"),
    ],
)
def test_go_fatal_yaml_errors(text: str, message: str) -> None:
    t = gy.go_struct("t", gy.Field("v", gy.go_slice(gy.go_string())))
    with pytest.raises(gy.GoYAMLError) as err:
        gy.unmarshal_strict(text, t, gy.zero(t))
    assert str(err.value) == message


def test_merge_keys_and_aliases_follow_go() -> None:
    t = gy.go_struct("config.T", gy.Field("a", gy.go_int("int")), gy.Field("b", gy.go_string()))
    text = "base: &b {a: 1, b: x}\n"
    with pytest.raises(gy.GoYAMLError) as err:
        gy.unmarshal_strict(text, t, gy.zero(t))
    assert str(err.value) == "yaml: unmarshal errors:\n  line 1: field base not found in type config.T"
    m = gy.go_map("map[string]config.T", t)
    assert gy.unmarshal_strict("x: &b {a: 1, b: q}\ny:\n  <<: *b\n  a: 2\n", m, None) == {
        "x": {"a": 1, "b": "q"},
        "y": {"a": 2, "b": "q"},
    }


# ---------------------------------------------------------------- keys and addresses


@pytest.mark.parametrize(
    ("secret", "address"),
    [
        (1, "0x7E5F4552091A69125d5DfCb7b8C2659029395Bdf"),
        (int(KEY_ONES, 16), ADDRESS_ONES),
    ],
)
def test_wallet_address_is_the_real_ethereum_address(secret: int, address: str) -> None:
    assert bc.private_key_to_address(secret) == address


def test_keccak256_is_ethereum_keccak() -> None:
    assert bc.keccak256(b"").hex() == "c5d2460186f7233c927e7db2dcc703c0e500b653ca82273b7bfad8045d85a470"


@pytest.mark.parametrize(
    ("name", "treated_as_hash"),
    [
        ("deepseek-r1-distill-qwen-1.5b", "0dee"),  # odd length: "0d","ee", then "ps" stops
        ("distilbert-base-uncased", "0d"),
        ("ab", "ab"),
        ("mobilenet_v2", ""),  # "mo" is not hex: looked up by name
        ("qwen2.5", ""),
    ],
)
def test_name_lookup_quirk(name: str, treated_as_hash: str) -> None:
    expected = bytes.fromhex(treated_as_hash).rjust(32, b"\x00")
    assert bc.hex_to_hash(name) == expected


# ----------------------------------------------------------------------- HTTP helpers


def test_go_json_escapes_like_encoding_json() -> None:
    assert bh.go_json([{"a": '<x> & "y"\n\u2028\b'}]) == '[{"a":"\\u003cx\\u003e \\u0026 \\"y\\"\\n\\u2028\\b"}]'
    assert bh.go_json([]) == "[]"


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v1/model/desc/x", ("GetModelDesc", {"name": "x"})),
        ("GET", "/v1/model/desc", ("GetModel", {"name": "desc"})),
        ("GET", "/v1/model/", None),
        ("GET", "/v1/health", None),
        ("POST", "/v1/model", None),
        ("POST", "/v1/user/0xabc/task/t1/cancel", ("CancelTask", {"userAddress": "0xabc", "taskID": "t1"})),
    ],
)
def test_gin_route_matching(method: str, path: str, expected: Any) -> None:
    assert bh.match_route(method, path) == expected


# ------------------------------------------------------------------- running broker

MODELS_CONFIG = TABLE["base"].replace(
    "    gpuCount: 1\n",
    "    gpuCount: 1\n"
    "  customizedModels:\n"
    '    - name: "mobilenet_v2"\n'
    '      hash: "0x1d98b2088bd094f879315ac29edd471638204cd45e7c8d066ee88fbc7c174ce7"\n'
    '      image: "mobilenetV2:latest"\n'
    '      dataType: "image"\n'
    '      trainingScript: "/app/finetune.py"\n'
    '      description: "MobileNet <V2> & co"\n'
    '      tokenizer: "0x919d382d5192a7d22006ff5063f1b9064a5b6dd23e03998937f03024f1e2cd36"\n'
    '    - name: "deepseek-r1-distill-qwen-1.5b"\n'
    '      hash: "2222222222222222222222222222222222222222222222222222222222222222"\n'
    '      image: "deepseek:latest"\n',
)

MODEL_LIST_JSON = (
    '[{"name":"mobilenet_v2","hash":"0x1d98b2088bd094f879315ac29edd471638204cd45e7c8d066ee88fbc7c174ce7",'
    '"image":"mobilenetV2:latest","dataType":"image","trainingScript":"/app/finetune.py",'
    '"description":"MobileNet \\u003cV2\\u003e \\u0026 co",'
    '"tokenizer":"0x919d382d5192a7d22006ff5063f1b9064a5b6dd23e03998937f03024f1e2cd36"},'
    '{"name":"deepseek-r1-distill-qwen-1.5b","hash":"2222222222222222222222222222222222222222222222222222222222222222",'
    '"image":"deepseek:latest","dataType":"text","trainingScript":"","description":"","tokenizer":""}]'
)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def port_open(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


class Broker:
    """One broker subprocess with its files under ``root``."""

    def __init__(self, root: Path, config: str | None, *, startup: float, env: dict[str, str] | None = None) -> None:
        self.root = root
        self.port = free_port()
        self.models = root / "models"
        self.tee = root / "tappd.sock"
        make_models(self.models, ["mobilenet_v2.zip", "deepseek-r1-distill-qwen-1.5b.zip"])
        self.tee.write_text("")
        self.config = root / "config.yaml"
        if config is not None:
            self.config.write_text(config, encoding="utf-8")
        self.env = {**os.environ, "PYTHONPATH": str(SIM_DIR), "ZEROG_SIM_BROKER_STARTUP_SECONDS": str(startup)}
        self.env.pop("NETWORK", None)
        self.env.update(env or {})
        self.proc: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.extra: list[str] = []

    def argv(self) -> list[str]:
        return [
            sys.executable, "-B", "-m", "zerog_sim.broker", "--config", str(self.config), "--port", str(self.port),
            "--bind", "127.0.0.1", "--models-dir", str(self.models), "--tee-socket", str(self.tee), *self.extra,
        ]  # fmt: skip

    def start(self) -> Broker:
        with (self.root / "stdout").open("wb") as out, (self.root / "stderr").open("wb") as err:
            self.started = time.monotonic()
            self.proc = subprocess.Popen(self.argv(), stdout=out, stderr=err, env=self.env)
        return self

    def wait_open(self, timeout: float = 10.0) -> float:
        assert self.proc is not None
        while time.monotonic() - self.started < timeout:
            if port_open(self.port):
                return time.monotonic() - self.started
            assert self.proc.poll() is None, self.stderr()
            time.sleep(0.02)
        raise AssertionError("broker port never opened")

    def finish(self, timeout: float = 10.0) -> int:
        assert self.proc is not None
        return self.proc.wait(timeout=timeout)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stderr(self) -> str:
        return (self.root / "stderr").read_text(encoding="utf-8")

    def stdout(self) -> str:
        return (self.root / "stdout").read_text(encoding="utf-8")

    def request(self, method: str, path: str) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=5)
        try:
            conn.request(method, path)
            resp = conn.getresponse()
            return resp.status, dict(resp.getheaders()), resp.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Broker]:
    broker = Broker(tmp_path_factory.mktemp("served"), MODELS_CONFIG, startup=0.3).start()
    try:
        broker.wait_open()
        yield broker
    finally:
        broker.stop()


@pytest.mark.parametrize(
    ("method", "path", "status", "ctype", "body"),
    [
        ("GET", "/v1/task/pending", 200, "text/plain; charset=utf-8", b"0"),
        ("GET", "/v1/model", 200, "application/json; charset=utf-8", MODEL_LIST_JSON.encode()),
        ("GET", "/health", 404, "text/plain", b"404 page not found"),
        ("GET", "/v1/health", 404, "text/plain", b"404 page not found"),
        ("POST", "/v1/model", 404, "text/plain", b"404 page not found"),
        ("HEAD", "/v1/task/pending", 404, "text/plain", b""),
        (
            "GET",
            "/v1/model/deepseek-r1-distill-qwen-1.5b",
            400,
            "application/json; charset=utf-8",
            b'{"error":"Provider: get customized model: Model deepseek-r1-distill-qwen-1.5b not found"}',
        ),
        (
            "GET",
            "/v1/model/0x2222222222222222222222222222222222222222222222222222222222222222",
            200,
            "application/json; charset=utf-8",
            b'{"name":"deepseek-r1-distill-qwen-1.5b","hash":"2222222222222222222222222222222222222222222222222222222222222222",'
            b'"image":"deepseek:latest","dataType":"text","trainingScript":"","description":"","tokenizer":""}',
        ),
        (
            "GET",
            "/v1/model/desc/nope",
            400,
            "application/json; charset=utf-8",
            b'{"error":"Provider: get model description file: Model nope not found"}',
        ),
        ("GET", "/v1/model/desc/mobilenet_v2", 200, "application/zip", b"PK\x05\x06" + bytes(18)),
        ("GET", "/v1/task/pending/", 301, "text/html; charset=utf-8", b'<a href="/v1/task/pending">Moved Permanently</a>.\n\n'),
    ],
)
def test_http_routes(served: Broker, method: str, path: str, status: int, ctype: str, body: bytes) -> None:
    got_status, headers, got_body = served.request(method, path)
    assert (got_status, headers.get("Content-Type"), got_body) == (status, ctype, body)
    assert "Server" not in headers


def test_model_desc_is_an_attachment(served: Broker) -> None:
    _status, headers, _body = served.request("GET", "/v1/model/desc/mobilenet_v2")
    assert headers["Content-Disposition"] == 'attachment; filename="mobilenet_v2.zip"'


def test_quote_comes_from_the_tee(served: Broker) -> None:
    status, headers, body = served.request("GET", "/v1/quote")
    assert (status, headers["Content-Type"]) == (200, "text/plain; charset=utf-8")
    assert re.fullmatch(rb"0x[0-9a-f]{2048}", body)


def test_served_logs(served: Broker) -> None:
    lines = served.stderr().splitlines()
    assert re.fullmatch(
        rf'time="[^"]+" level=info msg="Wallet and URL" url="https://evmrpc-testnet.0g.ai" wallet={ADDRESS_ONES}',
        lines[0],
    )
    assert re.fullmatch(r'time="[^"]+" level=info msg="syncing TEE quote"', lines[1])
    assert KEY_ONES not in served.stderr() + served.stdout()
    assert f"[GIN-debug] Listening and serving HTTP on :{served.port}\n" in served.stdout()


def test_port_closed_during_startup_then_sigterm(tmp_path: Path) -> None:
    broker = Broker(tmp_path, TABLE["base"], startup=0.8).start()
    try:
        deadline = time.monotonic() + 0.5
        while time.monotonic() < deadline:
            assert not port_open(broker.port)
            time.sleep(0.05)
        assert broker.wait_open() >= 0.8
        assert broker.request("GET", "/v1/model")[2] == b"[]"
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGTERM)
        assert broker.finish() == 0
    finally:
        broker.stop()
    lines = broker.stderr().splitlines()
    assert re.fullmatch(r'time="[^"]+" level=info msg="starting http server..."', lines[-2])
    assert re.fullmatch(r'time="[^"]+" level=info msg="shutting down server..."', lines[-1])
    assert not port_open(broker.port)


def test_sigterm_before_listening_kills_without_handler(tmp_path: Path) -> None:
    broker = Broker(tmp_path, TABLE["base"], startup=30).start()
    try:
        time.sleep(0.5)
        assert broker.proc is not None
        broker.proc.send_signal(signal.SIGTERM)
        assert broker.finish() == -signal.SIGTERM
    finally:
        broker.stop()
    assert "shutting down server..." not in broker.stderr()


def test_hardhat_uses_mock_tee_without_socket(tmp_path: Path) -> None:
    config = TABLE["base"].replace(
        "service:\n",
        '  ethereumHardhat:\n    url: "http://127.0.0.1:8545"\n    privateKeys: ["' + KEY_ONES + '"]\nservice:\n',
    )
    broker = Broker(tmp_path, config, startup=0.1, env={"NETWORK": "hardhat"})
    broker.tee.unlink()
    broker.start()
    try:
        broker.wait_open()
        assert broker.request("GET", "/v1/quote")[2] == b"mock"
    finally:
        broker.stop()


def test_missing_tee_socket_panics(tmp_path: Path) -> None:
    broker = Broker(tmp_path, TABLE["base"], startup=0.1)
    broker.tee.unlink()
    assert broker.start().finish() == 2
    assert not port_open(broker.port)
    tail = broker.stderr().split("\n", 2)[2]
    assert tail.startswith(
        "panic: deriving key: failed to derive key from Tappd client: "
        f'Post "http://localhost/prpc/Tappd.DeriveKey": dial unix {broker.tee}: connect: no such file or directory\n'
        "\ngoroutine 1 [running]:\n"
    )


def test_missing_config_file_is_silent_then_panics(tmp_path: Path) -> None:
    broker = Broker(tmp_path, None, startup=0.1)
    assert broker.start().finish() == 2
    assert broker.stderr().startswith(
        "panic: no supported network of name ethereum0g was found. Ensure that the config for it exists.\n"
    )


def test_yaml_error_is_log_fatalf(tmp_path: Path) -> None:
    broker = Broker(tmp_path, TABLE["base"] + "fooBar: 1\n", startup=0.1)
    assert broker.start().finish() == 1
    assert re.fullmatch(
        r"\d{4}/\d\d/\d\d \d\d:\d\d:\d\d Error loading configuration: yaml: unmarshal errors:\n"
        r"  line 29: field fooBar not found in type config\.Config\n",
        broker.stderr(),
    )


@pytest.mark.parametrize("display", [None, "/etc/config.yaml"])
def test_config_path_is_a_directory(display: str | None, tmp_path: Path) -> None:
    """Go's ``read PATH: is a directory``; ``--config-display`` names the in-container path instead."""
    broker = Broker(tmp_path, None, startup=0.1)
    broker.config.mkdir()
    if display is not None:
        broker.extra = ["--config-display", display]
    assert broker.start().finish() == 1
    shown = str(broker.config) if display is None else display
    assert re.fullmatch(
        rf"\d{{4}}/\d\d/\d\d \d\d:\d\d:\d\d Error loading configuration: read {re.escape(shown)}: "
        r"is a directory\n",
        broker.stderr(),
    )


def test_config_display_does_not_change_what_is_read(tmp_path: Path) -> None:
    """The file read is still ``--config``: a readable config starts the broker as without the option."""
    broker = Broker(tmp_path, TABLE["base"], startup=0.1)
    broker.extra = ["--config-display", "/etc/config.yaml"]
    broker.start()
    try:
        broker.wait_open()
    finally:
        broker.stop()


def test_port_in_use_logs_and_exits_zero(tmp_path: Path) -> None:
    broker = Broker(tmp_path, TABLE["base"], startup=0.1)
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", broker.port))
        blocker.listen()
        assert broker.start().finish() == 0
    lines = broker.stderr().splitlines()
    assert re.fullmatch(
        rf'time="[^"]+" level=error msg="HTTP server error: listen tcp :{broker.port}: bind: address already in use"',
        lines[-2],
    )
    assert lines[-1].endswith('level=info msg="shutting down server..."')
