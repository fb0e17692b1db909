# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which PCI functions the host itself needs right now, and why.

Each check reads procfs/sysfs/devfs below the roots it is given (so unit tests use fake trees) and returns
``{address: [reason, ...]}`` for the functions it protects. ``protected()`` runs them all and returns
``{address: [(check, reason), ...]}``. The checks:

- ``storage``: block devices that back a mounted filesystem or active swap, through partitions and dm/md/LVM
  ``slaves``, down to the disks, and every PCI function on each disk's device path (controller and bridges);
- ``network``: interfaces carrying the default route or the route to this SSH session's client or server
  address (``SSH_CONNECTION``), with their bond/bridge/vlan lower devices, and the PCI functions behind them;
- ``console``: the boot VGA device and the devices behind framebuffers while a framebuffer console is bound;
- ``vfio-in-use``: members of an IOMMU group whose ``/dev/vfio/<group>`` is held open by a process.
"""

from __future__ import annotations

__metaclass__ = type

import ipaddress
import os
import re
import socket
import struct

from ansible_collections.hostdev.vfio.plugins.module_utils._pci import ADDRESS_RE

CHECKS = ("storage", "network", "console", "vfio-in-use")
HOST_NEEDS = ("storage", "network", "console")
_VFIO_FD_RE = re.compile(r"^/dev/vfio/(\d+)$")


def _read(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def pci_addresses_on_path(real_path: str) -> list[str]:
    """Every PCI address that is a component of a real sysfs device path (endpoint and upstream bridges)."""
    return [part for part in real_path.split(os.sep) if ADDRESS_RE.match(part) and part.count(":") == 2]


def _add(out: dict, addresses, reason: str) -> None:
    for address in addresses:
        reasons = out.setdefault(address, [])
        if reason not in reasons:
            reasons.append(reason)


# ---------------------------------------------------------------------------------------------------------
# storage


def _unescape_mount(text: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), text)


def mounts(proc_root: str) -> list[dict]:
    """Entries of ``/proc/self/mountinfo``: majmin, mount point, fs type and source."""
    out = []
    for line in _read(os.path.join(proc_root, "self", "mountinfo")).splitlines():
        left, sep, right = line.partition(" - ")
        fields = left.split()
        if not sep or len(fields) < 5:
            continue
        rest = right.split()
        out.append(
            {
                "majmin": fields[2],
                "mountpoint": _unescape_mount(fields[4]),
                "fstype": rest[0] if rest else "",
                "source": _unescape_mount(rest[1]) if len(rest) > 1 else "",
            }
        )
    return out


def _block_majmin(sysfs_root: str, dev_root: str, source: str) -> str | None:
    """MAJ:MIN of a block device named by a path such as /dev/vda2 or /dev/mapper/vg-root."""
    if not source.startswith("/dev/"):
        return None
    real = os.path.realpath(os.path.join(dev_root, source[len("/dev/") :]))
    name = os.path.basename(real)
    text = _read(os.path.join(sysfs_root, "class", "block", name, "dev")).strip()
    if text:
        return text
    try:
        st = os.stat(real)
    except OSError:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if st.st_rdev else None


def _block_pci(sysfs_root: str, majmin: str, seen: set | None = None) -> list[str]:
    """PCI functions under a block device, following dm/md/LVM ``slaves`` down to the disks."""
    seen = set() if seen is None else seen
    link = os.path.join(sysfs_root, "dev", "block", majmin)
    if not os.path.lexists(link):
        return []
    real = os.path.realpath(link)
    if real in seen:
        return []
    seen.add(real)
    found = pci_addresses_on_path(real)
    # a partition's slaves are its disk's; dm and md list their components in slaves/
    for base in (real, os.path.dirname(real)):
        for slave in _listdir(os.path.join(base, "slaves")):
            dev = _read(os.path.join(base, "slaves", slave, "dev")).strip()
            if dev:
                found += _block_pci(sysfs_root, dev, seen)
    return list(dict.fromkeys(found))


def check_storage(sysfs_root: str, proc_root: str, dev_root: str) -> dict:
    out: dict = {}
    for mnt in mounts(proc_root):
        majmin = mnt["majmin"]
        if majmin.startswith("0:"):  # btrfs and other anonymous devices: go by the source device
            majmin = _block_majmin(sysfs_root, dev_root, mnt["source"]) or majmin
        addresses = _block_pci(sysfs_root, majmin)
        if addresses:
            what = mnt["source"] if mnt["source"].startswith("/dev/") else f"block device {majmin}"
            _add(out, addresses, f"backs {mnt['mountpoint']} ({what} mounted there)")
    for line in _read(os.path.join(proc_root, "swaps")).splitlines()[1:]:
        fields = line.split()
        if not fields or fields[1:2] != ["partition"]:
            continue  # swap files live on a mounted filesystem, covered above
        majmin = _block_majmin(sysfs_root, dev_root, _unescape_mount(fields[0]))
        if majmin:
            _add(out, _block_pci(sysfs_root, majmin), f"backs active swap ({fields[0]})")
    return out


# ---------------------------------------------------------------------------------------------------------
# network


def routes_v4(proc_root: str) -> list[tuple]:
    """(iface, network, prefixlen) of every usable IPv4 route in /proc/net/route."""
    out = []
    for line in _read(os.path.join(proc_root, "net", "route")).splitlines()[1:]:
        f = line.split()
        if len(f) < 8:
            continue
        try:
            dest = socket.inet_ntoa(struct.pack("<I", int(f[1], 16)))
            mask = socket.inet_ntoa(struct.pack("<I", int(f[7], 16)))
            flags = int(f[3], 16)
        except ValueError:
            continue
        if not flags & 0x1 or flags & 0x200:  # RTF_UP, not RTF_REJECT
            continue
        net = ipaddress.ip_network(f"{dest}/{mask}", strict=False)
        out.append((f[0], net))
    return out


def routes_v6(proc_root: str) -> list[tuple]:
    out = []
    for line in _read(os.path.join(proc_root, "net", "ipv6_route")).splitlines():
        f = line.split()
        if len(f) < 10:
            continue
        try:
            dest = ipaddress.IPv6Address(bytes.fromhex(f[0]))
            plen = int(f[1], 16)
            flags = int(f[8], 16)
        except ValueError:
            continue
        if f[9] == "lo" or not flags & 0x1 or flags & 0x200:
            continue
        out.append((f[9], ipaddress.ip_network(f"{dest}/{plen}", strict=False)))
    return out


def route_interfaces(proc_root: str, ssh_connection: str | None) -> dict:
    """{iface: [why]} for the default routes and the routes to the SSH session's addresses."""
    out: dict = {}
    v4, v6 = routes_v4(proc_root), routes_v6(proc_root)
    for iface, net in v4 + v6:
        if net.prefixlen == 0:
            out.setdefault(iface, []).append("carries the default route")
    fields = (ssh_connection or "").split()
    for label, text in (("client", fields[0] if fields else None), ("server", fields[2] if len(fields) > 2 else None)):
        if not text:
            continue
        try:
            ip = ipaddress.ip_address(text.split("%")[0])
        except ValueError:
            continue
        if ip.version == 6 and ip.ipv4_mapped:
            ip = ip.ipv4_mapped
        table = v4 if ip.version == 4 else v6
        matches = [(net.prefixlen, iface) for iface, net in table if ip in net]
        if matches:
            best = max(p for p, _i in matches)
            for plen, iface in matches:
                if plen == best:
                    why = f"carries the route to this SSH session's {label} address {ip}"
                    if why not in out.setdefault(iface, []):
                        out[iface].append(why)
    return out


