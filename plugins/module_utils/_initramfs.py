# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Kernel modules in the initramfs: initramfs-tools, dracut and mkinitcpio backends.

Pure planning (config file content, which kernels to regenerate) plus listing of images: read directly (``_cpio``)
or, for formats that reader does not read, through the generator's lister run by a command runner
``run(argv) -> (rc, stdout, stderr)``; every path is below a root prefix so unit tests use fake trees.
"""

from __future__ import annotations

__metaclass__ = type

import os
import re

from ansible_collections.hostdev.vfio.plugins.module_utils import _cpio, _validate
from ansible_collections.hostdev.vfio.plugins.module_utils._files import (
    FileProblem,
    read_bytes,
    read_config,
    rooted,
    write_atomic,
)
from ansible_collections.hostdev.vfio.plugins.module_utils._host import Failed

MARKER = "# Managed by hostdev.vfio.initramfs: do not edit by hand."
BACKENDS = ("initramfs-tools", "dracut", "mkinitcpio")
# vfio_virqfd was merged into the vfio module in Linux 6.2.
VIRQFD = "vfio_virqfd"


class InitramfsError(Exception):
    """A request or host state the module cannot handle; the message says what to do."""


def read_conf(path: str, what: str = "initramfs configuration file") -> str | None:
    """A configuration file this module may edit (UTF-8 text, no NUL), or None; problems become InitramfsError."""
    try:
        return read_config(path, what)
    except FileProblem as exc:
        raise InitramfsError(str(exc)) from None


def _read_index(path: str) -> str:
    """modules.dep / modules.builtin, only read: undecodable bytes become U+FFFD instead of a traceback."""
    try:
        data = read_bytes(path)
    except FileProblem as exc:
        raise InitramfsError(str(exc)) from None
    return "" if data is None else data.decode("utf-8", errors="replace")


def validate_request(modules, kernel_versions) -> tuple[list[str], list[str] | None]:
    """Module names and kernel releases checked by _validate before any file is read or command runs: a release
    is a directory name under /lib/modules (no '/', '..', newline), passed to update-initramfs -k / dracut --kver."""
    try:
        mods = _validate.each("modules", modules, _validate.module_name)
        kernels = (
            None
            if kernel_versions is None
            else _validate.each("kernel_versions", kernel_versions, _validate.kernel_release)
        )
    except _validate.InvalidValue as exc:
        raise InitramfsError(str(exc)) from None
    return mods, kernels


def norm(name: str) -> str:
    """Module names: '-' and '_' are the same character to modprobe."""
    return name.replace("-", "_")


def kernel_tuple(version: str) -> tuple[int, int]:
    m = re.match(r"^(\d+)\.(\d+)", version)
    if not m:
        raise InitramfsError(f"cannot read the kernel version {version!r}")
    return int(m.group(1)), int(m.group(2))


def modules_for_kernel(modules: list[str], version: str) -> list[str]:
    """The modules a kernel of this version needs: vfio_virqfd only before 6.2 (it is part of vfio since)."""
    return [m for m in modules if norm(m) != VIRQFD or kernel_tuple(version) < (6, 2)]


def validate_modules(modules: list[str]) -> list[str]:
    """Module names (:func:`_validate.module_name`), duplicates (``vfio-pci``/``vfio_pci``) dropped."""
    out = []
    for m in validate_request(modules, None)[0]:
        if norm(m) not in [norm(x) for x in out]:
            out.append(m)
    return out


def installed_kernels(root: str) -> list[str]:
    """Kernel versions with a directory under /lib/modules and a kernel image (/boot/vmlinuz-V or .../V/vmlinuz)."""
    mod_dir = rooted(root, "/lib/modules")
    if not os.path.isdir(mod_dir):
        return []
    out = []
    try:
        names = sorted(os.listdir(mod_dir))
    except OSError as exc:
        raise InitramfsError(f"{mod_dir}: cannot list it: {exc.strerror or exc}") from None
    for ver in names:
        if not _validate.KERNEL_RELEASE_RE.fullmatch(ver):
            continue  # not a kernel release (a stray file or a crafted name): never passed to a command
        if os.path.exists(rooted(root, f"/boot/vmlinuz-{ver}")) or os.path.exists(
            os.path.join(mod_dir, ver, "vmlinuz")
        ):
            out.append(ver)
    return out


def kernel_module_index(root: str, version: str) -> tuple[set[str], set[str]]:
    """(loadable, built-in) module names of a kernel, from modules.dep and modules.builtin."""
    base = rooted(root, f"/lib/modules/{version}")
    loadable, builtin = set(), set()
    for fname, target in (("modules.dep", loadable), ("modules.builtin", builtin)):
        text = _read_index(os.path.join(base, fname))
        for line in text.splitlines():
            path = line.split(":", 1)[0].strip()
            if path:
                target.add(norm(re.sub(r"\.ko(\.\w+)?$", "", os.path.basename(path))))
    return loadable, builtin


# ---------------------------------------------------------------------------------------------------------------
# Configuration files
# ---------------------------------------------------------------------------------------------------------------
def block_markers(name: str) -> tuple[str, str]:
    """The lines that delimit this module's block in /etc/initramfs-tools/modules (comments to initramfs-tools)."""
    return f"# BEGIN {name}: managed by hostdev.vfio.initramfs, do not edit by hand", f"# END {name}"


