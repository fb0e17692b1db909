# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Property tests (hypothesis) for the modprobe.d parser and writer, with kmod as the oracle for some."""

from __future__ import annotations

import os
import tempfile

from ansible_collections.hostdev.vfio.plugins.module_utils import _modprobe as mp
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_modprobe_kmod import ours, showconfig
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

NAMES = st.sampled_from(["vfio-pci", "vfio_pci", "snd_hda_intel", "snd-hda-intel", "amdgpu", "e1000e", "nvme", "x"])
WS = st.sampled_from([" ", "  ", "\t", " \t "])

# Raw text made of the characters that matter to the format: any such text must round-trip.
RAW = st.text(alphabet='ab_-:=# \t\\\n\r"pre:post:softdepoptionsblacklist', max_size=300)


@st.composite
def command_line(draw):
    """One physical or continued logical line, as people write them (odd spacing and continuations included)."""
    kind = draw(st.sampled_from(["softdep", "options", "blacklist", "install", "alias", "comment", "blank", "junk"]))
    ws = draw(WS)
    if kind == "softdep":
        pre = draw(st.lists(NAMES, max_size=3))
        post = draw(st.lists(NAMES, max_size=2))
        text = ws.join(
            ["softdep", draw(NAMES)] + (["pre:", *pre] if pre or not post else []) + (["post:", *post] if post else [])
        )
    elif kind == "options":
        params = draw(
            st.lists(
                st.sampled_from(["ids=8086:293e", "disable_vga=1", 'q="a b"', "flag", "x=1"]), min_size=1, max_size=3
            )
        )
        text = ws.join(["options", draw(NAMES), *params])
    elif kind == "blacklist":
        text = ws.join(["blacklist", draw(NAMES)])
    elif kind == "install":
        text = ws.join(["install", draw(NAMES), "/bin/true"])
    elif kind == "alias":
        text = ws.join(["alias", "pci:v00008086d*", draw(NAMES)])
    elif kind == "comment":
        text = "#" + draw(st.text(alphabet="abc softdep\\#", max_size=20)).replace("\\", "")
    elif kind == "blank":
        text = draw(st.sampled_from(["", " ", "\t"]))
    else:
        text = ws.join(["frobnicate", draw(NAMES)])
    if kind not in ("comment", "blank") and draw(st.booleans()):
        # break the line with a backslash continuation at a space
        idx = text.find(" ")
        if idx > 0:
            text = text[:idx] + "\\\n" + draw(WS) + text[idx + 1 :]
    return text + draw(st.sampled_from(["\n", "\n", "\n", "\r\n"]))


@st.composite
def config_text(draw, final_newline=None):
    lines = draw(st.lists(command_line(), max_size=12))
    text = "".join(lines)
    keep = draw(st.booleans()) if final_newline is None else final_newline
    if not keep and text.endswith("\n"):
        text = text[:-1]
    return text


@given(RAW)
def test_any_text_renders_back_byte_for_byte(text):
    cmds = mp.parse(text)
    assert mp.render(cmds) == text
    assert mp.parse(mp.render(cmds)) == cmds


@given(config_text())
def test_parse_render_round_trip(text):
    cmds = mp.parse(text)
    assert mp.render(cmds) == text
    assert mp.parse(mp.render(cmds)) == cmds


def unrelated(cmds, kind, name):
    return [c.raw for c in cmds if not (c.kind == kind and mp.normalize(c.words[1]) == mp.normalize(name))]


@given(config_text(final_newline=True), st.lists(NAMES, min_size=1, max_size=2))
def test_adding_then_removing_a_softdep_restores_the_file(text, pre):
    name = "hypothesis_target"  # a module the generated files never mention
    added, _i, _r = mp.edit_softdep(mp.parse(text), name, pre, [], "present")
    added_text = mp.render(added)
    assert added_text.startswith(text)
    removed, _i, _r = mp.edit_softdep(mp.parse(added_text), name, pre, [], "absent")
    assert mp.render(removed) == text


@given(config_text(final_newline=False))
def test_adding_to_a_file_without_final_newline_changes_only_that_byte(text):
    added, _i, _r = mp.edit_softdep(mp.parse(text), "hypothesis_target", ["vfio-pci"], [], "present")
    if text and mp.parse(text)[-1].open_continuation:
        return  # refused elsewhere (test_append_after_an_open_continuation_is_refused)
    removed, _i, _r = mp.edit_softdep(mp.parse(mp.render(added)), "hypothesis_target", [], [], "absent")
    assert mp.render(removed) == (text if text.endswith("\n") or not text else text + "\n")


@given(config_text(final_newline=True), NAMES, st.lists(NAMES, min_size=1, max_size=3), st.booleans())
def test_softdep_edits_never_touch_unrelated_lines(text, name, pre, exclusive):
    pre = [p for p in pre if mp.normalize(p) != mp.normalize(name)] or ["nvme" if name != "nvme" else "x"]
    before = mp.parse(text)
    for state in ("present", "absent"):
        after, _i, _r = mp.edit_softdep(before, name, pre, [], state, exclusive)
        assert unrelated(after, "softdep", name) == unrelated(before, "softdep", name)


@given(config_text(final_newline=True), NAMES, st.booleans())
def test_options_and_blacklist_edits_never_touch_unrelated_lines(text, name, present):
    state = "present" if present else "absent"
    before = mp.parse(text)
    after = mp.edit_options(before, name, [("ids", "1234:5678")], state)
    assert unrelated(after, "options", name) == unrelated(before, "options", name)
    after = mp.edit_blacklist(before, name, state)
    assert unrelated(after, "blacklist", name) == unrelated(before, "blacklist", name)


@given(config_text(final_newline=True), NAMES, st.lists(NAMES, min_size=1, max_size=2))
def test_present_is_idempotent(text, name, pre):
    pre = [p for p in pre if mp.normalize(p) != mp.normalize(name)] or ["nvme" if name != "nvme" else "x"]
    once, _i, _r = mp.edit_softdep(mp.parse(text), name, pre, [], "present")
    twice, _i, _r = mp.edit_softdep(mp.parse(mp.render(once)), name, pre, [], "present")
    assert mp.render(twice) == mp.render(once)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.sampled_from(mp.MODPROBE_DIRS),
            st.sampled_from(["a.conf", "b.conf", "c.alias"]),
            st.one_of(config_text(), RAW),
        ),
        max_size=5,
    )
)
def test_kmod_reads_what_the_parser_says(files):
    """The real modprobe --showconfig on generated trees lists exactly the commands the parser finds."""
    with tempfile.TemporaryDirectory() as root:
        for directory, name, text in files:
            full = os.path.join(root, directory.lstrip("/"), name)
            os.makedirs(os.path.dirname(full), exist_ok=True)
            with open(full, "w", newline="") as f:
                f.write(text)
        assert showconfig(root) == ours(root)
