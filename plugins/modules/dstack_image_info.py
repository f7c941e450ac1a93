#!/usr/bin/python
# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Ansible module: verify a dstack guest image directory built by private-ml-sdk (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: dstack_image_info
short_description: Verify a dstack CVM image directory of nearai/private-ml-sdk
version_added: 0.1.0
author: zerog.compute maintainers (@zerog-compute)
description:
  - Reads a guest image directory as private-ml-sdk's C(build.sh) leaves it under C(images/)
    (C(dstack-nvidia-<version>) or C(dstack-nvidia-dev-<version>)) and says whether it is complete
    and whether it is the image that was wanted.
  - Both generations are understood. A 0.5 image (PMS v0.5.x) holds C(bzImage), C(initramfs.cpio.gz),
    C(ovmf.fd), C(rootfs.img.verity), C(metadata.json), C(sha256sum.txt) and C(digest.txt). A 0.3
    image (PMS 0.3 era, version 0.3.3) holds C(bzImage), C(initramfs.cpio.gz), C(ovmf.fd), C(rootfs.cpio),
    C(rootfs.iso), C(metadata.json), C(md5sum.txt) and C(sha256sum.txt).
  - The image is C(complete) when C(metadata.json) is a JSON object with a C(version), every file
    it names (C(bios), C(kernel), C(initrd), C(rootfs)) exists and is not empty, every entry of
    C(sha256sum.txt) (and of C(md5sum.txt) when present) matches its file, and, by generation,
    C(digest.txt) is the sha256 of C(sha256sum.txt) and C(sha256sum.txt) covers the boot files and
    C(metadata.json) (0.5), or the C(rootfs_hash) of C(metadata.json) is the sha256 of C(rootfs.cpio) (0.3).
  - The image is C(ok) when it is complete and matches the expectations given (O(version),
    O(git_revision), O(digest), and with O(sdk_dir) the dev or production flavour).
  - Never changes anything.
