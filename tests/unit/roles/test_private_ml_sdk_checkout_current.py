"""When private_ml_sdk takes its checkout as already at the pinned release (git is then not run).

Also ``__private_ml_sdk_checkout_update``: when tasks/checkout.yml includes tasks/checkout_update.yml (the
refusals of another user's checkout and of local changes, the git configuration for local mirrors, git, and its
check-mode prediction).

``__private_ml_sdk_checkout_current`` (roles/private_ml_sdk/vars/main.yml) reads what
zerog.compute.git_checkout_info returned (``__private_ml_sdk_checkout_read``), or, in check mode
before the build user exists, the stat of ``.git``. It must be true only for a checkout that git
read, whose HEAD is the pinned commit, with current submodules and no local changes.
"""

from __future__ import annotations

import os

import pytest
from ansible_collections.zerog.compute.tests.unit.roles._expression import PLAYBOOK_BIN, table_test

pytestmark = pytest.mark.skipif(not os.path.exists(PLAYBOOK_BIN), reason="no .venv")

PINNED = "25c25025c556ab2f797eeda3bab433f38a8ffb7a"
OTHER = "9b851dfa36dfa76ee07371106658179c420b9bb5"
READ = {"changed": False, "exists": True, "owner": "builder", "read": True, "head": PINNED, "revision": PINNED,
        "changes": [], "submodules": [{"path": "meta-dstack-nvidia/dstack", "commit": OTHER, "state": "current"}],
        "submodules_ok": True}
PENDING = {"changed": False, "skipped": True, "skip_reason": "Conditional result was False"}


def _read(**change):
    return dict(READ, **change)


# (case, git_checkout_info's result, the stat's result, expected)
CASES = [
    ("at the pinned commit", READ, PENDING, True),
    ("HEAD elsewhere", _read(head=OTHER), PENDING, False),
    ("tag not fetched yet", _read(revision=""), PENDING, False),
    ("no commit yet, tag missing (an interrupted clone)", _read(head="", revision=""), PENDING, False),
    ("local changes", _read(changes=[" M build.sh"]), PENDING, False),
    ("submodule not initialized", _read(submodules_ok=False), PENDING, False),
    ("no checkout", _read(exists=False, read=False, head="", revision="", submodules_ok=False), PENDING, False),
    ("another user's checkout", _read(owner="root", read=False, head="", revision="", submodules_ok=False), PENDING,
     False),
    ("build user pending, checkout there", PENDING, {"stat": {"exists": True, "pw_name": "root"}}, False),
    ("build user pending, no checkout", PENDING, {"stat": {"exists": False}}, False),
]

TASK_VARS = {
    "__private_ml_sdk_checkout_read": "{{ item.read }}",
    "__private_ml_sdk_git_dir": "{{ item.stat }}",
}


results, test_checkout_current = table_test("private_ml_sdk", "__private_ml_sdk_checkout_current", TASK_VARS, CASES,
                                            ("read", "stat"))

# The refusal of a checkout of another user sees the owner from either source.
OWNER_CASES = [(c[0], c[1], c[2], want) for c in CASES for name, want in (
    ("another user's checkout", True), ("build user pending, checkout there", True),
    ("at the pinned commit", False), ("build user pending, no checkout", False)) if c[0] == name]
owners, test_other_owner_refused = table_test(
    "private_ml_sdk", "__private_ml_sdk_checkout.exists and __private_ml_sdk_checkout.owner != 'builder'", TASK_VARS,
    OWNER_CASES, ("read", "stat"), name="owners")

# When tasks/checkout.yml includes tasks/checkout_update.yml (``__private_ml_sdk_checkout_update``): unless the
# checkout git read is current and the build user's. The user task's result says whether the user is pending.
# (case, git_checkout_info's result, the stat's result, the user task's result, expected)
CHECKOUT_CASES = [
    ("at the pinned commit (a re-run)", READ, PENDING, {"changed": False}, False),
    ("at the pinned commit, another owner", _read(owner="root"), PENDING, {"changed": False}, True),
    ("HEAD elsewhere (a ref change)", _read(head=OTHER), PENDING, {"changed": False}, True),
    ("tag not fetched yet", _read(revision=""), PENDING, {"changed": False}, True),
    ("local changes", _read(changes=[" M build.sh"]), PENDING, {"changed": False}, True),
    ("submodule not initialized", _read(submodules_ok=False), PENDING, {"changed": False}, True),
    ("no checkout (a fresh host)", _read(exists=False, read=False, head="", revision="", submodules_ok=False),
     PENDING, {"changed": False}, True),
    ("check mode, build user pending, no checkout", PENDING, {"stat": {"exists": False}}, {"changed": True}, True),
    ("check mode, build user pending, checkout there", PENDING, {"stat": {"exists": True, "pw_name": "root"}},
     {"changed": True}, True),
]

CHECKOUT_VARS = {
    "private_ml_sdk_build_user": "builder",
    "__private_ml_sdk_checkout_read": "{{ item.read }}",
    "__private_ml_sdk_git_dir": "{{ item.stat }}",
    "__private_ml_sdk_user": "{{ item.user }}",
}

checkouts, test_checkout_update = table_test("private_ml_sdk", "__private_ml_sdk_checkout_update", CHECKOUT_VARS,
                                             CHECKOUT_CASES, ("read", "stat", "user"), name="checkouts")

# The check-mode cases need ansible_check_mode (the build user is pending only then).
pending, test_checkout_update_in_check_mode = table_test(
    "private_ml_sdk", "__private_ml_sdk_checkout_update", CHECKOUT_VARS,
    [c for c in CHECKOUT_CASES if c[0].startswith("check mode")] + [CHECKOUT_CASES[0]],
    ("read", "stat", "user"), name="pending", check_mode=True)
