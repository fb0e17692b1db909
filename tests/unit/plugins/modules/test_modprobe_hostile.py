# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18: hostile input to the four modprobe.d / modules-load.d modules, one table per module.

Every row runs the module on a temporary tree. The whole tree around ``root`` (a sibling directory ``outside``
included) is hashed before and after: a refused input must change nothing anywhere and run no command, and the
result must be a clean fail_json whose message names the offending value (or path).
"""

from __future__ import annotations

import errno
import hashlib
import os

import pytest
from ansible.module_utils import basic
from ansible_collections.hostdev.vfio.plugins.modules import (
    modprobe_blacklist,
    modprobe_options,
    modprobe_softdep,
    modules_load,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module

MODPROBE_CONF = "/etc/modprobe.d/hostdev-vfio.conf"
LOAD_CONF = "/etc/modules-load.d/hostdev-vfio.conf"
LONG = "a" * 100_000

# module -> (main, valid arguments, managed file, the argument that carries module names)
MODULES = {
    "modprobe_softdep": (modprobe_softdep.main, {"name": "snd_hda_intel", "pre": ["vfio-pci"]}, MODPROBE_CONF),
    "modprobe_options": (modprobe_options.main, {"name": "vfio-pci", "options": {"ids": "10de:1b80"}}, MODPROBE_CONF),
    "modprobe_blacklist": (modprobe_blacklist.main, {"name": "nouveau"}, MODPROBE_CONF),
    "modules_load": (modules_load.main, {"name": ["vfio-pci"]}, LOAD_CONF),
}
WITH_RELEASE = ("modprobe_softdep", "modprobe_options", "modprobe_blacklist")


def tree_digest(top):
    """{relative path: (kind, content hash or link target, mode)} of everything below ``top``, links not followed."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, top)
            st = os.lstat(full)
            if os.path.islink(full):
                out[rel] = ("link", os.readlink(full), st.st_mode)
            elif os.path.isdir(full):
                out[rel] = ("dir", None, st.st_mode)
            else:
                with open(full, "rb") as f:
                    out[rel] = ("file", hashlib.sha256(f.read()).hexdigest(), st.st_mode)
    return out


@pytest.fixture
def tree(tmp_path):
    """tmp/root: a small host with our files and neighbours; tmp/outside: must never be touched."""
    root = tmp_path / "root"
    for rel, text in {
        MODPROBE_CONF: "# mine\nsoftdep snd_hda_intel pre: foo\noptions vfio-pci ids=1:2\n",
        "/etc/modprobe.d/other.conf": "blacklist pcspkr\n",
        "/lib/modprobe.d/aliases.conf": "softdep uhci-hcd pre: ehci-hcd\n",
        LOAD_CONF: "# mine\nvfio\n",
        "/usr/sbin/update-initramfs": "#!/bin/sh\n",
    }.items():
        full = root / rel.lstrip("/")
        full.parent.mkdir(parents=True, exist_ok=True)
        full.write_text(text)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "target.conf").write_text("# outside root\n")
    return tmp_path


@pytest.fixture
def commands(monkeypatch):
    """Every command a module tries to run or look up (none of these modules may run one on refused input)."""
    calls = []

    def run_command(self, args, *a, **kw):
        calls.append(args)
        return 0, "", ""

    def get_bin_path(self, arg, *a, **kw):
        calls.append(["get_bin_path", arg])
        return "/bin/true"

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", get_bin_path)
    return calls


def _names(module, value):
    """Arguments that put ``value`` where the module takes a module name."""
    return {"name": [value]} if module == "modules_load" else {"name": value}


def _conf(module):
    return MODULES[module][2]


