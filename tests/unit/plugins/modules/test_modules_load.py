# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.hostdev.vfio.plugins.modules import modules_load
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module


def test_modules_load_cycle(tmp_path):
    (tmp_path / "usr" / "sbin").mkdir(parents=True)
    (tmp_path / "usr" / "sbin" / "update-initramfs").write_text("#!/bin/sh\n")
    conf = tmp_path / "etc" / "modules-load.d" / "hostdev-vfio.conf"
    a = {"root": str(tmp_path), "name": ["vfio", "vfio_iommu_type1", "vfio-pci"]}
    result, failed = run_module(modules_load.main, {**a, "_ansible_check_mode": True, "_ansible_diff": True})
    assert not failed and result["changed"] and not conf.exists()
    assert result["diff"]["after"] == "vfio\nvfio_iommu_type1\nvfio-pci\n"
    result, failed = run_module(modules_load.main, a)
    assert not failed and result["changed"]
    assert result["initramfs_update_needed"] is False  # initramfs-tools does not copy modules-load.d
    assert conf.read_text() == "vfio\nvfio_iommu_type1\nvfio-pci\n"
    result, failed = run_module(modules_load.main, {**a, "name": ["vfio_pci"]})
    assert not failed and not result["changed"]
    result, failed = run_module(modules_load.main, {**a, "state": "absent"})
    assert not failed and result["changed"] and not conf.exists()


def test_modules_load_rejects_bad_names(tmp_path):
    result, failed = run_module(modules_load.main, {"root": str(tmp_path), "name": ["vfio\nsh -c id"]})
    assert failed and result["msg"].startswith("name[0]: 'vfio\\nsh -c id' contains the control character")
    assert not (tmp_path / "etc").exists()


def test_modules_load_never_writes_a_duplicate_line(tmp_path):
    conf = tmp_path / "etc" / "modules-load.d" / "hostdev-vfio.conf"
    conf.parent.mkdir(parents=True)
    conf.write_text("# mine\n  vfio-pci\t\r\n; other\n")
    a = {"root": str(tmp_path), "name": ["vfio_pci", "vfio-pci", "vfio", "vfio"]}
    result, failed = run_module(modules_load.main, a)
    assert not failed and result["changed"]
    assert conf.read_bytes() == b"# mine\n  vfio-pci\t\r\n; other\nvfio\n"
    result, failed = run_module(modules_load.main, a)
    assert not failed and not result["changed"]
    for hostile in (["vfio-pci\n"], ["vfio\nvfio-pci"], [" vfio"]):
        result, failed = run_module(modules_load.main, {**a, "name": hostile})
        assert failed and repr(hostile[0]) in result["msg"]
    assert conf.read_bytes() == b"# mine\n  vfio-pci\t\r\n; other\nvfio\n"
