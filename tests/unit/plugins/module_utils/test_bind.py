# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)

from __future__ import annotations

import json

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils import _bind
from ansible_collections.hostdev.vfio.plugins.module_utils._bind import BindError, Request
from ansible_collections.hostdev.vfio.plugins.module_utils._pci import assess_group, read_snapshot
from ansible_collections.hostdev.vfio.plugins.module_utils._safety import protected
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import (
    LAB_LOADABLE,
    FakeKernel,
    lab_host,
)
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import gpu_host

E1000E = "0000:00:04.0"
NIC1, NIC2, BRIDGE = "0000:01:01.0", "0000:01:02.0", "0000:00:08.0"


@pytest.fixture
def lab(tmp_path):
    host = lab_host(tmp_path / "host")
    kernel = FakeKernel(host, loadable=LAB_LOADABLE)
    return host, kernel, tmp_path


def plan_for(host, kernel, tmp_path, ssh=None, **kw):
    request = Request(**kw)
    snap = read_snapshot(str(host.sys))
    selected = _bind.select(snap, request)
    safety = protected(snap, str(host.sys), str(host.proc), str(host.dev), ssh_connection=ssh)
    return _bind.build_plan(
        snap,
        request,
        selected,
        kernel,
        safety,
        rules_path=str(tmp_path / "rules.d/05-hostdev-vfio.rules"),
        state_dir=str(tmp_path / "state"),
    )


def run(host, kernel, tmp_path, **kw):
    plan = plan_for(host, kernel, tmp_path, **kw)
    return plan, _bind.apply(plan, kernel)


def drivers(host, *addresses):
    snap = read_snapshot(str(host.sys))
    return [snap.devices[a].driver for a in addresses]


# -- request parsing and selection ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spec, expected",
    [
        ("0000:01:00.0", ("0000:01:00.0", None)),
        ("01:00.0", ("0000:01:00.0", None)),
        ("01:00.0@10DE:1B80", ("0000:01:00.0", "10de:1b80")),
        (" 0000:00:1f.6@8086:15bc ", ("0000:00:1f.6", "8086:15bc")),
    ],
)
def test_parse_address_spec(spec, expected):
    assert _bind.parse_address_spec(spec) == expected


@pytest.mark.parametrize("spec", ["01:00", "01:00.0@10de", "01:00.0@10de:1b80:1458:3702", "zz:00.0", "01:00.0@"])
def test_parse_address_spec_rejects(spec):
    with pytest.raises(ValueError):
        _bind.parse_address_spec(spec)


def test_validate_names_every_bad_value():
    errors = _bind.validate(
        Request(address=["01:00"], ids=["10de"], device_class=["VGA"], driver="vfio pci", group="x", force=["y"])
    )
    text = " | ".join(errors)
    for bad in ("'01:00'", "'10de'", "'VGA'", "'vfio pci'", "'x'", "'y'"):
        assert bad in text
    assert _bind.validate(Request(address=["01:00.0@10de:1b80"], ids=["10de:1b80:1458:3702"], driver="host")) == []


def test_select_union_of_address_ids_class(tmp_path):
    host = gpu_host(tmp_path)
    snap = read_snapshot(str(host.sys))
    req = Request(address=["00:17.0"], ids=["10de:10f0"], device_class=["0c03"])
    assert _bind.select(snap, req) == ["0000:00:17.0", "0000:00:14.0", "0000:01:00.1"]
    # subsystem ids narrow the match
    assert _bind.select(snap, Request(ids=["10de:1b80:1458:3702"])) == ["0000:01:00.0"]
    assert _bind.select(snap, Request(ids=["10de:1b80:1458:0000"])) == []


def test_select_address_with_wrong_ids_fails(tmp_path):
    host = gpu_host(tmp_path)
    snap = read_snapshot(str(host.sys))
    with pytest.raises(BindError, match=r"0000:01:00.0 is 10de:1b80, not the expected 10de:1b81"):
        _bind.select(snap, Request(address=["01:00.0@10de:1b81"]))
    with pytest.raises(BindError, match=r"0000:09:00\.0: no such PCI device"):
        _bind.select(snap, Request(address=["09:00.0"]))


