# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18, kernel_cmdline and initramfs: every class of hostile input and host state, one table per module.

Each case hashes the whole file tree before and after the run and asserts that nothing changed, that no command
ran (run_command is a stub that records every call), and that the module failed cleanly (fail_json, no
traceback) with a message naming the offending value, character, line or path.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from ansible.module_utils import basic
from ansible_collections.hostdev.vfio.plugins.module_utils._kernel_cmdline import MARKER
from ansible_collections.hostdev.vfio.plugins.modules import initramfs, kernel_cmdline
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_initramfs import FakeHost
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_kernel_cmdline import (
    GRUB_DEFAULT,
    fake_update_grub,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module


def tree_digest(root: Path) -> dict:
    """Every path below ``root`` with its type, mode and content hash."""
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(base) / name
            st = path.lstat()
            if path.is_symlink():
                out[str(path.relative_to(root))] = ("link", os.readlink(path))
            elif path.is_file():
                out[str(path.relative_to(root))] = (st.st_mode, hashlib.sha256(path.read_bytes()).hexdigest())
            else:
                out[str(path.relative_to(root))] = (st.st_mode, "dir")
    return out


def _stub_commands(monkeypatch, tools):
    calls = []

    def run_command(self, argv, **kwargs):
        calls.append(list(argv))
        return 0, "", ""

    def get_bin_path(self, name, required=False, opt_dirs=None):
        if name in tools:
            return f"/usr/sbin/{name}"
        if required:
            self.fail_json(msg=f"Failed to find required executable {name}")
        return None

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", get_bin_path)
    return calls


def _read_only(monkeypatch):
    def atomic_move(self, src, dest, unsafe_writes=False, keep_dest_attrs=True):
        raise Exception(f"Could not replace file: {src} to {dest}: [Errno 30] Read-only file system")  # as 2.19

    monkeypatch.setattr(basic.AnsibleModule, "atomic_move", atomic_move)


def _write(rel, data):
    def setup(root):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)

    return setup


def _make_dir(rel):
    def setup(root):
        path = root / rel
        if path.is_file():
            path.unlink()
        path.mkdir(parents=True, exist_ok=True)

    return setup


def _make_file(rel):
    def setup(root):
        path = root / rel
        if path.is_dir():
            shutil.rmtree(path)
        path.write_text("not a directory\n")

    return setup


def _symlink_loop(rel):
    def setup(root):
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            path.unlink()
        os.symlink(path.name, path)

    return setup


# ---------------------------------------------------------------------------------------------------------------
# kernel_cmdline
# ---------------------------------------------------------------------------------------------------------------
ACPI_LINE = b'GRUB_CMDLINE_LINUX_DEFAULT="quiet acpi_osi=\\"!Windows 2012\\""\n'

