# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel command line: parser, renderer, apply rules, value checks and every backend against fake trees/commands."""

from __future__ import annotations

import re
import subprocess

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _kernel_cmdline as kc
from ansible_collections.hostdev.vfio.plugins.module_utils._kernel_cmdline import (
    CmdlineError,
    apply_cmdline,
    parse_cmdline,
    parse_request,
    render_cmdline,
    satisfied,
    value_problem,
)
from hypothesis import given
from hypothesis import strategies as st


# ---------------------------------------------------------------------------------------------------------------
# parse / render / apply
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", []),
        ("  ro  quiet\n", [("ro", None), ("quiet", None)]),
        ("root=UUID=ab-cd ro", [("root", "UUID=ab-cd"), ("ro", None)]),
        ('a="b c" d', [("a", "b c"), ("d", None)]),
        ('"a=b c" d', [("a", "b c"), ("d", None)]),
        ('"flag with space"', [("flag with space", None)]),
        ("x= y", [("x", ""), ("y", None)]),
        ("vfio-pci.ids=10de:1b80,10de:10f0", [("vfio-pci.ids", "10de:1b80,10de:10f0")]),
        ("ro -- single", [("ro", None), ("--", None), ("single", None)]),
        ("\tro\tquiet", [("ro", None), ("quiet", None)]),
    ],
)
def test_parse_cmdline(text, expected):
    assert parse_cmdline(text) == expected


_name = st.from_regex(r"[a-z][a-z0-9_.\-]{0,12}", fullmatch=True).filter(lambda n: n != "--")
_value = st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9,:=./+\-]{0,12}( [a-z]{1,4})?", fullmatch=True))


@given(st.lists(st.tuples(_name, _value), max_size=12))
def test_parse_render_roundtrip(args):
    assert parse_cmdline(render_cmdline(args)) == args


@given(st.lists(st.tuples(_name, _value), max_size=10), st.lists(st.tuples(_name, _value), max_size=4))
def test_apply_keeps_unrelated_in_order_and_is_idempotent(current, add):
    add = list({kc.canonical_name(n): (n, v) for n, v in add}.values())
    new = apply_cmdline(current, add, [])
    names = {kc.canonical_name(n) for n, _value in add}
    assert [a for a in new if kc.canonical_name(a[0]) not in names] == [
        a for a in current if kc.canonical_name(a[0]) not in names
    ]
    assert apply_cmdline(new, add, []) == new
    assert satisfied(new, add, [])


def test_apply_replaces_in_place_appends_and_removes():
    cur = parse_cmdline("ro quiet iommu.strict=0 vfio_pci.ids=1 splash iommu.strict=1 -- init")
    new = apply_cmdline(
        cur, [("iommu.strict", "1"), ("vfio-pci.ids", "2"), ("hostdev_vfio_test", "1")], [("quiet", None)]
    )
    assert render_cmdline(new) == "ro iommu.strict=1 vfio_pci.ids=2 splash hostdev_vfio_test=1 -- init"


@pytest.mark.parametrize(
    ("current", "args", "remove", "expected"),
    [
        # x86 acts on every iommu= occurrence: asking for iommu=pt must not lose iommu=1 (issue 18)
        ("iommu=1 quiet iommu=pt", [("iommu", "pt")], [], "iommu=1 quiet iommu=pt"),
        ("iommu=1 quiet", [("iommu", "pt")], [], "iommu=1 quiet iommu=pt"),
        ("iommu=1 quiet iommu=pt", [], [("iommu", "1")], "quiet iommu=pt"),
        ("iommu=1 quiet iommu=pt", [], [("iommu", None)], "quiet"),
        # two consoles: the last one is /dev/console; both stay, in order
        (
            "console=tty0 ro",
            [("console", "tty0"), ("console", "ttyS0,115200")],
            [],
            "console=tty0 ro console=ttyS0,115200",
        ),
        ("console=ttyS0 ro", [("console", "tty0")], [("console", "ttyS0")], "ro console=tty0"),
        # a last-wins parameter keeps the kernel's reading: one value, set in place
        ("intel_iommu=off ro intel_iommu=igfx_off", [("intel_iommu", "on")], [], "intel_iommu=on ro"),
    ],
)
def test_repeatable_parameters_keep_every_occurrence(current, args, remove, expected):
    new = apply_cmdline(parse_cmdline(current), args, remove)
    assert render_cmdline(new) == expected
    assert satisfied(new, args, remove)
    assert apply_cmdline(new, args, remove) == new
    assert kc.missing_and_present(new, args, remove) == ([], [])


