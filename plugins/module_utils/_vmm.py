# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``vmm_probe``'s logic: ask the host's QEMU to take the selected functions, the way a VM would.

The kernel's group status is an oracle; the VMM is the judge. For each IOMMU group of the selected functions one
QEMU is started paused (``-S``), with no firmware run, no disks, no network and no display (``-nodefaults
-display none``), a small RAM and a ``-device vfio-pci,host=...`` per selected function of the group. Realizing
those devices opens the VFIO group, sets up the type1 container and maps the guest RAM, which is exactly where a
VM start fails ("group N is not viable"). QEMU then speaks QMP on its stdio: greeting, ``qmp_capabilities``,
``query-pci`` (each device is found by its qdev id ``hostdevN`` with the ids QEMU read from it), ``quit``.

Before anything starts, every selected function must be on a VFIO driver and its group must not be open by
another process: opening a VFIO device resets it, so a device in use is never touched. The argv is a list (never
a shell string); every value in it went through ``_validate``. QEMU runs with RLIMIT_MEMLOCK raised, in the
child only, above the guest RAM (type1 pins all of it), and under a wall-clock guard: a QEMU that does not
answer in time is killed and reported as hung.

QEMU is driven with ``subprocess`` rather than ``AnsibleModule.run_command``: the QMP conversation needs the
child's stdin and stdout while it runs, the memlock limit is set in the child before exec, and the guard needs
to stop the child. Nothing here needs AnsibleModule; every filesystem root and the binary search path are
parameters, so unit tests run the whole flow over a fake sysfs tree with a fake QEMU.
"""

from __future__ import annotations

__metaclass__ = type

import contextlib
import json
import os
import re
import resource
import selectors
import subprocess
import time
from dataclasses import dataclass

from ansible_collections.hostdev.vfio.plugins.module_utils import _bind, _validate
from ansible_collections.hostdev.vfio.plugins.module_utils._host import Failed
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import (
    Snapshot,
    assess_group,
    is_vfio_driver,
    read_snapshot,
)
from ansible_collections.hostdev.vfio.plugins.module_utils._safety import LIVE_ROOTS, check_vfio_in_use

ACCELS = ("auto", "kvm", "tcg")
QEMU_NAMES = ("qemu-system-x86_64", "qemu-kvm")
# Where distributions put QEMU outside PATH (RHEL, CentOS Stream, Rocky, Alma: /usr/libexec/qemu-kvm).
QEMU_FALLBACKS = ("/usr/libexec/qemu-kvm",)
DEFAULT_MEMORY_MIB = 64
MEMORY_MIB_RANGE = (16, 65536)
DEFAULT_TIMEOUT = 60
TIMEOUT_RANGE = (1, 3600)
# libvirt's rule for a VM with VFIO devices: the memlock limit is the guest RAM plus 1 GiB (ROMs, BIOS, MMIO).
MEMLOCK_OVERHEAD_MIB = 1024
MIB = 1024 * 1024
# The package that provides QEMU for x86_64, by distribution family (os-release ID and ID_LIKE words).
PACKAGES = (
    (("debian", "ubuntu"), "qemu-system-x86", "apt-get install qemu-system-x86"),
    (("rhel", "fedora", "centos", "rocky", "almalinux"), "qemu-kvm", "dnf install qemu-kvm"),
    (("suse", "opensuse", "sles"), "qemu-x86", "zypper install qemu-x86"),
    (("arch",), "qemu-system-x86", "pacman -S qemu-system-x86"),
)
_STDERR_KEPT = 4000  # characters of QEMU's stderr kept in a group's result
_QDEV_RE = re.compile(r"\bid=(hostdev\d+)\b")


class QemuMissing(Exception):
    """No QEMU binary on the host; ``functions`` are the ones that would have been probed."""

    def __init__(self, msg: str, functions: list):
        super().__init__(msg)
        self.msg = msg
        self.functions = functions


class VmmError(Exception):
    """The probe cannot be planned or run; ``functions``/``groups`` carry what is known for the result."""

    def __init__(self, msg: str, functions: list | None = None, groups: list | None = None):
        super().__init__(msg)
        self.msg = msg
        self.functions = functions or []
        self.groups = groups or []


# ---------------------------------------------------------------------------------------------------------
# the request


@dataclass
class Request(_bind.Selection):
    qemu: str | None = None
    accel: str = "auto"
    memory_mib: int = DEFAULT_MEMORY_MIB
    timeout: int = DEFAULT_TIMEOUT
    # A group another process holds open (a running VM) is reported as skipped instead of refusing the request.
    skip_in_use: bool = False
    # Without QEMU on the host: a VmmError (True) or a QemuMissing the caller may report as skipped (False).
    qemu_required: bool = True


def _address_spec(name: str, value) -> str:
    """``address`` entry: a PCI address, optionally ``@vendor:device``; returned normalized."""
    _validate.text(name, value, max_len=32)
    addr, sep, ids = value.partition("@")
    address = _validate.pci_address(name, addr)
    if not sep:
        return address
    ids = _validate.pci_ids(name, ids)
    if ids.count(":") != 1:
        raise _validate.InvalidValue(f"{name}: {_validate.shown(value)}: after '@' give vendor:device only")
    return f"{address}@{ids}"


def _int_in(name: str, value, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise _validate.InvalidValue(f"{name}: {_validate.shown(value)} is not a whole number from {low} to {high}")
    return value


def validate(request: Request) -> Request:
    """The request with every value checked and normalized; a VmmError lists every refused value."""
    errors = []

    def check(fn, *args):
        try:
            return fn(*args)
        except _validate.InvalidValue as exc:
            errors.append(str(exc))
            return None

    out = Request(
        address=check(_validate.each, "address", request.address, _address_spec) or [],
        ids=check(_validate.each, "ids", request.ids, _validate.pci_ids) or [],
        device_class=check(_validate.each, "device_class", request.device_class, _validate.pci_class_prefix) or [],
        query=None if request.query is None else check(_validate.jmespath_query, "query", request.query),
        qemu=None if request.qemu is None else check(_validate.text, "qemu", request.qemu, 1024),
        accel=request.accel,
        memory_mib=check(_int_in, "memory_mib", request.memory_mib, *MEMORY_MIB_RANGE),
        timeout=check(_int_in, "timeout", request.timeout, *TIMEOUT_RANGE),
        skip_in_use=bool(request.skip_in_use),
        qemu_required=bool(request.qemu_required),
    )
    if out.qemu is not None and not out.qemu.startswith("/"):
        errors.append(f"qemu: {_validate.shown(out.qemu)} must be an absolute path to the QEMU binary")
    if request.accel not in ACCELS:
        errors.append(f"accel: {_validate.shown(request.accel)} is not one of {', '.join(ACCELS)}")
    if errors:
        raise VmmError("; ".join(errors))
    return out


# ---------------------------------------------------------------------------------------------------------
# QEMU: where it is, which package has it, how it is started


def package_hint(os_release_text: str | None) -> str:
    """'install the package X (cmd)' for this distribution family, from the text of /etc/os-release."""
    words = []
    for line in (os_release_text or "").splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip() in ("ID", "ID_LIKE"):
            words += value.strip().strip("\"'").lower().split()
    for family, package, command in PACKAGES:
        if any(word in family for word in words):
            return f"install the package {package} ({command})"
    return "install QEMU for x86_64: the package qemu-system-x86 (Debian, Ubuntu) or qemu-kvm (RHEL, Fedora)"


def find_qemu(explicit: str | None, search_path: str, os_release_text: str | None = None, fallbacks=None):
    """The QEMU binary: ``explicit`` when given, else the first of QEMU_NAMES in ``search_path``, else a fallback."""
    fallbacks = QEMU_FALLBACKS if fallbacks is None else fallbacks
    if explicit:
        if os.path.isfile(explicit) and os.access(explicit, os.X_OK):
            return explicit
        raise VmmError(f"qemu: {explicit} is not an executable file; {package_hint(os_release_text)}")
    dirs = [d for d in (search_path or "").split(os.pathsep) if d]
    for name in QEMU_NAMES:
        for directory in dirs:
            path = os.path.join(directory, name)
            if os.path.isfile(path) and os.access(path, os.X_OK):
                return path
    for path in fallbacks:
        if os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    looked = " or ".join(QEMU_NAMES)
    raise VmmError(
        f"QEMU not found: no {looked} in PATH ({search_path}) and no {', '.join(fallbacks)}; "
        f"{package_hint(os_release_text)}, or give the binary's path in qemu"
    )


def choose_accel(accel: str, dev_root: str) -> str:
    """kvm when asked for or (auto) when ``<dev_root>/kvm`` can be opened read-write; else tcg."""
    kvm = os.path.join(dev_root, "kvm")
    usable = os.path.exists(kvm) and os.access(kvm, os.R_OK | os.W_OK)
    if accel == "kvm" and not usable:
        raise VmmError(f"accel: kvm was asked for, but {kvm} is missing or not usable by this user; use auto or tcg")
    if accel == "auto":
        return "kvm" if usable else "tcg"
    return accel


def memlock_needed(memory_mib: int) -> int:
    """Bytes of RLIMIT_MEMLOCK a VM with VFIO devices needs: all guest RAM is pinned, plus ROMs and BIOS."""
    return (memory_mib + MEMLOCK_OVERHEAD_MIB) * MIB


def memlock_limits(needed: int, current: tuple | None = None) -> tuple | None:
    """(soft, hard) RLIMIT_MEMLOCK to give QEMU, or None when the current limit is enough already."""
    soft, hard = current if current is not None else resource.getrlimit(resource.RLIMIT_MEMLOCK)
    infinity = resource.RLIM_INFINITY
    if soft == infinity or soft >= needed:
        return None
    return needed, hard if hard == infinity or hard >= needed else needed


def build_argv(binary: str, accel: str, memory_mib: int, group: int, addresses: list) -> list:
    """QEMU paused, no firmware run, no disk, network or display, QMP on stdio, one vfio-pci per function."""
    argv = [
        binary,
        "-name",
        f"hostdev-vfio-probe-group{group}",
        "-machine",
        "q35",
        "-accel",
        accel,
        "-m",
        f"{memory_mib}M",
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-S",
        "-qmp",
        "stdio",
    ]
    # No bus= for the devices: they sit on the root bus. Paused, with no firmware run, a bridge has no secondary
    # bus number yet, and query-pci (QEMU 7.2) lists nothing behind it.
    for index, address in enumerate(addresses):
        # Each address went through _validate.pci_address: hex digits, ':' and '.', nothing QEMU's option
        # parser would read as a ',' separator.
        argv += ["-device", f"vfio-pci,host={_validate.pci_address('address', address)},id=hostdev{index}"]
    return argv


# ---------------------------------------------------------------------------------------------------------
# the plan


@dataclass
class GroupProbe:
    group: int
    addresses: list
    argv: list
    viable: bool  # the kernel's rule read from sysfs, for comparison with QEMU's verdict


@dataclass
class Plan:
    binary: str
    accel: str
    memory_mib: int
    timeout: int
    memlock: int
    groups: list
    functions: list  # result dicts, in selection order


def _function_result(snapshot: Snapshot, address: str, qdev_id: str | None) -> dict:
    dev = snapshot.devices[address]
    return {
        "address": address,
        "group": dev.iommu_group,
        "ids": dev.ids,
        "driver": dev.driver,
        "qdev_id": qdev_id,
        "taken": None,
        "qemu_ids": None,
        "error": None,
        "skipped": None,
    }


def refusals(snapshot: Snapshot, selected: list, proc_root: str, dev_root: str, in_use: dict | None = None) -> dict:
    """{address: reason} for every selected function QEMU must not be asked to take."""
    out = {}
    in_use = check_vfio_in_use(snapshot, proc_root) if in_use is None else in_use
    for address in selected:
        dev = snapshot.devices[address]
        if not is_vfio_driver(dev.driver):
            out[address] = (
                f"{address} is on {dev.driver or 'no driver'}, not on a VFIO driver; a VM can only take a function "
                "on vfio-pci (bind it with hostdev.vfio.vfio_bind first)"
            )
        elif dev.iommu_group is None:
            out[address] = f"{address} has no IOMMU group (the IOMMU is off or does not cover it)"
        elif address in in_use:
            out[address] = (
                f"{address} {in_use[address][0]}; opening a VFIO device resets it, so a device in use is not probed"
            )
        elif not os.path.exists(os.path.join(dev_root, "vfio", str(dev.iommu_group))):
            out[address] = f"{address} is on {dev.driver} but {dev_root}/vfio/{dev.iommu_group} does not exist"
    return out


def plan(
    snapshot: Snapshot,
    request: Request,
    proc_root: str,
    dev_root: str,
    search_path: str,
    os_release_text: str | None = None,
    facts=None,
) -> Plan:
    """Select, check and group the functions, find QEMU and build one argv per IOMMU group. Starts nothing."""
    request = validate(request)
    try:
        selected = _bind.select(snapshot, request, facts)
    except _bind.BindError as exc:
        raise VmmError(exc.msg) from exc
    if not selected:
        raise VmmError("no function matched address, ids, device_class or query; nothing started")
    in_use = check_vfio_in_use(snapshot, proc_root)
    skipped = {}
    if request.skip_in_use:
        # A group is opened whole: one holder keeps every selected function of its group out of the probe.
        held = {snapshot.devices[a].iommu_group: in_use[a][0] for a in selected if a in in_use}
        for address in selected:
            group = snapshot.devices[address].iommu_group
            if group in held:
                skipped[address] = f"not probed: it {held[group]} (opening a VFIO device resets it)"
    refused = refusals(snapshot, [a for a in selected if a not in skipped], proc_root, dev_root, in_use)
    if refused:
        functions = [_function_result(snapshot, a, None) for a in selected]
        for res in functions:
            res["error"] = refused.get(res["address"])
        raise VmmError(
            "refused, nothing started: " + "; ".join(refused[a] for a in selected if a in refused), functions
        )
    try:
        binary = find_qemu(request.qemu, search_path, os_release_text=os_release_text)
    except VmmError as exc:
        if request.qemu_required:
            raise
        raise QemuMissing(exc.msg, [_function_result(snapshot, a, None) for a in selected]) from None
    accel = choose_accel(request.accel, dev_root)
    by_group: dict = {}
    for address in selected:
        if address not in skipped:
            by_group.setdefault(snapshot.devices[address].iommu_group, []).append(address)
    groups, functions = [], {}
    for address, reason in skipped.items():
        functions[address] = dict(_function_result(snapshot, address, None), skipped=reason)
    for group, addresses in by_group.items():
        argv = build_argv(binary, accel, request.memory_mib, group, addresses)
        viable, _blockers = assess_group(snapshot, group)
        groups.append(GroupProbe(group=group, addresses=addresses, argv=argv, viable=viable))
        for index, address in enumerate(addresses):
            functions[address] = _function_result(snapshot, address, f"hostdev{index}")
    return Plan(
        binary=binary,
        accel=accel,
        memory_mib=request.memory_mib,
        timeout=request.timeout,
        memlock=memlock_needed(request.memory_mib),
        groups=groups,
        functions=[functions[a] for a in selected],
    )


def group_result(probe: GroupProbe) -> dict:
    return {
        "id": probe.group,
        "functions": list(probe.addresses),
        "argv": list(probe.argv),
        "kernel_viable": probe.viable,
        "rc": None,
        "seconds": None,
        "error": None,
        "stderr": None,
        "hung": False,
    }


# ---------------------------------------------------------------------------------------------------------
# running QEMU


class _Timeout(Exception):
    pass


def _set_memlock(limits: tuple) -> None:
    resource.setrlimit(resource.RLIMIT_MEMLOCK, limits)


class Child:
    """A QEMU with pipes on stdin/stdout/stderr, read with a deadline; stdout carries QMP, one JSON per line."""

    def __init__(self, argv: list, deadline: float, memlock: tuple | None = None):
        self.deadline = deadline
        preexec = (lambda: _set_memlock(memlock)) if memlock else None
        self.proc = subprocess.Popen(  # an argv list, every value validated
            argv,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            close_fds=True,
            preexec_fn=preexec,  # a module process runs no threads
            env=dict(os.environ, LC_ALL="C"),
        )
        self.selector = selectors.DefaultSelector()
        self.buffers = {self.proc.stdout.fileno(): b"", self.proc.stderr.fileno(): b""}
        self.stdout_fd, self.stderr_fd = self.proc.stdout.fileno(), self.proc.stderr.fileno()
        for fd in self.buffers:
            self.selector.register(fd, selectors.EVENT_READ)
        self.open_fds = set(self.buffers)
        self.other_output = []  # stdout lines that are not QMP messages

    def _pump(self) -> None:
        """Wait for output (or EOF) on stdout/stderr until the deadline; _Timeout when it passes."""
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout
        for key, _mask in self.selector.select(remaining):
            data = os.read(key.fd, 65536)
            if data:
                self.buffers[key.fd] += data
            else:
                self.selector.unregister(key.fd)
                self.open_fds.discard(key.fd)

    def message(self) -> dict | None:
        """The next QMP message on stdout, or None at EOF (QEMU exited or closed its QMP)."""
        while True:
            buf = self.buffers[self.stdout_fd]
            if b"\n" in buf:
                line, _sep, self.buffers[self.stdout_fd] = buf.partition(b"\n")
                text = line.decode("utf-8", "replace").strip()
                if not text:
                    continue
                try:
                    msg = json.loads(text)
                except ValueError:
                    self.other_output.append(text)
                    continue
                if isinstance(msg, dict):
                    return msg
                continue
            if self.stdout_fd not in self.open_fds:
                return None
            self._pump()

    def greeting(self) -> dict | None:
        while True:
            msg = self.message()
            if msg is None or "QMP" in msg:
                return msg

    def execute(self, command: str) -> dict | None:
        """Send a command and return its reply (``return`` or ``error``), skipping async events; None at EOF."""
        try:
            self.proc.stdin.write(json.dumps({"execute": command, "id": command}).encode() + b"\n")
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError):
            pass  # QEMU is gone; its stdout will say EOF
        while True:
            msg = self.message()
            if msg is None or "return" in msg or "error" in msg:
                return msg

    def finish(self) -> int:
        """Close stdin, read the rest of the output and wait for the exit, all before the deadline."""
        with contextlib.suppress(OSError):
            self.proc.stdin.close()
        while self.open_fds:
            self._pump()
        remaining = self.deadline - time.monotonic()
        if remaining <= 0:
            raise _Timeout
        try:
            return self.proc.wait(timeout=remaining)
        except subprocess.TimeoutExpired as exc:
            raise _Timeout from exc

    def kill(self) -> str:
        """Stop a QEMU that did not answer in time (SIGKILL, by its pid); say whether it is gone."""
        try:
            self.proc.kill()
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            return f"QEMU (pid {self.proc.pid}) did not exit after SIGKILL (stuck in the kernel?)"
        except OSError:
            pass
        return f"stopped with SIGKILL (pid {self.proc.pid})"

    @property
    def stderr(self) -> str:
        return self.buffers[self.stderr_fd].decode("utf-8", "replace")

    def close(self) -> None:
        self.selector.close()
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            with contextlib.suppress(OSError):
                stream.close()


def error_line(stderr: str, binary: str) -> str | None:
    """QEMU's error: the first line that is not a warning, without the ``<program>: `` prefix."""
    prefixes = tuple(f"{name}: " for name in {os.path.basename(binary), *QEMU_NAMES})
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    for line in lines:
        rest = next((line[len(p) :] for p in prefixes if line.startswith(p)), None)
        if rest is not None and not rest.lower().startswith("warning:"):
            return rest
    return lines[0] if lines else None


