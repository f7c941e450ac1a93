"""Shared fixtures of the module unit tests."""

import pytest
from ansible.module_utils.common import warnings as ansible_warnings


@pytest.fixture(autouse=True)
def no_leftover_warnings():
    """Module warnings are process-global: start and end every test without any."""
    ansible_warnings._global_warnings.clear()
    yield
    ansible_warnings._global_warnings.clear()
