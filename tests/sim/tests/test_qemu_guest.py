"""Tests of the ``qemu-system-x86_64`` stand-in and the miniature CVM guest it boots.

Every case runs the real ``tests/sim/bin/qemu-system-x86_64`` script in a subprocess with a
temporary active state (``ZEROG_SIM_STATE``), a temporary VM registry (``ZEROG_SIM_RUN_DIR``)
and an instant boot (``ZEROG_SIM_BOOT_SECONDS=0``).  The dstack host API, the key provider and
the broker are small fakes defined here, so the tests do not depend on other stand-ins; one
case uses the stand-in ``host_api.py`` of the SDK tree when it is present.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import importlib.util
import json
import os
import queue
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

import pytest
import yaml

SIM = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(SIM))

from zerog_sim import guest, qemu  # noqa: E402
from zerog_sim import keyprovider as kp  # noqa: E402

BIN = SIM / "bin" / "qemu-system-x86_64"
HOST_API = SIM / "sdk/common/private-ml-sdk/meta-dstack-nvidia/scripts/bin/host_api.py"

QEMU_82 = "QEMU emulator version 8.2.2 (Debian 1:8.2.2+ds-0ubuntu1.4+tdx1.0)"
QEMU_72 = "QEMU emulator version 7.2.11 (Debian 1:7.2+dfsg-7+deb12u13)"
GPU_VFIO = {
    "bdf": "0000:18:00.0",
    "vendor": "10de",
    "device": "2335",
    "class": "030200",
    "numa_node": 0,
    "iommu_group": 40,
    "driver": "vfio-pci",
    "name": "NVIDIA Corporation GH100 [H200 SXM 141GB]",
    "rev": "a1",
    "cc_mode": "on",
    "ppcie_mode": "off",
    "in_use": False,
}
GPU_NVIDIA = {**GPU_VFIO, "bdf": "0000:2a:00.0", "iommu_group": 57, "driver": "nvidia"}

META_05 = {
    "bios": "ovmf.fd",
    "kernel": "bzImage",
    "cmdline": "console=ttyS0 init=/init panic=1 net.ifnames=0 biosdevname=0 mce=off oops=panic pci=noearly "
    "pci=nommconf random.trust_cpu=y random.trust_bootloader=n tsc=reliable no-kvmclock "
    "dstack.rootfs_hash=495c30821dc03e4e5b99114310e23853ace6178e1c42d6bb566b97f24fcb3aa7 "
    "dstack.rootfs_size=1073741824",
    "initrd": "initramfs.cpio.gz",
    "rootfs": "rootfs.img.verity",
    "version": "0.5.5",
    "git_revision": "25c25025c556ab2f797eeda3bab433f38a8ffb7a",
    "shared_ro": True,
    "is_dev": False,
}
META_03 = {
    "bios": "ovmf.fd",
    "kernel": "bzImage",
    "cmdline": "console=ttyS0 init=/init dstack.fde=1 panic=1 systemd.unified_cgroup_hierarchy=0",
    "initrd": "initramfs.cpio.gz",
    "rootfs": "rootfs.iso",
    "rootfs_hash": "396bbba98698286d6d7c0bba7c91112ae64832c23d529c12203dba33d1c17098",
    "version": "0.3.3",
    "git_revision": "24265c4fa609efb9248821d90697b1aa29bdb5a7",
    "shared_ro": True,
    "is_dev": False,
}

# The compose of the 0G fine-tuning package (finetune-broker.md section 2.1), with #PORT# rendered.
BROKER_COMPOSE = """services:
  mysql:
    image: mysql:8.0
    container_name: 0g-fine-tune-broker-db
    environment:
      MYSQL_ROOT_PASSWORD: 123456
    volumes:
      - mysql-data:/var/lib/mysql
      - ./init.sql:/docker-entrypoint-initdb.d/init.sql
    healthcheck:
      test: ["CMD-SHELL", "mysqladmin ping -h localhost"]
      interval: 10s
      retries: 5
    networks:
      - localhost

  0g-fine-tune-broker:
    image: ghcr.io/0glabs/0g-serving-broker:0.2.1
    privileged: true
    container_name: 0g-fine-tune-broker
    environment:
      - PORT=3080
      - CONFIG_FILE=/etc/config.yaml
    ports:
      - "{port}:3080"
    volumes:
      - /var/run/tappd.sock:/var/run/tappd.sock
      - /var/run/docker.sock:/var/run/docker.sock
      - ./config.local.yaml:/etc/config.yaml
      - /tmp:/tmp
      - ./transformer:/fine-tuning/execution/transformer
      - ./models:/fine-tuning/execution/models
    command: 0g-fine-tuning-server
    networks:
      - localhost
    depends_on:
      mysql:
        condition: service_healthy

volumes:
  mysql-data:

networks:
  localhost:
    name: localhost
    external: false
"""

# A stand-in broker with the interface of zerog_sim.broker: records its argv and what it saw,
# answers GET /v1/model, and exits 1 when the config path is a directory (as the Go broker's
# os.ReadFile does: "read /etc/config.yaml: is a directory").
FAKE_BROKER = """
import argparse, json, os, sys
from http.server import BaseHTTPRequestHandler, HTTPServer
p = argparse.ArgumentParser()
for name in ("--config", "--config-display", "--port", "--bind", "--models-dir", "--tee-socket"):
    p.add_argument(name, required=True)
a = p.parse_args()
seen = {"argv": sys.argv[1:], "config_is_dir": os.path.isdir(a.config),
        "config": open(a.config).read() if os.path.isfile(a.config) else None,
        "models": sorted(os.listdir(a.models_dir)), "tee": os.path.exists(a.tee_socket),
        "env_port": os.environ.get("PORT"), "pid": os.getpid()}
with open(os.environ["FAKE_BROKER_LOG"], "a") as out:
    out.write(json.dumps(seen) + "\\n")
if seen["config_is_dir"]:
    print(f"Error loading configuration: read {a.config_display}: is a directory", file=sys.stderr)
    sys.exit(1)
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = json.dumps({"path": self.path, "models": seen["models"]}).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body))); self.end_headers()
        self.wfile.write(body)
    def log_message(self, *args):
        pass
