# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""GRUB on SUSE and Arch: no /etc/default/grub.d, the family's generator and output path, selected from the host.

Real default files (data/real-grub/families, each with a header naming its source): adding arguments appends one
marked block to /etc/default/grub, sh sourcing the result gives the old arguments plus the new ones, and removing
them gives back the file byte for byte.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _kernel_cmdline as kc

DATA = Path(__file__).resolve().parent / "data" / "real-grub" / "families"
ARGS = [("intel_iommu", "on"), ("iommu", "pt")]


def host(tmp_path, default_file, os_release):
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_bytes((DATA / default_file).read_bytes())
    (tmp_path / "etc/os-release").write_text(os_release)
    return tmp_path


def apply(plan):
    for path, _before, after in plan.files:
        if after is None:
            Path(path).unlink()
        else:
            Path(path).write_text(after)


def sh_default(root):
    script = '. "$1/etc/default/grub"; printf "%s" "$GRUB_CMDLINE_LINUX_DEFAULT"'
    return subprocess.run(["sh", "-c", script, "sh", str(root)], capture_output=True, text=True, check=True).stdout


def plan(root, args, remove):
    family = kc.grub_family(str(root), lambda name: None)
    layout = kc.GRUB_LAYOUTS[family]
    return family, kc.plan_grub(
        str(root), args, remove, "hostdev-vfio", layout["grub_cfg"], layout["regen"], layout["dropin_dir"]
    )


@pytest.mark.parametrize(
    ("default_file", "os_release", "family", "regen"),
    [
        (
            "opensuse-grub.default",
            'NAME="openSUSE Tumbleweed"\nID="opensuse-tumbleweed"\nID_LIKE="opensuse suse"\n',
            "suse",
            ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"],
        ),
        (
            "opensuse-grub.default",
            'NAME="SLES"\nVERSION="15-SP6"\nID="sles"\nID_LIKE="suse"\n',
            "suse",
            ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"],
        ),
        ("arch-grub.default", 'NAME="Arch Linux"\nID=arch\n', "arch", ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"]),
    ],
)
def test_add_then_remove_is_byte_identical(tmp_path, default_file, os_release, family, regen):
    root = host(tmp_path, default_file, os_release)
    original = (root / "etc/default/grub").read_bytes()
    before = sh_default(root)
    got_family, p = plan(root, ARGS, [])
    assert got_family == family
    assert p.commands == [regen]
    assert [f[0] for f in p.files] == [str(root / "etc/default/grub")]  # no drop-in directory, no other file
    apply(p)
    text = (root / "etc/default/grub").read_text()
    assert text.startswith(original.decode())  # every byte of the file kept, the block appended
    assert text[len(original) :].splitlines()[0] == kc.MARKER
    assert f"run {' '.join(regen)} after changing it" in text
    assert sh_default(root) == f"{before} intel_iommu=on iommu=pt"
    assert not (root / "etc/default/grub.d").exists()
    # idempotent: a second plan changes no file (grub.cfg is absent here: nothing to compare with)
    assert plan(root, ARGS, [])[1].files == []
    # removing what was added gives back the file byte for byte
    _f, p = plan(root, [], ARGS)
    apply(p)
    assert (root / "etc/default/grub").read_bytes() == original


def test_remove_an_argument_of_the_distribution_line_and_keep_the_rest(tmp_path):
    root = host(tmp_path, "opensuse-grub.default", 'ID="opensuse-leap"\nID_LIKE="suse opensuse"\n')
    _f, p = plan(root, [("iommu", "pt")], [("quiet", None)])
    apply(p)
    text = (root / "etc/default/grub").read_text()
    assert 'GRUB_CMDLINE_LINUX_DEFAULT="splash=silent preempt=full mitigations=auto security=apparmor ' in text
    assert sh_default(root).endswith(" iommu=pt") and " quiet" not in sh_default(root)


def test_a_hand_edited_block_is_refused(tmp_path):
    root = host(tmp_path, "arch-grub.default", "ID=arch\n")
    apply(plan(root, ARGS, [])[1])
    path = root / "etc/default/grub"
    path.write_text(
        path.read_text().replace('GRUB_CMDLINE_LINUX_DEFAULT="$GRUB', 'GRUB_CMDLINE_LINUX_DEFAULT="x $GRUB')
    )
    with pytest.raises(kc.CmdlineError, match="changed by hand"):
        plan(root, ARGS, [])


@pytest.mark.parametrize(
    ("os_release", "tools", "family"),
    [
        ('ID="ubuntu"\nID_LIKE=debian\n', {"grub-mkconfig", "update-grub"}, "debian"),
        ("ID=debian\n", set(), "debian"),
        ('ID="manjaro"\nID_LIKE="arch"\n', set(), "arch"),
        ('ID="opensuse-microos"\nID_LIKE="suse opensuse opensuse-tumbleweed"\n', set(), "suse"),
        ("", {"grub2-mkconfig"}, "suse"),
        ("", {"grub-mkconfig"}, "arch"),
        ("", {"grub-mkconfig", "update-grub"}, "debian"),
        ("", set(), None),
    ],
)
def test_family_from_os_release_then_tools(tmp_path, os_release, tools, family):
    if os_release:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc/os-release").write_text(os_release)
    assert kc.grub_family(str(tmp_path), lambda name: f"/usr/sbin/{name}" if name in tools else None) == family


def test_detect_backend_finds_grub_on_suse_and_arch(tmp_path):
    root = host(tmp_path, "opensuse-grub.default", 'ID="sles"\nID_LIKE="suse"\n')
    tools = {"grub2-mkconfig"}

    def which(name):
        return f"/usr/sbin/{name}" if name in tools else None

    assert kc.detect_backend(str(root), which, lambda argv: (1, "", ""))[0] == "grub"
    tools = set()
    backend, tried = kc.detect_backend(str(root), which, lambda argv: (1, "", ""))
    assert backend == "" and "grub2-mkconfig" in tried[-1]
