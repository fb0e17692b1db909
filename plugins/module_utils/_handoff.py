# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""From ``ansible_facts.iommu`` to the platforms that schedule VMs, and what passing a function through would take.

Pure functions over the facts of hostdev.vfio.iommu_facts (plain dicts and lists), so a fact set from a live host,
a capture or a unit test gives the same answer:

- :func:`verdicts`: per function, what it would take to pass it through (ready, as is, companions to park, a risk,
  the host needs it, or not at all), with its reset, built-in host drivers, SR-IOV role and NUMA node;
- :func:`nova`, :func:`proxmox`, :func:`kubevirt`, :func:`libvirt`: the configuration each platform takes for
  the selected functions (by default the ready ones).

Every value written into another platform's configuration comes from a host's facts, so it is checked with
``_validate`` first (addresses, ids, group numbers, names); JSON is written by ``json.dumps`` and XML by
``xml.etree``, never by string formatting. A value that fails a check raises ``_validate.InvalidValue`` naming it.
"""

from __future__ import annotations

__metaclass__ = type

import json
import xml.etree.ElementTree as ET

from ansible_collections.hostdev.vfio.plugins.module_utils import _validate as v
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import is_vfio_driver

# Verdict codes, from best to worst. CANDIDATES can be passed through by this collection's own means.
READY = "ready"
AS_IS = "as-is"
PARK = "park-companions"
RISK = "risk"
HOST_NEEDS_IT = "host-needs-it"
NO = "no"
VERDICTS = (READY, AS_IS, PARK, RISK, HOST_NEEDS_IT, NO)
CANDIDATES = (READY, AS_IS, PARK)
INCLUDE = ("ready", "candidates")

# Nova's PCI NUMA affinity policies (nova/objects/fields.py, PCINUMAAffinityPolicy.ALL).
NUMA_POLICIES = ("required", "legacy", "preferred", "socket")
DEFAULT_RESOURCE_PREFIX = "hostdev.vfio"
MAX_DESCRIPTION = 4096  # Proxmox VE: maxLength of a mapping's description
_STUB_DRIVERS = ("pci-stub",)


# --------------------------------------------------------------------------------------------------- facts
def _by_address(facts: dict) -> dict:
    return {d.get("address"): d for d in facts.get("devices") or []}


def _by_group(facts: dict) -> dict:
    return {g.get("id"): g for g in facts.get("groups") or []}


def _label(dev: dict) -> str:
    return " ".join(x for x in (dev.get("vendor_name"), dev.get("device_name")) if x)


def identity(dev: dict, field: str = "device") -> dict:
    """The checked identity of one function: address, vendor, device, subsystem ids (or None) and group.

    Raises ``InvalidValue`` for anything a host could have planted: an address or id that is not hex of the right
    width, a newline or quote in any of them, a group number that is not a whole number.
    """
    if not isinstance(dev, dict):
        raise v.InvalidValue(f"{field}: expected a function of ansible_facts.iommu.devices, got {v.shown(dev)}")
    address = v.pci_address(f"{field}.address", dev.get("address"))
    field = f"{field} {address}"
    ids = v.pci_ids(f"{field} vendor_id:device_id", f"{dev.get('vendor_id')}:{dev.get('device_id')}")
    if ":" in ids[5:]:
        raise v.InvalidValue(f"{field}: vendor_id:device_id {ids!r} is not two 4-digit hex ids")
    sub = None
    if dev.get("subsystem_vendor_id") is not None and dev.get("subsystem_device_id") is not None:
        sub = v.pci_ids(f"{field} subsystem ids", f"{dev.get('subsystem_vendor_id')}:{dev.get('subsystem_device_id')}")
        if ":" in sub[5:]:
            raise v.InvalidValue(f"{field}: subsystem ids {sub!r} are not two 4-digit hex ids")
    group = dev.get("iommu_group")
    return {
        "address": address,
        "vendor": ids[:4],
        "device": ids[5:],
        "ids": ids,
        "subsystem": sub,
        "group": None if group is None else v.number(f"{field} iommu_group", group),
    }


def device_type(dev: dict) -> str:
    """Nova's device type: an SR-IOV physical function, a virtual function, or a plain PCI device."""
    if dev.get("sriov"):
        return "type-PF"
    if dev.get("physfn"):
        return "type-VF"
    return "type-PCI"


