"""Stand-in for dstack's local key provider: ``key-provider-build/run.sh`` and its compose project.

Upstream (dstack-cli.md section 3) the local KMS is a docker compose project in
``meta-dstack-nvidia/dstack/key-provider-build``:

* generation **0.3** (Dstack-TEE/dstack b5588fc): ``run.sh`` is ``#!/bin/sh`` +
  ``docker compose up --build``.  It runs in the foreground, prints the containers' output
  with compose's ``<name> | `` prefixes and blocks; services ``gramine-sealing-key-provider``
  (aesm inside the same container, publishes 127.0.0.1:3443) and ``pccs-proxy`` (socat
  172.17.0.1:8082 -> 127.0.0.1:8081); no restart policy.
* generation **0.5.5** (7bf1843): ``run.sh`` is ``#!/bin/bash`` without ``set -e``: it echoes a
  banner around ``docker compose up --build -d`` and returns at once (exit 0 even when compose
  failed).  Services ``aesmd`` and ``gramine-sealing-key-provider`` with ``restart: always``;
  the provider waits up to 30 s for ``/var/run/aesmd/aesm.socket``.

Nothing here has Docker, so this module plays docker compose and the docker engine:

* ``docker info`` (whatever ``docker`` is on PATH) must succeed first, else the docker CLI's
  error text and exit status are reproduced;
* ``docker compose`` looks for its compose file in the working directory and its parents
  (``no configuration file provided: not found`` otherwise), so ``run.sh`` must be started
  from ``key-provider-build/`` exactly as upstream requires;
* the SGX devices are looked up under the fixture root of the active host state; a missing one
  fails container start with the engine's real error text;
* each container is a child process of a supervisor that stands in for dockerd; its output is
  kept in docker json-file format under ``$ZEROG_SIM_LOG_DIR/keyprovider/`` (default
  ``/var/log/zerog-sim``); the supervisor holds the published port 127.0.0.1:3443 like
  docker-proxy does (a TCP connect succeeds whenever the container runs, even before the
  provider listens) and applies ``restart: always`` with docker's backoff (0.1 s doubling,
  capped at 60 s, reset after 10 s of uptime);
* 0.3 runs the supervisor in the foreground (the caller blocks); 0.5.5 double-forks it into
  the background (setsid, no terminal, its own log ``dockerd.log``);
* pid and state files live in ``$ZEROG_SIM_RUN_DIR/keyprovider/`` (default ``/run/zerog-sim``).

The provider process answers the real wire protocol (``zerog_sim.framing``) with the
behaviour of gramine-sealing-key-provider: one request per connection, a u32 big-endian length
with no upper bound checked (a length of 256 MiB or more cannot be allocated inside the
enclave, so the process aborts: that is what an HTTP or TLS client such as ``curl`` does to it),
no read timeout, and on any error a log line and a closed connection without a reply.  A quote
is answered only when AESM is up and the PCCS on 127.0.0.1:8081 answers (the provider's own SGX
quote needs the PCK certificate from it).

Commands (``python3 -m zerog_sim.keyprovider ...``):

``run --generation {0.3,0.5.5} [--script PATH]``
    the whole upstream ``run.sh`` of that generation (``key-provider-build/run.sh`` execs it;
    pass ``--script "$0"`` so shell error messages name the script as the shell would).
``up [-d] [--generation G]``            ``docker compose up --build [-d]``
``down``                                ``docker compose down``
``ps [-a] [--json]``                    ``docker ps`` (``--json``: one object per container,
                                        with the pid of its main process)
``logs [-n N] [-f] [--service S] [SERVICE...]``   ``docker compose logs``

Timing knobs for tests (environment): ``ZEROG_SIM_KP_PORT`` (published port, 3443),
``ZEROG_SIM_PCCS_PORT`` (8081), ``ZEROG_SIM_AESM_WAIT`` (seconds the provider waits for the AESM
socket, 30; the messages keep upstream's literal "30"), ``ZEROG_SIM_KP_ENCLAVE_DELAY`` (seconds
the enclave takes to start, 2), ``ZEROG_SIM_STOP_TIMEOUT`` (docker stop timeout, 10).
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as _dt
import fcntl
import hashlib
import hmac
import http.client
import json
import os
import re
import secrets
import shutil
import signal
import socket
import socketserver
import ssl
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from zerog_sim import framing

GENERATIONS = ("0.3", "0.5.5")
PROVIDER = "gramine-sealing-key-provider"
AESMD = "aesmd"
PCCS_PROXY = "pccs-proxy"

DEFAULT_RUN_DIR = "/run/zerog-sim"
DEFAULT_LOG_DIR = "/var/log/zerog-sim"
KP_PORT = 3443
PCCS_PORT = 8081
AESM_WAIT = 30.0
ENCLAVE_DELAY = 2.0
STOP_TIMEOUT = 10.0

#: Lengths from here on cannot be allocated inside the provider's enclave (Gramine's default
#: ``sgx.enclave_size`` is 256M and the manifest sets none): ``vec![0u8; len]`` aborts.
ALLOC_LIMIT = 256 * 1024 * 1024
#: Line of ``docker compose up --build -d`` in upstream's 0.5.5 run.sh (after the SPDX header).
RUN_SH_055_DOCKER_LINE = 8
#: Line of ``$(GRAMINE) gramine-sealing-key-provider`` in the provider's Makefile.
MAKEFILE_RUN_LINE = 66

COMPOSE_FILE_NAMES = ("compose.yaml", "compose.yml", "docker-compose.yml", "docker-compose.yaml")
DOCKER_DAEMON_ERROR = "Cannot connect to the Docker daemon at unix:///var/run/docker.sock. Is the docker daemon running?"
NO_COMPOSE_FILE = "no configuration file provided: not found"
SGX_DEVICES = ("/dev/sgx_enclave", "/dev/sgx_provision")
SGX_MAJOR = 10

RUN_SH_055_BANNER = (
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
RUN_SH_055_START = "Starting all SGX services using docker-compose...\n"

_KIT_DIR = str(Path(__file__).resolve().parent.parent)


# --------------------------------------------------------------------------------------------
# configuration
# --------------------------------------------------------------------------------------------


def _env_float(name: str, default: float) -> float:
    value = os.environ.get(name)
    return float(value) if value else default


def _env_int(name: str, default: int) -> int:
    value = os.environ.get(name)
    return int(value) if value else default


@dataclass(frozen=True)
class Settings:
    """Where the stand-in keeps its files, and the knobs tests may turn."""

    run_dir: Path
    log_dir: Path
    kp_port: int = KP_PORT
    pccs_port: int = PCCS_PORT
    aesm_wait: float = AESM_WAIT
    enclave_delay: float = ENCLAVE_DELAY
    stop_timeout: float = STOP_TIMEOUT

    @classmethod
    def from_env(cls) -> Settings:
        """Read the settings from ``ZEROG_SIM_*`` environment variables."""
        return cls(
            run_dir=Path(os.environ.get("ZEROG_SIM_RUN_DIR") or DEFAULT_RUN_DIR) / "keyprovider",
            log_dir=Path(os.environ.get("ZEROG_SIM_LOG_DIR") or DEFAULT_LOG_DIR) / "keyprovider",
            kp_port=_env_int("ZEROG_SIM_KP_PORT", KP_PORT),
            pccs_port=_env_int("ZEROG_SIM_PCCS_PORT", PCCS_PORT),
            aesm_wait=_env_float("ZEROG_SIM_AESM_WAIT", AESM_WAIT),
            enclave_delay=_env_float("ZEROG_SIM_KP_ENCLAVE_DELAY", ENCLAVE_DELAY),
            stop_timeout=_env_float("ZEROG_SIM_STOP_TIMEOUT", STOP_TIMEOUT),
        )

    @property
    def state_file(self) -> Path:
        """The containers' state (stand-in for dockerd's own state)."""
        return self.run_dir / "state.json"

    @property
    def lock_file(self) -> Path:
        """Serialises up/down."""
        return self.run_dir / "lock"

    def log_file(self, container: str) -> Path:
        """The docker json-file log of ``container``."""
        return self.log_dir / f"{container}-json.log"

    @property
    def daemon_log(self) -> Path:
        """Output of the detached supervisor itself."""
        return self.log_dir / "dockerd.log"

    def volume_dir(self, project: str) -> Path:
        """The ``aesmd`` named volume (holds ``aesm.socket``)."""
        return self.run_dir / "volumes" / f"{project}_aesmd"


def _active_state() -> dict[str, Any]:
    try:
        from zerog_sim import state as sim_state
    except ImportError:  # pragma: no cover - the state module ships with the kit
        return {}
    try:
        return sim_state.load_active()
    except sim_state.StateError:
        return {}


def fixture_root() -> str:
    """The fixture tree of the simulated host ("/" when no active state exists)."""
    return str(_active_state().get("root") or "/")


def profile_name() -> str:
    """The active host profile name (names the simulated platform's identity)."""
    return str(_active_state().get("profile") or "default")


# --------------------------------------------------------------------------------------------
# quotes, keys and the sealed reply (simulated cryptography)
# --------------------------------------------------------------------------------------------

QUOTE_HEADER_LEN = 48
TD_REPORT_LEN = 584
SGX_REPORT_LEN = 384
TEE_TDX = 0x81
TEE_SGX = 0x00
_HEADER = struct.Struct("<HHIHH16s20s")
#: Offsets inside a TD 1.0 report body.
_TD_MR_TD = 136
_TD_RTMR0 = 328
_TD_REPORT_DATA = 520
#: Offsets inside an SGX report body.
_SGX_MR_ENCLAVE = 64
_SGX_MR_SIGNER = 128
_SGX_REPORT_DATA = 320

SIM_MR_ENCLAVE = hashlib.sha256(b"zerog-sim/gramine-sealing-key-provider/mrenclave").digest()
SIM_MR_SIGNER = hashlib.sha256(b"zerog-sim/gramine-sealing-key-provider/mrsigner").digest()
SEALED_BOX_OVERHEAD = 48  # ephemeral public key (32) + MAC (16), as a libsodium sealed box


def platform_qe_id(profile: str | None = None) -> bytes:
    """The 16-byte QE ID of the simulated platform (quote header user_data[:16], the "PPID")."""
    name = profile if profile is not None else profile_name()
    return hashlib.sha256(b"zerog-sim/qe-id/" + name.encode()).digest()[:16]


def sealing_key(profile: str | None = None) -> bytes:
    """The provider enclave's SGX sealing key on the simulated platform (MRENCLAVE policy)."""
    name = profile if profile is not None else profile_name()
    return hashlib.sha256(b"zerog-sim/sgx-sealing-key/" + name.encode() + SIM_MR_ENCLAVE).digest()


def derive_key(measurements: bytes, profile: str | None = None) -> bytes:
    """The key the provider derives for a TD: HMAC-SHA256(sealing key, MRTD || RTMR0..3)."""
    return hmac.new(sealing_key(profile), measurements, hashlib.sha256).digest()


def td_measurements(quote: bytes) -> bytes:
    """MRTD followed by RTMR0..RTMR3 (240 bytes) of a TDX quote."""
    body = quote[QUOTE_HEADER_LEN : QUOTE_HEADER_LEN + TD_REPORT_LEN]
    return body[_TD_MR_TD : _TD_MR_TD + 48] + body[_TD_RTMR0 : _TD_RTMR0 + 4 * 48]


def _pad(value: bytes, size: int) -> bytes:
    if len(value) > size:
        raise ValueError(f"value of {len(value)} bytes does not fit in {size}")
    return value + b"\0" * (size - len(value))


def _signature(data: bytes) -> bytes:
    return hmac.new(b"zerog-sim/qe-attestation-key", data, hashlib.sha512).digest()


def make_tdx_quote(report_data: bytes, mr_td: bytes = b"", rtmrs: tuple[bytes, ...] = (), qe_id: bytes | None = None) -> bytes:
    """Build a well-formed simulated TDX (v4) quote.

    ``report_data`` (up to 64 bytes) carries the TD's public key in its first 32 bytes;
    ``mr_td`` and ``rtmrs`` (up to four, 48 bytes each) are the measurements the key is derived
    from; ``qe_id`` defaults to the simulated platform's, so the PPID check passes.
    """
    user_data = _pad(qe_id if qe_id is not None else platform_qe_id(), 20)
    header = _HEADER.pack(4, 2, TEE_TDX, 0, 0, b"\x93\x9a\x72\x33\xf7\x9c\x4c\xa9\x94\x0a\x0d\xb3\x95\x7f\x06\x07", user_data)
    body = bytearray(TD_REPORT_LEN)
    body[_TD_MR_TD : _TD_MR_TD + 48] = _pad(mr_td, 48)
    for index in range(4):
        value = rtmrs[index] if index < len(rtmrs) else b""
        start = _TD_RTMR0 + 48 * index
        body[start : start + 48] = _pad(value, 48)
    body[_TD_REPORT_DATA : _TD_REPORT_DATA + 64] = _pad(report_data, 64)
    signed = header + bytes(body)
    signature = _signature(signed)
    return signed + struct.pack("<I", len(signature)) + signature


def make_sgx_quote(report_data: bytes, qe_id: bytes | None = None) -> bytes:
    """Build the provider enclave's simulated SGX (v3) quote over ``report_data``."""
    user_data = _pad(qe_id if qe_id is not None else platform_qe_id(), 20)
    header = _HEADER.pack(3, 2, TEE_SGX, 0, 0, b"\x93\x9a\x72\x33\xf7\x9c\x4c\xa9\x94\x0a\x0d\xb3\x95\x7f\x06\x07", user_data)
    body = bytearray(SGX_REPORT_LEN)
    body[_SGX_MR_ENCLAVE : _SGX_MR_ENCLAVE + 32] = SIM_MR_ENCLAVE
    body[_SGX_MR_SIGNER : _SGX_MR_SIGNER + 32] = SIM_MR_SIGNER
    body[_SGX_REPORT_DATA : _SGX_REPORT_DATA + 64] = _pad(report_data, 64)
    signed = header + bytes(body)
    signature = _signature(signed)
    return signed + struct.pack("<I", len(signature)) + signature


@dataclass(frozen=True)
class Quote:
    """The parts of a quote the provider looks at."""

    version: int
    tee_type: int
    user_data: bytes
    body: bytes

    @property
    def is_tdx(self) -> bool:
        """True for a TD report (TDX quote)."""
        return self.tee_type == TEE_TDX

    @property
    def report_data(self) -> bytes:
        """The 64-byte report data."""
        offset = _TD_REPORT_DATA if self.is_tdx else _SGX_REPORT_DATA
        return self.body[offset : offset + 64]


def parse_quote(data: bytes) -> Quote | None:
    """Parse and check a simulated quote; None when DCAP verification would reject it."""
    if len(data) < QUOTE_HEADER_LEN:
        return None
    version, key_type, tee_type, _qe_svn, _pce_svn, _vendor, user_data = _HEADER.unpack_from(data)
    if version not in (3, 4) or key_type not in (2, 3):
        return None
    if tee_type == TEE_TDX and version == 4:
        body_len = TD_REPORT_LEN
    elif tee_type == TEE_SGX:
        body_len = SGX_REPORT_LEN
    else:
        return None
    end = QUOTE_HEADER_LEN + body_len
    if len(data) < end + 4:
        return None
    (sig_len,) = struct.unpack_from("<I", data, end)
    if sig_len == 0 or len(data) != end + 4 + sig_len:
        return None
    if data[end + 4 :] != _signature(data[:end]):
        return None
    return Quote(version, tee_type, user_data, data[QUOTE_HEADER_LEN:end])


def _box_stream(ephemeral: bytes, public_key: bytes) -> bytes:
    return hashlib.sha256(b"zerog-sim/sealed-box/" + ephemeral + public_key).digest()


def seal_box(message: bytes, public_key: bytes) -> bytes:
    """Simulated libsodium sealed box: ephemeral key (32) || MAC (16) || ciphertext.

    Randomised like the real one (a fresh ephemeral key per call), so two replies for the same
    TD differ while ``open_sealed_box`` gives the same key.  Not cryptography: the "private
    key" needed to open it is the public key itself.
    """
    if len(message) > 32:
        raise ValueError("the simulated sealed box carries at most 32 bytes")
    ephemeral = secrets.token_bytes(32)
    stream = _box_stream(ephemeral, public_key)
    cipher = bytes(a ^ b for a, b in zip(message, stream[: len(message)], strict=True))
    mac = hmac.new(stream, ephemeral + cipher, hashlib.sha256).digest()[:16]
    return ephemeral + mac + cipher


def open_sealed_box(blob: bytes, public_key: bytes) -> bytes:
    """Open a simulated sealed box made for ``public_key``; ValueError when it does not match."""
    if len(blob) < SEALED_BOX_OVERHEAD:
        raise ValueError("sealed box too short")
    ephemeral, mac, cipher = blob[:32], blob[32:48], blob[48:]
    stream = _box_stream(ephemeral, public_key)
    expected = hmac.new(stream, ephemeral + cipher, hashlib.sha256).digest()[:16]
    if not hmac.compare_digest(mac, expected):
        raise ValueError("sealed box does not open with this key")
    if len(cipher) > len(stream):
        raise ValueError("sealed box too long")
    return bytes(a ^ b for a, b in zip(cipher, stream[: len(cipher)], strict=True))


def request_key(
    quote: bytes, host: str = "127.0.0.1", port: int = KP_PORT, timeout: float | None = framing.DEFAULT_TIMEOUT
) -> tuple[bytes, bytes]:
    """Ask a key provider for a key: return ``(encrypted_key, provider_quote)``.

    Raises ``framing.ConnectionClosed`` when the provider closes the connection without a
    reply (its answer to every error) and ``OSError`` when nothing listens.
    """
    reply = framing.request(host, port, {"quote": list(quote)}, timeout=timeout)
    return bytes(reply["encrypted_key"]), bytes(reply["provider_quote"])


# --------------------------------------------------------------------------------------------
# the compose project
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Service:
    """One service of the key-provider compose project, as ``docker ps`` shows its container."""

    name: str
    image: str
    command: str
    ports: str
    devices: tuple[str, ...]
    #: The main process is ``/bin/sh`` as PID 1, which ignores SIGTERM: docker stop has to
    #: wait for its timeout and SIGKILL it (exit code 137).
    sh_pid1: bool
    publishes: bool


def compose_services(generation: str, project: str) -> list[Service]:
    """The services of ``generation`` in start (dependency) order."""
    provider = Service(
        PROVIDER, f"{project}-{PROVIDER}", "/entrypoint.sh", f"127.0.0.1:{KP_PORT}->{KP_PORT}/tcp", SGX_DEVICES, True, True
    )
    if generation == "0.3":
        proxy = Service(
            PCCS_PROXY,
            "alpine/socat",
            "socat TCP-LISTEN:8082,bind=172.17.0.1,fork,reuseaddr TCP:127.0.0.1:8081",
            "",
            (),
            False,
            False,
        )
        return [provider, proxy]
    aesmd = Service(AESMD, f"{project}-{AESMD}", "/entrypoint.sh", "", SGX_DEVICES, True, False)
    return [aesmd, provider]


def stop_groups(generation: str) -> list[list[str]]:
    """Containers compose stops together, in order (dependents first)."""
    if generation == "0.3":
        return [[PROVIDER, PCCS_PROXY]]
    return [[PROVIDER], [AESMD]]


def find_compose_file(start: Path) -> Path | None:
    """The compose file docker compose would use from ``start`` (searching parents too)."""
    current = start.resolve()
    while True:
        for name in COMPOSE_FILE_NAMES:
            candidate = current / name
            if candidate.is_file():
                return candidate
        if current.parent == current:
            return None
        current = current.parent


def project_name(project_dir: Path) -> str:
    """Compose's project name: the directory name, lower-cased, limited to [a-z0-9_-]."""
    name = re.sub(r"[^a-z0-9_-]", "", project_dir.name.lower())
    return name.lstrip("_-") or "default"


def detect_generation(compose_file: Path) -> str:
    """0.5.5 when the compose file defines the ``aesmd`` service, else 0.3."""
    text = compose_file.read_text(encoding="utf-8", errors="replace")
    return "0.5.5" if re.search(r"^\s{2}aesmd:\s*$", text, re.MULTILINE) else "0.3"


# --------------------------------------------------------------------------------------------
# state (stand-in for dockerd's container database)
# --------------------------------------------------------------------------------------------


def _now() -> float:
    return time.time()


def _proc_start_time(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    if fields[0] == "Z":
        return None
    return fields[19]


def process_alive(pid: int | None, start_time: str | None = None) -> bool:
    """True when ``pid`` runs (not a zombie) and, if given, started at ``start_time``."""
    if not pid:
        return False
    current = _proc_start_time(pid)
    if current is None:
        return False
    return start_time is None or current == start_time


def load_state(settings: Settings) -> dict[str, Any] | None:
    """The saved project state, or None."""
    try:
        return json.loads(settings.state_file.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def save_state(settings: Settings, state: dict[str, Any]) -> None:
    """Write the project state atomically."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    tmp = settings.state_file.with_name(f".state.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, settings.state_file)


def supervisor_alive(state: dict[str, Any] | None) -> bool:
    """True when the supervisor (dockerd stand-in) recorded in ``state`` still runs."""
    if not state:
        return False
    return process_alive(state.get("supervisor_pid"), state.get("supervisor_start"))


@contextlib.contextmanager
def project_lock(settings: Settings) -> Iterator[None]:
    """Hold the project lock (one up/down at a time)."""
    settings.run_dir.mkdir(parents=True, exist_ok=True)
    with open(settings.lock_file, "a+", encoding="utf-8") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def displayed_containers(state: dict[str, Any] | None) -> list[dict[str, Any]]:
    """The containers of ``state`` as they are now (running ones of a dead supervisor died)."""
    if not state:
        return []
    alive = supervisor_alive(state)
    result = []
    for entry in state.get("containers", {}).values():
        item = dict(entry)
        if not alive and item["state"] in ("running", "restarting"):
            item.update(
                state="exited", exit_code=137, pid=None, finished_at=item.get("finished_at") or state.get("updated_at") or _now()
            )
        result.append(item)
    return result


# --------------------------------------------------------------------------------------------
# docker CLI behaviour
# --------------------------------------------------------------------------------------------


def docker_path() -> str | None:
    """The ``docker`` executable on PATH, if any."""
    return shutil.which("docker")


def docker_info_error() -> str | None:
    """Run ``docker info``; return the error text to print when the daemon is unusable."""
    exe = docker_path()
    if exe is None:
        return "docker: command not found"
    try:
        result = subprocess.run([exe, "info"], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{DOCKER_DAEMON_ERROR} ({exc})"
    if result.returncode == 0:
        return None
    return result.stderr.strip() or DOCKER_DAEMON_ERROR


def check_docker(err: IO[str]) -> int | None:
    """Print docker's error and return its exit status when docker is unusable, else None."""
    if docker_path() is None:
        _write(err, "docker: command not found\n")
        return 127
    problem = docker_info_error()
    if problem is not None:
        _write(err, problem + "\n")
        return 1
    return None


def device_error(root: str) -> str | None:
    """The engine's error when a container's SGX devices cannot be added, else None."""
    for device in SGX_DEVICES:
        path = os.path.join(root, device.lstrip("/"))
        try:
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            reason = "no such file or directory"
        except OSError as exc:
            reason = (exc.strerror or str(exc)).lower()
        else:
            if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                continue
            reason = "not a device node"
        return f'Error response from daemon: error gathering device information while adding custom device "{device}": {reason}'
    return None


def sgx_devices_usable(root: str) -> bool:
    """True when both SGX nodes are character devices with major 10 (what AESM can open)."""
    for device in SGX_DEVICES:
        try:
            info = os.stat(os.path.join(root, device.lstrip("/")))
        except OSError:
            return False
        if not stat.S_ISCHR(info.st_mode) or os.major(info.st_rdev) != SGX_MAJOR:
            return False
    return True


def human_duration(seconds: float) -> str:
    """docker's (go-units) HumanDuration."""
    whole = int(seconds)
    if whole < 1:
        return "Less than a second"
    if whole == 1:
        return "1 second"
    if whole < 60:
        return f"{whole} seconds"
    minutes = int(seconds / 60)
    if minutes == 1:
        return "About a minute"
    if minutes < 60:
        return f"{minutes} minutes"
    hours = int(seconds / 3600 + 0.5)
    if hours == 1:
        return "About an hour"
    if hours < 48:
        return f"{hours} hours"
    if hours < 24 * 7 * 2:
        return f"{hours // 24} days"
    if hours < 24 * 30 * 2:
        return f"{hours // 24 // 7} weeks"
    if hours < 24 * 365 * 2:
        return f"{hours // 24 // 30} months"
    return f"{int(seconds / 3600) // 24 // 365} years"


def container_status(entry: dict[str, Any], now: float) -> str:
    """The STATUS column of ``docker ps`` for one container."""
    state = entry["state"]
    if state == "running":
        return f"Up {human_duration(now - entry['started_at'])}"
    if state == "restarting":
        return f"Restarting ({entry['exit_code']}) {human_duration(now - entry['finished_at'])} ago"
    if state == "exited":
        return f"Exited ({entry['exit_code']}) {human_duration(now - entry['finished_at'])} ago"
    return "Created"


def _ellipsis(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "\u2026"


def format_ps(entries: list[dict[str, Any]], now: float) -> str:
    """``docker ps`` table (tabwriter: minimum width 10, padding 3)."""
    header = ["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"]
    rows = [header]
    for entry in sorted(entries, key=lambda item: item["created_at"], reverse=True):
        ports = entry["ports"] if entry["state"] == "running" else ""
        rows.append(
            [
                entry["id"][:12],
                entry["image"],
                '"' + _ellipsis(entry["command"], 20) + '"',
                f"{human_duration(now - entry['created_at'])} ago",
                container_status(entry, now),
                ports,
                entry["name"],
            ]
        )
    widths = [max(10, max(len(row[i]) for row in rows) + 3) for i in range(len(header) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(widths[i]) for i, cell in enumerate(row[:-1])]
        lines.append("".join(cells) + row[-1])
    return "\n".join(lines) + "\n"


def _write(stream: IO[str], text: str) -> None:
    stream.write(text)
    stream.flush()


def _progress(err: IO[str], kind: str, name: str, status: str) -> None:
    # compose's "plain" progress output (what it prints when stderr is not a terminal).
    _write(err, f" {kind} {name}  {status}\n")


# --------------------------------------------------------------------------------------------
# container processes (what runs "inside" each container)
# --------------------------------------------------------------------------------------------


def _rust_log(level: str, target: str, message: str) -> None:
    stamp = _dt.datetime.now(_dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    sys.stderr.write(f"[{stamp} {level:<5} {target}] {message}\n")
    sys.stderr.flush()


def _say(text: str) -> None:
    sys.stdout.write(text + "\n")
    sys.stdout.flush()


def _die_with_parent(parent: int) -> None:
    """Ask the kernel to SIGKILL this process when its supervisor dies (no orphans)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
    if os.getppid() != parent:
        os._exit(137)


class ProviderError(Exception):
    """An error of the provider's request handling (Display text of upstream's enum)."""


def _io_error(exc: OSError) -> str:
    if exc.errno and exc.strerror:
        return f"{exc.strerror} (os error {exc.errno})"
    return str(exc) or "early eof"


def _serde_error(body: bytes) -> tuple[list[int] | None, str | None]:
    """Decode ``{"quote": [u8...]}`` like serde_json; return (quote, error text)."""
    text = body.decode("utf-8", errors="replace")
    if not text.strip():
        return None, f"EOF while parsing a value at line 1 column {len(text)}"
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        message = {"Expecting value": "expected value", "Extra data": "trailing characters"}.get(
            exc.msg, exc.msg[0].lower() + exc.msg[1:]
        )
        return None, f"{message} at line {exc.lineno} column {exc.colno}"
    column = len(text.rstrip())
    if not isinstance(value, dict):
        kind = type(value).__name__
        return None, f"invalid type: {kind}, expected struct QuoteRequest at line 1 column {column}"
    if "quote" not in value:
        return None, f"missing field `quote` at line 1 column {column}"
    quote = value["quote"]
    if not isinstance(quote, list):
        return None, f"invalid type: {type(quote).__name__}, expected a sequence at line 1 column {column}"
    for item in quote:
        if isinstance(item, bool) or not isinstance(item, int):
            return None, f"invalid type: {type(item).__name__}, expected u8 at line 1 column {column}"
        if not 0 <= item <= 255:
            return None, f"invalid value: integer `{item}`, expected u8 at line 1 column {column}"
    return quote, None


class ProviderRuntime:
    """The gramine-sealing-key-provider process of the simulated container."""

    target = "gramine_sealing_key_provider"

    def __init__(self, generation: str, root: str, aesm_socket: str | None, pccs: tuple[str, int]) -> None:
        self.generation = generation
        self.root = root
        self.aesm_socket = aesm_socket
        self.pccs = pccs
        self.qe_id = platform_qe_id()
        self.profile = profile_name()

    # -- the enclave's platform services -------------------------------------------------
    def _aesm_up(self) -> bool:
        if self.aesm_socket is None:  # 0.3: aesm_service runs inside this container
            return sgx_devices_usable(self.root)
        with contextlib.suppress(OSError), socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(2)
            sock.connect(self.aesm_socket)
            return True
        return False

    def _pccs_answers(self) -> bool:
        host, port = self.pccs
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE  # sgx_default_qcnl.conf: "use_secure_cert": false
        conn = http.client.HTTPSConnection(host, port, timeout=5, context=context)
        query = f"cpusvn={'00' * 16}&pcesvn=0e00&pceid=0000&qeid={self.qe_id.hex()}"
        try:
            conn.request("GET", f"/sgx/certification/v4/pckcert?{query}")
            return conn.getresponse().status == 200
        except (OSError, http.client.HTTPException):
            return False
        finally:
            conn.close()

    def provider_quote(self, report_data: bytes) -> bytes:
        """Read /dev/attestation/quote: needs AESM and the PCK certificate from the PCCS."""
        if not (self._aesm_up() and self._pccs_answers()):
            error = PermissionError(13, "Permission denied")
            _rust_log("ERROR", f"{self.target}::gramine::interface", f"Failed to read quote: {_io_error(error)}")
            raise ProviderError(f"IO error: {_io_error(error)}")
        return make_sgx_quote(report_data, self.qe_id)

    # -- one request ---------------------------------------------------------------------
    def process(self, quote_bytes: bytes) -> dict[str, list[int]]:
        """``process_quotes`` of upstream, against the simulated platform."""
        handler = f"{self.target}::quote::handler"
        _rust_log("INFO", handler, "Starting quote processing")
        tdx = parse_quote(quote_bytes)
        if tdx is None:
            raise ProviderError("Quote verification failed")
        _rust_log("INFO", handler, "Quote verified successfully")
        _rust_log("INFO", handler, "Getting initial provider quote for PPID verification")
        own = parse_quote(self.provider_quote(b""))
        assert own is not None
        _rust_log("INFO", handler, "Performing early PPID verification")
        _rust_log("INFO", handler, "Performing PPID verification")
        if own.user_data[:16] != tdx.user_data[:16]:
            _rust_log("ERROR", handler, "PPID mismatch between SGX and TDX quotes")
            _rust_log("ERROR", handler, f"SGX PPID: {own.user_data[:16].hex()}")
            _rust_log("ERROR", handler, f"TDX PPID: {tdx.user_data[:16].hex()}")
            raise ProviderError("PPID mismatch")
        _rust_log("INFO", handler, "PPID match confirmed, proceeding with key derivation")
        if not tdx.is_tdx:
            _rust_log("ERROR", handler, "Invalid report type for measurements")
            raise ProviderError("Quote parsing error: Not a TDX quote")
        key = derive_key(td_measurements(quote_bytes), self.profile)
        encrypted = seal_box(key, tdx.report_data[:32])
        digest = hashlib.sha256(encrypted).digest()
        final = self.provider_quote(digest + b"\0" * 32)
        _rust_log("INFO", handler, "Successfully processed quote and generated response")
        return {"encrypted_key": list(encrypted), "provider_quote": list(final)}

    def handle(self, sock: socket.socket, peer: str) -> None:
        """``handle_connection``: one framed request, one framed reply, errors close."""
        server = f"{self.target}::server"
        _rust_log("INFO", server, f"New connection from: {peer}")
        try:
            try:
                header = framing.read_exact(sock, framing.HEADER_LEN)
            except (framing.ConnectionClosed, OSError) as exc:
                reason = "early eof" if isinstance(exc, framing.ConnectionClosed) else _io_error(exc)
                raise ProviderError(f"Network error: Failed to read request length: {reason}") from None
            length = framing.decode_header(header)
            if length >= ALLOC_LIMIT:
                # vec![0u8; len] cannot be allocated in the enclave: Rust aborts the process.
                sys.stderr.write(f"memory allocation of {length} bytes failed\n")
                sys.stderr.write(f"make: *** [Makefile:{MAKEFILE_RUN_LINE}: run-provider] Error 134\n")
                sys.stderr.flush()
                os._exit(2)
            try:
                body = framing.read_exact(sock, length)
            except (framing.ConnectionClosed, OSError) as exc:
                reason = "early eof" if isinstance(exc, framing.ConnectionClosed) else _io_error(exc)
                raise ProviderError(f"Network error: Failed to read request: {reason}") from None
            quote, problem = _serde_error(body)
            if problem is not None or quote is None:
                raise ProviderError(f"Serialization error: {problem}")
            reply = self.process(bytes(quote))
            try:
                sock.sendall(framing.encode_frame(reply))
            except OSError as exc:
                raise ProviderError(f"Network error: Failed to send response: {_io_error(exc)}") from None
        except ProviderError as exc:
            _rust_log("ERROR", server, f"Connection error from {peer}: {exc}")

    def serve(self, port: int) -> None:
        """Listen on the container-side port and serve forever."""
        runtime = self

        class Handler(socketserver.BaseRequestHandler):
            def handle(self) -> None:
                host, peer_port = self.client_address[:2]
                runtime.handle(self.request, f"{host}:{peer_port}")

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        with Server(("127.0.0.1", port), Handler) as server:
            _rust_log("INFO", f"{self.target}::server", f"Listening on 0.0.0.0:{KP_PORT}")
            server.serve_forever()


def _sigstruct_json() -> str:
    return json.dumps(
        {
            "attributes": {"flags": "0400000000000000", "xfrm": "e700000000000000"},
            "debug": False,
            "isv_prod_id": 0,
            "isv_svn": 0,
            "misc_select": "00000000",
            "mr_enclave": SIM_MR_ENCLAVE.hex(),
            "mr_signer": SIM_MR_SIGNER.hex(),
        },
        indent=2,
    )


def _say_err(text: str) -> None:
    # Give the supervisor a moment to drain stdout first, so the two pipes interleave in the
    # order the lines were written (docker has the same two-stream race).
    time.sleep(0.02)
    sys.stderr.write(text + "\n")
    sys.stderr.flush()


def _make_chatter() -> None:
    _say("Build Configuration:")
    _say("  SGX: 1")
    _say("  Debug: 0")
    _say("  Dev Mode: 0")
    _say("  Cargo Flags: ")
    _say("RUST_LOG=error cargo build --release ")
    _say_err("    Finished `release` profile [optimized] target(s) in 0.21s")
    _say("gramine-sgx gramine-sealing-key-provider")
    _say_err("Gramine is starting. Parsing TOML manifest file, this may take some time...")


def run_provider_container(env: dict[str, str]) -> int:
    """The entrypoint of the ``gramine-sealing-key-provider`` container."""
    generation = env["ZSIM_GENERATION"]
    aesm_socket = env.get("ZSIM_AESM_SOCKET") or None
    if generation == "0.5.5":
        assert aesm_socket is not None
        wait = float(env.get("ZSIM_AESM_WAIT", AESM_WAIT))
        _say("Waiting for AESM socket to be available...")
        for attempt in range(1, 31):
            if _is_socket(aesm_socket):
                _say("AESM socket is available.")
                break
            _say(f"Waiting for AESM socket ({attempt}/30)...")
            time.sleep(wait / 30)
        if not _is_socket(aesm_socket):
            _say("Error: AESM socket is not available after 30 seconds.")
            return 1
        _say("Enclave info:")
        _say(_sigstruct_json())
    else:
        _say('aesm_service: warning: Turn to daemon. Use "--no-daemon" option to execute in foreground.')
    _say("Starting Gramine Sealing Key Provider")
    _make_chatter()
    time.sleep(float(env.get("ZSIM_ENCLAVE_DELAY", ENCLAVE_DELAY)))
    runtime = ProviderRuntime(
        generation, env["ZSIM_ROOT"], aesm_socket, (env.get("ZSIM_PCCS_HOST", "127.0.0.1"), int(env["ZSIM_PCCS_PORT"]))
    )
    _rust_log("INFO", runtime.target, "Starting Gramine Sealing Key Provider")
    _rust_log("INFO", runtime.target, "Running in PRODUCTION mode - full security enabled")
    runtime.serve(int(env["ZSIM_INTERNAL_PORT"]))
    return 0


def _is_socket(path: str) -> bool:
    try:
        return stat.S_ISSOCK(os.stat(path).st_mode)
    except OSError:
        return False


def run_aesmd_container(env: dict[str, str]) -> int:
    """The entrypoint of the ``aesmd`` container (0.5.5)."""
    _say("Starting AESM service...")
    if not sgx_devices_usable(env["ZSIM_ROOT"]):
        return 1  # aesm_service cannot open the SGX devices and exits
    path = env["ZSIM_AESM_SOCKET"]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(16)
    while True:
        conn, _peer = listener.accept()
        conn.close()


def run_pccs_proxy_container(env: dict[str, str]) -> int:
    """The ``pccs-proxy`` container (0.3): socat from the docker bridge to 127.0.0.1:8081."""
    signal.signal(signal.SIGTERM, lambda *_: os._exit(143))
    listen_port = int(env["ZSIM_PROXY_PORT"])
    target = ("127.0.0.1", int(env["ZSIM_PCCS_PORT"]))
    listener = socket.create_server(("127.0.0.1", listen_port), reuse_port=False)
    while True:
        client, _peer = listener.accept()
        threading.Thread(target=_socat_child, args=(client, target), daemon=True).start()


def _socat_child(client: socket.socket, target: tuple[str, int]) -> None:
    try:
        upstream = socket.create_connection(target, timeout=5)
    except OSError as exc:
        stamp = time.strftime("%Y/%m/%d %H:%M:%S")
        reason = exc.strerror or str(exc)
        sys.stderr.write(f"{stamp} socat[{os.getpid()}] E connect(5, AF=2 {target[0]}:{target[1]}, 16): {reason}\n")
        sys.stderr.flush()
        client.close()
        return
    upstream.settimeout(None)
    _pump_pair(client, upstream)


def _pump(src: socket.socket, dst: socket.socket) -> None:
    try:
        while True:
            data = src.recv(65536)
            if not data:
                break
            dst.sendall(data)
    except OSError:
        pass
    with contextlib.suppress(OSError):
        dst.shutdown(socket.SHUT_WR)


def _pump_pair(left: socket.socket, right: socket.socket) -> None:
    other = threading.Thread(target=_pump, args=(right, left), daemon=True)
    other.start()
    _pump(left, right)
    other.join()
    left.close()
    right.close()


def container_main(service: str) -> int:
    """Run the main process of container ``service`` (started by the supervisor)."""
    env = dict(os.environ)
    _die_with_parent(int(env.get("ZSIM_PARENT", "0")))
    spec = next((s for s in compose_services(env["ZSIM_GENERATION"], env["ZSIM_PROJECT"]) if s.name == service), None)
    if spec is None:
        raise SystemExit(f"unknown service {service}")
    if spec.sh_pid1:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)  # /bin/sh as PID 1 ignores SIGTERM
    if service == PROVIDER:
        return run_provider_container(env)
    if service == AESMD:
        return run_aesmd_container(env)
    return run_pccs_proxy_container(env)


# --------------------------------------------------------------------------------------------
# the supervisor (stand-in for dockerd + docker-proxy + the attached compose process)
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _rfc3339_nano(when: float) -> str:
    stamp = _dt.datetime.fromtimestamp(when, _dt.UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{stamp.microsecond:06d}000Z"


class PortProxy:
    """docker-proxy: owns the published host port and forwards to the container's port."""

    def __init__(self, port: int, backend_port: int) -> None:
        self.backend_port = backend_port
        self.listener = socket.socket()
        self.listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.listener.bind(("127.0.0.1", port))
        self.listener.listen(64)
        self.listener.settimeout(0.2)
        self.closed = threading.Event()
        self.thread = threading.Thread(target=self._accept_loop, name="docker-proxy", daemon=True)
        self.thread.start()

    def _accept_loop(self) -> None:
        while not self.closed.is_set():
            try:
                client, _peer = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                break
            client.settimeout(None)
            threading.Thread(target=self._forward, args=(client,), daemon=True).start()

    def _forward(self, client: socket.socket) -> None:
        try:
            backend = socket.create_connection(("127.0.0.1", self.backend_port), timeout=2)
        except OSError:
            client.close()  # container up, nothing listening inside: accept, then close
            return
        backend.settimeout(None)
        _pump_pair(client, backend)

    def close(self) -> None:
        """Release the host port."""
        self.closed.set()
        self.listener.close()
        self.thread.join(timeout=2)


@dataclass
class Container:
    """A container of the project and its current main process."""

    spec: Service
    entry: dict[str, Any]
    proc: subprocess.Popen[bytes] | None = None
    proxy: PortProxy | None = None
    readers: list[threading.Thread] = field(default_factory=list)
    backoff: float = 0.1
    next_start: float | None = None
    stopping: bool = False


def new_container_entry(spec: Service, now: float) -> dict[str, Any]:
    """A freshly created container record."""
    return {
        "id": secrets.token_hex(32),
        "name": spec.name,
        "service": spec.name,
        "image": spec.image,
        "command": spec.command,
        "ports": spec.ports,
        "state": "created",
        "pid": None,
        "exit_code": None,
        "created_at": now,
        "started_at": None,
        "finished_at": None,
        "restart_count": 0,
    }


class Supervisor:
    """Runs the project's containers: output capture, docker-proxy, restart policy, stop."""

    def __init__(
        self, settings: Settings, state: dict[str, Any], attached: bool, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr
    ) -> None:
        self.settings = settings
        self.state = state
        self.generation = state["generation"]
        self.project = state["project"]
        self.attached = attached
        self.out = out
        self.err = err
        self.restart_always = self.generation == "0.5.5"
        self.root = fixture_root()
        self.print_lock = threading.Lock()
        self.log_lock = threading.Lock()
        specs = compose_services(self.generation, self.project)
        self.width = max(len(s.name) for s in specs) + 1
        self.containers = {s.name: Container(s, state["containers"][s.name]) for s in specs}
        self.internal_port = _free_port()
        self.proxy_port = _free_port()
        self.stop_requested = False
        self.force_requested = False
        self.down_requested = False
        settings.log_dir.mkdir(parents=True, exist_ok=True)

    # -- bookkeeping ---------------------------------------------------------------------
    def save(self) -> None:
        """Persist the container records."""
        self.state["updated_at"] = _now()
        save_state(self.settings, self.state)

    def _log(self, container: str, stream: str, line: str) -> None:
        record = json.dumps({"log": line + "\n", "stream": stream, "time": _rfc3339_nano(_now())})
        with self.log_lock, open(self.settings.log_file(container), "a", encoding="utf-8") as fh:
            fh.write(record + "\n")
        if self.attached:
            with self.print_lock:
                _write(self.out, f"{container:<{self.width}} | {line}\n")

    def _reader(self, container: str, stream: str, pipe: IO[bytes]) -> None:
        for raw in iter(pipe.readline, b""):
            self._log(container, stream, raw.decode("utf-8", errors="replace").rstrip("\n"))
        pipe.close()

    def _env(self, spec: Service) -> dict[str, str]:
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (_KIT_DIR, os.environ.get("PYTHONPATH", "")) if p)
        aesm_socket = str(self.settings.volume_dir(self.project) / "aesm.socket")
        pccs_port = self.proxy_port if self.generation == "0.3" else self.settings.pccs_port
        env.update(
            {
                "ZSIM_PARENT": str(os.getpid()),
                "ZSIM_GENERATION": self.generation,
                "ZSIM_PROJECT": self.project,
                "ZSIM_ROOT": self.root,
                "ZSIM_AESM_SOCKET": aesm_socket if self.generation == "0.5.5" else "",
                "ZSIM_AESM_WAIT": str(self.settings.aesm_wait),
                "ZSIM_ENCLAVE_DELAY": str(self.settings.enclave_delay),
                "ZSIM_INTERNAL_PORT": str(self.internal_port),
                "ZSIM_PROXY_PORT": str(self.proxy_port),
                "ZSIM_PCCS_PORT": str(pccs_port if spec.name == PROVIDER else self.settings.pccs_port),
                "PYTHONUNBUFFERED": "1",
            }
        )
        return env

    # -- lifecycle -----------------------------------------------------------------------
    def start(self, name: str) -> str | None:
        """Start container ``name``; return the engine's error text on failure."""
        container = self.containers[name]
        spec = container.spec
        if spec.devices:
            problem = device_error(self.root)
            if problem is not None:
                return problem
        if spec.publishes and container.proxy is None:
            try:
                container.proxy = PortProxy(self.settings.kp_port, self.internal_port)
            except OSError as exc:
                return (
                    "Error response from daemon: driver failed programming external "
                    f"connectivity on endpoint {spec.name} ({container.entry['id']}): "
                    f"failed to bind port 127.0.0.1:{self.settings.kp_port}/tcp: Error "
                    "starting userland proxy: listen tcp4 "
                    f"127.0.0.1:{self.settings.kp_port}: bind: "
                    f"{(exc.strerror or str(exc)).lower()}"
                )
        proc = subprocess.Popen(
            [sys.executable, "-B", "-m", "zerog_sim.keyprovider", "_container", spec.name],
            env=self._env(spec),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        container.proc = proc
        container.readers = [
            threading.Thread(target=self._reader, args=(spec.name, "stdout", proc.stdout), daemon=True),
            threading.Thread(target=self._reader, args=(spec.name, "stderr", proc.stderr), daemon=True),
        ]
        for reader in container.readers:
            reader.start()
        container.next_start = None
        container.entry.update(state="running", pid=proc.pid, started_at=_now(), exit_code=None)
        self.save()
        return None

    def start_all(self, on_event: Any = None) -> tuple[str, str] | None:
        """Start every container in order; return (container, error) at the first failure."""
        for name in self.containers:
            if on_event:
                on_event(name, "Starting")
            problem = self.start(name)
            if problem is not None:
                return name, problem
            if on_event:
                on_event(name, "Started")
        return None

    def _exited(self, container: Container, code: int) -> None:
        entry = container.entry
        for reader in container.readers:
            reader.join(timeout=2)
        container.proc = None
        ran = _now() - (entry["started_at"] or _now())
        entry.update(pid=None, exit_code=code, finished_at=_now())
        if self.attached:
            with self.print_lock:
                _write(self.out, f"{container.spec.name} exited with code {code}\n")
        if container.proxy is not None:  # docker-proxy goes away with the container
            container.proxy.close()
            container.proxy = None
        if self.restart_always and not container.stopping:
            if ran >= 10:
                container.backoff = 0.1
            entry.update(state="restarting", restart_count=entry["restart_count"] + 1)
            container.next_start = _now() + container.backoff
            container.backoff = min(container.backoff * 2, 60.0)
        else:
            entry["state"] = "exited"
        self.save()

    def poll(self) -> None:
        """Reap exited containers and perform due restarts."""
        for container in self.containers.values():
            proc = container.proc
            if proc is not None and proc.poll() is not None:
                code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
                self._exited(container, code)
            if container.next_start is not None and container.next_start <= _now() and not self.stop_requested:
                problem = self.start(container.spec.name)
                if problem is not None:
                    self._log(container.spec.name, "stderr", problem)
                    container.next_start = _now() + container.backoff

    def stop_all(self, announce: bool) -> None:
        """docker stop for every container (dependents first), SIGKILL after the timeout."""
        for group in stop_groups(self.generation):
            members = [self.containers[name] for name in group]
            for container in members:
                container.stopping = True
                container.next_start = None
                if container.proc is not None:
                    if announce:
                        _progress(self.err, "Container", container.spec.name, "Stopping")
                    with contextlib.suppress(ProcessLookupError):
                        container.proc.send_signal(signal.SIGTERM)
            deadline = _now() + self.settings.stop_timeout
            for container in members:
                proc = container.proc
                if proc is None:
                    if container.entry["state"] == "restarting":
                        container.entry["state"] = "exited"
                    continue
                remaining = deadline - _now()
                try:
                    proc.wait(timeout=max(remaining, 0.0) if not self.force_requested else 0.0)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        proc.kill()
                    proc.wait()
                code = proc.returncode if proc.returncode >= 0 else 128 - proc.returncode
                self._exited(container, code)
                if announce:
                    _progress(self.err, "Container", container.spec.name, "Stopped")
        for container in self.containers.values():
            if container.proxy is not None:
                container.proxy.close()
                container.proxy = None
        self.save()

    def install_signals(self) -> None:
        """SIGINT/SIGTERM: graceful stop (twice: force); SIGUSR1: stop for ``down``."""

        def graceful(signum: int, frame: Any) -> None:
            if self.stop_requested:
                self.force_requested = True
                return
            self.stop_requested = True
            if self.attached:
                _write(self.err, "Gracefully stopping... (press Ctrl+C again to force)\n")

        def down(signum: int, frame: Any) -> None:
            self.stop_requested = True
            self.down_requested = True

        signal.signal(signal.SIGINT, graceful)
        signal.signal(signal.SIGTERM, graceful)
        signal.signal(signal.SIGUSR1, down)

    def running(self) -> bool:
        """True while any container runs or waits for a restart."""
        return any(c.proc is not None or c.next_start is not None for c in self.containers.values())

    def loop(self) -> int:
        """Supervise until stopped (or, attached without restarts, until all containers end)."""
        while not self.stop_requested:
            self.poll()
            if self.attached and not self.running():
                return 0
            time.sleep(0.05)
        self.stop_all(announce=self.attached and not self.down_requested)
        return 0

    def register_self(self) -> None:
        """Record this process as the project's supervisor."""
        self.state["supervisor_pid"] = os.getpid()
        self.state["supervisor_start"] = _proc_start_time(os.getpid())
        self.state["attached"] = self.attached
        self.save()


# --------------------------------------------------------------------------------------------
# commands
# --------------------------------------------------------------------------------------------


@dataclass
class Project:
    """The compose project found from the working directory."""

    name: str
    directory: Path
    generation: str


def locate_project(err: IO[str], generation: str | None, directory: str | None = None) -> Project | None:
    """Find the compose file like docker compose; print compose's error when there is none."""
    start = Path(directory) if directory else Path.cwd()
    compose = find_compose_file(start)
    if compose is None:
        _write(err, NO_COMPOSE_FILE + "\n")
        return None
    gen = generation or detect_generation(compose)
    return Project(project_name(compose.parent), compose.parent, gen)


def _fresh_state(project: Project, previous: dict[str, Any] | None) -> dict[str, Any]:
    now = _now()
    containers = {}
    old = (previous or {}).get("containers", {})
    same_generation = previous is not None and previous.get("generation") == project.generation
    for spec in compose_services(project.generation, project.name):
        if same_generation and spec.name in old:
            entry = dict(old[spec.name])
            if entry["state"] in ("running", "restarting"):
                entry.update(state="exited", exit_code=137, pid=None, finished_at=now)
        else:
            entry = new_container_entry(spec, now)
        containers[spec.name] = entry
    return {
        "project": project.name,
        "project_dir": str(project.directory),
        "generation": project.generation,
        "containers": containers,
        "network": True,
        "volume": project.generation == "0.5.5",
        "supervisor_pid": None,
        "supervisor_start": None,
        "attached": False,
        "updated_at": now,
    }


def _announce_creation(
    err: IO[str], project: Project, previous: dict[str, Any] | None, state: dict[str, Any], settings: Settings
) -> None:
    old = (previous or {}).get("containers", {})
    same_generation = previous is not None and previous.get("generation") == project.generation
    if not (previous and previous.get("network")):
        _progress(err, "Network", f"{project.name}_default", "Creating")
        _progress(err, "Network", f"{project.name}_default", "Created")
    volume = settings.volume_dir(project.name)
    if project.generation == "0.5.5" and not volume.is_dir():
        # named volumes outlive "down" (no -v), so only the first "up" creates it
        _progress(err, "Volume", f'"{project.name}_aesmd"', "Creating")
        volume.mkdir(parents=True)
        _progress(err, "Volume", f'"{project.name}_aesmd"', "Created")
    for name in state["containers"]:
        if name in old and not same_generation:
            _progress(err, "Container", name, "Recreate")
            _progress(err, "Container", name, "Recreated")
        elif name not in old:
            _progress(err, "Container", name, "Creating")
            _progress(err, "Container", name, "Created")


def compose_up(
    generation: str | None, detach: bool, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr, directory: str | None = None
) -> int:
    """``docker compose up --build [-d]`` in the key-provider project."""
    problem = check_docker(err)
    if problem is not None:
        return problem
    project = locate_project(err, generation, directory)
    if project is None:
        return 1
    settings = Settings.from_env()
    with project_lock(settings):
        previous = load_state(settings)
        running = supervisor_alive(previous)
        if running:
            assert previous is not None
            for name in previous["containers"]:
                _progress(err, "Container", name, "Running")
    if running:
        assert previous is not None
        return 0 if detach else _attach(settings, previous, out, err)
    with project_lock(settings):
        previous = load_state(settings)
        if supervisor_alive(previous):  # another "up" won the race; it owns the project
            return 0
        state = _fresh_state(project, previous)
        _announce_creation(err, project, previous, state, settings)
        save_state(settings, state)
        # Every container of the project needs the SGX devices except pccs-proxy; the first
        # one started (aesmd, or the provider on 0.3) fails the whole "up".
        if detach:
            return _up_detached(settings, project, state, err)
        _write(out, "Attaching to " + ", ".join(state["containers"]) + "\n")
        supervisor = Supervisor(settings, state, attached=True, out=out, err=err)
        supervisor.register_self()
        supervisor.install_signals()
        failure = supervisor.start_all()
    if failure is not None:
        _write(err, failure[1] + "\n")
        supervisor.stop_all(announce=False)
        state["supervisor_pid"] = None
        save_state(settings, state)
        return 1
    return supervisor.loop()


def _attach(settings: Settings, state: dict[str, Any], out: IO[str], err: IO[str]) -> int:
    """``docker compose up`` on a running project: attach to the logs until interrupted."""
    _write(out, "Attaching to " + ", ".join(state["containers"]) + "\n")
    stop = {"flag": False}

    def interrupt(signum: int, frame: Any) -> None:
        stop["flag"] = True

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    follow_logs(
        settings,
        list(state["containers"]),
        None,
        out,
        lambda: stop["flag"] or not supervisor_alive(load_state(settings)),
        from_end=True,
    )
    if stop["flag"]:
        _write(err, "Gracefully stopping... (press Ctrl+C again to force)\n")
        current = load_state(settings)
        if supervisor_alive(current):
            assert current is not None
            os.kill(current["supervisor_pid"], signal.SIGTERM)
            _wait_dead(current, settings.stop_timeout * 2 + 5)
    return 0


def _wait_dead(state: dict[str, Any], timeout: float) -> bool:
    deadline = _now() + timeout
    while supervisor_alive(state):
        if _now() > deadline:
            return False
        time.sleep(0.05)
    return True


def _up_detached(settings: Settings, project: Project, state: dict[str, Any], err: IO[str]) -> int:
    first = next(iter(state["containers"]))
    problem = device_error(fixture_root())
    if problem is not None:
        _progress(err, "Container", first, "Starting")
        _write(err, problem + "\n")
        return 1
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # first child: new session, fork again, exit
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            _exec_daemon(settings, project, write_fd)
        finally:
            os._exit(127)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, "r", encoding="utf-8") as reader:
        for line in reader:
            event = json.loads(line)
            if "event" in event:
                _progress(err, "Container", event["container"], event["event"])
            elif event.get("error"):
                _write(err, event["error"] + "\n")
                return 1
    return 0


def _exec_daemon(settings: Settings, project: Project, ready_fd: int) -> None:
    settings.log_dir.mkdir(parents=True, exist_ok=True)
    log_fd = os.open(settings.daemon_log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    null_fd = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null_fd, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.set_inheritable(ready_fd, True)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (_KIT_DIR, env.get("PYTHONPATH", "")) if p)
    env["ZSIM_READY_FD"] = str(ready_fd)
    os.chdir("/")
    argv = [sys.executable, "-B", "-m", "zerog_sim.keyprovider", "_daemon", "--project-dir", str(project.directory)]
    os.execve(sys.executable, argv, env)


def daemon_main(project_dir: str) -> int:
    """The detached supervisor: start the containers, report to ``up -d``, supervise."""
    settings = Settings.from_env()
    ready = os.fdopen(int(os.environ["ZSIM_READY_FD"]), "w", encoding="utf-8")
    state = load_state(settings)
    if state is None or state.get("project_dir") != project_dir:
        ready.write(json.dumps({"error": "zerog-sim: project state vanished"}) + "\n")
        ready.close()
        return 1
    supervisor = Supervisor(settings, state, attached=False)
    supervisor.register_self()
    supervisor.install_signals()

    def report(name: str, event: str) -> None:
        ready.write(json.dumps({"container": name, "event": event}) + "\n")
        ready.flush()

    failure = supervisor.start_all(report)
    if failure is not None:
        ready.write(json.dumps({"error": failure[1]}) + "\n")
    ready.close()
    if not supervisor.running():
        state["supervisor_pid"] = None
        save_state(settings, state)
        return 1
    return supervisor.loop()


def compose_down(out: IO[str] = sys.stdout, err: IO[str] = sys.stderr, directory: str | None = None) -> int:
    """``docker compose down``: stop and remove the containers and the network."""
    problem = check_docker(err)
    if problem is not None:
        return problem
    project = locate_project(err, None, directory)
    if project is None:
        return 1
    settings = Settings.from_env()
    with project_lock(settings):
        state = load_state(settings)
        if state is None:
            return 0
        was_running = {entry["name"] for entry in displayed_containers(state) if entry["state"] in ("running", "restarting")}
        if supervisor_alive(state):
            os.kill(state["supervisor_pid"], signal.SIGUSR1)
            _wait_dead(state, settings.stop_timeout * 2 + 10)
        final = load_state(settings) or state
        for group in stop_groups(final["generation"]):
            for name in group:
                if name not in final["containers"]:
                    continue
                if name in was_running:
                    _progress(err, "Container", name, "Stopping")
                    _progress(err, "Container", name, "Stopped")
                _progress(err, "Container", name, "Removing")
                _progress(err, "Container", name, "Removed")
        if final.get("network"):
            _progress(err, "Network", f"{final['project']}_default", "Removing")
            _progress(err, "Network", f"{final['project']}_default", "Removed")
        _remove_project_files(settings, final)
    return 0


def _remove_project_files(settings: Settings, state: dict[str, Any]) -> None:
    for name in state.get("containers", {}):
        with contextlib.suppress(FileNotFoundError):
            settings.log_file(name).unlink()
    with contextlib.suppress(FileNotFoundError):
        settings.state_file.unlink()


def _is_ours(pid: int) -> bool:
    try:
        return b"zerog_sim.keyprovider" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def force_down(settings: Settings | None = None) -> None:
    """Kill everything of the project without ceremony and remove its files (test cleanup)."""
    settings = settings or Settings.from_env()
    state = load_state(settings)
    if state is None:
        return
    pids = [entry.get("pid") for entry in state.get("containers", {}).values()]
    if supervisor_alive(state):
        pids.insert(0, state["supervisor_pid"])
    for pid in pids:
        if pid and process_alive(pid) and _is_ours(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
    _remove_project_files(settings, state)


def docker_ps(show_all: bool, as_json: bool, out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """``docker ps [-a]`` for the key-provider containers."""
    problem = check_docker(err)
    if problem is not None:
        return problem
    settings = Settings.from_env()
    entries = [e for e in displayed_containers(load_state(settings)) if show_all or e["state"] in ("running", "restarting")]
    if as_json:
        for entry in entries:
            _write(out, json.dumps(entry, sort_keys=True) + "\n")
        return 0
    _write(out, format_ps(entries, _now()))
    return 0


def read_log(settings: Settings, container: str) -> list[tuple[str, str, str]]:
    """(time, stream, line) records of a container's json-file log."""
    records = []
    try:
        with open(settings.log_file(container), encoding="utf-8") as handle:
            for raw in handle:
                with contextlib.suppress(ValueError):
                    item = json.loads(raw)
                    records.append((item["time"], item["stream"], item["log"].rstrip("\n")))
    except FileNotFoundError:
        pass
    return records


def follow_logs(settings: Settings, names: list[str], tail: int | None, out: IO[str], done: Any, from_end: bool = False) -> None:
    """Print new log lines of ``names`` until ``done()`` is true."""
    width = max(len(n) for n in names) + 1
    seen = {}
    for name in names:
        records = read_log(settings, name)
        start = len(records) if from_end else (max(len(records) - tail, 0) if tail is not None else 0)
        seen[name] = start
        for record in records[start:]:
            _write(out, f"{name:<{width}} | {record[2]}\n")
        seen[name] = len(records)
    while not done():
        time.sleep(0.2)
        for name in names:
            records = read_log(settings, name)
            for record in records[seen[name] :]:
                _write(out, f"{name:<{width}} | {record[2]}\n")
            seen[name] = len(records)


def compose_logs(
    services: list[str],
    tail: int | None,
    follow: bool,
    out: IO[str] = sys.stdout,
    err: IO[str] = sys.stderr,
    directory: str | None = None,
) -> int:
    """``docker compose logs [-f] [-n N] [SERVICE...]``."""
    problem = check_docker(err)
    if problem is not None:
        return problem
    project = locate_project(err, None, directory)
    if project is None:
        return 1
    known = [s.name for s in compose_services(project.generation, project.name)]
    for service in services:
        if service not in known:
            _write(err, f"no such service: {service}\n")
            return 1
    settings = Settings.from_env()
    state = load_state(settings)
    names = [n for n in (state or {}).get("containers", {}) if not services or n in services]
    if not names:
        return 0
    if follow:
        stop = {"flag": False}
        signal.signal(signal.SIGINT, lambda *_: stop.update(flag=True))
        signal.signal(signal.SIGTERM, lambda *_: stop.update(flag=True))
        follow_logs(settings, names, tail, out, lambda: stop["flag"])
        return 0
    width = max(len(n) for n in names) + 1
    merged = []
    for name in names:
        records = read_log(settings, name)
        if tail is not None:
            records = records[len(records) - tail :] if tail else []
        merged.extend((record[0], name, record[2]) for record in records)
    for _stamp, name, line in sorted(merged, key=lambda item: item[0]):
        _write(out, f"{name:<{width}} | {line}\n")
    return 0


def run_sh(generation: str, script: str = "./run.sh", out: IO[str] = sys.stdout, err: IO[str] = sys.stderr) -> int:
    """The upstream ``key-provider-build/run.sh`` of ``generation``."""
    if generation == "0.3":
        # #!/bin/sh (dash) + "docker compose up --build" on line 2
        if docker_path() is None:
            _write(err, f"{script}: 2: docker: not found\n")
            return 127
        return compose_up(generation, detach=False, out=out, err=err)
    # #!/bin/bash, no "set -e": the banner follows whatever compose did, and the exit
    # status is that of the last echo.
    _write(out, RUN_SH_055_START)
    if docker_path() is None:
        _write(err, f"{script}: line {RUN_SH_055_DOCKER_LINE}: docker: command not found\n")
    else:
        compose_up(generation, detach=True, out=out, err=err)
    _write(out, RUN_SH_055_BANNER)
    return 0


# --------------------------------------------------------------------------------------------
# upstream-shaped files for the stand-in dstack repository
# --------------------------------------------------------------------------------------------


def run_sh_text(generation: str, kit: str = "/opt/zerog-sim/kit") -> str:
    """A thin ``key-provider-build/run.sh`` that execs this stand-in for ``generation``.

    Its shebang and exec line are those of the stand-in repository's ``run.sh``
    (``tests/sim/sdk/<generation>/dstack/key-provider-build/run.sh`` as ``zerog_sim.sdkrepo``
    writes it); like upstream's script it ignores its arguments.
    """
    shell = "/bin/sh" if generation == "0.3" else "/bin/bash"
    return (
        f"#!{shell}\n"
        f"# zerog-sim stand-in for dstack key-provider-build/run.sh ({generation})\n"
        f'PYTHONPATH="{kit}${{PYTHONPATH:+:$PYTHONPATH}}" exec python3 -B -m '
        f'zerog_sim.keyprovider run --generation {generation} --script "$0"\n'
    )


def compose_yaml_text(generation: str) -> str:
    """The key-provider compose file of ``generation`` (services, devices, ports, policy)."""
    devices = '    devices:\n      - "/dev/sgx_enclave:/dev/sgx_enclave"\n      - "/dev/sgx_provision:/dev/sgx_provision"\n'
    if generation == "0.3":
        return (
            "services:\n"
            f"  {PROVIDER}:\n    container_name: {PROVIDER}\n"
            "    build:\n      context: .\n      dockerfile: Dockerfile\n"
            "    privileged: true\n" + devices + '    volumes:\n      - "./sgx_default_qcnl.conf:/etc/sgx_default_qcnl.conf"\n'
            '    extra_hosts:\n      - "host.docker.internal:host-gateway"\n'
            '    ports:\n      - "127.0.0.1:3443:3443"\n\n'
            f"  {PCCS_PROXY}:\n    image: alpine/socat\n    container_name: {PCCS_PROXY}\n"
            "    network_mode: host\n"
            "    command: TCP-LISTEN:8082,bind=172.17.0.1,fork,reuseaddr TCP:127.0.0.1:8081\n"
        )
    common = (
        '    restart: always\n    logging:\n      driver: "json-file"\n      options:\n'
        '        max-size: "100m"\n        max-file: "5"\n'
    )
    return (
        "services:\n"
        f"  {AESMD}:\n    container_name: {AESMD}\n"
        + common
        + "    build:\n      context: .\n      dockerfile: Dockerfile.aesmd\n"
        "    privileged: true\n" + devices + '    volumes:\n      - "./sgx_default_qcnl.conf:/etc/sgx_default_qcnl.conf"\n'
        '      - "aesmd:/var/run/aesmd/"\n    network_mode: "host"\n\n'
        f"  {PROVIDER}:\n    container_name: {PROVIDER}\n"
        + common
        + "    build:\n      context: .\n      dockerfile: Dockerfile.key-provider\n"
        "    privileged: true\n" + devices + f"    depends_on:\n      - {AESMD}\n"
        '    volumes:\n      - "aesmd:/var/run/aesmd/"\n'
        '    ports:\n      - "127.0.0.1:3443:3443"\n\nvolumes:\n  aesmd:\n'
    )


def qcnl_conf_text(generation: str) -> str:
    """``sgx_default_qcnl.conf`` of ``generation`` (where AESM fetches PCK certificates)."""
    url = (
        "https://host.docker.internal:8082/sgx/certification/v4/"
        if generation == "0.3"
        else "https://127.0.0.1:8081/sgx/certification/v4/"
    )
    return json.dumps({"pccs_url": url, "use_secure_cert": False}, indent=2) + "\n"


# --------------------------------------------------------------------------------------------
# CLI
# --------------------------------------------------------------------------------------------


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python3 -m zerog_sim.keyprovider", description="dstack local key provider stand-in")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", aliases=["run-sh"], help="upstream key-provider-build/run.sh")
    run.add_argument("--generation", required=True, choices=GENERATIONS)
    run.add_argument("--script", default="./run.sh", help="$0 of the calling script")
    up = sub.add_parser("up", help="docker compose up --build [-d]")
    up.add_argument("-d", "--detach", action="store_true")
    up.add_argument("--generation", choices=GENERATIONS)
    up.add_argument("--project-directory")
    down = sub.add_parser("down", help="docker compose down")
    down.add_argument("--project-directory")
    ps = sub.add_parser("ps", help="docker ps")
    ps.add_argument("-a", "--all", action="store_true")
    ps.add_argument("--json", action="store_true", help="one JSON object per container")
    logs = sub.add_parser("logs", help="docker compose logs")
    logs.add_argument("services", nargs="*", metavar="SERVICE")
    logs.add_argument("--service", action="append", default=[], choices=[AESMD, PROVIDER, PCCS_PROXY])
    logs.add_argument("-n", "--tail", type=int)
    logs.add_argument("-f", "--follow", action="store_true")
    logs.add_argument("--project-directory")
    daemon = sub.add_parser("_daemon")
    daemon.add_argument("--project-dir", required=True)
    container = sub.add_parser("_container")
    container.add_argument("service")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of ``python3 -m zerog_sim.keyprovider``."""
    parser = _parser()
    args, extra = parser.parse_known_args(argv)
    if extra and args.command not in ("run", "run-sh"):
        parser.error("unrecognized arguments: " + " ".join(extra))
    # run.sh itself ignores its arguments, so "exec ... run --generation G "$@"" may pass some.
    if args.command in ("run", "run-sh"):
        return run_sh(args.generation, args.script)
    if args.command == "up":
        return compose_up(args.generation, args.detach, directory=args.project_directory)
    if args.command == "down":
        return compose_down(directory=args.project_directory)
    if args.command == "ps":
        return docker_ps(args.all, args.json)
    if args.command == "logs":
        return compose_logs(args.services + args.service, args.tail, args.follow, directory=args.project_directory)
    if args.command == "_daemon":
        return daemon_main(args.project_dir)
    return container_main(args.service)


if __name__ == "__main__":
    sys.exit(main())
