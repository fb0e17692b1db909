#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vfio_bind
short_description: Hand PCI devices to vfio-pci or pci-stub, and back, safely and idempotently
version_added: 0.1.0
description:
  - Moves the selected PCI functions to a driver with C(driver_override), unbind and C(drivers_probe) (never
    C(new_id)), loading the driver module first when it is missing, and re-reads the C(driver) link of every
    device afterwards (a successful C(drivers_probe) does not mean a driver bound). For vfio drivers it also
    checks that C(/dev/vfio/<group>) exists.
  - The whole change is planned first (per device the driver before and after, its role and the actions; per
    IOMMU group the viability after the change), returned in check mode and as the diff, and only then
    applied. When any step fails part-way, every device touched in this run is put back on its previous driver
    and override, and the module fails saying what happened.
  - Devices the host needs are refused unless O(force) names them - a device whose block devices (through
    partitions and dm/md/LVM/bcache) back a mounted filesystem or active swap, are vdevs of an imported ZFS pool
    (from C(zpool status -P)), sit under an active LVM volume group, dm-crypt, multipath, md or bcache device
    with or without a mount, or that the kernel reports held (a read-only C(O_EXCL) open of the disk or
    partition fails with C(EBUSY); skipped for an offline O(sysfs_root)) (check C(storage)); a NIC,
    or a member of a bond, bridge or vlan, that carries the default route or the route to this SSH session's
    client or server address (check C(network)); the boot VGA device and a device behind a bound framebuffer
    console (check C(console)); a member of an IOMMU group whose C(/dev/vfio/<group>) a process holds open,
    a function whose VFIO device cdev C(/dev/vfio/devices/vfioN) (matched by major:minor with its
    C(vfio-dev/vfioN)) a process holds, or a function with a cdev while a process holds C(/dev/iommu), for
    example a running guest (check C(vfio-in-use)). Each refusal names the device, the check, the reason and
    the process (pid and name) or what holds the block device.
  - A device already on the requested driver (with its udev rule when O(persistent=true)) is not touched at all.
  - Every selector and value is checked in full before anything is read for writing - addresses, ids, class
    prefixes, the driver name (a newline or any other control character is refused, so a value can never start
    a second udev rule), the query, and the persistence paths (absolute, without C(..)). A function whose sysfs
    attributes cannot be parsed (see C(unreadable) in M(hostdev.vfio.iommu_facts)) is never changed. A rules or
    state file that is not UTF-8 text, or a directory in its place, is refused with its path named.
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  driver:
    description:
      - The driver to put the selected devices on - V(vfio-pci), V(pci-stub), or any other PCI driver name
        (a vfio-pci variant driver, or a host driver).
      - V(host) (alias spelling V(default)) gives the devices back - clears the override, unbinds them from a
        vfio or stub driver and reprobes, so they end on the driver recorded when this module took them, or on
        the kernel's choice when nothing was recorded; their udev rule and record are removed.
    type: str
    default: vfio-pci
  group:
    description:
      - What to do with the other endpoints of each selected device's IOMMU group when O(driver) is a vfio
        driver (ignored otherwise). Bridges are never rebound.
      - V(fail) - fail, changing nothing, when the group would not be viable, naming the members that block it.
      - V(stub) - bind the other endpoints to pci-stub, which makes the group viable without letting a guest
        open them.
      - V(vfio) - bind them to vfio-pci too.
      - V(ignore) - leave them; the group may stay non-viable (reported in RV(groups)).
    type: str
    choices: [fail, stub, vfio, ignore]
    default: fail
  persistent:
    description:
      - Also make the binding of the selected devices survive a reboot - a line per device in the managed udev
        rules file O(rules_file) sets C(driver_override) when the device is added (matching address and
        vendor:device) and loads the driver, before C(80-drivers.rules) loads the host driver.
      - The group companions that O(group=stub) or O(group=vfio) parks get a line too, so the group is still
        viable after the reboot. Give them back with O(driver=host) (listing their addresses) to drop their lines.
      - The host driver must not have bound the device before udev runs - it must be a module that is not built
        in and not loaded earlier (for example by the initramfs without the rule); see RV(initramfs_update_needed).
      - V(false) leaves any existing rule alone; O(driver=host) removes it.
    type: bool
    default: false
  force:
    description:
      - Safety checks to override, per device - a dict of address to a list of check names, for example the
        key V(0000:03:00.0) with the list V([console]). The checks are V(storage), V(network), V(console) and V(vfio-in-use)
        (the names the refusals give). Only the named checks of the named devices are overridden; each
        override becomes a warning and is listed in the device's C(forced) in RV(devices).
      - The older form, a list of addresses, still works and overrides every check of those devices; it is
        deprecated.
    type: raw
    default: {}
  allow_empty:
    description:
      - Succeed without change when the selectors match no device (by default that is an error).
    type: bool
    default: false
  state_dir:
    description:
      - Directory of C(bind-state.json), where the original driver of each device taken from a host driver is
        recorded for O(driver=host).
    type: path
    default: /var/lib/hostdev-vfio
  rules_file:
    description:
      - The udev rules file this module manages for O(persistent=true). Other lines in it are kept byte for byte.
    type: path
    default: /etc/udev/rules.d/05-hostdev-vfio.rules
