# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The model: PCI functions and IOMMU groups as the kernel shows them under a sysfs root.

Everything here is read-only and needs no AnsibleModule, so the same code analyses a live host, a captured
tree, or a fake tree built by a unit test. ``read_snapshot(sysfs_root)`` reads it all once; the viability
rules (``driver_keeps_group_viable``, ``assess_group``) are what every module uses to judge a group, for the
state now and for a planned state.
"""

from __future__ import annotations

__metaclass__ = type

import contextlib
import os
import re
from dataclasses import dataclass, field

from ansible_collections.hostdev.vfio.plugins.module_utils import _validate as v

ADDRESS_RE = re.compile(
    r"^(?:(?P<domain>[0-9a-fA-F]{4,8}):)?(?P<bus>[0-9a-fA-F]{2}):(?P<slot>[0-9a-fA-F]{2})\.(?P<fn>[0-7])$"
)

# Drivers whose binding leaves an IOMMU group usable by VFIO. Since Linux 5.19 the kernel decides viability by
# DMA ownership: a device bound to a driver that uses the kernel DMA API claims the group and makes it
# non-viable; drivers that declare ``driver_managed_dma`` (vfio-pci and its variant drivers, pci-stub, and the
# PCIe port driver) do not, and neither does an unbound device.
STUB_DRIVERS = frozenset({"pci-stub"})
BRIDGE_DRIVERS = frozenset({"pcieport"})
_VFIO_DRIVER_RE = re.compile(r"(?:vfio[-_]pci|[a-z0-9_-]+[-_]vfio[-_]pci)")

# Every entry of a function's sysfs directory that read_device looks at: attribute files, files that only need to
# exist (``reset`` is write-only), the config space header, links. read_device ignores every other entry, and
# hostdev.vfio.capture (_capture) copies exactly these, so what is captured and what is read cannot drift apart.
DEVICE_ATTRIBUTES = (
    "uevent",
    "vendor",
    "device",
    "subsystem_vendor",
    "subsystem_device",
    "class",
    "modalias",
    "revision",
    "numa_node",
    "driver_override",
    "reset_method",
    "boot_vga",
    "sriov_totalvfs",
    "sriov_numvfs",
)
DEVICE_PRESENCE = ("reset",)
DEVICE_CONFIG = "config"
CONFIG_HEADER = 64  # bytes: the standard header (the header type is byte 0x0e)
DEVICE_LINKS = ("driver", "iommu_group", "physfn")
VIRTFN_PREFIX = "virtfn"  # virtfn0, virtfn1, ...: links to the VFs of an SR-IOV physical function
DEVICE_CDEV_DIR = "vfio-dev"  # vfio-dev/vfioN: the function's VFIO device cdev (only its name is read)
_DEVICE_ENTRIES = frozenset((*DEVICE_ATTRIBUTES, *DEVICE_PRESENCE, DEVICE_CONFIG, *DEVICE_LINKS, DEVICE_CDEV_DIR))


def device_entry(name: str) -> bool:
    """Whether read_device looks at this entry of a function's directory."""
    return name in _DEVICE_ENTRIES or (name.startswith(VIRTFN_PREFIX) and name[len(VIRTFN_PREFIX) :].isdigit())


PCI_HEADER_NORMAL = 0
PCI_HEADER_BRIDGE = 1
PCI_HEADER_CARDBUS = 2


def normalize_address(text: str) -> str:
    """Return the full lower-case ``DDDD:BB:DD.F`` form of a PCI address; ``BB:DD.F`` means domain 0000.

    Raises ValueError for anything that is not a PCI address.
    """
    m = ADDRESS_RE.fullmatch(text.strip(" ")) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{text!r} is not a PCI address (expected DDDD:BB:DD.F or BB:DD.F, e.g. 0000:01:00.0)")
    domain = int(m.group("domain") or "0", 16)
    return f"{domain:04x}:{m.group('bus').lower()}:{m.group('slot').lower()}.{m.group('fn')}"


