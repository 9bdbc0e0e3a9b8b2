# shellcheck shell=bash
# Debian's stock kernel as an ELF vmlinux, entered through its PVH note
# (--boot pvh), to a busybox /init in user space under `ember run`; as
# debian_bzimage_user_space otherwise.
. "$LAB_REPO/tests/lab/lib.sh"
cat >init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
echo "LAB-L2 pid=$$ cpus=$(nproc) release=$(uname -r)"
reboot -f
INIT
lab_initramfs initramfs.cpio init
lab_kv release "$LAB_KERNEL_RELEASE"
lab_l2 boot "$EMBER" run --kernel "$LAB_VMLINUX" --boot pvh --initrd initramfs.cpio --memory 256M \
  --cmdline "console=ttyS0 reboot=k panic=-1"
exit 0
