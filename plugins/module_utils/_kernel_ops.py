# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The few kernel interfaces that move a PCI function between drivers, behind one small class.

``SysfsKernel`` writes the real files (``driver_override``, ``driver/unbind``, ``/sys/bus/pci/drivers_probe``)
and loads driver modules with ``modprobe`` through an injected command runner. Unit tests replace it with a
fake that models the kernel's bind/unbind rules over a fake sysfs tree; everything that reads state goes through
the same methods, so the planner and the verification code are the same in both worlds.

Never ``new_id``: it makes a driver claim every device with those ids, including ones nobody asked for.
"""

from __future__ import annotations

__metaclass__ = type

import os
import time

from ansible_collections.hostdev.vfio.plugins.module_utils import _validate
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import driver_module


class KernelError(Exception):
    """A kernel write or a module load failed; the message says which file or command and why."""


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read().strip()
    except OSError:
        return None


class SysfsKernel:
    """Driver binding through sysfs. ``run_command(argv) -> (rc, out, err)`` is used for modprobe only."""

    def __init__(self, sysfs_root: str = "/sys", dev_root: str = "/dev", run_command=None, modprobe: str = "modprobe"):
        self.sysfs_root = sysfs_root
        self.dev_root = dev_root
        self.run_command = run_command
        self.modprobe = modprobe

    # -- paths --------------------------------------------------------------------------------------------
    def _dev(self, address: str, *parts: str) -> str:
        return os.path.join(self.sysfs_root, "bus", "pci", "devices", address, *parts)

    def _write(self, path: str, value: str) -> None:
        """One write(2) of ``value``: sysfs attributes take a single write; the error is the kernel's answer."""
        word = value[:-1] if value.endswith("\n") else value
        try:
            _validate.text("value", word, allow_empty=True)
        except _validate.InvalidValue as exc:
            raise KernelError(f"refusing to write to {path}: {exc}") from None
        if not word.isascii() or " " in word:
            raise KernelError(f"refusing to write {_validate.shown(value)} to {path}: not one ASCII word")
        try:
            fd = os.open(path, os.O_WRONLY)
        except OSError as exc:
            raise KernelError(f"cannot open {path}: {exc.strerror}") from exc
        try:
            os.write(fd, value.encode("ascii"))
        except OSError as exc:
            raise KernelError(f"writing {value.strip()!r} to {path} failed: {exc.strerror}") from exc
        finally:
            os.close(fd)

    # -- reading ------------------------------------------------------------------------------------------
    def driver(self, address: str) -> str | None:
        try:
            return os.path.basename(os.readlink(self._dev(address, "driver")))
        except OSError:
            return None

    def override(self, address: str) -> str | None:
        value = _read(self._dev(address, "driver_override"))
        return None if value in (None, "", "(null)") else value

    def driver_registered(self, driver: str) -> bool:
        """Whether a PCI driver of that name is registered (its module is loaded or built in)."""
        return os.path.isdir(os.path.join(self.sysfs_root, "bus", "pci", "drivers", driver))

    def driver_module(self, driver: str) -> str | None:
        """The module that provides a registered driver (xhci_hcd -> xhci_pci), or None (built in / unknown)."""
        return driver_module(self.sysfs_root, driver)

    def vfio_group_file(self, group: int) -> bool:
        return os.path.exists(os.path.join(self.dev_root, "vfio", str(group)))

    def wait_vfio_group_file(self, group: int, timeout: float = 5.0) -> bool:
        """devtmpfs creates the node when vfio registers the group; allow udev a moment to apply permissions."""
        deadline = time.monotonic() + timeout
        while True:
            if self.vfio_group_file(group):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    # -- acting -------------------------------------------------------------------------------------------
    def load_module(self, name: str) -> None:
        """``modprobe NAME``; KernelError with modprobe's own message when it fails."""
        try:
            _validate.module_name("module", name)
        except _validate.InvalidValue as exc:
            raise KernelError(f"refusing to run modprobe: {exc}") from None
        if self.run_command is None:
            raise KernelError(f"cannot load {name}: no command runner")
        rc, out, err = self.run_command([self.modprobe, name])
        if rc != 0:
            detail = (err or out or "").strip() or f"exit status {rc}"
            raise KernelError(f"modprobe {name} failed: {detail}")

    def set_override(self, address: str, driver: str | None) -> None:
        """Write ``driver_override``; None clears it (the kernel takes a lone newline as 'no override')."""
        if driver is not None:
            try:
                _validate.driver_name("driver_override", driver)
            except _validate.InvalidValue as exc:
                raise KernelError(f"refusing to write driver_override of {address}: {exc}") from None
        self._write(self._dev(address, "driver_override"), (driver or "") + "\n")

    def unbind(self, address: str) -> None:
        if self.driver(address) is None:
            return
        self._write(self._dev(address, "driver", "unbind"), address)

    def probe(self, address: str) -> None:
        """Ask the PCI core to find a driver now. Success of the write does NOT mean a driver bound."""
        self._write(os.path.join(self.sysfs_root, "bus", "pci", "drivers_probe"), address)
