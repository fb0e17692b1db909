#!/usr/bin/env python
"""hostdev.vfio QEMU lab: boot, reach and stop the guests declared in tests/lab/fleet.yml (or in LAB_FLEET).

Usage: lab.py up [--fresh] [HOST...] | tools [HOST...] | images [HOST...] | down [HOST...] | status
       | ssh HOST [CMD...] | reset HOST... | wait HOST... | console HOST [LINES] | hold HOST... | release HOST...
       | throttle PERCENT
State (overlays, pid files, console logs, monitor and QMP sockets, inventory) lives in tests/lab/.state/.
`hold` makes the guest's next reboot stop it instead (QEMU keeps it powered off and paused); `release` waits until
the held guest has really gone down that way, then starts it again and waits for ssh. A test that needs a host
that does not come back gets one on purpose, whatever the machine's speed.
A guest's `flavour` (fleet.yml) picks its base image and firmware: bookworm-bios-grub (the default) or
trixie-uefi-sdboot-dracut-lvm (OVMF, systemd-boot, dracut, LVM root); see FLAVOURS and tests/lab/README.md.
Environment: LAB_BOOT_TIMEOUT (s, default 900), LAB_DOWN_TIMEOUT (s, default 90), LAB_ACCEL (tcg|kvm, default auto),
LAB_FLEET (another fleet file, e.g. a copy of fleet.yml on other ssh ports; the inventory then holds its guests).
"""

import argparse
import concurrent.futures
import copy
import functools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

try:
    import yaml
except ImportError:  # pragma: no cover - depends on the interpreter
    sys.exit("lab.py: PyYAML is missing: run it with the project's venv (.venv/bin/python tests/lab/lab.py)")

LAB_DIR = Path(__file__).resolve().parent
REPO = LAB_DIR.parent.parent
STATE = LAB_DIR / ".state"
GUEST_HELPERS = ("lab-vfio-group-status", "lab-pci-state", "lab-kmsg-grep")
HOST_TOOLS = {
    "qemu-system-x86_64": "qemu-system-x86",
    "qemu-img": "qemu-utils",
    "mmdebstrap": "mmdebstrap",
    "sfdisk": "fdisk",
    "mkfs.ext4": "e2fsprogs",
    "ssh": "openssh-client",
    "ssh-keygen": "openssh-client",
}
# Image flavours: what build-image builds (its --flavour; None: the default recipe, called as it always was), the
# firmware QEMU boots, and how a guest's kernel_args from fleet.yml reach its kernel.
DEFAULT_FLAVOUR = "bookworm-bios-grub"
OVMF_CODE = Path("/usr/share/OVMF/OVMF_CODE_4M.fd")
OVMF_VARS = Path("/usr/share/OVMF/OVMF_VARS_4M.fd")
FLAVOURS = {
    # SeaBIOS, GRUB i386-pc reads the SMBIOS type 1 serial number into ${lab_args} (build-image).
    # boot: what the targets need to know of a flavour's boot stack (inventory variable lab_boot): the backends
    # kernel_cmdline and initramfs detect, the image lister, the initramfs image and the root file system's
    # kernel name (the EXT4-fs "mounted" line of the kernel log).
    "bookworm-bios-grub": {
        "build_arg": None,
        "firmware": "bios",
        "kernel_args_via": "smbios-serial",
        "tools": {},
        "boot": {
            "bootloader": "grub",
            "initramfs": "initramfs-tools",
            "lister": "lsinitramfs",
            "root_fs": "vda1",
            "files": ["/etc/default/grub", "/etc/initramfs-tools/modules"],
        },
    },
    # OVMF (UEFI), systemd-boot appends the SMBIOS type 11 string io.systemd.boot.kernel-cmdline-extra=... to the
    # BLS entry's options.
    "trixie-uefi-sdboot-dracut-lvm": {
        "build_arg": "trixie-uefi-sdboot-dracut-lvm",
        "firmware": "uefi",
        "kernel_args_via": "smbios-sdboot-extra",
        "tools": {"mkfs.vfat": "dosfstools", "mcopy": "mtools", "pvcreate": "lvm2", "losetup": "mount"},
        "boot": {
            "bootloader": "systemd-boot",
            "initramfs": "dracut",
            "lister": "lsinitrd",
            "root_fs": "dm-0",
            "files": ["/etc/kernel/cmdline", "/etc/dracut.conf.d/50-hostdev-lab.conf"],
        },
    },
}
BOOT_TIMEOUT = int(os.environ.get("LAB_BOOT_TIMEOUT", "900"))
DOWN_TIMEOUT = int(os.environ.get("LAB_DOWN_TIMEOUT", "90"))
CONSOLE_TAIL = 60


