# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Capture filters: the facts of every host in a directory of captures (hostdev.vfio.capture), read on the
controller with no host contact. The logic lives in module_utils/_capture.py and _facts.py."""

from __future__ import annotations

__metaclass__ = type  # noqa: UP001 - the boilerplate ansible-test sanity expects

from ansible_collections.hostdev.vfio.plugins.filter.passthrough import _wrap
from ansible_collections.hostdev.vfio.plugins.module_utils import _capture
from ansible_collections.hostdev.vfio.plugins.module_utils._facts import gather


def capture_facts(directory):
    """``{"hosts": [...], "facts": [...], "errors": {host: why}}`` for the captures in ``directory``; a capture
    that cannot be read is a host without facts (the report lists it with the reason)."""
    if not isinstance(directory, str) or not directory:
        raise ValueError(f"expected the path of a directory of captures, got {directory!r}")
    hosts, facts, errors = [], [], {}
    for host, path in _capture.captures(directory):
        hosts.append(host)
        try:
            facts.append(_capture.read_capture(path, gather))
        except _capture.CaptureError as exc:
            facts.append(None)
            errors[host] = f"capture not read: {exc}"
    return {"hosts": hosts, "facts": facts, "errors": errors}


class FilterModule:
    """hostdev.vfio capture filters."""

    def filters(self):
        return {"capture_facts": _wrap(capture_facts)}
