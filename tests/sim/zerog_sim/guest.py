"""The miniature dstack CVM guest booted by the ``qemu-system-x86_64`` stand-in.

The guest follows what the two dstack image generations do at boot (``dstack-cli.md``
sections 1.7, 1.8 and 3), printing serial-console lines on the way:

* **0.3.x images** (``metadata.json`` has ``rootfs_hash``): the initramfs mounts the 9p share
  ``host-shared``, copies *everything* into ``/tapp`` (``cp -r``), reads ``/tapp/config.json``,
  checks the compose hash against ``.instance_info``, asks the host API for the sealing key,
  then systemd starts ``app-compose.service`` in ``/tapp``.
* **0.5.x images** (``metadata.json`` has ``version`` 0.5.*): systemd's ``dstack-prepare``
  copies only the whitelist into ``/dstack/.host-shared`` (with the upstream size limits),
  links ``.user-config`` as ``/dstack/user_config``, reads ``.sys-config.json`` and does the
  same key and compose-hash steps; ``app-compose.service`` runs in ``/dstack``.

Any failure before the app starts is reported with ``Notify boot.error`` and on the console,
then the guest reboots; a TDX QEMU turns a guest reboot into a shutdown, so QEMU exits 0.

The guest's filesystem is ``<vm_dir>/.sim-guest/`` (a real VM directory has no such entry; see
``tests/sim/README.md``).  ``tapp/`` or ``dstack/`` is rebuilt on every boot (it is volatile in the
real image); Docker volumes under ``var/lib/docker/volumes/`` persist like the data disk.

The app compose is "run" by resolving every service's mounts inside that filesystem; the
service whose image is the 0G serving broker is started as ``python3 -m zerog_sim.broker``,
other services are only logged.  The compose file is parsed by a small YAML subset parser
(YAML 1.2 core scalars, as compose-go reads it) because the simulated instance has only the
standard library guaranteed.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.parse
from dataclasses import dataclass, field
from typing import NoReturn

GUEST_IP = "10.0.2.15"
SLIRP_HOST = "10.0.2.2"
GUEST_DIR_NAME = ".sim-guest"
DEFAULT_BROKER_IMAGE_RE = r"^ghcr\.io/(0glabs|0gfoundation)/0g-serving-broker(:[^/]*)?(@sha256:[0-9a-f]+)?$"
DEFAULT_BROKER_MODULE = "zerog_sim.broker"
TERM_SIGNALS = (signal.SIGINT, signal.SIGHUP, signal.SIGTERM)
KIB = 1024
# dstack-util's whitelist (DSTACK-0.5.5 system_setup.rs): file, size limit in bytes, required.
WHITELIST_05 = [
    ("app-compose.json", 256 * KIB, True),
    (".sys-config.json", 32 * KIB, True),
    (".instance_info", None, False),
    (".encrypted-env", None, False),
    (".user-config", 1024 * KIB, False),
]

try:
    from zerog_sim import keyprovider as kp_mod
except ImportError:  # the key-provider stand-in defines the simulated platform's quotes
    kp_mod = None

try:
    _LIBC = ctypes.CDLL(None, use_errno=True)
except OSError:  # pragma: no cover - every Linux has a libc
    _LIBC = None
PR_SET_PDEATHSIG = 1


class BootError(Exception):
    """A failure that makes dstack abort the boot (reported as ``boot.error``)."""


class _Stopped(Exception):
    """QEMU was told to terminate while the guest was still booting."""


class _PowerOff(Exception):
    """The guest rebooted or powered off; a TDX QEMU exits."""


# --------------------------------------------------------------------------------------------
# Data handed over by the QEMU stand-in
# --------------------------------------------------------------------------------------------


@dataclass
class BootSpec:
    """What the QEMU command line gives the guest."""

    kernel: str | None
    initrd: str | None = None
    bios: str | None = None
    append: str = ""
    memory_mb: int = 128
    vcpus: int = 1
    tdx: bool = False
    shared_dir: str | None = None
    drives: list[str] = field(default_factory=list)
    cdroms: list[str] = field(default_factory=list)
    gpus: list[dict] = field(default_factory=list)
    cid: int | None = None
    has_network: bool = True


class GuestNetwork:
    """Ports the guest listens on, as seen through slirp from the host forwarder."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._ports: dict[tuple[str, int], tuple[str, Container | None]] = {}

    def publish(self, proto: str, bind_ip: str, port: int, container: Container | None) -> None:
        """Record that ``bind_ip:port`` in the guest is published (for ``container`` if it serves it)."""
        with self._lock:
            self._ports[(proto, port)] = (bind_ip, container)

    def clear(self) -> None:
        """Forget every published port (guest stopped)."""
        with self._lock:
            self._ports.clear()

    def lookup(self, proto: str, guest_ip: str, port: int) -> tuple[str, int] | None:
        """Host endpoint serving ``guest_ip:port``, or ``None`` when nothing answers there."""
        if guest_ip != GUEST_IP:
            return None
        with self._lock:
            entry = self._ports.get((proto, port))
        if entry is None:
            return None
        bind_ip, container = entry
        if bind_ip not in ("", "0.0.0.0", GUEST_IP) or container is None:
            return None
        return container.endpoint()


class Console:
    """The guest's first serial port (QEMU's stdout when wired to ``-chardev stdio``)."""

    def __init__(self, enabled: bool, stream=None) -> None:
        self.enabled = enabled
        self.stream = stream or sys.stdout
        self.start = time.monotonic()
        self._lock = threading.Lock()

    def line(self, text: str) -> None:
        """Print a line as-is (systemd status lines, service output)."""
        if not self.enabled:
            return
        with self._lock, contextlib.suppress(OSError, ValueError):
            self.stream.write(text + "\n")
            self.stream.flush()

    def kernel(self, text: str) -> None:
        """Print a kernel log line with its ``[seconds.micros]`` stamp."""
        self.line(f"[{time.monotonic() - self.start:12.6f}] {text}")


