# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Which PCI functions the host itself needs right now, and why.

Each check reads procfs/sysfs/devfs below the roots it is given (so unit tests use fake trees) and returns
``{address: [reason, ...]}`` for the functions it protects. ``protected()`` runs them all and returns
``{address: [(check, reason), ...]}``. The checks:

- ``storage``: block devices that back a mounted filesystem or active swap, that are vdevs of an imported ZFS pool
  (``zpool status -P``), or that sit under an active dm (LVM, crypt, multipath), md or bcache device, through
  partitions and ``slaves`` down to the disks, and every PCI function on each disk's device path (controller and
  bridges); then the kernel's oracle for the rest: a disk or partition whose read-only ``O_EXCL`` open fails
  with EBUSY is held by something;
- ``network``: interfaces carrying the default route or the route to this SSH session's client or server
  address (``SSH_CONNECTION``), with their bond/bridge/vlan lower devices, and the PCI functions behind them;
- ``console``: the boot VGA device and the devices behind framebuffers while a framebuffer console is bound;
- ``vfio-in-use``: members of an IOMMU group whose ``/dev/vfio/<group>`` is held open by a process, functions
  whose VFIO device cdev is held open, and functions with a cdev while a process holds ``/dev/iommu``.
"""

from __future__ import annotations

__metaclass__ = type

import errno
import ipaddress
import os
import re
import socket
import stat
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


def _block_pci(sysfs_root: str, majmin: str, seen: set | None = None, visited: set | None = None) -> list[str]:
    """PCI functions under a block device, following dm/md/LVM/bcache ``slaves`` down to the disks.

    ``visited`` (when given) collects the real sysfs paths of every block device walked through.
    """
    seen = set() if seen is None else seen
    link = os.path.join(sysfs_root, "dev", "block", majmin)
    if not os.path.lexists(link):
        return []
    real = os.path.realpath(link)
    if real in seen:
        return []
    seen.add(real)
    if visited is not None:
        visited.add(real)
    found = pci_addresses_on_path(real)
    # a partition's slaves are its disk's; dm and md list their components in slaves/
    for base in (real, os.path.dirname(real)):
        for slave in _listdir(os.path.join(base, "slaves")):
            dev = _read(os.path.join(base, "slaves", slave, "dev")).strip()
            if dev:
                found += _block_pci(sysfs_root, dev, seen, visited)
    return list(dict.fromkeys(found))


class SafetyError(Exception):
    """Host state a check needs cannot be read or parsed; the message says which and what to do."""


def _dm_name_unescape(text: str) -> list[str]:
    """LVM's dm name ``vg--a-lv`` -> ``["vg-a", "lv"]`` (a single '-' separates, '--' is a literal '-')."""
    return [part.replace("\x00", "-") for part in text.replace("--", "\x00").split("-")]


def _stacked_what(sysfs_root: str, name: str) -> str:
    """What a stacked block device (one with ``slaves``) is, in words: LVM VG, dm-crypt, multipath, md, bcache."""
    base = os.path.join(sysfs_root, "class", "block", name)
    dm_name = _read(os.path.join(base, "dm", "name")).strip()
    if dm_name or name.startswith("dm-"):
        uuid = _read(os.path.join(base, "dm", "uuid")).strip()
        if uuid.startswith("LVM-"):
            return f"LVM volume group {_dm_name_unescape(dm_name)[0]} ({name}) active"
        if uuid.startswith("CRYPT-"):
            return f"dm-crypt mapping {dm_name} ({name}) open"
        if uuid.startswith("mpath-"):
            return f"multipath map {dm_name} ({name}) active"
        return f"device-mapper device {dm_name or name} ({name}) active"
    if os.path.isdir(os.path.join(base, "md")):
        return f"md array {name} active"
    if name.startswith("bcache"):
        return f"bcache device {name} active"
    return f"stacked block device {name} active"


