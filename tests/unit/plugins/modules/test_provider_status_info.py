"""Tests of zerog.compute.provider_status_info against real files, listeners and a fake systemctl.

Each case of test_provider_status_info.yaml makes files under the case's directory, starts a key
provider listener that plays one behaviour of the real provider (a one-connection TCP server that
reads the framed request as the provider does), puts a fake ``systemctl`` first on PATH that
prints what the real ``systemctl is-active UNIT...`` prints (one state per unit, in order,
``inactive`` for a unit systemd does not know; rc 0 when at least one unit is active, else 3), and
asks a local HTTP server that answers JSON, text, broken JSON, 404 and a redirect. Every case runs
in normal and in check mode: the module only reads, so both must give the same result, change no
file and call systemctl exactly as listed.
"""

from __future__ import annotations

import grp
import http.server
import json
import os
import pwd
import shutil
import socket
import stat
import struct
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import yaml
from ansible_collections.zerog.compute.plugins.modules import provider_status_info
from ansible_collections.zerog.compute.tests.unit.fake_key_provider import FakeProvider, closed_port, read_request_json
from ansible_collections.zerog.compute.tests.unit.harness import assert_subset, case_file, run_module, substitute

# -- the HTTP server ------------------------------------------------------------------------------

MODELS = [{"name": "llama-3-8b", "price": 1}, {"name": "qwen-2.5-7b", "price": 2}]
# path: (status, content type or None, body, extra headers)
ROUTES = {
    "/v1/model": (200, "application/json", json.dumps(MODELS), {}),
    "/empty": (200, "application/json; charset=utf-8", "[]", {}),
    "/text": (200, "text/plain", "OK\n", {}),
    "/untyped": (200, None, "[]", {}),
    "/broken": (200, "application/json", "{not json", {}),
    "/problem": (500, "application/problem+json", '{"title": "boom"}', {}),
    "/moved": (302, "text/html", "", {"Location": "/v1/model"}),
}


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.server.requests.append((self.command, self.path))  # type: ignore[attr-defined]
        if self.path == "/slow":
            time.sleep(2.5)
        status, content_type, body, headers = ROUTES.get(
            self.path, (404, "application/json", '{"error": "no route"}', {}))
        data = body.encode()
        try:
            self.send_response(status)
            if content_type:
                self.send_header("Content-Type", content_type)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):  # /slow: the client gave up
            pass

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""


@pytest.fixture(scope="module")
def http_base() -> Iterator[tuple[str, list[tuple[str, str]]]]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    server.requests = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server.requests  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


# -- systemctl ------------------------------------------------------------------------------------

FAKE_SYSTEMCTL = """#!{python}
# What systemctl is-active UNIT... prints: one line per unit, in order; "inactive" for a unit systemd
# does not know; rc 0 when at least one unit is active (or reloading), else 3.
import json, sys
with open({log!r}, "a") as log:
    log.write(json.dumps(sys.argv[1:]) + "\\n")
mode = {mode!r}
if mode == "no_bus":
    sys.stderr.write("System has not been booted with systemd as init system (PID 1). Can't operate.\\n"
                     "Failed to connect to bus: Host is down\\n")
    sys.exit(1)
args = sys.argv[1:]
assert args[0] == "is-active", args
units = [a for a in args[1:] if a != "--"]
states = {states!r}
lines = [states.get(u if "." in u else u + ".service", "inactive") for u in units]
if mode == "one_line_short":
    lines = lines[:-1]
print("\\n".join(lines))
sys.exit(0 if any(s in ("active", "reloading") for s in lines) else 3)
"""


def _bin_dir(tmp: str, case: dict[str, Any]) -> tuple[str, str]:
    """PATH for the case (the fake systemctl first, unless the case has none) and its call log."""
    bin_dir = os.path.join(tmp, "bin")
    os.makedirs(bin_dir)
    log = os.path.join(tmp, "systemctl.log")
    systemctl = case.get("systemctl", {})
    if systemctl is None:  # no systemctl anywhere: only an empty directory on PATH
        return bin_dir, log
    os.symlink(shutil.which("timeout"), os.path.join(bin_dir, "timeout"))
    script = os.path.join(bin_dir, "systemctl")
    with open(script, "w", encoding="utf-8") as out:
        out.write(FAKE_SYSTEMCTL.format(python=sys.executable, log=log, mode=systemctl.get("mode", "ok"),
                                        states=systemctl.get("states", {})))
    os.chmod(script, 0o755)
    return bin_dir, log


