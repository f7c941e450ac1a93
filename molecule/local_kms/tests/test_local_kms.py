"""zerog.compute.local_kms on the simulated hosts: healthy and supervised, or refused cleanly.

Health is checked here with a full key request (a quote the simulated QE signed, whose sealed
key must open to the key derived from the TD's measurements), not just a TCP connect.
"""

from __future__ import annotations

import json
import shlex
import time

import pytest

KIT = "env PYTHONPATH=/opt/zerog-sim/kit python3"
BUILD = "/opt/private-ml-sdk/meta-dstack-nvidia/dstack/key-provider-build"
UNIT = "zerog-local-kms.service"
UNIT_FILES = (
    "/etc/systemd/system/zerog-local-kms.service",
    "/etc/systemd/system/zerog-local-kms-watchdog.service",
    "/etc/systemd/system/zerog-local-kms-watchdog.timer",
    "/usr/local/lib/zerog-local-kms-watchdog.py",
)
GENERATION = {"zerog-kms-055": "0.5.5", "zerog-kms-03": "0.3"}
SGX_FIX = (
    'Fix: Enable SGX in the BIOS (with SGX Auto MP Registration) and boot a kernel with the in-kernel SGX driver '
    '(5.11 or later); `dmesg | grep -i sgx` must not say "SGX disabled by BIOS".'
)
REFUSALS = {
    "zerog-kms-nosgx": [
        "The local key provider was not started on zerog-kms-nosgx: 2 prerequisite(s) missing. Nothing was changed.",
        "[sgx_enclave] /dev/sgx_enclave does not exist (under /opt/zerog-sim/root): SGX is disabled in the BIOS, "
        "or the kernel has no SGX driver. The key provider's enclave cannot start without it. " + SGX_FIX,
        "[sgx_provision] /dev/sgx_provision does not exist (under /opt/zerog-sim/root): SGX is disabled in the BIOS, "
        "or the kernel has no SGX driver. The key provider's enclave cannot start without it. " + SGX_FIX,
    ],
    "zerog-kms-nopccs": [
        "The local key provider was not started on zerog-kms-nopccs: 1 prerequisite(s) missing. Nothing was changed.",
        "[pccs] No PCCS answers at https://127.0.0.1:8081/sgx/certification/v4/rootcacrl (",
    ],
}

KEY_REQUEST = """
import hashlib, json
from zerog_sim import keyprovider as k
pub = hashlib.sha256(b'testinfra').digest()
quote = k.make_tdx_quote(pub, mr_td=b'\\x02' * 48)
encrypted, provider_quote = k.request_key(quote, '127.0.0.1', 3443, 5)
key = k.open_sealed_box(encrypted, pub)
print(json.dumps({'key_ok': key == k.derive_key(k.td_measurements(quote)), 'provider_quote': len(provider_quote)}))
"""


def name(host):
    """The instance name (no command run: testinfra's podman backend knows it)."""
    return host.backend.name


def key_request(host):
    """A full key request through the provider's protocol; None when it is not served."""
    result = host.run(f"{KIT} -c {shlex.quote(KEY_REQUEST)}")
    return json.loads(result.stdout) if result.rc == 0 else None


def wait_for_key(host, timeout=60):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reply = key_request(host)
        if reply is not None:
            return reply
        time.sleep(1)
    return None


def containers(host):
    """The stand-in's `docker ps -a`, one dict per container, by name."""
    out = host.run(f"cd {BUILD} && {KIT} -m zerog_sim.keyprovider ps -a --json").stdout
    return {c["name"]: c for c in (json.loads(line) for line in out.splitlines() if line.strip())}


def listeners(host, port=3443):
    out = host.check_output(f"ss --no-header --listening --tcp --numeric 'sport = :{port}'")
    return sorted(line.split()[3] for line in out.splitlines())


def unit_show(host, unit, *props):
    out = host.check_output(f"systemctl show {unit} " + " ".join(f"--property={p}" for p in props))
    return dict(line.split("=", 1) for line in out.splitlines())


@pytest.fixture
def healthy_host(host):
    if name(host) not in GENERATION:
        pytest.skip("refused host")
    return host


@pytest.fixture
def refused_host(host):
    if name(host) not in REFUSALS:
        pytest.skip("healthy host")
    return host


def test_provider_hands_out_keys(healthy_host):
    assert wait_for_key(healthy_host, timeout=10) == {"key_ok": True, "provider_quote": 48 + 384 + 4 + 64}


def test_bound_to_loopback_only(healthy_host):
    assert listeners(healthy_host) == ["127.0.0.1:3443"]


def test_docker_enabled_for_reboots(healthy_host):
    assert healthy_host.service("docker").is_enabled


def test_detached_project_and_no_unit(healthy_host):
    if GENERATION[name(healthy_host)] != "0.5.5":
        pytest.skip("0.3")
    running = {n: c["state"] for n, c in containers(healthy_host).items()}
    assert running == {"aesmd": "running", "gramine-sealing-key-provider": "running"}
    for path in UNIT_FILES:
        assert not healthy_host.file(path).exists, path


