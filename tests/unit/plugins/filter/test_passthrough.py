# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The passthrough role's filters: selection, kernel arguments, boot ids, verification and readiness."""

from __future__ import annotations

import copy

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.hostdev.vfio.plugins.filter.passthrough import FilterModule, passthrough_report
from ansible_collections.hostdev.vfio.plugins.module_utils._passthrough import (
    device_readiness,
    iommu_vendor,
    parse_address_entry,
    passthrough_bind_plan,
    passthrough_boot_ids,
    passthrough_errors,
    passthrough_kernel_args,
    passthrough_readiness,
    passthrough_resolve,
    passthrough_restore_addresses,
    passthrough_verify,
)


def dev(address, vendor, device, class_code, driver, group, is_bridge=False, sub=("1af4", "1100")):
    return {
        "address": address,
        "vendor_id": vendor,
        "device_id": device,
        "subsystem_vendor_id": sub[0],
        "subsystem_device_id": sub[1],
        "class_code": class_code,
        "class_id": class_code[:4],
        "class_name": None,
        "vendor_name": None,
        "device_name": None,
        "driver": driver,
        "iommu_group": group,
        "is_bridge": is_bridge,
    }


def lab_facts(enabled=True, units=("dmar0", "intel-vtd"), tables=("DMAR",), cpu="amd"):
    """The lab guests' layout: e1000e alone in group 3, a PCIe-PCI bridge with two e1000 in group 7."""
    g = (lambda n: n) if enabled else (lambda n: None)
    devices = [
        dev("0000:00:01.0", "1234", "1111", "030000", "bochs-drm", g(0)),
        dev("0000:00:04.0", "8086", "10d3", "020000", "e1000e", g(3)),
        dev("0000:00:05.0", "8086", "293e", "040300", "snd_hda_intel", g(4)),
        dev("0000:00:08.0", "1b36", "000e", "060400", None, g(7), is_bridge=True),
        dev("0000:01:01.0", "8086", "100e", "020000", "e1000", g(7)),
        dev("0000:01:02.0", "8086", "100e", "020000", "e1000", g(7)),
    ]
    groups = []
    if enabled:
        groups = [
            {
                "id": 0,
                "devices": ["0000:00:01.0"],
                "viable": False,
                "blockers": [{"address": "0000:00:01.0", "driver": "bochs-drm"}],
            },
            {
                "id": 3,
                "devices": ["0000:00:04.0"],
                "viable": False,
                "blockers": [{"address": "0000:00:04.0", "driver": "e1000e"}],
            },
            {
                "id": 4,
                "devices": ["0000:00:05.0"],
                "viable": False,
                "blockers": [{"address": "0000:00:05.0", "driver": "snd_hda_intel"}],
            },
            {
                "id": 7,
                "devices": ["0000:00:08.0", "0000:01:01.0", "0000:01:02.0"],
                "viable": False,
                "blockers": [
                    {"address": "0000:01:01.0", "driver": "e1000"},
                    {"address": "0000:01:02.0", "driver": "e1000"},
                ],
            },
        ]
    return {
        "enabled": enabled,
        "units": [{"name": units[0], "type": units[1]}] if (enabled and units) else [],
        "firmware_tables": list(tables),
        "cpu_vendor": cpu,
        "cmdline": {"intel_iommu": "on"} if enabled else {"intel_iommu": "off"},
        "cmdline_raw": "BOOT_IMAGE=/vmlinuz ro intel_iommu=on" if enabled else "BOOT_IMAGE=/vmlinuz ro intel_iommu=off",
        "vfio": {"modules": [], "group_files": [], "unsafe_noiommu_mode": False},
        "warnings": [],
        "groups": groups,
        "devices": devices,
    }


def bound_facts():
    """lab_facts after the role: e1000e on vfio-pci, 01:01.0 on vfio-pci, 01:02.0 on pci-stub."""
    facts = lab_facts()
    drivers = {"0000:00:04.0": "vfio-pci", "0000:01:01.0": "vfio-pci", "0000:01:02.0": "pci-stub"}
    for d in facts["devices"]:
        d["driver"] = drivers.get(d["address"], d["driver"])
    for g in facts["groups"]:
        if g["id"] in (3, 7):
            g["viable"], g["blockers"] = True, []
    facts["vfio"]["group_files"] = [3, 7]
    return facts


