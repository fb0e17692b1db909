# Copyright: hostdev.vfio contributors
# GNU General Public License v3.0+ (see https://www.gnu.org/licenses/gpl-3.0.txt)
"""Fleet benchmark on the lab: what the passthrough role and the report cost next to Ansible's floor.

Measures, from one run over the lab guests (they must be up; hold the lab lock):
  (a) hostdev.vfio.configure, idempotent (a first converge run brings the fleet to the wanted state, the second is
      timed and must report changed=0) next to a one-task ansible.builtin.ping play over the same hosts, and the
      same in check mode (--check: the whole plan, nothing touched);
  (b) hostdev.vfio.report next to ansible.builtin.setup over the same hosts;
the reboots per host of the first converge, and the module round trips per host of the idempotent converge, the
check-mode run and the report (tasks and loop items that ran a
module on the host; set_fact/assert/debug run on the controller), counted by benchmarks/callback_plugins.

    make collection && flock /tmp/hostdev-lab.lock .venv/bin/python benchmarks/fleet.py
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LAB = REPO / "tests" / "lab"
RECAP_RE = re.compile(r"^(\S+)\s+:\s+ok=(\d+)\s+changed=(\d+)\s+unreachable=(\d+)\s+failed=(\d+)", re.M)


def ansible_env(roundtrips_file: str | None = None) -> dict:
    env = dict(os.environ)
    env["ANSIBLE_CONFIG"] = str(LAB / ".state" / "ansible.cfg")
    env.setdefault("ANSIBLE_COLLECTIONS_PATH", str(REPO / "build"))
    env["ANSIBLE_COLLECTIONS_SCAN_SYS_PATH"] = "false"
    env["ANSIBLE_NOCOLOR"] = "1"
    env["ANSIBLE_CALLBACK_PLUGINS"] = str(Path(__file__).resolve().parent / "callback_plugins")
    env["ANSIBLE_CALLBACKS_ENABLED"] = "roundtrips"
    if roundtrips_file:
        env["HOSTDEV_ROUNDTRIPS_FILE"] = roundtrips_file
    return env


def run(argv: list[str], label: str, roundtrips: bool = False) -> dict:
    bindir = Path(sys.executable).parent
    argv = [str(bindir / argv[0]) if (bindir / argv[0]).exists() else argv[0], *argv[1:]]
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as tmp:
        counts_file = tmp.name
    start = time.monotonic()
    proc = subprocess.run(argv, env=ansible_env(counts_file), capture_output=True, text=True, check=False)
    elapsed = time.monotonic() - start
    if proc.returncode != 0:
        sys.stderr.write(proc.stdout[-4000:] + proc.stderr[-4000:])
        raise SystemExit(f"{label}: {' '.join(argv)} failed with rc={proc.returncode}")
    recap = {m[0]: {"ok": int(m[1]), "changed": int(m[2])} for m in RECAP_RE.findall(proc.stdout)}
    counts = {}
    if roundtrips:
        try:
            counts = json.loads(Path(counts_file).read_text() or "{}")
        except (OSError, ValueError):
            counts = {}
    os.unlink(counts_file)
    return {"label": label, "seconds": elapsed, "recap": recap, "counts": counts}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--hosts", default="intel,amd,noiommu", help="lab hosts (comma separated)")
    parser.add_argument("--skip-first-converge", action="store_true", help="the fleet is already converged")
    parser.add_argument("--report-dir", default=None, help="where hostdev.vfio.report writes (default: a temp dir)")
    args = parser.parse_args(argv)
    inventory = ["-i", str(LAB / ".state" / "inventory.yml"), "-i", str(LAB / "sample-inventory")]
    limit = ["--limit", args.hosts]
    n_hosts = len(args.hosts.split(","))
    configure = [
        "ansible-playbook",
        *inventory,
        *limit,
        "hostdev.vfio.configure",
        "-e",
        f"passthrough_serial={n_hosts}",
    ]
    report_dir = args.report_dir or tempfile.mkdtemp(prefix="hostdev-report-")

    if not args.skip_first_converge:
        first = run(configure, "converge (first run, brings the fleet to the wanted state)", roundtrips=True)
        reboots = {h: c.get("reboots", 0) for h, c in sorted(first["counts"].items()) if h != "localhost"}
        print(f"first converge: {first['seconds']:.1f} s, changed per host {first['recap']}, reboots {reboots}")
    idem = run(configure, "converge (idempotent)", roundtrips=True)
    changed = {h: r["changed"] for h, r in idem["recap"].items()}
    check = run([*configure, "--check"], "converge (check mode)", roundtrips=True)
    ping = run(["ansible", *inventory, args.hosts, "-m", "ansible.builtin.ping"], "ping")
    report = run(
        ["ansible-playbook", *inventory, *limit, "hostdev.vfio.report", "-e", f"passthrough_report_dir={report_dir}"],
        "report",
        roundtrips=True,
    )
    setup = run(["ansible", *inventory, args.hosts, "-m", "ansible.builtin.setup"], "setup")

    print(f"hosts: {args.hosts}")
    print(
        f"(a) idempotent converge {idem['seconds']:7.1f} s | ping {ping['seconds']:6.1f} s | "
        f"ratio {idem['seconds'] / ping['seconds']:.1f}x | changed per host {changed}"
    )
    print(
        f"(a') check mode          {check['seconds']:7.1f} s | ping {ping['seconds']:6.1f} s | "
        f"ratio {check['seconds'] / ping['seconds']:.1f}x"
    )
    print(
        f"(b) hostdev.vfio.report  {report['seconds']:7.1f} s | setup {setup['seconds']:5.1f} s | "
        f"ratio {report['seconds'] / setup['seconds']:.1f}x | report in {report_dir}"
    )
    for name, result in (("converge (idempotent)", idem), ("check mode", check), ("report", report)):
        per_host = {h: c["roundtrips"] for h, c in sorted(result["counts"].items()) if h != "localhost"}
        print(f"module round trips per host, {name}: {per_host} (ping: 1, setup: 1)")
    if any(changed.values()):
        print("WARNING: the second converge changed something: not idempotent", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
