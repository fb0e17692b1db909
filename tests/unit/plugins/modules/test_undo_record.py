# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hostdev.vfio.undo_record: files noted before their first change are given back byte for byte."""

from __future__ import annotations

import json

import pytest
from ansible_collections.hostdev.vfio.plugins.modules import undo_record
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module

CONF = "/etc/modprobe.d/hostdev-vfio-passthrough.conf"
RULE = "/etc/udev/rules.d/70-hostdev-vfio-passthrough.rules"
RECORD = "var/lib/hostdev-vfio/undo-record.json"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "etc/modprobe.d").mkdir(parents=True)
    (tmp_path / "etc/udev/rules.d").mkdir(parents=True)
    return tmp_path


def call(root, **kw):
    return run_module(undo_record.main, {"root": str(root), "files": [CONF, RULE], **kw})


def test_record_then_restore_gives_back_exactly_what_was_there(root):
    admin = b"# the admin's own line\noptions vfio-pci disable_vga=1\n\xff"
    (root / CONF.lstrip("/")).write_bytes(admin)
    res, failed = call(root, _ansible_check_mode=True)
    assert not failed and res["changed"] and not (root / RECORD).exists()
    res, failed = call(root)
    assert not failed and res["changed"] and res["recorded"] == [CONF, RULE]
    # the role writes its files; a second record run keeps the first sight
    (root / CONF.lstrip("/")).write_text("softdep e1000e pre: vfio-pci\n")
    (root / RULE.lstrip("/")).write_text('SUBSYSTEM=="vfio", GROUP="kvm"\n')
    before = (root / RECORD).read_text()
    res, failed = call(root)
    assert not failed and not res["changed"] and (root / RECORD).read_text() == before

    res, failed = call(root, state="restored", _ansible_check_mode=True, _ansible_diff=True)
    assert not failed and res["changed"] and len(res["diff"]) == 2
    assert (root / RULE.lstrip("/")).exists()
    res, failed = call(root, state="restored")
    assert not failed and res["changed"]
    assert (root / CONF.lstrip("/")).read_bytes() == admin
    assert not (root / RULE.lstrip("/")).exists()
    assert not (root / RECORD).exists()
    res, failed = call(root, state="restored")
    assert not failed and not res["changed"]


def test_unrecorded_files(root):
    (root / RULE.lstrip("/")).write_text("written by an older version\n")
    res, failed = call(root, state="restored")
    assert not failed and not res["changed"] and (root / RULE.lstrip("/")).exists()
    res, failed = call(root, state="restored", unrecorded="remove")
    assert not failed and res["changed"] and not (root / RULE.lstrip("/")).exists()


def test_the_record_keeps_kernel_arguments_of_other_owners(root):
    (root / RECORD).parent.mkdir(parents=True)
    other = {"version": 1, "kernel_cmdline": {"x": [{"arg": "iommu=pt", "had": []}]}, "files": {}}
    (root / RECORD).write_text(json.dumps(other))
    call(root)
    call(root, state="restored")
    assert json.loads((root / RECORD).read_text()) == other


@pytest.mark.parametrize(("files", "word"), [(["/etc/../../outside"], ".."), (["relative/path"], "absolute")])
def test_paths_stay_below_root(root, files, word):
    res, failed = run_module(undo_record.main, {"root": str(root), "files": files})
    assert failed and word in res["msg"]


def test_broken_entries_are_clear_errors(root):
    (root / RECORD).parent.mkdir(parents=True)
    (root / RECORD).write_text(json.dumps({"version": 1, "files": {CONF: {"before": "!!not base64"}}}))
    res, failed = call(root, state="restored")
    assert failed and "base64" in res["msg"]
    (root / RECORD).write_text(json.dumps({"version": 1, "files": {"rel": {"before": None}}}))
    res, failed = call(root)
    assert failed and "malformed" in res["msg"]