def check_holders(sysfs_root: str, out: dict, visited: set) -> None:
    """Disks under every active stacked block device (dm: LVM, crypt, multipath; md; bcache), mounted or not,
    and devices registered with bcache as a cache or backing device."""
    named = set(visited)  # stacks already named by a mount, swap or pool are not named twice
    for name in _listdir(os.path.join(sysfs_root, "class", "block")):
        base = os.path.join(sysfs_root, "class", "block", name)
        if os.path.realpath(base) in named:
            continue
        if _listdir(os.path.join(base, "slaves")):
            majmin = _read(os.path.join(base, "dev")).strip()
            if majmin:
                what = _stacked_what(sysfs_root, name)
                _add(out, _block_pci(sysfs_root, majmin, visited=visited), f"is under {what}")
        elif os.path.isdir(os.path.join(base, "bcache")):
            majmin = _read(os.path.join(base, "dev")).strip()
            if majmin:
                _add(out, _block_pci(sysfs_root, majmin, visited=visited), f"holds {name}, registered with bcache")


# ZFS: the vdevs of every imported pool. A ZFS mount's source is a dataset ("rpool/ROOT/pve-1") on an anonymous
# 0:NN device, and ZFS does not list its vdevs in any slaves/ directory: `zpool status -P` names them.


def imported_pools(proc_root: str) -> list[str]:
    """Names of the imported ZFS pools, from /proc/spl/kstat/zfs/<pool>/ (one directory per pool)."""
    base = os.path.join(proc_root, "spl", "kstat", "zfs")
    return [n for n in _listdir(base) if os.path.isdir(os.path.join(base, n, "")) and _is_pool_dir(base, n)]


def _is_pool_dir(base: str, name: str) -> bool:
    # per-pool kstat directories hold "state" (or "io"/"txgs" on older releases); module-wide stats are files
    entries = _listdir(os.path.join(base, name))
    return any(e in entries for e in ("state", "txgs", "io", "iostats"))


def parse_zpool_status(text: str) -> dict:
    """``zpool status -P`` -> {pool: [vdev path, ...]} (data, log, cache and spare devices alike).

    Raises SafetyError when the text is not what zpool prints (a config section without a pool line).
    """
    pools: dict = {}
    pool = None
    in_config = False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("pool:"):
            pool = line[len("pool:") :].strip()
            pools.setdefault(pool, [])
            in_config = False
        elif line.startswith("config:"):
            if pool is None:
                raise SafetyError(f"zpool status -P printed a config section before any pool line: {raw!r}")
            in_config = True
        elif line.startswith("errors:"):
            in_config = False
        elif in_config and line.startswith("/"):
            path = line.split()[0]
            if path not in pools[pool]:
                pools[pool].append(path)
    return pools


def zfs_vdevs(proc_root: str, run) -> dict:
    """{pool: [vdev path]} of every imported pool; {} when no pool is imported.

    ``run(argv)`` returns ``(rc, stdout, stderr)``, or None when the command does not exist. Pools imported (kstat)
    whose vdevs cannot be read are an error: the disks under them would go unprotected.
    """
    pools = imported_pools(proc_root)
    result = run(["zpool", "status", "-P"]) if run else None
    if result is None:
        if pools and run:
            raise SafetyError(
                f"ZFS pool(s) {', '.join(pools)} are imported (/proc/spl/kstat/zfs) but the zpool command is not "
                "installed, so the disks under them cannot be told; install zfsutils (zpool) and run again"
            )
        return {}
    rc, out, err = result
    if rc != 0:
        if not pools and "no pools available" in (out + err):
            return {}
        if not pools and not out.strip():
            return {}  # no ZFS module loaded: "The ZFS modules are not loaded" and the like
        raise SafetyError(f"zpool status -P failed (rc={rc}): {(err or out).strip()[:300]}; cannot tell the ZFS vdevs")
    vdevs = parse_zpool_status(out)
    missing = [p for p in pools if p not in vdevs]
    if missing:
        raise SafetyError(f"ZFS pool(s) {', '.join(missing)} are imported but zpool status -P does not list them")
    return vdevs


def check_zfs(sysfs_root: str, proc_root: str, dev_root: str, run, out: dict, visited: set) -> None:
    mounted: dict = {}
    for mnt in mounts(proc_root):
        if mnt["fstype"] == "zfs" and mnt["source"]:
            where = mounted.setdefault(mnt["source"].split("/")[0], [])
            if mnt["mountpoint"] not in where:
                where.append(mnt["mountpoint"])
    for pool, paths in zfs_vdevs(proc_root, run).items():
        where = mounted.get(pool)
        what = f"vdev of ZFS pool {pool}, " + (f"mounted at {', '.join(where)}" if where else "imported")
        for path in paths:
            majmin = _block_majmin(sysfs_root, dev_root, path)
            if majmin:
                _add(out, _block_pci(sysfs_root, majmin, visited=visited), f"holds {path}, {what}")


