"""Tests of the dstack_image_path filter: the table beside this file, case by case.

Each case gives ``image`` and ``sdk_dir`` and either the ``path`` the filter returns or a
fragment of the ``error`` it raises. The filter must agree with the module's own resolution
(module_utils/_dstack.py resolve_image), which every accepted case also checks.
"""

from __future__ import annotations

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible_collections.zerog.compute.plugins.filter.dstack_image_path import FilterModule, dstack_image_path
from ansible_collections.zerog.compute.plugins.module_utils import _dstack as ds
from ansible_collections.zerog.compute.tests.unit.harness import case_file


def _load():
    with open(case_file(__file__), encoding="utf-8") as handle:
        return [pytest.param(case, id=case["id"]) for case in yaml.safe_load(handle)]


@pytest.mark.parametrize("case", _load())
def test_dstack_image_path(case):
    if "error" in case:
        with pytest.raises(AnsibleFilterError, match=case["error"]):
            dstack_image_path(case["image"], case["sdk_dir"])
        return
    path = dstack_image_path(case["image"], case["sdk_dir"])
    assert path == case["path"]
    assert path == ds.resolve_image(str(case["image"]).strip(), case["sdk_dir"])


def test_the_filter_is_registered_under_its_name():
    assert FilterModule().filters() == {"dstack_image_path": dstack_image_path}
