# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""A fake ``qemu-system-x86_64``: a small Python script that speaks QMP on stdio and judges like the kernel.

It reads the fake sysfs tree named by ``FAKE_QEMU_SYSFS``. For each ``-device vfio-pci,host=ADDR,id=ID`` in its
argv, in order, it does what QEMU 7.2 does on a real kernel: when a member of ADDR's IOMMU group is on a driver
that claims the group for the host, it prints ``vfio ADDR: group N is not viable`` and exits 1; when ADDR itself is
not on vfio-pci (pci-stub), ``error getting device from group N: No such device`` and exits 1. Otherwise it sends
the QMP greeting, answers ``qmp_capabilities``, ``query-pci`` (an async event first, the first device on bus 0 and
the others behind a bridge) and ``quit``.

Every run appends ``{"argv": [...], "memlock": [soft, hard]}`` to the file ``FAKE_QEMU_LOG``, so a test can show
the fake never ran, or what RLIMIT_MEMLOCK it got. ``FAKE_QEMU_MODE=hang`` makes it send the greeting and then
never answer.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

SCRIPT = r"""
import json
import os
import resource
import sys
import time

prog = os.path.basename(sys.argv[0])
args = sys.argv[1:]
sysfs = os.environ.get("FAKE_QEMU_SYSFS", "/nonexistent")
mode = os.environ.get("FAKE_QEMU_MODE", "")
log = os.environ.get("FAKE_QEMU_LOG")
if log:
    with open(log, "a") as f:
        f.write(json.dumps({"argv": sys.argv, "memlock": list(resource.getrlimit(resource.RLIMIT_MEMLOCK))}) + "\n")
if args == ["-version"]:
    print("QEMU emulator version 7.2.22 (fake)")
    print("Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers")
    sys.exit(0)


def dev_dir(address):
    return os.path.join(sysfs, "bus", "pci", "devices", address)


def driver(address):
    link = os.path.join(dev_dir(address), "driver")
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


def read(address, name):
    with open(os.path.join(dev_dir(address), name)) as f:
        return int(f.read().strip(), 16)


devices = []
for index, arg in enumerate(args):
    if arg == "-device":
        opt = args[index + 1]
        props = dict(p.split("=", 1) for p in opt.split(",")[1:])
        devices.append((opt, props["host"], props["id"]))

for opt, address, qdev in devices:
    group = int(os.path.basename(os.readlink(os.path.join(dev_dir(address), "iommu_group"))))
    members = os.listdir(os.path.join(sysfs, "kernel", "iommu_groups", str(group), "devices"))
    if any(driver(m) not in (None, "vfio-pci", "pci-stub", "pcieport") for m in members):
        sys.stderr.write(f"{prog}: -device {opt}: vfio {address}: group {group} is not viable\n")
        sys.stderr.write("Please ensure all devices within the iommu_group are bound to their vfio bus driver.\n")
        sys.exit(1)
    if driver(address) != "vfio-pci":
        sys.stderr.write(f"{prog}: -device {opt}: vfio {address}: error getting device from group {group}: "
                         "No such device\n")
        sys.stderr.write(f"Verify all devices in group {group} are bound to vfio-<bus> or pci-stub and not "
                         "already in use\n")
        sys.exit(1)


def send(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()


def pci(slot, address, qdev):
    return {"bus": 0, "slot": slot, "function": 0, "qdev_id": qdev,
            "id": {"vendor": read(address, "vendor"), "device": read(address, "device"),
                   "subsystem": 0, "subsystem-vendor": 0},
            "class_info": {"class": 512}, "regions": []}


sys.stderr.write(f"{prog}: warning: fake QEMU, no real device is touched\n")
send({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "fake"}, "capabilities": []}})
for line in sys.stdin:
    if mode == "hang":
        time.sleep(3600)
    command = json.loads(line)
    name, ident = command["execute"], command.get("id")
    if name == "qmp_capabilities":
        send({"return": {}, "id": ident})
    elif name == "query-pci":
        send({"timestamp": {"seconds": 1, "microseconds": 0}, "event": "RTC_CHANGE", "data": {"offset": 0}})
        top = [{"bus": 0, "slot": 0, "function": 0, "qdev_id": "",
                "id": {"vendor": 0x8086, "device": 0x29c0}, "class_info": {"class": 1536}}]
        # QEMU 7.2 paused (-S): the devices sit on the root bus, and a bridge has no secondary bus number yet
        # (no firmware ran), so query-pci lists no device behind it.
        top += [pci(2 + i, a, q) for i, (_o, a, q) in enumerate(devices)]
        top.append({"bus": 0, "slot": 31, "function": 0, "qdev_id": "",
                    "id": {"vendor": 0x8086, "device": 0x2918}, "class_info": {"class": 1537}})
        send({"return": [{"bus": 0, "devices": top}], "id": ident})
    elif name == "quit":
        send({"return": {}, "id": ident})
        send({"timestamp": {"seconds": 2, "microseconds": 0}, "event": "SHUTDOWN", "data": {"guest": False}})
        sys.exit(0)
    else:
        send({"error": {"class": "CommandNotFound", "desc": f"The command {name} has not been found"}, "id": ident})
"""


def write_fake_qemu(directory: Path, name: str = "qemu-system-x86_64") -> Path:
    """Write the fake into ``directory`` as an executable ``name``; returns its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text(f"#!{sys.executable}\n{SCRIPT}")
    os.chmod(path, 0o755)
    return path


def fake_env(monkeypatch, sysfs: Path, log: Path, mode: str = "") -> None:
    monkeypatch.setenv("FAKE_QEMU_SYSFS", str(sysfs))
    monkeypatch.setenv("FAKE_QEMU_LOG", str(log))
    monkeypatch.setenv("FAKE_QEMU_MODE", mode)


def runs(log: Path) -> list:
    """The fake's runs, from its log (empty when it never ran)."""
    import json

    return [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