def lower_interfaces(sysfs_root: str, iface: str, seen: set | None = None) -> list[str]:
    """The interface and, recursively, its bond slaves, bridge ports and vlan/macvlan lower devices."""
    seen = set() if seen is None else seen
    if iface in seen:
        return []
    seen.add(iface)
    base = os.path.join(sysfs_root, "class", "net", iface)
    lowers = [n[len("lower_") :] for n in _listdir(base) if n.startswith("lower_")]
    lowers += _listdir(os.path.join(base, "brif"))
    lowers += _read(os.path.join(base, "bonding", "slaves")).split()
    found = [iface]
    for lower in lowers:
        found += lower_interfaces(sysfs_root, lower, seen)
    return list(dict.fromkeys(found))


def check_network(sysfs_root: str, proc_root: str, ssh_connection: str | None) -> dict:
    out: dict = {}
    for iface, whys in route_interfaces(proc_root, ssh_connection).items():
        for member in lower_interfaces(sysfs_root, iface):
            link = os.path.join(sysfs_root, "class", "net", member, "device")
            if not os.path.lexists(link):
                continue
            via = "" if member == iface else f" as a lower device of {iface}"
            for why in whys:
                _add(out, pci_addresses_on_path(os.path.realpath(link)), f"is NIC {member}{via}, which {why}")
    return out


