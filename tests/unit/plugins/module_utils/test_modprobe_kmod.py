# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kmod is the oracle: what _modprobe claims is effective must be what the real modprobe reads.

Every test runs the real ``modprobe`` (kmod) with ``-C`` for each configuration directory of a temporary root,
and ``-d``/``-S`` pointing at a fake lib/modules tree whose .ko files are tiny ELF objects made with gcc and
indexed by the real ``depmod``. Nothing is skipped: without modprobe, depmod or gcc these tests fail.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _modprobe as mp

RELEASE = "9.9.9-hostdev"
SBIN_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
MODULES = {
    "vfio": "kernel/drivers/vfio/vfio.ko",
    "vfio_pci": "kernel/drivers/vfio/pci/vfio-pci.ko",
    "snd_hda_intel": "kernel/sound/pci/hda/snd-hda-intel.ko",
    "e1000e": "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
    "amdgpu": "kernel/drivers/gpu/drm/amd/amdgpu/amdgpu.ko",
}


def tool(name):
    path = shutil.which(name, path=SBIN_PATH)
    if path is None:
        pytest.fail(f"{name} is required for the kmod oracle tests (apt-get install kmod gcc)")
    return path


def build_module_tree(root, builtin=()):
    """lib/modules/RELEASE with loadable fake modules, plus ``builtin`` names listed in modules.builtin."""
    moddir = os.path.join(root, "lib", "modules", RELEASE)
    src = os.path.join(root, "m.c")
    for name, rel in MODULES.items():
        if name in builtin:
            continue
        target = os.path.join(moddir, rel)
        os.makedirs(os.path.dirname(target), exist_ok=True)
        with open(src, "w") as f:
            f.write(
                f'__attribute__((section(".modinfo"),used)) static const char n[] = "name={name}";\n'
                '__attribute__((section(".modinfo"),used)) static const char l[] = "license=GPL";\n'
                '__attribute__((section(".gnu.linkonce.this_module"),used)) static const char t[64] = "";\n'
            )
        subprocess.run([tool("gcc"), "-c", src, "-o", target], check=True)
    os.unlink(src)
    with open(os.path.join(moddir, "modules.builtin"), "w") as f:
        f.writelines(MODULES[b] + "\n" for b in builtin)
    subprocess.run([tool("depmod"), "-b", root, RELEASE], check=True, capture_output=True)


def modprobe(root, *args):
    argv = [tool("modprobe")]
    for d in mp.MODPROBE_DIRS:
        argv += ["-C", os.path.join(root, d.lstrip("/"))]
    argv += ["-d", root, "-S", RELEASE, *args]
    # bytes, not text=True: universal newlines would turn a carriage return that kmod keeps into a line end
    proc = subprocess.run(argv, capture_output=True, check=False)
    return proc.returncode, proc.stdout.decode("utf-8", "surrogateescape"), proc.stderr.decode("utf-8", "replace")


def showconfig(root):
    """softdep/options/blacklist lines kmod reads from the tree (kernel command line options subtracted)."""
    _rc, base, _err = modprobe(os.path.join(root, "nonexistent"), "--showconfig")
    rc, out, err = modprobe(root, "--showconfig")
    assert rc == 0, err
    baseline = set(base.split("\n"))
    found = {"softdep": [], "options": [], "blacklist": []}
    # split on newlines only: a carriage return is part of a word for kmod
    for line in out.split("\n"):
        if line in baseline:
            continue
        word = line.split(" ", 1)[0]
        if word == "softdep":
            # kmod 30 prints "pre: a bpost: c" (no space before post:)
            line = re.sub(r"(?<=\S)post:", " post:", line)
            found["softdep"].append((line.split(" ")[1], *mp.make_command(line).softdep_lists()))
        elif word == "options":
            _o, name, rest = line.split(" ", 2)
            found["options"].append((name, mp.split_params(rest)))
        elif word == "blacklist":
            found["blacklist"].append(line.split(" ")[1])
    return found


def ours(root):
    eff = mp.effective_config(root)
    return {
        "softdep": [(mp.normalize(c.words[1]), *c.softdep_lists()) for _p, c in eff.commands("softdep")],
        "options": [(mp.normalize(c.words[1]), c.option_tokens()) for _p, c in eff.commands("options")],
        "blacklist": [mp.normalize(c.words[1]) for _p, c in eff.commands("blacklist")],
    }


def dry_run(root, module):
    """[(module, args)] that ``modprobe -n -v`` would insmod, in order."""
    rc, out, err = modprobe(root, "-n", "-v", module)
    assert rc == 0, err
    loads = []
    for line in out.splitlines():
        parts = line.split()
        if parts and parts[0] == "insmod":
            name = mp.normalize(os.path.basename(parts[1]).split(".ko")[0])
            loads.append((name, parts[2:]))
    return loads


