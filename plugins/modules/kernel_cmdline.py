#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: kernel_cmdline
short_description: Add and remove kernel command line arguments through the host's boot loader tooling
version_added: 0.1.0
description:
  - Makes the given kernel arguments present (with their values, or as bare flags) and the given ones absent in
    the configuration the next boot uses, and regenerates the boot loader configuration when something changed.
  - The rest of the command line is never touched - no reordering of unrelated arguments, no GRUB timeout or
    other settings. A name listed in O(args) gets exactly that value - an existing occurrence is changed in
    place (later duplicates of the same name are dropped), a missing one is appended.
  - Parameter names are compared the way the kernel compares them - C(-) and C(_) are the same character, so
    C(vfio-pci.ids) and C(vfio_pci.ids) are one parameter.
  - Values of the IOMMU parameters it knows (C(intel_iommu), C(amd_iommu), C(iommu), C(iommu.passthrough),
    C(iommu.strict)) are checked against the values the kernel accepts. For example C(amd_iommu=on) is refused,
    because the kernel has no such value. Set O(allow_unknown_values=true) to pass such values through anyway.
  - Returns RV(reboot_required) by comparing the wanted arguments with the running kernel's C(/proc/cmdline), read
    as the kernel reads it - the last occurrence of a parameter wins, so C(intel_iommu=off ... intel_iommu=on)
    is C(intel_iommu=on).
  - "Backends, as detected by O(backend=auto) in this order: V(rpm-ostree) (C(/run/ostree-booted) exists and
    C(rpm-ostree) is installed; C(rpm-ostree kargs)), V(proxmox) (C(proxmox-boot-tool) is installed;
    C(/etc/kernel/cmdline) and C(proxmox-boot-tool refresh) when it manages ESPs booted by systemd-boot,
    C(/etc/default/grub) and C(proxmox-boot-tool refresh) for its GRUB mode, plain V(grub) when it manages no
    ESP), V(grubby) (C(grubby) is installed; C(grubby --update-kernel=ALL)), V(systemd-boot) (C(bootctl
    is-installed) succeeds and C(kernel-install) exists; C(/etc/kernel/cmdline), then C(kernel-install add) for
    every installed kernel), V(grub) (C(/etc/default/grub) and the family's generator exist - Debian/Ubuntu: a
    drop-in C(/etc/default/grub.d/<name>.cfg) that appends to C(GRUB_CMDLINE_LINUX_DEFAULT), then C(update-grub);
    SUSE (os-release C(ID)/C(ID_LIKE) naming suse, or C(grub2-mkconfig) alone): the same three lines as a marked
    block at the end of C(/etc/default/grub), then C(grub2-mkconfig -o /boot/grub2/grub.cfg); Arch (or
    C(grub-mkconfig) alone): the marked block, then C(grub-mkconfig -o /boot/grub/grub.cfg); removing the block
    gives back the file byte for byte).
    When none matches the module fails and lists what it looked for."
  - V(bootc) is never detected - it writes C(/usr/lib/bootc/kargs.d/<name>.toml) under O(root) for a bootc
    image build (for example a C(RUN) step of a Containerfile); bootc applies it when the image is installed or
    deployed. On a booted bootc host use V(rpm-ostree).
  - "Proven on a real boot in the QEMU lab (reboot, C(/proc/cmdline) read back) - V(grub) on Debian 12 (its own
    GRUB i386-pc, C(/etc/default/grub.d)), V(systemd-boot) on Debian 13 (UEFI, BLS entries rewritten by
    C(kernel-install)). Proven only by unit tests with fake commands and fake C(/etc) trees - V(grub) on SUSE and
    Arch, V(grubby), V(proxmox), V(rpm-ostree), V(bootc)."
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  args:
    description:
      - Kernel arguments that must be present, one per item, as C(name=value) or a bare C(name).
      - "Every item is checked before any file is read or any command runs. A name is letters, digits, C(_),
        C(.) and C(-). A value is letters, digits and C(_ . , : + / = @ % ^ ~ ! * -) - whitespace, quotes,
        backslashes, C($), backticks, C(;), C(|), control characters (newline, NUL) and values over 4096
        characters are refused, with the offending character named, because GRUB's or sh's quoting would not
        carry them unchanged."
      - "Repeatable parameters, which the kernel (or early userspace) acts on at every occurrence - C(console),
        C(iommu), C(pci), C(acpi_osi), C(memmap), C(hugepagesz), C(hugepages), C(crashkernel), C(reserve),
        C(video), C(netdev), C(ether), C(initcall_blacklist), C(modprobe.blacklist), C(ip) and dracut's
        C(rd.driver.*), C(rd.luks.uuid), C(rd.luks.name), C(rd.lvm.lv), C(rd.md.uuid) - are added when that exact
        occurrence is missing; their other occurrences stay (C(iommu=1 iommu=pt) keeps both). Every other
        parameter gets exactly the given value (the kernel uses the last occurrence)."
      - With V(grubby), which keeps one value per name, adding a repeatable parameter that already has another
        occurrence fails before changing anything (list that occurrence in O(remove) to replace it).
    type: list
    elements: str
    default: []
  remove:
    description:
      - Kernel arguments that must be absent. A bare C(name) removes every occurrence of the parameter whatever
        its value, C(name=value) only that value.
      - With V(grub), an argument set in C(/etc/default/grub) is removed from its C(GRUB_CMDLINE_LINUX) or
        C(GRUB_CMDLINE_LINUX_DEFAULT) line in place (every other byte of the file stays). The module fails,
        before changing anything, when the argument comes from another file in C(/etc/default/grub.d/).
      - "With V(grub), only a line whose value is a plain word list (one double-quoted string without
        backslashes or backticks, one single-quoted string, or one unquoted word) is ever edited. A line that sh
        reads differently from its text - escapes such as C(acpi_osi=\\\"!Windows 2012\\\"), command
        substitution, or a command after the value such as C(GRUB_CMDLINE_LINUX=a;b) - is left alone when it
        needs no edit (new arguments go to the drop-in); when it would need one the module fails before
        changing anything and names the line."
      - With V(bootc), only arguments of this module's own C(kargs.d) file can be removed.
    type: list
    elements: str
    default: []
  backend:
    description:
      - How the boot configuration is changed. V(auto) detects it (see the description for the order).
    type: str
    default: auto
    choices: [auto, grub, grubby, systemd-boot, proxmox, rpm-ostree, bootc]
  allow_unknown_values:
    description:
      - Write values of known IOMMU parameters that the kernel does not accept (such as C(amd_iommu=on)) instead
        of failing.
    type: bool
    default: false
  name:
    description:
      - Base name of the files this module owns - C(/etc/default/grub.d/<name>.cfg) (V(grub), V(proxmox) in GRUB
        mode) and C(/usr/lib/bootc/kargs.d/<name>.toml) (V(bootc)).
      - "GRUB drop-ins are read in name order after C(/etc/default/grub); a later drop-in that assigns
        C(GRUB_CMDLINE_LINUX_DEFAULT) without C($GRUB_CMDLINE_LINUX_DEFAULT) would hide these arguments, which the
        module then reports as a verification failure."
    type: str
    default: hostdev-vfio
  root:
    description:
      - Root of the file system whose boot configuration is changed. Commands still run on the managed host.
    type: path
    default: /
  proc_root:
    description:
      - Where procfs is mounted; C(cmdline) below it is the running kernel's command line.
    type: path
    default: /proc
  record:
    description:
      - Keep an undo record of the change under O(name), in C(undo-record.json) in O(state_dir) below O(root) (the
        record M(hostdev.vfio.undo_record) keeps files in). For each argument of O(args) the record notes what
        the configured command line had for that parameter before - nothing, that very argument, or the values it
        replaces - and for O(remove) every argument that was actually there. O(undo=true) later gives exactly that
        back.
      - The record is written before the change (a run stopped half way leaves it, and the next run completes
        the change), and an entry is never replaced by a later run (the first sight wins), so the second run
        does not take the first run's own argument for one the host already had.
    type: bool
    default: false
  undo:
    description:
      - Give back what the undo record of O(name) says this module changed - remove the arguments it added, set
        again the values it replaced, add back the arguments it removed, and leave the arguments that were
        already there - then drop those entries. Without a record nothing changes and RV(record_found) is false.
      - Cannot be combined with O(args), O(remove) or O(record). The recorded values are checked like O(args).
    type: bool
    default: false
  state_dir:
    description:
      - Directory of the undo record, below O(root).
    type: path
    default: /var/lib/hostdev-vfio
attributes:
  check_mode:
    support: full
    description: Computes the change, the commands and RV(reboot_required) and changes nothing.
  diff_mode:
    support: full
    description: The command line before and after, and every file the module writes.
  platform:
    support: full
    platforms: posix
    description: Linux hosts booted by GRUB, BLS/grubby, systemd-boot, Proxmox VE or rpm-ostree/bootc.
notes:
  - The module never reboots. Act on RV(reboot_required), for example with M(ansible.builtin.reboot).
  - CPU-vendor specific choices (C(intel_iommu=on) or not) belong to the caller, for example the passthrough role.
seealso:
  - module: hostdev.vfio.initramfs
  - module: hostdev.vfio.iommu_facts
  - name: The kernel's command-line parameters
    description: Every parameter and its values.
    link: https://docs.kernel.org/admin-guide/kernel-parameters.html
"""

EXAMPLES = r"""
- name: Turn on the Intel IOMMU in pass-through mode
  hostdev.vfio.kernel_cmdline:
    args:
      - intel_iommu=on
      - iommu=pt
  register: cmdline

- name: Reboot when the running kernel does not have them yet
  ansible.builtin.reboot:
    reboot_timeout: 600
  when: cmdline.reboot_required

- name: Bind devices to vfio-pci early and drop an old argument
  hostdev.vfio.kernel_cmdline:
    args:
      - vfio-pci.ids=10de:1b80,10de:10f0
    remove:
      - pcie_acs_override

- name: Kernel arguments of a bootc image (Containerfile RUN step)
  hostdev.vfio.kernel_cmdline:
    backend: bootc
    args:
      - intel_iommu=on
      - iommu=pt
"""

RETURN = r"""
backend:
  description: The backend that was used.
  returned: always
  type: str
  sample: grub
cmdline_before:
  description: The command line the next boot would have used before the change (for V(grub), the default entry of
    the generated C(grub.cfg); for V(grubby), the first entry; for V(systemd-boot) and V(proxmox),
    C(/etc/kernel/cmdline); for V(rpm-ostree), C(rpm-ostree kargs); for V(bootc), the module's own C(kargs.d) file).
  returned: always
  type: str
  sample: BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=UUID=0c1d ro quiet
cmdline_after:
  description: The same command line with the change applied.
  returned: always
  type: str
  sample: BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=UUID=0c1d ro quiet intel_iommu=on iommu=pt
running_cmdline:
  description: The running kernel's command line from C(/proc/cmdline).
  returned: always
  type: str
  sample: BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=UUID=0c1d ro quiet
reboot_required:
  description: Whether the running kernel lacks a wanted argument or still has one to remove.
  returned: always
  type: bool
  sample: true
missing:
  description: Wanted arguments the running kernel does not have.
  returned: always
  type: list
  elements: str
  sample: [iommu=pt]
unwanted:
  description: Arguments to remove that the running kernel still has.
  returned: always
  type: list
  elements: str
  sample: []
files:
  description: Files written or removed (or that would be, in check mode).
  returned: always
  type: list
  elements: str
  sample: [/etc/default/grub.d/hostdev-vfio.cfg]
commands:
  description: Commands run (or that would be run, in check mode), as argument lists.
  returned: always
  type: list
  elements: list
  sample: [[/usr/sbin/update-grub]]
entries:
  description: For V(grubby), every boot entry with its arguments before and after.
  returned: always
  type: list
  elements: dict
  sample: [{"kernel": "/boot/vmlinuz-6.8.5", "before": "ro rhgb quiet", "after": "ro rhgb quiet iommu=pt"}]
notes:
  description: Remarks on what the backend found.
  returned: always
  type: list
  elements: str
  sample: []
record_file:
  description: The undo record's path (with O(root)).
  returned: when O(record) or O(undo) is true
  type: str
  sample: /var/lib/hostdev-vfio/undo-record.json
record:
  description: The record's entries for O(name) after this call (before it, for O(undo)) - C(arg) with C(had), the
    parameter's occurrences before, or C(removed).
  returned: when O(record) is true, or O(undo) found a record
  type: list
  elements: dict
  sample: [{"arg": "intel_iommu=on", "had": []}, {"arg": "iommu=pt", "had": ["iommu=pt"]}]
record_found:
  description: Whether O(undo) found a record for O(name).
  returned: when O(undo) is true
  type: bool
  sample: true
reverted:
  description: The entries O(undo) gave back.
  returned: when O(undo) found a record
  type: list
  elements: dict
  sample: [{"arg": "intel_iommu=on", "had": []}]
"""


from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils import _record
from ansible_collections.hostdev.vfio.plugins.module_utils._host import run_module
from ansible_collections.hostdev.vfio.plugins.module_utils._kernel_cmdline import run_request


def main():
    module = AnsibleModule(
        argument_spec=dict(
            args=dict(type="list", elements="str", default=[]),
            remove=dict(type="list", elements="str", default=[]),
            backend=dict(
                type="str",
                default="auto",
                choices=["auto", "grub", "grubby", "systemd-boot", "proxmox", "rpm-ostree", "bootc"],
            ),
            allow_unknown_values=dict(type="bool", default=False),
            name=dict(type="str", default="hostdev-vfio"),
            root=dict(type="path", default="/"),
            proc_root=dict(type="path", default="/proc"),
            record=dict(type="bool", default=False),
            undo=dict(type="bool", default=False),
            state_dir=dict(type="path", default=_record.DEFAULT_STATE_DIR),
        ),
        mutually_exclusive=[("undo", "args"), ("undo", "remove"), ("undo", "record")],
        supports_check_mode=True,
    )
    p = module.params
    run_module(
        module,
        run_request,
        args_in=p["args"],
        remove_in=p["remove"],
        backend=p["backend"],
        allow_unknown_values=p["allow_unknown_values"],
        name=p["name"],
        root=p["root"],
        proc_root=p["proc_root"],
        want_record=p["record"],
        want_undo=p["undo"],
        state_dir=p["state_dir"],
    )


if __name__ == "__main__":
    main()