SAMPLE = [
    {"address": ["00:04.0@8086:10d3"], "count": 1},
    {"address": ["0000:01:01.0"], "group": "stub"},
]


# --------------------------------------------------------------------------------------------------- selection
@pytest.mark.parametrize(
    "entry, expected",
    [
        ("00:04.0", ("0000:00:04.0", None)),
        ("0000:01:01.0@8086:100E", ("0000:01:01.0", "8086:100e")),
        ("01:01.0=8086:100e", ("0000:01:01.0", "8086:100e")),
    ],
)
def test_parse_address_entry(entry, expected):
    assert parse_address_entry(entry) == expected


@pytest.mark.parametrize("entry", ["01:01", "0000:01:01.8", "01:01.0@8086", "garbage"])
def test_parse_address_entry_rejects(entry):
    with pytest.raises(ValueError, match="PCI address"):
        parse_address_entry(entry)


@pytest.mark.parametrize(
    "selector, addresses",
    [
        ({"address": ["00:04.0"]}, ["0000:00:04.0"]),
        ({"ids": ["8086:100e"]}, ["0000:01:01.0", "0000:01:02.0"]),
        ({"ids": ["8086:*"]}, ["0000:00:04.0", "0000:00:05.0", "0000:01:01.0", "0000:01:02.0"]),
        ({"ids": ["8086:10d3:1af4:1100"]}, ["0000:00:04.0"]),
        ({"device_class": ["0403"]}, ["0000:00:05.0"]),
        ({"device_class": ["02"], "ids": ["8086:100e"]}, ["0000:01:01.0", "0000:01:02.0"]),
        ({"query": "devices[?driver=='e1000']"}, ["0000:01:01.0", "0000:01:02.0"]),
        ({"query": "devices[?driver=='snd_hda_intel'].address"}, ["0000:00:05.0"]),
    ],
)
def test_resolve_matches(selector, addresses):
    [entry] = passthrough_resolve(lab_facts(), [selector])
    assert entry["errors"] == []
    assert entry["addresses"] == addresses
    assert entry["driver"] == "vfio-pci" and entry["group"] == "stub"


@pytest.mark.parametrize(
    "selector, message",
    [
        ({"address": ["00:09.0"]}, "no PCI function 0000:00:09.0"),
        ({"address": ["00:04.0@10de:1b80"]}, "is 8086:10d3, not the expected 10de:1b80"),
        ({"ids": ["10de:1b80"]}, "matches no PCI function"),
        ({"ids": ["8086:100e"], "count": 1}, "matches 2 PCI functions (0000:01:01.0, 0000:01:02.0), expected count 1"),
        ({"ids": ["nvidia"]}, "not a vendor:device id"),
        ({"query": "devices[?"}, "not valid JMESPath"),
        ({"query": "length(devices)"}, "must return a list of devices"),
        ({"driver": "pci-stub"}, "give at least one of address, ids, device_class or query"),
        ({"address": ["00:04.0"], "driver": "nvidia"}, "driver 'nvidia' is not one of"),
    ],
)
def test_resolve_errors(selector, message):
    resolved = passthrough_resolve(lab_facts(), [selector])
    errors = passthrough_errors(resolved)
    assert any(message in e for e in errors), errors
    assert errors[0].startswith("selector 1")


def test_resolve_conflicting_drivers():
    resolved = passthrough_resolve(
        lab_facts(), [{"address": ["01:01.0"]}, {"ids": ["8086:100e"], "driver": "pci-stub"}]
    )
    assert passthrough_errors(resolved) == [
        "selector 2 (ids: 8086:100e): 0000:01:01.0 is also selected by selector 1 (address: 01:01.0) "
        "with driver vfio-pci"
    ]


def test_resolve_works_without_iommu():
    [entry] = passthrough_resolve(lab_facts(enabled=False), [{"address": ["00:04.0@8086:10d3"], "count": 1}])
    assert entry["errors"] == [] and entry["addresses"] == ["0000:00:04.0"]


