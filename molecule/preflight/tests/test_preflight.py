"""Verify the preflight reports against the profiles, and that preflight changed nothing."""

import json
import os

import pytest


def _state(host):
    return json.loads(host.file("/etc/zerog-sim/active.json").content_string)


def _report(host):
    name = host.backend.get_hostname()
    path = os.path.join(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"], "preflight-reports", f"{name}.json")
    with open(path, encoding="utf-8") as handle:
        return json.load(handle)


def test_failed_checks_are_exactly_the_expected_ones(host):
    state = _state(host)
    report = _report(host)
    failed = sorted(c["name"] for c in report["checks"] if c["ok"] is False)
    assert failed == sorted(state["expected_failures"])


def test_a_host_stops_only_on_required_failures(host):
    state = _state(host)
    report = _report(host)
    required = [c["name"] for c in report["checks"] if c["ok"] is False and c["severity"] == "required"]
    assert report["failures"] == required
    # aesmd (informational: the local key provider creates its socket later) never stops a host
    assert report["result"] == ("fail" if set(state["expected_failures"]) - {"aesmd"} else "pass")


def test_every_failure_carries_its_fix(host):
    for check in _report(host)["checks"]:
        assert check["detail"]
        if check["ok"] is False:
            assert check["remediation"]


def test_passing_hosts_offer_their_gpus(host):
    state = _state(host)
    if state["expected_failures"]:
        pytest.skip("failing profile")
    gpus = _report(host)["gpus"]
    nvidia = sorted(d["bdf"][5:] for d in state["pci_devices"] if d["vendor"] == "10de")
    assert gpus["policy"] == state["gpu_policy"]
    assert sorted(gpus["cvm_gpus"]) == nvidia


def test_preflight_changed_nothing_on_the_instance(host):
    before = host.file("/run/zerog-preflight-before.txt").content_string.splitlines()
    now = host.run(
        "find /etc /opt /usr /var/lib /root /srv /home -xdev -path /root/.ansible -prune -o "
        "-printf '%p %m %U:%G %s %T@\\n' | LC_ALL=C sort"
    ).stdout.splitlines()
    appeared = sorted(set(now) - set(before))
    vanished = sorted(set(before) - set(now))
    assert (appeared, vanished) == ([], [])
