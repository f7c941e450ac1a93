"""Shared pytest setup of the simulation kit tests.

* makes ``zerog_sim`` importable;
* ``python_dir``: a directory holding only ``python`` -> ``sys.executable``. The stand-ins in
  ``tests/sim/bin`` start with ``#!/usr/bin/env python`` (the simulated instance ships
  python-is-python3); a test that executes them directly, or through a program that finds them
  on PATH, puts this directory first on PATH so that it does not depend on which ``python``,
  if any, the machine has. It is world-readable, so tests that drop to ``nobody`` can use it.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

SIM_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if SIM_DIR not in sys.path:
    sys.path.insert(0, SIM_DIR)


@pytest.fixture(scope="session")
def python_dir() -> Iterator[Path]:
    """A world-readable directory with ``python`` -> ``sys.executable``, removed at the end."""
    path = Path(tempfile.mkdtemp(prefix="zerog-sim-python-"))
    path.chmod(0o755)
    (path / "python").symlink_to(sys.executable)
    yield path
    shutil.rmtree(path)


@pytest.fixture(autouse=True)
def _python_first_on_path(python_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests that pass on the inherited environment find ``python_dir`` first on PATH."""
    monkeypatch.setenv("PATH", os.pathsep.join(p for p in (str(python_dir), os.environ.get("PATH", "")) if p))
