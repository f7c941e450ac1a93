# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The cvm_instance_errors filter: what is wrong in a list of dstack CVM entries.

It runs on the controller, before anything changes, with the same parsers the dstack_cvm module
uses when it acts (module_utils/_dstack.py), so a value the module would refuse later is refused
here first, and the message names the variable that holds it. Documentation: cvm_instance_errors.yml.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.zerog.compute.plugins.module_utils import _dstack as ds

STATES = ("present", "started", "stopped", "restarted", "absent")


def _where(variable, index, entry, key, prefix):
    """The variable a value came from: the entry's own key, or the role default it fell back to."""
    if key in entry:
        return f"{variable}[{index}].{key}"
    return f"{prefix}{key}"


def _port(value):
    text = str(value).strip()
    if not text.isdigit() or not 0 <= int(text) <= 65535:
        return None
    return int(text)


def cvm_instance_errors(instances, defaults=None, variable="dstack_cvm_instances", default_prefix="dstack_cvm_",
                        available_gpus=None, serving_port=0, serving_port_source="dstack_cvm_serving_port",
                        generation=None):
    """One message per problem; an empty list when every entry is acceptable."""
    if not isinstance(instances, list):
        raise AnsibleFilterError(f"cvm_instance_errors expects the list {variable}, got {type(instances).__name__}")
    defaults = dict(defaults or {})
    errors = []
    seen = {}
    serving_port = _port(serving_port) or 0
    for index, entry in enumerate(instances):
        if not isinstance(entry, dict):
            errors.append(f"{variable}[{index}] is not a mapping with a name and settings.")
            continue
        merged = {**defaults, **entry}

        def where(key, entry=entry, index=index):
            return _where(variable, index, entry, key, default_prefix)

        name = str(entry.get("name", ""))
        if not ds.NAME_RE.match(name):
            errors.append(f"{variable}[{index}].name {name!r} must be 1-64 letters, digits, '.', '_' or '-', starting "
                          "with a letter or digit: it is the VM directory and part of the unit name.")
        elif name in seen:
            errors.append(f"{variable}[{index}].name {name!r} is the name of {variable}[{seen[name]}] too: name "
                          "each CVM once.")
        else:
            seen[name] = index
        state = str(merged.get("state", "started"))
        if state not in STATES:
            errors.append(f"{where('state')} is {state!r}, not one of {', '.join(STATES)}.")
        if state == "absent":
            continue
        if "image" in entry and (not isinstance(entry["image"], str) or not entry["image"].strip()):
            errors.append(f"{variable}[{index}].image is {entry['image']!r}: name an image of <sdk_dir>/images "
                          "(dstack-nvidia-0.5.5) or give its directory, or drop the key to use dstack_cvm_image.")
        for key, parse in (("memory", lambda text: ds.parse_memory(text, generation)), ("disk", ds.parse_disk)):
            if key not in merged:
                continue
            try:
                parse(merged[key])
            except (ds.DstackError, ValueError) as exc:
                errors.append(f"{where(key)}: {getattr(exc, 'message', exc)}")
        vcpus = str(merged.get("vcpus", 1)).strip()
        if not vcpus.isdigit() or int(vcpus) < 1:
            errors.append(f"{where('vcpus')} is {merged.get('vcpus')!r}: give a whole number of vCPUs, at least 1.")
        port = _port(merged.get("port", 0))
        if port is None:
            errors.append(f"{where('port')} is {merged.get('port')!r}: give a TCP port from 1 to 65535 "
                          "(0: the port the compose file publishes).")
        elif serving_port and port and port != serving_port:
            errors.append(f"{where('port')} is {port}, but the provider serves on port {serving_port} "
                          f"({serving_port_source}): the URL registered on chain would reach no CVM. Publish the "
                          f"CVM on {serving_port} (leave its port unset), or change {serving_port_source}.")
        for spec in merged.get("extra_ports") or []:
            try:
                ds.parse_port(spec)
            except ds.DstackError as exc:
                errors.append(f"{where('extra_ports')}: {exc.message}")
        gpus = merged.get("gpus", "auto")
        if isinstance(gpus, str):
            if gpus not in ("auto", "all", "none"):
                errors.append(f"{where('gpus')} is {gpus!r}: give auto, all, none or a list of PCI addresses.")
        elif isinstance(gpus, list):
            try:
                ds.wanted_gpus(gpus, available_gpus, ds.GEN_05)
            except ds.DstackError as exc:
                errors.append(f"{where('gpus')}: {exc.message}")
        else:
            errors.append(f"{where('gpus')} is {gpus!r}: give auto, all, none or a list of PCI addresses.")
    return errors


class FilterModule:
    """zerog.compute.cvm_instance_errors."""

    def filters(self):
        return {"cvm_instance_errors": cvm_instance_errors}