# (id, module parameters (a function of the root), setup of the tree, text the message must contain)
KC_CASES = [
    # GRUB-unsafe kernel arguments: the character is named
    ("semicolon", lambda r: {"args": ["intel_iommu=on;reboot"]}, None, "the character ';'"),
    ("semicolon-in-name", lambda r: {"args": ["quiet;reboot"]}, None, "the character ';'"),
    ("pipe", lambda r: {"args": ["vfio-pci.ids=10de:1b80|reboot"]}, None, "the character '|'"),
    ("ampersand", lambda r: {"args": ["a=b&&reboot"]}, None, "the character '&'"),
    ("dollar", lambda r: {"args": ["a=$(reboot)"]}, None, "the character '$'"),
    ("backtick", lambda r: {"args": ["a=`reboot`"]}, None, "the character '`'"),
    ("double-quote", lambda r: {"args": ['a=b"; reboot; "']}, None, "the character '\"'"),
    ("single-quote", lambda r: {"args": ["a=b'c"]}, None, 'the character "\'"'),
    ("backslash", lambda r: {"args": ["a=b\\"]}, None, "the character '\\\\'"),
    ("space", lambda r: {"args": ["intel_iommu=on iommu=pt"]}, None, "the character ' '"),
    # control characters: newline, NUL, tab, carriage return, U+2028
    ("newline", lambda r: {"args": ["a=b\nGRUB_DISABLE_OS_PROBER=false"]}, None, "'\\n'"),
    ("nul", lambda r: {"args": ["a=b\x00c"]}, None, "'\\x00'"),
    ("tab", lambda r: {"args": ["a=b\tc"]}, None, "'\\t'"),
    ("carriage-return", lambda r: {"args": ["a=b\r"]}, None, "'\\r'"),
    ("line-separator", lambda r: {"args": ["a=b\u2028c"]}, None, "'\\u2028'"),
    ("trailing-newline", lambda r: {"args": ["intel_iommu=on\n"]}, None, "'\\n'"),
    ("100k-value", lambda r: {"args": ["a=" + "x" * 100_000]}, None, "longer than 4096"),
    ("empty", lambda r: {"args": [""]}, None, "args[0]: must not be empty"),
    ("remove-semicolon", lambda r: {"remove": ["quiet;reboot"]}, None, "remove[0]"),
    ("remove-newline", lambda r: {"remove": ["quiet\nreboot"]}, None, "'\\n'"),
    # names of owned files, roots
    ("name-traversal", lambda r: {"name": "../../../etc/cron.d/x"}, None, "'../../../etc/cron.d/x'"),
    ("name-newline", lambda r: {"name": "x\ny"}, None, "'x\\ny'"),
    ("root-nul", lambda r: {"root": str(r) + "\x00"}, None, "'\\x00'"),
    ("proc-root-newline", lambda r: {"proc_root": "/proc\n"}, None, "'/proc\\n'"),
    # /etc/default/grub lines sh reads differently from their text: never edited, the line named
    (
        "unquoted-semicolon-line",
        lambda r: {"remove": ["quiet"]},
        _write("etc/default/grub", b"GRUB_CMDLINE_LINUX=quiet;reboot\n"),
        "line 1 ('GRUB_CMDLINE_LINUX=quiet;reboot')",
    ),
    (
        "unquoted-space-line",
        lambda r: {"args": ["splash=1"], "remove": ["quiet"]},
        _write("etc/default/grub", b"GRUB_CMDLINE_LINUX=quiet reboot\n"),
        "line 1",
    ),
    (
        "escaped-line-needs-edit",
        lambda r: {"remove": ["quiet"]},
        _write("etc/default/grub", ACPI_LINE),
        "line 1",
    ),
    (
        "command-substitution-line",
        lambda r: {"remove": ["quiet"]},
        _write("etc/default/grub", b'GRUB_CMDLINE_LINUX="$(cat /etc/cmdline)"\n'),
        "line 1",
    ),
    # files that cannot be edited as text
    ("grub-not-utf8", lambda r: {"args": ["iommu=pt"]}, _write("etc/default/grub", b'GRUB_X="caf\xe9"\n'), "not UTF-8"),
    ("grub-nul-bytes", lambda r: {"args": ["iommu=pt"]}, _write("etc/default/grub", b"\x00" * 64), "NUL bytes"),
    ("grub-is-a-directory", lambda r: {"args": ["iommu=pt"]}, _make_dir("etc/default/grub"), "is a directory"),
    (
        "own-dropin-not-utf8",
        lambda r: {"args": ["iommu=pt"]},
        _write("etc/default/grub.d/hostdev-vfio.cfg", b"\xff\xfe"),
        "hostdev-vfio.cfg: is not UTF-8",
    ),
    (
        "other-dropin-not-utf8",
        lambda r: {"args": ["iommu=pt"]},
        _write("etc/default/grub.d/50-cloud.cfg", b"# \xff\n"),
        "50-cloud.cfg: is not UTF-8",
    ),
    (
        "own-dropin-hand-edited",
        lambda r: {"args": ["iommu=pt"]},
        _write(
            "etc/default/grub.d/hostdev-vfio.cfg",
            (MARKER + '\nGRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT a;reboot"\n').encode(),
        ),
        "hostdev-vfio.cfg: 'a;reboot'",
    ),
    (
        "own-dropin-self-looping-symlink",
        lambda r: {"args": ["iommu=pt"]},
        _symlink_loop("etc/default/grub.d/hostdev-vfio.cfg"),
        "hostdev-vfio.cfg: cannot read the GRUB drop-in: Too many levels of symbolic links",
    ),
    ("dropin-parent-is-a-file", lambda r: {"args": ["iommu=pt"]}, _make_file("etc/default/grub.d"), "not a directory"),
    (
        "root-is-a-file",
        lambda r: {"args": ["iommu=pt"], "backend": "grub", "root": str(r / "boot/grub/grub.cfg")},
        None,
        "grub.cfg/etc/default/grub: a parent of this path is not a directory",
    ),
    ("read-only-target", lambda r: {"args": ["iommu=pt"]}, "read-only", "hostdev-vfio.cfg"),
]


