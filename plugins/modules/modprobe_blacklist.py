#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: modprobe_blacklist
short_description: Manage C(blacklist) commands in modprobe.d
version_added: 0.1.0
description:
  - Adds or removes a C(blacklist MODULE) command in one modprobe.d(5) file, keeping every other byte of the file.
  - Module names compare with V(-) and V(_) as the same character.
  - A blacklist only stops loading through aliases (device ids, udev). An explicit C(modprobe MODULE), a dependency
    or a softdep still loads it.
  - Returns O(ignore:initramfs_update_needed=true) when it changed a file that the initramfs generator copies.
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  name:
    description:
      - The module, for example V(nouveau).
    type: str
    required: true
  state:
    description:
      - V(present) adds the blacklist line unless the file has one; V(absent) removes every blacklist line for
        O(name) from O(path) (a file left empty is deleted).
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
  - module: hostdev.vfio.modprobe_options
"""

EXAMPLES = r"""
- name: Keep nouveau off the host
  hostdev.vfio.modprobe_blacklist:
    name: nouveau
"""

RETURN = r"""
path:
  description: The managed file, without O(root).
  returned: always
  type: str
  sample: /etc/modprobe.d/hostdev-vfio.conf
effective:
  description: Every blacklist line for O(name) that kmod reads after the change.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/etc/modprobe.d/hostdev-vfio.conf", "line": 3}]
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
    plan_blacklist,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            **file_options(DEFAULT_MODPROBE_PATH, kernel_release=True),
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        plan = plan_blacklist(
            name=p["name"], state=p["state"], path=p["path"], root=p["root"], release=p["kernel_release"]
        )
    except ModprobeError as e:
        module.fail_json(msg=str(e))
    exit_with_plan(module, plan, effective=plan.info["effective"])


if __name__ == "__main__":
    main()
