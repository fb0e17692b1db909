# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fake hosts with everything iommu_facts reads: the trees that captures, the report's picture and the report
benchmark are tested on. Each builder takes a root directory and returns the FakeHost."""

from __future__ import annotations

from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import (
    add_block,
    add_fbcon,
    add_netdev,
    add_virtual_block,
    lab_host,
    set_mounts,
    set_routes,
    set_routes_v6,
    set_swaps,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import gpu_host

PCI_IDS = """\
# test database
10de  NVIDIA Corporation
\t1b80  GP104 [GeForce GTX 1080]
\t10f0  GP104 High Definition Audio Controller
8086  Intel Corporation
\t10d3  82574L Gigabit Network Connection
\t100e  82540EM Gigabit Ethernet Controller

C 02  Network controller
\t00  Ethernet controller
C 03  Display controller
\t00  VGA compatible controller
C 06  Bridge
"""

ALIASES = """\
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v00008086d0000100Esv*sd*bc*sc*i* e1000
alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau
alias pci:v*d*sv*sd*bc04sc03i* snd_hda_intel
alias pci:v00008086d00001521sv*sd*bc*sc*i* igb
"""
BUILTIN = "alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci\n"


def _common(host, release: str) -> None:
    host.set_module_aliases(release, ALIASES, BUILTIN)
    (host.root / "pci.ids").write_text(PCI_IDS)


def gpu(root):
    """fakesysfs.gpu_host with vfio loaded, a VF on vfio-pci (/dev/vfio), driver modules and alias tables."""
    h = gpu_host(root)
    _common(h, "6.1.0-26-amd64")
    h.add_acpi_table("DMAR")
    h.load_module("vfio", enable_unsafe_noiommu_mode="N")
    h.load_module("vfio_pci")
    h.set_driver_module("xhci_hcd", "xhci_pci")
    h.set_driver_module("e1000e", "e1000e")
    h.bind("0000:03:10.4", "vfio-pci")
    h.add_vfio_group_file(65535)
    (h.dev / "vfio" / "vfio").write_text("")
    add_block(h, "0000:00:17.0", "sda", "8:0", {"sda1": "8:1", "sda2": "8:2"}, subdir="ata1/host0/target0:0:0/0:0:0:0")
    add_netdev(h, "eno1", "0000:00:1f.6")
    add_netdev(h, "enp3s0", "0000:03:00.0")
    add_netdev(h, "br0", brif=("eno1",))
    add_fbcon(h, "0000:00:02.0")
    set_mounts(h, [("8:1", "/", "ext4", "/dev/sda1"), ("0:31", "/home", "btrfs", "/dev/mapper/vg-home")])
    add_virtual_block(h, "dm-0", "253:0", ["sda2"])
    (h.dev / "mapper").mkdir()
    (h.dev / "dm-0").write_text("")
    (h.dev / "mapper" / "vg-home").symlink_to("../dm-0")
    (h.dev / "sdb3").write_text("")
    set_swaps(h, [("/dev/sdb3", "partition"), ("/swapfile", "file")])
    set_routes(h, [("br0", "0.0.0.0", "0.0.0.0", "192.168.1.1"), ("br0", "192.168.1.0", "255.255.255.0", "0.0.0.0")])
    set_routes_v6(h, [("enp3s0", "fd00" + "0" * 28, 64)])
    return h


def lab(root):
    """fakekernel.lab_host (the QEMU lab guest) with alias tables and pci.ids."""
    h = lab_host(root)
    _common(h, "6.1.0-40-amd64")
    h.set_cmdline("BOOT_IMAGE=/boot/vmlinuz root=/dev/vda1 ro intel_iommu=on")
    h.set_driver_module("e1000e", "e1000e")
    return h


FIXTURES = {"gpu": gpu, "lab": lab}
SSH_CONNECTION = "192.168.1.50 51234 192.168.1.10 22"


def roots(host) -> dict:
    """The arguments of _facts.gather and _capture.collect that read a fixture host: its roots, its pci.ids and the
    SSH session the network check sees."""
    return {
        "sysfs_root": str(host.sys),
        "proc_root": str(host.proc),
        "dev_root": str(host.dev),
        "modules_root": str(host.root / "lib" / "modules"),
        "pci_ids_path": str(host.root / "pci.ids"),
        "ssh_connection": SSH_CONNECTION,
    }
