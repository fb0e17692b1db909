# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The one place where values from inventories, CMDBs and other hosts' facts are checked.

Every value that reaches a configuration file or a command goes through one of these functions first, before any
file is read for writing and before any command runs. Each rule is a full-string match (``re.fullmatch``: a
``$``-anchored pattern also matches before a final newline, and that newline would start a new modprobe.d
command), refuses every control character (C0, DEL, C1, and the Unicode line and paragraph separators) and has
a length limit. A refusal is an :class:`InvalidValue` whose message names the field, shows the value with
``repr`` (so an invisible character is visible) and says what is allowed.
"""

from __future__ import annotations

__metaclass__ = type

import os
import re

# Longest value accepted where no tighter limit applies (a kernel command line is at most 2048-4096 bytes).
MAX_TEXT = 4096
_SHOWN = 80  # characters of a refused value shown in a message

# C0 controls, DEL, C1 controls, and U+2028/U+2029 (line/paragraph separators some parsers treat as newlines).
_CONTROL_RE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")

MODULE_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
DRIVER_NAME_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
PARAM_KEY_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
# Module parameter values: no whitespace (word separator), no '#', quotes or backslashes (kmod and the kernel's
# parameter parser quote with them), nothing a shell treats specially.
PARAM_VALUE_RE = re.compile(r"[A-Za-z0-9_.,:+/=@%^-]{0,1024}")
PCI_ADDRESS_RE = re.compile(r"(?:([0-9a-fA-F]{4}):)?([0-9a-fA-F]{2}):([0-9a-fA-F]{2})\.([0-7])")
PCI_IDS_RE = re.compile(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{4})(?::([0-9a-fA-F]{4}):([0-9a-fA-F]{4}))?")
KERNEL_RELEASE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+~-]{0,127}")
# Kernel arguments: a parameter name (dots for module.param, '-' and '_' alike) and an optional value. The value's
# characters must survive GRUB's and sh's double quoting unchanged: no whitespace, quotes, '$', '`', '\', and none
# of sh's operators, so a value can never end a quoted string or start a command.
KARG_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
KARG_VALUE_RE = re.compile(r"[A-Za-z0-9_.,:+/=@%^~!*-]{0,1024}")
_KARG_VALUE_ALLOWED = "letters, digits and _ . , : + / = @ % ^ ~ ! * -"


class InvalidValue(ValueError):
    """A value that must not reach a file or a command; the message names the field and the value."""


def shown(value) -> str:
    """``repr`` of a value, shortened for a message (a 100k-character value is not echoed whole)."""
    text = repr(value)
    if len(text) <= _SHOWN:
        return text
    size = len(value) if isinstance(value, (str, bytes, list, tuple, dict)) else "?"
    return f"{text[:_SHOWN]}... ({size} long)"


def text(field: str, value, max_len: int = MAX_TEXT, allow_empty: bool = False) -> str:
    """A string with no control character, no longer than ``max_len``."""
    if not isinstance(value, str):
        raise InvalidValue(f"{field}: expected a string, got {type(value).__name__} {shown(value)}")
    if not value and not allow_empty:
        raise InvalidValue(f"{field}: must not be empty")
    if len(value) > max_len:
        raise InvalidValue(f"{field}: {shown(value)} is longer than {max_len} characters")
    bad = _CONTROL_RE.search(value)
    if bad:
        raise InvalidValue(
            f"{field}: {shown(value)} contains the control character {bad.group()!r} at position {bad.start()}; "
            "newlines and other control characters are never accepted"
        )
    return value


def _pattern(field: str, value, pattern: re.Pattern, what: str, max_len: int = MAX_TEXT) -> str:
    text(field, value, max_len=max_len)
    if not pattern.fullmatch(value):
        raise InvalidValue(f"{field}: {shown(value)} is not {what}")
    return value


def module_name(field: str, value) -> str:
    """A kernel module name as modprobe.d takes it (``vfio-pci`` and ``vfio_pci`` are both accepted)."""
    return _pattern(field, value, MODULE_NAME_RE, "a kernel module name (1-64 of A-Z a-z 0-9 _ -)", 64)


def driver_name(field: str, value) -> str:
    """A PCI driver name as /sys/bus/pci/drivers lists it (``vfio-pci``, ``pci-stub``, ``xhci_hcd``)."""
    return _pattern(field, value, DRIVER_NAME_RE, "a driver name (1-64 of A-Z a-z 0-9 _ -)", 64)


def param_key(field: str, value) -> str:
    """A module parameter name (``ids``, ``disable_vga``)."""
    return _pattern(field, value, PARAM_KEY_RE, "a module parameter name (1-64 of A-Z a-z 0-9 _ -)", 64)


def param_value(field: str, value) -> str:
    """A module parameter value: no whitespace, quotes, backslash, '#' or shell metacharacter."""
    text(field, value, max_len=1024, allow_empty=True)
    if not PARAM_VALUE_RE.fullmatch(value):
        raise InvalidValue(
            f"{field}: {shown(value)} is not a module parameter value this collection writes "
            "(letters, digits and _ . , : + / = @ % ^ -; no spaces, quotes, backslashes or '#')"
        )
    return value


def pci_address(field: str, value) -> str:
    """A PCI function address; returned in the kernel's form ``dddd:bb:dd.f`` (lower case, domain added)."""
    _pattern(field, value, PCI_ADDRESS_RE, "a PCI address (DDDD:BB:DD.F or BB:DD.F)", 12)
    m = PCI_ADDRESS_RE.fullmatch(value)
    return f"{(m.group(1) or '0000').lower()}:{m.group(2).lower()}:{m.group(3).lower()}.{m.group(4)}"


