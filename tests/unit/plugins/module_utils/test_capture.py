# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Captures: a fake host captured, archived and unpacked gives the facts of the host itself."""

from __future__ import annotations

import io
import os
import sys
import tarfile
from pathlib import Path

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _capture
from ansible_collections.hostdev.vfio.plugins.module_utils._facts import gather
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakefleet import FIXTURES, SSH_CONNECTION, roots


def live_facts(host):
    return gather(**roots(host))


def capture_of(host):
    return _capture.collect(**roots(host))


def archived(host, tmp_path) -> Path:
    path = tmp_path / "host.tar.gz"
    path.write_bytes(_capture.archive(capture_of(host)))
    return path


@pytest.fixture(params=sorted(FIXTURES))
def host(request, tmp_path):
    return FIXTURES[request.param](tmp_path / "src")


def test_facts_from_an_unpacked_capture_equal_the_hosts(host, tmp_path):
    facts = live_facts(host)
    # the fixtures exercise every reader: names, modules, what the host needs, vfio files, ACPI tables
    assert facts["enabled"] and facts["units"]
    assert any(d["host_needs"] for d in facts["devices"])
    assert any(d["host_modules"] for d in facts["devices"]) and any(d["vendor_name"] for d in facts["devices"])
    assert any(d["driver_module"] for d in facts["devices"])
    out = tmp_path / "out"
    _capture.unpack(str(archived(host, tmp_path)), str(out))
    assert gather(**_capture.gather_args(str(out))) == facts
    # read as iommu_facts' options name them
    args = _capture.gather_args(str(out))
    assert args["sysfs_root"] == str(out / "sys") and args["modules_root"] == str(out / "lib" / "modules")
    assert _capture.read_capture(str(archived(host, tmp_path)), gather) == facts


def test_every_path_the_facts_read_is_in_the_capture(host, tmp_path):
    """The facts reader and the capture cannot drift: every file gather opens and every directory it lists on the
    live tree exists in the unpacked capture (Python's audit events see each os.open and os.listdir)."""
    seen: list[str] = []
    root = os.path.realpath(host.root)

    def hook(event, args):
        if (
            event in ("open", "os.listdir", "os.scandir")
            and args
            and isinstance(args[0], str)
            and (os.path.realpath(args[0]).startswith(root + os.sep) or args[0].startswith(str(host.root)))
        ):
            seen.append(args[0])

    recording = [True]
    sys.addaudithook(lambda e, a: hook(e, a) if recording[0] else None)
    try:
        live_facts(host)
    finally:
        recording[0] = False
    out = tmp_path / "out"
    _capture.unpack(str(archived(host, tmp_path)), str(out))
    checked = 0
    for path in seen:
        rel = os.path.relpath(path, host.root)
        if rel == "pci.ids":
            rel = _capture.PCI_IDS
        if os.path.exists(path):
            assert os.path.exists(out / rel), f"gather read {rel}, the capture lacks it"
            checked += 1
    assert checked > 50


def test_archive_is_reproducible_and_holds_only_what_facts_read(host, tmp_path):
    data = _capture.archive(capture_of(host))
    assert data == _capture.archive(capture_of(host))
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = tar.getmembers()
    allowed = ("sys/", "proc/", "dev/", "lib/modules/")
    for m in members:
        assert m.name.startswith(allowed) or m.name in _TOP, m.name
        assert m.isfile() or m.isdir() or m.issym(), m.name
        assert m.mtime == 0 and m.uid == 0 and m.gid == 0
        assert not m.name.startswith("etc")
    names = {m.name for m in members}
    assert "proc/cmdline" in names and "capture.json" in names and _capture.PCI_IDS in names
    # device nodes are empty files, config space is its header only
    by_name = {m.name: m for m in members}
    assert all(m.isfile() and m.size == 0 for n, m in by_name.items() if n.startswith("dev/vfio/"))
    assert all(m.size <= _capture.CONFIG_HEADER for n, m in by_name.items() if n.endswith("/config"))
    assert any(m.issym() for n, m in by_name.items() if n.startswith("sys/bus/pci/devices/"))


_TOP = {"sys", "proc", "dev", "lib", "lib/modules", "capture.json", "usr", "usr/share", "usr/share/misc"}
_TOP.add(_capture.PCI_IDS)


def test_manifest(tmp_path):
    host = FIXTURES["lab"](tmp_path / "src")
    out = tmp_path / "out"
    _capture.unpack(str(archived(host, tmp_path)), str(out))
    assert _capture.manifest(str(out)) == {
        "format": 1,
        "kernel_release": "6.1.0-40-amd64",
        "pci_ids": "usr/share/misc/pci.ids",
        "ssh_connection": SSH_CONNECTION,
    }


def test_a_tree_without_manifest_or_pci_ids_is_read_without_names(tmp_path):
    host = FIXTURES["lab"](tmp_path / "src")
    (host.root / "pci.ids").unlink()
    args = _capture.gather_args(str(host.root))
    assert args["pci_ids_path"] == "" and args["ssh_connection"] is None
    facts = gather(**args)
    assert facts["devices"] and not any(d["vendor_name"] for d in facts["devices"])


