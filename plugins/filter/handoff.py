# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Hand-off filters: from ``ansible_facts.iommu`` to Nova, Proxmox VE, KubeVirt and libvirt, and per function what
passing it through would take. The logic lives in module_utils/_handoff.py; these are its front ends."""

from __future__ import annotations

__metaclass__ = type  # noqa: UP001 - the boilerplate ansible-test sanity expects

from ansible_collections.hostdev.vfio.plugins.filter.passthrough import _wrap
from ansible_collections.hostdev.vfio.plugins.module_utils import _handoff


def handoff_verdicts(facts):
    return _handoff.verdicts(facts)


def handoff_nova(facts, include="ready", addresses=None, names=None, numa_policy="legacy"):
    return _handoff.nova(facts, include, addresses, names, numa_policy)


def handoff_proxmox(facts, node, include="ready", addresses=None, names=None):
    return _handoff.proxmox(facts, node, include, addresses, names)


def handoff_kubevirt(
    facts, include="ready", addresses=None, names=None, resource_prefix=_handoff.DEFAULT_RESOURCE_PREFIX, external=False
):
    return _handoff.kubevirt(facts, include, addresses, names, resource_prefix, external)


def handoff_libvirt(facts, include="ready", addresses=None):
    return _handoff.libvirt(facts, include, addresses)


class FilterModule:
    """hostdev.vfio hand-off filters."""

    def filters(self):
        return {
            f.__name__: _wrap(f)
            for f in (handoff_verdicts, handoff_nova, handoff_proxmox, handoff_kubevirt, handoff_libvirt)
        }
