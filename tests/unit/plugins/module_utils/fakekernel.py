# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fake kernel over a FakeHost tree: the PCI core's bind/unbind rules, module loading, refusals; plus helpers
that add block devices, network interfaces, mounts, routes and open files for the safety checks."""

from __future__ import annotations

import os
from pathlib import Path

from ansible_collections.hostdev.vfio.plugins.module_utils._kernel_ops import KernelError, SysfsKernel
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import is_vfio_driver, read_snapshot

# module name -> the PCI driver it registers (when they differ)
MODULE_DRIVERS = {"vfio_pci": "vfio-pci", "pci_stub": "pci-stub", "xhci_pci": "xhci_hcd"}


class FakeKernel(SysfsKernel):
    """The PCI core as far as vfio_bind cares.

    - ``drivers_probe`` binds an unbound device to a registered driver that matches it: the override's driver when
      one is set (and only that one), else the first driver that claims the device's vendor:device;
    - vfio-pci refuses a device without an IOMMU group; a driver also refuses any (address, driver) pair or
      address in ``refuse`` (the probe write still succeeds, as in the real kernel);
    - loading a module registers its driver and probes every unbound device, as the real module init does;
    - binding the first vfio driver of a group creates /dev/vfio/<group>; unbinding the last removes it.
    """

    def __init__(self, host, loadable=(), claims=None, refuse=(), fail_load=()):
        super().__init__(str(host.sys), str(host.dev), run_command=None)
        self.host = host
        self.loadable = set(loadable)
        self.refuse = set(refuse)
        self.fail_load = set(fail_load)
        self.claims = {}
        for dev in read_snapshot(str(host.sys)).devices.values():
            if dev.driver:
                self.claims.setdefault(dev.driver, set()).add(dev.ids)
        for driver, ids in (claims or {}).items():
            self.claims.setdefault(driver, set()).update(ids)
        self.log = []  # every kernel operation, in order

    # -- helpers ------------------------------------------------------------------------------------------
    def _group(self, address):
        return read_snapshot(self.sysfs_root).devices[address].iommu_group

    def registered(self):
        return sorted(os.listdir(os.path.join(self.sysfs_root, "bus", "pci", "drivers")))

    def register(self, driver, module=None):
        ddir = self.host.sys / "bus/pci/drivers" / driver
        ddir.mkdir(parents=True, exist_ok=True)
        if module:
            mdir = self.host.sys / "module" / module
            mdir.mkdir(parents=True, exist_ok=True)
            link = ddir / "module"
            if not link.is_symlink():
                link.symlink_to(os.path.relpath(mdir, ddir))

    def _accepts(self, address, driver):
        if address in self.refuse or (address, driver) in self.refuse:
            return False
        return not (is_vfio_driver(driver) and self._group(address) is None)

    def _matches(self, address, driver):
        override = self.override(address)
        if override is not None:
            return override == driver
        dev = read_snapshot(self.sysfs_root).devices[address]
        return dev.ids in self.claims.get(driver, ())

    def _bind(self, address, driver):
        self.host.bind(address, driver)
        group = self._group(address)
        if is_vfio_driver(driver) and group is not None:
            self.host.add_vfio_group_file(group)

    def _try_bind(self, address, drivers):
        for driver in drivers:
            if self._matches(address, driver):
                if self._accepts(address, driver):
                    self._bind(address, driver)
                return

    # -- the interface ------------------------------------------------------------------------------------
    def load_module(self, name):
        self.log.append(("modprobe", name))
        key = name.replace("-", "_")
        if name in self.fail_load or key not in {m.replace("-", "_") for m in self.loadable}:
            raise KernelError(f"modprobe {name} failed: modprobe: FATAL: Module {name} not found")
        driver = MODULE_DRIVERS.get(key, name)
        self.register(driver, module=key)
        for address in sorted(os.listdir(os.path.join(self.sysfs_root, "bus", "pci", "devices"))):
            if self.driver(address) is None:
                self._try_bind(address, [driver])

    def set_override(self, address, driver):
        self.log.append(("override", address, driver))
        (self.host.device_path(address) / "driver_override").write_text((driver or "(null)") + "\n")

    def unbind(self, address):
        current = self.driver(address)
        if current is None:
            return
        self.log.append(("unbind", address, current))
        group = self._group(address)
        self.host.bind(address, None)
        if is_vfio_driver(current) and group is not None:
            members = read_snapshot(self.sysfs_root).groups[group].devices
            if not any(is_vfio_driver(self.driver(m)) for m in members):
                Path(self.dev_root, "vfio", str(group)).unlink(missing_ok=True)

    def probe(self, address):
        self.log.append(("probe", address))
        if self.driver(address) is None:
            self._try_bind(address, self.registered())

    def wait_vfio_group_file(self, group, timeout=0.0):
        return self.vfio_group_file(group)

    def writes(self):
        return [entry for entry in self.log if entry[0] != "modprobe"]


# ---------------------------------------------------------------------------------------------------------
# safety-check fixtures


def add_block(host, address, name, majmin, partitions=None, subdir="virtio1"):
    """A disk under a PCI function, with partitions {name: majmin}: /sys/class/block, /sys/dev/block links."""
    disk = host.device_path(address) / subdir / "block" / name
    disk.mkdir(parents=True)
    (disk / "dev").write_text(majmin + "\n")
    (disk / "slaves").mkdir()
    (disk / "holders").mkdir()
    entries = [(name, disk, majmin)]
    for part, pmm in (partitions or {}).items():
        pdir = disk / part
        pdir.mkdir()
        (pdir / "dev").write_text(pmm + "\n")
        entries.append((part, pdir, pmm))
    for bname, path, mm in entries:
        _link(host.sys / "class/block" / bname, path)
        _link(host.sys / "dev/block" / mm, path)
    return disk


def add_virtual_block(host, name, majmin, slaves, dm_name=None, dm_uuid=None, md=False):
    """A dm/md/bcache device with ``slaves`` (block names that exist already); ``dm/name``, ``dm/uuid`` for dm."""
    path = host.sys / "devices/virtual/block" / name
    (path / "slaves").mkdir(parents=True)
    (path / "dev").write_text(majmin + "\n")
    if dm_name is not None:
        (path / "dm").mkdir()
        (path / "dm/name").write_text(dm_name + "\n")
        (path / "dm/uuid").write_text((dm_uuid or "") + "\n")
    if md:
        (path / "md").mkdir()
    for slave in slaves:
        _link(path / "slaves" / slave, Path(os.path.realpath(host.sys / "class/block" / slave)))
    _link(host.sys / "class/block" / name, path)
    _link(host.sys / "dev/block" / majmin, path)
    return path


def add_netdev(host, name, address=None, lower=(), brif=(), bond_slaves=()):
    """A network interface (under a PCI function when ``address`` is given, virtual otherwise)."""
    if address:
        path = host.device_path(address) / "net" / name
        path.mkdir(parents=True)
        _link(path / "device", host.device_path(address))
    else:
        path = host.sys / "devices/virtual/net" / name
        path.mkdir(parents=True)
    for low in lower:
        _link(path / f"lower_{low}", Path(os.path.realpath(host.sys / "class/net" / low)))
    if brif:
        (path / "brif").mkdir()
        for port in brif:
            _link(path / "brif" / port, Path(os.path.realpath(host.sys / "class/net" / port)))
    if bond_slaves:
        (path / "bonding").mkdir()
        (path / "bonding/slaves").write_text(" ".join(bond_slaves) + "\n")
    _link(host.sys / "class/net" / name, path)
    return path


def set_mounts(host, entries):
    """entries: (majmin, mountpoint, fstype, source)."""
    lines = [
        f"{20 + i} 1 {mm} / {mp} rw,relatime shared:1 - {fs} {src} rw" for i, (mm, mp, fs, src) in enumerate(entries)
    ]
    (host.proc / "self").mkdir(exist_ok=True)
    (host.proc / "self/mountinfo").write_text("\n".join(lines) + "\n")


def set_swaps(host, entries):
    text = "Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
    text += "".join(f"{name}\t{kind}\t\t1048572\t\t0\t\t-2\n" for name, kind in entries)
    (host.proc / "swaps").write_text(text)


def _hex_le(ip):
    a, b, c, d = (int(x) for x in ip.split("."))
    return f"{d:02X}{c:02X}{b:02X}{a:02X}"


def set_routes(host, routes):
    """routes: (iface, destination, mask, gateway) IPv4, as in /proc/net/route."""
    (host.proc / "net").mkdir(exist_ok=True)
    head = "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
    rows = "".join(
        f"{i}\t{_hex_le(d)}\t{_hex_le(g)}\t{'0003' if g != '0.0.0.0' else '0001'}\t0\t0\t100\t{_hex_le(m)}\t0\t0\t0\n"
        for i, d, m, g in routes
    )
    (host.proc / "net/route").write_text(head + rows)


def set_routes_v6(host, routes):
    """routes: (iface, dest hex 32, prefixlen)."""
    (host.proc / "net").mkdir(exist_ok=True)
    rows = "".join(
        f"{d} {p:02x} {'0' * 32} 00 {'0' * 32} 00000400 00000001 00000000 00000001 {i}\n" for i, d, p in routes
    )
    (host.proc / "net/ipv6_route").write_text(rows)


def set_zfs_pools(host, pools):
    """Imported ZFS pools as /proc/spl/kstat/zfs/<pool>/state shows them (plus the module-wide stat files)."""
    base = host.proc / "spl/kstat/zfs"
    base.mkdir(parents=True, exist_ok=True)
    (base / "arcstats").write_text("")
    for pool in pools:
        (base / pool).mkdir()
        (base / pool / "state").write_text("ONLINE\n")


def add_vfio_cdev(host, address, name="vfio0", majmin="511:0"):
    """The VFIO device cdev of a function: <device>/vfio-dev/vfioN/dev (kernels with iommufd support)."""
    path = host.device_path(address) / "vfio-dev" / name
    path.mkdir(parents=True)
    (path / "dev").write_text(majmin + "\n")


def add_open_fd(host, pid, target, comm="qemu-system-x86"):
    fd = host.proc / str(pid) / "fd"
    fd.mkdir(parents=True, exist_ok=True)
    (host.proc / str(pid) / "comm").write_text(comm + "\n")
    n = len(os.listdir(fd)) + 3
    (fd / str(n)).symlink_to(target)


def add_fbcon(host, address, fb="fb0", bound=True):
    path = host.sys / "devices" / "fbdev" / fb
    path.mkdir(parents=True)
    _link(path / "device", host.device_path(address))
    _link(host.sys / "class/graphics" / fb, path)
    vt = host.sys / "class/vtconsole/vtcon1"
    vt.mkdir(parents=True, exist_ok=True)
    (vt / "name").write_text("(M) frame buffer device\n")
    (vt / "bind").write_text(("1" if bound else "0") + "\n")


def _link(link, target):
    link = Path(link)
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))


def lab_host(root):
    """The QEMU lab guest: boot VGA, virtio mgmt NIC and root disk, e1000e, HDA, a bridge with two e1000."""
    from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import FakeHost

    h = FakeHost(root)
    h.add_unit("dmar0")
    h.add_device("0000:00:00.0", "8086:29c0", "060000", group=0)
    h.add_device("0000:00:01.0", "1234:1111", "030000", driver="bochs-drm", group=1, boot_vga=True)
    h.add_device("0000:00:02.0", "1af4:1000", "020000", driver="virtio-pci", group=2)
    h.add_device("0000:00:03.0", "1af4:1001", "010000", driver="virtio-pci", group=3)
    h.add_device("0000:00:04.0", "8086:10d3", "020000", driver="e1000e", group=4)
    h.add_device("0000:00:05.0", "8086:293e", "040300", driver="snd_hda_intel", group=5)
    h.add_device("0000:00:08.0", "1b36:000e", "060400", driver=None, group=8, header_type=1)
    h.add_device("0000:01:01.0", "8086:100e", "020000", driver="e1000", group=8, parent="0000:00:08.0")
    h.add_device("0000:01:02.0", "8086:100e", "020000", driver="e1000", group=8, parent="0000:00:08.0")
    add_block(h, "0000:00:03.0", "vda", "254:0", {"vda1": "254:1", "vda2": "254:2"})
    add_netdev(h, "eth0", "0000:00:02.0")
    add_netdev(h, "lo")
    set_mounts(
        h,
        [
            ("0:22", "/proc", "proc", "proc"),
            ("254:1", "/", "ext4", "/dev/vda1"),
            ("0:5", "/dev", "devtmpfs", "udev"),
        ],
    )
    set_swaps(h, [])
    set_routes(h, [("eth0", "0.0.0.0", "0.0.0.0", "10.0.2.2"), ("eth0", "10.0.2.0", "255.255.255.0", "0.0.0.0")])
    return h


LAB_LOADABLE = ("vfio-pci", "pci-stub", "e1000e", "e1000")