# Each row: (class of hostile input, modules it applies to, setup(tree) -> extra args, text the message must hold).
# A setup gets the tmp dir and the module name and returns the arguments to add.
VALUE_ROWS = [
    ("newline-in-name", None, lambda t, m: _names(m, "vfio-pci\n"), "'vfio-pci\\n'"),
    ("crlf-in-name", None, lambda t, m: _names(m, "vfio-pci\r"), "'vfio-pci\\r'"),
    ("tab-in-name", None, lambda t, m: _names(m, "vfio\tpci"), "'vfio\\tpci'"),
    ("escape-in-name", None, lambda t, m: _names(m, "vfio\x1b[2J"), "'vfio\\x1b[2J'"),
    ("line-separator-in-name", None, lambda t, m: _names(m, "vfio\u2028install"), "'vfio\\u2028install'"),
    ("nul-in-name", None, lambda t, m: _names(m, "vfio\x00pci"), "'vfio\\x00pci'"),
    ("100k-name", None, lambda t, m: _names(m, LONG), "100000 long"),
    ("space-command-in-name", None, lambda t, m: _names(m, "vfio install x reboot"), "'vfio install x reboot'"),
    (
        "issue-18-exploit",
        ("modprobe_softdep",),
        lambda t, m: {"name": "amdgpu", "pre": ["vfio-pci\n", "install", "snd_hda_intel", "reboot"]},
        "pre[0]: 'vfio-pci\\n'",
    ),
    ("newline-in-post", ("modprobe_softdep",), lambda t, m: {"post": ["x\ninstall y z"]}, "post[0]: 'x\\ninstall y z'"),
    (
        "newline-in-option-value",
        ("modprobe_options",),
        lambda t, m: {"options": {"ids": "10de:1b80\ninstall snd_hda_intel reboot"}},
        "options.ids: '10de:1b80\\ninstall",
    ),
    (
        "newline-in-option-key",
        ("modprobe_options",),
        lambda t, m: {"options": {"ids\ninstall": "1"}},
        "options: 'ids\\ninstall'",
    ),
    ("nul-in-option-value", ("modprobe_options",), lambda t, m: {"options": {"ids": "1\x002"}}, "'1\\x002'"),
    ("100k-option-value", ("modprobe_options",), lambda t, m: {"options": {"ids": LONG}}, "100000 long"),
    ("quote-in-option-value", ("modprobe_options",), lambda t, m: {"options": {"ids": 'a"b'}}, "'a\"b'"),
    ("nested-option-value", ("modprobe_options",), lambda t, m: {"options": {"ids": [["a"]]}}, "[['a']]"),
    ("dict-option-value", ("modprobe_options",), lambda t, m: {"options": {"ids": {"a": 1}}}, "{'a': 1}"),
    ("traversal-path", None, lambda t, m: {"path": "/etc/modprobe.d/../../../outside/target.conf"}, "'..'"),
    ("newline-in-path", None, lambda t, m: {"path": "/etc/modprobe.d/x\ninstall.conf"}, "'/etc/modprobe.d/x\\n"),
    ("nul-in-path", None, lambda t, m: {"path": "/etc/modprobe.d/x\x00.conf"}, "x\\x00.conf"),
    ("100k-path", None, lambda t, m: {"path": "/" + LONG + ".conf"}, "100006 long"),
    ("relative-path", None, lambda t, m: {"path": "etc/modprobe.d/x.conf"}, "'etc/modprobe.d/x.conf'"),
    ("release-traversal", WITH_RELEASE, lambda t, m: {"kernel_release": "../../../outside"}, "'../../../outside'"),
    ("release-newline", WITH_RELEASE, lambda t, m: {"kernel_release": "6.1.0-28-amd64\n"}, "'6.1.0-28-amd64\\n'"),
    ("release-100k", WITH_RELEASE, lambda t, m: {"kernel_release": LONG}, "100000 long"),
]


def _write(tmp, rel, data):
    full = tmp / "root" / rel.lstrip("/")
    full.parent.mkdir(parents=True, exist_ok=True)
    if full.exists() or full.is_symlink():
        full.unlink()
    full.write_bytes(data)
    return full


def _symlink_out(tmp, m):
    path = os.path.join(os.path.dirname(_conf(m)), "evil.conf")
    link = tmp / "root" / path.lstrip("/")
    link.symlink_to(os.path.relpath(tmp / "outside" / "target.conf", link.parent))
    return {"path": path}


def _dir_symlink_out(tmp, m):
    (tmp / "root" / "etc" / "escape").symlink_to(tmp / "outside")
    return {"path": "/etc/escape/target.conf"}


def _nul_conf(tmp, m):
    _write(tmp, _conf(m), b"\0" * 4096)
    return {}


def _latin1_conf(tmp, m):
    _write(tmp, _conf(m), "# Kommentar für Grafik\nblacklist nouveau\n".encode("latin-1"))
    return {}


def _loop_target(tmp, m):
    full = tmp / "root" / _conf(m).lstrip("/")
    full.unlink()
    full.symlink_to(full.name)
    return {}


def _dir_target(tmp, m):
    full = tmp / "root" / _conf(m).lstrip("/")
    full.unlink()
    full.mkdir()
    (full / "keep").write_text("x\n")
    return {}


