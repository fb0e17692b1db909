# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Options shared by the modules that choose PCI functions and read the host's kernel state.

``hostdev.vfio.selectors``: address, ids, device_class, query (checked by ``_validate`` before anything is read).
``hostdev.vfio.selectors.host_roots``: sysfs_root, proc_root, dev_root. The argument specs come from
``plugins/module_utils/_argspec.py`` (``selector_options``, ``host_root_options``).
"""

from __future__ import annotations


class ModuleDocFragment:
    DOCUMENTATION = r"""
options:
  address:
    description:
      - PCI addresses to select, full (V(0000:01:00.0)) or short (V(01:00.0), domain 0000).
      - An entry may end in C(@vendor:device), for example V(01:00.0@10de:1b80). When the device at that address is
        not that vendor:device (the bus was re-enumerated), the module fails and changes nothing.
    type: list
    elements: str
    default: []
  ids:
    description:
      - Select every function with these ids, V(vendor:device) or V(vendor:device:subvendor:subdevice), in hex.
    type: list
    elements: str
    default: []
  device_class:
    description:
      - Select every function whose 6-digit class code starts with one of these hex prefixes (V(03), V(0300),
        V(0c0330)), as in M(hostdev.vfio.iommu_facts).
    type: list
    elements: str
    default: []
  query:
    description:
      - A JMESPath expression over the data M(hostdev.vfio.iommu_facts) returns as C(ansible_facts.iommu). It must
        return a list of addresses or of device dicts (with C(address)), for example
        V(devices[?vendor_id=='10de'].address).
      - At most 2048 characters, no control characters, and no more than 32 levels of nesting.
      - Needs the Python library jmespath on the managed host.
      - All selectors add up (union).
    type: str
"""

    HOST_ROOTS = r"""
options:
  sysfs_root:
    description:
      - Where sysfs is mounted. Point it at a captured tree to compute the plan offline; with any value other than
        V(/sys) (or a non-default O(proc_root)/O(dev_root)) only check mode is allowed.
    type: path
    default: /sys
  proc_root:
    description:
      - Where procfs is mounted (mounts, swaps, routes and open files for the safety checks).
    type: path
    default: /proc
  dev_root:
    description:
      - Where device nodes live (C(vfio/<group>)).
    type: path
    default: /dev
"""