def edit_modules_file(text: str | None, modules: list[str], present: bool, name: str = "hostdev-vfio") -> str | None:
    """/etc/initramfs-tools/modules: one module per line (with optional parameters); keep every other byte.

    The file is shared with the administrator and other tools, so the modules this module adds go into its own
    block (``# BEGIN <name>`` ... ``# END <name>``), appended at the end of the file. A module already listed
    anywhere in the file is not added again. With ``present=False`` only lines inside the block are removed (and
    the block with them when it becomes empty): a line that was there before (outside the block) is not ours to
    delete, so add-then-remove gives back the original file byte for byte.
    """
    text = text or ""
    begin, end = block_markers(name)
    lines = text.splitlines(True)
    names, inside, b_idx, e_idx = [], [], None, None
    for idx, line in enumerate(lines):
        stripped = line.strip()
        if stripped == begin and b_idx is None:
            b_idx = idx
        elif stripped == end and b_idx is not None and e_idx is None:
            e_idx = idx
        names.append(norm(stripped.split()[0]) if stripped and not stripped.startswith("#") else None)
        inside.append(b_idx is not None and b_idx < idx and e_idx is None)
    if b_idx is not None and e_idx is None:
        raise InitramfsError(f"{begin!r} has no matching {end!r} line in the modules file: repair the file by hand")
    if present:
        add = [m for m in modules if norm(m) not in names]
        if not add:
            return text
        if b_idx is not None:
            return "".join(lines[:e_idx]) + "".join(f"{m}\n" for m in add) + "".join(lines[e_idx:])
        if text and not text.endswith("\n"):
            text += "\n"
        return text + begin + "\n" + "".join(f"{m}\n" for m in add) + end + "\n"
    drop = {norm(m) for m in modules}
    keep = [not (inside[i] and names[i] in drop) for i in range(len(lines))]
    if b_idx is not None and not any(keep[i] and lines[i].strip() for i in range(b_idx + 1, e_idx)):
        keep[b_idx] = keep[e_idx] = False
    return "".join(line for line, k in zip(lines, keep, strict=True) if k)


def _parse_list_file(text: str | None, pattern: str) -> list[str]:
    if not text:
        return []
    out = []
    for m in re.finditer(pattern, text, re.M):
        out += m.group(1).split()
    return out


# The owned drop-in of dracut and mkinitcpio: (modules, files) <-> text. dracut copies /etc/modprobe.d only in
# hostonly mode and /etc/udev/rules.d never (its 95udev-rules module installs a fixed list of rules), mkinitcpio
# neither: the files the image must carry are listed in the drop-in (install_items / FILES).
def dracut_lists(text: str | None) -> tuple[list[str], list[str]]:
    return (
        _parse_list_file(text, r'^\s*force_drivers\+=\s*"([^"]*)"'),
        _parse_list_file(text, r'^\s*install_items\+=\s*"([^"]*)"'),
    )


def render_dracut(modules: list[str], files: list[str]) -> str:
    out = [MARKER]
    if modules:
        out += [
            "# force_drivers: these modules are put into the initramfs and loaded early (modprobe) by dracut.",
            f'force_drivers+=" {" ".join(modules)} "',
        ]
    if files:
        out += [
            "# install_items: files the image carries (dracut copies neither /etc/udev/rules.d nor, unless hostonly,",
            "# /etc/modprobe.d).",
            f'install_items+=" {" ".join(files)} "',
        ]
    return "\n".join(out) + "\n"