HTTPServer((a.bind, int(a.port)), H).serve_forever()
"""


# ------------------------------------------------------------------------------------------
# Helpers
# ------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def sender_name() -> str:
    with open("/proc/self/cmdline", "rb") as handle:
        return handle.read().split(b"\0", 1)[0].decode()


def profile(version_text: str = QEMU_82, tdx: bool = True, gpus=(GPU_VFIO, GPU_NVIDIA), **qemu_extra) -> dict:
    return {
        "profile": "unit",
        "root": "/nonexistent-fixture-root",
        "qemu": {"version_text": version_text, "tdx_guest": tdx, **qemu_extra},
        "pccs": {"enabled": True, "port": 8081},
        "sgx_devices": True,
        "pci_devices": list(gpus),
    }


def sealed_reply(quote: bytes, mode: str = "ok") -> dict:
    """What the key provider answers for a TD quote (through the host API, hex-encoded)."""
    parsed = kp.parse_quote(quote)
    assert parsed is not None and parsed.is_tdx
    recipient = parsed.report_data[:32] if mode != "wrong-box" else b"\x01" * 32
    encrypted = kp.seal_box(b"k" * 32, recipient)
    covered = hashlib.sha256(encrypted if mode != "wrong-hash" else b"other").digest()
    provider_quote = kp.make_sgx_quote(covered + bytes(32))
    return {"encrypted_key": encrypted.hex(), "provider_quote": provider_quote.hex()}


class FakeHostApi:
    """The dstack host API as upstream host_api.py behaves; ``mode='down'`` = key provider down."""

    def __init__(self, vm_dir: Path, mode: str = "ok") -> None:
        self.vm_dir = vm_dir
        self.mode = mode
        self.calls: list[tuple[str, dict]] = []
        api = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                api.calls.append((self.path, body))
                if self.path.startswith("/api/GetSealingKey"):
                    if api.mode == "down":
                        self.close_connection = True  # upstream: exception, no response
                        return
                    data = json.dumps(sealed_reply(bytes.fromhex(body["quote"]), api.mode)).encode()
                elif self.path.startswith("/api/Notify"):
                    if body["event"] == "instance.info":
                        (api.vm_dir / "shared" / ".instance_info").write_text(body["payload"])
                    data = b"null"
                else:
                    data = b"null"
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args) -> None:
                pass

        self.server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_port
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def events(self) -> list[str]:
        return [b.get("event", "GetSealingKey") for p, b in self.calls]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class QemuRun:
    """A running stand-in process whose stdout/stderr lines are collected by threads."""

    def __init__(self, argv: list[str], env: dict, cwd: Path) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(BIN), *argv], cwd=cwd, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.stdout: list[str] = []
        self.stderr: list[str] = []
        for stream, sink in ((self.proc.stdout, self.stdout), (self.proc.stderr, self.stderr)):
            threading.Thread(target=self._read, args=(stream, sink), daemon=True).start()

    def _read(self, stream, sink: list[str]) -> None:
        for line in stream:
            sink.append(line.rstrip("\n"))
            if sink is self.stdout:
                self.lines.put(line)

    def wait_for(self, text: str, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while not any(text in line for line in self.stdout):
            if time.monotonic() > deadline:
                raise AssertionError(f"{text!r} not on the console; stdout={self.stdout} stderr={self.stderr}")
            if self.proc.poll() is not None:
                time.sleep(0.2)
                if any(text in line for line in self.stdout):
                    return
                raise AssertionError(f"exited {self.proc.returncode} before {text!r}: stdout={self.stdout} stderr={self.stderr}")
            time.sleep(0.02)

    def wait(self, timeout: float = 20) -> int:
        code = self.proc.wait(timeout=timeout)
        time.sleep(0.1)  # let the reader threads drain
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)


class Bed:
    """One temporary host: state, registry, image and VM directories, fakes."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp = tmp_path
        self.runs: list[QemuRun] = []
        self.apis: list[FakeHostApi] = []
        self.sockets: list[socket.socket] = []
        self.fakes = tmp_path / "fakes"
        self.fakes.mkdir()
        (self.fakes / "fake_broker.py").write_text(FAKE_BROKER)
        self.broker_log = tmp_path / "broker.log"
        self.set_state(profile())

    def set_state(self, state: dict) -> None:
        (self.tmp / "state.json").write_text(json.dumps(state))

    @property
    def env(self) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith("ZEROG_SIM")}
        env.update(
            {
                "ZEROG_SIM_STATE": str(self.tmp / "state.json"),
                "ZEROG_SIM_RUN_DIR": str(self.tmp / "run"),
                "ZEROG_SIM_BOOT_SECONDS": "0",
                "ZEROG_SIM_BROKER_MODULE": "fake_broker",
                "PYTHONPATH": str(self.fakes),
                "FAKE_BROKER_LOG": str(self.broker_log),
            }
        )
        return env

    def image(self, gen: str) -> str:
        name = "dstack-nvidia-0.5.5" if gen == "0.5" else "dstack-nvidia-0.3.3"
        img = self.tmp / "images" / name
        if not img.exists():
            img.mkdir(parents=True)
            for part in ("bzImage", "initramfs.cpio.gz", "ovmf.fd", "rootfs.img.verity" if gen == "0.5" else "rootfs.iso"):
                (img / part).write_text(f"placeholder {part}\n")
            (img / "metadata.json").write_text(json.dumps(META_05 if gen == "0.5" else META_03, indent=4) + "\n")
        return f"images/{name}"

    def vm(
        self,
        gen: str,
        compose: str,
        name: str = "cvm",
        lkp: bool = True,
        api: FakeHostApi | None = None,
        shared_files: dict[str, str | bytes] | None = None,
        api_mode: str = "ok",
    ) -> tuple[str, FakeHostApi]:
        """Create a VM directory the way ``dstack new`` + ``dstack run`` leave it."""
        vm_dir = self.tmp / name
        (vm_dir / "shared" / "certs").mkdir(parents=True)
        (vm_dir / "hda.img").write_text("")
        app = {
            "manifest_version": 1,
            "name": "example",
            "version": "1.0.0",
            "features": [],
            "runner": "docker-compose",
            "docker_compose_file": compose,
            "local_key_provider_enabled": lkp,
        }
        if gen == "0.5":
            app["secure_time"] = False
        (vm_dir / "shared" / "app-compose.json").write_text(json.dumps(app, indent=4))
        if api is None:
            api = FakeHostApi(vm_dir, api_mode)
            self.apis.append(api)
        url = {"host_api_url": f"http://10.0.2.2:{api.port}/api", "host_vsock_port": api.port}
        if gen == "0.3":
            config = {
                "rootfs_hash": META_03["rootfs_hash"],
                "docker_registry": None,
                "pccs_url": "https://api.trustedservices.intel.com/sgx/certification/v4",
                **url,
            }
            (vm_dir / "shared" / "config.json").write_text(json.dumps(config, indent=4))
        else:
            sys_config = {**url, "vm_config": json.dumps({"os_image_hash": "c17a", "cpu_count": 2, "memory_size": 4 << 30})}
            (vm_dir / "shared" / ".sys-config.json").write_text(json.dumps(sys_config, indent=4))
            (vm_dir / "shared" / "config.json").write_text(json.dumps(sys_config, indent=4))
        for rel, content in (shared_files or {}).items():
            path = vm_dir / "shared" / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            if isinstance(content, bytes):
                path.write_bytes(content)
            else:
                path.write_text(content)
        return name, api

    def argv(self, gen: str, vm: str, cid: int = 3365, ports: list[str] | None = None, gpus: tuple[str, ...] = ()) -> list[str]:
        """The QEMU command line of ``dstack run`` (dstack-cli.md section 1.4) for one generation."""
        img = self.image(gen)
        netdev = "user,id=nic0_td" + "".join(f",hostfwd={p}" for p in ports or [])
        head = [
            "-accel",
            "kvm",
            "-m",
            "4096M" if gen == "0.3" else "4G",
            "-smp",
            "2",
            "-cpu",
            "host",
            "-machine",
            "q35,kernel_irqchip=split,confidential-guest-support=tdx,hpet=off",
            "-object",
            "tdx-guest,id=tdx",
            "-nographic",
            "-nodefaults",
            "-chardev",
            "stdio,id=ser0,signal=on",
            "-serial",
            "chardev:ser0",
            "-kernel",
            f"{img}/bzImage",
            "-initrd",
            f"{img}/initramfs.cpio.gz",
            "-bios",
            f"{img}/ovmf.fd",
        ]
        virtfs = ["-virtfs", f"local,path={vm}/shared,mount_tag=host-shared,readonly=off,security_model=mapped,id=virtfs0"]
        vsock = ["-device", f"vhost-vsock-pci,guest-cid={cid}"]
        net = ["-device", "virtio-net-pci,netdev=nic0_td", "-netdev", netdev]
        if gen == "0.3":
            cmd = [
                *head,
                "-cdrom",
                f"{img}/rootfs.iso",
                "-drive",
                f"file={vm}/hda.img,if=none,id=virtio-disk0",
                "-device",
                "virtio-blk-pci,drive=virtio-disk0",
                *virtfs,
                *vsock,
                *net,
            ]
            if gpus:
                cmd += ["-device", "pcie-root-port,id=pci.1,bus=pcie.0", "-fw_cfg", "name=opt/ovmf/X-PciMmio64,string=262144"]
                for i, slot in enumerate(gpus):
                    cmd += ["-object", f"iommufd,id=iommufd{i}", "-device", f"vfio-pci,host={slot},bus=pci.1,iommufd=iommufd{i}"]
            return [*cmd, "-append", META_03["cmdline"]]
        cmd = [
            *head,
            *virtfs,
            *vsock,
            "-drive",
            f"file={img}/rootfs.img.verity,if=none,id=virtio-disk0,format=raw",
            "-device",
            "virtio-blk-pci,drive=virtio-disk0",
            "-drive",
            f"file={vm}/hda.img,if=none,id=virtio-disk1",
            "-device",
            "virtio-blk-pci,drive=virtio-disk1",
            *net,
        ]
        if gpus:
            cmd += ["-object", "iommufd,id=iommufd0"]
            for i, slot in enumerate(gpus, start=1):
                cmd += [
                    "-device",
                    f"pcie-root-port,id=pci.{i},bus=pcie.0,chassis={i}",
                    "-device",
                    f"vfio-pci,host={slot},bus=pci.{i},iommufd=iommufd0",
                ]
        return [*cmd, "-append", META_05["cmdline"]]

    def start(self, argv: list[str]) -> QemuRun:
        run = QemuRun(argv, self.env, self.tmp)
        self.runs.append(run)
        return run

    def run(self, argv: list[str], timeout: float = 20) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, str(BIN), *argv],
            cwd=self.tmp, env=self.env, text=True, capture_output=True, timeout=timeout, check=False,
        )

    def guest(self, vm: str) -> Path:
        return self.tmp / vm / ".sim-guest"

    def broker_runs(self) -> list[dict]:
        if not self.broker_log.exists():
            return []
        return [json.loads(line) for line in self.broker_log.read_text().splitlines()]

    def close(self) -> None:
        for run in self.runs:
            run.kill()
        for api in self.apis:
            api.close()
        for sock in self.sockets:
            sock.close()
        for entry in self.broker_runs():
            with contextlib.suppress(ProcessLookupError):
                os.kill(entry["pid"], signal.SIGKILL)


