#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: read dpkg's state of some packages, a .deb file and the presence of some files (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: deb_packages_info
short_description: Read what a Debian or Ubuntu host has of some packages, a .deb and some files, in one call
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Asks C(dpkg-query) for the status and version of the packages in O(names), and reads a C(.deb) file
    (O(deb)) - its checksum and, when the checksum matches O(deb_checksum), its package name and version
    (C(dpkg-deb --field)). The C(.deb)'s own package is asked of C(dpkg-query) too, so one call answers
    whether that exact version is installed.
  - Reports which of O(paths) exist, for example apt source files a role removes, so that the removal can
    be skipped when there is nothing to remove.
  - This is what a role needs to decide whether its package steps have anything to do, without refreshing
    the apt index or downloading anything. Never changes anything.
options:
  names:
    description:
      - Package names to ask C(dpkg-query --show) about (without versions). Names dpkg does not know are
        left out of RV(packages).
    type: list
    elements: str
    default: []
  deb:
    description:
      - Path of a C(.deb) file on the host. RV(deb) says whether it exists, its checksum and, unless the
        checksum differs from O(deb_checksum), its package and version.
    type: path
  deb_checksum:
    description:
      - The checksum O(deb) must have, as C(<algorithm>:<hex>) (the form of M(ansible.builtin.get_url)'s
        C(checksum)), for example V(sha256:47681197...). When it differs, the file is not read further
        (C(package) of RV(deb) stays empty), since it is not the wanted file.
    type: str
  paths:
    description:
      - Files whose presence to report in RV(paths).
    type: list
    elements: path
    default: []
  dpkg_query_path:
    description:
      - Absolute path of C(dpkg-query); by default it is looked up on C(PATH).
    type: path
  dpkg_deb_path:
    description:
      - Absolute path of C(dpkg-deb); by default it is looked up on C(PATH).
    type: path
  timeout:
    description:
      - Seconds each dpkg command may take.
    type: int
    default: 60
notes:
  - C(dpkg-query) honours C(DPKG_ADMINDIR) from the environment, as dpkg does.
  - Packages are asked and reported by name without architecture; on a multi-arch host with one package
    installed for two architectures, RV(packages) holds one of them.
extends_documentation_fragment:
  - zerog.compute.attributes.read_only
seealso:
  - module: ansible.builtin.apt
    description: Installs and removes the packages; this module only reads their state.
  - module: ansible.builtin.package_facts
    description: Lists every installed package; this module asks about a few, with dpkg's status flags.
"""

EXAMPLES = r"""
- name: Read the Docker packages, the cached Compose .deb and the apt source files to remove
  zerog.compute.deb_packages_info:
    names: [docker.io, docker-ce, docker-ce-cli, containerd.io]
    deb: /var/cache/zerog-docker/docker-compose-plugin_2.39.1-1~debian.12~bookworm_amd64.deb
    deb_checksum: sha256:47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea
    paths: [/etc/apt/sources.list.d/docker.list]
  register: docker_packages

- name: Download the .deb only when the cached one is not the wanted file
  ansible.builtin.get_url:
    url: https://download.docker.com/linux/debian/dists/bookworm/pool/stable/amd64/docker-compose-plugin_2.39.1-1~debian.12~bookworm_amd64.deb
    dest: /var/cache/zerog-docker/docker-compose-plugin_2.39.1-1~debian.12~bookworm_amd64.deb
    checksum: sha256:47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea
    mode: "0644"
  when: not docker_packages.deb.checksum_ok

- name: Remove the one-line repository file only when it is there
  ansible.builtin.file:
    path: /etc/apt/sources.list.d/docker.list
    state: absent
  when: docker_packages.paths['/etc/apt/sources.list.d/docker.list']
"""

RETURN = r"""
packages:
  description:
    - One entry per package dpkg knows (O(names) and the package of O(deb)). C(status) is dpkg's
      C(db:Status-Abbrev) without its trailing blank (want, state and error flag, for example V(ii), V(hi),
      V(rc), V(iHR)); C(installed) is true when the package is installed with no error flag, held or not.
  returned: always
  type: dict
  sample: {docker.io: {status: ii, version: 26.1.5+dfsg1-9+b9, installed: true}}
