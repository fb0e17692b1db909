#!/usr/bin/env python
"""vfio_open_device.py GROUP ADDR... : try VFIO_GROUP_GET_DEVICE_FD for each address, print JSON {addr: errno|"ok"}.

Opens the container and the group, attaches the group (VFIO_GROUP_SET_CONTAINER) and sets the type1 IOMMU model, as
a VMM does, then asks the group for each device by name. Only a device bound to a vfio driver can be opened; a
pci-stub companion is refused by the kernel (ENODEV). Plain stdlib, no collection code (lab oracle).
"""

import errno
import fcntl
import json
import os
import struct
import sys

VFIO_CHECK_EXTENSION = 0x3B65
VFIO_SET_IOMMU = 0x3B66
VFIO_GROUP_SET_CONTAINER = 0x3B68
VFIO_GROUP_GET_DEVICE_FD = 0x3B6A
VFIO_TYPE1_IOMMU, VFIO_TYPE1v2_IOMMU = 1, 3


def main(group, addresses):
    container = os.open("/dev/vfio/vfio", os.O_RDWR)
    fd = os.open(f"/dev/vfio/{group}", os.O_RDWR)
    fcntl.ioctl(fd, VFIO_GROUP_SET_CONTAINER, struct.pack("i", container))
    model = VFIO_TYPE1v2_IOMMU if fcntl.ioctl(container, VFIO_CHECK_EXTENSION, VFIO_TYPE1v2_IOMMU) else VFIO_TYPE1_IOMMU
    fcntl.ioctl(container, VFIO_SET_IOMMU, model)
    result = {}
    for address in addresses:
        name = bytearray(address.encode() + b"\0")
        try:
            dev_fd = fcntl.ioctl(fd, VFIO_GROUP_GET_DEVICE_FD, name, True)
        except OSError as exc:
            result[address] = errno.errorcode.get(exc.errno, str(exc.errno))
        else:
            result[address] = "ok"
            os.close(dev_fd)
    os.close(fd)
    os.close(container)
    print(json.dumps(result, sort_keys=True))


if __name__ == "__main__":
    main(int(sys.argv[1]), sys.argv[2:])