class LabError(Exception):
    """A lab operation failed; the message says what and where to look."""


def log(msg):
    print(f"[lab {time.strftime('%H:%M:%S')}] {msg}", flush=True)


# ------------------------------------------------------------------------------------------------ fleet and paths
def fleet_file():
    return Path(os.environ.get("LAB_FLEET") or LAB_DIR / "fleet.yml").resolve()


def load_fleet():
    path = fleet_file()
    try:
        with open(path) as handle:
            fleet = yaml.safe_load(handle)
    except OSError as exc:
        sys.exit(f"lab.py: cannot read the fleet file {path} (LAB_FLEET): {exc.strerror}")
    for name, guest in fleet["guests"].items():
        if flavour_of(guest) not in FLAVOURS:
            known = ", ".join(FLAVOURS)
            sys.exit(f"lab.py: {path}: guest {name}: unknown flavour {guest['flavour']!r}; known: {known}")
    return fleet


def flavour_of(guest):
    return guest.get("flavour", DEFAULT_FLAVOUR)


def select(fleet, names):
    unknown = [name for name in names if name not in fleet["guests"]]
    if unknown:
        raise LabError(f"unknown guest(s) {', '.join(unknown)}; the fleet is {', '.join(fleet['guests'])}")
    return names or list(fleet["guests"])


def gdir(name):
    return STATE / name


def cache_dir():
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(os.environ.get("LAB_CACHE_DIR", os.path.join(base, "hostdev-vfio-lab")))


def ssh_key():
    return cache_dir() / "id_ed25519"


# ------------------------------------------------------------------------------------------------ host setup
def missing_packages(flavours=()):
    path = os.environ.get("PATH", "") + ":/usr/sbin:/sbin"
    tools = dict(HOST_TOOLS)
    for flavour in flavours:
        tools.update(FLAVOURS[flavour]["tools"])
    missing = {pkg for tool, pkg in tools.items() if not shutil.which(tool, path=path)}
    if any(FLAVOURS[flavour]["firmware"] == "uefi" for flavour in flavours):
        missing |= {"ovmf"} if not (OVMF_CODE.exists() and OVMF_VARS.exists()) else set()
    return sorted(missing)


def ensure_host_tools(flavours=()):
    packages = missing_packages(flavours)
    if not packages:
        return
    if os.geteuid() != 0:
        raise LabError(f"missing host packages {' '.join(packages)}; install them (needs root)")
    log(f"installing host packages: {' '.join(packages)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "update", "-q"], check=True, env=env)
    subprocess.run(["apt-get", "install", "-y", "-q", *packages], check=True, env=env)
    still = missing_packages(flavours)
    if still:
        raise LabError(f"still missing after apt-get install: {' '.join(still)}")


def build_image(flavour=DEFAULT_FLAVOUR):
    argv = [str(LAB_DIR / "build-image")]
    if FLAVOURS[flavour]["build_arg"]:
        argv += ["--flavour", FLAVOURS[flavour]["build_arg"]]
    proc = subprocess.run(argv, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise LabError(f"{' '.join(argv)} failed (exit {proc.returncode}); see its output above")
    image = proc.stdout.strip().splitlines()[-1]
    if not os.path.isfile(image):
        raise LabError(f"build-image reported {image!r}, which is not a file")
    return image


def build_images(flavours):
    """Every flavour's image, built side by side (each build takes only its own flavour's lock): {flavour: path}."""
    flavours = sorted(flavours)
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, len(flavours))) as pool:
        return dict(zip(flavours, pool.map(build_image, flavours), strict=True))


def choose_accel(fleet):
    wanted = os.environ.get("LAB_ACCEL", "auto")
    if wanted != "auto":
        return wanted
    cached = STATE / "accel"
    if cached.exists():
        return cached.read_text().strip()
    accel = fleet["defaults"]["accel"]
    if kvm_usable():
        accel = "kvm"
    cached.write_text(accel + "\n")
    return accel