def query_addresses(facts: dict, query: str) -> list[str]:
    """Addresses from a JMESPath ``query`` over an iommu_facts dict: the query returns addresses, device dicts
    (with an ``address``), one of those, or null. The one reading of a ``query`` selector, for the modules and the
    role's rules alike; raises ``ValueError`` with the reason."""
    try:
        import jmespath
    except ImportError as exc:
        raise ValueError(
            "the 'query' selector needs the Python library jmespath where the selection is made (the "
            "python3-jmespath package, or pip install jmespath)"
        ) from exc
    shown = v.shown(query)
    try:
        result = jmespath.search(query, facts)
    except jmespath.exceptions.JMESPathError as exc:
        raise ValueError(f"query {shown} is not valid JMESPath: {exc}") from exc
    except RecursionError:
        raise ValueError(f"query {shown} nests too deeply to evaluate; write a flatter expression") from None
    if result is None:
        return []
    if isinstance(result, (str, dict)):
        result = [result]
    if not isinstance(result, list):
        raise ValueError(
            f"query {shown} must return a list of devices (objects with an address) or of addresses; "
            f"it returned {result!r}"
        )
    out = []
    for item in result:
        value = item.get("address") if isinstance(item, dict) else item
        if not isinstance(value, str):
            raise ValueError(
                f"query {shown} must return a list of devices (objects with an address) or of addresses; "
                f"it returned {item!r}"
            )
        try:
            out.append(normalize_address(value))
        except ValueError:
            raise ValueError(f"query {shown} returned {value!r}, which is not a PCI address") from None
    return out


def is_vfio_driver(driver: str | None) -> bool:
    """True for vfio-pci and the vfio-pci variant drivers (mlx5_vfio_pci, hisi_acc_vfio_pci, ...)."""
    return bool(driver) and bool(_VFIO_DRIVER_RE.fullmatch(driver))


def driver_keeps_group_viable(driver: str | None) -> bool:
    """The kernel's rule for one group member: unbound, a VFIO driver, pci-stub, or the PCIe port driver."""
    return driver is None or is_vfio_driver(driver) or driver in STUB_DRIVERS or driver in BRIDGE_DRIVERS


def same_module(a: str, b: str) -> bool:
    """Module and driver names compare with '-' and '_' as the same character, as kmod does."""
    return a.replace("-", "_") == b.replace("-", "_")


@dataclass
class PciDevice:
    """One PCI function, as read from /sys/bus/pci/devices/<address>."""

    address: str
    vendor_id: str
    device_id: str
    subsystem_vendor_id: str | None
    subsystem_device_id: str | None
    class_code: str  # 6 hex digits: base class, subclass, programming interface
    revision: str | None
    header_type: int | None
    driver: str | None
    driver_override: str | None
    iommu_group: int | None
    numa_node: int | None
    boot_vga: bool
    reset_methods: list[str]
    has_reset: bool
    sriov_totalvfs: int | None
    sriov_numvfs: int | None
    physfn: str | None
    virtfns: list[str]
    parent: str | None
    sysfs_path: str = field(repr=False, default="")
    modalias: str | None = None  # pci:v...d...sv...sd...bc..sc..i.. (what modules.alias patterns match)
    # Why the function's identity (ids, class) could not be read, or None. Such a function is reported, never changed.
    unreadable: str | None = None
    # The VFIO device cdev the kernel made for the function (vfio-dev/vfioN, kernels with iommufd support, while a
    # VFIO driver is bound) and its MAJ:MIN; None when there is none.
    vfio_cdev: str | None = None
    vfio_cdev_dev: str | None = None

    @property
    def class_id(self) -> str:
        return self.class_code[:4]

    @property
    def is_bridge(self) -> bool:
        if self.header_type is not None:
            return self.header_type in (PCI_HEADER_BRIDGE, PCI_HEADER_CARDBUS)
        return self.class_id in ("0604", "0607", "0609")

    @property
    def ids(self) -> str:
        return f"{self.vendor_id}:{self.device_id}"

    def vfio_blockers(self) -> list[str]:
        """Reasons why vfio-pci cannot take this function (empty when it can)."""
        reasons = []
        if self.header_type not in (None, PCI_HEADER_NORMAL) or (self.header_type is None and self.is_bridge):
            reasons.append("vfio-pci only drives normal (type 0) functions; this is a bridge")
        if self.iommu_group is None:
            reasons.append("the function has no IOMMU group (the IOMMU is off or does not cover it)")
        return reasons