def test_apply_remove_by_value_only_drops_that_value():
    cur = parse_cmdline("console=tty0 console=ttyS0 quiet")
    assert render_cmdline(apply_cmdline(cur, [], [("console", "tty0")])) == "console=ttyS0 quiet"
    assert render_cmdline(apply_cmdline(cur, [], [("console", None)])) == "quiet"


@pytest.mark.parametrize(
    ("item", "message"),
    [
        ("a b", "the character ' '"),
        ("iommu=pt quiet", "the character ' '"),
        ("", "must not be empty"),
        ("foo=$(reboot)", "the character '$'"),
        ('foo="a b"', "the character '\"'"),
        ("foo='a'", 'the character "\'"'),
        ("foo=a;reboot", "the character ';'"),
        ("foo;reboot", "the character ';'"),
        ("foo=a|reboot", "the character '|'"),
        ("foo=`reboot`", "the character '`'"),
        ("foo=a\\b", "the character '\\\\'"),
        ("foo=a\x00b", "control character '\\x00'"),
        ("foo=a\nreboot", "control character '\\n'"),
        ("foo=a\tb", "control character '\\t'"),
        ("fo/o=1", "the character '/'"),
        ("--", "no valid parameter name"),
        ("x=" + "a" * 100_000, "longer than 4096"),
    ],
)
def test_parse_request_refuses(item, message):
    with pytest.raises(CmdlineError, match=re.escape(message)) as exc:
        parse_request([item], "args")
    assert "args[0]" in str(exc.value)


@pytest.mark.parametrize(
    ("name", "value", "bad"),
    [
        ("amd_iommu", "on", "does nothing"),
        ("amd_iommu", "force_isolation,pgtbl_v2", None),
        ("amd_iommu", "off", None),
        ("amd-iommu", "enable", "not a value"),
        ("intel_iommu", "on", None),
        ("intel_iommu", "on,igfx_off,sm_on", None),
        ("intel_iommu", "yes", "not a value"),
        ("intel_iommu", None, "needs a value"),
        ("iommu", "pt", None),
        ("iommu", "on", "intel_iommu=on"),
        ("iommu", "soft,nomerge", None),
        ("iommu.passthrough", "1", None),
        ("iommu.strict", "2", "0 or 1"),
        ("iommu.strict", None, "0 or 1"),
        ("vfio-pci.ids", "10de:1b80", None),
    ],
)
def test_value_problem(name, value, bad):
    problem = value_problem(name, value)
    if bad is None:
        assert problem is None
    else:
        assert bad in problem


# ---------------------------------------------------------------------------------------------------------------
# GRUB (Debian): a fake /etc tree; update-grub is simulated by really sourcing the files with sh
# ---------------------------------------------------------------------------------------------------------------
GRUB_DEFAULT = """# If you change this file, run 'update-grub' afterwards.
GRUB_DEFAULT=0
GRUB_TIMEOUT=0
GRUB_DISTRIBUTOR=`lsb_release -i -s 2> /dev/null || echo Debian`
GRUB_CMDLINE_LINUX_DEFAULT="quiet"
GRUB_CMDLINE_LINUX="console=ttyS0,115200n8  intel_iommu=on"
GRUB_TERMINAL=serial
"""


def fake_update_grub(root):
    """What grub-mkconfig does with the command line: source /etc/default/grub and grub.d/*.cfg in a shell."""
    script = (
        '. "$1/etc/default/grub"; for f in "$1"/etc/default/grub.d/*.cfg; do [ -e "$f" ] && . "$f"; done; '
        'printf "%s %s" "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"'
    )
    out = subprocess.run(["sh", "-c", script, "sh", str(root)], capture_output=True, text=True, check=True).stdout
    cfg = root / "boot/grub/grub.cfg"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        "menuentry 'Debian GNU/Linux' {\n"
        f"\tlinux\t/boot/vmlinuz-6.1.0-26-amd64 root=UUID=0c1d ro {' '.join(out.split())}\n"
        "\tinitrd\t/boot/initrd.img-6.1.0-26-amd64\n}\n"
    )


