# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hostdev.vfio.kernel_cmdline as a module: check mode, idempotence, diff, refusals, verification."""

from __future__ import annotations

import pytest
from ansible.module_utils import basic
from ansible_collections.hostdev.vfio.plugins.modules import kernel_cmdline
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_kernel_cmdline import (
    GRUB_DEFAULT,
    fake_update_grub,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module


@pytest.fixture
def host(tmp_path, monkeypatch):
    (tmp_path / "etc/default/grub.d").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text(GRUB_DEFAULT)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text(
        "BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=UUID=0c1d ro console=ttyS0,115200n8 intel_iommu=on quiet\n"
    )
    fake_update_grub(tmp_path)
    calls = []

    def run_command(self, argv, **kwargs):
        calls.append(list(argv))
        if argv == ["/usr/sbin/update-grub"]:
            fake_update_grub(tmp_path)
            return 0, "", ""
        return 1, "", "unexpected command"

    def get_bin_path(self, name, required=False, opt_dirs=None):
        if name == "update-grub":
            return "/usr/sbin/update-grub"
        if required:
            self.fail_json(msg=f"Failed to find required executable {name}")
        return None

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", get_bin_path)
    host = type("Host", (), {})()
    host.root, host.calls = tmp_path, calls
    host.args = {"root": str(tmp_path), "proc_root": str(tmp_path / "proc")}
    return host


ADD = {"args": ["iommu=pt", "hostdev_vfio_test=1"]}


def test_check_real_check_real(host):
    dropin = host.root / "etc/default/grub.d/hostdev-vfio.cfg"
    res, failed = run_module(
        kernel_cmdline.main, {**host.args, **ADD, "_ansible_check_mode": True, "_ansible_diff": True}
    )
    assert not failed and res["changed"] and res["backend"] == "grub" and res["reboot_required"]
    assert not dropin.exists() and host.calls == []
    assert res["commands"] == [["/usr/sbin/update-grub"]]
    assert res["diff"][0]["after"].strip().endswith("quiet iommu=pt hostdev_vfio_test=1")
    assert res["missing"] == ["iommu=pt", "hostdev_vfio_test=1"]

    res, failed = run_module(kernel_cmdline.main, {**host.args, **ADD})
    assert not failed and res["changed"] and res["reboot_required"]
    assert dropin.exists() and oct(dropin.stat().st_mode & 0o777) == "0o644"
    assert host.calls == [["/usr/sbin/update-grub"]]
    assert "iommu=pt hostdev_vfio_test=1" in (host.root / "boot/grub/grub.cfg").read_text()

    for check in (True, False):
        res, failed = run_module(kernel_cmdline.main, {**host.args, **ADD, "_ansible_check_mode": check})
        assert not failed and not res["changed"] and res["reboot_required"]
    assert host.calls == [["/usr/sbin/update-grub"]]


def test_reboot_not_required_when_running_kernel_has_them(host):
    (host.root / "proc/cmdline").write_text("root=UUID=0c1d ro quiet iommu=pt hostdev_vfio_test=1\n")
    res, failed = run_module(kernel_cmdline.main, {**host.args, **ADD, "_ansible_check_mode": True})
    assert not failed and not res["reboot_required"] and res["missing"] == []


def test_remove_reports_unwanted_and_reboot(host):
    run_module(kernel_cmdline.main, {**host.args, **ADD})
    (host.root / "proc/cmdline").write_text("root=UUID=0c1d ro quiet iommu=pt hostdev_vfio_test=1\n")
    res, failed = run_module(kernel_cmdline.main, {**host.args, "remove": ["iommu=pt", "hostdev_vfio_test"]})
    assert not failed and res["changed"] and res["reboot_required"]
    assert res["unwanted"] == ["iommu=pt", "hostdev_vfio_test"]
    assert not (host.root / "etc/default/grub.d/hostdev-vfio.cfg").exists()
    assert (host.root / "etc/default/grub").read_text() == GRUB_DEFAULT


def test_amd_iommu_on_is_refused_unless_allowed(host):
    res, failed = run_module(kernel_cmdline.main, {**host.args, "args": ["amd_iommu=on"]})
    assert failed and "amd_iommu=on" in res["msg"] and "allow_unknown_values" in res["msg"]
    assert host.calls == []
    res, failed = run_module(kernel_cmdline.main, {**host.args, "args": ["amd_iommu=on"], "allow_unknown_values": True})
    assert not failed and res["changed"]


def test_same_name_in_args_and_remove_is_refused(host):
    res, failed = run_module(kernel_cmdline.main, {**host.args, "args": ["iommu=pt"], "remove": ["iommu"]})
    assert failed and "both in args and in remove" in res["msg"]


def test_verification_failure_when_another_dropin_overrides(host):
    (host.root / "etc/default/grub.d/zz-cloud.cfg").write_text('GRUB_CMDLINE_LINUX_DEFAULT="quiet"\n')
    res, failed = run_module(kernel_cmdline.main, {**host.args, **ADD})
    assert failed and "still does not have" in res["msg"]


def test_undetectable_backend_fails_clearly(host):
    (host.root / "etc/default/grub").unlink()
    res, failed = run_module(kernel_cmdline.main, {**host.args, **ADD})
    assert failed and "cannot tell how this host boots" in res["msg"] and res["tried"]
