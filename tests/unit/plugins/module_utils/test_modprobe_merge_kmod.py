# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Issue 18: repeated ``options`` lines for one module are merged, never each rewritten; kmod is the oracle.

kmod hands a module the parameters of all its ``options`` lines joined in reading order, and the kernel keeps the
last value of a repeated parameter. A merge must therefore keep every other parameter, in order, and give the
changed one the wanted value, as ``modprobe -C DIR -c`` reads it.
"""

from __future__ import annotations

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _modprobe as mp
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_modprobe_kmod import showconfig, write

SEVEN = (
    "# GPU passthrough, added over the years\n"
    "options vfio-pci ids=10de:1b80\n"
    "options vfio_pci ids=10de:10f0 disable_vga=1\n"
    "options e1000e InterruptThrottleRate=3000\n"
    "options vfio-pci ids=1002:67df\n"
    "\n"
    "options vfio-pci ids=1002:aaf0 nointxmask=1\n"
    "blacklist nouveau\n"
    "options vfio-pci\tids=8086:1533\n"
    "options vfio-pci ids=10de:1b81\n"
    "options vfio-pci ids=10de:10f1 disable_idle_d3=1\n"
    "options e1000e IntMode=1\n"
)


def _tokens(config, name):
    """Every parameter kmod passes to ``name``, in order (all its options lines joined)."""
    return [tok for n, tokens in config["options"] if n == mp.normalize(name) for tok in tokens]


def _values(tokens):
    values = {}
    for tok in tokens:
        key, sep, value = tok.partition("=")
        values[mp.normalize_param(key)] = value if sep else None
    return values


def _apply(root, name, options):
    plan = mp.plan_options(name, options, root=root, generators=[])
    if plan.changed:
        write(root, plan.path, plan.after)
    return plan


@pytest.mark.parametrize("ids", ["10de:10f1", "10de:1b80,10de:10f0"])
def test_seven_options_lines_merge_into_one_that_kmod_reads_as_asked(tmp_path, ids):
    root = str(tmp_path)
    write(root, mp.DEFAULT_MODPROBE_PATH, SEVEN)
    before = showconfig(root)
    plan = _apply(root, "vfio-pci", {"ids": ids})
    assert plan.changed
    after = showconfig(root)

    lines = [ln for ln in plan.after.splitlines() if ln.startswith("options") and "vfio" in ln]
    assert lines == [f"options vfio-pci ids={ids} disable_vga=1 nointxmask=1 disable_idle_d3=1"]
    # every other parameter of vfio-pci: same ones, same order; ids: once, as asked
    old, new = _tokens(before, "vfio-pci"), _tokens(after, "vfio-pci")
    assert [t for t in new if not t.startswith("ids=")] == [t for t in old if not t.startswith("ids=")]
    assert [t for t in new if t.startswith("ids=")] == [f"ids={ids}"]
    assert _values(new) == {**_values(old), "ids": ids}
    # the other module and the rest of the file are untouched
    assert _tokens(after, "e1000e") == _tokens(before, "e1000e")
    assert after["blacklist"] == before["blacklist"]
    assert plan.after == (
        "# GPU passthrough, added over the years\n"
        f"options vfio-pci ids={ids} disable_vga=1 nointxmask=1 disable_idle_d3=1\n"
        "options e1000e InterruptThrottleRate=3000\n"
        "\n"
        "blacklist nouveau\n"
        "options e1000e IntMode=1\n"
    )

    again = _apply(root, "vfio-pci", {"ids": ids})
    assert not again.changed


def test_asking_for_the_value_kmod_already_ends_with_reads_identically(tmp_path):
    """ids=10de:10f1 is the last one, so what the module gets is unchanged by the merge (same effective values)."""
    root = str(tmp_path)
    write(root, mp.DEFAULT_MODPROBE_PATH, SEVEN)
    before = showconfig(root)
    _apply(root, "vfio-pci", {"ids": "10de:10f1"})
    after = showconfig(root)
    assert _values(_tokens(after, "vfio-pci")) == _values(_tokens(before, "vfio-pci"))
    assert len([1 for n, _t in after["options"] if n == "vfio_pci"]) == 1


def test_repeated_lines_that_already_agree_are_not_touched(tmp_path):
    root = str(tmp_path)
    text = "options vfio-pci ids=10de:1b80\n# keep\noptions vfio_pci disable_vga=1 ids=10de:1b80\n"
    write(root, mp.DEFAULT_MODPROBE_PATH, text)
    plan = _apply(root, "vfio-pci", {"ids": "10de:1b80", "disable-vga": 1})
    assert not plan.changed and plan.after == text
