# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""The passthrough role's argument spec (meta/argument_specs.yml) as Ansible itself enforces it.

Each case runs the role with ansible-playbook on localhost: wrong input must stop the role at its argument
validation, before any task of the role runs, with a message that names the option. Good input must pass the
validation (the same spec through ansible.builtin.validate_argument_spec, so no host is needed).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SPEC = Path(__file__).resolve().parents[3] / "roles" / "passthrough" / "meta" / "argument_specs.yml"


def _playbook(tmp_path: Path, variables: dict, validate_only: bool) -> subprocess.CompletedProcess:
    if validate_only:
        tasks = [
            {
                "name": "Validate against the role's spec",
                "ansible.builtin.validate_argument_spec": {
                    "argument_spec": "{{ (lookup('ansible.builtin.file', spec) | from_yaml)[specs].main.options }}",
                    "provided_arguments": variables,
                },
            }
        ]
        play = {
            "hosts": "localhost",
            "gather_facts": False,
            "vars": {"spec": str(SPEC), "specs": "argument_specs"},
            "tasks": tasks,
        }
    else:
        play = {
            "hosts": "localhost",
            "gather_facts": False,
            "vars": variables,
            "roles": [{"role": "hostdev.vfio.passthrough"}],
        }
    book = tmp_path / "play.yml"
    book.write_text(json.dumps([play]))
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_RETRY_FILES_ENABLED="0")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(SPEC.parents[6]))
    return subprocess.run(
        [str(Path(sys.executable).parent / "ansible-playbook"), "-i", "localhost,", "-c", "local", str(book)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        pytest.param({"passthrough_state": "gone"}, "passthrough_state must be one of: present, absent", id="state"),
        pytest.param({"passthrough_devices": "01:00.0"}, "passthrough_devices", id="devices-not-list"),
        pytest.param(
            {"passthrough_devices": [{"address": ["01:00.0"], "driver": "nouveau"}]},
            "driver must be one of: vfio-pci, pci-stub",
            id="driver",
        ),
        pytest.param(
            {"passthrough_devices": [{"address": ["01:00.0"], "group": "maybe"}]},
            "group must be one of: stub, vfio, fail, ignore",
            id="group",
        ),
        pytest.param(
            {"passthrough_devices": [{"address": ["01:00.0"], "count": "two"}]},
            "count",
            id="count",
        ),
        pytest.param({"passthrough_devices": [{"adress": ["01:00.0"]}]}, "adress", id="unknown-key"),
        pytest.param(
            {"passthrough_boot_method": "vfio"},
            "passthrough_boot_method must be one of: override, ids",
            id="boot-method",
        ),
        pytest.param({"passthrough_iommu": "on"}, "passthrough_iommu must be one of: auto, keep, off", id="iommu"),
        pytest.param({"passthrough_reboot_timeout": "soon"}, "passthrough_reboot_timeout", id="timeout"),
        pytest.param({"passthrough_reboot_ok": "perhaps"}, "passthrough_reboot_ok", id="bool"),
    ],
)
def test_wrong_input_stops_the_role_before_any_task(tmp_path, variables, expected):
    proc = _playbook(tmp_path, variables, validate_only=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "Validating arguments against arg spec" in out
    assert expected in out, out
    # Nothing of the role ran: validation is the first and only task reached.
    assert "Gather IOMMU facts" not in out


# Values the argument spec's types cannot refuse (a string is a string): the role's first task checks them with the
# modules' rules (filter hostdev.vfio.passthrough_validate) and stops before any host is read.
@pytest.mark.parametrize(
    ("variables", "expected"),
    [
        pytest.param(
            {"passthrough_devices": [{"address": ["01:00.0\n"]}]},
            ["passthrough_devices[0].address[0]: '01:00.0", "contains the control character"],
            id="address-trailing-newline",
        ),
        pytest.param(
            {"passthrough_devices": [{"address": ["01:00.0"], "driver": "vfio-pci\ninstall x /bin/sh"}]},
            # stopped already by the spec's choices (a choice is compared in full), before the role's first task
            ["value of driver must be one of: vfio-pci, pci-stub, got: vfio-pci\ninstall x /bin/sh"],
            id="driver-newline",
        ),
        pytest.param(
            {"passthrough_devices": [{"query": "devices[?vendor_id=='10de']\u0007\u001b[2J"}]},
            ["passthrough_devices[0].query:", "contains the control character"],
            id="query-control-chars",
        ),
        pytest.param(
            {"passthrough_devices": [{"ids": ["10de:1b80\n"]}], "passthrough_kernel_args": ["iommu=pt;reboot"]},
            ["passthrough_devices[0].ids[0]:", "passthrough_kernel_args[0]: 'iommu=pt;reboot' contains the character"],
            id="ids-newline-and-karg",
        ),
        pytest.param(
            {"passthrough_vfio_group_group": "kvm\n", "passthrough_vfio_group_mode": "0666"},
            ["passthrough_vfio_group_group:", "passthrough_vfio_group_mode: '0666' is not four octal digits"],
            id="vfio-group-newline-and-mode",
        ),
    ],
)
def test_hostile_values_stop_the_role_before_any_host_is_read(tmp_path, variables, expected):
    proc = _playbook(tmp_path, variables, validate_only=False)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    for text in expected:
        assert text in out, out
    assert "Gather IOMMU facts" not in out


def test_good_input_passes_the_spec(tmp_path):
    variables = {
        "passthrough_devices": [
            {"name": "GPU", "ids": ["10de:*"], "device_class": ["03"], "group": "stub", "count": 1},
            {"address": ["0000:01:00.1@10de:10f0"], "driver": "pci-stub", "group": "ignore"},
            {"query": "devices[?vendor_id=='8086']"},
        ],
        "passthrough_state": "present",
        "passthrough_iommu": "auto",
        "passthrough_iommu_pt": True,
        "passthrough_boot_method": "ids",
        "passthrough_softdep_drivers": ["nouveau", "snd_hda_intel"],
        "passthrough_reboot_ok": True,
        "passthrough_reboot_timeout": 600,
        "passthrough_vfio_group_group": "kvm",
    }
    proc = _playbook(tmp_path, variables, validate_only=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok=1" in proc.stdout
