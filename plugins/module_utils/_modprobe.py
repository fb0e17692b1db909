# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""modprobe.d(5) and modules-load.d(5) files, read and written the way kmod and systemd read them.

The parser keeps a line-level model: every logical command (a line, joined with the following ones when it ends
in a backslash, exactly as kmod's reader does) keeps its raw physical text, so an untouched file renders back
byte for byte - comments, blank lines, continuations, odd spacing, CRLF and a missing final newline included.
Only commands that a change touches are re-rendered.

Facts taken from kmod 30 (Debian 12) and checked against ``modprobe --showconfig`` in the unit tests:

- directories, first wins for a file name: /etc/modprobe.d, /run/modprobe.d, /usr/local/lib/modprobe.d,
  /usr/lib/modprobe.d (newer kmod; the same directory as /lib on merged-/usr systems), /lib/modprobe.d;
  files are read sorted by name across all directories; a file in an earlier directory hides the same-named
  file in a later one (a symlink to /dev/null masks it);
- only names ending in ``.conf`` or ``.alias`` and not starting with ``.`` are read; sub-directories are skipped;
- a line whose first byte is ``#`` is a comment; a backslash before a newline joins the next line (also in a
  comment); a backslash before any other character is dropped; words are split on spaces and tabs only;
- ``#`` after the start of a line is NOT a comment (``options foo a=1 # x`` passes ``#`` and ``x`` to foo);
- module names compare with ``-`` and ``_`` as the same character (outside ``[...]`` of a glob);
- for a module, only the first matching ``softdep`` in that order is used; ``options`` lines add up in that
  order (the kernel takes the last value of a repeated parameter); ``blacklist`` affects alias lookups only.
"""

from __future__ import annotations

__metaclass__ = type

import fnmatch
import os
import platform
import re
import tempfile
from dataclasses import dataclass, field

from ansible_collections.hostdev.vfio.plugins.module_utils import _initramfs, _validate
from ansible_collections.hostdev.vfio.plugins.module_utils._files import FileProblem, read_config

MODPROBE_DIRS = (
    "/etc/modprobe.d",
    "/run/modprobe.d",
    "/usr/local/lib/modprobe.d",
    "/usr/lib/modprobe.d",
    "/lib/modprobe.d",
)
MODULES_LOAD_DIRS = (
    "/etc/modules-load.d",
    "/run/modules-load.d",
    "/usr/local/lib/modules-load.d",
    "/usr/lib/modules-load.d",
    "/lib/modules-load.d",
)
DEFAULT_MODPROBE_PATH = "/etc/modprobe.d/hostdev-vfio.conf"
DEFAULT_MODULES_LOAD_PATH = "/etc/modules-load.d/hostdev-vfio.conf"

# The rules live in _validate (full-string matches: use .fullmatch); these names stay importable from here.
MODULE_NAME_RE = _validate.MODULE_NAME_RE
PARAM_NAME_RE = _validate.PARAM_KEY_RE
PARAM_VALUE_RE = _validate.PARAM_VALUE_RE


class ModprobeError(Exception):
    """A request that cannot be carried out; the message says what was wrong and what to do."""


def normalize(name):
    """kmod's underscores(): '-' and '_' are the same character in module names, except inside [...]."""
    out = []
    depth = 0
    for ch in name:
        if ch == "[":
            depth += 1
        elif ch == "]" and depth:
            depth -= 1
        out.append("_" if ch == "-" and not depth else ch)
    return "".join(out)


def normalize_param(name):
    """The kernel's parameq(): '-' and '_' are the same in parameter names."""
    return name.replace("-", "_")


# --------------------------------------------------------------------------------------------------- parsing


@dataclass
class Command:
    """One logical line of a modprobe.d file.

    ``raw`` is the exact physical text (several lines when continued with a backslash), ``text`` the logical line
    as kmod reads it, ``kind`` one of blank, comment, alias, options, install, remove, blacklist, softdep,
    unknown (a command kmod does not know) or invalid (a known command kmod rejects as a bad line), ``words`` the
    words split on spaces and tabs, ``lineno`` the first physical line (1-based), ``terminated`` whether the
    raw text ends with a real line end (False only for the last line of a file without final newline, or one
    that ends inside a continuation) and ``rest`` what kmod hands on after the module name of options, install,
    remove and softdep (everything after the one separator that follows the name).
    """

    raw: str
    text: str
    kind: str
    words: list
    lineno: int
    terminated: bool = True
    rest: str | None = None

    @property
    def module(self):
        """The module name as written (second word) for module commands, else None."""
        if self.kind in ("options", "install", "remove", "blacklist", "softdep"):
            return self.words[1]
        if self.kind == "alias":
            return self.words[2]
        return None

    @property
    def open_continuation(self):
        """True when the text ends in a backslash continuation that nothing follows (the file ends there)."""
        return not self.terminated and (self.raw.endswith("\\\n") or self.raw.endswith("\\"))

    # -- softdep
    def softdep_lists(self):
        """(pre, post) exactly as kmod 30 reads them (kmod_config_add_softdep).

        Words before the first pre:/post: are ignored, and so is a keyword separated from the module name by
        exactly two whitespace characters: kmod then keeps the second one in the first word, so in
        ``softdep a  pre: b`` (or ``softdep a \\`` + newline + `` pre: b``) the first word is " pre:", not a
        keyword, and the softdep is empty. One, three or more separators are read as expected.
        """
        pre, post = [], []
        mode = None
        rest = self.rest or ""
        n = len(rest)
        p = 0
        was_space = False
        s = 0
        while True:
            if s < n:
                if rest[s] not in C_SPACE:
                    was_space = False
                    s += 1
                    continue
                if was_space:
                    p = s + 1
                    s += 1
                    continue
                was_space = True
                if p >= s:
                    s += 1
                    continue
            word = rest[p:s]
            if word == "pre:":
                mode = pre
            elif word == "post:":
                mode = post
            elif (s < n or not was_space) and mode is not None:
                mode.append(word)
            p = s + 1
            if s >= n:
                break
            s += 1
        return pre, post

    def softdep_lists_as_written(self):
        """(pre, post) as a reader of the words would take them; differs from softdep_lists() on kmod quirks."""
        pre, post = [], []
        mode = None
        for word in self.words[2:]:
            if word == "pre:":
                mode = pre
            elif word == "post:":
                mode = post
            elif mode is not None:
                mode.append(word)
        return pre, post

    # -- options
    def option_tokens(self):
        """The parameters of an options line, split like the kernel's next_arg() (double quotes group).

        kmod turns tabs into spaces in the options string before it hands it on, also inside quotes.
        """
        return split_params((self.rest or "").replace("\t", " "))


