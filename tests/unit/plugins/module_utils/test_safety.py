# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import errno
import os

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _safety
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import read_snapshot
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import (
    add_block,
    add_fbcon,
    add_netdev,
    add_open_fd,
    add_vfio_cdev,
    add_virtual_block,
    set_mounts,
    set_routes,
    set_routes_v6,
    set_swaps,
    set_zfs_pools,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import FakeHost


@pytest.fixture
def host(tmp_path):
    h = FakeHost(tmp_path)
    h.add_device("0000:00:1c.0", "8086:a33c", "060400", driver="pcieport", group=1, header_type=1)
    h.add_device("0000:02:00.0", "144d:a808", "010802", driver="nvme", group=1, parent="0000:00:1c.0")
    h.add_device("0000:00:17.0", "8086:a352", "010601", driver="ahci", group=2)
    h.add_device("0000:00:1f.6", "8086:15bc", "020000", driver="e1000e", group=3)
    h.add_device("0000:03:00.0", "8086:1521", "020000", driver="igb", group=4)
    h.add_device("0000:03:00.1", "8086:1521", "020000", driver="igb", group=5)
    h.add_device("0000:04:00.0", "10de:1b80", "030000", driver="nouveau", group=6, boot_vga=False)
    h.add_device("0000:00:02.0", "8086:3e92", "030000", driver="i915", group=7, boot_vga=True)
    for name in ("proc", "self"):
        (h.proc / name).mkdir(exist_ok=True)
    set_mounts(h, [])
    set_swaps(h, [])
    set_routes(h, [])
    return h


def storage(h):
    return _safety.check_storage(str(h.sys), str(h.proc), str(h.dev))


def test_root_on_lvm_over_nvme_protects_controller_and_bridge(host):
    add_block(
        host, "0000:02:00.0", "nvme0n1", "259:0", {"nvme0n1p1": "259:1", "nvme0n1p2": "259:2"}, subdir="nvme/nvme0"
    )
    add_virtual_block(host, "dm-0", "253:0", ["nvme0n1p2"])
    set_mounts(host, [("253:0", "/", "ext4", "/dev/mapper/vg-root"), ("259:1", "/boot/efi", "vfat", "/dev/nvme0n1p1")])
    out = storage(host)
    assert set(out) == {"0000:00:1c.0", "0000:02:00.0"}
    assert out["0000:02:00.0"] == [
        "backs / (/dev/mapper/vg-root mounted there)",
        "backs /boot/efi (/dev/nvme0n1p1 mounted there)",
    ]


def test_md_raid_over_two_controllers_and_swap_partition(host):
    add_block(
        host, "0000:00:17.0", "sda", "8:0", {"sda1": "8:1", "sda2": "8:2"}, subdir="ata1/host0/target0:0:0/0:0:0:0"
    )
    add_block(host, "0000:02:00.0", "nvme0n1", "259:0", {"nvme0n1p1": "259:1"}, subdir="nvme/nvme0")
    add_virtual_block(host, "md0", "9:0", ["sda1", "nvme0n1p1"])
    set_mounts(host, [("9:0", "/srv", "xfs", "/dev/md0")])
    set_swaps(host, [("/dev/sda2", "partition"), ("/swapfile", "file")])
    out = storage(host)
    assert out["0000:00:17.0"] == ["backs /srv (/dev/md0 mounted there)", "backs active swap (/dev/sda2)"]
    assert out["0000:02:00.0"] == ["backs /srv (/dev/md0 mounted there)"]


def test_btrfs_anonymous_device_resolved_through_source(host):
    add_block(host, "0000:00:17.0", "sda", "8:0", {"sda1": "8:1"}, subdir="ata1/host0")
    set_mounts(host, [("0:31", "/", "btrfs", "/dev/sda1"), ("0:22", "/proc", "proc", "proc")])
    assert storage(host) == {"0000:00:17.0": ["backs / (/dev/sda1 mounted there)"]}


def test_unmounted_disk_is_not_protected(host):
    add_block(host, "0000:02:00.0", "nvme0n1", "259:0", {"nvme0n1p1": "259:1"}, subdir="nvme/nvme0")
    set_mounts(host, [("0:22", "/proc", "proc", "proc")])
    assert storage(host) == {}


def test_default_route_through_bond_of_two_ports(host):
    add_netdev(host, "eno1", "0000:03:00.0")
    add_netdev(host, "eno2", "0000:03:00.1")
    add_netdev(host, "bond0", lower=["eno1", "eno2"], bond_slaves=["eno1", "eno2"])
    add_netdev(host, "vlan10", lower=["bond0"])
    add_netdev(host, "br0", brif=["vlan10"])
    add_netdev(host, "enp0s31f6", "0000:00:1f.6")
    set_routes(
        host, [("br0", "0.0.0.0", "0.0.0.0", "192.0.2.1"), ("enp0s31f6", "198.51.100.0", "255.255.255.0", "0.0.0.0")]
    )
    out = _safety.check_network(str(host.sys), str(host.proc), None)
    assert set(out) == {"0000:03:00.0", "0000:03:00.1"}
    assert out["0000:03:00.1"] == ["is NIC eno2 as a lower device of br0, which carries the default route"]


def test_route_to_ssh_client_longest_prefix(host):
    add_netdev(host, "eno1", "0000:03:00.0")
    add_netdev(host, "enp0s31f6", "0000:00:1f.6")
    set_routes(
        host,
        [
            ("eno1", "0.0.0.0", "0.0.0.0", "192.0.2.1"),
            ("enp0s31f6", "198.51.100.0", "255.255.255.0", "0.0.0.0"),
            ("eno1", "198.51.0.0", "255.255.0.0", "192.0.2.1"),
        ],
    )
    out = _safety.check_network(str(host.sys), str(host.proc), "198.51.100.7 51234 198.51.100.2 22")
    assert out["0000:00:1f.6"] == [
        "is NIC enp0s31f6, which carries the route to this SSH session's client address 198.51.100.7",
        "is NIC enp0s31f6, which carries the route to this SSH session's server address 198.51.100.2",
    ]
    assert out["0000:03:00.0"] == ["is NIC eno1, which carries the default route"]


def test_ipv6_default_and_ssh_route(host):
    add_netdev(host, "eno1", "0000:03:00.0")
    add_netdev(host, "enp0s31f6", "0000:00:1f.6")
    set_routes_v6(
        host, [("eno1", "0" * 32, 0), ("enp0s31f6", "20010db8000000010000000000000000", 64), ("lo", "0" * 32, 0)]
    )
    out = _safety.check_network(str(host.sys), str(host.proc), "2001:db8:0:1::5 40000 2001:db8:0:1::1 22")
    assert out["0000:03:00.0"] == ["is NIC eno1, which carries the default route"]
    assert "client address 2001:db8:0:1::5" in out["0000:00:1f.6"][0]


def test_console_boot_vga_and_bound_fbcon(host):
    assert _safety.check_console(str(host.sys)) == {"0000:00:02.0": ["is the boot VGA device (boot_vga=1)"]}
    add_fbcon(host, "0000:04:00.0", bound=False)
    assert "0000:04:00.0" not in _safety.check_console(str(host.sys))
    (host.sys / "class/vtconsole/vtcon1/bind").write_text("1\n")
    assert _safety.check_console(str(host.sys))["0000:04:00.0"] == [
        "drives fb0, and the framebuffer console (vtcon1) is bound"
    ]


def test_vfio_in_use_protects_whole_group(host):
    add_open_fd(host, 100, "/dev/vfio/1")
    add_open_fd(host, 100, "/dev/vfio/vfio")
    add_open_fd(host, 200, "/dev/null", comm="bash")
    snap = read_snapshot(str(host.sys))
    out = _safety.check_vfio_in_use(snap, str(host.proc))
    assert set(out) == {"0000:00:1c.0", "0000:02:00.0"}
    assert out["0000:02:00.0"] == [
        "is in IOMMU group 1, whose /dev/vfio/1 is open by process 100 (qemu-system-x86) (a running guest?)"
    ]


def test_protected_collects_all_checks(host):
    add_block(host, "0000:02:00.0", "nvme0n1", "259:0", {"nvme0n1p1": "259:1"}, subdir="nvme/nvme0")
    set_mounts(host, [("259:1", "/", "ext4", "/dev/nvme0n1p1")])
    add_open_fd(host, 7, "/dev/vfio/1")
    out = _safety.protected(read_snapshot(str(host.sys)), str(host.sys), str(host.proc), str(host.dev))
    assert [check for check, _r in out["0000:02:00.0"]] == ["storage", "vfio-in-use"]
    assert [check for check, _r in out["0000:00:02.0"]] == ["console"]


# `zpool status -P` of a Proxmox VE host: the root pool mirrored over an NVMe partition and a SATA partition
# (by-id links), a data pool on a whole disk with a log device, a cache and a spare.
ZPOOL_STATUS = """\
  pool: rpool
 state: ONLINE
  scan: scrub repaired 0B in 00:01:02 with 0 errors on Sun Nov 10 00:25:03 2024
config:

\tNAME                                                 STATE     READ WRITE CKSUM
\trpool                                                ONLINE       0     0     0
\t  mirror-0                                           ONLINE       0     0     0
\t    /dev/disk/by-id/nvme-Samsung_SSD_970-part3       ONLINE       0     0     0
\t    /dev/sda3                                        ONLINE       0     0     0

errors: No known data errors

  pool: tank
 state: ONLINE
config:

\tNAME          STATE     READ WRITE CKSUM
\ttank          ONLINE       0     0     0
\t  /dev/sdb1   ONLINE       0     0     0
\tlogs
\t  /dev/sdc1   ONLINE       0     0     0
\tcache
\t  /dev/sdc2   ONLINE       0     0     0
\tspares
\t  /dev/sdd1   AVAIL

errors: No known data errors
"""


def test_parse_zpool_status_lists_every_vdev():
    assert _safety.parse_zpool_status(ZPOOL_STATUS) == {
        "rpool": ["/dev/disk/by-id/nvme-Samsung_SSD_970-part3", "/dev/sda3"],
        "tank": ["/dev/sdb1", "/dev/sdc1", "/dev/sdc2", "/dev/sdd1"],
    }
    assert _safety.parse_zpool_status("no pools available\n") == {}
    with pytest.raises(_safety.SafetyError, match="config section before any pool"):
        _safety.parse_zpool_status("config:\n\t/dev/sda1 ONLINE\n")


def zfs_host(host):
    """Proxmox on ZFS: rpool over nvme0n1p3 (by-id link) and sda3, root dataset mounted at / on an anonymous dev."""
    add_block(host, "0000:02:00.0", "nvme0n1", "259:0", {"nvme0n1p3": "259:3"}, subdir="nvme/nvme0")
    add_block(host, "0000:00:17.0", "sda", "8:0", {"sda3": "8:3"}, subdir="ata1/host0")
    byid = host.dev / "disk/by-id"
    byid.mkdir(parents=True)
    (host.dev / "nvme0n1p3").write_text("")
    (host.dev / "sda3").write_text("")
    (byid / "nvme-Samsung_SSD_970-part3").symlink_to("../../nvme0n1p3")
    set_mounts(host, [("0:25", "/", "zfs", "rpool/ROOT/pve-1"), ("0:26", "/rpool/data", "zfs", "rpool/data")])
    set_zfs_pools(host, ["rpool"])
    status = ZPOOL_STATUS.split("  pool: tank", maxsplit=1)[0]
    calls = []

    def run(argv):
        calls.append(argv)
        return 0, status, ""

    return run, calls


def test_zfs_root_pool_protects_every_vdev_controller(host):
    run, calls = zfs_host(host)
    out = _safety.check_storage(str(host.sys), str(host.proc), str(host.dev), run=run)
    assert calls == [["zpool", "status", "-P"]]
    assert out["0000:02:00.0"] == [
        "holds /dev/disk/by-id/nvme-Samsung_SSD_970-part3, vdev of ZFS pool rpool, mounted at /, /rpool/data"
    ]
    assert out["0000:00:1c.0"] == out["0000:02:00.0"]  # the bridge above the NVMe controller
    assert out["0000:00:17.0"] == ["holds /dev/sda3, vdev of ZFS pool rpool, mounted at /, /rpool/data"]


def test_zfs_without_a_run_callable_sees_no_pool_and_mount_alone_protects_nothing(host):
    zfs_host(host)
    assert storage(host) == {}


def test_zfs_pool_imported_but_zpool_missing_is_a_clear_error(host):
    zfs_host(host)
    with pytest.raises(_safety.SafetyError, match=r"rpool are imported .* zpool command is not installed"):
        _safety.check_storage(str(host.sys), str(host.proc), str(host.dev), run=lambda argv: None)
    with pytest.raises(_safety.SafetyError, match=r"zpool status -P failed \(rc=1\): boom"):
        _safety.check_storage(str(host.sys), str(host.proc), str(host.dev), run=lambda argv: (1, "", "boom"))
    # a pool kstat names but zpool does not list: an error, never a silent pass
    with pytest.raises(_safety.SafetyError, match="rpool are imported but zpool status -P does not list"):
        _safety.check_storage(str(host.sys), str(host.proc), str(host.dev), run=lambda argv: (0, "", ""))


def test_no_zfs_module_and_no_zpool_is_fine(host):
    assert _safety.check_storage(str(host.sys), str(host.proc), str(host.dev), run=lambda argv: None) == {}
    assert (
        _safety.check_storage(
            str(host.sys), str(host.proc), str(host.dev), run=lambda argv: (1, "", "no pools available\n")
        )
        == {}
    )


def test_active_lvm_volume_group_without_a_mount(host):
    add_block(host, "0000:00:17.0", "sdb", "8:16", subdir="ata2/host1")
    add_virtual_block(host, "dm-0", "253:0", ["sdb"], dm_name="lab--vg-lv0", dm_uuid="LVM-abcdef")
    assert storage(host) == {"0000:00:17.0": ["is under LVM volume group lab-vg (dm-0) active"]}


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ({"dm_name": "luks-1234", "dm_uuid": "CRYPT-LUKS2-1234-luks-1234"}, "dm-crypt mapping luks-1234 (dm-1) open"),
        ({"dm_name": "mpatha", "dm_uuid": "mpath-3600a0b8"}, "multipath map mpatha (dm-1) active"),
        ({"dm_name": "thing", "dm_uuid": ""}, "device-mapper device thing (dm-1) active"),
    ],
)
def test_other_dm_holders_are_named(host, kind, expected):
    add_block(host, "0000:00:17.0", "sdb", "8:16", subdir="ata2/host1")
    add_virtual_block(host, "dm-1", "253:1", ["sdb"], **kind)
    assert storage(host) == {"0000:00:17.0": [f"is under {expected}"]}


