"""Tests of the deb_packages_info module against the real dpkg-query and dpkg-deb of the machine.

Each case of the YAML table beside this file gets a dpkg database of its own (``DPKG_ADMINDIR``, a
``status`` file in dpkg's format with the packages of ``HOST_DB`` and the case's ``db_extra``), and,
when it names one, a ``.deb`` built once per module with ``dpkg-deb --build`` (or a garbage file saved
under the .deb's name, as a failed download leaves). dpkg's own output is what the module parses, so
these cases fail when dpkg's format and the parser part ways. Every call the module makes still runs
the real program; the test only records which programs ran and with which names, to prove what was
(not) asked. The pure parsers have tables of their own, with the lines dpkg prints.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess

import pytest
import yaml
from ansible.module_utils import basic
from ansible_collections.zerog.compute.plugins.modules import deb_packages_info
from ansible_collections.zerog.compute.tests.unit.harness import assert_subset, case_file, run_module, substitute

DEB_NAME = "docker-compose-plugin_2.39.1-1~debian.12~bookworm_amd64.deb"
CONTROL = """\
Package: docker-compose-plugin
Version: 2.39.1-1~debian.12~bookworm
Architecture: amd64
Maintainer: Docker <support@docker.com>
Description: Docker Compose (V2) plugin for the Docker CLI.
 This plugin provides the 'docker compose' subcommand.
