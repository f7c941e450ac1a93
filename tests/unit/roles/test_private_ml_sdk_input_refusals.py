"""The message of private_ml_sdk's one assert of its variables (tasks/check.yml).

``__private_ml_sdk_input_refusals`` (roles/private_ml_sdk/vars/main.yml) lists the messages of
the checks that fail, in order: the build user, the checkout variables, the prebuilt image
variables (only when private_ml_sdk_image_source is prebuilt), the build settings, the fleet's
build host (only when one is set). Each message is the one of the assert it replaced, word for
word, naming its variable; the assert's message joins them with spaces.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

ROOT = ("private_ml_sdk_build_user is '{user}': private-ml-sdk's build.sh must not run as root (bitbake's sanity "
        "check aborts with \"Do not use Bitbake as root.\"). Set private_ml_sdk_build_user to an unprivileged user "
        "name (default dstack-build); the role creates it and adds it to the docker group.")
CHECKOUT = ("private_ml_sdk_dir must be an absolute path other than / (it is '{dir}'), and private_ml_sdk_version (a tag "
            "such as v0.5.5, or a commit SHA) and private_ml_sdk_repo_url must not be empty.")
PREBUILT = ("private_ml_sdk_image_source is prebuilt: set private_ml_sdk_prebuilt_url to the image tarball (https://, "
            "http:// or file://) and private_ml_sdk_prebuilt_sha256 to its sha256 (64 hex digits, \"sha256:\" prefix "
            "allowed; it is '{sha}').")
BUILD = ("private_ml_sdk_build_timeout and private_ml_sdk_build_poll_interval must be positive numbers of seconds, "
         "private_ml_sdk_build_min_free_gib must not be negative, and private_ml_sdk_build_log must be an absolute path.")
FLEET = ("private_ml_sdk_build_host is '{host}', which is not a host of this play. The image is built (or downloaded) "
         "there once and copied to the other hosts, so it must run this role too: add it to the play's hosts (for "
         "example \"hosts: providers:{host}\"; for the controller add localhost), and with serial keep it in the first "
         "batch.")

SHA = "ab" * 32
GOOD = {
    "private_ml_sdk_build_user": "dstack-build",
    "private_ml_sdk_dir": "/opt/private-ml-sdk",
    "private_ml_sdk_version": "v0.5.5",
    "private_ml_sdk_repo_url": "https://github.com/nearai/private-ml-sdk.git",
    "private_ml_sdk_image_source": "build",
    "private_ml_sdk_prebuilt_url": "",
    "private_ml_sdk_prebuilt_sha256": "",
    "private_ml_sdk_build_timeout": 28800,
    "private_ml_sdk_build_poll_interval": 60,
    "private_ml_sdk_build_min_free_gib": 150,
    "private_ml_sdk_build_log": "/var/log/private-ml-sdk-build.log",
    "private_ml_sdk_build_host": "",
}
PREBUILT_OK = {"private_ml_sdk_image_source": "prebuilt", "private_ml_sdk_prebuilt_url": "file:///srv/i.tar.gz",
               "private_ml_sdk_prebuilt_sha256": "sha256:" + SHA}


def _v(**change):
    return dict(GOOD, **change)


def _pv(**change):
    """The valid prebuilt variables, some of them changed."""
    return {**GOOD, **PREBUILT_OK, **change}


# (case, the variables, the expected message ("" when nothing is refused)); the play is localhost alone.
CASES = [
    ("all valid", GOOD, ""),
    ("build user root", _v(private_ml_sdk_build_user="root"), ROOT.format(user="root")),
    ("build user uid 0", _v(private_ml_sdk_build_user="0"), ROOT.format(user="0")),
    ("build user empty", _v(private_ml_sdk_build_user=""), ROOT.format(user="")),
    ("directory relative", _v(private_ml_sdk_dir="opt/sdk"), CHECKOUT.format(dir="opt/sdk")),
    ("directory /", _v(private_ml_sdk_dir="//"), CHECKOUT.format(dir="//")),
    ("version empty", _v(private_ml_sdk_version=""), CHECKOUT.format(dir="/opt/private-ml-sdk")),
    ("repository empty", _v(private_ml_sdk_repo_url=""), CHECKOUT.format(dir="/opt/private-ml-sdk")),
    ("building: the prebuilt variables are not looked at", _v(private_ml_sdk_prebuilt_sha256="sha256:1234"), ""),
    ("prebuilt, valid", _pv(), ""),
    ("prebuilt, sha256 without prefix", _pv(private_ml_sdk_prebuilt_sha256=SHA.upper()), ""),
    ("prebuilt, sha256 malformed", _pv(private_ml_sdk_prebuilt_sha256="sha256:1234"),
     PREBUILT.format(sha="sha256:1234")),
    ("prebuilt, no URL", _pv(private_ml_sdk_prebuilt_url=""),
     PREBUILT.format(sha="sha256:" + SHA)),
    ("timeout 0", _v(private_ml_sdk_build_timeout=0), BUILD),
    ("poll interval 0", _v(private_ml_sdk_build_poll_interval=0), BUILD),
    ("free space negative", _v(private_ml_sdk_build_min_free_gib=-1), BUILD),
    ("build log relative", _v(private_ml_sdk_build_log="build.log"), BUILD),
    ("fleet, build host in the play", _v(private_ml_sdk_build_host="localhost"), ""),
    ("fleet, build host not in the play", _v(private_ml_sdk_build_host="builder01"), FLEET.format(host="builder01")),
    ("every check fails at once",
     _pv(private_ml_sdk_build_user="root", private_ml_sdk_version="", private_ml_sdk_build_timeout=0,
         private_ml_sdk_build_host="builder01", private_ml_sdk_prebuilt_sha256="x"),
     " ".join([ROOT.format(user="root"), CHECKOUT.format(dir="/opt/private-ml-sdk"), PREBUILT.format(sha="x"), BUILD,
               FLEET.format(host="builder01")])),
]

TASK_VARS = {name: "{{ item.v['" + name + "'] }}" for name in GOOD}

results, test_input_refusals = table_test(
    "private_ml_sdk", "__private_ml_sdk_input_refusals | join(' ') == item.want", TASK_VARS,
    [(name, v, want, True) for name, v, want in CASES], ("v", "want"))