@pytest.fixture
def bed(tmp_path: Path):
    test_bed = Bed(tmp_path)
    yield test_bed
    test_bed.close()


def http_get(port: int, path: str = "/v1/model", timeout: float = 3) -> dict:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=timeout) as reply:
        return json.loads(reply.read())


def wait_http(port: int, timeout: float = 10) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        try:
            return http_get(port)
        except OSError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def connect_outcome(port: int) -> str:
    """'refused' (nothing listens on the host), 'closed' (accepted then closed), or 'open'."""
    try:
        sock = socket.create_connection(("127.0.0.1", port), timeout=2)
    except ConnectionRefusedError:
        return "refused"
    with sock:
        sock.settimeout(2)
        try:
            sock.sendall(b"GET /v1/model HTTP/1.0\r\n\r\n")
            data = sock.recv(100)
        except (ConnectionResetError, BrokenPipeError):
            return "closed"
        return "closed" if not data else "open"


# ------------------------------------------------------------------------------------------
# --version, -object help, -device help
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("version_text", "copyright_year"),
    [
        (QEMU_82, "2023"),
        (QEMU_72, "2022"),
        ("QEMU emulator version 9.2.1 (dstack-qemu 9.2.1)", "2024"),
        ("QEMU emulator version 10.1.0", "2025"),
    ],
)
def test_version_prints_profile_text_and_copyright(bed: Bed, version_text: str, copyright_year: str) -> None:
    bed.set_state(profile(version_text=version_text))
    result = bed.run(["--version"])
    assert (result.returncode, result.stderr) == (0, "")
    assert result.stdout == (
        f"{version_text}\nCopyright (c) 2003-{copyright_year} Fabrice Bellard and the QEMU Project developers\n"
    )


@pytest.mark.parametrize("tdx", [True, False])
def test_object_help_lists_tdx_guest_only_when_supported(bed: Bed, tdx: bool) -> None:
    bed.set_state(profile(tdx=tdx))
    result = bed.run(["-object", "help"])
    lines = result.stdout.splitlines()
    assert result.returncode == 0
    assert lines[0] == "List of user creatable objects:"
    assert ("  tdx-guest" in lines) is tdx
    assert "  iommufd" in lines and "  memory-backend-file" in lines
    assert lines[1:] == sorted(lines[1:])


@pytest.mark.parametrize(
    ("extra", "present", "absent"),
    [
        ({}, ['name "virtio-9p-pci", bus PCI, alias "virtio-9p"', 'name "vhost-vsock-pci", bus PCI'], []),
        ({"virtfs": False}, ['name "vhost-vsock-pci", bus PCI'], ['name "virtio-9p-pci", bus PCI, alias "virtio-9p"']),
    ],
)
def test_device_help_follows_profile(bed: Bed, extra: dict, present: list[str], absent: list[str]) -> None:
    bed.set_state(profile(**extra))
    result = bed.run(["-device", "help"])
    lines = result.stdout.splitlines()
    assert result.returncode == 0
    assert all(line in lines for line in present)
    assert not any(line in lines for line in absent)


def test_missing_state_is_reported(bed: Bed) -> None:
    env = bed.env
    env["ZEROG_SIM_STATE"] = str(bed.tmp / "absent.json")
    result = subprocess.run([sys.executable, str(BIN), "--version"], env=env, text=True, capture_output=True, check=False)
    assert result.returncode == 70
    assert result.stderr == (
        f"qemu-system-x86_64: zerog-sim: no active host state at {bed.tmp}/absent.json (set ZEROG_SIM_STATE)\n"
    )


# ------------------------------------------------------------------------------------------
# Command-line strictness
# ------------------------------------------------------------------------------------------

ARGV_CASES = [
    (["-foo"], 1, "qemu-system-x86_64: -foo: invalid option"),
    (["--no-such-option", "x"], 1, "qemu-system-x86_64: --no-such-option: invalid option"),
    (["-m"], 1, "qemu-system-x86_64: -m: requires an argument"),
    (["-accel", "kvm", "-append"], 1, "qemu-system-x86_64: -append: requires an argument"),
    (
        ["-device", "virtio-9p-pcie,id=x"],
        1,
        "qemu-system-x86_64: -device virtio-9p-pcie,id=x: 'virtio-9p-pcie' is not a valid device model name",
    ),
    (
        ["-object", "sev-snp-guest,id=x"],
        1,
        "qemu-system-x86_64: -object sev-snp-guest,id=x: Parameter 'qom-type' does not accept value 'sev-snp-guest'",
    ),
    (["-object", "iommufd"], 1, "qemu-system-x86_64: -object iommufd: Parameter 'id' is missing"),
    (["-netdev", "user,hostfwd=tcp::1-:2"], 1, "qemu-system-x86_64: -netdev user,hostfwd=tcp::1-:2: Parameter 'id' is missing"),
    (["-virtfs", "local,path=/tmp"], 1, "qemu-system-x86_64: -virtfs local,path=/tmp: Usage: -virtfs fsdriver,mount_tag=tag"),
    (
        ["-m", "4X"],
        1,
        "qemu-system-x86_64: -m 4X: Parameter 'size' expects a non-negative number below 2^64\n"
        "Optional suffix k, M, G, T, P or E means kilo-, mega-, giga-, tera-, peta-\nand exabytes, respectively.",
    ),
    (["-drive", "file=x,bogus=1"], 1, "qemu-system-x86_64: -drive file=x,bogus=1: Invalid parameter 'bogus'"),
    (["-vnc", ":0"], 70, "qemu-system-x86_64: zerog-sim: not simulated: -vnc: option not simulated"),
    (
        ["disk.img"],
        70,
        "qemu-system-x86_64: zerog-sim: not simulated: disk.img: a positional disk image argument is not simulated",
    ),
    (["-accel", "tcg"], 70, "qemu-system-x86_64: zerog-sim: not simulated: -accel tcg: accelerator 'tcg'"),
    (["-netdev", "tap,id=n0"], 70, "qemu-system-x86_64: zerog-sim: not simulated: -netdev tap,id=n0: netdev type 'tap'"),
]


