# Copyright: (c) 2026, zerog.compute maintainers
# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""The dstack_image_path filter: the directory a dstack image value names, as the module resolves it.

The role's tasks and the dstack_cvm module must agree on which directory an image value means
(the module compares the stored path with it), so both use module_utils/_dstack.py's
resolve_image. Documentation: dstack_image_path.yml.
"""

from __future__ import annotations

from ansible.errors import AnsibleFilterError
from ansible_collections.zerog.compute.plugins.module_utils import _dstack as ds


def dstack_image_path(image, sdk_dir):
    """``dstack-nvidia-0.5.5`` -> ``<sdk_dir>/images/dstack-nvidia-0.5.5``; a value with a ``/`` is a path."""
    if not str(image or "").strip():
        raise AnsibleFilterError("dstack_image_path: the image is empty; name an image of <sdk_dir>/images or a path")
    if not str(sdk_dir or "").startswith("/"):
        raise AnsibleFilterError(f"dstack_image_path: the SDK directory must be an absolute path, got {sdk_dir!r}")
    return ds.resolve_image(str(image).strip(), str(sdk_dir))


class FilterModule:
    """zerog.compute.dstack_image_path."""

    def filters(self):
        return {"dstack_image_path": dstack_image_path}