def test_select_query_addresses_and_dicts(tmp_path):
    host = gpu_host(tmp_path)
    snap = read_snapshot(str(host.sys))
    facts = {
        "devices": [{"address": "0000:01:00.0", "vendor_id": "10de"}, {"address": "0000:00:02.0", "vendor_id": "8086"}]
    }
    assert _bind.select(snap, Request(query="devices[?vendor_id=='10de']"), lambda: facts) == ["0000:01:00.0"]
    assert _bind.select(snap, Request(query="devices[?vendor_id=='10de'].address"), lambda: facts) == ["0000:01:00.0"]
    with pytest.raises(BindError, match="must return a list"):
        _bind.select(snap, Request(query="length(devices)"), lambda: facts)
    with pytest.raises(BindError, match="not valid JMESPath"):
        _bind.select(snap, Request(query="devices[?"), lambda: facts)


# -- planning ----------------------------------------------------------------------------------------------


def test_single_function_plan_changes_nothing(lab):
    host, kernel, tmp = lab
    plan = plan_for(host, kernel, tmp, address=["00:04.0"])
    assert plan.changed and kernel.log == []
    (dp,) = plan.devices
    assert (dp.role, dp.driver_before, dp.driver_after) == ("selected", "e1000e", "vfio-pci")
    assert dp.actions == [
        "set driver_override to vfio-pci",
        "unbind from e1000e",
        "drivers_probe (bind to vfio-pci)",
        "record original driver e1000e",
    ]
    assert plan.modules == [("vfio-pci", "vfio-pci")]
    assert drivers(host, E1000E) == ["e1000e"]


def test_group_fail_names_companion(lab):
    host, kernel, tmp = lab
    with pytest.raises(BindError) as exc:
        plan_for(host, kernel, tmp, address=[NIC1])
    assert "IOMMU group 8 would not be viable: 0000:01:02.0 (e1000)" in exc.value.msg
    roles = {d["address"]: d["role"] for d in exc.value.devices}
    assert roles == {BRIDGE: "bridge", NIC1: "selected", NIC2: "companion"}
    assert exc.value.groups[0]["viable"] is False
    assert kernel.log == []


@pytest.mark.parametrize(
    "policy, nic2_after, viable",
    [("stub", "pci-stub", True), ("vfio", "vfio-pci", True), ("ignore", "e1000", False)],
)
def test_group_policies(lab, policy, nic2_after, viable):
    host, kernel, tmp = lab
    plan, results = run(host, kernel, tmp, address=[NIC1], group=policy)
    assert drivers(host, BRIDGE, NIC1, NIC2) == [None, "vfio-pci", nic2_after]
    snap = read_snapshot(str(host.sys))
    assert assess_group(snap, 8)[0] is viable
    assert _bind.group_results(snap, plan.groups, current=True)[0]["viable"] is viable
    by = {r["address"]: r for r in results}
    assert by[BRIDGE]["actions"] == [] and by[BRIDGE]["role"] == "bridge"
    assert by[NIC2]["driver_after"] == nic2_after
    # the bridge is never written to
    assert not [e for e in kernel.log if len(e) > 1 and e[1] == BRIDGE]


def test_group_already_viable_companion_untouched(lab):
    host, kernel, tmp = lab
    kernel.load_module("pci-stub")
    host.bind(NIC2, "pci-stub")
    plan = plan_for(host, kernel, tmp, address=[NIC1])  # group=fail passes: the companion keeps it viable
    comp = next(d for d in plan.devices if d.address == NIC2)
    assert comp.actions == [] and comp.role == "companion"


