# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import resource

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _vmm
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import read_snapshot
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import add_open_fd, lab_host
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakeqemu import fake_env, runs, write_fake_qemu

MIB = 1024 * 1024


@pytest.fixture
def lab(tmp_path, monkeypatch):
    """The lab guest with the e1000e and the first bridge NIC on vfio-pci, and a fake QEMU."""
    host = lab_host(tmp_path / "host")
    for address, group in (("0000:00:04.0", 4), ("0000:01:01.0", 8)):
        host.bind(address, "vfio-pci")
        host.add_vfio_group_file(group)
    qemu = write_fake_qemu(tmp_path / "bin")
    log = tmp_path / "qemu.log"
    fake_env(monkeypatch, host.sys, log)
    # RAM + 1 GiB is more than an unprivileged test process may raise RLIMIT_MEMLOCK to: ask for what it has.
    monkeypatch.setattr(_vmm, "memlock_needed", lambda memory_mib: 0)
    return host, qemu, log


def make_plan(host, qemu, **request):
    request.setdefault("qemu", str(qemu))
    return _vmm.plan(read_snapshot(str(host.sys)), _vmm.Request(**request), str(host.proc), str(host.dev), "")


def probe(host, qemu, **request):
    return _vmm.run(make_plan(host, qemu, **request))


def test_single_function_taken(lab):
    host, qemu, log = lab
    functions, groups, version = probe(host, qemu, address=["00:04.0@8086:10d3"])
    assert functions == [
        {
            "address": "0000:00:04.0",
            "group": 4,
            "ids": "8086:10d3",
            "driver": "vfio-pci",
            "qdev_id": "hostdev0",
            "taken": True,
            "qemu_ids": "8086:10d3",
            "error": None,
            "skipped": None,
        }
    ]
    assert version == "7.2.22 (fake)"
    [group] = groups
    assert group["rc"] == 0 and group["error"] is None and group["hung"] is False and group["kernel_viable"]
    assert group["seconds"] > 0
    assert "warning: fake QEMU" in group["stderr"]  # a warning is kept in stderr, never taken for the error
    assert group["argv"] == [
        str(qemu),
        *("-name", "hostdev-vfio-probe-group4", "-machine", "q35", "-accel", "tcg", "-m", "64M"),
        *("-nodefaults", "-no-user-config", "-display", "none", "-S", "-qmp", "stdio"),
        *("-device", "vfio-pci,host=0000:00:04.0,id=hostdev0"),
    ]
    assert [r["argv"][1:] for r in runs(log)] == [["-version"], group["argv"][1:]]


def test_companion_on_host_driver_is_not_viable_with_qemus_message(lab):
    host, qemu, _log = lab
    functions, groups, _version = probe(host, qemu, address=["01:01.0"])
    assert functions[0]["taken"] is False and functions[0]["qemu_ids"] is None
    assert functions[0]["error"] == (
        "-device vfio-pci,host=0000:01:01.0,id=hostdev0: vfio 0000:01:01.0: group 8 is not viable"
    )
    assert groups[0]["rc"] == 1 and groups[0]["kernel_viable"] is False
    assert "Please ensure all devices within the iommu_group" in groups[0]["stderr"]


def test_companion_on_pci_stub_the_nic_is_taken(lab):
    host, qemu, _log = lab
    host.bind("0000:01:02.0", "pci-stub")
    functions, groups, _version = probe(host, qemu, address=["01:01.0"])
    assert functions[0]["taken"] is True and functions[0]["qemu_ids"] == "8086:100e"
    assert groups[0]["kernel_viable"] is True and groups[0]["rc"] == 0


def test_pci_stub_companion_is_refused_before_qemu_starts(lab):
    host, qemu, log = lab
    host.bind("0000:01:02.0", "pci-stub")
    with pytest.raises(_vmm.VmmError) as err:
        probe(host, qemu, address=["01:01.0", "01:02.0"])
    assert err.value.msg.startswith("refused, nothing started: 0000:01:02.0 is on pci-stub, not on a VFIO driver")
    assert [f["error"] is None for f in err.value.functions] == [True, False]
    assert runs(log) == []


