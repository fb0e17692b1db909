# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The passthrough rules: selector resolution, kernel arguments, boot ids, the bind plan, verification, readiness.

Every function is pure: it takes the IOMMU facts (``_facts.gather``, what hostdev.vfio.iommu_facts returns) and
plain values of the role and returns plain data. The passthrough module applies them on the host; the report
filters (plugins/filter/passthrough.py) use the same functions on the controller.
"""

from __future__ import annotations

import re

from ansible_collections.hostdev.vfio.plugins.module_utils import _validate as v
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import (
    is_vfio_driver,
    query_addresses,
)
from ansible_collections.hostdev.vfio.plugins.module_utils._safety import CHECKS as SAFETY_CHECKS

_IDS_RE = re.compile(
    r"^(?P<vendor>[0-9a-fA-F]{4}):(?P<device>[0-9a-fA-F]{4}|\*)"
    r"(?::(?P<subvendor>[0-9a-fA-F]{4}):(?P<subdevice>[0-9a-fA-F]{4}))?$"
)
# An address selector may carry the ids it must have: "0000:01:00.0@10de:1b80" (hostdev.vfio.vfio_bind's syntax;
# '=' and a space are accepted too), so a re-enumerated bus never hands the wrong card to vfio-pci.
_ADDRESS_SEPARATORS = "@= "
_ALLOWED_DRIVERS = ("vfio-pci", "pci-stub")
_GROUP_POLICIES = ("stub", "vfio", "fail", "ignore")
_STUB = "pci-stub"


# --------------------------------------------------------------------------------------------------- helpers
def _as_list(value) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _devices_by_address(facts: dict) -> dict:
    return {d["address"]: d for d in facts.get("devices") or []}


def _groups_by_id(facts: dict) -> dict:
    return {g["id"]: g for g in facts.get("groups") or []}


def _driver_name(driver) -> str:
    return driver if driver else "no driver"


def parse_address_entry(entry: str) -> tuple[str, str | None]:
    """``(address, expected "vvvv:dddd" or None)`` from ``"01:00.0"`` or ``"0000:01:00.0@10de:1b80"``.

    The same rule as hostdev.vfio.vfio_bind's ``address`` (``_validate.pci_address_spec``): a newline or any other
    control character is refused, not stripped.
    """
    try:
        return v.pci_address_spec("address", entry if isinstance(entry, str) else str(entry), _ADDRESS_SEPARATORS)
    except v.InvalidValue as exc:
        raise ValueError(
            f"{exc} (a PCI address selector is DDDD:BB:DD.F or BB:DD.F, optionally followed by @VVVV:DDDD, e.g. "
            "0000:01:00.0@10de:1b80)"
        ) from None


def _ids_match(device: dict, pattern: str) -> bool:
    m = _IDS_RE.fullmatch(pattern) if isinstance(pattern, str) else None
    if not m:
        raise ValueError(
            f"{pattern!r} is not a vendor:device id (expected VVVV:DDDD, VVVV:* or VVVV:DDDD:SVVV:SDDD, e.g. 10de:1b80)"
        )
    if device.get("vendor_id") != m.group("vendor").lower():
        return False
    if m.group("device") != "*" and device.get("device_id") != m.group("device").lower():
        return False
    if m.group("subvendor"):
        return (
            device.get("subsystem_vendor_id") == m.group("subvendor").lower()
            and device.get("subsystem_device_id") == m.group("subdevice").lower()
        )
    return True


def _query_addresses(facts: dict, query: str) -> list[str]:
    v.jmespath_query("query", query)
    return query_addresses(facts, query)


def selector_label(selector: dict, index: int) -> str:
    for key in ("name", "address", "ids", "device_class", "query"):
        value = selector.get(key)
        if value:
            shown = ",".join(str(v) for v in _as_list(value))
            return f"selector {index + 1} ({key if key != 'name' else 'name'}: {shown})"
    return f"selector {index + 1}"


# --------------------------------------------------------------------------------------------------- validation
_SELECTOR_CHECKS = {
    "name": v.label,
    "address": lambda field, value: v.pci_address_spec(field, value, _ADDRESS_SEPARATORS),
    "ids": v.pci_ids_pattern,
    "device_class": v.pci_class_prefix,
}


def _collect(errors: list, check, *args) -> None:
    try:
        check(*args)
    except v.InvalidValue as exc:
        errors.append(str(exc))


def _each(errors: list, field: str, values, check) -> None:
    if values is None:
        return
    if not isinstance(values, (list, tuple)):
        errors.append(f"{field}: expected a list, got {type(values).__name__} {v.shown(values)}")
        return
    for index, value in enumerate(values):
        _collect(errors, check, f"{field}[{index}]", value)


def passthrough_validate(
    devices,
    kernel_args=None,
    softdep_drivers=None,
    vfio_group_owner: str = "",
    vfio_group_group: str = "",
    vfio_group_mode: str = "0660",
    force=None,
) -> list:
    """Every problem with the role's values, checked with the rules hostdev.vfio's modules apply (``_validate``).

    Returns human-readable messages naming the variable and showing the value; empty when all is well. The role's
    preflight fails with them before any host is read.
    """
    errors = []
    if not isinstance(devices, (list, tuple)):
        return [f"passthrough_devices: expected a list of selectors, got {type(devices).__name__}"]
    for index, selector in enumerate(devices):
        base = f"passthrough_devices[{index}]"
        if not isinstance(selector, dict):
            errors.append(f"{base}: expected a selector (a dict), got {type(selector).__name__} {v.shown(selector)}")
            continue
        if selector.get("name") is not None:
            _collect(errors, v.label, f"{base}.name", selector["name"])
        for key in ("address", "ids", "device_class"):
            _each(errors, f"{base}.{key}", selector.get(key), _SELECTOR_CHECKS[key])
        if selector.get("query") is not None:
            _collect(errors, v.jmespath_query, f"{base}.query", selector["query"])
        driver = selector.get("driver")
        if driver is not None:
            try:
                v.driver_name(f"{base}.driver", driver)
                if driver not in _ALLOWED_DRIVERS:
                    errors.append(f"{base}.driver: {v.shown(driver)} is not one of {', '.join(_ALLOWED_DRIVERS)}")
            except v.InvalidValue as exc:
                errors.append(str(exc))
        group = selector.get("group")
        if group is not None and group not in _GROUP_POLICIES:
            errors.append(f"{base}.group: {v.shown(group)} is not one of {', '.join(_GROUP_POLICIES)}")
        count = selector.get("count")
        if count is not None and (isinstance(count, bool) or not isinstance(count, int) or count < 0):
            errors.append(f"{base}.count: {v.shown(count)} is not a number of functions (0 or more)")
    _each(errors, "passthrough_kernel_args", kernel_args, v.kernel_arg)
    _each(errors, "passthrough_softdep_drivers", softdep_drivers, v.module_name)
    _collect(errors, v.account_name, "passthrough_vfio_group_owner", vfio_group_owner)
    _collect(errors, v.account_name, "passthrough_vfio_group_group", vfio_group_group)
    _collect(errors, v.vfio_group_mode, "passthrough_vfio_group_mode", vfio_group_mode)
    if force is not None and not isinstance(force, dict):
        errors.append(
            f"passthrough_force: expected a dict of address -> list of check names, got {type(force).__name__} "
            f"{v.shown(force)}"
        )
    else:
        _collect(errors, v.force_spec, "passthrough_force", force, SAFETY_CHECKS)
    return errors


# --------------------------------------------------------------------------------------------------- selection
def resolve_selector(facts: dict, selector: dict, index: int = 0) -> dict:
    """Match one ``passthrough_devices`` entry against the facts.

    Criteria present in the selector all apply (an address list AND an id list narrow each other); inside one
    list any entry may match. Returns the selector's settings with ``addresses`` (sorted), ``devices`` (their
    facts) and ``errors`` (human-readable, empty when the selector is fine).
    """
    label = selector_label(selector, index)
    by_address = _devices_by_address(facts)
    errors = []
    driver = selector.get("driver") or "vfio-pci"
    group = selector.get("group") or "stub"
    if driver not in _ALLOWED_DRIVERS:
        errors.append(f"{label}: driver {driver!r} is not one of {', '.join(_ALLOWED_DRIVERS)}")
    if group not in _GROUP_POLICIES:
        errors.append(f"{label}: group {group!r} is not one of {', '.join(_GROUP_POLICIES)}")

    candidates = set(by_address)
    criteria = 0
    try:
        if selector.get("address"):
            criteria += 1
            wanted = set()
            for entry in _as_list(selector["address"]):
                address, ids = parse_address_entry(entry)
                dev = by_address.get(address)
                if dev is None:
                    errors.append(f"{label}: no PCI function {address} on this host")
                    continue
                actual = f"{dev.get('vendor_id')}:{dev.get('device_id')}"
                if ids and ids != actual:
                    errors.append(
                        f"{label}: {address} is {actual}, not the expected {ids}; check the slot before passing "
                        "it through"
                    )
                    continue
                wanted.add(address)
            candidates &= wanted
        if selector.get("ids"):
            criteria += 1
            patterns = _as_list(selector["ids"])
            candidates = {a for a in candidates if any(_ids_match(by_address[a], p) for p in patterns)}
        if selector.get("device_class"):
            criteria += 1
            prefixes = [str(c).lower() for c in _as_list(selector["device_class"])]
            candidates = {a for a in candidates if any(by_address[a]["class_code"].startswith(p) for p in prefixes)}
        if selector.get("query"):
            criteria += 1
            candidates &= set(_query_addresses(facts, selector["query"]))
    except ValueError as exc:
        errors.append(f"{label}: {exc}")
        candidates = set()
    if not criteria:
        errors.append(f"{label}: give at least one of address, ids, device_class or query")

    addresses = sorted(candidates)
    count = selector.get("count")
    if criteria and not errors:
        if not addresses:
            errors.append(f"{label}: matches no PCI function on this host")
        elif count is not None and len(addresses) != int(count):
            errors.append(
                f"{label}: matches {len(addresses)} PCI functions ({', '.join(addresses)}), expected count {count}"
            )
    return {
        "label": label,
        "driver": driver,
        "group": group,
        "count": count,
        "addresses": addresses,
        "devices": [by_address[a] for a in addresses],
        "errors": errors,
    }


def passthrough_resolve(facts: dict, selectors: list) -> list:
    """Resolve every selector; see :func:`resolve_selector`. Also flags a function claimed by two selectors."""
    resolved = [resolve_selector(facts or {}, s or {}, i) for i, s in enumerate(_as_list(selectors))]
    owner = {}
    for entry in resolved:
        for address in entry["addresses"]:
            if address in owner and owner[address]["driver"] != entry["driver"]:
                entry["errors"].append(
                    f"{entry['label']}: {address} is also selected by {owner[address]['label']} with driver "
                    f"{owner[address]['driver']}"
                )
            owner.setdefault(address, entry)
    return resolved


def forced_checks(force) -> dict:
    """``passthrough_force`` as ``{address in the kernel's form: [check, ...]}``: the safety checks the user overrides
    per function (the list form means every check). Raises ``_validate.InvalidValue`` for a value the role refuses."""
    return v.force_spec("passthrough_force", force or {}, SAFETY_CHECKS)[0]


def passthrough_bind_plan(resolved: list, iommu_enabled: bool, bind_results=None, force=None) -> list:
    """The binds of this run, per function, for the summary: what vfio_bind planned or did (``bind_results``, the
    registered loop) when the IOMMU is on; when it is off, the binds that will happen after the reboot that turns it
    on, planned from the selection and marked ``after_reboot: true`` (group companions are known only then).

    Each entry: address, role, driver_before, driver_after, actions, forced (the safety checks force overrides),
    after_reboot.
    """
    forced = forced_checks(force)
    out = []
    if iommu_enabled:
        for run in _as_list((bind_results or {}).get("results") if isinstance(bind_results, dict) else bind_results):
            for dev in (run or {}).get("devices") or []:
                if dev.get("actions") or dev.get("forced"):
                    keys = ("address", "role", "driver_before", "driver_after", "actions", "forced")
                    out.append({**{k: dev.get(k) for k in keys}, "after_reboot": False})
        return out
    for entry in _as_list(resolved):
        for dev in entry.get("devices") or []:
            driver = entry.get("driver") or "vfio-pci"
            if dev.get("driver") == driver:
                continue
            out.append(
                {
                    "address": dev["address"],
                    "role": "selected",
                    "driver_before": dev.get("driver"),
                    "driver_after": driver,
                    "actions": [
                        f"bind to {driver} after the reboot that turns the IOMMU on (group {entry.get('group')}: "
                        "its IOMMU group companions are planned then)"
                    ],
                    "forced": forced.get(dev["address"], []),
                    "after_reboot": True,
                }
            )
    return out


def passthrough_errors(resolved: list) -> list:
    return [e for entry in resolved for e in entry["errors"]]


# --------------------------------------------------------------------------------------------------- kernel args
def iommu_vendor(facts: dict) -> str | None:
    """Whose IOMMU this is: the units the kernel registered, else the ACPI table, else the CPU vendor.

    The IOMMU hardware decides the kernel argument, not the CPU model string (a virtual CPU can report a vendor
    the platform's IOMMU does not match).
    """
    types = {u.get("type") for u in facts.get("units") or []}
    if "intel-vtd" in types:
        return "intel"
    if "amd-vi" in types:
        return "amd"
    tables = facts.get("firmware_tables") or []
    if "DMAR" in tables:
        return "intel"
    if "IVRS" in tables:
        return "amd"
    return facts.get("cpu_vendor")


def passthrough_kernel_args(facts: dict, mode: str = "auto", pt: bool = False, extra=None) -> dict:
    """The kernel arguments the role wants.

    Returns ``args`` (to be present), ``remove`` (to be absent now, e.g. an ``intel_iommu=off`` that
    contradicts ``args``), ``absent`` (what ``passthrough_state: absent`` removes), ``vendor`` and ``error``
    (a reason the IOMMU cannot be turned on from here, or null).
    """
    facts = facts or {}
    vendor = iommu_vendor(facts)
    enabled = bool(facts.get("enabled"))
    args, remove, absent = [], [], []
    error = None
    if mode == "auto":
        if vendor == "intel":
            absent.append("intel_iommu=on")
            if not enabled:
                args.append("intel_iommu=on")
        elif not enabled:
            present = bool(facts.get("units") or facts.get("firmware_tables"))
            cmdline = facts.get("cmdline") or {}
            off = [f"{k}={v}" for k, v in cmdline.items() if k in ("amd_iommu", "iommu") and "off" in str(v).split(",")]
            if present and off:
                remove.extend(off)
            elif vendor == "amd" and present:
                error = (
                    "the AMD IOMMU (IVRS) is present but the kernel did not enable it and nothing on the command "
                    "line turns it off: enable AMD-Vi/IOMMU in the firmware setup"
                )
    if pt:
        args.append("iommu=pt")
        absent.append("iommu=pt")
    for arg in _as_list(extra):
        args.append(str(arg))
        absent.append(str(arg))
    return {"args": args, "remove": remove, "absent": absent, "vendor": vendor, "error": error}


# --------------------------------------------------------------------------------------------------- boot time
def _boot_targets(facts: dict, resolved: list) -> dict:
    """``{address: driver}`` the boot configuration must give: the selected functions and their group companions
    (``stub`` policy: pci-stub, ``vfio``: vfio-pci; ``fail``/``ignore``: none), bridges excluded."""
    by_address = _devices_by_address(facts)
    groups = _groups_by_id(facts)
    targets = {d["address"]: entry["driver"] for entry in resolved for d in entry["devices"]}
    for entry in resolved:
        if entry["group"] not in ("stub", "vfio"):
            continue
        want = _STUB if entry["group"] == "stub" else "vfio-pci"
        for dev in entry["devices"]:
            group = groups.get(by_address.get(dev["address"], dev).get("iommu_group"))
            for member in group["devices"] if group else []:
                mdev = by_address.get(member)
                if mdev and not mdev.get("is_bridge") and member not in targets:
                    targets[member] = want
    return targets


def passthrough_boot_ids(facts: dict, resolved: list, softdep_drivers=None) -> dict:
    """``options vfio-pci ids=`` / ``options pci-stub ids=`` values and softdeps for the ``ids`` boot method.

    The ids cover the selected functions and the group companions their policy parks, so the groups are viable
    from the first boot on. Softdeps go on the modules of the host drivers these functions use now (vfio-pci and
    pci-stub themselves excluded) and on every module whose device table matches them (see ``_host_modules``),
    unless ``softdep_drivers`` names them. ``conflicts`` lists why the ids cannot be used on this host: an id
    option applies to every function with that vendor:device, so another function with the same ids (a second
    identical card the host keeps, or the management NIC) would be taken from its driver at the next boot, and
    an id wanted by both drivers goes to whichever loads first.
    """
    facts = facts or {}
    by_address = _devices_by_address(facts)
    known = {d["address"]: d for entry in resolved for d in entry["devices"]} | by_address
    targets = _boot_targets(facts, resolved)
    vfio_ids, stub_ids, drivers, conflicts = [], [], [], []
    for address in sorted(targets):
        dev = known[address]
        ids = _ids_of(dev)
        target = vfio_ids if targets[address] == "vfio-pci" else stub_ids
        if ids not in target:
            target.append(ids)
        for module in _host_modules(dev):
            if module not in drivers:
                drivers.append(module)
    for ids in sorted(set(vfio_ids) & set(stub_ids)):
        wanted = ", ".join(f"{a} on {targets[a]}" for a in sorted(targets) if _ids_of(known[a]) == ids)
        conflicts.append(
            f"{ids} is wanted by both vfio-pci and pci-stub ({wanted}): ids options cannot tell them apart"
        )
    claimed = {i: "vfio-pci" for i in vfio_ids} | {i: _STUB for i in stub_ids}
    for address, dev in sorted(by_address.items()):
        ids = _ids_of(dev)
        if address not in targets and ids in claimed:
            conflicts.append(
                f"{address} ({ids}, on {_driver_name(dev.get('driver'))}) is not selected but has the ids "
                f"{claimed[ids]} would claim at boot: select it too, or use passthrough_boot_method: override"
            )
    if softdep_drivers:
        drivers = list(_as_list(softdep_drivers))
    pre = (["vfio-pci"] if vfio_ids else []) + ([_STUB] if stub_ids else [])
    return {
        "vfio_ids": vfio_ids,
        "stub_ids": stub_ids,
        "softdeps": [{"name": d, "pre": pre} for d in sorted(drivers)] if pre else [],
        "conflicts": conflicts,
    }


def _host_modules(dev: dict) -> list[str]:
    """The host modules that would take a function at boot, for the softdeps of the ``ids`` method.

    The module of the driver it is on now (xhci_pci for the driver xhci_hcd; the driver name when built in or
    not reported), plus every module whose device table matches its modalias (``host_modules`` of
    iommu_facts). A function already on vfio-pci or pci-stub thus still names its host drivers, and a second
    run derives the same softdeps as the first.
    """
    out = []
    drv = dev.get("driver")
    if drv and not is_vfio_driver(drv) and drv != _STUB:
        out.append(dev.get("driver_module") or drv)
    for module in dev.get("host_modules") or []:
        if not is_vfio_driver(module) and module.replace("-", "_") != "pci_stub" and module not in out:
            out.append(module)
    return out


def _ids_of(dev) -> str | None:
    return f"{dev.get('vendor_id')}:{dev.get('device_id')}" if dev else None


def passthrough_restore_addresses(facts: dict, resolved: list) -> list:
    """For ``state: absent``: the selected functions and their group companions on vfio-pci or pci-stub."""
    by_address = _devices_by_address(facts or {})
    groups = _groups_by_id(facts or {})
    out = set()
    for entry in resolved:
        for dev in entry["devices"]:
            out.add(dev["address"])
            group = groups.get(dev.get("iommu_group"))
            for member in group["devices"] if group else []:
                mdev = by_address.get(member)
                if (
                    mdev
                    and not mdev.get("is_bridge")
                    and (is_vfio_driver(mdev.get("driver")) or mdev.get("driver") == _STUB)
                ):
                    out.add(member)
    return sorted(out)


# --------------------------------------------------------------------------------------------------- verify
def passthrough_verify(facts: dict, resolved: list, args=None) -> list:
    """Problems that remain after the role ran (empty list = verified), judged from fresh facts."""
    facts = facts or {}
    problems = []
    if not facts.get("enabled"):
        problems.append("the IOMMU is not enabled in the running kernel")
    cmdline = (facts.get("cmdline_raw") or "").split()
    for arg in _as_list(args):
        if arg not in cmdline:
            problems.append(f"/proc/cmdline lacks {arg}")
    by_address = _devices_by_address(facts)
    groups = _groups_by_id(facts)
    group_files = set((facts.get("vfio") or {}).get("group_files") or [])
    targets = {d["address"] for entry in resolved for d in entry["devices"]}
    for entry in resolved:
        for dev in entry["devices"]:
            address = dev["address"]
            current = by_address.get(address, dev)
            if current.get("driver") != entry["driver"]:
                problems.append(f"{address} is on {_driver_name(current.get('driver'))}, not {entry['driver']}")
            gid = current.get("iommu_group")
            if gid is None:
                problems.append(f"{address} has no IOMMU group")
                continue
            group = groups.get(gid)
            if entry["driver"] == "vfio-pci":
                if group is not None and not group.get("viable"):
                    blockers = ", ".join(
                        f"{b['address']} on {_driver_name(b.get('driver'))}" for b in group.get("blockers") or []
                    )
                    problems.append(f"IOMMU group {gid} of {address} is not viable ({blockers})")
                if gid not in group_files:
                    problems.append(f"/dev/vfio/{gid} (group of {address}) does not exist")
            if group is None or entry["group"] in ("ignore", "fail"):
                continue
            for member in group["devices"]:
                mdev = by_address.get(member) or {}
                if member in targets or mdev.get("is_bridge"):
                    continue
                want = _STUB if entry["group"] == "stub" else "vfio-pci"
                if mdev.get("driver") != want and not (mdev.get("driver") is None and want == _STUB):
                    problems.append(
                        f"{member} (in IOMMU group {gid} with {address}) is on {_driver_name(mdev.get('driver'))}, "
                        f"not {want}"
                    )
    return problems


# --------------------------------------------------------------------------------------------------- readiness
def device_readiness(facts: dict, device: dict) -> dict:
    """Whether a guest could be given this function now, and if not, every reason why."""
    facts = facts or {}
    reasons = []
    driver = device.get("driver")
    gid = device.get("iommu_group")
    groups = _groups_by_id(facts)
    group_files = set((facts.get("vfio") or {}).get("group_files") or [])
    if not facts.get("enabled"):
        reasons.append("IOMMU off")
    if device.get("is_bridge"):
        reasons.append("bridge (vfio-pci only drives endpoints)")
    if gid is None:
        if facts.get("enabled"):
            reasons.append("no IOMMU group")
    else:
        group = groups.get(gid) or {}
        for blocker in group.get("blockers") or []:
            if blocker["address"] != device.get("address"):
                reasons.append(f"group {gid} shared with {blocker['address']} on {_driver_name(blocker.get('driver'))}")
        if is_vfio_driver(driver) and gid not in group_files:
            reasons.append(f"/dev/vfio/{gid} missing")
    if not is_vfio_driver(driver) and not device.get("is_bridge"):
        if driver == _STUB:
            reasons.append("on pci-stub (held for a group companion)")
        elif driver:
            reasons.append(f"on host driver {driver}")
        else:
            reasons.append("no driver bound (not on vfio-pci)")
    return {
        "address": device.get("address"),
        "ids": f"{device.get('vendor_id')}:{device.get('device_id')}",
        "name": " ".join(x for x in (device.get("vendor_name"), device.get("device_name")) if x) or None,
        "class_id": device.get("class_id"),
        "class_name": device.get("class_name"),
        "driver": driver,
        "iommu_group": gid,
        "ready": not reasons,
        "reasons": reasons,
    }


def passthrough_readiness(facts: dict) -> list:
    """:func:`device_readiness` for every function in the facts."""
    return [device_readiness(facts or {}, d) for d in (facts or {}).get("devices") or []]
