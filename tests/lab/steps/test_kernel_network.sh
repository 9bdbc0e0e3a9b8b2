# shellcheck shell=bash
# The test kernel with user space on ember's virtio-net, against a TAP in
# L1: ICMP ping from the guest to L1, then 64 MiB over TCP each way with
# the md5 sums compared (L1 -> guest: python3 in L1 sends deterministic
# data; guest -> L1: the guest sends 64 MiB from /dev/urandom). The guest
# prints what it received and sent; L1's side writes its view to
# net-server.txt.
. "$LAB_REPO/tests/lab/lib.sh"
lab_tap tap0 10.0.9.1/24
python3 "$LAB_REPO/tests/lab/tcp_peer.py" 10.0.9.1 64 "$LAB_WORK/net-server.txt" &
peer=$!
for _ in $(seq 100); do grep -q listening "$LAB_WORK/net-server.txt" 2>/dev/null && break; sleep 0.2; done
cat >init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
ip link set lo up
ip link set eth0 up
ip addr add 10.0.9.2/24 dev eth0
ping -c 3 -W 5 10.0.9.1
echo "LAB-L2 ping=$?"
down=$(nc 10.0.9.1 5001 | md5sum | cut -d' ' -f1)
echo "LAB-L2 down_md5=$down"
dd if=/dev/urandom of=/tmp/up bs=1M count=64 2>/dev/null
echo "LAB-L2 up_md5=$(md5sum /tmp/up | cut -d' ' -f1) up_bytes=$(wc -c </tmp/up)"
nc 10.0.9.1 5002 </tmp/up
echo "LAB-L2 sent"
reboot -f
INIT
lab_initramfs initramfs.cpio init
lab_l2 boot "$EMBER" run --kernel "$LAB_TEST_KERNEL" --memory 384M --initrd initramfs.cpio \
  --cmdline "console=ttyS0 reboot=k panic=-1" --net tap=tap0,mac=02:00:00:e0:09:02 --log-level info
wait "$peer"
lab_kv peer_status $?
ip link del tap0
exit 0