def pci_ids_by_qdev(reply: list) -> dict:
    """{qdev_id: 'vvvv:dddd'} from a ``query-pci`` return value, behind bridges too."""
    out = {}

    def walk(devices):
        for dev in devices or []:
            if not isinstance(dev, dict):
                continue
            ids = dev.get("id") or {}
            qdev = dev.get("qdev_id")
            if qdev and isinstance(ids.get("vendor"), int) and isinstance(ids.get("device"), int):
                out[qdev] = f"{ids['vendor']:04x}:{ids['device']:04x}"
            walk((dev.get("pci_bridge") or {}).get("devices"))

    for bus in reply if isinstance(reply, list) else []:
        if isinstance(bus, dict):
            walk(bus.get("devices"))
    return out


def qemu_version(binary: str, timeout: int) -> str | None:
    """'7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)' from ``<binary> -version``, or None."""
    try:
        out = subprocess.run(
            [binary, "-version"],
            stdin=subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
            check=False,
            env=dict(os.environ, LC_ALL="C"),
        ).stdout.decode("utf-8", "replace")
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = re.search(r"version\s+(\S.*)", out)
    return m.group(1).strip() if m else None


def probe_group(probe: GroupProbe, functions: dict, binary: str, timeout: int, memlock: tuple | None) -> dict:
    """Start one QEMU for one group, ask query-pci, quit; fill in ``functions`` ({address: result})."""
    result = group_result(probe)
    started = time.monotonic()
    deadline = started + timeout
    try:
        child = Child(probe.argv, deadline, memlock)
    except subprocess.SubprocessError as exc:
        soft, hard = resource.getrlimit(resource.RLIMIT_MEMLOCK)
        raise VmmError(
            f"cannot raise RLIMIT_MEMLOCK to {memlock[0]} bytes for QEMU (all guest RAM is pinned for DMA; the limit "
            f"here is {soft} soft, {hard} hard, and raising the hard limit needs root with CAP_SYS_RESOURCE): "
            "run as root, or raise the limit first (ulimit -l, systemd LimitMEMLOCK=, limits.conf memlock)"
        ) from exc
    except OSError as exc:
        raise VmmError(f"cannot run {binary}: {exc.strerror}") from exc
    seen = None
    try:
        try:
            if child.greeting() is not None:
                caps = child.execute("qmp_capabilities")
                reply = child.execute("query-pci") if caps and "return" in caps else caps
                if reply and "return" in reply:
                    seen = pci_ids_by_qdev(reply["return"])
                elif reply and "error" in reply:
                    result["error"] = f"QMP error: {reply['error'].get('desc', reply['error'])}"
                child.execute("quit")
            result["rc"] = child.finish()
        except _Timeout:
            how = child.kill()
            result["hung"] = True
            result["error"] = (
                f"QEMU gave no answer within {timeout} s (the timeout guard); {how}. A hung QEMU can mean a device "
                "that does not come back from its reset"
            )
        stderr = child.stderr
    finally:
        child.close()
    result["seconds"] = round(time.monotonic() - started, 3)
    result["stderr"] = stderr[-_STDERR_KEPT:] or None
    if seen is None and not result["error"]:
        line = error_line(stderr, binary)
        if line:
            result["error"] = line
        else:
            result["error"] = f"QEMU exited with status {result['rc']} before answering on QMP and printed nothing"
    blamed = _QDEV_RE.search(result["error"] or "") if seen is None else None
    for index, address in enumerate(probe.addresses):
        res = functions[address]
        res["taken"] = bool(seen) and res["qdev_id"] in seen
        res["qemu_ids"] = (seen or {}).get(res["qdev_id"])
        if res["taken"]:
            continue
        if seen is not None:
            res["error"] = result["error"] or f"QEMU started but query-pci does not list {res['qdev_id']}"
        elif blamed and blamed.group(1) != f"hostdev{index}" and int(blamed.group(1)[7:]) < len(probe.addresses):
            other = probe.addresses[int(blamed.group(1)[7:])]
            res["error"] = f"not taken: QEMU stopped on {other} of the same group: {result['error']}"
        else:
            res["error"] = result["error"]
    if seen is not None and result["rc"] not in (0, None) and not result["error"]:
        result["error"] = f"QEMU exited with status {result['rc']} after quit"
    return result


