"""When zerog.compute.docker includes its install steps (``__docker_packages_due``).

tasks/packages.yml reads the host once (``zerog.compute.deb_packages_info``) and includes
tasks/packages-install.yml (the repository and its key, the removal of apt source files, the fetch of
the Compose ``.deb`` and the second read, the failure on a ``.deb`` that is not a package, the apt
refresh, the removal of the other source's packages, the installs and their check-mode predictions)
only when ``__docker_packages_due`` holds. On a converged host it must not (one skipped include instead
of a skipped task each); it must for every reason one of those tasks has to run.

Two tables, in run and in check mode: the gate itself, row by row; and the gate against the OR of the
``when:`` of every task of tasks/packages-install.yml, read from the file, so that a task added there
with a condition the gate does not cover fails here. The results the file's own tasks register (the
repository, a removed source file, the install) are taken as not changed: a condition on one of them
implies the condition of the task that registers it.
"""

from __future__ import annotations

import json
import os

import pytest
import yaml
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, REPO, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

DEB822 = "/etc/apt/sources.list.d/docker.sources"
LEGACY = "/etc/apt/sources.list.d/docker.list"
URL = "http://deb.debian.org/debian/pool/main/d/docker-compose/docker-compose_2.26.1-4_amd64.deb"
CHECKSUM = "sha256:47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea"
PATH = "/srv/debs/docker-compose_2.26.1-4_amd64.deb"

SKIPPED = {"changed": False, "skipped": True, "false_condition": "__docker_compose_deb_wanted"}
NO_DEB = {"path": "", "exists": False, "checksum": "", "checksum_ok": False, "package": "", "version": ""}
DEB = {"path": "/var/cache/zerog-docker/docker-compose_2.26.1-4_amd64.deb", "exists": True,
       "checksum": CHECKSUM.split(":")[1], "checksum_ok": True, "package": "docker-compose", "version": "2.26.1-4"}
OTHER_DEB = dict(DEB, checksum="0" * 64, checksum_ok=False, package="", version="")

# Debian 12 with docker_source: distribution and Compose v2 from a .deb, as molecule/docker converges it.
ENGINE = {"docker.io": "20.10.24+dfsg1-1+deb12u1+b6", "apparmor": "3.0.8-3", "ca-certificates": "20230311",
          "xz-utils": "5.4.1-0.2"}
INSTALLED = dict(ENGINE, **{"docker-compose": "2.26.1-4"})
REPOSITORY = {"docker-ce": "5:28.3.3-1~debian.12~bookworm", "docker-ce-cli": "5:28.3.3-1~debian.12~bookworm",
              "containerd.io": "1.7.27-1", "docker-buildx-plugin": "0.26.1-1~debian.12~bookworm",
              "docker-compose-plugin": "2.39.1-1~debian.12~bookworm", "apparmor": "3.0.8-3",
              "ca-certificates": "20230311", "xz-utils": "5.4.1-0.2"}


def read(installed, deb=None, paths=None):
    """A result of zerog.compute.deb_packages_info (only the keys the role reads)."""
    return {"changed": False, "installed": installed, "deb": deb or NO_DEB, "packages": {},
            "paths": {DEB822: False, LEGACY: False} if paths is None else paths}


def without(packages, name):
    return {k: v for k, v in packages.items() if k != name}


CONVERGED = read(INSTALLED, DEB)
MISSING_PATH = read(ENGINE, dict(NO_DEB, path=PATH))
D13 = {"__docker_distribution_compose_packages": ["docker-compose"], "docker_compose_deb": ""}

