# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import (
    assess_group,
    driver_keeps_group_viable,
    is_vfio_driver,
    normalize_address,
    read_snapshot,
    same_module,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import FakeHost, gpu_host


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("0000:01:00.0", "0000:01:00.0"),
        ("01:00.1", "0000:01:00.1"),
        ("0000:AF:1F.7", "0000:af:1f.7"),
        ("10000:00:02.0", "10000:00:02.0"),
        (" 02:00.0 ", "0000:02:00.0"),
    ],
)
def test_normalize_address(text, expected):
    assert normalize_address(text) == expected


@pytest.mark.parametrize("text", ["", "01:00", "0000:01:00.8", "zz:00.0", "0000:01:00.0\n0000:02:00.0", None, 5])
def test_normalize_address_rejects(text):
    with pytest.raises(ValueError, match="not a PCI address"):
        normalize_address(text)


@pytest.mark.parametrize(
    ("driver", "keeps_viable"),
    [
        (None, True),
        ("vfio-pci", True),
        ("mlx5_vfio_pci", True),
        ("hisi_acc_vfio_pci", True),
        ("nvgrace-gpu-vfio-pci", True),
        ("pci-stub", True),
        ("pcieport", True),
        ("nouveau", False),
        ("snd_hda_intel", False),
        ("xhci_hcd", False),
        ("vfio", False),
        ("vfio-pci-foo", False),
        ("pci_stub_x", False),
        ("nvidia", False),
    ],
)
def test_viability_rule_per_driver(driver, keeps_viable):
    assert driver_keeps_group_viable(driver) is keeps_viable


def test_vfio_driver_names():
    assert is_vfio_driver("vfio-pci") and is_vfio_driver("vfio_pci")
    assert not is_vfio_driver(None) and not is_vfio_driver("pci-stub")


def test_same_module_folds_dash_and_underscore():
    assert same_module("vfio-pci", "vfio_pci")
    assert not same_module("vfio-pci", "vfio_pci_core")


def test_snapshot_devices_fields(tmp_path):
    snap = read_snapshot(str(gpu_host(tmp_path).sys))
    gpu = snap.devices["0000:01:00.0"]
    assert (gpu.vendor_id, gpu.device_id) == ("10de", "1b80")
    assert (gpu.subsystem_vendor_id, gpu.subsystem_device_id) == ("1458", "3702")
    assert gpu.class_code == "030000" and gpu.class_id == "0300"
    assert gpu.revision == "a1"
    assert gpu.driver == "nouveau" and gpu.driver_override is None
    assert gpu.iommu_group == 2
    assert gpu.parent == "0000:00:01.0"
    assert gpu.reset_methods == ["bus"] and gpu.has_reset
    assert gpu.numa_node is None
    assert gpu.boot_vga is False
    assert gpu.header_type == 0 and not gpu.is_bridge
    assert gpu.vfio_blockers() == []
    port = snap.devices["0000:00:01.0"]
    assert port.is_bridge and port.parent is None
    assert port.vfio_blockers() == ["vfio-pci only drives normal (type 0) functions; this is a bridge"]
    assert snap.devices["0000:00:02.0"].boot_vga is True
    assert snap.devices["0000:00:1f.6"].numa_node == 0


def test_snapshot_sriov(tmp_path):
    snap = read_snapshot(str(gpu_host(tmp_path).sys))
    pf = snap.devices["0000:03:00.0"]
    assert pf.sriov_totalvfs == 7 and pf.sriov_numvfs == 2
    assert pf.virtfns == ["0000:03:10.0", "0000:03:10.4"]
    vf = snap.devices["0000:03:10.4"]
    assert vf.physfn == "0000:03:00.0" and vf.sriov_totalvfs is None
    assert vf.driver is None


