# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""kernel_cmdline on real-world /etc/default/grub files (data/real-grub/README.md names their sources).

For each file, as shipped and with CRLF line ends: check mode changes nothing and predicts exactly what the real
run does; the real run keeps every byte of /etc/default/grub; sh sourcing the result gives the arguments that
were there plus the requested ones; a second run changes nothing.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from pathlib import Path

import pytest
from ansible.module_utils import basic
from ansible_collections.hostdev.vfio.plugins.module_utils._kernel_cmdline import (
    apply_cmdline,
    grub_cfg_cmdline,
    parse_cmdline,
    render_cmdline,
)
from ansible_collections.hostdev.vfio.plugins.modules import kernel_cmdline
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.test_kernel_cmdline import fake_update_grub
from ansible_collections.hostdev.vfio.tests.unit.plugins.modules.utils import run_module

DATA = Path(__file__).resolve().parent.parent / "module_utils" / "data" / "real-grub"
FILES = sorted(p.name for p in DATA.glob("*.grub"))
ARGS = ["intel_iommu=on", "iommu=pt"]


def sh_run(root: Path) -> tuple[str, str]:
    """What grub-mkconfig puts on the linux line: /etc/default/grub and grub.d/*.cfg sourced by /bin/sh; and
    what sh complained about (a CRLF file makes sh try to run a carriage return on every blank line)."""
    script = (
        '. "$1/etc/default/grub"; for f in "$1"/etc/default/grub.d/*.cfg; do [ -e "$f" ] && . "$f"; done; '
        'printf "%s %s" "$GRUB_CMDLINE_LINUX" "$GRUB_CMDLINE_LINUX_DEFAULT"'
    )
    res = subprocess.run(["/bin/sh", "-c", script, "sh", str(root)], capture_output=True, text=True, check=False)
    assert res.returncode == 0
    return res.stdout, res.stderr


def sh_cmdline(root: Path) -> str:
    out, err = sh_run(root)
    assert err == "", err  # sh ran nothing that failed
    return out


def tree_digest(root: Path) -> dict:
    out = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            path = Path(base) / name
            rel = str(path.relative_to(root))
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


@pytest.fixture
def host(tmp_path, monkeypatch):
    (tmp_path / "etc/default/grub.d").mkdir(parents=True)
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("BOOT_IMAGE=/boot/vmlinuz-6.1.0-26-amd64 root=UUID=0c1d ro quiet\n")
    calls = []

    def run_command(self, argv, **kwargs):
        calls.append(list(argv))
        if argv == ["/usr/sbin/update-grub"]:
            fake_update_grub(tmp_path)
            return 0, "", ""
        return 1, "", "unexpected command"

    def get_bin_path(self, name, required=False, opt_dirs=None):
        if name == "update-grub":
            return "/usr/sbin/update-grub"
        if required:
            self.fail_json(msg=f"Failed to find required executable {name}")
        return None

    monkeypatch.setattr(basic.AnsibleModule, "run_command", run_command)
    monkeypatch.setattr(basic.AnsibleModule, "get_bin_path", get_bin_path)
    host = type("Host", (), {})()
    host.root, host.calls = tmp_path, calls
    host.args = {"root": str(tmp_path), "proc_root": str(tmp_path / "proc"), "args": ARGS}
    return host


def test_the_data_is_there():
    assert len(FILES) >= 10 and (DATA / "README.md").exists()
    assert all(name in (DATA / "README.md").read_text() or name.startswith("variant-") for name in FILES)


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
@pytest.mark.parametrize("name", FILES)
def test_real_grub_file(host, name, crlf):
    data = (DATA / name).read_bytes()
    if crlf:
        data = data.replace(b"\n", b"\r\n")
    grub = host.root / "etc/default/grub"
    grub.write_bytes(data)
    fake_update_grub(host.root)
    before, complaints = sh_run(host.root)
    assert crlf or complaints == ""
    tree = tree_digest(host.root)

    check, failed = run_module(kernel_cmdline.main, {**host.args, "_ansible_check_mode": True, "_ansible_diff": True})
    assert not failed, check["msg"]
    assert tree_digest(host.root) == tree and host.calls == []

    real, failed = run_module(kernel_cmdline.main, {**host.args, "_ansible_diff": True})
    assert not failed, real["msg"]
    for key in ("changed", "files", "commands", "cmdline_before", "cmdline_after", "diff"):
        assert check[key] == real[key], key
    assert grub.read_bytes() == data  # every byte kept: new arguments went to the drop-in
    configured = grub_cfg_cmdline((host.root / "boot/grub/grub.cfg").read_text())
    after, complaints_after = sh_run(host.root)
    assert complaints_after == complaints  # the change made sh run nothing new
    assert render_cmdline(configured)[len("root=UUID=0c1d ro ") :] == render_cmdline(parse_cmdline(after))
    assert check["cmdline_after"] == render_cmdline(configured)  # check mode predicted the result
    wanted = [parse_cmdline(a)[0] for a in ARGS]
    assert parse_cmdline(after) == apply_cmdline(parse_cmdline(before), wanted, [])

    calls = list(host.calls)
    tree = tree_digest(host.root)
    for check_mode in (True, False):
        again, failed = run_module(kernel_cmdline.main, {**host.args, "_ansible_check_mode": check_mode})
        assert not failed and not again["changed"] and again["files"] == [] and again["commands"] == []
    assert host.calls == calls and tree_digest(host.root) == tree


def test_laptop_acpi_osi_line_left_alone_and_read_by_sh_unchanged(host):
    """The issue's report: this line made kernel_cmdline refuse intel_iommu=on though it needs no edit."""
    data = (DATA / "4e6-archlinux-thinkpad-x1-carbon.grub").read_bytes()
    (host.root / "etc/default/grub").write_bytes(data)
    fake_update_grub(host.root)
    res, failed = run_module(kernel_cmdline.main, host.args)
    assert not failed and res["changed"]
    assert (host.root / "etc/default/grub").read_bytes() == data
    assert sh_cmdline(host.root) == ' quiet acpi_osi="!Windows 2012" intel_iommu=on iommu=pt'


def test_repeated_iommu_keeps_both_occurrences(host):
    data = (DATA / "variant-repeated-iommu.grub").read_bytes()
    (host.root / "etc/default/grub").write_bytes(data)
    fake_update_grub(host.root)
    res, failed = run_module(kernel_cmdline.main, {**host.args, "args": ["iommu=pt", "console=ttyS0,115200n8"]})
    assert not failed and not res["changed"] and not res["files"]
    assert "iommu=1" in sh_cmdline(host.root).split()
