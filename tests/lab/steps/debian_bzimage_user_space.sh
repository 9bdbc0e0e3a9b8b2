# shellcheck shell=bash
# Debian's stock bzImage (Linux 64-bit boot protocol) to a busybox /init in
# user space under `ember run`: the init prints its pid, the CPU count and
# the kernel release, then `reboot -f` (reboot=k: the i8042 reset) ends
# ember with status 0.
. "$LAB_REPO/tests/lab/lib.sh"
cat >init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
echo "LAB-L2 pid=$$ cpus=$(nproc) release=$(uname -r)"
reboot -f
INIT
lab_initramfs initramfs.cpio init
lab_kv release "$LAB_KERNEL_RELEASE"
lab_l2 boot "$EMBER" run --kernel "$LAB_VMLINUZ" --initrd initramfs.cpio --memory 256M \
  --cmdline "console=ttyS0 reboot=k panic=-1"
exit 0