def test_group_vfio_moves_stub_companion_to_vfio(lab):
    host, kernel, tmp = lab
    run(host, kernel, tmp, address=[NIC1], group="stub")
    plan, _res = run(host, kernel, tmp, address=[NIC1], group="vfio")
    assert [(d.address, d.role, d.actions[-1:]) for d in plan.devices] == [
        (NIC1, "selected", []),
        (BRIDGE, "bridge", []),
        (NIC2, "companion", ["drivers_probe (bind to vfio-pci)"]),
    ]
    assert drivers(host, NIC1, NIC2) == ["vfio-pci", "vfio-pci"]
    # group: stub accepts a companion already on vfio-pci
    assert not plan_for(host, kernel, tmp, address=[NIC1], group="stub").changed


def test_devices_change_in_the_order_given(lab):
    host, kernel, tmp = lab
    snap = read_snapshot(str(host.sys))
    assert _bind.select(snap, Request(address=[NIC1, E1000E], ids=["8086:100e"])) == [NIC1, E1000E, NIC2]
    run(host, kernel, tmp, address=[NIC2, E1000E], driver="pci-stub")
    assert [e[1] for e in kernel.writes() if e[0] == "probe"] == [NIC2, E1000E]


def test_vfio_refuses_bridge_and_groupless(tmp_path):
    host = lab_host(tmp_path / "h")
    host.add_device("0000:00:09.0", "8086:10d3", "020000", driver="e1000e")  # no IOMMU group
    kernel = FakeKernel(host, loadable=LAB_LOADABLE)
    with pytest.raises(BindError) as exc:
        plan_for(host, kernel, tmp_path, address=["00:08.0", "00:09.0"], group="ignore")
    assert "0000:00:08.0: vfio-pci cannot take it: vfio-pci only drives normal (type 0) functions" in exc.value.msg
    assert "0000:00:09.0: vfio-pci cannot take it: the function has no IOMMU group" in exc.value.msg
    # pci-stub has no such requirement
    plan = plan_for(host, kernel, tmp_path, address=["00:09.0"], driver="pci-stub")
    assert plan.devices[0].driver_after == "pci-stub"


def test_safety_refusal_names_device_check_and_reason(lab):
    host, kernel, tmp = lab
    with pytest.raises(BindError) as exc:
        plan_for(host, kernel, tmp, address=["00:03.0", "00:02.0", "00:01.0"], ssh="10.0.2.2 40000 10.0.2.15 22")
    msg = exc.value.msg
    assert (
        "0000:00:03.0 backs / (/dev/vda1 mounted there) - refusing (storage check); to override, name the check in "
        "force: {'0000:00:03.0': ['storage']}" in msg
    )
    assert "0000:00:02.0 is NIC eth0, which carries the default route - refusing (network check)" in msg
    assert "0000:00:01.0 is the boot VGA device (boot_vga=1) - refusing (console check)" in msg
    assert kernel.log == []


def test_force_applies_only_to_listed_devices(lab):
    host, kernel, tmp = lab
    with pytest.raises(BindError) as exc:
        plan_for(host, kernel, tmp, address=["00:03.0", "00:02.0"], force=["00:03.0"])
    assert "0000:00:02.0 is NIC eth0" in exc.value.msg
    assert "0000:00:03.0 backs /" not in exc.value.msg
    plan = plan_for(host, kernel, tmp, address=["00:03.0"], force=["0000:00:03.0"])
    assert any("going ahead because force names the storage check for it" in w for w in plan.warnings)
    assert plan.devices[0].result()["forced"] == ["storage"]