def test_md_and_bcache_without_mounts(host):
    add_block(host, "0000:00:17.0", "sdb", "8:16", {"sdb1": "8:17"}, subdir="ata2/host1")
    add_block(host, "0000:02:00.0", "nvme0n1", "259:0", {"nvme0n1p1": "259:1"}, subdir="nvme/nvme0")
    add_virtual_block(host, "bcache0", "252:0", ["sdb1"])
    # the cache device is not a slave of bcache0: it is registered (a bcache/ directory of its own)
    (host.sys / "class/block/nvme0n1p1").resolve().joinpath("bcache").mkdir()
    out = storage(host)
    assert out["0000:00:17.0"] == ["is under bcache device bcache0 active"]
    assert out["0000:02:00.0"] == ["holds nvme0n1p1, registered with bcache"]
    add_block(host, "0000:03:00.0", "sdx", "8:32", subdir="sas/host2")
    add_virtual_block(host, "md1", "9:1", ["sdx"], md=True)
    assert storage(host)["0000:03:00.0"] == ["is under md array md1 active"]


def test_mounted_lvm_is_named_once_by_its_mount(host):
    add_block(host, "0000:02:00.0", "nvme0n1", "259:0", {"nvme0n1p2": "259:2"}, subdir="nvme/nvme0")
    add_virtual_block(host, "dm-0", "253:0", ["nvme0n1p2"], dm_name="vg-root", dm_uuid="LVM-x")
    set_mounts(host, [("253:0", "/", "ext4", "/dev/mapper/vg-root")])
    assert storage(host)["0000:02:00.0"] == ["backs / (/dev/mapper/vg-root mounted there)"]


