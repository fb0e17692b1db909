# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The four modules on a tree of real-world files (tests/unit/plugins/module_utils/data/real-modprobe, see its README).

For every request on every file: check mode predicts exactly what the real run writes and touches nothing; the
real run keeps every line that does not concern the managed module, byte for byte, and no other file; a second
run changes nothing; and kmod (``modprobe -C ... -c``) reads the other modules' configuration as before and the
managed module's as the module reports it.
"""

from __future__ import annotations

import os
import re
import shutil

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _modprobe as mp
from ansible_collections.hostdev.vfio.plugins.modules import (
    modprobe_blacklist,
    modprobe_options,
    modprobe_softdep,
    modules_load,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_modprobe_kmod import showconfig
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.test_modprobe_hostile import tree_digest
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module

DATA = os.path.join(os.path.dirname(__file__), "..", "module_utils", "data", "real-modprobe")


def _data_files(directory):
    full = os.path.join(DATA, directory.lstrip("/"))
    return sorted(os.path.join(directory, n) for n in os.listdir(full) if n.endswith(".conf"))


MODPROBE_FILES = _data_files("/etc/modprobe.d") + _data_files("/lib/modprobe.d")
LOAD_FILES = _data_files("/etc/modules-load.d")

SOFTDEP = [
    {"name": "snd_hda_intel", "pre": ["vfio-pci"]},
    {"name": "uhci_hcd", "pre": ["vfio-pci"]},  # merges with "softdep uhci-hcd pre: ehci-hcd" in aliases.conf
    {"name": "mod-softdep-a", "post": ["vfio-pci"]},  # three softdep lines for it in the kmod test file
    {"name": "ohci-hcd", "pre": ["ehci-hcd"], "state": "absent"},
]
OPTIONS = [
    {"name": "vfio-pci", "options": {"ids": "10de:1b80,10de:10f0"}},
    {"name": "bonding", "options": {"max_bonds": 1}},  # changes systemd.conf's line
    {"name": "snd-pcsp", "options": {"index": "-2"}},  # already so in aliases.conf
    {"name": "dummy", "options": {"numdummies": None}, "state": "absent"},
]
BLACKLIST = [
    {"name": "nouveau"},  # already in bumblebee.conf
    {"name": "vfio-pci"},
    {"name": "nvidia", "state": "absent"},
    {"name": "floppy", "state": "absent"},
]
MODULES_LOAD = [
    {"name": ["vfio-pci"]},
    {"name": ["dahdi", "dahdi-transcode"]},  # both already listed
    {"name": ["dahdi"], "state": "absent"},
]


def _cases():
    for main, requests, files in (
        (modprobe_softdep.main, SOFTDEP, MODPROBE_FILES),
        (modprobe_options.main, OPTIONS, MODPROBE_FILES),
        (modprobe_blacklist.main, BLACKLIST, MODPROBE_FILES),
        (modules_load.main, MODULES_LOAD, LOAD_FILES),
    ):
        for path in files:
            for n, request in enumerate(requests):
                yield pytest.param(main, path, request, id=f"{main.__module__.rsplit('.', 1)[1]}-{n}-{path}")


def _names(request):
    names = request["name"] if isinstance(request["name"], list) else [request["name"]]
    return {mp.normalize(n) for n in names}


def _unrelated(text, names):
    """The lines of ``text`` (line ends kept) that mention none of ``names`` (as kmod compares module names)."""
    return [ln for ln in text.splitlines(keepends=True) if not {mp.normalize(w) for w in ln.split()} & names]


def _about(config, names):
    """Split kmod's reading into (entries about ``names``, every other entry)."""
    mine, others = {}, {}
    for kind, entries in config.items():
        mine[kind] = [e for e in entries if mp.normalize(e if isinstance(e, str) else e[0]) in names]
        others[kind] = [e for e in entries if mp.normalize(e if isinstance(e, str) else e[0]) not in names]
    return mine, others


def _read(full):
    if not os.path.exists(full):
        return None
    with open(full, encoding="utf-8", newline="") as f:
        return f.read()


