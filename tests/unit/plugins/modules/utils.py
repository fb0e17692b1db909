# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Helpers to run a module's main() in-process: exit/fail become exceptions, arguments come from a context."""

from __future__ import annotations

import contextlib
import json

from ansible.module_utils import basic
from ansible.module_utils.common.text.converters import to_bytes


class AnsibleExitJson(Exception):
    """exit_json was called: the result is in .args[0]."""

    @property
    def result(self):
        return self.args[0]


class AnsibleFailJson(Exception):
    """fail_json was called: the result is in .args[0]."""

    @property
    def result(self):
        return self.args[0]


def _collected_warnings():
    try:
        from ansible.module_utils.common.warnings import get_warning_messages
    except ImportError:  # older ansible-core
        from ansible.module_utils.common.warnings import get_warnings as get_warning_messages
    return list(get_warning_messages())


def _exit_json(self, **kwargs):
    kwargs.setdefault("changed", False)
    warnings = _collected_warnings()
    if warnings:
        kwargs["warnings"] = warnings
    raise AnsibleExitJson(kwargs)


def _fail_json(self, **kwargs):
    kwargs["failed"] = True
    raise AnsibleFailJson(kwargs)


@contextlib.contextmanager
def set_module_args(args):
    """Make AnsibleModule read ``args`` as its parameters (works across ansible-core versions)."""
    args = dict(args)
    args.setdefault("_ansible_remote_tmp", "/tmp")
    args.setdefault("_ansible_keep_remote_files", False)
    payload = to_bytes(json.dumps({"ANSIBLE_MODULE_ARGS": args}))
    try:
        from ansible.module_utils.testing import patch_module_args  # ansible-core >= 2.19
    except ImportError:
        patch_module_args = None
    if patch_module_args is not None:
        with patch_module_args(args):
            yield
        return
    old = basic._ANSIBLE_ARGS
    basic._ANSIBLE_ARGS = payload
    try:
        yield
    finally:
        basic._ANSIBLE_ARGS = old


@contextlib.contextmanager
def patched_exits():
    """Patch AnsibleModule.exit_json/fail_json to raise AnsibleExitJson/AnsibleFailJson."""
    orig = basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json
    basic.AnsibleModule.exit_json = _exit_json
    basic.AnsibleModule.fail_json = _fail_json
    try:
        yield
    finally:
        basic.AnsibleModule.exit_json, basic.AnsibleModule.fail_json = orig


def _reset_warnings():
    """Warnings are process-global in ansible-core: start each module run with none left from an earlier one."""
    from ansible.module_utils.common import warnings

    for name in ("_global_warnings", "_global_deprecations"):
        store = getattr(warnings, name, None)
        if hasattr(store, "clear"):
            store.clear()


@contextlib.contextmanager
def _as_managed_host():
    """Run as a module does on a managed host. Once any test in the process imports controller code, ansible-core
    marks the process as the controller and module warnings go to the display instead of the result."""
    try:
        from ansible.module_utils import _internal
    except ImportError:  # ansible-core < 2.19
        yield
        return
    old = getattr(_internal, "is_controller", False)
    _internal.is_controller = False
    try:
        yield
    finally:
        _internal.is_controller = old


def run_module(main, args):
    """Run ``main`` with ``args``; return (result, failed)."""
    _reset_warnings()
    with patched_exits(), set_module_args(args), _as_managed_host():
        try:
            main()
        except AnsibleExitJson as e:
            return e.result, False
        except AnsibleFailJson as e:
            return e.result, True
    raise AssertionError("module returned without exit_json or fail_json")
