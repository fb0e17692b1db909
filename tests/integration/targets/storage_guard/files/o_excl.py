#!/usr/bin/env python
"""o_excl.py PATH : the kernel's answer to a read-only O_EXCL open of a block device, as JSON {"path", "errno"}
(errno: null when the open succeeded, else its name, e.g. "EBUSY" while a filesystem, dm, md or swap holds it).

o_excl.py --hold PATH : hold PATH open with O_EXCL until stopped, and tell systemd READY=1 once it does, so that
`systemd-run -p Type=notify` returns only when the device is held. Plain stdlib, no collection code (lab oracle).
"""

import errno
import json
import os
import signal
import socket
import sys


def open_exclusive(path):
    return os.open(path, os.O_RDONLY | os.O_EXCL | os.O_CLOEXEC)


def hold(path):
    fd = open_exclusive(path)  # an error ends the unit before READY=1: systemd-run fails
    notify = os.environ["NOTIFY_SOCKET"]
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(b"READY=1", "\0" + notify[1:] if notify.startswith("@") else notify)
    signal.pause()  # until systemctl stop (SIGTERM)
    os.close(fd)


def main(argv):
    if len(argv) == 2 and argv[0] == "--hold":
        hold(argv[1])
        return 0
    if len(argv) != 1:
        sys.stderr.write(__doc__)
        return 2
    try:
        os.close(open_exclusive(argv[0]))
        answer = None
    except OSError as exc:
        answer = errno.errorcode.get(exc.errno, str(exc.errno))
    print(json.dumps({"path": argv[0], "errno": answer}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
