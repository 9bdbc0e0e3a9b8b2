# shellcheck shell=bash
# SMP in user space on Debian's stock kernel: `ember run --cpus 2` and
# `--cpus 4`, in an L1 with one vCPU (docs/testing.md, "SMP in the lab").
# The init prints nproc and the online mask, pins the same busy loop (a
# fixed count, so a CPU that gets little time still finishes it) to every
# CPU with taskset; each loop says which CPU it finished on
# (/proc/self/stat), and the init prints each CPU's user+system ticks from
# /proc/stat before and after (for the record).
. "$LAB_REPO/tests/lab/lib.sh"
cat >init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
n=$(nproc)
echo "LAB-L2 cpus=$n online=$(cat /sys/devices/system/cpu/online)"
ticks() { grep '^cpu[0-9]' /proc/stat | while read -r c u ni s rest; do echo "$c $((u + s))"; done; }
ticks >/tmp/before
i=0
while [ $i -lt "$n" ]; do
  taskset -c $i sh -c 'k=0; while [ $k -lt 40000 ]; do k=$((k + 1)); done
    read -r stat </proc/self/stat; set -- $stat; echo "LAB-LOOP cpu'$i' done on=${39}"' &
  i=$((i + 1))
done
wait
ticks >/tmp/after
while read -r c b; do
  a=$(grep "^$c " /tmp/after | cut -d' ' -f2)
  echo "LAB-BUSY $c ticks=$((a - b))"
done </tmp/before
reboot -f
INIT
lab_initramfs initramfs.cpio init
for n in 2 4; do
  lab_l2 "cpus$n" "$EMBER" run --kernel "$LAB_VMLINUZ" --cpus "$n" --initrd initramfs.cpio --memory 256M \
    --cmdline "console=ttyS0 reboot=k panic=-1"
done
exit 0
