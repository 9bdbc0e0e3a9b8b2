# shellcheck shell=bash
# `ember smoke --root-share` on Debian's stock kernel with --modules from
# its own package (virtio_mmio found through ACPI, 9p, 9pnet_virtio,
# netfs, fscache, overlay... loaded by the initramfs from modules.dep):
# the same as test_kernel_root_share. A C program compiled here in L1 (dynamically linked against L1's
# glibc, which is the host's) runs in L2 from L1's own root, shared
# read-only, in this directory, with our PATH/HOME/TERM and uid; it writes
# a file into a rw share (compared byte for byte afterwards), fails to
# create one in a ro share, and its exit status (42) is ember's. Its stdout
# and stderr come out on ember's stdout and stderr, apart from the kernel's
# console (--console-log).
. "$LAB_REPO/tests/lab/lib.sh"
lab_kv release "$LAB_KERNEL_RELEASE"
mkdir -p rw ro
gcc -O1 -o share_prog "$LAB_REPO/tests/lab/share_prog.c"
lab_kv dynamic "$(readelf -l share_prog | grep -c 'Requesting program interpreter')"
./share_prog gen $(((1 << 20) + 3)) >"$LAB_WORK/expected.bin"
echo keep >ro/existing
export TERM=lab-term HOME=/lab-home
lab_kv cwd "$PWD"
lab_kv uid "$(id -u)"
lab_l2 root sh -c 'exec "$0" "$@" 2>"$LAB_WORK/root-stderr.txt"' "$EMBER" smoke --kernel "$LAB_VMLINUZ" --modules "$LAB_MODULES" --memory 512M --timeout 600s \
  --root-share --share "$PWD/rw:/mnt/rw" --share "$PWD/ro:/mnt/ro,ro" \
  --console-log "$LAB_WORK/root-kernel.log" \
  -- ./share_prog guest /mnt/rw /mnt/ro
cp rw/written.bin "$LAB_WORK/written.bin" 2>/dev/null
lab_kv ro_files "$(ls ro | tr '\n' ' ')"
exit 0
