# shellcheck shell=bash
# Debian's stock kernel finds ember's virtio-mmio devices through ACPI
# alone: its own virtio_mmio, virtio_blk and virtio_net modules (from the
# package, with their dependencies, loaded by insmod in the initramfs),
# and NO virtio_mmio.device= on the command line (--no-virtio-mmio-cmdline;
# Debian's virtio_mmio has no command-line devices anyway). The init
# prints the command line, the platform devices, where vda and eth0 sit in
# sysfs, the disk's size in sectors and a marker read from it, eth0's MAC,
# and pings L1 over a TAP.
. "$LAB_REPO/tests/lab/lib.sh"
modules="virtio_mmio virtio_blk virtio_net"
extra=() load=""
for m in $modules; do
  deps=$(modprobe -d "$LAB_MODULES" -S "$LAB_KERNEL_RELEASE" --show-depends "$m") || {
    echo "modprobe --show-depends $m failed: $deps"
    exit 1
  }
  while read -r verb path _; do
    [[ $verb == insmod ]] || continue
    name=$(basename "$path")
    case " $load " in *" $name "*) continue ;; esac
    extra+=("$path=lib/modules/$name")
    load="$load $name"
  done <<<"$deps"
done
lab_kv modules "$load"
# A 40 MiB disk (81920 sectors) with a marker in its sector 2048.
truncate -s 40M disk.img
printf 'ember-acpi-disk-marker' | dd of=disk.img bs=512 seek=2048 conv=notrunc status=none
lab_tap tapacpi 10.0.14.1/24
cat >init <<INIT
#!/bin/sh
mount -t proc proc /proc
mount -t sysfs sysfs /sys
for m in $load; do insmod /lib/modules/\$m || echo "LAB-L2 error=insmod-\$m"; done
echo "LAB-L2 cmdline=\$(tr ' ' ',' </proc/cmdline)"
for d in /sys/bus/platform/devices/*; do echo "LAB-PLATFORM \${d##*/}"; done
i=0
while [ ! -e /sys/block/vda ] && [ \$i -lt 50 ]; do sleep 0.1; i=\$((i + 1)); done
echo "LAB-L2 vda=\$(readlink -f /sys/block/vda) sectors=\$(cat /sys/block/vda/size)"
echo "LAB-L2 marker=\$(dd if=/dev/vda bs=512 skip=2048 count=1 2>/dev/null | tr -d '\\000')"
echo "LAB-L2 eth0=\$(readlink -f /sys/class/net/eth0) mac=\$(cat /sys/class/net/eth0/address)"
ip link set eth0 up
ip addr add 10.0.14.2/24 dev eth0
ping -c 2 -W 5 10.0.14.1
echo "LAB-L2 ping=\$?"
reboot -f
INIT
lab_initramfs initramfs.cpio init "${extra[@]}"
lab_l2 boot "$EMBER" run --kernel "$LAB_VMLINUZ" --initrd initramfs.cpio --memory 256M \
  --cmdline "console=ttyS0 reboot=k panic=-1" --no-virtio-mmio-cmdline \
  --disk path=disk.img,transport=mmio --net tap=tapacpi,mac=02:00:00:e0:14:02,transport=mmio
ip link del tapacpi
exit 0
