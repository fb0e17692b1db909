#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: vmm_probe
short_description: Ask the host's QEMU to take PCI functions on vfio-pci, the way a VM would
version_added: 0.1.0
description:
  - The kernel's group status says whether a group should be usable; the VMM is the final judge. This module starts
    the host's QEMU once per IOMMU group of the selected functions, paused (C(-S)) with no firmware run, no disk,
    no network and no display (C(-nodefaults -display none)), a small RAM (O(memory_mib)) and one
    C(-device vfio-pci,host=<address>) per selected function of the group - the way a VM takes them. Realizing the
    devices opens the VFIO group, sets up the type1 container and maps the guest RAM. QEMU is then asked over
    QMP on its stdio for C(query-pci), which lists each device (qdev id C(hostdevN)) with the ids QEMU read from
    it, and told to quit.
  - Per function the result says whether QEMU took it and, when not, QEMU's own error text (for example that the
    group is not viable).
  - B(Opening a VFIO device resets it.) So the module refuses, before anything starts, a function that is not on a
    VFIO driver (bind it with M(hostdev.vfio.vfio_bind) first) and a function whose C(/dev/vfio/<group>) another
    process holds open (a running guest). Probe devices that are set aside for VMs, not devices in use.
  - QEMU runs with its RLIMIT_MEMLOCK raised (for QEMU only) to the guest RAM plus 1 GiB, because the type1
    container pins all guest RAM; and under a wall-clock guard (O(timeout)) - a QEMU that gives no answer in time is
    killed and its group reported as hung.
  - Nothing persistent changes, so the result is never C(changed). In check mode QEMU is not started at all (not
    even for its version); the result carries the planned command line per group.
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  qemu:
    description:
      - Absolute path of the QEMU binary. By default C(qemu-system-x86_64) (then C(qemu-kvm)) is looked up in
        C(PATH) and the system binary directories, then C(/usr/libexec/qemu-kvm) (RHEL and its rebuilds).
      - When none is found the module fails and names the package to install for the host's distribution family,
        unless O(qemu_required=false).
    type: path
  qemu_required:
    description:
      - With V(false), a host without QEMU is not an error - the result has RV(qemu_missing) with the reason (and the
        package to install) and nothing is probed. For a fleet check that asks QEMU wherever it is installed, as
        on Proxmox VE and libvirt hosts.
    type: bool
    default: true
  skip_in_use:
    description:
      - With V(true), an IOMMU group that another process holds open (a running VM) is not probed and not
        refused - its functions are returned with C(skipped) naming the process. Opening a VFIO device resets
        it, so a device in use is never opened either way.
      - With V(false) (the default) such a function makes the module fail, starting nothing.
    type: bool
    default: false
  accel:
    description:
      - The accelerator QEMU uses. V(auto) takes V(kvm) when C(/dev/kvm) can be opened read-write, else V(tcg).
      - The guest never runs a single instruction (it stays paused), so V(tcg) answers the same question.
    type: str
    choices: [auto, kvm, tcg]
    default: auto
  memory_mib:
    description:
      - RAM of each probe VM in MiB (16 to 65536). All of it is mapped for DMA (pinned) while QEMU runs.
    type: int
    default: 64
  timeout:
    description:
      - Seconds each QEMU may take from its start to its exit (1 to 3600). A QEMU still running then is killed
        with SIGKILL and its group reported in RV(groups) with C(hung=true).
      - A guard against a hung QEMU (for example a device that does not come back from its reset), not a measure
        of speed; a probe takes about a second.
    type: int
    default: 60
extends_documentation_fragment:
  - hostdev.vfio.selectors
  - hostdev.vfio.selectors.host_roots
attributes:
  check_mode:
    support: full
    description: Selects and checks the functions and returns the QEMU command line per group; starts nothing.
  diff_mode:
    support: none
    description: Nothing persistent changes, so there is nothing to show as a diff.
  platform:
    support: full
    platforms: posix
    description: Linux x86_64 hosts with sysfs, VFIO and QEMU for x86_64 (the probe VM is a C(q35) machine).