@pytest.mark.parametrize(("argv", "code", "stderr"), ARGV_CASES)
def test_argv_is_parsed_strictly(bed: Bed, argv: list[str], code: int, stderr: str) -> None:
    result = bed.run(argv)
    assert (result.returncode, result.stdout, result.stderr) == (code, "", stderr + "\n")


@pytest.mark.parametrize(
    ("rule", "message"),
    [
        ("tcp:0.0.0.0:8080-:8080", None),
        ("udp:127.0.0.1:5353-:53", None),
        (":127.0.0.1:1-10.0.2.15:22", None),
        ("sctp:0.0.0.0:1-:2", "Invalid host forwarding rule 'sctp:0.0.0.0:1-:2' (Bad protocol name)"),
        ("tcp", "Invalid host forwarding rule 'tcp' (No : separators)"),
        ("tcp:0.0.0.0", "Invalid host forwarding rule 'tcp:0.0.0.0' (Missing : separator)"),
        ("tcp:300.0.0.1:1-:2", "Invalid host forwarding rule 'tcp:300.0.0.1:1-:2' (Bad host address)"),
        ("tcp:0.0.0.0:8080:8080", "Invalid host forwarding rule 'tcp:0.0.0.0:8080:8080' (Bad host port separator)"),
        ("tcp:0.0.0.0:x-:1", "Invalid host forwarding rule 'tcp:0.0.0.0:x-:1' (Bad host port)"),
        ("tcp:0.0.0.0:1-2", "Invalid host forwarding rule 'tcp:0.0.0.0:1-2' (Missing guest address)"),
        ("tcp:0.0.0.0:1-:0", "Invalid host forwarding rule 'tcp:0.0.0.0:1-:0' (Bad guest port)"),
    ],
)
def test_hostfwd_syntax(rule: str, message: str | None) -> None:
    if message is None:
        assert qemu.parse_hostfwd(rule).rule == rule
    else:
        with pytest.raises(qemu.QemuError) as err:
            qemu.parse_hostfwd(rule)
        assert err.value.message == message


# ------------------------------------------------------------------------------------------
# Startup failures (exit 1, QEMU's text)
# ------------------------------------------------------------------------------------------


def _edit(argv: list[str], old: str, new: str) -> list[str]:
    return [a.replace(old, new) for a in argv]


FAILURES = [
    (
        "no tdx-guest in this QEMU",
        "0.5",
        {"tdx": False},
        lambda a: a,
        "qemu-system-x86_64: -object tdx-guest,id=tdx: Parameter 'qom-type' does not accept value 'tdx-guest'",
    ),
    (
        "vfio host not in the profile",
        "0.3",
        {},
        lambda a: _edit(a, "host=18:00.0", "host=99:00.0"),
        "qemu-system-x86_64: -device vfio-pci,host=99:00.0,bus=pci.1,iommufd=iommufd0: "
        "vfio /sys/bus/pci/devices/0000:99:00.0: no such host device: No such file or directory",
    ),
    (
        "vfio host bound to nvidia",
        "0.5",
        {},
        lambda a: _edit(a, "host=18:00.0", "host=2a:00.0"),
        "qemu-system-x86_64: -device vfio-pci,host=2a:00.0,bus=pci.1,iommufd=iommufd0: vfio 0000:2a:00.0: "
        "vfio /sys/bus/pci/devices/0000:2a:00.0/vfio-dev: couldn't open directory "
        "/sys/bus/pci/devices/0000:2a:00.0/vfio-dev: No such file or directory",
    ),
    (
        "missing kernel",
        "0.5",
        {},
        lambda a: _edit(a, "bzImage", "bzImage-missing"),
        "qemu: could not open kernel file 'images/dstack-nvidia-0.5.5/bzImage-missing': No such file or directory",
    ),
    (
        "missing initrd",
        "0.3",
        {},
        lambda a: _edit(a, "initramfs.cpio.gz", "initrd-missing"),
        "qemu: error reading initrd images/dstack-nvidia-0.3.3/initrd-missing: Failed to open file "
        "\u201cimages/dstack-nvidia-0.3.3/initrd-missing\u201d: No such file or directory",
    ),
    (
        "missing bios",
        "0.5",
        {},
        lambda a: _edit(a, "ovmf.fd", "OVMF-missing.fd"),
        "qemu: could not load PC BIOS 'images/dstack-nvidia-0.5.5/OVMF-missing.fd'",
    ),
    (
        "missing data disk",
        "0.5",
        {},
        lambda a: _edit(a, "hda.img", "hdb.img"),
        "qemu-system-x86_64: -drive file=cvm/hdb.img,if=none,id=virtio-disk1: Could not open 'cvm/hdb.img': "
        "No such file or directory",
    ),
    (
        "missing 0.3 rootfs.iso",
        "0.3",
        {},
        lambda a: _edit(a, "rootfs.iso", "rootfs.img"),
        "qemu-system-x86_64: -cdrom images/dstack-nvidia-0.3.3/rootfs.img: Could not open "
        "'images/dstack-nvidia-0.3.3/rootfs.img': No such file or directory",
    ),
    (
        "missing shared dir",
        "0.5",
        {},
        lambda a: _edit(a, "path=cvm/shared", "path=cvm/nope"),
        "qemu-system-x86_64: -virtfs local,path=cvm/nope,mount_tag=host-shared,readonly=off,security_model=mapped,"
        "id=virtfs0: cannot initialize fsdev 'virtfs0': failed to open 'cvm/nope': No such file or directory",
    ),
    (
        "QEMU without 9p",
        "0.3",
        {"virtfs": False},
        lambda a: a,
        "qemu-system-x86_64: -virtfs local,path=cvm/shared,mount_tag=host-shared,readonly=off,security_model=mapped,"
        "id=virtfs0: 'virtio-9p-pci' is not a valid device model name",
    ),
    (
        "reserved guest cid",
        "0.5",
        {},
        lambda a: _edit(a, "guest-cid=3365", "guest-cid=2"),
        "qemu-system-x86_64: -device vhost-vsock-pci,guest-cid=2: vhost-vsock: guest-cid property must be greater than 2",
    ),
    (
        "bad hostfwd protocol",
        "0.5",
        {},
        lambda a: _edit(a, "user,id=nic0_td", "user,id=nic0_td,hostfwd=sctp::1-:2"),
        "qemu-system-x86_64: -netdev user,id=nic0_td,hostfwd=sctp::1-:2: Invalid host forwarding rule "
        "'sctp::1-:2' (Bad protocol name)",
    ),
    (
        "unknown vfio bus",
        "0.3",
        {},
        lambda a: _edit(a, "bus=pci.1,iommufd", "bus=pci.7,iommufd"),
        "qemu-system-x86_64: -device vfio-pci,host=18:00.0,bus=pci.7,iommufd=iommufd0: Bus 'pci.7' not found",
    ),
    (
        "cgs without object",
        "0.5",
        {},
        lambda a: _edit(a, "confidential-guest-support=tdx", "confidential-guest-support=td"),
        "qemu-system-x86_64: -machine q35,kernel_irqchip=split,confidential-guest-support=td,hpet=off: Property "
        "'pc-q35-8.2-machine.confidential-guest-support' can't find value 'td'",
    ),
]


