# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""initramfs backends against fake /etc, /lib/modules and /boot trees and fake generators/listers."""

from __future__ import annotations

import os

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _initramfs as ir
from ansible_collections.hostdev.vfio.plugins.module_utils._initramfs import InitramfsError
from hypothesis import given
from hypothesis import strategies as st

VFIO = ["vfio", "vfio_iommu_type1", "vfio_pci", "vfio_virqfd"]
TOOLS = {
    "update-initramfs": "update-initramfs",
    "lsinitramfs": "lsinitramfs",
    "dracut": "dracut",
    "lsinitrd": "lsinitrd",
    "mkinitcpio": "mkinitcpio",
    "lsinitcpio": "lsinitcpio",
}
_KO = {
    "vfio": "kernel/drivers/vfio/vfio.ko",
    "vfio_iommu_type1": "kernel/drivers/vfio/vfio_iommu_type1.ko",
    "vfio_pci": "kernel/drivers/vfio/pci/vfio-pci.ko",
    "vfio_pci_core": "kernel/drivers/vfio/pci/vfio-pci-core.ko",
    "vfio_virqfd": "kernel/drivers/vfio/vfio_virqfd.ko",
    "virtio_blk": "kernel/drivers/block/virtio_blk.ko",
}


class FakeHost:
    """A root with kernels, images stored as plain-text listings, and generators that honour the configuration."""

    def __init__(self, root, kernels=("6.1.0-26-amd64",), flavour="initramfs-tools"):
        self.root, self.flavour, self.calls = root, flavour, []
        for ver in kernels:
            moddir = root / "lib/modules" / ver
            moddir.mkdir(parents=True)
            names = [n for n in _KO if n != "vfio_virqfd" or ir.kernel_tuple(ver) < (6, 2)]
            (moddir / "modules.dep").write_text("".join(f"{_KO[n]}.zst:\n" for n in names))
            (moddir / "modules.builtin").write_text("")
            (root / "boot").mkdir(exist_ok=True)
            (root / f"boot/vmlinuz-{ver}").write_text("")
            self.build(ver)
        (root / "etc/modprobe.d").mkdir(parents=True, exist_ok=True)
        if flavour == "initramfs-tools":
            (root / "etc/initramfs-tools").mkdir(parents=True, exist_ok=True)
            (root / "etc/initramfs-tools/modules").write_text("# List of modules\nvirtio_blk\n")
        elif flavour == "dracut":
            (root / "etc/dracut.conf.d").mkdir(parents=True, exist_ok=True)
        else:
            (root / "etc/mkinitcpio.conf.d").mkdir(parents=True, exist_ok=True)

    def image(self, ver):
        if self.flavour == "initramfs-tools":
            return self.root / f"boot/initrd.img-{ver}"
        return self.root / f"boot/initramfs-{ver}.img"

    def wanted(self):
        if self.flavour == "initramfs-tools":
            text = ir.read_conf(str(self.root / "etc/initramfs-tools/modules")) or ""
            return [ln.split()[0] for ln in text.splitlines() if ln.strip() and not ln.startswith("#")]
        return self.lists()[0]

    def lists(self):
        """(modules, files) of the generator's drop-in (dracut, mkinitcpio)."""
        if self.flavour == "dracut":
            return ir.dracut_lists(ir.read_conf(str(self.root / "etc/dracut.conf.d/hostdev-vfio.conf")))
        return ir.mkinitcpio_lists(ir.read_conf(str(self.root / "etc/mkinitcpio.conf.d/hostdev-vfio.conf")))

    def copied_files(self):
        """What each generator copies of /etc: initramfs-tools every modprobe.d file and every udev rule (into
        lib/udev/rules.d), dracut (not hostonly) and mkinitcpio only the files their configuration names."""
        if self.flavour == "initramfs-tools":
            out = []
            for sub, inside in (("etc/modprobe.d", "etc/modprobe.d"), ("etc/udev/rules.d", "usr/lib/udev/rules.d")):
                if (self.root / sub).is_dir():
                    out += [f"{inside}/{f}" for f in sorted(os.listdir(self.root / sub))]
            return out
        return [f.lstrip("/") for f in self.lists()[1] if (self.root / f.lstrip("/")).exists()]

    def build(self, ver):
        mods = ["virtio_blk"] + (self.wanted() if (self.root / "etc").exists() else [])
        if "vfio_pci" in [ir.norm(m) for m in mods]:
            mods.append("vfio_pci_core")
        dep = ir.read_conf(str(self.root / f"lib/modules/{ver}/modules.dep")) or ""
        lines = [".", "usr/lib/modules", f"usr/lib/modules/{ver}/modules.dep"]
        for m in mods:
            for dl in dep.splitlines():
                if ir.norm(os.path.basename(dl.split(":")[0]).split(".ko")[0]) == ir.norm(m):
                    lines.append(f"usr/lib/modules/{ver}/{dl.split(':')[0]}")
        if (self.root / "etc").exists():
            lines += self.copied_files()
        self.image(ver).write_text("\n".join(lines) + "\n")

    def run(self, argv):
        self.calls.append(argv)
        if argv[0] == "update-initramfs":
            self.build(argv[3])
            return 0, "", ""
        if argv[0] == "dracut":
            self.build(argv[3])
            return 0, "", ""
        if argv[0] == "mkinitcpio":
            for ver in os.listdir(self.root / "lib/modules"):
                self.build(ver)
            return 0, "", ""
        image = argv[-1]
        if not os.path.exists(image):
            return 1, "", f"{image}: No such file"
        with open(image) as f:
            paths = f.read().split()
        if argv[0] == "lsinitramfs":
            return 0, "\n".join(paths) + "\n", ""
        # lsinitrd / lsinitcpio -l: ls -l like lines
        return 0, "".join(f"-rw-r--r--   1 root root   1234 Jan  1 00:00 {p}\n" for p in paths), ""

    def plan(
        self, modules=None, present=True, regenerate="auto", files=(), files_changed=False, kernels=None, carry=()
    ):
        modules = VFIO if modules is None else modules
        return ir.plan_initramfs(
            str(self.root),
            self.flavour,
            modules,
            present,
            regenerate,
            kernels,
            list(files),
            files_changed,
            "hostdev-vfio",
            self.run,
            TOOLS,
            list(carry),
        )

    def apply(self, plan):
        if plan.config_changed:
            if plan.config_after is None:
                os.unlink(plan.config_path)
            else:
                with open(plan.config_path, "w") as f:
                    f.write(plan.config_after)
        for argv in plan.commands:
            self.run(argv)
        return ir.verify(plan, str(self.root), plan.modules_by_kernel is not None, self.run, TOOLS)


