# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``ansible_facts.iommu``: the model of _pci turned into plain lists and dicts, with the risks spelled out."""

from __future__ import annotations

__metaclass__ = type

import os

from ansible_collections.hostdev.vfio.plugins.module_utils._kernel_cmdline import parse_cmdline
from ansible_collections.hostdev.vfio.plugins.module_utils._modalias import ModuleAliases, running_modules_dir
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import (
    PciDevice,
    Snapshot,
    assess_group,
    driver_module,
    is_vfio_driver,
    read_snapshot,
)
from ansible_collections.hostdev.vfio.plugins.module_utils._pciids import PciIds, find_pci_ids
from ansible_collections.hostdev.vfio.plugins.module_utils._safety import HOST_NEEDS, SafetyError, protected

# Kernel parameters that matter for passthrough, by canonical spelling. The kernel treats '-' and '_' in
# parameter names as the same character, so they are matched that way.
IOMMU_PARAMETERS = (
    "intel_iommu",
    "amd_iommu",
    "iommu",
    "iommu.passthrough",
    "iommu.strict",
    "vfio-pci.ids",
    "vfio-pci.disable_vga",
    "vfio-pci.disable_idle_d3",
    "vfio_iommu_type1.allow_unsafe_interrupts",
    "vfio.enable_unsafe_noiommu_mode",
    "pcie_acs_override",
    "pci-stub.ids",
    "pci",
    "video",
    "modprobe.blacklist",
)
_CANONICAL = {name.replace("-", "_"): name for name in IOMMU_PARAMETERS}


def _truthy_param(value) -> bool:
    return value is True or (isinstance(value, str) and value.lower() in ("1", "y", "yes", "on", "true"))


def iommu_cmdline(text: str) -> dict:
    """The IOMMU-relevant parameters of a kernel command line; a bare flag is ``True``; the last one wins."""
    params = {}
    for name, value in parse_cmdline(text):
        if name == "--":  # the rest belongs to init
            break
        canonical = _CANONICAL.get(name.replace("-", "_"))
        if canonical:
            params[canonical] = True if value is None else value
    return params


def _cpu_vendor(proc_root: str) -> str | None:
    try:
        with open(os.path.join(proc_root, "cpuinfo"), encoding="ascii", errors="replace") as f:
            head = f.read(4096)
    except OSError:
        return None
    for line in head.splitlines():
        if line.startswith("vendor_id"):
            vendor = line.split(":", 1)[1].strip()
            return {"GenuineIntel": "intel", "AuthenticAMD": "amd", "HygonGenuine": "amd"}.get(vendor, vendor.lower())
    return None


