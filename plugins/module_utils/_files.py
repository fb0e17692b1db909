# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small file helpers shared by the modules that edit boot and module configuration below a ``root``."""

from __future__ import annotations

__metaclass__ = type

import os


def rooted(root: str, path: str) -> str:
    """``path`` (absolute on the managed system) below ``root`` (``/`` or an image being built)."""
    return os.path.join(root, path.lstrip("/"))


def read_text(path: str) -> str | None:
    """The file's text, or None when it does not exist; other errors propagate."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except FileNotFoundError:
        return None
