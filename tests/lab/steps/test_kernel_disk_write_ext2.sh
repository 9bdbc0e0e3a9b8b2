# shellcheck shell=bash
# The project's test kernel with user space (formerly the host test
# hardware_kvm_linux_writes_a_file_on_its_disk): an ext2 image from
# mkfs.ext2 as `--disk`; the guest mounts it, writes a file, syncs,
# unmounts and reboots. The image goes to the work directory, where the
# host reads the file back (debugfs) and checks it with e2fsck.
. "$LAB_REPO/tests/lab/lib.sh"
mkfs.ext2 -q -F disk.img 64M
cat >init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
mount -t ext2 /dev/vda /mnt && echo ember-hw-marker >/mnt/marker.txt && sync && umount /mnt && echo WROTE
reboot -f
INIT
lab_initramfs initramfs.cpio init
lab_l2 boot "$EMBER" run --kernel "$LAB_TEST_KERNEL" --memory 256M --initrd initramfs.cpio \
  --cmdline "console=ttyS0 reboot=k panic=-1" --disk path=disk.img
cp --sparse=always disk.img "$LAB_WORK/disk.img"
exit 0
