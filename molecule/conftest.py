"""Testinfra set-up shared by every Molecule scenario.

Molecule's testinfra verifier would reach the instances through Ansible (one ansible run per
command). The instances are podman containers, so talk to them with testinfra's own podman
backend instead: one `podman exec` per command, several times faster.
"""

import os

import yaml


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
