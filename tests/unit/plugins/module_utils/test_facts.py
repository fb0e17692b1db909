# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils._facts import gather, iommu_cmdline
from ansible_collections.hostdev.vfio.plugins.module_utils._pciids import PciIds
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import (
    add_block,
    add_netdev,
    set_mounts,
    set_routes,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import FakeHost, gpu_host

PCI_IDS = """\
# test database
10de  NVIDIA Corporation
\t1b80  GP104 [GeForce GTX 1080]
\t\t1458 3702  GV-N1080G1 GAMING-8GD
\t10f0  GP104 High Definition Audio Controller
10df  Emulex Corporation
\t1b80  Not the NVIDIA one
8086  Intel Corporation
\t10d3  82574L Gigabit Network Connection

C 03  Display controller
\t00  VGA compatible controller
\t\t00  VGA controller
C 04  Multimedia controller
\t03  Audio device
C 06  Bridge
"""


def facts_of(host, **kw):
    return gather(sysfs_root=str(host.sys), proc_root=str(host.proc), dev_root=str(host.dev), **kw)


def by_address(facts):
    return {d["address"]: d for d in facts["devices"]}


def test_full_shape_gpu_host(tmp_path):
    host = gpu_host(tmp_path)
    host.load_module("vfio")
    host.load_module("vfio_pci")
    facts = facts_of(host, names=False)
    assert facts["enabled"] is True
    assert facts["cpu_vendor"] == "intel"
    assert facts["cmdline"] == {"intel_iommu": "on", "iommu": "pt"}
    assert facts["warnings"] == []
    assert facts["vfio"] == {"modules": ["vfio", "vfio_pci"], "group_files": [], "unsafe_noiommu_mode": False}
    groups = {g["id"]: g for g in facts["groups"]}
    assert list(groups) == [0, 2, 7, 13, 40, 1000, 65535]
    assert groups[2] == {
        "id": 2,
        "type": "DMA",
        "devices": ["0000:00:01.0", "0000:01:00.0", "0000:01:00.1"],
        "viable": False,
        "blockers": [
            {"address": "0000:01:00.0", "driver": "nouveau"},
            {"address": "0000:01:00.1", "driver": "snd_hda_intel"},
        ],
    }
    assert groups[65535]["viable"] is True and groups[65535]["blockers"] == []
    gpu = by_address(facts)["0000:01:00.0"]
    assert gpu == {
        "address": "0000:01:00.0",
        "vendor_id": "10de",
        "device_id": "1b80",
        "subsystem_vendor_id": "1458",
        "subsystem_device_id": "3702",
        "vendor_name": None,
        "device_name": None,
        "class_code": "030000",
        "class_id": "0300",
        "class_name": "VGA compatible controller",
        "revision": "a1",
        "driver": "nouveau",
        "driver_module": None,
        "driver_override": None,
        "modalias": "pci:v000010DEd00001B80sv00001458sd00003702bc03sc00i00",
        "host_modules": [],
        "iommu_group": 2,
        "is_bridge": False,
        "parent": "0000:00:01.0",
        "numa_node": None,
        "boot_vga": False,
        "reset_methods": ["bus"],
        "has_reset": True,
        "sriov": None,
        "physfn": None,
        "vfio_interfaces": [],
        "vfio_cdev": None,
        "vfio_capable": True,
        "vfio_blockers": [],
        "unreadable": None,
        "builtin_modules": [],
        "host_needs": [],
    }
    pf = by_address(facts)["0000:03:00.0"]
    assert pf["sriov"] == {"totalvfs": 7, "numvfs": 2, "virtfns": ["0000:03:10.0", "0000:03:10.4"]}
    assert by_address(facts)["0000:03:10.0"]["physfn"] == "0000:03:00.0"
    assert by_address(facts)["0000:00:01.0"]["is_bridge"] is True
    assert by_address(facts)["0000:00:01.0"]["vfio_capable"] is False


def test_no_iommu_warns_and_does_not_fail(tmp_path):
    host = FakeHost(tmp_path)
    host.add_device("0000:00:02.0", "8086:10d3", "020000", driver="e1000e")
    facts = facts_of(host, names=False)
    assert facts["enabled"] is False and facts["groups"] == [] and facts["units"] == []
    assert len(facts["warnings"]) == 1
    assert "VT-d" in facts["warnings"][0] and "intel_iommu=on" in facts["warnings"][0]
    dev = facts["devices"][0]
    assert dev["iommu_group"] is None and dev["vfio_capable"] is False


def test_iommu_off_on_cmdline_is_named(tmp_path):
    host = FakeHost(tmp_path)
    host.set_cmdline("root=/dev/vda1 intel_iommu=off")
    facts = facts_of(host, names=False)
    assert facts["warnings"] == [
        "The IOMMU is disabled on the kernel command line (intel_iommu=off): remove that argument "
        "(hostdev.vfio.kernel_cmdline, remove) and reboot."
    ]


def test_units_without_groups_say_kernel_args(tmp_path):
    host = FakeHost(tmp_path)
    host.add_unit("dmar0")
    facts = facts_of(host, names=False)
    assert facts["units"] == [{"name": "dmar0", "type": "intel-vtd"}]
    assert "dmar0" in facts["warnings"][0] and "intel_iommu=on" in facts["warnings"][0]


def test_firmware_table_without_groups_means_kernel_args(tmp_path):
    host = FakeHost(tmp_path)
    host.add_acpi_table("DMAR")
    host.add_acpi_table("APIC")
    facts = facts_of(host, names=False)
    assert facts["enabled"] is False and facts["firmware_tables"] == ["DMAR"]
    assert facts["warnings"] == [
        "IOMMU hardware is present (ACPI DMAR table) but the kernel created no IOMMU groups: add intel_iommu=on to "
        "the kernel command line (hostdev.vfio.kernel_cmdline) and reboot."
    ]


def test_amd_units(tmp_path):
    host = FakeHost(tmp_path)
    host.set_cpu_vendor("AuthenticAMD")
    host.add_unit("ivhd0")
    host.add_device("0000:00:04.0", "8086:10d3", "020000", driver="e1000e", group=3, group_type="identity")
    facts = facts_of(host, names=False)
    assert facts["cpu_vendor"] == "amd"
    assert facts["units"] == [{"name": "ivhd0", "type": "amd-vi"}]
    assert facts["firmware_tables"] == []
    assert facts["groups"][0]["type"] == "identity"


@pytest.mark.parametrize(
    ("cmdline", "expected"),
    [
        ("ro quiet", {}),
        ("intel_iommu=on,sm_on iommu=pt", {"intel_iommu": "on,sm_on", "iommu": "pt"}),
        ("vfio_pci.ids=10de:1b80,10de:10f0", {"vfio-pci.ids": "10de:1b80,10de:10f0"}),
        ("vfio-pci.ids=1234:5678 pci_stub.ids=8086:10d3", {"vfio-pci.ids": "1234:5678", "pci-stub.ids": "8086:10d3"}),
        ("iommu.passthrough=1 iommu.strict=0", {"iommu.passthrough": "1", "iommu.strict": "0"}),
        ("pcie_acs_override=downstream,multifunction", {"pcie_acs_override": "downstream,multifunction"}),
        ("iommu=soft iommu=pt", {"iommu": "pt"}),
        ('amd_iommu=off "foo=bar baz"', {"amd_iommu": "off"}),
    ],
)
def test_iommu_cmdline(cmdline, expected):
    assert iommu_cmdline(cmdline) == expected


def test_risk_flags_and_warnings(tmp_path):
    host = gpu_host(tmp_path)
    host.set_cmdline("ro intel_iommu=on pcie_acs_override=downstream vfio_iommu_type1.allow_unsafe_interrupts=1")
    host.load_module("vfio", enable_unsafe_noiommu_mode="Y")
    facts = facts_of(host, names=False)
    assert facts["acs_override"] is True and facts["unsafe_interrupts"] is True
    assert facts["vfio"]["unsafe_noiommu_mode"] is True
    joined = "\n".join(facts["warnings"])
    assert "pcie_acs_override" in joined and "allow_unsafe_interrupts" in joined and "no-IOMMU" in joined
    assert len(facts["warnings"]) == 3


def test_vfio_group_files(tmp_path):
    host = gpu_host(tmp_path)
    host.add_vfio_group_file(2)
    host.add_vfio_group_file(1000)
    (host.dev / "vfio" / "vfio").write_text("")
    assert facts_of(host, names=False)["vfio"]["group_files"] == [2, 1000]


def test_vfio_interfaces_group_and_cdev(tmp_path):
    from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import add_vfio_cdev

    host = gpu_host(tmp_path)
    assert by_address(facts_of(host, names=False))["0000:01:00.0"]["vfio_interfaces"] == []
    host.bind("0000:01:00.0", "vfio-pci")  # a VFIO driver: the group door, even before udev made the node
    assert by_address(facts_of(host, names=False))["0000:01:00.0"]["vfio_interfaces"] == ["group"]
    add_vfio_cdev(host, "0000:01:00.0", "vfio3", "511:3")
    dev = by_address(facts_of(host, names=False))["0000:01:00.0"]
    assert (dev["vfio_interfaces"], dev["vfio_cdev"]) == (["group", "cdev"], "vfio3")
    host.add_vfio_group_file(1000)  # /dev/vfio/1000 exists: its member offers the group door whatever its driver
    assert by_address(facts_of(host, names=False))["0000:03:10.0"]["vfio_interfaces"] == ["group"]


def test_device_class_filter_keeps_companions(tmp_path):
    facts = facts_of(gpu_host(tmp_path), names=False, device_class=["03"])
    assert [g["id"] for g in facts["groups"]] == [2, 7]
    assert [d["address"] for d in facts["devices"]] == ["0000:00:01.0", "0000:00:02.0", "0000:01:00.0", "0000:01:00.1"]
    usb = facts_of(gpu_host(tmp_path / "b"), names=False, device_class=["0c0330"])
    assert [g["id"] for g in usb["groups"]] == [13]


def test_names_from_pci_ids(tmp_path):
    ids_file = tmp_path / "pci.ids"
    ids_file.write_text(PCI_IDS)
    facts = facts_of(gpu_host(tmp_path / "h"), pci_ids_path=str(ids_file))
    gpu = by_address(facts)["0000:01:00.0"]
    assert gpu["vendor_name"] == "NVIDIA Corporation"
    assert gpu["device_name"] == "GP104 [GeForce GTX 1080]"
    assert by_address(facts)["0000:01:00.1"]["device_name"] == "GP104 High Definition Audio Controller"
    assert by_address(facts)["0000:01:00.1"]["class_name"] == "Audio device"
    # a class the file lists without that subclass falls back to the base class name
    assert by_address(facts)["0000:00:01.0"]["class_name"] == "Bridge"
    assert by_address(facts)["0000:00:00.0"]["vendor_name"] == "Intel Corporation"
    assert by_address(facts)["0000:00:00.0"]["device_name"] is None


def test_pci_ids_lookup_is_exact():
    ids = PciIds(None)
    assert ids.vendor_name("10de") is None
    assert ids.class_name("0c0330") == "USB controller"
    assert ids.class_name("ab1234") == "Unknown class"


ALIASES = """# Aliases extracted from modules themselves.
alias pci:v000010DEd*sv*sd*bc03sc*i* nouveau
alias pci:v000010DEd*sv*sd*bc03sc02i00* nouveau
alias pci:v000010DEd*sv*sd*bc03sc00i00* nvidia
alias pci:v000010DEd00000E0Fsv*sd*bc*sc*i* snd_hda_intel
alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci
alias pci:v00008086d000010D3sv*sd*bc*sc*i* e1000e
alias pci:v00008086d0000293[CE]sv*sd*bc*sc*i* snd_hda_intel
alias usb:v05ACp*d*dc*dsc*dp*ic*isc*ip*in* apple_mfi_fastcharge
alias pci:v000014E4d00001639sv*sd*bc*sc*i* bnx2
"""
BUILTIN = "alias pci:v*d*sv*sd*bc01sc06i01* ahci\nalias pci:v00008086d000010D3sv*sd*bc*sc*i* notthisone\n"


def test_host_modules_from_modalias_like_modprobe_resolve_alias(tmp_path):
    host = gpu_host(tmp_path)
    # gpu_host has xhci_hcd on 00:14.0 and ahci (built in here: no module link) on 00:17.0.
    host.add_device("0000:00:19.0", "8086:10d3", "020000", driver="vfio-pci", group=41)
    host.add_device("0000:00:1b.0", "8086:293e", "040300", group=42)
    host.set_driver_module("xhci_hcd", "xhci_pci")
    host.set_driver_module("vfio-pci", "vfio_pci")
    modules_root = host.set_module_aliases("6.1.0-26-amd64", ALIASES, BUILTIN)
    devs = by_address(facts_of(host, names=False, modules_root=str(modules_root)))
    # Every loadable module whose pattern matches, sorted; vendor-wildcard and class patterns too.
    assert devs["0000:01:00.0"]["host_modules"] == ["nouveau", "nvidia"]
    assert devs["0000:00:14.0"]["host_modules"] == ["xhci_pci"]
    assert devs["0000:00:14.0"]["driver_module"] == "xhci_pci" and devs["0000:00:14.0"]["driver"] == "xhci_hcd"
    # On vfio-pci now, and still naming the host driver; a loadable match hides the builtin table.
    assert devs["0000:00:19.0"]["host_modules"] == ["e1000e"] and devs["0000:00:19.0"]["driver_module"] == "vfio_pci"
    assert devs["0000:00:1b.0"]["host_modules"] == ["snd_hda_intel"]  # [CE] bracket pattern, no driver
    assert devs["0000:00:17.0"]["host_modules"] == ["ahci"]  # built in: only modules.builtin.alias matches
    assert devs["0000:00:17.0"]["driver_module"] is None
    assert devs["0000:00:00.0"]["host_modules"] == []
    # Built-in drivers are named whether or not a loadable module matches too: the kernel binds them at boot.
    assert devs["0000:00:17.0"]["builtin_modules"] == ["ahci"]
    assert devs["0000:00:19.0"]["builtin_modules"] == ["notthisone"]
    assert devs["0000:01:00.0"]["builtin_modules"] == []


def test_host_needs_names_root_disk_management_nic_and_boot_vga(tmp_path):
    host = gpu_host(tmp_path)
    add_block(host, "0000:00:17.0", "sda", "8:0", {"sda1": "8:1"}, subdir="ata1/host0")
    set_mounts(host, [("8:1", "/", "ext4", "/dev/sda1")])
    add_netdev(host, "eno1", "0000:00:1f.6")
    set_routes(host, [("eno1", "0.0.0.0", "0.0.0.0", "192.0.2.1")])
    devs = by_address(facts_of(host, names=False, ssh_connection="192.0.2.7 50000 192.0.2.1 22"))
    assert devs["0000:00:17.0"]["host_needs"] == [{"check": "storage", "reason": "backs / (/dev/sda1 mounted there)"}]
    nic = "is NIC eno1, which carries the"
    assert devs["0000:00:1f.6"]["host_needs"] == [
        {"check": "network", "reason": f"{nic} default route"},
        {"check": "network", "reason": f"{nic} route to this SSH session's client address 192.0.2.7"},
        {"check": "network", "reason": f"{nic} route to this SSH session's server address 192.0.2.1"},
    ]
    assert devs["0000:00:02.0"]["host_needs"] == [{"check": "console", "reason": "is the boot VGA device (boot_vga=1)"}]
    assert devs["0000:01:00.0"]["host_needs"] == []


def test_host_modules_empty_without_alias_tables(tmp_path):
    host = gpu_host(tmp_path)
    # No osrelease: the running kernel's tree is unknown.
    assert all(d["host_modules"] == [] for d in facts_of(host, names=False, modules_root=str(tmp_path))["devices"])
    # A release whose tree has no modules.alias.
    host.set_module_aliases("6.1.0-26-amd64", ALIASES)
    (tmp_path / "lib/modules/6.1.0-26-amd64/modules.alias").unlink()
    (tmp_path / "lib/modules/6.1.0-26-amd64/modules.builtin.alias").unlink()
    facts = facts_of(host, names=False, modules_root=str(tmp_path / "lib/modules"))
    assert all(d["host_modules"] == [] for d in facts["devices"])