def mkinitcpio_lists(text: str | None) -> tuple[list[str], list[str]]:
    return _parse_list_file(text, r"^\s*MODULES\+=\(([^)]*)\)"), _parse_list_file(text, r"^\s*FILES\+=\(([^)]*)\)")


def render_mkinitcpio(modules: list[str], files: list[str]) -> str:
    out = [MARKER, "# Sourced after /etc/mkinitcpio.conf: these modules are put into the initramfs and loaded early,"]
    out += ["# and these files are copied into it."]
    if modules:
        out.append(f"MODULES+=({' '.join(modules)})")
    if files:
        out.append(f"FILES+=({' '.join(files)})")
    return "\n".join(out) + "\n"


def _merged(current: list[str], wanted: list[str], present: bool, key=lambda x: x) -> list[str]:
    if present:
        return current + [w for w in wanted if key(w) not in [key(c) for c in current]]
    drop = {key(w) for w in wanted}
    return [c for c in current if key(c) not in drop]


def _owned_file(before: str | None, lists, modules: list[str], files: list[str], present: bool, render) -> str | None:
    cur_mods, cur_files = lists(before)
    new_mods = _merged(cur_mods, modules, present, norm)
    new_files = _merged(cur_files, files, present)
    if before is not None and MARKER in before and (new_mods, new_files) == (cur_mods, cur_files):
        return before
    return render(new_mods, new_files) if new_mods or new_files else None


def validate_files(files) -> list[str]:
    try:
        return _validate.each("files", files, _validate.image_file)
    except _validate.InvalidValue as exc:
        raise InitramfsError(str(exc)) from None


# ---------------------------------------------------------------------------------------------------------------
# Which files an image carries, per generator
# ---------------------------------------------------------------------------------------------------------------
GENERATOR_BINARIES = {
    "initramfs-tools": ("usr/sbin/update-initramfs", "sbin/update-initramfs"),
    "dracut": ("usr/bin/dracut", "usr/sbin/dracut", "sbin/dracut"),
    "mkinitcpio": ("usr/bin/mkinitcpio",),
}
_MODPROBE_DIRS = ("/etc/modprobe.d", "/lib/modprobe.d", "/usr/lib/modprobe.d")
_MODULES_LOAD_DIRS = ("/etc/modules-load.d", "/usr/lib/modules-load.d", "/lib/modules-load.d")


def generators(root: str = "/") -> list[str]:
    """The initramfs generators installed under ``root``."""
    return [g for g, bins in GENERATOR_BINARIES.items() if any(os.path.exists(rooted(root, "/" + b)) for b in bins)]


def _conf_files(root: str, system: str, etc_file: str, etc_dir: str) -> list[str]:
    """A generator's configuration in reading order: the main file, then *.conf of the system and /etc drop-in
    directories by name (a same-named /etc file replaces the system one)."""
    by_name = {}
    for d in (system, etc_dir):
        path = rooted(root, d)
        if d and os.path.isdir(path):
            for f in os.listdir(path):
                if f.endswith(".conf") and not f.startswith("."):
                    by_name[f] = os.path.join(path, f)
    return [rooted(root, etc_file)] + [by_name[f] for f in sorted(by_name)]


def _shell_settings(paths: list[str], name: str, append_pattern: str) -> tuple[str | None, list[str]]:
    """The last plain ``name=value`` and every word appended by ``append_pattern`` across sourced shell files."""
    last, items = None, []
    for path in paths:
        text = read_conf(path, "initramfs generator configuration") or ""
        for m in re.finditer(rf'^\s*{name}=\s*["\']?([A-Za-z]*)', text, re.M):
            last = m.group(1)
        items += _parse_list_file(text, append_pattern)
    return last, items


def dracut_carried(root: str) -> tuple[bool, list[str]]:
    """(hostonly, install_items) of the dracut configuration under ``root``."""
    paths = _conf_files(root, "/usr/lib/dracut/dracut.conf.d", "/etc/dracut.conf", "/etc/dracut.conf.d")
    hostonly, items = _shell_settings(paths, "hostonly", r'^\s*install_items\+?=\s*"([^"]*)"')
    return hostonly in ("yes", "y", "1"), items


def mkinitcpio_files(root: str) -> list[str]:
    paths = _conf_files(root, "", "/etc/mkinitcpio.conf", "/etc/mkinitcpio.conf.d")
    return _shell_settings(paths, "FILES", r"^\s*FILES\+?=\(([^)]*)\)")[1]


