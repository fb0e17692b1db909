#!/usr/bin/env python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time listing a lab guest's initramfs image: the generator's own lister against the collection's cpio reader.

For each guest (default: every lab guest), the running kernel's image (/boot/initrd.img-$(uname -r)) is listed
``--repeat`` times by the generator's lister (``lsinitramfs`` on initramfs-tools guests, ``lsinitrd`` on dracut
ones) and by ``plugins/module_utils/_cpio.py`` (copied into the guest alone: it needs only Python's standard
library), both timed inside the guest. Prints the median of each, the ratio, the image's size and number of
names, and whether both found the same names. Needs the lab up (``make lab-up``); takes the lab locks like
benchmarks/bind.py. Run with the dev venv's python: ``.venv/bin/python benchmarks/initramfs_list.py``.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bind import GUEST_LOCK, LOCK, REPO, STATE, Guest  # the benchmarks' shared guest access

GUEST_DIR = "/tmp/hostdev-bench-initramfs"
SCRIPT = r"""
import json, os, re, shutil, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import _cpio
image = "/boot/initrd.img-" + os.uname().release
lister = shutil.which("lsinitrd") or shutil.which("lsinitramfs")
def by_lister():
    out = subprocess.run([lister, image], capture_output=True, text=True, check=True).stdout
    names = set()
    for line in out.splitlines():
        parts = line.split()
        if len(parts) >= 9 and re.match(r"^[-dlcbps][rwxsStT-]{9}", parts[0]):
            name = " ".join(parts[9 if parts[0][0] in "cb" else 8 :]).split(" -> ")[0]
        elif os.path.basename(lister) == "lsinitramfs":
            name = line.strip()
        else:
            continue  # lsinitrd's header lines
        if _cpio.normal(name):
            names.add(_cpio.normal(name))
    return names
times = {"lister": [], "cpio": []}
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); listed = by_lister(); times["lister"].append(time.perf_counter() - t)
    t = time.perf_counter(); read = _cpio.names(image, shutil.which); times["cpio"].append(time.perf_counter() - t)
print(json.dumps({"image": image, "bytes": os.path.getsize(image), "lister": os.path.basename(lister),
                  "times": times, "names": len(read), "same": listed == set(read),
                  "only_lister": sorted(listed - set(read))[:5], "only_cpio": sorted(set(read) - listed)[:5]}))
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("hosts", nargs="*")
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args(argv)
    import yaml  # the dev venv has it

    inventory = yaml.safe_load((STATE / "inventory.yml").read_text())
    hosts = opts.hosts or sorted(inventory["all"]["children"]["lab"]["hosts"])
    reader = (REPO / "plugins" / "module_utils" / "_cpio.py").read_text()
    print(f"initramfs listing on the lab guests, {opts.repeat} rounds each, timed inside the guest (TCG)")
    print(f"{'guest':<9} {'lister':<12} {'lister s':>9} {'cpio s':>7} {'ratio':>6} {'MiB':>5} {'names':>6}  same")
    with open(LOCK, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        for host in hosts:
            guest = Guest(host)
            with open(GUEST_LOCK.format(host=host), "a") as guest_lock:
                fcntl.flock(guest_lock, fcntl.LOCK_EX)
                try:
                    guest.sh(f"rm -rf {GUEST_DIR} && mkdir -p {GUEST_DIR}")
                    guest.sh(f"cat > {GUEST_DIR}/_cpio.py <<'EOF'\n{reader}\nEOF\n")
                    guest.sh(f"cat > {GUEST_DIR}/bench.py <<'EOF'\n{SCRIPT}\nEOF\n")
                    got = json.loads(guest.sh(f"python3 {GUEST_DIR}/bench.py {GUEST_DIR} {opts.repeat}"))
                finally:
                    guest.sh(f"rm -rf {GUEST_DIR}", check=False)
            lister, cpio = (statistics.median(got["times"][k]) for k in ("lister", "cpio"))
            print(
                f"{host:<9} {got['lister']:<12} {lister:>9.2f} {cpio:>7.2f} {lister / cpio:>5.1f}x "
                f"{got['bytes'] / 2**20:>5.1f} {got['names']:>6}  {'yes' if got['same'] else 'NO'}"
            )
            if not got["same"]:
                print(f"  only the lister: {got['only_lister']}; only the reader: {got['only_cpio']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
