# shellcheck shell=bash
# A bench, not a test: the guest (test kernel, ember smoke's busybox
# initramfs) reads the same 256 MiB host file (warm in L1's page cache)
# through a read-only virtio-9p share (cache=none: every read goes to the
# host) and as a read-only virtio-blk disk (O_DIRECT: past the guest's page
# cache), 1 MiB at a time, three passes each; it prints
# bytes and seconds (/proc/uptime, 10 ms resolution) for each, and the
# check prints MB/s and the ratio.
. "$LAB_REPO/tests/lab/lib.sh"
mkdir -p share
dd if=/dev/urandom of=share/big.bin bs=1M count=256 status=none
cat share/big.bin >/dev/null
cat >share/bench.sh <<'SH'
t() { read -r u _ </proc/uptime; echo "$u"; }
for pass in 1 2 3; do
  a=$(t); n=$(dd if=/mnt/s/big.bin bs=1M 2>/dev/null | wc -c); b=$(t)
  echo "BENCH p9 pass=$pass bytes=$n start=$a end=$b"
  a=$(t); n=$(dd if=/dev/vda bs=1M iflag=direct 2>/dev/null | wc -c); b=$(t)
  echo "BENCH blk pass=$pass bytes=$n start=$a end=$b"
done
SH
lab_l2 bench "$EMBER" smoke --kernel "$LAB_TEST_KERNEL" --memory 512M --timeout 900s \
  --share "$PWD/share:/mnt/s,ro" --disk "path=$PWD/share/big.bin,readonly=on" \
  -- sh /mnt/s/bench.sh
exit 0
