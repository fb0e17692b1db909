# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which kernel modules would drive a PCI function: its modalias matched against the kernel's alias tables.

The kernel publishes a modalias per function (``pci:v00008086d000010D3sv...sd...bc02sc00i00``); depmod writes
the patterns of every module's device table to ``/lib/modules/<release>/modules.alias``. kmod resolves an alias
(``modprobe -R``) by matching it with fnmatch(3) against those patterns, and only when no loadable module
matches, against ``modules.builtin.alias``. The same is done here, so a function already on vfio-pci or
pci-stub still tells which host drivers (amdgpu, nouveau, nvidia, snd_hda_intel, xhci_pci, ...) would take it
at boot. ``alias`` lines of modprobe.d are not consulted.
"""

from __future__ import annotations

__metaclass__ = type

import fnmatch
import os
import re

_WILDCARD = "*"
_GLOB = re.compile(r"[*?\[]")


def _key(text: str) -> tuple[str, str]:
    """The literal vendor and device fields (8 hex digits each) of a modalias or pattern; ``*`` where it globs."""
    vendor = text[5:13] if text.startswith("pci:v") and text[13:14] == "d" else ""
    if len(vendor) != 8 or _GLOB.search(vendor):
        return _WILDCARD, _WILDCARD
    device = text[14:22] if text[22:24] == "sv" else ""
    return vendor, device if len(device) == 8 and not _GLOB.search(device) else _WILDCARD


class _Table:
    """The ``pci:`` patterns of one alias file, read per vendor on first use.

    A distribution kernel has some nine thousand of them. A host has a dozen vendors, so each vendor's lines are
    found with one regex scan of the text (a literal-prefix search, no Python loop over every line), bucketed by
    literal device, and a lookup tries the few patterns that can match: the same ids, the vendor's class or
    vendor-wide patterns, and the patterns whose vendor field globs (``pci:v*d*...bc0Csc03i30*``).
    """

    def __init__(self, path: str | None):
        try:
            with open(path or "", encoding="utf-8", errors="replace") as f:
                self._text = "\n" + f.read()
        except OSError:
            self._text = ""
        self._vendors: dict[str, dict[str, list[list]]] = {}
        self._globbed: list[list] | None = None

    def __bool__(self) -> bool:
        return "\nalias pci:" in self._text

    def _entries(self, regex: str) -> list[list]:
        # [pattern, module, compiled regex or None until first use]
        return [[pattern, module, None] for pattern, module in re.findall(regex, self._text)]

    def _candidates(self, vendor: str, device: str) -> list[list]:
        if self._globbed is None:
            self._globbed = self._entries(r"\nalias (pci:v[0-9A-F]{0,7}[*?\[]\S*) (\S+)")
        buckets = self._vendors.get(vendor)
        if buckets is None:
            buckets = self._vendors[vendor] = {}
            for entry in self._entries(r"\nalias (pci:v" + re.escape(vendor) + r"\S*) (\S+)"):
                buckets.setdefault(_key(entry[0])[1], []).append(entry)
        return buckets.get(device, []) + buckets.get(_WILDCARD, []) + self._globbed

    def match(self, modalias: str) -> list[str]:
        vendor, device = _key(modalias)
        if vendor == _WILDCARD:
            return []
        found = []
        for entry in self._candidates(vendor, device):
            if entry[2] is None:
                entry[2] = re.compile(fnmatch.translate(entry[0]))
            if entry[2].match(modalias) and entry[1] not in found:
                found.append(entry[1])
        return sorted(found)


class ModuleAliases:
    """The alias tables of one kernel release; empty (every lookup ``[]``) when they cannot be read."""

    def __init__(self, modules_dir: str | None):
        self.modules_dir = modules_dir
        self._loadable = _Table(os.path.join(modules_dir, "modules.alias") if modules_dir else None)
        self._builtin = _Table(os.path.join(modules_dir, "modules.builtin.alias") if modules_dir else None)
        self._cache: dict[str, list[str]] = {}

    @property
    def available(self) -> bool:
        return bool(self._loadable) or bool(self._builtin)

    def modules_for(self, modalias: str | None) -> list[str]:
        """The modules whose device table matches ``modalias``, as ``modprobe -R`` lists them."""
        if not modalias or not modalias.startswith("pci:"):
            return []
        # Identical functions (the VFs of one card, a row of the same NVMe drive) share a modalias.
        found = self._cache.get(modalias)
        if found is None:
            found = self._cache[modalias] = self._loadable.match(modalias) or self._builtin.match(modalias)
        return list(found)

    def builtin_for(self, modalias: str | None) -> list[str]:
        """The modules built into the kernel (``modules.builtin.alias``) whose device table matches ``modalias``.

        The kernel binds a built-in driver at boot whatever modprobe.d says: no softdep or blacklist keeps it off.
        """
        if not modalias or not modalias.startswith("pci:"):
            return []
        return self._builtin.match(modalias)


def running_modules_dir(proc_root: str = "/proc", modules_root: str = "/lib/modules") -> str | None:
    """``/lib/modules/<release>`` of the running kernel (release from ``/proc/sys/kernel/osrelease``)."""
    try:
        with open(os.path.join(proc_root, "sys", "kernel", "osrelease"), encoding="ascii", errors="replace") as f:
            release = f.read().strip()
    except OSError:
        return None
    return os.path.join(modules_root, release) if release and "/" not in release else None