@pytest.mark.parametrize(("main", "path", "request_args"), list(_cases()))
def test_real_file_edit(tmp_path, main, path, request_args):
    root = tmp_path / "root"
    shutil.copytree(DATA, root)
    os.remove(root / "README.md")
    full = os.path.join(root, path.lstrip("/"))
    before = _read(full)
    names = _names(request_args)
    kmod = main is not modules_load.main
    config_before = showconfig(str(root)) if kmod else None
    args = {"root": str(root), "path": path, "kernel_release": "none", **request_args}
    if main is modules_load.main:
        args.pop("kernel_release")

    digest = tree_digest(tmp_path)
    predicted, failed = run_module(main, {**args, "_ansible_check_mode": True, "_ansible_diff": True})
    assert not failed, predicted
    assert tree_digest(tmp_path) == digest  # check mode touches nothing

    result, failed = run_module(main, {**args, "_ansible_diff": True})
    assert not failed, result
    after = _read(full)
    assert result["changed"] == predicted["changed"] == (after != before)
    assert predicted["diff"] == result["diff"]
    assert (after or "") == predicted["diff"]["after"]
    assert (after is None) == predicted["diff"]["after_header"].endswith("(absent)")

    # only the managed file changed, and in it only lines about the managed module(s)
    changed = {k for k, v in tree_digest(tmp_path).items() if digest.get(k) != v} | (
        set(digest) - set(tree_digest(tmp_path))
    )
    assert changed <= {os.path.join("root", path.lstrip("/"))}
    assert _unrelated(after or "", names) == _unrelated(before, names)

    again, failed = run_module(main, {**args, "_ansible_check_mode": True})
    assert not failed and again["changed"] is False, again
    again, failed = run_module(main, args)
    assert not failed and again["changed"] is False, again
    assert _read(full) == after

    if not kmod:
        loaded = [mp.normalize(e["name"]) for e in result["effective"] if e["path"] == path]
        listed = [
            mp.normalize(ln.strip()) for ln in (after or "").splitlines() if ln.strip() and ln.strip()[0] not in "#;"
        ]
        assert loaded == listed
        present = request_args.get("state", "present") == "present"
        assert all((n in listed) == present for n in names)
        assert len(listed) == len(set(listed))  # never a duplicate line
        return

    config_after = showconfig(str(root))
    _mine_before, others_before = _about(config_before, names)
    mine_after, others_after = _about(config_after, names)
    assert others_after == others_before  # kmod reads everything else exactly as before
    if main is modprobe_softdep.main:
        eff = result["effective"]
        first = mine_after["softdep"][0] if mine_after["softdep"] else None
        assert (first[1:] if first else None) == ((eff["pre"], eff["post"]) if eff else None)
    elif main is modprobe_options.main:
        values = {}
        for _n, tokens in mine_after["options"]:
            for tok in tokens:
                key, sep, value = tok.partition("=")
                values[mp.normalize_param(key)] = value.replace('"', "") if sep else None
        assert values == result["effective"]
        # in the managed file itself, the module gets what was asked (a later file may still override it: warned)
        in_file = mp.Effective([(path, mp.parse(after or ""))]).option_values(request_args["name"])
        for key, value in request_args["options"].items():
            if request_args.get("state") == "absent":
                assert mp.normalize_param(key) not in in_file
            else:
                assert in_file[mp.normalize_param(key)] == mp.option_value_text(value)
    else:
        assert len(mine_after["blacklist"]) == len(result["effective"])
        ours = [e for e in result["effective"] if e["path"] == path]
        assert len(ours) == (0 if request_args.get("state") == "absent" else 1)


def test_the_real_files_are_the_documented_ones():
    """The README lists every data file (provenance and licence), and nothing else is there."""
    with open(os.path.join(DATA, "README.md"), encoding="utf-8") as f:
        readme = f.read()
    listed = set(re.findall(r"^\| `([^`]+)` \|", readme, flags=re.MULTILINE))
    present = {
        os.path.relpath(os.path.join(d, n), DATA)
        for d, _dirs, names in os.walk(DATA)
        for n in names
        if n != "README.md"
    }
    assert listed == present
    assert len(MODPROBE_FILES) >= 7 and LOAD_FILES
