# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""passthrough_validate: the role's values checked with the modules' rules (issue 18, part C)."""

from __future__ import annotations

import pytest
from ansible_collections.hostdev.vfio.plugins.filter.passthrough import FilterModule
from ansible_collections.hostdev.vfio.plugins.module_utils import _bind
from ansible_collections.hostdev.vfio.plugins.module_utils._bind import Request
from ansible_collections.hostdev.vfio.plugins.module_utils._passthrough import (
    parse_address_entry,
    passthrough_resolve,
    passthrough_validate,
)
from hypothesis import given, settings
from hypothesis import strategies as st

GOOD = [
    {"name": "GPU", "ids": ["10de:*"], "device_class": ["03"], "group": "stub", "count": 1},
    {"address": ["0000:01:00.1@10de:10f0", "01:00.0=10de:1b80", "02:00.0"], "driver": "pci-stub"},
    {"query": "devices[?vendor_id=='8086']"},
]


def test_good_values_pass():
    assert (
        passthrough_validate(
            GOOD,
            kernel_args=["iommu=pt", "vfio-pci.ids=10de:1b80,10de:10f0", "quiet"],
            softdep_drivers=["nouveau", "snd-hda-intel"],
            vfio_group_owner="libvirt-qemu",
            vfio_group_group="kvm",
            vfio_group_mode="0660",
            force={"0000:03:00.0": ["console", "network"], "01:00.0": ["storage"]},
        )
        == []
    )
    assert "passthrough_validate" in FilterModule().filters()


@pytest.mark.parametrize(
    ("devices", "extra", "expected"),
    [
        ([{"address": ["01:00.0\n"]}], {}, "passthrough_devices[0].address[0]: '01:00.0\\n' contains the control"),
        ([{"address": ["01:00.0@10de:1b80\n"]}], {}, "passthrough_devices[0].address[0]:"),
        ([{"address": ["01:00.0\x00"]}], {}, "control character '\\x00'"),
        ([{"address": ["0" * 100_000]}], {}, "longer than 64"),
        ([{"ids": ["10de:1b80\n"]}], {}, "passthrough_devices[0].ids[0]:"),
        ([{"ids": ["10de:**"]}], {}, "is not a PCI id"),
        ([{"device_class": ["03\r"]}], {}, "passthrough_devices[0].device_class[0]:"),
        ([{"ids": ["10de:*"], "driver": "vfio-pci\n"}], {}, "passthrough_devices[0].driver: 'vfio-pci\\n'"),
        ([{"ids": ["10de:*"], "driver": "nouveau"}], {}, "is not one of vfio-pci, pci-stub"),
        ([{"ids": ["10de:*"], "group": "stub\n"}], {}, "passthrough_devices[0].group:"),
        ([{"query": "devices[?vendor_id=='10de']\x1b"}], {}, "passthrough_devices[0].query:"),
        ([{"query": "[" * 3000 + "devices" + "]" * 3000}], {}, "longer than 2048"),
        ([{"query": "(" * 40 + "devices" + ")" * 40}], {}, "nests deeper than 32"),
        ([{"name": "GPU\nsecond line", "ids": ["10de:*"]}], {}, "passthrough_devices[0].name:"),
        ([{"ids": ["10de:*"], "count": -1}], {}, "passthrough_devices[0].count:"),
        (["01:00.0"], {}, "passthrough_devices[0]: expected a selector"),
        ([], {"kernel_args": ["iommu=pt;reboot"]}, "passthrough_kernel_args[0]:"),
        ([], {"kernel_args": ["quiet\n"]}, "passthrough_kernel_args[0]:"),
        ([], {"softdep_drivers": ["nouveau\ninstall x /bin/sh"]}, "passthrough_softdep_drivers[0]:"),
        ([], {"vfio_group_owner": "kvm\n"}, "passthrough_vfio_group_owner:"),
        ([], {"vfio_group_group": 'kvm", MODE="0666'}, "passthrough_vfio_group_group:"),
        ([], {"vfio_group_mode": "0666"}, "passthrough_vfio_group_mode: '0666' is not four octal digits"),
        ([], {"vfio_group_mode": "0660\n"}, "passthrough_vfio_group_mode:"),
        ([], {"force": {"03:00.0": ["boot_vga"]}}, "passthrough_force['03:00.0'][0]: 'boot_vga' is not a safety check"),
        ([], {"force": {"03:00.0\n": ["console"]}}, "passthrough_force key: '03:00.0\\n' contains the control"),
        ([], {"force": {"03:00.0": "console"}}, "expected a non-empty list of check names"),
        ([], {"force": ["03:00.0"]}, "passthrough_force: expected a dict of address -> list of check names"),
    ],
)
def test_hostile_values_are_named(devices, extra, expected):
    errors = passthrough_validate(devices, **extra)
    assert len(errors) == 1, errors
    assert expected in errors[0]
    assert len(errors[0]) < 600


