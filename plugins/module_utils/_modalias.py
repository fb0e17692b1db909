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


def _vendor_key(text: str) -> str:
    """The 8 hex digits of the vendor field (``pci:vXXXXXXXX...``), or ``*`` when the pattern globs there."""
    key = text[5:13] if text.startswith("pci:v") else ""
    return key if len(key) == 8 and not _GLOB.search(key) else _WILDCARD


class _Table:
    """The ``pci:`` patterns of one alias file, bucketed by vendor so a lookup tries a few hundred, not all."""

    def __init__(self, path: str | None):
        self._buckets: dict[str, list[list]] = {}
        try:
            with open(path or "", encoding="utf-8", errors="replace") as f:
                lines = [line for line in f if line.startswith("alias pci:")]
        except OSError:
            lines = []
        for line in lines:
            parts = line.split()
            if len(parts) == 3:
                # [pattern, module, compiled regex or None until first use]
                self._buckets.setdefault(_vendor_key(parts[1]), []).append([parts[1], parts[2], None])

    def __bool__(self) -> bool:
        return bool(self._buckets)

    def match(self, modalias: str) -> list[str]:
        found = []
        for entry in self._buckets.get(_vendor_key(modalias), []) + self._buckets.get(_WILDCARD, []):
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

    @property
    def available(self) -> bool:
        return bool(self._loadable) or bool(self._builtin)

    def modules_for(self, modalias: str | None) -> list[str]:
        """The modules whose device table matches ``modalias``, as ``modprobe -R`` lists them."""
        if not modalias or not modalias.startswith("pci:"):
            return []
        return self._loadable.match(modalias) or self._builtin.match(modalias)


def running_modules_dir(proc_root: str = "/proc", modules_root: str = "/lib/modules") -> str | None:
    """``/lib/modules/<release>`` of the running kernel (release from ``/proc/sys/kernel/osrelease``)."""
    try:
        with open(os.path.join(proc_root, "sys", "kernel", "osrelease"), encoding="ascii", errors="replace") as f:
            release = f.read().strip()
    except OSError:
        return None
    return os.path.join(modules_root, release) if release and "/" not in release else None
