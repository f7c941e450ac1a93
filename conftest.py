"""Make the working tree importable as ansible_collections.zerog.compute for pytest.

scripts/bootstrap.sh creates the link; it is re-created here so that a bare `pytest` works too.
"""

import os
import sys

_REPO = os.path.dirname(os.path.abspath(__file__))
_COLLECTIONS = os.path.join(_REPO, ".cache", "collections")
_LINK = os.path.join(_COLLECTIONS, "ansible_collections", "zerog", "compute")

if os.path.realpath(_LINK) != os.path.realpath(_REPO):
    os.makedirs(os.path.dirname(_LINK), exist_ok=True)
    if os.path.islink(_LINK):
        os.unlink(_LINK)
    os.symlink(_REPO, _LINK)
if _COLLECTIONS not in sys.path:
    sys.path.insert(0, _COLLECTIONS)