def test_qemu_itself_says_no_such_device_for_a_pci_stub_function(lab):
    """What QEMU answers when asked for the pci-stub companion anyway (the module never asks): its error is kept."""
    host, qemu, _log = lab
    host.bind("0000:01:02.0", "pci-stub")
    snapshot = read_snapshot(str(host.sys))
    argv = _vmm.build_argv(str(qemu), "tcg", 64, 8, ["0000:01:02.0"])
    functions = {"0000:01:02.0": _vmm._function_result(snapshot, "0000:01:02.0", "hostdev0")}
    group = _vmm.probe_group(_vmm.GroupProbe(8, ["0000:01:02.0"], argv, True), functions, str(qemu), 30, None)
    assert group["error"].endswith("vfio 0000:01:02.0: error getting device from group 8: No such device")
    assert functions["0000:01:02.0"]["taken"] is False


def test_whole_group_on_vfio_one_vm_both_taken(lab):
    host, qemu, log = lab
    host.bind("0000:01:02.0", "vfio-pci")
    functions, groups, _version = probe(host, qemu, ids=["8086:100e"])
    assert [(f["address"], f["qdev_id"], f["taken"]) for f in functions] == [
        ("0000:01:01.0", "hostdev0", True),
        ("0000:01:02.0", "hostdev1", True),
    ]
    assert [g["id"] for g in groups] == [8]
    assert len(runs(log)) == 2  # -version, one VM


def test_one_vm_per_group_and_qemu_stopping_on_one_function_names_it(lab):
    host, qemu, log = lab
    host.bind("0000:01:02.0", "vfio-pci")
    host.bind("0000:00:08.0", "e1000")  # not a real case: a bridge on a host driver makes group 8 not viable
    functions, groups, _version = probe(host, qemu, address=["00:04.0", "01:02.0", "01:01.0"])
    assert [g["id"] for g in groups] == [4, 8]
    assert [g["functions"] for g in groups] == [["0000:00:04.0"], ["0000:01:02.0", "0000:01:01.0"]]
    assert [f["taken"] for f in functions] == [True, False, False]
    assert functions[1]["error"].endswith("vfio 0000:01:02.0: group 8 is not viable")
    assert functions[2]["error"].startswith("not taken: QEMU stopped on 0000:01:02.0 of the same group: -device")
    assert len(runs(log)) == 3


def test_function_on_host_driver_is_refused(lab):
    host, qemu, log = lab
    with pytest.raises(_vmm.VmmError, match=r"0000:00:05.0 is on snd_hda_intel, not on a VFIO driver.*vfio_bind"):
        probe(host, qemu, address=["00:05.0"])
    assert runs(log) == []


def test_group_open_by_another_process_is_refused(lab):
    host, qemu, log = lab
    add_open_fd(host, 4242, "/dev/vfio/4", comm="qemu-system-x86")
    with pytest.raises(_vmm.VmmError) as err:
        probe(host, qemu, address=["00:04.0"])
    assert "0000:00:04.0 is in IOMMU group 4, whose /dev/vfio/4 is open by process 4242 (qemu-system-x86)" in str(
        err.value
    )
    assert "opening a VFIO device resets it" in err.value.msg
    assert runs(log) == []


def test_group_in_use_is_skipped_when_asked_and_the_rest_probed(lab):
    host, qemu, log = lab
    add_open_fd(host, 4242, "/dev/vfio/4", comm="qemu-system-x86")
    functions, groups, _version = probe(host, qemu, address=["00:04.0", "01:01.0"], skip_in_use=True)
    by_address = {f["address"]: f for f in functions}
    e1000e = by_address["0000:00:04.0"]
    assert e1000e["taken"] is None and e1000e["error"] is None
    assert e1000e["skipped"].startswith("not probed: it is in IOMMU group 4, whose /dev/vfio/4 is open by process 4242")
    # the held group never reaches QEMU: one VM only, for group 8
    assert [g["id"] for g in groups] == [8]
    assert not any("0000:00:04.0" in " ".join(r["argv"]) for r in runs(log))


