#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: capture
short_description: Pack what iommu_facts reads into one archive, for offline analysis
version_added: 0.1.0
description:
  - Writes a tar.gz on the host with exactly the files M(hostdev.vfio.iommu_facts) reads - the sysfs entries of
    every PCI function, IOMMU group and IOMMU unit, driver and module links, the block, network and console entries
    behind the checks of what the host needs, C(/proc/cmdline) and the few other C(/proc) files it reads, the
    entries of C(/dev/vfio), C(modules.alias) and C(modules.builtin.alias) of the running kernel, pci.ids, which
    of the ACPI tables DMAR and IVRS exist - and a manifest C(capture.json).
  - The archive is rooted at C(/) (C(sys/...), C(proc/...), C(dev/...), C(lib/modules/...)). Unpacked in V(X),
    M(hostdev.vfio.iommu_facts) with O(hostdev.vfio.iommu_facts#module:sysfs_root=X/sys),
    O(hostdev.vfio.iommu_facts#module:proc_root=X/proc), O(hostdev.vfio.iommu_facts#module:dev_root=X/dev) and
    O(hostdev.vfio.iommu_facts#module:modules_root=X/lib/modules) returns the facts of the captured host; the
    report playbook reads a directory of captures with C(-e passthrough_captures=DIR).
  - Device nodes are stored as empty regular files (only their names are read), symlinks as symlinks. Nothing
    from C(/etc), no key and no other file content is captured. The manifest holds the kernel release and the
    session's C(SSH_CONNECTION) (two addresses and ports), which the check of the management NIC needs.
  - The archive is reproducible (members sorted, owner 0:0, time 0); a host that did not change gives the same
    bytes, and the module reports no change.
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  dest:
    description:
      - Where to write the archive on the host (a C(.tar.gz) file). Its directory must exist.
    type: path
    required: true
  sysfs_root:
    description:
      - Where sysfs is mounted. Another tree (a capture unpacked earlier, a test tree) is captured the same way.
    type: path
    default: /sys
  proc_root:
    description:
      - Where procfs is mounted.
    type: path
    default: /proc
  dev_root:
    description:
      - Where device nodes live.
    type: path
    default: /dev
  modules_root:
    description:
      - Where the kernel module trees live; the running kernel's release is read below O(proc_root).
    type: path
    default: /lib/modules
  pci_ids_path:
    description:
      - The pci.ids database to include. By default the first of C(/usr/share/hwdata/pci.ids),
        C(/usr/share/misc/pci.ids), C(/usr/share/pci.ids) and C(/usr/share/pciids/pci.ids) that exists; none is
        required.
    type: path
attributes:
  check_mode:
    support: full
    description: In check mode the capture is read and counted but no archive is written.
  diff_mode:
    support: none
    description: The archive is binary; the result says whether it changed.
  platform:
    support: full
    platforms: posix
    description: Linux only; reads sysfs and procfs.
notes:
  - Run it as root so that every attribute the facts read (C(reset_method), C(config)) can be read.
seealso:
  - module: hostdev.vfio.iommu_facts
  - name: Captures for offline analysis
    description: The layout, what is captured and what is not (docs/capture.md in the collection).
    link: https://github.com/hostdev/vfio/blob/main/docs/capture.md
"""

EXAMPLES = r"""
- name: Capture the host's PCI and IOMMU state
  hostdev.vfio.capture:
    dest: /tmp/capture.tar.gz

- name: Bring it to the controller
  ansible.builtin.fetch:
    src: /tmp/capture.tar.gz
    dest: "captures/{{ inventory_hostname }}.tar.gz"
    flat: true
"""

RETURN = r"""
dest:
  description: The archive's path on the host.
  returned: always
  type: str
  sample: /tmp/capture.tar.gz
size:
  description: The archive's size in bytes.
  returned: always
  type: int
  sample: 412345
entries:
  description: How many files, directories and links the capture holds.
  returned: always
  type: int
  sample: 1830
kernel_release:
  description: The running kernel's release, whose module alias tables were captured (null when unknown).
  returned: always
  type: str
  sample: 6.1.0-26-amd64
"""

import json
import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils import _capture
from ansible_collections.hostdev.vfio.plugins.module_utils._files import FileProblem, read_bytes, write_atomic


def main():
    module = AnsibleModule(
        argument_spec={
            "dest": {"type": "path", "required": True},
            "sysfs_root": {"type": "path", "default": "/sys"},
            "proc_root": {"type": "path", "default": "/proc"},
            "dev_root": {"type": "path", "default": "/dev"},
            "modules_root": {"type": "path", "default": "/lib/modules"},
            "pci_ids_path": {"type": "path"},
        },
        supports_check_mode=True,
    )
    dest = module.params["dest"]
    if not os.path.isdir(os.path.dirname(dest) or "."):
        module.fail_json(msg=f"dest: the directory of {dest} does not exist; create it first")
    cap = _capture.collect(
        sysfs_root=module.params["sysfs_root"],
        proc_root=module.params["proc_root"],
        dev_root=module.params["dev_root"],
        modules_root=module.params["modules_root"],
        pci_ids_path=module.params["pci_ids_path"],
        ssh_connection=os.environ.get("SSH_CONNECTION"),
    )
    data = _capture.archive(cap)
    meta = cap.entries[_capture.MANIFEST][1]
    result = {
        "dest": dest,
        "size": len(data),
        "entries": len(cap.entries),
        "kernel_release": json.loads(meta)["kernel_release"],
    }
    try:
        changed = read_bytes(dest, "capture archive") != data
        if changed and not module.check_mode:
            write_atomic(dest, data, module.atomic_move)
    except FileProblem as exc:
        module.fail_json(msg=str(exc), **result)
    module.exit_json(changed=changed, **result)


if __name__ == "__main__":
    main()