# --------------------------------------------------------------------------------------------------- verdicts
def _bus(address: str) -> str:
    return address.rsplit(":", 1)[0]  # dddd:bb


def _index(facts: dict) -> dict:
    """Functions by address, groups by id, and non-bridge functions by (bus, parent): read once per host."""
    devices = _by_address(facts)
    buses: dict = {}
    for address, dev in devices.items():
        if isinstance(address, str) and not dev.get("is_bridge"):
            buses.setdefault((_bus(address), dev.get("parent")), []).append(address)
    return {"devices": devices, "groups": _by_group(facts), "buses": buses}


def _reset(dev: dict, group_members: list, index: dict) -> dict:
    """How the function can be reset between guests. A bus reset resets every function on the same bus. Facts
    without ``reset_methods`` (not read) say nothing: ``usable`` is None."""
    if dev.get("reset_methods") is None:
        return {"methods": None, "usable": None, "note": None}
    methods = [m for m in dev["reset_methods"] if isinstance(m, str)]
    address = dev.get("address") or ""
    if not methods:
        return {
            "methods": [],
            "usable": False,
            "note": "no usable reset (reset_method is empty): the device keeps its state from one guest to the next",
        }
    if methods != ["bus"]:
        return {"methods": methods, "usable": True, "note": None}
    siblings = sorted(a for a in index["buses"].get((_bus(address), dev.get("parent")), []) if a != address)
    outside = [a for a in siblings if a not in group_members]
    if outside:
        return {
            "methods": methods,
            "usable": False,
            "note": "no usable reset: only a bus reset, which also resets {} in other IOMMU groups".format(
                ", ".join(outside)
            ),
        }
    note = "bus reset only"
    if siblings:
        note += " (it resets {} too: give them to the same guest)".format(", ".join(siblings))
    return {"methods": methods, "usable": True, "note": note}


def _builtin(dev: dict) -> list:
    return [
        m
        for m in dev.get("builtin_modules") or []
        if isinstance(m, str) and not is_vfio_driver(m) and m.replace("_", "-") not in _STUB_DRIVERS
    ]


def _sriov(dev: dict) -> dict | None:
    sriov = dev.get("sriov")
    if sriov:
        return {"role": "PF", "totalvfs": sriov.get("totalvfs"), "numvfs": sriov.get("numvfs")}
    if dev.get("physfn"):
        return {"role": "VF", "physfn": dev.get("physfn")}
    return None


def _driver(dev: dict | None) -> str:
    return (dev or {}).get("driver") or "no driver"


def _needs(dev: dict) -> list:
    return [n.get("reason") for n in dev.get("host_needs") or [] if isinstance(n, dict)]


