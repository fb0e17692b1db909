# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible_collections.hostdev.vfio.plugins.modules import modprobe_options
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module

PATH = "/etc/modprobe.d/hostdev-vfio.conf"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "etc" / "modprobe.d").mkdir(parents=True)
    return tmp_path


def test_options_check_real_idempotent_absent(root):
    conf = root / PATH.lstrip("/")
    a = {"root": str(root), "name": "vfio-pci", "options": {"ids": "8086:293e", "disable_vga": True}}
    result, failed = run_module(modprobe_options.main, {**a, "_ansible_check_mode": True, "_ansible_diff": True})
    assert not failed and result["changed"] and not conf.exists()
    assert result["diff"]["after"] == "options vfio-pci ids=8086:293e disable_vga=1\n"
    assert result["initramfs_update_needed"] is False  # no initramfs generator under this root
    result, failed = run_module(modprobe_options.main, a)
    assert not failed and result["changed"]
    assert result["effective"] == {"ids": "8086:293e", "disable_vga": "1"}
    result, failed = run_module(modprobe_options.main, {**a, "name": "vfio_pci", "options": {"disable-vga": 1}})
    assert not failed and not result["changed"]
    result, failed = run_module(modprobe_options.main, {**a, "options": {"ids": None}, "state": "absent"})
    assert not failed and result["changed"]
    assert conf.read_text() == "options vfio-pci disable_vga=1\n"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"ids": "8086:293e\ninstall vfio-pci /bin/sh"}, "options.ids: '8086:293e\\ninstall"),
        ({"ids": "1 2"}, "options.ids: '1 2'"),
        ({"ids": "#"}, "options.ids: '#'"),
        ({"ids": "$(id)"}, "options.ids: '$(id)'"),
        ({"bad key": 1}, "options: 'bad key'"),
    ],
)
def test_options_bad_values_fail_without_touching_the_file(root, options, needle):
    conf = root / PATH.lstrip("/")
    conf.write_text("options vfio-pci ids=1:2\n")
    result, failed = run_module(modprobe_options.main, {"root": str(root), "name": "vfio-pci", "options": options})
    assert failed
    assert result["msg"].startswith(needle)
    assert conf.read_text() == "options vfio-pci ids=1:2\n"


def test_options_present_needs_a_parameter(root):
    result, failed = run_module(modprobe_options.main, {"root": str(root), "name": "vfio-pci"})
    assert failed and "at least one parameter" in result["msg"]
