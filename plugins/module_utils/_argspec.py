# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Argument specs of the options several modules share; documented once in the ``hostdev.vfio.files`` fragment.

The values are validated by the backends (``_validate``) before any file is read for writing.
"""

from __future__ import annotations

__metaclass__ = type


def file_options(default_path=None, kernel_release=False):
    """``root`` and ``backup``; ``path`` with ``default_path``; ``kernel_release`` when asked for.

    Matches the fragment sections ``hostdev.vfio.files`` (+ ``.modprobe_path`` / ``.modules_load_path``,
    ``.kernel_release``).
    """
    spec = {
        "root": {"type": "path", "default": "/"},
        "backup": {"type": "bool", "default": False},
    }
    if default_path is not None:
        spec["path"] = {"type": "path", "default": default_path}
    if kernel_release:
        spec["kernel_release"] = {"type": "str"}
    return spec


def selector_options():
    """``address``, ``ids``, ``device_class``, ``query``: the ``hostdev.vfio.selectors`` fragment."""
    return {
        "address": {"type": "list", "elements": "str", "default": []},
        "ids": {"type": "list", "elements": "str", "default": []},
        "device_class": {"type": "list", "elements": "str", "default": []},
        "query": {"type": "str"},
    }


def host_root_options():
    """``sysfs_root``, ``proc_root``, ``dev_root``: the ``hostdev.vfio.selectors.host_roots`` fragment section."""
    return {
        "sysfs_root": {"type": "path", "default": "/sys"},
        "proc_root": {"type": "path", "default": "/proc"},
        "dev_root": {"type": "path", "default": "/dev"},
    }
