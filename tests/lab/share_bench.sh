# shellcheck shell=bash
# A bench, not a lab step (it takes ~8 minutes under the lab's TCG):
#   scripts/lab run tests/lab/share_bench.sh
# The guest (test kernel, ember smoke's busybox
# initramfs) reads the same 256 MiB host file (warm in L1's page cache)
# through a read-only virtio-9p share (cache=none: every read goes to the
# host) and as a read-only virtio-blk disk (O_DIRECT: past the guest's page
# cache), 1 MiB at a time, three passes each; it prints bytes and seconds
# (/proc/uptime, 10 ms resolution) for each, then MB/s, the medians and
# their ratio.
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
  --share "$PWD/share:/mnt/s,ro" --disk "path=$PWD/share/big.bin,readonly=on" --console-log "$LAB_WORK/bench-kernel.log" \
  -- sh /mnt/s/bench.sh
status=$?
grep '^BENCH ' "$LAB_WORK/bench.console" | awk '
  { for (i = 3; i <= NF; i++) { split($i, kv, "="); v[kv[1]] = kv[2] }
    r = v["bytes"] / 1e6 / (v["end"] - v["start"]); n[$2]++; rate[$2, n[$2]] = r
    printf "%s pass %s: %d bytes in %.2f s, %.1f MB/s\n", $2, v["pass"], v["bytes"], v["end"] - v["start"], r }
  END {
    for (k in n) {
      m = n[k]
      for (i = 1; i <= m; i++) s[i] = rate[k, i]
      for (i = 2; i <= m; i++) { x = s[i]; for (j = i - 1; j >= 1 && s[j] > x; j--) s[j + 1] = s[j]; s[j + 1] = x }
      med[k] = s[int((m + 1) / 2)]
      printf "%s median %.1f MB/s\n", k, med[k] }
    if (med["blk"] > 0) printf "ratio virtio-9p / virtio-blk: %.2f\n", med["p9"] / med["blk"] }'
exit "$status"
