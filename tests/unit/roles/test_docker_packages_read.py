"""What zerog.compute.docker takes from its reads of the host (``zerog.compute.deb_packages_info``).

tasks/packages.yml reads the host once (``__docker_packages_first``) and, when that read found the
Compose ``.deb`` missing or not the wanted file, fetches it and reads again (``__docker_packages_again``,
tasks/packages-install.yml). ``__docker_dpkg_installed`` (the installed packages as ``name`` and
``name=version``, the two forms of an apt spec), the ``.deb``'s package and the other source's packages
to remove must come from the last read, and never from a second read of an earlier run of the role
(a registered variable outlives its play). Each row asks whether one string is in one of these lists.
"""

from __future__ import annotations

import json
import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

SKIPPED = {"changed": False, "skipped": True, "false_condition": "__docker_compose_deb_wanted"}
NO_DEB = {"path": "", "exists": False, "checksum": "", "checksum_ok": False, "package": "", "version": ""}
DEB = {"path": "/var/cache/zerog-docker/docker-compose_2.26.1-4_amd64.deb", "exists": True, "checksum": "47" * 32,
       "checksum_ok": True, "package": "docker-compose", "version": "2.26.1-4"}


def read(installed, deb=None):
    return {"changed": False, "installed": installed, "deb": deb or NO_DEB, "paths": {}, "packages": {}}


BEFORE_FETCH = read({"docker.io": "20.10.24+dfsg1-1+b3"})
# Docker's own docker-compose-plugin .deb beside the distribution's engine: that package is one of
# the other source's, but the role installs it, so it must not be removed.
PLUGIN_DEB = read({"docker.io": "20.10.24+dfsg1-1+b3"},
                  dict(DEB, package="docker-compose-plugin", version="2.39.1-1~debian.12~bookworm"))
AFTER_FETCH = read({"docker.io": "20.10.24+dfsg1-1+b3", "docker-compose": "2.26.1-4"}, DEB)

URL = "http://deb.debian.org/debian/pool/main/d/docker-compose/docker-compose_2.26.1-4_amd64.deb"

TASK_VARS = {
    "__docker_packages_first": "{{ item.first | from_json }}",
    "__docker_packages_again": "{{ item.again | from_json }}",
    # A .deb is wanted where the row has a second read (the .deb was fetched); in the rows whose first
    # read found the .deb in place, or asked for none, the second read was skipped or is an earlier run's.
    "docker_compose_deb": "{{ '' if (item.again | from_json) is skipped and not (item.first | from_json).deb.checksum_ok"
                          " else '" + URL + "' }}",
    "docker_source": "distribution",
    "ansible_facts": "{{ {'distribution': 'Debian', 'distribution_release': 'bookworm', 'architecture': 'x86_64'} }}",
    "__docker_distribution_packages": "{{ ['docker.io'] }}",
    "__docker_distribution_pinned": "{{ ['docker.io'] }}",
    "__docker_distribution_compose_packages": "{{ ['docker-compose'] }}",
}

# (case, first read, second read, which list, the string, in it)
CASES = [
    ("name of an installed package", BEFORE_FETCH, SKIPPED, "installed", "docker.io", True),
    ("name=version of an installed package", BEFORE_FETCH, SKIPPED, "installed", "docker.io=20.10.24+dfsg1-1+b3", True),
    ("another version", BEFORE_FETCH, SKIPPED, "installed", "docker.io=26.1.5+dfsg1-9", False),
    ("not installed", BEFORE_FETCH, SKIPPED, "installed", "docker-compose", False),
    ("the second read wins", BEFORE_FETCH, AFTER_FETCH, "installed", "docker-compose=2.26.1-4", True),
    ("the first read when the second was skipped", AFTER_FETCH, SKIPPED, "installed", "docker-compose=2.26.1-4", True),
    ("the .deb's package from the last read", BEFORE_FETCH, AFTER_FETCH, "deb", "docker-compose", True),
    ("no .deb package before it is read", BEFORE_FETCH, SKIPPED, "deb", "", True),
    ("the .deb's version", BEFORE_FETCH, AFTER_FETCH, "version", "2.26.1-4", True),
    ("the other source's packages are removed", BEFORE_FETCH, SKIPPED, "conflicting", "docker-compose-plugin", True),
    ("the .deb's own package is not removed", BEFORE_FETCH, PLUGIN_DEB, "conflicting", "docker-compose-plugin", False),
    ("the other ones still are", BEFORE_FETCH, PLUGIN_DEB, "conflicting", "docker-ce", True),
    ("not a second read of an earlier run", AFTER_FETCH, BEFORE_FETCH, "installed", "docker-compose=2.26.1-4", True),
    ("not the .deb's package of an earlier run", AFTER_FETCH, PLUGIN_DEB, "deb", "docker-compose", True),
]
ROWS = [(name, json.dumps(first), json.dumps(again), what, probe, want) for name, first, again, what, probe, want in CASES]

EXPRESSION = (
    "item.probe in ((__docker_dpkg_installed if item.what == 'installed'"
    " else [__docker_compose_deb_package] if item.what == 'deb'"
    " else [__docker_compose_deb_version] if item.what == 'version'"
    " else __docker_conflicting) | map('string') | list)"
)

results, test_docker_packages_read = table_test("docker", EXPRESSION, TASK_VARS, ROWS, ("first", "again", "what", "probe"))

# When the .deb's package is still unknown after the reads: check mode predicts the install of a
# URL it did not fetch; a path that is not on the host fails the role, in check mode too.
PATH = "/srv/debs/docker-compose_2.26.1-4_amd64.deb"
MISSING = read({"docker.io": "20.10.24+dfsg1-1+b3"}, dict(NO_DEB, path=PATH))

OUTCOME_VARS = dict(TASK_VARS, docker_compose_deb="{{ item.deb }}", docker_compose_deb_checksum="sha256:" + "47" * 32)
OUTCOME_EXPRESSION = "[__docker_compose_deb_predicted, __docker_compose_deb_missing] == item.outcome | from_json"

# (case, first read, second read, docker_compose_deb, [predicted, missing], as expected); run and check mode
RUN_OUTCOMES = [
    ("URL fetched and read", BEFORE_FETCH, AFTER_FETCH, URL, [False, False]),
    ("URL not there after the fetch", BEFORE_FETCH, read({}, NO_DEB), URL, [False, True]),
    ("path on the host", AFTER_FETCH, SKIPPED, PATH, [False, False]),
    ("path not on the host", MISSING, MISSING, PATH, [False, True]),
]
CHECK_OUTCOMES = [
    ("URL not fetched", BEFORE_FETCH, read({}, NO_DEB), URL, [True, False]),
    ("URL cached", AFTER_FETCH, SKIPPED, URL, [False, False]),
    ("path on the host", AFTER_FETCH, SKIPPED, PATH, [False, False]),
    ("path not on the host", MISSING, MISSING, PATH, [False, True]),
]


def _rows(outcomes):
    return [(name, json.dumps(first), json.dumps(again), deb, json.dumps(outcome), True)
            for name, first, again, deb, outcome in outcomes]


FIELDS = ("first", "again", "deb", "outcome")
run_outcomes, test_compose_deb_outcome_run = table_test(
    "docker", OUTCOME_EXPRESSION, OUTCOME_VARS, _rows(RUN_OUTCOMES), FIELDS, name="run_outcomes")
check_outcomes, test_compose_deb_outcome_check = table_test(
    "docker", OUTCOME_EXPRESSION, OUTCOME_VARS, _rows(CHECK_OUTCOMES), FIELDS, name="check_outcomes", check_mode=True)
