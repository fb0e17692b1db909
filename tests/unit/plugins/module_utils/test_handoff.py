# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hand-off: verdicts per function, and the four formats checked by their consumers' own schemas and tools.

Nova's aliases go through Nova's own JSON schema, KubeVirt's entries through KubeVirt's CRD schema (both vendored
under data/handoff with their source), libvirt's elements through virt-xml-validate (Debian's libvirt-clients,
installed by `make unit-tools`), Proxmox VE's sections through the rules of Proxmox's schema (pve-guest-common
PVE::Mapping::PCI, pve-common's SectionConfig and property strings), which no registry installs.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import jsonschema
import pytest
import yaml
from ansible_collections.hostdev.vfio.plugins.module_utils import _handoff as h
from ansible_collections.hostdev.vfio.plugins.module_utils._validate import InvalidValue
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import (
    add_block,
    set_mounts,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import gpu_host
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_facts import by_address, facts_of

DATA = Path(__file__).parent / "data" / "handoff"


def schema(name: str) -> dict:
    return yaml.safe_load((DATA / name).read_text())


@pytest.fixture
def host(tmp_path):
    """gpu_host with its root disk on the chipset's AHCI controller, one VF on vfio-pci and a GPU in its own group.

    Groups: 2 GPU + audio (bus reset only), 7 boot VGA, 13 chipset (xHCI, AHCI with /, e1000e), 40 SR-IOV PF,
    1000 and 65535 its VFs (65535 on vfio-pci), 50 a second GPU on vfio-pci alone, 51 a function without reset,
    52 and 53 two functions on one bus in two groups with only a bus reset.
    """
    host = gpu_host(tmp_path)
    add_block(host, "0000:00:17.0", "sda", "8:0", {"sda1": "8:1"}, subdir="ata1/host0")
    set_mounts(host, [("8:1", "/", "ext4", "/dev/sda1")])
    host.bind("0000:03:10.4", "vfio-pci")
    host.add_device("0000:00:1d.0", "8086:a330", "060400", driver="pcieport", group=49, header_type=1)
    host.add_device("0000:05:00.0", "10de:2204", "030000", driver="vfio-pci", group=50, parent="0000:00:1d.0")
    host.add_device("0000:06:00.0", "1b21:1242", "0c0330", driver="xhci_hcd", group=51, reset_method="")
    host.add_device("0000:00:1e.0", "8086:a331", "060400", driver="pcieport", group=54, header_type=1)
    for address, group in (("0000:07:00.0", 52), ("0000:07:01.0", 53)):
        host.add_device(
            address, "1912:0015", "0c0330", driver="xhci_hcd", group=group, parent="0000:00:1e.0", reset_method="bus"
        )
    host.add_vfio_group_file(50)
    host.add_vfio_group_file(65535)
    return host


@pytest.fixture
def facts(host):
    return facts_of(host, names=False)


def verdict_of(facts, address):
    return {x["address"]: x for x in h.verdicts(facts)}[address]


# --------------------------------------------------------------------------------------------------- verdicts
@pytest.mark.parametrize(
    "address, code, summary",
    [
        ("0000:05:00.0", h.READY, "ready"),
        ("0000:03:10.4", h.READY, "ready"),
        ("0000:03:10.0", h.AS_IS, "can be passed through as is (own IOMMU group)"),
        ("0000:01:00.0", h.PARK, "needs its companions parked: 0000:01:00.1 (snd_hda_intel)"),
        ("0000:00:02.0", h.HOST_NEEDS_IT, "the host needs it: is the boot VGA device (boot_vga=1)"),
        ("0000:00:17.0", h.HOST_NEEDS_IT, "the host needs it: backs / (/dev/sda1 mounted there)"),
        (
            "0000:00:14.0",
            h.RISK,
            "risk: shares IOMMU group 13 with 0000:00:17.0 (backs / (/dev/sda1 mounted there)): needs another slot "
            "or an ACS override",
        ),
        ("0000:00:01.0", h.NO, "no: a bridge (vfio-pci drives endpoints only)"),
        ("0000:00:00.0", h.NO, "no: a bridge (vfio-pci drives endpoints only)"),  # host bridge, class 0600
    ],
)
def test_verdicts(facts, address, code, summary):
    verdict = verdict_of(facts, address)
    assert (verdict["verdict"], verdict["summary"]) == (code, summary)


def test_verdict_names_companions_and_protected_members(facts):
    gpu = verdict_of(facts, "0000:01:00.0")
    assert gpu["companions"] == ["0000:01:00.1"] and gpu["protected_companions"] == []
    xhci = verdict_of(facts, "0000:00:14.0")
    assert xhci["companions"] == ["0000:00:17.0", "0000:00:1f.6"]
    assert xhci["protected_companions"] == [
        {"address": "0000:00:17.0", "reasons": ["backs / (/dev/sda1 mounted there)"]}
    ]


def test_verdict_without_iommu_is_no(facts):
    facts["enabled"] = False
    assert {v["verdict"] for v in h.verdicts(facts)} == {h.NO}


def test_reset_notes(facts):
    gpu = verdict_of(facts, "0000:01:00.0")["reset"]
    assert gpu == {
        "methods": ["bus"],
        "usable": True,
        "note": "bus reset only (it resets 0000:01:00.1 too: give them to the same guest)",
    }
    assert verdict_of(facts, "0000:06:00.0")["reset"] == {
        "methods": [],
        "usable": False,
        "note": "no usable reset (reset_method is empty): the device keeps its state from one guest to the next",
    }
    shared = verdict_of(facts, "0000:07:00.0")
    assert shared["reset"]["usable"] is False
    assert shared["reset"]["note"] == (
        "no usable reset: only a bus reset, which also resets 0000:07:01.0 in other IOMMU groups"
    )
    assert verdict_of(facts, "0000:05:00.0")["reset"] == {"methods": ["flr", "bus"], "usable": True, "note": None}


def test_sriov_numa_and_builtin_notes(host):
    modules_root = host.set_module_aliases("6.1.0-26-amd64", "", "alias pci:v*d*sv*sd*bc0Csc03i30* xhci_pci\n")
    facts = facts_of(host, names=False, modules_root=str(modules_root))
    pf = verdict_of(facts, "0000:03:00.0")
    assert pf["sriov"] == {"role": "PF", "totalvfs": 7, "numvfs": 2}
    assert pf["numa_node"] == 0
    assert pf["notes"] == ["SR-IOV PF: 2 of 7 VFs enabled", "NUMA node 0"]
    assert verdict_of(facts, "0000:03:10.0")["sriov"] == {"role": "VF", "physfn": "0000:03:00.0"}
    usb = verdict_of(facts, "0000:06:00.0")
    assert usb["builtin_modules"] == ["xhci_pci"]
    assert usb["notes"][1].startswith("built-in host driver xhci_pci: no modprobe.d setting keeps it off at boot")


# --------------------------------------------------------------------------------------------------- selection
def test_select_ready_candidates_and_addresses(facts):
    assert [d["address"] for d in h.select(facts)] == ["0000:03:10.4", "0000:05:00.0"]
    candidates = [d["address"] for d in h.select(facts, "candidates")]
    assert "0000:01:00.0" in candidates and "0000:03:10.0" in candidates
    assert "0000:00:14.0" not in candidates and "0000:00:02.0" not in candidates
    assert [d["address"] for d in h.select(facts, addresses=["01:00.0", "00:01.0"])] == ["0000:01:00.0"]
    with pytest.raises(InvalidValue, match=r"no PCI function 0000:09:00\.0"):
        h.select(facts, addresses=["09:00.0"])
    with pytest.raises(InvalidValue, match="include: 'all' is not one of ready, candidates"):
        h.select(facts, "all")


# --------------------------------------------------------------------------------------------------- Nova
# The keys nova.conf's [pci] device_spec documents (nova/conf/pci.py) and Nova's address rule (nova/pci/utils.py).
NOVA_SPEC_KEYS = {
    "vendor_id",
    "product_id",
    "address",
    "devname",
    "physical_network",
    "trusted",
    "remote_managed",
    "managed",
    "live_migratable",
    "resource_class",
    "traits",
    "one_time_use",
}
NOVA_HEX4 = re.compile(r"[\da-fA-F]{4}")
NOVA_ADDRESS = re.compile(r"([\da-fA-F]{4}):([\da-fA-F]{2}):([\da-fA-F]{2})\.([0-7])")


def test_nova_passes_novas_alias_schema_and_spec_rules(facts):
    out = h.nova(facts, "candidates", names={"10de:1b80": "gtx1080"}, numa_policy="preferred")
    alias_schema = schema("nova-pci-alias-schema.yaml")
    aliases = [json.loads(a) for a in out["alias"]]
    for alias in aliases:
        jsonschema.validate(alias, alias_schema)
    by_ids = {(a["vendor_id"], a["product_id"]): a for a in aliases}
    assert by_ids[("10de", "1b80")]["name"] == "gtx1080"
    assert by_ids[("8086", "1521")]["device_type"] == "type-PF"
    assert by_ids[("8086", "1520")] == {
        "name": "pci-8086-1520",
        "vendor_id": "8086",
        "product_id": "1520",
        "device_type": "type-VF",
        "numa_policy": "preferred",
    }
    assert by_ids[("10de", "10f0")]["device_type"] == "type-PCI"
    specs = [json.loads(s) for s in out["device_spec"]]
    for spec in specs:
        assert set(spec) <= NOVA_SPEC_KEYS
        assert NOVA_HEX4.fullmatch(spec["vendor_id"]) and NOVA_HEX4.fullmatch(spec["product_id"])
        assert NOVA_ADDRESS.fullmatch(spec["address"])
    assert {"vendor_id": "8086", "product_id": "1520", "address": "0000:03:10.4"} in specs
    assert out["text"].splitlines()[0] == "[pci]"
    assert out["text"].count("\ndevice_spec = ") == len(specs) and out["text"].count("\nalias = ") == len(aliases)


def test_nova_ready_only_and_refusals(facts):
    out = h.nova(facts)
    assert [json.loads(s)["address"] for s in out["device_spec"]] == ["0000:03:10.4", "0000:05:00.0"]
    with pytest.raises(InvalidValue, match="numa_policy"):
        h.nova(facts, numa_policy="sometimes")
    with pytest.raises(InvalidValue, match="would name both type-PF and type-VF"):
        h.nova(facts, "candidates", names={"8086:1521": "intel-nic", "8086:1520": "intel-nic"})
    empty = dict(facts, devices=[])
    assert h.nova(empty) == {"device_spec": [], "alias": [], "text": ""}


# --------------------------------------------------------------------------------------------------- Proxmox VE
# Proxmox VE's rules for /etc/pve/mapping/pci.cfg (see the comment above _handoff.proxmox for the sources).
PVE_CONFIGID = re.compile(r"[a-z][a-z0-9_-]+", re.I)
PVE_NODE = re.compile(r"[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?")
PVE_IDS = re.compile(r"[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}")
PVE_PCI = "[a-f0-9]{4,}:[a-f0-9]{2}:[a-f0-9]{2}(?:\\.[a-f0-9])?"
PVE_PATH = re.compile(f"(?:{PVE_PCI};)*{PVE_PCI}")
PVE_MAP = {
    "node": PVE_NODE.fullmatch,
    "id": PVE_IDS.fullmatch,
    "subsystem-id": PVE_IDS.fullmatch,
    "path": PVE_PATH.fullmatch,
    "iommugroup": re.compile(r"[+-]?\d+").fullmatch,
    "description": lambda v: len(v) <= 4096,
}


def parse_pci_cfg(text: str) -> dict:
    """pci.cfg as pve-common's SectionConfig reads it: a header line (the id), then tab-indented "key value"
    lines until a blank line; ``map`` values are property strings split on ',' (no quoting)."""
    sections, current = {}, None
    for line in text.split("\n"):
        if not line.strip():
            current = None
            continue
        if current is None:
            assert PVE_CONFIGID.fullmatch(line), line
            current = sections.setdefault(line, {"map": []})
            continue
        m = re.fullmatch(r"\s+(\S+)(\s+(.*\S))?\s*", line)
        assert m, line
        key, value = m.group(1), m.group(3)
        assert key in ("map", "description", "mdev"), key
        if key != "map":
            assert len(value) <= 4096
            current[key] = value
            continue
        entry = {}
        for part in value.split(","):
            k, sep, val = part.partition("=")
            assert sep and k in PVE_MAP and PVE_MAP[k](val), part
            assert k not in entry
            entry[k] = val
        assert {"node", "id", "path"} <= set(entry)
        current["map"].append(entry)
    return sections


def test_proxmox_sections_parse_as_pve_reads_them(facts):
    facts["devices"] = [
        dict(d, vendor_name="NVIDIA Corporation", device_name="GA102 [GeForce RTX 3090]")
        if d["address"] == "0000:05:00.0"
        else d
        for d in facts["devices"]
    ]
    out = h.proxmox(facts, "pve1", "candidates", names={"10de:2204": "rtx3090"})
    sections = parse_pci_cfg(out["text"])
    assert sections["rtx3090"] == {
        "map": [
            {"id": "10de:2204", "iommugroup": "50", "node": "pve1", "path": "0000:05:00.0", "subsystem-id": "1af4:1100"}
        ],
        "description": "NVIDIA Corporation GA102 [GeForce RTX 3090]",
    }
    assert [e["path"] for e in sections["pci-8086-1520"]["map"]] == ["0000:03:10.0", "0000:03:10.4"]
    assert [m["id"] for m in out["mappings"]] == list(sections)
    assert out["text"].startswith("pci-8086-3e0f\n") is False  # the host bridge is no candidate


# --------------------------------------------------------------------------------------------------- KubeVirt
def kubevirt_schema(strict: bool) -> dict:
    fragment = schema("kubevirt-permittedhostdevices.yaml")["permittedHostDevices"]
    if strict:  # the API server prunes unknown fields silently; a misspelt key must fail here instead
        fragment["additionalProperties"] = False
        fragment["properties"]["pciHostDevices"]["items"]["additionalProperties"] = False
    return fragment


def test_kubevirt_entries_pass_kubevirts_crd_schema(facts):
    out = h.kubevirt(facts, "candidates", names={"10de:1b80": "gtx1080"}, resource_prefix="nvidia.com")
    document = json.loads(out["text"])
    jsonschema.validate(document["permittedHostDevices"], kubevirt_schema(strict=True))
    entries = {e["pciVendorSelector"]: e for e in out["pciHostDevices"]}
    assert entries["10DE:1B80"] == {
        "pciVendorSelector": "10DE:1B80",
        "resourceName": "nvidia.com/gtx1080",
        "externalResourceProvider": False,
    }
    assert entries["8086:1520"]["resourceName"] == "nvidia.com/pci-8086-1520"
    assert len(entries) == len(out["pciHostDevices"])  # one entry per vendor:device
    # The schema itself is what rejects a wrong shape (proof that it validates something).
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"pciHostDevices": [{"pciVendorSelector": "10DE:1B80"}]}, kubevirt_schema(True))


