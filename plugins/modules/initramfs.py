#!/usr/bin/python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

__metaclass__ = type

DOCUMENTATION = r"""
---
module: initramfs
short_description: Put kernel modules into the initramfs, load them early, regenerate and verify the images
version_added: 0.1.0
description:
  - Makes kernel modules (typically C(vfio), C(vfio_iommu_type1) and C(vfio_pci)) part of the initramfs and loaded
    early, regenerates the image of every installed kernel when and only when something changed, and lists each
    image afterwards to prove the modules (and the files named in O(verify_files)) are inside.
  - "Images are listed by reading their cpio archives directly, as the kernel unpacks them (uncompressed early
    archives, then gzip, xz, lzma or bzip2 streams read by Python, zstd and lz4 streams through the C(zstd) and
    C(lz4) programs) - a few seconds instead of the generator's lister, a shell script that unpacks the whole
    image. An image this reader does not read (lzo, a squashfs root, anything unexpected) is listed by the
    generator's own lister named below; RV(images) says which one listed each image (C(listed_by))."
  - "Backends - V(initramfs-tools) (Debian/Ubuntu - the modules are listed in C(/etc/initramfs-tools/modules),
    inside this module's own block C(# BEGIN <name>) ... C(# END <name>) at the end of the file, keeping every
    other line; a module already listed elsewhere in the file is not added, and O(state=absent) removes only lines
    of the block, so lines that were there before stay; C(update-initramfs -u -k VERSION); C(lsinitramfs)), V(dracut) (RHEL/Fedora/SUSE -
    C(/etc/dracut.conf.d/<name>.conf) with C(force_drivers+=), so dracut also loads them early;
    C(dracut -f --kver VERSION IMAGE); C(lsinitrd)), V(mkinitcpio) (Arch - C(/etc/mkinitcpio.conf.d/<name>.conf)
    with C(MODULES+=()); C(mkinitcpio -P); C(lsinitcpio -l)). O(backend=auto) picks them in that order by the
    tool and its configuration directory being present; when none is found the module fails."
  - Module names are compared the way modprobe compares them - C(vfio-pci) and C(vfio_pci) are one module.
  - C(vfio_virqfd) is only needed by kernels before 6.2 (it became part of C(vfio) in 6.2). It is written to the
    configuration only when one of the target kernels is older than 6.2, and only expected in those kernels'
    images. Modules built into a kernel (C(modules.builtin)) count as present.
  - With O(regenerate=auto) an image is regenerated when the configuration changed, when O(files_changed=true),
    when it does not exist, or when listing it shows a wanted module or file missing.
  - "Proven on a real boot in the QEMU lab (reboot, the kernel log shows vfio loaded before the root file system
    was mounted, the generator's own lister shows the modules and O(files)) - V(initramfs-tools) on Debian 12,
    V(dracut) on Debian 13 (root on LVM). Proven only by unit tests with fake commands and fake C(/etc) trees -
    V(mkinitcpio)."
author:
  - hostdev.vfio contributors (!UNKNOWN)
options:
  modules:
    description:
      - Kernel modules to put into (or, with O(state=absent), take out of) the configuration.
      - Each is a module name (1-64 letters, digits, C(_) or C(-)), checked before anything is read or run.
    type: list
    elements: str
    required: true
  state:
    description:
      - V(present) adds the modules and verifies they are in every image. V(absent) removes them from the
        configuration this module manages and regenerates; the images are listed and returned but not checked,
        because a generator may still pull a module in for another reason (for example a C(softdep)).
    type: str
    default: present
    choices: [present, absent]
  regenerate:
    description:
      - V(auto) regenerates only what needs it (see the description), V(always) every target image, V(never)
        none (the configuration is still changed; the images are listed and what they lack is only a warning).
    type: str
    default: auto
    choices: [auto, always, never]
  files_changed:
    description:
      - Tell the module that a file the generator copies into the image (for example C(/etc/modprobe.d/vfio.conf))
        changed, so every image is regenerated even when the module list did not change - typically whether the
        task that wrote that file reported a change.
    type: bool
    default: false
  kernel_versions:
    description:
      - Kernel versions whose images are regenerated and verified. By default every version with a directory under
        C(/lib/modules) and a kernel image (C(/boot/vmlinuz-VERSION) or C(/lib/modules/VERSION/vmlinuz)).
      - Each is a kernel release as C(uname -r) prints it (a letter or digit, then letters, digits and
        C(. _ + ~ -), at most 128 characters), checked before any command runs - a path (C(../x)), a newline or a
        space is refused. Directory names under C(/lib/modules) that are not such a release are ignored.
    type: list
    elements: str
  files:
    description:
      - Files every image must carry - the C(modprobe.d) file and the udev rules that make binding early, such as
        C(/etc/modprobe.d/vfio.conf) and the rules file of M(hostdev.vfio.vfio_bind) (RV(hostdev.vfio.vfio_bind#module:rules_file)).
      - V(dracut) copies C(/etc/udev/rules.d) never and C(/etc/modprobe.d) only in hostonly mode, V(mkinitcpio)
        neither, so for them the files are listed in the drop-in (C(install_items+=), C(FILES+=())); with
        O(state=absent) they are taken out of it again. V(initramfs-tools) copies C(/etc/modprobe.d) and
        C(/etc/udev/rules.d) by its own hooks (a rule lands in C(lib/udev/rules.d) inside the image, which counts),
        so there they are only verified; any other path must be copied by a hook of your own.
      - Each is an absolute path of letters, digits and C(_ . + @ -) between slashes (it is written into a
        shell-sourced configuration), checked before anything is read or run. Verified like O(verify_files).
    type: list
    elements: str
    default: []
  verify_files:
    description:
      - Absolute paths that must be inside every image after the change, such as C(/etc/modprobe.d/vfio.conf).
        Only checked, never added to the configuration (see O(files)).
    type: list
    elements: path
    default: []
  backend:
    description:
      - The initramfs generator. V(auto) detects it.
    type: str
    default: auto
    choices: [auto, initramfs-tools, dracut, mkinitcpio]
  name:
    description:
      - Base name of the drop-in file of V(dracut) and V(mkinitcpio), and the name of the block in
        C(/etc/initramfs-tools/modules) of V(initramfs-tools).
    type: str
    default: hostdev-vfio
  root:
    description:
      - Root of the file system whose configuration is changed. Commands still run on the managed host.
    type: path
    default: /
attributes:
  check_mode:
    support: full
    description: Lists the current images and reports what would change and which images would be regenerated.
  diff_mode:
    support: full
    description: The configuration file before and after.
  platform:
    support: full
    platforms: posix
    description: Linux hosts with initramfs-tools, dracut or mkinitcpio.
notes:
  - Regenerating an image can take minutes. Nothing takes effect before the next boot.
seealso:
  - module: hostdev.vfio.kernel_cmdline
"""

