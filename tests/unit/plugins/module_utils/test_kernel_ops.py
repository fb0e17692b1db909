# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""SysfsKernel, the only code that writes sysfs and runs modprobe: a value that is not one clean word never goes out,
even when a caller forgot to validate it (issue 18, part C, defence in depth)."""

from __future__ import annotations

import pytest
from ansible_collections.hostdev.vfio.plugins.module_utils._kernel_ops import KernelError, SysfsKernel
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakesysfs import FakeHost

E1000E = "0000:00:04.0"


@pytest.fixture
def kernel(tmp_path):
    host = FakeHost(tmp_path)
    host.add_device(E1000E, "8086:10d3", "020000", driver="e1000e", group=4)
    (host.sys / "bus/pci/drivers_probe").write_text("")
    calls = []

    def run(argv):
        calls.append(argv)
        return 0, "", ""

    return host, SysfsKernel(str(host.sys), str(host.dev), run_command=run), calls


@pytest.mark.parametrize("driver", ["vfio-pci\n", "vfio-pci\ninstall e1000e /bin/sh", "vfio pci", "vfio\x00", "é"])
def test_set_override_refuses_what_is_not_a_driver_name(kernel, driver):
    host, k, _calls = kernel
    path = host.device_path(E1000E) / "driver_override"
    before = path.read_bytes()
    with pytest.raises(KernelError, match=f"refusing to write driver_override of {E1000E}"):
        k.set_override(E1000E, driver)
    assert path.read_bytes() == before


def test_set_override_writes_a_driver_name_and_clears(kernel):
    host, k, _calls = kernel
    path = host.device_path(E1000E) / "driver_override"
    k.set_override(E1000E, "vfio-pci")
    assert path.read_text() == "vfio-pci\n"
    path.write_text("")  # a regular file keeps old bytes past the write; a sysfs attribute takes the write whole
    k.set_override(E1000E, None)
    assert path.read_text() == "\n"


@pytest.mark.parametrize("name", ["vfio-pci\n", "vfio-pci -v", "../../tmp/x", "", "a" * 65])
def test_load_module_refuses_what_is_not_a_module_name(kernel, name):
    _host, k, calls = kernel
    with pytest.raises(KernelError, match="refusing to run modprobe"):
        k.load_module(name)
    assert calls == []


def test_load_module_runs_modprobe_with_a_name(kernel):
    _host, k, calls = kernel
    k.load_module("vfio-pci")
    assert calls == [["modprobe", "vfio-pci"]]


@pytest.mark.parametrize("address", ["0000:00:04.0\n0000:00:05.0", "0000:00:04.0 x", "0000:00:04.0\x00"])
def test_probe_refuses_more_than_one_word(kernel, address):
    host, k, _calls = kernel
    with pytest.raises(KernelError, match="refusing to write"):
        k.probe(address)
    assert (host.sys / "bus/pci/drivers_probe").read_text() == ""
