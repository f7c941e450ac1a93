"""What an operator would check by hand after the smoke converge."""


def test_instance_is_debian_12(host):
    assert host.system_info.distribution == "debian"
    assert host.system_info.release.split(".")[0] == "12"


def test_systemd_is_pid_1(host):
    assert host.file("/proc/1/comm").content_string.strip() == "systemd"


def test_config_file(host):
    f = host.file("/etc/zerog-smoke.conf")
    assert f.is_file
    assert f.user == "root"
    assert f.mode == 0o640
    assert f.content_string == "distribution=Debian 12\n"


def test_unit_enabled_and_running(host):
    svc = host.service("zerog-smoke.service")
    assert svc.is_enabled
    assert svc.is_running