@pytest.mark.parametrize(("gen", "state_extra", "edit", "stderr"), [c[1:] for c in FAILURES], ids=[c[0] for c in FAILURES])
def test_startup_failures(bed: Bed, gen: str, state_extra: dict, edit, stderr: str) -> None:
    tdx = state_extra.pop("tdx", True)
    bed.set_state(profile(tdx=tdx, **state_extra))
    vm, _api = bed.vm(gen, "services: {}\n")
    result = bed.run(edit(bed.argv(gen, vm, gpus=("18:00.0",))))
    assert (result.returncode, result.stdout, result.stderr) == (1, "", stderr + "\n")
    assert not bed.guest(vm).exists()


def test_kvm_without_tdx_fails(bed: Bed) -> None:
    root = bed.tmp / "root"
    param = root / "sys/module/kvm_intel/parameters/tdx"
    param.parent.mkdir(parents=True)
    param.write_text("N\n")
    state = profile()
    state["root"] = str(root)
    bed.set_state(state)
    vm, _api = bed.vm("0.5", "services: {}\n")
    result = bed.run(bed.argv("0.5", vm))
    assert (result.returncode, result.stderr) == (1, "qemu-system-x86_64: vm-type TDX not supported by KVM\n")


def test_guest_cid_in_use_by_running_vm(bed: Bed) -> None:
    vm1, _api = bed.vm("0.5", "services: {}\n", name="cvm1")
    vm2, _api = bed.vm("0.5", "services: {}\n", name="cvm2")
    first = bed.start(bed.argv("0.5", vm1, cid=4242))
    first.wait_for("Finished app-compose.service")
    result = bed.run(bed.argv("0.5", vm2, cid=4242))
    assert (result.returncode, result.stderr) == (
        1,
        "qemu-system-x86_64: -device vhost-vsock-pci,guest-cid=4242: vhost-vsock: unable to set guest cid: "
        "Address already in use\n",
    )
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait() == 0
    # Once the first VM is gone its CID is free again.
    second = bed.start(bed.argv("0.5", vm2, cid=4242))
    second.wait_for("Finished app-compose.service")


def test_gpu_assigned_to_running_vm(bed: Bed) -> None:
    vm1, _api = bed.vm("0.5", "services: {}\n", name="cvm1")
    vm2, _api = bed.vm("0.5", "services: {}\n", name="cvm2")
    first = bed.start(bed.argv("0.5", vm1, cid=10, gpus=("18:00.0",)))
    first.wait_for("Finished app-compose.service")
    result = bed.run(bed.argv("0.5", vm2, cid=11, gpus=("18:00.0",)))
    assert (result.returncode, result.stderr) == (
        1,
        "qemu-system-x86_64: -device vfio-pci,host=18:00.0,bus=pci.1,iommufd=iommufd0: vfio 0000:18:00.0: "
        "vfio /sys/bus/pci/devices/0000:18:00.0/vfio-dev: Failed to open /dev/vfio/devices/vfio0\n",
    )


def test_hostfwd_port_already_bound(bed: Bed) -> None:
    port = free_port()
    blocker = socket.socket()
    blocker.bind(("127.0.0.1", port))
    blocker.listen(1)
    bed.sockets.append(blocker)
    vm, _api = bed.vm("0.5", "services: {}\n")
    rule = f"tcp:127.0.0.1:{port}-:8080"
    result = bed.run(bed.argv("0.5", vm, ports=[rule, "tcp:127.0.0.1:0-:22"]))
    assert (result.returncode, result.stderr) == (1, f"qemu-system-x86_64: Could not set up host forwarding rule '{rule}'\n")


# ------------------------------------------------------------------------------------------
# Host-shared copy semantics
# ------------------------------------------------------------------------------------------

SHARED_EXTRAS = {
    "config.local.yaml": "servingUrl: x\n",
    "init.sql": "CREATE DATABASE IF NOT EXISTS fineTune;\n",
    "env-file": "A=1\n",
    ".user-config": "user: cfg\n",
    ".encrypted-env": "00ff",
    "models/usage.zip": "zip",
}


def _tree(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) + ("/" if p.is_dir() and not p.is_symlink() else "") for p in root.rglob("*"))


@pytest.mark.parametrize(
    ("gen", "expected"),
    [
        (
            "0.3",
            [
                "tapp/",
                "tapp/.encrypted-env",
                "tapp/.user-config",
                "tapp/app-compose.json",
                "tapp/certs/",
                "tapp/config.json",
                "tapp/config.local.yaml",
                "tapp/docker-compose.yaml",
                "tapp/env-file",
                "tapp/init.sql",
                "tapp/models/",
                "tapp/models/usage.zip",
            ],
        ),
        (
            "0.5",
            [
                "dstack/",
                "dstack/.host-shared/",
                "dstack/.host-shared/.encrypted-env",
                "dstack/.host-shared/.sys-config.json",
                "dstack/.host-shared/.user-config",
                "dstack/.host-shared/app-compose.json",
                "dstack/docker-compose.yaml",
                "dstack/user_config",
            ],
        ),
    ],
)
def test_host_shared_copy_semantics(bed: Bed, gen: str, expected: list[str]) -> None:
    vm, api = bed.vm(gen, "services: {}\n", shared_files=SHARED_EXTRAS)
    run = bed.start(bed.argv(gen, vm))
    run.wait_for("Finished app-compose.service")
    work = bed.guest(vm) / ("tapp" if gen == "0.3" else "dstack")
    assert [e for e in _tree(bed.guest(vm)) if e.startswith(work.name + "/") or e == work.name + "/"] == expected
    if gen == "0.5":
        assert os.readlink(work / "user_config") == ".host-shared/.user-config"
        assert (work / "user_config").read_text() == "user: cfg\n"
    # The first boot records the app identity through the host API; it lands in shared/.
    info = json.loads((bed.tmp / vm / "shared" / ".instance_info").read_text())
    app_hash = hashlib.sha256((bed.tmp / vm / "shared" / "app-compose.json").read_bytes()).hexdigest()
    assert info["app_id"] == app_hash[:40]
    # The last progress notification may still be in flight when the console line shows.
    want = ["boot.progress", "boot.progress", "GetSealingKey", "instance.info", "boot.progress", "boot.progress"]
    deadline = time.monotonic() + 10
    while api.events() != want and time.monotonic() < deadline:
        time.sleep(0.05)
    assert api.events() == want


@pytest.mark.parametrize(
    ("files", "removed", "message"),
    [
        ({}, "app-compose.json", "Source file app-compose.json does not exist"),
        ({}, ".sys-config.json", "Source file .sys-config.json does not exist"),
        ({".user-config": "x" * (1024 * 1024 + 1)}, None, "Source file .user-config is too large, max size is 1048576 bytes"),
        ({".sys-config.json": "x" * (32 * 1024 + 1)}, None, "Source file .sys-config.json is too large, max size is 32768 bytes"),
        (
            {"app-compose.json": "x" * (256 * 1024 + 1)},
            None,
            "Source file app-compose.json is too large, max size is 262144 bytes",
        ),
    ],
)
def test_05_whitelist_failures_abort_boot(bed: Bed, files: dict, removed: str | None, message: str) -> None:
    vm, _api = bed.vm("0.5", "services: {}\n", shared_files=files)
    if removed:
        (bed.tmp / vm / "shared" / removed).unlink()
    run = bed.start(bed.argv("0.5", vm))
    assert run.wait() == 0  # the guest reboots; a TDX QEMU turns that into a shutdown
    assert f"Error: {message}" in run.stdout
    assert f"boot.error: {message}" in run.stdout
    assert "[FAILED] Failed to start dstack-prepare.service - dstack Guest Preparation Service." in run.stdout
    assert "app-compose.service" not in "\n".join(run.stdout)
    assert run.stderr == []


