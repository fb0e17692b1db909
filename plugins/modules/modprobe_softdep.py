#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: modprobe_softdep
short_description: Manage a C(softdep) in modprobe.d, for example to load vfio-pci before a host driver
version_added: 0.1.0
description:
  - "Adds, merges or removes a C(softdep MODULE pre: ... post: ...) command in one modprobe.d(5) file, keeping every
    other byte of the file (comments, blank lines, backslash continuations, other commands) as it was."
  - "C(softdep amdgpu pre: vfio-pci) makes modprobe load vfio-pci whenever it loads amdgpu, so vfio-pci (with
    C(options vfio-pci ids=...), see M(hostdev.vfio.modprobe_options)) claims the device first."
  - Module names compare the way kmod compares them, with V(-) and V(_) as the same character.
    An existing softdep for the same module in the file is merged with, never duplicated.
  - The effective configuration is computed the way kmod reads it (C(/etc/modprobe.d), C(/run/modprobe.d),
    C(/usr/local/lib/modprobe.d), C(/usr/lib/modprobe.d), C(/lib/modprobe.d); files sorted by name; a file hides the
    same-named file of a later directory; the first softdep for a module wins). The module warns when another file
    declares a softdep for the same module.
  - A softdep for a module built into the kernel (C(modules.builtin) of O(kernel_release)) is refused - such a
    driver registers during boot before any module is loaded, so its softdep never runs. The message names what
    works - a runtime rebind after boot with M(hostdev.vfio.vfio_bind), or C(vfio-pci.ids=) on the kernel command
    line, which only works when vfio-pci is built in too and registers before the host driver.
  - Returns O(ignore:initramfs_update_needed=true) when it changed a file that the initramfs generator
    (initramfs-tools or dracut) copies into the image, so a handler can regenerate it.
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  name:
    description:
      - The module that gets the soft dependency, for example V(snd_hda_intel) or V(amdgpu).
    type: str
    required: true
  pre:
    description:
      - Modules to load before O(name).
      - With O(state=present) and O(exclusive=false), these are added to the existing list.
      - With O(state=absent), these are removed from the softdep; the line goes when nothing is left.
    type: list
    elements: str
    default: []
  post:
    description:
      - Modules to load after O(name). Same rules as O(pre).
    type: list
    elements: str
    default: []
  exclusive:
    description:
      - With V(true), the softdep gets exactly O(pre) and O(post); with V(false), existing entries are kept.
    type: bool
    default: false
  state:
    description:
      - V(present) ensures the modules are in the softdep; at least one of O(pre) or O(post) is required.
      - V(absent) removes the given modules, or every softdep line for O(name) in O(path) when O(pre) and O(post)
        are empty. A file that is left empty is deleted.
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
    description: Nothing is created or written in check mode; the result and diff show the planned change.
  diff_mode:
    support: full
    description: The diff shows the whole file before and after the change.
  platform:
    support: full
    platforms: posix
    description: Linux with kmod.
notes:
  - kmod uses only one softdep per module (the first one it reads), so split declarations in several files do not add
    up; the module warns about them.
  - kmod reads C(lib/modules/RELEASE/modules.softdep) (softdeps declared by the modules themselves) as if it were a
    configuration file of that name, so a softdep in a file whose name sorts after C(modules.softdep) loses to it.
    The default file name sorts before it.
  - A softdep only acts when modprobe loads the module. Run C(update-initramfs -u) (or C(dracut -f)) when
    RV(initramfs_update_needed) is true, and reboot for boot-time binding.
seealso:
  - module: hostdev.vfio.modprobe_options
  - module: hostdev.vfio.modprobe_blacklist
  - module: hostdev.vfio.modules_load
  - name: modprobe.d(5)
    description: The configuration file format.
    link: https://man7.org/linux/man-pages/man5/modprobe.d.5.html
"""

EXAMPLES = r"""
- name: Load vfio-pci before the HD-audio driver
  hostdev.vfio.modprobe_softdep:
    name: snd_hda_intel
    pre:
      - vfio-pci
  register: softdep

- name: Regenerate the initramfs when the file is copied into it
  ansible.builtin.command: update-initramfs -u
  when: softdep.initramfs_update_needed
  changed_when: true

- name: Remove vfio-pci from the softdep again (the line goes when it is empty)
  hostdev.vfio.modprobe_softdep:
    name: snd_hda_intel
    pre:
      - vfio-pci
    state: absent

- name: Configure an offline image tree
  hostdev.vfio.modprobe_softdep:
    root: /srv/images/debian12
    kernel_release: 6.1.0-26-amd64
    name: amdgpu
    pre:
      - vfio-pci
"""

RETURN = r"""
path:
  description: The managed file, without O(root).
  returned: always
  type: str
  sample: /etc/modprobe.d/hostdev-vfio.conf
softdep:
  description: The softdep for O(name) in O(path) after the change, or null when there is none.
  returned: always
  type: dict
  sample: {"name": "snd_hda_intel", "pre": ["vfio-pci"], "post": []}
effective:
  description:
    - The softdep kmod uses for O(name) after the change (the first one in reading order, possibly from another
      file), or null.
  returned: always
  type: dict
  sample: {"path": "/etc/modprobe.d/hostdev-vfio.conf", "line": 1, "pre": ["vfio-pci"], "post": []}
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
    plan_softdep,
)


def main():
    module = AnsibleModule(
        argument_spec={
            "name": {"type": "str", "required": True},
            "pre": {"type": "list", "elements": "str", "default": []},
            "post": {"type": "list", "elements": "str", "default": []},
            "exclusive": {"type": "bool", "default": False},
            "state": {"type": "str", "choices": ["present", "absent"], "default": "present"},
            **file_options(DEFAULT_MODPROBE_PATH, kernel_release=True),
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        plan = plan_softdep(
            name=p["name"],
            pre=p["pre"],
            post=p["post"],
            state=p["state"],
            path=p["path"],
            root=p["root"],
            exclusive=p["exclusive"],
            release=p["kernel_release"],
        )
    except ModprobeError as e:
        module.fail_json(msg=str(e))
    exit_with_plan(module, plan, softdep=plan.info["softdep"], effective=plan.info["effective"])


if __name__ == "__main__":
    main()