def pci_ids(field: str, value) -> str:
    """``vendor:device`` or ``vendor:device:subvendor:subdevice`` in hex; returned in lower case."""
    return _pattern(field, value, PCI_IDS_RE, "a PCI id (VVVV:DDDD or VVVV:DDDD:SVVV:SDDD, hex)", 19).lower()


def kernel_release(field: str, value) -> str:
    """A kernel release as ``uname -r`` prints it (a directory name under /lib/modules, never a path)."""
    return _pattern(field, value, KERNEL_RELEASE_RE, "a kernel release (for example 6.1.0-28-amd64)", 128)


def kernel_arg(field: str, value) -> tuple:
    """One kernel argument ``name`` or ``name=value``; returns ``(name, value or None)``.

    The value may contain '=' (``root=UUID=...``); a refusal names the first character GRUB or sh would read
    differently from what was asked.
    """
    text(field, value, max_len=MAX_TEXT)
    name, sep, val = value.partition("=")
    if not KARG_NAME_RE.fullmatch(name):
        raise InvalidValue(
            f"{field}: {shown(value)} has no valid parameter name before '=' (letters, digits, _ . -; "
            "for example intel_iommu=on or vfio-pci.ids=10de:1b80)"
        )
    if sep and not KARG_VALUE_RE.fullmatch(val):
        bad = next((ch for ch in val if not KARG_VALUE_RE.fullmatch(ch)), None)
        why = f"the character {bad!r}" if bad is not None else "a value over 1024 characters"
        raise InvalidValue(
            f"{field}: {shown(value)} contains {why}, which GRUB's or sh's quoting would not carry unchanged; "
            f"allowed in a value: {_KARG_VALUE_ALLOWED}"
        )
    return name, (val if sep else None)


def rooted_path(field: str, root: str, path) -> str:
    """``path`` (absolute on the managed system) below ``root``; refused when it would leave ``root``.

    ``..`` components are resolved lexically and every symlink already on disk is followed, so neither a
    ``../../etc/passwd`` value nor a link planted in the tree can carry a write outside ``root``.
    """
    text(field, path, max_len=1024)
    text("root", root, max_len=1024)
    if not path.startswith("/"):
        raise InvalidValue(f"{field}: {shown(path)} must be an absolute path (it is taken below root {root!r})")
    if any(part == ".." for part in path.split("/")):
        raise InvalidValue(f"{field}: {shown(path)} contains '..'; paths must stay below root {root!r}")
    real_root = os.path.realpath(root)
    joined = os.path.join(real_root, path.lstrip("/"))
    resolved = os.path.realpath(joined)
    if resolved != real_root and not resolved.startswith(real_root.rstrip("/") + "/"):
        raise InvalidValue(f"{field}: {shown(path)} resolves to {resolved!r}, outside root {root!r}")
    return joined