def test_bind_plan_with_the_iommu_off_is_planned_for_after_the_reboot():
    facts = lab_facts(enabled=False)
    selection = passthrough_resolve(
        facts, [{"address": ["00:04.0"]}, {"address": ["00:01.0"], "driver": "pci-stub", "group": "ignore"}]
    )
    plan = passthrough_bind_plan(selection, False, None, {"0000:00:01.0": ["console"]})
    assert [(b["address"], b["driver_before"], b["driver_after"], b["forced"], b["after_reboot"]) for b in plan] == [
        ("0000:00:04.0", "e1000e", "vfio-pci", [], True),
        ("0000:00:01.0", "bochs-drm", "pci-stub", ["console"], True),
    ]
    assert "after the reboot that turns the IOMMU on" in plan[0]["actions"][0]
    # a rule of the host, not a filter: the controller keeps only the value check and the report
    assert "passthrough_bind_plan" not in FilterModule().filters()


def test_bind_plan_with_the_iommu_on_is_what_vfio_bind_planned_or_did():
    selection = passthrough_resolve(lab_facts(), [{"address": ["00:04.0"]}])
    run = {
        "results": [
            {
                "devices": [
                    {
                        "address": "0000:00:04.0",
                        "role": "selected",
                        "driver_before": "e1000e",
                        "driver_after": "vfio-pci",
                        "actions": ["unbind from e1000e"],
                        "forced": ["network"],
                    },
                    {"address": "0000:00:08.0", "role": "bridge", "actions": [], "forced": []},
                ]
            },
            {"skipped": True},
        ]
    }
    selected = run["results"][0]["devices"][0]
    assert passthrough_bind_plan(selection, True, run, {}) == [{**selected, "after_reboot": False}]
    assert passthrough_bind_plan(selection, True, None, None) == []


# --------------------------------------------------------------------------------------------------- kernel args
@pytest.mark.parametrize(
    "facts, expected",
    [
        ({"units": [{"type": "intel-vtd"}], "cpu_vendor": "amd"}, "intel"),
        ({"units": [{"type": "amd-vi"}], "cpu_vendor": "intel"}, "amd"),
        ({"firmware_tables": ["DMAR"], "cpu_vendor": "amd"}, "intel"),
        ({"firmware_tables": ["IVRS"], "cpu_vendor": "intel"}, "amd"),
        ({"cpu_vendor": "intel"}, "intel"),
        ({}, None),
    ],
)
def test_iommu_vendor(facts, expected):
    assert iommu_vendor(facts) == expected


def test_kernel_args_intel_iommu_off_gets_intel_iommu_on():
    # The lab's noiommu guest: TCG's CPU says AuthenticAMD, the DMAR table says Intel VT-d.
    out = passthrough_kernel_args(lab_facts(enabled=False), "auto", False, [])
    assert out == {
        "args": ["intel_iommu=on"],
        "remove": [],
        "absent": ["intel_iommu=on"],
        "vendor": "intel",
        "error": None,
    }


def test_kernel_args_intel_already_on_adds_nothing():
    out = passthrough_kernel_args(lab_facts(), "auto", False, [])
    assert out["args"] == [] and out["absent"] == ["intel_iommu=on"]


def test_kernel_args_amd_never_gets_amd_iommu_on():
    facts = lab_facts(units=("ivhd0", "amd-vi"), tables=("IVRS",), cpu="amd")
    out = passthrough_kernel_args(facts, "auto", True, ["video=efifb:off"])
    assert out["args"] == ["iommu=pt", "video=efifb:off"]
    assert not any(a.startswith("amd_iommu") for a in out["args"] + out["absent"])


def test_kernel_args_amd_off_on_cmdline_is_removed():
    facts = lab_facts(enabled=False, units=None, tables=("IVRS",))
    facts["cmdline"] = {"amd_iommu": "off"}
    out = passthrough_kernel_args(facts, "auto")
    assert out["remove"] == ["amd_iommu=off"] and out["error"] is None


def test_kernel_args_amd_off_in_firmware_is_an_error():
    facts = lab_facts(enabled=False, units=None, tables=("IVRS",))
    facts["cmdline"] = {}
    out = passthrough_kernel_args(facts, "auto")
    assert "firmware setup" in out["error"] and out["args"] == []


