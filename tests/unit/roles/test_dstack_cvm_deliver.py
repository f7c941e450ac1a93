"""When zerog.compute.dstack_cvm includes deliver.yml, and when the guest must restart for its files.

run.yml includes deliver.yml only when ``__dstack_cvm_deliver_needed`` (roles/dstack_cvm/vars/main.yml):
the delivery is predicted in check mode, a 0.3 guest's files are compared, a 0.5 guest's
``.user-config`` is written unless it is in place in a VM left as it was. ``__dstack_cvm_delivered``
(which restarts a running guest) reads the copies' results only when the file was included, so a
CVM whose copies never ran in this run (the first of the list, or one after another CVM's copies)
is not taken as delivered.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

PROBE = "{{ {'changed': false, 'manifest': true, 'running': true, 'recreated': false, 'restart_required': false} }}"
APPLIED = "{{ {'skipped': true} if item.applied is none else {'changed': true, 'manifest': true, 'running': item.applied} }}"

# Without any copy result: the copies did not run in this iteration (deliver.yml not included).
NO_COPIES = {
    "__dstack_cvm_gen": "{{ item.gen }}",
    "__dstack_cvm_user_config_in_place": "{{ item.in_place }}",
    "__dstack_cvm_probe": PROBE,
    "__dstack_cvm_applied": APPLIED,
}

# (case, generation, .user-config in place, the VM changed in this run (None: left as it was), needed)
NEEDED_CASES = [
    ("0.5, in place, VM left as it was", "0.5", True, None, False),
    ("0.5, not in place", "0.5", False, None, True),
    ("0.5, in place, VM brought in line", "0.5", True, True, True),
    ("0.5, in place, VM recreated and stopped", "0.5", True, False, True),
    ("0.3, VM left as it was", "0.3", True, None, True),
]

needed_results, test_deliver_needed = table_test(
    "dstack_cvm", "__dstack_cvm_deliver_needed", NO_COPIES, NEEDED_CASES, ("gen", "in_place", "applied"),
    name="needed_results")

# Not included: never delivered, whatever an earlier CVM's copies registered (none here).
NOT_INCLUDED_CASES = [
    ("0.5, in place, VM left as it was", "0.5", True, None, False),
]

not_included_results, test_not_included_is_not_delivered = table_test(
    "dstack_cvm", "__dstack_cvm_delivered", NO_COPIES, NOT_INCLUDED_CASES, ("gen", "in_place", "applied"),
    name="not_included_results")

COPY = "{{ {'changed': true} if item.copied == NAME else {'changed': false} if item.copied == '' else {'skipped': true} }}"
WITH_COPIES = dict(
    NO_COPIES,
    __dstack_cvm_copy_user_config=COPY.replace("NAME", "'user_config'"),
    __dstack_cvm_copy_config=COPY.replace("NAME", "'config'"),
    __dstack_cvm_copy_files=COPY.replace("NAME", "'files'"),
)

# (case, generation, in place, VM changed, the copy that changed something ('': none, 'skipped': all skipped), delivered)
DELIVERED_CASES = [
    ("0.5, .user-config written", "0.5", False, None, "user_config", True),
    ("0.5, .user-config unchanged", "0.5", False, None, "", False),
    ("0.5, in place in a VM brought in line, copy unchanged", "0.5", True, True, "", False),
    ("0.3, configuration written", "0.3", True, None, "config", True),
    ("0.3, a package file written", "0.3", True, None, "files", True),
    ("0.3, nothing written", "0.3", True, None, "", False),
    ("0.3, copies skipped", "0.3", True, None, "skipped", False),
    # An earlier CVM's changed copy is still registered: not read when this one's copies did not run.
    ("0.5, in place, VM left as it was, an earlier copy changed", "0.5", True, None, "user_config", False),
]

delivered_results, test_delivered = table_test(
    "dstack_cvm", "__dstack_cvm_delivered", WITH_COPIES, DELIVERED_CASES, ("gen", "in_place", "applied", "copied"),
    name="delivered_results")

# Check mode, a VM that does not exist yet: the delivery is predicted (and counts as a change).
PREDICTED = dict(NO_COPIES, __dstack_cvm_probe="{{ {'changed': true, 'manifest': false, 'running': false} }}")
PREDICTED_CASES = [
    ("0.5, check mode, no VM yet", "0.5", False, None, True),
    ("0.3, check mode, no VM yet", "0.3", False, None, True),
]

predicted_results, test_predicted_is_delivered = table_test(
    "dstack_cvm", "__dstack_cvm_delivered", PREDICTED, PREDICTED_CASES, ("gen", "in_place", "applied"),
    name="predicted_results", check_mode=True)