@dataclass
class IommuGroup:
    id: int
    type: str | None
    devices: list[str]


@dataclass
class Snapshot:
    """A consistent read of the PCI/IOMMU state: devices by address, groups by id, IOMMU units."""

    devices: dict[str, PciDevice]
    groups: dict[int, IommuGroup]
    units: list[dict]

    @property
    def iommu_enabled(self) -> bool:
        return bool(self.groups)

    def group_of(self, address: str) -> IommuGroup | None:
        dev = self.devices.get(address)
        if dev is None or dev.iommu_group is None:
            return None
        return self.groups.get(dev.iommu_group)


def assess_group(snapshot: Snapshot, group_id: int, planned: dict[str, str | None] | None = None):
    """Judge a group by the kernel's rule. ``planned`` maps addresses to the driver they will have.

    Returns (viable, blockers) where blockers is a list of {address, driver} of members that would claim
    the group for the host.
    """
    planned = planned or {}
    group = snapshot.groups[group_id]
    blockers = []
    for address in group.devices:
        dev = snapshot.devices.get(address)
        driver = planned.get(address, dev.driver if dev else None)
        if not driver_keeps_group_viable(driver):
            blockers.append({"address": address, "driver": driver})
    return not blockers, blockers


# ---------------------------------------------------------------------------------------------------------
# Reading sysfs


def _read(path: str) -> str | None:
    """The stripped text of a sysfs attribute, or None if it cannot be read (os.read: no buffering layers)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    try:
        data = os.read(fd, 4096)
    except OSError:
        return None
    finally:
        os.close(fd)
    return data.decode("ascii", "replace").strip()


def _hex2(text: str | None) -> str | None:
    try:
        return f"{int(text, 16):02x}" if text else None
    except ValueError:
        return None


def _int(text: str | None) -> int | None:
    if text is None:
        return None
    try:
        return int(text, 0)
    except ValueError:
        return None


def _link_name(path: str) -> str | None:
    try:
        return os.path.basename(os.readlink(path))
    except OSError:
        return None


def _header_type(dev_path: str) -> int | None:
    """Header type from config space byte 0x0e (bit 7 only marks multi-function)."""
    try:
        fd = os.open(dev_path + "/config", os.O_RDONLY)
    except OSError:
        return None
    try:
        head = os.read(fd, 16)
    except OSError:
        return None
    finally:
        os.close(fd)
    if len(head) < 15:
        return None
    return head[14] & 0x7F


def _parent_address(real_path: str) -> str | None:
    parent = os.path.basename(os.path.dirname(real_path))
    return parent if ADDRESS_RE.fullmatch(parent) else None


_HEX_RE = re.compile(r"(?:0[xX])?([0-9a-fA-F]{1,%d})")
_ID_RE = re.compile(_HEX_RE.pattern % 4)
_CLASS_RE = re.compile(_HEX_RE.pattern % 6)


class Unreadable(ValueError):
    """A sysfs attribute that names a function's identity does not hold what the kernel writes there."""