C_SPACE = " \t\n\v\f\r"  # isspace() in the C locale


def split_params(text):
    """Split a parameter string on whitespace outside double quotes, like the kernel's next_arg()."""
    tokens = []
    cur = []
    quoted = False
    for ch in text:
        if ch == '"':
            quoted = not quoted
            cur.append(ch)
        elif ch in C_SPACE and not quoted:
            if cur:
                tokens.append("".join(cur))
                cur = []
        else:
            cur.append(ch)
    if cur:
        tokens.append("".join(cur))
    return tokens


def param_key(token):
    return normalize_param(token.split("=", 1)[0].replace('"', ""))


_STRTOK = " \t"


def _strtok(text, pos):
    """strtok_r(…, " \t"): (word or None, position after the one separator that ended it)."""
    n = len(text)
    while pos < n and text[pos] in _STRTOK:
        pos += 1
    if pos >= n:
        return None, n
    end = pos
    while end < n and text[end] not in _STRTOK:
        end += 1
    return text[pos:end], min(end + 1, n)


def classify(text):
    """(kind, words, rest) of a logical line, following kmod_config_parse()."""
    if text == "" or text[0] == "#":
        return ("comment" if text else "blank"), [], None
    words = [w for w in re.split(r"[ \t]+", text) if w]
    if not words:
        return "blank", [], None
    cmd, pos = _strtok(text, 0)
    if cmd == "alias":
        _alias, pos = _strtok(text, pos)
        modname, pos = _strtok(text, pos)
        return ("alias" if modname is not None else "invalid"), words, None
    if cmd == "blacklist":
        modname, pos = _strtok(text, pos)
        return ("blacklist" if modname is not None else "invalid"), words, None
    if cmd in ("options", "install", "remove", "softdep"):
        modname, pos = _strtok(text, pos)
        rest = text[pos:] if modname is not None and pos < len(text) else None
        return (cmd if rest else "invalid"), words, rest
    return "unknown", words, None


def parse(content):
    """Parse modprobe.d text into a list of Command; ''.join(c.raw for c in result) == content."""
    cmds = []
    i = 0
    n = len(content)
    lineno = 1
    while i < n:
        start = i
        buf = []
        phys = 1
        terminated = False
        while i < n:
            ch = content[i]
            if ch == "\n":
                i += 1
                terminated = True
                break
            if ch == "\\":
                if i + 1 < n and content[i + 1] == "\n":
                    i += 2
                    phys += 1
                    continue
                if i + 1 < n:
                    buf.append(content[i + 1])
                    i += 2
                    continue
                i += 1
                break
            buf.append(ch)
            i += 1
        text = "".join(buf)
        kind, words, rest = classify(text)
        cmds.append(Command(content[start:i], text, kind, words, lineno, terminated, rest))
        lineno += phys
    return cmds


def render(cmds):
    return "".join(c.raw for c in cmds)


def make_command(text, terminated=True):
    kind, words, rest = classify(text)
    return Command(text + ("\n" if terminated else ""), text, kind, words, 0, terminated, rest)


def renumber(cmds):
    """Recompute line numbers after an edit (parse(render(x)) == renumber(x))."""
    return parse(render(cmds))


# ------------------------------------------------------------------------------------------- files and dirs


def join_root(root, path):
    root = root or "/"
    return os.path.join(root, path.lstrip("/")) if root != "/" else path


