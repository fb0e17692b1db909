#!/usr/bin/env python
"""bind_by_hand.py ADDRESS DRIVER|none|host : put one PCI function on a driver with plain sysfs writes.

Independent of the collection's code on purpose: the iommu_facts target binds devices this way and then
compares the module's verdict with the kernel's. DRIVER = a driver name (loaded first with modprobe);
none = leave the device unbound (override to a driver that does not exist); host = clear the override and
let the kernel pick. Prints the driver the device ended on.
"""

import contextlib
import os
import subprocess
import sys

DEV = "/sys/bus/pci/devices"


def write(path, text):
    with open(path, "w") as f:
        f.write(text)


def main(address, driver):
    base = os.path.join(DEV, address)
    if driver not in ("none", "host"):
        subprocess.run(["modprobe", driver], check=True)
    write(os.path.join(base, "driver_override"), {"none": "hostdev-none", "host": "\n"}.get(driver, driver))
    if os.path.islink(os.path.join(base, "driver")):
        write(os.path.join(base, "driver", "unbind"), address)
    with contextlib.suppress(OSError):  # no driver took it: expected for "none"
        write("/sys/bus/pci/drivers_probe", address)
    link = os.path.join(base, "driver")
    print(os.path.basename(os.readlink(link)) if os.path.islink(link) else "none")


if __name__ == "__main__":
    main(*sys.argv[1:])
