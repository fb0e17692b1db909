# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kernel_cmdline's undo record: record what was there before a change, and give exactly that back."""

from __future__ import annotations

import json

import pytest
from ansible.module_utils import basic
from ansible_collections.hostdev.vfio.plugins.module_utils import _kernel_cmdline as kc
from ansible_collections.hostdev.vfio.plugins.modules import kernel_cmdline
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_kernel_cmdline import fake_update_grub
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module

RECORD = "var/lib/hostdev-vfio/undo-record.json"
# The admin's own file: iommu=pt was there before the role, intel_iommu=off turns the IOMMU off.
ADMIN_GRUB = """# If you change this file, run 'update-grub' afterwards.
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_CMDLINE_LINUX_DEFAULT="quiet iommu=pt"
GRUB_CMDLINE_LINUX="console=ttyS0,115200n8 intel_iommu=off"
"""
ROLE = {"name": "hostdev-vfio-passthrough", "args": ["intel_iommu=on", "iommu=pt"], "record": True}
UNDO = {"name": "hostdev-vfio-passthrough", "undo": True}


@pytest.fixture
def host(tmp_path, monkeypatch):
    (tmp_path / "etc/default/grub.d").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text(ADMIN_GRUB)
    (tmp_path / "etc/kernel").mkdir(parents=True)
    (tmp_path / "lib/modules/6.12.0-1-amd64").mkdir(parents=True)
    (tmp_path / "lib/modules/6.12.0-1-amd64/vmlinuz").write_text("")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=UUID=0c1d ro quiet iommu=pt intel_iommu=off\n")
    fake_update_grub(tmp_path)
    calls = []

    def run_command(self, argv, **kwargs):
        calls.append(list(argv))
        if argv == ["/usr/sbin/update-grub"]:
            fake_update_grub(tmp_path)
            return 0, "", ""
        if argv[:2] == ["/usr/bin/kernel-install", "add"]:
            return 0, "", ""
        return 1, "", "unexpected command"

    def get_bin_path(self, name, required=False, opt_dirs=None):
        if name in ("update-grub", "kernel-install"):
            return f"/usr/{'sbin' if name == 'update-grub' else 'bin'}/{name}"
        if required:
            self.fail_json(msg=f"Failed to find required executable {name}")
        return None

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", get_bin_path)
    host = type("Host", (), {})()
    host.root, host.calls = tmp_path, calls
    host.args = {"root": str(tmp_path), "proc_root": str(tmp_path / "proc"), "backend": "grub"}
    return host


def grub_cmdline(root):
    text = (root / "boot/grub/grub.cfg").read_text()
    return next(line.split(None, 2)[2] for line in text.splitlines() if line.strip().startswith("linux"))


def record_of(root):
    return json.loads((root / RECORD).read_text())


def test_present_then_absent_keeps_the_admins_arguments(host):
    cfg_before = grub_cmdline(host.root)
    res, failed = run_module(kernel_cmdline.main, {**host.args, **ROLE})
    assert not failed and res["changed"]
    assert "intel_iommu=on" in grub_cmdline(host.root).split()
    entries = record_of(host.root)["kernel_cmdline"]["hostdev-vfio-passthrough"]
    assert {"arg": "iommu=pt", "had": ["iommu=pt"]} in entries
    assert {"arg": "intel_iommu=on", "had": ["intel_iommu=off"]} in entries

    # the second run sees its own intel_iommu=on and must not record it as "already there"
    res, failed = run_module(kernel_cmdline.main, {**host.args, **ROLE})
    assert not failed and not res["changed"]
    assert record_of(host.root)["kernel_cmdline"]["hostdev-vfio-passthrough"] == entries

    res, failed = run_module(kernel_cmdline.main, {**host.args, **UNDO, "_ansible_check_mode": True})
    assert not failed and res["changed"] and res["record_found"]
    assert (host.root / RECORD).exists()
    res, failed = run_module(kernel_cmdline.main, {**host.args, **UNDO})
    assert not failed and res["changed"] and res["record_found"]
    assert (host.root / "etc/default/grub").read_text() == ADMIN_GRUB
    assert grub_cmdline(host.root) == cfg_before  # iommu=pt stays, intel_iommu=off is the kernel's last word again
    assert not (host.root / RECORD).exists()

    res, failed = run_module(kernel_cmdline.main, {**host.args, **UNDO})
    assert not failed and not res["changed"] and res["record_found"] is False