def open_exclusive(path: str) -> int | None:
    """The kernel's own answer: None when ``path`` opens read-only with O_EXCL (nobody holds it), else the errno.

    Nothing is read or written; the descriptor is closed at once. A block device held by a filesystem, md, dm,
    ZFS, bcache or swap refuses O_EXCL with EBUSY.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_EXCL | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as exc:
        return exc.errno
    os.close(fd)
    return None


def check_exclusive(sysfs_root: str, dev_root: str, probe, out: dict, explained: set) -> None:
    """Every disk and partition on a PCI function that the kernel says is held (O_EXCL open fails EBUSY) and that
    no named check explained already."""
    for name in _listdir(os.path.join(sysfs_root, "class", "block")):
        real = os.path.realpath(os.path.join(sysfs_root, "class", "block", name))
        addresses = pci_addresses_on_path(real)
        if not addresses:
            continue
        if any(real == e or e.startswith(real + os.sep) or real.startswith(e + os.sep) for e in explained):
            continue
        if probe(os.path.join(dev_root, name)) == errno.EBUSY:
            _add(out, addresses, f"holds /dev/{name}, held open exclusively (O_EXCL: EBUSY)")


def check_storage(sysfs_root: str, proc_root: str, dev_root: str, run=None, exclusive_probe=None) -> dict:
    """Mounted filesystems, active swap, active dm/md/bcache stacks, ZFS pool vdevs; then the O_EXCL oracle
    (``exclusive_probe(path) -> errno or None``, None to skip it) for what none of those named."""
    out: dict = {}
    visited: set = set()
    for mnt in mounts(proc_root):
        majmin = mnt["majmin"]
        if majmin.startswith("0:"):  # btrfs and other anonymous devices: go by the source device
            majmin = _block_majmin(sysfs_root, dev_root, mnt["source"]) or majmin
        addresses = _block_pci(sysfs_root, majmin, visited=visited)
        if addresses:
            what = mnt["source"] if mnt["source"].startswith("/dev/") else f"block device {majmin}"
            _add(out, addresses, f"backs {mnt['mountpoint']} ({what} mounted there)")
    for line in _read(os.path.join(proc_root, "swaps")).splitlines()[1:]:
        fields = line.split()
        if not fields or fields[1:2] != ["partition"]:
            continue  # swap files live on a mounted filesystem, covered above
        majmin = _block_majmin(sysfs_root, dev_root, _unescape_mount(fields[0]))
        if majmin:
            _add(out, _block_pci(sysfs_root, majmin, visited=visited), f"backs active swap ({fields[0]})")
    check_zfs(sysfs_root, proc_root, dev_root, run, out, visited)
    check_holders(sysfs_root, out, visited)
    if exclusive_probe is not None:
        check_exclusive(sysfs_root, dev_root, exclusive_probe, out, visited)
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


_VFIO_CDEV_RE = re.compile(r"^/dev/vfio/devices/(vfio\d+)$")
_IOMMUFD = "/dev/iommu"


def _fd_rdev(path: str) -> str | None:
    """MAJ:MIN of the character device an open fd refers to (stat follows the /proc fd link), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return f"{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}" if stat.S_ISCHR(st.st_mode) else None


def open_vfio_files(proc_root: str) -> dict:
    """Every VFIO door held open by a process, from the /proc/<pid>/fd links (the one scanner of open files):

    ``{"groups": {group: [pid]}, "cdevs": {key: [pid]}, "iommufd": [pid]}``; a cdev's key is its MAJ:MIN when the fd
    can be stat'ed (the real kernel) and ``name:vfioN`` (the node's name) otherwise.
    """
    out: dict = {"groups": {}, "cdevs": {}, "iommufd": []}

    def add(table, key, pid):
        pids = table.setdefault(key, []) if key is not None else table
        if pid not in pids:
            pids.append(pid)

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
                add(out["groups"], int(m.group(1)), int(pid))
                continue
            m = _VFIO_CDEV_RE.match(target)
            if m:
                key = _fd_rdev(os.path.join(fddir, fd)) or f"name:{m.group(1)}"
                add(out["cdevs"], key, int(pid))
            elif target == _IOMMUFD:
                add(out["iommufd"], None, int(pid))
    return out