def test_groups_sparse_numbers_and_members(tmp_path):
    snap = read_snapshot(str(gpu_host(tmp_path).sys))
    assert list(snap.groups) == [0, 2, 7, 13, 40, 1000, 65535]
    assert snap.groups[2].devices == ["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"]
    assert snap.groups[13].devices == ["0000:00:14.0", "0000:00:17.0", "0000:00:1c.0", "0000:00:1f.6"]
    assert snap.groups[2].type == "DMA"
    assert snap.iommu_enabled
    assert snap.units == [{"name": "dmar0", "type": "intel-vtd"}, {"name": "dmar1", "type": "intel-vtd"}]


# (gpu driver, audio driver) -> expected viability and blocker addresses of the GPU group (root port on pcieport)
GPU_GROUP_CASES = [
    ("nouveau", "snd_hda_intel", False, ["0000:01:00.0", "0000:01:00.1"]),
    ("vfio-pci", "snd_hda_intel", False, ["0000:01:00.1"]),
    ("vfio-pci", "vfio-pci", True, []),
    ("vfio-pci", "pci-stub", True, []),
    ("vfio-pci", None, True, []),
    (None, None, True, []),
    ("nvidia", "vfio-pci", False, ["0000:01:00.0"]),
]


@pytest.mark.parametrize(("gpu", "audio", "viable", "blockers"), GPU_GROUP_CASES)
def test_gpu_group_viability_read_from_tree(tmp_path, gpu, audio, viable, blockers):
    host = gpu_host(tmp_path)
    host.bind("0000:01:00.0", gpu)
    host.bind("0000:01:00.1", audio)
    ok, found = assess_group(read_snapshot(str(host.sys)), 2)
    assert ok is viable
    assert [b["address"] for b in found] == blockers


@pytest.mark.parametrize(("gpu", "audio", "viable", "blockers"), GPU_GROUP_CASES)
def test_gpu_group_viability_planned(tmp_path, gpu, audio, viable, blockers):
    snap = read_snapshot(str(gpu_host(tmp_path).sys))
    ok, found = assess_group(snap, 2, planned={"0000:01:00.0": gpu, "0000:01:00.1": audio})
    assert ok is viable
    assert [b["address"] for b in found] == blockers


def test_chipset_group_blockers_exclude_pcieport(tmp_path):
    snap = read_snapshot(str(gpu_host(tmp_path).sys))
    ok, blockers = assess_group(snap, 13)
    assert not ok
    assert blockers == [
        {"address": "0000:00:14.0", "driver": "xhci_hcd"},
        {"address": "0000:00:17.0", "driver": "ahci"},
        {"address": "0000:00:1f.6", "driver": "e1000e"},
    ]


def test_variant_driver_group_viable(tmp_path):
    host = FakeHost(tmp_path)
    host.add_device("0000:81:00.1", "15b3:101e", "020000", driver="mlx5_vfio_pci", group=90)
    ok, blockers = assess_group(read_snapshot(str(host.sys)), 90)
    assert ok and blockers == []


def test_no_iommu_tree(tmp_path):
    host = FakeHost(tmp_path)
    host.add_device("0000:00:02.0", "8086:10d3", "020000", driver="e1000e")
    snap = read_snapshot(str(host.sys))
    assert not snap.iommu_enabled and snap.groups == {} and snap.units == []
    dev = snap.devices["0000:00:02.0"]
    assert dev.iommu_group is None
    assert dev.vfio_blockers() == ["the function has no IOMMU group (the IOMMU is off or does not cover it)"]
    assert snap.group_of("0000:00:02.0") is None


def test_driver_override_read(tmp_path):
    host = FakeHost(tmp_path)
    host.add_device("0000:00:05.0", "8086:293e", "040300", driver="pci-stub", group=4, override="pci-stub")
    assert read_snapshot(str(host.sys)).devices["0000:00:05.0"].driver_override == "pci-stub"


def test_missing_sysfs_root_is_empty(tmp_path):
    snap = read_snapshot(str(tmp_path / "nothing"))
    assert snap.devices == {} and snap.groups == {} and snap.units == []
