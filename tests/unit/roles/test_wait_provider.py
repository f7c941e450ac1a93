"""roles/dstack_cvm/files/wait_provider.py: the wait for the broker of a CVM, case by case.

A local HTTP server answers GET /v1/model with the scripted answers of each case, one per poll
(the last one repeats); systemd is replaced by the case's unit states and journal lines (the
script reads them through its ``unit_state`` and ``journal`` functions).
"""

from __future__ import annotations

import http.server
import importlib.util
import json
import os
import threading

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
SCRIPT = os.path.join(REPO, "roles", "dstack_cvm", "files", "wait_provider.py")
UNIT = "dstack-cvm-finetune.service"

MODEL = [{"name": "mobilenet_v2", "hash": "0x" + "ab" * 32}]

# answers: (HTTP status, body) per poll, or None for a closed port; states: ActiveState per poll;
# journal: lines per poll; expect: what the script prints (subset) and its exit status.
CASES = [
    {"id": "serves-at-once", "models": ["mobilenet_v2"], "answers": [(200, MODEL)],
     "expect": {"ok": True, "models": ["mobilenet_v2"], "msg": "lists 1 model(s)"}, "rc": 0},
    {"id": "serves-no-models-configured", "models": [], "answers": [(200, [])],
     "expect": {"ok": True, "models": []}, "rc": 0},
    {"id": "serves-after-two-failed-polls", "models": ["mobilenet_v2"],
     "answers": [None, (503, {"error": "starting"}), (200, MODEL)],
     "expect": {"ok": True, "models": ["mobilenet_v2"]}, "rc": 0},
    {"id": "model-missing", "models": ["mobilenet_v2", "qwen-small"], "answers": [(200, MODEL)],
     "expect": {"ok": False, "models": ["mobilenet_v2"], "msg": "lacks the configured model(s) qwen-small"}, "rc": 1},
    {"id": "guest-boot-error", "models": [], "answers": [None],
     "journal": [["qemu: starting", "boot.error: failed to get app key from the key provider"]],
     "expect": {"ok": False, "msg": "failed to boot: boot.error: failed to get app key"}, "rc": 1},
    {"id": "unit-gave-up", "models": [], "answers": [None], "states": ["failed"],
     "expect": {"ok": False, "msg": f"{UNIT} failed (it exited too often"}, "rc": 1},
    {"id": "timeout-closed-port", "models": [], "answers": [None], "timeout": 1,
     "expect": {"ok": False, "msg": "did not answer within 1 s"}, "rc": 1},
    {"id": "timeout-not-a-list", "models": [], "answers": [(200, {"models": []})], "timeout": 1,
     "expect": {"ok": False, "msg": "(last: HTTP 200, not a JSON list)"}, "rc": 1},
    {"id": "timeout-not-json", "models": [], "answers": [(200, "<html>")], "timeout": 1,
     "expect": {"ok": False, "msg": "(last: the answer is not JSON)"}, "rc": 1},
]


def load_script():
    spec = importlib.util.spec_from_file_location("wait_provider", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Answers(http.server.BaseHTTPRequestHandler):
    """Serves the next scripted answer; a ``None`` answer closes the connection without a reply."""

    script: list = []
    polls: int = 0

    def do_GET(self):  # the name http.server calls
        index = min(type(self).polls, len(self.script) - 1)
        type(self).polls += 1
        answer = self.script[index]
        if answer is None:
            self.close_connection = True
            self.wfile.flush()
            self.connection.close()
            return
        status, body = answer
        data = (body if isinstance(body, str) else json.dumps(body)).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Answers)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield httpd
    httpd.shutdown()
    httpd.server_close()


@pytest.mark.parametrize("case", CASES, ids=[c["id"] for c in CASES])
def test_wait_provider(case, server, monkeypatch, capsys):
    script = load_script()
    Answers.script = case["answers"]
    Answers.polls = 0
    calls = {"state": 0, "journal": 0}
    states = case.get("states", ["activating"])
    journals = case.get("journal", [["qemu: starting"]])

    def unit_state(unit):
        assert unit == UNIT
        state = states[min(calls["state"], len(states) - 1)]
        calls["state"] += 1
        return state, "@1764000000"

    def journal(unit, since, lines):
        assert (unit, since, lines) == (UNIT, "@1764000000", 12)
        lines_now = journals[min(calls["journal"], len(journals) - 1)]
        calls["journal"] += 1
        return lines_now

    monkeypatch.setattr(script, "unit_state", unit_state)
    monkeypatch.setattr(script, "journal", journal)
    url = f"http://127.0.0.1:{server.server_address[1]}/v1/model"
    argv = ["--url", url, "--unit", UNIT, "--timeout", str(case.get("timeout", 30)), "--interval", "0.05",
            "--lines", "12"]
    for model in case["models"]:
        argv += ["--model", model]
    rc = script.main(argv)
    out = json.loads(capsys.readouterr().out)
    assert rc == case["rc"]
    for key, value in case["expect"].items():
        if key == "msg":
            assert value in out["msg"], out["msg"]
        else:
            assert out[key] == value, (key, out)
    assert set(out) >= {"ok", "msg", "models", "journal", "waited"}
    if not out["ok"] and case["id"].startswith(("guest", "unit")):
        assert out["journal"] == journals[-1]
