# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _vmm
from ansible_collections.hostdev.vfio.plugins.modules import vmm_probe
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import add_open_fd, lab_host
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakeqemu import fake_env, runs, write_fake_qemu
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module


@pytest.fixture
def lab(tmp_path, monkeypatch):
    host = lab_host(tmp_path / "host")
    for address, group in (("0000:00:04.0", 4), ("0000:01:01.0", 8)):
        host.bind(address, "vfio-pci")
        host.add_vfio_group_file(group)
    qemu = write_fake_qemu(tmp_path / "bin")
    log = tmp_path / "qemu.log"
    fake_env(monkeypatch, host.sys, log)
    monkeypatch.setattr(_vmm, "memlock_needed", lambda memory_mib: 0)  # see test_vmm: the test process's limit
    return host, qemu, log


def args(host, qemu=None, **extra):
    out = {"sysfs_root": str(host.sys), "proc_root": str(host.proc), "dev_root": str(host.dev), **extra}
    if qemu is not None:
        out["qemu"] = str(qemu)
    return out


def live(monkeypatch, host):
    monkeypatch.setattr(vmm_probe, "LIVE_ROOTS", (str(host.sys), str(host.proc), str(host.dev)))


def test_taken_and_not_viable_in_one_run(lab, monkeypatch):
    host, qemu, _log = lab
    live(monkeypatch, host)
    result, failed = run_module(vmm_probe.main, args(host, qemu, address=["00:04.0", "01:01.0"]))
    assert not failed and result["changed"] is False
    assert [(f["address"], f["taken"], f["qemu_ids"]) for f in result["functions"]] == [
        ("0000:00:04.0", True, "8086:10d3"),
        ("0000:01:01.0", False, None),
    ]
    assert result["functions"][1]["error"].endswith("vfio 0000:01:01.0: group 8 is not viable")
    assert [(g["id"], g["rc"], g["kernel_viable"]) for g in result["groups"]] == [(4, 0, True), (8, 1, False)]
    assert result["qemu"] == {
        "binary": str(qemu),
        "version": "7.2.22 (fake)",
        "accel": "tcg",
        "memory_mib": 64,
        "memlock_limit": None,
    }


def test_check_mode_starts_nothing_and_returns_the_argv(lab):
    host, qemu, log = lab
    result, failed = run_module(
        vmm_probe.main, args(host, qemu, address=["01:01.0"], memory_mib=128, _ansible_check_mode=True)
    )
    assert not failed and result["changed"] is False
    assert runs(log) == []  # not even -version
    [group] = result["groups"]
    assert group["argv"][-2:] == ["-device", "vfio-pci,host=0000:01:01.0,id=hostdev0"]
    assert group["argv"][group["argv"].index("-m") + 1] == "128M"
    assert group["rc"] is None and group["seconds"] is None
    assert result["functions"][0]["taken"] is None
    assert result["qemu"]["version"] is None


def test_captured_tree_is_for_check_mode_only(lab):
    host, qemu, log = lab
    result, failed = run_module(vmm_probe.main, args(host, qemu, address=["00:04.0"]))
    assert failed and "for check mode only" in result["msg"]
    assert runs(log) == []


def test_refusals_start_nothing(lab, monkeypatch):
    host, qemu, log = lab
    live(monkeypatch, host)
    host.bind("0000:01:02.0", "pci-stub")
    add_open_fd(host, 4242, "/dev/vfio/4")
    result, failed = run_module(vmm_probe.main, args(host, qemu, address=["00:04.0", "01:02.0", "01:01.0"]))
    assert failed and result["msg"].startswith("refused, nothing started: 0000:00:04.0 is in IOMMU group 4")
    assert "0000:01:02.0 is on pci-stub, not on a VFIO driver" in result["msg"]
    assert [(f["address"], f["error"] is not None) for f in result["functions"]] == [
        ("0000:00:04.0", True),
        ("0000:01:02.0", True),
        ("0000:01:01.0", False),
    ]
    assert runs(log) == []