@pytest.fixture
def grub_host(tmp_path, monkeypatch):
    (tmp_path / "etc/default/grub.d").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text(GRUB_DEFAULT)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=UUID=0c1d ro quiet\n")
    fake_update_grub(tmp_path)
    calls = _stub_commands(monkeypatch, ("update-grub",))
    return tmp_path, calls


@pytest.mark.parametrize(("params", "setup", "message"), [c[1:] for c in KC_CASES], ids=[c[0] for c in KC_CASES])
def test_kernel_cmdline_hostile_input_changes_nothing(grub_host, monkeypatch, params, setup, message):
    root, calls = grub_host
    if setup == "read-only":
        _read_only(monkeypatch)
    elif setup is not None:
        setup(root)
    before = tree_digest(root)
    args = {"root": str(root), "proc_root": str(root / "proc"), **params(root)}
    res, failed = run_module(kernel_cmdline.main, args)
    assert failed, res
    assert message in res["msg"], res["msg"]
    assert "Traceback" not in res["msg"]
    assert calls == []  # no generator (update-grub), no detection command
    assert tree_digest(root) == before


def test_kernel_cmdline_read_only_message_names_the_path(grub_host, monkeypatch):
    root, calls = grub_host
    _read_only(monkeypatch)
    res, failed = run_module(kernel_cmdline.main, {"root": str(root), "proc_root": str(root / "proc"), "args": ["x=1"]})
    assert failed and res["msg"].startswith(f"cannot write {root}/etc/default/grub.d/hostdev-vfio.cfg: ")
    assert "Read-only file system" in res["msg"] and calls == []


def test_kernel_cmdline_garbled_proc_cmdline_is_no_traceback(grub_host):
    root, calls = grub_host
    (root / "proc/cmdline").write_bytes(b"root=UUID=0c1d ro quiet caf\xe9=1\n")
    res, failed = run_module(
        kernel_cmdline.main,
        {"root": str(root), "proc_root": str(root / "proc"), "args": ["iommu=pt"], "_ansible_check_mode": True},
    )
    assert not failed and res["reboot_required"] and "caf\ufffd=1" in res["running_cmdline"]
    assert calls == []