def read_text(fullpath):
    """The text of a file that is only read (bytes decoded losslessly), or None when it does not exist.

    The file this collection edits is read with :func:`read_target` instead, which refuses binary and non-UTF-8 data.
    """
    try:
        with open(fullpath, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        return None
    except IsADirectoryError:
        raise ModprobeError(f"{fullpath} is a directory; give the path of a file") from None
    except OSError as e:
        raise ModprobeError(f"{fullpath}: cannot read it: {e.strerror or e}") from None
    return data.decode("utf-8", "surrogateescape")


def read_target(fullpath, what="modprobe.d file"):
    """The text of the file to edit, or None when it does not exist; binary, non-UTF-8, directories, symlink loops
    and parents that are files are refused with the path named."""
    try:
        return read_config(fullpath, what)
    except FileProblem as e:
        raise ModprobeError(str(e)) from None


def list_config_files(root, dirs, suffixes=(".conf", ".alias"), virtual=None):
    """kmod's conf_files_list: [(path without root, full path)] in reading order, and the hidden ones.

    ``virtual`` maps a path to whether it should be taken as existing (a planned new or deleted file).
    Returns (files, hidden); ``hidden`` maps a path to the path that hides it.
    """
    virtual = virtual or {}
    by_name = {}
    hidden = {}
    seen_dirs = set()
    for d in dirs:
        full_dir = join_root(root, d)
        try:
            names = set(os.listdir(full_dir)) if os.path.isdir(full_dir) else set()
        except OSError:  # unreadable directory: kmod skips it too
            names = set()
        for vpath, exists in virtual.items():
            if os.path.dirname(vpath) == d:
                (names.add if exists else names.discard)(os.path.basename(vpath))
        if not names:
            continue
        real = os.path.realpath(full_dir)
        same_dir = real in seen_dirs
        seen_dirs.add(real)
        for name in sorted(names):
            if name.startswith(".") or not name.endswith(suffixes):
                continue
            full = os.path.join(full_dir, name)
            if os.path.isdir(full):
                continue
            shown = os.path.join(d, name)
            if name in by_name:
                if not same_dir:
                    hidden[shown] = by_name[name][0]
                continue
            by_name[name] = (shown, full)
    order = sorted(by_name, key=lambda s: s.encode("utf-8", "surrogateescape"))
    return [by_name[name] for name in order], hidden


@dataclass
class Effective:
    """The configuration kmod reads: [(path, commands)] in reading order."""

    files: list
    hidden: dict = field(default_factory=dict)
    unreadable: list = field(default_factory=list)  # [(path, reason)]: skipped, as kmod skips what it cannot read

    def warnings(self):
        return [f"{p} was skipped: {why}" for p, why in self.unreadable]

    def commands(self, kind):
        for path, cmds in self.files:
            for c in cmds:
                if c.kind == kind:
                    yield path, c

    def softdeps(self, name):
        """Every softdep that applies to ``name`` (glob patterns included), the one kmod uses first."""
        want = normalize(name)
        return [(p, c) for p, c in self.commands("softdep") if fnmatch.fnmatchcase(want, normalize(c.words[1]))]

    def options(self, name):
        """Options lines for ``name``: exact names only (kmod does not expand globs here, unlike softdep)."""
        want = normalize(name)
        return [(p, c) for p, c in self.commands("options") if normalize(c.words[1]) == want]

    def option_values(self, name):
        """Parameter -> value as the module would get it (the last occurrence wins)."""
        values = {}
        for _p, c in self.options(name):
            for tok in c.option_tokens():
                key = param_key(tok)
                values[key] = tok.split("=", 1)[1].replace('"', "") if "=" in tok else None
        return values

    def blacklists(self, name):
        want = normalize(name)
        return [(p, c) for p, c in self.commands("blacklist") if normalize(c.words[1]) == want]


def effective_config(root="/", dirs=MODPROBE_DIRS, override=None, release=None):
    """Read the configuration as kmod would. ``override`` = (path, text or None) is the planned content of one file
    (None or '' after a removal that deletes it).

    With ``release``, lib/modules/RELEASE/modules.softdep (softdeps that depmod extracted from the modules) is read
    too: kmod sorts it among the configuration files by its name, "modules.softdep", so its softdeps win over those
    of files whose names sort after it.
    """
    virtual = {override[0]: bool(override[1])} if override is not None else None
    files, hidden = list_config_files(root, dirs, virtual=virtual)
    if release is not None:
        softdep_index = f"/lib/modules/{kernel_release(release)}/modules.softdep"
        if os.path.isfile(join_root(root, softdep_index)):
            files.append((softdep_index, join_root(root, softdep_index)))
            files.sort(key=lambda pf: os.path.basename(pf[0]).encode("utf-8", "surrogateescape"))
    out = []
    unreadable = []
    for path, full in files:
        planned = override is not None and path == override[0]
        try:
            text = override[1] if planned else read_text(full)
        except ModprobeError as e:  # a symlink loop or an unreadable file next to ours must not stop the scan
            unreadable.append((path, str(e)))
            continue
        out.append((path, parse(text or "")))
    return Effective(out, hidden, unreadable)


def path_warnings(root, path, dirs=MODPROBE_DIRS, kind="kmod", suffixes=(".conf", ".alias")):
    """Warnings when kmod (or systemd) would not read ``path`` at all."""
    if os.path.dirname(path) not in dirs:
        return [f"{path} is not in a directory that {kind} reads ({', '.join(dirs)}); it has no effect"]
    if os.path.basename(path).startswith("."):
        return [f"{path} starts with a dot; {kind} skips such files"]
    _files, hidden = list_config_files(root, dirs, suffixes=suffixes, virtual={path: True})
    if path in hidden:
        return [f"{path} is hidden by {hidden[path]} (same file name in an earlier directory); {kind} ignores it"]
    return []


def check_path(path):
    """``path`` is an absolute file name kmod or systemd reads, without '..' (symlinks are checked by _load)."""
    _valid(_validate.text, "path", path, max_len=1024)
    if not os.path.isabs(path):
        raise ModprobeError(f"path must be an absolute path, got {_validate.shown(path)}")
    if ".." in path.split("/"):
        raise ModprobeError(f"path {_validate.shown(path)} contains '..'; give the path without it")
    if not path.endswith(".conf"):
        raise ModprobeError(f"path {_validate.shown(path)} must end in '.conf': other files are not read at boot")
    return path


def check_root(root):
    """``root`` is an existing directory (``/`` or an image tree)."""
    _valid(_validate.text, "root", root, max_len=1024)
    if not os.path.isabs(root):
        raise ModprobeError(f"root must be an absolute path, got {_validate.shown(root)}")
    if not os.path.isdir(root):
        what = "does not exist" if not os.path.lexists(root) else "is not a directory"
        raise ModprobeError(f"root {root!r} {what}: give the directory of the system to configure")
    return root


def check_release(release):
    """A kernel release given by the user (None: the running kernel)."""
    return None if release is None else _valid(_validate.kernel_release, "kernel_release", release)


# ------------------------------------------------------------------------------------------- initramfs, kernel


def initramfs_generators(root="/"):
    """The initramfs generators installed under ``root`` (the model lives in _initramfs)."""
    return _initramfs.generators(root)


def initramfs_copies(path, generators, root="/"):
    """Whether one of ``generators`` carries the file at ``path`` (without root prefix) in its image."""
    return _initramfs.carries(root, path, generators)


def kernel_release(release=None):
    return release or platform.release()


def _module_names_from_list(fullpath):
    try:
        text = read_text(fullpath)
    except ModprobeError:  # a directory or a loop where the index should be: as good as no index
        return None
    if text is None:
        return None
    names = set()
    for line in text.splitlines():
        line = line.strip()
        if not line:
            continue
        path = line.split(":", 1)[0].strip()
        base = os.path.basename(path)
        base = re.sub(r"\.ko(\.[a-z0-9]+)?$", "", base)
        names.add(normalize(base))
    return names


def builtin_modules(root="/", release=None):
    """Names (normalised) built into the kernel, from lib/modules/<release>/modules.builtin; None if unknown."""
    return _module_names_from_list(join_root(root, f"/lib/modules/{kernel_release(release)}/modules.builtin"))


def loadable_modules(root="/", release=None):
    """Names (normalised) of loadable modules, from lib/modules/<release>/modules.dep; None if unknown."""
    return _module_names_from_list(join_root(root, f"/lib/modules/{kernel_release(release)}/modules.dep"))


# ------------------------------------------------------------------------------------------- validation


def _valid(check, *args, **kwargs):
    """Run a _validate check; its refusal becomes a ModprobeError with the same message."""
    try:
        return check(*args, **kwargs)
    except _validate.InvalidValue as e:
        raise ModprobeError(str(e)) from None


def check_module_name(name, what="name"):
    return _valid(_validate.module_name, what, name)


def check_module_list(names, what):
    return _valid(_validate.each, what, names, _validate.module_name)


def option_value_text(value):
    """A parameter value as it is written; bools become 1/0, None a bare flag."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, (int, float)):
        return str(value)
    if isinstance(value, (list, tuple)):
        if any(isinstance(v, (list, tuple, dict)) for v in value):
            raise ModprobeError(f"a parameter value may be a list of plain values, not {_validate.shown(value)}")
        return ",".join(option_value_text(v) or "" for v in value)
    if isinstance(value, dict):
        raise ModprobeError(f"a parameter value cannot be a dict: {_validate.shown(value)}")
    return str(value)


def check_options(options):
    """[(key as given, value text or None)] from a dict, validated."""
    out = []
    seen = set()
    if options is None:
        return out
    if not isinstance(options, dict):
        raise ModprobeError(f"options: expected a dict, got {_validate.shown(options)}")
    for key, value in options.items():
        _valid(_validate.param_key, "options", key)
        if normalize_param(key) in seen:
            raise ModprobeError(f"parameter {key!r} is given twice ('-' and '_' are the same character)")
        seen.add(normalize_param(key))
        text = option_value_text(value)
        if text is not None:
            _valid(_validate.param_value, f"options.{key}", text)
        out.append((key, text))
    return out


def check_state(state):
    if state not in ("present", "absent"):
        raise ModprobeError(f"state must be 'present' or 'absent', got {state!r}")


# ------------------------------------------------------------------------------------------- editing


@dataclass
class Plan:
    """The whole change to one file."""

    path: str
    fullpath: str
    before: str | None
    after: str | None
    warnings: list = field(default_factory=list)
    initramfs_update_needed: bool = False
    info: dict = field(default_factory=dict)

    @property
    def changed(self):
        return (self.before or "") != (self.after or "") or (self.before is None and bool(self.after))

    @property
    def delete(self):
        """The file would be left empty by a removal: delete it instead."""
        return self.before is not None and self.after == "" and self.before != ""

    def diff(self):
        return {
            "before": self.before or "",
            "after": self.after or "",
            "before_header": self.path if self.before is not None else f"{self.path} (absent)",
            "after_header": self.path if not self.delete and self.after is not None else f"{self.path} (absent)",
        }


def append_command(cmds, text):
    """Append a command; the previous last line gets its missing newline."""
    if cmds:
        last = cmds[-1]
        if last.open_continuation:
            raise ModprobeError(
                f"the file ends inside a line continuation (a backslash at the end of line {last.lineno}); "
                "a line added after it would become part of that line. Fix the file first."
            )
        if not last.terminated:
            cmds[-1] = Command(last.raw + "\n", last.text, last.kind, last.words, last.lineno, True, last.rest)
    cmds.append(make_command(text))
    return cmds


def replace_command(cmds, index, text):
    cmds[index] = make_command(text, terminated=cmds[index].terminated)
    return cmds


def _same(a, b):
    return [normalize(x) for x in a] == [normalize(x) for x in b]


def softdep_text(name, pre, post):
    parts = ["softdep", name]
    if pre:
        parts += ["pre:", *pre]
    if post:
        parts += ["post:", *post]
    return " ".join(parts)


def edit_softdep(cmds, name, pre, post, state, exclusive=False):
    """Return (new commands, [indexes of softdep lines for name], resulting (pre, post) or None)."""
    want = normalize(name)
    cmds = list(cmds)
    idx = [i for i, c in enumerate(cmds) if c.kind == "softdep" and normalize(c.words[1]) == want]
    if state == "present":
        if not idx:
            cmds = append_command(cmds, softdep_text(name, pre, post))
            return cmds, idx, (list(pre), list(post))
        first = cmds[idx[0]]
        old_pre, old_post = first.softdep_lists()
        if exclusive:
            new_pre, new_post = list(pre), list(post)
        else:
            pre_n = {normalize(p) for p in pre}
            post_n = {normalize(p) for p in post}
            new_pre = [p for p in old_pre if normalize(p) not in post_n]
            new_pre += [p for p in pre if normalize(p) not in {normalize(x) for x in new_pre}]
            new_post = [p for p in old_post if normalize(p) not in pre_n]
            new_post += [p for p in post if normalize(p) not in {normalize(x) for x in new_post}]
        if not (_same(new_pre, old_pre) and _same(new_post, old_post)):
            cmds = replace_command(cmds, idx[0], softdep_text(first.words[1], new_pre, new_post))
        return cmds, idx, (new_pre, new_post)
    # absent
    if not idx:
        return cmds, idx, None
    if not pre and not post:
        return [c for i, c in enumerate(cmds) if i not in idx], idx, None
    result = None
    drop = []
    for n, i in enumerate(idx):
        c = cmds[i]
        old_pre, old_post = c.softdep_lists()
        pre_n = {normalize(p) for p in pre}
        post_n = {normalize(p) for p in post}
        new_pre = [p for p in old_pre if normalize(p) not in pre_n]
        new_post = [p for p in old_post if normalize(p) not in post_n]
        if n == 0:
            result = (new_pre, new_post) if (new_pre or new_post) else None
        if _same(new_pre, old_pre) and _same(new_post, old_post):
            continue
        if not new_pre and not new_post:
            drop.append(i)
        else:
            cmds = replace_command(cmds, i, softdep_text(c.words[1], new_pre, new_post))
    return [c for i, c in enumerate(cmds) if i not in drop], idx, result


def options_text(name, tokens):
    return " ".join(["options", name, *tokens])


def _token(key, value):
    return key if value is None else f"{key}={value}"


def _value_of(token):
    return token.split("=", 1)[1].replace('"', "") if "=" in token else None


def edit_options(cmds, name, options, state):
    """Set (present) or remove (absent) parameters of ``name``; options = [(key, value text or None)].

    present: nothing changes when every occurrence of each parameter in the file already has the wanted value.
    Otherwise every ``options`` line for the module in the file is merged into the first one - kmod hands the
    module the parameters of all its lines joined in reading order, so the merged line reads the same - and each
    wanted parameter appears once, at its first place, with the wanted value. Repeated lines are never each
    rewritten to the same value.
    """
    want = normalize(name)
    cmds = list(cmds)
    idx = [i for i, c in enumerate(cmds) if c.kind == "options" and normalize(c.words[1]) == want]
    wanted = {normalize_param(k): (k, v) for k, v in options}
    if state == "absent":
        if not options:
            return [c for i, c in enumerate(cmds) if i not in idx]
        drop = []
        for i in idx:
            tokens = cmds[i].option_tokens()
            new_tokens = [tok for tok in tokens if param_key(tok) not in wanted]
            if new_tokens == tokens:
                continue
            if not new_tokens:
                drop.append(i)
            else:
                cmds = replace_command(cmds, i, options_text(cmds[i].words[1], new_tokens))
        return [c for i, c in enumerate(cmds) if i not in drop]
    occurrences = [tok for i in idx for tok in cmds[i].option_tokens() if param_key(tok) in wanted]
    if {param_key(t) for t in occurrences} == set(wanted) and all(
        _value_of(t) == wanted[param_key(t)][1] for t in occurrences
    ):
        return cmds
    if not idx:
        return append_command(cmds, options_text(name, [_token(k, v) for k, v in options]))
    new_tokens = []
    done = set()
    for tok in (tok for i in idx for tok in cmds[i].option_tokens()):
        key = param_key(tok)
        if key not in wanted:
            new_tokens.append(tok)
        elif key not in done:
            done.add(key)
            value = wanted[key][1]
            new_tokens.append(tok if _value_of(tok) == value else _token(tok.split("=", 1)[0], value))
    new_tokens += [_token(k, v) for k, v in options if normalize_param(k) not in done]
    cmds = replace_command(cmds, idx[0], options_text(cmds[idx[0]].words[1], new_tokens))
    return [c for i, c in enumerate(cmds) if i not in idx[1:]]


def edit_blacklist(cmds, name, state):
    want = normalize(name)
    cmds = list(cmds)
    idx = [i for i, c in enumerate(cmds) if c.kind == "blacklist" and normalize(c.words[1]) == want]
    if state == "present":
        return cmds if idx else append_command(cmds, f"blacklist {name}")
    return [c for i, c in enumerate(cmds) if i not in idx]


# ------------------------------------------------------------------------------------------- plans


def resolve_target(root, path):
    """The file to read and write for ``path``: a symlink to a regular file is followed (the link stays), anything
    else behind a symlink (a /dev/null mask, a dangling link) is refused."""
    fullpath = join_root(root, path)
    if os.path.islink(fullpath):
        real = os.path.realpath(fullpath)
        if not os.path.isfile(real):
            raise ModprobeError(
                f"{path} is a symlink to {os.readlink(fullpath)}, not to a regular file (a mask?); "
                "remove the link or manage another file"
            )
        return real
    return fullpath


def _load(root, path, what="modprobe.d file"):
    """Validate ``root`` and ``path``, then read the file to edit: (full path, text or None)."""
    check_root(root)
    check_path(path)
    fullpath = resolve_target(root, path)  # a mask (link to /dev/null) is named as such
    _valid(_validate.rooted_path, "path", root, path)  # no symlink out of root
    return fullpath, read_target(fullpath, what)


def _finish(plan, root, generators):
    if generators is None:
        generators = initramfs_generators(root)
    plan.initramfs_update_needed = bool(plan.changed) and initramfs_copies(plan.path, generators, root)
    plan.info["initramfs_generators"] = generators
    return plan


def _builtin_warnings(root, release, names, what):
    warnings = []
    builtin = builtin_modules(root, release)
    if builtin is None:
        return warnings
    for n in names:
        if normalize(n) in builtin:
            warnings.append(f"{n} is built into kernel {kernel_release(release)} (modules.builtin): {what}")
    return warnings


def builtin_softdep_refusal(root, release, name):
    """Why a softdep for ``name`` cannot work, when ``name`` is built into the kernel (None otherwise).

    A built-in driver registers during boot, before any module is loaded and before udev runs: modprobe never
    loads it, so its softdep never runs, and its devices are bound before a udev driver_override rule exists.
    """
    builtin = builtin_modules(root, release)
    if builtin is None or normalize(name) not in builtin:
        return None
    rel = kernel_release(release)
    if "vfio_pci" in builtin:
        ids_route = (
            "vfio-pci is built into this kernel too, so the kernel argument vfio-pci.ids=VENDOR:DEVICE "
            "(hostdev.vfio.kernel_cmdline) claims the ids at boot - but only if vfio-pci registers before "
            f"{name}, which the kernel's link order decides (check the boot log)"
        )
    else:
        ids_route = (
            "the kernel argument vfio-pci.ids=VENDOR:DEVICE does not help here: vfio-pci is a module in this "
            f"kernel and loads after the built-in {name} has bound the device"
        )
    return (
        f"refusing a softdep for {name}: it is built into kernel {rel} (modules.builtin), so it registers during "
        "boot before any module is loaded; modprobe never loads it, so its softdep never runs and cannot keep it "
        "off a device. What works: bind the device at runtime after boot with hostdev.vfio.vfio_bind "
        f"(driver_override, unbind, drivers_probe; it takes the device from {name} whenever it runs); {ids_route}"
    )


def _unknown_module_warnings(root, release, names):
    loadable = loadable_modules(root, release)
    if loadable is None:
        return []
    builtin = builtin_modules(root, release) or set()
    return [
        f"{n} is neither a loadable module nor built in for kernel {kernel_release(release)}"
        for n in names
        if normalize(n) not in loadable and normalize(n) not in builtin
    ]


def plan_softdep(
    name,
    pre=(),
    post=(),
    state="present",
    path=DEFAULT_MODPROBE_PATH,
    root="/",
    exclusive=False,
    release=None,
    generators=None,
):
    """Plan a softdep change in one file and report the resulting effective softdep for ``name``."""
    check_state(state)
    check_module_name(name)
    pre = check_module_list(pre, "pre")
    post = check_module_list(post, "post")
    release = check_release(release)
    if state == "present" and not pre and not post:
        raise ModprobeError(f"softdep for {name!r} needs at least one module in pre or post")
    both = {normalize(p) for p in pre} & {normalize(p) for p in post}
    if both:
        raise ModprobeError(f"{', '.join(sorted(both))} cannot be in both pre and post")
    if normalize(name) in {normalize(p) for p in pre + post}:
        raise ModprobeError(f"{name!r} cannot be a soft dependency of itself")
    fullpath, before = _load(root, path)
    cmds = parse(before or "")
    new_cmds, idx, result = edit_softdep(cmds, name, pre, post, state, exclusive)
    after = render(new_cmds)
    plan = Plan(path, fullpath, before, after if (before is not None or after) else None)
    plan.warnings += path_warnings(root, path)
    if len(idx) > 1:
        lines = ", ".join(str(cmds[i].lineno) for i in idx[1:])
        plan.warnings.append(
            f"{path} has {len(idx)} softdep lines for {name} (lines {cmds[idx[0]].lineno}, {lines}); "
            "kmod uses only the first"
        )
    eff = effective_config(root, override=(path, after), release=kernel_release(release))
    plan.warnings += eff.warnings()
    found = eff.softdeps(name)
    for p, c in found:
        if c.softdep_lists() != c.softdep_lists_as_written():
            kpre, kpost = c.softdep_lists()
            plan.warnings.append(
                f"{p} line {c.lineno}: kmod reads this softdep as pre: {kpre} post: {kpost}, not as written "
                "(with exactly two spaces or tabs after the module name kmod 30 misses the first keyword: use one)"
            )
    ours = [(p, c) for p, c in found if p == path]
    others = [(p, c) for p, c in found if p != path]
    if others:
        where = ", ".join(f"{p} line {c.lineno}" for p, c in others)
        if found and found[0][0] != path:
            plan.warnings.append(
                f"kmod uses only one softdep per module: the one for {name} in {found[0][0]} (line "
                f"{found[0][1].lineno}) comes first and wins; also declared in: {where}"
            )
        else:
            plan.warnings.append(
                f"other files also declare a softdep for {name} ({where}); kmod uses only the first one ({path})"
            )
    if state == "present" and not ours and not others:
        plan.warnings.append(f"{path} is not read by kmod: the softdep has no effect")
    if state == "present":
        refusal = builtin_softdep_refusal(root, release, name)
        if refusal:
            raise ModprobeError(refusal)
        plan.warnings += _unknown_module_warnings(root, release, pre + post)
    if found:
        epre, epost = found[0][1].softdep_lists()
        plan.info["effective"] = {"path": found[0][0], "line": found[0][1].lineno, "pre": epre, "post": epost}
    else:
        plan.info["effective"] = None
    plan.info["softdep"] = {"name": name, "pre": result[0], "post": result[1]} if result else None
    return _finish(plan, root, generators)


def plan_options(
    name, options=None, state="present", path=DEFAULT_MODPROBE_PATH, root="/", release=None, generators=None
):
    check_state(state)
    check_module_name(name)
    opts = check_options(options)
    release = check_release(release)
    if state == "present" and not opts:
        raise ModprobeError(f"options for {name!r} needs at least one parameter in options")
    fullpath, before = _load(root, path)
    after = render(edit_options(parse(before or ""), name, opts, state))
    plan = Plan(path, fullpath, before, after if (before is not None or after) else None)
    plan.warnings += path_warnings(root, path)
    eff = effective_config(root, override=(path, after), release=kernel_release(release))
    plan.warnings += eff.warnings()
    values = eff.option_values(name)
    plan.info["effective"] = values
    if state == "present":
        for k, v in opts:
            got = values.get(normalize_param(k), "<unset>")
            if got != v:
                srcs = ", ".join(sorted({p for p, _c in eff.options(name) if p != path}))
                plan.warnings.append(
                    f"{name} gets {k}={got} from the effective configuration, not {v} (also set in: {srcs})"
                )
        plan.warnings += _builtin_warnings(
            root, release, [name], "modprobe.d options do nothing; use the kernel command line (module.param=value)"
        )
    else:
        for k, _v in opts:
            if normalize_param(k) in values:
                srcs = ", ".join(sorted({p for p, _c in eff.options(name)}))
                plan.warnings.append(f"{name} parameter {k} is still set by {srcs}")
    return _finish(plan, root, generators)


def plan_edits(path=DEFAULT_MODPROBE_PATH, root="/", options=(), softdeps=(), release=None, generators=None):
    """One plan for several edits of one file, each the edit of ``plan_options`` / ``plan_softdep`` with state
    present: ``options`` as ``[(module, {param: value})]`` (a module with no parameters is left out), ``softdeps``
    as ``[(module, [pre, ...])]`` merged into the module's softdep. For a caller that owns a whole file (the
    passthrough module's modprobe.d file), so the file is read and written once."""
    release = check_release(release)
    edits = []
    for name, opts in options:
        check_module_name(name)
        checked = check_options(opts)
        if checked:
            edits.append(("options", name, checked))
    for name, pre in softdeps:
        check_module_name(name)
        pre = check_module_list(pre, "pre")
        if normalize(name) in {normalize(p) for p in pre}:
            raise ModprobeError(f"{name!r} cannot be a soft dependency of itself")
        refusal = builtin_softdep_refusal(root, release, name)
        if refusal:
            raise ModprobeError(refusal)
        if pre:
            edits.append(("softdep", name, pre))
    fullpath, before = _load(root, path)
    cmds = parse(before or "")
    for kind, name, value in edits:
        if kind == "options":
            cmds = edit_options(cmds, name, value, "present")
        else:
            cmds = edit_softdep(cmds, name, value, [], "present")[0]
    after = render(cmds)
    plan = Plan(path, fullpath, before, after if (before is not None or after) else None)
    plan.warnings += path_warnings(root, path)
    eff = effective_config(root, override=(path, after), release=kernel_release(release))
    plan.warnings += eff.warnings()
    for kind, name, value in edits:
        if kind == "softdep":
            found = eff.softdeps(name)
            if found and found[0][0] != path:
                plan.warnings.append(
                    f"kmod uses only one softdep per module: the one for {name} in {found[0][0]} (line "
                    f"{found[0][1].lineno}) comes first and wins over {path}"
                )
        else:
            values = eff.option_values(name)
            for k, want in value:
                got = values.get(normalize_param(k), "<unset>")
                if got != want:
                    plan.warnings.append(f"{name} gets {k}={got} from the effective configuration, not {want}")
    return _finish(plan, root, generators)


def plan_blacklist(name, state="present", path=DEFAULT_MODPROBE_PATH, root="/", release=None, generators=None):
    check_state(state)
    check_module_name(name)
    release = check_release(release)
    fullpath, before = _load(root, path)
    after = render(edit_blacklist(parse(before or ""), name, state))
    plan = Plan(path, fullpath, before, after if (before is not None or after) else None)
    plan.warnings += path_warnings(root, path)
    eff = effective_config(root, override=(path, after), release=kernel_release(release))
    plan.warnings += eff.warnings()
    found = eff.blacklists(name)
    plan.info["effective"] = [{"path": p, "line": c.lineno} for p, c in found]
    if state == "absent" and found:
        plan.warnings.append(f"{name} is still blacklisted by {', '.join(p for p, _c in found)}")
    if state == "present":
        plan.warnings += _builtin_warnings(root, release, [name], "a blacklist does nothing")
    return _finish(plan, root, generators)


# ------------------------------------------------------------------------------------------- modules-load.d


@dataclass
class LoadLine:
    raw: str
    module: str | None  # None for comments and blank lines


def parse_modules_load(content):
    """modules-load.d(5): one module per line; '#' or ';' starts a comment line; whitespace is stripped."""
    out = []
    for raw in content.splitlines(keepends=True):
        s = raw.strip()
        out.append(LoadLine(raw, None if (not s or s[0] in "#;") else s))
    return out


def plan_modules_load(names, state="present", path=DEFAULT_MODULES_LOAD_PATH, root="/", generators=None):
    check_state(state)
    names = check_module_list(names, "name")
    if not names:
        raise ModprobeError("name needs at least one module")
    fullpath, before = _load(root, path, what="modules-load.d file")
    lines = parse_modules_load(before or "")
    have = {normalize(ln.module) for ln in lines if ln.module}
    want = {normalize(n) for n in names}
    if state == "present":
        add = []
        for n in names:
            if normalize(n) not in have and normalize(n) not in {normalize(a) for a in add}:
                add.append(n)
        if add and lines and not lines[-1].raw.endswith(("\n", "\r")):
            lines[-1] = LoadLine(lines[-1].raw + "\n", lines[-1].module)
        lines += [LoadLine(n + "\n", n) for n in add]
    else:
        lines = [ln for ln in lines if not (ln.module and normalize(ln.module) in want)]
    after = "".join(ln.raw for ln in lines)
    plan = Plan(path, fullpath, before, after if (before is not None or after) else None)
    plan.warnings += path_warnings(root, path, dirs=MODULES_LOAD_DIRS, kind="systemd-modules-load", suffixes=(".conf",))
    files, _hidden = list_config_files(root, MODULES_LOAD_DIRS, suffixes=(".conf",), virtual={path: bool(after)})
    loaded = []
    for p, full in files:
        try:
            text = after if p == path else read_text(full) or ""
        except ModprobeError as e:  # a symlink loop or an unreadable file next to ours: skipped, as systemd does
            plan.warnings.append(f"{p} was skipped: {e}")
            continue
        loaded += [{"name": ln.module, "path": p} for ln in parse_modules_load(text) if ln.module]
    plan.info["effective"] = loaded
    if state == "absent":
        still = sorted({e["path"] for e in loaded if normalize(e["name"]) in want})
        if still:
            plan.warnings.append(f"{', '.join(names)} still loaded at boot by {', '.join(still)}")
    return _finish(plan, root, generators)


# ------------------------------------------------------------------------------------------- applying


def apply_plan(module, plan, backup=False):
    """Write ``plan`` atomically through ``module`` (an AnsibleModule: atomic_move, backup_local, params).

    Returns the backup file name or None. New files get mode 0644 (owner root when run as root); a file that a
    removal leaves empty is deleted. The written file is read back and compared.
    """
    if not plan.changed:
        return None
    backup_file = None
    if backup and plan.before is not None:
        backup_file = module.backup_local(plan.fullpath)
    if plan.delete:
        os.unlink(plan.fullpath)
        return backup_file
    directory = os.path.dirname(plan.fullpath)
    if not os.path.isdir(directory):
        os.makedirs(directory, mode=0o755)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=".hostdev-vfio-", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(plan.after.encode("utf-8", "surrogateescape"))
            f.flush()
            os.fsync(f.fileno())
        if plan.before is None:
            os.chmod(tmp, 0o644)
            if os.geteuid() == 0:
                os.chown(tmp, 0, 0)
        try:
            module.atomic_move(tmp, plan.fullpath, unsafe_writes=module.params.get("unsafe_writes", False))
        except Exception as e:  # ansible-core 2.19 raises a plain Exception when the rename fails (read-only, ...)
            cause = f": {e.__cause__}" if e.__cause__ is not None else ""
            raise ModprobeError(f"{e}{cause}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    if plan.before is None:
        os.chmod(plan.fullpath, 0o644)
    if read_text(plan.fullpath) != plan.after:
        raise ModprobeError(f"{plan.fullpath} does not hold the planned content after writing it")
    return backup_file


def exit_with_plan(module, plan, **extra):
    """Common ending of the modules: warnings, diff, apply unless in check mode, exit_json."""
    for warning in plan.warnings:
        module.warn(warning)
    result = {
        "changed": bool(plan.changed),
        "path": plan.path,
        "initramfs_update_needed": plan.initramfs_update_needed,
    }
    result.update(extra)
    if module._diff:
        result["diff"] = plan.diff()
    if plan.changed and not module.check_mode:
        try:
            backup_file = apply_plan(module, plan, backup=module.params.get("backup", False))
        except (ModprobeError, OSError) as e:
            module.fail_json(msg=f"could not write {plan.fullpath}: {e}", **{**result, "changed": False})
        if backup_file:
            result["backup_file"] = backup_file
    module.exit_json(**result)