def kvm_usable():
    """KVM only with hardware virtualisation (vmx/svm) and a QEMU that starts with -accel kvm -cpu host."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    if not any(f" {flag}" in flags for flag in ("vmx", "svm")) or not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    argv = ["qemu-system-x86_64", "-accel", "kvm", "-cpu", "host", "-machine", "q35", "-display", "none"]
    argv += ["-nodefaults", "-S", "-monitor", "stdio"]
    try:
        proc = subprocess.run(argv, input="quit\n", capture_output=True, text=True, timeout=15, check=False)
    except subprocess.TimeoutExpired:
        return False
    return proc.returncode == 0


# ------------------------------------------------------------------------------------------------ QEMU command line
def slot(guest, name):
    """QEMU addr= (slot.function) of a named device, from its address in fleet.yml."""
    return guest["devices"][name]["address"].split(":", 2)[2]


def qemu_argv(name, guest, defaults, accel):
    state = gdir(name)
    accel_args = ["-accel", accel] + (["-cpu", "host"] if accel.startswith("kvm") else [])
    argv = ["qemu-system-x86_64", "-name", name, "-machine", defaults["machine"], *accel_args]
    argv += ["-smp", str(defaults["cpus"]), "-m", str(defaults["memory_mib"])]
    flavour = FLAVOURS[flavour_of(guest)]
    if flavour["firmware"] == "uefi":
        # OVMF: the shared read-only code and the guest's own copy of the variable store (prepare_disks).
        argv += ["-drive", f"if=pflash,format=raw,unit=0,readonly=on,file={OVMF_CODE}"]
        argv += ["-drive", f"if=pflash,format=raw,unit=1,file={state / 'OVMF_VARS.fd'}"]
    # The IOMMU first: PCI devices created before it would bypass it.
    argv += ["-device", guest["iommu_device"], *kernel_args_smbios(guest, flavour)]
    argv += device_args(guest, state, uefi=flavour["firmware"] == "uefi")
    argv += ["-display", "none", "-serial", f"file:{state / 'console.log'}"]
    argv += ["-monitor", f"unix:{state / 'monitor.sock'},server,nowait"]
    argv += ["-qmp", f"unix:{state / 'qmp.sock'},server=on,wait=off"]
    argv += ["-pidfile", str(state / "qemu.pid"), "-daemonize"]
    return argv


def kernel_args_smbios(guest, flavour):
    """QEMU -smbios option carrying the guest's kernel_args to its boot loader (see FLAVOURS)."""
    if flavour["kernel_args_via"] == "smbios-sdboot-extra":
        # systemd-boot (v254+) appends this SMBIOS type 11 (OEM strings) value to a type 1 entry's options.
        # A comma is QEMU's option separator: doubled, it stands for itself.
        value = f"io.systemd.boot.kernel-cmdline-extra={guest['kernel_args']}".replace(",", ",,")
        return ["-smbios", f"type=11,value={value}"]
    return ["-smbios", f"type=1,serial={guest['kernel_args']}"]


def device_args(guest, state, uefi=False):
    port = guest["ssh_port"]
    args = ["-netdev", f"user,id=mgmt,hostfwd=tcp:127.0.0.1:{port}-:22"]
    # romfile= : no PXE option ROMs for SeaBIOS to run at every boot (slow under TCG; the guests boot from disk).
    args += ["-device", f"virtio-net-pci,netdev=mgmt,romfile=,addr={slot(guest, 'mgmt_nic')}"]
    args += ["-drive", f"if=none,id=root,file={state / 'overlay.qcow2'},format=qcow2,discard=unmap"]
    # UEFI: bootindex makes OVMF boot the disk's \EFI\BOOT\BOOTX64.EFI at once instead of trying PXE on the NICs.
    bootindex = ",bootindex=0" if uefi else ""
    args += ["-device", f"virtio-blk-pci,drive=root,addr={slot(guest, 'root_disk')}{bootindex}"]
    args += ["-netdev", "user,id=spare,restrict=on"]
    args += ["-device", f"e1000e,netdev=spare,romfile=,addr={slot(guest, 'e1000e')}"]
    args += ["-audiodev", "none,id=snd0", "-device", f"ich9-intel-hda,addr={slot(guest, 'hda')}"]
    args += ["-device", "hda-duplex,audiodev=snd0", "-device", f"qemu-xhci,addr={slot(guest, 'xhci')}"]
    args += ["-drive", f"if=none,id=nvm,file={state / 'nvme.raw'},format=raw"]
    args += ["-device", f"nvme,serial=labnvme0,drive=nvm,addr={slot(guest, 'nvme')}"]
    args += ["-device", f"pcie-pci-bridge,id=br1,addr={slot(guest, 'bridge')}"]
    for index, nic in ((1, "bridge_nic1"), (2, "bridge_nic2")):
        args += ["-netdev", f"user,id=bn{index},restrict=on"]
        args += ["-device", f"e1000,bus=br1,netdev=bn{index},romfile=,addr={slot(guest, nic)}"]
    if "sriov_pf" in guest["devices"]:
        args += ["-device", "nvme-subsys,id=sriovsub", "-device", sriov_nvme(slot(guest, "sriov_pf"))]
    return args


