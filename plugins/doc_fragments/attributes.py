# GNU General Public License v3.0+ (see COPYING or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Shared documentation of the collection's modules."""

from __future__ import annotations


class ModuleDocFragment:
    # The attributes of a module that only reads the host.
    READ_ONLY = r"""
attributes:
  check_mode:
    support: full
    description: The module only reads; it behaves the same in check mode.
  diff_mode:
    support: none
    description: Nothing is changed, so there is no diff.
  idempotent:
    support: full
    description: Read-only.
"""