@pytest.fixture
def grub_root(tmp_path):
    (tmp_path / "etc/default/grub.d").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text(GRUB_DEFAULT)
    fake_update_grub(tmp_path)
    return tmp_path


def apply_plan(plan, root=None):
    for path, _before, after in plan.files:
        if after is None:
            import os

            os.unlink(path)
        else:
            with open(path, "w") as f:
                f.write(after)
    for argv in plan.commands:
        if argv == ["update-grub"]:
            fake_update_grub(root)


def test_grub_adds_dropin_and_is_idempotent(grub_root):
    args = [("iommu", "pt"), ("hostdev_vfio_test", "1")]
    plan = kc.plan_grub(str(grub_root), args, [], "hostdev-vfio")
    assert [p for p, _before, _after in plan.files] == [str(grub_root / "etc/default/grub.d/hostdev-vfio.cfg")]
    assert plan.commands == [["update-grub"]]
    assert render_cmdline(plan.cmdline_after).endswith("quiet iommu=pt hostdev_vfio_test=1")
    apply_plan(plan, grub_root)
    assert (grub_root / "etc/default/grub").read_text() == GRUB_DEFAULT
    cfg = kc.grub_cfg_cmdline((grub_root / "boot/grub/grub.cfg").read_text())
    assert (
        render_cmdline(cfg)
        == "root=UUID=0c1d ro console=ttyS0,115200n8 intel_iommu=on quiet iommu=pt hostdev_vfio_test=1"
    )
    again = kc.plan_grub(str(grub_root), args, [], "hostdev-vfio")
    assert not again.changed
    assert plan.verify() == [cfg]


def test_grub_changes_and_removes_in_etc_default_grub_surgically(grub_root):
    plan = kc.plan_grub(str(grub_root), [("intel_iommu", "on,igfx_off")], [("quiet", None)], "hostdev-vfio")
    assert [p for p, _before, _after in plan.files] == [str(grub_root / "etc/default/grub")]
    after = plan.files[0][2]
    assert after == GRUB_DEFAULT.replace('DEFAULT="quiet"', 'DEFAULT=""').replace(
        "intel_iommu=on", "intel_iommu=on,igfx_off"
    )
    apply_plan(plan, grub_root)
    assert not kc.plan_grub(str(grub_root), [("intel_iommu", "on,igfx_off")], [("quiet", None)], "x").changed


def test_grub_remove_cleans_dropin_then_nothing_to_do(grub_root):
    args = [("iommu", "pt"), ("hostdev_vfio_test", "1")]
    apply_plan(kc.plan_grub(str(grub_root), args, [], "hostdev-vfio"), grub_root)
    before_cfg = (grub_root / "boot/grub/grub.cfg").read_text()
    plan = kc.plan_grub(str(grub_root), [], [("iommu", "pt"), ("hostdev_vfio_test", None)], "hostdev-vfio")
    assert plan.files == [(str(grub_root / "etc/default/grub.d/hostdev-vfio.cfg"), plan.files[0][1], None)]
    apply_plan(plan, grub_root)
    assert not (grub_root / "etc/default/grub.d/hostdev-vfio.cfg").exists()
    assert "iommu=pt" in before_cfg and "iommu=pt" not in (grub_root / "boot/grub/grub.cfg").read_text()
    assert not kc.plan_grub(str(grub_root), [], [("iommu", "pt")], "hostdev-vfio").changed


def test_grub_keeps_earlier_arguments_of_its_dropin(grub_root):
    apply_plan(kc.plan_grub(str(grub_root), [("iommu", "pt")], [], "hostdev-vfio"), grub_root)
    apply_plan(kc.plan_grub(str(grub_root), [("vfio-pci.ids", "8086:10d3")], [], "hostdev-vfio"), grub_root)
    cfg = render_cmdline(kc.grub_cfg_cmdline((grub_root / "boot/grub/grub.cfg").read_text()))
    assert cfg.endswith("quiet iommu=pt vfio-pci.ids=8086:10d3")


