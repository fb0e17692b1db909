# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Count module round trips per host (tasks and loop items that ran a module on the host) for benchmarks/fleet.py.

Enabled by fleet.py with ANSIBLE_CALLBACK_PLUGINS pointing here and ANSIBLE_CALLBACKS_ENABLED=roundtrips; writes
{host: {"roundtrips": N, "tasks": M, "reboots": R}} to $HOSTDEV_ROUNDTRIPS_FILE (R: reboot tasks that
rebooted). Actions that run on the controller only
(set_fact, assert, debug, fail, meta, includes) and delegated tasks are not round trips of the host.
"""

from __future__ import annotations

import json
import os
from collections import defaultdict

from ansible.plugins.callback import CallbackBase

LOCAL_ACTIONS = frozenset(
    {
        "set_fact",
        "assert",
        "debug",
        "fail",
        "meta",
        "include_tasks",
        "import_tasks",
        "include_role",
        "import_role",
        "include_vars",
        "validate_argument_spec",
        "add_host",
        "group_by",
        "set_stats",
        "pause",
    }
)


def _short(action: str) -> str:
    return action.rsplit(".", 1)[-1]


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "roundtrips"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.counts = defaultdict(lambda: {"roundtrips": 0, "tasks": 0, "reboots": 0})

    def _count(self, result, item=False):
        host = result._host.get_name()
        remote = _short(result._task.action) not in LOCAL_ACTIONS and not result._task.delegate_to
        if _short(result._task.action) == "reboot" and result._result.get("rebooted"):
            self.counts[host]["reboots"] += 1
        if item or not result._task.loop:
            self.counts[host]["tasks"] += 0 if item else 1
            if remote:
                self.counts[host]["roundtrips"] += 1
        else:
            self.counts[host]["tasks"] += 1

    def v2_runner_on_ok(self, result):
        self._count(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._count(result)

    def v2_runner_item_on_ok(self, result):
        self._count(result, item=True)

    def v2_runner_item_on_failed(self, result):
        self._count(result, item=True)

    def v2_playbook_on_stats(self, stats):
        path = os.environ.get("HOSTDEV_ROUNDTRIPS_FILE")
        if path:
            with open(path, "w", encoding="utf-8") as f:
                json.dump(self.counts, f, indent=2, sort_keys=True)