@pytest.mark.parametrize("gen", ["0.3", "0.5"])
def test_symlinked_user_config(bed: Bed, gen: str) -> None:
    """0.5 opens whitelist files with O_NOFOLLOW; 0.3's cp -r copies the link itself."""
    vm, _api = bed.vm(gen, "services: {}\n", shared_files={"real-config": "x: 1\n"})
    os.symlink("real-config", bed.tmp / vm / "shared" / ".user-config")
    run = bed.start(bed.argv(gen, vm))
    if gen == "0.5":
        assert run.wait() == 0
        assert "boot.error: failed to open file `.user-config`: Too many levels of symbolic links (os error 40)" in run.stdout
    else:
        run.wait_for("Finished app-compose.service")
        assert os.readlink(bed.guest(vm) / "tapp/.user-config") == "real-config"


def test_05_size_limit_is_inclusive(bed: Bed) -> None:
    vm, _api = bed.vm("0.5", "services: {}\n", shared_files={".user-config": "x" * (1024 * 1024)})
    run = bed.start(bed.argv("0.5", vm))
    run.wait_for("Finished app-compose.service")
    assert (bed.guest(vm) / "dstack/user_config").stat().st_size == 1024 * 1024


def _drop(argv: list[str], *pairs: tuple[str, str]) -> list[str]:
    out = list(argv)
    for option, value in pairs:
        index = next(i for i in range(len(out) - 1) if out[i] == option and out[i + 1] == value)
        del out[index : index + 2]
    return out


GUEST_FAILURES = [
    (
        "0.5 without data disk",
        lambda a: _drop(
            a, ("-drive", "file=cvm/hda.img,if=none,id=virtio-disk1"), ("-device", "virtio-blk-pci,drive=virtio-disk1")
        ),
        ["Error: Persistent data disk /dev/vdb not found", "boot.error: Persistent data disk /dev/vdb not found"],
    ),
    (
        "0.5 without rootfs",
        lambda a: _drop(
            a,
            ("-drive", "file=images/dstack-nvidia-0.5.5/rootfs.img.verity,if=none,id=virtio-disk0,format=raw"),
            ("-device", "virtio-blk-pci,drive=virtio-disk0"),
        ),
        ["dstack: rootfs rootfs.img.verity not attached"],
    ),
    (
        "0.5 as a plain VM (no TDX)",
        lambda a: _edit(a, "confidential-guest-support=tdx,", ""),
        ["boot.error: Failed to get quote: /dev/tdx_guest: No such file or directory (os error 2)"],
    ),
]


@pytest.mark.parametrize(("edit", "lines"), [c[1:] for c in GUEST_FAILURES], ids=[c[0] for c in GUEST_FAILURES])
def test_guest_boot_failures_power_off(bed: Bed, edit, lines: list[str]) -> None:
    vm, _api = bed.vm("0.5", "services: {}\n")
    run = bed.start(edit(bed.argv("0.5", vm)))
    assert run.wait() == 0
    for line in lines:
        assert line in run.stdout
    assert not any("app-compose.service" in line for line in run.stdout)


def test_03_missing_config_json_panics(bed: Bed) -> None:
    vm, _api = bed.vm("0.3", "services: {}\n")
    (bed.tmp / vm / "shared" / "config.json").unlink()
    run = bed.start(bed.argv("0.3", vm))
    assert run.wait() == 0
    assert "Error: failed to open file `/tapp/config.json`: No such file or directory (os error 2)" in run.stdout
    assert any("Kernel panic - not syncing: Attempted to kill init!" in line for line in run.stdout)


# ------------------------------------------------------------------------------------------
# Key provider and compose drift
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("gen", "mode", "message"),
    [
        ("0.3", "down", "Failed to get sealing key: connection closed before message completed"),
        ("0.5", "down", "Failed to get sealing key: connection closed before message completed"),
        ("0.5", "wrong-hash", "Invalid key hash"),
        ("0.5", "wrong-box", "Failed to open sealing key"),
    ],
)
def test_key_provider_failure_aborts_boot(bed: Bed, gen: str, mode: str, message: str) -> None:
    vm, api = bed.vm(gen, "services: {}\n", api_mode=mode)
    run = bed.start(bed.argv(gen, vm))
    assert run.wait() == 0
    assert f"boot.error: {message}" in run.stdout
    assert api.calls[-1] == ("/api/Notify?json", {"event": "boot.error", "payload": message})
    assert not (bed.tmp / vm / "shared" / ".instance_info").exists()


def test_no_local_key_provider_skips_sealing_key(bed: Bed) -> None:
    vm, api = bed.vm("0.5", "services: {}\n", lkp=False, api_mode="down")
    run = bed.start(bed.argv("0.5", vm))
    run.wait_for("Finished app-compose.service")
    assert "GetSealingKey" not in api.events()


@pytest.mark.parametrize("gen", ["0.3", "0.5"])
def test_compose_drift_is_refused(bed: Bed, gen: str) -> None:
    vm, api = bed.vm(gen, "services: {}\n")
    first = bed.start(bed.argv(gen, vm))
    first.wait_for("Finished app-compose.service")
    first.proc.send_signal(signal.SIGTERM)
    assert first.wait() == 0
    # Editing the compose in place changes the compose hash; the stored app_id no longer matches.
    path = bed.tmp / vm / "shared" / "app-compose.json"
    app = json.loads(path.read_text())
    app["docker_compose_file"] = "services:\n  x:\n    image: busybox\n"
    path.write_text(json.dumps(app, indent=4))
    second = bed.start(bed.argv(gen, vm))
    assert second.wait() == 0
    assert "boot.error: App upgrade is not supported without KMS" in second.stdout
    assert api.calls[-1][1] == {"event": "boot.error", "payload": "App upgrade is not supported without KMS"}


def test_unchanged_compose_boots_again(bed: Bed) -> None:
    vm, api = bed.vm("0.5", "services: {}\n")
    for _attempt in range(2):
        run = bed.start(bed.argv("0.5", vm))
        run.wait_for("Finished app-compose.service")
        run.proc.send_signal(signal.SIGTERM)
        assert run.wait() == 0
    assert api.events().count("instance.info") == 1
    assert "Mounting the encrypted data disk" in run.stdout


# ------------------------------------------------------------------------------------------
# The app: broker chain, port forwarding, shutdown
# ------------------------------------------------------------------------------------------


def test_full_chain_03_reaches_broker(bed: Bed) -> None:
    host_port = free_port()
    vm, _api = bed.vm(
        "0.3",
        BROKER_COMPOSE.replace("{port}", "8080"),
        shared_files={"config.local.yaml": "servingUrl: http://x\n", "init.sql": "-- sql\n", "models/usage.zip": "zip"},
    )
    run = bed.start(bed.argv("0.3", vm, ports=[f"tcp:127.0.0.1:{host_port}-:8080", "tcp:127.0.0.1:0-:22"]))
    run.wait_for("Finished app-compose.service")
    assert wait_http(host_port) == {"path": "/v1/model", "models": ["usage.zip"]}
    (seen,) = bed.broker_runs()
    guest_root = bed.guest(vm)
    assert seen["argv"][0:4] == ["--config", str(guest_root / "tapp/config.local.yaml"), "--config-display", "/etc/config.yaml"]
    assert seen["argv"][6:] == [
        "--bind",
        "127.0.0.1",
        "--models-dir",
        str(guest_root / "tapp/models"),
        "--tee-socket",
        str(guest_root / "var/run/tappd.sock"),
    ]
    assert (seen["config"], seen["tee"], seen["env_port"]) == ("servingUrl: http://x\n", True, "3080")
    assert (guest_root / "tapp/docker-compose.yaml").read_text() == BROKER_COMPOSE.replace("{port}", "8080")
    for line in (
        " Container 0g-fine-tune-broker-db  Started",
        " Container 0g-fine-tune-broker-db  Healthy",
        " Container 0g-fine-tune-broker  Started",
    ):
        assert line in run.stdout
    assert (guest_root / "var/lib/docker/volumes/tapp_mysql-data/_data").is_dir()
    # SIGTERM: QEMU's message, exit 0, and the broker is gone with the VM.
    run.proc.send_signal(signal.SIGTERM)
    assert run.wait() == 0
    assert run.stderr == [f"qemu-system-x86_64: terminating on signal 15 from pid {os.getpid()} ({sender_name()})"]
    with pytest.raises(ProcessLookupError):
        os.kill(seen["pid"], 0)
    assert connect_outcome(host_port) == "refused"
    assert os.listdir(bed.tmp / "run" / "vms") == [".lock"]