def carries(root: str, path: str, gens: list[str]) -> bool:
    """Whether the image of one of ``gens`` carries the file at ``path`` (absolute, without the root prefix) once
    regenerated: by the generator's own rules (initramfs-tools: modprobe.d and /etc/udev/rules.d; dracut: the
    system modprobe.d, /etc/modprobe.d in hostonly mode, modules-load.d) or because its configuration names it
    (dracut install_items, mkinitcpio FILES - what O(files) of the initramfs module writes)."""
    directory, name = os.path.split(path)
    conf = name.endswith(".conf") and not name.startswith(".")
    for gen in gens:
        if gen == "initramfs-tools":
            if (conf and directory in _MODPROBE_DIRS) or (directory == "/etc/udev/rules.d" and name.endswith(".rules")):
                return True
        elif gen == "dracut":
            hostonly, items = dracut_carried(root)
            modprobe = _MODPROBE_DIRS if hostonly else _MODPROBE_DIRS[1:]
            if path in items or (conf and directory in modprobe + _MODULES_LOAD_DIRS):
                return True
        elif gen == "mkinitcpio" and path in mkinitcpio_files(root):
            return True
    return False


# ---------------------------------------------------------------------------------------------------------------
# Images
# ---------------------------------------------------------------------------------------------------------------
def image_path(root: str, backend: str, version: str) -> str:
    if backend == "initramfs-tools":
        return rooted(root, f"/boot/initrd.img-{version}")
    if backend == "dracut":
        for cand in (f"/boot/initramfs-{version}.img", f"/boot/initrd.img-{version}", f"/boot/initrd-{version}"):
            if os.path.exists(rooted(root, cand)):
                return rooted(root, cand)
        return rooted(root, f"/boot/initramfs-{version}.img")
    return rooted(root, f"/boot/initramfs-{version}.img")


def parse_listing(text: str) -> list[str]:
    """Paths in an image listing: lsinitramfs prints one path a line, lsinitrd/lsinitcpio an ``ls -l`` like line."""
    out = []
    for line in text.splitlines():
        line = line.rstrip()
        if not line:
            continue
        parts = line.split()
        if len(parts) >= 9 and re.match(r"^[-dlcbps][rwxsStT-]{9}", parts[0]):
            # A device node has "major, minor" where a file has its size: one field more before the name.
            first = 9 if parts[0][0] in "cb" else 8
            path = " ".join(parts[first:]).split(" -> ", maxsplit=1)[0]
        else:
            path = line.strip()
        out.append(_cpio.normal(path))
    return [p for p in out if p]


def image_contents(paths: list[str]) -> tuple[set[str], set[str]]:
    """(module names, file paths without leading '/') in an image listing."""
    mods = set()
    for p in paths:
        m = re.search(r"/([^/]+)\.ko(\.\w+)?$", "/" + p)
        if m:
            mods.add(norm(m.group(1)))
    return mods, set(paths)


def check_image(paths: list[str], modules: list[str], builtin: set[str], files: list[str]) -> dict:
    mods, files_in = image_contents(paths)
    merged = {p[4:] for p in files_in if p.startswith("usr/")}
    missing_mods = [m for m in modules if norm(m) not in mods and norm(m) not in builtin]
    missing_files = []
    for f in files:
        rel = f.lstrip("/")
        # initramfs-tools' udev hook copies /etc/udev/rules.d/X to lib/udev/rules.d/X inside the image.
        alias = "lib/udev/rules.d/" + rel[len("etc/udev/rules.d/") :] if rel.startswith("etc/udev/rules.d/") else rel
        if not {rel, alias, "usr/" + rel, "usr/" + alias} & (files_in | merged):
            missing_files.append(f)
    return {
        "modules": sorted(m for m in (norm(x) for x in modules) if m in mods),
        "builtin": sorted(m for m in (norm(x) for x in modules) if m in builtin),
        "files": [f for f in files if f not in missing_files],
        "missing_modules": missing_mods,
        "missing_files": missing_files,
    }


