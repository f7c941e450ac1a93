"""Shared fixtures of the module unit tests."""

import pytest
from ansible.module_utils import _internal as ansible_internal
from ansible.module_utils.common import warnings as ansible_warnings


@pytest.fixture(autouse=True)
def no_leftover_warnings():
    """Module warnings are process-global: start and end every test without any."""
    ansible_warnings._global_warnings.clear()
    yield
    ansible_warnings._global_warnings.clear()


@pytest.fixture(autouse=True)
def module_side_of_ansible(monkeypatch):
    """Run modules as on a managed host. Once a test of a controller plugin (a filter) has imported
    controller code in this process, ansible-core sends module warnings to the controller's display
    instead of the module result; the module tests read them from the result."""
    monkeypatch.setattr(ansible_internal, "is_controller", False)