B = "# BEGIN hostdev-vfio: managed by hostdev.vfio.initramfs, do not edit by hand\n"
E = "# END hostdev-vfio\n"


@pytest.mark.parametrize(
    ("text", "mods", "present", "expected"),
    [
        ("# c\nvirtio_blk\n", ["vfio", "vfio-pci"], True, "# c\nvirtio_blk\n" + B + "vfio\nvfio-pci\n" + E),
        ("virtio_blk", ["vfio"], True, "virtio_blk\n" + B + "vfio\n" + E),
        ("vfio_pci ids=1\n", ["vfio-pci"], True, "vfio_pci ids=1\n"),
        ("a\n" + B + "vfio\n" + E + "b\n", ["vfio", "vfio_pci"], True, "a\n" + B + "vfio\nvfio_pci\n" + E + "b\n"),
        ("# c\n" + B + "vfio\nvfio-pci  \n" + E, ["vfio", "vfio_pci"], False, "# c\n"),
        ("a\n" + B + "vfio\nvfio_pci\n" + E + "b\n", ["vfio_pci"], False, "a\n" + B + "vfio\n" + E + "b\n"),
        # Lines outside the block were there before this module: state=absent leaves them alone.
        ("# c\nvfio\nvirtio_blk\nvfio-pci  \n", ["vfio", "vfio_pci"], False, "# c\nvfio\nvirtio_blk\nvfio-pci  \n"),
        (None, ["vfio"], True, B + "vfio\n" + E),
    ],
)
def test_edit_modules_file(text, mods, present, expected):
    assert ir.edit_modules_file(text, mods, present) == expected


