# shellcheck shell=bash
# Image flavour trixie-uefi-sdboot-dracut-lvm, sourced by tests/lab/build-image --flavour trixie-uefi-sdboot-dracut-lvm.
# Debian 13 (trixie) from Debian packages; UEFI (the host's OVMF); systemd-boot at \EFI\BOOT\BOOTX64.EFI of a FAT
# ESP, type 1 (BLS) entries written by kernel-install's plugins with the options of /etc/kernel/cmdline; the
# initramfs built by dracut; / on an LVM logical volume (labvg/root). See tests/lab/README.md.
#
# Disk (GPT, 4 GiB): 1 MiB..257 MiB the ESP (FAT32, label ESP, mounted at /boot/efi), then an LVM PV holding the VG
# labvg with one LV, root (ext4, label root). No mounts: mkfs.vfat --offset and mtools fill the ESP in the disk
# file; the LVM metadata is written by the host's lvm2 through a loop device over the PV partition with activation
# off (this host has no device-mapper), and mkfs.ext4 -d writes the file system at the LV's offset (one linear
# segment from the first extent, so the LV is a contiguous byte range of the disk file).

SUITE=trixie
DISK_MIB=4096
ESP_MIB=256
VG=labvg
LV=root
ENTRY_TOKEN=debian
PACKAGES=linux-image-amd64,systemd-sysv,systemd-boot,systemd-boot-efi,dracut,lvm2,dbus,openssh-server
PACKAGES+=,openssh-sftp-server,python3,kmod,pciutils,zstd,udev,iproute2,procps,sudo,driverctl
# The guest's own QEMU: vmm_probe and the role's verify start it on devices bound to vfio-pci.
PACKAGES+=,qemu-system-x86
# Arguments every guest of this image boots with (the BLS entry's options). Per-guest ones come from QEMU's SMBIOS
# type 11 string io.systemd.boot.kernel-cmdline-extra=..., which systemd-boot appends (lab.py). mitigations=off,
# no_timer_check and norandmaps as in the bookworm image (build-image).
KERNEL_CMDLINE="root=/dev/mapper/$VG-$LV rd.lvm.lv=$VG/$LV ro console=ttyS0,115200n8 mitigations=off no_timer_check"
KERNEL_CMDLINE+=" norandmaps"
# LVM on the build host: only the loop device, no udev, no device-mapper, no backups in the host's /etc/lvm.
LVM_CONFIG='devices { use_devicesfile=0 obtain_device_list_from_udev=0 } activation { udev_sync=0 udev_rules=0 }'
LVM_CONFIG+=' global { activation=0 } backup { backup=0 archive=0 }'

flavour_tools() {
    echo mkfs.vfat:dosfstools mcopy:mtools pvcreate:lvm2 losetup:mount
}

# Before any package is installed, so that the kernel's postinst builds the initramfs with this configuration.
flavour_setup() {
    local root=$1
    mkdir -p "$root/etc/dracut.conf.d" "$root/etc/kernel/install.d"
    cat >"$root/etc/dracut.conf.d/50-hostdev-lab.conf" <<'DRACUT'
# hostdev.vfio lab: a small generic initramfs. Not hostonly (the image is built in a chroot on another machine);
# the dracut modules and kernel drivers the virtio disk and the LVM root need, and nothing else; zstd -1: a
# regeneration inside a TCG guest stays around a minute (Debian's default, zstd -15 of everything, takes many).
hostonly="no"
compress="zstd -1 -q -T0"
dracutmodules=" systemd systemd-initrd dracut-systemd base fs-lib rootfs-block kernel-modules udev-rules dm lvm "
drivers=" virtio_pci virtio_blk ext4 dm_mod "
DRACUT
    echo "$KERNEL_CMDLINE" >"$root/etc/kernel/cmdline"
    # A fixed entry token: the BLS entries and the ESP's /debian/KVER/ directory do not depend on the machine id
    # (empty in the image, so every guest gets its own at first boot).
    echo "$ENTRY_TOKEN" >"$root/etc/kernel/entry-token"
    printf '# hostdev.vfio lab\nlayout=bls\n' >"$root/etc/kernel/install.conf"
    # One initramfs, Debian's: /boot/initrd.img-KVER, built by dracut (the kernel's postinst.d hook, or dracut -f),
    # copied into the ESP by kernel-install's 55-initrd.install. Unmasked, dracut's own kernel-install plugin would
    # build a second one at every `kernel-install add` and the entry would list both initrds.
    ln -sf /dev/null "$root/etc/kernel/install.d/50-dracut.install"
    # depmod ran when the kernel package was installed; kernel-install's 50-depmod.install would run it again at
    # every `kernel-install add` (a command-line change), ~30 s of a TCG guest's time for nothing.
    ln -sf /dev/null "$root/etc/kernel/install.d/50-depmod.install"
}