"""
# What a failed download leaves under the .deb's name.
GARBAGE = "<html><head><title>404 Not Found</title></head><body><h1>Not Found</h1></body></html>\n"

# The dpkg database of the host every case starts from: one package in each state a role meets.
HOST_DB = [
    {"package": "docker.io", "status": "install ok installed", "version": "20.10.24+dfsg1-1+b3"},
    {"package": "containerd", "status": "hold ok installed", "version": "1.6.20~ds1-1+b1"},
    {"package": "docker-ce", "status": "deinstall ok config-files", "version": "5:28.3.3-1~debian.12~bookworm"},
    {"package": "runc", "status": "install reinstreq half-installed", "version": "1.1.5+ds1-1+b1"},
    # Installed, but dpkg wants it reinstalled (the error flag): not installed for the module.
    {"package": "docker-buildx-plugin", "status": "install reinstreq installed", "version": "0.26.1-1~debian.12~bookworm"},
    {"package": "tini", "status": "install ok unpacked", "version": "0.19.0-1"},
    # A purged package dpkg still lists (it has a selection): dpkg-query prints it with no version.
    {"package": "docker-ce-cli", "status": "purge ok not-installed", "version": "5:28.3.3-1~debian.12~bookworm"},
    {
        "package": "man-db",
        "status": "install ok triggers-pending",
        "version": "2.11.2-2",
        "fields": {"Triggers-Pending": "/usr/share/man"},
    },
]


def _load():
    with open(case_file(__file__), encoding="utf-8") as handle:
        return [pytest.param(case, id=case["id"]) for case in yaml.safe_load(handle)]


def _write(path, text):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w", encoding="utf-8") as out:
        out.write(text)


def stanza(entry):
    """One package of a dpkg ``status`` file, with the fields dpkg writes, in its order."""
    lines = [
        f"Package: {entry['package']}",
        f"Status: {entry['status']}",
        "Priority: optional",
        "Section: admin",
        "Installed-Size: 1024",
        "Maintainer: Debian Go Packaging Team <team+pkg-go@tracker.debian.org>",
        "Architecture: amd64",
    ]
    if entry.get("version"):
        lines.append(f"Version: {entry['version']}")
    lines += [f"{key}: {value}" for key, value in entry.get("fields", {}).items()]
    lines += [f"Description: {entry['package']} (test package)", " Stands in for the package of the same name."]
    return "\n".join(lines) + "\n"


def admin_dir(tmp, case):
    """A dpkg admin directory for the case: the status file and the empty info/ and updates/ of a host
    (dpkg-query needs nothing else to answer without a warning; the test checks its stderr)."""
    admin = os.path.join(tmp, "dpkg")
    for sub in ("info", "updates"):
        os.makedirs(os.path.join(admin, sub))
    if "status_file" in case:
        status = case["status_file"]
    else:
        status = "\n".join(stanza(entry) for entry in HOST_DB + case.get("db_extra", []))
    _write(os.path.join(admin, "status"), status)
    return admin


@pytest.fixture(scope="module")
def debs(tmp_path_factory):
    """{kind: file}: the Compose plugin .deb built by dpkg-deb, and a garbage file."""
    base = str(tmp_path_factory.mktemp("debs"))
    root = os.path.join(base, "docker-compose-plugin")
    _write(os.path.join(root, "DEBIAN", "control"), CONTROL)
    _write(os.path.join(root, "usr", "libexec", "docker", "cli-plugins", "docker-compose"), "#!/bin/sh\necho compose\n")
    compose = os.path.join(base, DEB_NAME)
    subprocess.run(["dpkg-deb", "--root-owner-group", "--build", root, compose], check=True, capture_output=True)
    garbage = os.path.join(base, "garbage.deb")
    _write(garbage, GARBAGE)
    return {"compose": compose, "garbage": garbage}


def _digest(path, algorithm):
    with open(path, "rb") as handle:
        return hashlib.new(algorithm, handle.read()).hexdigest()


def _bin_dir(tmp, names):
    """A PATH directory holding only links to the named programs of the machine."""
    bin_dir = os.path.join(tmp, "bin")
    os.makedirs(bin_dir)
    for name in names:
        os.symlink(shutil.which(name), os.path.join(bin_dir, name))
    return bin_dir


def marked(value, marks):
    """``substitute`` that also replaces the marks in mapping keys (RV(paths) is keyed by path)."""
    if isinstance(value, dict):
        return {substitute(k, marks): marked(v, marks) for k, v in value.items()}
    if isinstance(value, list):
        return [marked(v, marks) for v in value]
    return substitute(value, marks)


@pytest.fixture
def recorded(monkeypatch):
    """Each dpkg program the module runs (for real) as {tool, args, rc, err}."""
    calls = []
    real = basic.AnsibleModule.run_command

    def run_command(self, args, *pos, **kwargs):
        rc, out, err = real(self, args, *pos, **kwargs)
        argv = [str(a) for a in args]
        i = next(n for n, a in enumerate(argv) if os.path.basename(a).startswith("dpkg-"))
        calls.append({"tool": os.path.basename(argv[i]), "args": argv[i + 1 :], "rc": rc, "err": err})
        return rc, out, err

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    return calls


@pytest.mark.parametrize("case", _load())
@pytest.mark.parametrize("check_mode", [False, True], ids=["run", "check"])
def test_deb_packages_info(case, check_mode, debs, recorded, tmp_path, monkeypatch):
    tmp = str(tmp_path)
    monkeypatch.setenv("DPKG_ADMINDIR", admin_dir(tmp, case))
    deb = os.path.join(tmp, "cache", DEB_NAME)
    if case.get("deb"):
        os.makedirs(os.path.dirname(deb))
        shutil.copyfile(debs[case["deb"]], deb)
    # The checksums are those of the file the case puts at @DEB@ (of the real .deb when none).
    source = deb if case.get("deb") else debs["compose"]
    marks = {
        "@TMP@": tmp,
        "@DEB@": deb,
        "@SHA256@": _digest(source, "sha256"),
        "@SHA256_UPPER@": _digest(source, "sha256").upper(),
        "@SHA512@": _digest(source, "sha512"),
        "@OTHER_SHA256@": hashlib.sha256(b"another file").hexdigest(),
    }
    for name in case.get("files", []):
        _write(os.path.join(tmp, name), "deb [arch=amd64] https://download.docker.com/linux/debian bookworm stable\n")
    for link, target in case.get("symlinks", {}).items():
        os.makedirs(os.path.dirname(os.path.join(tmp, link)), exist_ok=True)
        os.symlink(os.path.join(tmp, target), os.path.join(tmp, link))
    if "bin" in case:
        monkeypatch.setenv("PATH", _bin_dir(tmp, case["bin"]))

    result = run_module(deb_packages_info.main, marked(case["input"], marks), check_mode=check_mode)

    assert result.failed is case.get("failed", False), result.result
    for text in substitute(case.get("msg_contains", []), marks):
        assert text in result.msg, result.msg
    for text in case.get("stderr_contains", []):
        assert text in result.result["stderr"], result.result
    if "cmd_ends_with" in case:
        want = substitute(case["cmd_ends_with"], marks)
        assert result.result["cmd"][-len(want) :] == want, result.result["cmd"]
    output = marked(case.get("output", {}), marks)
    assert_subset(output, result.result)
    # Which names are (not) there is the point of these keys: they must match exactly.
    for key in ("packages", "installed", "deb", "paths"):
        if key in output:
            assert result.result[key] == output[key], f"{key}: {result.result[key]!r}"
    if "ran" in case:
        assert [call["tool"] for call in recorded] == case["ran"]
    queries = [call for call in recorded if call["tool"] == "dpkg-query"]
    if "queried" in case:
        (query,) = queries
        assert query["args"][query["args"].index("--") + 1 :] == case["queried"]
    if "query_rc" in case:
        assert [query["rc"] for query in queries] == [case["query_rc"]]
    if not case.get("status_file"):
        # The fake database is complete: dpkg-query only says which names it does not know.
        for query in queries:
            for line in query["err"].splitlines():
                assert line.startswith("dpkg-query: no packages found matching "), query["err"]
    # Reading only: never a change, in run or check mode.
    assert result.result.get("changed", False) is False


# (case, what dpkg-query --show --showformat=SHOW_FORMAT printed, packages or None for output refused)
SHOW_LINES = [
    (
        "installed",
        "docker.io\tii \t20.10.24+dfsg1-1+b3\n",
        {"docker.io": {"status": "ii", "version": "20.10.24+dfsg1-1+b3", "installed": True}},
    ),
    (
        "every state, as dpkg sorts them",
        "containerd\thi \t1.6.20~ds1-1+b1\n"
        "docker-ce\trc \t5:28.3.3-1~debian.12~bookworm\n"
        "docker-ce-cli\tun \t\n"
        "man-db\tit \t2.11.2-2\n"
        "runc\tiHR\t1.1.5+ds1-1+b1\n"
        "tini\tiU \t0.19.0-1\n",
        {
            "containerd": {"status": "hi", "version": "1.6.20~ds1-1+b1", "installed": True},
            "docker-ce": {"status": "rc", "version": "5:28.3.3-1~debian.12~bookworm", "installed": False},
            "docker-ce-cli": {"status": "un", "version": "", "installed": False},
            "man-db": {"status": "it", "version": "2.11.2-2", "installed": False},
            "runc": {"status": "iHR", "version": "1.1.5+ds1-1+b1", "installed": False},
            "tini": {"status": "iU", "version": "0.19.0-1", "installed": False},
        },
    ),
    (
        "installed with an error flag",
        "docker.io\tiiR\t20.10.24+dfsg1-1+b3\n",
        {"docker.io": {"status": "iiR", "version": "20.10.24+dfsg1-1+b3", "installed": False}},
    ),
    (
        "flags without the trailing blank",
        "docker.io\tii\t20.10.24+dfsg1-1+b3\n",
        {"docker.io": {"status": "ii", "version": "20.10.24+dfsg1-1+b3", "installed": True}},
    ),
    ("nothing known", "", {}),
    ("dpkg-query's default format", "docker.io\t20.10.24+dfsg1-1+b3\n", None),
    ("dpkg-query's message on stdout", "dpkg-query: no packages found matching podman\n", None),
    ("the long db:Status", "docker.io\tinstall ok installed\t20.10.24+dfsg1-1+b3\n", None),
    ("no name", "\tii \t20.10.24+dfsg1-1+b3\n", None),
    ("one good line, one not", "docker.io\tii \t20.10.24+dfsg1-1+b3\ntini 0.19.0-1\n", None),
]


@pytest.mark.parametrize(("text", "want"), [(c[1], c[2]) for c in SHOW_LINES], ids=[c[0] for c in SHOW_LINES])
def test_parse_show(text, want):
    if want is None:
        with pytest.raises(ValueError, match="unexpected line"):
            deb_packages_info.parse_show(text)
    else:
        assert deb_packages_info.parse_show(text) == want


# (case, what dpkg-deb --field FILE Package Version printed, (package, version) or None when refused)
FIELD_LINES = [
    (
        "as dpkg-deb prints them",
        "Package: docker-compose-plugin\nVersion: 2.39.1-1~debian.12~bookworm\n",
        ("docker-compose-plugin", "2.39.1-1~debian.12~bookworm"),
    ),
    (
        "other order, epoch",
        "Version: 5:28.3.3-1~debian.12~bookworm\nPackage: docker-ce\n",
        ("docker-ce", "5:28.3.3-1~debian.12~bookworm"),
    ),
    ("one field asked: value only", "2.39.1-1~debian.12~bookworm\n", None),
    ("no Version", "Package: docker-compose-plugin\n", None),
    ("Version only on a continuation line", "Package: docker-compose-plugin\n Version: 2.39.1\n", None),
    ("empty Version", "Package: docker-compose-plugin\nVersion:\n", None),
    ("nothing", "", None),
]


@pytest.mark.parametrize(("text", "want"), [(c[1], c[2]) for c in FIELD_LINES], ids=[c[0] for c in FIELD_LINES])
def test_parse_fields(text, want):
    if want is None:
        with pytest.raises(ValueError, match="no Package and Version fields"):
            deb_packages_info.parse_fields(text)
    else:
        assert deb_packages_info.parse_fields(text) == want


SHA256 = "47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea"
SHA512 = hashlib.sha512(b"compose").hexdigest()
# (case, deb_checksum, (algorithm, hex) or the start of the ValueError message)
CHECKSUMS = [
    ("sha256", f"sha256:{SHA256}", ("sha256", SHA256)),
    ("sha512", f"sha512:{SHA512}", ("sha512", SHA512)),
    ("upper case", f"SHA256:{SHA256.upper()}", ("sha256", SHA256)),
    ("blanks around", f" sha256 : {SHA256} ", ("sha256", SHA256)),
    ("md5 is a guaranteed algorithm", "md5:" + "0" * 32, ("md5", "0" * 32)),
    ("no algorithm", SHA256, "deb_checksum must be <algorithm>:<hex>"),
    ("no digest", "sha256:", "deb_checksum must be <algorithm>:<hex>"),
    ("not hex", "sha256:" + "g" * 64, "deb_checksum must be <algorithm>:<hex>"),
    ("two colons", f"sha256:{SHA256[:32]}:{SHA256[32:]}", "deb_checksum must be <algorithm>:<hex>"),
    ("unset", None, "deb_checksum must be <algorithm>:<hex>"),
    ("unknown algorithm", f"sha999:{SHA256}", "deb_checksum names the algorithm 'sha999'"),
    ("sha512 length for sha256", f"sha256:{SHA512}", "deb_checksum has 128 hex digits, sha256 has 64"),
    ("too short", "sha256:4768", "deb_checksum has 4 hex digits, sha256 has 64"),
    ("variable-length algorithm", f"shake_128:{SHA256}", "deb_checksum has 64 hex digits, shake_128 has 0"),
]


@pytest.mark.parametrize(("text", "want"), [(c[1], c[2]) for c in CHECKSUMS], ids=[c[0] for c in CHECKSUMS])
def test_parse_checksum(text, want):
    if isinstance(want, str):
        with pytest.raises(ValueError) as error:
            deb_packages_info.parse_checksum(text)
        assert str(error.value).startswith(want), str(error.value)
    else:
        assert deb_packages_info.parse_checksum(text) == want
