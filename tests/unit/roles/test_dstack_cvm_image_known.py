"""When dstack_cvm takes the image private_ml_sdk verified instead of reading it again.

``__dstack_cvm_image_known`` (roles/dstack_cvm/vars/main.yml) must be true only when
``private_ml_sdk_facts`` was published in the same play, for the very image this CVM boots, after
the image verified (``image_ok``), with a generation the role knows. Then define.yml skips its
``dstack_image_info`` and takes the generation from the fact.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAY, PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

IMAGE = "/opt/private-ml-sdk/images/dstack-nvidia-0.5.5"
FACTS = {"play": PLAY, "dir": "/opt/private-ml-sdk", "image_path": IMAGE, "image_version": "0.5.5",
         "image_generation": "0.5", "image_is_dev": False, "image_digest": "9c1f" * 16, "image_ok": True}


def _facts(**change):
    return dict(FACTS, **change)


# (case, private_ml_sdk_facts or None, the image this CVM boots, known)
CASES = [
    ("verified in this play", FACTS, IMAGE, True),
    ("a 0.3 image", _facts(image_path="/opt/sdk/images/dstack-nvidia-0.3.3", image_generation="0.3"),
     "/opt/sdk/images/dstack-nvidia-0.3.3", True),
    ("no private_ml_sdk in the play", None, IMAGE, False),
    ("published by another play", _facts(play="Build the guest image"), IMAGE, False),
    ("facts of a release without play", {k: v for k, v in FACTS.items() if k != "play"}, IMAGE, False),
    ("the image did not verify", _facts(image_ok=False), IMAGE, False),
    ("image_ok as a string", _facts(image_ok="True"), IMAGE, False),
    ("no image_ok", {k: v for k, v in FACTS.items() if k != "image_ok"}, IMAGE, False),
    ("the CVM boots another image", FACTS, "/opt/private-ml-sdk/images/dstack-nvidia-dev-0.5.5", False),
    ("no image path (check mode, no checkout)", _facts(image_path=None, image_generation=None, image_ok=False), IMAGE,
     False),
    ("unknown generation", _facts(image_generation="0.4"), IMAGE, False),
    ("no generation", _facts(image_generation=None), IMAGE, False),
    ("not a mapping", "private_ml_sdk_facts", IMAGE, False),
]

TASK_VARS = {
    "private_ml_sdk_facts": "{{ item.facts if item.facts is not none else omit }}",
    "__dstack_cvm_image_path": "{{ item.image }}",
}

results, test_dstack_cvm_image_known = table_test("dstack_cvm", "__dstack_cvm_image_known", TASK_VARS, CASES,
                                                  ("facts", "image"))
