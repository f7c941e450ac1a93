"""The stand-in ``dstack`` scripts against the recorded upstream golden vectors.

Every case of ``shared/reference/golden/dstack-v0.5.5`` and ``dstack-0.3`` is replayed: the case's
setup is rebuilt in a fresh directory, stubs equivalent to ``stubs.json`` go first on PATH, the
stand-in (rendered exactly as the stand-in repository holds it, ``scripts/bin/dstack`` being the
symlink to ``dstack.py``) runs with the recorded environment, and its output is normalised as
``golden/README.md`` says before every recorded field is compared: rc, stdout (and its split into
script and QEMU-stub parts), stderr (log lines and tracebacks with frames collapsed), the final
exception line, files_after, every JSON file parsed (with key order) and raw, and the stub calls.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

SIM_DIR = Path(__file__).resolve().parents[1]
REPO_DIR = SIM_DIR.parents[1]
GOLDEN = REPO_DIR.parent / "shared" / "reference" / "golden"
VERSIONS = {"v0.5.5": "0.5.5", "0.3": "0.3"}  # golden dir suffix -> generation
PYTHON = "/usr/bin/python3"

sys.path.insert(0, str(SIM_DIR))
from zerog_sim import sdkrepo  # noqa: E402

TS = re.compile(r"\d{4}-\d{2}-\d{2} \d{2}:\d{2}:\d{2},\d{3}")
UUID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
CID = re.compile(r"guest-cid=\d+")
CREATED_RAW = re.compile(r'"created_at_ms": \d+')
SERVER_LINE = re.compile(r"Starting HTTP server on localhost:(\d+)")
STUB_HEADER = "[qemu-system-x86_64 stub]"

STUB_SCRIPT = r'''#!/usr/bin/python3
"""Golden-vector stub; behaviour as described in golden/stubs.json."""
import json
import os
import sys

prog = os.path.basename(sys.argv[0])
args = sys.argv[1:]
with open(os.environ["STUB_LOG"], "a") as log:
    log.write(json.dumps([prog] + args) + "\n")

if prog == "lspci":
    with open(os.path.join(os.path.dirname(os.path.realpath(__file__)), "lspci.json")) as f:
        outputs = json.load(f)
    key = {(): "plain", ("-vvk",): "vvk", ("-d", "10de:", "-nn"): "d_10de_nn"}.get(tuple(args))
    if key is None:
        print("lspci stub: unsupported arguments", file=sys.stderr)
        sys.exit(1)
    sys.stdout.write(outputs[key])
elif prog == "qemu-img":
    rest = args[1:]
    if rest[:1] == ["-f"]:
        rest = rest[2:]
    if args[:1] != ["create"] or len(rest) != 2:
        sys.exit(1)
    open(rest[0], "w").close()
elif prog == "qemu-system-x86_64":
    print(f"[qemu-system-x86_64 stub] argc={len(args)}")
    for i, arg in enumerate(args, start=1):
        print(f"argv[{i}]={arg}")
elif prog == "sudo":
    os.execvp(args[0], args)
elif prog == "taskset":
    rest = args[2:] if args[:1] == ["-c"] else args[1:]
    os.execvp(rest[0], rest)
'''


def golden_cases() -> list:
    """One pytest param per golden case file (a single skipping param if golden/ is absent)."""
    if not GOLDEN.is_dir():
        return [pytest.param(None, None, marks=pytest.mark.skip(
            reason=f"golden vectors not found at {GOLDEN} (shared/ must sit beside the repo)"))]
    params = []
    for suffix in VERSIONS:
        for path in sorted((GOLDEN / f"dstack-{suffix}").glob("*.json")):
            params.append(pytest.param(suffix, path, id=f"{suffix}/{path.stem}"))
    return params


@pytest.fixture(scope="session")
def stubs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Directory with lspci, qemu-img, qemu-system-x86_64, sudo and taskset stubs."""
    spec = json.loads((GOLDEN / "stubs.json").read_text())
    stub_dir = tmp_path_factory.mktemp("stubs")
    (stub_dir / "lspci.json").write_text(json.dumps(spec["stubs"]["lspci"]["outputs"]))
    for program in spec["stubs"]:
        path = stub_dir / program
        path.write_text(STUB_SCRIPT)
        path.chmod(0o755)
    return stub_dir