def test_force_is_per_check(lab):
    host, kernel, tmp = lab
    ssh = "10.0.2.2 40000 10.0.2.15 22"
    # the boot VGA device: forcing storage does not override console
    with pytest.raises(BindError) as exc:
        plan_for(host, kernel, tmp, address=["00:01.0"], force={"00:01.0": ["storage"]})
    assert "refusing (console check)" in exc.value.msg
    plan = plan_for(host, kernel, tmp, address=["00:01.0"], force={"0000:00:01.0": ["console"]})
    assert plan.devices[0].forced == ["console"]
    assert plan.warnings == [
        "0000:00:01.0 is the boot VGA device (boot_vga=1) (console check) - going ahead because force names the "
        "console check for it"
    ]
    # a NIC protected by network: forcing console for it is not enough, network is
    with pytest.raises(BindError, match=r"refusing \(network check\)"):
        plan_for(host, kernel, tmp, ssh=ssh, address=["00:02.0"], force={"00:02.0": ["console"]})
    plan = plan_for(host, kernel, tmp, ssh=ssh, address=["00:02.0"], force={"00:02.0": ["network", "console"]})
    assert [d.result()["forced"] for d in plan.devices if d.address == "0000:00:02.0"] == [["network"]]


@pytest.mark.parametrize(
    ("force", "message"),
    [
        ({"00:01.0": ["boot_vga"]}, "'boot_vga' is not a safety check; the checks are storage, network, console"),
        ({"00:01.0": "console"}, "expected a non-empty list of check names"),
        ({"00:01.0": []}, "expected a non-empty list of check names"),
        ({"00:01.0\n": ["console"]}, "control character"),
        ({"00:01.0": ["console\n"]}, "control character"),
        ("00:01.0", "expected a dict of address -> list of check names"),
    ],
)
def test_force_is_validated(force, message):
    errors = _bind.validate(Request(address=["00:01.0"], force=force))
    assert len(errors) == 1 and message in errors[0]


def test_force_list_form_means_every_check():
    from ansible_collections.hostdev.vfio.plugins.module_utils import _validate

    checks = ("storage", "network", "console", "vfio-in-use")
    assert _validate.force_spec("force", ["00:01.0"], checks) == ({"0000:00:01.0": list(checks)}, True)
    assert _validate.force_spec("force", {"00:01.0": ["console"]}, checks) == ({"0000:00:01.0": ["console"]}, False)
    assert _validate.force_spec("force", [], checks) == ({}, False)


def test_companion_is_safety_checked(lab):
    host, kernel, tmp = lab
    # put the mgmt NIC's interface on a companion: eth1 on 01:02.0 carries the default route
    from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import add_netdev, set_routes

    add_netdev(host, "eth1", NIC2)
    set_routes(host, [("eth1", "0.0.0.0", "0.0.0.0", "192.0.2.1")])
    with pytest.raises(BindError, match=r"0000:01:02.0 is NIC eth1, which carries the default route - refusing"):
        plan_for(host, kernel, tmp, address=[NIC1], group="stub")


def test_open_vfio_group_refused(lab):
    host, kernel, tmp = lab
    run(host, kernel, tmp, address=[NIC1], group="vfio")
    from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakekernel import add_open_fd

    add_open_fd(host, 4242, "/dev/vfio/8")
    with pytest.raises(BindError, match=r"/dev/vfio/8 is open by process 4242 \(qemu-system-x86\).*vfio-in-use check"):
        plan_for(host, kernel, tmp, address=[NIC1, NIC2], driver="host")


# -- applying ------------------------------------------------------------------------------------------------


def test_apply_single_then_idempotent(lab):
    host, kernel, tmp = lab
    _plan, results = run(host, kernel, tmp, address=["00:04.0@8086:10d3"])
    assert drivers(host, E1000E) == ["vfio-pci"]
    assert (host.dev / "vfio/4").exists()
    assert results[0]["driver_after"] == "vfio-pci"
    assert kernel.log[0] == ("modprobe", "vfio-pci")
    assert kernel.writes() == [
        ("override", E1000E, "vfio-pci"),
        ("unbind", E1000E, "e1000e"),
        ("probe", E1000E),
    ]
    state = json.loads((tmp / "state/bind-state.json").read_text())
    assert state["devices"][E1000E] == {"driver": "e1000e", "module": None, "ids": "8086:10d3"}
    kernel.log.clear()
    again = plan_for(host, kernel, tmp, address=["00:04.0"])
    assert not again.changed and again.devices[0].actions == []
    _bind.apply(again, kernel)
    assert kernel.log == []