def test_every_problem_is_reported():
    errors = passthrough_validate(
        [{"address": ["01:00.0\n"], "ids": ["x"]}, {"query": "a\n"}], kernel_args=["a b"], vfio_group_mode="0777"
    )
    assert [e.split(":", maxsplit=1)[0] for e in errors] == [
        "passthrough_devices[0].address[0]",
        "passthrough_devices[0].ids[0]",
        "passthrough_devices[1].query",
        "passthrough_kernel_args[0]",
        "passthrough_vfio_group_mode",
    ]


@pytest.mark.parametrize("entry", ["01:01.0\n", "01:01.0@8086:100e\n", "\n01:01.0", "01:01.0\t@8086:100e"])
def test_resolve_refuses_an_address_with_a_control_character(entry):
    with pytest.raises(ValueError, match="control character"):
        parse_address_entry(entry)
    facts = {"devices": [{"address": "0000:01:01.0", "vendor_id": "8086", "device_id": "100e", "class_code": "020000"}]}
    resolved = passthrough_resolve(facts, [{"address": [entry]}])
    assert resolved[0]["addresses"] == []
    assert "control character" in resolved[0]["errors"][0]


def test_resolve_refuses_a_deep_query_cleanly():
    resolved = passthrough_resolve({"devices": []}, [{"query": "! " * 1000 + "devices"}])
    assert resolved[0]["addresses"] == []
    assert "nests too deeply" in resolved[0]["errors"][0]


SPLICE = st.sampled_from(["\n", "\r", "\x00", "\t", '"', "\x1b", "\u2028", "\x85", ";", " "])


@st.composite
def spliced(draw, valid):
    value = draw(valid)
    pos = draw(st.integers(0, len(value)))
    return value[:pos] + draw(SPLICE) + value[pos:]


ADDRESSES = st.sampled_from(["01:00.0", "0000:01:00.0", "01:00.0@10de:1b80", "0000:00:1f.6@8086:15BC"])
DRIVERS = st.sampled_from(["vfio-pci", "pci-stub"])
IDS = st.sampled_from(["10de:1b80", "10DE:1B80", "8086:10d3:1af4:1100"])


@settings(max_examples=200, deadline=None)
@given(
    address=st.one_of(ADDRESSES, spliced(ADDRESSES), st.text(max_size=24)),
    ids=st.one_of(IDS, spliced(IDS), st.text(max_size=20)),
    driver=st.one_of(DRIVERS, spliced(DRIVERS), st.text(max_size=12)),
)
def test_role_and_module_accept_exactly_the_same_values(address, ids, driver):
    """The role refuses what vfio_bind refuses and takes what it takes (module syntax: '@' separator, exact ids)."""
    role = passthrough_validate([{"address": [address], "ids": [ids], "driver": driver}])
    module = _bind.validate(Request(address=[address], ids=[ids], driver=driver))
    role_fields = sorted(e.split(":", maxsplit=1)[0].rsplit(".", 1)[-1].split("[")[0] for e in role)
    module_fields = sorted(e.split(":", maxsplit=1)[0].split("[")[0] for e in module)
    if driver in _bind.HOST_ALIASES or (driver not in ("vfio-pci", "pci-stub") and "driver" not in module_fields):
        role_fields = [f for f in role_fields if f != "driver"]  # the role only offers vfio-pci and pci-stub
    if " " in address.strip(" ") or "=" in address:  # separators only the role accepts
        role_fields = [f for f in role_fields if f != "address"]
        module_fields = [f for f in module_fields if f != "address"]
    assert role_fields == module_fields, (role, module)
