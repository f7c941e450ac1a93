"""When private_ml_sdk includes tasks/image.yml (``__private_ml_sdk_obtain_image``, roles/private_ml_sdk/vars/main.yml).

tasks/main.yml includes it (build, download, copy through the controller) when this host obtains the image and it
did not verify, or when a fleet has other hosts than the build host to copy to. When the checkout_update.yml gate
is tested: test_private_ml_sdk_checkout_current.py.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

SKIPPED = {"changed": False, "skipped": True, "skip_reason": "Conditional result was False"}

VERIFIED = {"changed": False, "ok": True, "path": "/opt/private-ml-sdk/images/dstack-nvidia-0.5.5"}
NOT_VERIFIED = {"changed": False, "ok": False, "problems": ["no metadata.json"]}

# The play is localhost alone. (case, private_ml_sdk_build_host, the image's verification, expected)
IMAGE_CASES = [
    ("every host its own image, verified (a re-run)", "", VERIFIED, False),
    ("every host its own image, not verified", "", NOT_VERIFIED, True),
    ("every host its own image, not looked at (no checkout in check mode)", "", SKIPPED, True),
    ("fleet, the build host alone in the play, verified (a re-run)", "localhost", VERIFIED, False),
    ("fleet, the build host alone in the play, not verified", "localhost", NOT_VERIFIED, True),
    ("fleet, this host is a provider, verified (the copy step decides)", "builder01", VERIFIED, True),
    ("fleet, this host is a provider, not verified", "builder01", NOT_VERIFIED, True),
]

IMAGE_VARS = {
    "private_ml_sdk_build_host": "{{ item.build_host }}",
    "__private_ml_sdk_image": "{{ item.image }}",
}

images, test_obtain_image = table_test("private_ml_sdk", "__private_ml_sdk_obtain_image", IMAGE_VARS, IMAGE_CASES,
                                       ("build_host", "image"), name="images")
