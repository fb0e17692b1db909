#!/usr/bin/env python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time one full IOMMU fact gathering (module logic, no Ansible start-up) on a synthetic host.

The tree has about 500 PCI functions in 480 IOMMU groups: 20 GPUs with an audio function each (20 groups of
two), 40 SR-IOV NICs with 10 VFs each, root ports, NVMe drives and chipset devices, with sparse group numbers.
The kernel's alias table is the size of Debian 12's (26 000 lines, 9 000 of them ``pci:`` patterns, 18 of those
vendor-wide), so ``host_modules`` costs what it costs on a real host. Run with the collection on PYTHONPATH
(``make bench-facts``). Prints the median and other figures; target: median under 50 ms.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

from ansible_collections.hostdev.vfio.plugins.module_utils._facts import gather
from ansible_collections.hostdev.vfio.plugins.module_utils._pciids import find_pci_ids
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import FakeHost


def build(root: Path) -> FakeHost:
    host = FakeHost(root)
    host.set_cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro intel_iommu=on iommu=pt")
    for u in range(4):
        host.add_unit(f"dmar{u}")
    group = 0

    def next_group():
        nonlocal group
        group += 1 if group % 7 else 3  # gaps, as on real machines
        return group

    host.add_device("0000:00:00.0", "8086:2020", "060000", group=next_group())
    bus = 1
    for i in range(20):  # GPUs + HDMI audio, one group each
        port = f"0000:00:{1 + i // 8:02x}.{i % 8}"
        host.add_device(port, "8086:2030", "060400", driver="pcieport", group=next_group(), header_type=1)
        g = next_group()
        host.add_device(f"0000:{bus:02x}:00.0", "10de:2204", "030000", driver="nvidia", group=g, parent=port)
        host.add_device(f"0000:{bus:02x}:00.1", "10de:1aef", "040300", driver="snd_hda_intel", group=g, parent=port)
        bus += 1
    for _nic in range(40):  # SR-IOV NICs: PF + 10 VFs, each in its own group
        pf = f"0000:{bus:02x}:00.0"
        host.add_device(pf, "8086:1572", "020000", driver="i40e", group=next_group(), sriov_totalvfs=64)
        for vf in range(10):
            host.add_device(
                f"0000:{bus:02x}:{2 + vf // 8:02x}.{vf % 8}",
                "8086:154c",
                "020000",
                driver="iavf",
                group=next_group(),
                physfn=pf,
                reset_method="flr",
            )
        bus += 1
    for _drive in range(18):  # NVMe drives
        host.add_device(f"0000:{bus:02x}:00.0", "144d:a808", "010802", driver="nvme", group=next_group())
        bus += 1
    chipset = next_group()
    for i, (ids, cls, drv) in enumerate(
        [("8086:a36d", "0c0330", "xhci_hcd"), ("8086:a352", "010601", "ahci"), ("8086:15bc", "020000", "e1000e")]
    ):
        host.add_device(f"0000:00:1f.{i}", ids, cls, driver=drv, group=chipset)
    host.set_module_aliases(RELEASE, synthetic_aliases())
    return host


RELEASE = "6.1.0-26-amd64"


def synthetic_aliases() -> str:
    """A modules.alias shaped like Debian 12's: per-device patterns over many vendors (Intel and NVIDIA among
    them, so the benchmark's functions hit full buckets), class patterns, vendor-wide ones, and non-PCI lines."""
    lines = []
    vendors = [0x8086, 0x10DE, 0x1002, 0x14E4, 0x15B3, 0x144D, *range(0x1000, 0x1000 + 200)]
    for i in range(8950):
        vendor = vendors[i % len(vendors)]
        lines.append(f"alias pci:v{vendor:08X}d{0x1000 + i:08X}sv*sd*bc*sc*i* mod{i % 1500}")
    for vendor in (0x8086, 0x10DE, 0x1002):
        lines.append(f"alias pci:v{vendor:08X}d*sv*sd*bc03sc*i* gpu{vendor:x}")
    lines.extend(f"alias pci:v*d*sv*sd*bc{c:02X}sc{s:02X}i*  classdrv{c}{s}" for c in range(6) for s in range(3))
    lines.extend(f"alias usb:v{i:04X}p*d*dc*dsc*dp*ic*isc*ip*in* usbmod{i % 700}" for i in range(17200))
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        host = build(Path(tmp))
        modules_root = str(Path(tmp) / "lib" / "modules")
        first = gather(str(host.sys), str(host.proc), str(host.dev), modules_root=modules_root)
        n_dev, n_grp = len(first["devices"]), len(first["groups"])
        for label, names in (("with pci.ids names", True), ("without names", False)):
            times = []
            for _run in range(args.runs):
                t0 = time.perf_counter()
                gather(str(host.sys), str(host.proc), str(host.dev), names=names, modules_root=modules_root)
                times.append((time.perf_counter() - t0) * 1000)
            print(
                f"facts {label:<20} functions={n_dev} groups={n_grp} runs={args.runs} "
                f"median={statistics.median(times):.1f} ms min={min(times):.1f} ms max={max(times):.1f} ms"
            )
        matched = sum(1 for d in first["devices"] if d["host_modules"])
        print(f"host_modules: {matched} of {n_dev} functions matched an alias pattern")
    print(f"pci.ids: {find_pci_ids() or 'not installed'}; target: median under 50 ms")


if __name__ == "__main__":
    main()