def test_exclusive_open_oracle_names_what_no_check_named(host):
    add_block(host, "0000:02:00.0", "nvme0n1", "259:0", {"nvme0n1p1": "259:1"}, subdir="nvme/nvme0")
    add_block(host, "0000:00:17.0", "sda", "8:0", {"sda1": "8:1", "sda2": "8:2"}, subdir="ata1/host0")
    add_block(host, "0000:03:00.0", "sdc", "8:32", subdir="sas/host2")
    set_mounts(host, [("8:1", "/", "ext4", "/dev/sda1")])
    held = {"/dev/nvme0n1", "/dev/nvme0n1p1", "/dev/sda", "/dev/sda1"}  # an iSCSI export of nvme0n1p1, the root
    probed = []

    def probe(path):
        name = "/dev/" + path.rsplit("/", 1)[1]
        probed.append(name)
        return errno.EBUSY if name in held else None

    out = _safety.check_storage(str(host.sys), str(host.proc), str(host.dev), exclusive_probe=probe)
    assert out["0000:02:00.0"] == [
        "holds /dev/nvme0n1, held open exclusively (O_EXCL: EBUSY)",
        "holds /dev/nvme0n1p1, held open exclusively (O_EXCL: EBUSY)",
    ]
    assert out["0000:00:17.0"] == ["backs / (/dev/sda1 mounted there)"]  # named by the mount, not probed again
    assert "0000:03:00.0" not in out
    # the mounted partition and its disk are named already; the other partition of that disk is still asked
    assert probed == ["/dev/nvme0n1", "/dev/nvme0n1p1", "/dev/sda2", "/dev/sdc"]