def sriov_nvme(addr):
    # QEMU 7.2 rules: a subsystem; vq_flexible >= 2 * max_vfs; max_ioqpairs >= vq_flexible + 2;
    # vi_flexible >= max_vfs; msix_qsize >= vi_flexible + 1.
    params = "sriov_max_vfs=2,sriov_vq_flexible=4,sriov_vi_flexible=2,max_ioqpairs=6,msix_qsize=3"
    return f"nvme,serial=labsriov0,subsys=sriovsub,addr={addr},{params}"


# ------------------------------------------------------------------------------------------------ processes
def read_pid(name):
    try:
        pid = int((gdir(name) / "qemu.pid").read_text().strip())
    except (OSError, ValueError):
        return None
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return None
    # Our guest only: its pid file path is on the command line (a recycled pid is never ours).
    return pid if str(gdir(name) / "qemu.pid").encode() in cmdline else None


def ssh_base(guest):
    return [
        "ssh",
        "-i",
        str(ssh_key()),
        "-p",
        str(guest["ssh_port"]),
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
        "-o",
        "BatchMode=yes",
        "-o",
        "ConnectTimeout=5",
        "-o",
        "ServerAliveInterval=5",
        "-o",
        "ServerAliveCountMax=3",
        "root@127.0.0.1",
    ]


def ssh_ok(guest, attempt_timeout=20):
    argv = ["timeout", str(attempt_timeout), *ssh_base(guest), "true"]
    return subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, check=False).returncode == 0


def console_tail(name, lines=CONSOLE_TAIL):
    path = gdir(name) / "console.log"
    if not path.exists():
        return f"(no console log at {path})"
    text = path.read_bytes().decode("utf-8", "replace").splitlines()
    return "\n".join(text[-lines:])


def port_free(port):
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def prepare_disks(name, guest, image, defaults):
    state = gdir(name)
    state.mkdir(parents=True, exist_ok=True)
    overlay, base_file = state / "overlay.qcow2", state / "base"
    if overlay.exists() and (not base_file.exists() or base_file.read_text().strip() != image):
        log(f"{name}: base image changed, discarding the old overlay")
        overlay.unlink()
    if not overlay.exists():
        argv = ["qemu-img", "create", "-q", "-f", "qcow2", "-F", "qcow2", "-b", image, str(overlay)]
        subprocess.run(argv, check=True)
        base_file.write_text(image + "\n")
        (state / "OVMF_VARS.fd").unlink(missing_ok=True)  # a new disk: fresh UEFI variables too
    if FLAVOURS[flavour_of(guest)]["firmware"] == "uefi" and not (state / "OVMF_VARS.fd").exists():
        shutil.copyfile(OVMF_VARS, state / "OVMF_VARS.fd")
    nvme = state / "nvme.raw"
    if not nvme.exists():
        with open(nvme, "wb") as handle:
            handle.truncate(defaults["nvme_drive_mib"] * 1024 * 1024)


def start_guest(name, guest, fleet, image, accel):
    prepare_disks(name, guest, image, fleet["defaults"])
    if not port_free(guest["ssh_port"]):
        raise LabError(f"{name}: 127.0.0.1:{guest['ssh_port']} is already in use by another process")
    for stale in ("console.log", "qemu.pid", "monitor.sock", "qmp.sock", "held"):
        (gdir(name) / stale).unlink(missing_ok=True)
    argv = qemu_argv(name, guest, fleet["defaults"], accel)
    (gdir(name) / "qemu.cmdline").write_text(" ".join(argv) + "\n")
    proc = subprocess.run(argv, capture_output=True, text=True, check=False)
    (gdir(name) / "qemu.log").write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0 or read_pid(name) is None:
        raise LabError(f"{name}: QEMU did not start (exit {proc.returncode}):\n{proc.stderr.strip()}")
    return time.monotonic()


class GuestPanic(LabError):
    """The guest kernel panicked while booting (seen on its console)."""


def panicked(name):
    path = gdir(name) / "console.log"
    return path.exists() and b"Kernel panic - not syncing" in path.read_bytes()