def each(field: str, values, check) -> list:
    """``check`` applied to every element of a list, the element's index in the field name."""
    if values is None:
        return []
    if not isinstance(values, (list, tuple)):
        raise InvalidValue(f"{field}: expected a list, got {type(values).__name__} {shown(values)}")
    return [check(f"{field}[{index}]", value) for index, value in enumerate(values)]


# -- devices and role (part C)
# Selectors of vfio_bind and of the passthrough role, the JMESPath query, and the role's own values. Same rules as
# above: full-string matches, no control character, length limits, the offending value shown with repr.

PCI_CLASS_PREFIX_RE = re.compile(r"(?:[0-9a-fA-F]{2}){1,3}")
# The role's ids selectors may end in a wildcard device (``10de:*``: every device of a vendor).
PCI_IDS_PATTERN_RE = re.compile(r"[0-9a-fA-F]{4}:(?:[0-9a-fA-F]{4}|\*)(?::[0-9a-fA-F]{4}:[0-9a-fA-F]{4})?")
# User and group names as shadow-utils' useradd accepts them by default (a trailing '$' for machine accounts).
ACCOUNT_NAME_RE = re.compile(r"[a-z_][a-z0-9_.-]{0,30}\$?")
# A /dev/vfio/N mode: four octal digits, nothing for others (a world-writable group file hands out DMA).
VFIO_GROUP_MODE_RE = re.compile(r"0[0-7][0-7]0")
MAX_QUERY = 2048
MAX_QUERY_DEPTH = 32  # nested (), [] and {} outside literals; jmespath's parser recurses once per level
MAX_LABEL = 256


def pci_address_spec(field: str, value, separators: str = "@") -> tuple:
    """A PCI address, optionally followed by one of ``separators`` and ``vendor:device`` (``01:00.0@10de:1b80``).

    Returns ``(address in the kernel's form, "vvvv:dddd" or None)``. Surrounding spaces (only spaces) are
    ignored; any other whitespace or control character is refused.
    """
    text(field, value, max_len=64)
    stripped = value.strip(" ")
    cut = min((i for i in (stripped.find(s) for s in separators) if i >= 0), default=-1)
    if cut < 0:
        return pci_address(field, stripped), None
    address = pci_address(field, stripped[:cut])
    ids = stripped[cut + 1 :]
    if not PCI_IDS_RE.fullmatch(ids) or PCI_IDS_RE.fullmatch(ids).group(3):
        raise InvalidValue(
            f"{field}: {shown(value)}: the part after {stripped[cut]!r} must be vendor:device in hex, "
            "for example 01:00.0@10de:1b80"
        )
    return address, ids.lower()


def pci_class_prefix(field: str, value) -> str:
    """2, 4 or 6 hex digits of a PCI class code (``03``, ``0300``, ``0c0330``); returned in lower case."""
    return _pattern(
        field, value, PCI_CLASS_PREFIX_RE, "2, 4 or 6 hex digits of a PCI class code (e.g. 03, 0300, 0c0330)", 6
    ).lower()


def pci_ids_pattern(field: str, value) -> str:
    """``vendor:device``, ``vendor:*`` or ``vendor:device:subvendor:subdevice`` in hex; returned in lower case."""
    return _pattern(
        field, value, PCI_IDS_PATTERN_RE, "a PCI id (VVVV:DDDD, VVVV:* or VVVV:DDDD:SVVV:SDDD, hex)", 19
    ).lower()


