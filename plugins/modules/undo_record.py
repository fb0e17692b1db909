#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: undo_record
short_description: Record files before their first change, and give back exactly what was there
version_added: 0.2.0
description:
  - Keeps the C(files) section of the host's undo record, C(undo-record.json) in O(state_dir) below O(root) - the
    same record in which M(hostdev.vfio.kernel_cmdline) (O(hostdev.vfio.kernel_cmdline#module:record)) keeps the
    kernel arguments it changed.
  - V(recorded) notes, for each file of O(files) the record does not know yet, its content (or that it did not
    exist). Run it before the task that writes the files. The first sight wins - a later run never replaces
    the entry - so the record keeps what was there before this collection's first change, also when a run was
    stopped half way.
  - V(restored) gives each file of O(files) back - the recorded content byte for byte, or no file when there was
    none - and drops its entry. A file with no entry is left alone, or removed with O(unrecorded=remove) (files
    that only this collection ever writes, from hosts configured before the record existed).
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  files:
    description:
      - Absolute paths on the managed system (taken below O(root)); each must stay below O(root).
    type: list
    elements: path
    required: true
  state:
    description:
      - V(recorded) notes the files' current content; V(restored) gives it back.
    type: str
    choices: [recorded, restored]
    default: recorded
  unrecorded:
    description:
      - With O(state=restored), what happens to a file the record has no entry for.
    type: str
    choices: [keep, remove]
    default: keep
  root:
    description:
      - Root of the file system the files and the record are in.
    type: path
    default: /
  state_dir:
    description:
      - Directory of the undo record, below O(root).
    type: path
    default: /var/lib/hostdev-vfio
attributes:
  check_mode:
    support: full
    description: Reports what would be recorded or restored and writes nothing.
  diff_mode:
    support: full
    description: Each restored file before and after.
  platform:
    support: full
    platforms: posix
    description: Any POSIX host.
seealso:
  - module: hostdev.vfio.kernel_cmdline
"""

EXAMPLES = r"""
- name: Note the role's files before writing them
  hostdev.vfio.undo_record:
    files: [/etc/modprobe.d/hostdev-vfio-passthrough.conf]

- name: Give them back
  hostdev.vfio.undo_record:
    files: [/etc/modprobe.d/hostdev-vfio-passthrough.conf]
    state: restored
    unrecorded: remove
"""

RETURN = r"""
record_file:
  description: The undo record's path (with O(root)).
  returned: always
  type: str
  sample: /var/lib/hostdev-vfio/undo-record.json
recorded:
  description: Files noted by this call (V(recorded)).
  returned: always
  type: list
  elements: str
  sample: [/etc/modprobe.d/hostdev-vfio-passthrough.conf]
restored:
  description: Files given back by this call (V(restored)), with what they got back.
  returned: always
  type: list
  elements: dict
  sample: [{"path": "/etc/modprobe.d/hostdev-vfio-passthrough.conf", "content": "absent"}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils import _record
from ansible_collections.hostdev.vfio.plugins.module_utils._host import run_module


def main():
    module = AnsibleModule(
        argument_spec=dict(
            files=dict(type="list", elements="path", required=True),
            state=dict(type="str", choices=["recorded", "restored"], default="recorded"),
            unrecorded=dict(type="str", choices=["keep", "remove"], default="keep"),
            root=dict(type="path", default="/"),
            state_dir=dict(type="path", default=_record.DEFAULT_STATE_DIR),
        ),
        supports_check_mode=True,
    )
    p = module.params
    run_module(
        module,
        _record.run_files,
        files=p["files"],
        state=p["state"],
        unrecorded=p["unrecorded"],
        root=p["root"],
        state_dir=p["state_dir"],
    )


if __name__ == "__main__":
    main()