def test_grub_ignores_comments_of_other_dropins(grub_root):
    (grub_root / "etc/default/grub.d/99-lab.cfg").write_text(
        '# quiet iommu here is prose\nGRUB_CMDLINE_LINUX_DEFAULT="\\${lab_args} ${GRUB_CMDLINE_LINUX_DEFAULT}"\n'
    )
    plan = kc.plan_grub(str(grub_root), [], [("iommu", None)], "hostdev-vfio")
    assert not plan.changed


def test_grub_refuses_to_remove_what_another_dropin_sets(grub_root):
    (grub_root / "etc/default/grub.d/50-cloud.cfg").write_text('GRUB_CMDLINE_LINUX_DEFAULT="$X iommu=soft"\n')
    with pytest.raises(CmdlineError, match=r"50-cloud\.cfg"):
        kc.plan_grub(str(grub_root), [], [("iommu", None)], "hostdev-vfio")


def test_grub_regenerates_a_stale_grub_cfg(grub_root):
    dropin = grub_root / "etc/default/grub.d/hostdev-vfio.cfg"
    dropin.write_text(kc._render_dropin([("iommu", "pt")]))
    plan = kc.plan_grub(str(grub_root), [("iommu", "pt")], [], "hostdev-vfio")
    assert plan.files == [] and plan.commands == [["update-grub"]] and plan.notes


def test_grub_leaves_a_computed_assignment_alone_and_refuses_to_remove_from_it(grub_root):
    text = 'GRUB_CMDLINE_LINUX="$(cat /x)"\n'
    (grub_root / "etc/default/grub").write_text(text)
    plan = kc.plan_grub(str(grub_root), [("iommu", "pt")], [], "hostdev-vfio")
    assert [f[0] for f in plan.files] == [str(grub_root / "etc/default/grub.d/hostdev-vfio.cfg")]
    assert any("line 1" in note for note in plan.notes)
    with pytest.raises(CmdlineError, match=r"line 1 .*cannot tell whether it holds quiet"):
        kc.plan_grub(str(grub_root), [], [("quiet", None)], "hostdev-vfio")


def test_grub_without_etc_default_grub(tmp_path):
    with pytest.raises(CmdlineError, match="does not exist"):
        kc.plan_grub(str(tmp_path), [("iommu", "pt")], [], "hostdev-vfio")


# ---------------------------------------------------------------------------------------------------------------
# grubby, rpm-ostree, proxmox: fake command runners that keep state
# ---------------------------------------------------------------------------------------------------------------
class FakeGrubby:
    def __init__(self, entries):
        self.entries = entries  # kernel -> args
        self.calls = []

    def __call__(self, argv):
        self.calls.append(argv)
        if argv[1] == "--info=ALL":
            out = ""
            for i, (k, a) in enumerate(self.entries.items()):
                out += f'index={i}\nkernel="{k}"\nargs="{a}"\nroot="UUID=1"\ninitrd="/boot/i"\ntitle="t"\n'
            return 0, out, ""
        assert argv[1] == "--update-kernel=ALL"
        for opt in argv[2:]:
            key, _sep, val = opt.partition("=")
            for k, a in self.entries.items():
                cur = parse_cmdline(a)
                if key == "--remove-args":
                    drop = parse_cmdline(val)
                    cur = [c for c in cur if c not in drop and (c[0], None) not in drop]
                else:
                    cur = apply_cmdline(cur, parse_cmdline(val), [])
                self.entries[k] = render_cmdline(cur)
        return 0, "", ""


