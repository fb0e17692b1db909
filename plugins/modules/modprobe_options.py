#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: modprobe_options
short_description: Manage module parameters (C(options)) in modprobe.d, for example C(options vfio-pci ids=...)
version_added: 0.1.0
description:
  - Sets or removes parameters on an C(options MODULE param=value ...) line of one modprobe.d(5) file, keeping every
    other byte of the file (comments, blank lines, backslash continuations, other parameters and commands).
  - A parameter that is already on an C(options) line for the module in the file is changed in place; new ones are
    added to the first such line, or to a new line.
  - When the file holds several C(options) lines for the module and a parameter must change, they are merged into the
    first one (kmod joins them in reading order, so the merged line reads the same) and each changed parameter is
    written once; repeated lines are never each rewritten to the same value. Nothing changes when every occurrence
    already has the wanted value.
  - Every module name, parameter name and value is validated before any file is read (no newline or other control
    character, no whitespace, quotes, C(#) or shell characters; length limits), so no value can start a new
    modprobe.d command.
  - Module names compare with V(-) and V(_) as the same character, and so do parameter names.
  - kmod passes the C(options) lines of every configuration file to the module, in reading order, and the kernel
    keeps the last value of a repeated parameter. The module returns the resulting values and warns when another
    file overrides one.
  - Returns O(ignore:initramfs_update_needed=true) when it changed a file that the initramfs generator copies.
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  name:
    description:
      - The module, for example V(vfio-pci).
    type: str
    required: true
  options:
    description:
      - 'Parameter names and values, for example C({ids: "10de:1b80,10de:10f0", disable_vga: 1}).'
      - Booleans are written as V(1) or V(0), lists joined with commas, V(null) as a bare parameter name.
      - Values may contain letters, digits and the characters C(.,:+/=@%^_-) only (no whitespace, newline, C(#),
        quotes, backslash or shell characters).
      - With O(state=absent), the listed parameters are removed whatever their value; with none listed, every
        C(options) line for O(name) in O(path) is removed.
    type: dict
    default: {}
  state:
    description:
      - Whether the parameters should be set or removed. A line left without parameters is removed, and a file left
        empty is deleted.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - hostdev.vfio.files
  - hostdev.vfio.files.modprobe_path
  - hostdev.vfio.files.kernel_release
attributes:
  check_mode:
    support: full
    description: Nothing is created or written in check mode.
  diff_mode:
    support: full
    description: The diff shows the whole file before and after the change.
  platform:
    support: full
    platforms: posix
    description: Linux with kmod.
seealso:
  - module: hostdev.vfio.modprobe_softdep
  - module: hostdev.vfio.modprobe_blacklist
  - name: modprobe.d(5)
    description: The configuration file format.
    link: https://man7.org/linux/man-pages/man5/modprobe.d.5.html
"""

EXAMPLES = r"""
- name: Let vfio-pci claim a GPU and its audio function
  hostdev.vfio.modprobe_options:
    name: vfio-pci
    options:
      ids: "10de:1b80,10de:10f0"
      disable_vga: 1

- name: Remove the ids parameter again
  hostdev.vfio.modprobe_options:
    name: vfio-pci
    options:
      ids:
    state: absent
"""

RETURN = r"""
path:
  description: The managed file, without O(root).
  returned: always
  type: str
  sample: /etc/modprobe.d/hostdev-vfio.conf
effective:
  description: Every parameter kmod passes to O(name) after the change, from all files (null for a bare flag).
  returned: always
  type: dict
  sample: {"ids": "10de:1b80,10de:10f0", "disable_vga": "1"}
initramfs_update_needed:
  description: Whether a file that the initramfs generator copies into the image was changed.
  returned: always
  type: bool
  sample: true
backup_file:
  description: Name of the backup file.
  returned: when O(backup=true) and the file was changed
  type: str
  sample: /etc/modprobe.d/hostdev-vfio.conf.12345.2026-01-01@00:00:00~
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils._argspec import file_options
from ansible_collections.hostdev.vfio.plugins.module_utils._modprobe import (
    DEFAULT_MODPROBE_PATH,
    ModprobeError,
    exit_with_plan,
    plan_options,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "options": {"type": "dict", "default": {}},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            **file_options(DEFAULT_MODPROBE_PATH, kernel_release=True),
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        plan = plan_options(
            name=p["name"],
            options=p["options"],
            state=p["state"],
            path=p["path"],
            root=p["root"],
            release=p["kernel_release"],
        )
    except ModprobeError as e:
        module.fail_json(msg=str(e))
    exit_with_plan(module, plan, effective=plan.info["effective"])


if __name__ == "__main__":
    main()