def test_missing_qemu_names_the_package(lab, monkeypatch, tmp_path):
    host, _qemu, log = lab
    live(monkeypatch, host)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(vmm_probe, "SYSTEM_DIRS", ())
    monkeypatch.setattr(_vmm, "QEMU_FALLBACKS", (str(empty / "qemu-kvm"),))
    monkeypatch.setattr(vmm_probe, "read_os_release", lambda: 'ID="rhel"\nID_LIKE="fedora"\n')
    result, failed = run_module(vmm_probe.main, args(host, address=["00:04.0"]))
    assert failed and result["msg"].startswith("QEMU not found")
    assert "install the package qemu-kvm (dnf install qemu-kvm)" in result["msg"]
    monkeypatch.setattr(vmm_probe, "read_os_release", lambda: "ID=debian\n")
    result, failed = run_module(vmm_probe.main, args(host, address=["00:04.0"], _ansible_check_mode=True))
    assert failed and "install the package qemu-system-x86 (apt-get install qemu-system-x86)" in result["msg"]
    assert runs(log) == []


def test_missing_qemu_is_skipped_when_not_required(lab, monkeypatch, tmp_path):
    host, _qemu, log = lab
    live(monkeypatch, host)
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    monkeypatch.setattr(vmm_probe, "SYSTEM_DIRS", ())
    monkeypatch.setattr(_vmm, "QEMU_FALLBACKS", (str(empty / "qemu-kvm"),))
    monkeypatch.setattr(vmm_probe, "read_os_release", lambda: "ID=debian\n")
    result, failed = run_module(vmm_probe.main, args(host, address=["00:04.0"], qemu_required=False))
    assert not failed and result["changed"] is False
    assert result["qemu_missing"].startswith("QEMU not found") and "qemu-system-x86" in result["qemu_missing"]
    assert [(f["address"], f["taken"]) for f in result["functions"]] == [("0000:00:04.0", None)]
    assert runs(log) == []


def test_qemu_found_in_path(lab, monkeypatch):
    host, qemu, _log = lab
    monkeypatch.setenv("PATH", str(qemu.parent))
    result, failed = run_module(vmm_probe.main, args(host, address=["00:04.0"], _ansible_check_mode=True))
    assert not failed and result["qemu"]["binary"] == str(qemu)


@pytest.mark.parametrize(
    "extra, message",
    [
        ({"address": ["01:01.0\n"]}, "address[0]: '01:01.0\\n' contains the control character"),
        ({"address": ["01:01.0,x-no-mmap=on"]}, "address[0]: '01:01.0,x-no-mmap=on' is longer than 12"),
        ({"ids": ["8086:100e;"]}, "ids[0]: '8086:100e;' is not a PCI id"),
        ({"address": ["00:04.0"], "memory_mib": 1 << 20}, "memory_mib: 1048576 is not a whole number"),
    ],
)
def test_hostile_values_are_refused(lab, monkeypatch, extra, message):
    host, qemu, log = lab
    live(monkeypatch, host)
    result, failed = run_module(vmm_probe.main, args(host, qemu, **extra))
    assert failed and message in result["msg"]
    assert runs(log) == []


def test_accel_choice_is_validated_by_the_argument_spec(lab):
    host, qemu, _log = lab
    result, failed = run_module(
        vmm_probe.main, args(host, qemu, address=["00:04.0"], accel="hvf", _ansible_check_mode=True)
    )
    assert failed and "accel" in result["msg"]


def test_query_selects_from_the_iommu_facts(lab):
    pytest.importorskip("jmespath")
    host, qemu, log = lab
    result, failed = run_module(
        vmm_probe.main,
        args(host, qemu, query="devices[?driver=='vfio-pci'].address", _ansible_check_mode=True),
    )
    assert not failed, result.get("msg")
    assert [(f["address"], f["qdev_id"]) for f in result["functions"]] == [
        ("0000:00:04.0", "hostdev0"),
        ("0000:01:01.0", "hostdev0"),
    ]
    assert [g["id"] for g in result["groups"]] == [4, 8]
    assert runs(log) == []


def test_nothing_selected(lab):
    host, qemu, log = lab
    result, failed = run_module(vmm_probe.main, args(host, qemu, ids=["dead:beef"], _ansible_check_mode=True))
    assert failed and result["msg"] == "no function matched address, ids, device_class or query; nothing started"
    assert runs(log) == []
