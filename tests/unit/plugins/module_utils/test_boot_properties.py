# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18, property tests: hostile strings for kernel arguments, kernel releases and module names.

Every generated value is either refused (a CmdlineError / InitramfsError naming the field) or it round-trips: the
edited /etc/default/grub and the drop-in, sourced by /bin/sh, give exactly the arguments that were there plus
the requested one (sh printing nothing on stderr, so it ran nothing else), and every line that needed no edit
keeps its bytes; an accepted release reaches the generator's argv as one plain directory name.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from ansible_collections.hostdev.vfio.plugins.module_utils import _initramfs as ir
from ansible_collections.hostdev.vfio.plugins.module_utils import _kernel_cmdline as kc
from ansible_collections.hostdev.vfio.plugins.module_utils import _validate
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

# Characters with a meaning to sh, GRUB, the kernel's parser, kmod or a path, and control characters.
_HOSTILE = [*";|&$`'\"\\ \t\n\r\x00\x0b\x0c\x7f\x85\u2028()<>*?~#!={}[],:./-_%@^+", "$(reboot)", "`id`"]
_piece = st.lists(
    st.one_of(st.sampled_from(_HOSTILE), st.characters(codec="utf-8"), st.sampled_from(list("aZ09"))),
    max_size=14,
).map("".join)
_name = st.one_of(st.from_regex(r"[a-z][a-z0-9_.-]{0,10}", fullmatch=True), _piece)
hostile_arg = st.one_of(
    _piece,
    st.builds(lambda n, v: f"{n}={v}", _name, _piece),
    st.sampled_from(["iommu=pt", "iommu=1", "console=ttyS0,115200n8", "quiet", "intel_iommu=on", "splash="]),
)

# A base file with a plain line, an escaped (known) line and an unrelated line, LINUX before DEFAULT.
BASE = (
    "# /etc/default/grub\n"
    'GRUB_CMDLINE_LINUX="console=ttyS0,115200n8 iommu=1"\n'
    'GRUB_CMDLINE_LINUX_DEFAULT="quiet acpi_osi=\\"!Windows 2012\\""\n'
    "GRUB_TIMEOUT=5\n"
)


def sh_cmdline(root: Path) -> str:
    script = (
        '. "$1/etc/default/grub"; for f in "$1"/etc/default/grub.d/*.cfg; do [ -e "$f" ] && . "$f"; done; '
        'printf "%s %s" "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"'
    )
    res = subprocess.run(["/bin/sh", "-c", script, "sh", str(root)], capture_output=True, text=True, check=False)
    assert res.returncode == 0 and res.stderr == "", res.stderr
    return res.stdout


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(hostile_arg)
def test_kernel_arg_refused_or_read_back_by_sh(value):
    try:
        request = kc.parse_request([value], "args")
    except kc.CmdlineError as exc:
        assert str(exc).startswith("args[0]: ")
        event("refused")
        return
    event("accepted")
    # accepted: only characters GRUB's and sh's double quoting carry unchanged
    assert not set(value) & set(";|&$`'\"\\ \t\n\r\x00()<>#")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "etc/default/grub.d").mkdir(parents=True)
        (root / "etc/default/grub").write_text(BASE)
        before = kc.parse_cmdline(sh_cmdline(root))
        try:
            plan = kc.plan_grub(str(root), request, [], "hostdev-vfio")
        except kc.CmdlineError as exc:  # the edit would touch the escaped line: refused, the line named
            assert "line 3" in str(exc)
            return
        for path, _before, after in plan.files:
            Path(path).write_text(after)
        assert kc.parse_cmdline(sh_cmdline(root)) == kc.apply_cmdline(before, request, [])
        edited = (root / "etc/default/grub").read_text().split("\n")
        for old, new in zip(BASE.split("\n"), edited, strict=True):
            assert new == old or old.startswith("GRUB_CMDLINE_LINUX=")  # only the plain line may change
        again = kc.plan_grub(str(root), request, [], "hostdev-vfio")
        assert again.files == []


