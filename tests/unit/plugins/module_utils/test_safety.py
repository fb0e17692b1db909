# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _safety
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import read_snapshot
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import (
    add_block,
    add_fbcon,
    add_netdev,
    add_open_fd,
    add_virtual_block,
    set_mounts,
    set_routes,
    set_routes_v6,
    set_swaps,
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


def test_pci_addresses_on_path():
    path = "/sys/devices/pci0000:00/0000:00:1c.0/0000:02:00.0/nvme/nvme0/nvme0n1"
    assert _safety.pci_addresses_on_path(path) == ["0000:00:1c.0", "0000:02:00.0"]