def _parent_is_file(tmp, m):
    _write(tmp, "/etc/hostdev.d", b"I am a file\n")
    return {"path": "/etc/hostdev.d/x.conf"}


def _root_is_file(tmp, m):
    (tmp / "rootfile").write_text("not a directory\n")
    return {"root": str(tmp / "rootfile")}


def _root_missing(tmp, m):
    return {"root": str(tmp / "no-such-root")}


FILE_ROWS = [
    ("symlink-out-of-root", None, _symlink_out, "outside root"),
    ("directory-symlink-out-of-root", None, _dir_symlink_out, "outside root"),
    ("binary-conf-full-of-nul", None, _nul_conf, "holds NUL bytes"),
    ("non-utf8-conf", None, _latin1_conf, "is not UTF-8 (byte 0xfc"),
    ("self-looping-symlink-target", None, _loop_target, "is a symlink to hostdev-vfio.conf, not to a regular file"),
    ("directory-as-file", None, _dir_target, "is a directory"),
    ("parent-is-a-file", None, _parent_is_file, "a parent of this path is not a directory"),
    ("root-is-a-file", None, _root_is_file, "is not a directory"),
    ("root-missing", None, _root_missing, "does not exist"),
]


def _table():
    for module in MODULES:
        for case, only, setup, needle in VALUE_ROWS + FILE_ROWS:
            if only is None or module in only:
                yield pytest.param(module, setup, needle, id=f"{module}-{case}")


@pytest.mark.parametrize(("module", "setup", "needle"), list(_table()))
def test_hostile_input_is_refused_and_nothing_changes(tree, commands, module, setup, needle):
    main, good, _conf_path = MODULES[module]
    extra = setup(tree, module)
    before = tree_digest(tree)
    args = {"root": str(tree / "root"), **good, "kernel_release": "6.1.0-28-amd64", **extra}
    if module not in WITH_RELEASE:
        args.pop("kernel_release")
    for mode in ({"_ansible_check_mode": True}, {}):
        result, failed = run_module(main, {**args, **mode})
        assert failed, result
        assert needle in result["msg"], result["msg"]
        assert "Traceback" not in result["msg"] and "exception" not in result
    assert tree_digest(tree) == before
    assert commands == []


@pytest.mark.parametrize("module", list(MODULES))
def test_valid_input_on_the_same_tree_does_change_it(tree, commands, module):
    """The table's tree is editable: the refusals above are due to the hostile value, not to the tree."""
    main, good, conf = MODULES[module]
    before = tree_digest(tree)
    args = {"root": str(tree / "root"), **good}
    result, failed = run_module(main, args)
    assert not failed and result["changed"], result
    after = tree_digest(tree)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    assert changed == {"root" + conf}
    assert commands == []


@pytest.mark.parametrize("module", list(MODULES))
def test_read_only_target_is_a_clean_failure(tree, commands, monkeypatch, module):
    """ansible-core 2.19's atomic_move raises a plain Exception when the rename fails (EROFS here): the module
    fails naming the path, leaves no temporary file and changes nothing."""
    main, good, conf = MODULES[module]
    target = os.path.realpath(tree / "root" / conf.lstrip("/"))
    real_rename = os.rename

    def rename(src, dst, *a, **kw):
        if os.fsdecode(dst) == target:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), dst)
        return real_rename(src, dst, *a, **kw)

    monkeypatch.setattr(os, "rename", rename)
    before = tree_digest(tree)
    result, failed = run_module(main, {"root": str(tree / "root"), **good})
    assert failed, result
    assert result["msg"].startswith(f"could not write {target}: ")
    assert "Read-only file system" in result["msg"]
    assert result["changed"] is False
    assert tree_digest(tree) == before
    assert commands == []


@pytest.mark.parametrize("module", list(MODULES))
def test_self_looping_symlink_next_to_the_target_is_skipped_with_a_warning(tree, commands, module):
    """A loop is not the file we edit: the scan of the effective configuration skips it and says so."""
    main, good, conf = MODULES[module]
    loop = tree / "root" / os.path.dirname(conf).lstrip("/") / "loop.conf"
    loop.symlink_to("loop.conf")
    result, failed = run_module(main, {"root": str(tree / "root"), **good})
    assert not failed, result
    assert result["changed"] is True
    shown = os.path.join(os.path.dirname(conf), "loop.conf")
    assert any(w.startswith(f"{shown} was skipped:") for w in result.get("warnings", [])), result
    assert os.readlink(loop) == "loop.conf"