@pytest.mark.parametrize("mode", ["keep", "off"])
def test_kernel_args_keep_leaves_iommu_alone(mode):
    out = passthrough_kernel_args(lab_facts(enabled=False), mode, True, [])
    assert out["args"] == ["iommu=pt"] and out["absent"] == ["iommu=pt"]


# --------------------------------------------------------------------------------------------------- boot ids
def test_boot_ids_from_current_drivers():
    selectors = [
        {"address": ["00:04.0"]},
        {"device_class": ["0403"]},
        {"address": ["01:01.0", "01:02.0"], "driver": "pci-stub"},
    ]
    facts = lab_facts()
    out = passthrough_boot_ids(facts, passthrough_resolve(facts, selectors))
    assert out["vfio_ids"] == ["8086:10d3", "8086:293e"]
    assert out["stub_ids"] == ["8086:100e"]
    assert out["softdeps"] == [
        {"name": "e1000", "pre": ["vfio-pci", "pci-stub"]},
        {"name": "e1000e", "pre": ["vfio-pci", "pci-stub"]},
        {"name": "snd_hda_intel", "pre": ["vfio-pci", "pci-stub"]},
    ]
    assert out["conflicts"] == []


def test_boot_ids_include_companions_parked_by_the_group_policy():
    facts = lab_facts()
    facts["devices"][5]["device_id"] = "100f"
    out = passthrough_boot_ids(facts, passthrough_resolve(facts, [{"address": ["01:01.0"]}]))
    assert out["vfio_ids"] == ["8086:100e"] and out["stub_ids"] == ["8086:100f"] and out["conflicts"] == []
    vfio = passthrough_boot_ids(facts, passthrough_resolve(facts, [{"address": ["01:01.0"], "group": "vfio"}]))
    assert vfio["vfio_ids"] == ["8086:100e", "8086:100f"] and vfio["stub_ids"] == []
    # fail/ignore: the companions are not the role's to park.
    alone = passthrough_boot_ids(facts, passthrough_resolve(facts, [{"address": ["01:01.0"], "group": "fail"}]))
    assert alone["vfio_ids"] == ["8086:100e"] and alone["stub_ids"] == []


def test_boot_ids_same_ids_for_vfio_and_its_stub_companion_conflict():
    # The lab's two bridge NICs are both 8086:100e: one cannot go to vfio-pci and the other to pci-stub by ids.
    facts = lab_facts()
    out = passthrough_boot_ids(facts, passthrough_resolve(facts, [{"address": ["01:01.0"]}]))
    assert len(out["conflicts"]) == 1
    assert "8086:100e is wanted by both vfio-pci and pci-stub" in out["conflicts"][0]
    assert "0000:01:01.0 on vfio-pci, 0000:01:02.0 on pci-stub" in out["conflicts"][0]


def test_boot_ids_unselected_function_with_the_same_ids_conflicts():
    facts = lab_facts()
    facts["devices"].append(dev("0000:00:0a.0", "8086", "10d3", "020000", "e1000e", 9))
    facts["groups"].append({"id": 9, "devices": ["0000:00:0a.0"], "viable": False, "blockers": []})
    out = passthrough_boot_ids(facts, passthrough_resolve(facts, [{"address": ["00:04.0"]}]))
    assert out["vfio_ids"] == ["8086:10d3"]
    assert out["conflicts"] == [
        "0000:00:0a.0 (8086:10d3, on e1000e) is not selected but has the ids vfio-pci would claim at boot: "
        "select it too, or use passthrough_boot_method: override"
    ]


def test_boot_ids_explicit_softdep_drivers_and_bound_devices():
    facts = bound_facts()
    out = passthrough_boot_ids(facts, passthrough_resolve(facts, [{"address": ["00:04.0"]}]), ["e1000e"])
    assert out == {
        "vfio_ids": ["8086:10d3"],
        "stub_ids": [],
        "softdeps": [{"name": "e1000e", "pre": ["vfio-pci"]}],
        "conflicts": [],
    }
    # Already on vfio-pci, no explicit list and no modalias match reported: no host module to derive from.
    assert passthrough_boot_ids(facts, passthrough_resolve(facts, [{"address": ["00:04.0"]}]))["softdeps"] == []