def test_device_on_driver_without_override_is_not_touched(lab):
    host, kernel, tmp = lab
    kernel.load_module("vfio-pci")
    host.bind(E1000E, "vfio-pci")  # e.g. bound by vfio-pci.ids at boot
    plan = plan_for(host, kernel, tmp, address=[E1000E])
    assert not plan.changed


def test_module_load_failure_changes_nothing(lab):
    host, kernel, tmp = lab
    kernel.fail_load.add("vfio-pci")
    plan = plan_for(host, kernel, tmp, address=[E1000E])
    with pytest.raises(BindError, match="modprobe vfio-pci failed: modprobe: FATAL: Module vfio-pci not found"):
        _bind.apply(plan, kernel)
    assert kernel.writes() == []
    assert drivers(host, E1000E) == ["e1000e"]


def test_refusal_mid_group_rolls_back_everything(lab):
    host, kernel, tmp = lab
    kernel.refuse.add((NIC2, "vfio-pci"))  # the probe write succeeds, but the driver does not bind
    plan = plan_for(host, kernel, tmp, address=[NIC1], group="vfio")
    with pytest.raises(BindError) as exc:
        _bind.apply(plan, kernel)
    msg = exc.value.msg
    assert "0000:01:02.0: drivers_probe was accepted but the device is on no driver, not vfio-pci" in msg
    assert "rolled back 0000:01:02.0, 0000:01:01.0" in msg
    assert [r["restored"] for r in exc.value.rollback] == [True, True]
    assert drivers(host, BRIDGE, NIC1, NIC2) == [None, "e1000", "e1000"]
    snap = read_snapshot(str(host.sys))
    assert [snap.devices[a].driver_override for a in (NIC1, NIC2)] == [None, None]
    assert not (host.dev / "vfio/8").exists()
    assert not (tmp / "state/bind-state.json").exists()
    assert {d["address"]: d["driver_after"] for d in exc.value.devices}[NIC1] == "e1000"


def test_rollback_restores_previous_override_and_unbound_state(lab):
    host, kernel, tmp = lab
    kernel.load_module("pci-stub")
    (host.device_path(NIC2) / "driver_override").write_text("something\n")
    host.bind(NIC2, None)  # unbound with a stale override: stays unbound after rollback
    kernel.refuse.add((NIC1, "pci-stub"))
    plan = plan_for(host, kernel, tmp, address=[NIC1, NIC2], driver="pci-stub")
    with pytest.raises(BindError):
        _bind.apply(plan, kernel)
    snap = read_snapshot(str(host.sys))
    assert snap.devices[NIC2].driver is None and snap.devices[NIC2].driver_override == "something"
    assert snap.devices[NIC1].driver == "e1000" and snap.devices[NIC1].driver_override is None


def test_rollback_reports_what_it_could_not_restore(lab):
    host, kernel, tmp = lab
    kernel.refuse.add((NIC2, "vfio-pci"))
    plan = plan_for(host, kernel, tmp, address=[NIC1], group="vfio")
    kernel.refuse.add((NIC1, "e1000"))  # e1000 will not take NIC1 back
    with pytest.raises(BindError) as exc:
        _bind.apply(plan, kernel)
    assert "COULD NOT roll back 0000:01:01.0 (ended on no driver) - fix by hand" in exc.value.msg


def test_group_stub_then_host_restores_both(lab):
    host, kernel, tmp = lab
    run(host, kernel, tmp, address=[NIC1], group="stub")
    assert drivers(host, NIC1, NIC2) == ["vfio-pci", "pci-stub"]
    state = json.loads((tmp / "state/bind-state.json").read_text())["devices"]
    assert set(state) == {NIC1, NIC2}
    _plan, results = run(host, kernel, tmp, ids=["8086:100e"], driver="host")
    assert drivers(host, NIC1, NIC2) == ["e1000", "e1000"]
    assert {r["address"]: r["driver_after"] for r in results} == {NIC1: "e1000", NIC2: "e1000"}
    assert json.loads((tmp / "state/bind-state.json").read_text())["devices"] == {}
    snap = read_snapshot(str(host.sys))
    assert [snap.devices[a].driver_override for a in (NIC1, NIC2)] == [None, None]
    assert not plan_for(host, kernel, tmp, ids=["8086:100e"], driver="host").changed


