# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Build fake sysfs (and procfs, /dev) trees that look like the kernel's: real symlinks, real file names."""

from __future__ import annotations

import os
import struct
from pathlib import Path


class FakeHost:
    """A fake host under one temp dir: ``sys/``, ``proc/`` and ``dev/``."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self.sys = self.root / "sys"
        self.proc = self.root / "proc"
        self.dev = self.root / "dev"
        for d in (
            self.sys / "bus/pci/devices",
            self.sys / "bus/pci/drivers",
            self.sys / "kernel/iommu_groups",
            self.sys / "class/iommu",
            self.sys / "module",
            self.proc,
            self.dev,
        ):
            d.mkdir(parents=True, exist_ok=True)
        self.set_cmdline("BOOT_IMAGE=/boot/vmlinuz root=/dev/vda1 ro quiet")
        (self.proc / "cpuinfo").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\ncpu family\t: 6\n")

    # -- kernel-wide state --------------------------------------------------------------------------------
    def set_cmdline(self, text: str) -> None:
        (self.proc / "cmdline").write_text(text + "\n")

    def set_cpu_vendor(self, vendor_id: str) -> None:
        (self.proc / "cpuinfo").write_text(f"processor\t: 0\nvendor_id\t: {vendor_id}\n")

    def add_unit(self, name: str) -> None:
        (self.sys / "class/iommu" / name).mkdir(parents=True, exist_ok=True)

    def add_acpi_table(self, name: str) -> None:
        tables = self.sys / "firmware/acpi/tables"
        tables.mkdir(parents=True, exist_ok=True)
        (tables / name).write_bytes(name.encode() + bytes(32))

    def load_module(self, name: str, **params: str) -> None:
        mod = self.sys / "module" / name
        (mod / "parameters").mkdir(parents=True, exist_ok=True)
        for key, value in params.items():
            (mod / "parameters" / key).write_text(value + "\n")

    def add_vfio_group_file(self, group: int) -> None:
        (self.dev / "vfio").mkdir(exist_ok=True)
        (self.dev / "vfio" / str(group)).write_text("")

    def group_dir(self, group: int, type_: str | None = "DMA") -> Path:
        gdir = self.sys / "kernel/iommu_groups" / str(group)
        (gdir / "devices").mkdir(parents=True, exist_ok=True)
        if type_ is not None and not (gdir / "type").exists():
            (gdir / "type").write_text(type_ + "\n")
        return gdir

    # -- devices ------------------------------------------------------------------------------------------
    def device_path(self, address: str) -> Path:
        return Path(os.path.realpath(self.sys / "bus/pci/devices" / address))

    def add_device(
        self,
        address: str,
        ids: str,
        cls: str,
        driver: str | None = None,
        group: int | None = None,
        parent: str | None = None,
        header_type: int = 0,
        subsystem: str = "1af4:1100",
        revision: str = "0x01",
        numa_node: int = -1,
        boot_vga: bool | None = None,
        reset_method: str | None = "flr bus",
        override: str | None = None,
        sriov_totalvfs: int | None = None,
        physfn: str | None = None,
        group_type: str | None = "DMA",
    ) -> Path:
        vendor, device = ids.split(":")
        svendor, sdevice = subsystem.split(":")
        base = self.device_path(parent) if parent else self.sys / "devices" / ("pci" + address[:4] + ":" + address[5:7])
        path = base / address
        path.mkdir(parents=True)
        files = {
            "vendor": f"0x{vendor}",
            "device": f"0x{device}",
            "subsystem_vendor": f"0x{svendor}",
            "subsystem_device": f"0x{sdevice}",
            "class": f"0x{cls}",
            "revision": revision,
            "numa_node": str(numa_node),
            "driver_override": override if override is not None else "(null)",
            "uevent": f"PCI_CLASS={cls.upper().lstrip('0') or '0'}\nPCI_ID={vendor.upper()}:{device.upper()}\n"
            f"PCI_SUBSYS_ID={svendor.upper()}:{sdevice.upper()}\nPCI_SLOT_NAME={address}\n"
            f"MODALIAS=pci:v0000{vendor.upper()}d0000{device.upper()}sv0000{svendor.upper()}sd0000{sdevice.upper()}"
            f"bc{cls[0:2].upper()}sc{cls[2:4].upper()}i{cls[4:6].upper()}",
        }
        if reset_method is not None:
            files["reset_method"] = reset_method
            files["reset"] = ""
        if boot_vga is not None:
            files["boot_vga"] = "1" if boot_vga else "0"
        if sriov_totalvfs is not None:
            files["sriov_totalvfs"] = str(sriov_totalvfs)
            files["sriov_numvfs"] = "0"
        for name, value in files.items():
            (path / name).write_text(value + "\n")
        config = bytearray(64)
        struct.pack_into("<HH", config, 0, int(vendor, 16), int(device, 16))
        config[0x0E] = header_type
        (path / "config").write_bytes(bytes(config))
        link = self.sys / "bus/pci/devices" / address
        link.symlink_to(os.path.relpath(path, link.parent))
        if driver:
            self.bind(address, driver)
        if group is not None:
            gdir = self.group_dir(group, group_type)
            (path / "iommu_group").symlink_to(os.path.relpath(gdir, path))
            (gdir / "devices" / address).symlink_to(os.path.relpath(path, gdir / "devices"))
        if physfn:
            pf = self.device_path(physfn)
            (path / "physfn").symlink_to(os.path.relpath(pf, path))
            index = len([n for n in os.listdir(pf) if n.startswith("virtfn")])
            (pf / f"virtfn{index}").symlink_to(os.path.relpath(path, pf))
            (pf / "sriov_numvfs").write_text(f"{index + 1}\n")
        return path

    def set_driver_module(self, driver: str, module: str) -> None:
        """The driver's ``module`` link, as a loadable module's driver has it (xhci_hcd -> module/xhci_pci)."""
        ddir = self.sys / "bus/pci/drivers" / driver
        ddir.mkdir(parents=True, exist_ok=True)
        mdir = self.sys / "module" / module
        mdir.mkdir(parents=True, exist_ok=True)
        (ddir / "module").symlink_to(os.path.relpath(mdir, ddir))

    def set_module_aliases(self, release: str, aliases: str, builtin: str = "") -> Path:
        """``/proc/sys/kernel/osrelease`` and ``lib/modules/<release>/modules.alias`` (+ builtin) under the root."""
        (self.proc / "sys" / "kernel").mkdir(parents=True, exist_ok=True)
        (self.proc / "sys" / "kernel" / "osrelease").write_text(release + "\n")
        mdir = self.root / "lib" / "modules" / release
        mdir.mkdir(parents=True, exist_ok=True)
        (mdir / "modules.alias").write_text(aliases)
        (mdir / "modules.builtin.alias").write_text(builtin)
        return self.root / "lib" / "modules"

    def bind(self, address: str, driver: str | None) -> None:
        path = self.device_path(address)
        link = path / "driver"
        if link.is_symlink():
            link.unlink()
        if driver:
            ddir = self.sys / "bus/pci/drivers" / driver
            ddir.mkdir(parents=True, exist_ok=True)
            link.symlink_to(os.path.relpath(ddir, path))


def gpu_host(root: Path) -> FakeHost:
    """A desktop-like Intel host: GPU + HDMI audio behind a root port, a chipset group, SR-IOV NIC, gaps."""
    h = FakeHost(root)
    h.set_cmdline("BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=UUID=1234 ro quiet intel_iommu=on iommu=pt")
    h.add_unit("dmar0")
    h.add_unit("dmar1")
    h.add_device("0000:00:00.0", "8086:3e0f", "060000", group=0)
    h.add_device("0000:00:01.0", "8086:1901", "060400", driver="pcieport", group=2, header_type=1)
    h.add_device(
        "0000:01:00.0",
        "10de:1b80",
        "030000",
        driver="nouveau",
        group=2,
        parent="0000:00:01.0",
        subsystem="1458:3702",
        revision="0xa1",
        boot_vga=False,
        reset_method="bus",
    )
    h.add_device(
        "0000:01:00.1",
        "10de:10f0",
        "040300",
        driver="snd_hda_intel",
        group=2,
        parent="0000:00:01.0",
        subsystem="1458:3702",
        revision="0xa1",
        reset_method="bus",
    )
    h.add_device("0000:00:02.0", "8086:3e92", "030000", driver="i915", group=7, boot_vga=True)
    # Chipset group: SATA, NIC and USB behind the PCH, with a PCH root port on pcieport.
    h.add_device("0000:00:14.0", "8086:a36d", "0c0330", driver="xhci_hcd", group=13)
    h.add_device("0000:00:17.0", "8086:a352", "010601", driver="ahci", group=13)
    h.add_device("0000:00:1c.0", "8086:a33c", "060400", driver="pcieport", group=13, header_type=1)
    h.add_device("0000:00:1f.6", "8086:15bc", "020000", driver="e1000e", group=13, numa_node=0)
    # SR-IOV PF with two VFs, each in its own group (sparse, large numbers).
    h.add_device("0000:03:00.0", "8086:1521", "020000", driver="igb", group=40, sriov_totalvfs=7, numa_node=0)
    h.add_device(
        "0000:03:10.0", "8086:1520", "020000", driver="igbvf", group=1000, physfn="0000:03:00.0", reset_method="flr"
    )
    h.add_device(
        "0000:03:10.4", "8086:1520", "020000", driver=None, group=65535, physfn="0000:03:00.0", reset_method="flr"
    )
    return h
