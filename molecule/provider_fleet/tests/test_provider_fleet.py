"""Two simulated providers from one provider.yml run: one image build, both serving.

zerog-fleet-h100 is the first host of `providers`, so it builds the guest image;
zerog-fleet-h200x8 receives the verified image directory and never runs build.sh.
"""

from __future__ import annotations

import json
import os
import pathlib

import testinfra

BUILDER = "zerog-fleet-h100"
SDK = "/opt/private-ml-sdk"
IMAGE = f"{SDK}/images/dstack-nvidia-0.5.5"
LOG = "/var/log/private-ml-sdk-build.log"
UNIT = "dstack-cvm-finetune.service"
# PCI slots of the h200x8 profile's 8 GPUs and 4 NVSwitches (tests/sim/profiles/h200x8.yml).
H200X8_DEVICES = ["07:00.0", "08:00.0", "09:00.0", "0a:00.0", "18:00.0", "2a:00.0", "3a:00.0", "5d:00.0",
                  "9a:00.0", "ab:00.0", "ba:00.0", "db:00.0"]
GET_MODELS = (
    "python3 -c \"import json, urllib.request; "
    "print(json.dumps(json.load(urllib.request.urlopen('http://127.0.0.1:8080/v1/model', timeout=10))))\""
)


def test_image_built_once_on_the_build_host_only(host):
    if host.backend.name == BUILDER:
        assert host.file(LOG).content_string.count("==== zerog.compute: build.sh started") == 1
    else:
        assert not host.file(LOG).exists


def test_both_hosts_hold_the_same_verified_image(host):
    builder = testinfra.get_host(f"podman://{BUILDER}")
    want = builder.check_output(f"sha256sum {IMAGE}/sha256sum.txt").split()[0]
    assert host.check_output(f"sha256sum {IMAGE}/sha256sum.txt").split()[0] == want
    assert host.run(f"cd {IMAGE} && sha256sum --check --quiet sha256sum.txt").rc == 0


def test_cvm_serves(host):
    assert host.service(UNIT).is_running
    assert json.loads(host.check_output(GET_MODELS)) == []


def test_cvm_gpus(host):
    manifest = json.loads(host.file(f"{SDK}/vms/finetune/vm-manifest.json").content_string)["gpus"]
    slots = [g["slot"] for g in manifest["gpus"]]
    report_dir = pathlib.Path(os.environ["MOLECULE_EPHEMERAL_DIRECTORY"]) / "reports"
    report = json.loads((report_dir / f"{host.backend.name}-provider.json").read_text(encoding="utf-8"))
    if host.backend.name == BUILDER:
        assert report["cvms"][0]["gpus"] == slots and len(slots) == 1  # one H100
    else:
        # PPCIe: the one CVM holds every GPU and NVSwitch of the board. The role asks for "all";
        # the module resolves it to the devices discovery found ready (the 8 H200 and 4
        # NVSwitches of the h200x8 profile) and passes them as a list.
        assert report["cvms"][0]["gpus"] == ["all"]
        assert manifest["attach_mode"] == "listed"
        assert sorted(slots) == H200X8_DEVICES