def test_grubby_updates_all_entries_and_is_idempotent():
    fake = FakeGrubby({"/boot/vmlinuz-6.8": "ro rhgb quiet iommu.strict=0", "/boot/vmlinuz-6.7": "ro rhgb"})
    want = [("iommu.strict", "1"), ("intel_iommu", "on")]
    plan = kc.plan_grubby(fake, want, [("rhgb", None)])
    assert plan.commands == [
        [
            "grubby",
            "--update-kernel=ALL",
            "--remove-args=iommu.strict=0 rhgb",
            "--args=intel_iommu=on iommu.strict=1",
        ]
    ]
    assert [e["after"] for e in plan.entries] == [
        "ro quiet iommu.strict=1 intel_iommu=on",
        "ro iommu.strict=1 intel_iommu=on",
    ]
    for argv in plan.commands:
        fake(argv)
    assert all(satisfied(c, want, [("rhgb", None)]) for c in plan.verify())
    assert not kc.plan_grubby(fake, want, [("rhgb", None)]).changed


def test_grubby_failure_is_reported():
    with pytest.raises(CmdlineError, match="rc=1"):
        kc.plan_grubby(lambda argv: (1, "", "boom"), [("iommu", "pt")], [])


class FakeOstree:
    def __init__(self, kargs):
        self.kargs = kargs

    def __call__(self, argv):
        if argv == ["rpm-ostree", "kargs"]:
            return 0, self.kargs + "\n", ""
        cur = parse_cmdline(self.kargs)
        for opt in argv[2:]:
            key, _sep, val = opt.partition("=")
            arg = parse_cmdline(val)[0]
            if key == "--delete-if-present":
                cur = [c for c in cur if c != arg]
            elif key == "--append-if-missing" and arg not in cur:
                cur.append(arg)
        self.kargs = render_cmdline(cur)
        return 0, "", ""


def test_rpm_ostree_append_replace_delete_idempotent():
    fake = FakeOstree("rw root=UUID=1 iommu.strict=0 quiet")
    want = [("iommu.strict", "1"), ("intel_iommu", "on")]
    plan = kc.plan_rpm_ostree(fake, want, [("quiet", None)])
    assert plan.commands == [
        [
            "rpm-ostree",
            "kargs",
            "--delete-if-present=iommu.strict=0",
            "--delete-if-present=quiet",
            "--append-if-missing=iommu.strict=1",
            "--append-if-missing=intel_iommu=on",
        ]
    ]
    fake(plan.commands[0])
    assert fake.kargs == "rw root=UUID=1 iommu.strict=1 intel_iommu=on"
    assert not kc.plan_rpm_ostree(fake, want, [("quiet", None)]).changed


def test_systemd_boot_writes_kernel_cmdline_and_runs_kernel_install(tmp_path):
    (tmp_path / "etc/kernel").mkdir(parents=True)
    (tmp_path / "etc/kernel/cmdline").write_text("root=UUID=1 rw quiet\n")
    (tmp_path / "lib/modules/6.8.0/").mkdir(parents=True)
    (tmp_path / "lib/modules/6.8.0/vmlinuz").write_text("")
    proc = tmp_path / "proc"
    proc.mkdir()
    plan = kc.plan_systemd_boot(str(tmp_path), str(proc), [("iommu", "pt")], [])
    assert plan.files[0][2] == "root=UUID=1 rw quiet iommu=pt\n"
    assert plan.commands == [["kernel-install", "add", "6.8.0", str(tmp_path / "lib/modules/6.8.0/vmlinuz")]]
    apply_plan(plan)
    assert not kc.plan_systemd_boot(str(tmp_path), str(proc), [("iommu", "pt")], []).changed


def test_systemd_boot_starts_from_proc_cmdline_when_file_missing(tmp_path):
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz-6.8 initrd=\\initrd root=UUID=1 rw\n")
    (tmp_path / "boot").mkdir()
    (tmp_path / "boot/vmlinuz-6.8").write_text("")
    (tmp_path / "lib/modules/6.8").mkdir(parents=True)
    plan = kc.plan_systemd_boot(str(tmp_path), str(tmp_path / "proc"), [("iommu", "pt")], [])
    assert plan.files[0][1] is None and plan.files[0][2] == "root=UUID=1 rw iommu=pt\n"
    assert plan.commands[0][:3] == ["kernel-install", "add", "6.8"]


def _proxmox_runner(status_rc, status_out, calls):
    def run(argv):
        calls.append(argv)
        if argv[1:] == ["status"]:
            return status_rc, status_out, ""
        return 0, "", ""

    return run


