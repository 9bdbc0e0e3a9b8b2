# shellcheck shell=bash
# Snapshots on real KVM (issue 19): Debian's stock kernel in user space,
# with its own virtio-pci drivers (from its package, as in
# debian_virtio_pci_disk_and_net), counts: each count goes to a file on its
# ext4 disk (synced) and to the console with the guest's `date +%s`; every
# fifth, it pings L1 over the TAP. `ember serve` boots it through the API;
# at count 8 it is paused, snapshotted (PUT /snapshot/create) and killed
# (SIGKILL: nothing runs after the snapshot). A second `ember serve` loads
# that snapshot (PUT /snapshot/load, resume_vm), lets it count 8 more,
# pauses, snapshots and is killed; `ember restore` carries that snapshot on
# to count 30, where the guest unmounts its disk and reboots (ember exits
# 0). tests/lab.rs checks the count across the three processes (no gap, no
# repeat), the disk's counter and e2fsck, the pings, and the guest's clock.
. "$LAB_REPO/tests/lab/lib.sh"
lab_modules virtio_pci virtio_blk virtio_net ext4
cat >init <<'INIT'
#!/bin/sh
. /lib/lab-modules.sh
wait_for_disk_and_nic
mount -t ext4 /dev/vda /mnt || fail mount
ip link set lo up
ip link set eth0 up
ip addr add 10.0.11.2/24 dev eth0
echo "LAB-L2 up"
i=0
while [ $i -lt 30 ]; do
  i=$((i + 1))
  echo $i >/mnt/counter || fail write
  sync || fail sync
  echo "LAB-COUNT $i $(date +%s)"
  if [ $((i % 5)) = 0 ]; then
    ping -c 1 -W 10 10.0.11.1 >/dev/null 2>&1
    echo "LAB-PING $i $?"
  fi
  usleep 200000
done
umount /mnt || fail umount
echo "LAB-L2 unmounted"
reboot -f
INIT
lab_initramfs initramfs.cpio init "${LAB_MODULE_FILES[@]}"
lab_tap tap1 10.0.11.1/24
mkfs.ext4 -q -F disk.img 64M

api() { # SOCK METHOD PATH [BODY]: prints the HTTP status, the body to api.log
  local s=$1 m=$2 p=$3 b=${4:-}
  echo "> $m $p $b" >>"$LAB_WORK/api.log"
  curl -s -o "$LAB_TMP/api.body" -w '%{http_code}' --unix-socket "$s" -X "$m" "http://localhost$p" \
    -H 'Content-Type: application/json' ${b:+-d "$b"}
  { cat "$LAB_TMP/api.body"; echo; } >>"$LAB_WORK/api.log"
}
counted() { # CONSOLE: the last count it shows
  local n
  n=$(grep -ao 'LAB-COUNT [0-9]*' "$1" 2>/dev/null | tail -n 1 | cut -d' ' -f2)
  echo "${n:-0}"
}
wait_count() { # CONSOLE N SECS: until count N, or SECS pass
  local end=$((SECONDS + $3))
  while (($(counted "$1") < $2 && SECONDS < end)); do sleep 0.2; done
}
serve() { # NAME: starts `ember serve` on $LAB_TMP/NAME.sock in the background as L2 run NAME
  lab_l2 "$1" "$EMBER" serve --api-sock "$LAB_TMP/$1.sock" &
  for _ in $(seq 100); do curl -s -o /dev/null --unix-socket "$LAB_TMP/$1.sock" http://localhost/ && break; sleep 0.1; done
}
snapshot_and_kill() { # NAME DIR L2PID: pause, snapshot to DIR, SIGKILL the VMM
  local s=$LAB_TMP/$1.sock
  mkdir -p "$2"
  lab_kv "$1_pause" "$(api "$s" PATCH /vm '{"state": "Paused"}')"
  local t0=$EPOCHREALTIME
  lab_kv "$1_snapshot" "$(api "$s" PUT /snapshot/create "{\"snapshot_path\": \"$2/state\", \"mem_file_path\": \"$2/memory\"}")"
  lab_kv "$1_snapshot_secs" "$(awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.3f\n", b - a }')"
  lab_kv "$1_memory_kib" "$(du -k "$2/memory" | cut -f1)"
  kill -KILL "$(pgrep -P "$3" -x ember)"
  wait "$3"
}

serve vm1
l2=$!
s=$LAB_TMP/vm1.sock
lab_kv boot_status "$(api "$s" PUT /boot-source "{\"kernel_image_path\": \"$LAB_VMLINUZ\", \"initrd_path\": \"$PWD/initramfs.cpio\", \"boot_args\": \"console=ttyS0 reboot=k panic=-1\"}")"
lab_kv machine_status "$(api "$s" PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256}')"
lab_kv drive_status "$(api "$s" PUT /drives/data "{\"drive_id\": \"data\", \"path_on_host\": \"$PWD/disk.img\", \"is_root_device\": false, \"is_read_only\": false}")"
lab_kv net_status "$(api "$s" PUT /network-interfaces/eth0 '{"iface_id": "eth0", "host_dev_name": "tap1", "guest_mac": "02:00:00:e0:0b:01"}')"
lab_kv start_status "$(api "$s" PUT /actions '{"action_type": "InstanceStart"}')"
wait_count "$LAB_TMP/vm1.console" 8 300
snapshot_and_kill vm1 "$LAB_TMP/snap1" "$l2"
lab_kv vm1_last "$(counted "$LAB_WORK/vm1.console")"

serve vm2
l2=$!
lab_kv vm2_load "$(api "$LAB_TMP/vm2.sock" PUT /snapshot/load "{\"snapshot_path\": \"$LAB_TMP/snap1/state\", \"mem_backend\": {\"backend_path\": \"$LAB_TMP/snap1/memory\", \"backend_type\": \"File\"}, \"resume_vm\": true}")"
wait_count "$LAB_TMP/vm2.console" 16 300
snapshot_and_kill vm2 "$LAB_TMP/snap2" "$l2"
lab_kv vm2_last "$(counted "$LAB_WORK/vm2.console")"

lab_l2 vm3 "$EMBER" restore --snapshot "$LAB_TMP/snap2/state" --mem-file "$LAB_TMP/snap2/memory"
e2fsck -fn disk.img >"$LAB_WORK/e2fsck-l1.txt" 2>&1
lab_kv e2fsck_l1 $?
cp --sparse=always disk.img "$LAB_WORK/disk.img"
ip link del tap1
exit 0
