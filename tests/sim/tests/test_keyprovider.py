"""The local key provider stand-in (``zerog_sim.keyprovider``) and its framing (``zerog_sim.framing``).

Unit tables cover the framing, the simulated quotes and the provider's request handling; the
process tests run the real commands (``run`` = upstream run.sh, ``ps``, ``logs``, ``down``)
against a temporary fixture tree, a fake ``docker`` on PATH and a PCCS stand-in, and leave
nothing running.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

SIM_DIR = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SIM_DIR))
from zerog_sim import framing, keyprovider, pccs, sdkrepo  # noqa: E402

PROFILE = "kp-test"
DAEMON_ERROR = ("Cannot connect to the Docker daemon at unix:///var/run/docker.sock. "
                "Is the docker daemon running?")
START_055 = "Starting all SGX services using docker-compose...\n"
BANNER_055 = (
    "==========================\n"
    "Services started!\n"
    "==========================\n"
    "Key provider endpoint: https://localhost:3443\n"
    "  - Using shared socket with AESM service\n"
    "  - Socket location: /var/run/aesmd/aesm.socket\n"
    "\n"
    "Check logs with:\n"
    "  docker compose logs -f aesmd\n"
    "  docker compose logs -f gramine-sealing-key-provider\n"
    "==========================\n"
)
CREATE_055 = (
    " Network key-provider-build_default  Creating\n"
    " Network key-provider-build_default  Created\n"
    ' Volume "key-provider-build_aesmd"  Creating\n'
    ' Volume "key-provider-build_aesmd"  Created\n'
    " Container aesmd  Creating\n"
    " Container aesmd  Created\n"
    " Container gramine-sealing-key-provider  Creating\n"
    " Container gramine-sealing-key-provider  Created\n"
)
CREATE_03 = (
    " Network key-provider-build_default  Creating\n"
    " Network key-provider-build_default  Created\n"
    " Container gramine-sealing-key-provider  Creating\n"
    " Container gramine-sealing-key-provider  Created\n"
    " Container pccs-proxy  Creating\n"
    " Container pccs-proxy  Created\n"
)
START_EVENTS_055 = (
    " Container aesmd  Starting\n"
    " Container aesmd  Started\n"
    " Container gramine-sealing-key-provider  Starting\n"
    " Container gramine-sealing-key-provider  Started\n"
)
ATTACH_03 = "Attaching to gramine-sealing-key-provider, pccs-proxy\n"
NO_DEVICE = ('Error response from daemon: error gathering device information while adding custom '
             'device "/dev/sgx_enclave": no such file or directory\n')


# --------------------------------------------------------------------------------------------
# framing
# --------------------------------------------------------------------------------------------

def test_encode_frame_is_big_endian_length_and_compact_json() -> None:
    assert framing.encode_frame({"quote": [1, 2]}) == b"\x00\x00\x00\x0f" + b'{"quote":[1,2]}'
    assert framing.encode_header(0x01020304) == b"\x01\x02\x03\x04"
    assert framing.decode_header(b"GET ") == 1195725856


@pytest.mark.parametrize("length", [-1, 0x1_0000_0000])
def test_encode_header_rejects_lengths_outside_u32(length: int) -> None:
    with pytest.raises(ValueError):
        framing.encode_header(length)


# (what the peer sends before closing, max_len, expected value or (exception, message))
RECV_CASES = [
    ("reply", b"\x00\x00\x00\x07" + b'{"a":1}', None, {"a": 1}),
    ("nothing", b"", None, (framing.ConnectionClosed, "connection closed before any reply")),
    ("half-prefix", b"\x00\x00", None,
     (framing.ConnectionClosed, "connection closed inside the length prefix (2 of 4 bytes)")),
    ("short-body", b"\x00\x00\x00\x0a" + b"{}1", None,
     (framing.ConnectionClosed, "connection closed inside a 10-byte frame after 3 bytes")),
    ("zero-length", b"\x00\x00\x00\x00", None, (framing.FramingError, "frame body is not JSON")),
    ("not-json", b"\x00\x00\x00\x03" + b"abc", None, (framing.FramingError, "frame body is not JSON")),
    ("over-limit", b"\x00\x00\x10\x00" + b"x", 1024,
     (framing.FrameTooLarge, "frame of 4096 bytes exceeds the limit of 1024 bytes")),
]


@pytest.mark.parametrize(("sent", "max_len", "expected"), [c[1:] for c in RECV_CASES],
                         ids=[c[0] for c in RECV_CASES])
def test_recv_frame(sent: bytes, max_len: int | None, expected: object) -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(sent)
        left.shutdown(socket.SHUT_WR)
        if isinstance(expected, tuple):
            with pytest.raises(expected[0]) as info:
                framing.recv_frame(right, max_len=max_len)
            assert str(info.value).startswith(expected[1])
        else:
            assert framing.recv_frame(right, max_len=max_len) == expected


def test_connection_closed_is_a_connection_error_with_the_bytes_received() -> None:
    left, right = socket.socketpair()
    with left, right:
        left.sendall(b"\x00\x00\x00\x09abc")
        left.shutdown(socket.SHUT_WR)
        with pytest.raises(ConnectionError) as info:
            framing.recv_frame(right)
    assert info.value.received == b"\x00\x00\x00\x09abc"


# --------------------------------------------------------------------------------------------
# simulated quotes, keys and sealed boxes
# --------------------------------------------------------------------------------------------

PUBKEY = bytes(range(32))
MR_TD = b"\x11" * 48
GOOD_TDX = keyprovider.make_tdx_quote(PUBKEY, mr_td=MR_TD, qe_id=keyprovider.platform_qe_id(PROFILE))


def _flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0xFF]) + data[index + 1:]


QUOTE_CASES = [
    ("tdx", GOOD_TDX, (4, 0x81)),
    ("sgx", keyprovider.make_sgx_quote(b"x", qe_id=b"q" * 16), (3, 0x00)),
    ("truncated", GOOD_TDX[:-1], None),
    ("trailing-byte", GOOD_TDX + b"\0", None),
    ("bad-signature", _flip(GOOD_TDX, len(GOOD_TDX) - 1), None),
    ("tampered-report", _flip(GOOD_TDX, 48 + 136), None),
    ("version-5", b"\x05" + GOOD_TDX[1:], None),
    ("tee-type-2", GOOD_TDX[:4] + b"\x02" + GOOD_TDX[5:], None),
    ("header-only", GOOD_TDX[:48], None),
    ("empty", b"", None),
]


@pytest.mark.parametrize(("data", "expected"), [c[1:] for c in QUOTE_CASES],
                         ids=[c[0] for c in QUOTE_CASES])
def test_parse_quote(data: bytes, expected: tuple[int, int] | None) -> None:
    parsed = keyprovider.parse_quote(data)
    assert (None if parsed is None else (parsed.version, parsed.tee_type)) == expected


def test_tdx_quote_layout() -> None:
    rtmrs = (b"\x01" * 48, b"\x02" * 48, b"\x03" * 48, b"\x04" * 48)
    quote = keyprovider.make_tdx_quote(PUBKEY, mr_td=MR_TD, rtmrs=rtmrs, qe_id=b"Q" * 16)
    assert len(quote) == 48 + 584 + 4 + 64
    assert quote[:8] == b"\x04\x00\x02\x00\x81\x00\x00\x00"
    assert quote[28:44] == b"Q" * 16  # header user_data[:16]: the QE ID ("PPID")
    assert quote[48 + 520:48 + 552] == PUBKEY  # report data carries the TD's public key
    assert keyprovider.td_measurements(quote) == MR_TD + b"".join(rtmrs)


def test_derive_key_is_hmac_of_the_platform_sealing_key_over_the_measurements() -> None:
    measurements = keyprovider.td_measurements(GOOD_TDX)
    sealing = hashlib.sha256(b"zerog-sim/sgx-sealing-key/" + PROFILE.encode()
                             + keyprovider.SIM_MR_ENCLAVE).digest()
    import hmac
    expected = hmac.new(sealing, measurements, hashlib.sha256).digest()
    assert keyprovider.derive_key(measurements, PROFILE) == expected
    assert keyprovider.derive_key(measurements, "other-host") != expected
    assert keyprovider.derive_key(b"\x22" * 48 + measurements[48:], PROFILE) != expected


def test_sealed_box_opens_only_with_its_key_and_is_randomised() -> None:
    key = b"k" * 32
    first, second = keyprovider.seal_box(key, PUBKEY), keyprovider.seal_box(key, PUBKEY)
    assert len(first) == 80 and first != second
    assert keyprovider.open_sealed_box(first, PUBKEY) == key
    assert keyprovider.open_sealed_box(second, PUBKEY) == key
    with pytest.raises(ValueError):
        keyprovider.open_sealed_box(first, b"x" * 32)


SERDE_CASES = [
    (b"", "EOF while parsing a value at line 1 column 0"),
    (b"GET / HTTP/1.1", "expected value at line 1 column 1"),
    (b'{"quote":[1]} x', "trailing characters at line 1 column 15"),
    (b"[1,2]", "invalid type: list, expected struct QuoteRequest at line 1 column 5"),
    (b'{"quote":"ab"}', "invalid type: str, expected a sequence at line 1 column 14"),
    (b'{"quotes":[1]}', "missing field `quote` at line 1 column 14"),
    (b'{"quote":[1,256]}', "invalid value: integer `256`, expected u8 at line 1 column 17"),
    (b'{"quote":[1.5]}', "invalid type: float, expected u8 at line 1 column 15"),
]


@pytest.mark.parametrize(("body", "message"), SERDE_CASES, ids=[c[0].decode() or "empty" for c in SERDE_CASES])
def test_request_decoding_errors(body: bytes, message: str) -> None:
    assert keyprovider._serde_error(body) == (None, message)


def test_request_decoding_ignores_unknown_fields() -> None:
    assert keyprovider._serde_error(b'{"quote":[0,255],"extra":true}') == ([0, 255], None)


# --------------------------------------------------------------------------------------------
# the provider's request handling, in process
# --------------------------------------------------------------------------------------------

def _make_sgx_nodes(root: Path, major: int = 10) -> None:
    (root / "dev").mkdir(parents=True, exist_ok=True)
    for name, minor in (("sgx_enclave", 125), ("sgx_provision", 126)):
        try:
            os.mknod(root / "dev" / name, 0o600 | stat.S_IFCHR, os.makedev(major, minor))
        except PermissionError:
            pytest.skip("creating device nodes needs CAP_MKNOD")


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def pccs_port() -> Iterator[int]:
    server, thread = pccs.serve_in_thread(0)
    yield server.server_address[1]
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def state_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "root"
    _make_sgx_nodes(root)
    path = tmp_path / "active.json"
    path.write_text(json.dumps({"profile": PROFILE, "root": str(root)}), encoding="utf-8")
    monkeypatch.setenv("ZEROG_SIM_STATE", str(path))
    return path


def _ask(runtime: keyprovider.ProviderRuntime, payload: bytes) -> bytes:
    client, server = socket.socketpair()
    with client, server:
        client.sendall(payload)
        client.shutdown(socket.SHUT_WR)
        runtime.handle(server, "127.0.0.1:40000")
        server.close()
        return b"".join(iter(lambda: client.recv(65536), b""))


def _frame(obj: object) -> bytes:
    return framing.encode_frame(obj)


# (name, request bytes, PCCS up, reply expected, last log line)
HANDLE_CASES = [
    ("valid", _frame({"quote": list(GOOD_TDX)}), True, True,
     "INFO  gramine_sealing_key_provider::quote::handler] Successfully processed quote and generated response"),
    ("no-pccs", _frame({"quote": list(GOOD_TDX)}), False, False,
     "ERROR gramine_sealing_key_provider::server] Connection error from 127.0.0.1:40000: "
     "IO error: Permission denied (os error 13)"),
    ("zero-length", b"\x00\x00\x00\x00", True, False,
     "Connection error from 127.0.0.1:40000: Serialization error: EOF while parsing a value at line 1 column 0"),
    ("partial-prefix", b"\x00\x00", True, False,
     "Connection error from 127.0.0.1:40000: Network error: Failed to read request length: early eof"),
    ("partial-body", b"\x00\x00\x01\x00{", True, False,
     "Connection error from 127.0.0.1:40000: Network error: Failed to read request: early eof"),
    ("bad-json", _frame("x"), True, False,
     "Connection error from 127.0.0.1:40000: Serialization error: invalid type: str, "
     "expected struct QuoteRequest at line 1 column 3"),
    ("garbage-quote", _frame({"quote": [1, 2, 3]}), True, False,
     "Connection error from 127.0.0.1:40000: Quote verification failed"),
    ("other-platform", _frame({"quote": list(keyprovider.make_tdx_quote(PUBKEY, qe_id=b"z" * 16))}), True,
     False, "Connection error from 127.0.0.1:40000: PPID mismatch"),
    ("sgx-quote", _frame({"quote": list(keyprovider.make_sgx_quote(b"", keyprovider.platform_qe_id(PROFILE)))}),
     True, False, "Connection error from 127.0.0.1:40000: Quote parsing error: Not a TDX quote"),
]


@pytest.mark.parametrize(("payload", "pccs_up", "replies", "last_log"), [c[1:] for c in HANDLE_CASES],
                         ids=[c[0] for c in HANDLE_CASES])
def test_provider_handles_one_request_per_connection(
        state_file: Path, pccs_port: int, capsys: pytest.CaptureFixture[str], payload: bytes,
        pccs_up: bool, replies: bool, last_log: str) -> None:
    port = pccs_port if pccs_up else _free_port()
    runtime = keyprovider.ProviderRuntime("0.3", keyprovider.fixture_root(), None, ("127.0.0.1", port))
    answer = _ask(runtime, payload)
    log = capsys.readouterr().err.splitlines()
    assert log[0].endswith("INFO  gramine_sealing_key_provider::server] New connection from: 127.0.0.1:40000")
    assert log[-1].endswith(last_log)
    if not replies:
        assert answer == b""  # every error: the connection is closed without a reply
        return
    length = int.from_bytes(answer[:4], "big")
    assert length == len(answer) - 4
    reply = json.loads(answer[4:])
    assert sorted(reply) == ["encrypted_key", "provider_quote"]
    key = keyprovider.open_sealed_box(bytes(reply["encrypted_key"]), PUBKEY)
    assert key == keyprovider.derive_key(keyprovider.td_measurements(GOOD_TDX), PROFILE)
    provider_quote = bytes(reply["provider_quote"])
    parsed = keyprovider.parse_quote(provider_quote)
    assert parsed is not None and parsed.tee_type == 0
    # the provider quote binds the reply: report_data[:32] = sha256(encrypted_key)
    assert provider_quote[48 + 320:48 + 352] == hashlib.sha256(bytes(reply["encrypted_key"])).digest()


def test_provider_needs_usable_sgx_devices_for_its_own_quote(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, pccs_port: int,
        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("ZEROG_SIM_STATE", str(tmp_path / "no-state.json"))
    root = tmp_path / "root"
    _make_sgx_nodes(root, major=1)  # character devices, but not SGX ones: AESM cannot work
    runtime = keyprovider.ProviderRuntime("0.3", str(root), None, ("127.0.0.1", pccs_port))
    monkeypatch.setattr(runtime, "qe_id", keyprovider.platform_qe_id(PROFILE))
    assert _ask(runtime, _frame({"quote": list(GOOD_TDX)})) == b""
    assert capsys.readouterr().err.splitlines()[-1].endswith("IO error: Permission denied (os error 13)")


# --------------------------------------------------------------------------------------------
# docker-ish presentation
# --------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("seconds", "text"), [
    (0.4, "Less than a second"), (1.2, "1 second"), (59.9, "59 seconds"), (60, "About a minute"),
    (119, "About a minute"), (120, "2 minutes"), (3599, "59 minutes"), (3600, "About an hour"),
    (5399, "About an hour"), (5400, "2 hours"), (47 * 3600, "47 hours"), (48 * 3600, "2 days"),
    (14 * 86400, "2 weeks"), (60 * 86400, "2 months"), (730 * 86400, "2 years"),
])
def test_human_duration(seconds: float, text: str) -> None:
    assert keyprovider.human_duration(seconds) == text


def test_ps_table() -> None:
    now = 1_000_000.0
    entries = [
        {"id": "a" * 64, "image": "key-provider-build-aesmd", "command": "/entrypoint.sh", "ports": "",
         "state": "restarting", "exit_code": 1, "created_at": now - 30, "started_at": now - 3,
         "finished_at": now - 0.5, "name": "aesmd"},
        {"id": "b" * 64, "image": "alpine/socat",
         "command": "socat TCP-LISTEN:8082,bind=172.17.0.1,fork,reuseaddr TCP:127.0.0.1:8081",
         "ports": "", "state": "exited", "exit_code": 143, "created_at": now - 20, "started_at": now - 19,
         "finished_at": now - 2, "name": "pccs-proxy"},
        {"id": "c" * 64, "image": "key-provider-build-gramine-sealing-key-provider",
         "command": "/entrypoint.sh", "ports": "127.0.0.1:3443->3443/tcp", "state": "running",
         "exit_code": None, "created_at": now - 10, "started_at": now - 5, "finished_at": None,
         "name": "gramine-sealing-key-provider"},
    ]
    assert keyprovider.format_ps(entries, now) == (
        "CONTAINER ID   IMAGE                                             COMMAND                  CREATED"
        "          STATUS                                  PORTS                      NAMES\n"
        "cccccccccccc   key-provider-build-gramine-sealing-key-provider   \"/entrypoint.sh\"         10 seconds ago"
        "   Up 5 seconds                            127.0.0.1:3443->3443/tcp   gramine-sealing-key-provider\n"
        "bbbbbbbbbbbb   alpine/socat                                      \"socat TCP-LISTEN:80\u2026\"   20 seconds ago"
        "   Exited (143) 2 seconds ago                                         pccs-proxy\n"
        "aaaaaaaaaaaa   key-provider-build-aesmd                          \"/entrypoint.sh\"         30 seconds ago"
        "   Restarting (1) Less than a second ago                              aesmd\n")


@pytest.mark.parametrize("generation", keyprovider.GENERATIONS)
def test_compose_file_text_round_trips_the_generation(tmp_path: Path, generation: str) -> None:
    path = tmp_path / "docker-compose.yaml"
    path.write_text(keyprovider.compose_yaml_text(generation), encoding="utf-8")
    assert keyprovider.detect_generation(path) == generation
    (tmp_path / "sub" / "dir").mkdir(parents=True)
    assert keyprovider.find_compose_file(tmp_path / "sub" / "dir") == path


@pytest.mark.parametrize(("generation", "shebang"), [("0.3", "#!/bin/sh"), ("0.5.5", "#!/bin/bash")])
def test_run_sh_text_is_the_repository_run_sh(generation: str, shebang: str) -> None:
    """run_sh_text has the shebang and exec line of the run.sh in the stand-in dstack repository."""
    exec_line = (f'PYTHONPATH="/kit${{PYTHONPATH:+:$PYTHONPATH}}" exec python3 -B -m zerog_sim.keyprovider run '
                 f'--generation {generation} --script "$0"')
    text = keyprovider.run_sh_text(generation, "/kit").splitlines()
    (entry,) = [e for e in sdkrepo.tree_entries(generation, "dstack", "/kit") if e.path == "key-provider-build/run.sh"]
    repo = entry.data.decode().splitlines()
    assert (text[0], text[-1]) == (shebang, exec_line)
    assert (repo[0], repo[-1]) == (shebang, exec_line)


# --------------------------------------------------------------------------------------------
# the commands, as processes
# --------------------------------------------------------------------------------------------

@dataclass
class Sim:
    """A sandbox: fixture tree, fake docker, project directories, run/log dirs and ports."""

    base: Path
    env: dict[str, str]
    kp_port: int
    pccs_port: int

    def project(self, generation: str) -> Path:
        return self.base / f"sdk-{generation}" / "key-provider-build"

    def run(self, *args: str, cwd: Path | None = None, generation: str = "0.5.5",
            timeout: float = 30, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-B", "-m", "zerog_sim.keyprovider", *args],
                              cwd=cwd or self.project(generation), env={**self.env, **env},
                              capture_output=True, text=True, timeout=timeout, check=False)

    def popen(self, *args: str, generation: str, **env: str) -> subprocess.Popen[str]:
        return subprocess.Popen([sys.executable, "-B", "-m", "zerog_sim.keyprovider", *args],
                                cwd=self.project(generation), env={**self.env, **env},
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def state(self) -> dict:
        return json.loads((self.base / "run" / "keyprovider" / "state.json").read_text())

    @property
    def settings(self) -> keyprovider.Settings:
        return keyprovider.Settings(run_dir=self.base / "run" / "keyprovider",
                                    log_dir=self.base / "log" / "keyprovider")

    def containers(self) -> dict[str, dict]:
        """What ``ps -a --json`` prints, read in process (cheap enough to poll)."""
        entries = keyprovider.displayed_containers(keyprovider.load_state(self.settings))
        return {item["name"]: item for item in entries}

    def docker(self, script: str) -> None:
        path = self.base / "bin" / "docker"
        path.write_text("#!/bin/sh\n" + script, encoding="utf-8")
        path.chmod(0o755)

    def set_root(self, root: Path) -> None:
        (self.base / "active.json").write_text(json.dumps({"profile": PROFILE, "root": str(root)}))

    def ask(self, quote: bytes = GOOD_TDX) -> tuple[bytes, bytes]:
        return keyprovider.request_key(quote, port=self.kp_port, timeout=5)


def wait_for(predicate: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(Exception):
            value = predicate()
            if value:
                return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _alive(pid: int | None) -> bool:
    """True while ``pid`` is one of the stand-in's processes (never a recycled pid)."""
    if not keyprovider.process_alive(pid):
        return False
    try:
        return b"zerog_sim.keyprovider" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _parent(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])