def _read_text(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _vfio_state(sysfs_root: str, dev_root: str) -> dict:
    try:
        loaded = sorted(
            m for m in os.listdir(os.path.join(sysfs_root, "module")) if m.startswith("vfio") or m == "pci_stub"
        )
    except OSError:
        loaded = []
    try:
        group_files = sorted(int(n) for n in os.listdir(os.path.join(dev_root, "vfio")) if n.isdigit())
    except OSError:
        group_files = []
    noiommu = _read_text(os.path.join(sysfs_root, "module", "vfio", "parameters", "enable_unsafe_noiommu_mode"))
    return {"modules": loaded, "group_files": group_files, "unsafe_noiommu_mode": noiommu.strip() in ("Y", "1")}


def _firmware_iommu(sysfs_root: str) -> list[str]:
    """ACPI tables that describe an IOMMU: DMAR (Intel VT-d), IVRS (AMD-Vi). They exist even when the kernel
    has the IOMMU turned off, so they tell "firmware has it, kernel arguments are missing" apart from "no IOMMU".
    """
    tables = os.path.join(sysfs_root, "firmware", "acpi", "tables")
    return [t for t in ("DMAR", "IVRS") if os.path.exists(os.path.join(tables, t))]


def vfio_interfaces(dev: PciDevice, group_files) -> list[str]:
    """The VFIO doors the running kernel offers for a function: ``group`` (/dev/vfio/<group> exists, or a VFIO
    driver is bound to a function with a group) and ``cdev`` (the kernel made vfio-dev/vfioN for it: iommufd)."""
    out = []
    if dev.iommu_group is not None and (dev.iommu_group in group_files or is_vfio_driver(dev.driver)):
        out.append("group")
    if dev.vfio_cdev:
        out.append("cdev")
    return out


def device_facts(
    dev: PciDevice,
    names: PciIds,
    aliases: ModuleAliases | None = None,
    modules: dict | None = None,
    needs: list | None = None,
    group_files=(),
) -> dict:
    """One function as plain data; ``modules`` maps each bound driver to the module that provides it, ``needs``
    lists ``(check, reason)`` for what the host itself needs it for (``_safety.protected``), ``group_files`` the
    /dev/vfio/<group> numbers that exist."""
    reasons = dev.vfio_blockers()
    if dev.unreadable:
        reasons = [f"its identity cannot be read from sysfs: {dev.unreadable}", *reasons]
    known = not dev.unreadable
    sriov = None
    if dev.sriov_totalvfs is not None:
        sriov = {"totalvfs": dev.sriov_totalvfs, "numvfs": dev.sriov_numvfs or 0, "virtfns": dev.virtfns}
    return {
        "address": dev.address,
        "vendor_id": dev.vendor_id,
        "device_id": dev.device_id,
        "subsystem_vendor_id": dev.subsystem_vendor_id,
        "subsystem_device_id": dev.subsystem_device_id,
        "vendor_name": names.vendor_name(dev.vendor_id) if known else None,
        "device_name": names.device_name(dev.vendor_id, dev.device_id) if known else None,
        "class_code": dev.class_code,
        "class_id": dev.class_id,
        "class_name": names.class_name(dev.class_code) if known else None,
        "revision": dev.revision,
        "driver": dev.driver,
        "driver_module": (modules or {}).get(dev.driver),
        "driver_override": dev.driver_override,
        "modalias": dev.modalias,
        "host_modules": aliases.modules_for(dev.modalias) if aliases else [],
        "builtin_modules": aliases.builtin_for(dev.modalias) if aliases else [],
        "iommu_group": dev.iommu_group,
        "is_bridge": dev.is_bridge,
        "parent": dev.parent,
        "numa_node": dev.numa_node,
        "boot_vga": dev.boot_vga,
        "reset_methods": dev.reset_methods,
        "has_reset": dev.has_reset,
        "sriov": sriov,
        "physfn": dev.physfn,
        "vfio_interfaces": vfio_interfaces(dev, group_files),
        "vfio_cdev": dev.vfio_cdev,
        "vfio_capable": not reasons,
        "vfio_blockers": reasons,
        "unreadable": dev.unreadable,
        "host_needs": [{"check": check, "reason": reason} for check, reason in needs or []],
    }


def group_facts(snapshot: Snapshot, group_id: int) -> dict:
    group = snapshot.groups[group_id]
    viable, blockers = assess_group(snapshot, group_id)
    return {"id": group.id, "type": group.type, "devices": list(group.devices), "viable": viable, "blockers": blockers}


def _class_match(dev: PciDevice, prefixes: list[str]) -> bool:
    return any(dev.class_code.startswith(p) for p in prefixes)


def _warnings(
    enabled: bool, units: list[dict], firmware: list[str], cmdline: dict, vfio: dict, cpu_vendor: str | None
) -> list[str]:
    warnings = []
    disabled_by = [
        f"{k}={v}"
        for k, v in cmdline.items()
        if k in ("intel_iommu", "amd_iommu", "iommu") and "off" in str(v).split(",")
    ]
    if not enabled:
        if disabled_by:
            warnings.append(
                "The IOMMU is disabled on the kernel command line ({}): remove that argument "
                "(hostdev.vfio.kernel_cmdline, remove) and reboot.".format(", ".join(disabled_by))
            )
        elif units or firmware:
            hint = (
                "add intel_iommu=on to the kernel command line"
                if cpu_vendor == "intel"
                else "check the kernel arguments"
            )
            present = [u["name"] for u in units] + [f"ACPI {t} table" for t in firmware]
            warnings.append(
                "IOMMU hardware is present ({}) but the kernel created no IOMMU groups: {} "
                "(hostdev.vfio.kernel_cmdline) and reboot.".format(", ".join(present), hint)
            )
        else:
            warnings.append(
                "No IOMMU is active: the kernel found no IOMMU unit and created no IOMMU groups, so no device can "
                "be passed through with VFIO. Enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup, "
                "and on Intel hosts add intel_iommu=on to the kernel command line (hostdev.vfio.kernel_cmdline); "
                "then reboot."
            )
    if "pcie_acs_override" in cmdline:
        warnings.append(
            "pcie_acs_override is set: IOMMU groups are split by a kernel patch that pretends devices are isolated. "
            "Devices in such groups may still reach each other by peer-to-peer DMA."
        )
    if _truthy_param(cmdline.get("vfio_iommu_type1.allow_unsafe_interrupts")):
        warnings.append(
            "vfio_iommu_type1.allow_unsafe_interrupts is on: a guest can inject interrupts into the host "
            "(no interrupt remapping protection)."
        )
    if vfio["unsafe_noiommu_mode"]:
        warnings.append("vfio is in unsafe no-IOMMU mode: devices handed to user space have no DMA isolation.")
    return warnings


def gather(
    sysfs_root: str = "/sys",
    proc_root: str = "/proc",
    dev_root: str = "/dev",
    device_class: list[str] | None = None,
    names: bool = True,
    pci_ids_path: str | None = None,
    modules_root: str = "/lib/modules",
    ssh_connection: str | None = None,
) -> dict:
    """Everything ``iommu_facts`` returns as ``ansible_facts.iommu``.

    ``device_class`` limits the output to the IOMMU groups holding a function of one of those class-code
    prefixes (all members of those groups are kept, so companions stay visible); without an IOMMU, to the
    matching functions themselves. ``ssh_connection`` (the ``SSH_CONNECTION`` of the session) lets the NIC that
    carries it be named among what the host needs (``host_needs``).
    """
    snapshot = read_snapshot(sysfs_root)
    cmdline_text = _read_text(os.path.join(proc_root, "cmdline")).strip()
    cmdline = iommu_cmdline(cmdline_text)
    cpu_vendor = _cpu_vendor(proc_root)
    vfio = _vfio_state(sysfs_root, dev_root)
    ids = PciIds(pci_ids_path if pci_ids_path is not None else (find_pci_ids() if names else None))
    aliases = ModuleAliases(running_modules_dir(proc_root, modules_root))
    modules = {d.driver: driver_module(sysfs_root, d.driver) for d in snapshot.devices.values() if d.driver}

    group_ids = list(snapshot.groups)
    addresses = list(snapshot.devices)
    if device_class:
        prefixes = [c.lower() for c in device_class]
        wanted = {a for a, d in snapshot.devices.items() if _class_match(d, prefixes)}
        group_ids = [g for g in group_ids if any(a in wanted for a in snapshot.groups[g].devices)]
        keep = {a for g in group_ids for a in snapshot.groups[g].devices} | wanted
        addresses = [a for a in addresses if a in keep]

    # What the host needs is best effort here (facts never fail on it): a check that cannot read its state (an
    # imported ZFS pool without zpool) becomes a warning; vfio_bind, which acts, refuses instead.
    try:
        needs, needs_problem = protected(snapshot, sysfs_root, proc_root, dev_root, ssh_connection, HOST_NEEDS), None
    except SafetyError as exc:
        needs, needs_problem = {}, f"host_needs is incomplete: {exc}"
    enabled = snapshot.iommu_enabled
    firmware = _firmware_iommu(sysfs_root)
    return {
        "enabled": enabled,
        "units": snapshot.units,
        "firmware_tables": firmware,
        "cpu_vendor": cpu_vendor,
        "cmdline": cmdline,
        "cmdline_raw": cmdline_text,
        "acs_override": "pcie_acs_override" in cmdline,
        "unsafe_interrupts": _truthy_param(cmdline.get("vfio_iommu_type1.allow_unsafe_interrupts")),
        "vfio": vfio,
        "warnings": _warnings(enabled, snapshot.units, firmware, cmdline, vfio, cpu_vendor)
        + ([needs_problem] if needs_problem else [])
        + [
            f"PCI function {a} is reported as unreadable: {snapshot.devices[a].unreadable}"
            for a in addresses
            if snapshot.devices[a].unreadable
        ],
        "groups": [group_facts(snapshot, g) for g in group_ids],
        "devices": [
            device_facts(snapshot.devices[a], ids, aliases, modules, needs.get(a), set(vfio["group_files"]))
            for a in addresses
        ],
    }
