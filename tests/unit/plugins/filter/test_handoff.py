# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The hand-off filters are _handoff's front ends: registered by name, arguments passed on, errors as filter errors.
The formats themselves are tested against their consumers' schemas in module_utils/test_handoff.py."""

from __future__ import annotations

import json

import pytest
from ansible.errors import AnsibleFilterError
from ansible_collections.hostdev.vfio.plugins.filter.handoff import FilterModule

from .test_passthrough import bound_facts

FILTERS = FilterModule().filters()


def test_filters_are_registered():
    assert set(FILTERS) == {
        "handoff_verdicts",
        "handoff_nova",
        "handoff_proxmox",
        "handoff_kubevirt",
        "handoff_libvirt",
    }


def test_filters_pass_their_arguments_on():
    facts = bound_facts()
    assert [v["verdict"] for v in FILTERS["handoff_verdicts"](facts)] == [
        "as-is",
        "ready",
        "as-is",
        "no",
        "ready",
        "park-companions",
    ]
    nova = FILTERS["handoff_nova"](facts, addresses=["00:04.0"], names={"8086:10d3": "nic"}, numa_policy="required")
    assert [json.loads(a) for a in nova["alias"]] == [
        {"name": "nic", "vendor_id": "8086", "product_id": "10d3", "device_type": "type-PCI", "numa_policy": "required"}
    ]
    assert FILTERS["handoff_proxmox"](facts, "node1")["mappings"][1]["map"][0]["path"] == "0000:01:01.0"
    kubevirt = FILTERS["handoff_kubevirt"](facts, "candidates", resource_prefix="example.com", external=True)
    assert {e["resourceName"] for e in kubevirt["pciHostDevices"]} == {
        "example.com/pci-1234-1111",
        "example.com/pci-8086-10d3",
        "example.com/pci-8086-293e",
        "example.com/pci-8086-100e",
    }
    assert all(e["externalResourceProvider"] is True for e in kubevirt["pciHostDevices"])
    assert len(FILTERS["handoff_libvirt"](facts, "candidates")["hostdevs"]) == 5


@pytest.mark.parametrize(
    "name, args, message",
    [
        ("handoff_proxmox", ("bad node",), "handoff_proxmox: node: 'bad node' is not a host name label"),
        ("handoff_kubevirt", ("ready", None, None, "Example.com"), "resource_prefix: 'Example.com' is not"),
        ("handoff_libvirt", ("ready", ["01:01.0@8086:100e"]), "addresses\\[0\\]"),
        ("handoff_nova", ("every",), "include: 'every' is not one of ready, candidates"),
    ],
)
def test_refusals_are_filter_errors(name, args, message):
    with pytest.raises(AnsibleFilterError, match=message):
        FILTERS[name](bound_facts(), *args)