def function_verdict(facts: dict, dev: dict, index: dict | None = None) -> dict:
    """What passing one function through would take; see the module docstring and docs/handoff.md. ``index`` is
    :func:`_index` of the facts, computed once per host by :func:`verdicts`."""
    index = index or _index(facts)
    devices = index["devices"]
    address = dev.get("address")
    gid = dev.get("iommu_group")
    group = index["groups"].get(gid) if gid is not None else None
    members = list((group or {}).get("devices") or [])
    companions = [m for m in members if m != address and not (devices.get(m) or {}).get("is_bridge")]
    protected = [
        {"address": m, "reasons": _needs(devices[m])} for m in companions if m in devices and _needs(devices[m])
    ]
    if not facts.get("enabled"):
        code, summary = NO, "no: the IOMMU is off"
    elif dev.get("unreadable"):
        code, summary = NO, f"no: its identity cannot be read ({dev['unreadable']})"
    elif dev.get("is_bridge") or str(dev.get("class_code") or "").startswith("06"):
        code, summary = NO, "no: a bridge (vfio-pci drives endpoints only)"
    elif group is None:
        code, summary = NO, "no: it has no IOMMU group"
    elif is_vfio_driver(dev.get("driver")) and group.get("viable"):
        code, summary = READY, "ready"
    elif _needs(dev):
        code, summary = HOST_NEEDS_IT, "the host needs it: {}".format("; ".join(_needs(dev)))
    elif protected:
        shared = ", ".join("{} ({})".format(p["address"], "; ".join(p["reasons"])) for p in protected)
        code = RISK
        summary = f"risk: shares IOMMU group {gid} with {shared}: needs another slot or an ACS override"
    elif not companions:
        code, summary = AS_IS, "can be passed through as is (own IOMMU group)"
    else:
        parked = ", ".join(f"{m} ({_driver(devices.get(m))})" for m in companions)
        code, summary = PARK, f"needs its companions parked: {parked}"
    reset = _reset(dev, members, index)
    builtin = _builtin(dev)
    sriov = _sriov(dev)
    notes = []
    if reset["note"]:
        notes.append(reset["note"])
    if builtin:
        notes.append(
            "built-in host driver {}: no modprobe.d setting keeps it off at boot; hand the function over after boot "
            "(hostdev.vfio.vfio_bind) or keep the driver off with a kernel argument".format(", ".join(builtin))
        )
    if sriov and sriov["role"] == "PF":
        notes.append(f"SR-IOV PF: {sriov['numvfs']} of {sriov['totalvfs']} VFs enabled")
    elif sriov:
        notes.append(f"SR-IOV VF of {sriov['physfn']}")
    if dev.get("numa_node") is not None:
        notes.append(f"NUMA node {dev['numa_node']}")
    return {
        "address": address,
        "ids": f"{dev.get('vendor_id')}:{dev.get('device_id')}",
        "name": _label(dev) or None,
        "verdict": code,
        "summary": summary,
        "companions": companions if code in (PARK, RISK) else [],
        "protected_companions": protected,
        "reset": reset,
        "builtin_modules": builtin,
        "sriov": sriov,
        "numa_node": dev.get("numa_node"),
        "notes": notes,
    }


def verdicts(facts: dict) -> list:
    """:func:`function_verdict` for every function in the facts, in their order."""
    facts = facts or {}
    index = _index(facts)
    return [function_verdict(facts, d, index) for d in facts.get("devices") or []]


# --------------------------------------------------------------------------------------------------- selection
def select(facts: dict, include: str = "ready", addresses=None) -> list:
    """The functions to hand off: those named in ``addresses``, else the ready ones (``include="ready"``) or every
    candidate (``"candidates"``: ready, as is, or once its companions are parked). Bridges are never handed off."""
    facts = facts or {}
    devices = _by_address(facts)
    if addresses is not None:
        wanted = v.each("addresses", addresses, v.pci_address)
        missing = [a for a in wanted if a not in devices]
        if missing:
            raise v.InvalidValue(f"addresses: no PCI function {', '.join(missing)} in these facts")
        return [devices[a] for a in dict.fromkeys(wanted) if not devices[a].get("is_bridge")]
    if include not in INCLUDE:
        raise v.InvalidValue(f"include: {v.shown(include)} is not one of {', '.join(INCLUDE)}")
    codes = (READY,) if include == "ready" else CANDIDATES
    index = _index(facts)
    return [d for d in facts.get("devices") or [] if function_verdict(facts, d, index)["verdict"] in codes]


def check_names(names) -> dict:
    """``{"vvvv:dddd": name}`` given by the user, checked; a function without one is called ``pci-vvvv-dddd``."""
    if names is None:
        return {}
    if not isinstance(names, dict):
        raise v.InvalidValue(f"names: expected a dict of vendor:device to name, got {v.shown(names)}")
    return {v.pci_ids(f"names key {v.shown(k)}", k): v.handoff_name(f"names[{k!r}]", n) for k, n in names.items()}


def _name(names: dict, ident: dict) -> str:
    return names.get(ident["ids"]) or f"pci-{ident['vendor']}-{ident['device']}"