def list_image(run, backend: str, image: str, tools: dict) -> tuple[list[str], str]:
    """(the paths in ``image``, what read them): the image's cpio archives read directly (``_cpio``, when
    ``tools`` has a ``which``), else, or when that reader meets a format it does not read, the generator's lister."""
    which = tools.get("which")
    if which is not None:
        try:
            return _cpio.names(image, which), "cpio"
        except _cpio.Unreadable:
            pass  # the generator's own lister knows its formats
        except OSError as exc:
            raise InitramfsError(f"cannot read {image}: {exc.strerror or exc}") from None
    if backend == "initramfs-tools":
        argv = [tools["lsinitramfs"], image]
    elif backend == "dracut":
        argv = [tools["lsinitrd"], image]
    else:
        argv = [tools["lsinitcpio"], "-l", image]
    rc, out, err = run(argv)
    if rc != 0:
        raise InitramfsError(f"listing {image} failed: {' '.join(argv)} rc={rc}: {(err or out).strip()}")
    return parse_listing(out), os.path.basename(argv[0])


def regenerate_argv(backend: str, version: str, image: str, tools: dict) -> list[str]:
    if backend == "initramfs-tools":
        return [tools["update-initramfs"], "-u", "-k", version]
    if backend == "dracut":
        return [tools["dracut"], "-f", "--kver", version, image]
    return [tools["mkinitcpio"], "-P"]


# ---------------------------------------------------------------------------------------------------------------
# Planning
# ---------------------------------------------------------------------------------------------------------------
class Plan:
    def __init__(self, backend: str):
        self.backend = backend
        self.config_path = ""
        self.config_before: str | None = None
        self.config_after: str | None = None
        self.kernels: list[str] = []
        self.regenerate: list[str] = []
        self.reasons: dict[str, str] = {}
        self.images: dict[str, dict] = {}
        self.modules_by_kernel: dict[str, list[str]] = {}
        self.warnings: list[str] = []
        self.targets: list[tuple[str, str, str]] = []  # (key, kernel version, image path)
        self.commands: list[list[str]] = []
        self.verify_files: list[str] = []

    @property
    def config_changed(self) -> bool:
        return self.config_after != self.config_before

    @property
    def changed(self) -> bool:
        return self.config_changed or bool(self.regenerate)