installed:
  description: The installed packages of RV(packages) (C(installed) true), name to version.
  returned: always
  type: dict
  sample: {docker.io: 26.1.5+dfsg1-9+b9, docker-compose-plugin: 2.39.1-1~debian.12~bookworm}
deb:
  description:
    - What O(deb) is. All keys are empty or false when O(deb) is unset or missing.
  returned: always
  type: dict
  contains:
    path:
      description: O(deb) as read.
      type: str
      sample: /var/cache/zerog-docker/docker-compose-plugin_2.39.1-1~debian.12~bookworm_amd64.deb
    exists:
      description: Whether O(deb) is a file.
      type: bool
    checksum:
      description: Its hex digest with the algorithm of O(deb_checksum) (sha256 when that is unset).
      type: str
      sample: 47681197cb2b1ab88206b42a1a92fc75f50d9530a6322d03494a473eed0408ea
    checksum_ok:
      description: The digest matches O(deb_checksum), or no checksum is asked and the file exists.
      type: bool
    package:
      description: Its package name (C(dpkg-deb --field)); read only when C(checksum_ok) is true, else empty.
      type: str
      sample: docker-compose-plugin
    version:
      description: Its package version; read only when C(checksum_ok) is true, else empty.
      type: str
      sample: 2.39.1-1~debian.12~bookworm
paths:
  description:
    - Each of O(paths) (as given, after C(~) expansion) to whether it exists (a broken symbolic link counts as
      existing).
  returned: always
  type: dict
  sample: {/etc/apt/sources.list.d/docker.list: false}