# --------------------------------------------------------------------------------------------------- Nova
def nova(facts: dict, include: str = "ready", addresses=None, names=None, numa_policy: str = "legacy") -> dict:
    """``[pci] device_spec`` and ``alias`` values for nova.conf, each a JSON string as Nova parses it.

    One ``device_spec`` per function (vendor_id, product_id and its address, so no other function with the same
    ids is taken) and one ``alias`` per name and device type (type-PCI, type-PF, type-VF). ``text`` is the
    ``[pci]`` section, ready to paste.
    """
    if numa_policy not in NUMA_POLICIES:
        raise v.InvalidValue(f"numa_policy: {v.shown(numa_policy)} is not one of {', '.join(NUMA_POLICIES)}")
    names = check_names(names)
    specs, aliases = [], {}
    for dev in select(facts, include, addresses):
        ident = identity(dev)
        specs.append(
            json.dumps({"vendor_id": ident["vendor"], "product_id": ident["device"], "address": ident["address"]})
        )
        alias = {
            "name": _name(names, ident),
            "vendor_id": ident["vendor"],
            "product_id": ident["device"],
            "device_type": device_type(dev),
            "numa_policy": numa_policy,
        }
        same = [a for a in aliases.values() if a["name"] == alias["name"]]
        if same and same[0]["device_type"] != alias["device_type"]:
            raise v.InvalidValue(
                f"names: {alias['name']!r} would name both {same[0]['device_type']} and {alias['device_type']} "
                "devices, which Nova refuses (Device type mismatch for alias); give them different names"
            )
        aliases.setdefault((alias["name"], ident["ids"]), alias)
    alias_json = [json.dumps(a) for a in aliases.values()]
    lines = ["[pci]"] + [f"device_spec = {s}" for s in specs] + [f"alias = {a}" for a in alias_json]
    return {"device_spec": specs, "alias": alias_json, "text": "\n".join(lines) + "\n" if specs else ""}


# --------------------------------------------------------------------------------------------------- Proxmox VE
# The format of /etc/pve/mapping/pci.cfg, from Proxmox's own code (read with the search tool):
# - proxmox/pve-guest-common src/PVE/Mapping/PCI.pm: a section per mapping, headed by its id (format pve-configid);
#   properties ``map`` (required, one line per node's device: a property string of node, path, id, iommugroup,
#   subsystem-id, description), ``description`` (maxLength 4096) and ``mdev``; ``id`` and ``subsystem-id`` match
#   ``^[0-9A-Fa-f]{4}:[0-9A-Fa-f]{4}$``, ``path`` is DDDD:BB:DD[.F].
# - proxmox/pve-common src/PVE/JSONSchema.pm (commit f665029e): pve-configid is ``[a-z][a-z0-9_-]+`` (case
#   insensitive), pve-node ``[a-zA-Z0-9]([a-zA-Z0-9\-]*[a-zA-Z0-9])?``; parse_property_string splits on every ','
#   with no quoting, so no value inside ``map`` may hold a comma.
# - proxmox/pve-common src/PVE/SectionConfig.pm: write_config writes the header line, then "\t<key> <value>" lines,
#   required properties first (map), then the optional ones sorted (description); a value with CR or LF is refused.
_PVE_MAP_KEYS = ("id", "iommugroup", "node", "path", "subsystem-id")


def proxmox(facts: dict, node: str, include: str = "ready", addresses=None, names=None) -> dict:
    """Proxmox VE PCI resource mappings: one mapping per name, one ``map`` line per function on ``node``.

    ``mappings`` lists ``{id, description, map: [{id, iommugroup, node, path, subsystem-id}]}``; ``text`` is
    what ``/etc/pve/mapping/pci.cfg`` holds for them (the cluster merges the nodes' lines of one mapping id).
    """
    node = v.host_label("node", node)
    names = check_names(names)
    mappings: dict = {}
    for dev in select(facts, include, addresses):
        ident = identity(dev)
        if ident["group"] is None:
            raise v.InvalidValue(f"device {ident['address']}: has no IOMMU group; Proxmox VE maps grouped devices")
        entry = {"id": ident["ids"], "iommugroup": ident["group"], "node": node, "path": ident["address"]}
        if ident["subsystem"]:
            entry["subsystem-id"] = ident["subsystem"]
        name = _name(names, ident)
        mapping = mappings.setdefault(name, {"id": name, "description": None, "map": []})
        mapping["map"].append(entry)
        label = _label(dev).strip(" ")
        if label and mapping["description"] is None:
            mapping["description"] = v.text(f"device {ident['address']} name", label, max_len=MAX_DESCRIPTION)
    blocks = []
    for mapping in mappings.values():
        lines = [mapping["id"]]
        for entry in mapping["map"]:
            lines.append("\tmap " + ",".join(f"{k}={entry[k]}" for k in _PVE_MAP_KEYS if k in entry))
        if mapping["description"]:
            lines.append(f"\tdescription {mapping['description']}")
        blocks.append("\n".join(lines) + "\n")
    return {"mappings": list(mappings.values()), "text": "\n".join(blocks)}


