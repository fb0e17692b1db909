# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hostdev.vfio.passthrough's operation (``_desired.run_request``) over one fake host: a lab guest's sysfs and a
fake kernel for the binds, a root with GRUB and initramfs-tools whose generator and lister are the fakes of the
boot tests. The same host goes through check mode, the change, the idempotent run and the undo."""

from __future__ import annotations

import json
import os

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _desired
from ansible_collections.hostdev.vfio.plugins.module_utils._host import Failed
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import (
    LAB_LOADABLE,
    FakeKernel,
    lab_host,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_initramfs import FakeHost as FakeBoot
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_kernel_cmdline import (
    GRUB_DEFAULT,
    fake_update_grub,
)

TOOLS = ("update-grub", "update-initramfs", "lsinitramfs", "udevadm")
NIC = "0000:00:04.0"


class Host:
    """``_host.Host`` over the fakes: commands go to the fake generator, GRUB and udevadm; every call is logged."""

    def __init__(self, boot, check_mode=False, diff=False):
        self.boot = boot
        self.check_mode, self.diff = check_mode, diff
        self.calls, self.warnings = [], []

    def run(self, argv):
        name = os.path.basename(argv[0])
        self.calls.append([name, *argv[1:]])
        if name == "update-grub":
            fake_update_grub(self.boot.root)
            return 0, "", ""
        if name in ("update-initramfs", "lsinitramfs"):
            return self.boot.run([name, *argv[1:]])
        if name == "udevadm":
            return 0, "", ""
        return 1, "", f"unexpected command {argv}"

    def bin(self, name, required=False):
        if name in TOOLS:
            return f"/usr/sbin/{name}"
        if required:
            raise Failed(f"no {name}")
        return None

    def atomic_move(self, src, dst):
        os.replace(src, dst)

    def warn(self, msg):
        self.warnings.append(msg)

    def deprecate(self, msg, version):
        self.warnings.append(msg)

    def ran(self, name):
        return [c for c in self.calls if c[0] == name]


def boot_root(tmp_path):
    """A root with GRUB and initramfs-tools for kernel 6.1 (pci-stub a module, as in Debian's kernel)."""
    root = tmp_path / "root"
    root.mkdir()
    boot = FakeBoot(root)
    with open(root / "lib/modules/6.1.0-26-amd64/modules.dep", "a") as f:
        f.write("kernel/drivers/pci/pci-stub.ko.zst:\n")
    (root / "usr/sbin").mkdir(parents=True)
    (root / "usr/sbin/update-initramfs").write_text("#!/bin/sh\n")  # how the binds find the generator
    (root / "etc/default/grub.d").mkdir(parents=True)
    (root / "etc/default/grub").write_text(GRUB_DEFAULT)
    fake_update_grub(root)
    return root, boot


@pytest.fixture
def lab(tmp_path, monkeypatch):
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    root, boot = boot_root(tmp_path)
    sysfs = lab_host(tmp_path / "host")
    sysfs.set_cmdline("BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=UUID=0c1d ro quiet")
    kernel = FakeKernel(sysfs, loadable=LAB_LOADABLE)

    def call(check_mode=False, diff=False, **request):
        host = Host(boot, check_mode, diff)
        request.setdefault("verify_vmm", "false")
        result = _desired.run_request(
            host,
            kernel,
            sysfs_root=str(sysfs.sys),
            proc_root=str(sysfs.proc),
            dev_root=str(sysfs.dev),
            root=str(root),
            state_dir="/var/lib/hostdev-vfio",
            live=True,
            **request,
        )
        return result, host

    return call, sysfs, kernel, root


def files(root):
    """Every file below ``root`` with its content (the whole host's file state)."""
    out = {}
    for base, _dirs, names in os.walk(root):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                out[os.path.relpath(path, root)] = f.read()
    return out


def driver(sysfs, address):
    link = sysfs.sys / "bus/pci/devices" / address / "driver"
    return os.path.basename(os.readlink(link)) if os.path.islink(link) else None


NIC_SELECTOR = [{"address": ["00:04.0@8086:10d3"]}]


def test_check_mode_plans_everything_and_touches_nothing(lab):
    call, _sysfs, kernel, root = lab
    before = files(root)
    result, host = call(check_mode=True, diff=True, devices=NIC_SELECTOR)
    assert result["changed"] and not result["reboot_required"]
    binds = result["summary"]["binds"]
    assert [(b["address"], b["driver_before"], b["driver_after"], b["after_reboot"]) for b in binds] == [
        (NIC, "e1000e", "vfio-pci", False)
    ]
    assert result["steps"]["initramfs"] == {
        "changed": True,
        "regenerated": None,
        "why": ["the initramfs configuration changed", "/etc/udev/rules.d/05-hostdev-vfio.rules changed"],
        "planned": True,
        "deferred": False,
    }
    assert any("vfio_iommu_type1" in d["after"] for d in result["diff"])
    assert files(root) == before and kernel.log == []
    assert not host.ran("update-initramfs") and not host.ran("udevadm")


def test_apply_then_idempotent_then_undo(lab):
    call, sysfs, kernel, root = lab
    before = files(root)
    result, host = call(devices=NIC_SELECTOR, vfio_group_group="kvm")
    assert result["changed"] and result["verified"] == [] and not result["reboot_required"]
    assert driver(sysfs, NIC) == "vfio-pci"
    assert len(host.ran("update-initramfs")) == 1  # one regeneration for the configuration and the rule
    image = (root / "boot/initrd.img-6.1.0-26-amd64").read_text()
    assert "usr/lib/udev/rules.d/05-hostdev-vfio.rules" in image and "vfio_iommu_type1" in image
    rule = (root / "etc/udev/rules.d/70-hostdev-vfio-passthrough.rules").read_text()
    assert 'GROUP="kvm", MODE="0660"' in rule
    assert host.ran("udevadm") == [
        ["udevadm", "control", "--reload"],
        ["udevadm", "trigger", "--subsystem-match=vfio", "--action=change"],
    ]
    assert result["summary"]["devices"][0]["address"] == NIC

    log = len(kernel.log)
    state = files(root)
    again, host = call(devices=NIC_SELECTOR, vfio_group_group="kvm")
    assert not again["changed"] and again["verified"] == []
    assert files(root) == state and len(kernel.log) == log
    assert not host.ran("update-initramfs") and not host.ran("udevadm")

    undone, host = call(devices=NIC_SELECTOR, state="absent")
    assert undone["changed"] and driver(sysfs, NIC) == "e1000e"
    assert len(host.ran("update-initramfs")) == 1
    after = files(root)
    # exactly what was there, but for the collection's own state (emptied) and the image (rebuilt)
    changed = {k for k in set(before) | set(after) if before.get(k) != after.get(k)}
    image = "boot/initrd.img-6.1.0-26-amd64"
    assert changed - {image} == {"var/lib/hostdev-vfio/bind-state.json"}
    assert json.loads(after["var/lib/hostdev-vfio/bind-state.json"])["devices"] == {}
    assert b"hostdev-vfio" not in after[image] and b"vfio_iommu_type1" not in after[image]


def test_unsafe_bind_is_refused_before_anything_is_written(lab):
    call, _sysfs, kernel, root = lab
    before = files(root)
    with pytest.raises(Failed, match=r"0000:00:03\.0") as exc:
        call(devices=[{"address": ["00:04.0"]}, {"address": ["00:03.0"]}], vfio_group_group="kvm")
    assert "storage" in exc.value.msg, exc.value.msg
    assert files(root) == before and kernel.log == []


def test_hostile_value_is_refused_before_the_host_is_read(lab):
    call, _sysfs, kernel, root = lab
    before = files(root)
    with pytest.raises(Failed, match=r"softdep_drivers\[0\]"):
        call(devices=NIC_SELECTOR, boot_method="ids", softdep_drivers=["e1000e\nblacklist vfio_pci"])
    with pytest.raises(Failed, match="boot_method"):
        call(devices=NIC_SELECTOR, boot_method="grub")
    assert files(root) == before and kernel.log == []


def test_ids_method_writes_options_and_softdep_in_one_file(lab):
    call, _sysfs, _kernel, root = lab
    result, host = call(devices=NIC_SELECTOR, boot_method="ids")
    text = (root / "etc/modprobe.d/hostdev-vfio-passthrough.conf").read_text()
    assert "options vfio-pci ids=8086:10d3\n" in text and "softdep e1000e pre: vfio-pci\n" in text
    assert result["steps"]["modprobe"]["initramfs_update_needed"]
    assert len(host.ran("update-initramfs")) == 1
    assert "etc/modprobe.d/hostdev-vfio-passthrough.conf" in (root / "boot/initrd.img-6.1.0-26-amd64").read_text()
    again, host = call(devices=NIC_SELECTOR, boot_method="ids")
    assert not again["changed"]


def test_iommu_off_plans_the_binds_for_after_the_reboot(tmp_path, monkeypatch):
    from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import FakeHost as FakeSysfs

    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    root, boot = boot_root(tmp_path)
    (root / "etc/default/grub").write_text(GRUB_DEFAULT.replace("intel_iommu=on", ""))
    fake_update_grub(root)
    sysfs = FakeSysfs(tmp_path / "host")
    sysfs.add_acpi_table("DMAR")
    sysfs.add_device("0000:00:04.0", "8086:10d3", "020000", driver="e1000e")
    kernel = FakeKernel(sysfs, loadable=LAB_LOADABLE)
    for check_mode in (True, False):
        host = Host(boot, check_mode)
        result = _desired.run_request(
            host,
            kernel,
            devices=NIC_SELECTOR,
            verify_vmm="false",
            sysfs_root=str(sysfs.sys),
            proc_root=str(sysfs.proc),
            dev_root=str(sysfs.dev),
            root=str(root),
            live=True,
        )
        assert result["reboot_required"] and "intel_iommu=on" in result["reboot_reasons"][0]
        assert [(b["address"], b["after_reboot"]) for b in result["summary"]["binds"]] == [(NIC, True)]
        assert result["verified"] is None and kernel.log == []
        assert ("intel_iommu=on" in (root / "boot/grub/grub.cfg").read_text()) is not check_mode
        # the image waits for the call after the reboot, which regenerates it once, with the binds' rules
        assert result["steps"]["initramfs"]["deferred"] and not host.ran("update-initramfs")


def test_a_run_that_stops_half_way_says_what_it_did(tmp_path, monkeypatch):
    """The initramfs configuration cannot be written: the failure names it, and the result keeps the steps done
    before (the kernel arguments with their undo record), as the role_undo lab target relies on."""
    from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import FakeHost as FakeSysfs

    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    root, boot = boot_root(tmp_path)
    (root / "etc/default/grub").write_text(GRUB_DEFAULT.replace("intel_iommu=on", ""))
    fake_update_grub(root)
    sysfs = FakeSysfs(tmp_path / "host")
    sysfs.add_acpi_table("DMAR")
    sysfs.add_device("0000:00:04.0", "8086:10d3", "020000", driver="e1000e")
    host = Host(boot)
    real_move = host.atomic_move

    def refuse_modules(src, dst):
        if dst.endswith("etc/initramfs-tools/modules"):
            raise OSError(1, "Operation not permitted")
        real_move(src, dst)

    host.atomic_move = refuse_modules
    with pytest.raises(Failed, match="etc/initramfs-tools/modules") as exc:
        _desired.run_request(
            host,
            FakeKernel(sysfs, loadable=LAB_LOADABLE),
            devices=NIC_SELECTOR,
            sysfs_root=str(sysfs.sys),
            proc_root=str(sysfs.proc),
            dev_root=str(sysfs.dev),
            root=str(root),
            live=True,
        )
    result = exc.value.result
    assert result["changed"] and result["steps"]["kernel_cmdline"]["changed"]
    assert "initramfs_config" not in result["steps"]
    record = json.loads((root / "var/lib/hostdev-vfio/undo-record.json").read_text())
    assert {"arg": "intel_iommu=on", "had": []} in record["kernel_cmdline"]["hostdev-vfio-passthrough"]