def _tar(tmp_path, *members) -> str:
    path = tmp_path / "bad.tar"
    with tarfile.open(path, "w") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return str(path)


def _info(name, kind=tarfile.REGTYPE, size=0, linkname=""):
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, linkname
    return info


@pytest.mark.parametrize(
    ("member", "why"),
    [
        ((_info("/etc/passwd"), b""), "a path outside the capture"),
        ((_info("sys/../../x"), b""), "a path outside the capture"),
        ((_info("sys/x", tarfile.SYMTYPE, linkname="/etc/shadow"), None), "a link that points outside"),
        ((_info("sys/x", tarfile.SYMTYPE, linkname="../../etc"), None), "a link that points outside"),
        ((_info("dev/vfio/1", tarfile.CHRTYPE), None), "neither a file, a directory nor a symlink"),
        ((_info("dev/sda", tarfile.BLKTYPE), None), "neither a file, a directory nor a symlink"),
        ((_info("sys/h", tarfile.LNKTYPE, linkname="proc/cmdline"), None), "neither a file"),
        # a link that escapes only through another link (textually inside: sys/a/.. = sys)
        (
            [
                (_info("sys/a", tarfile.SYMTYPE, linkname=".."), None),
                (_info("sys/b", tarfile.SYMTYPE, linkname="a/.."), None),
            ],
            "sys/b.* a link that points outside",
        ),
        # writing through a link the archive made
        (
            [(_info("sys/d", tarfile.SYMTYPE, linkname="../proc"), None), (_info("sys/d/x"), b"")],
            "sys/d/x.* below a link",
        ),
        ([(_info("proc/x"), b""), (_info("proc/x", tarfile.SYMTYPE, linkname="y"), None)], "given twice"),
    ],
)
def test_unpack_refuses_what_a_capture_cannot_hold(tmp_path, member, why):
    path = _tar(tmp_path, *(member if isinstance(member, list) else [member]))
    with pytest.raises(_capture.CaptureError, match=why):
        _capture.unpack(path, str(tmp_path / "out"))
    assert not (tmp_path / "out" / "etc").exists()


def test_unpack_names_a_broken_archive(tmp_path):
    path = tmp_path / "broken.tar.gz"
    path.write_bytes(b"\x1f\x8b not gzip")
    with pytest.raises(_capture.CaptureError, match=r"broken\.tar\.gz: cannot be unpacked"):
        _capture.unpack(str(path), str(tmp_path / "out"))


def test_captures_lists_archives_and_trees_by_host(tmp_path):
    for name in ("web1.tar.gz", "web2.tgz", "db.tar", "notes.txt", ".hidden.tar.gz"):
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "tree1" / "sys").mkdir(parents=True)
    (tmp_path / "other").mkdir()
    assert _capture.captures(str(tmp_path)) == [
        ("db", str(tmp_path / "db.tar")),
        ("tree1", str(tmp_path / "tree1")),
        ("web1", str(tmp_path / "web1.tar.gz")),
        ("web2", str(tmp_path / "web2.tgz")),
    ]
    (tmp_path / "web1" / "sys").mkdir(parents=True)
    with pytest.raises(_capture.CaptureError, match="two captures of host web1"):
        _capture.captures(str(tmp_path))


def test_a_link_out_of_the_tree_is_not_captured(tmp_path):
    host = FIXTURES["lab"](tmp_path / "src")
    (host.sys / "class" / "net" / "evil").symlink_to("/etc")
    (host.sys / "class" / "net" / "evil2").symlink_to("../../../../../../etc")
    cap = capture_of(host)
    assert "sys/class/net/evil" not in cap.entries and "sys/class/net/evil2" not in cap.entries
    assert not any(k.startswith("etc") or "/etc/" in k for k in cap.entries)


def test_cpuinfo_is_kept_up_to_the_vendor_line(tmp_path):
    """What _facts reads of it, without the clock speed that changes from one read to the next."""
    host = FIXTURES["lab"](tmp_path / "src")
    (host.proc / "cpuinfo").write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\ncpu MHz\t\t: 3400.117\n\n" * 2)
    cap = capture_of(host)
    assert cap.entries["proc/cpuinfo"] == ("file", b"processor\t: 0\nvendor_id\t: AuthenticAMD\n")
    (host.proc / "cpuinfo").write_text("vendor_id\t: GenuineIntel\nflags\t: vmx\n")
    assert capture_of(host).entries["proc/cpuinfo"] == ("file", b"vendor_id\t: GenuineIntel\n")
    (host.proc / "cpuinfo").write_text("processor\t: 0\nCPU implementer\t: 0x41\n")
    assert capture_of(host).entries["proc/cpuinfo"] == ("file", b"processor\t: 0\nCPU implementer\t: 0x41\n")