# --------------------------------------------------------------------------------------------
# A YAML subset parser sufficient for docker compose files
# --------------------------------------------------------------------------------------------


class YamlError(ValueError):
    """The compose text uses YAML this parser does not understand, or is malformed."""


_FLOAT_RE = re.compile(r"[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)([eE][-+]?[0-9]+)?$")


def _resolve_plain(text: str):
    """YAML 1.2 core schema resolution of a plain scalar (what compose-go does)."""
    if text in ("", "~", "null", "Null", "NULL"):
        return None
    if text in ("true", "True", "TRUE"):
        return True
    if text in ("false", "False", "FALSE"):
        return False
    if re.fullmatch(r"[-+]?[0-9]+", text):
        return int(text, 10)
    if re.fullmatch(r"0o[0-7]+", text):
        return int(text[2:], 8)
    if re.fullmatch(r"0x[0-9a-fA-F]+", text):
        return int(text, 16)
    if _FLOAT_RE.match(text):
        return float(text)
    return text


def _strip_comment(text: str) -> str:
    """Remove a ``#`` comment that is outside quotes and preceded by whitespace."""
    quote = None
    for index, char in enumerate(text):
        if quote:
            if char == quote:
                quote = None
        elif char in "'\"" and (index == 0 or text[index - 1] in " \t[{,:-"):
            quote = char
        elif char == "#" and (index == 0 or text[index - 1] in " \t"):
            return text[:index]
    return text