def _read_strict(path: str, name: str) -> str | None:
    """An identity attribute: ASCII text as the kernel writes it, else Unreadable; None when it does not exist."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise Unreadable(f"{name}: cannot be read ({exc.strerror or exc})") from None
    try:
        data = os.read(fd, 4097)
    except OSError as exc:
        raise Unreadable(f"{name}: cannot be read ({exc.strerror or exc})") from None
    finally:
        os.close(fd)
    if len(data) > 4096:
        raise Unreadable(f"{name}: longer than a page (4096 bytes)")
    try:
        text = data.decode("ascii")
    except UnicodeDecodeError as exc:
        raise Unreadable(f"{name}: not ASCII (byte {data[exc.start]:#04x} at offset {exc.start})") from None
    if "\0" in text:
        raise Unreadable(f"{name}: holds NUL bytes")
    return text.strip()


def _strict_hex(name: str, text: str | None, pattern: re.Pattern, width: int, optional: bool = False) -> str | None:
    if text is None and optional:
        return None
    m = pattern.fullmatch(text or "")
    if not m:
        shown = (text or "")[:40]
        raise Unreadable(f"{name}: {shown!r} is not a hex number of up to {width} digits")
    return f"{int(m.group(1), 16):0{width}x}"


def _uevent(text: str | None) -> dict[str, str]:
    out = {}
    for line in (text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key] = value
    return out


def _device_dir(sysfs_root: str, address: str) -> str:
    """The real directory of a function: /sys/bus/pci/devices/<address> is one relative symlink to it."""
    link = os.path.join(sysfs_root, "bus", "pci", "devices", address)
    try:
        target = os.readlink(link)
    except OSError:
        return os.path.realpath(link)
    real = os.path.normpath(os.path.join(os.path.dirname(link), target))
    return real if not os.path.islink(real) else os.path.realpath(link)


def read_device(sysfs_root: str, address: str) -> PciDevice:
    """Read one function. ``address`` must be the full form used as the directory name in sysfs.

    The directory is listed once and only attributes that exist are opened: fact gathering on hosts with
    hundreds of functions is dominated by system calls.
    """
    real = _device_dir(sysfs_root, address)
    base = real + "/"
    try:
        listing = os.listdir(real)
    except OSError:
        listing = None
    entries = {name for name in listing or () if device_entry(name)}

    def attr(name: str) -> str | None:
        return _read(base + name) if name in entries else None

    def link(name: str) -> str | None:
        return _link_name(base + name) if name in entries else None

    override = attr("driver_override")
    if override in ("(null)", ""):
        override = None
    numa = _int(attr("numa_node"))
    reset_method = attr("reset_method")
    totalvfs = _int(attr("sriov_totalvfs"))
    virtfns = []
    if totalvfs is not None:
        for name in entries:
            if name.startswith(VIRTFN_PREFIX):
                vf = _link_name(base + name)
                if vf:
                    virtfns.append((int(name[len(VIRTFN_PREFIX) :]), vf))
    identity, unreadable = _identity(base, entries, listed=bool(listing))
    cdevs = []
    if DEVICE_CDEV_DIR in entries:
        with contextlib.suppress(OSError):
            cdevs = sorted(n for n in os.listdir(base + DEVICE_CDEV_DIR) if n.startswith("vfio"))
    cdev = cdevs[0] if cdevs else None
    return PciDevice(
        address=address,
        vendor_id=identity["vendor"],
        device_id=identity["device"],
        subsystem_vendor_id=identity["svendor"],
        subsystem_device_id=identity["sdevice"],
        class_code=identity["class"],
        revision=_hex2(attr("revision")),
        header_type=_header_type(real) if DEVICE_CONFIG in entries else None,
        driver=link("driver"),
        driver_override=override,
        iommu_group=_int(link("iommu_group")),
        numa_node=None if numa is None or numa < 0 else numa,
        boot_vga=attr("boot_vga") == "1",
        reset_methods=reset_method.split() if reset_method else [],
        has_reset="reset" in entries,
        sriov_totalvfs=totalvfs,
        sriov_numvfs=_int(attr("sriov_numvfs")),
        physfn=link("physfn"),
        virtfns=[vf for _index, vf in sorted(virtfns)],
        parent=_parent_address(real),
        sysfs_path=real,
        modalias=identity["modalias"] or attr("modalias"),
        unreadable=unreadable,
        vfio_cdev=cdev,
        vfio_cdev_dev=_read(f"{base}vfio-dev/{cdev}/dev") if cdev else None,
    )


# What an unreadable function reports: ids no selector of real hardware matches (ffff is "no device" in PCI),
# an empty class code that no class prefix matches.
_UNKNOWN = {"vendor": "ffff", "device": "ffff", "svendor": None, "sdevice": None, "class": "", "modalias": None}


def _identity(base: str, entries: set, listed: bool = True) -> tuple:
    """``({vendor, device, svendor, sdevice, class, modalias}, None)``, or the unknown identity and the reason.

    One read of uevent gives what five attribute files give (the kernel fills both from the same fields); the
    attribute files are read when uevent lacks them. Every value must be what the kernel writes (hex of the
    right width, ASCII): anything else marks the function unreadable instead of being guessed at.
    """
    if not listed:
        return dict(_UNKNOWN), "its sysfs directory cannot be listed"

    def strict(name: str) -> str | None:
        return _read_strict(base + name, name) if name in entries else None

    try:
        uevent = _uevent(strict("uevent"))
        if "PCI_ID" in uevent or "PCI_CLASS" in uevent:
            vendor, _sep, device = uevent.get("PCI_ID", "").partition(":")
            subsys = uevent.get("PCI_SUBSYS_ID")
            svendor, _sep, sdevice = subsys.partition(":") if subsys is not None else (None, "", None)
            class_text, where = uevent.get("PCI_CLASS"), "uevent "
        else:
            vendor, device = strict("vendor"), strict("device")
            svendor, sdevice = strict("subsystem_vendor"), strict("subsystem_device")
            class_text, where = strict("class"), ""
        identity = {
            "vendor": _strict_hex(where + ("PCI_ID vendor" if where else "vendor"), vendor, _ID_RE, 4),
            "device": _strict_hex(where + ("PCI_ID device" if where else "device"), device, _ID_RE, 4),
            "svendor": _strict_hex(where + "subsystem vendor", svendor, _ID_RE, 4, optional=True),
            "sdevice": _strict_hex(where + "subsystem device", sdevice, _ID_RE, 4, optional=True),
            "class": _strict_hex(where + ("PCI_CLASS" if where else "class"), class_text, _CLASS_RE, 6),
            "modalias": uevent.get("MODALIAS"),
        }
    except Unreadable as exc:
        return dict(_UNKNOWN), str(exc)
    return identity, None


def driver_module(sysfs_root: str, driver: str | None) -> str | None:
    """The module that provides a registered PCI driver (xhci_hcd -> xhci_pci), or None (built in / unknown)."""
    if not driver:
        return None
    try:
        return os.path.basename(os.readlink(os.path.join(sysfs_root, "bus", "pci", "drivers", driver, "module")))
    except OSError:
        return None


def _unit_type(name: str) -> str:
    if name.startswith("dmar"):
        return "intel-vtd"
    if name.startswith("ivhd"):
        return "amd-vi"
    if "smmu" in name:
        return "arm-smmu"
    if name.startswith("virtio"):
        return "virtio-iommu"
    return "other"


def read_units(sysfs_root: str) -> list[dict]:
    base = os.path.join(sysfs_root, "class", "iommu")
    try:
        names = sorted(os.listdir(base))
    except OSError:
        return []
    return [{"name": name, "type": _unit_type(name)} for name in names]


def read_groups(sysfs_root: str) -> dict[int, IommuGroup]:
    base = os.path.join(sysfs_root, "kernel", "iommu_groups")
    try:
        entries = os.listdir(base)
    except OSError:
        return {}
    groups = {}
    for name in entries:
        if not name.isdigit():
            continue
        gpath = os.path.join(base, name)
        try:
            members = sorted(os.listdir(os.path.join(gpath, "devices")))
        except OSError:
            members = []
        gid = int(name)
        groups[gid] = IommuGroup(id=gid, type=_read(os.path.join(gpath, "type")), devices=members)
    return dict(sorted(groups.items()))


def read_snapshot(sysfs_root: str = "/sys") -> Snapshot:
    """Read every PCI function, IOMMU group and IOMMU unit under ``sysfs_root``."""
    base = os.path.join(sysfs_root, "bus", "pci", "devices")
    try:
        addresses = sorted(os.listdir(base))
    except OSError:
        addresses = []
    devices = {a: read_device(sysfs_root, a) for a in addresses if ADDRESS_RE.fullmatch(a)}
    groups = read_groups(sysfs_root)
    # Group membership from the groups' own lists keeps non-PCI members (platform devices) visible too;
    # make sure PCI functions that name a group are listed in it even if the group dir was unreadable.
    for dev in devices.values():
        if dev.iommu_group is not None:
            group = groups.setdefault(dev.iommu_group, IommuGroup(id=dev.iommu_group, type=None, devices=[]))
            if dev.address not in group.devices:
                group.devices.append(dev.address)
                group.devices.sort()
    return Snapshot(devices=devices, groups=dict(sorted(groups.items())), units=read_units(sysfs_root))