def wait_ssh(name, guest, started, timeout=BOOT_TIMEOUT):
    """Wait until ssh answers; every attempt is bounded. Returns seconds since `started`."""
    deadline = started + timeout
    while time.monotonic() < deadline:
        if read_pid(name) is None:
            raise LabError(f"{name}: QEMU exited while booting. Console:\n{console_tail(name)}")
        if panicked(name):
            raise GuestPanic(f"{name}: the guest kernel panicked. Console:\n{console_tail(name)}")
        if ssh_ok(guest):
            return time.monotonic() - started
        time.sleep(2)
    raise LabError(
        f"{name}: no ssh on 127.0.0.1:{guest['ssh_port']} within {timeout} s (LAB_BOOT_TIMEOUT). "
        f"Last {CONSOLE_TAIL} console lines ({gdir(name) / 'console.log'}):\n{console_tail(name)}"
    )


def install_helpers(guest):
    for helper in GUEST_HELPERS:
        body = (LAB_DIR / "guest" / helper).read_text().split("\n", 1)[1]
        script = "#!/usr/bin/python3\n" + body
        target = f"/usr/local/sbin/{helper}"
        remote = f"cat > {target}.tmp && chmod 0755 {target}.tmp && mv {target}.tmp {target}"
        argv = ["timeout", "60", *ssh_base(guest), remote]
        proc = subprocess.run(argv, input=script, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise LabError(f"copying {helper} to port {guest['ssh_port']} failed: {proc.stderr.strip()}")


class QmpError(LabError):
    """QEMU answered a QMP command with an error, or its QMP socket is unusable."""


def qmp(name, *commands):
    """Run QMP commands ({"execute": ..., "arguments": ...}) on the guest's QEMU, in order; their return values.

    Every command is answered before the next is sent (QEMU's asynchronous events in between are skipped), so
    a caller never guesses how long QEMU needs. The socket timeout only bounds a QEMU that stopped answering.
    """
    sock_path = gdir(name) / "qmp.sock"
    results = []
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(60)
            sock.connect(str(sock_path))
            reader = sock.makefile("rb")
            if "QMP" not in json.loads(reader.readline() or b"{}"):
                raise QmpError(f"{name}: {sock_path} sent no QMP greeting")
            for command in ({"execute": "qmp_capabilities"}, *commands):
                sock.sendall(json.dumps(command).encode() + b"\n")
                while True:
                    line = reader.readline()
                    if not line:
                        raise QmpError(f"{name}: QEMU closed {sock_path} before answering {command['execute']}")
                    answer = json.loads(line)
                    if "error" in answer:
                        raise QmpError(f"{name}: QMP {command['execute']}: {answer['error'].get('desc', answer)}")
                    if "return" in answer:
                        results.append(answer["return"])
                        break
    except (OSError, ValueError) as exc:
        raise QmpError(f"{name}: QMP socket {sock_path} unusable ({exc})") from exc
    return results[1:]


def vm_status(name):
    """QEMU's run state of the guest: running, paused, shutdown (held at a reboot), prelaunch, ..."""
    return qmp(name, {"execute": "query-status"})[0]["status"]


def set_reboot_action(name, held):
    """held: a guest reboot powers the guest off and QEMU pauses it (the process and its ports stay)."""
    actions = {"reboot": "shutdown", "shutdown": "pause"} if held else {"reboot": "reset", "shutdown": "poweroff"}
    qmp(name, {"execute": "set-action", "arguments": actions})


def wait_exit(name, timeout):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if read_pid(name) is None:
            return True
        time.sleep(1)
    return False


def stop_guest(name, graceful=True):
    """ACPI power-off (graceful) or QEMU's `quit`, through the monitor; signals to the pid only as a last resort."""
    pid = read_pid(name)
    if pid is None:
        log(f"{name}: not running")
        return
    started = time.monotonic()
    graceful = graceful and not panicked(name)  # a panicked kernel ignores ACPI
    command, timeout = "quit", 10
    try:
        # A held or paused guest cannot power itself off: quit it. Otherwise an ACPI power-off, with QEMU's
        # default actions back (a held guest's power-off would only pause it).
        if graceful and vm_status(name) == "running":
            set_reboot_action(name, held=False)
            command, timeout = "system_powerdown", DOWN_TIMEOUT
        qmp(name, {"execute": command})
        ok = wait_exit(name, timeout)
    except QmpError as exc:
        log(f"{exc}; will stop QEMU by its pid")
        ok = False
    if ok:
        (gdir(name) / "held").unlink(missing_ok=True)
        log(f"{name}: {'powered off' if command != 'quit' else 'stopped (quit)'} in {time.monotonic() - started:.0f} s")
        return
    for sig, grace in ((signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        pid = read_pid(name)
        if pid is None:
            break
        log(f"{name}: still running after {command}; sending {sig.name} to pid {pid}")
        os.kill(pid, sig)
        if wait_exit(name, grace):
            break
    if read_pid(name) is not None:
        raise LabError(f"{name}: QEMU pid {pid} does not stop")
    (gdir(name) / "held").unlink(missing_ok=True)
    log(f"{name}: stopped")


# ------------------------------------------------------------------------------------------------ inventory
def write_inventory(fleet):
    hosts = {}
    for name, guest in fleet["guests"].items():
        hosts[name] = {
            "ansible_host": "127.0.0.1",
            "ansible_port": guest["ssh_port"],
            "ansible_user": "root",
            "ansible_ssh_private_key_file": str(ssh_key()),
            "ansible_python_interpreter": "/usr/bin/python3",
            "ansible_ssh_common_args": "-o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
            "-o ServerAliveInterval=5 -o ServerAliveCountMax=6 -o LogLevel=ERROR",
            "lab_iommu": guest["iommu"],
            "lab_flavour": flavour_of(guest),
            "lab_boot": copy.deepcopy(FLAVOURS[flavour_of(guest)]["boot"]),
            "lab_devices": copy.deepcopy(guest["devices"]),
        }
    inventory = {"all": {"children": {"lab": {"hosts": hosts}}}}
    STATE.mkdir(parents=True, exist_ok=True)
    header = f"# Written by tests/lab/lab.py from {fleet_file()}; do not edit.\n"
    (STATE / "inventory.yml").write_text(header + yaml.safe_dump(inventory, sort_keys=False))
    cfg = [
        "# Written by tests/lab/lab.py: use with ANSIBLE_CONFIG=tests/lab/.state/ansible.cfg",
        "[defaults]",
        f"inventory = {STATE / 'inventory.yml'}",
        f"roles_path = {REPO / 'tests' / 'integration' / 'targets'}",
        "host_key_checking = False",
        "interpreter_python = /usr/bin/python3",
        "timeout = 30",
        "forks = 10",
        f"callback_plugins = {REPO / 'tests' / 'lab' / 'callback_plugins'}",
        "callbacks_enabled = lab_timing",
        "",
        "[ssh_connection]",
        "pipelining = True",
        "ssh_args = -o ControlMaster=auto -o ControlPersist=120s",
        "",
    ]
    (STATE / "ansible.cfg").write_text("\n".join(cfg))


# ------------------------------------------------------------------------------------------------ subcommands
def cmd_up(fleet, names, fresh=False):
    STATE.mkdir(parents=True, exist_ok=True)
    flavours = sorted({flavour_of(fleet["guests"][name]) for name in names})
    ensure_host_tools(flavours)
    images = build_images(flavours)
    accel = choose_accel(fleet)
    write_inventory(fleet)
    if fresh:
        for name in names:
            stop_guest(name)
            discard_overlay(name)
    todo = [name for name in names if read_pid(name) is None]
    for name in names:
        if name not in todo:
            log(f"{name}: already running (pid {read_pid(name)})")
    started = {}
    restart = {}
    for name in todo:
        guest = fleet["guests"][name]
        image = images[flavour_of(guest)]
        started[name] = start_guest(name, guest, fleet, image, accel)
        restart[name] = functools.partial(start_guest, name, guest, fleet, image, accel)
        log(f"{name}: QEMU started ({accel}), pid {read_pid(name)}, ssh port {fleet['guests'][name]['ssh_port']}")
    wait_all(fleet, names, started, restart)
    log(f"lab up: {', '.join(names)}; inventory {STATE / 'inventory.yml'}")


def boot_wait(name, guest, started, restart):
    """wait_ssh; a guest whose kernel panicked at boot (a TCG timing flake) is restarted once, loudly."""
    try:
        return wait_ssh(name, guest, started)
    except GuestPanic as exc:
        if restart is None:
            raise
        log(f"{exc}\n{name}: restarting it once after the kernel panic above")
        stop_guest(name, graceful=False)
        (gdir(name) / "console.log").rename(gdir(name) / "console.panic.log")
        return wait_ssh(name, guest, restart())


def wait_all(fleet, names, started, restart=None):
    """Wait for ssh on every guest in parallel, then install the helpers. Raises if any guest failed."""
    restart = restart or {}
    now = time.monotonic()
    errors, threads = {}, []

    def worker(name):
        guest = fleet["guests"][name]
        try:
            seconds = boot_wait(name, guest, started.get(name, now), restart.get(name))
            install_helpers(guest)
            what = "boot to ssh" if name in started else "ssh"
            log(f"{name}: {what} in {seconds:.0f} s")
        except (LabError, OSError, subprocess.SubprocessError) as exc:
            errors[name] = str(exc)

    for name in names:
        thread = threading.Thread(target=worker, args=(name,), daemon=True)
        thread.start()
        threads.append(thread)
    for thread in threads:
        thread.join()
    if errors:
        raise LabError("\n\n".join(errors.values()))


def discard_overlay(name):
    for leftover in ("overlay.qcow2", "base", "nvme.raw", "OVMF_VARS.fd"):
        (gdir(name) / leftover).unlink(missing_ok=True)


def cmd_down(fleet, names):
    errors = []
    threads = [threading.Thread(target=collect(errors, stop_guest), args=(name,)) for name in names]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise LabError("\n".join(errors))


def collect(errors, func):
    def run(*args):
        try:
            func(*args)
        except (LabError, OSError) as exc:
            errors.append(str(exc))

    return run


def cmd_status(fleet, names):
    print(f"{'guest':<9} {'state':<8} {'pid':>7} {'port':>6} {'ssh':<4} {'iommu':<6} overlay")
    for name in names:
        guest = fleet["guests"][name]
        pid = read_pid(name)
        reach = ("yes" if ssh_ok(guest, 10) else "no") if pid else "-"
        overlay = gdir(name) / "overlay.qcow2"
        size = f"{overlay.stat().st_blocks * 512 // 2**20} MiB" if overlay.exists() else "none"
        row = f"{name:<9} {'running' if pid else 'stopped':<8} {pid or '-':>7} {guest['ssh_port']:>6} {reach:<4}"
        print(f"{row} {guest['iommu']:<6} {size}")


def cmd_ssh(fleet, name, command):
    argv = ssh_base(fleet["guests"][name])
    argv += command
    os.execvp(argv[0], argv)


def cmd_reset(fleet, names):
    cmd_down(fleet, names)
    for name in names:
        discard_overlay(name)
        log(f"{name}: overlay discarded (back to the pristine image)")
    cmd_up(fleet, names)


def cmd_wait(fleet, names):
    for name in names:
        if read_pid(name) is None:
            raise LabError(f"{name}: not running (lab.py up {name})")
    wait_all(fleet, names, {})


def cmd_hold(fleet, names):
    """From now on a reboot of these guests stops them (QEMU pauses them powered off) until `release`."""
    for name in names:
        if read_pid(name) is None:
            raise LabError(f"{name}: not running (lab.py up {name})")
        set_reboot_action(name, held=True)
        (gdir(name) / "held").write_text("reboot=shutdown shutdown=pause\n")
        log(f"{name}: held - its next reboot stops it until `lab.py release {name}`")


def wait_held_down(name, timeout=BOOT_TIMEOUT):
    """Wait until a held guest has gone down at its reboot (QEMU run state `shutdown`)."""
    deadline = time.monotonic() + timeout
    while True:
        status = vm_status(name)
        if status == "shutdown":
            return
        if time.monotonic() >= deadline:
            raise LabError(
                f"{name}: held, but it has not rebooted within {timeout} s (QEMU state {status}); the test "
                f"expected a reboot. Console:\n{console_tail(name)}"
            )
        time.sleep(1)


def cmd_release(fleet, names):
    """Start held guests again once they are down, restore QEMU's reboot action, wait for ssh."""
    started = {}
    for name in names:
        if read_pid(name) is None or not (gdir(name) / "held").exists():
            raise LabError(f"{name}: not held (lab.py hold {name} comes first)")
        wait_held_down(name)
        set_reboot_action(name, held=False)
        qmp(name, {"execute": "system_reset"})
        # The reset is carried out by QEMU's main loop after the command returns: `cont` only once it has.
        while vm_status(name) == "shutdown":
            time.sleep(0.2)
        qmp(name, {"execute": "cont"})
        (gdir(name) / "held").unlink()
        started[name] = time.monotonic()
        log(f"{name}: released - booting again")
    wait_all(fleet, names, started)


CGROUP_V1 = Path("/sys/fs/cgroup/cpu")
CGROUP_V2 = Path("/sys/fs/cgroup")


def cmd_throttle(fleet, percent):
    """Run every running guest's QEMU in one cgroup capped at PERCENT of one CPU (0: no cap), to prove that a
    suite's results do not depend on the guests' speed."""
    pids = [pid for pid in map(read_pid, fleet["guests"]) if pid]
    if not pids:
        raise LabError("no guest is running (lab.py up)")
    if (CGROUP_V2 / "cgroup.controllers").exists() and "cpu" in (CGROUP_V2 / "cgroup.controllers").read_text():
        group = CGROUP_V2 / "hostdev-lab"
        group.mkdir(exist_ok=True)
        (group / "cpu.max").write_text(f"{percent * 1000} 100000\n" if percent else "max 100000\n")
    elif (CGROUP_V1 / "tasks").exists():
        group = CGROUP_V1 / "hostdev-lab"
        group.mkdir(exist_ok=True)
        (group / "cpu.cfs_period_us").write_text("100000\n")
        (group / "cpu.cfs_quota_us").write_text(f"{percent * 1000}\n" if percent else "-1\n")
    else:
        raise LabError("no cgroup cpu controller found (neither cgroup v2 cpu.max nor v1 cpu.cfs_quota_us)")
    for pid in pids:
        (group / "cgroup.procs").write_text(f"{pid}\n")
    cap = f"capped at {percent}% of one CPU" if percent else "no cap"
    log(f"QEMU pids {' '.join(map(str, pids))}: {cap} ({group})")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="lab.py", description=__doc__.split("\n", 1)[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    up = sub.add_parser("up", help="build the image if needed and boot guests")
    up.add_argument("--fresh", action="store_true", help="discard the guests' overlays first (pristine guests)")
    up.add_argument("hosts", nargs="*")
    sub.add_parser("tools", help="install the host packages the fleet's guests need").add_argument("hosts", nargs="*")
    images = sub.add_parser("images", help="build (or find cached) the images of the fleet's flavours, side by side")
    images.add_argument("hosts", nargs="*")
    sub.add_parser("down", help="power guests off").add_argument("hosts", nargs="*")
    sub.add_parser("status", help="state of every guest").add_argument("hosts", nargs="*")
    ssh = sub.add_parser("ssh", help="ssh into a guest as root")
    ssh.add_argument("host")
    ssh.add_argument("command", nargs=argparse.REMAINDER)
    sub.add_parser("reset", help="back to the pristine image").add_argument("hosts", nargs="+")
    sub.add_parser("wait", help="wait for ssh (after a reboot)").add_argument("hosts", nargs="+")
    sub.add_parser("hold", help="a reboot stops the guest until release").add_argument("hosts", nargs="+")
    sub.add_parser("release", help="start held guests again once down").add_argument("hosts", nargs="+")
    throttle = sub.add_parser("throttle", help="cap all guests together at PERCENT of one CPU (0: no cap)")
    throttle.add_argument("percent", type=int)
    console = sub.add_parser("console", help="tail of a guest's console log")
    console.add_argument("host")
    console.add_argument("lines", nargs="?", type=int, default=CONSOLE_TAIL)
    args = parser.parse_args(argv)
    fleet = load_fleet()
    try:
        return dispatch(fleet, args)
    except LabError as exc:
        print(f"lab.py {args.cmd}: ERROR: {exc}", file=sys.stderr)
        return 1
    except subprocess.CalledProcessError as exc:
        print(f"lab.py {args.cmd}: ERROR: {' '.join(map(str, exc.cmd))} exited {exc.returncode}", file=sys.stderr)
        return 1


def dispatch(fleet, args):
    if args.cmd in ("ssh", "console"):
        name = select(fleet, [args.host])[0]
        if args.cmd == "console":
            print(console_tail(name, args.lines))
            return 0
        cmd_ssh(fleet, name, args.command)
    if args.cmd == "throttle":
        cmd_throttle(fleet, args.percent)
        return 0
    names = select(fleet, args.hosts)
    if args.cmd in ("tools", "images"):
        flavours = sorted({flavour_of(fleet["guests"][name]) for name in names})
        ensure_host_tools(flavours)
        if args.cmd == "images":
            for flavour, image in build_images(flavours).items():
                log(f"image {flavour}: {image}")
        return 0
    if args.cmd == "up":
        cmd_up(fleet, names, args.fresh)
    else:
        commands = {"down": cmd_down, "status": cmd_status, "reset": cmd_reset, "wait": cmd_wait}
        commands.update(hold=cmd_hold, release=cmd_release)
        commands[args.cmd](fleet, names)
    return 0


if __name__ == "__main__":
    sys.exit(main())
