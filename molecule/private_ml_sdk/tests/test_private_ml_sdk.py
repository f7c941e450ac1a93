"""The host after converge, idempotence and side_effect: what an operator would check by hand.

side_effect.yml ends with the checkout at the 0.3-era ref (pms-0.3) and four images: the 0.5.5
dev image of the first build, the 0.5.5 production image installed from the prebuilt tarball,
and the 0.3.3 images of the ref change (the dev one rebuilt after it was damaged). Four builds
were started: the first converge, the one stopped by its timeout, its resumption and the
rebuild of the damaged image.
"""

import json

import pytest

SDK = "/opt/private-ml-sdk"
USER = "dstack-build"
LOG = "/var/log/private-ml-sdk-build.log"
MIRROR = "/opt/zerog-sim/git/private-ml-sdk.git"
IMAGES = ["dstack-nvidia-0.3.3", "dstack-nvidia-0.5.5", "dstack-nvidia-dev-0.3.3", "dstack-nvidia-dev-0.5.5"]


def git(host, repo, *args):
    """A git query as root on a repository of another owner."""
    return host.check_output("git -C %s -c safe.directory=* " + " ".join(["%s"] * len(args)), repo, *args)


def test_build_user_is_unprivileged_and_in_the_docker_group(host):
    user = host.user(USER)
    assert user.exists
    assert user.uid != 0
    assert user.uid < 1000  # a system user
    assert "docker" in user.groups


def test_checkout_is_owned_by_the_build_user_and_at_the_last_ref(host):
    assert host.file(SDK).user == USER
    assert host.file(SDK + "/.git").user == USER
    assert git(host, SDK, "rev-parse", "HEAD") == git(host, MIRROR, "rev-parse", "pms-0.3^{commit}")
    # The submodule is at the commit pms-0.3 pins and nothing tracked is modified (the local
    # change was discarded by private_ml_sdk_force_checkout).
    assert git(host, SDK, "submodule", "status").startswith(" ")
    assert git(host, SDK, "status", "--porcelain", "--untracked-files=no") == ""


@pytest.mark.parametrize("name", IMAGES)
def test_images_verify(host, name):
    image = f"{SDK}/images/{name}"
    assert host.run("cd %s && sha256sum --quiet -c sha256sum.txt", image).rc == 0
    meta = json.loads(host.file(image + "/metadata.json").content_string)
    assert meta["version"] == name.rsplit("-", 1)[1]
    assert meta["is_dev"] is ("-dev-" in name)
    tag = "v0.5.5" if "0.5.5" in name else "pms-0.3"
    assert meta["git_revision"] == git(host, MIRROR, "rev-parse", f"{tag}^{{commit}}")
    if "0.5.5" in name:
        digest = host.check_output("sha256sum %s/sha256sum.txt", image).split()[0]
        assert host.file(image + "/digest.txt").content_string.strip() == digest
    assert host.file(image + "/bzImage").user == USER


def test_nothing_else_in_images(host):
    listed = sorted(host.check_output("ls -A %s/images", SDK).split())
    assert listed == IMAGES


def test_log_holds_four_builds(host):
    log = host.file(LOG).content_string
    assert log.count("==== zerog.compute: build.sh started") == 4
    # The build stopped by its timeout never wrote its exit line.
    assert log.count("==== zerog.compute: build.sh exited with rc 0") == 3
    assert host.file(LOG).user == USER


def test_runner_state_and_no_build_left_running(host):
    runner = host.file("/usr/local/lib/zerog-compute/private-ml-sdk-build")
    assert runner.user == "root"
    assert runner.mode == 0o755
    state = host.file(SDK + "/.zerog-build.state").content_string
    assert state.startswith("state=exited\nrc=0\n")
    assert host.run("pgrep -u %s", USER).rc == 1


def test_git_configuration_of_the_host_is_untouched(host):
    # The role's git settings for the local mirror live in a file of its own, read through
    # GIT_CONFIG_GLOBAL by its git commands only.
    for path in ("/etc/gitconfig", "/root/.gitconfig", f"/home/{USER}/.gitconfig"):
        assert not host.file(path).exists, path
    own = host.file(f"/home/{USER}/.zerog-private-ml-sdk.gitconfig")
    assert own.user == "root"
    assert "allow = always" in own.content_string