def jmespath_query(field: str, value) -> str:
    """A JMESPath expression: no control character, at most ``MAX_QUERY`` characters and ``MAX_QUERY_DEPTH``
    levels of brackets (a deeper one would exhaust the parser's recursion instead of being refused)."""
    text(field, value, max_len=MAX_QUERY)
    depth = deepest = 0
    quote = None
    escaped = False
    for ch in value:
        if quote:
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "'\"`":
            quote = ch
        elif ch in "([{":
            depth += 1
            deepest = max(deepest, depth)
        elif ch in ")]}":
            depth -= 1
    nots = max((len(run) for run in re.findall(r"[!&]+", value)), default=0)
    if deepest > MAX_QUERY_DEPTH or nots > MAX_QUERY_DEPTH:
        raise InvalidValue(
            f"{field}: {shown(value)} nests deeper than {MAX_QUERY_DEPTH} levels; write a flatter expression"
        )
    return value


def force_spec(field: str, value, checks) -> tuple:
    """``force`` of vfio_bind and the role: ``{address: [check, ...]}`` (each address overrides only the named safety
    checks), or the older list of addresses, which means every check of each.

    Returns ``({address in the kernel's form: [check, ...]}, legacy)``; ``legacy`` is True for the list form (the
    caller emits a deprecation warning). ``checks`` are the names allowed.
    """
    if value is None:
        return {}, False
    if isinstance(value, (list, tuple)):
        return {pci_address(f"{field}[{i}]", a): list(checks) for i, a in enumerate(value)}, bool(value)
    if not isinstance(value, dict):
        raise InvalidValue(
            f"{field}: expected a dict of address -> list of check names, got {type(value).__name__} {shown(value)}"
        )
    out = {}
    for key, names in value.items():
        address = pci_address(f"{field} key", key)
        if isinstance(names, str) or not isinstance(names, (list, tuple)) or not names:
            raise InvalidValue(
                f"{field}[{key!r}]: expected a non-empty list of check names ({', '.join(checks)}), got {shown(names)}"
            )
        for index, name in enumerate(names):
            text(f"{field}[{key!r}][{index}]", name, max_len=64)
            if name not in checks:
                raise InvalidValue(
                    f"{field}[{key!r}][{index}]: {shown(name)} is not a safety check; the checks are "
                    f"{', '.join(checks)}"
                )
        out[address] = list(dict.fromkeys(out.get(address, []) + list(names)))
    return out, False


def label(field: str, value) -> str:
    """A free-text label shown in messages (a selector's name): printable, at most ``MAX_LABEL`` characters."""
    return text(field, value, max_len=MAX_LABEL)


def account_name(field: str, value) -> str:
    """A user or group name for a udev OWNER= or GROUP= assignment (empty: none)."""
    text(field, value, max_len=32, allow_empty=True)
    if value and not ACCOUNT_NAME_RE.fullmatch(value):
        raise InvalidValue(f"{field}: {shown(value)} is not a user or group name (a-z 0-9 _ . -, starting a-z or _)")
    return value


def vfio_group_mode(field: str, value) -> str:
    """Mode of /dev/vfio/N: four octal digits with no permission for others (``0660``)."""
    return _pattern(
        field,
        value,
        VFIO_GROUP_MODE_RE,
        "four octal digits with no permission for others, such as 0660 (a world-writable /dev/vfio/N would let "
        "any local user drive the device's DMA)",
        4,
    )


# -- boot configuration (part B)
# Used by kernel_cmdline and initramfs. Each wraps or complements the rules above without changing them.
_KARG_NAME_CHAR_RE = re.compile(r"[A-Za-z0-9_.-]")
FILE_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+-]{0,63}")
# A file copied into an initramfs: its path is written into a shell-sourced generator configuration (dracut's
# install_items, mkinitcpio's FILES), so no blank, quote, '$', '`', ';', '(' or ')' - one plain absolute path.
IMAGE_FILE_RE = re.compile(r"(?:/[A-Za-z0-9_.+@-]+)+")