def test_edit_modules_file_unterminated_block_is_refused():
    with pytest.raises(ir.InitramfsError, match="no matching"):
        ir.edit_modules_file("a\n" + B + "vfio\n", ["vfio"], False)


def test_remove_keeps_lines_that_were_there_before():
    """The lab failure: the admin (or another tool) listed vfio_pci before us; add + remove must restore the file."""
    before = "# List of modules\nvirtio_blk\nvfio_pci ids=8086:293e\nvfio\n"
    added = ir.edit_modules_file(before, VFIO, True)
    assert added == before + B + "vfio_iommu_type1\nvfio_virqfd\n" + E
    assert ir.edit_modules_file(added, VFIO, False) == before


@given(st.lists(st.from_regex(r"(#.*|[a-z_]{1,8}( x=1)?|\s*)", fullmatch=True), max_size=8))
def test_edit_modules_file_keeps_unrelated_lines(lines):
    text = "".join(ln + "\n" for ln in lines)
    after = ir.edit_modules_file(text, ["vfio_zz"], True)
    assert after == text + B + "vfio_zz\n" + E
    assert ir.edit_modules_file(after, ["vfio-zz"], False) == text


@given(
    st.lists(st.from_regex(r"(#.*|[a-z_]{1,8}( x=1)?|\s*)", fullmatch=True), max_size=8),
    st.lists(st.sampled_from(["vfio", "vfio_pci", "vfio-pci", "vfio_iommu_type1", "kvm"]), max_size=4),
)
def test_add_then_remove_restores_any_file(lines, mods):
    text = "".join(ln + "\n" for ln in lines)
    assert ir.edit_modules_file(ir.edit_modules_file(text, mods, True), mods, False) == text


@pytest.mark.parametrize(
    ("version", "has_virqfd"),
    [
        ("5.15.0-91-generic", True),
        ("6.1.0-26-amd64", True),
        ("6.2.0", False),
        ("4.18.0-513.el8.x86_64", True),
        ("6.10.3-arch1-1", False),
    ],
)
def test_virqfd_only_before_6_2(version, has_virqfd):
    assert ("vfio_virqfd" in ir.modules_for_kernel(VFIO, version)) is has_virqfd


def test_parse_listing_formats():
    lsinitrd = (
        "Image: /boot/initramfs-6.8.img: 30M\n========\n"
        "drwxr-xr-x  12 root root   0 Jan  1 00:00 .\n"
        "-rw-r--r--   1 root root  12 Jan  1 00:00 usr/lib/modules/6.8/kernel/drivers/vfio/vfio.ko.xz\n"
        "lrwxrwxrwx   1 root root   7 Jan  1 00:00 lib -> usr/lib\n"
        "crw-r--r--   1 root root   5,   1 Dec  4 03:41 dev/console\n"
        "-rw-r--r--   1 root root  12 Jan  1 00:00 etc/a name with spaces.conf\n"
        "-rw-r--r--   1 root root  12 Jan  1 00:00 ./.hidden/x\n"
    )
    assert ir.parse_listing(lsinitrd)[-5:] == [
        "usr/lib/modules/6.8/kernel/drivers/vfio/vfio.ko.xz",
        "lib",
        "dev/console",
        "etc/a name with spaces.conf",
        ".hidden/x",
    ]
    mods, _files = ir.image_contents(ir.parse_listing(lsinitrd))
    assert mods == {"vfio"}


