# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Where a lab playbook spent its time: at the end of each playbook, the slowest tasks (wall time from the task's
start until its last host answered, reboots and initramfs builds included), so a target's or a molecule step's
log says which steps make the lab slow. Enabled by the lab's ansible.cfg (tests/lab/lab.py) and molecule's
config (extensions/molecule/config.yml). Prints only; nothing asserts on these times.
"""

from __future__ import annotations

import time

from ansible.plugins.callback import CallbackBase

SHOWN = 12


class CallbackModule(CallbackBase):
    CALLBACK_VERSION = 2.0
    CALLBACK_TYPE = "aggregate"
    CALLBACK_NAME = "lab_timing"
    CALLBACK_NEEDS_ENABLED = True

    def __init__(self):
        super().__init__()
        self.started = time.monotonic()
        self.current = None
        self.times = []

    def _close(self):
        if self.current is not None:
            name, began = self.current
            self.times.append((time.monotonic() - began, name))
            self.current = None

    def v2_playbook_on_task_start(self, task, is_conditional):
        self._close()
        self.current = (task.get_name(), time.monotonic())

    def v2_playbook_on_handler_task_start(self, task):
        self.v2_playbook_on_task_start(task, False)

    def v2_playbook_on_stats(self, stats):
        self._close()
        total = time.monotonic() - self.started
        self._display.display(f"lab_timing: {total:.0f} s in all; slowest tasks:")
        for seconds, name in sorted(self.times, reverse=True)[:SHOWN]:
            self._display.display(f"lab_timing: {seconds:7.1f} s  {name}")