options:
  path:
    description:
      - The image directory to verify.
      - Exactly one of O(path) and O(sdk_dir) is required.
    type: path
  sdk_dir:
    description:
      - A private-ml-sdk checkout. The image directory is then
        C(<sdk_dir>/images/dstack-nvidia-<version>) (or C(dstack-nvidia-dev-<version>) with O(dev)),
        where C(<version>) is O(version) or, by default, the C(DISTRO_VERSION) of the checkout
        (C(meta-dstack-nvidia/meta-dstack/conf/distro/dstack.conf); other C(conf/distro/*.conf)
        files of the layers are searched when that file is missing).
      - The expected version defaults to that C(DISTRO_VERSION), because the C(dstack) script and the
        image must come from the same checkout.
    type: path
  dev:
    description:
      - With O(sdk_dir), look at the dev image (C(dstack-nvidia-dev-<version>)) instead of the
        production one, and expect C(is_dev) to match. Ignored with O(path).
    type: bool
    default: false
  version:
    description:
      - The version the image must have (C(version) of C(metadata.json), for example V(0.5.5)).
      - Not checked when unset and O(path) is used.
    type: str
  git_revision:
    description:
      - The git revision the image must have been built from (the checkout's HEAD).
      - Only checked when the image records one (C(git_revision) of C(metadata.json), set by
        0.5 builds); images without it are not refused for that reason.
    type: str
  digest:
    description:
      - The digest the image must have (RV(digest)), for example the one of the same image on
        another host.
    type: str
  warn_dev:
    description:
      - Emit a warning when the image is a complete dev image.
    type: bool
    default: true
extends_documentation_fragment:
  - zerog.compute.attributes.read_only
notes:
  - C(rootfs.img.verity) of 0.5 images is not listed in C(sha256sum.txt) (dm-verity protects it in
    the guest). Only its presence is checked, and that it is not smaller than the
    C(dstack.rootfs_size) of the kernel command line.
  - Every file listed in the sum files is read in full; on real images that takes seconds.
seealso:
  - name: nearai/private-ml-sdk
    description: The SDK whose build.sh writes these image directories.
    link: https://github.com/nearai/private-ml-sdk
"""

EXAMPLES = r"""
- name: Verify the production image of the checkout
  zerog.compute.dstack_image_info:
    sdk_dir: /opt/private-ml-sdk
    git_revision: 25c25025c556ab2f797eeda3bab433f38a8ffb7a
  register: image

- name: Fail when the image must be rebuilt
  ansible.builtin.assert:
    that: image.ok
    fail_msg: "{{ image.problems | join('; ') }}"

- name: Verify an image directory copied from elsewhere against the original's digest
  zerog.compute.dstack_image_info:
    path: /srv/images/dstack-nvidia-0.5.5
    version: 0.5.5
    digest: "{{ built.digest }}"
"""

RETURN = r"""
path:
  description: Absolute path of the image directory that was read.
  returned: always
  type: str
  sample: /opt/private-ml-sdk/images/dstack-nvidia-0.5.5
exists:
  description: Whether the image directory exists.
  returned: always
  type: bool
complete:
  description: The directory holds a whole image whose sums verify (see the description).
  returned: always
  type: bool
ok:
  description: RV(complete) and every expectation given is met.
  returned: always
  type: bool
problems:
  description: Why the image is not complete or not the wanted one, one sentence each; empty when RV(ok).
  returned: always
  type: list
  elements: str
  sample: ["bzImage does not match its entry in sha256sum.txt."]
version:
  description: C(version) of C(metadata.json).
  returned: always
  type: str
  sample: 0.5.5
git_revision:
  description: C(git_revision) of C(metadata.json); V(null) when the image records none.
  returned: always
  type: str
generation:
  description: V(0.3) or V(0.5) (major.minor of RV(version)); V(null) without a version.
  returned: always
  type: str
  sample: "0.5"
is_dev:
  description: Whether this is a dev image (C(is_dev) of C(metadata.json), else a C(-dev-) directory name).
  returned: always
  type: bool
digest:
  description:
    - sha256 of C(sha256sum.txt), which is what 0.5 images store in C(digest.txt) (the C(os_image_hash)).
      Computed the same way for 0.3 images, which have no C(digest.txt). V(null) without C(sha256sum.txt).
  returned: always
  type: str
files:
  description: Names of the files in the image directory, sorted.
  returned: always
  type: list
  elements: str
metadata:
  description: The parsed C(metadata.json); V(null) when missing or invalid.
  returned: always
  type: dict
sdk_version:
  description: C(DISTRO_VERSION) of the checkout.
  returned: when O(sdk_dir) is used
  type: str
  sample: 0.5.5
"""

import hashlib
import json
import os
import re

from ansible.module_utils.basic import AnsibleModule

DISTRO_CONF = os.path.join("meta-dstack-nvidia", "meta-dstack", "conf", "distro", "dstack.conf")
DISTRO_VERSION_RE = re.compile(r'^\s*DISTRO_VERSION\s*(?:\?\?|\?|:)?=\s*"([^"]*)"', re.MULTILINE)
SUM_LINE_RE = re.compile(r"^([0-9a-fA-F]+) [ *](.+)$")
ROOTFS_SIZE_RE = re.compile(r"(?:^|\s)dstack\.rootfs_size=(\d+)(?:\s|$)")
CHUNK = 1 << 20
# What sha256sum.txt of a 0.5 image covers (mkimage.sh): the boot files and metadata.json.
COVERED_05 = ("bios", "kernel", "initrd")


def file_hash(path, algorithm):
    """Hex digest of a file, read in chunks."""
    digest = hashlib.new(algorithm)
    with open(path, "rb") as src:
        for block in iter(lambda: src.read(CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def read_distro_version(sdk_dir):
    """DISTRO_VERSION of a private-ml-sdk checkout, or None."""
    candidates = [os.path.join(sdk_dir, DISTRO_CONF)]
    layers = os.path.join(sdk_dir, "meta-dstack-nvidia")
    if os.path.isdir(layers):
        for layer in sorted(os.listdir(layers)):
            distro = os.path.join(layers, layer, "conf", "distro")
            if os.path.isdir(distro):
                candidates += [os.path.join(distro, n) for n in sorted(os.listdir(distro)) if n.endswith(".conf")]
    for conf in candidates:
        try:
            with open(conf, encoding="utf-8", errors="replace") as src:
                match = DISTRO_VERSION_RE.search(src.read())
        except OSError:
            continue
        if match:
            return match.group(1)
    return None


def generation_of(version):
    """major.minor of a version string ("0.5.5" -> "0.5"), or None."""
    parts = str(version or "").split(".")
    if len(parts) >= 2 and parts[0].isdigit() and parts[1].isdigit():
        return f"{int(parts[0])}.{int(parts[1])}"
    return None


def check_sum_file(image_dir, name, algorithm, width, problems):
    """Verify every entry of a sum file; returns the set of names it lists."""
    listed = set()
    try:
        with open(os.path.join(image_dir, name), encoding="utf-8", errors="replace") as src:
            lines = [line.rstrip("\n") for line in src]
    except OSError as exc:
        problems.append(f"{name} cannot be read: {exc.strerror}.")
        return listed
    entries = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        match = SUM_LINE_RE.match(line)
        if not match or len(match.group(1)) != width:
            problems.append(f"{name} line {number} is not a {algorithm} sum line.")
            continue
        entries.append((match.group(1).lower(), match.group(2)))
    if not entries and not any(p.startswith(name) for p in problems):
        problems.append(f"{name} lists no file.")
    for expected, listed_name in entries:
        if "/" in listed_name or listed_name in (".", ".."):
            problems.append(f"{name} lists {listed_name!r}, which is not a file of the image directory.")
            continue
        listed.add(listed_name)
        target = os.path.join(image_dir, listed_name)
        if not os.path.isfile(target):
            problems.append(f"{listed_name}, listed in {name}, is missing.")
        elif file_hash(target, algorithm) != expected:
            problems.append(f"{listed_name} does not match its entry in {name}.")
    return listed


def inspect(image_dir, name_is_dev):
    """Read and verify an image directory; returns (facts, problems)."""
    facts = {
        "exists": os.path.isdir(image_dir), "complete": False, "version": None, "git_revision": None,
        "generation": None, "is_dev": name_is_dev, "digest": None, "files": [], "metadata": None,
    }
    problems = []
    if not facts["exists"]:
        problems.append(f"The image directory {image_dir} does not exist.")
        return facts, problems
    facts["files"] = sorted(os.listdir(image_dir))
    present = set(facts["files"])

    metadata = None
    if "metadata.json" not in present:
        problems.append("metadata.json is missing.")
    else:
        try:
            with open(os.path.join(image_dir, "metadata.json"), encoding="utf-8") as src:
                metadata = json.load(src)
        except (OSError, ValueError) as exc:
            problems.append(f"metadata.json is not valid JSON ({exc}).")
        else:
            if not isinstance(metadata, dict):
                problems.append("metadata.json is not a JSON object.")
                metadata = None
    if metadata is not None:
        facts["metadata"] = metadata
        version = metadata.get("version")
        if isinstance(version, str) and version:
            facts["version"] = version
            facts["generation"] = generation_of(version)
        else:
            problems.append("metadata.json has no version.")
        revision = metadata.get("git_revision")
        facts["git_revision"] = revision if isinstance(revision, str) and revision else None
        if isinstance(metadata.get("is_dev"), bool):
            facts["is_dev"] = metadata["is_dev"]
        for key in ("bios", "kernel", "initrd", "rootfs"):
            name = metadata.get(key)
            if not isinstance(name, str) or not name:
                problems.append(f"metadata.json names no {key} file.")
            elif not os.path.isfile(os.path.join(image_dir, name)):
                problems.append(f"{name} ({key} in metadata.json) is missing.")
            elif os.path.getsize(os.path.join(image_dir, name)) == 0:
                problems.append(f"{name} ({key} in metadata.json) is empty.")

    if "sha256sum.txt" not in present:
        problems.append("sha256sum.txt is missing.")
        covered = set()
    else:
        covered = check_sum_file(image_dir, "sha256sum.txt", "sha256", 64, problems)
        facts["digest"] = file_hash(os.path.join(image_dir, "sha256sum.txt"), "sha256")
    if "md5sum.txt" in present:
        check_sum_file(image_dir, "md5sum.txt", "md5", 32, problems)

    generation = facts["generation"]
    if generation is not None and generation != "0.3" and metadata is not None:
        # 0.5 and later: digest.txt and the coverage of sha256sum.txt, as mkimage.sh writes them.
        if "digest.txt" not in present:
            problems.append("digest.txt is missing.")
        elif facts["digest"] is not None:
            with open(os.path.join(image_dir, "digest.txt"), encoding="utf-8", errors="replace") as src:
                recorded = (src.read().split() or [""])[0].lower()
            if recorded != facts["digest"]:
                problems.append("digest.txt is not the sha256 of sha256sum.txt.")
        if "sha256sum.txt" in present:
            wanted = [metadata.get(k) for k in COVERED_05 if isinstance(metadata.get(k), str)] + ["metadata.json"]
            for name in wanted:
                if name not in covered:
                    problems.append(f"{name} is not covered by sha256sum.txt.")
        rootfs = metadata.get("rootfs")
        size = ROOTFS_SIZE_RE.search(str(metadata.get("cmdline", "")))
        if size and isinstance(rootfs, str) and os.path.isfile(os.path.join(image_dir, rootfs)):
            actual = os.path.getsize(os.path.join(image_dir, rootfs))
            if actual < int(size.group(1)):
                problems.append(f"{rootfs} has {actual} bytes, less than dstack.rootfs_size={size.group(1)} (truncated).")
    elif generation == "0.3" and metadata is not None:
        rootfs_hash = metadata.get("rootfs_hash")
        if not isinstance(rootfs_hash, str) or not rootfs_hash:
            problems.append("metadata.json has no rootfs_hash.")
        elif "rootfs.cpio" not in present:
            problems.append("rootfs.cpio is missing.")
        elif file_hash(os.path.join(image_dir, "rootfs.cpio"), "sha256") != rootfs_hash.lower():
            problems.append("rootfs.cpio does not match rootfs_hash of metadata.json.")

    facts["complete"] = not problems
    return facts, problems


def main():
    module = AnsibleModule(
        argument_spec={
            "path": {"type": "path"},
            "sdk_dir": {"type": "path"},
            "dev": {"type": "bool", "default": False},
            "version": {"type": "str"},
            "git_revision": {"type": "str"},
            "digest": {"type": "str"},
            "warn_dev": {"type": "bool", "default": True},
        },
        mutually_exclusive=[("path", "sdk_dir")],
        required_one_of=[("path", "sdk_dir")],
        supports_check_mode=True,
    )
    params = module.params
    extra = {}
    want_version = params["version"]
    want_dev = None
    if params["sdk_dir"]:
        sdk_dir = os.path.abspath(params["sdk_dir"])
        sdk_version = read_distro_version(sdk_dir)
        if sdk_version is None and not want_version:
            module.fail_json(
                msg=f"Reading the image version of the checkout {sdk_dir}: no DISTRO_VERSION found in {DISTRO_CONF} "
                    "(or another conf/distro/*.conf of meta-dstack-nvidia). Fix: point sdk_dir at a private-ml-sdk "
                    "checkout, or give version.")
        extra["sdk_version"] = sdk_version
        want_version = want_version or sdk_version
        want_dev = params["dev"]
        name = ("dstack-nvidia-dev-" if want_dev else "dstack-nvidia-") + want_version
        image_dir = os.path.join(sdk_dir, "images", name)
    else:
        image_dir = os.path.abspath(params["path"])
    name_is_dev = "-dev-" in os.path.basename(image_dir.rstrip("/"))

    facts, problems = inspect(image_dir, name_is_dev)
    mismatches = []
    if facts["complete"]:
        if want_version and facts["version"] != want_version:
            mismatches.append(f"The image is version {facts['version']}, not the wanted {want_version}.")
        if params["git_revision"] and facts["git_revision"] and facts["git_revision"] != params["git_revision"]:
            mismatches.append(f"The image was built from git revision {facts['git_revision']}, "
                              f"not the checkout's {params['git_revision']}.")
        if want_dev is not None and facts["is_dev"] != want_dev:
            mismatches.append("The image is a dev image, not a production one." if facts["is_dev"]
                              else "The image is a production image, not a dev one.")
        if params["digest"] and facts["digest"] != params["digest"].lower():
            mismatches.append(f"The image's digest (sha256 of sha256sum.txt) is not the wanted {params['digest'].lower()}.")
    if facts["complete"] and facts["is_dev"] and params["warn_dev"]:
        module.warn(f"{image_dir} is a dev image: it is built for debugging, with developer access into the CVM, "
                    "and is not for production use.")
    module.exit_json(changed=False, path=image_dir, ok=facts["complete"] and not mismatches,
                     problems=problems + mismatches, **facts, **extra)


if __name__ == "__main__":
    main()
