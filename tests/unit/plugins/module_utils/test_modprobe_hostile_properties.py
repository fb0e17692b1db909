# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18, property tests: hostile strings for every validated field of the modprobe backends.

Each generated value is either refused (a ModprobeError naming the field, nothing written) or accepted; an
accepted value is written and the real kmod (``modprobe -C ... -c``) must read back exactly what was asked - no
extra command, no other module, no split word. For modules-load.d, whose reader is systemd-modules-load (not
runnable here without loading modules), the oracle is its documented rule: one name per stripped line.
"""

from __future__ import annotations

import os
import re
import tempfile

from ansible_collections.hostdev.vfio.plugins.module_utils import _modprobe as mp
from ansible_collections.hostdev.vfio.plugins.module_utils import _validate
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_modprobe_kmod import showconfig
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

# Characters that end a word, a line or a command for kmod, the kernel's parameter parser or a shell.
NASTY = "\n\r\t\x00\x0b\x0c\x1b\x7f\x85\u2028\u2029 #\"'\\$`;|&<>(){}[]*?!~=,.:/@%^+-_"
HOSTILE = st.one_of(
    st.text(alphabet=st.sampled_from(list(NASTY) + list("abcvfiopc019")), max_size=40),
    st.builds(
        lambda a, c, b: a + c + b,
        st.sampled_from(["vfio-pci", "snd_hda_intel", "amdgpu", "10de:1b80", "", "ids"]),
        st.sampled_from(list(NASTY)),
        st.sampled_from(["", "install snd_hda_intel reboot", "vfio", "\n", "pre: x", "=1"]),
    ),
    st.text(max_size=30),
    st.integers(60, 70).map(lambda n: "m" * n),
    st.integers(1020, 1030).map(lambda n: "1" * n),
)
SETTINGS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _tree(top):
    """``top``/root with empty modprobe.d and modules-load.d; nothing may ever appear in ``top`` beside root."""
    root = os.path.join(top, "root")
    os.makedirs(os.path.join(root, "etc", "modprobe.d"))
    os.makedirs(os.path.join(root, "etc", "modules-load.d"))
    return root


def _write(plan):
    os.makedirs(os.path.dirname(plan.fullpath), exist_ok=True)
    with open(plan.fullpath, "w", encoding="utf-8", newline="") as f:
        f.write(plan.after)


def _files(root):
    return sorted(os.path.relpath(os.path.join(d, n), root) for d, _dirs, names in os.walk(root) for n in names)


def _refused_or(field, call, check):
    """Run ``call``; a refusal must name ``field`` and leave no file anywhere, else ``check(root, plan)``."""
    with tempfile.TemporaryDirectory() as top:
        root = _tree(top)
        try:
            plan = call(root)
        except mp.ModprobeError as e:
            assert str(e).startswith((f"{field}:", f"{field} ")), str(e)
            assert _files(top) == []
            return "refused"
        check(root, plan)
        assert all(f.startswith("root" + os.sep) for f in _files(top)), _files(top)
        return "accepted"


@SETTINGS
@given(HOSTILE)
def test_softdep_name_is_refused_or_read_back_by_kmod(value):
    assume(mp.normalize(value) != "vfio_pci")  # a module cannot be its own soft dependency (another refusal)

    def check(root, plan):
        _write(plan)
        assert showconfig(root)["softdep"] == [(mp.normalize(value), ["vfio-pci"], [])]

    _refused_or("name", lambda root: mp.plan_softdep(value, pre=["vfio-pci"], root=root, generators=[]), check)


@SETTINGS
@given(HOSTILE, st.sampled_from(["pre", "post"]))
def test_softdep_pre_post_entries_are_refused_or_read_back_by_kmod(value, where):
    assume(mp.normalize(value) != "amdgpu")

    def check(root, plan):
        _write(plan)
        want = ([value], []) if where == "pre" else ([], [value])
        assert showconfig(root)["softdep"] == [("amdgpu", *want)]

    _refused_or(
        f"{where}[0]", lambda root: mp.plan_softdep("amdgpu", root=root, generators=[], **{where: [value]}), check
    )


@SETTINGS
@given(HOSTILE)
def test_option_key_is_refused_or_read_back_by_kmod(key):
    def check(root, plan):
        _write(plan)
        assert showconfig(root)["options"] == [("vfio_pci", [f"{key}=1"])]

    _refused_or("options", lambda root: mp.plan_options("vfio-pci", {key: "1"}, root=root, generators=[]), check)


@SETTINGS
@given(HOSTILE)
def test_option_value_is_refused_or_read_back_by_kmod(value):
    def check(root, plan):
        _write(plan)
        assert showconfig(root)["options"] == [("vfio_pci", [f"ids={value}"])]

    _refused_or(
        "options.ids", lambda root: mp.plan_options("vfio-pci", {"ids": value}, root=root, generators=[]), check
    )


@SETTINGS
@given(HOSTILE)
def test_blacklist_name_is_refused_or_read_back_by_kmod(value):
    def check(root, plan):
        _write(plan)
        assert showconfig(root)["blacklist"] == [mp.normalize(value)]

    _refused_or("name", lambda root: mp.plan_blacklist(value, root=root, generators=[]), check)


@SETTINGS
@given(HOSTILE)
def test_modules_load_name_is_refused_or_one_line_of_its_own(value):
    def check(root, plan):
        _write(plan)
        with open(plan.fullpath, encoding="utf-8") as f:
            lines = f.read().split("\n")
        assert lines == [value, ""]  # one line, nothing stripped, nothing split
        assert [ln.module for ln in mp.parse_modules_load(plan.after)] == [value]

    _refused_or("name[0]", lambda root: mp.plan_modules_load([value], root=root, generators=[]), check)


@SETTINGS
@given(st.one_of(HOSTILE, HOSTILE.map(lambda v: f"/etc/modprobe.d/{v}.conf")))
def test_path_is_refused_or_stays_below_root(value):
    def check(root, plan):
        assert _validate.text("path", value, max_len=1024) == value
        assert plan.fullpath == os.path.join(root, value.lstrip("/"))
        assert os.path.realpath(plan.fullpath).startswith(os.path.realpath(root) + os.sep)
        _write(plan)  # _refused_or then checks that every file is below root

    _refused_or("path", lambda root: mp.plan_blacklist("nouveau", path=value, root=root, generators=[]), check)


@SETTINGS
@given(HOSTILE)
def test_kernel_release_is_refused_or_a_plain_directory_name(value):
    def check(root, plan):
        assert re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}", value)
        moddir = os.path.realpath(os.path.join(root, "lib", "modules", value))
        assert os.path.dirname(moddir) == os.path.realpath(os.path.join(root, "lib", "modules"))

    _refused_or("kernel_release", lambda root: mp.plan_blacklist("nouveau", root=root, release=value), check)


def test_the_strategy_reaches_both_outcomes():
    """The properties above are only worth something when hostile values are refused AND good ones get through."""
    outcomes = set()

    @settings(max_examples=200, deadline=None, database=None)
    @given(HOSTILE)
    def probe(value):
        outcomes.add(
            _refused_or("name", lambda root: mp.plan_blacklist(value, root=root, generators=[]), lambda r, p: None)
        )

    probe()
    assert outcomes == {"refused", "accepted"}
