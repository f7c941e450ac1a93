"""Tests of the listening-socket reader (plugins/module_utils/_proc_net.py), on tables in the kernel's format."""

from __future__ import annotations

import sys

import pytest
from ansible_collections.zerog.compute.plugins.module_utils import _proc_net
from ansible_collections.zerog.compute.tests.unit.harness import case_file, load_cases

CASES = load_cases(case_file(__file__))
# The tables hold the words of each address in the host's byte order; the recorded ones are x86_64's.
pytestmark = pytest.mark.skipif(sys.byteorder != "little", reason="the tables were recorded on a little-endian host")


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0]["func"] == "parse"])
def test_parse(case):
    if "error" in case:
        with pytest.raises(ValueError, match=case["error"]):
            _proc_net.parse(case["text"], case["family"], case["port"])
        return
    assert _proc_net.parse(case["text"], case["family"], case["port"]) == case["want"]


@pytest.mark.parametrize("case", [c for c in CASES if c.values[0]["func"] == "listeners"])
def test_listeners(case, tmp_path):
    (tmp_path / "net").mkdir()
    for name, text in case["files"].items():
        if text is not None:
            (tmp_path / name).write_text(text, encoding="ascii")
    found, error = _proc_net.listeners(case["port"], root=str(tmp_path))
    assert found == case["want"]
    assert error == (case["error"].format(root=tmp_path) if case["error"] else None)


def test_an_unreadable_table_is_an_error(tmp_path):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "tcp").mkdir()  # a directory where the table should be: open() fails
    found, error = _proc_net.listeners(3443, root=str(tmp_path))
    assert found is None
    assert error.startswith(f"{tmp_path}/net/tcp cannot be read: ")


def test_this_hosts_own_listener_is_found():
    """The real tables of the machine running the tests list a socket this test opens, and only on its port."""
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        found, error = _proc_net.listeners(port)
    assert error is None
    assert found == [{"address": f"127.0.0.1:{port}", "port": port, "family": "ipv4", "loopback": True}]
