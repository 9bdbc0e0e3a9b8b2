# shellcheck shell=bash
# The lab's boot bench (`scripts/lab bench`; a bench, not a test): Debian's
# stock kernel, the ELF vmlinux through its PVH note, 256 MiB, 1 vCPU, a
# busybox initramfs whose init prints one line and reboots. ember beside
# QEMU's microvm machine on the same real KVM (QEMU from the host's root,
# `-M microvm -accel kvm -cpu host`), interleaved runs (LAB_BENCH_RUNS,
# default 10), each timed from exec to the init's line and to the VMM's
# exit. The command lines differ only in how the guest resets: reboot=k
# (ember's i8042) and reboot=t (a triple fault; microvm has no i8042 reset
# by default). Arguments go to boot_bench.py: `--variant NAME EMBER2 EXTRA`
# (another ember build and/or more kernel parameters, e.g. an earlier
# commit's build, or `acpi=off`) and `--variant-runs N` give each change
# its share in the same rounds, e.g.
#   scripts/lab bench -- --variant pre_acpi /tmp/ember-main - --variant-runs 5
. "$LAB_REPO/tests/lab/lib.sh"
cat >init <<'INIT'
#!/bin/sh
echo "LAB-BENCH user space"
reboot -f
INIT
lab_initramfs initramfs.cpio init
python3 "$LAB_REPO/tests/lab/boot_bench.py" "${LAB_BENCH_RUNS:-10}" "$EMBER" "$LAB_VMLINUX" initramfs.cpio "$@"
