# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""``vfio_bind``'s logic: select PCI functions, plan their move between drivers, check it is safe, apply it,
verify it by re-reading the kernel, and roll back everything touched when any step fails.

Nothing here needs AnsibleModule. The kernel is reached through a ``SysfsKernel``-like object (see
``_kernel_ops``), files through a ``FileWriter``, and every filesystem root is a parameter, so unit tests run the
whole flow over a fake sysfs tree with a fake kernel.

Persistence is one managed udev rules file (``05-hostdev-vfio.rules``) with one line per device that sets
``driver_override`` when the device is added and loads the driver. Its number sorts it before ``80-drivers.rules``,
whose ``kmod load $env{MODALIAS}`` runs after every rule has been applied, so the host driver finds the override
already in place and does not bind. The line also asks the PCI core to probe the device once more (a write of its
address to /sys/bus/pci/drivers_probe): where the driver was loaded before udev set the override - dracut loads
its force_drivers before udev's coldplug - nothing else would bind it, and it would stay on no driver (seen in the
lab on Debian 13 with dracut). On a bound device the probe does nothing. Debian's initramfs-tools udev hook copies
every /etc/udev/rules.d/*.rules without a same-named file in /lib/udev/rules.d into the initramfs, so the rule also
acts there after ``update-initramfs -u`` (the result says when that is needed).
"""

from __future__ import annotations

__metaclass__ = type

import contextlib
import json
import os
import re
import tempfile
from dataclasses import dataclass, field

from ansible_collections.hostdev.vfio.plugins.module_utils import _files
from ansible_collections.hostdev.vfio.plugins.module_utils import _validate as v
from ansible_collections.hostdev.vfio.plugins.module_utils._host import Failed
from ansible_collections.hostdev.vfio.plugins.module_utils._kernel_ops import KernelError
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import (
    BRIDGE_DRIVERS,
    STUB_DRIVERS,
    Snapshot,
    assess_group,
    is_vfio_driver,
    query_addresses,
    read_snapshot,
    same_module,
)
from ansible_collections.hostdev.vfio.plugins.module_utils._safety import CHECKS as SAFETY_CHECKS
from ansible_collections.hostdev.vfio.plugins.module_utils._safety import LIVE_ROOTS, SafetyError, protected

HOST_ALIASES = ("host", "default")
GROUP_POLICIES = ("fail", "stub", "vfio", "ignore")
DEFAULT_STATE_DIR = "/var/lib/hostdev-vfio"
STATE_FILE_NAME = "bind-state.json"
DEFAULT_RULES_FILE = "/etc/udev/rules.d/05-hostdev-vfio.rules"
RULES_HEADER = (
    "# Managed by hostdev.vfio.vfio_bind: one line per device; the driver_override is set before\n"
    "# 80-drivers.rules loads the host driver. Remove a device with driver: host, not by hand.\n"
)

_RULE_RE = re.compile(r'KERNEL=="(?P<address>[0-9a-f:.]+)".*ATTR\{driver_override\}="(?P<driver>[^"]*)"')


class BindError(Exception):
    """The request cannot be planned or applied. ``devices``/``rollback`` carry what is known for the result."""

    def __init__(self, msg: str, devices: list | None = None, groups: list | None = None, rollback: list | None = None):
        super().__init__(msg)
        self.msg = msg
        self.devices = devices or []
        self.groups = groups or []
        self.rollback = rollback or []


# ---------------------------------------------------------------------------------------------------------
# request and selection


@dataclass
class Selection:
    """The device selectors every module shares (see _argspec.selector_options); ``select`` reads only these."""

    address: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    device_class: list = field(default_factory=list)
    query: str | None = None


@dataclass
class Request(Selection):
    driver: str = "vfio-pci"
    group: str = "fail"
    persistent: bool = False
    # {address: [check, ...]} (each address overrides only those safety checks) or, deprecated, a list of
    # addresses (every check); see _validate.force_spec
    force: dict | list = field(default_factory=dict)
    allow_empty: bool = False

    @property
    def to_host(self) -> bool:
        return self.driver in HOST_ALIASES


def forced_checks(request: Request) -> dict:
    """{address: [check, ...]} of the request's (already validated) ``force``."""
    return v.force_spec("force", request.force, SAFETY_CHECKS)[0]


def parse_address_spec(text: str, field: str = "address") -> tuple:
    """``0000:01:00.0`` or ``01:00.0``, optionally ``@vvvv:dddd`` -> (full address, 'vvvv:dddd' or None).

    Raises ``_validate.InvalidValue`` (a ValueError) for anything else, a newline or control character included.
    """
    return v.pci_address_spec(field, text)


def _check(errors: list, check, *args) -> None:
    try:
        check(*args)
    except v.InvalidValue as exc:
        errors.append(str(exc))


def validate(request: Request) -> list:
    """Every problem with the request's values (empty when it is fine); nothing is read or written before."""
    errors = []
    for name, values, check in (
        ("address", request.address, v.pci_address_spec),
        ("ids", request.ids, v.pci_ids),
        ("device_class", request.device_class, v.pci_class_prefix),
    ):
        if not isinstance(values, (list, tuple)):
            errors.append(f"{name}: expected a list, got {type(values).__name__} {v.shown(values)}")
            continue
        for index, value in enumerate(values):
            _check(errors, check, f"{name}[{index}]", value)
    _check(errors, v.force_spec, "force", request.force, SAFETY_CHECKS)
    if request.query is not None:
        _check(errors, v.jmespath_query, "query", request.query)
    if not request.to_host:
        try:
            v.driver_name("driver", request.driver)
        except v.InvalidValue as exc:
            errors.append(f"{exc}; use vfio-pci, pci-stub, another driver's name, or host")
    if request.group not in GROUP_POLICIES:
        errors.append(f"group must be one of {', '.join(GROUP_POLICIES)}; got {v.shown(request.group)}")
    return errors


def validate_paths(rules_file: str, state_dir: str) -> list:
    """The persistence paths: absolute, no '..', no control character (they name files written as root)."""
    errors = []
    _check(errors, v.rooted_path, "rules_file", "/", rules_file)
    _check(errors, v.rooted_path, "state_dir", "/", state_dir)
    return errors


def _ids_match(dev, spec: str) -> bool:
    m = v.PCI_IDS_RE.fullmatch(spec)
    vendor, device, svendor, sdevice = (g.lower() if g else None for g in m.groups())
    if (dev.vendor_id, dev.device_id) != (vendor, device):
        return False
    return svendor is None or (dev.subsystem_vendor_id, dev.subsystem_device_id) == (svendor, sdevice)


def run_query(query: str, facts: dict) -> list:
    """Addresses from a JMESPath query over the iommu_facts dict (``_pci.query_addresses``)."""
    try:
        return query_addresses(facts, query)
    except ValueError as exc:
        raise BindError(str(exc)) from None


def select(snapshot: Snapshot, request: Selection, facts=None) -> list:
    """The selected addresses: the union of all selectors, ``address`` entries first in the order given (devices
    are changed in this order), then the others in address order. ``facts()`` is called for a query."""
    chosen = set()
    ordered = []
    errors = []
    for spec in request.address:
        address, expected = parse_address_spec(spec)
        dev = snapshot.devices.get(address)
        if dev is None:
            errors.append(f"{address}: no such PCI device")
        elif expected and dev.ids != expected:
            errors.append(
                f"{address} is {dev.ids}, not the expected {expected} (was the bus re-enumerated?); nothing changed"
            )
        else:
            if address not in ordered:
                ordered.append(address)
            chosen.add(address)
    for spec in request.ids:
        chosen.update(a for a, d in snapshot.devices.items() if _ids_match(d, spec))
    prefixes = [c.lower() for c in request.device_class]
    if prefixes:
        chosen.update(a for a, d in snapshot.devices.items() if any(d.class_code.startswith(p) for p in prefixes))
    if request.query:
        for address in run_query(request.query, facts() if facts else {}):
            if address not in snapshot.devices:
                errors.append(f"{address} (from query): no such PCI device")
            else:
                chosen.add(address)
    for address in ordered + sorted(chosen - set(ordered)):
        if snapshot.devices[address].unreadable:
            errors.append(
                f"{address}: its sysfs attributes cannot be read ({snapshot.devices[address].unreadable}); "
                "refusing to change a function whose identity is unknown"
            )
    if errors:
        raise BindError("; ".join(errors))
    return ordered + sorted(chosen - set(ordered))


# ---------------------------------------------------------------------------------------------------------
# persistence and the state file


def render_rule(address: str, vendor_id: str, device_id: str, driver: str) -> str:
    """One line of the rules file; every value is checked in full first (a newline would start a new rule)."""
    try:
        checked = v.pci_address("address", address)
        v.driver_name("driver", driver)
        ids = v.pci_ids("vendor:device", f"{vendor_id}:{device_id}")
    except v.InvalidValue as exc:
        raise BindError(f"refusing to write a udev rule: {exc}") from None
    if checked != address or ids != f"{vendor_id}:{device_id}":
        raise BindError(f"refusing to write a udev rule: {address!r} {vendor_id}:{device_id} is not in canonical form")
    return (
        f'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="{address}", ATTR{{vendor}}=="0x{vendor_id}", '
        f'ATTR{{device}}=="0x{device_id}", ATTR{{driver_override}}="{driver}", RUN{{builtin}}+="kmod load {driver}", '
        f"RUN+=\"/bin/sh -c 'echo {address} > /sys/bus/pci/drivers_probe'\"\n"
    )


def parse_rules(text: str) -> dict:
    """{address: (line, driver)} of the managed lines of the rules file."""
    out = {}
    for line in text.splitlines(keepends=True):
        m = _RULE_RE.search(line)
        if m and not line.lstrip().startswith("#"):
            out[m.group("address")] = (line if line.endswith("\n") else line + "\n", m.group("driver"))
    return out


def update_rules(text: str, add: dict, remove: set) -> str:
    """New rules file text: lines for ``remove`` dropped, ``add`` ({address: line}) replacing or appended.

    Every other byte is kept. Returns "" when nothing but the header would be left (the file is then removed).
    """
    lines = text.splitlines(keepends=True) if text else []
    if lines and not lines[-1].endswith("\n"):
        lines[-1] += "\n"
    out = []
    for line in lines:
        m = _RULE_RE.search(line)
        address = m.group("address") if m and not line.lstrip().startswith("#") else None
        if address in remove:
            continue
        if address in add:
            out.append(add.pop(address))
            continue
        out.append(line)
    if not out:
        out = [RULES_HEADER]
    out.extend(add[a] for a in sorted(add))
    result = "".join(out)
    if not parse_rules(result) and result.strip() == RULES_HEADER.strip():
        return ""
    return result


def read_text(path: str, what: str = "configuration file") -> str | None:
    """A file this module rewrites: refused (BindError naming the path) when binary, not UTF-8, a directory..."""
    try:
        return _files.read_config(path, what)
    except _files.FileProblem as exc:
        raise BindError(f"nothing changed: {exc}") from None


def read_state(path: str) -> dict:
    """{address: {driver, module, ids}} recorded when devices were taken from their host driver."""
    text = read_text(path, "bind state file")
    if not text:
        return {}
    try:
        data = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise BindError(f"{path} is not valid JSON ({exc}); fix or remove it") from None
    devices = data.get("devices") if isinstance(data, dict) else None
    if not isinstance(devices, dict):
        return {}
    # The recorded values go back into driver_override and to modprobe: each is checked like a module argument.
    try:
        for address, record in devices.items():
            if v.pci_address(f"{path}: device", address) != address:
                raise v.InvalidValue(f"{path}: device {v.shown(address)} is not in the kernel's form")
            if not isinstance(record, dict):
                raise v.InvalidValue(f"{path}: the record of {address} is {v.shown(record)}, not an object")
            v.driver_name(f"{path}: {address} driver", record.get("driver"))
            if record.get("module") is not None:
                v.module_name(f"{path}: {address} module", record["module"])
            if record.get("ids") is not None:
                v.pci_ids(f"{path}: {address} ids", record["ids"])
    except v.InvalidValue as exc:
        raise BindError(f"nothing changed: {exc}; fix or remove the file") from None
    return devices


def render_state(devices: dict) -> str:
    return json.dumps({"version": 1, "devices": devices}, indent=2, sort_keys=True) + "\n"


class FileWriter:
    """Write a file through a temp file in the same directory and an atomic rename (``atomic_move`` if given)."""

    def __init__(self, atomic_move=None):
        self.atomic_move = atomic_move
        self.created = []  # directories made by stage(), removed again by cleanup() when the run fails

    def _makedirs(self, directory: str) -> None:
        missing = []
        while directory and not os.path.lexists(directory):
            missing.append(directory)
            directory = os.path.dirname(directory)
        for path in reversed(missing):
            os.mkdir(path, 0o755)
            self.created.append(path)

    def cleanup(self) -> None:
        """Remove the directories stage() created, newest first, if they are still empty."""
        while self.created:
            with contextlib.suppress(OSError):
                os.rmdir(self.created.pop())

    def stage(self, path: str, text: str, mode: int = 0o644) -> str:
        """Write ``text`` to a temp file next to ``path`` (nothing replaced yet); return the temp file's path."""
        directory = os.path.dirname(path)
        if os.path.isdir(path):
            raise BindError(f"cannot write {path}: it is a directory")
        tmp = None
        try:
            self._makedirs(directory)
            fd, tmp = tempfile.mkstemp(prefix=".hostdev-vfio.", dir=directory)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.chmod(tmp, mode)
        except OSError as exc:
            if tmp:
                self.discard(tmp)
            raise BindError(f"cannot write {path}: {exc.strerror or exc}") from None
        return tmp

    def commit(self, tmp: str, path: str) -> None:
        """Move a staged temp file over ``path``. ansible-core 2.19's atomic_move raises a plain Exception."""
        try:
            if self.atomic_move:
                self.atomic_move(tmp, path)
            else:
                os.replace(tmp, path)
        except Exception as exc:  # atomic_move raises a plain Exception itself; the path must be named
            self.discard(tmp)
            raise BindError(f"cannot write {path}: {exc}") from None

    @staticmethod
    def discard(tmp: str) -> None:
        with contextlib.suppress(OSError):
            os.unlink(tmp)

    def write(self, path: str, text: str, mode: int = 0o644) -> None:
        self.commit(self.stage(path, text, mode), path)

    def remove(self, path: str) -> None:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise BindError(f"cannot remove {path}: {exc.strerror}") from exc


# ---------------------------------------------------------------------------------------------------------
# the plan


@dataclass
class DevicePlan:
    address: str
    vendor_id: str
    device_id: str
    iommu_group: int | None
    role: str
    driver_before: str | None
    override_before: str | None
    target: str | None  # driver to end on; None = the kernel's choice (driver: host without a record)
    to_host: bool = False
    moves: bool = False
    actions: list = field(default_factory=list)
    rule: str | None = None  # the udev line to install
    unpersist: bool = False
    record: dict | None = None  # original driver to record
    forget: bool = False  # drop the recorded driver
    driver_after: str | None = None
    warnings: list = field(default_factory=list)
    forced: list = field(default_factory=list)  # safety checks overridden by force for this device

    def result(self) -> dict:
        return {
            "address": self.address,
            "vendor_id": self.vendor_id,
            "device_id": self.device_id,
            "iommu_group": self.iommu_group,
            "driver_before": self.driver_before,
            "driver_after": self.driver_after,
            "role": self.role,
            "actions": list(self.actions),
            "forced": list(self.forced),
        }


@dataclass
class Plan:
    devices: list
    modules: list  # driver modules to load first, as (module, driver) pairs
    groups: dict  # group id -> planned {address: driver}
    rules_path: str
    rules_before: str
    rules_after: str
    state_path: str
    state_before: dict
    state_after: dict
    warnings: list = field(default_factory=list)

    @property
    def rules_changed(self) -> bool:
        return self.rules_before != self.rules_after

    @property
    def state_changed(self) -> bool:
        return self.state_before != self.state_after

    @property
    def changed(self) -> bool:
        return any(d.actions for d in self.devices) or self.rules_changed or self.state_changed


def _settles_on(driver: str | None, target: str) -> bool:
    return driver is not None and same_module(driver, target)


def _keeps_viable(driver: str | None) -> bool:
    return driver is None or is_vfio_driver(driver) or driver in STUB_DRIVERS or driver in BRIDGE_DRIVERS


def _plan_device(dev, role, target, request, rules, state, kernel) -> DevicePlan:
    dp = DevicePlan(
        address=dev.address,
        vendor_id=dev.vendor_id,
        device_id=dev.device_id,
        iommu_group=dev.iommu_group,
        role=role,
        driver_before=dev.driver,
        override_before=dev.driver_override,
        target=target,
    )
    # A companion the group policy parks is persisted with the selected device, or the group is not viable
    # after a reboot (the companion's host driver takes it back while vfio-pci holds the selected device).
    parked = role == "companion" and request.group in ("stub", "vfio")
    if role == "bridge" or (target is None and not request.to_host):
        dp.driver_after = dev.driver
        if request.persistent and parked and dev.driver:
            _plan_rule(dp, dev, dev.driver, rules)
        return dp
    record = state.get(dev.address)
    if request.to_host and role == "selected":
        dp.to_host = True
        recorded = record.get("driver") if isinstance(record, dict) else None
        dp.target = recorded
        off_host = dev.driver is not None and (is_vfio_driver(dev.driver) or dev.driver in STUB_DRIVERS)
        wrong = recorded is not None and not _settles_on(dev.driver, recorded)
        if dev.driver_override is not None:
            dp.actions.append("clear driver_override")
            dp.moves = True
        if off_host or wrong:
            dp.moves = True
            if dev.driver:
                dp.actions.append(f"unbind from {dev.driver}")
            dp.actions.append("drivers_probe (" + (f"recorded driver {recorded})" if recorded else "kernel's choice)"))
        elif dp.moves and dev.driver is None:
            dp.actions.append("drivers_probe (kernel's choice)")
        if dev.address in rules:
            dp.unpersist = True
            dp.actions.append("remove udev rule")
        if record is not None:
            dp.forget = True
            dp.actions.append("forget recorded driver")
        dp.driver_after = recorded if dp.moves else dev.driver
        return dp
    # to a named driver
    if not _settles_on(dev.driver, target):
        dp.moves = True
        if not _settles_on(dev.driver_override or "", target):
            dp.actions.append(f"set driver_override to {target}")
        if dev.driver:
            dp.actions.append(f"unbind from {dev.driver}")
        dp.actions.append(f"drivers_probe (bind to {target})")
        taking_from_host = dev.driver is not None and not _keeps_viable(dev.driver)
        if (is_vfio_driver(target) or target in STUB_DRIVERS) and taking_from_host and record is None:
            dp.record = {"driver": dev.driver, "module": kernel.driver_module(dev.driver), "ids": dev.ids}
            dp.actions.append(f"record original driver {dev.driver}")
    if request.persistent and (role == "selected" or parked):
        _plan_rule(dp, dev, target, rules)
    dp.driver_after = target
    return dp


def _plan_rule(dp: DevicePlan, dev, driver: str, rules: dict) -> None:
    line = render_rule(dev.address, dev.vendor_id, dev.device_id, driver)
    if rules.get(dev.address, (None,))[0] != line:
        dp.rule = line
        dp.actions.append("add udev rule" if dev.address not in rules else "update udev rule")


def build_plan(
    snapshot: Snapshot,
    request: Request,
    selected: list,
    kernel,
    protected: dict,
    rules_path: str = DEFAULT_RULES_FILE,
    state_dir: str = DEFAULT_STATE_DIR,
) -> Plan:
    """Compute the whole change; raise BindError (with the plan's devices) when it must not be applied."""
    rules_before = read_text(rules_path) or ""
    rules = parse_rules(rules_before)
    state_path = os.path.join(state_dir, STATE_FILE_NAME)
    state = read_state(state_path)
    errors = []
    vfio_target = not request.to_host and is_vfio_driver(request.driver)
    roles = {a: "selected" for a in selected}
    owner = {}  # group member -> the selected device that brought it in
    targets = {a: (None if request.to_host else request.driver) for a in selected}
    if vfio_target:
        for address in selected:
            dev = snapshot.devices[address]
            for reason in dev.vfio_blockers():
                errors.append(f"{address}: {request.driver} cannot take it: {reason}")
        companion_driver = {"stub": "pci-stub", "vfio": "vfio-pci"}.get(request.group)
        for address in selected:
            group = snapshot.group_of(address)
            for member in group.devices if group else []:
                if member in roles or member not in snapshot.devices:
                    continue
                owner[member] = address
                mdev = snapshot.devices[member]
                if mdev.is_bridge:
                    roles[member], targets[member] = "bridge", None
                    continue
                roles[member] = "companion"
                # group: stub leaves companions on any driver that keeps the group viable; group: vfio wants vfio
                done = is_vfio_driver(mdev.driver) or (request.group == "stub" and mdev.driver in STUB_DRIVERS)
                targets[member] = companion_driver if companion_driver and not done else None

    # selected devices in selection order, each followed by the other members of its group in address order
    order = []
    for address in selected:
        order.append(address)
        order.extend(m for m in sorted(owner) if owner[m] == address)
    devices = [
        _plan_device(snapshot.devices[a], roles[a], targets[a], request, rules, state, kernel)
        for a in order
        if a in snapshot.devices
    ]

    groups = {}
    for dp in devices:
        if dp.iommu_group is not None and dp.iommu_group in snapshot.groups:
            groups.setdefault(dp.iommu_group, {})[dp.address] = dp.driver_after if dp.moves else dp.driver_before
    if vfio_target and request.group in ("fail", "stub", "vfio"):
        for gid, planned in groups.items():
            viable, blockers = assess_group(snapshot, gid, planned)
            if viable:
                continue
            names = ", ".join(f"{b['address']} ({b['driver']})" for b in blockers)
            if request.group == "fail":
                errors.append(
                    f"IOMMU group {gid} would not be viable: {names} share(s) it and stay(s) on the host; use "
                    "group: stub (companions to pci-stub), group: vfio, group: ignore, or select them too"
                )
            else:
                errors.append(f"IOMMU group {gid} cannot be made viable: {names} (bridges are never rebound)")

    for dp in devices:
        unreadable = snapshot.devices[dp.address].unreadable
        if dp.actions and unreadable:
            errors.append(
                f"{dp.address} ({dp.role}): its sysfs attributes cannot be read ({unreadable}); not touching it"
            )

    force = forced_checks(request)
    warnings = []
    for dp in devices:
        if not dp.actions or dp.address not in protected:
            continue
        for check, reason in protected[dp.address]:
            if check in force.get(dp.address, ()):
                warnings.append(
                    f"{dp.address} {reason} ({check} check) - going ahead because force names the {check} check for it"
                )
                if check not in dp.forced:
                    dp.forced.append(check)
            else:
                errors.append(
                    f"{dp.address} {reason} - refusing ({check} check); to override, name the check in force: "
                    f"{{{dp.address!r}: [{check!r}]}}"
                )

    modules = []
    for dp in devices:
        if not dp.moves or dp.target is None:
            continue
        if not kernel.driver_registered(dp.target):
            module = (state.get(dp.address) or {}).get("module") if dp.to_host else None
            pair = (module or dp.target, dp.target)
            if pair not in modules:
                modules.append(pair)

    state_after = {a: v for a, v in state.items() if not any(d.forget and d.address == a for d in devices)}
    for dp in devices:
        if dp.record:
            state_after[dp.address] = dp.record
    add = {dp.address: dp.rule for dp in devices if dp.rule}
    remove = {dp.address for dp in devices if dp.unpersist}
    rules_after = update_rules(rules_before, dict(add), remove) if (add or remove) else rules_before

    plan = Plan(
        devices=devices,
        modules=modules,
        groups=groups,
        rules_path=rules_path,
        rules_before=rules_before,
        rules_after=rules_after,
        state_path=state_path,
        state_before=state,
        state_after=state_after,
        warnings=warnings,
    )
    if errors:
        raise BindError(
            "nothing changed: " + "; ".join(errors),
            devices=[d.result() for d in devices],
            groups=group_results(snapshot, groups),
        )
    return plan


def group_results(snapshot: Snapshot, groups: dict, current: bool = False) -> list:
    out = []
    for gid in sorted(groups):
        if gid not in snapshot.groups:
            continue
        viable, blockers = assess_group(snapshot, gid, None if current else groups[gid])
        out.append({"id": gid, "devices": list(snapshot.groups[gid].devices), "viable": viable, "blockers": blockers})
    return out


def diff(plan: Plan) -> dict:
    def line(address, driver, override, rule):
        return f"{address}: driver={driver or 'none'} driver_override={override or 'none'} udev_rule={rule}\n"

    before, after = [], []
    rules_b, rules_a = parse_rules(plan.rules_before), parse_rules(plan.rules_after)
    for dp in plan.devices:
        if not dp.actions:
            continue
        before.append(line(dp.address, dp.driver_before, dp.override_before, rules_b.get(dp.address, ("", "no"))[1]))
        if dp.to_host:
            override_after, driver_after = None, dp.driver_after or "(kernel's choice)"
        else:
            override_after = dp.target if dp.moves else dp.override_before
            driver_after = dp.driver_after
        after.append(line(dp.address, driver_after, override_after, rules_a.get(dp.address, ("", "no"))[1]))
    return {"before": "".join(before), "after": "".join(after)}


# ---------------------------------------------------------------------------------------------------------
# applying


def _move(kernel, address: str, driver: str | None, final_override: str | None) -> None:
    """Put a device on ``driver`` (None: leave it unbound ... or to the kernel's choice, see callers).

    The override is set to the driver first so that drivers_probe can only pick that one, then set to
    ``final_override`` (which does not unbind anything).
    """
    if kernel.override(address) != driver:
        kernel.set_override(address, driver)
    current = kernel.driver(address)
    if current is not None and not (driver and same_module(current, driver)):
        kernel.unbind(address)
    if driver is not None and kernel.driver(address) is None:
        kernel.probe(address)
    if kernel.override(address) != final_override:
        kernel.set_override(address, final_override)


def _verify(kernel, dp: DevicePlan) -> str | None:
    now = kernel.driver(dp.address)
    if dp.target is not None and not _settles_on(now, dp.target):
        return (
            f"{dp.address}: drivers_probe was accepted but the device is on {now or 'no driver'}, not "
            f"{dp.target} (the driver refused it; see the kernel log)"
        )
    if dp.to_host and now is not None and (is_vfio_driver(now) or now in STUB_DRIVERS):
        return f"{dp.address}: asked to go back to the host, but it is still on {now}"
    if is_vfio_driver(dp.target) and dp.iommu_group is not None and not kernel.wait_vfio_group_file(dp.iommu_group):
        return f"{dp.address} is on {now} but /dev/vfio/{dp.iommu_group} did not appear"
    return None


def rollback(kernel, touched: list) -> list:
    """Put every touched device back on its previous driver and override, newest first; report each."""
    report = []
    for dp in reversed(touched):
        entry = {"address": dp.address, "driver": dp.driver_before, "driver_override": dp.override_before}
        try:
            if dp.driver_before is None:
                kernel.set_override(dp.address, dp.override_before)
                kernel.unbind(dp.address)
            else:
                _move(kernel, dp.address, dp.driver_before, dp.override_before)
            now = kernel.driver(dp.address)
            entry["restored"] = now == dp.driver_before
            if not entry["restored"]:
                entry["error"] = f"ended on {now or 'no driver'}"
        except KernelError as exc:
            entry["restored"] = False
            entry["error"] = str(exc)
        report.append(entry)
    return report


def _restore_files(writer: FileWriter, originals: dict) -> None:
    """Best effort: put back the files already replaced when a later one could not be written."""
    for path, text in originals.items():
        try:
            if text is None:
                writer.remove(path)
            else:
                writer.write(path, text)
        except BindError:
            pass


def apply(plan: Plan, kernel, writer: FileWriter | None = None) -> list:
    """Carry out the plan. On failure, roll back every device touched and raise BindError with the report."""
    writer = writer or FileWriter()
    touched = []
    results = [dp.result() for dp in plan.devices]
    # The files are written to temp files next to their targets first: a read-only or missing directory stops the
    # run before any module is loaded or any device is moved. The temp files replace the targets at the end.
    staged = []
    try:
        if plan.rules_changed and plan.rules_after:
            staged.append((writer.stage(plan.rules_path, plan.rules_after), plan.rules_path))
        if plan.state_changed:
            staged.append((writer.stage(plan.state_path, render_state(plan.state_after)), plan.state_path))
        for module, driver in plan.modules:
            kernel.load_module(module)
            if not kernel.driver_registered(driver):
                raise KernelError(f"modprobe {module} succeeded but no PCI driver {driver} is registered")
        for dp in plan.devices:
            if not dp.moves:
                continue
            touched.append(dp)
            if dp.to_host:
                _move(kernel, dp.address, dp.target, None)
                if dp.target is None and kernel.driver(dp.address) is None:
                    kernel.probe(dp.address)
            else:
                _move(kernel, dp.address, dp.target, dp.target)
            problem = _verify(kernel, dp)
            if problem:
                raise KernelError(problem)
        originals = {}  # path -> text before (None: there was no file), for the files already replaced
        try:
            while staged:
                tmp, path = staged[0]
                before = read_text(path)
                writer.commit(tmp, path)
                staged.pop(0)
                originals[path] = before
            if plan.rules_changed and not plan.rules_after:
                writer.remove(plan.rules_path)
        except BindError:
            _restore_files(writer, originals)
            raise
    except (KernelError, BindError) as exc:
        for tmp, _path in staged:
            writer.discard(tmp)
        writer.cleanup()
        report = rollback(kernel, touched)
        done = [r["address"] for r in report if r.get("restored")]
        failed = [f"{r['address']} ({r['error']})" for r in report if not r.get("restored")]
        msg = f"{exc}; rolled back {', '.join(done) if done else 'nothing'}"
        if failed:
            msg += f"; COULD NOT roll back {', '.join(failed)} - fix by hand"
        for res in results:
            res["driver_after"] = kernel.driver(res["address"])
        raise BindError(msg, devices=results, rollback=report) from exc
    for res, dp in zip(results, plan.devices, strict=True):
        res["driver_after"] = kernel.driver(dp.address)
    return results


# --------------------------------------------------------------------------------------------------- the operation
def host_kernel(host, sysfs_root: str = "/sys", dev_root: str = "/dev"):
    """The real kernel interface for ``host`` (``_host.Host``); modprobe is looked up only when a module must load."""
    from ansible_collections.hostdev.vfio.plugins.module_utils._kernel_ops import SysfsKernel

    def run(argv):
        return host.run([host.bin(argv[0], required=True), *list(argv[1:])])

    return SysfsKernel(sysfs_root, dev_root, run_command=run)


def host_run_optional(host):
    """``run(argv)`` for the safety checks (``zpool status -P``): None when the tool is not installed."""

    def run(argv):
        path = host.bin(argv[0])
        return host.run([path, *list(argv[1:])]) if path else None

    return run


def initramfs_carrying(path: str, root: str = "/") -> tuple:
    """(installed generators, whether one of their images carries ``path``) under ``root``."""
    from ansible_collections.hostdev.vfio.plugins.module_utils import _initramfs

    rel = path if root == "/" else "/" + os.path.relpath(path, root)
    gens = _initramfs.generators(root)
    return gens, _initramfs.carries(root, rel, gens)


def run_request(
    host,
    kernel,
    address=None,
    ids=None,
    device_class=None,
    query=None,
    driver="vfio-pci",
    group="fail",
    persistent=False,
    force=None,
    allow_empty=False,
    sysfs_root="/sys",
    proc_root="/proc",
    dev_root="/dev",
    state_dir=DEFAULT_STATE_DIR,
    rules_file=DEFAULT_RULES_FILE,
    initramfs_root="/",
    live_roots=LIVE_ROOTS,
) -> dict:
    """hostdev.vfio.vfio_bind on ``host`` (``_host.Host``) through ``kernel`` (:func:`host_kernel`): select, check
    the host's safety, plan, apply unless in check mode (rolled back on failure), read the groups again. Returns
    the module's result; raises ``_host.Failed``. Applying needs the live ``/sys``, ``/proc`` and ``/dev``
    (``live_roots``); other roots are for check mode."""
    force = {} if force is None else force
    request = Request(
        address=address,
        ids=ids,
        device_class=device_class,
        query=query,
        driver=driver,
        group=group,
        persistent=persistent,
        force=force,
        allow_empty=allow_empty,
    )
    errors = validate(request) + validate_paths(rules_file, state_dir)
    if errors:
        raise Failed("; ".join(errors))
    if isinstance(force, list) and force:
        host.deprecate(
            "force as a list of addresses overrides every safety check of those devices; give a dict of address to "
            "the checks to override instead, for example {'0000:03:00.0': ['console']}",
            version="1.0.0",
        )
    roots = (sysfs_root, proc_root, dev_root)
    live = tuple(os.path.normpath(r) for r in roots) == tuple(live_roots)
    if not host.check_mode and not live:
        raise Failed(
            "sysfs_root, proc_root and dev_root other than /sys, /proc and /dev are for check mode only "
            "(applying would write into a copy); run with check_mode: true"
        )
    result = {
        "changed": False,
        "devices": [],
        "groups": [],
        "modules_loaded": [],
        "initramfs_update_needed": False,
        "rules_file": {"path": rules_file, "changed": False, "exists": os.path.exists(rules_file)},
    }
    try:
        snapshot = read_snapshot(sysfs_root)

        def facts():
            from ansible_collections.hostdev.vfio.plugins.module_utils._facts import gather

            return gather(sysfs_root, proc_root, dev_root, names=False)

        selected = select(snapshot, request, facts)
        if not selected:
            if request.allow_empty:
                return dict(msg="no device matched the selectors", **result)
            raise Failed("no device matched address, ids, device_class or query; nothing changed", **result)
        safety = protected(
            snapshot,
            sysfs_root,
            proc_root,
            dev_root,
            ssh_connection=os.environ.get("SSH_CONNECTION"),
            run=host_run_optional(host) if live else None,
        )
        plan = build_plan(snapshot, request, selected, kernel, safety, rules_path=rules_file, state_dir=state_dir)
    except BindError as exc:
        result.update(devices=exc.devices, groups=exc.groups)
        raise Failed(exc.msg, **result) from None
    except SafetyError as exc:
        raise Failed(f"nothing changed: the safety checks cannot run: {exc}", **result) from None
    for warning in plan.warnings:
        host.warn(warning)
    generators, carried = initramfs_carrying(plan.rules_path, initramfs_root) if plan.rules_changed else ([], False)
    if generators and not carried:
        host.warn(
            f"{plan.rules_path} changed but the initramfs ({', '.join(generators)}) does not carry it: name it in "
            "hostdev.vfio.initramfs files so the rule also acts before the root file system is mounted"
        )
    result.update(
        changed=plan.changed,
        devices=[d.result() for d in plan.devices],
        groups=group_results(snapshot, plan.groups),
        modules_loaded=[m for m, _d in plan.modules],
        initramfs_update_needed=carried,
        rules_file={"path": plan.rules_path, "changed": plan.rules_changed, "exists": bool(plan.rules_after)},
    )
    if host.diff and plan.changed:
        result["diff"] = diff(plan)
    if host.check_mode or not plan.changed:
        return result
    try:
        result["devices"] = apply(plan, kernel, FileWriter(host.atomic_move))
    except BindError as exc:
        result.update(devices=exc.devices, rollback=exc.rollback, changed=True)
        raise Failed(exc.msg, **result) from None
    after = read_snapshot(sysfs_root)
    result["groups"] = group_results(after, plan.groups, current=True)
    return result