# ---------------------------------------------------------------------------------------------------------
# console


def check_console(sysfs_root: str) -> dict:
    out: dict = {}
    for address in _listdir(os.path.join(sysfs_root, "bus", "pci", "devices")):
        if _read(os.path.join(sysfs_root, "bus", "pci", "devices", address, "boot_vga")).strip() == "1":
            _add(out, [address], "is the boot VGA device (boot_vga=1)")
    vtcons = os.path.join(sysfs_root, "class", "vtconsole")
    fbcon = [
        v
        for v in _listdir(vtcons)
        if _read(os.path.join(vtcons, v, "bind")).strip() == "1"
        and "frame buffer" in _read(os.path.join(vtcons, v, "name")).lower()
    ]
    if fbcon:
        graphics = os.path.join(sysfs_root, "class", "graphics")
        for fb in _listdir(graphics):
            link = os.path.join(graphics, fb, "device")
            if fb.startswith("fb") and os.path.lexists(link):
                _add(
                    out,
                    pci_addresses_on_path(os.path.realpath(link))[-1:],
                    f"drives {fb}, and the framebuffer console ({fbcon[0]}) is bound",
                )
    return out


# ---------------------------------------------------------------------------------------------------------
# vfio in use


def open_vfio_groups(proc_root: str) -> dict:
    """{group: [pid, ...]} for every /dev/vfio/<group> held open by a process."""
    out: dict = {}
    for pid in _listdir(proc_root):
        if not pid.isdigit():
            continue
        fddir = os.path.join(proc_root, pid, "fd")
        for fd in _listdir(fddir):
            try:
                target = os.readlink(os.path.join(fddir, fd))
            except OSError:
                continue
            m = _VFIO_FD_RE.match(target)
            if m:
                pids = out.setdefault(int(m.group(1)), [])
                if int(pid) not in pids:
                    pids.append(int(pid))
    return out


def _comm(proc_root: str, pid: int) -> str:
    return _read(os.path.join(proc_root, str(pid), "comm")).strip() or "?"


def check_vfio_in_use(snapshot, proc_root: str) -> dict:
    out: dict = {}
    for group, pids in open_vfio_groups(proc_root).items():
        members = snapshot.groups[group].devices if group in snapshot.groups else []
        who = ", ".join(f"{pid} ({_comm(proc_root, pid)})" for pid in sorted(pids))
        _add(
            out,
            members,
            f"is in IOMMU group {group}, whose /dev/vfio/{group} is open by process {who} (a running guest?)",
        )
    return out


# ---------------------------------------------------------------------------------------------------------


def protected(
    snapshot,
    sysfs_root: str = "/sys",
    proc_root: str = "/proc",
    dev_root: str = "/dev",
    ssh_connection: str | None = None,
    checks: tuple = CHECKS,
) -> dict:
    """{address: [(check, reason), ...]} for every function that the host needs or a process is using.

    ``checks`` names the checks to run (all by default); ``HOST_NEEDS`` is the three about what the host itself
    needs to run (disk, network, console), without the scan of every process's open files.
    """
    run = {
        "storage": lambda: check_storage(sysfs_root, proc_root, dev_root),
        "network": lambda: check_network(sysfs_root, proc_root, ssh_connection),
        "console": lambda: check_console(sysfs_root),
        "vfio-in-use": lambda: check_vfio_in_use(snapshot, proc_root),
    }
    out: dict = {}
    for check in CHECKS:
        if check not in checks:
            continue
        for address, reasons in run[check]().items():
            out.setdefault(address, []).extend((check, reason) for reason in reasons)
    return out
