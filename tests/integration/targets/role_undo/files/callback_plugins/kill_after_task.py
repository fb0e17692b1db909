# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Test-only: SIGKILL this ansible-playbook as soon as the task named in HOSTDEV_KILL_AFTER_TASK has a result.

The role_undo lab target uses it to stop a run at an exact step, as a crash or a lost controller would, with no
timing involved: the callback runs in the controller's main process before the next task is queued.
"""

from __future__ import annotations

import os
import signal

from ansible.plugins.callback import CallbackBase

DOCUMENTATION = """
name: kill_after_task
type: aggregate
short_description: kill the controller after one task (tests only)
description: SIGKILLs ansible-playbook once the task named in HOSTDEV_KILL_AFTER_TASK reports a result.
requirements: [enabled in callbacks_enabled]
"""


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "kill_after_task"
    CALLBACK_NEEDS_ENABLED = True

    def _maybe_kill(self, result):
        wanted = os.environ.get("HOSTDEV_KILL_AFTER_TASK")
        if wanted and result._task.get_name().endswith(wanted):
            os.kill(os.getpid(), signal.SIGKILL)

    def v2_runner_on_ok(self, result):
        self._maybe_kill(result)

    def v2_runner_on_failed(self, result, ignore_errors=False):
        self._maybe_kill(result)
