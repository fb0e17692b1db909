#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: modules_load
short_description: Manage the modules systemd loads at boot (modules-load.d)
version_added: 0.1.0
description:
  - Adds or removes module names in one modules-load.d(5) file (one module per line), keeping every other byte of
    the file (comments starting with C(#) or C(;), blank lines, other modules).
  - Module names compare with V(-) and V(_) as the same character.
  - Returns the modules that systemd-modules-load reads from all directories (C(/etc/modules-load.d),
    C(/run/modules-load.d), C(/usr/local/lib/modules-load.d), C(/usr/lib/modules-load.d), C(/lib/modules-load.d);
    a file hides the same-named file of a later directory).
  - initramfs-tools does not copy modules-load.d into the initramfs (it has its own list in
    C(/etc/initramfs-tools/modules)); dracut does in host-only mode. RV(initramfs_update_needed) says which applies.
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  name:
    description:
      - Modules to load (or no longer load) at boot, for example V(vfio-pci).
    type: list
    elements: str
    required: true
  state:
    description:
      - Whether the modules should be listed in O(path). A file left empty is deleted.
    type: str
    choices: [present, absent]
    default: present
extends_documentation_fragment:
  - hostdev.vfio.files
  - hostdev.vfio.files.modules_load_path
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
    description: Linux with systemd.
notes:
  - Loading vfio-pci from modules-load.d races with the host driver in the initramfs; a softdep
    (M(hostdev.vfio.modprobe_softdep)) is the reliable way to bind a device to vfio-pci at boot.
seealso:
  - module: hostdev.vfio.modprobe_softdep
  - name: modules-load.d(5)
    description: The file format.
    link: https://man7.org/linux/man-pages/man5/modules-load.d.5.html
"""

EXAMPLES = r"""
- name: Load the VFIO modules at boot
  hostdev.vfio.modules_load:
    name:
      - vfio
      - vfio_iommu_type1
      - vfio-pci
"""

RETURN = r"""
path:
  description: The managed file, without O(root).
  returned: always
  type: str
  sample: /etc/modules-load.d/hostdev-vfio.conf
effective:
  description: Every module loaded at boot after the change, with the file that lists it, in reading order.
  returned: always
  type: list
  elements: dict
  sample: [{"name": "vfio-pci", "path": "/etc/modules-load.d/hostdev-vfio.conf"}]
initramfs_update_needed:
  description: Whether a file that the initramfs generator copies into the image was changed.
  returned: always
  type: bool
  sample: false
backup_file:
  description: Name of the backup file.
  returned: when O(backup=true) and the file was changed
  type: str
  sample: /etc/modules-load.d/hostdev-vfio.conf.12345.2026-01-01@00:00:00~
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils._argspec import file_options
from ansible_collections.hostdev.vfio.plugins.module_utils._modprobe import (
    DEFAULT_MODULES_LOAD_PATH,
    ModprobeError,
    exit_with_plan,
    plan_modules_load,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "list", "elements": "str", "required": True},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            **file_options(DEFAULT_MODULES_LOAD_PATH),
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        plan = plan_modules_load(names=p["name"], state=p["state"], path=p["path"], root=p["root"])
    except ModprobeError as e:
        module.fail_json(msg=str(e))
    exit_with_plan(module, plan, effective=plan.info["effective"])


if __name__ == "__main__":
    main()
