#!/usr/bin/env python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time binding and unbinding the lab's 3-device bridge group (bridge + two e1000; only the two NICs change).

Runs against one lab guest (default ``intel``) while holding the lab locks: shared on /tmp/hostdev-lab.lock (other
engineers may use the other guests meanwhile) and exclusive on /tmp/hostdev-lab.<host>.lock. For each of
``--repeat`` rounds, a bind (both NICs to vfio-pci) and an unbind (back to the host driver) are timed with:

- ``module``: hostdev.vfio.vfio_bind through ``ansible`` ad hoc (wall time on the controller: Ansible start-up,
  ssh, module transfer and the module itself);
- ``backend``: the module's logic run directly in the guest with python3 (read, select, safety checks, plan,
  apply, verify), timed inside the guest;
- ``floor``: plain sysfs writes in a shell loop (driver_override, unbind, drivers_probe), timed inside the guest;
- ``driverctl``: ``driverctl --nosave set-override`` / ``unset-override`` (Debian package, copied into the guest
  and removed again afterwards), timed inside the guest.

Prints the median of each, and the ratios to the floor. Needs the lab up (``make lab-up``) and the collection
built (``make collection``, or a private copy named by ``ANSIBLE_COLLECTIONS_PATH``); run with the dev venv's
python (``make bench-bind``, or ``.venv/bin/python benchmarks/bind.py``).
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import glob
import json
import os
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
STATE = REPO / "tests" / "lab" / ".state"
LOCK = "/tmp/hostdev-lab.lock"
GUEST_LOCK = "/tmp/hostdev-lab.{host}.lock"
# the collection to time: the first entry of ANSIBLE_COLLECTIONS_PATH, else the shared build/ (make collection)
COLL_ROOT = Path(os.environ.get("ANSIBLE_COLLECTIONS_PATH", "").split(os.pathsep)[0] or REPO / "build")
COLL = COLL_ROOT / "ansible_collections" / "hostdev" / "vfio"
GUEST_DIR = "/tmp/hostdev-bench"

BACKEND = r"""
import json, os, subprocess, sys, time
sys.path.insert(0, "/tmp/hostdev-bench")
from ansible_collections.hostdev.vfio.plugins.module_utils import _bind, _kernel_ops, _pci, _safety
def run(argv):
    p = subprocess.run(argv, capture_output=True, text=True)
    return p.returncode, p.stdout, p.stderr
def once(driver, addresses):
    t = time.perf_counter()
    req = _bind.Request(address=addresses, driver=driver)
    snap = _pci.read_snapshot("/sys")
    selected = _bind.select(snap, req)
    prot = _safety.protected(snap, ssh_connection=os.environ.get("SSH_CONNECTION"))
    kernel = _kernel_ops.SysfsKernel(run_command=run)
    plan = _bind.build_plan(snap, req, selected, kernel, prot, rules_path="/tmp/hostdev-bench/rules",
                            state_dir="/tmp/hostdev-bench/state")
    _bind.apply(plan, kernel)
    return time.perf_counter() - t, plan.changed
driver, addresses = sys.argv[1], sys.argv[2:]
print(json.dumps(once(driver, addresses)))
"""

FLOOR_BIND = r"""
t0=$(date +%s%N)
modprobe vfio-pci
for a in "$@"; do
  echo vfio-pci > /sys/bus/pci/devices/$a/driver_override
  [ -e /sys/bus/pci/devices/$a/driver ] && echo $a > /sys/bus/pci/devices/$a/driver/unbind
  echo $a > /sys/bus/pci/drivers_probe
done
t1=$(date +%s%N)
for a in "$@"; do [ "$(basename $(readlink /sys/bus/pci/devices/$a/driver))" = vfio-pci ] || exit 3; done
echo $(( (t1 - t0) / 1000 ))
"""