# --------------------------------------------------------------------------------------------------- libvirt
DOMAIN = """<domain type='kvm'>
  <name>handoff-test</name>
  <memory unit='MiB'>256</memory>
  <os><type arch='x86_64' machine='q35'>hvm</type></os>
  <devices>
{hostdevs}  </devices>
</domain>
"""


def virt_xml_validate(tmp_path: Path, xml: str) -> subprocess.CompletedProcess:
    tool = shutil.which("virt-xml-validate")
    assert tool, "virt-xml-validate is missing: install Debian's libvirt-clients (make unit-tools does)"
    path = tmp_path / "domain.xml"
    path.write_text(xml)
    return subprocess.run([tool, str(path), "domain"], capture_output=True, text=True, check=False)


def test_libvirt_hostdevs_validate_with_virt_xml_validate(facts, tmp_path):
    out = h.libvirt(facts, "candidates")
    assert out["hostdevs"][0]["xml"] == (
        '<hostdev mode="subsystem" type="pci" managed="no"><source>'
        '<address domain="0x0000" bus="0x01" slot="0x00" function="0x0" /></source></hostdev>'
    )
    result = virt_xml_validate(tmp_path, DOMAIN.format(hostdevs=out["text"]))
    assert result.returncode == 0, result.stderr + result.stdout
    # The validator does reject a broken element: the same document with a function number out of range.
    broken = out["text"].replace('function="0x0"', 'function="0x9"', 1)
    assert virt_xml_validate(tmp_path, DOMAIN.format(hostdevs=broken)).returncode != 0