class _FlowParser:
    """Parses one inline value: a quoted or plain scalar, or a flow sequence/mapping."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def parse(self):
        value = self.value(top=True)
        self.skip()
        if self.pos != len(self.text):
            raise YamlError(f"unexpected text after value: {self.text[self.pos :]!r}")
        return value

    def skip(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos] in " \t":
            self.pos += 1

    def value(self, top: bool = False):
        self.skip()
        if self.pos >= len(self.text):
            return None
        char = self.text[self.pos]
        if char in "&*!":
            raise YamlError("anchors, aliases and tags are not supported")
        if char == "[":
            return self.sequence()
        if char == "{":
            return self.mapping()
        if char in "'\"":
            return self.quoted()
        stops = "" if top else ",]}"
        start = self.pos
        while self.pos < len(self.text) and self.text[self.pos] not in stops:
            if not top and self.text.startswith(": ", self.pos):
                break
            self.pos += 1
        return _resolve_plain(self.text[start : self.pos].strip())

    def quoted(self) -> str:
        quote = self.text[self.pos]
        self.pos += 1
        out = []
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if quote == "'" and char == "'":
                if self.text.startswith("''", self.pos):
                    out.append("'")
                    self.pos += 2
                    continue
                self.pos += 1
                return "".join(out)
            if quote == '"' and char == "\\":
                escape = self.text[self.pos + 1 : self.pos + 2]
                mapping = {"n": "\n", "t": "\t", '"': '"', "\\": "\\", "/": "/", "0": "\0", "r": "\r"}
                if escape not in mapping:
                    raise YamlError(f"unsupported escape \\{escape}")
                out.append(mapping[escape])
                self.pos += 2
                continue
            if quote == '"' and char == '"':
                self.pos += 1
                return "".join(out)
            out.append(char)
            self.pos += 1
        raise YamlError("unterminated quoted string")

    def sequence(self) -> list:
        self.pos += 1
        items = []
        while True:
            self.skip()
            if self.text[self.pos : self.pos + 1] == "]":
                self.pos += 1
                return items
            items.append(self.value())
            self.skip()
            char = self.text[self.pos : self.pos + 1]
            if char == ",":
                self.pos += 1
            elif char != "]":
                raise YamlError("malformed flow sequence")

    def mapping(self) -> dict:
        self.pos += 1
        items: dict = {}
        while True:
            self.skip()
            if self.text[self.pos : self.pos + 1] == "}":
                self.pos += 1
                return items
            key = self.value()
            self.skip()
            if self.text[self.pos : self.pos + 1] != ":":
                raise YamlError("malformed flow mapping")
            self.pos += 1
            items[key] = self.value()
            self.skip()
            char = self.text[self.pos : self.pos + 1]
            if char == ",":
                self.pos += 1
            elif char != "}":
                raise YamlError("malformed flow mapping")


def _split_key(content: str) -> tuple[str, str] | None:
    """Split ``key: rest`` (key possibly quoted); ``None`` if the line is not a mapping entry."""
    if content[:1] in "'\"":
        parser = _FlowParser(content)
        key = parser.quoted()
        rest = content[parser.pos :]
        if rest == ":" or rest.startswith(": "):
            return key, rest[1:].strip()
        return None
    if content.startswith(("[", "{")):
        return None
    match = re.match(r"([^#]*?):(?:\s+(.*))?$", content)
    if not match or not match.group(1).strip() or match.group(1).startswith("- "):
        return None
    return match.group(1).strip(), (match.group(2) or "").strip()


class _BlockParser:
    """Indentation-based parser for block mappings and sequences."""

    def __init__(self, text: str) -> None:
        self.tokens: list[tuple[int | None, str, str]] = []
        for raw in text.splitlines():
            stripped = _strip_comment(raw).rstrip()
            if not stripped.strip() or stripped.strip() in ("---", "..."):
                self.tokens.append((None, "", raw))
                continue
            indent = len(stripped) - len(stripped.lstrip(" "))
            if stripped[indent : indent + 1] == "\t":
                raise YamlError("tabs are not allowed for indentation")
            self.tokens.append((indent, stripped[indent:], raw))
        self.pos = 0

    def peek(self) -> tuple[int, str] | None:
        while self.pos < len(self.tokens) and self.tokens[self.pos][0] is None:
            self.pos += 1
        if self.pos >= len(self.tokens):
            return None
        indent, content, _raw = self.tokens[self.pos]
        return indent, content

    def parse(self):
        first = self.peek()
        if first is None:
            return None
        value = self.node(first[0])
        if self.peek() is not None:
            raise YamlError(f"unexpected indentation near {self.peek()[1]!r}")
        return value

    def node(self, indent: int):
        indent_now, content = self.peek()
        if content == "-" or content.startswith("- "):
            return self.sequence(indent_now)
        if _split_key(content) is not None:
            return self.mapping(indent_now)
        self.pos += 1
        return _FlowParser(content).parse()

    def nested(self, indent: int, allow_sequence: bool):
        nxt = self.peek()
        if nxt is None:
            return None
        if nxt[0] > indent:
            return self.node(nxt[0])
        if allow_sequence and nxt[0] == indent and (nxt[1] == "-" or nxt[1].startswith("- ")):
            return self.sequence(indent)
        return None

    def inline(self, rest: str, indent: int):
        if rest[:1] in ("|", ">"):
            return self.block_scalar(rest, indent)
        return _FlowParser(rest).parse()

    def block_scalar(self, header: str, indent: int) -> str:
        style, chomp = header[0], header[1:].strip()
        lines: list[str] = []
        block_indent = None
        while self.pos < len(self.tokens):
            tok_indent, _content, raw = self.tokens[self.pos]
            if tok_indent is not None and tok_indent <= indent:
                break
            if raw.strip():
                current = len(raw) - len(raw.lstrip(" "))
                if block_indent is None:
                    block_indent = current
                lines.append(raw[block_indent:])
            else:
                lines.append("")
            self.pos += 1
        while lines and not lines[-1]:
            lines.pop()
        text = "\n".join(lines) if style == "|" else " ".join(line for line in lines if line)
        return text if chomp == "-" else text + "\n"

    def mapping(self, indent: int) -> dict:
        result: dict = {}
        while True:
            nxt = self.peek()
            if nxt is None or nxt[0] < indent:
                return result
            if nxt[0] > indent:
                raise YamlError(f"bad indentation near {nxt[1]!r}")
            split = _split_key(nxt[1])
            if split is None:
                if nxt[1] == "-" or nxt[1].startswith("- "):
                    return result
                raise YamlError(f"expected a mapping entry, got {nxt[1]!r}")
            key, rest = split
            self.pos += 1
            if key in result:
                raise YamlError(f"mapping key {key!r} already defined")
            result[key] = self.inline(rest, indent) if rest else self.nested(indent, allow_sequence=True)

    def sequence(self, indent: int) -> list:
        items: list = []
        while True:
            nxt = self.peek()
            if nxt is None or nxt[0] != indent or not (nxt[1] == "-" or nxt[1].startswith("- ")):
                if nxt is not None and nxt[0] > indent:
                    raise YamlError(f"bad indentation near {nxt[1]!r}")
                return items
            rest = nxt[1][1:].lstrip(" ")
            column = indent + len(nxt[1]) - len(rest)
            if not rest:
                self.pos += 1
                items.append(self.nested(indent, allow_sequence=False))
            elif rest == "-" or rest.startswith("- ") or _split_key(rest) is not None:
                self.tokens[self.pos] = (column, rest, self.tokens[self.pos][2])
                items.append(self.node(column))
            else:
                self.pos += 1
                items.append(self.inline(rest, indent))


def parse_yaml(text: str):
    """Parse the subset of YAML used by compose files (block style, flow collections, quotes)."""
    return _BlockParser(text).parse()


# --------------------------------------------------------------------------------------------
# Compose model
# --------------------------------------------------------------------------------------------


class ComposeError(Exception):
    """``docker compose up`` refused the project."""


@dataclass
class Mount:
    """A resolved bind mount: container path and the guest path behind it."""

    target: str
    source: str  # host path of the source inside the guest filesystem
    kind: str  # "bind" or "volume"


@dataclass
class PortSpec:
    """One published port of a service."""

    host_ip: str
    published: int | None
    target: int
    proto: str


@dataclass
class Service:
    """One compose service, resolved."""

    name: str
    image: str
    container_name: str
    environment: dict[str, str]
    ports: list[PortSpec]
    mounts: list[Mount]
    restart: str
    depends_on: list[str]


def _env_dict(raw) -> dict[str, str]:
    if raw is None:
        return {}
    if isinstance(raw, dict):
        return {str(k): "" if v is None else _scalar_text(v) for k, v in raw.items()}
    if isinstance(raw, list):
        env = {}
        for item in raw:
            key, _sep, value = str(item).partition("=")
            env[key] = value
        return env
    raise ComposeError("environment must be a mapping or a list")


def _scalar_text(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_port(raw) -> PortSpec:
    """Parse a compose port (short ``[ip:][published:]target[/proto]`` or long syntax)."""
    if isinstance(raw, dict):
        target = raw.get("target")
        published = raw.get("published")
        return PortSpec(
            host_ip=str(raw.get("host_ip", "")),
            target=int(target),
            published=int(published) if published not in (None, "") else None,
            proto=str(raw.get("protocol", "tcp")),
        )
    text = _scalar_text(raw)
    spec, _slash, proto = text.partition("/")
    parts = spec.rsplit(":", 2)
    host_ip = ""
    published_text = ""
    if len(parts) == 3:
        host_ip, published_text, target_text = parts
    elif len(parts) == 2:
        published_text, target_text = parts
    else:
        target_text = parts[0]
    if not target_text.isdigit():
        raise ComposeError(f"invalid containerPort: {target_text}")
    if published_text and not published_text.isdigit():
        raise ComposeError(f"invalid hostPort: {published_text}")
    return PortSpec(
        host_ip=host_ip, published=int(published_text) if published_text else None, target=int(target_text), proto=proto or "tcp"
    )


def _depends(raw) -> list[str]:
    if raw is None:
        return []
    if isinstance(raw, dict):
        return [str(k) for k in raw]
    return [str(k) for k in raw]


def start_order(services: dict[str, Service]) -> list[Service]:
    """Services ordered so that ``depends_on`` comes first (compose's start order)."""
    ordered: list[Service] = []
    seen: set[str] = set()

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in seen:
            return
        if name in chain:
            raise ComposeError(f"dependency cycle detected: {' -> '.join((*chain, name))}")
        if name not in services:
            raise ComposeError(f'service "{chain[-1]}" depends on undefined service "{name}": invalid compose project')
        for dep in services[name].depends_on:
            visit(dep, (*chain, name))
        seen.add(name)
        ordered.append(services[name])

    for name in services:
        visit(name, ())
    return ordered


# --------------------------------------------------------------------------------------------
# Host API client (the guest side of dstack's host_api.py)
# --------------------------------------------------------------------------------------------


class HostApi:
    """prpc-over-HTTP client for ``host_api_url`` (``http://10.0.2.2:<port>/api``)."""

    def __init__(self, url: str | None) -> None:
        self.url = url or ""
        parsed = urllib.parse.urlsplit(self.url)
        self.host = parsed.hostname
        self.port = parsed.port or 80
        self.base = parsed.path.rstrip("/")
        self.scheme = parsed.scheme

    def call(self, method: str, body: dict) -> bytes:
        """POST ``<base>/<method>?json``; return the body of a 200 reply or raise ``BootError``."""
        if not self.url:
            raise BootError("host API URL is not configured")
        if self.scheme != "http":
            raise BootError(f"unsupported host API scheme: {self.scheme}")
        if self.host != SLIRP_HOST:
            raise BootError(
                f"error sending request: {self.host}: host unreachable from the guest "
                "(zerog-sim only routes the slirp host alias 10.0.2.2)"
            )
        data = json.dumps(body).encode()
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=15)
        try:
            conn.request("POST", f"{self.base}/{method}?json", body=data, headers={"Content-Type": "application/json"})
            reply = conn.getresponse()
            payload = reply.read()
        except ConnectionRefusedError as exc:
            raise BootError("error sending request: Connection refused (os error 111)") from exc
        except (http.client.RemoteDisconnected, ConnectionResetError, http.client.BadStatusLine) as exc:
            raise BootError("connection closed before message completed") from exc
        except (OSError, http.client.HTTPException) as exc:
            raise BootError(f"error sending request: {exc}") from exc
        finally:
            conn.close()
        if reply.status != 200:
            raise BootError(f"Invalid status code: {reply.status}, body: {payload.decode(errors='replace')}")
        return payload

    def notify(self, event: str, payload: str) -> None:
        """``notify_q``: tell the host about an event, ignoring any failure."""
        with contextlib.suppress(BootError):
            self.call("Notify", {"event": event, "payload": payload})