def test_boot_ids_softdeps_from_modalias_match_the_first_run():
    """A function already on vfio-pci names its host modules by modalias: the second run derives what the first
    did, and the module of a driver (xhci_pci for xhci_hcd) is used, not the driver name."""
    first = lab_facts()
    first["devices"][1].update(driver_module="e1000e", host_modules=["e1000e"])
    first["devices"].append(dev("0000:00:06.0", "1b36", "000d", "0c0330", "xhci_hcd", 5))
    first["devices"][-1].update(driver_module="xhci_pci", host_modules=["xhci_pci"])
    first["groups"].append({"id": 5, "devices": ["0000:00:06.0"], "viable": False, "blockers": []})
    selectors = [{"address": ["00:04.0", "00:06.0"]}]
    second = copy.deepcopy(first)
    for d in second["devices"][1], second["devices"][-1]:
        d.update(driver="vfio-pci", driver_module="vfio_pci")
    want = [{"name": "e1000e", "pre": ["vfio-pci"]}, {"name": "xhci_pci", "pre": ["vfio-pci"]}]
    assert passthrough_boot_ids(first, passthrough_resolve(first, selectors))["softdeps"] == want
    assert passthrough_boot_ids(second, passthrough_resolve(second, selectors))["softdeps"] == want


def test_boot_ids_softdeps_on_every_matching_host_module():
    facts = lab_facts()
    facts["devices"][1].update(driver=None, host_modules=["e1000e", "igb_uio_like", "vfio_pci", "pci_stub"])
    out = passthrough_boot_ids(facts, passthrough_resolve(facts, [{"address": ["00:04.0"]}]))
    assert [s["name"] for s in out["softdeps"]] == ["e1000e", "igb_uio_like"]


def test_restore_addresses_include_companions_on_stub():
    facts = bound_facts()
    assert passthrough_restore_addresses(facts, passthrough_resolve(facts, SAMPLE)) == [
        "0000:00:04.0",
        "0000:01:01.0",
        "0000:01:02.0",
    ]


# --------------------------------------------------------------------------------------------------- verify
def test_verify_bound_host_passes():
    facts = bound_facts()
    assert passthrough_verify(facts, passthrough_resolve(facts, SAMPLE), ["intel_iommu=on"]) == []


def test_verify_reports_every_problem():
    facts = lab_facts()
    problems = passthrough_verify(facts, passthrough_resolve(facts, SAMPLE), ["intel_iommu=on", "iommu=pt"])
    assert "/proc/cmdline lacks iommu=pt" in problems
    assert "0000:00:04.0 is on e1000e, not vfio-pci" in problems
    assert "IOMMU group 3 of 0000:00:04.0 is not viable (0000:00:04.0 on e1000e)" in problems
    assert "/dev/vfio/7 (group of 0000:01:01.0) does not exist" in problems
    assert "0000:01:02.0 (in IOMMU group 7 with 0000:01:01.0) is on e1000, not pci-stub" in problems


def test_verify_iommu_off():
    facts = lab_facts(enabled=False)
    problems = passthrough_verify(facts, passthrough_resolve(facts, SAMPLE[:1]), ["intel_iommu=on"])
    assert "the IOMMU is not enabled in the running kernel" in problems
    assert "0000:00:04.0 has no IOMMU group" in problems


def test_verify_group_vfio_policy_wants_vfio_companions():
    facts = bound_facts()
    problems = passthrough_verify(facts, passthrough_resolve(facts, [{"address": ["01:01.0"], "group": "vfio"}]))
    assert problems == ["0000:01:02.0 (in IOMMU group 7 with 0000:01:01.0) is on pci-stub, not vfio-pci"]


# --------------------------------------------------------------------------------------------------- readiness
def _by_address(rows):
    return {r["address"]: r for r in rows}


def test_readiness_bound_host():
    rows = _by_address(passthrough_readiness(bound_facts()))
    assert rows["0000:00:04.0"]["ready"] and rows["0000:00:04.0"]["reasons"] == []
    assert rows["0000:01:01.0"]["ready"]
    assert rows["0000:01:02.0"]["reasons"] == ["on pci-stub (held for a group companion)"]
    assert rows["0000:00:08.0"]["reasons"] == ["bridge (vfio-pci only drives endpoints)"]
    assert rows["0000:00:05.0"]["reasons"] == ["on host driver snd_hda_intel"]