FLOOR_UNBIND = r"""
t0=$(date +%s%N)
for a in "$@"; do
  echo > /sys/bus/pci/devices/$a/driver_override
  [ -e /sys/bus/pci/devices/$a/driver ] && echo $a > /sys/bus/pci/devices/$a/driver/unbind
  echo $a > /sys/bus/pci/drivers_probe
done
t1=$(date +%s%N)
for a in "$@"; do [ "$(basename $(readlink /sys/bus/pci/devices/$a/driver))" = e1000 ] || exit 3; done
echo $(( (t1 - t0) / 1000 ))
"""

DRIVERCTL = r"""
mode=$1; shift
t0=$(date +%s%N)
for a in "$@"; do
  if [ "$mode" = bind ]; then driverctl --nosave set-override $a vfio-pci; else driverctl --nosave unset-override $a; fi
done
t1=$(date +%s%N)
echo $(( (t1 - t0) / 1000 ))
"""


class Guest:
    def __init__(self, name: str):
        import yaml  # the dev venv has it; only the benchmark needs it

        inv = yaml.safe_load((STATE / "inventory.yml").read_text())
        self.vars = inv["all"]["children"]["lab"]["hosts"][name]
        self.name = name
        self.base = [
            "ssh",
            "-p",
            str(self.vars["ansible_port"]),
            "-i",
            self.vars["ansible_ssh_private_key_file"],
            *shlex.split(self.vars["ansible_ssh_common_args"]),
            f"root@{self.vars['ansible_host']}",
        ]

    def sh(self, script: str, *args: str, check: bool = True) -> str:
        argv = [*self.base, "bash", "-s", "--", *args]
        proc = subprocess.run(argv, input=script, capture_output=True, text=True, timeout=600, check=False)
        if check and proc.returncode != 0:
            raise RuntimeError(f"guest command failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout}")
        return proc.stdout

    def put(self, local: str, remote: str) -> None:
        with open(local, "rb") as f:
            subprocess.run([*self.base, f"cat > {remote}"], stdin=f, check=True, timeout=300)


