# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import hashlib
import os
import stat

import pytest
from ansible_collections.hostdev.vfio.plugins.modules import modprobe_softdep
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module

PATH = "/etc/modprobe.d/hostdev-vfio.conf"


@pytest.fixture
def root(tmp_path):
    (tmp_path / "etc" / "modprobe.d").mkdir(parents=True)
    (tmp_path / "usr" / "sbin").mkdir(parents=True)
    (tmp_path / "usr" / "sbin" / "update-initramfs").write_text("#!/bin/sh\n")
    return tmp_path


def args(root, **kw):
    a = {"root": str(root), "name": "snd_hda_intel", "pre": ["vfio-pci"], "kernel_release": "none"}
    a.update(kw)
    return a


def digest(path):
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def test_check_real_check_real(root):
    conf = root / PATH.lstrip("/")
    result, failed = run_module(
        modprobe_softdep.main, {**args(root), "_ansible_check_mode": True, "_ansible_diff": True}
    )
    assert not failed and result["changed"] is True
    assert result["initramfs_update_needed"] is True
    assert result["diff"]["after"] == "softdep snd_hda_intel pre: vfio-pci\n"
    assert result["diff"]["before_header"] == PATH + " (absent)"
    assert not conf.exists()  # check mode creates nothing

    result, failed = run_module(modprobe_softdep.main, args(root))
    assert not failed and result["changed"] is True
    assert conf.read_text() == "softdep snd_hda_intel pre: vfio-pci\n"
    assert stat.S_IMODE(os.stat(conf).st_mode) == 0o644
    assert result["softdep"] == {"name": "snd_hda_intel", "pre": ["vfio-pci"], "post": []}
    assert result["effective"] == {"path": PATH, "line": 1, "pre": ["vfio-pci"], "post": []}
    assert [p.name for p in conf.parent.iterdir()] == ["hostdev-vfio.conf"]  # no temp file left behind

    mtime = os.stat(conf).st_mtime_ns
    for extra in ({"_ansible_check_mode": True}, {}):
        result, failed = run_module(
            modprobe_softdep.main, {**args(root, name="snd-hda-intel", pre=["vfio_pci"]), **extra}
        )
        assert not failed and result["changed"] is False and result["initramfs_update_needed"] is False
    assert os.stat(conf).st_mtime_ns == mtime


def test_merge_keeps_the_rest_of_the_file_and_backs_up(root):
    conf = root / PATH.lstrip("/")
    conf.write_text("# managed by hand\nsoftdep snd_hda_intel post: snd_hda_codec_hdmi\n\nblacklist pcspkr\n")
    result, failed = run_module(modprobe_softdep.main, {**args(root, backup=True), "_ansible_diff": True})
    assert not failed and result["changed"]
    assert conf.read_text() == (
        "# managed by hand\nsoftdep snd_hda_intel pre: vfio-pci post: snd_hda_codec_hdmi\n\nblacklist pcspkr\n"
    )
    assert result["diff"]["before"].startswith("# managed by hand\nsoftdep snd_hda_intel post:")
    with open(result["backup_file"]) as f:
        assert f.read() == result["diff"]["before"]


def test_absent_removes_the_line_and_the_emptied_file(root):
    conf = root / PATH.lstrip("/")
    run_module(modprobe_softdep.main, args(root))
    result, failed = run_module(modprobe_softdep.main, {**args(root, state="absent"), "_ansible_check_mode": True})
    assert not failed and result["changed"] and conf.exists()
    result, failed = run_module(modprobe_softdep.main, args(root, state="absent"))
    assert not failed and result["changed"] and result["softdep"] is None and result["initramfs_update_needed"]
    assert not conf.exists()
    result, failed = run_module(modprobe_softdep.main, args(root, state="absent"))
    assert not failed and not result["changed"]


@pytest.mark.parametrize(
    ("kw", "needle"),
    [
        ({"pre": ["vfio-pci\ninstall snd_hda_intel /bin/sh -c id"]}, "pre[0]: 'vfio-pci\\ninstall"),
        ({"name": "snd_hda_intel\ninstall x /bin/sh"}, "name: 'snd_hda_intel\\ninstall"),
        ({"pre": [], "post": []}, "needs at least one module"),
        ({"pre": [""]}, "pre[0]: must not be empty"),
        ({"state": "enabled"}, "state"),
        ({"path": "/etc/modprobe.d/vfio"}, "must end in '.conf'"),
    ],
)
def test_bad_input_fails_and_leaves_the_file_alone(root, kw, needle):
    conf = root / PATH.lstrip("/")
    conf.write_text("# mine\nsoftdep snd_hda_intel pre: foo\n")
    before = digest(conf)
    result, failed = run_module(modprobe_softdep.main, args(root, **kw))
    assert failed, result
    assert needle in result["msg"]
    assert digest(conf) == before


def test_warns_about_other_files(root):
    (root / "lib" / "modprobe.d").mkdir(parents=True)
    (root / "lib" / "modprobe.d" / "00-early.conf").write_text("softdep snd_hda_intel pre: other\n")
    result, failed = run_module(modprobe_softdep.main, args(root, kernel_release="6.1.0-x"))
    assert not failed
    assert result["effective"]["path"] == "/lib/modprobe.d/00-early.conf"
    assert "comes first and wins" in " ".join(result["warnings"])


@pytest.mark.parametrize(
    ("builtin_list", "route"),
    [
        ("kernel/sound/pci/hda/snd-hda-intel.ko\n", "vfio-pci is a module in this kernel and loads after the built-in"),
        (
            "kernel/sound/pci/hda/snd-hda-intel.ko\nkernel/drivers/vfio/pci/vfio-pci.ko\n",
            "vfio-pci is built into this kernel too, so the kernel argument vfio-pci.ids=VENDOR:DEVICE",
        ),
    ],
)
def test_softdep_for_a_builtin_driver_is_refused_with_the_route_that_works(root, builtin_list, route):
    builtin = root / "lib" / "modules" / "6.1.0-x" / "modules.builtin"
    builtin.parent.mkdir(parents=True)
    builtin.write_text(builtin_list)
    result, failed = run_module(modprobe_softdep.main, args(root, kernel_release="6.1.0-x"))
    assert failed
    assert "refusing a softdep for snd_hda_intel: it is built into kernel 6.1.0-x (modules.builtin)" in result["msg"]
    assert "bind the device at runtime after boot with hostdev.vfio.vfio_bind" in result["msg"]
    assert route in result["msg"]
    assert not (root / PATH.lstrip("/")).exists()
    # removing one is still allowed
    result, failed = run_module(modprobe_softdep.main, args(root, kernel_release="6.1.0-x", state="absent"))
    assert not failed