def test_readiness_shared_group_names_the_blockers():
    rows = _by_address(passthrough_readiness(lab_facts()))
    assert rows["0000:01:01.0"]["reasons"] == [
        "group 7 shared with 0000:01:02.0 on e1000",
        "on host driver e1000",
    ]


def test_readiness_iommu_off():
    row = device_readiness(lab_facts(enabled=False), lab_facts(enabled=False)["devices"][1])
    assert row["reasons"] == ["IOMMU off", "on host driver e1000e"] and not row["ready"]


def test_readiness_vfio_without_group_file():
    facts = bound_facts()
    facts["vfio"]["group_files"] = [7]
    row = _by_address(passthrough_readiness(facts))["0000:00:04.0"]
    assert row["reasons"] == ["/dev/vfio/3 missing"]


def test_readiness_no_group_with_iommu_on():
    facts = bound_facts()
    lonely = copy.deepcopy(facts["devices"][1])
    lonely.update(address="0000:00:0b.0", iommu_group=None)
    assert "no IOMMU group" in device_readiness(facts, lonely)["reasons"]


def test_report_totals_and_unreachable_host():
    report = passthrough_report(["intel", "gone"], [bound_facts(), None], {"gone": "unreachable"})
    assert report["totals"] == {
        "hosts": 2,
        "unreachable": 1,
        "iommu_on": 1,
        "ready_devices": 2,
        "devices": 6,
        "qemu_took": 0,
        "forced": 0,
        "verdicts": {"ready": 2, "as-is": 2, "park-companions": 1, "risk": 0, "host-needs-it": 0, "no": 1},
    }
    assert report["hosts"][1] == {"host": "gone", "reachable": False, "error": "unreachable"}
    assert report["hosts"][0]["iommu_vendor"] == "intel"
    assert [g["vfio_file"] for g in report["hosts"][0]["groups"]] == [False, True, False, True]


def test_filters_are_the_controllers_part_only_and_wrap_errors():
    """The controller keeps the value check and the report; every rule about one host runs on that host."""
    filters = FilterModule().filters()
    assert set(filters) == {"passthrough_validate", "passthrough_report", "passthrough_pictures"}
    with pytest.raises(AnsibleFilterError, match="passthrough_report"):
        filters["passthrough_report"](["a"], [lab_facts()], handoff_include="some")
    with pytest.raises(KeyError):
        passthrough_verify({"enabled": True, "devices": [], "groups": []}, [{"devices": [{}]}])


def test_report_carries_qemus_answer_per_function():
    """vmm_probe results per host: taken, refused with QEMU's words, not probed (held), not asked, no QEMU."""
    facts = bound_facts()
    ready = [d["address"] for d in passthrough_readiness(facts) if d["ready"]]
    assert len(ready) == 2
    probe = {
        "changed": False,
        "qemu": {"binary": "/usr/bin/qemu-system-x86_64", "version": "7.2.22"},
        "functions": [
            {"address": ready[0], "taken": True, "error": None, "skipped": None},
            {"address": ready[1], "taken": False, "error": "group 7 is not viable", "skipped": None},
        ],
    }
    held = {"functions": [{"address": ready[0], "taken": None, "error": None, "skipped": "not probed: held"}]}
    no_qemu = {"qemu_missing": "QEMU not found", "functions": [{"address": ready[0], "taken": None}]}
    report = passthrough_report(["a", "b", "c", "d"], [facts] * 4, probes=[probe, held, no_qemu, {"skipped": True}])
    verdicts = [{d["address"]: d["vmm"] for d in h["devices"] if d["address"] in ready} for h in report["hosts"]]
    assert verdicts[0] == {ready[0]: "took it", ready[1]: "refused: group 7 is not viable"}
    assert verdicts[1] == {ready[0]: "not probed: held", ready[1]: None}
    assert verdicts[2] == {ready[0]: None, ready[1]: None}
    assert verdicts[3] == {ready[0]: None, ready[1]: None}
    assert report["hosts"][0]["qemu"] == "7.2.22" and report["hosts"][2]["qemu_missing"] == "QEMU not found"
    assert report["totals"]["qemu_took"] == 1