def test_undo_without_a_record_changes_nothing(host):
    res, failed = run_module(kernel_cmdline.main, {**host.args, **UNDO})
    assert not failed and not res["changed"] and res["record_found"] is False
    assert host.calls == []


def test_check_mode_writes_no_record(host):
    res, failed = run_module(kernel_cmdline.main, {**host.args, **ROLE, "_ansible_check_mode": True})
    assert not failed and res["changed"] and not (host.root / RECORD).exists() and host.calls == []
    assert {"arg": "intel_iommu=on", "had": ["intel_iommu=off"]} in res["record"]


def test_interrupted_run_is_completed_then_undone(host, monkeypatch):
    """The record is written before the change: a run stopped in between leaves the record and the old config."""
    with monkeypatch.context() as m:
        m.setattr(basic.AnsibleModule, "run_command", lambda self, argv, **kw: (1, "", "killed"))
        _res, failed = run_module(kernel_cmdline.main, {**host.args, **ROLE})
    assert failed
    assert record_of(host.root)["kernel_cmdline"]["hostdev-vfio-passthrough"]
    _res, failed = run_module(kernel_cmdline.main, {**host.args, **ROLE})
    assert not failed and "intel_iommu=on" in grub_cmdline(host.root).split()
    _res, failed = run_module(kernel_cmdline.main, {**host.args, **UNDO})
    assert not failed and (host.root / "etc/default/grub").read_text() == ADMIN_GRUB
    assert "intel_iommu=on" not in grub_cmdline(host.root).split()
    assert not (host.root / RECORD).exists()


def test_a_removed_argument_is_put_back_on_systemd_boot(host):
    (host.root / "etc/kernel/cmdline").write_text("root=/dev/mapper/labvg-root ro amd_iommu=off quiet\n")
    args = {**host.args, "backend": "systemd-boot"}
    res, failed = run_module(kernel_cmdline.main, {**args, "name": "x", "remove": ["amd_iommu"], "record": True})
    assert not failed and res["changed"]
    assert (host.root / "etc/kernel/cmdline").read_text() == "root=/dev/mapper/labvg-root ro quiet\n"
    assert record_of(host.root)["kernel_cmdline"]["x"] == [{"removed": "amd_iommu=off"}]
    res, failed = run_module(kernel_cmdline.main, {**args, "name": "x", "args": ["iommu=pt"], "record": True})
    assert not failed and res["changed"]
    res, failed = run_module(kernel_cmdline.main, {**args, "name": "x", "undo": True})
    assert not failed and res["changed"]
    assert (host.root / "etc/kernel/cmdline").read_text() == "root=/dev/mapper/labvg-root ro quiet amd_iommu=off\n"
    assert [
        "/usr/bin/kernel-install",
        "add",
        "6.12.0-1-amd64",
        str(host.root / "lib/modules/6.12.0-1-amd64/vmlinuz"),
    ] in host.calls


@pytest.mark.parametrize(
    "content",
    ["{not json", '{"version": 9}', '{"version": 1, "kernel_cmdline": {"x": [{"arg": 1, "had": []}]}}', "[]"],
)
def test_a_broken_record_is_a_clear_error(host, content):
    (host.root / RECORD).parent.mkdir(parents=True)
    (host.root / RECORD).write_text(content)
    res, failed = run_module(kernel_cmdline.main, {**host.args, **UNDO})
    assert failed and RECORD in res["msg"] and "fix or remove it" in res["msg"]
    assert host.calls == []