def test_initramfs_tools_add_idempotent_and_remove(tmp_path):
    host = FakeHost(tmp_path)
    plan = host.plan()
    assert (
        plan.config_after
        == "# List of modules\nvirtio_blk\n" + B + "vfio\nvfio_iommu_type1\nvfio_pci\nvfio_virqfd\n" + E
    )
    assert plan.regenerate == ["6.1.0-26-amd64"] and plan.reasons["6.1.0-26-amd64"] == "configuration changed"
    assert plan.commands == [["update-initramfs", "-u", "-k", "6.1.0-26-amd64"]]
    assert plan.warnings == []  # 6.1 still has vfio_virqfd
    assert host.apply(plan) == []
    assert plan.images["6.1.0-26-amd64"]["modules"] == VFIO
    again = host.plan()
    assert not again.changed and again.commands == []
    removed = host.plan(present=False)
    assert removed.config_after == "# List of modules\nvirtio_blk\n" and removed.regenerate == ["6.1.0-26-amd64"]
    host.apply(removed)
    assert "vfio.ko" not in host.image("6.1.0-26-amd64").read_text()
    assert not host.plan(present=False).changed


def test_initramfs_tools_regenerates_stale_image_and_on_files_changed(tmp_path):
    host = FakeHost(tmp_path)
    (tmp_path / "etc/initramfs-tools/modules").write_text("vfio\nvfio_iommu_type1\nvfio_pci\nvfio_virqfd\n")
    plan = host.plan()  # config right, image built before: stale
    assert not plan.config_changed and plan.regenerate == ["6.1.0-26-amd64"]
    assert plan.reasons["6.1.0-26-amd64"].startswith("image lacks vfio")
    host.apply(plan)
    assert not host.plan().changed
    (tmp_path / "etc/modprobe.d/vfio.conf").write_text("options vfio-pci ids=8086:10d3\n")
    plan = host.plan(files=["/etc/modprobe.d/vfio.conf"])
    assert plan.reasons == {"6.1.0-26-amd64": "image lacks /etc/modprobe.d/vfio.conf"}
    host.apply(plan)
    plan = host.plan(files=["/etc/modprobe.d/vfio.conf"], files_changed=True)
    assert plan.reasons == {"6.1.0-26-amd64": "a file copied into the image changed"}
    assert host.plan(regenerate="never", files_changed=True).regenerate == []
    assert host.plan(regenerate="always").regenerate == ["6.1.0-26-amd64"]


def test_virqfd_left_out_for_new_kernels(tmp_path):
    host = FakeHost(tmp_path, kernels=("6.8.0-45-generic",))
    plan = host.plan()
    assert plan.config_after.endswith("virtio_blk\n" + B + "vfio\nvfio_iommu_type1\nvfio_pci\n" + E) and plan.warnings
    assert host.apply(plan) == []
    assert plan.images["6.8.0-45-generic"]["modules"] == ["vfio", "vfio_iommu_type1", "vfio_pci"]


def test_every_installed_kernel_and_virqfd_per_kernel(tmp_path):
    host = FakeHost(tmp_path, kernels=("5.15.0-91-generic", "6.8.0-45-generic"))
    (tmp_path / "lib/modules/6.0.0-old").mkdir()  # no kernel image: not a target
    plan = host.plan()
    assert plan.kernels == ["5.15.0-91-generic", "6.8.0-45-generic"]
    assert plan.config_after.endswith("vfio\nvfio_iommu_type1\nvfio_pci\nvfio_virqfd\n" + E)
    assert plan.modules_by_kernel["5.15.0-91-generic"] == VFIO
    assert "vfio_virqfd" not in plan.modules_by_kernel["6.8.0-45-generic"]
    assert host.apply(plan) == []
    assert len(plan.commands) == 2
    assert "vfio_virqfd" in plan.images["5.15.0-91-generic"]["modules"]


