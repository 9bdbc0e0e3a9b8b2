# shellcheck shell=bash
# The test kernel with user space on an ext4 file system on a virtio-blk
# disk: mkfs.ext4 in L1, then the guest mounts it, writes a tree of files
# (16 MiB of /dev/urandom among them) and their md5 sums, syncs, unmounts
# and reboots. e2fsck -fn must find the image clean in L1; the image goes to
# the work directory, where the host runs e2fsck again and compares the
# data file's md5 with the one the guest printed.
. "$LAB_REPO/tests/lab/lib.sh"
mkfs.ext4 -q -F disk.img 128M
cat >init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
fail() { echo "LAB-L2 error=$*"; reboot -f; }
mount -t ext4 /dev/vda /mnt || fail mount
grep ' /mnt ' /proc/mounts
mkdir -p /mnt/dir/sub || fail mkdir
dd if=/dev/urandom of=/mnt/dir/data.bin bs=1M count=16 2>/dev/null || fail dd
i=0
while [ $i -lt 200 ]; do echo "file $i" >/mnt/dir/sub/f$i || fail write; i=$((i + 1)); done
echo "LAB-L2 data_md5=$(md5sum /mnt/dir/data.bin | cut -d' ' -f1) files=$(ls /mnt/dir/sub | wc -l)"
sync || fail sync
umount /mnt || fail umount
echo "LAB-L2 unmounted"
reboot -f
INIT
lab_initramfs initramfs.cpio init
lab_l2 boot "$EMBER" run --kernel "$LAB_TEST_KERNEL" --memory 256M --initrd initramfs.cpio \
  --cmdline "console=ttyS0 reboot=k panic=-1" --disk path=disk.img
e2fsck -fn disk.img >"$LAB_WORK/e2fsck-l1.txt" 2>&1
lab_kv e2fsck_l1 $?
cp --sparse=always disk.img "$LAB_WORK/disk.img"
exit 0