def test_proxmox_uefi_uses_kernel_cmdline_and_refresh(tmp_path):
    (tmp_path / "etc/kernel").mkdir(parents=True)
    (tmp_path / "etc/kernel/cmdline").write_text("root=ZFS=rpool/ROOT/pve-1 boot=zfs\n")
    status = "System currently booted with uefi\nE3E1-8F2A is configured with: uefi (versions: 6.8.12-4-pve)\n"
    plan = kc.plan_proxmox(_proxmox_runner(0, status, []), str(tmp_path), "/proc", [("iommu", "pt")], [], "x")
    assert plan.backend == "proxmox"
    assert plan.files[0][2] == "root=ZFS=rpool/ROOT/pve-1 boot=zfs iommu=pt\n"
    assert plan.commands == [["proxmox-boot-tool", "refresh"]]


def test_proxmox_grub_mode_and_unmanaged(grub_root):
    status = "E3E1-8F2A is configured with: grub (versions: 6.8.12-4-pve)\n"
    plan = kc.plan_proxmox(_proxmox_runner(0, status, []), str(grub_root), "/proc", [("iommu", "pt")], [], "x")
    assert plan.backend == "proxmox" and plan.commands == [["proxmox-boot-tool", "refresh"]]
    plan = kc.plan_proxmox(
        _proxmox_runner(2, "E: /etc/kernel/proxmox-boot-uuids does not exist", []),
        str(grub_root),
        "/proc",
        [("iommu", "pt")],
        [],
        "x",
    )
    assert plan.backend == "grub" and plan.commands == [["update-grub"]] and plan.notes


def test_bootc_kargs_toml(tmp_path):
    plan = kc.plan_bootc(str(tmp_path), [("iommu", "pt"), ("intel_iommu", "on")], [], "hostdev-vfio")
    path, before, after = plan.files[0]
    assert path == str(tmp_path / "usr/lib/bootc/kargs.d/hostdev-vfio.toml") and before is None
    assert 'kargs = ["iommu=pt", "intel_iommu=on"]' in after
    (tmp_path / "usr/lib/bootc/kargs.d").mkdir(parents=True)
    apply_plan(plan)
    assert not kc.plan_bootc(str(tmp_path), [("iommu", "pt")], [], "hostdev-vfio").changed
    plan = kc.plan_bootc(str(tmp_path), [], [("iommu", None), ("intel_iommu", None)], "hostdev-vfio")
    assert plan.files[0][2] is None


def test_detect_backend_order(tmp_path):
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text("")

    def which_of(*names):
        return lambda n: f"/usr/bin/{n}" if n in names else None

    def ok(argv):
        return 0, "", ""

    def fail(argv):
        return 1, "", ""

    assert kc.detect_backend(str(tmp_path), which_of("update-grub"), fail)[0] == "grub"
    assert kc.detect_backend(str(tmp_path), which_of("update-grub", "grubby"), fail)[0] == "grubby"
    assert (
        kc.detect_backend(str(tmp_path), which_of("update-grub", "kernel-install", "bootctl"), ok)[0] == "systemd-boot"
    )
    assert kc.detect_backend(str(tmp_path), which_of("update-grub", "kernel-install", "bootctl"), fail)[0] == "grub"
    assert kc.detect_backend(str(tmp_path), which_of("grubby", "proxmox-boot-tool"), fail)[0] == "proxmox"
    (tmp_path / "run").mkdir()
    (tmp_path / "run/ostree-booted").write_text("")
    assert kc.detect_backend(str(tmp_path), which_of("rpm-ostree", "grubby"), fail)[0] == "rpm-ostree"
    backend, tried = kc.detect_backend(str(tmp_path / "nothing"), which_of(), fail)
    assert backend == "" and len(tried) == 5


_other_line = st.from_regex(r"(#[ -~]{0,20}|GRUB_[A-Z]{1,8}=[a-z0-9]{0,6}|)", fullmatch=True)


