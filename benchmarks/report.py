#!/usr/bin/env python
# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Time hostdev.vfio.report built from captures alone (no host contact) over 50, 200 and 500 hosts.

The captures are those of the unit tests' fake hosts (tests/unit/.../fakefleet.py: a desktop-like Intel host with
a GPU, SR-IOV NIC and chipset group; the QEMU lab guest), each with a modules.alias the size of Debian 12's (as in
benchmarks/facts.py), packed by the capture code of hostdev.vfio.capture and copied under many host names. Each
size is one run of `ansible-playbook hostdev.vfio.report -e passthrough_captures=DIR` (everything: Ansible start-up,
unpacking and reading every capture, verdicts, hand-off, pictures, report.json/md/html). Prints the seconds in
total and per host, side by side; the goal is a flat time per host and 500 hosts in under a minute.

    make bench-report          (or: make collection && cd build/... && PYTHONPATH=build python benchmarks/report.py)
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from ansible_collections.hostdev.vfio.plugins.module_utils import _capture
from ansible_collections.hostdev.vfio.tests.unit.plugins.module_utils.fakefleet import FIXTURES, roots
from facts import RELEASE, synthetic_aliases  # benchmarks/facts.py, beside this script

SIZES = (50, 200, 500)


def fixture_archives(tmp: Path) -> list[bytes]:
    archives = []
    aliases = synthetic_aliases()
    for name, build in sorted(FIXTURES.items()):
        host = build(tmp / name)
        release = (host.proc / "sys/kernel/osrelease").read_text().strip()
        (host.root / "lib/modules" / release / "modules.alias").write_text(aliases)
        cap = _capture.collect(**roots(host))
        archives.append(_capture.archive(cap))
    assert RELEASE  # the same alias table benchmarks/facts.py times
    return archives


def run_report(captures: Path, out: Path) -> tuple[float, float]:
    """(wall seconds, CPU seconds of ansible-playbook and its workers) of one report run."""
    playbook = Path(sys.executable).parent / "ansible-playbook"
    argv = [
        str(playbook) if playbook.exists() else "ansible-playbook",
        "hostdev.vfio.report",
        "-e",
        f"passthrough_captures={captures}",
        "-e",
        f"passthrough_report_dir={out}",
    ]
    env = dict(
        os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="false", ANSIBLE_INVENTORY_UNPARSED_WARNING="false"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.monotonic()
    proc = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"report over {captures} failed with rc={proc.returncode}")
    return elapsed, cpu


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES))
    args = parser.parse_args()
    rows = []
    load = os.getloadavg()
    with tempfile.TemporaryDirectory(prefix="hostdev-bench-report-") as tmp:
        tmp = Path(tmp)
        archives = fixture_archives(tmp / "fixtures")
        for size in args.sizes:
            captures = tmp / f"captures-{size}"
            captures.mkdir()
            for i in range(size):
                (captures / f"host{i:04d}.example.net.tar.gz").write_bytes(archives[i % len(archives)])
            out = tmp / f"report-{size}"
            seconds, cpu = run_report(captures, out)
            report = json.loads((out / "report.json").read_text())
            totals = report["totals"]
            if totals["hosts"] != size or totals["unreachable"] != 0:
                raise SystemExit(f"report over {size} captures: {totals}")
            html = (out / "report.html").read_text()
            if html.count('<svg xmlns="http://www.w3.org/2000/svg" class="pci-picture"') != size:
                raise SystemExit(f"report over {size} captures: {html.count('<svg')} pictures")
            rows.append((size, seconds, totals["devices"], os.path.getsize(out / "report.html"), cpu))
            shutil.rmtree(captures)
    size_kb = len(archives[0]) // 1024, len(archives[1]) // 1024
    print(f"report from captures (archives of {size_kb[0]} and {size_kb[1]} KiB; Ansible start-up included)")
    print(f"{'hosts':>11}" + "".join(f"{r[0]:>12}" for r in rows))
    print(f"{'functions':>11}" + "".join(f"{r[2]:>12}" for r in rows))
    print(f"{'total s':>11}" + "".join(f"{r[1]:>12.1f}" for r in rows))
    print(f"{'ms/host':>11}" + "".join(f"{1000 * r[1] / r[0]:>12.1f}" for r in rows))
    print(f"{'cpu s':>11}" + "".join(f"{r[4]:>12.1f}" for r in rows))
    print(f"{'cpu ms/host':>11}" + "".join(f"{1000 * r[4] / r[0]:>12.1f}" for r in rows))
    print(f"{'html MiB':>11}" + "".join(f"{r[3] / 2**20:>12.1f}" for r in rows))
    print(f"load average before and after: {load[0]:.1f}, {os.getloadavg()[0]:.1f} (2 cores: above 2, wall time waits)")
    print("goal: ms/host flat as the fleet grows; 500 hosts in under 60 s")


if __name__ == "__main__":
    main()
