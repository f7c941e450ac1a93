"""Testinfra set-up shared by every Molecule scenario.

Molecule's testinfra verifier would reach the instances through Ansible (one ansible run per
command). The instances are podman containers, so talk to them with testinfra's own podman
backend instead: one `podman exec` per command, several times faster.

The fixture ``provider_playbook`` runs playbooks/provider.yml against the scenario's inventory,
for the verifiers that drive the whole playbook again (faults, bad input); ``repo_dir`` is the
checkout they read the playbook and the roles from.
"""

from __future__ import annotations

import json
import os
import pathlib
import subprocess
import time
from typing import Any, NamedTuple

import pytest
import yaml

REPO = pathlib.Path(os.environ.get("MOLECULE_PROJECT_DIRECTORY") or pathlib.Path(__file__).resolve().parents[1])
PROVIDER_PLAYBOOK = REPO / "playbooks" / "provider.yml"


class PlaybookRun(NamedTuple):
    """What one ansible-playbook run gave: exit status, stdout and stderr together, wall seconds."""

    rc: int
    output: str
    seconds: float


def run_provider(*args: str, report_dir: pathlib.Path, extra: dict[str, Any] | None = None,
                 env: dict[str, str] | None = None, unset: tuple[str, ...] = (),
                 timeout: float = 1200) -> PlaybookRun:
    """ansible-playbook provider.yml on the scenario's inventory, its reports in ``report_dir``.

    ``extra`` goes in as JSON extra variables, ``env`` is added to the environment and the
    variables named in ``unset`` are removed from it; the run's working directory is ``report_dir``.
    """
    report_dir.mkdir(parents=True, exist_ok=True)
    argv = ["ansible-playbook", "-i", os.environ["MOLECULE_INVENTORY_FILE"], str(PROVIDER_PLAYBOOK),
            "-e", json.dumps({"zerog_provider_report_dir": str(report_dir)})]
    if extra:
        argv += ["-e", json.dumps(extra)]
    full_env = {**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0", **(env or {})}
    for name in unset:
        full_env.pop(name, None)
    started = time.monotonic()
    proc = subprocess.run([*argv, *args], env=full_env, cwd=report_dir, capture_output=True, text=True,
                          timeout=timeout, check=False)
    return PlaybookRun(proc.returncode, proc.stdout + proc.stderr, time.monotonic() - started)


@pytest.fixture(scope="session")
def repo_dir() -> pathlib.Path:
    """The collection's checkout (Molecule's project directory): its roles and playbooks."""
    return REPO


@pytest.fixture(scope="session")
def provider_playbook():
    """``run_provider``: run playbooks/provider.yml on the scenario's hosts; a ``PlaybookRun``."""
    return run_provider


def pytest_configure(config):
    instance_config = os.environ.get("MOLECULE_INSTANCE_CONFIG")
    if not instance_config or not os.path.exists(instance_config):
        return
    with open(instance_config, encoding="utf-8") as fh:
        instances = yaml.safe_load(fh) or []
    names = [i["instance"] for i in instances]
    if names:
        config.option.hosts = ",".join(f"podman://{n}" for n in names)
        config.option.connection = None
        config.option.ansible_inventory = None
