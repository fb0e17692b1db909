# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.hostdev.vfio.plugins.modules import modprobe_blacklist
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module


def test_blacklist_cycle(tmp_path):
    (tmp_path / "usr" / "bin").mkdir(parents=True)
    (tmp_path / "usr" / "bin" / "dracut").write_text("#!/bin/sh\n")
    # a hostonly dracut (Fedora's default) copies /etc/modprobe.d into its image
    (tmp_path / "etc" / "dracut.conf.d").mkdir(parents=True)
    (tmp_path / "etc" / "dracut.conf.d" / "01-dist.conf").write_text('hostonly="yes"\n')
    conf = tmp_path / "etc" / "modprobe.d" / "hostdev-vfio.conf"
    a = {"root": str(tmp_path), "name": "nouveau"}
    result, failed = run_module(modprobe_blacklist.main, {**a, "_ansible_check_mode": True})
    assert not failed and result["changed"] and not conf.exists()
    result, failed = run_module(modprobe_blacklist.main, a)
    assert not failed and result["changed"] and result["initramfs_update_needed"] is True
    assert conf.read_text() == "blacklist nouveau\n"
    assert result["effective"] == [{"path": "/etc/modprobe.d/hostdev-vfio.conf", "line": 1}]
    result, failed = run_module(modprobe_blacklist.main, a)
    assert not failed and not result["changed"]
    result, failed = run_module(modprobe_blacklist.main, {**a, "state": "absent"})
    assert not failed and result["changed"] and not conf.exists()


def test_blacklist_absent_warns_when_another_file_still_blacklists(tmp_path):
    other = tmp_path / "lib" / "modprobe.d" / "nvidia.conf"
    other.parent.mkdir(parents=True)
    other.write_text("blacklist nouveau\n")
    result, failed = run_module(modprobe_blacklist.main, {"root": str(tmp_path), "name": "nouveau", "state": "absent"})
    assert not failed and not result["changed"]
    assert any("still blacklisted by /lib/modprobe.d/nvidia.conf" in w for w in result["warnings"])


def test_blacklist_rejects_newline(tmp_path):
    result, failed = run_module(modprobe_blacklist.main, {"root": str(tmp_path), "name": "nouveau\ninstall x y"})
    assert failed and result["msg"].startswith("name: 'nouveau\\ninstall x y' contains the control character")
    assert not (tmp_path / "etc").exists()