def ansible_bind(guest: Guest, args: dict) -> float:
    env = dict(os.environ, ANSIBLE_CONFIG=str(STATE / "ansible.cfg"), ANSIBLE_COLLECTIONS_PATH=str(COLL_ROOT))
    ansible = str(Path(sys.executable).parent / "ansible")
    t = time.perf_counter()
    proc = subprocess.run(
        [ansible, guest.name, "-m", "hostdev.vfio.vfio_bind", "-a", json.dumps(args)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=600,
    )
    elapsed = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"ansible vfio_bind {args} failed: {proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    return elapsed


def driverctl_deb() -> str:
    found = sorted(glob.glob("/tmp/hostdev-bench-deb/driverctl_*_all.deb"))
    if found:
        return found[-1]
    os.makedirs("/tmp/hostdev-bench-deb", exist_ok=True)
    subprocess.run(["apt-get", "download", "driverctl"], cwd="/tmp/hostdev-bench-deb", check=True, capture_output=True)
    return sorted(glob.glob("/tmp/hostdev-bench-deb/driverctl_*_all.deb"))[-1]


def ms(values):
    return statistics.median(values) * 1000


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="intel")
    parser.add_argument("--repeat", type=int, default=3)
    opts = parser.parse_args(argv)
    if not (COLL / "plugins").is_dir():
        sys.exit("build the collection first: make collection")
    guest = Guest(opts.host)
    devs = guest.vars["lab_devices"]
    nics = [devs["bridge_nic1"]["address"], devs["bridge_nic2"]["address"]]
    times = {k: {"bind": [], "unbind": []} for k in ("module", "backend", "floor", "driverctl")}
    notes = []
    with open(LOCK, "a") as lock, open(GUEST_LOCK.format(host=opts.host), "a") as guest_lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        fcntl.flock(guest_lock, fcntl.LOCK_EX)
        with tempfile.TemporaryDirectory() as tmp:
            tarball = os.path.join(tmp, "coll.tar")
            subprocess.run(
                ["tar", "-cf", tarball, "-C", str(COLL_ROOT), "ansible_collections/hostdev/vfio/plugins"],
                check=True,
            )
            guest.sh(f"rm -rf {GUEST_DIR} && mkdir -p {GUEST_DIR}")
            guest.put(tarball, f"{GUEST_DIR}/coll.tar")
            guest.sh(f"tar -xf {GUEST_DIR}/coll.tar -C {GUEST_DIR}")
            have_driverctl = guest.sh("command -v driverctl || true").strip()
            # the module runs keep their record in the default state directory; remove it afterwards if we made it
            had_state_dir = guest.sh("test -e /var/lib/hostdev-vfio && echo yes || true").strip() == "yes"
            installed_here = False
            if not have_driverctl:
                try:
                    guest.put(driverctl_deb(), f"{GUEST_DIR}/driverctl.deb")
                    guest.sh(f"dpkg -i {GUEST_DIR}/driverctl.deb >/dev/null")
                    installed_here = True
                    notes.append("driverctl: Debian package copied from the controller into the guest (dpkg -i)")
                except (RuntimeError, subprocess.CalledProcessError) as exc:
                    notes.append(f"driverctl not available in the guest ({exc}); compared module vs floor only")
            guest.sh(f"cat > {GUEST_DIR}/backend.py <<'EOF'\n{BACKEND}\nEOF\n")
            try:
                for _round in range(opts.repeat):
                    times["module"]["bind"].append(ansible_bind(guest, {"address": nics}))
                    times["module"]["unbind"].append(ansible_bind(guest, {"address": nics, "driver": "host"}))
                    for mode, driver in (("bind", "vfio-pci"), ("unbind", "host")):
                        out = guest.sh(f"python3 {GUEST_DIR}/backend.py {driver} {' '.join(nics)}")
                        elapsed, changed = json.loads(out)
                        if not changed:
                            raise RuntimeError(f"backend {mode} did not change anything")
                        times["backend"][mode].append(elapsed)
                    times["floor"]["bind"].append(int(guest.sh(FLOOR_BIND, *nics)) / 1e6)
                    times["floor"]["unbind"].append(int(guest.sh(FLOOR_UNBIND, *nics)) / 1e6)
                    if installed_here or have_driverctl:
                        times["driverctl"]["bind"].append(int(guest.sh(DRIVERCTL, "bind", *nics)) / 1e6)
                        times["driverctl"]["unbind"].append(int(guest.sh(DRIVERCTL, "unbind", *nics)) / 1e6)
            finally:
                # leave the guest as found: both NICs on e1000 without override, no driverctl, no files
                with contextlib.suppress(RuntimeError):
                    guest.sh(FLOOR_UNBIND, *nics, check=False)
                if installed_here:
                    guest.sh("dpkg -P driverctl >/dev/null", check=False)
                guest.sh(f"rm -rf {GUEST_DIR}", check=False)
                if not had_state_dir:
                    guest.sh("rm -rf /var/lib/hostdev-vfio", check=False)
    print(f"vfio_bind benchmark on lab guest {opts.host}: {opts.repeat} rounds, group of bridge + {', '.join(nics)}")
    floor = {m: ms(times["floor"][m]) for m in ("bind", "unbind")}
    print(f"{'method':<10} {'bind ms':>10} {'unbind ms':>10} {'bind/floor':>11} {'unbind/floor':>13}")
    for method in ("floor", "backend", "driverctl", "module"):
        if not times[method]["bind"]:
            continue
        b, u = ms(times[method]["bind"]), ms(times[method]["unbind"])
        print(f"{method:<10} {b:>10.1f} {u:>10.1f} {b / floor['bind']:>10.1f}x {u / floor['unbind']:>12.1f}x")
    for note in notes:
        print("note:", note)
    print("module = ansible ad hoc wall time on the controller; the others are timed inside the guest (TCG)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
