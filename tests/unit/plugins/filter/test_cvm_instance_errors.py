"""Tests of the cvm_instance_errors filter: the table beside this file, case by case.

Each case gives CVM ``instances`` (and optionally ``defaults``, ``available_gpus``,
``serving_port``, ``serving_port_source``, ``generation``) and the exact list of ``errors``.
Without ``defaults``, the role's own defaults file is used, so the table also proves that the
shipped defaults are acceptable.
"""

from __future__ import annotations

import pathlib

import pytest
import yaml
from ansible.errors import AnsibleFilterError
from ansible_collections.zerog.compute.plugins.filter.cvm_instance_errors import FilterModule, cvm_instance_errors
from ansible_collections.zerog.compute.tests.unit.harness import case_file

ROLE_DEFAULTS = pathlib.Path(__file__).resolve().parents[4] / "roles" / "dstack_cvm" / "defaults" / "main.yml"
OPTIONS = ("available_gpus", "serving_port", "serving_port_source", "generation")


def role_defaults():
    """The instance keys' defaults: dstack_cvm_<key> of the role's defaults file."""
    data = yaml.safe_load(ROLE_DEFAULTS.read_text(encoding="utf-8"))
    return {name[len("dstack_cvm_"):]: value for name, value in data.items() if name != "dstack_cvm_instances"}


def _load():
    with open(case_file(__file__), encoding="utf-8") as handle:
        return [pytest.param(case, id=case["id"]) for case in yaml.safe_load(handle)]


@pytest.mark.parametrize("case", _load())
def test_cvm_instance_errors(case):
    defaults = case["defaults"] if "defaults" in case else role_defaults()
    options = {key: case[key] for key in OPTIONS if key in case}
    assert cvm_instance_errors(case["instances"], defaults=defaults, **options) == case["errors"]


def test_the_role_defaults_are_those_the_instances_fall_back_to():
    defaults = role_defaults()
    assert {"memory", "disk", "vcpus", "gpus", "port", "state", "extra_ports"} <= set(defaults)
    assert cvm_instance_errors([{"name": "finetune"}], defaults=defaults) == []


def test_a_list_is_required():
    with pytest.raises(AnsibleFilterError, match="expects the list dstack_cvm_instances, got dict"):
        cvm_instance_errors({"name": "finetune"})


def test_the_filter_is_registered():
    assert FilterModule().filters()["cvm_instance_errors"] is cvm_instance_errors
