# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18, part C: hostile input and garbled host state for vfio_bind and iommu_facts.

Every vfio_bind case runs for real (not in check mode, on "live" roots pointing at the fake tree), so a value that
slipped through would be written. The whole temp tree (fake sysfs, procfs, /dev, rules and state files) is hashed
before and after: a refusal must be a fail_json that names the problem, with nothing changed and no kernel operation
run. iommu_facts cases garble one function's sysfs attributes: that function is marked unreadable (with a warning)
and every other function is reported exactly as on the clean tree.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import tempfile
from pathlib import Path

import pytest
from ansible.module_utils.basic import AnsibleModule
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import read_snapshot
from ansible_collections.hostdev.vfio.plugins.modules import iommu_facts, vfio_bind
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import (
    LAB_LOADABLE,
    FakeKernel,
    lab_host,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import gpu_host
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module

E1000E = "0000:00:04.0"


def tree_hash(root: Path) -> str:
    """Names, kinds, contents and link targets of everything below ``root`` (not times: they are not state)."""
    digest = hashlib.sha256()
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            path = os.path.join(dirpath, name)
            rel = os.path.relpath(path, root)
            if os.path.islink(path):
                digest.update(f"L {rel} -> {os.readlink(path)}\n".encode())
            elif os.path.isdir(path):
                digest.update(f"D {rel}\n".encode())
            else:
                with open(path, "rb") as f:
                    digest.update(f"F {rel} {hashlib.sha256(f.read()).hexdigest()}\n".encode())
    return digest.hexdigest()


@pytest.fixture
def lab(tmp_path, monkeypatch):
    host = lab_host(tmp_path / "host")
    kernel = FakeKernel(host, loadable=LAB_LOADABLE)
    monkeypatch.setattr(vfio_bind, "make_kernel", lambda module, sysfs, dev: kernel)
    monkeypatch.setattr(vfio_bind, "LIVE_ROOTS", (str(host.sys), str(host.proc), str(host.dev)))
    monkeypatch.delenv("SSH_CONNECTION", raising=False)
    return host, kernel, tmp_path


def bind_args(host, tmp, **extra):
    return {
        "sysfs_root": str(host.sys),
        "proc_root": str(host.proc),
        "dev_root": str(host.dev),
        "state_dir": str(tmp / "state"),
        "rules_file": str(tmp / "rules.d/05-hostdev-vfio.rules"),
        "persistent": True,
        **extra,
    }


# -- garbling one function's attributes -----------------------------------------------------------------------------
def garble(host, address: str, **files: bytes) -> None:
    """Replace attribute files of one function with raw bytes."""
    path = host.device_path(address)
    for name, data in files.items():
        (path / name).write_bytes(data)


# uevent without the PCI_* keys makes the reader fall back to the class attribute, so both are exercised.
NO_PCI_UEVENT = b"DRIVER=e1000e\n"
GARBLED = {
    "class-not-hex": {"uevent": NO_PCI_UEVENT, "class": b"0xzz0000\n"},
    "class-empty": {"uevent": NO_PCI_UEVENT, "class": b"\n"},
    "class-not-utf8": {"uevent": NO_PCI_UEVENT, "class": b"0x02\xff\xfe00\n"},
    "class-huge": {"uevent": NO_PCI_UEVENT, "class": b"0x" + b"0" * 100_000 + b"\n"},
    "class-too-wide": {"uevent": NO_PCI_UEVENT, "class": b"0x1020000\n"},
    "class-nul": {"uevent": NO_PCI_UEVENT, "class": b"0x02\x000000\n"},
    "uevent-class-not-hex": {"uevent": b"PCI_CLASS=ZZ0000\nPCI_ID=8086:10D3\n"},
    "uevent-id-not-hex": {"uevent": b"PCI_CLASS=20000\nPCI_ID=80G6:10D3\n"},
    "uevent-id-missing": {"uevent": b"PCI_CLASS=20000\n"},
    "uevent-not-utf8": {"uevent": b"PCI_CLASS=20000\nPCI_ID=8086:10D3\nMODALIAS=pci:\xc3\x28\n"},
    "uevent-huge": {"uevent": b"PCI_CLASS=20000\nPCI_ID=8086:10D3\n" + b"X" * 100_000},
    "uevent-empty-class-garbled": {"uevent": b"", "class": b"garbage\n"},
}
GARBLED_REASON = {
    "class-not-hex": "class: '0xzz0000' is not a hex number",
    "class-empty": "class: '' is not a hex number",
    "class-not-utf8": "class: not ASCII (byte 0xff",
    "class-huge": "class: longer than a page",
    "class-too-wide": "class: '0x1020000' is not a hex number of up to 6 digits",
    "class-nul": "class: holds NUL bytes",
    "uevent-class-not-hex": "uevent PCI_CLASS: 'ZZ0000' is not a hex number",
    "uevent-id-not-hex": "uevent PCI_ID vendor: '80G6' is not a hex number",
    "uevent-id-missing": "uevent PCI_ID vendor: '' is not a hex number",
    "uevent-not-utf8": "uevent: not ASCII (byte 0xc3",
    "uevent-huge": "uevent: longer than a page",
    "uevent-empty-class-garbled": "class: 'garbage' is not a hex number",
}


# -- vfio_bind: hostile values --------------------------------------------------------------------------------------
DEEP = "[" * 3000 + "devices" + "]" * 3000
HOSTILE_VALUES = [
    pytest.param({"driver": "vfio-pci\n"}, ["driver: 'vfio-pci\\n'", "control character '\\n'"], id="driver-newline"),
    pytest.param(
        {"driver": 'vfio-pci", RUN+="/bin/sh'}, ["driver:", "is not a driver name"], id="driver-udev-injection"
    ),
    pytest.param({"driver": "vfio\x1bpci"}, ["driver:", "control character '\\x1b'"], id="driver-escape"),
    pytest.param({"driver": "vfio-pci\x00"}, ["driver:", "control character '\\x00'"], id="driver-nul"),
    pytest.param({"driver": "vfio\u2028pci"}, ["driver:", "control character"], id="driver-line-separator"),
    pytest.param({"driver": "a" * 100_000}, ["driver:", "(100000 long) is longer than 64"], id="driver-100k"),
    pytest.param({"address": ["00:04.0\n"]}, ["address[0]:", "control character '\\n'"], id="address-newline"),
    pytest.param(
        {"address": ["00:04.0@8086:10d3\n"]}, ["address[0]:", "control character '\\n'"], id="address-ids-newline"
    ),
    pytest.param({"address": ["00:04.0\x00"]}, ["address[0]:", "control character '\\x00'"], id="address-nul"),
    pytest.param({"address": ["0" * 100_000]}, ["address[0]:", "longer than 64"], id="address-100k"),
    pytest.param({"address": ["00:04.0@8086:10d3:0000:0000"]}, ["must be vendor:device"], id="address-4-part-ids"),
    pytest.param({"ids": ["8086:10d3\n"]}, ["ids[0]:", "control character '\\n'"], id="ids-newline"),
    pytest.param({"ids": ["8086:10d3\x00"]}, ["ids[0]:", "control character '\\x00'"], id="ids-nul"),
    pytest.param({"ids": ["8086:" + "1" * 100_000]}, ["ids[0]:", "longer than 19"], id="ids-100k"),
    pytest.param({"device_class": ["02\n"]}, ["device_class[0]:", "control character"], id="class-newline"),
    pytest.param({"device_class": ["02" * 50_000]}, ["device_class[0]:", "longer than 6"], id="class-100k"),
    pytest.param({"address": [E1000E], "force": ["00:04.0\n"]}, ["force[0]:", "control character"], id="force-nl"),
    pytest.param({"query": "devices[].address\n"}, ["query:", "control character '\\n'"], id="query-newline"),
    pytest.param({"query": "devices[?vendor_id=='\x00'].address"}, ["query:", "control character"], id="query-nul"),
    pytest.param({"query": "d" * 100_000}, ["query:", "longer than 2048"], id="query-100k"),
    pytest.param({"query": "(" * 1000 + "devices" + ")" * 1000}, ["query:", "nests deeper than 32"], id="query-deep"),
    pytest.param({"query": "!" * 2000 + "devices"}, ["query:", "nests deeper than 32"], id="query-deep-not"),
    # Not a run of one character: the parser's recursion runs out, and that too is a clean message.
    pytest.param({"query": "! " * 1000 + "devices"}, ["query", "nests too deeply to evaluate"], id="query-recursion"),
    pytest.param({"address": [E1000E], "rules_file": "rules.d/x.rules"}, ["rules_file:", "absolute"], id="rules-rel"),
    pytest.param(
        {"address": [E1000E], "rules_file": "/etc/udev/rules.d/../../../root/x.rules"},
        ["rules_file:", "contains '..'"],
        id="rules-dotdot",
    ),
    pytest.param(
        {"address": [E1000E], "rules_file": "/etc/udev/rules.d/x\n.rules"},
        ["rules_file:", "control character"],
        id="rules-newline",
    ),
    pytest.param({"address": [E1000E], "state_dir": "/var/lib/../../tmp"}, ["state_dir:", "'..'"], id="state-dotdot"),
]


@pytest.mark.parametrize(("extra", "expected"), HOSTILE_VALUES)
def test_vfio_bind_refuses_hostile_values_and_changes_nothing(lab, extra, expected):
    host, kernel, tmp = lab
    extra = {"address": [E1000E], **extra} if "ids" not in extra and "device_class" not in extra else extra
    if extra.get("query") is not None:
        extra.pop("address")
    before = tree_hash(tmp)
    result, failed = run_module(vfio_bind.main, bind_args(host, tmp, **extra))
    assert failed, result
    for text in expected:
        assert text in result["msg"], result["msg"]
    assert len(result["msg"]) < 2000  # a 100k value is shown shortened
    assert kernel.log == []
    assert tree_hash(tmp) == before


def test_deep_query_gives_a_clean_error_from_the_backend_too(lab):
    """The 3000-deep query of the issue, straight into run_query (no validation in front): no RecursionError."""
    from ansible_collections.hostdev.vfio.plugins.module_utils import _bind

    with pytest.raises(_bind.BindError, match=r"nests too deeply|not valid JMESPath"):
        _bind.run_query(DEEP, {"devices": []})


# -- vfio_bind: garbled host state ----------------------------------------------------------------------------------
@pytest.mark.parametrize("case", sorted(GARBLED))
def test_vfio_bind_refuses_an_unreadable_selected_function(lab, case):
    host, kernel, tmp = lab
    garble(host, E1000E, **GARBLED[case])
    before = tree_hash(tmp)
    result, failed = run_module(vfio_bind.main, bind_args(host, tmp, address=[E1000E]))
    assert failed, result
    assert f"{E1000E}: its sysfs attributes cannot be read ({GARBLED_REASON[case]}" in result["msg"]
    assert kernel.log == []
    assert tree_hash(tmp) == before


@pytest.mark.parametrize("case", ["class-not-hex", "uevent-not-utf8", "class-huge"])
def test_vfio_bind_still_works_beside_an_unreadable_function(lab, case):
    host, _kernel, tmp = lab
    garble(host, "0000:00:05.0", **GARBLED[case])  # the HDA function, not selected
    result, failed = run_module(vfio_bind.main, bind_args(host, tmp, address=[E1000E]))
    assert not failed, result["msg"]
    assert result["changed"] is True
    assert read_snapshot(str(host.sys)).devices[E1000E].driver == "vfio-pci"
    rules = (tmp / "rules.d/05-hostdev-vfio.rules").read_text()
    assert 'KERNEL=="0000:00:04.0"' in rules and "0000:00:05.0" not in rules


def test_vfio_bind_refuses_to_move_an_unreadable_group_companion(lab):
    host, kernel, tmp = lab
    garble(host, "0000:01:02.0", **GARBLED["class-not-hex"])
    before = tree_hash(tmp)
    result, failed = run_module(vfio_bind.main, bind_args(host, tmp, address=["01:01.0"], group="stub"))
    assert failed
    assert "0000:01:02.0 (companion): its sysfs attributes cannot be read" in result["msg"]
    assert kernel.log == []
    assert tree_hash(tmp) == before


# -- vfio_bind: files that cannot be edited -------------------------------------------------------------------------
def _non_utf8_state(tmp):
    (tmp / "state").mkdir()
    (tmp / "state/bind-state.json").write_bytes(b'{"devices": {"\xff\xfe": 1}}\n')
    return str(tmp / "state/bind-state.json"), "is not UTF-8"


def _state_driver_newline(tmp):
    (tmp / "state").mkdir()
    record = {"driver": "e1000e\ninstall e1000e /bin/sh", "module": "e1000e", "ids": "8086:10d3"}
    (tmp / "state/bind-state.json").write_text(json.dumps({"version": 1, "devices": {E1000E: record}}))
    return str(tmp / "state/bind-state.json"), "0000:00:04.0 driver: 'e1000e\\ninstall"


def _state_module_not_a_name(tmp):
    (tmp / "state").mkdir()
    record = {"driver": "e1000e", "module": "../../tmp/evil", "ids": "8086:10d3"}
    (tmp / "state/bind-state.json").write_text(json.dumps({"version": 1, "devices": {E1000E: record}}))
    return str(tmp / "state/bind-state.json"), "0000:00:04.0 module: '../../tmp/evil' is not a kernel module name"


def _state_record_not_an_object(tmp):
    (tmp / "state").mkdir()
    (tmp / "state/bind-state.json").write_text('{"version": 1, "devices": {"0000:00:04.0": 5}}\n')
    return str(tmp / "state/bind-state.json"), "the record of 0000:00:04.0 is 5, not an object"


def _non_utf8_rules(tmp):
    (tmp / "rules.d").mkdir()
    (tmp / "rules.d/05-hostdev-vfio.rules").write_bytes(b"# r\xe9gles\n")
    return str(tmp / "rules.d/05-hostdev-vfio.rules"), "is not UTF-8"


def _binary_rules(tmp):
    (tmp / "rules.d").mkdir()
    (tmp / "rules.d/05-hostdev-vfio.rules").write_bytes(b"\0" * 64)
    return str(tmp / "rules.d/05-hostdev-vfio.rules"), "holds NUL bytes"


def _rules_is_directory(tmp):
    (tmp / "rules.d/05-hostdev-vfio.rules").mkdir(parents=True)
    return str(tmp / "rules.d/05-hostdev-vfio.rules"), "is a directory"


def _state_is_directory(tmp):
    (tmp / "state/bind-state.json").mkdir(parents=True)
    return str(tmp / "state/bind-state.json"), "is a directory"


def _rules_parent_is_file(tmp):
    (tmp / "rules.d").write_text("not a directory\n")
    return str(tmp / "rules.d/05-hostdev-vfio.rules"), "a parent of this path is not a directory"


def _state_dir_is_file(tmp):
    (tmp / "state").write_text("not a directory\n")
    return str(tmp / "state/bind-state.json"), "a parent of this path is not a directory"


def _rules_loop(tmp):
    (tmp / "rules.d").mkdir()
    (tmp / "rules.d/05-hostdev-vfio.rules").symlink_to("05-hostdev-vfio.rules")
    return str(tmp / "rules.d/05-hostdev-vfio.rules"), "cannot read the configuration file"


@pytest.mark.parametrize(
    "prepare",
    [
        _non_utf8_state,
        _state_driver_newline,
        _state_module_not_a_name,
        _state_record_not_an_object,
        _non_utf8_rules,
        _binary_rules,
        _rules_is_directory,
        _state_is_directory,
        _rules_parent_is_file,
        _state_dir_is_file,
        _rules_loop,
    ],
)
def test_vfio_bind_refuses_files_it_cannot_edit(lab, prepare):
    host, kernel, tmp = lab
    path, reason = prepare(tmp)
    before = tree_hash(tmp)
    result, failed = run_module(vfio_bind.main, bind_args(host, tmp, address=[E1000E]))
    assert failed, result
    assert f"{path}: {reason}" in result["msg"], result["msg"]
    assert kernel.log == []
    assert tree_hash(tmp) == before


def test_vfio_bind_read_only_rules_dir_fails_before_any_sysfs_write(lab, monkeypatch):
    """A read-only directory: creating the temp file next to the rules file fails (EROFS), before any kernel op."""
    host, kernel, tmp = lab
    (tmp / "rules.d").mkdir()
    real_mkstemp = tempfile.mkstemp

    def mkstemp(*args, **kwargs):
        if kwargs.get("dir") == str(tmp / "rules.d"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
        return real_mkstemp(*args, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    before = tree_hash(tmp)
    result, failed = run_module(vfio_bind.main, bind_args(host, tmp, address=[E1000E]))
    assert failed
    assert f"cannot write {tmp / 'rules.d/05-hostdev-vfio.rules'}: Read-only file system" in result["msg"]
    assert kernel.log == []
    assert tree_hash(tmp) == before


def test_vfio_bind_atomic_move_exception_is_a_message_and_rolls_back(lab, monkeypatch):
    """ansible-core 2.19's atomic_move raises a plain Exception (read-only target): fail_json naming the path,
    every device put back, no temp file left."""
    host, kernel, tmp = lab
    # vfio loaded before, with its /dev/vfio directory, as on a real host: a module load is not undone by a rollback
    kernel.load_module("vfio-pci")
    (host.dev / "vfio").mkdir(exist_ok=True)
    kernel.log.clear()
    rules = tmp / "rules.d/05-hostdev-vfio.rules"

    def atomic_move(self, src, dest, unsafe_writes=False, keep_dest_attrs=True):
        raise Exception(f"Could not replace {dest!r} with {src!r}.")  # what ansible-core 2.19 raises

    monkeypatch.setattr(AnsibleModule, "atomic_move", atomic_move)
    before = tree_hash(tmp)
    result, failed = run_module(vfio_bind.main, bind_args(host, tmp, address=[E1000E]))
    assert failed
    assert f"cannot write {rules}: Could not replace" in result["msg"]
    assert [r["address"] for r in result["rollback"]] == [E1000E]
    assert all(r["restored"] for r in result["rollback"])
    assert read_snapshot(str(host.sys)).devices[E1000E].driver == "e1000e"
    assert tree_hash(tmp) == before  # includes rules.d: no temp file left behind


# -- iommu_facts: garbled host state --------------------------------------------------------------------------------
def facts_args(host):
    return {"sysfs_root": str(host.sys), "proc_root": str(host.proc), "dev_root": str(host.dev), "names": False}


@pytest.mark.parametrize("case", sorted(GARBLED))
def test_iommu_facts_marks_the_garbled_function_and_reports_the_rest(tmp_path, case):
    host = gpu_host(tmp_path)
    clean, failed = run_module(iommu_facts.main, facts_args(host))
    assert not failed
    garble(host, "0000:00:17.0", **GARBLED[case])  # the SATA controller in the chipset group
    before = tree_hash(tmp_path)
    result, failed = run_module(iommu_facts.main, facts_args(host))
    assert not failed, result
    assert tree_hash(tmp_path) == before
    facts, clean_facts = result["ansible_facts"]["iommu"], clean["ansible_facts"]["iommu"]
    sata = next(d for d in facts["devices"] if d["address"] == "0000:00:17.0")
    assert sata["unreadable"].startswith(GARBLED_REASON[case]), sata["unreadable"]
    assert sata["vfio_capable"] is False
    assert (sata["vendor_id"], sata["device_id"], sata["class_code"]) == ("ffff", "ffff", "")
    assert any("0000:00:17.0 is reported as unreadable" in w for w in result["warnings"])
    others = [d for d in facts["devices"] if d["address"] != "0000:00:17.0"]
    assert others == [d for d in clean_facts["devices"] if d["address"] != "0000:00:17.0"]
    assert facts["groups"] == clean_facts["groups"]


def test_iommu_facts_device_class_skips_an_unreadable_function(tmp_path):
    host = gpu_host(tmp_path)
    garble(host, "0000:00:17.0", **GARBLED["class-not-hex"])
    result, failed = run_module(iommu_facts.main, {**facts_args(host), "device_class": ["01"]})
    assert not failed
    assert result["ansible_facts"]["iommu"]["devices"] == []


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("03\n", "control character '\\n'"),
        ("03\x00", "control character '\\x00'"),
        ("0" * 100_000, "longer than 6"),
        ("\uff10\uff13", "is not 2, 4 or 6 hex digits"),  # full-width digits, which str.isdigit() accepts
    ],
)
def test_iommu_facts_refuses_hostile_device_class(tmp_path, value, expected):
    host = gpu_host(tmp_path)
    result, failed = run_module(iommu_facts.main, {**facts_args(host), "device_class": [value]})
    assert failed
    assert "device_class[0]:" in result["msg"] and expected in result["msg"]


def test_iommu_facts_non_utf8_cmdline_and_cpuinfo_are_reported_not_crashed(tmp_path):
    host = gpu_host(tmp_path)
    (host.proc / "cmdline").write_bytes(b'root=/dev/vda1 intel_iommu=on \xff\xfe acpi_osi="!Windows\n')
    (host.proc / "cpuinfo").write_bytes(b"vendor_id\t: Genuine\xffIntel\n")
    result, failed = run_module(iommu_facts.main, facts_args(host))
    assert not failed, result
    facts = result["ansible_facts"]["iommu"]
    assert facts["cmdline"]["intel_iommu"] == "on"
    assert facts["cpu_vendor"] == "genuine\ufffdintel"
    assert len(facts["devices"]) == 12


@pytest.mark.parametrize("root", ["sysfs_root", "proc_root", "dev_root", "modules_root"])
def test_iommu_facts_root_that_is_a_file_is_an_empty_view_not_a_crash(tmp_path, root):
    host = gpu_host(tmp_path / "host")
    (tmp_path / "file").write_text("not a directory\n")
    result, failed = run_module(iommu_facts.main, {**facts_args(host), root: str(tmp_path / "file")})
    assert not failed, result
    facts = result["ansible_facts"]["iommu"]
    assert (facts["devices"] == []) == (root == "sysfs_root")
