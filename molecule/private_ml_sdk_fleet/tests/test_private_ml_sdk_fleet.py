"""The fleet after converge, idempotence and side_effect: one build, on the build host only.

The same tests run on each of the three instances; what differs is keyed on the host name.
"""

import json

import testinfra

BUILDER = "zerog-pms-builder"
SDK = "/opt/private-ml-sdk"
IMAGE = SDK + "/images/dstack-nvidia-0.5.5"
LOG = "/var/log/private-ml-sdk-build.log"
USER = "dstack-build"


def name(host):
    return host.check_output("hostname")


def test_only_the_build_host_built_once(host):
    if name(host) == BUILDER:
        assert host.file(LOG).content_string.count("==== zerog.compute: build.sh started") == 1
        assert "docker" in host.user(USER).groups
    else:
        # Providers never build: no Docker, no build log, the build user outside any docker group.
        assert not host.file(LOG).exists
        assert not host.exists("docker")
        assert "docker" not in host.user(USER).groups


def test_every_host_holds_the_builders_image(host):
    builder = testinfra.get_host(f"podman://{BUILDER}")
    want = builder.check_output("sha256sum %s/sha256sum.txt", IMAGE).split()[0]
    assert host.check_output("sha256sum %s/sha256sum.txt", IMAGE).split()[0] == want
    assert host.file(IMAGE + "/digest.txt").content_string.strip() == want
    assert host.run("cd %s && sha256sum --quiet -c sha256sum.txt", IMAGE).rc == 0
    meta = json.loads(host.file(IMAGE + "/metadata.json").content_string)
    head = host.check_output("git -C %s -c safe.directory=* rev-parse HEAD", SDK)
    assert meta["git_revision"] == head
    assert host.file(IMAGE).user == USER
    assert host.file(IMAGE + "/rootfs.img.verity").user == USER


def test_providers_got_only_the_wanted_image(host):
    listed = sorted(host.check_output("ls -A %s/images", SDK).split())
    if name(host) == BUILDER:
        # build.sh always writes both images.
        assert listed == ["dstack-nvidia-0.5.5", "dstack-nvidia-dev-0.5.5"]
    else:
        assert listed == ["dstack-nvidia-0.5.5"]
