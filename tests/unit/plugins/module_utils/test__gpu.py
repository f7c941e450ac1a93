"""Tests of the GPU discovery parsers and policy checks (plugins/module_utils/_gpu.py)."""

from __future__ import annotations

import pytest
from ansible_collections.zerog.compute.plugins.module_utils import _gpu
from ansible_collections.zerog.compute.tests.unit.harness import assert_subset, case_file, load_cases


def _plain(value):
    """Tuples as lists, so that YAML lists compare with function results."""
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


@pytest.mark.parametrize("case", load_cases(case_file(__file__)))
def test_table(case):
    result = _plain(getattr(_gpu, case["func"])(*case["args"]))
    if "want_checks" in case:
        by_name = {c["name"]: c for c in result}
        assert sorted(by_name) == sorted(case["want_checks"])
        assert_subset(case["want_checks"], by_name)
        assert all(c["remediation"] for c in result)
    else:
        assert result == case["want"]


@pytest.mark.parametrize(("line", "want"), [
    ("2024-05-09,03:02:58.311 INFO     GPU 0000:43:00.0 H100-SXM 0x2330 BAR0 0xab042000000 CC mode is on", "on"),
    ("2025-09-16,12:34:15.925 INFO     GPU 0000:3a:00.0 Generic-GH100 0x2339 BAR0 0x7e042000000 CC mode is devtools",
     "devtools"),
    ("2025-09-16,12:34:15.925 INFO     GPU 0000:3a:00.0 ? 0x2321 BAR0 0x0 "
     "CC mode is invalid-devtools-only-fix-by-setting-cc-mode", "invalid-devtools-only-fix-by-setting-cc-mode"),
    ("2025-09-16,12:34:15.925 INFO     GPU 0000:3a:00.0 H100 0x2321 BAR0 0x7e042000000 "
     "CC mode set to on. It will be active after GPU reset.", None),
])
def test_mode_line_is_keyed_on_bdf_devid_and_mode_not_name(line, want):
    match = _gpu.MODE_RE.search(line)
    assert (match.group("mode") if match else None) == want