@pytest.fixture(scope="session")
def scripts(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """generation -> the ``dstack`` symlink of a rendered stand-in checkout."""
    out = {}
    for generation in VERSIONS.values():
        root = sdkrepo.render_tree(generation, "private-ml-sdk",
                                   tmp_path_factory.mktemp(f"pms-{generation}"))
        out[generation] = root / "meta-dstack-nvidia" / "scripts" / "bin" / "dstack"
    return out


def run_dstack(script: Path, argv: list[str], cwd: Path, stub_dir: Path,
               stub_log: Path) -> subprocess.CompletedProcess:
    env = {
        "PATH": f"{stub_dir}:/usr/bin:/bin",
        "HOME": str(cwd),
        "LC_ALL": "C",
        "COLUMNS": "80",
        "PYTHONDONTWRITEBYTECODE": "1",
        "STUB_LOG": str(stub_log),
    }
    return subprocess.run([PYTHON, str(script), *argv], cwd=cwd, env=env, capture_output=True,
                          text=True, stdin=subprocess.DEVNULL, timeout=60, check=False)


def collapse_tracebacks(text: str) -> str:
    """Replace the frame lines of every traceback with ``  <frames omitted>``."""
    out: list[str] = []
    in_frames = False
    for line in text.split("\n"):
        if line == "Traceback (most recent call last):":
            out += [line, "  <frames omitted>"]
            in_frames = True
            continue
        if in_frames and line.startswith(" "):
            continue
        in_frames = False
        out.append(line)
    return "\n".join(out)


class Normaliser:
    """The replacements of golden/README.md for one run."""

    def __init__(self, cwd: Path, script_dir: Path, stdout: str) -> None:
        self.paths = sorted({str(cwd), str(cwd.resolve())}, key=len, reverse=True)
        self.script_dir = str(script_dir)
        found = SERVER_LINE.search(stdout)
        self.port = found.group(1) if found else None

    def text(self, value: str) -> str:
        value = TS.sub("<TS>", value)
        for path in self.paths:
            value = value.replace(path, "<CWD>")
        value = value.replace(self.script_dir, "<SCRIPT_DIR>")
        if self.port:
            value = value.replace(f"localhost:{self.port}", "localhost:<PORT>")
            value = value.replace(f"10.0.2.2:{self.port}/api", "10.0.2.2:<PORT>/api")
        value = CID.sub("guest-cid=<CID>", value)
        value = UUID.sub("<UUID>", value)
        return CREATED_RAW.sub('"created_at_ms": 0', value)

    def raw_json(self, value: str) -> str:
        value = self.text(value)
        if self.port:
            value = value.replace(f'"host_vsock_port": {self.port}', '"host_vsock_port": <PORT>')
        return value

    def parsed(self, value):
        if isinstance(value, dict):
            out = {}
            for key, item in value.items():
                if key == "created_at_ms":
                    item = 0
                elif key == "host_vsock_port" and self.port and item == int(self.port):
                    item = "<PORT>"
                else:
                    item = self.parsed(item)
                out[UUID.sub("<UUID>", key)] = item
            return out
        if isinstance(value, list):
            return [self.parsed(item) for item in value]
        if isinstance(value, str):
            if self.port:
                value = value.replace(f"10.0.2.2:{self.port}/api", "10.0.2.2:<PORT>/api")
            return UUID.sub("<UUID>", value)
        return value


def tree(cwd: Path) -> list[str]:
    """Every path below ``cwd``, relative, directories ending in ``/``, sorted."""
    found = []
    for current, dirs, files in os.walk(cwd):
        rel = Path(current).relative_to(cwd)
        found += [f"{(rel / d).as_posix()}/" for d in dirs]
        found += [(rel / f).as_posix() for f in files]
    return sorted(p[2:] if p.startswith("./") else p for p in found)


def json_files(cwd: Path) -> dict[str, str]:
    """Raw text of every *.json outside images/."""
    return {p: (cwd / p).read_text() for p in tree(cwd)
            if p.endswith(".json") and not p.startswith("images/")}


def setup_case(case: dict, cwd: Path) -> None:
    """Create the recorded input files; directories only when no prior command creates them."""
    setup = case["setup"]
    for rel, text in setup["file_contents"].items():
        (cwd / rel).parent.mkdir(parents=True, exist_ok=True)
        (cwd / rel).write_text(text)
    if not setup.get("prior_commands"):
        for rel in setup["files"]:
            if rel.endswith("/"):
                (cwd / rel).mkdir(parents=True, exist_ok=True)


def stub_calls(log: Path) -> list[dict]:
    if not log.exists():
        return []
    calls = []
    for line in log.read_text().splitlines():
        program, *args = json.loads(line)
        calls.append({"program": program, "args": [CID.sub("guest-cid=<CID>", a) for a in args]})
    return calls


def final_exception(stderr: str):
    if "Traceback (most recent call last):" not in stderr:
        return None
    return [line for line in stderr.splitlines() if line.strip()][-1]


def split_stdout(stdout: str) -> dict[str, str]:
    """Separate the QEMU stub's lines from the script's own."""
    lines = stdout.splitlines(keepends=True)
    stub = [line for line in lines if line.startswith((STUB_HEADER, "argv["))]
    return {"script": "".join(line for line in lines if line not in stub),
            "qemu_stub": "".join(stub)}


def test_golden_dir_is_complete() -> None:
    """index.json and the case files list the same cases, so none is silently dropped."""
    if not GOLDEN.is_dir():
        pytest.skip(f"golden vectors not found at {GOLDEN}")
    index = json.loads((GOLDEN / "index.json").read_text())
    for suffix in VERSIONS:
        listed = sorted(case["case"] for case in index["cases"][suffix])
        present = sorted(p.stem for p in (GOLDEN / f"dstack-{suffix}").glob("*.json"))
        assert listed == present
    assert index["python"].startswith("3.11")


@pytest.mark.parametrize(("suffix", "case_path"), golden_cases())
def test_golden_case(suffix: str, case_path: Path, stubs: Path, scripts: dict[str, Path],
                     tmp_path: Path) -> None:
    version_check = subprocess.run([PYTHON, "-c", "import sys; print(sys.version_info[:2])"],
                                   capture_output=True, text=True, check=True).stdout.strip()
    if version_check != "(3, 11)":
        pytest.skip(f"argparse texts are recorded for CPython 3.11, {PYTHON} is {version_check}")
    case = json.loads(case_path.read_text())
    if suffix == "v0.5.5" and case["case"] == "lsgpu":
        numa = Path("/sys/bus/pci/devices/0000:18:00.0/numa_node")
        if numa.exists():
            pytest.skip(f"vector valid only where {numa} does not exist (golden README caveat)")
    script = scripts[VERSIONS[suffix]]
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    stub_log = tmp_path / "stub.log"
    setup_case(case, cwd)
    for prior in case["setup"].get("prior_commands", []):
        done = run_dstack(script, prior["argv"], cwd, stubs, stub_log)
        assert done.returncode == prior["rc"], done.stderr
    assert tree(cwd) == case["setup"]["files"]
    if "json_files_before" in case["setup"]:
        before = Normaliser(cwd, script.parent, "")
        assert {p: before.parsed(json.loads(t)) for p, t in json_files(cwd).items()} \
            == case["setup"]["json_files_before"]
    stub_log.unlink(missing_ok=True)

    proc = run_dstack(script, case["argv"], cwd, stubs, stub_log)
    norm = Normaliser(cwd, script.parent, proc.stdout)
    stdout = norm.text(proc.stdout)
    stderr = collapse_tracebacks(norm.text(proc.stderr))

    assert proc.returncode == case["rc"], proc.stderr
    assert stdout == case["stdout"]
    if "stdout_parts" in case:
        assert split_stdout(stdout) == case["stdout_parts"]
    assert stderr == case["stderr"]
    assert final_exception(stderr) == case["exception"]
    assert [UUID.sub("<UUID>", p) for p in tree(cwd)] == case["files_after"]

    raw = {UUID.sub("<UUID>", p): t for p, t in json_files(cwd).items()}
    parsed = {p: norm.parsed(json.loads(t)) for p, t in raw.items()}
    assert parsed == case["json_files"]
    assert json.dumps(parsed) == json.dumps(case["json_files"]), "key order differs"
    assert {p: norm.raw_json(t) for p, t in raw.items()} == case["json_files_raw"]
    assert stub_calls(stub_log) == case["stub_calls"]


# =============================================================================================
# Behaviour the golden vectors do not cover: blocking run, host API, QEMU failure, tag-vfio,
# client.conf, serve (the kit's qemu-img and modprobe have their own tests: test_host_tools.py).
# =============================================================================================

BIN_DIR = SIM_DIR / "bin"
COMPOSE = "services:\n  app:\n    image: example/app:1\n"
IMAGE_05 = {
    "metadata.json": json.dumps({
        "bios": "ovmf.fd", "kernel": "bzImage", "cmdline": "console=ttyS0",
        "initrd": "initramfs.cpio.gz", "rootfs": "rootfs.img.verity", "version": "0.5.5",
        "git_revision": "0" * 40, "shared_ro": True, "is_dev": False}, indent=4) + "\n",
    "digest.txt": "ab" * 32 + "\n",
}
IMAGE_03 = {
    "metadata.json": json.dumps({
        "bios": "ovmf.fd", "kernel": "bzImage", "cmdline": "console=ttyS0",
        "initrd": "initramfs.cpio.gz", "rootfs": "rootfs.iso", "rootfs_hash": "cd" * 32,
        "version": "0.3.3", "git_revision": "0" * 40, "shared_ro": True, "is_dev": False},
        indent=4) + "\n",
}
IMAGES = {"0.5.5": ("images/dstack-nvidia-0.5.5", IMAGE_05),
          "0.3": ("images/dstack-nvidia-0.3.3", IMAGE_03)}

# A QEMU stand-in for these tests: exits with $QEMU_RC, or blocks until <vm>/poweroff exists.
QEMU_STUB = r'''#!/usr/bin/python3
import os, sys, time
with open(os.environ["QEMU_PIDFILE"], "w") as f:
    f.write(str(os.getpid()))
if os.environ.get("QEMU_RC"):
    sys.exit(int(os.environ["QEMU_RC"]))
for _ in range(600):
    if os.path.exists(os.environ["QEMU_POWEROFF"]):
        print("guest: reboot: Power down", flush=True)
        sys.exit(0)
    time.sleep(0.05)
sys.exit(99)
'''
LSPCI_NN = ("18:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB] [10de:2330]"
            " (rev a1)\n2a:00.0 3D controller [0302]: NVIDIA Corporation GH100 [H100 SXM5 80GB]"
            " [10de:2330] (rev a1)\n")
NO_VFIO_SYSFS = "[Errno 2] No such file or directory: '/sys/bus/pci/drivers/vfio-pci/new_id'"


def write_exe(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o755)
    return path


def prepare_vm(generation: str, cwd: Path, script: Path, env: dict[str, str],
               extra: tuple[str, ...] = ()) -> None:
    """Create an image dir and run ``dstack new`` for VM ``cvm`` (must succeed)."""
    image_dir, files = IMAGES[generation]
    for name, text in files.items():
        (cwd / image_dir).mkdir(parents=True, exist_ok=True)
        (cwd / image_dir / name).write_text(text)
    (cwd / "docker-compose.yaml").write_text(COMPOSE)
    done = subprocess.run([PYTHON, str(script), "new", "docker-compose.yaml", "-o", "cvm", "-i",
                           image_dir, *extra], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=30, check=False)
    assert done.returncode == 0, done.stderr


@pytest.fixture()
def sandbox(tmp_path: Path, python_dir: Path) -> dict:
    """A work dir, a private bin dir first on PATH and an environment for the stand-in."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    env = {"PATH": f"{bindir}:{python_dir}:/usr/bin:/bin", "HOME": str(cwd), "LC_ALL": "C", "COLUMNS": "80",
           "PYTHONDONTWRITEBYTECODE": "1", "QEMU_PIDFILE": str(tmp_path / "qemu.pid"),
           "QEMU_POWEROFF": str(cwd / "cvm" / "poweroff")}
    write_exe(bindir / "qemu-system-x86_64", QEMU_STUB)
    write_exe(bindir / "sudo", "#!/bin/sh\nexec \"$@\"\n")
    (bindir / "qemu-img").symlink_to(BIN_DIR / "qemu-img")
    return {"cwd": cwd, "bin": bindir, "env": env, "tmp": tmp_path}


def wait_for(predicate, timeout: float = 15.0, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def host_api_port(cwd: Path) -> int:
    """The host API port, from config.json (stdout is block-buffered like upstream's)."""
    def read():
        try:
            return json.loads((cwd / "cvm" / "shared" / "config.json").read_text())[
                "host_vsock_port"]
        except (OSError, ValueError, KeyError):
            return None
    return wait_for(read, what="config.json with host_vsock_port")


def fake_key_provider(replies: list) -> tuple[int, list, threading.Thread]:
    """A one-connection key provider speaking length-prefixed JSON; returns port and requests."""

    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    seen: list = []

    def serve() -> None:
        conn, _peer = server.accept()
        with conn:
            size = struct.unpack(">I", conn.recv(4))[0]
            data = b""
            while len(data) < size:
                data += conn.recv(size - len(data))
            seen.append(json.loads(data))
            body = json.dumps(replies[0]).encode()
            conn.sendall(struct.pack(">I", len(body)) + body)
        server.close()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return server.getsockname()[1], seen, thread


def post(port: int, path: str, body: bytes, method: str = "POST"):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.request(method, path, body=body, headers={"Content-Type": "application/json"})
        reply = conn.getresponse()
        return reply.status, reply.read()
    finally:
        conn.close()


@pytest.mark.parametrize("generation", ["0.5.5", "0.3"])
def test_run_blocks_and_serves_host_api(generation: str, scripts: dict[str, Path],
                                        sandbox: dict) -> None:
    """``run`` blocks while QEMU runs; the host API notifies, proxies keys, 404s the rest."""
    cwd, env = sandbox["cwd"], sandbox["env"]
    prepare_vm(generation, cwd, scripts[generation], env)
    kp_port, seen, kp_thread = fake_key_provider(
        [{"encrypted_key": [1, 2, 255], "provider_quote": [16, 32]}])
    proc = subprocess.Popen([PYTHON, str(scripts[generation]), "run", "cvm", "--kp-port",
                             str(kp_port)], cwd=cwd, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        port = host_api_port(cwd)
        wait_for(lambda: Path(env["QEMU_PIDFILE"]).exists(), what="QEMU start")
        assert proc.poll() is None, "dstack run returned while QEMU was running"

        notice = json.dumps({"event": "instance.info", "payload": '{"app_id": "x"}'}).encode()
        assert post(port, "/api/Notify", notice) == (200, b"null")
        assert (cwd / "cvm" / "shared" / ".instance_info").read_text() == '{"app_id": "x"}'
        other = json.dumps({"event": "boot.progress", "payload": "x"}).encode()
        assert post(port, "/api/Notify", other) == (200, b"null")
        assert post(port, "/api/Other", b"{}") == (404, b"null")
        assert post(port, "/api/Notify", b"", method="GET")[0] == 501
        status, body = post(port, "/api/GetSealingKey",
                            json.dumps({"quote": "00ff10"}).encode())
        assert (status, json.loads(body)) == (
            200, {"encrypted_key": "0102ff", "provider_quote": "1020"})
        kp_thread.join(5)
        assert seen == [{"quote": [0, 255, 16]}]
        assert proc.poll() is None

        (cwd / "cvm" / "poweroff").write_text("")
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, err
    # QEMU's console reaches stdout first: the script's own prints are block-buffered.
    assert out.startswith("Formatting 'cvm/hda.img', fmt=qcow2 cluster_size=65536 extended_l2=off"
                          " compression_type=zlib size=21474836480 lazy_refcounts=off"
                          " refcount_bits=16\nguest: reboot: Power down\nStarting HTTP server on"
                          f" localhost:{port}\n")
    assert '"POST /api/Notify HTTP/1.1" 200 -' in err
    assert (cwd / "cvm" / "hda.img").read_bytes()[:4] == b"QFI\xfb"


@pytest.mark.parametrize(("generation", "kill", "tail"), [
    ("0.5.5", False, "returned non-zero exit status 3."),
    ("0.3", False, "returned non-zero exit status 3."),
    ("0.5.5", True, "died with <Signals.SIGTERM: 15>."),
    ("0.3", True, "died with <Signals.SIGTERM: 15>."),
])
def test_run_qemu_failure_is_runtime_error(generation: str, kill: bool, tail: str,
                                           scripts: dict[str, Path], sandbox: dict) -> None:
    """QEMU exiting non-zero (or killed) makes ``run`` raise RuntimeError, exit status 1."""
    cwd, env = sandbox["cwd"], dict(sandbox["env"])
    prepare_vm(generation, cwd, scripts[generation], env)
    if not kill:
        env["QEMU_RC"] = "3"
    proc = subprocess.Popen([PYTHON, str(scripts[generation]), "run", "cvm"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        if kill:
            pid = int(wait_for(lambda: Path(env["QEMU_PIDFILE"]).exists()
                               and Path(env["QEMU_PIDFILE"]).read_text(), what="QEMU pid"))
            os.kill(pid, signal.SIGTERM)
        out, err = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 1
    printed = [line for line in out.splitlines() if "qemu-system-x86_64" in line]
    cmd = printed[0].split(" ") if generation == "0.3" else \
        [line.rstrip(" ") for line in out.splitlines()[out.splitlines().index(
            "qemu-system-x86_64 "):]]
    assert final_exception(err) == f"RuntimeError: Failed to start VM: Command '{cmd!r}' {tail}"
    assert "During handling of the above exception, another exception occurred:" in err


@pytest.mark.parametrize(("generation", "conf_at", "expect_registry"), [
    ("0.5.5", "home", "registry.home.example"),
    ("0.3", "home", "registry.home.example"),
    # every parent's .dstack/client.conf is read after the CWD's, so the outermost one wins
    ("0.5.5", "cwd+parent", "registry.parent.example"),
    ("0.3", "cwd+parent", "registry.parent.example"),
])
def test_client_conf(generation: str, conf_at: str, expect_registry: str,
                     scripts: dict[str, Path], sandbox: dict) -> None:
    """client.conf lookup order, the registry in the guest config and ``[qemu] path``."""
    cwd, env = sandbox["cwd"], sandbox["env"]
    logged = []
    if conf_at == "home":
        conf = cwd / ".config" / "dstack" / "client.conf"
        conf.parent.mkdir(parents=True)
        conf.write_text("[docker]\nregistry = registry.home.example\n[qemu]\npath = my-qemu\n")
        logged.append(conf)
    else:
        for where, name in ((cwd, "cwd"), (cwd.parent, "parent")):
            conf = where / ".dstack" / "client.conf"
            conf.parent.mkdir(parents=True)
            conf.write_text(f"[docker]\nregistry = registry.{name}.example\n"
                            "[qemu]\npath = my-qemu\n")
            logged.append(conf)
    write_exe(sandbox["bin"] / "my-qemu", QEMU_STUB)
    image_dir, files = IMAGES[generation]
    (cwd / image_dir).mkdir(parents=True)
    for name, text in files.items():
        (cwd / image_dir / name).write_text(text)
    (cwd / "docker-compose.yaml").write_text(COMPOSE)
    new = subprocess.run([PYTHON, str(scripts[generation]), "new", "docker-compose.yaml", "-o",
                          "cvm", "-i", image_dir], cwd=cwd, env=env, capture_output=True,
                         text=True, timeout=30, check=False)
    assert new.returncode == 0, new.stderr
    assert [TS.sub("<TS>", line) for line in new.stderr.splitlines()] == [
        f"<TS> - INFO - Loading configuration from {path}" for path in logged
    ] + ["<TS> - INFO - Work directory prepared successfully at: cvm"]
    shared = cwd / "cvm" / "shared"
    if generation == "0.3":
        assert json.loads((shared / "config.json").read_text())["docker_registry"] == \
            expect_registry
    else:
        assert (shared / ".sys-config.json").read_text() == \
            json.dumps({"docker_registry": expect_registry}, indent=4)
    env = dict(env, QEMU_RC="0")
    run = subprocess.run([PYTHON, str(scripts[generation]), "run", "cvm"], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=30, check=False)
    assert run.returncode == 0, run.stderr
    assert "\nmy-qemu " in run.stdout
    if generation == "0.5.5":
        sys_config = json.loads((shared / ".sys-config.json").read_text())
        assert list(sys_config) == ["docker_registry", "host_api_url", "host_vsock_port",
                                    "vm_config"]


def test_serve_blocks_and_writes_guest_config(scripts: dict[str, Path], sandbox: dict) -> None:
    """v0.5.5 ``serve``: host API only, guest config updated without vm_config, blocks."""
    cwd, env = sandbox["cwd"], sandbox["env"]
    prepare_vm("0.5.5", cwd, scripts["0.5.5"], env)
    proc = subprocess.Popen([PYTHON, str(scripts["0.5.5"]), "serve", "cvm"], cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        port = host_api_port(cwd)
        for name in ("config.json", ".sys-config.json"):
            assert json.loads((cwd / "cvm" / "shared" / name).read_text()) == {
                "host_api_url": f"http://10.0.2.2:{port}/api", "host_vsock_port": port}
        assert post(port, "/api/Nope", b"{}") == (404, b"null")
        assert proc.poll() is None
    finally:
        os.killpg(proc.pid, 15)
        proc.communicate(timeout=15)


@pytest.mark.parametrize(("lspci", "modprobe", "expected"), [
    pytest.param(LSPCI_NN, "sim", [
        "INFO - ==> Detecting NVIDIA GPUs and NVSwitches",
        "INFO - Found 2 GPU(s)",
        "INFO - Found 0 NVSwitch(es)",
        "INFO - ==> Loading VFIO modules",
        "INFO - ==> Tagging devices for VFIO passthrough",
        "INFO - Tagging GPU (DevID=10de:2330)",
        f"ERROR - Failed to tag GPU: {NO_VFIO_SYSFS}",
        "INFO - VFIO passthrough setup complete",
    ], id="gpus-sysfs-not-writable"),
    pytest.param("", "sim", [
        "INFO - ==> Detecting NVIDIA GPUs and NVSwitches",
        "ERROR - No NVIDIA GPUs or NVSwitches found. Exiting.",
    ], id="no-nvidia-devices"),
    pytest.param(None, "sim", [
        "INFO - ==> Detecting NVIDIA GPUs and NVSwitches",
        "/bin/sh: 1: lspci: not found",
        "ERROR - Failed to detect NVIDIA devices: Command 'lspci -d 10de: -nn' returned "
        "non-zero exit status 127.",
        "ERROR - No NVIDIA GPUs or NVSwitches found. Exiting.",
    ], id="lspci-missing"),
    pytest.param(LSPCI_NN, "fail", [
        "INFO - ==> Detecting NVIDIA GPUs and NVSwitches",
        "INFO - Found 2 GPU(s)",
        "INFO - Found 0 NVSwitch(es)",
        "INFO - ==> Loading VFIO modules",
        "ERROR - Failed to load VFIO modules: Command '['modprobe', 'vfio']' returned non-zero "
        "exit status 1.",
        "ERROR - Failed to enable VFIO passthrough: Failed to load VFIO modules",
    ], id="modprobe-fails"),
])
def test_tag_vfio(lspci: str | None, modprobe: str, expected: list[str],
                  scripts: dict[str, Path], sandbox: dict) -> None:
    """``tag-vfio`` always exits 0; every failure is only logged."""
    if Path("/sys/bus/pci/drivers/vfio-pci").exists():
        pytest.skip("this machine has a real vfio-pci driver; the test must not write to it")
    bindir, tmp = sandbox["bin"], sandbox["tmp"]
    root = tmp / "root"
    root.mkdir()
    (tmp / "state.json").write_text(json.dumps({"profile": "t", "root": str(root)}))
    pybin = tmp / "pybin"  # python only (for the kit's modprobe), so lspci can be absent
    pybin.mkdir()
    (pybin / "python3").symlink_to(PYTHON)
    (pybin / "python").symlink_to(sys.executable)
    env = dict(sandbox["env"], PATH=f"{bindir}:{pybin}", ZEROG_SIM_STATE=str(tmp / "state.json"))
    if lspci is not None:
        write_exe(bindir / "lspci", f"#!/bin/sh\nprintf '%s' '{lspci}'\n")
    if modprobe == "sim":
        (bindir / "modprobe").symlink_to(BIN_DIR / "modprobe")
    else:
        write_exe(bindir / "modprobe", "#!/bin/sh\necho \"modprobe: FATAL: $1\" >&2\nexit 1\n")
    proc = subprocess.run([PYTHON, str(scripts["0.5.5"]), "tag-vfio"], cwd=sandbox["cwd"],
                          env=env, capture_output=True, text=True, timeout=30, check=False)
    assert proc.returncode == 0
    lines = [TS.sub("<TS>", line).removeprefix("<TS> - ") for line in proc.stderr.splitlines()
             if not line.startswith("modprobe: FATAL")]
    assert lines == expected
    assert proc.stdout == ""
    if modprobe == "sim" and lspci:
        assert sorted(p.name for p in (root / "sys" / "module").iterdir()) == [
            "iommufd", "irqbypass", "vfio", "vfio_iommu_type1", "vfio_pci", "vfio_pci_core"]