@pytest.fixture
def sim() -> Iterator[Sim]:
    # A short base path: the aesmd volume holds a unix socket (108-byte path limit).
    base = Path(tempfile.mkdtemp(prefix="zkp", dir="/tmp"))
    root = base / "root"
    _make_sgx_nodes(root)
    (base / "bin").mkdir()
    for generation in keyprovider.GENERATIONS:
        project = base / f"sdk-{generation}" / "key-provider-build"
        project.mkdir(parents=True)
        (project / "docker-compose.yaml").write_text(keyprovider.compose_yaml_text(generation))
    kp_port, pccs_port = _free_port(), _free_port()
    env = {
        "PATH": f"{base / 'bin'}:/usr/bin:/bin",
        "PYTHONPATH": str(SIM_DIR),
        "HOME": str(base),
        "LC_ALL": "C",
        "ZEROG_SIM_STATE": str(base / "active.json"),
        "ZEROG_SIM_RUN_DIR": str(base / "run"),
        "ZEROG_SIM_LOG_DIR": str(base / "log"),
        "ZEROG_SIM_KP_PORT": str(kp_port),
        "ZEROG_SIM_PCCS_PORT": str(pccs_port),
        "ZEROG_SIM_KP_ENCLAVE_DELAY": "0",
        "ZEROG_SIM_AESM_WAIT": "0.3",
        "ZEROG_SIM_STOP_TIMEOUT": "0.1",
    }
    box = Sim(base, env, kp_port, pccs_port)
    box.set_root(root)
    box.docker('[ "$1" = info ] && exit 0\nexit 1\n')
    try:
        yield box
    finally:
        state = keyprovider.load_state(box.settings)
        pids = [c.get("pid") for c in (state or {}).get("containers", {}).values()]
        keyprovider.force_down(box.settings)
        for pid in pids:
            if pid:
                wait_for(lambda pid=pid: not _alive(pid), 5, f"pid {pid} to end")
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def running_pccs(sim: Sim) -> Iterator[pccs.PccsServer]:
    server, thread = pccs.serve_in_thread(sim.pccs_port)
    yield server
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