def make_quote(report_data: bytes) -> bytes:
    """A TDX-quote-shaped blob (v4 header, TD report body with ``report_data``), unsigned.

    Only used when :mod:`zerog_sim.keyprovider` (which defines the simulated platform's signed
    quotes) is not in the kit.
    """
    header = (
        struct.pack("<HHIHH", 4, 2, 0x81, 0, 0) + b"\x93\x9a\x72\x33\xf7\x9c\x4c\xa9\x94\x0a"
        b"\x0d\xb3\x95\x7f\x06\x07" + b"zerog-sim-tdx-quote\0"
    )
    body = bytes(520) + report_data.ljust(64, b"\0")[:64]
    return header + body


def _sha384_file(path: str | None) -> bytes:
    digest = hashlib.sha384()
    if path:
        with open(path, "rb") as handle:
            digest.update(handle.read())
    return digest.digest()


def td_quote(spec: BootSpec, report_data: bytes, app_id: bytes, compose_hash: bytes) -> bytes:
    """The TD's quote for ``GetSealingKey``, signed by the simulated platform's QE.

    Measurements stand for what TDX measures: MRTD the firmware, RTMR0 the VM shape, RTMR1 the
    kernel, RTMR2 initrd and command line, RTMR3 the app (app id and compose hash), so the key the
    provider derives changes when any of them changes.
    """
    if kp_mod is None:
        return make_quote(report_data)
    mr_td = _sha384_file(spec.bios)
    rtmr0 = hashlib.sha384(f"cpus={spec.vcpus} memory={spec.memory_mb}M".encode()).digest()
    rtmr1 = _sha384_file(spec.kernel)
    rtmr2 = hashlib.sha384(_sha384_file(spec.initrd) + spec.append.encode()).digest()
    rtmr3 = hashlib.sha384(app_id + compose_hash).digest()
    return kp_mod.make_tdx_quote(report_data, mr_td, (rtmr0, rtmr1, rtmr2, rtmr3))


def open_sealing_key(encrypted_key: bytes, provider_quote: bytes, secret: bytes) -> bytes:
    """Check the provider's SGX quote covers the key, then open the sealed box (as dstack-util does)."""
    if kp_mod is None:
        return encrypted_key
    quote = kp_mod.parse_quote(provider_quote)
    if quote is None or quote.is_tdx:
        raise BootError("Invalid sgx report")
    if quote.report_data[:32] != hashlib.sha256(encrypted_key).digest():
        raise BootError("Invalid key hash")
    try:
        return kp_mod.open_sealed_box(encrypted_key, secret)
    except ValueError as exc:
        raise BootError("Failed to open sealing key") from exc


# --------------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------------