def test_missing_qemu_is_reported_not_raised_when_not_required(lab, tmp_path):
    host, _qemu, log = lab
    with pytest.raises(_vmm.QemuMissing) as err:
        _vmm.plan(
            read_snapshot(str(host.sys)),
            _vmm.Request(address=["00:04.0"], qemu_required=False),
            str(host.proc),
            str(host.dev),
            str(tmp_path / "empty-path"),
        )
    assert err.value.msg.startswith("QEMU not found")
    assert [f["address"] for f in err.value.functions] == ["0000:00:04.0"]
    assert err.value.functions[0]["taken"] is None
    assert runs(log) == []
    with pytest.raises(_vmm.VmmError, match="QEMU not found"):
        _vmm.plan(
            read_snapshot(str(host.sys)),
            _vmm.Request(address=["00:04.0"]),
            str(host.proc),
            str(host.dev),
            str(tmp_path / "empty-path"),
        )


def test_missing_group_node_is_refused(lab):
    host, qemu, log = lab
    (host.dev / "vfio" / "4").unlink()
    with pytest.raises(_vmm.VmmError, match=r"vfio/4 does not exist"):
        probe(host, qemu, address=["00:04.0"])
    assert runs(log) == []


def test_memlock_is_raised_for_qemu_only(lab, monkeypatch):
    host, qemu, log = lab
    soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
    needed = 4 * MIB
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.skip(f"the hard RLIMIT_MEMLOCK here ({hard}) is below the {needed} bytes the test raises to")
    monkeypatch.setattr(_vmm, "memlock_needed", lambda memory_mib: needed)
    resource.setrlimit(resource.RLIMIT_MEMLOCK, (MIB, hard))
    try:
        functions, _groups, _version = probe(host, qemu, address=["00:04.0"])
        assert resource.getrlimit(resource.RLIMIT_MEMLOCK) == (MIB, hard)  # this process is untouched
    finally:
        resource.setrlimit(resource.RLIMIT_MEMLOCK, (soft, hard))
    assert functions[0]["taken"] is True
    vm = runs(log)[-1]
    assert "-device" in vm["argv"] and vm["memlock"] == [needed, hard]


def test_memlock_limits_rule():
    inf = resource.RLIM_INFINITY
    assert _vmm.memlock_needed(64) == (64 + 1024) * MIB
    assert _vmm.memlock_limits(100, (inf, inf)) is None
    assert _vmm.memlock_limits(100, (200, 200)) is None
    assert _vmm.memlock_limits(100, (10, inf)) == (100, inf)
    assert _vmm.memlock_limits(100, (10, 50)) == (100, 100)
    assert _vmm.memlock_limits(100, (10, 500)) == (100, 500)


def test_memlock_that_cannot_be_raised_is_a_clear_error(lab, monkeypatch):
    host, qemu, log = lab

    def refuse(limits):
        raise ValueError("not allowed to raise maximum limit")

    monkeypatch.setattr(_vmm, "_set_memlock", refuse)
    monkeypatch.setattr(_vmm, "memlock_limits", lambda needed: (2 * MIB, 2 * MIB))
    with pytest.raises(_vmm.VmmError, match=r"cannot raise RLIMIT_MEMLOCK to 2097152 bytes .*: run as root"):
        probe(host, qemu, address=["00:04.0"])
    assert [r["argv"][1:] for r in runs(log)] == [["-version"]]  # the VM never started