# ---------------------------------------------------------------------------------------------------------------
# initramfs
# ---------------------------------------------------------------------------------------------------------------
MODS = ["vfio", "vfio_iommu_type1", "vfio_pci"]
IR_CASES = [
    # unchecked values passed to commands: update-initramfs -k <value>, dracut --kver <value>
    ("release-traversal", lambda r: {"kernel_versions": ["../../../etc"]}, None, "kernel_versions[0]: '../../../etc'"),
    (
        "release-inner-traversal",
        lambda r: {"kernel_versions": ["6.1.0-26-amd64/../../x"]},
        None,
        "6.1.0-26-amd64/../../x",
    ),
    ("release-absolute", lambda r: {"kernel_versions": ["/boot/x"]}, None, "'/boot/x'"),
    ("release-newline", lambda r: {"kernel_versions": ["6.1.0-26-amd64\nreboot"]}, None, "'\\n'"),
    ("release-trailing-newline", lambda r: {"kernel_versions": ["6.1.0-26-amd64\n"]}, None, "'\\n'"),
    ("release-nul", lambda r: {"kernel_versions": ["6.1.0\x00"]}, None, "'\\x00'"),
    ("release-option", lambda r: {"kernel_versions": ["-c"]}, None, "kernel_versions[0]: '-c'"),
    ("release-space", lambda r: {"kernel_versions": ["6.1.0 all"]}, None, "'6.1.0 all'"),
    ("release-semicolon", lambda r: {"kernel_versions": ["6.1;reboot"]}, None, "'6.1;reboot'"),
    ("release-empty", lambda r: {"kernel_versions": [""]}, None, "kernel_versions[0]: must not be empty"),
    ("release-100k", lambda r: {"kernel_versions": ["6" * 100_000]}, None, "longer than 128"),
    # newline and control characters in module names
    ("module-newline", lambda r: {"modules": ["vfio\n"]}, None, "modules[0]: 'vfio\\n'"),
    ("module-newline-command", lambda r: {"modules": ["vfio\nreboot"]}, None, "'\\n'"),
    ("module-semicolon", lambda r: {"modules": ["vfio;reboot"]}, None, "'vfio;reboot'"),
    ("module-path", lambda r: {"modules": ["../vfio"]}, None, "'../vfio'"),
    ("module-space", lambda r: {"modules": ["vfio pci"]}, None, "'vfio pci'"),
    ("module-100k", lambda r: {"modules": ["v" * 100_000]}, None, "longer than 64"),
    # owned file name, root, verify_files
    ("name-traversal", lambda r: {"name": "../x"}, None, "'../x'"),
    ("name-newline", lambda r: {"name": "x\ny"}, None, "'x\\ny'"),
    ("root-nul", lambda r: {"root": str(r) + "\x00"}, None, "'\\x00'"),
    ("verify-relative", lambda r: {"verify_files": ["etc/x"]}, None, "verify_files[0]: 'etc/x' must be an absolute"),
    ("verify-newline", lambda r: {"verify_files": ["/etc/x\n"]}, None, "'/etc/x\\n'"),
    # files that cannot be edited as text, paths that are not what they should be
    (
        "config-not-utf8",
        lambda r: {},
        _write("etc/initramfs-tools/modules", b"# Liste der Module f\xfcr die initramfs\nvirtio_blk\n"),
        "etc/initramfs-tools/modules: is not UTF-8 (byte 0xfc",
    ),
    (
        "config-self-looping-symlink",
        lambda r: {},
        _symlink_loop("etc/initramfs-tools/modules"),
        "modules: cannot read the initramfs configuration file: Too many levels of symbolic links",
    ),
    ("config-nul-bytes", lambda r: {}, _write("etc/initramfs-tools/modules", b"\x00" * 128), "NUL bytes"),
    ("config-is-a-directory", lambda r: {}, _make_dir("etc/initramfs-tools/modules"), "is a directory"),
    (
        "config-parent-is-a-file",
        lambda r: {"backend": "initramfs-tools"},
        _make_file("etc/initramfs-tools"),
        "etc/initramfs-tools/modules: a parent of this path is not a directory",
    ),
    (
        "root-is-a-file",
        lambda r: {"backend": "initramfs-tools", "root": str(r / "boot/vmlinuz-6.1.0-26-amd64")},
        None,
        "vmlinuz-6.1.0-26-amd64/lib/modules",
    ),
    ("read-only-target", lambda r: {}, "read-only", "cannot write"),
]


@pytest.fixture
def initramfs_host(tmp_path, monkeypatch):
    FakeHost(tmp_path)
    calls = _stub_commands(monkeypatch, ("update-initramfs", "lsinitramfs"))
    return tmp_path, calls


@pytest.mark.parametrize(("params", "setup", "message"), [c[1:] for c in IR_CASES], ids=[c[0] for c in IR_CASES])
def test_initramfs_hostile_input_changes_nothing(initramfs_host, monkeypatch, params, setup, message):
    root, calls = initramfs_host
    if setup == "read-only":
        _read_only(monkeypatch)
    elif setup is not None:
        setup(root)
    before = tree_digest(root)
    res, failed = run_module(initramfs.main, {"root": str(root), "modules": MODS, **params(root)})
    assert failed, res
    assert message in res["msg"], res["msg"]
    assert "Traceback" not in res["msg"]
    assert calls == []  # no update-initramfs, dracut or mkinitcpio, not even a listing
    assert tree_digest(root) == before


def test_initramfs_read_only_message_names_the_path(initramfs_host, monkeypatch):
    root, calls = initramfs_host
    _read_only(monkeypatch)
    res, failed = run_module(initramfs.main, {"root": str(root), "modules": MODS})
    assert failed and res["msg"].startswith(f"cannot write {root}/etc/initramfs-tools/modules: ")
    assert calls == []


def test_initramfs_ignores_a_crafted_directory_under_lib_modules(initramfs_host):
    """A directory named like a command under /lib/modules (host state) never reaches update-initramfs."""
    root, calls = initramfs_host
    crafted = "6.1.0-26-amd64\nreboot"
    (root / "lib/modules" / crafted).mkdir()
    (root / f"boot/vmlinuz-{crafted}").write_text("")
    res, failed = run_module(initramfs.main, {"root": str(root), "modules": MODS, "_ansible_check_mode": True})
    assert not failed and res["kernel_versions"] == ["6.1.0-26-amd64"]
    assert all(crafted not in argv for argv in calls + res["commands"])
    assert any(argv[-1] == "6.1.0-26-amd64" for argv in res["commands"])