def plan_initramfs(
    root: str,
    backend: str,
    modules: list[str],
    present: bool,
    regenerate: str,
    kernel_versions: list[str] | None,
    verify_files: list[str],
    files_changed: bool,
    name: str,
    run,
    tools: dict,
    files: list[str] | None = None,
) -> Plan:
    """Compute the configuration change and which kernels' images to regenerate (reading the current images).

    ``files`` must be inside the images: dracut and mkinitcpio get them listed in the drop-in (install_items,
    FILES); initramfs-tools copies /etc/modprobe.d and /etc/udev/rules.d by its own hooks, so there they are only
    verified. With ``present`` false they leave the drop-in."""
    plan = Plan(backend)
    modules = validate_modules(modules)
    files = validate_files(files or [])
    verify_files = list(verify_files) + [f for f in files if f not in verify_files] if present else []
    plan.verify_files = verify_files
    kernel_versions = validate_request([], kernel_versions)[1]
    kernels = list(kernel_versions) if kernel_versions else installed_kernels(root)
    if not kernels:
        raise InitramfsError(
            f"no installed kernel found (a directory under {rooted(root, '/lib/modules')} with a matching "
            "/boot/vmlinuz-VERSION); give kernel_versions"
        )
    plan.kernels = kernels
    indexes = {v: kernel_module_index(root, v) for v in kernels}
    for v in kernels:
        plan.modules_by_kernel[v] = modules_for_kernel(modules, v)
    if present:
        for m in modules:
            known = [
                v for v in kernels if norm(m) in indexes[v][0] | indexes[v][1] or not (indexes[v][0] | indexes[v][1])
            ]
            if not known and not (norm(m) == VIRQFD and all(kernel_tuple(v) >= (6, 2) for v in kernels)):
                raise InitramfsError(
                    f"module {m!r} does not exist for any of the kernels {', '.join(kernels)} "
                    "(not in modules.dep or modules.builtin); check the name"
                )
    # vfio_virqfd only goes into the configuration when a kernel before 6.2 needs it.
    config_modules = [m for m in modules if norm(m) != VIRQFD or any(m in plan.modules_by_kernel[v] for v in kernels)]
    if present and len(config_modules) != len(modules):
        plan.warnings.append("vfio_virqfd is part of vfio since Linux 6.2: not added for these kernels")

    if backend == "initramfs-tools":
        plan.config_path = rooted(root, "/etc/initramfs-tools/modules")
        plan.config_before = read_conf(plan.config_path)
        plan.config_after = edit_modules_file(plan.config_before, config_modules, present, name)
        if plan.config_before is None and not present:
            plan.config_after = None
    elif backend == "dracut":
        plan.config_path = rooted(root, f"/etc/dracut.conf.d/{name}.conf")
        plan.config_before = read_conf(plan.config_path)
        plan.config_after = _owned_file(plan.config_before, dracut_lists, config_modules, files, present, render_dracut)
    elif backend == "mkinitcpio":
        confd = rooted(root, "/etc/mkinitcpio.conf.d")
        if not os.path.isdir(confd):
            raise InitramfsError(
                f"{confd} does not exist (mkinitcpio older than v36?): add the modules to MODULES=() in "
                "/etc/mkinitcpio.conf yourself"
            )
        plan.config_path = os.path.join(confd, f"{name}.conf")
        plan.config_before = read_conf(plan.config_path)
        plan.config_after = _owned_file(
            plan.config_before, mkinitcpio_lists, config_modules, files, present, render_mkinitcpio
        )
    else:
        raise InitramfsError(f"unknown backend {backend!r}")

    if backend == "mkinitcpio":
        # mkinitcpio names images after presets (initramfs-linux.img), not kernel versions: one key per image,
        # regenerated together by ``mkinitcpio -P``; vfio_virqfd is wanted when any installed kernel needs it.
        try:
            images = (
                sorted(
                    f
                    for f in os.listdir(rooted(root, "/boot"))
                    if re.fullmatch(r"initramfs-[A-Za-z0-9._+~-]+\.img", f) and "-fallback" not in f
                )
                if os.path.isdir(rooted(root, "/boot"))
                else []
            )
        except OSError as exc:
            raise InitramfsError(f"{rooted(root, '/boot')}: cannot list it: {exc.strerror or exc}") from None
        oldest = min(kernels, key=kernel_tuple)
        targets = [(f, oldest, rooted(root, f"/boot/{f}")) for f in images] or [
            (oldest, oldest, image_path(root, backend, oldest))
        ]
        plan.modules_by_kernel = {t[0]: plan.modules_by_kernel[t[1]] for t in targets}
    else:
        targets = [(v, v, image_path(root, backend, v)) for v in kernels]
    plan.targets = targets
    for key, ver, image in targets:
        info = {"image": image, "exists": os.path.exists(image)}
        want = plan.modules_by_kernel[key] if present else []
        if info["exists"] and regenerate == "auto" and not plan.config_changed and not files_changed:
            listing, info["listed_by"] = list_image(run, backend, image, tools)
            info.update(check_image(listing, want, indexes[ver][1], verify_files))
        plan.images[key] = info
        if regenerate == "never":
            continue
        if regenerate == "always":
            plan.reasons[key] = "regenerate=always"
        elif plan.config_changed:
            plan.reasons[key] = "configuration changed"
        elif files_changed:
            plan.reasons[key] = "a file copied into the image changed"
        elif not info["exists"]:
            plan.reasons[key] = "no image yet"
        elif present and (info.get("missing_modules") or info.get("missing_files")):
            plan.reasons[key] = "image lacks " + ", ".join(info["missing_modules"] + info["missing_files"])
        else:
            continue
        plan.regenerate.append(key)
    if plan.regenerate:
        if backend == "mkinitcpio":
            plan.commands = [[tools["mkinitcpio"], "-P"]]
        else:
            plan.commands = [regenerate_argv(backend, t[0], t[2], tools) for t in targets if t[0] in plan.regenerate]
    return plan


def verify(plan: Plan, root: str, present: bool, run, tools: dict) -> list[str]:
    """List every image again; return the problems (missing modules or files) of state=present."""
    problems = []
    verify_files = plan.verify_files
    for key, ver, image in plan.targets:
        if not os.path.exists(image):
            if present:
                problems.append(f"{image} does not exist")
            continue
        want = plan.modules_by_kernel[key] if present else []
        listing, plan.images[key]["listed_by"] = list_image(run, plan.backend, image, tools)
        info = check_image(listing, want, kernel_module_index(root, ver)[1], verify_files if present else [])
        plan.images[key].update(info)
        plan.images[key]["exists"] = True
        if present and (info["missing_modules"] or info["missing_files"]):
            problems.append(f"{image} lacks {', '.join(info['missing_modules'] + info['missing_files'])}")
    return problems