def test_hung_qemu_is_stopped_and_reported(lab, monkeypatch):
    host, qemu, log = lab
    monkeypatch.setenv("FAKE_QEMU_MODE", "hang")
    functions, groups, _version = probe(host, qemu, address=["00:04.0"], timeout=1)
    assert groups[0]["hung"] is True and groups[0]["rc"] is None
    assert groups[0]["error"].startswith("QEMU gave no answer within 1 s (the timeout guard); stopped with SIGKILL")
    assert functions[0]["taken"] is False and functions[0]["error"] == groups[0]["error"]
    assert len(runs(log)) == 2  # -version, then the VM that hung


def test_qemu_that_exits_silently(lab, tmp_path):
    host, _qemu, _log = lab
    silent = tmp_path / "bin" / "silent-qemu"
    silent.write_text("#!/bin/sh\nexit 3\n")
    silent.chmod(0o755)
    functions, groups, version = probe(host, silent, address=["00:04.0"])
    assert version is None
    assert groups[0]["rc"] == 3 and groups[0]["stderr"] is None
    assert functions[0]["error"] == "QEMU exited with status 3 before answering on QMP and printed nothing"


@pytest.mark.parametrize(
    "request_args, message",
    [
        ({"address": ["01:01.0\n"]}, r"address\[0\]: '01:01.0\\n' contains the control character"),
        ({"address": ["01:01.0,id=x"]}, r"address\[0\]: '01:01.0,id=x' is not a PCI address"),
        ({"address": ["01:01.0@8086:100e:1af4:1100"]}, r"after '@' give vendor:device only"),
        ({"address": ["-device"]}, r"is not a PCI address"),
        ({"ids": ["8086:100e\n"]}, r"ids\[0\]: .* contains the control character"),
        ({"device_class": ["02;x"]}, r"device_class\[0\]: '02;x' is not 2, 4 or 6 hex digits of a PCI class code"),
        ({"query": "devices\n[0]"}, r"query: .* contains the control character"),
        ({"address": ["00:04.0"], "qemu": "bin/qemu"}, r"qemu: 'bin/qemu' must be an absolute path"),
        ({"address": ["00:04.0"], "qemu": "/usr/bin/qemu\x00"}, r"qemu: .* contains the control character"),
        ({"address": ["00:04.0"], "memory_mib": 0}, r"memory_mib: 0 is not a whole number from 16 to 65536"),
        ({"address": ["00:04.0"], "timeout": True}, r"timeout: True is not a whole number"),
        ({"address": ["00:04.0"], "accel": "kvm,x=y"}, r"accel: 'kvm,x=y' is not one of auto, kvm, tcg"),
    ],
)
def test_hostile_values_are_refused_before_anything_runs(lab, request_args, message):
    host, qemu, log = lab
    request_args.setdefault("qemu", str(qemu))
    with pytest.raises(_vmm.VmmError, match=message):
        _vmm.plan(read_snapshot(str(host.sys)), _vmm.Request(**request_args), str(host.proc), str(host.dev), "")
    assert runs(log) == []


def test_selection_errors(lab):
    host, qemu, _log = lab
    with pytest.raises(_vmm.VmmError, match=r"0000:00:04\.0 is 8086:10d3, not the expected 8086:1234"):
        make_plan(host, qemu, address=["00:04.0@8086:1234"])
    with pytest.raises(_vmm.VmmError, match="no function matched"):
        make_plan(host, qemu, ids=["dead:beef"])