def run(the_plan: Plan) -> tuple:
    """Probe every group in turn. Returns (functions, groups, version)."""
    limits = memlock_limits(the_plan.memlock)
    version = qemu_version(the_plan.binary, the_plan.timeout)
    functions = {f["address"]: f for f in the_plan.functions}
    groups = []
    for probe in the_plan.groups:
        try:
            groups.append(probe_group(probe, functions, the_plan.binary, the_plan.timeout, limits))
        except VmmError as exc:
            exc.functions = the_plan.functions
            exc.groups = groups
            raise
    return the_plan.functions, groups, version


SYSTEM_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")


def read_os_release():
    for path in ("/etc/os-release", "/usr/lib/os-release"):
        try:
            with open(path, encoding="utf-8", errors="replace") as f:
                return f.read()
        except OSError:
            continue
    return None


# --------------------------------------------------------------------------------------------------- the operation
def run_request(
    host,
    request: Request,
    sysfs_root="/sys",
    proc_root="/proc",
    dev_root="/dev",
    live_roots=None,
    system_dirs=SYSTEM_DIRS,
    os_release=None,
) -> dict:
    """hostdev.vfio.vmm_probe on ``host`` (``_host.Host``): select, refuse what must not be opened, start one paused
    QEMU per group unless in check mode. Returns the module's result; raises ``_host.Failed``. ``os_release``: the
    os-release text (read from the host when None), for the package a missing QEMU comes in."""
    live_roots = LIVE_ROOTS if live_roots is None else live_roots
    result = {"changed": False, "functions": [], "groups": []}
    roots = (sysfs_root, proc_root, dev_root)
    if not host.check_mode and tuple(os.path.normpath(r) for r in roots) != tuple(live_roots):
        raise Failed(
            "sysfs_root, proc_root and dev_root other than /sys, /proc and /dev are for check mode only "
            "(QEMU would take this host's devices, not those of the copy); run with check_mode: true",
            **result,
        )
    search_path = os.pathsep.join([os.environ.get("PATH", ""), *system_dirs])
    try:
        snapshot = read_snapshot(sysfs_root)

        def facts():
            from ansible_collections.hostdev.vfio.plugins.module_utils._facts import gather

            return gather(sysfs_root, proc_root, dev_root, names=False)

        the_plan = plan(
            snapshot,
            request,
            proc_root,
            dev_root,
            search_path,
            read_os_release() if os_release is None else os_release,
            facts=facts,
        )
        qemu = {
            "binary": the_plan.binary,
            "version": None,
            "accel": the_plan.accel,
            "memory_mib": the_plan.memory_mib,
            "memlock_limit": (memlock_limits(the_plan.memlock) or (None,))[0],
        }
        if host.check_mode:
            result.update(functions=the_plan.functions, groups=[group_result(g) for g in the_plan.groups], qemu=qemu)
            return result
        functions, groups, qemu["version"] = run(the_plan)
    except QemuMissing as exc:
        return dict(changed=False, functions=exc.functions, groups=[], qemu_missing=exc.msg)
    except VmmError as exc:
        result.update(functions=exc.functions, groups=exc.groups)
        raise Failed(exc.msg, **result) from None
    result.update(functions=functions, groups=groups, qemu=qemu)
    return result