def write(root, path, text):
    full = os.path.join(root, path.lstrip("/"))
    os.makedirs(os.path.dirname(full), exist_ok=True)
    with open(full, "w", newline="") as f:
        f.write(text)


@pytest.fixture
def root(tmp_path):
    r = str(tmp_path)
    build_module_tree(r)
    return r


def test_effective_files_match_kmod_on_a_tree_with_every_rule(root):
    write(root, "/etc/modprobe.d/10-a.conf", "softdep snd-hda-intel pre: vfio-pci\n# softdep fake pre: x\n")
    write(root, "/lib/modprobe.d/10-a.conf", "blacklist hidden_by_etc\n")
    write(root, "/run/modprobe.d/05-run.conf", "options vfio_pci ids=8086:293e\\\n disable_vga=1\n")
    write(root, "/usr/local/lib/modprobe.d/20-local.conf", "blacklist local_one\n")
    write(root, "/lib/modprobe.d/30-lib.conf", 'blacklist lib-one\r\noptions e1000e  a=1\tb="x y"\n')
    write(root, "/lib/modprobe.d/40-legacy.alias", "blacklist from_alias_suffix\n")
    write(root, "/etc/modprobe.d/.hidden.conf", "blacklist dotfile\n")
    write(root, "/etc/modprobe.d/notconf", "blacklist no_suffix\n")
    write(root, "/etc/modprobe.d/dir.conf/x.conf", "blacklist in_subdir\n")
    write(root, "/lib/modprobe.d/50-masked.conf", "blacklist masked\n")
    os.symlink("/dev/null", os.path.join(root, "etc/modprobe.d/50-masked.conf"))
    write(
        root,
        "/etc/modprobe.d/60-cont.conf",
        "# comment \\\nblacklist swallowed_by_comment\nsoftdep amdgpu pre: vfio-pci post: e1000e\n",
    )
    theirs = showconfig(root)
    assert theirs["blacklist"], "the oracle returned nothing: the test tree is not being read"
    assert theirs == ours(root)
    assert "hidden_by_etc" not in theirs["blacklist"] and "masked" not in theirs["blacklist"]
    assert "from_alias_suffix" in theirs["blacklist"]
    files, hidden = mp.list_config_files(root, mp.MODPROBE_DIRS)
    assert hidden == {
        "/lib/modprobe.d/10-a.conf": "/etc/modprobe.d/10-a.conf",
        "/lib/modprobe.d/50-masked.conf": "/etc/modprobe.d/50-masked.conf",
    }
    assert files[0][0] == "/run/modprobe.d/05-run.conf"


def test_seed_scenario_vfio_pci_is_loaded_first_with_its_ids(root):
    plan = mp.plan_options("vfio-pci", {"ids": "8086:293e"}, root=root, release=RELEASE, generators=[])
    write(root, plan.path, plan.after)
    plan = mp.plan_softdep("snd_hda_intel", pre=["vfio-pci"], root=root, release=RELEASE, generators=[])
    write(root, plan.path, plan.after)
    assert plan.warnings == []
    assert dry_run(root, "snd_hda_intel") == [("vfio_pci", ["ids=8086:293e"]), ("snd_hda_intel", [])]
    assert showconfig(root)["softdep"] == [("snd_hda_intel", ["vfio-pci"], [])]
    # and removing both restores the plain load
    plan = mp.plan_softdep("snd_hda_intel", pre=["vfio-pci"], state="absent", root=root, generators=[])
    write(root, plan.path, plan.after)
    plan = mp.plan_options("vfio-pci", {"ids": None}, state="absent", root=root, generators=[])
    assert plan.after == "" and plan.delete
    assert dry_run(root, "snd_hda_intel") == [("snd_hda_intel", [])]


def test_first_softdep_wins_and_the_plan_says_which(root):
    write(root, "/etc/modprobe.d/00-other.conf", "softdep snd-hda-intel pre: e1000e\n")
    plan = mp.plan_softdep("snd_hda_intel", pre=["vfio-pci"], root=root, release=RELEASE, generators=[])
    write(root, plan.path, plan.after)
    assert plan.info["effective"]["path"] == "/etc/modprobe.d/00-other.conf"
    assert plan.info["effective"]["pre"] == ["e1000e"]
    assert any("kmod uses only one softdep" in w for w in plan.warnings)
    loads = [name for name, _args in dry_run(root, "snd_hda_intel")]
    assert loads == ["e1000e", "snd_hda_intel"]