def test_unit_supervises_the_foreground_run_sh(healthy_host):
    if GENERATION[name(healthy_host)] != "0.3":
        pytest.skip("0.5.5")
    props = unit_show(healthy_host, UNIT, "ActiveState", "UnitFileState", "Restart", "WorkingDirectory", "ExecStart",
                      "Requires")
    assert props["ActiveState"] == "active"
    assert props["UnitFileState"] == "enabled"
    assert props["Restart"] == "always"
    assert props["WorkingDirectory"] == BUILD
    assert f"path={BUILD}/run.sh ;" in props["ExecStart"]
    assert "docker.service" in props["Requires"].split()
    timer = unit_show(healthy_host, "zerog-local-kms-watchdog.timer", "ActiveState", "UnitFileState")
    assert timer == {"ActiveState": "active", "UnitFileState": "enabled"}
    # The provider started by hand in prepare was taken down before the unit took over.
    assert unit_show(healthy_host, "operator-run-sh.service", "ActiveState")["ActiveState"] in ("inactive", "failed")
    assert set(containers(healthy_host)) == {"gramine-sealing-key-provider", "pccs-proxy"}


def test_killed_provider_comes_back(healthy_host):
    before = containers(healthy_host)["gramine-sealing-key-provider"]
    assert before["state"] == "running"
    healthy_host.check_output(f"kill -9 {before['pid']}")
    # The port is gone at once (docker-proxy goes with the container) ...
    deadline = time.monotonic() + 5
    while key_request(healthy_host) is not None and time.monotonic() < deadline:
        time.sleep(0.2)
    # ... and comes back: Docker's restart policy (0.5.5) or the watchdog restarting the unit (0.3).
    assert wait_for_key(healthy_host, timeout=60) is not None
    after = containers(healthy_host)["gramine-sealing-key-provider"]
    assert after["state"] == "running"
    assert after["pid"] != before["pid"]
    if GENERATION[name(healthy_host)] == "0.5.5":
        assert after["restart_count"] == before["restart_count"] + 1
    else:
        journal = healthy_host.check_output("journalctl --unit zerog-local-kms-watchdog.service --output cat --no-pager")
        assert "the provider container died and run.sh does not notice. Restarting zerog-local-kms.service." in journal


def test_killed_run_sh_is_restarted_by_systemd(healthy_host):
    if GENERATION[name(healthy_host)] != "0.3":
        pytest.skip("0.5.5 has no run.sh process")
    before = unit_show(healthy_host, UNIT, "MainPID", "NRestarts")
    healthy_host.check_output(f"kill -9 {before['MainPID']}")
    assert wait_for_key(healthy_host, timeout=60) is not None
    after = unit_show(healthy_host, UNIT, "MainPID", "NRestarts", "ActiveState")
    assert after["ActiveState"] == "active"
    assert after["MainPID"] != before["MainPID"]
    assert int(after["NRestarts"]) == int(before["NRestarts"]) + 1


def test_refusal_names_the_missing_piece(refused_host):
    msg = json.loads(refused_host.file("/var/tmp/local_kms_refusal.json").content_string)["msg"]
    expected = REFUSALS[name(refused_host)]
    assert len(msg) == len(expected)
    for got, want in zip(msg, expected, strict=True):
        if want.endswith("("):
            assert got.startswith(want)
            assert "Connection refused" in got
            assert got.endswith(
                "Fix: Install and start Intel's PCCS (sgx-dcap-pccs) on 127.0.0.1:8081 with an Intel PCS API key, "
                "or set local_kms_pccs_url to the PCCS this host uses."
            )
        else:
            assert got == want


def test_refused_host_runs_nothing(refused_host):
    assert containers(refused_host) == {}
    assert listeners(refused_host) == []
    for path in UNIT_FILES:
        assert not refused_host.file(path).exists, path
    assert key_request(refused_host) is None


def test_unhealthy_provider_fails_with_its_log(healthy_host):
    """Converge ran the role once more with a quote of another platform: the failure shows why."""
    if GENERATION[name(healthy_host)] != "0.5.5":
        pytest.skip("the failure case runs on the 0.5.5 host")
    msg = json.loads(healthy_host.file("/var/tmp/local_kms_unhealthy.json").content_string)["msg"]
    assert msg[0] == (
        f"The key provider (0.5.5, {BUILD}) did not become healthy on 127.0.0.1:3443: no request was served in 3 s "
        "(last outcome: rejected). It is left as it is for inspection (Docker keeps restarting it)."
    )
    assert msg[1] == (
        "Probe: the key provider on 127.0.0.1:3443 read the request and closed the connection without a reply: it "
        "could not serve this quote. Its log says why (Connection error from ...): no PCCS, AESM not running, a PPID "
        "mismatch, or a quote that does not verify."
    )
    # run.sh ran again (its exit status and output: compose found the project running) ...
    run_sh = msg.index("run.sh (0):")
    assert "Starting all SGX services using docker-compose..." in msg[run_sh + 1:]
    assert " Container gramine-sealing-key-provider  Running" in msg[run_sh + 1:]
    # ... then the last 12 log lines of each container (as `docker compose logs --tail 12`), which
    # name the reason, then the containers.
    logs = msg.index("env PYTHONPATH=/opt/zerog-sim/kit python3 -m zerog_sim.keyprovider logs --tail 12:")
    ps = msg.index("env PYTHONPATH=/opt/zerog-sim/kit python3 -m zerog_sim.keyprovider ps -a:")
    width = len("gramine-sealing-key-provider") + 1  # compose pads the prefixes to the longest name + 1
    provider = [line for line in msg[logs + 1:ps] if line.startswith("gramine-sealing-key-provider".ljust(width) + " | ")]
    aesmd = [line for line in msg[logs + 1:ps] if line.startswith("aesmd".ljust(width) + " | ")]
    assert len(provider) == 12
    assert len(provider) + len(aesmd) == ps - logs - 1
    assert any(line.endswith(": PPID mismatch") and "Connection error from" in line for line in provider)
    assert msg[ps + 1].startswith("CONTAINER ID")
    assert len(msg) == ps + 4  # the table header and the two containers
