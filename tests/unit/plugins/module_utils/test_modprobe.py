# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Rules of _modprobe: parsing, editing, validation, effective configuration, initramfs and builtin checks."""

from __future__ import annotations

import os

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _modprobe as mp


def write(root, path, text):
    full = os.path.join(str(root), path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w", newline="") as f:
        f.write(text)
    return full


@pytest.mark.parametrize(
    ("text", "kinds", "words"),
    [
        ("", [], []),
        ("\n", ["blank"], [[]]),
        ("  \t\n", ["blank"], [[]]),
        ("# c\n", ["comment"], [[]]),
        ("  # indented\n", ["unknown"], [["#", "indented"]]),  # kmod: only a '#' in column 1 starts a comment
        ("softdep a pre: b\n", ["softdep"], [["softdep", "a", "pre:", "b"]]),
        ("softdep a\\\n  pre: b\n", ["softdep"], [["softdep", "a", "pre:", "b"]]),
        ("# c \\\nblacklist x\n", ["comment"], [[]]),  # a continued comment swallows the next line
        ("black\\\nlist x", ["blacklist"], [["blacklist", "x"]]),
        ("blacklist es\\cape\n", ["blacklist"], [["blacklist", "escape"]]),
        ("blacklist a\\\\\nblacklist b\n", ["blacklist", "blacklist"], [["blacklist", "a\\"], ["blacklist", "b"]]),
        ("softdep lonely\n", ["invalid"], [["softdep", "lonely"]]),
        ("install x\n", ["invalid"], [["install", "x"]]),
        ("install x /bin/true\n", ["install"], [["install", "x", "/bin/true"]]),
        ("remove x /bin/true\n", ["remove"], [["remove", "x", "/bin/true"]]),
        ("alias pci:v* vfio_pci\n", ["alias"], [["alias", "pci:v*", "vfio_pci"]]),
        ("weird cmd\n", ["unknown"], [["weird", "cmd"]]),
        ("blacklist crlf\r\n", ["blacklist"], [["blacklist", "crlf\r"]]),
        (
            "options m  a=1\tb=2 # not a comment\n",
            ["options"],
            [["options", "m", "a=1", "b=2", "#", "not", "a", "comment"]],
        ),
    ],
)
def test_parse_table(text, kinds, words):
    cmds = mp.parse(text)
    assert [c.kind for c in cmds] == kinds
    assert [c.words for c in cmds] == words
    assert mp.render(cmds) == text


def test_line_numbers_count_physical_lines():
    cmds = mp.parse("a\\\nb\\\nc\n\nblacklist x")
    assert [c.lineno for c in cmds] == [1, 4, 5]
    assert cmds[-1].terminated is False


def test_softdep_lists_ignore_words_before_the_first_keyword():
    (cmd,) = mp.parse("softdep foo stray pre: a b post: c pre: d\n")
    assert cmd.softdep_lists() == (["a", "b", "d"], ["c"])


def test_option_tokens_keep_quoted_values_together():
    (cmd,) = mp.parse('options m a=1  b="x y"\tc\n')
    assert cmd.option_tokens() == ["a=1", 'b="x y"', "c"]


@pytest.mark.parametrize(
    ("name", "expected"), [("vfio-pci", "vfio_pci"), ("snd_hda-intel", "snd_hda_intel"), ("snd-[a-z]*", "snd_[a-z]*")]
)
def test_normalize(name, expected):
    assert mp.normalize(name) == expected


# ----------------------------------------------------------------------------------------------- softdep edits


def edit(text, *args, **kwargs):
    cmds, _idx, result = mp.edit_softdep(mp.parse(text), *args, **kwargs)
    return mp.render(cmds), result


def test_softdep_added_to_a_file_keeps_everything_else():
    before = "# header\n\noptions x y=1\\\n z=2\n"
    after, result = edit(before, "snd_hda_intel", ["vfio-pci"], [], "present")
    assert after == before + "softdep snd_hda_intel pre: vfio-pci\n"
    assert result == (["vfio-pci"], [])


def test_softdep_merges_into_the_existing_line_instead_of_adding_one():
    before = "softdep amdgpu pre: foo post: bar\n# end\n"
    after, result = edit(before, "amdgpu", ["vfio-pci"], [], "present")
    assert after == "softdep amdgpu pre: foo vfio-pci post: bar\n# end\n"
    assert result == (["foo", "vfio-pci"], ["bar"])


def test_softdep_dash_and_underscore_are_the_same_module():
    before = "softdep snd-hda-intel   pre:  vfio_pci\n"
    after, _r = edit(before, "snd_hda_intel", ["vfio-pci"], [], "present")
    assert after == before  # nothing to do, the line is not even re-rendered


def test_softdep_exclusive_replaces_the_lists():
    after, _r = edit("softdep a pre: b c post: d\n", "a", ["e"], [], "present", exclusive=True)
    assert after == "softdep a pre: e\n"


def test_softdep_module_moves_from_post_to_pre():
    after, _r = edit("softdep a post: vfio_pci x\n", "a", ["vfio-pci"], [], "present")
    assert after == "softdep a pre: vfio-pci post: x\n"


def test_softdep_absent_removes_entries_then_the_line():
    text = "# keep\nsoftdep a pre: b c\nblacklist z\n"
    after, result = edit(text, "a", ["b"], [], "absent")
    assert after == "# keep\nsoftdep a pre: c\nblacklist z\n"
    assert result == (["c"], [])
    after, result = edit(after, "a", ["c"], [], "absent")
    assert after == "# keep\nblacklist z\n"
    assert result is None


def test_softdep_absent_without_lists_removes_every_line_for_the_module():
    after, _r = edit("softdep a pre: b\nsoftdep b pre: c\nsoftdep a post: d\n", "a", [], [], "absent")
    assert after == "softdep b pre: c\n"


def test_softdep_replaces_a_continued_line_with_one_line():
    after, _r = edit("softdep a\\\n pre: b\n#x\n", "a", ["c"], [], "present")
    assert after == "softdep a pre: b c\n#x\n"


@pytest.mark.parametrize("text", ["softdep a \\\n pre: b\n", "softdep a  pre: b\n", "softdep a\t pre: b\n"])
def test_softdep_kmod_quirk_extra_space_after_the_name_empties_it(tmp_path, text):
    (cmd,) = mp.parse(text)
    assert cmd.softdep_lists() == ([], [])
    assert cmd.softdep_lists_as_written() == (["b"], [])
    write(tmp_path, mp.DEFAULT_MODPROBE_PATH, text)
    plan = mp.plan_softdep("a", pre=["b"], root=str(tmp_path), generators=[])
    assert plan.after == "softdep a pre: b\n"  # rewritten so that kmod reads what it says
    before = mp.plan_softdep("a", pre=["b"], state="absent", root=str(tmp_path), generators=[])
    assert any("kmod reads this softdep as pre: [] post: []" in w for w in before.warnings)


def test_append_to_a_file_without_final_newline_adds_only_that_newline():
    after, _r = edit("blacklist x", "a", ["b"], [], "present")
    assert after == "blacklist x\nsoftdep a pre: b\n"


def test_editing_the_unterminated_last_line_keeps_it_unterminated():
    after, _r = edit("softdep a pre: b", "a", ["c"], [], "present")
    assert after == "softdep a pre: b c"


def test_append_after_an_open_continuation_is_refused():
    with pytest.raises(mp.ModprobeError, match="line continuation"):
        edit("blacklist x \\\n", "a", ["b"], [], "present")


# ----------------------------------------------------------------------------------------------- options edits


def opts(text, name, options, state):
    return mp.render(mp.edit_options(mp.parse(text), name, mp.check_options(options), state))


def test_options_change_merges_the_module_lines_into_the_first_one():
    text = 'options vfio_pci ids=1:2  "q=a b"\n# x\noptions vfio-pci disable_vga=0\n'
    after = opts(text, "vfio-pci", {"ids": "8086:293e", "disable-vga": True, "new": None}, "present")
    assert after == 'options vfio_pci ids=8086:293e "q=a b" disable_vga=1 new\n# x\n'


def test_options_single_line_changes_in_place():
    text = "# x\noptions vfio-pci ids=1:2 disable_vga=0\noptions e1000e x=1\n"
    after = opts(text, "vfio_pci", {"ids": "8086:293e"}, "present")
    assert after == "# x\noptions vfio-pci ids=8086:293e disable_vga=0\noptions e1000e x=1\n"


def test_options_seven_repeated_lines_become_one_not_seven_rewrites():
    lines = [f"options vfio-pci ids=10de:{n:04x}\n" for n in range(7)]
    text = "# GPU passthrough\n" + "".join(lines[:3]) + "blacklist nouveau\n" + "".join(lines[3:])
    after = opts(text, "vfio-pci", {"ids": "10de:1b80,10de:10f0"}, "present")
    assert after == "# GPU passthrough\noptions vfio-pci ids=10de:1b80,10de:10f0\nblacklist nouveau\n"
    assert opts(after, "vfio-pci", {"ids": "10de:1b80,10de:10f0"}, "present") == after


def test_options_repeated_lines_that_already_agree_are_left_alone():
    text = "options vfio-pci ids=1:2\noptions vfio_pci disable_vga=1 ids=1:2\n"
    assert opts(text, "vfio-pci", {"ids": "1:2", "disable_vga": 1}, "present") == text


def test_options_present_is_idempotent_and_keeps_spacing():
    text = "options vfio-pci   ids=8086:293e\n"
    assert opts(text, "vfio_pci", {"ids": "8086:293e"}, "present") == text


def test_options_absent():
    text = "options vfio-pci ids=1:2 disable_vga=1\noptions e1000e x=1\n"
    assert opts(text, "vfio-pci", {"ids": None}, "absent") == "options vfio-pci disable_vga=1\noptions e1000e x=1\n"
    assert opts(text, "vfio-pci", {}, "absent") == "options e1000e x=1\n"


def test_blacklist_edits():
    text = "blacklist nouveau\n"
    assert mp.render(mp.edit_blacklist(mp.parse(text), "nouveau", "present")) == text
    assert (
        mp.render(mp.edit_blacklist(mp.parse(text), "snd-hda-intel", "present")) == text + "blacklist snd-hda-intel\n"
    )
    assert mp.render(mp.edit_blacklist(mp.parse(text + "blacklist x\n"), "nouveau", "absent")) == "blacklist x\n"


# ----------------------------------------------------------------------------------------------- validation


@pytest.mark.parametrize(
    "kwargs",
    [
        {"name": "snd_hda_intel\ninstall snd_hda_intel /bin/sh -c 'id'", "pre": ["vfio-pci"]},
        {"name": "snd_hda_intel", "pre": ["vfio-pci\ninstall x /bin/sh"]},
        {"name": "snd_hda_intel", "pre": ["vfio pci"]},
        {"name": "snd_hda_intel", "pre": ["vfio#pci"]},
        {"name": "snd_hda_intel", "pre": ["$(reboot)"]},
        {"name": "snd_hda_intel", "pre": [""]},
        {"name": "snd*", "pre": ["vfio-pci"]},
        {"name": "snd_hda_intel", "pre": [], "post": []},
        {"name": "snd_hda_intel"},
        {"name": "snd_hda_intel", "pre": ["vfio-pci"], "post": ["vfio_pci"]},
        {"name": "snd_hda_intel", "pre": ["snd-hda-intel"]},
        {"name": "snd_hda_intel", "pre": ["vfio-pci"], "state": "enabled"},
        {"name": "snd_hda_intel", "pre": ["vfio-pci"], "path": "/etc/modprobe.d/vfio"},
        {"name": "snd_hda_intel", "pre": ["vfio-pci"], "path": "etc/modprobe.d/vfio.conf"},
    ],
)
def test_softdep_rejects_bad_input_before_reading_or_writing(tmp_path, kwargs):
    full = write(tmp_path, mp.DEFAULT_MODPROBE_PATH, "# untouched\n")
    with pytest.raises(mp.ModprobeError) as err:
        mp.plan_softdep(root=str(tmp_path), generators=[], **kwargs)
    assert str(err.value)
    with open(full) as f:
        assert f.read() == "# untouched\n"


@pytest.mark.parametrize(
    ("options", "needle"),
    [
        ({"ids": "8086:293e\ninstall vfio-pci /bin/sh"}, "ids"),
        ({"ids": "8086:293e disable_vga=1"}, "ids"),
        ({"ids": "a#b"}, "ids"),
        ({"ids": 'a"b'}, "ids"),
        ({"ids": "a;reboot"}, "ids"),
        ({"ids": "`id`"}, "ids"),
        ({"bad key": "1"}, "bad key"),
        ({"ids=x": "1"}, "ids=x"),
        ({"disable-vga": 1, "disable_vga": 1}, "twice"),
    ],
)
def test_options_rejects_bad_values(options, needle):
    with pytest.raises(mp.ModprobeError, match=needle):
        mp.check_options(options)


def test_option_values_are_rendered():
    assert mp.check_options({"a": True, "b": False, "c": 3, "d": ["x", "y"], "e": None, "f": ""}) == [
        ("a", "1"),
        ("b", "0"),
        ("c", "3"),
        ("d", "x,y"),
        ("e", None),
        ("f", ""),
    ]


# ----------------------------------------------------------------------------------------------- plans


def test_plan_softdep_new_file_then_idempotent(tmp_path):
    root = str(tmp_path)
    plan = mp.plan_softdep("snd_hda_intel", pre=["vfio-pci"], root=root, generators=["initramfs-tools"])
    assert plan.before is None and plan.changed
    assert plan.after == "softdep snd_hda_intel pre: vfio-pci\n"
    assert plan.initramfs_update_needed is True
    assert plan.diff()["before_header"].endswith("(absent)")
    assert not os.path.exists(plan.fullpath)  # planning never writes
    write(root, plan.path, plan.after)
    again = mp.plan_softdep("snd-hda-intel", pre=["vfio_pci"], root=root, generators=["initramfs-tools"])
    assert not again.changed and again.initramfs_update_needed is False


def test_plan_absent_on_a_missing_file_changes_nothing(tmp_path):
    plan = mp.plan_softdep("a", pre=["b"], state="absent", root=str(tmp_path), generators=[])
    assert not plan.changed and plan.after is None


def test_plan_removal_that_empties_the_file_deletes_it(tmp_path):
    root = str(tmp_path)
    write(root, mp.DEFAULT_MODPROBE_PATH, "softdep a pre: b\n")
    plan = mp.plan_softdep("a", pre=["b"], state="absent", root=root, generators=[])
    assert plan.changed and plan.delete and plan.after == ""


def test_plan_warns_about_duplicates_and_other_files(tmp_path):
    root = str(tmp_path)
    write(root, "/lib/modprobe.d/zz.conf", "softdep a pre: x\n")
    write(root, mp.DEFAULT_MODPROBE_PATH, "softdep a pre: b\nsoftdep a-x pre: c\nsoftdep a post: d\n")
    plan = mp.plan_softdep("a", pre=["b"], root=root, generators=[])
    assert not plan.changed
    assert any("2 softdep lines for a (lines 1, 3)" in w for w in plan.warnings)
    assert any("/lib/modprobe.d/zz.conf line 1" in w and "uses only the first one" in w for w in plan.warnings)
    assert plan.info["effective"] == {"path": mp.DEFAULT_MODPROBE_PATH, "line": 1, "pre": ["b"], "post": []}


@pytest.mark.parametrize(
    ("path", "setup", "needle"),
    [
        ("/etc/modprobe.conf.d/x.conf", None, "not in a directory"),
        ("/etc/modprobe.d/.x.conf", None, "starts with a dot"),
        ("/lib/modprobe.d/x.conf", "/etc/modprobe.d/x.conf", "hidden by /etc/modprobe.d/x.conf"),
        ("/usr/lib/modprobe.d/x.conf", "/run/modprobe.d/x.conf", "hidden by /run/modprobe.d/x.conf"),
    ],
)
def test_plan_warns_when_kmod_would_not_read_the_file(tmp_path, path, setup, needle):
    if setup:
        write(tmp_path, setup, "# mask\n")
    plan = mp.plan_softdep("a", pre=["b"], path=path, root=str(tmp_path), generators=[])
    assert any(needle in w for w in plan.warnings), plan.warnings
    assert any("has no effect" in w or "ignores it" in w or "skips" in w for w in plan.warnings)


def test_new_file_hides_a_later_same_named_file(tmp_path):
    write(tmp_path, "/lib/modprobe.d/hostdev-vfio.conf", "softdep a pre: old\n")
    plan = mp.plan_softdep("a", pre=["new"], root=str(tmp_path), generators=[])
    assert plan.info["effective"]["pre"] == ["new"]
    assert plan.info["effective"]["path"] == mp.DEFAULT_MODPROBE_PATH
    assert plan.warnings == []


# ----------------------------------------------------------------------------------------------- initramfs


@pytest.mark.parametrize(
    ("path", "generators", "copied"),
    [
        ("/etc/modprobe.d/vfio.conf", ["initramfs-tools"], True),
        ("/lib/modprobe.d/vfio.conf", ["initramfs-tools"], True),
        ("/usr/lib/modprobe.d/vfio.conf", ["initramfs-tools"], True),
        ("/run/modprobe.d/vfio.conf", ["initramfs-tools"], False),
        ("/usr/local/lib/modprobe.d/vfio.conf", ["initramfs-tools"], False),
        ("/etc/modprobe.d/.vfio.conf", ["initramfs-tools"], False),
        ("/etc/modprobe.d/vfio.alias", ["initramfs-tools"], False),
        ("/etc/modules-load.d/vfio.conf", ["initramfs-tools"], False),
        ("/etc/modules-load.d/vfio.conf", ["dracut"], True),
        ("/usr/lib/modprobe.d/vfio.conf", ["dracut"], True),
        # dracut copies /etc/modprobe.d only in hostonly mode (none configured under this root)
        ("/etc/modprobe.d/vfio.conf", ["dracut"], False),
        ("/etc/udev/rules.d/05-hostdev-vfio.rules", ["initramfs-tools"], True),
        ("/etc/udev/rules.d/05-hostdev-vfio.rules", ["dracut"], False),
        ("/etc/udev/rules.d/05-hostdev-vfio.rules", ["mkinitcpio"], False),
        ("/etc/modprobe.d/vfio.conf", ["mkinitcpio"], False),
        ("/etc/modprobe.d/vfio.conf", [], False),
    ],
)
def test_initramfs_copies(tmp_path, path, generators, copied):
    assert mp.initramfs_copies(path, generators, str(tmp_path)) is copied


def test_dracut_hostonly_and_install_items_decide_what_its_image_carries(tmp_path):
    conf = "/etc/modprobe.d/vfio.conf"
    write(tmp_path, "/usr/lib/dracut/dracut.conf.d/01-dist.conf", 'hostonly="yes"\n')
    assert mp.initramfs_copies(conf, ["dracut"], str(tmp_path))
    # a later file (by name, /etc replacing /usr/lib) turns hostonly off again
    write(tmp_path, "/etc/dracut.conf.d/50-lab.conf", 'hostonly="no"\n')
    assert not mp.initramfs_copies(conf, ["dracut"], str(tmp_path))
    write(tmp_path, "/etc/dracut.conf.d/hostdev-vfio.conf", f'install_items+=" {conf} /etc/udev/rules.d/x.rules "\n')
    assert mp.initramfs_copies(conf, ["dracut"], str(tmp_path))
    assert mp.initramfs_copies("/etc/udev/rules.d/x.rules", ["dracut"], str(tmp_path))


def test_mkinitcpio_files_decide_what_its_image_carries(tmp_path):
    write(tmp_path, "/etc/mkinitcpio.conf", "MODULES=()\nFILES=(/etc/modprobe.d/a.conf)\n")
    write(tmp_path, "/etc/mkinitcpio.conf.d/hostdev-vfio.conf", "FILES+=(/etc/udev/rules.d/x.rules)\n")
    for path in ("/etc/modprobe.d/a.conf", "/etc/udev/rules.d/x.rules"):
        assert mp.initramfs_copies(path, ["mkinitcpio"], str(tmp_path))
    assert not mp.initramfs_copies("/etc/modprobe.d/b.conf", ["mkinitcpio"], str(tmp_path))


def test_initramfs_generators_are_detected_under_root(tmp_path):
    assert mp.initramfs_generators(str(tmp_path)) == []
    write(tmp_path, "/usr/sbin/update-initramfs", "#!/bin/sh\n")
    assert mp.initramfs_generators(str(tmp_path)) == ["initramfs-tools"]
    write(tmp_path, "/usr/bin/dracut", "#!/bin/sh\n")
    assert mp.initramfs_generators(str(tmp_path)) == ["initramfs-tools", "dracut"]
    write(tmp_path, "/usr/bin/mkinitcpio", "#!/bin/sh\n")
    assert mp.initramfs_generators(str(tmp_path)) == ["initramfs-tools", "dracut", "mkinitcpio"]


def test_builtin_and_loadable_lists(tmp_path):
    write(tmp_path, "/lib/modules/6.1.0-x/modules.builtin", "kernel/sound/pci/hda/snd-hda-intel.ko\n")
    write(tmp_path, "/lib/modules/6.1.0-x/modules.dep", "kernel/drivers/vfio/pci/vfio-pci.ko.xz: kernel/v.ko\n")
    assert mp.builtin_modules(str(tmp_path), "6.1.0-x") == {"snd_hda_intel"}
    assert mp.loadable_modules(str(tmp_path), "6.1.0-x") == {"vfio_pci"}
    assert mp.builtin_modules(str(tmp_path), "7.0") is None
    plan = mp.plan_options("snd-hda-intel", {"x": 1}, root=str(tmp_path), release="6.1.0-x", generators=[])
    assert any("built into kernel 6.1.0-x" in w and "kernel command line" in w for w in plan.warnings)


# ----------------------------------------------------------------------------------------------- modules-load.d


def test_modules_load_add_and_remove_keep_comments(tmp_path):
    root = str(tmp_path)
    path = mp.DEFAULT_MODULES_LOAD_PATH
    write(root, path, "# boot\n; also a comment\n  vfio  \nkvm")
    plan = mp.plan_modules_load(["vfio", "vfio-pci", "vfio_pci"], root=root, generators=["initramfs-tools"])
    assert plan.after == "# boot\n; also a comment\n  vfio  \nkvm\nvfio-pci\n"
    assert plan.initramfs_update_needed is False
    assert [e["name"] for e in plan.info["effective"]] == ["vfio", "kvm", "vfio-pci"]
    write(root, path, plan.after)
    plan = mp.plan_modules_load(["vfio_pci", "vfio"], state="absent", root=root, generators=[])
    assert plan.after == "# boot\n; also a comment\nkvm\n"


def test_modules_load_effective_follows_hiding(tmp_path):
    root = str(tmp_path)
    write(root, "/usr/lib/modules-load.d/hostdev-vfio.conf", "hidden\n")
    write(root, "/usr/lib/modules-load.d/a.conf", "first\n")
    write(root, "/etc/modules-load.d/z.alias", "not_read\n")
    plan = mp.plan_modules_load(["vfio-pci"], root=root, generators=["dracut"])
    assert plan.info["effective"] == [
        {"name": "first", "path": "/usr/lib/modules-load.d/a.conf"},
        {"name": "vfio-pci", "path": mp.DEFAULT_MODULES_LOAD_PATH},
    ]
    assert plan.initramfs_update_needed is True


def test_modules_load_rejects_bad_names(tmp_path):
    for names in (["vfio\nsh"], [""], [], ["a b"]):
        with pytest.raises(mp.ModprobeError):
            mp.plan_modules_load(names, root=str(tmp_path), generators=[])


def test_symlinked_file_is_followed_but_a_mask_is_refused(tmp_path):
    root = str(tmp_path)
    real = write(root, "/usr/share/hostdev/real.conf", "# real\n")
    os.makedirs(os.path.join(root, "etc/modprobe.d"))
    os.symlink(real, os.path.join(root, "etc/modprobe.d/linked.conf"))
    plan = mp.plan_blacklist("nouveau", path="/etc/modprobe.d/linked.conf", root=root, generators=[])
    assert plan.fullpath == real and plan.after == "# real\nblacklist nouveau\n"
    os.symlink("/dev/null", os.path.join(root, "etc/modprobe.d/masked.conf"))
    with pytest.raises(mp.ModprobeError, match="not to a regular file"):
        mp.plan_blacklist("nouveau", path="/etc/modprobe.d/masked.conf", root=root, generators=[])