# --------------------------------------------------------------------------------------------------- KubeVirt
def kubevirt(
    facts: dict,
    include: str = "ready",
    addresses=None,
    names=None,
    resource_prefix: str = DEFAULT_RESOURCE_PREFIX,
    external: bool = False,
) -> dict:
    """``spec.configuration.permittedHostDevices.pciHostDevices`` of the KubeVirt CR: one entry per vendor:device.

    ``pciVendorSelector`` is ``VVVV:DDDD`` (KubeVirt compares it in lower case, its docs write upper case),
    ``resourceName`` ``<resource_prefix>/<name>``. ``text`` is the ``permittedHostDevices`` object as JSON, which
    is also YAML.
    """
    prefix = v.dns_subdomain("resource_prefix", resource_prefix)
    if not isinstance(external, bool):
        raise v.InvalidValue(f"external: {v.shown(external)} is not true or false")
    names = check_names(names)
    entries: dict = {}
    for dev in select(facts, include, addresses):
        ident = identity(dev)
        entries.setdefault(
            ident["ids"],
            {
                "pciVendorSelector": ident["ids"].upper(),
                "resourceName": f"{prefix}/{_name(names, ident)}",
                "externalResourceProvider": external,
            },
        )
    devices = list(entries.values())
    text = json.dumps({"permittedHostDevices": {"pciHostDevices": devices}}, indent=2) + "\n" if devices else ""
    return {"pciHostDevices": devices, "text": text}


# --------------------------------------------------------------------------------------------------- libvirt
def hostdev_element(address: str) -> ET.Element:
    """``<hostdev mode='subsystem' type='pci' managed='no'>`` for one function (already on vfio-pci, so libvirt
    must not detach or reattach it)."""
    address = v.pci_address("address", address)
    domain, bus, rest = address.split(":")
    slot, function = rest.split(".")
    element = ET.Element("hostdev", {"mode": "subsystem", "type": "pci", "managed": "no"})
    source = ET.SubElement(element, "source")
    ET.SubElement(
        source,
        "address",
        {"domain": f"0x{domain}", "bus": f"0x{bus}", "slot": f"0x{slot}", "function": f"0x{function}"},
    )
    return element


def libvirt(facts: dict, include: str = "ready", addresses=None) -> dict:
    """One libvirt ``<hostdev>`` element per function, for a domain's ``<devices>``; ``text`` is all of them."""
    entries = []
    for dev in select(facts, include, addresses):
        ident = identity(dev)
        entries.append({"address": ident["address"], "xml": ET.tostring(hostdev_element(ident["address"]), "unicode")})
    return {"hostdevs": entries, "text": "".join(e["xml"] + "\n" for e in entries)}


# --------------------------------------------------------------------------------------------------- all four
def handoff(
    facts: dict,
    host: str,
    include: str = "ready",
    names=None,
    node=None,
    numa_policy: str = "legacy",
    resource_prefix: str = DEFAULT_RESOURCE_PREFIX,
) -> dict:
    """All four hand-off formats for one host, as the report shows them. A format whose values fail a check is
    left out with the reason in ``errors``; the others are still given. ``node`` (Proxmox VE) defaults to the
    first label of ``host``."""
    out = {"include": include, "errors": []}
    node = node if node is not None else str(host).split(".", 1)[0]
    chosen = [d.get("address") for d in select(facts, include)]  # the verdicts once, not once per format
    makers = {
        "nova": lambda: nova(facts, include, chosen, names, numa_policy),
        "proxmox": lambda: proxmox(facts, node, include, chosen, names),
        "kubevirt": lambda: kubevirt(facts, include, chosen, names, resource_prefix),
        "libvirt": lambda: libvirt(facts, include, chosen),
    }
    for key, make in makers.items():
        try:
            out[key] = make()
        except v.InvalidValue as exc:
            out[key] = None
            out["errors"].append(f"{key}: {exc}")
    return out
