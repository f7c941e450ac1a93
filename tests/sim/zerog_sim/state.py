"""The active host state: a JSON file describing the simulated host.

The file lives at ``/etc/zerog-sim/active.json`` inside a simulated instance; the environment
variable ``ZEROG_SIM_STATE`` overrides the path (the unit tests use it). The keys every stand-in
may rely on are documented in the shared layout contract; ``zerog_sim.profiles.build_state``
writes them, plus host details (kernel log, MSRs, ...) used by this package's stand-ins.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

STATE_ENV = "ZEROG_SIM_STATE"
DEFAULT_STATE_PATH = "/etc/zerog-sim/active.json"

#: Exit status of a stand-in that cannot do what it was asked because the simulation does not
#: cover it (EX_SOFTWARE). Distinct from every exit status the real tools use.
EXIT_NOT_SIMULATED = 70


class StateError(RuntimeError):
    """The active-state file is missing or unreadable."""


def state_path() -> str:
    """Return the path of the active-state file (``$ZEROG_SIM_STATE`` or the default)."""
    return os.environ.get(STATE_ENV) or DEFAULT_STATE_PATH


def load_active(path: str | None = None) -> dict[str, Any]:
    """Read and return the active host state as a dict.

    Raises StateError when the file does not exist or is not a JSON object.
    """
    path = path or state_path()
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except FileNotFoundError as exc:
        raise StateError(f"no active host state at {path} (set {STATE_ENV})") from exc
    except (OSError, ValueError) as exc:
        raise StateError(f"cannot read active host state {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise StateError(f"active host state {path} is not a JSON object")
    return data


def save_active(state: dict[str, Any], path: str | None = None) -> str:
    """Write ``state`` atomically (temporary file + rename) and return the path written."""
    path = path or state_path()
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".active.", suffix=".json", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            json.dump(state, handle, indent=2, sort_keys=False)
            handle.write("\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return path


def load_or_exit(program: str) -> dict[str, Any]:
    """Load the active state for a stand-in; on failure print why and exit EXIT_NOT_SIMULATED."""
    try:
        return load_active()
    except StateError as exc:
        sys.stderr.write(f"{program}: zerog-sim: {exc}\n")
        raise SystemExit(EXIT_NOT_SIMULATED) from exc


def not_simulated(program: str, what: str) -> int:
    """Report loudly that a valid invocation is outside the simulation; return the exit status."""
    sys.stderr.write(f"{program}: zerog-sim: not simulated: {what}\n")
    return EXIT_NOT_SIMULATED