def test_hostile_recorded_values_are_refused_before_anything_runs(host):
    (host.root / RECORD).parent.mkdir(parents=True)
    bad = {"version": 1, "kernel_cmdline": {"x": [{"removed": "a=b;reboot"}]}, "files": {}}
    (host.root / RECORD).write_text(json.dumps(bad))
    res, failed = run_module(kernel_cmdline.main, {**host.args, "name": "x", "undo": True})
    assert failed and "undo record" in res["msg"] and host.calls == []


def test_state_dir_cannot_leave_root(host):
    res, failed = run_module(kernel_cmdline.main, {**host.args, **ROLE, "state_dir": "/var/../../etc"})
    assert failed and "state_dir" in res["msg"]


# ---------------------------------------------------------------------------------------------- the kernel's reading
def test_reboot_required_follows_the_last_occurrence(host):
    """x=off ... x=on is x=on to the kernel: no reboot needed for x=on, and x=off is not 'still there'."""
    (host.root / "proc/cmdline").write_text("root=UUID=0c1d ro intel_iommu=off quiet intel_iommu=on iommu=pt\n")
    res, failed = run_module(
        kernel_cmdline.main,
        {**host.args, "args": ["intel_iommu=on"], "remove": ["amd_iommu"], "_ansible_check_mode": True},
    )
    assert not failed and not res["reboot_required"] and res["missing"] == []
    res, failed = run_module(
        kernel_cmdline.main, {**host.args, "remove": ["intel_iommu=off"], "_ansible_check_mode": True}
    )
    assert not failed and not res["reboot_required"] and res["unwanted"] == []
    (host.root / "proc/cmdline").write_text("root=UUID=0c1d ro intel_iommu=on quiet intel_iommu=off\n")
    res, failed = run_module(
        kernel_cmdline.main, {**host.args, "args": ["intel_iommu=on"], "_ansible_check_mode": True}
    )
    assert not failed and res["reboot_required"] and res["missing"] == ["intel_iommu=on"]


def test_kernel_reading():
    line = kc.parse_cmdline("a=1 iommu=pt b a=2 iommu=1 b -- a=3")
    assert kc.render_cmdline(kc.kernel_reading(line)) == "iommu=pt a=2 iommu=1 b -- a=3"


@pytest.mark.parametrize(
    ("before", "args", "remove", "undo_args", "undo_remove"),
    [
        ("ro", ["iommu=pt"], [], [], ["iommu=pt"]),
        ("ro iommu=pt", ["iommu=pt"], [], [], []),
        ("ro iommu=1", ["iommu=pt"], [], [], ["iommu=pt"]),  # repeatable: iommu=1 stays, ours goes
        ("intel_iommu=off", ["intel_iommu=on"], [], ["intel_iommu=off"], []),
        ("intel-iommu=on", ["intel_iommu=on"], [], [], []),
        ("ro amd_iommu=off iommu=off", [], ["amd_iommu", "iommu=off"], ["amd_iommu=off", "iommu=off"], []),
        ("ro", [], ["amd_iommu"], [], []),
        ("quiet", ["quiet"], [], [], []),
        ("ro", ["nomodeset"], [], [], ["nomodeset"]),
    ],
)
def test_undo_entries_and_request(before, args, remove, undo_args, undo_remove):
    entries = kc.undo_entries(
        kc.parse_cmdline(before), kc.parse_cmdline(" ".join(args)), kc.parse_cmdline(" ".join(remove))
    )
    got_args, got_remove = kc.undo_request(entries)
    assert kc.render_cmdline(got_args).split() == undo_args
    assert kc.render_cmdline(got_remove).split() == undo_remove
    # applying the change and then its undo gives back the kernel's reading of the line before
    line = kc.parse_cmdline(before)
    after = kc.apply_cmdline(line, kc.parse_cmdline(" ".join(args)), kc.parse_cmdline(" ".join(remove)))
    back = kc.apply_cmdline(after, got_args, got_remove)
    assert sorted(kc.kernel_reading(back)) == sorted(kc.kernel_reading(line))
