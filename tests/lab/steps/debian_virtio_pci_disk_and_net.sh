# shellcheck shell=bash
# Debian's stock kernel on ember's virtio-pci devices (the default
# transport), with the drivers from its own package: the initramfs carries
# virtio_pci, virtio_blk, virtio_net and ext4 (with their dependencies, as
# kmod resolves them in L1) and the init insmods them. The guest finds the
# disk (its size from sysfs), writes an ext4 file system on it (busybox has
# no mkfs.ext4, so L1 formats the image and the guest writes everything
# else: a tree of files, 8 MiB of /dev/urandom and its md5), unmounts it;
# brings up eth0, prints its MAC and pings L1 over the TAP. It also prints
# what PCI the kernel saw (lines of its log, the devices in sysfs, the
# MSI-X vectors in /proc/interrupts with the CPU each is delivered to). Run with --cpus 1 and --cpus 2, each
# on an image of its own; e2fsck -fn runs on both in L1 and again on the
# host (tests/lab.rs).
. "$LAB_REPO/tests/lab/lib.sh"
lab_modules virtio_pci virtio_blk virtio_net ext4
cat >init <<'INIT'
#!/bin/sh
. /lib/lab-modules.sh
wait_for_disk_and_nic
for d in /sys/bus/pci/devices/*; do
  drv=$(readlink "$d/driver" 2>/dev/null)
  echo "LAB-PCI ${d##*/} $(cat "$d/vendor"):$(cat "$d/device") class=$(cat "$d/class") driver=${drv##*/} bar0=$(head -n1 "$d/resource" | cut -d' ' -f1-2)"
done
echo "LAB-L2 cpus=$(nproc) vda_sectors=$(cat /sys/block/vda/size) mac=$(cat /sys/class/net/eth0/address)"
mount -t ext4 /dev/vda /mnt || fail mount
grep ' /mnt ' /proc/mounts
mkdir -p /mnt/dir/sub || fail mkdir
dd if=/dev/urandom of=/mnt/dir/data.bin bs=1M count=8 2>/dev/null || fail dd
i=0
while [ $i -lt 100 ]; do echo "file $i" >/mnt/dir/sub/f$i || fail write; i=$((i + 1)); done
echo "LAB-L2 data_md5=$(md5sum /mnt/dir/data.bin | cut -d' ' -f1) files=$(ls /mnt/dir/sub | wc -l)"
sync || fail sync
umount /mnt || fail umount
echo "LAB-L2 unmounted"
ip link set lo up
ip link set eth0 up
ip addr add 10.0.10.2/24 dev eth0
ping -c 3 -W 5 10.0.10.1
echo "LAB-L2 ping=$?"
# The MSI-X vectors after the traffic: per-CPU counts, and where each
# is delivered now.
grep -E 'PCI-MSI|virtio' /proc/interrupts | sed 's/^/LAB-IRQ /'
grep virtio /proc/interrupts | while read -r irq rest; do
  irq=${irq%:}
  echo "LAB-AFF irq=$irq ${rest##* } effective=$(cat "/proc/irq/$irq/effective_affinity_list" 2>/dev/null)"
done
reboot -f
INIT
lab_initramfs initramfs.cpio init "${LAB_MODULE_FILES[@]}"
lab_tap tap0 10.0.10.1/24
for n in 1 2; do
  mkfs.ext4 -q -F "disk$n.img" 64M
  lab_l2 "cpus$n" "$EMBER" run --kernel "$LAB_VMLINUZ" --cpus "$n" --memory 256M --initrd initramfs.cpio \
    --cmdline "console=ttyS0 reboot=k panic=-1" --disk "path=disk$n.img" \
    --net "tap=tap0,mac=02:00:00:e0:0a:0$n" --log-level info
  e2fsck -fn "disk$n.img" >"$LAB_WORK/e2fsck-l1-$n.txt" 2>&1
  lab_kv "e2fsck_l1_$n" $?
  cp --sparse=always "disk$n.img" "$LAB_WORK/disk$n.img"
done
ip link del tap0
exit 0