def _child_setup() -> None:  # pragma: no cover - runs in the forked child
    """Unblock termination signals and die with the thread that started us."""
    signal.pthread_sigmask(signal.SIG_UNBLOCK, TERM_SIGNALS)
    if _LIBC is not None:
        _LIBC.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Container:
    """A started compose service; only the broker runs a real process."""

    def __init__(
        self,
        service: Service,
        argv: list[str] | None,
        env: dict[str, str] | None,
        log_path: str,
        port: int | None,
        stop: threading.Event,
    ) -> None:
        self.service = service
        self.argv = argv
        self.env = env
        self.log_path = log_path
        self.port = port
        self.stop = stop
        self.proc: subprocess.Popen | None = None
        self.restarts = 0
        self._lock = threading.Lock()
        self._watch: threading.Thread | None = None

    def start(self) -> None:
        """Start the process (if any) and its restart-policy watcher."""
        if self.argv is None:
            return
        self._spawn()
        self._watch = threading.Thread(target=self._supervise, daemon=True)
        self._watch.start()

    def _spawn(self) -> None:
        os.makedirs(os.path.dirname(self.log_path), exist_ok=True)
        with open(self.log_path, "ab") as log:
            proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
                preexec_fn=_child_setup,
            )
        with self._lock:
            self.proc = proc

    def _supervise(self) -> None:
        delay = 0.5
        while not self.stop.is_set():
            proc = self.proc
            if proc is None:
                return
            code = proc.poll()
            if code is None:
                self.stop.wait(0.1)
                continue
            policy = self.service.restart
            again = policy in ("always", "unless-stopped") or (policy.startswith("on-failure") and code != 0)
            if not again:
                return
            if self.stop.wait(delay):
                return
            delay = min(delay * 2, 8.0)
            self.restarts += 1
            self._spawn()

    def endpoint(self) -> tuple[str, int] | None:
        """Where the process listens on the host, if it is running."""
        with self._lock:
            proc = self.proc
        if proc is None or proc.poll() is not None or self.port is None:
            return None
        return ("127.0.0.1", self.port)

    def kill(self) -> None:
        """Stop the process group (the VM is gone, so is everything in it)."""
        with self._lock:
            proc = self.proc
        if proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=3)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=3)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)  # stragglers left in the group


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def kit_dir() -> str:
    """Directory that holds the ``zerog_sim`` package (put on the broker's PYTHONPATH)."""
    return os.path.dirname(os.path.dirname(os.path.realpath(__file__)))


# --------------------------------------------------------------------------------------------
# The guest
# --------------------------------------------------------------------------------------------


