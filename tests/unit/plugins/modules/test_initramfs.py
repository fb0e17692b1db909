# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""hostdev.vfio.initramfs as a module: check mode, idempotence, verification failures."""

from __future__ import annotations

import pytest
from ansible.module_utils import basic
from ansible_collections.hostdev.vfio.plugins.modules import initramfs
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_initramfs import FakeHost
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module

MODS = {"modules": ["vfio", "vfio_iommu_type1", "vfio-pci", "vfio_virqfd"]}


@pytest.fixture
def host(tmp_path, monkeypatch):
    fake = FakeHost(tmp_path)
    fake.broken_generator = False

    def run_command(self, argv, **kwargs):
        argv = [a.rsplit("/", 1)[-1] if i == 0 else a for i, a in enumerate(argv)]
        if fake.broken_generator and argv[0] == "update-initramfs":
            fake.calls.append(argv)
            return 0, "", ""  # claims success, builds nothing
        return fake.run(argv)

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(
        basic.AnsibleModule,
        "get_bin_path",
        lambda self, name, required=False, opt_dirs=None: (
            f"/usr/sbin/{name}" if name in ("update-initramfs", "lsinitramfs") else None
        ),
    )
    fake.args = {"root": str(tmp_path)}
    return fake


def test_check_real_check_real(host):
    conf = host.root / "etc/initramfs-tools/modules"
    before = conf.read_text()
    res, failed = run_module(initramfs.main, {**host.args, **MODS, "_ansible_check_mode": True, "_ansible_diff": True})
    assert not failed and res["changed"] and res["regenerated"] == ["6.1.0-26-amd64"]
    assert conf.read_text() == before and not any(c[0] == "update-initramfs" for c in host.calls)
    assert res["diff"]["after"].endswith("vfio\nvfio_iommu_type1\nvfio-pci\nvfio_virqfd\n# END hostdev-vfio\n")

    res, failed = run_module(initramfs.main, {**host.args, **MODS})
    assert not failed and res["changed"] and res["backend"] == "initramfs-tools"
    assert res["commands"] == [["/usr/sbin/update-initramfs", "-u", "-k", "6.1.0-26-amd64"]]
    assert res["images"]["6.1.0-26-amd64"]["modules"] == ["vfio", "vfio_iommu_type1", "vfio_pci", "vfio_virqfd"]

    for check in (True, False):
        n = len([c for c in host.calls if c[0] == "update-initramfs"])
        res, failed = run_module(initramfs.main, {**host.args, **MODS, "_ansible_check_mode": check})
        assert not failed and not res["changed"] and res["regenerated"] == []
        assert len([c for c in host.calls if c[0] == "update-initramfs"]) == n


def test_files_changed_forces_regeneration_and_verify_files(host):
    run_module(initramfs.main, {**host.args, **MODS})
    (host.root / "etc/modprobe.d/vfio.conf").write_text("options vfio-pci ids=8086:10d3\n")
    res, failed = run_module(
        initramfs.main, {**host.args, **MODS, "files_changed": True, "verify_files": ["/etc/modprobe.d/vfio.conf"]}
    )
    assert (
        not failed and res["changed"] and res["reasons"] == {"6.1.0-26-amd64": "a file copied into the image changed"}
    )
    assert res["images"]["6.1.0-26-amd64"]["files"] == ["/etc/modprobe.d/vfio.conf"]


def test_fails_when_image_lacks_modules_after_regeneration(host):
    host.broken_generator = True
    res, failed = run_module(initramfs.main, {**host.args, **MODS})
    assert failed and "lacks vfio" in res["msg"]


def test_regenerate_never_only_warns(host):
    res, failed = run_module(initramfs.main, {**host.args, **MODS, "regenerate": "never"})
    assert not failed and res["changed"] and res["regenerated"] == []
    assert any("regenerate=never" in w for w in res["warnings"])


def test_relative_verify_file_refused(host):
    res, failed = run_module(initramfs.main, {**host.args, **MODS, "verify_files": ["etc/x"]})
    assert failed and "absolute" in res["msg"]


@pytest.mark.parametrize("name", ["a/b", ".hidden", "two words", "x\ny"])
def test_bad_name_refused(host, name):
    conf = host.root / "etc/initramfs-tools/modules"
    before = conf.read_text()
    res, failed = run_module(initramfs.main, {**host.args, **MODS, "name": name})
    assert failed and repr(name) in res["msg"] and conf.read_text() == before
