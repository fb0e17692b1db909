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


class FileProblem(Exception):
    """A file on the host that cannot be read or written as configuration; the message names the path."""


def read_config(path: str, what: str = "configuration file") -> str | None:
    """The text of a configuration file this collection may edit, or None when it does not exist.

    Refuses, with the path named, what must never be edited as text: a file that is not UTF-8, one that holds
    NUL bytes (binary garbage), a directory, a symlink loop, a path whose parent is a file, an unreadable file.
    """
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise FileProblem(f"{path}: is a directory, expected a {what}") from None
    except NotADirectoryError:
        raise FileProblem(f"{path}: a parent of this path is not a directory") from None
    except OSError as exc:
        raise FileProblem(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None
    if b"\0" in data:
        raise FileProblem(f"{path}: holds NUL bytes (binary data); refusing to edit it as a {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(
            f"{path}: is not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); refusing to edit it as a {what}"
        ) from None
