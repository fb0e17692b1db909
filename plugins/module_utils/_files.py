# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Small file helpers shared by the modules that edit boot and module configuration below a ``root``."""

from __future__ import annotations

__metaclass__ = type

import os
import tempfile


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


def read_bytes(path: str, what: str = "file") -> bytes | None:
    """The bytes of a file, or None when it does not exist; a directory, a parent that is a file, a symlink loop
    or an unreadable file is a :class:`FileProblem` naming the path."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise FileProblem(f"{path}: is a directory, expected a {what}") from None
    except NotADirectoryError:
        raise FileProblem(f"{path}: a parent of this path is not a directory") from None
    except OSError as exc:
        raise FileProblem(f"{path}: cannot read the {what}: {exc.strerror or exc}") from None


def read_config(path: str, what: str = "configuration file") -> str | None:
    """The text of a configuration file this collection may edit, or None when it does not exist.

    Refuses, with the path named, what must never be edited as text: a file that is not UTF-8, one that holds
    NUL bytes (binary garbage), and everything :func:`read_bytes` refuses.
    """
    data = read_bytes(path, what)
    if data is None:
        return None
    if b"\0" in data:
        raise FileProblem(f"{path}: holds NUL bytes (binary data); refusing to edit it as a {what}")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise FileProblem(
            f"{path}: is not UTF-8 (byte {data[exc.start]:#04x} at offset {exc.start}); refusing to edit it as a {what}"
        ) from None


def write_atomic(path: str, text: str | bytes, atomic_move, mode: int | None = None) -> None:
    """Write ``text`` (or bytes) to ``path`` through a temp file in its directory and ``atomic_move`` (AnsibleModule's).

    The mode of an existing file is kept (``mode`` or 0644 for a new one); missing parent directories are made.
    Any failure is a :class:`FileProblem` naming the path - ansible-core 2.19's ``atomic_move`` raises a plain
    Exception on a read-only target - and no temp file is left behind.
    """
    tmp = None
    try:
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            os.makedirs(directory, 0o755)
        if mode is None:
            mode = os.stat(path).st_mode & 0o7777 if os.path.exists(path) else 0o644
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".hostdev-vfio-")
        with os.fdopen(fd, "wb") as f:
            f.write(text if isinstance(text, bytes) else text.encode("utf-8"))
        os.chmod(tmp, mode)
        atomic_move(tmp, path)
        tmp = None
    except Exception as exc:  # OSError from the steps above, a plain Exception from atomic_move
        raise FileProblem(f"cannot write {path}: {getattr(exc, 'strerror', None) or exc}") from None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