notes:
  - Needs root (VFIO group nodes are root's, and the memlock limit may need raising).
  - When to use it - on a host before VMs are scheduled onto it (a fleet check after M(hostdev.vfio.vfio_bind)),
    and in the CI of a golden host image, where a real QEMU confirms what the kernel's viability rule predicts.
  - C(kernel_viable) in RV(groups) is the kernel's rule read from sysfs before the probe, to compare with QEMU's
    verdict.
seealso:
  - module: hostdev.vfio.vfio_bind
  - module: hostdev.vfio.iommu_facts
  - name: QEMU VFIO device assignment
    description: QEMU's documentation of vfio-pci and its C(host) property.
    link: https://www.qemu.org/docs/master/system/devices/vfio.html
  - name: Kernel VFIO documentation
    description: IOMMU groups, VFIO groups, containers and viability.
    link: https://docs.kernel.org/driver-api/vfio.html
"""

EXAMPLES = r"""
- name: Hand the NIC to vfio-pci
  hostdev.vfio.vfio_bind:
    address:
      - 00:04.0@8086:10d3

- name: Ask QEMU whether a VM can take it
  hostdev.vfio.vmm_probe:
    address:
      - 00:04.0@8086:10d3
  register: probe

- name: Stop before scheduling VMs when QEMU refused a device
  ansible.builtin.assert:
    that: probe.functions | rejectattr('taken') | list == []
    fail_msg: "{{ probe.functions | rejectattr('taken') | map(attribute='error') | list }}"

- name: Every function on vfio-pci, chosen with a JMESPath query over the IOMMU facts
  hostdev.vfio.vmm_probe:
    query: "devices[?driver=='vfio-pci'].address"

- name: Show the QEMU command lines without starting anything
  hostdev.vfio.vmm_probe:
    ids:
      - 10de:1b80
      - 10de:10f0
  check_mode: true
"""

RETURN = r"""
functions:
  description:
    - Per selected function, in selection order (address entries first, then the other matches in address order).
    - C(taken) is true when C(query-pci) listed the function's qdev id; null in check mode.
    - C(error) is QEMU's own error text when it refused (for the other functions of the same VM, the text says
      which function QEMU stopped on), or why the module refused the function before starting anything.
    - C(ids) are the ids read from sysfs, C(qemu_ids) those QEMU reported (null when not taken).
    - C(skipped) says why a function was not probed with O(skip_in_use=true) (its group is open by a process);
      null otherwise.
  returned: always
  type: list
  elements: dict
  sample:
    - {"address": "0000:01:01.0", "group": 8, "ids": "8086:100e", "driver": "vfio-pci", "qdev_id": "hostdev0",
       "taken": false, "qemu_ids": null, "skipped": null,
       "error": "-device vfio-pci,host=0000:01:01.0,id=hostdev0: vfio 0000:01:01.0: group 8 is not viable"}
    - {"address": "0000:00:04.0", "group": 4, "ids": "8086:10d3", "driver": "vfio-pci", "qdev_id": "hostdev0",
       "taken": true, "qemu_ids": "8086:10d3", "error": null, "skipped": null}
groups:
  description:
    - Per IOMMU group, one QEMU - the command line (planned in check mode), its exit status, the seconds from
      start to exit, QEMU's error, the end of its standard error, whether the timeout guard stopped it, and the
      kernel's viability rule read from sysfs before the start.
  returned: always
  type: list
  elements: dict
  sample:
    - {"id": 4, "functions": ["0000:00:04.0"], "kernel_viable": true, "rc": 0, "seconds": 0.81, "error": null,
       "stderr": null, "hung": false,
       "argv": ["/usr/bin/qemu-system-x86_64", "-name", "hostdev-vfio-probe-group4", "-machine", "q35", "-accel",
                "tcg", "-m", "64M", "-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio",
                "-device", "vfio-pci,host=0000:00:04.0,id=hostdev0"]}
qemu_missing:
  description:
    - With O(qemu_required=false) on a host without QEMU, why nothing was probed (names the package).
  returned: when QEMU is missing and O(qemu_required=false)
  type: str
  sample: "QEMU not found: no qemu-system-x86_64 or qemu-kvm in PATH ...; install the package qemu-system-x86 (apt)"
qemu:
  description:
    - The QEMU binary and its version (C(-version); null in check mode, where nothing is run), the accelerator,
      and the RLIMIT_MEMLOCK in bytes QEMU gets (C(memlock_limit); null when the current limit was enough).
  returned: success
  type: dict
  sample: {"binary": "/usr/bin/qemu-system-x86_64", "version": "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)",
           "accel": "tcg", "memory_mib": 64, "memlock_limit": 1140850688}
"""

from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils import _vmm
from ansible_collections.hostdev.vfio.plugins.module_utils._argspec import host_root_options, selector_options
from ansible_collections.hostdev.vfio.plugins.module_utils._host import run_module
from ansible_collections.hostdev.vfio.plugins.module_utils._safety import LIVE_ROOTS

SYSTEM_DIRS = _vmm.SYSTEM_DIRS
read_os_release = _vmm.read_os_release


def main():
    module = AnsibleModule(
        argument_spec={
            **selector_options(),
            **host_root_options(),
            "qemu": {"type": "path"},
            "accel": {"type": "str", "default": "auto", "choices": list(_vmm.ACCELS)},
            "memory_mib": {"type": "int", "default": _vmm.DEFAULT_MEMORY_MIB},
            "timeout": {"type": "int", "default": _vmm.DEFAULT_TIMEOUT},
            "qemu_required": {"type": "bool", "default": True},
            "skip_in_use": {"type": "bool", "default": False},
        },
        supports_check_mode=True,
    )
    p = module.params
    request = _vmm.Request(
        address=p["address"],
        ids=p["ids"],
        device_class=p["device_class"],
        query=p["query"],
        qemu=p["qemu"],
        accel=p["accel"],
        memory_mib=p["memory_mib"],
        timeout=p["timeout"],
        qemu_required=p["qemu_required"],
        skip_in_use=p["skip_in_use"],
    )
    run_module(
        module,
        _vmm.run_request,
        request=request,
        sysfs_root=p["sysfs_root"],
        proc_root=p["proc_root"],
        dev_root=p["dev_root"],
        live_roots=LIVE_ROOTS,
        system_dirs=SYSTEM_DIRS,
        os_release=read_os_release(),
    )


if __name__ == "__main__":
    main()