"""

import hashlib
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.zerog.compute.plugins.module_utils._command import (
    CommandFailed,
    Tool,
    ToolMissing,
    explain,
    fail_command,
)

# One line per package dpkg knows: name, status flags (three characters, the last a blank when there is
# no error) and version.
SHOW_FORMAT = "${Package}\t${db:Status-Abbrev}\t${Version}\n"


class Unreadable(Exception):
    """The .deb file cannot be read."""


def parse_show(text):
    """``dpkg-query --show`` lines of SHOW_FORMAT as {name: {status, version, installed}}; ValueError on others."""
    packages = {}
    for line in text.splitlines():
        if not line:
            continue
        fields = line.split("\t")
        if len(fields) != 3 or not fields[0] or len(fields[1]) not in (2, 3):
            raise ValueError(f"unexpected line {line!r}")
        name, flags, version = fields
        # Installed: current state "i" and no error flag (the third character blank); the wanted state
        # (install, hold, deinstall, purge) does not matter.
        installed = flags[1] == "i" and flags[2:].strip() == ""
        packages[name] = {"status": flags.rstrip(), "version": version, "installed": installed}
    return packages


def parse_fields(text):
    """``dpkg-deb --field FILE Package Version`` output as (package, version); ValueError when one is missing."""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key in ("Package", "Version") and not line.startswith(" "):
            values[key] = value.strip()
    if not values.get("Package") or not values.get("Version"):
        raise ValueError(f"no Package and Version fields in {text.strip()!r}")
    return values["Package"], values["Version"]


def parse_checksum(text):
    """``<algorithm>:<hex>`` as (algorithm, lower-case hex); ValueError when malformed or unknown."""
    algorithm, sep, digest = (text or "").partition(":")
    algorithm = algorithm.strip().lower()
    digest = digest.strip().lower()
    if not sep or not digest or any(c not in "0123456789abcdef" for c in digest):
        raise ValueError(f"deb_checksum must be <algorithm>:<hex>, got {text!r}")
    if algorithm not in hashlib.algorithms_guaranteed:
        raise ValueError(f"deb_checksum names the algorithm {algorithm!r}, which is not one of "
                         f"{', '.join(sorted(hashlib.algorithms_guaranteed))}")
    if len(digest) != hashlib.new(algorithm).digest_size * 2:
        raise ValueError(f"deb_checksum has {len(digest)} hex digits, {algorithm} has "
                         f"{hashlib.new(algorithm).digest_size * 2}")
    return algorithm, digest


def file_digest(path, algorithm):
    digest = hashlib.new(algorithm)
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_deb(dpkg_deb, path, checksum):
    """The RV(deb) dict for ``path``; ``checksum`` is (algorithm, hex) or None."""
    result = {"path": path or "", "exists": False, "checksum": "", "checksum_ok": False, "package": "", "version": ""}
    if not path or not os.path.isfile(path):
        return result
    algorithm = checksum[0] if checksum else "sha256"
    try:
        result.update(exists=True, checksum=file_digest(path, algorithm))
    except OSError as exc:
        raise Unreadable(explain(f"Reading {path}", f"{exc.strerror}.", "check the file's mode and owner.")) from exc
    result["checksum_ok"] = checksum is None or result["checksum"] == checksum[1]
    if not result["checksum_ok"]:
        return result
    where = f"Reading the package name and version of {path}"
    fix = ("see stderr: when the file is not a Debian package (an HTML error page saved as .deb?), remove it so that it"
           " is fetched again; dpkg-deb also needs tar on PATH.")
    cmd_args = ["--field", path, "Package", "Version"]
    _rc, out, err = dpkg_deb.run(cmd_args, where, fix)
    try:
        result["package"], result["version"] = parse_fields(out)
    except ValueError as exc:
        raise CommandFailed(f"{where}: dpkg-deb printed {exc}. Fix: {fix}", dpkg_deb.argv(cmd_args), 0, out, err) from exc
    return result


def read_packages(dpkg_query, names):
    """{name: {...}} for the names dpkg knows."""
    if not names:
        return {}
    cmd_args = ["--show", f"--showformat={SHOW_FORMAT}", "--", *names]
    where = "Asking dpkg about " + ", ".join(names)
    fix = "see `dpkg --audit` on the host; a damaged dpkg database must be repaired before packages can be managed."
    # rc 1: some of the names are unknown to dpkg (never installed); it says so on stderr.
    _rc, out, err = dpkg_query.run(cmd_args, where, fix, ok_rcs=(0, 1))
    try:
        return parse_show(out)
    except ValueError as exc:
        raise CommandFailed(f"{where}: dpkg-query printed an {exc}.", dpkg_query.argv(cmd_args), 0, out, err) from exc


def main():
    module = AnsibleModule(
        argument_spec={
            "names": {"type": "list", "elements": "str", "default": []},
            "deb": {"type": "path"},
            "deb_checksum": {"type": "str"},
            "paths": {"type": "list", "elements": "path", "default": []},
            "dpkg_query_path": {"type": "path"},
            "dpkg_deb_path": {"type": "path"},
            "timeout": {"type": "int", "default": 60},
        },
        required_by={"deb_checksum": "deb"},
        supports_check_mode=True,
    )
    params = module.params
    bad = [name for name in params["names"] if not name or any(c.isspace() or c in "=*?[" for c in name)]
    if bad:
        module.fail_json(msg=f"names must be plain package names (no version, pattern or blank), got {bad!r}.")
    checksum = None
    if params["deb_checksum"]:
        try:
            checksum = parse_checksum(params["deb_checksum"])
        except ValueError as exc:
            module.fail_json(msg=str(exc) + ".")
    dpkg_query = Tool(module, "dpkg-query", path=params["dpkg_query_path"], option="dpkg_query_path",
                      timeout=params["timeout"])
    dpkg_deb = Tool(module, "dpkg-deb", path=params["dpkg_deb_path"], option="dpkg_deb_path", timeout=params["timeout"])
    paths = {path: os.path.lexists(path) for path in params["paths"]}
    try:
        deb = read_deb(dpkg_deb, params["deb"], checksum)
        names = list(dict.fromkeys(params["names"] + ([deb["package"]] if deb["package"] else [])))
        packages = read_packages(dpkg_query, names)
    except (CommandFailed, ToolMissing, Unreadable) as exc:
        fail_command(module, exc)
    installed = {name: info["version"] for name, info in packages.items() if info["installed"]}
    module.exit_json(changed=False, packages=packages, installed=installed, deb=deb, paths=paths)


if __name__ == "__main__":
    main()