def test_report_carries_verdicts_and_handoff_per_host():
    facts = bound_facts()
    report = passthrough_report(["pve1.example.com"], [facts], handoff_names={"8086:10d3": "e1000e-nic"})
    [host] = report["hosts"]
    rows = {d["address"]: d for d in host["devices"]}
    assert rows["0000:01:02.0"]["verdict"] == "park-companions"
    assert rows["0000:01:02.0"]["verdict_summary"] == "needs its companions parked: 0000:01:01.0 (vfio-pci)"
    assert rows["0000:00:04.0"]["verdict"] == "ready" and rows["0000:00:04.0"]["verdict_notes"] == []
    handoff = host["handoff"]
    assert handoff["errors"] == [] and handoff["include"] == "ready"
    assert [e["address"] for e in handoff["libvirt"]["hostdevs"]] == ["0000:00:04.0", "0000:01:01.0"]
    assert handoff["proxmox"]["mappings"][0]["id"] == "e1000e-nic"
    assert handoff["proxmox"]["mappings"][0]["map"][0]["node"] == "pve1"
    candidates = passthrough_report(["a"], [facts], handoff_include="candidates")["hosts"][0]["handoff"]
    assert len(candidates["libvirt"]["hostdevs"]) == 5  # every function but the bridge
    filters = FilterModule().filters()
    with pytest.raises(AnsibleFilterError, match="handoff_include: 'some' is not one of ready, candidates"):
        filters["passthrough_report"](["a"], [facts], handoff_include="some")
    with pytest.raises(AnsibleFilterError, match=r"names\[.8086:10d3.\]: .NIC\\n. contains the control character"):
        filters["passthrough_report"](["a"], [facts], handoff_names={"8086:10d3": "NIC\n"})


def test_report_shows_the_checks_forced_per_function():
    """passthrough_force per host: the checks beside each function, by address on the host, counted in the totals;
    a value the role refuses or an address the host lacks is a warning of that host, not a failed report."""
    force = {
        "intel": {"00:01.0": ["console"], "0000:00:04.0": ["network", "storage"], "0000:00:1f.0": ["storage"]},
        "bad": {"0000:00:01.0": ["boot_vga"]},
        "legacy": ["0000:00:05.0"],
        "unreachable": {"0000:00:01.0": ["console"]},
    }
    hosts = ["intel", "bad", "legacy", "plain", "unreachable"]
    report = passthrough_report(hosts, [bound_facts()] * 4 + [None], force=force)
    intel, bad, legacy, plain, unreachable = report["hosts"]
    forced = {d["address"]: d["forced"] for d in intel["devices"] if d["forced"]}
    assert forced == {"0000:00:01.0": ["console"], "0000:00:04.0": ["network", "storage"]}
    assert intel["forced"] == {
        "0000:00:01.0": ["console"],
        "0000:00:04.0": ["network", "storage"],
        "0000:00:1f.0": ["storage"],
    }
    assert intel["warnings"] == ["passthrough_force names 0000:00:1f.0, which this host does not have"]
    assert bad["forced"] == {} and not any(d["forced"] for d in bad["devices"])
    [warning] = bad["warnings"]
    assert "'boot_vga' is not a safety check" in warning and "forces nothing on this host" in warning
    assert {d["address"]: d["forced"] for d in legacy["devices"] if d["forced"]} == {
        "0000:00:05.0": ["storage", "network", "console", "vfio-in-use"]
    }
    assert plain["forced"] == {} and plain["warnings"] == [] and not any(d["forced"] for d in plain["devices"])
    assert "forced" not in unreachable
    assert report["totals"]["forced"] == 3
    # what the summary's bind plan shows comes from the same reading of passthrough_force
    selection = passthrough_resolve(lab_facts(enabled=False), [{"address": ["00:01.0"], "group": "ignore"}])
    [bind] = passthrough_bind_plan(selection, False, None, force["intel"])
    assert bind["forced"] == intel["devices"][0]["forced"] == ["console"]
    with pytest.raises(AnsibleFilterError, match="force: expected a dict of host name -> passthrough_force"):
        FilterModule().filters()["passthrough_report"](["intel"], [bound_facts()], force=["0000:00:01.0"])