def test_host_loads_recorded_module(lab):
    host, kernel, tmp = lab
    kernel.register("xhci_hcd", module="xhci_pci")
    host.add_device("0000:00:06.0", "1b36:000d", "0c0330", driver="xhci_hcd", group=6)
    kernel.claims["xhci_hcd"] = {"1b36:000d"}
    run(host, kernel, tmp, address=["00:06.0"])
    state = json.loads((tmp / "state/bind-state.json").read_text())["devices"]["0000:00:06.0"]
    assert state == {"driver": "xhci_hcd", "module": "xhci_pci", "ids": "1b36:000d"}
    # the host driver's module gets unloaded meanwhile
    import shutil

    shutil.rmtree(host.sys / "bus/pci/drivers/xhci_hcd")
    kernel.loadable.add("xhci_pci")
    plan = plan_for(host, kernel, tmp, address=["00:06.0"], driver="default")
    assert plan.modules == [("xhci_pci", "xhci_hcd")]
    _bind.apply(plan, kernel)
    assert drivers(host, "0000:00:06.0") == ["xhci_hcd"]


def test_host_without_record_takes_kernel_choice(lab):
    host, kernel, tmp = lab
    kernel.load_module("vfio-pci")
    (host.device_path(E1000E) / "driver_override").write_text("vfio-pci\n")
    host.bind(E1000E, "vfio-pci")
    plan, results = run(host, kernel, tmp, address=[E1000E], driver="host")
    assert plan.devices[0].actions == [
        "clear driver_override",
        "unbind from vfio-pci",
        "drivers_probe (kernel's choice)",
    ]
    assert results[0]["driver_after"] == "e1000e"


def test_host_fails_and_rolls_back_when_still_on_vfio(lab):
    host, kernel, tmp = lab
    run(host, kernel, tmp, address=[E1000E])
    kernel.refuse.add((E1000E, "e1000e"))
    with pytest.raises(BindError, match=r"on no driver, not e1000e.*rolled back 0000:00:04\.0"):
        run(host, kernel, tmp, address=[E1000E], driver="host")
    assert drivers(host, E1000E) == ["vfio-pci"]


# -- persistence ---------------------------------------------------------------------------------------------


def test_persistent_rule_added_kept_and_removed(lab):
    host, kernel, tmp = lab
    rules = tmp / "rules.d/05-hostdev-vfio.rules"
    rules.parent.mkdir()
    rules.write_text('# my own comment\nSUBSYSTEM=="net", ACTION=="add", NAME="keepme"\n')
    plan, _res = run(host, kernel, tmp, address=[E1000E], persistent=True)
    assert plan.rules_changed
    text = rules.read_text()
    assert text.startswith('# my own comment\nSUBSYSTEM=="net", ACTION=="add", NAME="keepme"\n')
    assert (
        'ACTION=="add", SUBSYSTEM=="pci", KERNEL=="0000:00:04.0", ATTR{vendor}=="0x8086", ATTR{device}=="0x10d3", '
        'ATTR{driver_override}="vfio-pci", RUN{builtin}+="kmod load vfio-pci", '
        "RUN+=\"/bin/sh -c 'echo 0000:00:04.0 > /sys/bus/pci/drivers_probe'\"\n"
    ) in text
    assert oct(rules.stat().st_mode & 0o777) == "0o644"
    assert not plan_for(host, kernel, tmp, address=[E1000E], persistent=True).changed
    # persistence missing but driver in place: only the rule is added
    rules.write_text("# my own comment\n")
    plan = plan_for(host, kernel, tmp, address=[E1000E], persistent=True)
    assert plan.devices[0].actions == ["add udev rule"] and not plan.devices[0].moves
    _bind.apply(plan, kernel)
    plan, _res = run(host, kernel, tmp, address=[E1000E], driver="host")
    assert "remove udev rule" in plan.devices[0].actions
    assert rules.read_text() == "# my own comment\n"