@pytest.mark.parametrize(("name", "winner"), [("hostdev-vfio.conf", "vfio_pci"), ("z.conf", "e1000e")])
def test_softdeps_declared_by_modules_sort_as_modules_softdep(root, name, winner):
    """depmod's modules.softdep is read as if it were a configuration file of that name."""
    with open(os.path.join(root, "lib", "modules", RELEASE, "modules.softdep"), "a") as f:
        f.write("softdep snd_hda_intel pre: e1000e\n")
    path = "/etc/modprobe.d/" + name
    plan = mp.plan_softdep("snd_hda_intel", pre=["vfio-pci"], path=path, root=root, release=RELEASE, generators=[])
    write(root, plan.path, plan.after)
    assert [n for n, _a in dry_run(root, "snd_hda_intel")] == [winner, "snd_hda_intel"]
    assert plan.info["effective"]["pre"] == [{"vfio_pci": "vfio-pci"}.get(winner, winner)]
    if winner == "e1000e":
        assert plan.info["effective"]["path"] == f"/lib/modules/{RELEASE}/modules.softdep"
        assert any("comes first and wins" in w for w in plan.warnings)


def test_glob_softdep_applies_like_kmod(root):
    write(root, "/etc/modprobe.d/00-glob.conf", "softdep snd* pre: e1000e\n")
    eff = mp.effective_config(root)
    assert [c.words[1] for _p, c in eff.softdeps("snd_hda_intel")] == ["snd*"]
    assert [n for n, _a in dry_run(root, "snd_hda_intel")] == ["e1000e", "snd_hda_intel"]


def test_options_do_not_expand_globs_unlike_softdep(root):
    write(root, "/etc/modprobe.d/g.conf", "options vfio* x=1\noptions vfio-pci y=2\n")
    assert mp.effective_config(root).option_values("vfio_pci") == {"y": "2"}
    assert dry_run(root, "vfio_pci") == [("vfio_pci", ["y=2"])]


def test_options_from_several_files_last_value_wins(root):
    write(root, "/etc/modprobe.d/a.conf", "options vfio-pci ids=1111:2222\n")
    write(root, "/lib/modprobe.d/b.conf", "options vfio_pci ids=3333:4444 disable_vga=1\n")
    plan = mp.plan_options("vfio-pci", {"ids": "8086:293e"}, path="/etc/modprobe.d/a.conf", root=root, generators=[])
    write(root, plan.path, plan.after)
    assert plan.info["effective"] == {"ids": "3333:4444", "disable_vga": "1"}
    assert any("ids=3333:4444" in w and "/lib/modprobe.d/b.conf" in w for w in plan.warnings)
    ((name, args),) = dry_run(root, "vfio_pci")
    assert name == "vfio_pci"
    assert [a for a in args if a.startswith("ids=")][-1] == "ids=3333:4444"
    assert args == ["ids=8086:293e", "ids=3333:4444", "disable_vga=1"]


def test_builtin_module_is_reported_like_kmod(tmp_path):
    r = str(tmp_path)
    build_module_tree(r, builtin=("snd_hda_intel",))
    rc, out, err = modprobe(r, "--show-depends", "snd_hda_intel")
    assert rc == 0, err
    assert out.strip() == "builtin snd_hda_intel"
    assert "snd_hda_intel" in mp.builtin_modules(r, RELEASE)
    # kmod says builtin: a softdep for it never runs, so the plan refuses it
    with pytest.raises(mp.ModprobeError, match="refusing a softdep for snd-hda-intel: it is built into kernel"):
        mp.plan_softdep("snd-hda-intel", pre=["vfio-pci"], root=r, release=RELEASE, generators=[])
    plan = mp.plan_softdep("e1000e", pre=["vfio-pcii"], root=r, release=RELEASE, generators=[])
    assert any("vfio-pcii is neither a loadable module" in w for w in plan.warnings)


def test_blacklist_plan_matches_kmod(root):
    write(root, "/etc/modprobe.d/keep.conf", "# mine\nblacklist nouveau\n")
    plan = mp.plan_blacklist("snd-hda-intel", path="/etc/modprobe.d/keep.conf", root=root, generators=[])
    write(root, plan.path, plan.after)
    assert showconfig(root)["blacklist"] == ["nouveau", "snd_hda_intel"]
    assert [e["path"] for e in plan.info["effective"]] == ["/etc/modprobe.d/keep.conf"]
    # blacklist only affects alias lookups: an explicit load still happens (what the docs say)
    assert dry_run(root, "snd_hda_intel") == [("snd_hda_intel", [])]


def test_kmod_quirk_extra_whitespace_before_pre_empties_the_softdep(root):
    write(root, "/etc/modprobe.d/q.conf", "softdep snd_hda_intel \\\n pre: vfio-pci\n")
    assert showconfig(root)["softdep"] == [("snd_hda_intel", [], [])] == ours(root)["softdep"]
    assert dry_run(root, "snd_hda_intel") == [("snd_hda_intel", [])]
    plan = mp.plan_softdep("snd_hda_intel", pre=["vfio-pci"], path="/etc/modprobe.d/q.conf", root=root, generators=[])
    write(root, plan.path, plan.after)
    assert [n for n, _a in dry_run(root, "snd_hda_intel")] == ["vfio_pci", "snd_hda_intel"]
