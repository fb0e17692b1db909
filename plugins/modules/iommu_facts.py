#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: iommu_facts
short_description: Gather the host's IOMMU groups and PCI functions as the kernel sees them
version_added: 0.1.0
description:
  - Reads sysfs and the kernel command line and returns C(ansible_facts.iommu) - the IOMMU units, whether DMA
    remapping is active, every IOMMU group with its members and the kernel's viability verdict, and every PCI
    function with its ids, class, driver, C(driver_override), group, NUMA node, reset methods and SR-IOV state.
  - A group is viable for VFIO when every member is unbound or bound to vfio-pci (or a vfio-pci variant
    driver), to pci-stub, or (bridges) to pcieport. For a group that is not, the members that block it are
    listed with their drivers.
  - On a host without an active IOMMU the module does not fail. It returns O(ignore:enabled=false), no groups,
    and a warning that says what to change (firmware setting, kernel arguments).
  - Device and vendor names come from the pci.ids database when it is installed (hwdata or pciutils); it is
    never required.
  - The module never changes anything.
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  sysfs_root:
    description:
      - Where sysfs is mounted. Point it at a captured copy of C(/sys) to analyse another host offline.
    type: path
    default: /sys
  proc_root:
    description:
      - Where procfs is mounted. C(cmdline) and C(cpuinfo) are read below it.
    type: path
    default: /proc
  dev_root:
    description:
      - Where device nodes live. C(vfio/) below it is listed for open-able VFIO group files.
    type: path
    default: /dev
  modules_root:
    description:
      - Where the kernel module trees live. C(modules.alias) (and C(modules.builtin.alias)) of the running kernel
        (the release from C(sys/kernel/osrelease) below O(proc_root)) give each function's C(host_modules).
    type: path
    default: /lib/modules
  device_class:
    description:
      - Limit the output to the IOMMU groups that hold a function of one of these PCI classes. Each entry is a
        prefix of the 6-digit class code in hex, for example V(03) (any display controller), V(0300) (VGA),
        V(0c03) (USB) or V(0c0330) (xHCI).
      - All members of a matching group are returned, so the companions of a device stay visible.
      - Useful on hosts with thousands of functions.
    type: list
    elements: str
  names:
    description:
      - Look up vendor, device and class names in the pci.ids database when it is installed.
      - Set to V(false) to skip the database.
    type: bool
    default: true
attributes:
  check_mode:
    support: full
    description: The module only reads; it behaves the same in check mode.
  diff_mode:
    support: none
    description: Nothing changes, so there is no diff.
  facts:
    support: full
    description: Returns C(ansible_facts.iommu).
  platform:
    support: full
    platforms: posix
    description: Linux only; reads sysfs and procfs.
notes:
  - Root is not required, but a non-root user may not see every C(reset_method).
seealso:
  - module: hostdev.vfio.vfio_bind
  - name: Kernel VFIO documentation
    description: How IOMMU groups, VFIO groups and viability work.
    link: https://docs.kernel.org/driver-api/vfio.html
"""

EXAMPLES = r"""
- name: Gather IOMMU facts
  hostdev.vfio.iommu_facts:

- name: Show the groups that are not ready for passthrough
  ansible.builtin.debug:
    msg: "{{ ansible_facts.iommu.groups | rejectattr('viable') | list }}"

- name: Only the groups holding GPUs (display controllers), with their audio functions
  hostdev.vfio.iommu_facts:
    device_class:
      - "03"

- name: Addresses of every NVIDIA function
  ansible.builtin.debug:
    msg: "{{ ansible_facts.iommu.devices | selectattr('vendor_id', 'equalto', '10de') | map(attribute='address') | list }}"

- name: Analyse a sysfs tree captured from another host
  hostdev.vfio.iommu_facts:
    sysfs_root: /srv/captures/host42/sys
    proc_root: /srv/captures/host42/proc
"""

RETURN = r"""
check_mode:
  description:
    - Whether the module ran in check mode (it changes nothing either way). Unlike C(ansible_check_mode), which
      only reflects C(--check) on the command line, this also sees the C(check_mode) keyword on a play, block or
      task; the passthrough role uses it to tell a dry run.
  returned: always
  type: bool
  sample: false
