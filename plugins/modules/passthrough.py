#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: passthrough
short_description: A host's whole PCI passthrough state in one call - read, plan, apply, verify
version_added: 0.3.0
description:
  - Takes the desired passthrough state of one host - device selectors, IOMMU and kernel-argument policy, boot
    method, owner of C(/dev/vfio/N), safety overrides - and, on the host, in one module run, reads the IOMMU facts,
    checks everything (selectors, the safety of every bind) before anything is written, then applies in the order
    a boot needs it - the undo record, the kernel arguments (M(hostdev.vfio.kernel_cmdline)), the modprobe.d file of
    the V(ids) boot method, the initramfs configuration (M(hostdev.vfio.initramfs)), the C(/dev/vfio) ownership
    rule, the runtime binds (M(hostdev.vfio.vfio_bind)), one initramfs regeneration for all of it - and verifies
    against a fresh reading of the kernel and the host's QEMU (M(hostdev.vfio.vmm_probe)).
  - The role M(hostdev.vfio.passthrough) is this module, a reboot when RV(reboot_required) says so, and this module
    again. Every step is the same code the single-purpose modules run; nothing is computed twice.
  - While the IOMMU is off, the binds cannot happen yet; RV(summary) lists them in C(binds) with C(after_reboot=true).
  - V(absent) gives back what the module (or the role) added - the modprobe.d file and the ownership rule as the
    undo record holds them, the kernel arguments the record says were added, the initramfs configuration - and binds
    the functions and their group companions back to their host drivers.
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  devices:
    description:
      - The functions to hand to guests, as selectors (the role's C(passthrough_devices)). All criteria of one
        selector apply together; an entry of a list matches if any item matches. Each selector must match at least
        one function (exactly O(devices[].count) when given), otherwise nothing changes.
    type: list
    elements: dict
    default: []
    suboptions:
      name:
        description: A label for messages and the report.
        type: str
      address:
        description:
          - PCI addresses (C(DDDD:BB:DD.F) or C(BB:DD.F)), optionally with the ids the function must have
            (C(0000:01:00.0@10de:1b80)).
        type: list
        elements: str
      ids:
        description: Vendor:device ids (C(10de:1b80), C(10de:*), C(10de:1b80:1458:3702)).
        type: list
        elements: str
      device_class:
        description: PCI class-code prefixes (C(0300), C(0c03)).
        type: list
        elements: str
      query:
        description: A JMESPath expression over the IOMMU facts returning devices or addresses (needs jmespath).
        type: str
      driver:
        description: The driver the functions get.
        type: str
        choices: [vfio-pci, pci-stub]
        default: vfio-pci
      group:
        description:
          - The other endpoints of the IOMMU group - V(stub) to pci-stub, V(vfio) to vfio-pci, V(fail) refuses when
            one is on a host driver, V(ignore) leaves them.
        type: str
        choices: [stub, vfio, fail, ignore]
        default: stub
      count:
        description: How many functions the selector must match.
        type: int
  state:
    description: V(present) configures, binds and verifies; V(absent) gives back what was added.
    type: str
    choices: [present, absent]
    default: present
  iommu:
    description:
      - V(auto) adds the argument the platform's IOMMU needs (C(intel_iommu=on) on Intel VT-d while it is off) and
        removes one that keeps a present AMD IOMMU off; V(keep) and V(off) leave the IOMMU arguments alone (the run
        fails when the IOMMU is off).
    type: str
    choices: [auto, keep, "off"]
    default: auto
  iommu_pt:
    description: Also keep C(iommu=pt) on the command line.
    type: bool
    default: false
  kernel_args:
    description: Extra kernel arguments kept present (removed with O(state=absent)).
    type: list
    elements: str
    default: []
  boot_method:
    description:
      - V(override) - per-device persistent udev rules (C(driver_override)) written by the binds.
      - "V(ids) - C(options vfio-pci ids=) / C(options pci-stub ids=) and C(softdep DRIVER pre: vfio-pci) in the
        module's modprobe.d file."
    type: str
    choices: [override, ids]
    default: override
  softdep_drivers:
    description:
      - With O(boot_method=ids), the host modules that get the softdep (default - derived from the devices).
    type: list
    elements: str
    default: []
  force:
    description:
      - "Safety checks of M(hostdev.vfio.vfio_bind) to override, per PCI address (for example
        C({'0000:03:00.0': [console]}))."
    type: dict
    default: {}
  vfio_group_owner:
    description: Owner of C(/dev/vfio/N) (a udev rule); empty for none.
    type: str
    default: ""
  vfio_group_group:
    description: Group of C(/dev/vfio/N); empty for none.
    type: str
    default: ""
  vfio_group_mode:
    description: Mode of C(/dev/vfio/N) when an owner or group is set (never world-writable).
    type: str
    default: "0660"
  verify:
    description: Read the kernel again after the change and fail when a function is not where it should be.
    type: bool
    default: true
  verify_vmm:
    description:
      - Ask the host's QEMU to take the functions on vfio-pci - V(auto) where QEMU is installed, V(true) always
        (a host without QEMU fails), V(false) never.
    type: str
    choices: [auto, "true", "false"]
    default: auto
attributes:
  check_mode:
    support: full
    description: Every step plans and nothing is touched; the result is the whole plan, post-reboot binds included.
  diff_mode:
    support: full
    description: The diffs of every file the run changes (or would change), and of the kernel command line.
  platform:
    support: full
    platforms: posix
    description: Linux hosts with sysfs and an IOMMU.