@given(st.lists(_other_line, max_size=6), st.lists(_other_line, max_size=6), st.sampled_from(["0", "1", "lazy"]))
def test_grub_surgical_edit_touches_only_the_argument(head, tail, old):
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as d:
        root = Path(d)
        (root / "etc/default").mkdir(parents=True)
        cmd_line = f'GRUB_CMDLINE_LINUX="console=ttyS0  iommu.strict={old} quiet"'
        text = "".join(ln + "\n" for ln in [*head, cmd_line, *tail])
        (root / "etc/default/grub").write_text(text)
        plan = kc.plan_grub(str(root), [("iommu.strict", "1")], [("quiet", None)], "hostdev-vfio")
        main = [f for f in plan.files if f[0].endswith("/etc/default/grub")]
        expected = text.replace(cmd_line, 'GRUB_CMDLINE_LINUX="console=ttyS0  iommu.strict=1"')
        assert main[0][2] == expected
        assert [f for f in plan.files if f[0].endswith(".cfg")] == []


# ---------------------------------------------------------------------------------------------------------------
# /etc/default/grub lines as sh reads them (issue 18): classification, in-place edits checked by sourcing with sh
# ---------------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("rest", "kind", "value"),
    [
        ('"quiet splash"', "plain", "quiet splash"),
        ('"quiet"   # from the installer', "plain", "quiet"),
        ("'quiet splash'", "plain", "quiet splash"),
        ("quiet", "plain", "quiet"),
        ("", "plain", ""),
        ('"$GRUB_CMDLINE_LINUX_DEFAULT quiet"', "plain", "$GRUB_CMDLINE_LINUX_DEFAULT quiet"),
        ('"quiet acpi_osi=\\"!Windows 2012\\""', "known", 'quiet acpi_osi="!Windows 2012"'),
        ("\"quiet\"' splash'", "known", "quiet splash"),
        ("quiet\\ splash", "known", "quiet splash"),
        ("'acpi_osi=\"Linux\"'", "known", 'acpi_osi="Linux"'),
        ('"quiet"\r', "known", "quiet\r"),
        ("a;b", "opaque", None),
        ("a b", "opaque", None),
        ("a|b", "opaque", None),
        ("a&&b", "opaque", None),
        ('"quiet";reboot', "opaque", None),
        ('"$(cat /x)"', "opaque", None),
        ('"`cat /x`"', "opaque", None),
        ("$X", "opaque", None),
        ("~root", "opaque", None),
        ('"quiet', "opaque", None),
        ("quiet\\", "opaque", None),
        ('"${X:-quiet}"', "opaque", None),
    ],
)
def test_sh_assignment_value(rest, kind, value):
    got = kc.sh_assignment_value(rest)
    assert got[:2] == (kind, value)
    if kind != "opaque":  # sh agrees on the value
        out = subprocess.run(
            ["/bin/sh", "-c", f'V={rest}\nprintf %s "$V"'], capture_output=True, check=True
        ).stdout.decode()
        assert out == value.replace("$GRUB_CMDLINE_LINUX_DEFAULT", "")


@pytest.mark.parametrize(
    ("line", "args", "remove", "expected", "sh_reads"),
    [
        (
            "GRUB_CMDLINE_LINUX=iommu.strict=0",
            [("iommu.strict", "1")],
            [],
            'GRUB_CMDLINE_LINUX="iommu.strict=1"',
            "iommu.strict=1",
        ),
        ("GRUB_CMDLINE_LINUX=quiet", [], [("quiet", None)], 'GRUB_CMDLINE_LINUX=""', ""),
        (
            "export GRUB_CMDLINE_LINUX='quiet splash'  # installer",
            [],
            [("quiet", None)],
            "export GRUB_CMDLINE_LINUX='splash'  # installer",
            "splash",
        ),
        (
            'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX quiet"',
            [],
            [("quiet", None)],
            'GRUB_CMDLINE_LINUX="$GRUB_CMDLINE_LINUX"',
            "",
        ),
        (
            'GRUB_CMDLINE_LINUX="iommu=1 quiet iommu=pt"',
            [("iommu", "pt")],
            [("quiet", None)],
            'GRUB_CMDLINE_LINUX="iommu=1 iommu=pt"',
            "iommu=1 iommu=pt",
        ),
    ],
)
def test_grub_edits_plain_lines_in_place_as_sh_reads_them(tmp_path, line, args, remove, expected, sh_reads):
    (tmp_path / "etc/default").mkdir(parents=True)
    text = f"GRUB_TIMEOUT=5\n{line}\n# end\n"
    (tmp_path / "etc/default/grub").write_text(text)
    plan = kc.plan_grub(str(tmp_path), args, remove, "hostdev-vfio")
    assert [f[0] for f in plan.files] == [str(tmp_path / "etc/default/grub")]
    after = plan.files[0][2]
    assert after == f"GRUB_TIMEOUT=5\n{expected}\n# end\n"
    (tmp_path / "etc/default/grub").write_text(after)
    res = subprocess.run(
        ["/bin/sh", "-c", '. "$1"; printf %s "$GRUB_CMDLINE_LINUX"', "sh", str(tmp_path / "etc/default/grub")],
        capture_output=True,
        text=True,
        check=True,
    )
    assert res.stderr == "" and res.stdout == sh_reads


