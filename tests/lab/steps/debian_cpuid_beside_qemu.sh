# shellcheck shell=bash
# The CPUID Debian's stock kernel and its user space see under ember, beside
# QEMU's `-M microvm -accel kvm -cpu host` on the same KVM in the same L1:
# tests/lab/cpuid_dump.c (built static here) dumps every leaf from the
# guest's user space, the init prints /proc/cpuinfo's flags. L1's kernel
# log is cleared before each boot and saved after it, for what KVM said
# about the guest (an unhandled MSR write is logged by KVM in L1, not in
# the guest). The host-side check compares the dumps leaf by leaf
# (docs/boot.md lists the differences).
. "$LAB_REPO/tests/lab/lib.sh"
gcc -static -O2 -o cpuid_dump "$LAB_REPO/tests/lab/cpuid_dump.c" || exit 1
cat >init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
/cpuid_dump
echo "LAB-FLAGS $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2)"
echo "LAB-L2 done"
reboot -f
INIT
lab_initramfs initramfs.cpio init cpuid_dump=cpuid_dump
dmesg -C
lab_l2 ember "$EMBER" run --kernel "$LAB_VMLINUX" --initrd initramfs.cpio --memory 256M \
  --cmdline "console=ttyS0 reboot=k panic=-1"
dmesg >"$LAB_WORK/l1-dmesg-ember.txt"
dmesg -C
lab_l2 qemu qemu-system-x86_64 -M microvm -accel kvm -cpu host -m 256M -smp 1 -nodefaults -no-user-config \
  -nographic -no-reboot -serial stdio -kernel "$LAB_VMLINUX" -initrd initramfs.cpio \
  -append "console=ttyS0 reboot=t panic=-1"
dmesg >"$LAB_WORK/l1-dmesg-qemu.txt"
exit 0