EXAMPLES = r"""
- name: Load vfio early on every installed kernel, with its modprobe.d file and the udev rule of vfio_bind
  hostdev.vfio.initramfs:
    modules: [vfio, vfio_iommu_type1, vfio_pci, vfio_virqfd]
    files:
      - /etc/modprobe.d/vfio.conf
      - /etc/udev/rules.d/05-hostdev-vfio.rules
    files_changed: "{{ vfio_conf is changed }}"
  register: initramfs

- name: Show what was regenerated
  ansible.builtin.debug:
    msg: "{{ initramfs.regenerated }}"

- name: Take them out again
  hostdev.vfio.initramfs:
    modules: [vfio, vfio_iommu_type1, vfio_pci, vfio_virqfd]
    state: absent
"""

RETURN = r"""
backend:
  description: The backend used.
  returned: always
  type: str
  sample: initramfs-tools
config_file:
  description: The configuration file the module manages.
  returned: always
  type: str
  sample: /etc/initramfs-tools/modules
kernel_versions:
  description: The kernel versions considered.
  returned: always
  type: list
  elements: str
  sample: [6.1.0-26-amd64]
modules_by_kernel:
  description: The modules expected in each image (V(mkinitcpio) - by image name).
  returned: always
  type: dict
  sample: {"6.1.0-26-amd64": ["vfio", "vfio_iommu_type1", "vfio_pci"]}
regenerated:
  description: The kernel versions (V(mkinitcpio) - image names) whose images were (or in check mode would be)
    regenerated, and why in RV(reasons).
  returned: always
  type: list
  elements: str
  sample: [6.1.0-26-amd64]
reasons:
  description: Why each image in RV(regenerated) was regenerated.
  returned: always
  type: dict
  sample: {"6.1.0-26-amd64": "configuration changed"}
commands:
  description: The regeneration commands run (or that would run in check mode).
  returned: always
  type: list
  elements: list
  sample: [[/usr/sbin/update-initramfs, -u, -k, 6.1.0-26-amd64]]
images:
  description:
    - Per kernel version (V(mkinitcpio) - image name) the image path and what its listing showed - C(modules)
      (wanted modules found as files), C(builtin), C(files), C(missing_modules), C(missing_files), and
      C(listed_by) - V(cpio) (read directly) or the lister that listed it (V(lsinitramfs), V(lsinitrd),
      V(lsinitcpio)).
    - In check mode, and when the configuration changed, the contents shown are those before regeneration.
  returned: always
  type: dict
  sample: {"6.1.0-26-amd64": {"image": /boot/initrd.img-6.1.0-26-amd64, "exists": true,
           "modules": [vfio, vfio_iommu_type1, vfio_pci], "builtin": [], "files": [/etc/modprobe.d/vfio.conf],
           "missing_modules": [], "missing_files": [], "listed_by": cpio}}
"""


from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils._host import run_module
from ansible_collections.hostdev.vfio.plugins.module_utils._initramfs import run_request


def main():
    module = AnsibleModule(
        argument_spec=dict(
            modules=dict(type="list", elements="str", required=True),
            state=dict(type="str", default="present", choices=["present", "absent"]),
            regenerate=dict(type="str", default="auto", choices=["auto", "always", "never"]),
            files_changed=dict(type="bool", default=False),
            kernel_versions=dict(type="list", elements="str"),
            files=dict(type="list", elements="str", default=[]),
            verify_files=dict(type="list", elements="path", default=[]),
            backend=dict(type="str", default="auto", choices=["auto", "initramfs-tools", "dracut", "mkinitcpio"]),
            name=dict(type="str", default="hostdev-vfio"),
            root=dict(type="path", default="/"),
        ),
        supports_check_mode=True,
    )
    p = module.params
    run_module(
        module,
        run_request,
        modules=p["modules"],
        state=p["state"],
        regenerate=p["regenerate"],
        files_changed=p["files_changed"],
        kernel_versions=p["kernel_versions"],
        files=p["files"],
        verify_files=p["verify_files"],
        backend=p["backend"],
        name=p["name"],
        root=p["root"],
    )


if __name__ == "__main__":
    main()
