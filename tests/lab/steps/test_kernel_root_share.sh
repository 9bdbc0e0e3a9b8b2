# shellcheck shell=bash
# `ember smoke --root-share` on the test kernel (9P and overlayfs built
# in): a C program compiled here in L1 (dynamically linked against L1's
# glibc, which is the host's) runs in L2 from L1's own root, shared
# read-only, in this directory, with our PATH/HOME/TERM and uid; it writes
# a file into a rw share (compared byte for byte afterwards), fails to
# create one in a ro share, and its exit status (42) is ember's. Its stdout
# and stderr come out on ember's stdout and stderr, apart from the kernel's
# console (--console-log).
. "$LAB_REPO/tests/lab/lib.sh"
mkdir -p rw ro
gcc -O1 -o share_prog "$LAB_REPO/tests/lab/share_prog.c"
lab_kv dynamic "$(readelf -l share_prog | grep -c 'Requesting program interpreter')"
./share_prog gen $(((1 << 20) + 3)) >"$LAB_WORK/expected.bin"
echo keep >ro/existing
export TERM=lab-term HOME=/lab-home
lab_kv cwd "$PWD"
lab_kv uid "$(id -u)"
lab_l2 root sh -c 'exec "$0" "$@" 2>"$LAB_WORK/root-stderr.txt"' "$EMBER" smoke --kernel "$LAB_TEST_KERNEL" --memory 512M --timeout 600s \
  --root-share --share "$PWD/rw:/mnt/rw" --share "$PWD/ro:/mnt/ro,ro" \
  --console-log "$LAB_WORK/root-kernel.log" \
  -- ./share_prog guest /mnt/rw /mnt/ro
cp rw/written.bin "$LAB_WORK/written.bin" 2>/dev/null
lab_kv ro_files "$(ls ro | tr '\n' ' ')"
exit 0
