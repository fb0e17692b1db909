# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""One host's whole passthrough state in one pass: hostdev.vfio.passthrough, behind the role.

read (the IOMMU facts) -> check the request and the host (selectors, kernel-argument policy, the safety of every
bind, before anything is written) -> plan and apply, in the order a boot needs them: the undo record, the kernel
arguments, the role's modprobe.d file, the initramfs configuration, the /dev/vfio ownership rule, the runtime binds
(only with the IOMMU on; otherwise they are planned for after the reboot), one initramfs regeneration for all of
it -> read the kernel again and verify (drivers, viable groups, /dev/vfio/N, /proc/cmdline, and the host's QEMU).

Every step is one of the operations the single-purpose modules run (``_kernel_cmdline.run_request``,
``_initramfs.run_request``, ``_bind.run_request``, ``_record.run_files``, ``_vmm.run_request``) on the same
``_host.Host``, and every rule is one of ``_passthrough``'s: nothing here is computed a second way. In check mode
every step plans and nothing is touched; the result is the whole plan, the binds after a reboot included.
"""

from __future__ import annotations

__metaclass__ = type

import os

from ansible_collections.hostdev.vfio.plugins.module_utils import (
    _bind,
    _initramfs,
    _kernel_cmdline,
    _modprobe,
    _record,
    _vmm,
)
from ansible_collections.hostdev.vfio.plugins.module_utils import _passthrough as rules
from ansible_collections.hostdev.vfio.plugins.module_utils._facts import gather
from ansible_collections.hostdev.vfio.plugins.module_utils._files import FileProblem, read_bytes, write_atomic
from ansible_collections.hostdev.vfio.plugins.module_utils._host import Failed

MODPROBE_PATH = "/etc/modprobe.d/hostdev-vfio-passthrough.conf"
UDEV_RULE = "/etc/udev/rules.d/70-hostdev-vfio-passthrough.rules"
BIND_RULES = _bind.DEFAULT_RULES_FILE
CMDLINE_NAME = "hostdev-vfio-passthrough"
VFIO_MODULES = ("vfio", "vfio_iommu_type1", "vfio_pci")
ALL_MODULES = (*VFIO_MODULES, "pci_stub")
BOOT_METHODS = ("override", "ids")
VERIFY_VMM = ("auto", "true", "false")
STATES = ("present", "absent")
IOMMU_MODES = ("auto", "keep", "off")


class _CheckOnly:
    """``host`` seen in check mode: the safety pass of the binds runs every check and changes nothing. Its warnings
    are kept back when the real pass follows (that one says them)."""

    def __init__(self, host, quiet):
        self._host = host
        self._quiet = quiet
        self.check_mode = True
        self.diff = host.diff and not quiet

    def __getattr__(self, name):
        return getattr(self._host, name)

    def warn(self, msg):
        if not self._quiet:
            self._host.warn(msg)


def udev_rule_text(owner: str, group: str, mode: str) -> str:
    """The /dev/vfio/N ownership rule (values checked by ``_passthrough.passthrough_validate``)."""
    keys = "".join([f', OWNER="{owner}"' if owner else "", f', GROUP="{group}"' if group else "", f', MODE="{mode}"'])
    return (
        "# Managed by hostdev.vfio.passthrough.\n"
        "# Ownership of the VFIO group files /dev/vfio/N (never world-writable).\n"
        f'SUBSYSTEM=="vfio", KERNEL=="[0-9]*"{keys}\n'
    )


def _preflight(facts, selection, kargs, boot_ids, boot_method, iommu):
    """The reasons the request cannot be applied on this host (before anything is written)."""
    if not facts.get("enabled") and not facts.get("units") and not facts.get("firmware_tables"):
        return [
            "this host has no usable IOMMU: the kernel created no IOMMU groups, registered no IOMMU unit, and the "
            "firmware publishes no ACPI DMAR (Intel VT-d) or IVRS (AMD-Vi) table. Enable VT-d or AMD-Vi/IOMMU in "
            "the firmware setup, then run again"
        ]
    if kargs.get("error"):
        return [kargs["error"]]
    if not facts.get("enabled") and iommu != "auto" and not kargs["args"]:
        return [
            "the IOMMU is off and the IOMMU policy (iommu) is not auto, so the kernel arguments are left alone. Set "
            "iommu: auto (or add the arguments with kernel_args) to let it turn the IOMMU on"
        ]
    errors = rules.passthrough_errors(selection)
    if errors:
        return errors
    if boot_method == "ids" and boot_ids["conflicts"]:
        return ["boot method ids cannot be used here: " + "; ".join(boot_ids["conflicts"])]
    return []


class Run:
    """One call: the host, its request, and what each step returned (``steps``)."""

    def __init__(self, host, kernel, p, roots):
        self.host = host
        self.kernel = kernel
        self.p = p
        self.sysfs_root, self.proc_root, self.dev_root, self.root, self.state_dir = roots
        self.steps = {}
        self.diff = []
        self.changed = False
        self.reasons = []  # why a reboot is required

    def step(self, name, result):
        self.steps[name] = result
        self.changed = self.changed or bool(result.get("changed"))
        diff = result.get("diff")
        if self.host.diff and result.get("changed") and diff:
            self.diff += diff if isinstance(diff, list) else [diff]
        return result

    def facts(self):
        return gather(
            self.sysfs_root,
            self.proc_root,
            self.dev_root,
            names=False,
            ssh_connection=os.environ.get("SSH_CONNECTION"),
        )

    def bind(self, host, entry=None, addresses=None, driver=None):
        p = self.p
        return _bind.run_request(
            host,
            self.kernel,
            address=list(addresses if entry is None else entry["addresses"]),
            ids=[],
            device_class=[],
            driver=driver or entry["driver"],
            group="fail" if entry is None else entry["group"],
            persistent=entry is not None and p["boot_method"] == "override",
            force=p["force"],
            sysfs_root=self.sysfs_root,
            proc_root=self.proc_root,
            dev_root=self.dev_root,
            state_dir=os.path.join(self.root, self.state_dir.lstrip("/")),
            rules_file=os.path.join(self.root, BIND_RULES.lstrip("/")),
            initramfs_root=self.root,
            live_roots=(self.sysfs_root, self.proc_root, self.dev_root) if self.p["_live"] else _bind.LIVE_ROOTS,
        )

    def initramfs(self, modules, files, state, files_changed=False, regenerate="never"):
        return _initramfs.run_request(
            self.host,
            list(modules),
            state=state,
            regenerate=regenerate,
            files_changed=files_changed,
            files=list(files),
            root=self.root,
        )

    def record(self, files, state, unrecorded="keep"):
        return _record.run_files(
            self.host, files, state=state, unrecorded=unrecorded, root=self.root, state_dir=self.state_dir
        )

    def put_file(self, path, text):
        """``path`` (under root) holds ``text``, or is absent when ``text`` is None: a step result."""
        full = os.path.join(self.root, path.lstrip("/"))
        try:
            before = read_bytes(full, "file")
        except FileProblem as exc:
            raise Failed(str(exc)) from None
        want = None if text is None else text.encode()
        result = {
            "changed": before != want,
            "path": path,
            "exists": want is not None,
            "diff": {
                "before_header": path if before is not None else f"{path} (absent)",
                "after_header": path if want is not None else f"{path} (absent)",
                "before": "" if before is None else before.decode("utf-8", "replace"),
                "after": text or "",
            },
        }
        if self.host.check_mode or not result["changed"]:
            return result
        try:
            if want is None:
                os.unlink(full)
            else:
                write_atomic(full, want, self.host.atomic_move, mode=0o644)
        except (OSError, FileProblem) as exc:
            raise Failed(f"cannot write {path}: {exc}", **self.result()) from None
        return result

    def udev_reload(self):
        for argv in (
            ["udevadm", "control", "--reload"],
            ["udevadm", "trigger", "--subsystem-match=vfio", "--action=change"],
        ):
            rc, out, err = self.host.run([self.host.bin(argv[0], required=True), *argv[1:]])
            if rc != 0:
                raise Failed(f"{' '.join(argv)} failed with rc={rc}: {(err or out).strip()}", **self.result())

    def result(self, **extra):
        return {
            "changed": self.changed,
            "reboot_required": bool(self.reasons),
            "reboot_reasons": list(self.reasons),
            "steps": self.steps,
            **({"diff": self.diff} if self.diff else {}),
            **extra,
        }


# --------------------------------------------------------------------------------------------------- the operation
def run_request(
    host,
    kernel,
    devices=(),
    state="present",
    iommu="auto",
    iommu_pt=False,
    kernel_args=(),
    boot_method="override",
    softdep_drivers=(),
    force=None,
    vfio_group_owner="",
    vfio_group_group="",
    vfio_group_mode="0660",
    verify=True,
    verify_vmm="auto",
    sysfs_root="/sys",
    proc_root="/proc",
    dev_root="/dev",
    root="/",
    state_dir=_record.DEFAULT_STATE_DIR,
    live=False,
) -> dict:
    """hostdev.vfio.passthrough on ``host`` (``_host.Host``); ``kernel`` is the bind interface
    (``_bind.host_kernel``). Returns the module's result; raises ``_host.Failed``. ``live``: the roots given are
    the host's own (tests run the whole flow over a fake tree)."""
    force = force or {}
    p = dict(boot_method=boot_method, force=force, _live=live)
    errors = []
    for name, value, allowed in (
        ("state", state, STATES),
        ("boot_method", boot_method, BOOT_METHODS),
        ("verify_vmm", str(verify_vmm).lower(), VERIFY_VMM),
        ("iommu", iommu, IOMMU_MODES),
    ):
        if value not in allowed:
            errors.append(f"{name}: {value!r} is not one of {', '.join(allowed)}")
    errors += rules.passthrough_validate(
        list(devices),
        kernel_args=list(kernel_args),
        softdep_drivers=list(softdep_drivers),
        vfio_group_owner=vfio_group_owner,
        vfio_group_group=vfio_group_group,
        vfio_group_mode=vfio_group_mode,
        force=force,
    )
    if errors:
        raise Failed("; ".join(errors))
    run = Run(host, kernel, p, (sysfs_root, proc_root, dev_root, root, state_dir))
    request = dict(
        devices=devices,
        state=state,
        iommu=iommu,
        iommu_pt=iommu_pt,
        kernel_args=kernel_args,
        boot_method=boot_method,
        softdep_drivers=softdep_drivers,
        force=force,
        vfio_group_owner=vfio_group_owner,
        vfio_group_group=vfio_group_group,
        vfio_group_mode=vfio_group_mode,
        verify=verify,
        verify_vmm=verify_vmm,
        root=root,
        proc_root=proc_root,
        state_dir=state_dir,
    )
    try:
        return _converge(run, **request)
    except Failed as exc:
        # what the steps before the failing one did stays in the result (a run that stops half way is readable)
        steps = dict(run.steps, failed=exc.result) if exc.result else dict(run.steps)
        raise Failed(exc.msg, **{**exc.result, **run.result(), "steps": steps}) from None


def _converge(
    run,
    devices,
    state,
    iommu,
    iommu_pt,
    kernel_args,
    boot_method,
    softdep_drivers,
    force,
    vfio_group_owner,
    vfio_group_group,
    vfio_group_mode,
    verify,
    verify_vmm,
    root,
    proc_root,
    state_dir,
):
    host = run.host
    facts = run.facts()
    for warning in facts.get("warnings") or []:
        host.warn(warning)
    selection = rules.passthrough_resolve(facts, list(devices))
    kargs = rules.passthrough_kernel_args(facts, iommu, iommu_pt, list(kernel_args))
    if state == "absent":
        return _absent(run, facts, selection, kargs)
    boot_ids = (
        rules.passthrough_boot_ids(facts, selection, list(softdep_drivers))
        if boot_method == "ids"
        else {"vfio_ids": [], "stub_ids": [], "softdeps": [], "conflicts": []}
    )
    problems = _preflight(facts, selection, kargs, boot_ids, boot_method, iommu)
    if problems:
        raise Failed("; ".join(problems), selection=_selection_result(selection))

    # The safety of every bind, checked before the first write (nothing half-changed for a refused device).
    enabled = bool(facts.get("enabled"))
    if enabled:
        checker = _CheckOnly(host, quiet=not host.check_mode)
        planned = [run.bind(checker, entry) for entry in selection]
    owner_wanted = bool(vfio_group_owner or vfio_group_group)
    modules = list(VFIO_MODULES) + (
        ["pci_stub"] if any(e["driver"] == "pci-stub" or e["group"] == "stub" for e in selection) else []
    )
    bind_file = MODPROBE_PATH if boot_method == "ids" else BIND_RULES
    image_files = [bind_file] if selection else []

    # First sight wins: the record keeps what was there before the first change (absent gives exactly that back).
    run.step("record", run.record([MODPROBE_PATH, UDEV_RULE], "recorded"))
    if kargs["args"] or kargs["remove"]:
        cmdline = run.step(
            "kernel_cmdline",
            _kernel_cmdline.run_request(
                host,
                args_in=kargs["args"],
                remove_in=kargs["remove"],
                name=CMDLINE_NAME,
                root=root,
                proc_root=proc_root,
                want_record=True,
                state_dir=state_dir,
            ),
        )
        if cmdline["reboot_required"]:
            run.reasons.append(
                "the running kernel's command line lacks "
                + ", ".join(cmdline["missing"] + [f"no {a}" for a in cmdline["unwanted"]])
            )
    modprobe = {"changed": False, "path": MODPROBE_PATH, "initramfs_update_needed": False}
    if boot_method == "ids":
        try:
            plan = _modprobe.plan_edits(
                MODPROBE_PATH,
                root=root,
                options=[
                    (n, {"ids": ",".join(ids)} if ids else {})
                    for n, ids in (("vfio-pci", boot_ids["vfio_ids"]), ("pci-stub", boot_ids["stub_ids"]))
                ],
                softdeps=[(s["name"], s["pre"]) for s in boot_ids["softdeps"]],
            )
        except _modprobe.ModprobeError as exc:
            raise Failed(str(exc), **run.result()) from None
        for warning in plan.warnings:
            host.warn(warning)
        modprobe = {
            "changed": plan.changed,
            "path": MODPROBE_PATH,
            "initramfs_update_needed": plan.initramfs_update_needed,
            "diff": plan.diff(),
        }
        if plan.changed and not host.check_mode:
            run.put_file(MODPROBE_PATH, None if plan.delete else plan.after)
    run.step("modprobe", modprobe)
    config = run.step("initramfs_config", run.initramfs(modules, image_files, "present"))
    missing = any(img.get("missing_modules") for img in (config.get("images") or {}).values())
    rule = run.step(
        "udev_rule",
        run.put_file(
            UDEV_RULE, udev_rule_text(vfio_group_owner, vfio_group_group, vfio_group_mode) if owner_wanted else None
        ),
    )

    binds = []
    if enabled:
        binds = planned if host.check_mode else [run.bind(host, entry) for entry in selection]
        for result in binds:
            run.step("binds", result)
        run.steps["binds"] = binds
    after_boot = rules.passthrough_bind_plan(selection, enabled, binds, force)

    regen = [
        why
        for why, needed in (
            (f"{MODPROBE_PATH} changed", modprobe["changed"]),
            ("the initramfs configuration changed", config["changed"]),
            ("an image lacks a VFIO module", missing),
            (f"{BIND_RULES} changed", any(b.get("initramfs_update_needed") for b in binds)),
        )
        if needed
    ]
    # With the IOMMU off and boot method override, nothing the image would carry acts before the reboot: the binds
    # and their rules wait for it. The call after the reboot regenerates once, with the rules (an image that lacks a
    # VFIO module is a reason by itself, so a host rebooted by someone else gets it on its next call too).
    deferred = bool(regen) and not enabled and boot_method == "override" and bool(run.reasons)
    if regen and not deferred and not host.check_mode:
        # a file the image cannot carry yet (the bind rules while the binds wait for the reboot) is not checked
        carried = [f for f in image_files if os.path.exists(os.path.join(root, f.lstrip("/")))]
        run.step("initramfs", run.initramfs(modules, carried, "present", files_changed=True, regenerate="auto"))
        run.steps["initramfs"].update(why=regen, deferred=False)
    else:
        planned = bool(regen) and not deferred
        run.steps["initramfs"] = {
            "changed": planned,
            "regenerated": None,
            "why": regen,
            "planned": planned,
            "deferred": deferred,
        }
        run.changed = run.changed or planned
    if rule["changed"] and not host.check_mode:
        run.udev_reload()

    verified = vmm = None
    if run.changed and not host.check_mode:
        facts = run.facts()  # what the kernel says now, for the verification, the summary and ansible_facts
    if verify and not host.check_mode and not run.reasons:
        verified = rules.passthrough_verify(facts, selection, kargs["args"])
        if verified:
            raise Failed(
                "not passthrough-ready: " + "; ".join(verified),
                **run.result(summary=_summary(facts, selection, kargs, "present", host, run, after_boot, None)),
            )
        vmm = _probe(run, facts, selection, verify_vmm)
    return run.result(
        selection=_selection_result(selection),
        kernel_args=kargs["args"],
        verified=verified,
        summary=_summary(facts, selection, kargs, "present", host, run, after_boot, vmm),
        ansible_facts={"iommu": facts},
    )


def _probe(run, facts, selection, verify_vmm):
    """The host's QEMU takes the functions on vfio-pci (None when not asked); a refusal fails the run."""
    if str(verify_vmm).lower() == "false":
        return None
    wanted = {a for e in selection for a in e["addresses"]}
    addresses = [
        d["address"] for d in facts.get("devices") or [] if d["address"] in wanted and d.get("driver") == "vfio-pci"
    ]
    if not addresses:
        return None
    request = _vmm.Request(address=addresses, qemu_required=str(verify_vmm).lower() == "true", skip_in_use=True)
    result = run.step(
        "vmm",
        _vmm.run_request(
            run.host,
            request,
            sysfs_root=run.sysfs_root,
            proc_root=run.proc_root,
            dev_root=run.dev_root,
            live_roots=(run.sysfs_root, run.proc_root, run.dev_root) if run.p["_live"] else None,
        ),
    )
    vmm = {
        "qemu": result.get("qemu"),
        "qemu_missing": result.get("qemu_missing"),
        "functions": [
            {k: f.get(k) for k in ("address", "taken", "error", "skipped")} for f in result.get("functions") or []
        ],
    }
    refused = [f for f in vmm["functions"] if f["skipped"] is None and not f["taken"]]
    if refused and not vmm["qemu_missing"]:
        raise Failed(
            f"QEMU refused {', '.join(f['address'] for f in refused)}: " + "; ".join(str(f["error"]) for f in refused),
            **run.result(vmm=vmm),
        )
    return vmm


def _absent(run, facts, selection, kargs):
    """Everything the role added goes, each file as the undo record says it was; the devices go back to their host
    drivers."""
    host = run.host
    restore = rules.passthrough_restore_addresses(facts, selection)
    if restore:
        run.step("binds", run.bind(host, addresses=restore, driver="host"))
    modprobe = run.step("modprobe", run.record([MODPROBE_PATH], "restored", unrecorded="remove"))
    config = run.step("initramfs_config", run.initramfs(ALL_MODULES, [MODPROBE_PATH, BIND_RULES], "absent"))
    rule = run.step("udev_rule", run.record([UDEV_RULE], "restored", unrecorded="remove"))
    cmdline = run.step(
        "kernel_cmdline",
        _kernel_cmdline.run_request(
            host,
            name=CMDLINE_NAME,
            root=run.root,
            proc_root=run.proc_root,
            want_undo=True,
            state_dir=run.state_dir,
        ),
    )
    if not cmdline.get("record_found"):
        running = set((facts.get("cmdline") or {}).keys())
        left = [a.split("=", 1)[0] for a in kargs.get("absent") or [] if a.split("=", 1)[0] in running]
        if left:
            host.warn(
                f"{', '.join(left)} on the running kernel's command line: no undo record of the role says it added "
                "them, so they stay. Remove them with hostdev.vfio.kernel_cmdline if a version of the role without "
                "the record added them."
            )
    binds = run.steps.get("binds") or {}
    regen = [
        why
        for why, needed in (
            (f"{MODPROBE_PATH} given back", modprobe["changed"]),
            ("the initramfs configuration changed", config["changed"]),
            (f"{BIND_RULES} changed", binds.get("initramfs_update_needed")),
        )
        if needed
    ]
    if regen and not host.check_mode:
        run.step("initramfs", run.initramfs(ALL_MODULES, [MODPROBE_PATH, BIND_RULES], "absent", True, "auto"))
        run.steps["initramfs"].update(why=regen, deferred=False)
    else:
        run.steps["initramfs"] = {
            "changed": bool(regen),
            "regenerated": None,
            "why": regen,
            "planned": bool(regen),
            "deferred": False,
        }
        run.changed = run.changed or bool(regen)
    if rule["changed"] and not host.check_mode:
        run.udev_reload()
    if cmdline.get("reboot_required"):
        run.reasons.append("the kernel arguments the role added are gone from the next boot's command line")
    if run.changed and not host.check_mode:
        facts = run.facts()
    return run.result(
        ansible_facts={"iommu": facts},
        selection=_selection_result(selection),
        kernel_args=[],
        verified=None,
        summary=_summary(facts, selection, kargs, "absent", host, run, [], None),
    )


def _selection_result(selection):
    return [{k: e[k] for k in ("label", "addresses", "driver", "group", "errors")} for e in selection]


def _summary(facts, selection, kargs, state, host, run, binds, vmm):
    """What ``passthrough_summary`` and the fleet report read (the role adds ``rebooted``)."""
    wanted = {a for e in selection for a in e["addresses"]}
    return {
        "state": state,
        "check_mode": bool(host.check_mode),
        "iommu_enabled": bool(facts.get("enabled")),
        "iommu_vendor": kargs.get("vendor"),
        "kernel_args": kargs["args"] if state == "present" else [],
        "reboot_required": bool(run.reasons),
        "rebooted": False,
        "boot_method": run.p["boot_method"],
        "vmm": vmm,
        "binds": binds,
        "devices": [d for d in rules.passthrough_readiness(facts) if d["address"] in wanted],
    }
