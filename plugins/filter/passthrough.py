# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What runs on the controller: the check of the role's values before any host is read, and the fleet report
(every host's facts aggregated) with its picture.

Every decision about one host (selection, kernel arguments, boot ids, binds, verification) is made on that host by
hostdev.vfio.passthrough, with the rules of module_utils/_passthrough.py; the report reads the same rules for the
readiness of each function.
"""

from __future__ import annotations

__metaclass__ = type  # noqa: UP001 - the boilerplate ansible-test sanity expects


from ansible.errors import AnsibleFilterError
from ansible_collections.hostdev.vfio.plugins.module_utils import _handoff, _picture
from ansible_collections.hostdev.vfio.plugins.module_utils import _validate as v
from ansible_collections.hostdev.vfio.plugins.module_utils._passthrough import (
    _as_list,
    _devices_by_address,
    forced_checks,
    iommu_vendor,
    passthrough_readiness,
    passthrough_validate,
)


# --------------------------------------------------------------------------------------------------- report
def vmm_verdict(probe, address: str):
    """QEMU's answer for one function from a hostdev.vfio.vmm_probe result: "took it", "refused: ...",
    "not probed: ...", or None when QEMU was not asked about it."""
    if not probe or probe.get("skipped") is True:
        return None
    if probe.get("qemu_missing"):
        return None
    for entry in probe.get("functions") or []:
        if entry.get("address") != address:
            continue
        if entry.get("skipped"):
            return entry["skipped"]
        if entry.get("taken"):
            return "took it"
        return f"refused: {entry.get('error') or 'not taken'}"
    return None


def _host_forced(facts: dict, force) -> tuple:
    """The host's ``passthrough_force`` per function, and warnings: a value the role refuses (nothing forced), an
    address the host does not have."""
    try:
        forced = forced_checks(force)
    except v.InvalidValue as exc:
        return {}, [f"{exc}; the role refuses this value, so it forces nothing on this host"]
    present = _devices_by_address(facts)
    return forced, [f"passthrough_force names {a}, which this host does not have" for a in forced if a not in present]


def host_report(
    name: str, facts, error: str | None = None, probe=None, include: str = "ready", names=None, force=None
) -> dict:
    """One host's section of the fleet report; ``probe`` is the host's vmm_probe result, if QEMU was asked;
    ``force`` its ``passthrough_force``.

    Each function carries its verdict (``_handoff.function_verdict``: ``verdict``, ``verdict_summary``,
    ``verdict_notes``) and ``forced``, the safety checks ``force`` overrides for it (``forced`` of the host: the
    same by address); ``handoff`` holds the four hand-off formats for the ``include`` functions (ready or
    candidates) with ``names`` by vendor:device.
    """
    if not facts:
        return {"host": name, "reachable": False, "error": error or "no facts (host unreachable or failed)"}
    forced, force_warnings = _host_forced(facts, force)
    devices = passthrough_readiness(facts)
    for device, fact, verdict in zip(devices, facts.get("devices") or [], _handoff.verdicts(facts), strict=True):
        device["parent"] = fact.get("parent")
        device["is_bridge"] = bool(fact.get("is_bridge"))
        device["vmm"] = vmm_verdict(probe, device["address"])
        device["verdict"] = verdict["verdict"]
        device["verdict_summary"] = verdict["summary"]
        device["verdict_notes"] = verdict["notes"]
        device["forced"] = forced.get(device["address"], [])
    groups = [
        {
            "id": g["id"],
            "devices": g.get("devices") or [],
            "viable": bool(g.get("viable")),
            "blockers": g.get("blockers") or [],
            "vfio_file": g["id"] in set((facts.get("vfio") or {}).get("group_files") or []),
        }
        for g in facts.get("groups") or []
    ]
    return {
        "host": name,
        "reachable": True,
        "iommu_enabled": bool(facts.get("enabled")),
        "iommu_vendor": iommu_vendor(facts),
        "units": [u.get("name") for u in facts.get("units") or []],
        "firmware_tables": facts.get("firmware_tables") or [],
        "cmdline": facts.get("cmdline") or {},
        "warnings": (facts.get("warnings") or []) + force_warnings,
        "forced": forced,
        "groups": groups,
        "devices": devices,
        "ready_count": sum(1 for d in devices if d["ready"]),
        "device_count": len(devices),
        "qemu": ((probe or {}).get("qemu") or {}).get("version") if probe else None,
        "qemu_missing": (probe or {}).get("qemu_missing"),
        "handoff": _handoff.handoff(facts, name, include, names=names),
    }


def passthrough_report(
    hosts,
    host_facts=None,
    errors=None,
    probes=None,
    handoff_include: str = "ready",
    handoff_names=None,
    force=None,
) -> dict:
    """The fleet report: ``hosts`` (names) and ``host_facts`` (their ``ansible_facts.iommu`` or null), in order;
    ``probes``, in the same order, each host's vmm_probe result (or null) when QEMU was asked; ``handoff_include``
    and ``handoff_names`` choose the functions and names of each host's hand-off (see hostdev.vfio.handoff_nova);
    ``force`` maps host names to their ``passthrough_force`` (hosts not in it force nothing).
    ``hosts`` may instead be the result of the ``capture_facts`` filter (``hosts``, ``facts``, ``errors``)."""
    if isinstance(hosts, dict):
        hosts, host_facts, errors = (
            hosts.get("hosts"),
            hosts.get("facts"),
            {**hosts.get("errors", {}), **(errors or {})},
        )
    if host_facts is None:
        raise ValueError("host_facts: each host's facts are required (or pass the result of capture_facts)")
    errors = errors or {}
    hosts, host_facts = _as_list(hosts), _as_list(host_facts)
    probes = _as_list(probes) if probes is not None else [None] * len(hosts)
    if handoff_include not in _handoff.INCLUDE:
        raise ValueError(f"handoff_include: {v.shown(handoff_include)} is not one of {', '.join(_handoff.INCLUDE)}")
    _handoff.check_names(handoff_names)
    force = {} if force is None else force
    if not isinstance(force, dict):
        raise ValueError(f"force: expected a dict of host name -> passthrough_force, got {v.shown(force)}")
    sections = [
        host_report(h, f, errors.get(h), p, handoff_include, handoff_names, force.get(h))
        for h, f, p in zip(hosts, host_facts, probes, strict=True)
    ]
    reachable = [s for s in sections if s["reachable"]]
    return {
        "hosts": sections,
        "totals": {
            "hosts": len(sections),
            "unreachable": len(sections) - len(reachable),
            "iommu_on": sum(1 for s in reachable if s["iommu_enabled"]),
            "ready_devices": sum(s["ready_count"] for s in reachable),
            "devices": sum(s["device_count"] for s in reachable),
            "qemu_took": sum(1 for s in reachable for d in s["devices"] if d["vmm"] == "took it"),
            "forced": sum(1 for s in reachable for d in s["devices"] if d["forced"]),
            "verdicts": {
                code: sum(1 for s in reachable for d in s["devices"] if d["verdict"] == code)
                for code in _handoff.VERDICTS
            },
        },
    }


def passthrough_pictures(report: dict) -> dict:
    """The report's picture: ``{"legend": svg, "hosts": {host: svg}}``, each host's PCI tree and IOMMU groups as
    inline SVG coloured by verdict (module_utils/_picture.py)."""
    return _picture.pictures(report)


def _wrap(func):
    def run(*args, **kwargs):
        try:
            return func(*args, **kwargs)
        except (KeyError, TypeError, ValueError) as exc:
            raise AnsibleFilterError(f"{func.__name__}: {exc}") from exc

    return run


class FilterModule:
    """hostdev.vfio passthrough filters."""

    def filters(self):
        return {
            "passthrough_validate": _wrap(passthrough_validate),
            "passthrough_report": _wrap(passthrough_report),
            "passthrough_pictures": _wrap(passthrough_pictures),
        }