# Mostly valid arguments (with names that collide with the base file's), some hostile: the interesting case is
# a request that passes validation and edits or removes what is already there.
_valid_arg = st.one_of(
    st.from_regex(r"[a-z][a-z0-9_.-]{0,6}(=[A-Za-z0-9_.,:+/=@%^~!*-]{0,8})?", fullmatch=True),
    st.sampled_from(["iommu=pt", "iommu=1", "iommu", "console=ttyS0,115200n8", "console", "quiet", "splash"]),
)
_mixed_arg = st.one_of(_valid_arg, _valid_arg, _valid_arg, hostile_arg)


@settings(max_examples=400, deadline=None)
@given(st.lists(_mixed_arg, min_size=1, max_size=4), st.lists(_mixed_arg, max_size=3))
def test_remove_and_add_refused_or_sh_round_trip(add, remove):
    try:
        args = kc.parse_request(add, "args")
        drop = kc.parse_request(remove, "remove")
    except kc.CmdlineError as exc:
        assert str(exc).startswith(("args[", "remove["))
        return
    if kc.conflicts(args, drop):
        event("conflicting request")
        return
    event("accepted")
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "etc/default/grub.d").mkdir(parents=True)
        plain = BASE.replace('acpi_osi=\\"!Windows 2012\\"', "splash")
        (root / "etc/default/grub").write_text(plain)
        before = kc.parse_cmdline(sh_cmdline(root))
        plan = kc.plan_grub(str(root), args, drop, "hostdev-vfio")
        for path, _before, after in plan.files:
            if after is None:
                os.unlink(path)
            else:
                Path(path).write_text(after)
        after = kc.parse_cmdline(sh_cmdline(root))
        assert kc.satisfied(after, args, drop)
        # nothing but the requested change: every other argument is still there, in order
        touched = {kc.canonical_name(n) for n, _v in args + drop}
        assert [a for a in after if kc.canonical_name(a[0]) not in touched] == [
            a for a in before if kc.canonical_name(a[0]) not in touched
        ]


_release = st.one_of(
    _piece,
    st.from_regex(r"[0-9]\.[0-9]{1,2}\.[0-9]-[a-z0-9]{1,8}", fullmatch=True),
    st.builds(lambda a, b: a + b, st.sampled_from(["6.1.0-26-amd64", "../", "/", "-"]), _piece),
)


@settings(max_examples=300, deadline=None)
@given(_release)
def test_kernel_release_refused_or_one_plain_directory_name(release):
    try:
        ir.validate_request(["vfio"], [release])
    except ir.InitramfsError as exc:
        assert str(exc).startswith("kernel_versions[0]: ")
        event("refused")
        return
    event("accepted")
    assert _validate.KERNEL_RELEASE_RE.fullmatch(release) and not release.startswith("-")
    assert os.path.dirname(os.path.normpath(os.path.join("/lib/modules", release))) == "/lib/modules"
    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "etc/initramfs-tools").mkdir(parents=True)

        def run(argv):
            raise AssertionError(f"no image exists, nothing to list: {argv}")

        plan = ir.plan_initramfs(
            str(root),
            "initramfs-tools",
            ["vfio"],
            True,
            "auto",
            [release],
            [],
            False,
            "hostdev-vfio",
            run,
            {"update-initramfs": "update-initramfs", "lsinitramfs": "lsinitramfs"},
        )
        assert plan.commands == [["update-initramfs", "-u", "-k", release]]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.one_of(_piece, st.sampled_from(["vfio", "vfio-pci", "vfio_pci"])), min_size=1, max_size=4))
def test_module_names_refused_or_one_line_each(modules):
    try:
        names = ir.validate_modules(modules)
    except ir.InitramfsError as exc:
        assert str(exc).startswith("modules[")
        return
    text = ir.edit_modules_file("# List of modules\n", names, True)
    listed = [ln for ln in text.split("\n") if ln and not ln.startswith("#")]
    assert listed == names  # one line per module, nothing split or merged
    assert ir.edit_modules_file(text, names, False) == "# List of modules\n"