ansible_facts:
  description: Facts to add to C(ansible_facts).
  returned: always
  type: dict
  contains:
    iommu:
      description: The host's IOMMU and PCI state.
      returned: always
      type: dict
      contains:
        enabled:
          description: Whether DMA remapping is active, that is, the kernel created IOMMU groups.
          type: bool
          returned: always
          sample: true
        units:
          description: IOMMU units from C(/sys/class/iommu); C(type) is V(intel-vtd), V(amd-vi), V(arm-smmu),
            V(virtio-iommu) or V(other).
          type: list
          elements: dict
          returned: always
          sample: [{"name": "dmar0", "type": "intel-vtd"}]
        firmware_tables:
          description:
            - The ACPI tables that describe an IOMMU and are present, V(DMAR) (Intel VT-d) and V(IVRS) (AMD-Vi).
            - They are there even when the kernel has the IOMMU off, so a host with O(ignore:enabled=false) and a
              table only needs kernel arguments, while one with neither needs the firmware setting.
          type: list
          elements: str
          returned: always
          sample: ["DMAR"]
        cpu_vendor:
          description: V(intel), V(amd), another vendor string in lower case, or null when unknown.
          type: str
          returned: always
          sample: intel
        cmdline:
          description:
            - The passthrough-relevant kernel parameters of the running kernel, by canonical name (C(intel_iommu),
              C(amd_iommu), C(iommu), C(iommu.passthrough), C(iommu.strict), C(vfio-pci.ids), C(pci-stub.ids),
              C(vfio_iommu_type1.allow_unsafe_interrupts), C(pcie_acs_override), ...). A bare flag is V(true).
          type: dict
          returned: always
          sample: {"intel_iommu": "on", "iommu": "pt"}
        cmdline_raw:
          description: The whole running kernel command line.
          type: str
          returned: always
          sample: BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=UUID=... ro intel_iommu=on iommu=pt
        acs_override:
          description: Whether C(pcie_acs_override) is in use (groups split by a patch, isolation not guaranteed).
          type: bool
          returned: always
          sample: false
        unsafe_interrupts:
          description: Whether C(vfio_iommu_type1.allow_unsafe_interrupts) is on.
          type: bool
          returned: always
          sample: false
        vfio:
          description: VFIO state - loaded C(vfio*) and C(pci_stub) modules, the group numbers that have a
            C(/dev/vfio/N) file, and whether unsafe no-IOMMU mode is on.
          type: dict
          returned: always
          sample: {"modules": ["vfio", "vfio_iommu_type1", "vfio_pci"], "group_files": [12], "unsafe_noiommu_mode": false}
        warnings:
          description: Problems found, each saying what to do.
          type: list
          elements: str
          returned: always
          sample: []
        groups:
          description: IOMMU groups, sorted by number (numbers may have gaps).
          type: list
          elements: dict
          returned: always
          contains:
            id:
              description: Group number.
              type: int
            type:
              description: The default domain type (V(DMA), V(DMA-FQ), V(identity), ...), or null.
              type: str
            devices:
              description: Member addresses.
              type: list
              elements: str
            viable:
              description: Whether VFIO can use the group as it is now.
              type: bool
            blockers:
              description: Members whose driver makes the group non-viable, as C(address) and C(driver).
              type: list
              elements: dict
          sample: [{"id": 1, "type": "DMA", "devices": ["0000:01:00.0", "0000:01:00.1"], "viable": false,
                    "blockers": [{"address": "0000:01:00.1", "driver": "snd_hda_intel"}]}]
        devices:
          description:
            - PCI functions, sorted by address. Ids are 4-digit lower-case hex without C(0x). C(class_id) is base
              class and subclass (V(0300)); C(class_code) adds the programming interface. C(driver) and
              C(iommu_group) are null when there is none. C(sriov) is null unless the function is an SR-IOV
              physical function. C(vfio_capable) tells whether vfio-pci could take the function, and
              C(vfio_blockers) why not.
            - C(vfio_interfaces) lists the VFIO doors the running kernel offers for the function, so you know which
              one QEMU will take - V(group) when it has an IOMMU group and C(/dev/vfio/<group>) exists or a VFIO
              driver is bound (the legacy group/container interface, C(-device vfio-pci,host=...)), V(cdev) when
              the kernel created the VFIO device cdev C(vfio-dev/vfioN) for it (kernels built with
              C(CONFIG_VFIO_DEVICE_CDEV), 6.6 and later, while a VFIO driver is bound; QEMU's
              C(-object iommufd) with C(vfio-pci,iommufd=...)). C(vfio_cdev) is that cdev's name
              (C(/dev/vfio/devices/<name>)) or null. Empty while the function is on a host driver.
            - C(driver_module) is the module that provides C(driver) (V(xhci_pci) for the driver V(xhci_hcd)), null
              when the driver is built in or there is none.
            - C(modalias) is the kernel's modalias of the function, and C(host_modules) the modules whose device
              table matches it (what C(modprobe -R) and C(lspci -k) list), so a function already on vfio-pci still
              names the host drivers that would take it at boot. Empty when the alias tables cannot be read.
            - C(builtin_modules) lists the drivers built into the kernel (C(modules.builtin.alias)) that match the
              function. The kernel binds those at boot whatever C(modprobe.d) says.
            - C(host_needs) lists what the host itself needs the function for, as C(check) (V(storage), V(network),
              V(console)) and C(reason) - the controller or bridge of a mounted disk or active swap, the NIC of the
              default route or of this SSH session, the boot VGA device or the framebuffer console. Empty for a
              function the host can give away.
            - C(unreadable) is null, or why the function's identity could not be read from sysfs (a C(class) or
              C(uevent) attribute that is not what the kernel writes - not hex, empty, not ASCII, too long). Such a
              function is still listed, with ids V(ffff), an empty C(class_code), no names, C(vfio_capable=false),
              and a warning; the rest of the host is reported as usual, and M(hostdev.vfio.vfio_bind) refuses to
              change it.
          type: list
          elements: dict
          returned: always
          sample: [{"address": "0000:01:00.0", "vendor_id": "10de", "device_id": "1b80", "subsystem_vendor_id": "1458",
                    "subsystem_device_id": "3702", "vendor_name": "NVIDIA Corporation", "device_name": "GP104 [GeForce GTX 1080]",
                    "class_code": "030000", "class_id": "0300", "class_name": "VGA compatible controller", "revision": "a1",
                    "driver": "nouveau", "driver_module": "nouveau", "driver_override": null,
                    "modalias": "pci:v000010DEd00001B80sv00001458sd00003702bc03sc00i00",
                    "host_modules": ["nouveau"], "iommu_group": 1, "is_bridge": false,
                    "parent": "0000:00:01.0", "numa_node": null, "boot_vga": false, "reset_methods": ["bus"],
                    "has_reset": true, "sriov": null, "physfn": null, "vfio_interfaces": ["group", "cdev"],
                    "vfio_cdev": "vfio0", "vfio_capable": true, "vfio_blockers": [], "unreadable": null,
                    "builtin_modules": [], "host_needs": []}]