@pytest.mark.parametrize(
    "os_release, package",
    [
        ('ID=debian\nVERSION_ID="12"\n', "qemu-system-x86 (apt-get install qemu-system-x86)"),
        ("ID=ubuntu\nID_LIKE=debian\n", "qemu-system-x86 (apt-get"),
        ('ID="rocky"\nID_LIKE="rhel centos fedora"\n', "qemu-kvm (dnf install qemu-kvm)"),
        ("ID=fedora\n", "qemu-kvm (dnf"),
        ('ID="opensuse-leap"\nID_LIKE="suse opensuse"\n', "qemu-x86 (zypper install qemu-x86)"),
        ("ID=arch\n", "qemu-system-x86 (pacman"),
        (None, "qemu-system-x86 (Debian, Ubuntu) or qemu-kvm (RHEL, Fedora)"),
    ],
)
def test_missing_qemu_names_the_package(tmp_path, os_release, package):
    with pytest.raises(_vmm.VmmError) as err:
        _vmm.find_qemu(None, str(tmp_path), os_release, fallbacks=(str(tmp_path / "libexec/qemu-kvm"),))
    assert err.value.msg.startswith("QEMU not found: no qemu-system-x86_64 or qemu-kvm in PATH")
    assert package in err.value.msg


def test_find_qemu_order(tmp_path):
    first, second = write_fake_qemu(tmp_path / "a", "qemu-kvm"), write_fake_qemu(tmp_path / "b")
    assert _vmm.find_qemu(None, f"{tmp_path / 'a'}:{tmp_path / 'b'}") == str(second)
    assert _vmm.find_qemu(None, str(tmp_path / "a")) == str(first)
    assert _vmm.find_qemu(None, "", fallbacks=(str(first),)) == str(first)
    with pytest.raises(_vmm.VmmError, match="qemu: /nonexistent/qemu is not an executable file; install"):
        _vmm.find_qemu("/nonexistent/qemu", "", "ID=debian")


def test_accel_choice(tmp_path):
    assert _vmm.choose_accel("auto", str(tmp_path)) == "tcg"
    assert _vmm.choose_accel("tcg", str(tmp_path)) == "tcg"
    with pytest.raises(_vmm.VmmError, match="kvm was asked for"):
        _vmm.choose_accel("kvm", str(tmp_path))
    (tmp_path / "kvm").write_text("")
    assert _vmm.choose_accel("auto", str(tmp_path)) == "kvm"
    assert _vmm.choose_accel("kvm", str(tmp_path)) == "kvm"


@pytest.mark.parametrize(
    "stderr, line",
    [
        (
            "qemu-system-x86_64: -device vfio-pci,host=0000:01:01.0,id=hostdev0: vfio 0000:01:01.0: group 8 is not "
            "viable\nPlease ensure all devices within the iommu_group are bound to their vfio bus driver.\n",
            "-device vfio-pci,host=0000:01:01.0,id=hostdev0: vfio 0000:01:01.0: group 8 is not viable",
        ),
        (
            "qemu-kvm: warning: host doesn't support requested feature\nqemu-kvm: -device vfio-pci,host=0000:00:04.0,"
            "id=hostdev0: VFIO_MAP_DMA failed: Cannot allocate memory\n",
            "-device vfio-pci,host=0000:00:04.0,id=hostdev0: VFIO_MAP_DMA failed: Cannot allocate memory",
        ),
        ("something odd\n", "something odd"),
        ("", None),
    ],
)
def test_error_line(stderr, line):
    assert _vmm.error_line(stderr, "/usr/libexec/qemu-kvm") == line


def test_pci_ids_by_qdev():
    reply = [
        {
            "bus": 0,
            "devices": [
                {"qdev_id": "", "id": {"vendor": 0x8086, "device": 0x29C0}},
                {"qdev_id": "hostdev0", "id": {"vendor": 0x10DE, "device": 0x1B80}},
                {
                    "qdev_id": "br",
                    "id": {"vendor": 0x1B36, "device": 0xE},
                    "pci_bridge": {"devices": [{"qdev_id": "hostdev1", "id": {"vendor": 0x10DE, "device": 0x10F0}}]},
                },
                "garbage",
            ],
        }
    ]
    assert _vmm.pci_ids_by_qdev(reply) == {"hostdev0": "10de:1b80", "br": "1b36:000e", "hostdev1": "10de:10f0"}
    assert _vmm.pci_ids_by_qdev({"not": "a list"}) == {}