# (case, first read, second read, variables other than the molecule scenario's, gate open)
CASES = [
    ("converged host", CONVERGED, SKIPPED, {}, False),
    ("Docker's repository: its key and source file are always written",
     read(REPOSITORY, paths={LEGACY: False}), SKIPPED, {"docker_source": "docker", "docker_compose_deb": ""}, True),
    ("Docker's deb822 source left on the host", read(INSTALLED, DEB, {DEB822: True, LEGACY: False}), SKIPPED, {}, True),
    ("get.docker.com's docker.list on the host", read(INSTALLED, DEB, {DEB822: False, LEGACY: True}), SKIPPED, {},
     True),
    ("a package missing", read(without(INSTALLED, "xz-utils"), DEB), SKIPPED, {}, True),
    ("the engine at another version than docker_version", CONVERGED, SKIPPED,
     {"docker_version": "20.10.24+dfsg1-1+deb12u1+b7"}, True),
    ("the engine at docker_version", CONVERGED, SKIPPED, {"docker_version": "20.10.24+dfsg1-1+deb12u1+b6"}, False),
    ("a package of the other source", read(dict(INSTALLED, **{"docker-ce": "5:28.3.3-1~debian.12~bookworm"}), DEB),
     SKIPPED, {}, True),
    ("a package of the other source, kept", read(dict(INSTALLED, **{"docker-ce": "5:28.3.3-1~debian.12~bookworm"}), DEB),
     SKIPPED, {"docker_remove_conflicting_packages": False}, False),
    ("the Compose .deb not downloaded", read(INSTALLED), read(INSTALLED, DEB), {}, True),
    ("the Compose .deb not the wanted file", read(INSTALLED, OTHER_DEB), read(INSTALLED, DEB), {}, True),
    ("the Compose .deb's package not installed", read(ENGINE, DEB), SKIPPED, {}, True),
    ("the Compose .deb's package at another version", read(dict(ENGINE, **{"docker-compose": "2.26.1-3"}), DEB),
     SKIPPED, {}, True),
    ("a Compose .deb path not on the host", MISSING_PATH, MISSING_PATH, {"docker_compose_deb": PATH}, True),
    ("a Compose .deb path on the host, installed", read(INSTALLED, dict(DEB, path=PATH)), SKIPPED,
     {"docker_compose_deb": PATH}, False),
    ("no Compose (docker_compose false)", read(ENGINE), SKIPPED, {"docker_compose": False}, False),
    ("Compose from the distribution's package, installed", read(INSTALLED), SKIPPED, D13, False),
    ("Compose from the distribution's package, missing", read(ENGINE), SKIPPED, D13, True),
    ("not a second read of an earlier run", CONVERGED, read({}), {}, False),
]

# The molecule scenario's variables (molecule/docker/converge.yml) and Debian 12's data
# (vars/Debian-12.yml), each overridden by the row's.
DEFAULTS = {
    "docker_source": "distribution",
    "docker_compose": True,
    "docker_compose_deb": URL,
    "docker_compose_deb_checksum": CHECKSUM,
    "docker_version": "",
    "docker_remove_conflicting_packages": True,
    "__docker_distribution_packages": ["docker.io"],
    "__docker_distribution_pinned": ["docker.io"],
    "__docker_distribution_compose_packages": [],
}
TASK_VARS = {
    "__docker_packages_first": "{{ item.first | from_json }}",
    "__docker_packages_again": "{{ item.again | from_json }}",
    "ansible_facts": "{{ {'distribution': 'Debian', 'distribution_release': 'bookworm', 'architecture': 'x86_64'} }}",
    # What the file's own tasks register, before they run (not changed).
    **{name: "{{ {'changed': false, 'skipped': true} }}" for name in (
        "__docker_apt_key_url", "__docker_apt_key_block", "__docker_apt_source", "__docker_apt_source_removed",
        "__docker_legacy_list", "__docker_install")},
    **{name: "{{ (item.vars | from_json)['" + name + "'] }}" for name in DEFAULTS},
}


def _conditions(path):
    """The OR of the ``when:`` of every task of a tasks file (a task without one always runs)."""
    with open(path, encoding="utf-8") as handle:
        tasks = yaml.safe_load(handle)
    terms = []
    for task in tasks:
        when = task.get("when", "true")
        when = when if isinstance(when, list) else [when]
        terms.append("(" + " and ".join(f"({' '.join(str(c).split())})" for c in when) + ")")
    return " or ".join(terms)


TASKS_OR = _conditions(os.path.join(REPO, "roles", "docker", "tasks", "packages-install.yml"))
FIELDS = ("first", "again", "vars")


def _rows(same):
    return [(name, json.dumps(first), json.dumps(again), json.dumps(dict(DEFAULTS, **overrides)), True if same else due)
            for name, first, again, overrides, due in CASES]


gate_run, test_gate_run = table_test("docker", "__docker_packages_due", TASK_VARS, _rows(False), FIELDS,
                                     name="gate_run")
gate_check, test_gate_check = table_test("docker", "__docker_packages_due", TASK_VARS, _rows(False), FIELDS,
                                         name="gate_check", check_mode=True)
SAME = f"(__docker_packages_due | bool) == (({TASKS_OR}) | bool)"
same_run, test_gate_is_the_tasks_conditions_run = table_test("docker", SAME, TASK_VARS, _rows(True), FIELDS,
                                                             name="same_run")
same_check, test_gate_is_the_tasks_conditions_check = table_test("docker", SAME, TASK_VARS, _rows(True), FIELDS,
                                                                 name="same_check", check_mode=True)


def test_every_task_has_a_condition():
    """A task of tasks/packages-install.yml without ``when:`` would make the gate always open."""
    assert "((true))" not in TASKS_OR.split(" or ")
