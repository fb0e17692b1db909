# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.hostdev.vfio.plugins.modules import iommu_facts
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import FakeHost, gpu_host
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module


def args_for(host, **extra):
    return {"sysfs_root": str(host.sys), "proc_root": str(host.proc), "dev_root": str(host.dev), **extra}


def test_module_returns_facts_in_check_mode(tmp_path):
    host = gpu_host(tmp_path)
    result, failed = run_module(iommu_facts.main, args_for(host, names=False, _ansible_check_mode=True))
    assert not failed and result["changed"] is False
    assert result["check_mode"] is True
    assert run_module(iommu_facts.main, args_for(host, names=False))[0]["check_mode"] is False
    iommu = result["ansible_facts"]["iommu"]
    assert iommu["enabled"] is True
    assert [g["id"] for g in iommu["groups"] if not g["viable"]] == [2, 7, 13, 40, 1000]


def test_module_warns_without_iommu(tmp_path):
    host = FakeHost(tmp_path)
    result, failed = run_module(iommu_facts.main, args_for(host))
    assert not failed
    assert result["ansible_facts"]["iommu"]["enabled"] is False
    assert any("VT-d" in w for w in result["warnings"])


def test_module_rejects_bad_class(tmp_path):
    host = FakeHost(tmp_path)
    result, failed = run_module(iommu_facts.main, args_for(host, device_class=["03", "VGA", "030"]))
    assert failed
    assert "device_class[1]: 'VGA' is not" in result["msg"]
    assert "device_class[2]: '030' is not" in result["msg"]
    assert "device_class[0]" not in result["msg"]
