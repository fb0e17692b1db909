# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Captures: exactly what ``iommu_facts`` reads, packed into one tar archive per host, and read back offline.

A capture is rooted at ``/``: ``sys/...``, ``proc/...``, ``dev/...``, ``lib/modules/<release>/...``,
``usr/share/misc/pci.ids`` and a manifest ``capture.json``. Unpacked, ``iommu_facts`` reads it with
``sysfs_root=X/sys proc_root=X/proc dev_root=X/dev modules_root=X/lib/modules`` and returns the facts of the host
it came from. What is copied, reader by reader:

- ``_pci``: ``sys/bus/pci/devices/*`` (the links) and, in each function's real directory, the entries
  ``_pci.device_entry`` names (attribute files, ``reset`` as an empty file since it is write-only, the first 64
  bytes of ``config``, the ``driver``, ``iommu_group``, ``physfn`` and ``virtfnN`` links); the ``module`` link of
  every ``sys/bus/pci/drivers/*``; ``sys/kernel/iommu_groups/*/type`` and ``devices/*`` links; the entries of
  ``sys/class/iommu``;
- ``_facts``: the names in ``sys/module`` (empty directories) and vfio's ``enable_unsafe_noiommu_mode``; which of
  the ACPI tables DMAR and IVRS exist (empty files: their contents are not read); ``proc/cmdline``,
  ``proc/cpuinfo`` up to its first ``vendor_id`` line, ``proc/sys/kernel/osrelease``; the entries of ``dev/vfio``;
- ``_modalias``: ``modules.alias`` and ``modules.builtin.alias`` of the running kernel; ``_pciids``: pci.ids;
- ``_safety`` (what the host needs): ``proc/self/mountinfo``, ``proc/swaps``, ``proc/net/route`` and
  ``ipv6_route``; ``sys/dev/block/*`` and ``sys/class/block/*`` links with each device's ``dev`` file and
  ``slaves`` links; ``sys/class/net/*`` links with ``device``, ``lower_*``, ``brif/*`` and ``bonding/slaves``;
  ``sys/class/graphics/*`` links with ``device``; ``sys/class/vtconsole/*`` ``bind`` and ``name``; the ``/dev``
  paths of swap partitions and of mounts on anonymous devices (btrfs), as links and empty files.

Device nodes (``/dev/vfio/N``, block devices) are stored as empty regular files: only their names are read, and an
archive without device nodes unpacks the same as any user on any system. Symlinks stay symlinks (relative, inside
the capture). Nothing under ``/etc``, no key, no file content beyond the list above. The archive is reproducible:
members sorted, owned by 0:0, time 0, so capturing an unchanged host twice gives the same bytes.
"""

from __future__ import annotations

__metaclass__ = type

import gzip
import io
import json
import os
import re
import shutil
import tarfile
import tempfile

from ansible_collections.hostdev.vfio.plugins.module_utils._modalias import running_modules_dir
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import (
    CONFIG_HEADER,
    DEVICE_CDEV_DIR,
    DEVICE_CONFIG,
    device_entry,
)
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import DEVICE_PRESENCE as _PRESENCE
from ansible_collections.hostdev.vfio.plugins.module_utils._pciids import find_pci_ids
from ansible_collections.hostdev.vfio.plugins.module_utils._safety import mounts

FORMAT = 1
MANIFEST = "capture.json"
PCI_IDS = "usr/share/misc/pci.ids"
ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar")
CPUINFO_HEAD = 4096  # _facts._cpu_vendor reads this much
_MAX_FILE = 64 * 1024 * 1024  # no file iommu_facts reads is near this; a bound against a runaway /proc file
_SAFE_NAME = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.:@+=,-]*")

# Below the sysfs root, for _facts and _safety: (class directory, files, links, link prefixes, directories of links)
_SYSFS_CLASSES = (
    ("class/block", ("dev",), (), (), ("slaves",)),
    ("dev/block", ("dev",), (), (), ("slaves",)),
    ("class/net", ("bonding/slaves",), ("device",), ("lower_",), ("brif",)),
    ("class/graphics", (), ("device",), (), ()),
    ("class/vtconsole", ("bind", "name"), (), (), ()),
    ("class/iommu", (), (), (), ()),
)
_PROC_FILES = ("cmdline", "sys/kernel/osrelease", "self/mountinfo", "swaps", "net/route", "net/ipv6_route")


class CaptureError(ValueError):
    """A capture cannot be read; the message names the path."""


def _listdir(path: str) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except OSError:
        return []


def _read_file(path: str, limit: int = _MAX_FILE) -> bytes | None:
    """Up to ``limit`` bytes of a file (procfs and sysfs files report size 0: read to the end), or None."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return None
    chunks, size = [], 0
    try:
        while size < limit:
            chunk = os.read(fd, min(65536, limit - size))
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


class Capture:
    """The entries of one capture: ``{path: ("dir", None) | ("file", bytes) | ("link", target)}``."""

    def __init__(self):
        self.entries: dict[str, tuple] = {}

    def _parents(self, rel: str) -> None:
        parent = os.path.dirname(rel)
        while parent and parent not in self.entries:
            self.entries[parent] = ("dir", None)
            parent = os.path.dirname(parent)

    def add_dir(self, rel: str) -> None:
        self._parents(rel)
        if self.entries.get(rel, ("dir",))[0] == "dir":
            self.entries[rel] = ("dir", None)

    def add_bytes(self, rel: str, data: bytes) -> None:
        self._parents(rel)
        self.entries[rel] = ("file", data)

    def add_file(self, rel: str, path: str, limit: int = _MAX_FILE) -> bool:
        data = _read_file(path, limit)
        if data is None:
            return False
        self.add_bytes(rel, data)
        return True

    def add_link(self, rel: str, path: str) -> bool:
        """Copy a relative symlink (an absolute one could point anywhere on the analysing machine: left out)."""
        try:
            target = os.readlink(path)
        except OSError:
            return False
        if os.path.isabs(target) or os.path.normpath(os.path.join(os.path.dirname(rel), target)).startswith(".."):
            return False
        self._parents(rel)
        self.entries[rel] = ("link", target)
        return True

    def add_entry(self, rel: str, path: str) -> None:
        """A directory entry as what it is: a link, a directory (empty), or a file (contents)."""
        if os.path.islink(path):
            self.add_link(rel, path)
        elif os.path.isdir(path):
            self.add_dir(rel)
        else:
            self.add_file(rel, path)


def _within(root: str, path: str) -> str | None:
    """``path`` relative to ``root`` once resolved, or None when it resolves outside."""
    real_root = os.path.realpath(root)
    real = os.path.realpath(path)
    rel = os.path.relpath(real, real_root)
    return None if rel == ".." or rel.startswith("../") else rel


def _sysfs(cap: Capture, root: str) -> None:
    def rel(*parts) -> str:
        return "/".join(("sys", *parts))

    def real_dir(path: str) -> str | None:
        inside = _within(root, path)
        return None if inside is None or not os.path.isdir(path) else inside

    # PCI functions (_pci.read_device), their drivers' modules (_pci.driver_module), groups, units
    devices = os.path.join(root, "bus", "pci", "devices")
    cap.add_dir(rel("bus", "pci", "devices"))
    for address in _listdir(devices):
        link = os.path.join(devices, address)
        cap.add_entry(rel("bus", "pci", "devices", address), link)
        real = real_dir(link)
        if real is None:
            continue
        cap.add_dir(rel(real))
        for name in _listdir(os.path.join(root, real)):
            if not device_entry(name):
                continue
            path = os.path.join(root, real, name)
            if os.path.islink(path):
                cap.add_link(rel(real, name), path)
            elif name in _PRESENCE:
                cap.add_bytes(rel(real, name), b"")
            elif name == DEVICE_CONFIG:
                cap.add_file(rel(real, name), path, CONFIG_HEADER)
            elif name == DEVICE_CDEV_DIR:  # vfio-dev/vfioN/dev: the cdev's name and its MAJ:MIN
                for cdev in _listdir(path):
                    cap.add_dir(rel(real, name, cdev))
                    cap.add_file(rel(real, name, cdev, "dev"), os.path.join(path, cdev, "dev"))
            else:
                cap.add_file(rel(real, name), path)
    drivers = os.path.join(root, "bus", "pci", "drivers")
    for driver in _listdir(drivers):
        cap.add_dir(rel("bus", "pci", "drivers", driver))
        cap.add_link(rel("bus", "pci", "drivers", driver, "module"), os.path.join(drivers, driver, "module"))
    groups = os.path.join(root, "kernel", "iommu_groups")
    cap.add_dir(rel("kernel", "iommu_groups"))
    for group in _listdir(groups):
        cap.add_dir(rel("kernel", "iommu_groups", group, "devices"))
        cap.add_file(rel("kernel", "iommu_groups", group, "type"), os.path.join(groups, group, "type"))
        for member in _listdir(os.path.join(groups, group, "devices")):
            cap.add_entry(
                rel("kernel", "iommu_groups", group, "devices", member), os.path.join(groups, group, "devices", member)
            )
    # _facts: loaded modules (names), the no-IOMMU switch, ACPI tables (presence only)
    cap.add_dir(rel("module"))
    for module in _listdir(os.path.join(root, "module")):
        cap.add_dir(rel("module", module))
    noiommu = ("module", "vfio", "parameters", "enable_unsafe_noiommu_mode")
    cap.add_file(rel(*noiommu), os.path.join(root, *noiommu))
    for table in ("DMAR", "IVRS"):
        if os.path.exists(os.path.join(root, "firmware", "acpi", "tables", table)):
            cap.add_bytes(rel("firmware", "acpi", "tables", table), b"")
    # _safety and the IOMMU units: class directories, each entry with the files and links the checks read
    for cls, files, links, prefixes, link_dirs in _SYSFS_CLASSES:
        base = os.path.join(root, cls)
        for name in _listdir(base):
            cap.add_entry(rel(cls, name), os.path.join(base, name))
            real = real_dir(os.path.join(base, name))
            if real is None:
                continue
            here = os.path.join(root, real)
            entries = _listdir(here)
            for f in files:
                cap.add_file(rel(real, f), os.path.join(here, f))
            for name2 in entries:
                if name2 in links or name2.startswith(prefixes or ("\0",)):
                    cap.add_link(rel(real, name2), os.path.join(here, name2))
            for d in link_dirs:
                if os.path.isdir(os.path.join(here, d)):
                    cap.add_dir(rel(real, d))
                for name2 in _listdir(os.path.join(here, d)):
                    cap.add_link(rel(real, d, name2), os.path.join(here, d, name2))
            # a partition's slaves are its disk's (_safety._block_pci looks one level up)
            if cls == "dev/block":
                parent = os.path.dirname(real)
                cap.add_file(rel(parent, "dev"), os.path.join(root, parent, "dev"))
                if os.path.isdir(os.path.join(root, parent, "slaves")):
                    cap.add_dir(rel(parent, "slaves"))
                for name2 in _listdir(os.path.join(root, parent, "slaves")):
                    cap.add_link(rel(parent, "slaves", name2), os.path.join(root, parent, "slaves", name2))


def _dev_path(cap: Capture, dev_root: str, source: str) -> None:
    """A /dev path named by a mount or swap: its links, down to the node (an empty file)."""
    path = source[len("/dev/") :]
    for _hop in range(8):
        full = os.path.join(dev_root, path)
        if not os.path.lexists(full) or not _SAFE_NAME.fullmatch(os.path.basename(path)):
            return
        if not os.path.islink(full):
            if os.path.isdir(full):
                return
            cap.add_bytes("dev/" + path, b"")
            return
        if not cap.add_link("dev/" + path, full):
            return
        path = os.path.normpath(os.path.join(os.path.dirname(path), os.readlink(full)))


def _procfs_and_dev(cap: Capture, proc_root: str, dev_root: str) -> None:
    cap.add_dir("proc")
    for name in _PROC_FILES:
        cap.add_file("proc/" + name, os.path.join(proc_root, name))
    # _facts._cpu_vendor reads the vendor_id line of the first 4096 bytes: the lines up to it are kept (not the
    # clock speed and other values that change from one read to the next)
    cpuinfo = _read_file(os.path.join(proc_root, "cpuinfo"), CPUINFO_HEAD)
    if cpuinfo is not None:
        head, found, rest = cpuinfo.partition(b"\nvendor_id")
        if cpuinfo.startswith(b"vendor_id"):
            head, found, rest = b"", b"vendor_id", cpuinfo[len(b"vendor_id") :]
        cap.add_bytes("proc/cpuinfo", head + found + rest.split(b"\n", 1)[0] + b"\n" if found else cpuinfo)
    cap.add_dir("dev")
    vfio = os.path.join(dev_root, "vfio")
    if os.path.isdir(vfio):
        cap.add_dir("dev/vfio")
        for name in _listdir(vfio):
            if os.path.isdir(os.path.join(vfio, name)) and not os.path.islink(os.path.join(vfio, name)):
                cap.add_dir("dev/vfio/" + name)
            else:
                cap.add_bytes("dev/vfio/" + name, b"")
    # _safety._block_majmin resolves these
    sources = [m["source"] for m in mounts(proc_root) if m["majmin"].startswith("0:")]
    swaps = _read_file(os.path.join(proc_root, "swaps")) or b""
    for line in swaps.decode("utf-8", "replace").splitlines()[1:]:
        fields = line.split()
        if fields[1:2] == ["partition"]:
            sources.append(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), fields[0]))
    for source in sources:
        if source.startswith("/dev/") and ".." not in source.split("/"):
            _dev_path(cap, dev_root, source)


def collect(
    sysfs_root: str = "/sys",
    proc_root: str = "/proc",
    dev_root: str = "/dev",
    modules_root: str = "/lib/modules",
    pci_ids_path: str | None = None,
    ssh_connection: str | None = None,
) -> Capture:
    """Read everything iommu_facts reads under these roots into a :class:`Capture`.

    ``pci_ids_path`` is the pci.ids to copy (default: the first of the usual places); ``ssh_connection`` (the
    session's ``SSH_CONNECTION``: two addresses and ports) goes into the manifest, since the network check of what
    the host needs depends on it.
    """
    cap = Capture()
    _sysfs(cap, sysfs_root)
    _procfs_and_dev(cap, proc_root, dev_root)
    release = None
    modules_dir = running_modules_dir(proc_root, modules_root)
    if modules_dir:
        release = os.path.basename(modules_dir)
        for name in ("modules.alias", "modules.builtin.alias"):
            cap.add_file(f"lib/modules/{release}/{name}", os.path.join(modules_dir, name))
    ids = pci_ids_path if pci_ids_path is not None else find_pci_ids()
    has_ids = bool(ids) and cap.add_file(PCI_IDS, ids)
    manifest = {
        "format": FORMAT,
        "kernel_release": release,
        "pci_ids": PCI_IDS if has_ids else None,
        "ssh_connection": ssh_connection or None,
    }
    cap.add_bytes(MANIFEST, (json.dumps(manifest, indent=2, sort_keys=True) + "\n").encode())
    return cap


def archive(cap: Capture) -> bytes:
    """The capture as a reproducible tar.gz (sorted members, 0:0, time 0)."""
    raw = io.BytesIO()
    gz = gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0)
    with gz, tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as tar:  # one line: Python 3.9
        for rel in sorted(cap.entries):
            kind, value = cap.entries[rel]
            info = tarfile.TarInfo(rel)
            info.mtime = 0
            if kind == "dir":
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            elif kind == "link":
                info.type, info.mode, info.linkname = tarfile.SYMTYPE, 0o777, value
                tar.addfile(info)
            else:
                info.size, info.mode = len(value), 0o644
                tar.addfile(info, io.BytesIO(value))
    return raw.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Reading captures back (on the controller)


def _check_member(member: tarfile.TarInfo) -> str | None:
    """Why a member cannot be part of a capture, or None: only directories, regular files and relative links."""
    name = member.name
    if not name or name.startswith("/") or ".." in name.split("/"):
        return "a path outside the capture"
    if member.issym():
        if not member.linkname or os.path.isabs(member.linkname):
            return f"a link that points outside the capture ({member.linkname})"
    elif not (member.isfile() or member.isdir()):
        return "neither a file, a directory nor a symlink"
    return None


def _resolve(path: str, links: dict, depth: int = 0) -> list | None:
    """Where ``path`` (relative to the capture's root) leads through the capture's own links, as components; None
    when it leaves the capture at any step (``..`` above the root) or loops. A realpath over the member list, so
    a link is judged before anything is written."""
    if depth > 40:
        return None
    out: list = []
    for part in path.split("/"):
        if part in ("", "."):
            continue
        if part == "..":
            if not out:
                return None
            out.pop()
            continue
        out.append(part)
        target = links.get("/".join(out))
        if target is not None:
            out.pop()
            resolved = _resolve("/".join([*out, target]), links, depth + 1)
            if resolved is None:
                return None
            out = resolved
    return out


def unpack(path: str, dest: str) -> None:
    """Unpack a capture archive into ``dest`` (an empty directory); what a capture cannot hold is refused with
    its name, before anything is written: a path or link that leads out of the capture (also through other links),
    a member below a link, a device node, a hard link, a name given twice. Files are created exclusively below
    directories made here, so nothing is ever written through a link; modes are 0644 and 0755."""
    try:
        with tarfile.open(path, "r:*") as tar:
            members = tar.getmembers()
            links = {m.name.rstrip("/"): m.linkname for m in members if m.issym()}
            names = set()
            for member in members:
                name = member.name.rstrip("/")
                why = _check_member(member)
                if not why and name in names:
                    why = "given twice"
                if not why and any("/".join(name.split("/")[:i]) in links for i in range(1, name.count("/") + 1)):
                    why = "below a link"
                if not why and member.issym() and _resolve(name, links) is None:
                    why = f"a link that points outside the capture ({member.linkname})"
                if why:
                    raise CaptureError(f"{path}: member {member.name!r} is {why}; not a hostdev.vfio capture")
                names.add(name)
            for member in members:
                target = os.path.join(dest, member.name.rstrip("/"))
                if member.isdir():
                    os.makedirs(target, 0o755, exist_ok=True)
                    continue
                os.makedirs(os.path.dirname(target), 0o755, exist_ok=True)
                if member.issym():
                    os.symlink(member.linkname, target)
                    continue
                source = tar.extractfile(member)
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
                with os.fdopen(fd, "wb") as f:
                    shutil.copyfileobj(source, f)
    except (OSError, tarfile.TarError, EOFError) as exc:
        raise CaptureError(f"{path}: cannot be unpacked: {exc}") from None


def manifest(root: str) -> dict:
    """The manifest of an unpacked capture ({} when it has none: a tree copied by hand)."""
    data = _read_file(os.path.join(root, MANIFEST), 65536)
    if not data:
        return {}
    try:
        value = json.loads(data)
    except ValueError as exc:
        raise CaptureError(f"{os.path.join(root, MANIFEST)}: not JSON: {exc}") from None
    if not isinstance(value, dict) or value.get("format") != FORMAT:
        raise CaptureError(f"{os.path.join(root, MANIFEST)}: not a capture of format {FORMAT}")
    return value


def gather_args(root: str) -> dict:
    """The arguments of ``_facts.gather`` that read the unpacked capture at ``root`` as its host's facts."""
    meta = manifest(root)
    ids = meta.get("pci_ids")
    if not meta:
        found = find_pci_ids(root)
        ids = os.path.relpath(found, root) if found else None
    ssh = meta.get("ssh_connection")
    return {
        "sysfs_root": os.path.join(root, "sys"),
        "proc_root": os.path.join(root, "proc"),
        "dev_root": os.path.join(root, "dev"),
        "modules_root": os.path.join(root, "lib", "modules"),
        # "" = no database (not the controller's: the capture's host had none)
        "pci_ids_path": os.path.join(root, ids) if isinstance(ids, str) and ".." not in ids.split("/") else "",
        "ssh_connection": ssh if isinstance(ssh, str) else None,
    }


def host_name(entry: str) -> str | None:
    """The host a directory entry of captures is named after (``web1.tar.gz`` -> ``web1``), or None."""
    for suffix in ARCHIVE_SUFFIXES:
        if entry.endswith(suffix) and len(entry) > len(suffix):
            return entry[: -len(suffix)]
    return None


def captures(directory: str) -> list[tuple[str, str]]:
    """``(host, path)`` of every capture in ``directory``: archives (``HOST.tar.gz``, ``.tgz``, ``.tar``) and
    unpacked trees (``HOST/`` holding ``sys/``), sorted by host; a host found twice is an error."""
    try:
        names = sorted(os.listdir(directory))
    except OSError as exc:
        raise CaptureError(f"{directory}: cannot list the captures: {exc.strerror or exc}") from None
    found: dict[str, str] = {}
    for name in names:
        path = os.path.join(directory, name)
        host = host_name(name) if os.path.isfile(path) else None
        if host is None and os.path.isdir(os.path.join(path, "sys")):
            host = name
        if host is None or name.startswith("."):
            continue
        if host in found:
            raise CaptureError(f"{directory}: two captures of host {host}: {os.path.basename(found[host])}, {name}")
        found[host] = path
    return sorted(found.items())


def scratch_dir() -> str | None:
    """Where to unpack archives: RAM (/dev/shm) when the machine has it, since a capture is a few hundred small
    files that are read once (unpacking on a disk under load costs a second per host); else the temp directory."""
    shm = "/dev/shm"
    return shm if os.path.isdir(shm) and os.access(shm, os.W_OK | os.X_OK) else None


def read_capture(path: str, gather, scratch: str | None = None) -> dict:
    """The facts of one capture (an archive or an unpacked tree) through ``gather`` (``_facts.gather``); an archive
    is unpacked into a private directory below ``scratch`` (default :func:`scratch_dir`) and removed after."""
    if os.path.isdir(path):
        return gather(**gather_args(path))
    tmp = tempfile.mkdtemp(prefix="hostdev-vfio-capture-", dir=scratch or scratch_dir())
    try:
        unpack(path, tmp)
        return gather(**gather_args(tmp))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