def test_rules_file_removed_when_only_header_left(lab):
    host, kernel, tmp = lab
    rules = tmp / "rules.d/05-hostdev-vfio.rules"
    run(host, kernel, tmp, address=[E1000E], persistent=True)
    assert rules.read_text().startswith(_bind.RULES_HEADER)
    run(host, kernel, tmp, address=[E1000E], driver="host")
    assert not rules.exists()


@pytest.mark.parametrize(
    ("address", "ids", "driver", "what"),
    [
        ("0000:00:04.0", ("8086", "10d3"), 'x", RUN+="/bin/sh', "driver"),
        ("0000:00:04.0", ("8086", "10d3"), "vfio-pci\n", "driver"),
        ("0000:00:04.0\n", ("8086", "10d3"), "vfio-pci", "address"),
        ("0000:00:04.0", ("8086\n", "10d3"), "vfio-pci", "vendor:device"),
        ("00:04.0", ("8086", "10d3"), "vfio-pci", "canonical"),
    ],
)
def test_rule_values_are_validated(address, ids, driver, what):
    with pytest.raises(BindError, match=f"refusing to write a udev rule: .*{what}"):
        _bind.render_rule(address, *ids, driver)


def test_update_rules_keeps_unrelated_bytes_without_final_newline():
    text = "# a\n\nFOO  bar"
    line = _bind.render_rule("0000:00:04.0", "8086", "10d3", "vfio-pci")
    out = _bind.update_rules(text, {"0000:00:04.0": line}, set())
    assert out == "# a\n\nFOO  bar\n" + line
    assert _bind.update_rules(out, {}, {"0000:00:04.0"}) == "# a\n\nFOO  bar\n"


def test_diff_lines(lab):
    host, kernel, tmp = lab
    plan = plan_for(host, kernel, tmp, address=[NIC1], group="stub", persistent=True)
    d = _bind.diff(plan)
    assert d["before"] == (
        "0000:01:01.0: driver=e1000 driver_override=none udev_rule=no\n"
        "0000:01:02.0: driver=e1000 driver_override=none udev_rule=no\n"
    )
    assert d["after"] == (
        "0000:01:01.0: driver=vfio-pci driver_override=vfio-pci udev_rule=vfio-pci\n"
        "0000:01:02.0: driver=pci-stub driver_override=pci-stub udev_rule=pci-stub\n"
    )


def test_persistent_rules_cover_parked_companions(lab):
    # The companion must come back on pci-stub after a reboot too, or the group is not viable.
    host, kernel, tmp = lab
    run(host, kernel, tmp, address=[NIC1], group="stub", persistent=True)
    rules = _bind.parse_rules((tmp / "rules.d/05-hostdev-vfio.rules").read_text())
    assert {a: d for a, (_line, d) in rules.items()} == {NIC1: "vfio-pci", NIC2: "pci-stub"}
    # Idempotent, also for a companion that already sits on pci-stub (no target, rule kept).
    assert not plan_for(host, kernel, tmp, address=[NIC1], group="stub", persistent=True).changed


def test_no_rule_for_companions_left_alone(lab):
    host, kernel, tmp = lab
    run(host, kernel, tmp, address=[NIC1], group="ignore", persistent=True)
    rules = _bind.parse_rules((tmp / "rules.d/05-hostdev-vfio.rules").read_text())
    assert list(rules) == [NIC1]


def test_bad_state_file_is_a_clear_error(lab):
    host, kernel, tmp = lab
    (tmp / "state").mkdir()
    (tmp / "state/bind-state.json").write_text("{not json")
    with pytest.raises(BindError, match=r"bind-state.json is not valid JSON .*fix or remove it"):
        plan_for(host, kernel, tmp, address=[E1000E])
