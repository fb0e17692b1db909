# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by the modules that edit configuration files below a root directory.

Use ``hostdev.vfio.files`` (root, backup) together with the sections a module needs:
``hostdev.vfio.files.kernel_release``, ``hostdev.vfio.files.modprobe_path`` or
``hostdev.vfio.files.modules_load_path``. The matching argument specs come from
``plugins/module_utils/_argspec.py``; the rules behind them live in ``_validate``.
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  root:
    description:
      - Root directory of the system to configure, for offline images and tests. Every configuration path is read and
        written below it.
      - Must be an existing directory. A O(path) that leaves it (through C(..) or a symlink) is refused.
    type: path
    default: /
  backup:
    description:
      - Create a backup file with a timestamp before changing the file.
    type: bool
    default: false
"""

    KERNEL_RELEASE = r"""
options:
  kernel_release:
    description:
      - Kernel release whose C(lib/modules/RELEASE/modules.builtin) and C(modules.dep) (below O(root)) are checked,
        for example V(6.1.0-28-amd64). Defaults to the running kernel.
      - A release name as C(uname -r) prints it (letters, digits and C(._+~-), at most 128 characters), never a path.
    type: str
"""

    MODPROBE_PATH = r"""
options:
  path:
    description:
      - The modprobe.d file to manage, below O(root). Must be absolute, end in C(.conf) and stay below O(root).
      - A file that is not UTF-8 text, holds NUL bytes, is a directory or a symlink loop is refused, never edited.
    type: path
    default: /etc/modprobe.d/hostdev-vfio.conf
"""

    MODULES_LOAD_PATH = r"""
options:
  path:
    description:
      - The modules-load.d file to manage, below O(root). Must be absolute, end in C(.conf) and stay below O(root).
      - A file that is not UTF-8 text, holds NUL bytes, is a directory or a symlink loop is refused, never edited.
    type: path
    default: /etc/modules-load.d/hostdev-vfio.conf
"""