def test_exclusive_probe_opens_read_only_and_closes(tmp_path, monkeypatch):
    calls = []
    real_open, real_close = os.open, os.close

    def fake_open(path, flags, *args):
        calls.append(("open", path, flags))
        if path.endswith("busy"):
            raise OSError(errno.EBUSY, "Device or resource busy")
        return real_open(os.devnull, os.O_RDONLY)

    monkeypatch.setattr(_safety.os, "open", fake_open)
    monkeypatch.setattr(_safety.os, "close", lambda fd: calls.append(("close", fd)) or real_close(fd))
    assert _safety.open_exclusive("/dev/busy") == errno.EBUSY
    assert _safety.open_exclusive("/dev/free") is None
    flags = calls[0][2]
    assert flags & os.O_EXCL and not flags & (os.O_WRONLY | os.O_RDWR)
    assert calls[-1][0] == "close"


def test_protected_skips_the_oracle_offline_and_uses_it_live(host, monkeypatch):
    add_block(host, "0000:03:00.0", "sdc", "8:32", subdir="sas/host2")
    seen = []
    monkeypatch.setattr(_safety, "open_exclusive", lambda path: seen.append(path) or errno.EBUSY)
    snap = read_snapshot(str(host.sys))
    assert _safety.protected(snap, str(host.sys), str(host.proc), str(host.dev)) == {**_console_only()}
    assert seen == []
    out = _safety.protected(snap, str(host.sys), str(host.proc), str(host.dev), exclusive_probe=_safety.open_exclusive)
    assert out["0000:03:00.0"] == [("storage", "holds /dev/sdc, held open exclusively (O_EXCL: EBUSY)")]
    assert seen == [str(host.dev / "sdc")]