notes:
  - Needs root. The module never reboots; the role does, when RV(reboot_required) is true and it is allowed to.
seealso:
  - module: hostdev.vfio.vfio_bind
  - module: hostdev.vfio.kernel_cmdline
  - module: hostdev.vfio.initramfs
  - module: hostdev.vfio.vmm_probe
"""

EXAMPLES = r"""
- name: The NIC to vfio-pci, its group companions to pci-stub, the IOMMU on
  hostdev.vfio.passthrough:
    devices:
      - address: ["0000:00:04.0@8086:10d3"]
  register: passthrough

- name: Reboot when the new kernel arguments need it
  ansible.builtin.reboot:
  when: passthrough.reboot_required

- name: The second call binds what had to wait for the reboot, and verifies
  hostdev.vfio.passthrough:
    devices:
      - address: ["0000:00:04.0@8086:10d3"]

- name: The whole plan of a fleet without touching it
  hostdev.vfio.passthrough:
    devices:
      - ids: ["10de:1b80", "10de:10f0"]
    boot_method: ids
  check_mode: true
"""

RETURN = r"""
reboot_required:
  description: The next boot differs from the running one in what passthrough needs (kernel arguments).
  returned: always
  type: bool
  sample: true
reboot_reasons:
  description: Why a reboot is required.
  returned: always
  type: list
  elements: str
  sample: ["the running kernel's command line lacks intel_iommu=on"]
steps:
  description:
    - What each step returned - C(record), C(kernel_cmdline), C(modprobe), C(initramfs_config), C(udev_rule),
      C(binds) (one result per selector, as M(hostdev.vfio.vfio_bind) returns it), C(initramfs) (C(why) it is
      regenerated; C(planned) in check mode), C(vmm).
  returned: always
  type: dict
selection:
  description: Per selector, the functions it matched (C(label), C(addresses), C(driver), C(group), C(errors)).
  returned: success
  type: list
  elements: dict
kernel_args:
  description: The kernel arguments the module keeps present.
  returned: success
  type: list
  elements: str
verified:
  description: The problems found by the verification (empty when verified; null when it did not run).
  returned: success
  type: list
  elements: str
summary:
  description:
    - The host's summary for the role's C(passthrough_summary) and the fleet report - C(state), C(check_mode),
      C(iommu_enabled), C(iommu_vendor), C(kernel_args), C(reboot_required), C(rebooted) (always false here; the role
      sets it), C(boot_method), C(vmm), C(binds) (with C(after_reboot) for binds that wait for the IOMMU), C(devices)
      (readiness of the selected functions).
  returned: success
  type: dict
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils import _bind, _desired
from ansible_collections.hostdev.vfio.plugins.module_utils._host import Host, run_module

DEVICE_OPTIONS = {
    "name": {"type": "str"},
    "address": {"type": "list", "elements": "str"},
    "ids": {"type": "list", "elements": "str"},
    "device_class": {"type": "list", "elements": "str"},
    "query": {"type": "str"},
    "driver": {"type": "str", "choices": ["vfio-pci", "pci-stub"], "default": "vfio-pci"},
    "group": {"type": "str", "choices": ["stub", "vfio", "fail", "ignore"], "default": "stub"},
    "count": {"type": "int"},
}


def make_kernel(module):
    """The real kernel interface (tests put a fake kernel here)."""
    return _bind.host_kernel(Host(module))


def main():
    module = AnsibleModule(
        argument_spec={
            "devices": {"type": "list", "elements": "dict", "default": [], "options": DEVICE_OPTIONS},
            "state": {"type": "str", "choices": list(_desired.STATES), "default": "present"},
            "iommu": {"type": "str", "choices": list(_desired.IOMMU_MODES), "default": "auto"},
            "iommu_pt": {"type": "bool", "default": False},
            "kernel_args": {"type": "list", "elements": "str", "default": []},
            "boot_method": {"type": "str", "choices": list(_desired.BOOT_METHODS), "default": "override"},
            "softdep_drivers": {"type": "list", "elements": "str", "default": []},
            "force": {"type": "dict", "default": {}},
            "vfio_group_owner": {"type": "str", "default": ""},
            "vfio_group_group": {"type": "str", "default": ""},
            "vfio_group_mode": {"type": "str", "default": "0660"},
            "verify": {"type": "bool", "default": True},
            "verify_vmm": {"type": "str", "choices": list(_desired.VERIFY_VMM), "default": "auto"},
        },
        supports_check_mode=True,
    )
    p = module.params
    devices = [{k: v for k, v in d.items() if v is not None} for d in p["devices"]]
    run_module(
        module,
        _desired.run_request,
        kernel=make_kernel(module),
        devices=devices,
        state=p["state"],
        iommu=p["iommu"],
        iommu_pt=p["iommu_pt"],
        kernel_args=p["kernel_args"],
        boot_method=p["boot_method"],
        softdep_drivers=p["softdep_drivers"],
        force=p["force"],
        vfio_group_owner=p["vfio_group_owner"],
        vfio_group_group=p["vfio_group_group"],
        vfio_group_mode=p["vfio_group_mode"],
        verify=p["verify"],
        verify_vmm=p["verify_vmm"],
        live=True,
    )


if __name__ == "__main__":
    main()