flavour_customize() {
    local root=$1 kver
    customize_common "$root"
    printf '/dev/mapper/%s-%s\t/\text4\terrors=remount-ro\t0\t0\n' "$VG" "$LV" >"$root/etc/fstab"
    # The ESP on an automount, as systemd's gpt-auto-generator mounts ESPs: under TCG on a busy host udev's coldplug
    # can take longer than the 90 s a plain fstab entry waits for /dev/disk/by-label/ESP (seen: emergency mode).
    # The first access (bootctl, kernel-install, ls) mounts it, waiting for the device if need be.
    printf 'LABEL=ESP\t/boot/efi\tvfat\tumask=0077,x-systemd.automount\t0\t0\n' >>"$root/etc/fstab"
    # No interactive first-boot questions on the serial console (the machine id is empty in the image).
    chroot "$root" systemctl mask systemd-firstboot.service >/dev/null 2>&1
    # systemd-boot-random-seed refreshes a seed file in the ESP at every boot, before sysinit.target: its access
    # triggers the ESP's automount and waits for the disk's partition device, ~12 s of every boot under TCG (measured
    # with systemd-analyze critical-chain). No test reads the seed; the ESP is then mounted by its first real user.
    chroot "$root" systemctl mask systemd-boot-random-seed.service >/dev/null 2>&1
    # dracut-shutdown unpacks the whole initramfs into /run/initramfs at every shutdown, so that systemd-shutdown can
    # unmount the root from there ("exitrd"): ~6 s of a TCG reboot, and ~3 s more in the exitrd. The root is
    # remounted read-only by systemd-shutdown either way; the image's dracut leaves the shutdown module out.
    chroot "$root" systemctl mask dracut-shutdown.service >/dev/null 2>&1

    kver=$(basename "$(ls -1 "$root"/boot/vmlinuz-* | sort -V | tail -n1)")
    kver=${kver#vmlinuz-}
    echo "$kver" >"$root/etc/hostdev-lab-kernel"
    grep -E 'CONFIG_(INTEL_IOMMU|INTEL_IOMMU_DEFAULT_ON|AMD_IOMMU|VFIO_PCI|PCI_STUB)[= ]' \
        "$root/boot/config-$kver" >"$root/etc/hostdev-lab-kconfig" || true
    [[ -f $root/boot/initrd.img-$kver ]] || die "dracut left no /boot/initrd.img-$kver"

    # The ESP's contents, staged in the tree's /boot/efi (moved out into the FAT file system by flavour_build).
    # `bootctl install` and `kernel-install` refuse a directory that is not a mounted ESP, so do what they do:
    # systemd-boot at the removable-media path and at EFI/systemd, and the BLS entry from the image's own
    # kernel-install plugins (55-initrd.install, 90-loaderentry.install), run with kernel-install's environment.
    local esp=$root/boot/efi
    install -D -m 0644 "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$esp/EFI/systemd/systemd-bootx64.efi"
    install -D -m 0644 "$root/usr/lib/systemd/boot/efi/systemd-bootx64.efi" "$esp/EFI/BOOT/BOOTX64.EFI"
    mkdir -p "$esp/loader/entries" "$esp/$ENTRY_TOKEN/$kver"
    printf 'timeout 0\neditor no\n' >"$esp/loader/loader.conf"
    echo type1 >"$esp/loader/entries.srel"
    chroot "$root" env KERNEL_INSTALL_LAYOUT=bls KERNEL_INSTALL_ENTRY_TOKEN="$ENTRY_TOKEN" \
        KERNEL_INSTALL_MACHINE_ID=00000000000000000000000000000001 KERNEL_INSTALL_BOOT_ROOT=/boot/efi \
        BOOT_MNT=/boot/efi KERNEL_INSTALL_STAGING_AREA=/tmp/kernel-install-staging KERNEL_INSTALL_VERBOSE=1 \
        sh -ec "mkdir -p /tmp/kernel-install-staging
            for plugin in 55-initrd 90-loaderentry; do
                /usr/lib/kernel/install.d/\$plugin.install add '$kver' '/boot/efi/$ENTRY_TOKEN/$kver' '/boot/vmlinuz-$kver'
            done
            rm -rf /tmp/kernel-install-staging" >&2
    [[ -f $esp/loader/entries/$ENTRY_TOKEN-$kver.conf ]] || die "no BLS entry written for $kver"
    cat "$esp/loader/entries/$ENTRY_TOKEN-$kver.conf" >&2
}

# Offset and size in bytes of partition N of a disk file (from sfdisk --dump; 512-byte sectors).
partition_bytes() {
    local raw=$1 n=$2 line start size
    line=$(sfdisk --dump "$raw" | grep -E "^$raw$n :")
    start=$(sed -E 's/.*start= *([0-9]+).*/\1/' <<<"$line")
    size=$(sed -E 's/.*size= *([0-9]+).*/\1/' <<<"$line")
    echo "$((start * 512)) $((size * 512))"
}

# An lvm command without the warnings this way of running it always prints (activation off, no zeroing, no backup).
lvm_quiet() {
    local out rc=0
    out=$(LVM_SUPPRESS_FD_WARNINGS=1 "$@" 2>&1) || rc=$?
    grep -v 'Activation disabled\|not zeroed\|NOT backed up' <<<"$out" >&2 || true
    return "$rc"
}

make_disk() {
    local root=$1 esp=$2 raw=$3 esp_at esp_bytes pv_at pv_bytes loop pe_start lv_bytes ranges
    rm -f "$raw"
    truncate -s "${DISK_MIB}M" "$raw"
    printf 'label: gpt\nstart=1MiB, size=%sMiB, type=uefi, name=ESP\ntype=lvm, name=lvm\n' "$ESP_MIB" \
        | sfdisk -q "$raw" >&2
    read -r esp_at esp_bytes < <(partition_bytes "$raw" 1)
    read -r pv_at pv_bytes < <(partition_bytes "$raw" 2)

    # ESP: FAT32 written in place, then filled with mtools (image@@offset addresses the partition).
    # 1 KiB clusters: enough of them for FAT32 in 256 MiB (the mkfs.fat default leaves too few for mtools).
    mkfs.vfat -F 32 -s 2 -n ESP --offset "$((esp_at / 512))" "$raw" "$((esp_bytes / 1024))" >/dev/null
    MTOOLS_SKIP_CHECK=1 mcopy -s -Q -i "$raw@@$esp_at" "$esp"/* ::/ >&2

    # LVM metadata through a loop device over the PV partition only; nothing is activated.
    loop=$(losetup --find --show --offset "$pv_at" --sizelimit "$pv_bytes" "$raw")
    # shellcheck disable=SC2064
    trap "losetup -d $loop 2>/dev/null || true; rm -rf '$WORK'" EXIT
    lvm_quiet pvcreate -q -y --devices "$loop" --config "$LVM_CONFIG" "$loop"
    lvm_quiet vgcreate -q --devices "$loop" --config "$LVM_CONFIG" "$VG" "$loop"
    lvm_quiet lvcreate -q --driverloaded n --devices "$loop" --config "$LVM_CONFIG" -an -Zn -y -l 100%FREE -n "$LV" "$VG"
    pe_start=$(pvs --noheadings --nosuffix --units b -o pe_start --devices "$loop" --config "$LVM_CONFIG" "$loop" 2>/dev/null)
    lv_bytes=$(lvs --noheadings --nosuffix --units b -o lv_size --devices "$loop" --config "$LVM_CONFIG" "$VG/$LV" 2>/dev/null)
    ranges=$(lvs --noheadings -o seg_pe_ranges --devices "$loop" --config "$LVM_CONFIG" "$VG/$LV" 2>/dev/null)
    losetup -d "$loop"
    trap 'rm -rf "$WORK"' EXIT  # under set -e a failing losetup -d in the trap would skip the removal and exit 1
    pe_start=${pe_start// /} lv_bytes=${lv_bytes// /} ranges=${ranges// /}
    [[ $ranges =~ ^$loop:0-[0-9]+$ ]] || die "the LV is not one linear segment from extent 0: $ranges"
    phase "LVM: PV at byte $pv_at, first extent at +$pe_start, LV $VG/$LV $((lv_bytes / 1048576)) MiB ($ranges)"

    # The root file system straight into the LV's bytes.
    mkfs.ext4 -q -F -L root -E offset="$((pv_at + pe_start))" -d "$root" "$raw" "$((lv_bytes / 1024))k" >&2
}

flavour_build() {
    local out=$1 root mirror
    WORK=$(mktemp -d "$BUILD_DIRS.XXXXXX")
    trap 'rm -rf "$WORK"' EXIT
    root=$WORK/root
    mirror=$(host_mirror)
    phase "mmdebstrap $SUITE from $mirror (minbase + kernel, systemd-boot, dracut, lvm2, openssh-server, python3 ...)"
    LAB_PUBKEY_FILE=$CACHE/id_ed25519.pub LAB_SELF=$SELF LAB_FLAVOUR=$FLAVOUR mmdebstrap --variant=minbase \
        --include="$PACKAGES" --format=directory --quiet \
        --setup-hook='"$LAB_SELF" --flavour "$LAB_FLAVOUR" --setup "$1"' \
        --customize-hook='"$LAB_SELF" --flavour "$LAB_FLAVOUR" --customize "$1"' \
        "$SUITE" "$root" "$mirror" >&2
    phase "root tree: $(du -sm "$root" | cut -f1) MiB, kernel $(cat "$root/etc/hostdev-lab-kernel")"
    phase "kernel config: $(tr '\n' ' ' <"$root/etc/hostdev-lab-kconfig")"
    # The staged ESP leaves the tree: /boot/efi stays an empty mount point on the root file system.
    mkdir "$WORK/esp"
    mv "$root/boot/efi"/* "$WORK/esp/"
    phase "disk: GPT, ESP (mkfs.vfat + mtools) $ESP_MIB MiB, LVM $VG/$LV with ext4 (mkfs.ext4 -d), ${DISK_MIB} MiB"
    make_disk "$root" "$WORK/esp" "$WORK/disk.raw"
    phase "qemu-img convert to qcow2"
    qemu-img convert -O qcow2 "$WORK/disk.raw" "$WORK/base.qcow2"
    cp "$root/etc/hostdev-lab-kconfig" "${out%.qcow2}.kconfig"
    cp "$root/etc/hostdev-lab-kernel" "${out%.qcow2}.kernel"
    mv "$WORK/base.qcow2" "$out"
    phase "done: $out ($(du -m "$out" | cut -f1) MiB) in $((SECONDS - START)) s"
}