def _calls(log: str) -> list[list[str]]:
    if not os.path.exists(log):
        return []
    with open(log, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


# -- files ----------------------------------------------------------------------------------------


def make(tmp: str, case: dict[str, Any]) -> None:
    for rel in case.get("dirs", []):
        os.makedirs(os.path.join(tmp, rel), exist_ok=True)
    for rel, text in case.get("files", {}).items():
        os.makedirs(os.path.dirname(os.path.join(tmp, rel)), exist_ok=True)
        with open(os.path.join(tmp, rel), "w", encoding="utf-8") as out:
            out.write(text)
    for rel, target in case.get("links", {}).items():
        os.symlink(target, os.path.join(tmp, rel))
    for rel, mode in case.get("modes", {}).items():
        os.chmod(os.path.join(tmp, rel), int(mode, 8))


def snapshot(tmp: str) -> dict[str, tuple[int, int, int]]:
    out = {}
    for root, dirs, files in os.walk(tmp):
        for name in dirs + files:
            path = os.path.join(root, name)
            if path.endswith("systemctl.log"):
                continue
            info = os.lstat(path)
            out[path] = (info.st_mode, info.st_size, info.st_mtime_ns)
    return out


def marked(value: Any, marks: dict[str, str]) -> Any:
    """``value`` with the marks replaced in dict keys too (paths, units and URLs are keys)."""
    if isinstance(value, dict):
        return {substitute(k, marks): marked(v, marks) for k, v in value.items()}
    if isinstance(value, list):
        return [marked(v, marks) for v in value]
    return substitute(value, marks)


def _load() -> list[Any]:
    with open(case_file(__file__), encoding="utf-8") as handle:
        return [pytest.param(case, id=case["id"]) for case in yaml.safe_load(handle)]


@pytest.mark.parametrize("case", _load())
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_provider_status_info(case, check_mode, tmp_path, monkeypatch, http_base):
    tmp = str(tmp_path)
    make(tmp, case)
    bin_dir, log = _bin_dir(tmp, case)
    monkeypatch.setenv("PATH", bin_dir if case.get("systemctl", {}) is None else f"{bin_dir}:/usr/bin:/bin")
    for name in ("http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    base, requests = http_base
    provider = FakeProvider(case["provider"]) if case.get("provider") else None
    kp_port = provider.port if provider else closed_port()
    marks = {
        "@TMP@": tmp, "@HTTP@": base, "@CLOSED@": f"http://127.0.0.1:{closed_port()}", "@KP_PORT@": str(kp_port),
        "@KP@": f"127.0.0.1:{kp_port}", "@USER@": pwd.getpwuid(os.geteuid()).pw_name,
        "@GROUP@": grp.getgrgid(os.getegid()).gr_name,
    }
    args = marked(case.get("input", {}), marks)  # the module converts "@KP_PORT@" to an int
    before = snapshot(tmp)
    requests.clear()
    try:
        result = run_module(provider_status_info.main, args, check_mode=check_mode, tmpdir=tmp)
    finally:
        seen = provider.close() if provider else {}
    assert result.failed is case.get("failed", False), result.result
    for text in marked(case.get("msg_contains", []), marks):
        assert text in result.result["msg"], result.result["msg"]
    expected = marked(case.get("output", {}), marks)
    for key in ("files", "units", "urls"):  # these must match exactly
        if key in expected:
            assert result.result[key] == expected.pop(key), key
    assert_subset(expected, result.result)
    if not result.failed:
        assert set(result.result) >= {"files", "key_provider", "units", "urls"}
        if result.result["key_provider"] is not None:
            assert 0 <= result.result["key_provider"]["elapsed"] < 10
    # systemctl: exactly the calls listed (one for all units, none without units), in run and check mode
    assert _calls(log) == case.get("systemctl_calls", []), _calls(log)
    # the key provider got one framed dummy quote when it was asked
    if case.get("provider") in ("reject", "answer"):
        request = read_request_json(seen)
        assert list(request) == ["quote"] and struct.unpack_from("<H", bytes(request["quote"]))[0] == 4
    # the HTTP server: one GET per URL given (a redirect followed is a second request)
    if "requests" in case:
        assert [path for _method, path in requests] == case["requests"]
        assert {method for method, _path in requests} <= {"GET"}
    assert result.result.get("changed", False) is False
    assert snapshot(tmp) == before


# -- the pure parts -------------------------------------------------------------------------------

# (case, stdout of systemctl is-active, units, {unit: state} or the start of the ValueError message)
IS_ACTIVE = [
    ("one per unit", "active\ninactive\nfailed\n", ["a.service", "b", "c.timer"],
     {"a.service": "active", "b": "inactive", "c.timer": "failed"}),
    ("blanks around", " activating \n", ["a"], {"a": "activating"}),
    ("nothing for nothing", "", [], {}),
    ("a line missing", "active\n", ["a", "b"], "1 line(s) for 2 unit(s)"),
    ("a line too many", "active\nactive\n", ["a"], "2 line(s) for 1 unit(s)"),
    ("nothing printed", "", ["a"], "0 line(s) for 1 unit(s)"),
    ("a message instead of a state", "Failed to connect to bus\n", ["a"], "a line that is not a state"),
    ("an empty line", "\nactive\n", ["a", "b"], "a line that is not a state"),
]


@pytest.mark.parametrize(("text", "units", "want"), [c[1:] for c in IS_ACTIVE], ids=[c[0] for c in IS_ACTIVE])
def test_parse_is_active(text, units, want):
    if isinstance(want, str):
        with pytest.raises(ValueError) as error:
            provider_status_info.parse_is_active(text, units)
        assert str(error.value).startswith(want), str(error.value)
    else:
        assert provider_status_info.parse_is_active(text, units) == want


@pytest.mark.parametrize(("content_type", "want"), [
    ("application/json", True), ("application/problem+json", True), ("text/javascript", True),
    ("application/JSON", True), ("text/plain", False), ("text/html", False), ("application/octet-stream", False),
])
def test_is_json_type(content_type, want):
    assert provider_status_info.is_json_type(content_type) is want


def test_file_entry_of_a_socket(tmp_path):
    """Neither a file, a directory nor a link: "other"."""
    path = str(tmp_path / "kp.sock")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(path)
        entry = provider_status_info.file_entry(path)
    assert entry["exists"] is True and entry["type"] == "other"
    assert entry["mode"] == f"{stat.S_IMODE(os.lstat(path).st_mode):04o}"