"""

import os

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils import _validate
from ansible_collections.hostdev.vfio.plugins.module_utils._facts import gather


def main():
    module = AnsibleModule(
        argument_spec={
            "sysfs_root": {"type": "path", "default": "/sys"},
            "proc_root": {"type": "path", "default": "/proc"},
            "dev_root": {"type": "path", "default": "/dev"},
            "modules_root": {"type": "path", "default": "/lib/modules"},
            "device_class": {"type": "list", "elements": "str"},
            "names": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    errors = []
    for index, value in enumerate(module.params["device_class"] or []):
        try:
            _validate.pci_class_prefix(f"device_class[{index}]", value)
        except _validate.InvalidValue as exc:
            errors.append(str(exc))
    if errors:
        module.fail_json(msg="; ".join(errors))
    facts = gather(
        sysfs_root=module.params["sysfs_root"],
        proc_root=module.params["proc_root"],
        dev_root=module.params["dev_root"],
        modules_root=module.params["modules_root"],
        device_class=module.params["device_class"],
        names=module.params["names"],
        ssh_connection=os.environ.get("SSH_CONNECTION"),
    )
    for warning in facts["warnings"]:
        module.warn(warning)
    module.exit_json(changed=False, check_mode=module.check_mode, ansible_facts={"iommu": facts})


if __name__ == "__main__":
    main()
