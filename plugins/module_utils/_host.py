# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""What an operation of module_utils needs from the module that runs it, and how it ends.

The operations (``_kernel_cmdline.run_request`` ...) read the host, plan, apply unless in check mode and verify;
they return the module's result or raise :class:`Failed`. A module that does one thing hands its parameters to one
operation (:func:`run_module`); the passthrough module runs several on the same :class:`Host`, in one call.
"""

from __future__ import annotations

__metaclass__ = type


class Failed(Exception):
    """The operation cannot go on: ``msg`` for the user, ``result`` what the module returns with it."""

    def __init__(self, msg: str, **result):
        super().__init__(msg)
        self.msg = msg
        self.result = result


class Host:
    """Commands, binaries, atomic file moves, warnings and the check/diff modes of one module run."""

    def __init__(self, module):
        self.module = module
        self.check_mode = bool(module.check_mode)
        self.diff = bool(getattr(module, "_diff", False))

    def run(self, argv):
        return self.module.run_command(argv)

    def bin(self, name: str, required: bool = False):
        """The path of a program, or None; ``required``: a missing one ends the module run (AnsibleModule's rule)."""
        return self.module.get_bin_path(name, required=required)

    def atomic_move(self, src: str, dst: str) -> None:
        self.module.atomic_move(src, dst)

    def warn(self, msg: str) -> None:
        self.module.warn(msg)

    def deprecate(self, msg: str, version: str) -> None:
        self.module.deprecate(msg, version=version, collection_name="hostdev.vfio")


def run_module(module, operation, **params):
    """Run one operation for ``module`` and end the module with its result (exit_json) or failure (fail_json)."""
    try:
        result = operation(Host(module), **params)
    except Failed as exc:
        module.fail_json(msg=exc.msg, **exc.result)
    module.exit_json(**result)