def _down(sim: Sim, generation: str = "0.5.5") -> subprocess.CompletedProcess[str]:
    return sim.run("down", generation=generation)


def test_055_run_sh_detaches_and_serves_keys(sim: Sim, running_pccs: pccs.PccsServer) -> None:
    started = time.monotonic()
    result = sim.run("run", "--generation", "0.5.5")
    assert time.monotonic() - started < 2
    assert (result.returncode, result.stdout, result.stderr) == (
        0, START_055 + BANNER_055, CREATE_055 + START_EVENTS_055)
    # the services run detached from the caller: supervisor in its own session
    state = sim.state()
    supervisor = state["supervisor_pid"]
    assert _alive(supervisor) and os.getsid(supervisor) != os.getsid(0)
    assert os.getppid() != supervisor and _parent(supervisor) == 1  # double fork: reparented
    with socket.create_connection(("127.0.0.1", sim.kp_port), timeout=2):
        pass  # the published port answers at once
    encrypted, provider_quote = wait_for(sim.ask, what="a key")
    assert keyprovider.open_sealed_box(encrypted, PUBKEY) == keyprovider.derive_key(
        keyprovider.td_measurements(GOOD_TDX), PROFILE)
    assert keyprovider.parse_quote(provider_quote) is not None
    as_json = {item["name"]: item for item in map(json.loads, sim.run("ps", "--json").stdout.splitlines())}
    assert as_json == sim.containers()
    assert {n: (c["state"], c["image"], c["ports"]) for n, c in as_json.items()} == {
        "aesmd": ("running", "key-provider-build-aesmd", ""),
        "gramine-sealing-key-provider": ("running", "key-provider-build-gramine-sealing-key-provider",
                                         "127.0.0.1:3443->3443/tcp")}
    ps = sim.run("ps").stdout.splitlines()
    assert ps[0].split() == ["CONTAINER", "ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    assert sorted(line.split()[-1] for line in ps[1:]) == ["aesmd", "gramine-sealing-key-provider"]
    assert all(" Up " in line for line in ps[1:])

    again = sim.run("run", "--generation", "0.5.5")  # compose up -d on a running project
    assert (again.returncode, again.stdout, again.stderr) == (0, START_055 + BANNER_055, (
        " Container aesmd  Running\n Container gramine-sealing-key-provider  Running\n"))
    assert sim.state()["supervisor_pid"] == supervisor

    pids = [c["pid"] for c in sim.containers().values()]
    down = _down(sim)
    assert (down.returncode, down.stdout, down.stderr) == (0, "", (
        " Container gramine-sealing-key-provider  Stopping\n"
        " Container gramine-sealing-key-provider  Stopped\n"
        " Container gramine-sealing-key-provider  Removing\n"
        " Container gramine-sealing-key-provider  Removed\n"
        " Container aesmd  Stopping\n"
        " Container aesmd  Stopped\n"
        " Container aesmd  Removing\n"
        " Container aesmd  Removed\n"
        " Network key-provider-build_default  Removing\n"
        " Network key-provider-build_default  Removed\n"))
    assert not any(_alive(pid) for pid in [supervisor, *pids])
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", sim.kp_port), timeout=2)
    assert sim.run("ps", "-a").stdout.count("\n") == 1  # header only: containers removed
    assert not (sim.base / "log" / "keyprovider" / "gramine-sealing-key-provider-json.log").exists()
    again = sim.run("up", "-d")  # the named volume survived "down": only the rest is created
    assert again.stderr == CREATE_055.replace(
        ' Volume "key-provider-build_aesmd"  Creating\n Volume "key-provider-build_aesmd"  Created\n', ""
    ) + START_EVENTS_055


def test_055_restart_always_brings_the_provider_back(sim: Sim, running_pccs: pccs.PccsServer) -> None:
    assert sim.run("up", "-d").returncode == 0
    wait_for(sim.ask, what="a key")
    first = sim.containers()["gramine-sealing-key-provider"]
    os.kill(first["pid"], signal.SIGKILL)
    back = wait_for(lambda: (c := sim.containers()["gramine-sealing-key-provider"])["state"] == "running"
                    and c["pid"] != first["pid"] and c, what="the restart")
    assert back["restart_count"] == 1
    assert back["id"] == first["id"]  # same container, restarted
    wait_for(sim.ask, what="a key after the restart")


def test_055_http_garbage_aborts_the_provider_and_docker_restarts_it(
        sim: Sim, running_pccs: pccs.PccsServer) -> None:
    assert sim.run("up", "-d").returncode == 0
    wait_for(sim.ask, what="a key")
    before = sim.containers()["gramine-sealing-key-provider"]
    with socket.create_connection(("127.0.0.1", sim.kp_port), timeout=0.5) as stalled:
        stalled.sendall(b"\x00\x00\x00\x0a{}")  # 10 bytes announced, 2 sent, connection kept open
        with pytest.raises(TimeoutError):
            stalled.recv(1)  # no read timeout upstream: the provider just keeps waiting
    with socket.create_connection(("127.0.0.1", sim.kp_port), timeout=5) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: localhost:3443\r\nUser-Agent: curl/7.88.1\r\n\r\n")
        with pytest.raises((framing.ConnectionClosed, ConnectionResetError)):
            framing.recv_frame(sock)  # no HTTP answer, no frame: the connection just ends
    wait_for(lambda: sim.containers()["gramine-sealing-key-provider"]["restart_count"] == 1, what="restart")
    log = sim.run("logs", "--service", "gramine-sealing-key-provider").stdout
    assert "gramine-sealing-key-provider  | memory allocation of 1195725856 bytes failed\n" in log
    assert "gramine-sealing-key-provider  | make: *** [Makefile:66: run-provider] Error 134\n" in log
    assert sim.containers()["gramine-sealing-key-provider"]["id"] == before["id"]
    wait_for(sim.ask, what="a key after the restart")


def test_055_without_pccs_connect_works_but_requests_fail(sim: Sim) -> None:
    assert sim.run("up", "-d").returncode == 0
    wait_for(lambda: "Listening on 0.0.0.0:3443" in sim.run("logs").stdout, what="the provider")
    with socket.create_connection(("127.0.0.1", sim.kp_port), timeout=2):
        pass
    with pytest.raises(framing.ConnectionClosed, match="connection closed before any reply"):
        sim.ask()
    logs = sim.run("logs", "-n", "1", "gramine-sealing-key-provider").stdout
    assert logs.endswith("IO error: Permission denied (os error 13)\n")
    assert sim.containers()["gramine-sealing-key-provider"]["restart_count"] == 0  # it stays up
    server, thread = pccs.serve_in_thread(sim.pccs_port)  # PCCS comes up: requests work
    try:
        sim.ask()
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def test_055_port_accepts_before_the_enclave_listens(sim: Sim, running_pccs: pccs.PccsServer) -> None:
    assert sim.run("up", "-d", ZEROG_SIM_KP_ENCLAVE_DELAY="1").returncode == 0
    with pytest.raises(framing.ConnectionClosed):  # docker-proxy accepts, nothing behind it yet
        sim.ask()
    wait_for(sim.ask, what="a key once the enclave listens")


def test_055_aesm_socket_timeout(sim: Sim) -> None:
    bad = sim.base / "badroot"
    _make_sgx_nodes(bad, major=1)  # device nodes docker accepts but AESM cannot use
    sim.set_root(bad)
    assert sim.run("up", "-d").returncode == 0
    wait_for(lambda: sim.containers()["gramine-sealing-key-provider"]["restart_count"] >= 1,
             what="the provider to give up and restart")
    log = sim.run("logs", "gramine-sealing-key-provider").stdout.splitlines()
    first_run = log[:log.index("gramine-sealing-key-provider  | Error: AESM socket is not available after 30 seconds.") + 1]
    assert first_run == (["gramine-sealing-key-provider  | Waiting for AESM socket to be available..."]
                         + [f"gramine-sealing-key-provider  | Waiting for AESM socket ({i}/30)..." for i in range(1, 31)]
                         + ["gramine-sealing-key-provider  | Error: AESM socket is not available after 30 seconds."])
    aesmd = wait_for(lambda: (c := sim.containers()["aesmd"])["state"] == "restarting" and c,
                     what="aesmd between restarts")
    assert aesmd["restart_count"] >= 1 and aesmd["exit_code"] == 1
    assert "aesmd  | Starting AESM service...\n" in sim.run("logs", "-n", "1", "aesmd").stdout


def test_03_runs_in_the_foreground_until_stopped(sim: Sim, running_pccs: pccs.PccsServer) -> None:
    proc = sim.popen("run", "--generation", "0.3", generation="0.3")
    try:
        wait_for(sim.ask, what="a key through pccs-proxy")
        time.sleep(0.5)
        assert proc.poll() is None  # run.sh still blocks
        provider = sim.containers()["gramine-sealing-key-provider"]
        assert sim.containers()["pccs-proxy"]["state"] == "running"
        os.kill(provider["pid"], signal.SIGKILL)
        wait_for(lambda: sim.containers()["gramine-sealing-key-provider"]["state"] == "exited",
                 what="the provider to exit")
        time.sleep(0.3)
        assert sim.containers()["gramine-sealing-key-provider"]["restart_count"] == 0  # no restart policy
        assert proc.poll() is None  # pccs-proxy still runs, so compose keeps running
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", sim.kp_port), timeout=2)
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0
    assert out.startswith(ATTACH_03)
    assert "gramine-sealing-key-provider  | Starting Gramine Sealing Key Provider\n" in out
    assert "gramine-sealing-key-provider exited with code 137\n" in out
    assert out.endswith("pccs-proxy exited with code 143\n")
    assert err == (CREATE_03 + "Gracefully stopping... (press Ctrl+C again to force)\n"
                   " Container pccs-proxy  Stopping\n Container pccs-proxy  Stopped\n")
    assert {c["state"] for c in sim.containers().values()} == {"exited"}
    assert _down(sim, "0.3").returncode == 0


def test_03_killing_run_sh_leaves_nothing_running(sim: Sim) -> None:
    proc = sim.popen("run", "--generation", "0.3", generation="0.3")
    try:
        wait_for(lambda: all(c["state"] == "running" for c in sim.containers().values())
                 and len(sim.containers()) == 2, what="both containers")
        pids = [c["pid"] for c in sim.containers().values()]
        proc.kill()
        proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    wait_for(lambda: not any(_alive(pid) for pid in pids), 5, "containers to die with compose")
    assert {c["state"] for c in sim.containers().values()} == {"exited"}


# (name, generation, docker script or None, device setup, cwd, rc, stdout, stderr)
REFUSALS = [
    ("03-no-docker", "0.3", None, "ok", "project", 127, "", "./run.sh: 2: docker: not found\n"),
    ("055-no-docker", "0.5.5", None, "ok", "project", 0, START_055 + BANNER_055,
     "./run.sh: line 8: docker: command not found\n"),
    ("03-no-daemon", "0.3", f'echo "{DAEMON_ERROR}" >&2\nexit 1\n', "ok", "project", 1, "", DAEMON_ERROR + "\n"),
    ("055-no-daemon", "0.5.5", f'echo "{DAEMON_ERROR}" >&2\nexit 1\n', "ok", "project", 0,
     START_055 + BANNER_055, DAEMON_ERROR + "\n"),
    ("03-no-sgx", "0.3", "exit 0\n", "missing", "project", 1, ATTACH_03, CREATE_03 + NO_DEVICE),
    ("055-no-sgx", "0.5.5", "exit 0\n", "missing", "project", 0, START_055 + BANNER_055,
     CREATE_055 + " Container aesmd  Starting\n" + NO_DEVICE),
    ("03-not-a-device", "0.3", "exit 0\n", "file", "project", 1, ATTACH_03, CREATE_03 + (
        'Error response from daemon: error gathering device information while adding custom device '
        '"/dev/sgx_enclave": not a device node\n')),
    ("03-wrong-directory", "0.3", "exit 0\n", "ok", "sdk", 1, "", "no configuration file provided: not found\n"),
    ("055-wrong-directory", "0.5.5", "exit 0\n", "ok", "sdk", 0, START_055 + BANNER_055,
     "no configuration file provided: not found\n"),
]


@pytest.mark.parametrize(("generation", "docker", "devices", "cwd", "rc", "stdout", "stderr"),
                         [c[1:] for c in REFUSALS], ids=[c[0] for c in REFUSALS])
def test_run_sh_refusals(sim: Sim, generation: str, docker: str | None, devices: str, cwd: str,
                         rc: int, stdout: str, stderr: str) -> None:
    if docker is None:
        (sim.base / "bin" / "docker").unlink()
    else:
        sim.docker(docker)
    root = sim.base / "other-root"
    (root / "dev").mkdir(parents=True)
    if devices == "ok":
        _make_sgx_nodes(root)
    elif devices == "file":
        (root / "dev" / "sgx_enclave").write_text("")
        (root / "dev" / "sgx_provision").write_text("")
    sim.set_root(root)
    where = sim.project(generation) if cwd == "project" else sim.project(generation).parent
    result = sim.run("run", "--generation", generation, cwd=where)
    assert (result.returncode, result.stdout, result.stderr) == (rc, stdout, stderr)
    assert not keyprovider.supervisor_alive(keyprovider.load_state(sim.settings))  # nothing runs


def test_refused_containers_stay_created_until_down(sim: Sim) -> None:
    sim.set_root(sim.base / "empty-root")
    assert sim.run("up", "-d").returncode == 1
    ps = sim.run("ps", "-a").stdout.splitlines()
    assert sorted(tuple(line.split()[-2:]) for line in ps[1:]) == [
        ("Created", "aesmd"), ("Created", "gramine-sealing-key-provider")]
    assert sim.run("ps").stdout.count("\n") == 1  # not running
    down = _down(sim)
    assert down.stderr == (" Container gramine-sealing-key-provider  Removing\n"
                           " Container gramine-sealing-key-provider  Removed\n"
                           " Container aesmd  Removing\n Container aesmd  Removed\n"
                           " Network key-provider-build_default  Removing\n"
                           " Network key-provider-build_default  Removed\n")


@pytest.mark.parametrize(("command", "rc", "stderr"), [
    (("ps",), 1, DAEMON_ERROR + "\n"),
    (("logs",), 1, DAEMON_ERROR + "\n"),
    (("down",), 1, DAEMON_ERROR + "\n"),
    (("up", "-d"), 1, DAEMON_ERROR + "\n"),
])
def test_docker_commands_need_the_daemon(sim: Sim, command: tuple[str, ...], rc: int, stderr: str) -> None:
    sim.docker(f'echo "{DAEMON_ERROR}" >&2\nexit 1\n')
    result = sim.run(*command)
    assert (result.returncode, result.stdout, result.stderr) == (rc, "", stderr)


def test_logs_tail_service_filter_and_unknown_service(sim: Sim, running_pccs: pccs.PccsServer) -> None:
    assert sim.run("up", "-d").returncode == 0
    wait_for(sim.ask, what="a key")
    tail = sim.run("logs", "-n", "2", "--service", "aesmd").stdout
    assert tail == "aesmd  | Starting AESM service...\n"  # aesmd printed one line only
    both = sim.run("logs", "-n", "1").stdout.splitlines()
    assert sorted(line.split(" | ")[0].rstrip() for line in both) == ["aesmd", "gramine-sealing-key-provider"]
    unknown = sim.run("logs", "pccs-proxy")  # a 0.3 service, not in this project
    assert (unknown.returncode, unknown.stderr) == (1, "no such service: pccs-proxy\n")
    raw = (sim.base / "log" / "keyprovider" / "aesmd-json.log").read_text().splitlines()
    record = json.loads(raw[0])
    assert (record["log"], record["stream"]) == ("Starting AESM service...\n", "stdout")
    assert record["time"].endswith("Z")


def test_run_sh_ignores_its_arguments_like_upstream(sim: Sim) -> None:
    (sim.base / "bin" / "docker").unlink()
    result = sim.run("run", "--generation", "0.3", "extra", "--flag", generation="0.3")
    assert (result.returncode, result.stdout, result.stderr) == (127, "", "./run.sh: 2: docker: not found\n")
    named = sim.run("run", "--generation", "0.3", "--script", "/opt/kp/run.sh", generation="0.3")
    assert named.stderr == "/opt/kp/run.sh: 2: docker: not found\n"