def test_grub_refuses_to_edit_an_unquoted_line_with_a_command_after_it(tmp_path):
    (tmp_path / "etc/default").mkdir(parents=True)
    (tmp_path / "etc/default/grub").write_text("GRUB_CMDLINE_LINUX=quiet;reboot\n")
    with pytest.raises(CmdlineError, match=r"line 1 \('GRUB_CMDLINE_LINUX=quiet;reboot'\)"):
        kc.plan_grub(str(tmp_path), [], [("quiet", None)], "hostdev-vfio")
    plan = kc.plan_grub(str(tmp_path), [("intel_iommu", "on")], [], "hostdev-vfio")
    assert [f[0] for f in plan.files] == [str(tmp_path / "etc/default/grub.d/hostdev-vfio.cfg")]


def test_grubby_refuses_to_add_a_repeatable_parameter_it_would_overwrite():
    fake = FakeGrubby({"/boot/vmlinuz-6.8": "ro iommu=1 quiet"})
    with pytest.raises(CmdlineError, match=r"iommu=pt: the entry /boot/vmlinuz-6.8 already has iommu=1"):
        kc.plan_grubby(fake, [("iommu", "pt")], [])
    assert fake.calls == [["grubby", "--info=ALL"]]
    # removing the other occurrence in the same request is fine: grubby rewrites it to the wanted value
    plan = kc.plan_grubby(fake, [("iommu", "pt")], [("iommu", "1")])
    assert plan.commands == [["grubby", "--update-kernel=ALL", "--remove-args=iommu=1", "--args=iommu=pt"]]


def test_systemd_boot_passes_only_kernel_releases_to_kernel_install(tmp_path):
    (tmp_path / "etc/kernel").mkdir(parents=True)
    (tmp_path / "etc/kernel/cmdline").write_text("root=UUID=1 rw\n")
    for ver in ("6.8.0", "6.8.0\nreboot", "-h"):
        (tmp_path / "lib/modules" / ver).mkdir(parents=True)
        (tmp_path / "lib/modules" / ver / "vmlinuz").write_text("")
    plan = kc.plan_systemd_boot(str(tmp_path), str(tmp_path / "proc"), [("iommu", "pt")], [])
    assert [argv[2] for argv in plan.commands] == ["6.8.0"]


@pytest.mark.parametrize(
    ("rel", "data", "message"),
    [
        ("etc/kernel/cmdline", b"root=UUID=1 caf\xe9\n", "cmdline: is not UTF-8"),
        ("etc/kernel/cmdline", b"root=UUID=1\x00\n", "holds NUL bytes"),
        ("usr/lib/bootc/kargs.d/hostdev-vfio.toml", b'kargs = ["a;reboot"]\n', "'a;reboot' contains"),
    ],
)
def test_unreadable_or_hand_edited_files_are_clean_errors(tmp_path, rel, data, message):
    (tmp_path / rel).parent.mkdir(parents=True)
    (tmp_path / rel).write_bytes(data)
    with pytest.raises(CmdlineError, match=re.escape(message)):
        if rel.startswith("usr/"):
            kc.plan_bootc(str(tmp_path), [("iommu", "pt")], [], "hostdev-vfio")
        else:
            kc.plan_systemd_boot(str(tmp_path), str(tmp_path / "proc"), [("iommu", "pt")], [])