def _console_only():
    return {"0000:00:02.0": [("console", "is the boot VGA device (boot_vga=1)")]}


def test_vfio_cdev_holder_is_named_by_majmin(host):
    add_vfio_cdev(host, "0000:04:00.0", "vfio0", "511:0")
    add_vfio_cdev(host, "0000:03:00.0", "vfio1", "511:1")
    add_open_fd(host, 300, "/dev/vfio/devices/vfio0")
    add_open_fd(host, 300, "/dev/iommu")
    snap = read_snapshot(str(host.sys))
    assert snap.devices["0000:04:00.0"].vfio_cdev_dev == "511:0"
    out = _safety.check_vfio_in_use(snap, str(host.proc))
    assert out == {
        "0000:04:00.0": [
            "has its VFIO device cdev /dev/vfio/devices/vfio0 open by process 300 (qemu-system-x86) with /dev/iommu "
            "(iommufd) (a running guest?)"
        ]
    }


def test_vfio_cdev_matched_by_the_fds_device_number(host, monkeypatch):
    # the node's name says vfio7, but the open descriptor is the char device 511:1: the kernel's number wins
    add_vfio_cdev(host, "0000:03:00.0", "vfio1", "511:1")
    add_open_fd(host, 301, "/dev/vfio/devices/vfio7")
    monkeypatch.setattr(_safety, "_fd_rdev", lambda path: "511:1")
    out = _safety.check_vfio_in_use(read_snapshot(str(host.sys)), str(host.proc))
    assert list(out) == ["0000:03:00.0"]
    assert "vfio1 open by process 301" in out["0000:03:00.0"][0]


def test_iommufd_holder_without_a_cdev_protects_functions_with_a_cdev(host):
    add_vfio_cdev(host, "0000:03:00.1", "vfio2", "511:2")
    add_open_fd(host, 400, "/dev/iommu", comm="cloud-hypervisor")
    out = _safety.check_vfio_in_use(read_snapshot(str(host.sys)), str(host.proc))
    assert out == {
        "0000:03:00.1": [
            "has the VFIO device cdev vfio2 while process 400 (cloud-hypervisor) holds /dev/iommu (iommufd) with no "
            "device cdev this scan could name (it may be attaching one)"
        ]
    }


def test_pci_addresses_on_path():
    path = "/sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/nvme/nvme0/nvme0n1"
    assert _safety.pci_addresses_on_path(path) == ["0000:00:1c.0", "0000:02:00.0"]