def test_unknown_module_refused(tmp_path):
    host = FakeHost(tmp_path)
    with pytest.raises(InitramfsError, match="does not exist"):
        host.plan(modules=["vfio_pcii"])
    with pytest.raises(InitramfsError, match="is not a kernel module name"):
        host.plan(modules=["vfio pci"])


def test_builtin_module_counts_as_present(tmp_path):
    host = FakeHost(tmp_path)
    (tmp_path / "lib/modules/6.1.0-26-amd64/modules.builtin").write_text("kernel/drivers/vfio/vfio.ko\n")
    plan = host.plan(modules=["vfio"])
    (tmp_path / "etc/initramfs-tools/modules").write_text("vfio\n")
    plan = host.plan(modules=["vfio"])
    assert plan.regenerate == [] and plan.images["6.1.0-26-amd64"]["builtin"] == ["vfio"]


def test_dracut_dropin(tmp_path):
    host = FakeHost(tmp_path, kernels=("6.8.5-301.fc40.x86_64",), flavour="dracut")
    plan = host.plan()
    assert plan.config_path == str(tmp_path / "etc/dracut.conf.d/hostdev-vfio.conf")
    assert 'force_drivers+=" vfio vfio_iommu_type1 vfio_pci "' in plan.config_after
    image = str(tmp_path / "boot/initramfs-6.8.5-301.fc40.x86_64.img")
    assert plan.commands == [["dracut", "-f", "--kver", "6.8.5-301.fc40.x86_64", image]]
    assert host.apply(plan) == []
    assert not host.plan().changed
    gone = host.plan(present=False)
    assert gone.config_after is None
    host.apply(gone)
    assert not os.path.exists(gone.config_path) and not host.plan(present=False).changed


def test_mkinitcpio_dropin_and_preset_images(tmp_path):
    host = FakeHost(tmp_path, kernels=("6.10.3-arch1-1",), flavour="mkinitcpio")
    plan = host.plan()
    assert "MODULES+=(vfio vfio_iommu_type1 vfio_pci)" in plan.config_after
    assert plan.commands == [["mkinitcpio", "-P"]]
    assert host.apply(plan) == []
    assert not host.plan().changed
    assert list(plan.images) == ["initramfs-6.10.3-arch1-1.img"]


def test_mkinitcpio_without_confd_is_a_clear_failure(tmp_path):
    host = FakeHost(tmp_path, kernels=("6.10.3-arch1-1",), flavour="mkinitcpio")
    os.rmdir(tmp_path / "etc/mkinitcpio.conf.d")
    with pytest.raises(InitramfsError, match=r"mkinitcpio\.conf\.d"):
        host.plan()


def test_no_kernel_found(tmp_path):
    with pytest.raises(InitramfsError, match="no installed kernel"):
        ir.plan_initramfs(str(tmp_path), "dracut", VFIO, True, "auto", None, [], False, "x", None, TOOLS)


def test_detect_backend(tmp_path):
    (tmp_path / "etc/initramfs-tools").mkdir(parents=True)
    (tmp_path / "etc/dracut.conf.d").mkdir(parents=True)
    assert ir.detect_backend(str(tmp_path), lambda n: n if n in ("update-initramfs", "dracut") else None) == (
        "initramfs-tools"
    )
    assert ir.detect_backend(str(tmp_path), lambda n: n if n == "dracut" else None) == "dracut"
    assert ir.detect_backend(str(tmp_path), lambda n: n if n == "mkinitcpio" else None) == "mkinitcpio"
    assert ir.detect_backend(str(tmp_path), lambda n: None) == ""


RULE = "/etc/udev/rules.d/05-hostdev-vfio.rules"
CONF = "/etc/modprobe.d/hostdev-vfio-passthrough.conf"


