"""Tests of zerog.compute.key_provider_probe against a local fake key provider.

Each case of test_key_provider_probe.yaml names a behaviour of the fake server (what the real
provider, docker's port proxy, or a wrong service on the port would do), the module input and the
exact result. The fake server records what it received, so the framing of the request is checked
too: a 4-byte big-endian length, then JSON ``{"quote": [bytes]}``.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from typing import Any

import pytest
from ansible_collections.zerog.compute.plugins.modules import key_provider_probe
from ansible_collections.zerog.compute.tests.unit.fake_key_provider import FakeProvider, closed_port
from ansible_collections.zerog.compute.tests.unit.harness import case_file, load_cases, run_module

GENUINE_QUOTE = bytes(range(256)) * 3  # stands for a real quote: the module only forwards it


@pytest.fixture
def provider(request: pytest.FixtureRequest) -> Iterator[FakeProvider | None]:
    behaviour = request.param
    if behaviour is None:
        yield None
        return
    server = FakeProvider(behaviour)
    yield server
    server.close()


def _expand(value: Any, where: str) -> Any:
    if isinstance(value, str):
        return value.replace("{where}", where)
    if isinstance(value, dict):
        return {k: _expand(v, where) for k, v in value.items()}
    return value


CASES = load_cases(case_file(__file__))


@pytest.mark.parametrize(("case", "provider"), [pytest.param(c.values[0], c.values[0].get("server"), id=c.id) for c in CASES],
                         indirect=["provider"])
def test_probe(case: dict[str, Any], provider: FakeProvider | None) -> None:
    port = provider.port if provider is not None else closed_port()
    args = dict(case.get("input", {}))
    args.setdefault("port", port)
    if args.pop("genuine_quote", False):
        args["quote"] = GENUINE_QUOTE.hex()
    result = run_module(key_provider_probe.main, args, check_mode=case.get("flags", {}).get("check", False))
    expected = _expand(case["output"], f"127.0.0.1:{port}")
    assert result.failed is expected.pop("failed", False), result.result
    for key, value in expected.items():
        assert result.result[key] == value, key
    if not result.failed:
        assert result.changed is False
        assert 0 <= result["elapsed"] < 10
    if provider is None:
        return
    seen = provider.finish()
    received = case.get("received")
    if received == "dummy_quote":
        _assert_dummy_quote(seen, result["request_length"])
    elif received == "genuine_quote":
        assert json.loads(seen["body"]) == {"quote": list(GENUINE_QUOTE)}
        assert result["request_length"] == seen["length"] == len(seen["body"])
    elif received == "nothing":
        assert seen == {"sent": b""}


def _assert_dummy_quote(seen: dict[str, Any], request_length: int) -> None:
    """The request is one frame holding a structurally valid TDX v4 quote (Intel's quote layout)."""
    assert request_length == seen["length"] == len(seen["body"])
    request = json.loads(seen["body"])
    assert list(request) == ["quote"]
    quote = bytes(request["quote"])
    version, key_type, tee_type = struct.unpack_from("<HHI", quote)
    assert (version, key_type, tee_type) == (4, 2, 0x81)
    assert quote[12:28].hex() == "939a7233f79c4ca9940a0db3957f0607"
    # header 48 + TD report body 584, then the length of the signature data, then that data
    (sig_len,) = struct.unpack_from("<I", quote, 48 + 584)
    assert len(quote) == 48 + 584 + 4 + sig_len
    assert sig_len >= 64 + 64 + 6
    # compact JSON as serde_json writes it: no spaces
    assert b" " not in seen["body"]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0a0B ff\n", b"\x0a\x0b\xff"),
        ("0x0102", b"\x01\x02"),
    ],
)
def test_parse_quote_option(text: str, expected: bytes) -> None:
    assert key_provider_probe.parse_quote_option(text) == expected


@pytest.mark.parametrize("check_mode", [False, True])
def test_listeners_lists_the_providers_socket(check_mode: bool) -> None:
    """With listeners, the sockets on the port come from this host's /proc/net tables, beside the probe's outcome."""
    server = FakeProvider("reject")
    try:
        result = run_module(key_provider_probe.main, {"port": server.port, "listeners": True}, check_mode=check_mode)
    finally:
        server.close()
    assert not result.failed, result.result
    assert result["outcome"] == "rejected"
    assert result["listeners"] == [{"address": f"127.0.0.1:{server.port}", "port": server.port, "family": "ipv4",
                                    "loopback": True}]
    assert result["listeners_error"] is None


def test_listeners_not_asked_are_null() -> None:
    result = run_module(key_provider_probe.main, {"port": closed_port()})
    assert result["outcome"] == "refused"
    assert result["listeners"] is None
    assert result["listeners_error"] is None


def test_listeners_of_a_port_nothing_listens_on_are_empty() -> None:
    result = run_module(key_provider_probe.main, {"port": closed_port(), "listeners": True})
    assert result["reachable"] is False
    assert result["listeners"] == []
    assert result["listeners_error"] is None