def test_05_ignores_config_local_yaml(bed: Bed) -> None:
    """0.5 images copy only the whitelist: Docker creates ./config.local.yaml as a directory."""
    host_port = free_port()
    vm, _api = bed.vm("0.5", BROKER_COMPOSE.replace("{port}", "8080"), shared_files={"config.local.yaml": "servingUrl: http://x\n"})
    run = bed.start(bed.argv("0.5", vm, ports=[f"tcp:127.0.0.1:{host_port}-:8080"]))
    run.wait_for("Finished app-compose.service")
    deadline = time.monotonic() + 10
    while not bed.broker_runs() and time.monotonic() < deadline:
        time.sleep(0.05)
    (seen,) = bed.broker_runs()
    config = bed.guest(vm) / "dstack/config.local.yaml"
    assert seen["argv"][0:4] == ["--config", str(config), "--config-display", "/etc/config.yaml"]
    assert seen["config_is_dir"] is True and config.is_dir()
    assert (bed.guest(vm) / "dstack/models").is_dir()
    time.sleep(0.3)
    assert connect_outcome(host_port) == "closed"  # the broker exited: nothing answers behind the forward
    log = bed.guest(vm) / "var/log/containers/0g-fine-tune-broker.log"
    assert "Error loading configuration: read /etc/config.yaml: is a directory\n" in log.read_text()


def test_03_single_port_drop_means_nothing_answers(bed: Bed) -> None:
    """The 0.3 script emits no hostfwd for a single --port: the host port is not even bound."""
    host_port = free_port()
    vm, _api = bed.vm(
        "0.3", BROKER_COMPOSE.replace("{port}", str(host_port)), shared_files={"config.local.yaml": "servingUrl: http://x\n"}
    )
    run = bed.start(bed.argv("0.3", vm, ports=[]))
    run.wait_for("Finished app-compose.service")
    deadline = time.monotonic() + 10
    while not bed.broker_runs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(bed.broker_runs()) == 1  # the broker runs inside the guest...
    assert connect_outcome(host_port) == "refused"  # ...but nothing on the host reaches it


@pytest.mark.parametrize(
    ("compose_port", "fwd_guest_port", "outcome"),
    [
        ("8080:3080", 8080, "open"),
        ("9000:3080", 8080, "closed"),  # forward to a guest port nothing publishes
        ("8080:3000", 8080, "closed"),  # published to a container port the broker does not listen on
        ("127.0.0.1:8080:3080", 8080, "closed"),  # published on the guest's loopback only
    ],
)
def test_forwarding_chain_must_map_end_to_end(bed: Bed, compose_port: str, fwd_guest_port: int, outcome: str) -> None:
    host_port = free_port()
    compose = BROKER_COMPOSE.replace('"{port}:3080"', f'"{compose_port}"')
    vm, _api = bed.vm("0.3", compose, shared_files={"config.local.yaml": "servingUrl: http://x\n"})
    run = bed.start(bed.argv("0.3", vm, ports=[f"tcp:127.0.0.1:{host_port}-:{fwd_guest_port}", "tcp::0-:22"]))
    run.wait_for("Finished app-compose.service")
    deadline = time.monotonic() + 10
    result = connect_outcome(host_port)
    while result != outcome and time.monotonic() < deadline:
        time.sleep(0.1)
        result = connect_outcome(host_port)
    assert result == outcome


def test_unrendered_port_placeholder_fails_compose(bed: Bed) -> None:
    vm, _api = bed.vm("0.5", BROKER_COMPOSE.replace("{port}", "#PORT#"))
    run = bed.start(bed.argv("0.5", vm))
    run.wait_for("[FAILED] Failed to start app-compose.service - App Compose Service.")
    assert "invalid hostPort: #PORT#" in run.stdout
    assert bed.broker_runs() == []
    assert run.proc.poll() is None  # a failed app leaves the VM running


def test_sigint_without_sender_and_children_stopped(bed: Bed) -> None:
    vm, _api = bed.vm("0.3", BROKER_COMPOSE.replace("{port}", "8080"), shared_files={"config.local.yaml": "servingUrl: http://x\n"})
    run = bed.start(bed.argv("0.3", vm, ports=["tcp:127.0.0.1:0-:8080", "tcp:127.0.0.1:0-:22"]))
    run.wait_for("Finished app-compose.service")
    deadline = time.monotonic() + 10
    while not bed.broker_runs() and time.monotonic() < deadline:
        time.sleep(0.05)
    (seen,) = bed.broker_runs()
    os.kill(run.proc.pid, signal.SIGINT)
    assert run.wait() == 0
    assert run.stderr == [f"qemu-system-x86_64: terminating on signal 2 from pid {os.getpid()} ({sender_name()})"]
    with pytest.raises(ProcessLookupError):
        os.kill(seen["pid"], 0)


def test_broker_dies_with_killed_qemu(bed: Bed) -> None:
    """Even SIGKILL of QEMU leaves no broker behind (parent-death signal)."""
    vm, _api = bed.vm("0.3", BROKER_COMPOSE.replace("{port}", "8080"), shared_files={"config.local.yaml": "servingUrl: http://x\n"})
    run = bed.start(bed.argv("0.3", vm, ports=["tcp:127.0.0.1:0-:8080", "tcp:127.0.0.1:0-:22"]))
    run.wait_for("Finished app-compose.service")
    deadline = time.monotonic() + 10
    while not bed.broker_runs() and time.monotonic() < deadline:
        time.sleep(0.05)
    (seen,) = bed.broker_runs()
    run.proc.kill()
    run.proc.wait()
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        try:
            os.kill(seen["pid"], 0)
        except ProcessLookupError:
            break
        time.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        os.kill(seen["pid"], 0)


def test_console_follows_serial_wiring(bed: Bed) -> None:
    vm, _api = bed.vm("0.5", "services: {}\n")
    argv = [a for a in bed.argv("0.5", vm) if a not in ("-serial", "chardev:ser0")]
    run = bed.start(argv)  # -nodefaults and no -serial: no console at all
    time.sleep(1.0)
    assert run.proc.poll() is None
    assert run.stdout == []
    assert (bed.guest(vm) / "dstack/docker-compose.yaml").exists()


# The newer 0gfoundation compose (finetune-broker.md section 2.2): config from /dstack/user_config.
USER_CONFIG_COMPOSE = """services:
  0g-fine-tune-broker:
    image: ghcr.io/0gfoundation/0g-serving-broker:latest
    privileged: true
    restart: always
    environment:
      - PORT=3080
      - CONFIG_FILE=/etc/config.yaml
    ports:
      - "8080:3080"
    volumes:
      - /var/run/tappd.sock:/var/run/tappd.sock
      - /dstack/user_config:/etc/config.yaml
      - ./models:/fine-tuning/execution/models
"""


