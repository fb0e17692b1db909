# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The kernel command line: parse/render/apply as pure functions, value checks, and the boot-loader backends.

Every backend takes a root prefix for the files it reads and writes and a command runner
``run(argv) -> (rc, stdout, stderr)``, so unit tests drive it with a fake tree and fake commands.
"""

from __future__ import annotations

__metaclass__ = type

import difflib
import os
import re
import shlex

from ansible_collections.hostdev.vfio.plugins.module_utils import _record, _validate
from ansible_collections.hostdev.vfio.plugins.module_utils._files import (
    FileProblem,
    read_bytes,
    read_config,
    rooted,
    write_atomic,
)
from ansible_collections.hostdev.vfio.plugins.module_utils._host import Failed
from ansible_collections.hostdev.vfio.plugins.module_utils._initramfs import InitramfsError, installed_kernels

MARKER = "# Managed by hostdev.vfio.kernel_cmdline: do not edit by hand."
BACKENDS = ("grub", "grubby", "systemd-boot", "proxmox", "rpm-ostree", "bootc")


class CmdlineError(Exception):
    """A request or a host state the module cannot handle; the message says what to do."""


def read_text(path: str, what: str = "configuration file") -> str | None:
    """A file this module may edit (UTF-8 text, no NUL), or None when it does not exist; problems: CmdlineError."""
    try:
        return read_config(path, what)
    except FileProblem as exc:
        raise CmdlineError(str(exc)) from None


def read_lenient(path: str) -> str | None:
    """A file only read, never edited (``/proc/cmdline``, a generated grub.cfg): undecodable bytes become U+FFFD."""
    try:
        data = read_bytes(path)
    except FileProblem as exc:
        raise CmdlineError(str(exc)) from None
    return None if data is None else data.decode("utf-8", errors="replace")


# ---------------------------------------------------------------------------------------------------------------
# Pure functions: parse, render, apply
# ---------------------------------------------------------------------------------------------------------------
def parse_cmdline(text: str) -> list[tuple[str, str | None]]:
    """Split a kernel command line into ``(name, value)`` pairs in order, following lib/cmdline.c next_arg().

    Double quotes group spaces (``a="b c"`` and ``"a=b c"`` both give ``("a", "b c")``); a bare flag has the
    value ``None``; ``a=`` has the value ``""``. ``--`` (start of init's arguments) is returned as ``("--", None)``.
    """
    out: list[tuple[str, str | None]] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i].isspace():
            i += 1
        if i >= n:
            break
        quoted = text[i] == '"'
        if quoted:
            i += 1
        start, in_quote, equals = i, quoted, -1
        while i < n and not (text[i].isspace() and not in_quote):
            if equals < 0 and text[i] == "=":
                equals = i
            if text[i] == '"':
                in_quote = not in_quote
            i += 1
        token = text[start:i]
        if equals >= 0:
            name, value = text[start:equals], text[equals + 1 : i]
            if value.startswith('"'):
                value = value[1:]
                if value.endswith('"'):
                    value = value[:-1]
            elif quoted and value.endswith('"'):
                value = value[:-1]
            out.append((name, value))
        else:
            if quoted and token.endswith('"'):
                token = token[:-1]
            out.append((token, None))
    return out


def render_arg(name: str, value: str | None) -> str:
    """One argument as the kernel reads it: values with spaces are quoted."""
    if value is None:
        return name
    if value == "" or re.search(r"\s", value):
        return f'{name}="{value}"' if value else f"{name}="
    return f"{name}={value}"


def render_cmdline(args: list[tuple[str, str | None]]) -> str:
    return " ".join(render_arg(n, v) for n, v in args)


def canonical_name(name: str) -> str:
    """The kernel treats ``-`` and ``_`` in parameter names as the same character."""
    return name.replace("-", "_")


def parse_request(items: list[str] | None, what: str) -> list[tuple[str, str | None]]:
    """Validate the user's ``args``/``remove`` entries, one argument each (:func:`_validate.kernel_arg_named`).

    Nothing GRUB's or sh's quoting would read differently passes: whitespace, quotes, ``$``, backticks, ``;``,
    ``|``, backslashes, control characters (NUL, newline) and over-long values are refused with the character
    named, before any file is read for writing and before any command runs.
    """
    try:
        return _validate.each(what, items, _validate.kernel_arg_named)
    except _validate.InvalidValue as exc:
        raise CmdlineError(str(exc)) from None


# Parameters the kernel (or early userspace) acts on at every occurrence, so ``a=x a=y`` means both x and y:
# Documentation/admin-guide/kernel-parameters.txt describes several consoles (``console=``, the last one is
# /dev/console), several memory maps and huge page pools (``memmap=``, ``hugepagesz=``/``hugepages=`` pairs,
# ``crashkernel=`` with ``,high``/``,low``, ``reserve=``), and options parsed per occurrence as comma lists
# (x86 ``iommu=``, ``pci=``, ``acpi_osi=``, ``initcall_blacklist=``, ``video=`` per connector, ``netdev=``/
# ``ether=`` per interface). kmod reads every ``modprobe.blacklist=``; dracut every ``rd.driver.*``, ``rd.luks.*``,
# ``rd.lvm.lv``, ``rd.md.uuid`` and ``ip=``. For these an ``args`` entry only makes its own occurrence present:
# other occurrences stay (collapsing ``iommu=1 iommu=pt`` to one value would change what the kernel does).
# Every other parameter keeps the kernel's last-wins reading: an ``args`` entry gives it exactly one value.
REPEATABLE = frozenset(
    {
        "console",
        "iommu",
        "pci",
        "acpi_osi",
        "memmap",
        "hugepagesz",
        "hugepages",
        "crashkernel",
        "reserve",
        "video",
        "netdev",
        "ether",
        "initcall_blacklist",
        "modprobe.blacklist",
        "rd.driver.pre",
        "rd.driver.post",
        "rd.driver.blacklist",
        "rd.luks.uuid",
        "rd.luks.name",
        "rd.lvm.lv",
        "rd.md.uuid",
        "ip",
    }
)


def repeatable(name: str) -> bool:
    """Whether every occurrence of the parameter counts (see :data:`REPEATABLE`)."""
    return canonical_name(name) in REPEATABLE


def apply_cmdline(
    current: list[tuple[str, str | None]],
    args: list[tuple[str, str | None]],
    remove: list[tuple[str, str | None]],
) -> list[tuple[str, str | None]]:
    """The new argument list: removals dropped, values of existing names replaced in place, new ones appended.

    A ``remove`` entry with a value drops only that name=value; without a value it drops every occurrence of
    the name. An ``args`` entry of a last-wins parameter gives its name exactly one value: the first occurrence
    is set in place and later duplicates are dropped. An ``args`` entry of a repeatable parameter
    (:data:`REPEATABLE`) is appended when that exact occurrence is missing, and other occurrences stay. New
    arguments go to the end, before ``--`` when there is one. Unrelated arguments keep their order and spelling.
    """
    drop_any = {canonical_name(n) for n, v in remove if v is None}
    drop_exact = {(canonical_name(n), v) for n, v in remove if v is not None}
    wanted = {canonical_name(n): (n, v) for n, v in args if not repeatable(n)}
    result: list[tuple[str, str | None]] = []
    seen = set()
    init_args: list[tuple[str, str | None]] = []
    in_init = False
    for n, v in current:
        if in_init:
            init_args.append((n, v))
            continue
        if n == "--":
            in_init = True
            init_args.append((n, v))
            continue
        key = canonical_name(n)
        if key in wanted:
            if key in seen:
                continue
            seen.add(key)
            result.append((n, wanted[key][1]))
            continue
        if key in drop_any or (key, v) in drop_exact:
            continue
        result.append((n, v))
    have = {(canonical_name(n), v) for n, v in result if repeatable(n)}
    for n, v in args:  # new arguments in the order they were asked for
        key = canonical_name(n)
        if repeatable(n):
            if (key, v) not in have:
                have.add((key, v))
                result.append((n, v))
        elif key not in seen:
            seen.add(key)
            result.append(wanted[key])
    return result + init_args


def satisfied(
    current: list[tuple[str, str | None]],
    args: list[tuple[str, str | None]],
    remove: list[tuple[str, str | None]],
) -> bool:
    """Whether a command line already has every wanted argument (as its only value, for a last-wins parameter)
    and none of the removed ones."""
    return apply_cmdline(current, args, remove) == list(current)


def missing_and_present(current, args, remove) -> tuple[list[str], list[str]]:
    """The wanted arguments a command line lacks, and the removed arguments it still has (as text)."""
    by_name: dict[str, list[str | None]] = {}
    for n, v in current:
        by_name.setdefault(canonical_name(n), []).append(v)
    missing = []
    for n, v in args:
        values = by_name.get(canonical_name(n), [])
        if (v not in values) if repeatable(n) else (values != [v]):
            missing.append(render_arg(n, v))
    present = []
    for n, v in remove:
        values = by_name.get(canonical_name(n), [])
        if (v is None and values) or (v is not None and v in values):
            present.append(render_arg(n, v))
    return missing, present


def kernel_reading(current: list[tuple[str, str | None]]) -> list[tuple[str, str | None]]:
    """The command line as the kernel acts on it: a last-wins parameter keeps only its last occurrence (in that
    occurrence's place); repeatable parameters and everything after ``--`` (for init) stay as they are."""
    end = next((i for i, (n, _v) in enumerate(current) if n == "--"), len(current))
    last = {}
    for i, (n, _v) in enumerate(current[:end]):
        if not repeatable(n):
            last[canonical_name(n)] = i
    kept = [(n, v) for i, (n, v) in enumerate(current[:end]) if repeatable(n) or last[canonical_name(n)] == i]
    return kept + list(current[end:])


def undo_entries(before, args, remove) -> list[dict]:
    """What an undo must know of a change, as undo-record entries (module_utils/_record.py): per wanted argument
    the occurrences of its parameter on the configured command line ``before`` (for a repeatable parameter only
    the exact occurrence counts), and every argument of ``remove`` that ``before`` actually has."""
    end = next((i for i, (n, _v) in enumerate(before) if n == "--"), len(before))
    kernel_part = before[:end]
    entries = []
    for n, v in args:
        key = canonical_name(n)
        if repeatable(n):
            had = [render_arg(m, w) for m, w in kernel_part if canonical_name(m) == key and w == v]
        else:
            had = [render_arg(m, w) for m, w in kernel_part if canonical_name(m) == key]
        entries.append({"arg": render_arg(n, v), "had": had})
    for n, v in remove:
        key = canonical_name(n)
        for m, w in kernel_part:
            if canonical_name(m) == key and (v is None or w == v):
                entries.append({"removed": render_arg(m, w)})
    return entries


def undo_request(entries: list[dict]) -> tuple[list[tuple[str, str | None]], list[tuple[str, str | None]]]:
    """(args, remove) that give back what the entries say was there: an argument that was not there is removed
    (that exact value), a last-wins value it replaced is set again, a removed argument is added back, and an
    argument that was already there stays."""
    args: list[tuple[str, str | None]] = []
    remove: list[tuple[str, str | None]] = []
    for entry in entries:
        if "removed" in entry:
            args.extend(parse_cmdline(entry["removed"]))
            continue
        ((n, v),) = parse_cmdline(entry["arg"])
        had = [pair for text in entry["had"] for pair in parse_cmdline(text)]
        if (canonical_name(n), v) in {(canonical_name(m), w) for m, w in had}:
            continue
        if had and not repeatable(n):
            args.append(had[-1])  # the kernel read the last one; setting it replaces ours
        else:
            remove.append((n, v))
    # a name set again wins over its removal (a last-wins parameter has one value)
    set_names = {canonical_name(n) for n, _v in args if not repeatable(n)}
    remove = [(n, v) for n, v in remove if canonical_name(n) not in set_names]
    return args, remove


def conflicts(args, remove) -> list[str]:
    """Arguments that are both wanted and removed: a bare ``remove`` name that is in ``args``, the same
    name=value in both, or a last-wins parameter in both (it can only have one value)."""
    out = []
    for n, v in args:
        key = canonical_name(n)
        for m, w in remove:
            if canonical_name(m) != key:
                continue
            if w is None or w == v or not repeatable(n):
                out.append(key)
    return sorted(set(out))


# ---------------------------------------------------------------------------------------------------------------
# Known values of IOMMU parameters (Documentation/admin-guide/kernel-parameters.txt)
# ---------------------------------------------------------------------------------------------------------------
_AMD_IOMMU = (
    "fullflush",
    "off",
    "force_isolation",
    "force_enable",
    "pgtbl_v1",
    "pgtbl_v2",
    "irtcachedis",
    "nohugepages",
    "v2_pgsizes_only",
)
_INTEL_IOMMU = (
    "on",
    "off",
    "igfx_off",
    "forcedac",
    "strict",
    "sp_off",
    "sm_on",
    "sm_off",
    "tboot_noforce",
    "nobounce",
    "ecs_off",
    "pasid28",
)
_IOMMU = (
    "off",
    "force",
    "noforce",
    "biomerge",
    "panic",
    "nopanic",
    "merge",
    "nomerge",
    "soft",
    "pt",
    "nopt",
    "forcesac",
    "allowdac",
    "nodac",
    "usedac",
    "calgary",
    "fullflush",
    "nofullflush",
    "noagp",
    "noaperture",
    "leak",
    "memaper",
    "allowed",
)
_BOOL = ("0", "1", "y", "n", "yes", "no", "on", "off", "true", "false")


def _token_problem(name: str, value: str | None, allowed: tuple[str, ...], hint: str = "") -> str | None:
    if value is None or value == "":
        return f"{name} needs a value (one or more of: {', '.join(allowed)})"
    for token in value.split(","):
        base = token.split("=", 1)[0]
        if name == "iommu" and (base.isdigit() or re.fullmatch(r"\d+[kKmMgG]?", base)):
            continue
        if base not in allowed:
            return f"{name}={value}: {token!r} is not a value the kernel knows (valid: {', '.join(allowed)}){hint}"
    return None


def value_problem(name: str, value: str | None) -> str | None:
    """Why a known IOMMU parameter's value is wrong, or None when it is fine or the parameter is not checked."""
    key = canonical_name(name)
    if key == "amd_iommu":
        hint = ""
        if value in ("on", "1", "y", "yes", "true", "enable", "enabled"):
            hint = (
                "; the AMD IOMMU is used whenever the firmware enables it, so amd_iommu=on does nothing. "
                "Drop it (use iommu=pt for pass-through mode)"
            )
        return _token_problem("amd_iommu", value, _AMD_IOMMU, hint)
    if key == "intel_iommu":
        return _token_problem("intel_iommu", value, _INTEL_IOMMU)
    if key == "iommu":
        hint = "; to turn the IOMMU on use intel_iommu=on (Intel) and iommu=pt" if value in ("on", "1") else ""
        return _token_problem("iommu", value, _IOMMU, hint)
    if key in ("iommu.passthrough", "iommu.strict") and (value is None or value.lower() not in _BOOL):
        return f"{name}={value if value is not None else ''}: the kernel expects 0 or 1"
    return None


def check_values(args: list[tuple[str, str | None]]) -> list[str]:
    return [p for p in (value_problem(n, v) for n, v in args) if p]


# ---------------------------------------------------------------------------------------------------------------
# Small helpers shared by the backends
# ---------------------------------------------------------------------------------------------------------------
def file_diff(path: str, before: str | None, after: str | None) -> dict:
    return {
        "before_header": path if before is not None else "/dev/null",
        "after_header": path if after is not None else "/dev/null",
        "before": before or "",
        "after": after or "",
    }


def unified(path: str, before: str | None, after: str | None) -> str:
    return "".join(
        difflib.unified_diff(
            (before or "").splitlines(True), (after or "").splitlines(True), fromfile=path, tofile=path
        )
    )


def _run_ok(run, argv: list[str], what: str) -> str:
    rc, out, err = run(argv)
    if rc != 0:
        raise CmdlineError(f"{what}: {' '.join(argv)} failed with rc={rc}: {(err or out).strip()}")
    return out


class Plan:
    """What a backend will do: file writes/removals, commands, and the command line before and after."""

    def __init__(self, backend: str):
        self.backend = backend
        self.files: list[tuple[str, str | None, str | None]] = []  # (path, before, after); after None = delete
        self.commands: list[list[str]] = []
        self.cmdline_before: list[tuple[str, str | None]] = []
        self.cmdline_after: list[tuple[str, str | None]] = []
        self.entries: list[dict] = []
        self.notes: list[str] = []
        # re-reads the configured command line(s) after the change: () -> list of parsed command lines
        self.verify = lambda: [self.cmdline_after]

    @property
    def changed(self) -> bool:
        return bool(self.files or self.commands)

    def to_dict(self) -> dict:
        return {
            "backend": self.backend,
            "files": [f[0] for f in self.files],
            "commands": [list(c) for c in self.commands],
            "cmdline_before": render_cmdline(self.cmdline_before),
            "cmdline_after": render_cmdline(self.cmdline_after),
        }


# ---------------------------------------------------------------------------------------------------------------
# GRUB on Debian/Ubuntu: /etc/default/grub + /etc/default/grub.d/<name>.cfg + update-grub
# ---------------------------------------------------------------------------------------------------------------
_ASSIGN = re.compile(r"(?P<lead>[ \t]*(?:export[ \t]+)?)(?P<var>GRUB_CMDLINE_LINUX(?:_DEFAULT)?)=(?P<rest>.*)")
_REF_RE = re.compile(r"\$(?:[A-Za-z_][A-Za-z0-9_]*|\{[A-Za-z_][A-Za-z0-9_]*\})")
# An unquoted value edited in place stays a plain word: what kernel_arg lets through, minus '~' (tilde expansion
# after '=' and ':' in an assignment).
_UNQUOTED_PLAIN_RE = re.compile(r"[A-Za-z0-9_.,:+/=@%^!*-]*")
_BLANK = " \t"  # sh separates words with blanks only; '\r', '\f' and '\v' are ordinary characters to it
_WORD_END = " \t;&|<>()"
_OPAQUE = ("opaque", None, 0, 0, "")


def _lines(text: str) -> list[str]:
    """Lines as sh sees them (split at '\n' only, unlike str.splitlines), each with its newline."""
    return re.findall(r"[^\n]*\n|[^\n]+\Z", text)


def _split_nl(line: str) -> tuple[str, str]:
    return (line[:-1], "\n") if line.endswith("\n") else (line, "")


def sh_assignment_value(rest: str) -> tuple[str, str | None, int, int, str]:
    """What sh assigns with ``VAR=<rest>`` on one line: ``(kind, value, start, end, quote)``.

    ``kind`` is ``plain`` when the text between ``start`` and ``end`` is exactly the value (one double-quoted
    string without backslashes or backticks and with ``$NAME`` references only, one single-quoted string, or one
    unquoted plain word), so it can be edited in place with plain words; ``known`` when sh's value is certain
    but spelled with escapes or concatenated quotes (``"quiet acpi_osi=\"!Windows 2012\""``): read, never
    rewritten; ``opaque`` when sh computes it (command substitution, variables outside a plain string, tilde
    expansion, a value continued on the next line) or runs something after it (``a;b``, ``a b``, ``a|b``).
    Only what follows the value on the line may be blanks and a comment.
    """
    i, n = 0, len(rest)
    parts, value, escaped, refs = [], [], False, False
    while i < n and rest[i] not in _WORD_END:
        c = rest[i]
        if c == "'":
            j = rest.find("'", i + 1)
            if j < 0:
                return _OPAQUE
            parts.append(("'", i + 1, j))
            value.append(rest[i + 1 : j])
            i = j + 1
        elif c == '"':
            j, buf = i + 1, []
            while True:
                if j >= n:
                    return _OPAQUE
                d = rest[j]
                if d == '"':
                    break
                if d == "\\":
                    if j + 1 >= n:
                        return _OPAQUE
                    escaped = True
                    if rest[j + 1] in '$`"\\':
                        buf.append(rest[j + 1])
                        j += 2
                    else:
                        buf.append(d)
                        j += 1
                    continue
                if d == "`":
                    return _OPAQUE
                if d == "$":
                    m = _REF_RE.match(rest, j)
                    if not m:
                        return _OPAQUE
                    refs = True
                    buf.append(m.group())
                    j = m.end()
                    continue
                buf.append(d)
                j += 1
            parts.append(('"', i + 1, j))
            value.append("".join(buf))
            i = j + 1
        elif c == "\\":
            if i + 1 >= n:
                return _OPAQUE
            escaped = True
            parts.append(("\\", i, i + 2))
            value.append(rest[i + 1])
            i += 2
        elif c in "$`~":
            return _OPAQUE
        else:
            j = i
            while j < n and rest[j] not in _WORD_END and rest[j] not in "'\"\\$`~":
                j += 1
            parts.append(("", i, j))
            value.append(rest[i:j])
            i = j
    tail = rest[i:]
    if tail.strip(_BLANK) and not re.fullmatch(r"[ \t]+#.*", tail):
        return _OPAQUE
    text = "".join(value)
    if not parts:
        return "plain", "", i, i, ""
    quote, start, end = parts[0]
    simple = len(parts) == 1 and not escaped
    if simple and (quote == '"' or (quote == "'" and '"' not in text) or _UNQUOTED_PLAIN_RE.fullmatch(text)):
        return "plain", text, start, end, quote
    if refs:
        return _OPAQUE
    return "known", text, parts[0][1], parts[-1][2], quote


def _grub_assignments(text: str) -> list[tuple[int, str, str, str | None, int, int, str]]:
    """``(line index, var, kind, value, start, end, quote)`` of each GRUB_CMDLINE_LINUX[_DEFAULT]= line;
    ``start``/``end`` are offsets in the line (see :func:`sh_assignment_value`)."""
    found = []
    for idx, line in enumerate(_lines(text)):
        m = _ASSIGN.fullmatch(_split_nl(line)[0])
        if not m:
            continue
        kind, value, start, end, quote = sh_assignment_value(m.group("rest"))
        off = m.start("rest")
        found.append((idx, m.group("var"), kind, value, off + start, off + end, quote))
    return found


def _token_pair(tok: str) -> tuple[str, str | None]:
    parsed = parse_cmdline(tok)
    return parsed[0] if parsed else (tok, None)


def _edit_value(value: str, args, remove, seen: set) -> str:
    """Change existing names and drop removed arguments in a shell variable's value, token by token.

    Untouched tokens and the spacing between them stay byte for byte; tokens holding ``$`` (shell references)
    are never matched. New arguments are never added here (they go to the drop-in), and occurrences of a
    repeatable parameter are only ever removed, never rewritten. ``seen`` carries the last-wins names already
    given their value across the assignments, so a later duplicate is dropped.
    """
    wanted = {canonical_name(n): (n, v) for n, v in args if not repeatable(n)}
    drop_any = {canonical_name(n) for n, v in remove if v is None}
    drop_exact = {(canonical_name(n), v) for n, v in remove if v is not None}
    out = []
    for m in re.finditer(r"\S+", value):
        tok = m.group(0)
        if "$" in tok:
            continue
        n, v = _token_pair(tok)
        key = canonical_name(n)
        if key in wanted:
            replacement = None if key in seen else render_arg(n, wanted[key][1])
            seen.add(key)
        elif key in drop_any or (key, v) in drop_exact:
            replacement = None
        else:
            continue
        if replacement == tok:
            continue
        start, end = m.span()
        if replacement is None:  # drop the token and the whitespace before it (or after it, at the start)
            if start > 0:
                start = len(value[:start].rstrip())
            else:
                end = len(value) - len(value[end:].lstrip())
            out.append((start, end, ""))
        else:
            out.append((start, end, replacement))
    for start, end, text in reversed(out):
        value = value[:start] + text + value[end:]
    return value


_DROPIN_RE = re.compile(r'GRUB_CMDLINE_LINUX_DEFAULT="\$GRUB_CMDLINE_LINUX_DEFAULT ?([^"$`\\]*)"[ \t]*')


def _checked(pairs: list[tuple[str, str | None]], path: str) -> list[tuple[str, str | None]]:
    """Arguments read back from a file this module owns pass the same checks as the request, or the file is
    refused: nothing read from the host is written back unless it is exactly valid."""
    for n, v in pairs:
        try:
            _validate.kernel_arg_named(path, render_arg(n, v))
        except _validate.InvalidValue as exc:
            raise CmdlineError(f"{exc}; the file was changed by hand: fix or remove it") from None
    return pairs


def _parse_dropin(text: str | None, path: str = "drop-in") -> list[tuple[str, str | None]]:
    if not text:
        return []
    for line in text.split("\n"):
        m = _DROPIN_RE.fullmatch(line)
        if m:
            return _checked(parse_cmdline(m.group(1)), path)
    return []


def _render_dropin(args: list[tuple[str, str | None]], regen: str = "update-grub") -> str:
    return (
        f"{MARKER}\n"
        f"# Appends kernel arguments to GRUB_CMDLINE_LINUX_DEFAULT; run {regen} after changing it.\n"
        f'GRUB_CMDLINE_LINUX_DEFAULT="$GRUB_CMDLINE_LINUX_DEFAULT {render_cmdline(args)}"\n'
    )


def split_marked_block(text: str) -> tuple[str, str | None]:
    """``/etc/default/grub`` without this module's marked block (the drop-in's three lines appended at the end of the
    file where there is no drop-in directory: SUSE, Arch), and the block's text (None when there is none).

    The block is the MARKER line, one comment line and the assignment line; removing it gives back the file as it
    was, byte for byte.
    """
    lines = _lines(text)
    for idx, line in enumerate(lines):
        if line.rstrip("\n") == MARKER:
            block = lines[idx : idx + 3]
            if len(block) == 3 and _DROPIN_RE.fullmatch(block[2].rstrip("\n")):
                return "".join(lines[:idx] + lines[idx + 3 :]), "".join(block)
            raise CmdlineError(
                f"/etc/default/grub line {idx + 1}: the block this module manages was changed by hand (expected the "
                "marker, a comment and one GRUB_CMDLINE_LINUX_DEFAULT line); restore or remove it"
            )
    return text, None


# GRUB layouts by distribution family: the drop-in directory (None: the marked block in /etc/default/grub), the
# generated file and the command that writes it.
GRUB_LAYOUTS = {
    "debian": {"dropin_dir": "/etc/default/grub.d", "grub_cfg": "/boot/grub/grub.cfg", "regen": ["update-grub"]},
    "suse": {
        "dropin_dir": None,
        "grub_cfg": "/boot/grub2/grub.cfg",
        "regen": ["grub2-mkconfig", "-o", "/boot/grub2/grub.cfg"],
    },
    "arch": {
        "dropin_dir": None,
        "grub_cfg": "/boot/grub/grub.cfg",
        "regen": ["grub-mkconfig", "-o", "/boot/grub/grub.cfg"],
    },
}


def os_release_ids(root: str) -> list[str]:
    """ID and ID_LIKE words of ``etc/os-release`` (or ``usr/lib/os-release``) under ``root``, lower case."""
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            text = read_lenient(rooted(root, path))
        except CmdlineError:  # unreadable: the tools decide; the files this module edits name their own errors
            continue
        if text is None:
            continue
        words = []
        for line in text.splitlines():
            key, sep, value = line.partition("=")
            if sep and key.strip() in ("ID", "ID_LIKE"):
                words += value.strip().strip("\"'").lower().split()
        return words
    return []


def grub_family(root: str, which) -> str | None:
    """Which GRUB layout the host uses: os-release first (suse, arch, debian/ubuntu), then the tools present."""
    ids = os_release_ids(root)
    if any("suse" in w for w in ids):
        return "suse"
    if "arch" in ids:
        return "arch"
    if "debian" in ids or "ubuntu" in ids:
        return "debian"
    if which("update-grub"):
        return "debian"
    if which("grub2-mkconfig"):
        return "suse"
    if which("grub-mkconfig"):
        return "arch"
    return None


def grub_cfg_cmdline(text: str | None) -> list[tuple[str, str | None]] | None:
    """The arguments of the first ``linux`` line of a generated grub.cfg (the default entry), kernel path excluded."""
    if not text:
        return None
    for line in text.splitlines():
        m = re.match(r"^\s*linux(?:efi|16)?\s+(\S+)\s*(.*)$", line)
        if m:
            return parse_cmdline(m.group(2))
    return None


def plan_grub(
    root: str,
    args,
    remove,
    name: str,
    grub_cfg: str = "/boot/grub/grub.cfg",
    regen: list[str] | None = None,
    dropin_dir: str | None = "/etc/default/grub.d",
) -> Plan:
    """/etc/default/grub is edited only where an argument already there must change or go, and only on a line
    whose value is a plain word list (see :func:`sh_assignment_value`); every new argument goes to the drop-in.
    A line sh reads differently from its text is never rewritten: it is left alone when it needs no edit, and
    the plan is refused, naming the line, when it would.

    ``dropin_dir`` None (SUSE, Arch: no drop-in directory) puts the new arguments in a marked block at the end of
    /etc/default/grub itself (see :func:`split_marked_block`), the same three lines a drop-in would hold."""
    plan = Plan("grub")
    main_path = rooted(root, "/etc/default/grub")
    embedded = dropin_dir is None
    dropin_dir = rooted(root, dropin_dir or "/etc/default/grub.d")
    dropin_path = main_path if embedded else os.path.join(dropin_dir, f"{name}.cfg")
    full = read_text(main_path, "GRUB configuration file")
    if full is None:
        raise CmdlineError(f"{main_path} does not exist: this host does not use GRUB's /etc/default/grub")
    main, block = split_marked_block(full) if embedded else (full, None)
    # Arguments in other drop-ins cannot be edited by this module: refuse to pretend.
    others = []
    if not embedded and os.path.isdir(dropin_dir):
        try:
            names = sorted(os.listdir(dropin_dir))
        except OSError as exc:
            raise CmdlineError(f"{dropin_dir}: cannot list it: {exc.strerror or exc}") from None
        for fn in names:
            if fn.endswith(".cfg") and fn != f"{name}.cfg":
                others.append((fn, read_text(os.path.join(dropin_dir, fn), "GRUB drop-in") or ""))
    for fn, text in others:
        code = "\n".join(line.split("#", 1)[0] for line in text.splitlines())
        toks = {canonical_name(_token_pair(t)[0]) for t in re.split(r"[\s\"']+", code) if t}
        for n, _v in remove:
            if canonical_name(n) in toks:
                raise CmdlineError(
                    f"{n} appears in /etc/default/grub.d/{fn}, which this module does not edit; "
                    "remove it there by hand (or with ansible.builtin.lineinfile)"
                )

    # 1. Edit /etc/default/grub surgically: only existing names to change and arguments to remove, and only on
    #    plain lines.
    lines = _lines(main)
    seen: set = set()
    for idx, var, kind, value, start, end, quote in _grub_assignments(main):
        head, nl = _split_nl(lines[idx])
        where = f"{main_path} line {idx + 1} ({_validate.shown(head.strip())})"
        if kind == "opaque":
            if remove:
                raise CmdlineError(
                    f"{where}: sh computes the value of {var} there (command substitution, variables, a value "
                    "continued on the next line, or a command after the value), so this module cannot tell "
                    f"whether it holds {', '.join(render_arg(n, v) for n, v in remove)}; make it a plain quoted "
                    "list of arguments first"
                )
            plan.notes.append(f"{where}: left alone, sh computes its value; new arguments go to the drop-in")
            continue
        new_value = _edit_value(value, args, remove, seen)
        if new_value == value:
            continue
        if kind != "plain":
            raise CmdlineError(
                f"{where}: this change would edit {var} there, but its value is spelled with sh escapes or "
                "concatenated quotes, which this module does not rewrite; edit that line by hand"
            )
        text = f'"{new_value}"' if quote == "" else new_value  # an edited unquoted word gets quotes
        lines[idx] = head[:start] + text + head[end:] + nl
    new_main = "".join(lines)
    base_tokens = []
    for _idx, _var, kind, value, _start, _end, _quote in _grub_assignments(new_main):
        if kind == "plain":
            base_tokens += [_token_pair(t) for t in value.split() if "$" not in t]
        elif kind == "known":
            base_tokens += parse_cmdline(value)
    base_last = {canonical_name(n): v for n, v in base_tokens}
    base_all = {(canonical_name(n), v) for n, v in base_tokens}

    # 2. The drop-in carries the arguments /etc/default/grub does not have (earlier runs' arguments stay).
    dropin = block if embedded else read_text(dropin_path, "GRUB drop-in")
    existing = _parse_dropin(dropin, dropin_path)
    want = [
        (n, v)
        for n, v in apply_cmdline(existing, args, remove)
        if not (
            (canonical_name(n), v) in base_all if repeatable(n) else base_last.get(canonical_name(n), object()) == v
        )
    ]
    new_dropin = _render_dropin(want, " ".join(regen or ["update-grub"])) if want else None
    if dropin is not None and new_dropin is not None and existing == want and MARKER in dropin:
        new_dropin = dropin

    if embedded:
        # the original text, with the block appended at the end (a file without a final newline gets one first)
        sep = "\n" if new_main and not new_main.endswith("\n") and new_dropin else ""
        after = new_main + sep + (new_dropin or "")
        if after != full:
            plan.files.append((main_path, full, after))
    else:
        if new_main != main:
            plan.files.append((main_path, main, new_main))
        if new_dropin != dropin:
            plan.files.append((dropin_path, dropin, new_dropin))

    cfg_path = rooted(root, grub_cfg)
    cfg = grub_cfg_cmdline(read_lenient(cfg_path))
    plan.cmdline_before = cfg if cfg is not None else base_tokens + existing
    plan.cmdline_after = apply_cmdline(plan.cmdline_before, args, remove)
    stale = cfg is not None and not satisfied(cfg, args, remove)
    if plan.files or stale:
        plan.commands.append(regen or ["update-grub"])
        if stale and not plan.files:
            plan.notes.append(f"{grub_cfg} does not match the configuration yet: regenerating it")
    plan.verify = lambda: [grub_cfg_cmdline(read_lenient(cfg_path)) or []] if os.path.exists(cfg_path) else []
    return plan


# ---------------------------------------------------------------------------------------------------------------
# grubby (RHEL/Fedora BLS)
# ---------------------------------------------------------------------------------------------------------------
def grubby_entries(text: str) -> list[dict]:
    """Entries of ``grubby --info=ALL``: dicts with at least ``kernel`` and ``args``."""
    entries, cur = [], {}
    for line in text.splitlines():
        m = re.match(r"^(\w+)=(.*)$", line.strip())
        if not m:
            continue
        key, value = m.group(1), m.group(2)
        if value.startswith('"') and value.endswith('"') and len(value) >= 2:
            value = value[1:-1]
        if key == "index" and cur:
            entries.append(cur)
            cur = {}
        cur[key] = value
    if cur:
        entries.append(cur)
    return [e for e in entries if "args" in e and "kernel" in e]


def plan_grubby(run, args, remove, grubby: str = "grubby") -> Plan:
    plan = Plan("grubby")
    entries = grubby_entries(_run_ok(run, [grubby, "--info=ALL"], "reading boot entries"))
    if not entries:
        raise CmdlineError("grubby --info=ALL lists no boot entries with arguments")
    add, drop = set(), set()
    for e in entries:
        cur = parse_cmdline(e["args"])
        kept = apply_cmdline(cur, [], remove)
        for n, v in args:
            others = [w for c, w in kept if canonical_name(c) == canonical_name(n) and w != v]
            if repeatable(n) and others and (canonical_name(n), v) not in {(canonical_name(c), w) for c, w in cur}:
                # grubby --args=name=value rewrites the first name= it finds (grubby-bls update_args): it would
                # replace the other occurrence instead of adding this one.
                raise CmdlineError(
                    f"{render_arg(n, v)}: the entry {e['kernel']} already has "
                    f"{', '.join(render_arg(n, w) for w in others)}, and grubby keeps one value per name, so it "
                    f"would replace that occurrence; {canonical_name(n)}= is repeatable (every occurrence counts). "
                    "Add it by hand (edit the BLS entries' options) or list the other occurrence in remove"
                )
        new = apply_cmdline(cur, args, remove)
        plan.entries.append({"kernel": e["kernel"], "before": e["args"], "after": render_cmdline(new)})
        if new != cur:
            for n, v in args:
                if not any(canonical_name(c) == canonical_name(n) and cv == v for c, cv in cur):
                    add.add(render_arg(n, v))
            for n, v in cur:
                if (n, v) not in new:
                    drop.add(render_arg(n, v))
    plan.cmdline_before = parse_cmdline(entries[0]["args"])
    plan.cmdline_after = apply_cmdline(plan.cmdline_before, args, remove)
    if add or drop:
        argv = [grubby, "--update-kernel=ALL"]
        if drop:
            argv.append("--remove-args=" + " ".join(sorted(drop)))
        if add:
            argv.append("--args=" + " ".join(sorted(add)))
        plan.commands.append(argv)

    plan.verify = lambda: [
        parse_cmdline(e["args"]) for e in grubby_entries(_run_ok(run, [grubby, "--info=ALL"], "verifying"))
    ]
    return plan


# ---------------------------------------------------------------------------------------------------------------
# systemd-boot / kernel-install and Proxmox: /etc/kernel/cmdline
# ---------------------------------------------------------------------------------------------------------------


def _plan_kernel_cmdline_file(plan: Plan, root: str, proc_root: str, args, remove) -> None:
    path = rooted(root, "/etc/kernel/cmdline")
    before = read_text(path, "kernel command line file")
    if before is None:
        running = read_lenient(os.path.join(proc_root, "cmdline")) or ""
        base = [(n, v) for n, v in parse_cmdline(running) if n not in ("BOOT_IMAGE", "initrd")]
        plan.notes.append(f"{path} did not exist: it starts from the running kernel's command line")
    else:
        base = parse_cmdline(before)
    new = apply_cmdline(base, args, remove)
    plan.cmdline_before, plan.cmdline_after = base, new
    if before is None or new != base:
        text = render_cmdline(new) + "\n"
        if text != before:
            plan.files.append((path, before, text))
    plan.verify = lambda: [parse_cmdline(read_text(path) or "")]


def plan_systemd_boot(root: str, proc_root: str, args, remove, kernel_install: str = "kernel-install") -> Plan:
    plan = Plan("systemd-boot")
    _plan_kernel_cmdline_file(plan, root, proc_root, args, remove)
    if plan.files:
        try:
            kernels = installed_kernels(root)  # release names only: each is passed to kernel-install
        except InitramfsError as exc:
            raise CmdlineError(str(exc)) from None
        if not kernels:
            raise CmdlineError(f"no installed kernel found under {rooted(root, '/lib/modules')} to regenerate")
        for ver in kernels:
            image = rooted(root, f"/lib/modules/{ver}/vmlinuz")
            if not os.path.exists(image):
                image = rooted(root, f"/boot/vmlinuz-{ver}")
            plan.commands.append([kernel_install, "add", ver, image])
    return plan


def proxmox_mode(run, tool: str = "proxmox-boot-tool") -> str | None:
    """'uefi' or 'grub' when proxmox-boot-tool manages ESPs, else None."""
    rc, out, _err = run([tool, "status"])
    if rc != 0:
        return None
    modes = set(re.findall(r"configured with:\s*(uefi|grub)", out))
    if "uefi" in modes:
        return "uefi"
    if "grub" in modes:
        return "grub"
    return None


def plan_proxmox(run, root: str, proc_root: str, args, remove, name: str, tool: str = "proxmox-boot-tool") -> Plan:
    mode = proxmox_mode(run, tool)
    if mode == "uefi":
        plan = Plan("proxmox")
        _plan_kernel_cmdline_file(plan, root, proc_root, args, remove)
        if plan.files:
            plan.commands.append([tool, "refresh"])
        return plan
    plan = plan_grub(root, args, remove, name, regen=[tool, "refresh"] if mode == "grub" else None)
    plan.backend = "proxmox" if mode == "grub" else "grub"
    if mode is None:
        plan.notes.append("proxmox-boot-tool manages no ESP here: plain GRUB with update-grub")
    return plan


# ---------------------------------------------------------------------------------------------------------------
# rpm-ostree and bootc
# ---------------------------------------------------------------------------------------------------------------
def plan_rpm_ostree(run, args, remove, tool: str = "rpm-ostree") -> Plan:
    plan = Plan("rpm-ostree")
    cur = parse_cmdline(_run_ok(run, [tool, "kargs"], "reading kernel arguments"))
    new = apply_cmdline(cur, args, remove)
    plan.cmdline_before, plan.cmdline_after = cur, new
    if new != cur:
        argv = [tool, "kargs"]
        for n, v in cur:
            if (n, v) not in new:
                argv.append("--delete-if-present=" + render_arg(n, v))
        for n, v in args:
            argv.append("--append-if-missing=" + render_arg(n, v))
        plan.commands.append(argv)
    plan.verify = lambda: [parse_cmdline(_run_ok(run, [tool, "kargs"], "verifying"))]
    return plan


def _render_toml(args) -> str:
    items = ", ".join('"' + render_arg(n, v) + '"' for n, v in args)
    return (
        f"{MARKER}\n# Applied by bootc when this image is installed or deployed (bootc upgrade/switch).\n"
        f"kargs = [{items}]\n"
    )


def _parse_toml_kargs(text: str | None) -> list[tuple[str, str | None]]:
    if not text:
        return []
    m = re.search(r"^kargs\s*=\s*\[(.*?)\]", text, re.S | re.M)
    if not m:
        return []
    return [_token_pair(s) for s in re.findall(r'"([^"]*)"', m.group(1))]


def _read_toml_kargs(path: str) -> tuple[str | None, list[tuple[str, str | None]]]:
    text = read_text(path, "bootc kargs.d file")
    return text, _checked(_parse_toml_kargs(text), path)


def plan_bootc(root: str, args, remove, name: str) -> Plan:
    plan = Plan("bootc")
    path = rooted(root, f"/usr/lib/bootc/kargs.d/{name}.toml")
    before, cur = _read_toml_kargs(path)
    new = apply_cmdline(cur, args, remove)
    plan.cmdline_before, plan.cmdline_after = cur, new
    after = _render_toml(new) if new else None
    if before is not None and after is not None and cur == new and MARKER in before:
        after = before
    if after != before:
        plan.files.append((path, before, after))
    plan.verify = lambda: [_read_toml_kargs(path)[1]]
    return plan


# ---------------------------------------------------------------------------------------------------------------
# Detection
# ---------------------------------------------------------------------------------------------------------------
def detect_backend(root: str, which, run) -> tuple[str, list[str]]:
    """Pick a backend; ``which(name)`` returns a binary's path or None. Returns (backend, reasons checked)."""
    tried = []
    if os.path.exists(rooted(root, "/run/ostree-booted")) and which("rpm-ostree"):
        return "rpm-ostree", tried
    tried.append("rpm-ostree: no /run/ostree-booted with rpm-ostree")
    if which("proxmox-boot-tool"):
        return "proxmox", tried
    tried.append("proxmox: no proxmox-boot-tool")
    if which("grubby"):
        return "grubby", tried
    tried.append("grubby: no grubby")
    bootctl = which("bootctl")
    if which("kernel-install") and bootctl and run([bootctl, "is-installed"])[0] == 0:
        return "systemd-boot", tried
    tried.append("systemd-boot: bootctl is-installed did not confirm systemd-boot (or kernel-install missing)")
    family = grub_family(root, which)
    tool = GRUB_LAYOUTS[family]["regen"][0] if family else None
    if tool and which(tool) and os.path.exists(rooted(root, "/etc/default/grub")):
        return "grub", tried
    tried.append("grub: no update-grub, grub2-mkconfig or grub-mkconfig with /etc/default/grub")
    return "", tried


def shell_join(argv: list[str]) -> str:
    return " ".join(shlex.quote(a) for a in argv)


# --------------------------------------------------------------------------------------------------- the operation
def run_request(
    host,
    args_in=(),
    remove_in=(),
    backend="auto",
    allow_unknown_values=False,
    name="hostdev-vfio",
    root="/",
    proc_root="/proc",
    want_record=False,
    want_undo=False,
    state_dir=_record.DEFAULT_STATE_DIR,
) -> dict:
    """hostdev.vfio.kernel_cmdline on ``host`` (``_host.Host``): the wanted arguments (``args_in``) and unwanted ones
    (``remove_in``), or the undo of the record (``want_undo``), planned, applied unless in check mode, verified in
    the boot configuration. Returns the module's result; raises ``_host.Failed``. ``want_record`` writes what the
    command line had before each change into the undo record, ahead of the change."""
    # Every value is checked before any file is read and before any command (detection included) runs.
    try:
        args = parse_request(args_in, "args")
        remove = parse_request(remove_in, "remove")
        _validate.file_name("name", name)
        _validate.path_text("root", root)
        _validate.path_text("proc_root", proc_root)
        record_file = _record.record_path(root, state_dir)
    except (CmdlineError, _validate.InvalidValue) as e:
        raise Failed(str(e)) from None

    record = undo = None
    if want_record or want_undo:
        try:
            record = _record.load(record_file)
        except _record.RecordError as e:
            raise Failed(str(e)) from None
    if want_undo:
        undo = _record.kernel_args_of(record, name)
        if undo is None:
            return dict(
                changed=False,
                record_found=False,
                record_file=record_file,
                reboot_required=False,
                missing=[],
                unwanted=[],
                files=[],
                commands=[],
                notes=[f"no undo record for {name!r} in {record_file}"],
            )
        args, remove = undo_request(undo)
        try:
            # recorded values go back onto the command line: the same check as the user's own arguments
            args = parse_request([render_cmdline([a]) for a in args], "args (from the undo record)")
            remove = parse_request([render_cmdline([a]) for a in remove], "remove (from the undo record)")
        except CmdlineError as e:
            raise Failed(f"{record_file}: {e}") from None
    both = conflicts(args, remove)
    if both:
        raise Failed(f"these parameters are both in args and in remove: {', '.join(both)}")
    if not allow_unknown_values:
        problems = check_values(args)
        if problems:
            raise Failed(
                "; ".join(problems) + ". Set allow_unknown_values=true to write such values anyway.",
                problems=problems,
            )

    if backend == "auto":
        backend, tried = detect_backend(root, host.bin, host.run)
        if not backend:
            raise Failed(
                "cannot tell how this host boots; set backend explicitly. Checked: " + "; ".join(tried),
                tried=tried,
            )

    try:
        plan = _plan(host, backend, args, remove, root, proc_root, name)
        running = parse_cmdline(read_lenient(os.path.join(proc_root, "cmdline")) or "")
    except CmdlineError as e:
        raise Failed(str(e), backend=backend) from None

    # The running kernel acted on the last occurrence of a last-wins parameter: x=off ... x=on is x=on.
    effective = kernel_reading(running)
    missing, unwanted = missing_and_present(effective, args, remove)
    new_entries = undo_entries(plan.cmdline_before, args, remove) if want_record else []
    record_changed = False
    if want_record:
        record_changed = _record.add_kernel_args(record, name, new_entries)
    elif undo is not None:
        _record.drop_kernel_args(record, name)
        record_changed = True
    diff = [
        {
            "before_header": "kernel command line (next boot)",
            "after_header": "kernel command line (next boot)",
            "before": render_cmdline(plan.cmdline_before) + "\n",
            "after": render_cmdline(plan.cmdline_after) + "\n",
        }
    ] + [file_diff(path, before, after) for path, before, after in plan.files]
    result = dict(
        changed=plan.changed or record_changed,
        backend=plan.backend,
        cmdline_before=render_cmdline(plan.cmdline_before),
        cmdline_after=render_cmdline(plan.cmdline_after),
        running_cmdline=render_cmdline(running),
        reboot_required=not satisfied(effective, args, remove),
        missing=missing,
        unwanted=unwanted,
        files=[f[0] for f in plan.files],
        commands=plan.commands,
        entries=plan.entries,
        notes=plan.notes,
        diff=diff,
    )
    if want_record or want_undo:
        entries = undo if want_undo else record["kernel_cmdline"].get(name, [])
        result.update(record_file=record_file, record=entries)
        if want_undo:
            result.update(record_found=True, reverted=undo)
    if host.check_mode:
        return result
    if want_record and record_changed:
        _save_record(host, record_file, record, result)  # write-ahead: the record before the change
    if not plan.changed:
        if want_undo:
            _save_record(host, record_file, record, result)
        return result

    for path, _before, after in plan.files:
        if after is None:
            _remove(host, path)
        else:
            _write(host, path, after)
    for argv in plan.commands:
        rc, out, err = host.run(argv)
        if rc != 0:
            raise Failed(f"{' '.join(argv)} failed with rc={rc}: {(err or out).strip()}", **result)
    try:
        configured = plan.verify()
    except CmdlineError as e:
        raise Failed(str(e), **result) from None
    bad = [render_cmdline(c) for c in configured if not satisfied(c, args, remove)]
    if bad:
        raise Failed(
            "after the change the boot configuration still does not have the wanted arguments: "
            + " | ".join(bad)
            + ". Another configuration file may override them (for GRUB, look in /etc/default/grub.d/).",
            **result,
        )
    if want_undo:
        _save_record(host, record_file, record, result)  # only once the command line is given back
    return result


def _write(host, path, text):
    """Write ``text`` to ``path`` atomically (mode 0644); a failure names the path."""
    try:
        write_atomic(path, text, host.atomic_move, mode=0o644)
    except FileProblem as exc:
        raise Failed(str(exc)) from None


def _save_record(host, path, record, result):
    try:
        _record.save(path, record, host.atomic_move)
    except _record.RecordError as exc:
        raise Failed(str(exc), **result) from None


def _remove(host, path):
    try:
        os.unlink(path)
    except OSError as exc:
        raise Failed(f"cannot remove {path}: {exc.strerror or exc}") from None


def _plan(host, backend, args, remove, root, proc_root, name):
    def tool(binary):
        return host.bin(binary, required=True)

    if backend == "grub":
        layout = GRUB_LAYOUTS[grub_family(root, host.bin) or "debian"]
        regen = [tool(layout["regen"][0]), *layout["regen"][1:]]
        return plan_grub(
            root, args, remove, name, grub_cfg=layout["grub_cfg"], regen=regen, dropin_dir=layout["dropin_dir"]
        )
    if backend == "grubby":
        return plan_grubby(host.run, args, remove, grubby=tool("grubby"))
    if backend == "systemd-boot":
        return plan_systemd_boot(root, proc_root, args, remove, kernel_install=tool("kernel-install"))
    if backend == "proxmox":
        plan = plan_proxmox(host.run, root, proc_root, args, remove, name, tool=tool("proxmox-boot-tool"))
        if plan.backend == "grub":
            plan.commands = [[tool("update-grub")] if c == ["update-grub"] else c for c in plan.commands]
        return plan
    if backend == "rpm-ostree":
        return plan_rpm_ostree(host.run, args, remove, tool=tool("rpm-ostree"))
    return plan_bootc(root, args, remove, name)
