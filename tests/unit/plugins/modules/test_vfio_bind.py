# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import read_snapshot
from ansible_collections.hostdev.vfio.plugins.modules import vfio_bind
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import (
    LAB_LOADABLE,
    FakeKernel,
    lab_host,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module


@pytest.fixture
def lab(tmp_path, monkeypatch):
    host = lab_host(tmp_path / "host")
    kernel = FakeKernel(host, loadable=LAB_LOADABLE)
    monkeypatch.setattr(vfio_bind, "make_kernel", lambda module, sysfs, dev: kernel)
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    # the initramfs generator is looked for under tmp_path: initramfs-tools, which copies /etc/udev/rules.d
    (tmp_path / "usr/sbin").mkdir(parents=True)
    (tmp_path / "usr/sbin/update-initramfs").write_text("#!/bin/sh\n")
    monkeypatch.setattr(vfio_bind, "INITRAMFS_ROOT", str(tmp_path))
    return host, kernel, tmp_path


def args(host, tmp, **extra):
    return {
        "sysfs_root": str(host.sys),
        "proc_root": str(host.proc),
        "dev_root": str(host.dev),
        "state_dir": str(tmp / "state"),
        "rules_file": str(tmp / "etc/udev/rules.d/05-hostdev-vfio.rules"),
        **extra,
    }


def live(monkeypatch, host):
    monkeypatch.setattr(vfio_bind, "LIVE_ROOTS", (str(host.sys), str(host.proc), str(host.dev)))


def test_check_mode_returns_plan_and_diff_and_changes_nothing(lab):
    host, kernel, tmp = lab
    result, failed = run_module(
        vfio_bind.main,
        args(
            host, tmp, address=["01:01.0"], group="stub", persistent=True, _ansible_check_mode=True, _ansible_diff=True
        ),
    )
    assert not failed and result["changed"] is True
    assert [(d["address"], d["role"], d["driver_after"]) for d in result["devices"]] == [
        ("0000:01:01.0", "selected", "vfio-pci"),
        ("0000:00:08.0", "bridge", None),
        ("0000:01:02.0", "companion", "pci-stub"),
    ]
    assert result["groups"] == [
        {"id": 8, "devices": ["0000:00:08.0", "0000:01:01.0", "0000:01:02.0"], "viable": True, "blockers": []}
    ]
    assert result["modules_loaded"] == ["vfio-pci", "pci-stub"]
    assert result["initramfs_update_needed"] is True
    assert "udev_rule=vfio-pci" in result["diff"]["after"]
    assert kernel.log == []
    assert not (tmp / "etc/udev/rules.d").exists() and not (tmp / "state").exists()


def test_apply_with_captured_tree_is_refused(lab):
    host, kernel, tmp = lab
    result, failed = run_module(vfio_bind.main, args(host, tmp, address=["00:04.0"]))
    assert failed and "for check mode only" in result["msg"]
    assert kernel.log == []


def test_real_run_then_idempotent(lab, monkeypatch):
    host, kernel, tmp = lab
    live(monkeypatch, host)
    result, failed = run_module(vfio_bind.main, args(host, tmp, address=["00:04.0@8086:10d3"]))
    assert not failed and result["changed"] is True
    assert result["devices"][0]["driver_after"] == "vfio-pci"
    assert read_snapshot(str(host.sys)).devices["0000:00:04.0"].driver == "vfio-pci"
    kernel.log.clear()
    for check in (True, False):
        result, failed = run_module(vfio_bind.main, args(host, tmp, address=["00:04.0"], _ansible_check_mode=check))
        assert not failed and result["changed"] is False
    assert kernel.log == []


def test_group_fail_reports_plan(lab):
    host, _kernel, tmp = lab
    result, failed = run_module(
        vfio_bind.main, args(host, tmp, ids=["8086:100e"], address=["01:01.0"], _ansible_check_mode=True)
    )
    assert not failed  # both endpoints selected: the group is viable with group=fail
    result, failed = run_module(vfio_bind.main, args(host, tmp, address=["01:01.0"], _ansible_check_mode=True))
    assert failed and result["msg"].startswith("nothing changed: IOMMU group 8 would not be viable")
    assert {d["role"] for d in result["devices"]} == {"selected", "companion", "bridge"}


def test_rollback_is_reported(lab, monkeypatch):
    host, kernel, tmp = lab
    live(monkeypatch, host)
    kernel.refuse.add(("0000:01:02.0", "vfio-pci"))
    result, failed = run_module(vfio_bind.main, args(host, tmp, address=["01:01.0"], group="vfio"))
    assert failed
    assert [r["address"] for r in result["rollback"]] == ["0000:01:02.0", "0000:01:01.0"]
    assert all(r["restored"] for r in result["rollback"])
    snap = read_snapshot(str(host.sys))
    assert [snap.devices[a].driver for a in ("0000:01:01.0", "0000:01:02.0")] == ["e1000", "e1000"]


def test_nothing_selected(lab):
    host, _kernel, tmp = lab
    result, failed = run_module(vfio_bind.main, args(host, tmp, ids=["dead:beef"], _ansible_check_mode=True))
    assert failed and "no device matched" in result["msg"]
    result, failed = run_module(
        vfio_bind.main, args(host, tmp, ids=["dead:beef"], allow_empty=True, _ansible_check_mode=True)
    )
    assert not failed and result["changed"] is False


def test_query_selects_from_facts(lab):
    host, _kernel, tmp = lab
    result, failed = run_module(
        vfio_bind.main,
        args(host, tmp, query="devices[?vendor_id=='8086' && device_id=='10d3']", _ansible_check_mode=True),
    )
    assert not failed
    assert [d["address"] for d in result["devices"]] == ["0000:00:04.0"]


def test_management_nic_refused_with_ssh_route(lab, monkeypatch):
    host, _kernel, tmp = lab
    monkeypatch.setenv("SSH_CONNECTION", "10.0.2.2 51000 10.0.2.15 22")
    result, failed = run_module(vfio_bind.main, args(host, tmp, address=["00:02.0"], _ansible_check_mode=True))
    assert failed
    assert (
        "0000:00:02.0 is NIC eth0, which carries the route to this SSH session's client address 10.0.2.2"
        in result["msg"]
    )
    assert "(network check)" in result["msg"]


def test_bad_values_rejected(lab):
    host, _kernel, tmp = lab
    result, failed = run_module(
        vfio_bind.main, args(host, tmp, address=["1:0.0"], driver="a b", _ansible_check_mode=True)
    )
    assert failed and "'1:0.0'" in result["msg"] and "'a b'" in result["msg"]


@pytest.mark.parametrize(
    ("generator", "conf", "needed"),
    [
        ("usr/sbin/update-initramfs", None, True),  # initramfs-tools' udev hook copies /etc/udev/rules.d
        ("usr/bin/dracut", None, False),  # dracut installs a fixed list of rules: not ours
        ("usr/bin/dracut", 'install_items+=" /etc/udev/rules.d/05-hostdev-vfio.rules "\n', True),
        ("usr/bin/mkinitcpio", None, False),
        (None, None, False),  # no initramfs at all
    ],
)
def test_initramfs_update_needed_follows_what_the_generator_carries(lab, monkeypatch, generator, conf, needed):
    host, _kernel, tmp = lab
    fake = tmp / "gen-root"
    if generator:
        (fake / generator).parent.mkdir(parents=True)
        (fake / generator).write_text("#!/bin/sh\n")
    if conf:
        (fake / "etc/dracut.conf.d").mkdir(parents=True)
        (fake / "etc/dracut.conf.d/hostdev-vfio.conf").write_text(conf)
    monkeypatch.setattr(vfio_bind, "INITRAMFS_ROOT", str(fake))
    rules = fake / "etc/udev/rules.d/05-hostdev-vfio.rules"
    result, failed = run_module(
        vfio_bind.main,
        {**args(host, tmp, address=["00:04.0"], persistent=True, _ansible_check_mode=True), "rules_file": str(rules)},
    )
    assert not failed and result["rules_file"]["changed"]
    assert result["initramfs_update_needed"] is needed
    warned = any("does not carry it" in w for w in result.get("warnings", []))
    assert warned is (generator is not None and not needed)


def test_force_per_check_and_the_deprecated_list(lab, monkeypatch):
    from ansible.module_utils import basic

    host, _kernel, tmp = lab
    deprecations = []
    monkeypatch.setattr(basic.AnsibleModule, "deprecate", lambda self, msg, **kw: deprecations.append((msg, kw)))
    check = {"_ansible_check_mode": True}
    result, failed = run_module(
        vfio_bind.main, args(host, tmp, address=["00:01.0"], force={"00:01.0": ["storage"]}, **check)
    )
    assert failed and "refusing (console check)" in result["msg"]
    result, failed = run_module(
        vfio_bind.main, args(host, tmp, address=["00:01.0"], force={"00:01.0": ["console"]}, **check)
    )
    assert not failed and result["devices"][0]["forced"] == ["console"]
    assert any("force names the console check" in w for w in result["warnings"])
    assert deprecations == []
    result, failed = run_module(vfio_bind.main, args(host, tmp, address=["00:01.0"], force=["00:01.0"], **check))
    assert not failed and result["devices"][0]["forced"] == ["console"]
    assert deprecations[0][1] == {"version": "1.0.0", "collection_name": "hostdev.vfio"}
    result, failed = run_module(vfio_bind.main, args(host, tmp, address=["00:01.0"], force={"00:01.0": ["vga"]}))
    assert failed and "'vga' is not a safety check" in result["msg"]