def kernel_arg_named(field: str, value) -> tuple:
    """:func:`kernel_arg`, and a refusal for the parameter name names the first character that is not allowed.

    ``kernel_arg`` names the offending character of a value; a name such as ``a;reboot`` or ``a b`` is refused
    by it too, and here the message also says which character (``';'``, ``' '``) made it invalid.
    """
    try:
        return kernel_arg(field, value)
    except InvalidValue:
        if isinstance(value, str) and len(value) <= MAX_TEXT and not _CONTROL_RE.search(value):
            name = value.partition("=")[0]
            bad = next((ch for ch in name if not _KARG_NAME_CHAR_RE.fullmatch(ch)), None)
            if bad is not None:
                raise InvalidValue(
                    f"{field}: {shown(value)} contains the character {bad!r} in its parameter name, which GRUB's "
                    "or sh's quoting would not carry unchanged; a name is letters, digits, _ . - "
                    "(for example intel_iommu=on or vfio-pci.ids=10de:1b80)"
                ) from None
        raise


def file_name(field: str, value) -> str:
    """A plain file name this collection creates (no '/', no leading '.', no whitespace): ``hostdev-vfio``."""
    return _pattern(
        field, value, FILE_NAME_RE, "a plain file name (1-64 of A-Z a-z 0-9 _ . + -, not starting with '.')", 64
    )


def path_text(field: str, value) -> str:
    """A path option (``root``, ``proc_root``): no control character (a NUL would crash the OS calls), at most
    1024 characters, absolute."""
    text(field, value, max_len=1024)
    if not value.startswith("/"):
        raise InvalidValue(f"{field}: {shown(value)} must be an absolute path")
    return value


def image_file(field: str, value) -> str:
    """An absolute path of a file the initramfs must carry (``/etc/modprobe.d/x.conf``): letters, digits and
    ``_ . + @ -`` between slashes, no ``.`` or ``..`` component, at most 1024 characters."""
    _pattern(field, value, IMAGE_FILE_RE, "an absolute path of letters, digits and _ . + @ - between slashes", 1024)
    if any(part in (".", "..") for part in value.split("/")):
        raise InvalidValue(f"{field}: {shown(value)} contains a '.' or '..' component; give the plain path")
    return value


# -- hand-off to VM platforms (Nova, Proxmox VE, KubeVirt, libvirt)
# Names written into other platforms' configuration. One name serves all four formats, so its rule is the
# intersection of theirs: a Proxmox VE mapping id (pve-configid, ``[a-z][a-z0-9_-]+``), a Kubernetes resource name
# (a qualified name: alphanumeric at both ends) and a Nova alias name.
HANDOFF_NAME_RE = re.compile(r"[a-z][a-z0-9_-]{0,61}[a-z0-9]")
# A DNS subdomain (RFC 1123, lower case), the prefix of a Kubernetes extended resource name (``nvidia.com``).
DNS_SUBDOMAIN_RE = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?(?:\.[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?)*")
# A host name label: Proxmox VE's pve-node format (``[a-zA-Z0-9]([a-zA-Z0-9-]*[a-zA-Z0-9])?``), at most 63 long.
HOST_LABEL_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def handoff_name(field: str, value) -> str:
    """A device name for Nova aliases, Proxmox VE mapping ids and KubeVirt resource names (``gpu-1080``)."""
    return _pattern(
        field,
        value,
        HANDOFF_NAME_RE,
        "a hand-off name (2-63 of a-z 0-9 _ -, starting with a letter, ending with a letter or digit)",
        63,
    )


def dns_subdomain(field: str, value) -> str:
    """A lower-case DNS subdomain (``devices.example.com``), at most 253 characters."""
    return _pattern(field, value, DNS_SUBDOMAIN_RE, "a lower-case DNS name (a-z 0-9 - and dots)", 253)


def host_label(field: str, value) -> str:
    """One host name label (``pve1``): letters, digits and '-', not at either end."""
    return _pattern(field, value, HOST_LABEL_RE, "a host name label (A-Z a-z 0-9 -, 1-63, no '-' at either end)", 63)


def number(field: str, value, maximum: int = 2**31 - 1) -> int:
    """A whole number from 0 to ``maximum`` (an IOMMU group, a NUMA node); ``True`` and ``"3"`` are refused."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= maximum:
        raise InvalidValue(f"{field}: {shown(value)} is not a whole number from 0 to {maximum}")
    return value
