# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

from ansible_collections.hostdev.vfio.plugins.filter.capture import capture_facts
from ansible_collections.hostdev.vfio.plugins.modules import capture, iommu_facts
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakefleet import FIXTURES
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module


def roots(host):
    return {
        "sysfs_root": str(host.sys),
        "proc_root": str(host.proc),
        "dev_root": str(host.dev),
        "modules_root": str(host.root / "lib" / "modules"),
    }


def test_capture_check_mode_then_write_then_unchanged(tmp_path):
    host = FIXTURES["gpu"](tmp_path / "src")
    dest = tmp_path / "cap.tar.gz"
    args = {**roots(host), "dest": str(dest), "pci_ids_path": str(host.root / "pci.ids")}
    result, failed = run_module(capture.main, {**args, "_ansible_check_mode": True})
    assert not failed and result["changed"] is True and not dest.exists()
    result, failed = run_module(capture.main, args)
    assert not failed and result["changed"] is True and dest.stat().st_size == result["size"]
    assert result["kernel_release"] == "6.1.0-26-amd64" and result["entries"] > 100
    result, failed = run_module(capture.main, args)
    assert not failed and result["changed"] is False


def test_capture_needs_the_destination_directory(tmp_path):
    host = FIXTURES["lab"](tmp_path / "src")
    result, failed = run_module(capture.main, {**roots(host), "dest": str(tmp_path / "nope" / "c.tar.gz")})
    assert failed and "does not exist" in result["msg"]


def test_iommu_facts_reads_an_unpacked_capture_as_the_host(tmp_path, monkeypatch):
    """iommu_facts sysfs_root=X/sys proc_root=X/proc dev_root=X/dev modules_root=X/lib/modules on an unpacked
    capture returns what it returns on the host (names from the same pci.ids, the same SSH session)."""
    from ansible_collections.hostdev.vfio.plugins.module_utils import _capture

    monkeypatch.setenv("SSH_CONNECTION", "192.168.1.50 51234 192.168.1.10 22")
    for name, build in sorted(FIXTURES.items()):
        host = build(tmp_path / name / "src")
        dest = tmp_path / name / "cap.tar.gz"
        assert not run_module(capture.main, {**roots(host), "dest": str(dest)})[1]
        out = tmp_path / name / "out"
        _capture.unpack(str(dest), str(out))
        live, failed = run_module(iommu_facts.main, {**roots(host), "names": False})
        assert not failed
        offline, failed = run_module(
            iommu_facts.main,
            {
                "sysfs_root": str(out / "sys"),
                "proc_root": str(out / "proc"),
                "dev_root": str(out / "dev"),
                "modules_root": str(out / "lib" / "modules"),
                "names": False,
            },
        )
        assert not failed
        assert offline["ansible_facts"] == live["ansible_facts"], name
        assert offline.get("warnings") == live.get("warnings")


def test_capture_facts_filter_reads_a_directory_of_captures(tmp_path):
    captures = tmp_path / "captures"
    captures.mkdir()
    for name, build in sorted(FIXTURES.items()):
        host = build(tmp_path / name)
        args = {**roots(host), "dest": str(captures / f"{name}-1.tar.gz"), "pci_ids_path": str(host.root / "pci.ids")}
        assert not run_module(capture.main, args)[1]
    (captures / "broken.tar.gz").write_bytes(b"not an archive")
    out = capture_facts(str(captures))
    assert out["hosts"] == ["broken", "gpu-1", "lab-1"]
    assert out["facts"][0] is None and "broken.tar.gz: cannot be unpacked" in out["errors"]["broken"]
    gpu = {d["address"]: d for d in out["facts"][1]["devices"]}["0000:01:00.0"]
    assert gpu["device_name"] == "GP104 [GeForce GTX 1080]"  # from the capture's pci.ids
    assert {d["address"] for d in out["facts"][2]["devices"]} >= {"0000:00:04.0", "0000:01:02.0"}
    assert not list(tmp_path.glob("**/hostdev-vfio-capture-*"))