class Guest:
    """Boots, runs the app compose, and stops when QEMU stops."""

    def __init__(self, spec: BootSpec, console: Console, network: GuestNetwork, stop: threading.Event) -> None:
        self.spec = spec
        self.console = console
        self.network = network
        self.stop = stop
        self.containers: list[Container] = []
        self.api = HostApi(None)
        self.generation = ""
        self.version = ""
        self.in_systemd = False
        self.outcome = ""
        self.meta: dict = {}
        seconds = float(os.environ.get("ZEROG_SIM_BOOT_SECONDS", "2.0"))
        self.unit = max(seconds, 0.0) / 40
        vm_dir = os.path.dirname(spec.shared_dir) if spec.shared_dir else None
        self.root = os.path.join(vm_dir, GUEST_DIR_NAME) if vm_dir else None

    # helpers -----------------------------------------------------------------------------
    def pause(self, steps: float = 1) -> None:
        if self.stop.wait(self.unit * steps):
            raise _Stopped

    def path(self, guest_path: str) -> str:
        """Host path of an absolute guest path."""
        assert self.root is not None
        clean = os.path.normpath("/" + guest_path.lstrip("/"))
        return os.path.join(self.root, clean.lstrip("/"))

    def klog(self, text: str, steps: float = 1) -> None:
        self.console.kernel(text)
        self.pause(steps)

    def log(self, text: str, steps: float = 1) -> None:
        self.console.line(text)
        self.pause(steps)

    # main --------------------------------------------------------------------------------
    def run(self) -> None:
        """Thread body: boot, then wait until QEMU stops or the guest powers off."""
        try:
            self.boot()
            self.outcome = "running"
            self.stop.wait()
            self.outcome = "stopped"
        except _Stopped:
            self.outcome = "stopped"
        except _PowerOff:
            self.outcome = "poweroff"
        except Exception as exc:  # a bug in the simulation must not look like a clean poweroff
            self.outcome = "crashed"
            print(f"zerog-sim: internal error in the simulated guest: {exc!r}", file=sys.stderr, flush=True)
            raise
        finally:
            for container in self.containers:
                container.kill()
            self.network.clear()

    def boot(self) -> None:
        spec = self.spec
        if not spec.kernel:
            self.log("BdsDxe: No bootable option or device was found.")
            self.log("BdsDxe: Press any key to enter the Boot Manager Menu.")
            self.stop.wait()
            raise _Stopped
        meta = self.read_metadata()
        self.meta = meta
        self.kernel_boot(meta)
        try:
            shared = self.setup_03(meta) if self.generation == "0.3" else self.setup_05(meta)
        except BootError as exc:
            self.fail(str(exc))
        self.run_app(shared)

    def read_metadata(self) -> dict:
        path = os.path.join(os.path.dirname(self.spec.kernel or ""), "metadata.json")
        try:
            with open(path, encoding="utf-8") as handle:
                meta = json.load(handle)
        except (OSError, ValueError) as exc:
            print(f"zerog-sim: cannot identify the guest image: {path}: {exc}", file=sys.stderr, flush=True)
            raise _PowerOff from exc
        version = str(meta.get("version", ""))
        if "rootfs_hash" in meta or version.startswith("0.3"):
            self.generation = "0.3"
        elif version.startswith("0.5"):
            self.generation = "0.5"
        else:
            print(f"zerog-sim: unsupported image version {version!r} in {path}", file=sys.stderr, flush=True)
            raise _PowerOff
        self.version = version or "0.3"
        return meta

    def kernel_boot(self, meta: dict) -> None:
        spec = self.spec
        self.klog("Linux version 6.x-dstack (zerog-sim miniature guest) #1 SMP PREEMPT_DYNAMIC", 0.5)
        self.klog(f"Command line: {spec.append}", 0.5)
        if spec.tdx:
            self.klog("tdx: Guest detected", 0.5)
        self.klog(f"Memory: {spec.memory_mb * 1024}K available", 0.5)
        self.klog(f"smpboot: Allowing {spec.vcpus} CPUs, 0 hotplug CPUs", 0.5)
        for index, gpu in enumerate(spec.gpus, start=1):
            self.klog(
                f"pci 0000:{index:02x}:00.0: [{gpu.get('vendor', '10de')}:{gpu.get('device', '')}] "
                f"type 00 class 0x{gpu.get('class', '030200')}",
                0.3,
            )
        for index, drive in enumerate(spec.drives):
            self.klog(f"virtio_blk virtio{index + 1}: [vd{chr(ord('a') + index)}] {os.path.basename(drive)}", 0.3)
        if spec.cdroms:
            self.klog("sr 0:0:0:0: [sr0] scsi3-mmc drive: 4x/4x cd/rw xa/form2 tray", 0.3)
        if spec.cid is not None:
            self.klog(f"NET: Registered PF_VSOCK protocol family (guest cid {spec.cid})", 0.3)
        self.klog("Freeing unused kernel image (initmem) memory", 0.5)
        self.klog("Run /init as init process", 1)
        rootfs = str(meta.get("rootfs", ""))
        devices = spec.cdroms if rootfs.endswith(".iso") else spec.drives
        if not any(os.path.basename(d) == rootfs for d in devices):
            self.panic(f"dstack: rootfs {rootfs or '<unset>'} not attached")

    # failure paths ------------------------------------------------------------------------
    def panic(self, message: str) -> NoReturn:
        """The initramfs failed: init exits, the kernel panics and (panic=1) reboots."""
        self.console.line(message)
        self.klog("Kernel panic - not syncing: Attempted to kill init! exitcode=0x00000100", 0.5)
        self.klog("Rebooting in 1 seconds..", 1)
        raise _PowerOff

    def fail(self, message: str) -> NoReturn:
        """dstack's setup failed: notify ``boot.error`` and reboot (QEMU then exits 0)."""
        self.console.line(f"Error: {message}")
        self.console.line(f"boot.error: {message}")
        self.api.notify("boot.error", message)
        if self.in_systemd:
            self.log("[FAILED] Failed to start dstack-prepare.service - dstack Guest Preparation Service.")
            self.log("See 'systemctl status dstack-prepare.service' for details.")
            self.klog("reboot: Restarting system", 1)
            raise _PowerOff
        self.panic("dstack: setup failed")

    # 0.3 ---------------------------------------------------------------------------------
    def setup_03(self, meta: dict) -> dict:
        self.log("tdxctl: setting up full disk encryption")
        self.require_data_disk("/dev/vda")
        tapp = self.mount_and_copy_03()
        config = self.load_json(os.path.join(tapp, "config.json"), "/tapp/config.json")
        compose_path = os.path.join(tapp, "app-compose.json")
        app_compose = self.load_json(compose_path, "/tapp/app-compose.json")
        self.api = HostApi(config.get("host_api_url"))
        self.api.notify("boot.progress", "mounting host-shared")
        self.provision(app_compose, compose_path, os.path.join(tapp, ".instance_info"), legacy=True)
        self.log("Switching root to the encrypted rootfs")
        self.systemd_start()
        return {"workdir": "/tapp", "app_compose": app_compose, "project": "tapp"}

    def mount_and_copy_03(self) -> str:
        shared = self.require_share()
        tapp = self.path("/tapp")
        self.log("Mounting host-shared")
        shutil.rmtree(tapp, ignore_errors=True)
        os.makedirs(tapp)
        self.log("Copying host-shared files")
        for name in os.listdir(shared):
            src = os.path.join(shared, name)
            dst = os.path.join(tapp, name)
            if os.path.isdir(src) and not os.path.islink(src):
                shutil.copytree(src, dst, symlinks=True, dirs_exist_ok=True)
            else:
                shutil.copy2(src, dst, follow_symlinks=False)
        self.log("Unmounting host-shared")
        return tapp

    # 0.5 ---------------------------------------------------------------------------------
    def setup_05(self, meta: dict) -> dict:
        self.systemd_start()
        self.in_systemd = True
        self.log("         Starting dstack-prepare.service - dstack Guest Preparation Service...")
        self.log("Syncing system time...")
        self.log("Preparing dstack system...")
        self.require_data_disk("/dev/vdb")
        copy_dir = self.copy_whitelist_05()
        sys_config = self.load_json(os.path.join(copy_dir, ".sys-config.json"), "/dstack/.host-shared/.sys-config.json")
        compose_path = os.path.join(copy_dir, "app-compose.json")
        app_compose = self.load_json(compose_path, "/dstack/.host-shared/app-compose.json")
        self.api = HostApi(sys_config.get("host_api_url"))
        self.api.notify("boot.progress", "enter system")
        self.provision(app_compose, compose_path, os.path.join(copy_dir, ".instance_info"), legacy=False)
        self.log("Mounting docker dirs to persistent storage")
        self.log("[  OK  ] Finished dstack-prepare.service - dstack Guest Preparation Service.")
        self.in_systemd = False
        self.log("[  OK  ] Started dstack-guest-agent.service - dstack Guest Agent Service.")
        return {"workdir": "/dstack", "app_compose": app_compose, "project": "dstack"}

    def copy_whitelist_05(self) -> str:
        shared = self.require_share()
        dstack = self.path("/dstack")
        shutil.rmtree(dstack, ignore_errors=True)
        copy_dir = os.path.join(dstack, ".host-shared")
        self.log("Mounting host-shared")
        os.makedirs(copy_dir)
        self.log("Copying host-shared files")
        for name, limit, required in WHITELIST_05:
            src = os.path.join(shared, name)
            if not os.path.lexists(src):
                if required:
                    raise BootError(f"Source file {name} does not exist")
                continue
            if os.path.islink(src):
                raise BootError(f"failed to open file `{name}`: Too many levels of symbolic links (os error 40)")
            size = os.path.getsize(src)
            if limit is not None and size > limit:
                raise BootError(f"Source file {name} is too large, max size is {limit} bytes")
            shutil.copyfile(src, os.path.join(copy_dir, name))
        self.log("Unmounting host-shared")
        if os.path.exists(os.path.join(copy_dir, ".user-config")):
            os.symlink(os.path.join(".host-shared", ".user-config"), os.path.join(dstack, "user_config"))
        return copy_dir

    # common -------------------------------------------------------------------------------
    def require_data_disk(self, device: str) -> None:
        """dstack keeps the app's data on the second virtio disk (``hda.img``)."""
        rootfs = str(self.meta.get("rootfs", ""))
        if not any(os.path.basename(d) != rootfs for d in self.spec.drives):
            raise BootError(f"Persistent data disk {device} not found")

    def require_share(self) -> str:
        if not self.spec.shared_dir or self.root is None:
            raise BootError("mount: mounting host-shared on /mnt/host-shared failed: No such file or directory")
        return self.spec.shared_dir

    def load_json(self, path: str, guest_path: str) -> dict:
        try:
            with open(path, encoding="utf-8") as handle:
                data = json.load(handle)
        except FileNotFoundError as exc:
            raise BootError(f"failed to open file `{guest_path}`: No such file or directory (os error 2)") from exc
        except ValueError as exc:
            raise BootError(f"failed to parse {guest_path}: {exc}") from exc
        if not isinstance(data, dict):
            raise BootError(f"failed to parse {guest_path}: not a JSON object")
        return data

    def systemd_start(self) -> None:
        self.console.line("")
        self.log(f"Welcome to DStack {self.version}!", 0.5)
        self.console.line("")
        self.log("[  OK  ] Reached target local-fs.target - Local File Systems.", 0.5)
        self.log("[  OK  ] Started chronyd.service - NTP client/server.", 0.5)

    def provision(self, app_compose: dict, compose_path: str, info_path: str, legacy: bool) -> None:
        """App identity and keys: compose hash vs ``.instance_info``, then the sealing key."""
        if not self.spec.has_network:
            raise BootError("Network is unreachable (os error 101)")
        with open(compose_path, "rb") as handle:
            compose_hash = hashlib.sha256(handle.read()).digest()
        app_id = compose_hash[:20].hex()
        stored: dict = {}
        if os.path.exists(info_path):
            try:
                with open(info_path, encoding="utf-8") as handle:
                    stored = json.load(handle)
            except ValueError as exc:
                raise BootError(f"failed to parse .instance_info: {exc}") from exc
        if app_compose.get("kms_enabled"):
            raise BootError("Failed to get app key: KMS is not simulated by zerog-sim")
        if stored.get("app_id") and stored["app_id"] != app_id:
            raise BootError("App upgrade is not supported without KMS")
        self.log(f"compose hash: {compose_hash.hex()}", 0.5)
        if not self.spec.tdx:
            raise BootError("Failed to get quote: /dev/tdx_guest: No such file or directory (os error 2)")
        if app_compose.get("local_key_provider_enabled"):
            self.api.notify("boot.progress", "requesting app keys")
            self.log("Requesting the sealing key from the local key provider")
            public_key = os.urandom(32)  # the simulated sealed box opens with the public key itself
            quote = td_quote(self.spec, public_key, compose_hash[:20], compose_hash)
            try:
                reply = json.loads(self.api.call("GetSealingKey", {"quote": quote.hex()}))
                encrypted_key = bytes.fromhex(reply["encrypted_key"])
                provider_quote = bytes.fromhex(reply["provider_quote"])
            except BootError as exc:
                raise BootError(f"Failed to get sealing key: {exc}") from exc
            except (ValueError, KeyError, TypeError) as exc:
                raise BootError(f"Failed to get sealing key: invalid response: {exc}") from exc
            open_sealing_key(encrypted_key, provider_quote, public_key)
            self.log("Got the sealing key", 0.5)
        if not stored.get("app_id"):
            instance_id = os.urandom(20)
            info = (
                {"instance_id": instance_id.hex(), "app_id": app_id}
                if legacy
                else {"instance_id_seed": os.urandom(20).hex(), "instance_id": instance_id.hex(), "app_id": app_id}
            )
            self.api.notify("instance.info", json.dumps(info, separators=(",", ":")))
            self.log("Initializing the encrypted data disk", 1)
        else:
            self.log("Mounting the encrypted data disk", 1)
        self.api.notify("boot.progress", "rootfs ready")

    # the app ------------------------------------------------------------------------------
    def run_app(self, shared: dict) -> None:
        workdir, app_compose, project = shared["workdir"], shared["app_compose"], shared["project"]
        self.log("[  OK  ] Started docker.service - Docker Application Container Engine.", 0.5)
        for sock in ("/var/run/tappd.sock", "/var/run/docker.sock") + (
            ("/var/run/dstack.sock",) if self.generation == "0.5" else ()
        ):
            self.write_file(sock, "")
        self.log("         Starting app-compose.service - App Compose Service...", 0.5)
        try:
            if app_compose.get("runner") != "docker-compose":
                raise ComposeError(f"Unsupported runner: {app_compose.get('runner')}")
            text = app_compose.get("docker_compose_file")
            if not isinstance(text, str):
                raise ComposeError("Missing docker_compose_file")
            self.write_file(workdir + "/docker-compose.yaml", text)
            self.compose_up(text, workdir, project)
        except ComposeError as exc:
            self.console.line(str(exc))
            self.log("[FAILED] Failed to start app-compose.service - App Compose Service.")
            self.log("See 'systemctl status app-compose.service' for details.")
            return
        self.log("[  OK  ] Finished app-compose.service - App Compose Service.")
        self.api.notify("boot.progress", "done")

    def write_file(self, guest_path: str, text: str) -> None:
        host = self.path(guest_path)
        os.makedirs(os.path.dirname(host), exist_ok=True)
        with open(host, "w", encoding="utf-8") as handle:
            handle.write(text)

    def load_services(self, text: str, workdir: str, project: str) -> tuple[str, dict[str, Service]]:
        try:
            doc = parse_yaml(text)
        except YamlError as exc:
            raise ComposeError(f"yaml: {exc}") from exc
        if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
            raise ComposeError("no service selected")
        project = str(doc.get("name") or project)
        services = {}
        for name, raw in doc["services"].items():
            if not isinstance(raw, dict):
                raise ComposeError(f"service {name} must be a mapping")
            image = str(raw.get("image", ""))
            if not image and "build" not in raw:
                raise ComposeError(
                    f'service "{name}" has neither an image nor a build context specified: invalid compose project'
                )
            services[name] = Service(
                name=name,
                image=image,
                container_name=str(raw.get("container_name") or f"{project}-{name}-1"),
                environment=_env_dict(raw.get("environment")),
                ports=[parse_port(p) for p in raw.get("ports") or []],
                mounts=[self.resolve_volume(v, workdir, project) for v in raw.get("volumes") or []],
                restart=str(raw.get("restart") or "no"),
                depends_on=_depends(raw.get("depends_on")),
            )
        return project, services

    def resolve_volume(self, raw, workdir: str, project: str) -> Mount:
        """Resolve a volume entry to a guest path, creating what Docker would create."""
        long_syntax = isinstance(raw, dict)
        if long_syntax:
            kind = str(raw.get("type", "volume"))
            source = str(raw.get("source", ""))
            target = str(raw.get("target", ""))
        else:
            parts = str(raw).split(":")
            if len(parts) == 1:
                source, target = "", parts[0]
            else:
                source, target = parts[0], parts[1]
            kind = "bind" if source.startswith((".", "/", "~")) else "volume"
        if not target.startswith("/"):
            raise ComposeError(f"invalid mount target, must be an absolute path: {target}")
        if kind == "volume":
            name = source or hashlib.sha256(target.encode()).hexdigest()
            host = self.path(f"/var/lib/docker/volumes/{project}_{name}/_data")
            os.makedirs(host, exist_ok=True)
            return Mount(target=target, source=host, kind="volume")
        if kind != "bind":
            raise ComposeError(f"mount type {kind} is not simulated")
        guest_src = os.path.normpath(source if source.startswith("/") else os.path.join(workdir, source))
        host = self.path(guest_src)
        if not os.path.lexists(host):
            if long_syntax and not raw.get("bind", {}).get("create_host_path", False):
                raise ComposeError(f'invalid mount config for type "bind": bind source path does not exist: {guest_src}')
            os.makedirs(host, exist_ok=True)  # Docker creates a missing bind source as a directory
        return Mount(target=target, source=host, kind="bind")

    def compose_up(self, text: str, workdir: str, project: str) -> None:
        project, services = self.load_services(text, workdir, project)
        ordered = start_order(services)
        taken: set[tuple[str, int]] = set()
        for service in ordered:
            for port in service.ports:
                if port.published is None:
                    continue
                if (port.proto, port.published) in taken:
                    raise ComposeError(
                        f"Error response from daemon: driver failed programming external "
                        f"connectivity on endpoint {service.container_name}: Bind for "
                        f"{port.host_ip or '0.0.0.0'}:{port.published} failed: port is "
                        "already allocated"
                    )
                taken.add((port.proto, port.published))
        for service in ordered:
            self.log(f" Container {service.container_name}  Creating", 0.3)
            self.log(f" Container {service.container_name}  Created", 0.3)
        for service in ordered:
            for dep in service.depends_on:
                self.log(f" Container {services[dep].container_name}  Waiting", 0.3)
                self.log(f" Container {services[dep].container_name}  Healthy", 0.3)
            self.log(f" Container {service.container_name}  Starting", 0.3)
            container = self.start_container(service)
            self.containers.append(container)
            for port in service.ports:
                if port.published is None:
                    continue
                serves = container.port is not None and port.target == self.listen_port(service)
                self.network.publish(port.proto, port.host_ip, port.published, container if serves else None)
            self.log(f" Container {service.container_name}  Started", 0.3)

    def is_broker(self, service: Service) -> bool:
        pattern = os.environ.get("ZEROG_SIM_BROKER_IMAGE_RE", DEFAULT_BROKER_IMAGE_RE)
        return re.search(pattern, service.image) is not None

    @staticmethod
    def listen_port(service: Service) -> int:
        """Port the broker listens on inside its container (gin: ``$PORT`` or 8080)."""
        try:
            return int(service.environment.get("PORT", "8080"))
        except ValueError:
            return 8080

    def container_path(self, service: Service, path: str) -> str:
        """Host path of a container path: through its mounts, else in the container's own rootfs."""
        best = None
        for mount in service.mounts:
            target = mount.target.rstrip("/") or "/"
            if (path == target or path.startswith(target + "/")) and (best is None or len(target) > len(best.target)):
                best = mount
        if best is None:
            return self.path(f"/var/lib/docker/containers/{service.container_name}/rootfs{path}")
        rest = path[len(best.target.rstrip("/")) :].lstrip("/")
        return os.path.join(best.source, rest) if rest else best.source

    def start_container(self, service: Service) -> Container:
        log_path = self.path(f"/var/log/containers/{service.container_name}.log")
        if not self.is_broker(service):
            return Container(service, None, None, log_path, None, self.stop)
        config_in_container = service.environment.get("CONFIG_FILE", "/etc/config/config.yaml")
        config = self.container_path(service, config_in_container)
        models = self.container_path(service, "/fine-tuning/execution/models")
        if not os.path.lexists(models):
            os.makedirs(models, exist_ok=True)  # the directory exists in the broker image
        tee = self.container_path(service, "/var/run/tappd.sock")
        port = _free_port()
        module = os.environ.get("ZEROG_SIM_BROKER_MODULE", DEFAULT_BROKER_MODULE)
        argv = [
            sys.executable,
            "-B",
            "-m",
            module,
            "--config",
            config,
            "--config-display",
            config_in_container,
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--models-dir",
            models,
            "--tee-socket",
            tee,
        ]
        env = dict(os.environ)
        env.update(service.environment)
        env["PYTHONPATH"] = os.pathsep.join(p for p in (kit_dir(), os.environ.get("PYTHONPATH")) if p)
        container = Container(service, argv, env, log_path, port, self.stop)
        container.start()
        return container