# --------------------------------------------------------------------------------------------------- hostile facts
@pytest.mark.parametrize(
    "field, value, message",
    [
        ("address", "05:00.0'/>", "is not a PCI address"),
        ("address", "0000:05:00.0'/><x a='", "is longer than 12 characters"),
        ("address", "05:00.0\n", "control character"),
        ("vendor_id", '10de"', "is not a PCI id"),
        ("vendor_id", "10de:1b80:1111", "is not two 4-digit hex ids"),
        ("device_id", "1b80\n", "control character"),
        ("subsystem_vendor_id", "&amp", "is not a PCI id"),
        ("iommu_group", "50", "is not a whole number"),
        ("iommu_group", True, "is not a whole number"),
    ],
)
def test_hostile_identity_is_refused_by_every_format(facts, field, value, message):
    for dev in facts["devices"]:
        if dev["address"] == "0000:05:00.0":
            dev[field] = value
    for make in (h.nova, h.libvirt, h.kubevirt, lambda f, include, addresses: h.proxmox(f, "pve1", include, addresses)):
        with pytest.raises(InvalidValue, match=message):
            make(facts, "ready", None if field == "address" else ["0000:05:00.0"])


def test_hostile_names_and_descriptions(facts):
    dev = by_address(facts)["0000:05:00.0"]
    dev["device_name"] = "GA102\n\tmap id=dead:beef,node=evil,path=0000:00:00.0"
    with pytest.raises(InvalidValue, match="control character"):
        h.proxmox(facts, "pve1")
    dev["device_name"] = 'GA102 <b>&"quoted", with commas</b>'
    sections = parse_pci_cfg(h.proxmox(facts, "pve1")["text"])
    assert sections["pci-10de-2204"]["description"] == 'GA102 <b>&"quoted", with commas</b>'
    for names in ({"10de:2204": 'gpu", "device_type": "type-PF'}, {"10de:2204": "Gpu"}, {"10de:2204\n": "gpu"}):
        with pytest.raises(InvalidValue):
            h.nova(facts, names=names)
    with pytest.raises(InvalidValue, match="node"):
        h.proxmox(facts, "pve1\n\tmap")
    with pytest.raises(InvalidValue, match="resource_prefix"):
        h.kubevirt(facts, resource_prefix="nvidia.com/x")


def test_handoff_keeps_the_formats_whose_values_pass(facts):
    dev = by_address(facts)["0000:05:00.0"]
    dev["vendor_name"] = "NVIDIA\r\n"
    out = h.handoff(facts, "pve1.example.com")
    assert out["proxmox"] is None
    assert out["errors"] == [
        "proxmox: device 0000:05:00.0 name: 'NVIDIA\\r\\n' contains the control character '\\r' at position 6; "
        "newlines and other control characters are never accepted"
    ]
    assert [e["address"] for e in out["libvirt"]["hostdevs"]] == ["0000:03:10.4", "0000:05:00.0"]
    dev["vendor_name"] = "NVIDIA"
    assert h.handoff(facts, "pve1.example.com")["proxmox"]["mappings"][0]["map"][0]["node"] == "pve1"