def _write_carried(root):
    (root / "etc/udev/rules.d").mkdir(parents=True, exist_ok=True)
    (root / RULE.lstrip("/")).write_text('ACTION=="add", KERNEL=="0000:00:04.0", ATTR{driver_override}="vfio-pci"\n')
    (root / CONF.lstrip("/")).write_text("softdep e1000e pre: vfio-pci\n")


@pytest.mark.parametrize(
    ("flavour", "line"),
    [
        ("dracut", f'install_items+=" {CONF} {RULE} "'),
        ("mkinitcpio", f"FILES+=({CONF} {RULE})"),
    ],
)
def test_carried_files_enter_the_drop_in_and_the_image_and_leave_again(tmp_path, flavour, line):
    host = FakeHost(tmp_path, flavour=flavour)
    _write_carried(tmp_path)
    # Without `files` the generator leaves both out: verify_files alone reports them missing after regeneration.
    plan = host.plan(files=[CONF, RULE])
    problems = host.apply(plan)
    assert problems and all(CONF in p and RULE in p for p in problems)
    plan = host.plan(carry=[CONF, RULE])
    assert plan.config_changed and line in plan.config_after
    assert plan.verify_files == [CONF, RULE]
    assert host.apply(plan) == []
    image = host.image("6.1.0-26-amd64").read_text().split()
    assert CONF.lstrip("/") in image and RULE.lstrip("/") in image
    again = host.plan(carry=[RULE])  # present is additive: naming one file keeps the other
    assert not again.changed
    # absent: the files leave the drop-in with the modules; an empty drop-in is removed
    gone = host.plan(present=False, carry=[CONF, RULE])
    assert gone.config_after is None and gone.regenerate
    host.apply(gone)
    assert RULE.lstrip("/") not in host.image("6.1.0-26-amd64").read_text()


def test_carried_files_on_initramfs_tools_are_verified_not_configured(tmp_path):
    host = FakeHost(tmp_path)
    _write_carried(tmp_path)
    plan = host.plan(carry=[CONF, RULE])
    assert "05-hostdev-vfio.rules" not in (plan.config_after or "") and CONF not in plan.config_after
    assert host.apply(plan) == []
    listing = host.image("6.1.0-26-amd64").read_text().split()
    # the udev hook puts the rule under lib/udev/rules.d: that counts as carried
    assert "usr/lib/udev/rules.d/05-hostdev-vfio.rules" in listing and RULE.lstrip("/") not in listing
    info = host.plan(carry=[CONF, RULE]).images["6.1.0-26-amd64"]
    assert info["files"] == [CONF, RULE] and info["missing_files"] == []


def test_a_carried_file_the_generator_does_not_copy_is_reported(tmp_path):
    host = FakeHost(tmp_path)
    (tmp_path / "etc/vfio-extra.conf").write_text("x\n")
    plan = host.plan(carry=["/etc/vfio-extra.conf"], regenerate="always")
    assert host.apply(plan) == [f"{host.image('6.1.0-26-amd64')} lacks /etc/vfio-extra.conf"]


@pytest.mark.parametrize(
    "bad",
    [
        "etc/x.conf",
        "/etc/a b.conf",
        '/etc/x"; rm -rf /',
        "/etc/$(id).conf",
        "/etc/x)\nFILES+=(/y",
        "/etc/../x",
        "/etc/./x",
        "",
        "/etc/x\n",
        "/etc/`id`",
        "/etc/x;y",
        "/" + "a" * 1100,
    ],
)
def test_hostile_carried_files_are_refused_before_anything_is_read(tmp_path, bad):
    host = FakeHost(tmp_path, flavour="dracut")
    with pytest.raises(InitramfsError, match=r"^files\[0\]: "):
        host.plan(carry=[bad])
    assert host.calls == [] and not (tmp_path / "etc/dracut.conf.d/hostdev-vfio.conf").exists()