def _wait_broker_runs(bed: Bed, count: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while len(bed.broker_runs()) < count and time.monotonic() < deadline:
        time.sleep(0.05)
    return bed.broker_runs()


def test_05_user_config_reaches_broker(bed: Bed) -> None:
    host_port = free_port()
    vm, _api = bed.vm("0.5", USER_CONFIG_COMPOSE, shared_files={".user-config": "servingUrl: http://u\n"})
    run = bed.start(bed.argv("0.5", vm, ports=[f"tcp:127.0.0.1:{host_port}-:8080"]))
    run.wait_for("Finished app-compose.service")
    assert wait_http(host_port) == {"path": "/v1/model", "models": []}
    (seen,) = bed.broker_runs()
    assert seen["argv"][0:4] == ["--config", str(bed.guest(vm) / "dstack/user_config"), "--config-display", "/etc/config.yaml"]
    assert seen["config"] == "servingUrl: http://u\n"


def test_restart_always_restarts_a_crashing_broker(bed: Bed) -> None:
    """Without .user-config, Docker creates /dstack/user_config as a directory; restart: always loops."""
    vm, _api = bed.vm("0.5", USER_CONFIG_COMPOSE)
    run = bed.start(bed.argv("0.5", vm))
    run.wait_for("Finished app-compose.service")
    runs = _wait_broker_runs(bed, 2)
    assert len(runs) >= 2 and all(r["config_is_dir"] for r in runs)
    assert (bed.guest(vm) / "dstack/user_config").is_dir()


def test_real_broker_sees_directory_config(bed: Bed) -> None:
    """With the real broker stand-in: a missing ./config.local.yaml becomes a directory it cannot read."""
    if not (SIM / "zerog_sim" / "broker.py").exists():
        pytest.skip("zerog_sim.broker is not in this tree")
    env = bed.env
    env["ZEROG_SIM_BROKER_MODULE"] = "zerog_sim.broker"
    vm, _api = bed.vm("0.3", BROKER_COMPOSE.replace("{port}", "8080"))
    run = QemuRun(bed.argv("0.3", vm, ports=["tcp:127.0.0.1:0-:8080", "tcp:127.0.0.1:0-:22"]), env, bed.tmp)
    bed.runs.append(run)
    run.wait_for("Finished app-compose.service")
    log = bed.guest(vm) / "var/log/containers/0g-fine-tune-broker.log"
    assert (bed.guest(vm) / "tapp/config.local.yaml").is_dir()  # what Docker makes of a missing bind source
    deadline = time.monotonic() + 10
    while "is a directory" not in (log.read_text() if log.exists() else "") and time.monotonic() < deadline:
        time.sleep(0.05)
    # the broker names the path it opens inside its container, not the host path behind the mount
    assert re.search(r"^\d{4}/\d\d/\d\d \d\d:\d\d:\d\d Error loading configuration: read /etc/config\.yaml: is a directory$",
                     log.read_text(), re.MULTILINE)


@pytest.mark.parametrize(
    "extra",
    [
        # dstack v0.5.5 with --hugepages (golden run-dry-run-hugepages-no-gpu)
        [
            "-numa",
            "node,nodeid=0,cpus=0-1,memdev=mem0",
            "-object",
            "memory-backend-file,id=mem0,size=4G,mem-path=/dev/hugepages,share=on,prealloc=yes,host-nodes=0,policy=bind",
            "-device",
            "pxb-pcie,id=pcie.node0,bus=pcie.0,addr=10,numa_node=0,bus_nr=5",
        ],
        [],
    ],
)
def test_05_hugepages_and_two_gpu_command_lines_boot(bed: Bed, extra: list[str]) -> None:
    bed.set_state(profile(gpus=(GPU_VFIO, {**GPU_NVIDIA, "driver": "vfio-pci"})))
    vm, _api = bed.vm("0.5", "services: {}\n")
    argv = bed.argv("0.5", vm, gpus=("18:00.0", "2a:00.0"))
    run = bed.start(argv[:-2] + extra + argv[-2:])
    run.wait_for("Finished app-compose.service")
    kernel_lines = [line[15:] for line in run.stdout if line.startswith("[")]
    assert kernel_lines[:7] == [
        "Linux version 6.x-dstack (zerog-sim miniature guest) #1 SMP PREEMPT_DYNAMIC",
        f"Command line: {META_05['cmdline']}",
        "tdx: Guest detected",
        "Memory: 4194304K available",
        "smpboot: Allowing 2 CPUs, 0 hotplug CPUs",
        "pci 0000:01:00.0: [10de:2335] type 00 class 0x030200",
        "pci 0000:02:00.0: [10de:2335] type 00 class 0x030200",
    ]


def test_real_host_api_with_fake_key_provider(bed: Bed) -> None:
    """Full chain through the SDK stand-in's host_api.py and a raw-TCP key provider."""
    if not HOST_API.exists():
        pytest.skip("the dstack stand-in's host_api.py is not in this tree")
    spec = importlib.util.spec_from_file_location("sim_host_api", HOST_API)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    quotes: list[bytes] = []
    provider = socket.socket()
    provider.bind(("127.0.0.1", 0))
    provider.listen(4)
    bed.sockets.append(provider)

    def serve() -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, _peer = provider.accept()
                with conn:
                    (length,) = struct.unpack(">I", conn.recv(4))
                    data = b""
                    while len(data) < length:
                        data += conn.recv(length - len(data))
                    quotes.append(bytes(json.loads(data)["quote"]))
                    sealed = sealed_reply(quotes[-1])
                    reply = json.dumps(
                        {k: list(bytes.fromhex(v)) for k, v in sealed.items()},
                    ).encode()
                    conn.sendall(struct.pack(">I", len(reply)) + reply)

    threading.Thread(target=serve, daemon=True).start()
    vm_dir = bed.tmp / "cvm"
    server, port = module.create_http_server(module.ServerConfig("127.0.0.1", provider.getsockname()[1], str(vm_dir)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        fake_api = FakeHostApi.__new__(FakeHostApi)
        fake_api.port = port
        vm, _api = bed.vm("0.5", "services: {}\n", api=fake_api)
        run = bed.start(bed.argv("0.5", vm))
        run.wait_for("Finished app-compose.service")
        assert len(quotes) == 1 and quotes[0][:2] == b"\x04\x00"
        info = json.loads((vm_dir / "shared" / ".instance_info").read_text())
        assert set(info) == {"instance_id_seed", "instance_id", "app_id"}
    finally:
        server.shutdown()
        server.server_close()


# ------------------------------------------------------------------------------------------
# Compose parsing (the guest's YAML subset parser against PyYAML)
# ------------------------------------------------------------------------------------------

YAML_CASES = [
    BROKER_COMPOSE.replace("{port}", "8080"),
    'services:\n  a:\n    image: x\n    command: ["python3", "-m", "w", \'--gpus=all\']\n    environment: {A: \'1\', B: "two"}\n',
    "# comment\nservices:\n  a:\n    image: 'it''s'   # trailing comment\n    ports:\n    - \"1:2\"\n"
    "    - target: 3080\n      published: 8080\n",
    "services:\n  a:\n    image: x\n    entrypoint: |\n      line one\n      line two\n    labels:\n      - a=b\n",
]


@pytest.mark.parametrize("text", YAML_CASES)
def test_yaml_subset_matches_pyyaml(text: str) -> None:
    assert guest.parse_yaml(text) == yaml.safe_load(text)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("a: 8080:3080\n", {"a": "8080:3080"}),  # YAML 1.2 (compose-go): not a base-60 integer
        ("a: yes\n", {"a": "yes"}),
        ("a: 0x1F\n", {"a": 31}),
        ("a: ~\n", {"a": None}),
    ],
)
def test_yaml_subset_uses_yaml_12_scalars(text: str, value: dict) -> None:
    assert guest.parse_yaml(text) == value


@pytest.mark.parametrize("text", ["a: &x 1\n", "a:\n  b: 1\n   c: 2\n", "a: 1\na: 2\n", "a: [1, 2\n"])
def test_yaml_subset_rejects_what_it_does_not_understand(text: str) -> None:
    with pytest.raises(guest.YamlError):
        guest.parse_yaml(text)
