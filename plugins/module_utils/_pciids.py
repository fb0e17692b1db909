# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Names for PCI ids and classes from the pci.ids database (hwdata / pciutils), when it is installed.

The database is never required: without it, vendor and device names are null and class names come from
the small table of PCI base classes and common subclasses below. Lookups search the file text lazily
instead of parsing all of its ~40,000 lines, so naming a few dozen devices costs a few milliseconds.
"""

from __future__ import annotations

__metaclass__ = type

import os
import re

PCI_IDS_PATHS = (
    "/usr/share/hwdata/pci.ids",
    "/usr/share/misc/pci.ids",
    "/usr/share/pci.ids",
    "/usr/share/pciids/pci.ids",
)

# PCI Code and ID Assignment Specification: base classes and the subclasses passthrough users meet most.
CLASS_NAMES = {
    "00": "Unclassified device",
    "01": "Mass storage controller",
    "0100": "SCSI storage controller",
    "0101": "IDE interface",
    "0104": "RAID bus controller",
    "0106": "SATA controller",
    "0107": "Serial Attached SCSI controller",
    "0108": "Non-Volatile memory controller",
    "02": "Network controller",
    "0200": "Ethernet controller",
    "0207": "Infiniband controller",
    "03": "Display controller",
    "0300": "VGA compatible controller",
    "0302": "3D controller",
    "0380": "Display controller",
    "04": "Multimedia controller",
    "0401": "Multimedia audio controller",
    "0403": "Audio device",
    "05": "Memory controller",
    "06": "Bridge",
    "0600": "Host bridge",
    "0601": "ISA bridge",
    "0604": "PCI bridge",
    "0609": "Semi-transparent PCI-to-PCI bridge",
    "07": "Communication controller",
    "08": "Generic system peripheral",
    "0806": "IOMMU",
    "09": "Input device controller",
    "0a": "Docking station",
    "0b": "Processor",
    "0c": "Serial bus controller",
    "0c03": "USB controller",
    "0c05": "SMBus",
    "0d": "Wireless controller",
    "0e": "Intelligent controller",
    "0f": "Satellite communications controller",
    "10": "Encryption controller",
    "11": "Signal processing controller",
    "12": "Processing accelerators",
    "13": "Non-Essential Instrumentation",
    "40": "Coprocessor",
    "ff": "Unassigned class",
}


# A line that starts a new top-level entry (vendor or class): not indented, not a comment.
_TOP_LEVEL_LINE = re.compile(rb"\n(?=[0-9a-fA-FC])")


def _child(block: bytes, key: str) -> str | None:
    """The name on the first-level line ``<TAB>key<2 spaces>name`` of a block, or None."""
    needle = b"\n\t" + key.encode("ascii") + b"  "
    pos = block.find(needle)
    if pos < 0:
        return None
    end = block.find(b"\n", pos + 1)
    return block[pos + len(needle) : end if end >= 0 else len(block)].decode("utf-8", "replace").strip()


def find_pci_ids(root: str = "/") -> str | None:
    for path in PCI_IDS_PATHS:
        full = os.path.join(root, path.lstrip("/"))
        if os.path.isfile(full):
            return full
    return None


class PciIds:
    """Lazy name lookups in one pci.ids file (or none)."""

    def __init__(self, path: str | None):
        self.path = path
        self._text: bytes | None = None
        self._block_cache: dict[str, tuple[str | None, bytes]] = {}
        self._device_cache: dict[tuple[str, str], str | None] = {}
        self._class_cache: dict[str, str] = {}
        self._classes_at: int | None = None

    def _data(self) -> bytes:
        """The file as bytes (searching bytes avoids decoding ~1.3 MB for a few names)."""
        if self._text is None:
            self._text = b""
            if self.path:
                try:
                    with open(self.path, "rb") as f:
                        self._text = b"\n" + f.read()
                except OSError:
                    self._text = b""
        return self._text

    def _block(self, header: str) -> tuple[str | None, bytes]:
        """Find the top-level line ``header`` + two spaces; return its name and the text of its indented lines."""
        if header not in self._block_cache:
            self._block_cache[header] = self._find_block(header)
        return self._block_cache[header]

    def _find_block(self, header: str) -> tuple[str | None, bytes]:
        text = self._data()
        needle = b"\n" + header.encode("ascii") + b"  "
        start = 0
        if header.startswith("C "):  # the class list is the last section: search from its start
            if self._classes_at is None:
                self._classes_at = max(text.find(b"\nC 00  "), 0)
            start = self._classes_at
        pos = text.find(needle, start)
        if pos < 0:
            return None, b""
        end_line = text.find(b"\n", pos + 1)
        end_line = len(text) if end_line < 0 else end_line
        name = text[pos + len(needle) : end_line].decode("utf-8", "replace").strip()
        match = _TOP_LEVEL_LINE.search(text, end_line)
        return name, text[end_line : match.start() if match else len(text)]

    def _vendor(self, vendor_id: str):
        return self._block(vendor_id)

    def vendor_name(self, vendor_id: str) -> str | None:
        return self._vendor(vendor_id)[0]

    def device_name(self, vendor_id: str, device_id: str) -> str | None:
        key = (vendor_id, device_id)
        if key not in self._device_cache:
            self._device_cache[key] = _child(self._vendor(vendor_id)[1], device_id)
        return self._device_cache[key]

    def class_name(self, class_code: str) -> str:
        """Name of a 6-digit class code: the subclass name where known, else the base class name."""
        base, sub = class_code[:2], class_code[2:4]
        if base + sub not in self._class_cache:
            name, children = self._block("C " + base)
            if name:
                self._class_cache[base + sub] = _child(children, sub) or name
            else:
                self._class_cache[base + sub] = CLASS_NAMES.get(base + sub) or CLASS_NAMES.get(base) or "Unknown class"
        return self._class_cache[base + sub]