extends_documentation_fragment:
  - hostdev.vfio.selectors
  - hostdev.vfio.selectors.host_roots
attributes:
  check_mode:
    support: full
    description: Returns the plan and changes nothing; works offline against a captured O(sysfs_root).
  diff_mode:
    support: full
    description: Per device the driver, override and udev rule before and after.
  platform:
    support: full
    platforms: posix
    description: Linux with sysfs.
notes:
  - Needs root to apply. C(modprobe) is needed only when a driver module must be loaded.
  - The group viability rule is the kernel's - every member unbound, on a vfio driver, on pci-stub or
    (bridges) on pcieport.
  - After a change of the rules file, regenerate the initramfs (for example with M(hostdev.vfio.initramfs)) so
    the rule also acts inside it; RV(initramfs_update_needed) says when. dracut and mkinitcpio copy the file only
    when it is named in O(hostdev.vfio.initramfs#module:files).
seealso:
  - module: hostdev.vfio.iommu_facts
  - name: Kernel VFIO documentation
    description: IOMMU groups, VFIO groups and viability.
    link: https://docs.kernel.org/driver-api/vfio.html
"""

EXAMPLES = r"""
- name: Give the NIC at 00:04.0 to vfio-pci, but only if it is still the expected model
  hostdev.vfio.vfio_bind:
    address:
      - 00:04.0@8086:10d3

- name: Both functions of a GPU to vfio-pci, kept across reboots
  hostdev.vfio.vfio_bind:
    ids:
      - 10de:1b80
      - 10de:10f0
    persistent: true
  register: bound

- name: Put the udev rule into the initramfs (dracut and mkinitcpio copy it only when told) and regenerate
  hostdev.vfio.initramfs:
    modules: [vfio, vfio_iommu_type1, vfio_pci]
    files: ["{{ bound.rules_file.path }}"]
    files_changed: "{{ bound.rules_file.changed }}"

- name: One NIC behind a bridge to vfio-pci, the other endpoints of its group to pci-stub
  hostdev.vfio.vfio_bind:
    address:
      - 0000:01:01.0
    group: stub

- name: Every NVIDIA display function, chosen with a JMESPath query over the IOMMU facts
  hostdev.vfio.vfio_bind:
    query: "devices[?vendor_id=='10de' && starts_with(class_code, '03')]"

- name: Give them back to the host driver
  hostdev.vfio.vfio_bind:
    ids:
      - 10de:1b80
      - 10de:10f0
    driver: host

- name: Plan offline against a captured tree
  hostdev.vfio.vfio_bind:
    address:
      - 01:00.0
    sysfs_root: /srv/captures/host42/sys
    proc_root: /srv/captures/host42/proc
  check_mode: true
"""

RETURN = r"""
devices:
  description:
    - Every device planned or touched - the selected ones, and for vfio drivers the other members of their
      IOMMU groups (role V(companion), or V(bridge) for bridges, which are never rebound).
    - C(driver_after) is the planned driver in check mode (null for O(driver=host) when nothing was recorded,
      meaning the kernel's choice) and the driver re-read from sysfs otherwise.
    - C(actions) is empty for a device that is left as it is.
    - C(forced) lists the safety checks that protected the device and that O(force) overrode for it.
  returned: always
  type: list
  elements: dict
  sample:
    - {"address": "0000:01:01.0", "vendor_id": "8086", "device_id": "100e", "iommu_group": 8,
       "driver_before": "e1000", "driver_after": "vfio-pci", "role": "selected",
       "actions": ["set driver_override to vfio-pci", "unbind from e1000", "drivers_probe (bind to vfio-pci)",
                   "record original driver e1000"], "forced": []}
    - {"address": "0000:01:02.0", "vendor_id": "8086", "device_id": "100e", "iommu_group": 8,
       "driver_before": "e1000", "driver_after": "pci-stub", "role": "companion", "actions": ["..."], "forced": []}
    - {"address": "0000:00:08.0", "vendor_id": "1b36", "device_id": "000e", "iommu_group": 8,
       "driver_before": null, "driver_after": null, "role": "bridge", "actions": [], "forced": []}
groups:
  description: Each affected IOMMU group with its viability after the change (planned in check mode) and the
    members that block it.
  returned: always
  type: list
  elements: dict
  sample: [{"id": 8, "devices": ["0000:00:08.0", "0000:01:01.0", "0000:01:02.0"], "viable": true, "blockers": []}]
modules_loaded:
  description: Driver modules loaded (to be loaded, in check mode) before binding.
  returned: always
  type: list
  elements: str
  sample: [vfio-pci]
rules_file:
  description: The managed udev rules file, and whether it changed (or would change).
  returned: always
  type: dict
  sample: {"path": "/etc/udev/rules.d/05-hostdev-vfio.rules", "changed": true, "exists": true}
initramfs_update_needed:
  description:
    - The udev rules file changed and the host's initramfs carries it - initramfs-tools copies /etc/udev/rules.d
      by itself, dracut and mkinitcpio only when their configuration names the file (O(hostdev.vfio.initramfs#module:files)
      writes that); regenerate the initramfs. When the file changed but no image carries it, a warning says so.
  returned: always
  type: bool
  sample: true
rollback:
  description: On failure, per device touched in this run, whether it was put back on its previous driver.
  returned: failure
  type: list
  elements: dict
  sample: [{"address": "0000:01:01.0", "driver": "e1000", "driver_override": null, "restored": true}]
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils import _bind
from ansible_collections.hostdev.vfio.plugins.module_utils._argspec import host_root_options, selector_options
from ansible_collections.hostdev.vfio.plugins.module_utils._host import Host, run_module
from ansible_collections.hostdev.vfio.plugins.module_utils._safety import LIVE_ROOTS

INITRAMFS_ROOT = "/"  # where the initramfs generators and their configuration are looked for (tests: a fake tree)


def make_kernel(module, sysfs_root, dev_root):
    """The real kernel interface (tests put a fake kernel here)."""
    return _bind.host_kernel(Host(module), sysfs_root, dev_root)


def main():
    module = AnsibleModule(
        argument_spec={
            **selector_options(),
            **host_root_options(),
            "driver": {"type": "str", "default": "vfio-pci"},
            "group": {"type": "str", "default": "fail", "choices": list(_bind.GROUP_POLICIES)},
            "persistent": {"type": "bool", "default": False},
            "force": {"type": "raw", "default": {}},
            "allow_empty": {"type": "bool", "default": False},
            "state_dir": {"type": "path", "default": _bind.DEFAULT_STATE_DIR},
            "rules_file": {"type": "path", "default": _bind.DEFAULT_RULES_FILE},
        },
        supports_check_mode=True,
    )
    p = module.params
    run_module(
        module,
        _bind.run_request,
        kernel=make_kernel(module, p["sysfs_root"], p["dev_root"]),
        address=p["address"],
        ids=p["ids"],
        device_class=p["device_class"],
        query=p["query"],
        driver=p["driver"],
        group=p["group"],
        persistent=p["persistent"],
        force=p["force"],
        allow_empty=p["allow_empty"],
        sysfs_root=p["sysfs_root"],
        proc_root=p["proc_root"],
        dev_root=p["dev_root"],
        state_dir=p["state_dir"],
        rules_file=p["rules_file"],
        initramfs_root=INITRAMFS_ROOT,
        live_roots=LIVE_ROOTS,
    )


if __name__ == "__main__":
    main()