def open_vfio_groups(proc_root: str) -> dict:
    """{group: [pid, ...]} for every /dev/vfio/<group> held open by a process."""
    return open_vfio_files(proc_root)["groups"]


def _comm(proc_root: str, pid: int) -> str:
    return _read(os.path.join(proc_root, str(pid), "comm")).strip() or "?"


def _who(proc_root: str, pids) -> str:
    return ", ".join(f"{pid} ({_comm(proc_root, pid)})" for pid in sorted(pids))


def check_vfio_in_use(snapshot, proc_root: str) -> dict:
    """Functions a process uses through VFIO, by any door: the group node /dev/vfio/<group> (the whole group), the
    device cdev /dev/vfio/devices/vfioN whose MAJ:MIN is the function's vfio-dev/vfioN/dev (iommufd's door), and
    /dev/iommu, whose holders may have a function's device fd from elsewhere (every function with a cdev counts)."""
    out: dict = {}
    held = open_vfio_files(proc_root)
    for group, pids in held["groups"].items():
        members = snapshot.groups[group].devices if group in snapshot.groups else []
        _add(
            out,
            members,
            f"is in IOMMU group {group}, whose /dev/vfio/{group} is open by process {_who(proc_root, pids)} "
            "(a running guest?)",
        )
    cdev_pids = {pid for pids in held["cdevs"].values() for pid in pids}
    for address, dev in snapshot.devices.items():
        if not dev.vfio_cdev:
            continue
        pids = held["cdevs"].get(dev.vfio_cdev_dev or "", []) + held["cdevs"].get(f"name:{dev.vfio_cdev}", [])
        if pids:
            with_iommufd = " with /dev/iommu (iommufd)" if set(pids) & set(held["iommufd"]) else ""
            _add(
                out,
                [address],
                f"has its VFIO device cdev /dev/vfio/devices/{dev.vfio_cdev} open by process "
                f"{_who(proc_root, set(pids))}{with_iommufd} (a running guest?)",
            )
        others = [pid for pid in held["iommufd"] if pid not in cdev_pids]
        if others:
            _add(
                out,
                [address],
                f"has the VFIO device cdev {dev.vfio_cdev} while process {_who(proc_root, others)} holds "
                "/dev/iommu (iommufd) with no device cdev this scan could name (it may be attaching one)",
            )
    return out


# ---------------------------------------------------------------------------------------------------------


LIVE_ROOTS = ("/sys", "/proc", "/dev")


def protected(
    snapshot,
    sysfs_root: str = "/sys",
    proc_root: str = "/proc",
    dev_root: str = "/dev",
    ssh_connection: str | None = None,
    checks: tuple = CHECKS,
    run=None,
    exclusive_probe="auto",
) -> dict:
    """{address: [(check, reason), ...]} for every function that the host needs or a process is using.

    ``checks`` names the checks to run (all by default); ``HOST_NEEDS`` is the three about what the host itself
    needs to run (disk, network, console), without the scan of every process's open files.
    ``run(argv) -> (rc, out, err) or None`` runs ``zpool status -P``; ``exclusive_probe`` is the O_EXCL oracle
    (:func:`open_exclusive`): "auto" uses it on the live roots and skips it for an offline tree (its /dev is not the
    kernel's), None skips it. Raises SafetyError when host state a check needs cannot be read.
    """
    if exclusive_probe == "auto":
        live = tuple(os.path.normpath(r) for r in (sysfs_root, proc_root, dev_root)) == LIVE_ROOTS
        exclusive_probe = open_exclusive if live else None
    checkers = {
        "storage": lambda: check_storage(sysfs_root, proc_root, dev_root, run=run, exclusive_probe=exclusive_probe),
        "network": lambda: check_network(sysfs_root, proc_root, ssh_connection),
        "console": lambda: check_console(sysfs_root),
        "vfio-in-use": lambda: check_vfio_in_use(snapshot, proc_root),
    }
    out: dict = {}
    for check in CHECKS:
        if check not in checks:
            continue
        for address, reasons in checkers[check]().items():
            out.setdefault(address, []).extend((check, reason) for reason in reasons)
    return out