def detect_backend(root: str, which) -> str:
    if which("update-initramfs") and os.path.isdir(rooted(root, "/etc/initramfs-tools")):
        return "initramfs-tools"
    if which("dracut") and os.path.isdir(rooted(root, "/etc/dracut.conf.d")):
        return "dracut"
    if which("mkinitcpio"):
        return "mkinitcpio"
    return ""


# --------------------------------------------------------------------------------------------------- the operation
TOOLS = {
    "initramfs-tools": ("update-initramfs", "lsinitramfs"),
    "dracut": ("dracut", "lsinitrd"),
    "mkinitcpio": ("mkinitcpio", "lsinitcpio"),
}


def run_request(
    host,
    modules,
    state="present",
    regenerate="auto",
    files_changed=False,
    kernel_versions=None,
    files=(),
    verify_files=(),
    backend="auto",
    name="hostdev-vfio",
    root="/",
) -> dict:
    """hostdev.vfio.initramfs on ``host`` (``_host.Host``): the modules (and ``files``) in or out of the images'
    configuration, the images regenerated as ``regenerate`` says, then listed with the generator's own lister.
    Returns the module's result; raises ``_host.Failed``."""
    # Every value is checked before any file is read and before any command runs.
    try:
        validate_request(modules, kernel_versions)
        _validate.file_name("name", name)
        _validate.path_text("root", root)
        for index, f in enumerate(verify_files):
            _validate.path_text(f"verify_files[{index}]", f)
        validate_files(files)
    except (InitramfsError, _validate.InvalidValue) as e:
        raise Failed(str(e)) from None
    if backend == "auto":
        backend = detect_backend(root, host.bin)
        if not backend:
            raise Failed(
                "no initramfs generator found: looked for update-initramfs with /etc/initramfs-tools, dracut "
                "with /etc/dracut.conf.d, and mkinitcpio; set backend explicitly"
            )
    gen, lister = TOOLS[backend]
    tools = {gen: host.bin(gen, required=True), lister: host.bin(lister, required=True), "which": host.bin}
    present = state == "present"

    def run(argv):
        return host.run(argv)

    try:
        plan = plan_initramfs(
            root,
            backend,
            modules,
            present,
            regenerate,
            kernel_versions,
            verify_files,
            files_changed,
            name,
            run,
            tools,
            files,
        )
    except InitramfsError as e:
        raise Failed(str(e), backend=backend) from None

    def result(**extra):
        return dict(
            changed=plan.changed,
            backend=backend,
            config_file=plan.config_path,
            kernel_versions=plan.kernels,
            modules_by_kernel=plan.modules_by_kernel,
            regenerated=plan.regenerate,
            reasons=plan.reasons,
            commands=plan.commands,
            images=plan.images,
            diff=dict(
                before_header=plan.config_path,
                after_header=plan.config_path,
                before=plan.config_before or "",
                after=plan.config_after or "",
            ),
            **extra,
        )

    for w in plan.warnings:
        host.warn(w)
    if host.check_mode:
        return result()

    if plan.config_changed:
        if plan.config_after is None:
            try:
                os.unlink(plan.config_path)
            except OSError as e:
                raise Failed(f"cannot remove {plan.config_path}: {e.strerror or e}", **result()) from None
        else:
            _write(host, plan.config_path, plan.config_after)
    for argv in plan.commands:
        rc, out, err = host.run(argv)
        if rc != 0:
            raise Failed(f"{' '.join(argv)} failed with rc={rc}: {(err or out).strip()}", **result())
    try:
        problems = verify(plan, root, present, run, tools)
    except InitramfsError as e:
        raise Failed(str(e), **result()) from None
    if problems and regenerate == "never":
        for problem in problems:
            host.warn(problem + " (regenerate=never)")
        problems = []
    if problems:
        hint = "" if plan.commands else " (nothing was regenerated: run with regenerate=always)"
        if backend == "initramfs-tools" and any(f in problem for problem in problems for f in files):
            hint += (
                "; initramfs-tools copies only /etc/modprobe.d and /etc/udev/rules.d by its own hooks: copy other "
                "files with a hook in /etc/initramfs-tools/hooks"
            )
        raise Failed("; ".join(problems) + hint, **result())
    return result()


def _write(host, path, text):
    """Write ``text`` to ``path`` atomically (keeping the file's mode); a failure names the path."""
    try:
        write_atomic(path, text, host.atomic_move)
    except FileProblem as exc:
        raise Failed(str(exc)) from None
