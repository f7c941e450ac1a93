"""What an operator would check by hand after zerog.compute.docker on Debian 12 (distribution packages)."""

import json

import pytest

USER = "zerog-operator"
DAEMON_JSON = "/etc/docker/daemon.json"
# prepare.yml wrote this before the role ran (an nvidia runtime, a mirror, a log option).
PREPARED = {
    "registry-mirrors": ["https://mirror.zerog.test"],
    "runtimes": {"nvidia": {"args": [], "path": "nvidia-container-runtime"}},
    "log-opts": {"mode": "non-blocking"},
}
# The role's default keys merged into it: log-opts merged key by key, new keys appended.
MERGED_TEXT = """{
  "registry-mirrors": [
    "https://mirror.zerog.test"
  ],
  "runtimes": {
    "nvidia": {
      "args": [],
      "path": "nvidia-container-runtime"
    }
  },
  "log-opts": {
    "mode": "non-blocking",
    "max-size": "50m",
    "max-file": "3"
  },
  "log-driver": "json-file",
  "live-restore": true
}
"""
COMPOSE_DEB = "/var/cache/zerog-docker/docker-compose_2.26.1-4_amd64.deb"
COMPOSE_DEB_SHA256 = "47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea"


def docker_info(host, fmt, user=None):
    """`docker info --format FMT`, as root or as USER through sudo; returns stripped stdout."""
    argv = ["docker", "info", "--format", fmt]
    if user:
        argv = ["sudo", "-u", user, "--", *argv]
    return host.check_output(" ".join(f"'{a}'" for a in argv)).strip()


def test_docker_service_enabled_and_running(host):
    svc = host.service("docker.service")
    assert svc.is_enabled
    assert svc.is_running


def test_daemon_answers_docker_info(host):
    assert docker_info(host, "{{.ServerVersion}}") == "20.10.24+dfsg1"


def test_compose_v2_answers(host):
    assert host.check_output("docker compose version --short").strip() == "2.26.1-4"
    assert host.check_output("docker compose version").strip() == "Docker Compose version 2.26.1-4"


@pytest.mark.parametrize(
    ("package", "version"),
    [
        ("docker.io", "20.10.24+dfsg1-1+deb12u1+b6"),
        ("docker-compose", "2.26.1-4"),
        ("apparmor", None),
        ("ca-certificates", None),
        ("xz-utils", None),
    ],
)
def test_packages_installed(host, package, version):
    pkg = host.package(package)
    assert pkg.is_installed
    if version:
        assert pkg.version == version


@pytest.mark.parametrize("package", ["docker-ce", "docker-ce-cli", "containerd.io", "docker-compose-plugin"])
def test_docker_repository_packages_absent(host, package):
    assert not host.package(package).is_installed


def test_no_docker_repository_with_distribution_packages(host):
    assert not host.file("/etc/apt/sources.list.d/docker.sources").exists
    assert not host.file("/etc/apt/sources.list.d/docker.list").exists


def test_compose_deb_kept_with_its_checksum(host):
    f = host.file(COMPOSE_DEB)
    assert f.is_file
    assert f.mode == 0o644
    assert f.sha256sum == COMPOSE_DEB_SHA256


def test_user_in_docker_group(host):
    assert "docker" in host.user(USER).groups


def test_user_can_use_docker(host):
    assert docker_info(host, "{{.ServerVersion}}", user=USER) == "20.10.24+dfsg1"


def test_daemon_json_merged_prepared_keys_survive(host):
    f = host.file(DAEMON_JSON)
    assert f.user == "root"
    assert f.group == "root"
    assert f.mode == 0o644
    assert f.content_string == MERGED_TEXT
    merged = json.loads(f.content_string)
    assert merged["runtimes"] == PREPARED["runtimes"]
    assert merged["registry-mirrors"] == PREPARED["registry-mirrors"]


def test_daemon_json_backup_holds_the_prepared_file(host):
    backups = host.check_output("find /etc/docker -maxdepth 1 -name 'daemon.json.*~'").split()
    assert len(backups) == 1, backups
    assert json.loads(host.file(backups[0]).content_string) == PREPARED


def test_running_daemon_uses_the_merged_file(host):
    """The package started dockerd with the prepared file (no live-restore); live restore on
    shows the handler restarted it with the merged file. dockerd 20.10 has no --validate, so
    this is also the proof that it accepts the file. Prepared and role keys are both in force."""
    assert docker_info(host, "{{json .RegistryConfig.Mirrors}}") == '["https://mirror.zerog.test/"]'
    assert docker_info(host, "{{.LiveRestoreEnabled}}") == "true"
    assert docker_info(host, "{{.LoggingDriver}}") == "json-file"
    runtimes = json.loads(docker_info(host, "{{json .Runtimes}}"))
    assert runtimes["nvidia"]["path"] == "nvidia-container-runtime"
