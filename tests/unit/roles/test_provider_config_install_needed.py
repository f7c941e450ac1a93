"""When provider_config installs the broker package (tasks/package.yml includes tasks/install.yml).

``__provider_config_install_needed`` (roles/provider_config/vars/main.yml) reads the stat of the
marker ``<install_dir>/<version>/.zerog-package-<sha256>``: the installation runs (or, in check mode,
is predicted) only when that marker is not there. A version directory without the marker of the
configured checksum is the installation's business too (it refuses it).
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

SHA = "ABCDEF0123456789" * 4

# (case, the marker's stat result, expected)
CASES = [
    ("marker there (a re-run)", {"changed": False, "stat": {"exists": True, "isreg": True}}, False),
    ("no marker (a fresh host, or a directory of another package)", {"changed": False, "stat": {"exists": False}}, True),
]

TASK_VARS = {
    "__provider_config_marker_stat": "{{ item.stat }}",
}

results, test_install_needed = table_test("provider_config", "__provider_config_install_needed", TASK_VARS, CASES,
                                          ("stat",))

# The marker and the package directory the stat looks at: named after the configured version and
# the lower-case checksum.
PATH_CASES = [
    ("defaults", "/opt/zerog/broker", "0.2.2", True),
    ("another install directory", "/srv/broker", "0.2.2", True),
]
PATH_VARS = {
    "provider_config_install_dir": "{{ item.dir }}",
    "provider_config_broker_version": "{{ item.version }}",
    "provider_config_package_sha256": SHA,
}
paths, test_marker_path = table_test(
    "provider_config",
    "__provider_config_pkg_dir ~ '/' ~ __provider_config_marker == item.dir ~ '/' ~ item.version ~ '/.zerog-package-"
    + SHA.lower() + "'",
    PATH_VARS, PATH_CASES, ("dir", "version"), name="paths")
