# shellcheck shell=bash
# Helpers for real-KVM lab steps (tests/lab/steps/*.sh), sourced by each
# step:   . "$LAB_REPO/tests/lab/lib.sh"
# The step's environment (EMBER, LAB_*) is described at the top of
# scripts/lab. Conventions the host side (tests/lab.rs) relies on:
#   * every L2 run goes through `lab_l2 NAME ...`: its output (the guest's
#     console and the VMM's messages) lands in $LAB_WORK/NAME.console, its
#     exit status in NAME.status and its wall time in NAME.secs. The host
#     checks every *.console for kernel warnings (WARNING:, BUG:, Oops,
#     Call Trace) after every step, and the step's own check reads them;
#   * facts the check needs are printed as `key=value` lines (lab_kv) or
#     written as files in $LAB_WORK.
set -u -o pipefail

# lab_kv KEY VALUE: a fact for the host-side check.
lab_kv() {
  printf '%s=%s\n' "$1" "$2"
}

# lab_initramfs OUT INIT [SRC=DEST ...]: a cpio (newc) archive with a static
# busybox, the file INIT as /lab-init, more host files (SRC) at DEST, and an
# /init that installs busybox's applet links (one process in the guest; a
# link per applet made here would cost a process each under TCG), mounts
# devtmpfs on /dev and execs /lab-init as PID 1. /dev/console comes from
# the kernel's built-in initramfs.
lab_initramfs() {
  local out=$1 init=$2 stage a src dest
  shift 2
  stage=$(mktemp -d "$LAB_TMP/initramfs.XXXXXX")
  mkdir -p "$stage"/{bin,sbin,usr/bin,usr/sbin,dev,proc,sys,tmp,mnt,root,etc,run}
  cp "$LAB_BUSYBOX" "$stage/bin/busybox"
  printf '#!/bin/busybox sh\n/bin/busybox --install -s\n/bin/busybox mount -t devtmpfs devtmpfs /dev\nexec /lab-init "$@"\n' >"$stage/init"
  chmod 755 "$stage/init"
  install -m 755 "$init" "$stage/lab-init"
  for a in "$@"; do
    src=${a%%=*} dest=${a#*=}
    mkdir -p "$stage/$(dirname "$dest")"
    cp -a "$src" "$stage/$dest"
  done
  (cd "$stage" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --quiet) >"$out"
  rm -rf "$stage"
}

# lab_l2 NAME COMMAND...: runs one L2 boot (ember run, ember smoke, QEMU...)
# with stdin from /dev/null. Its stdout+stderr go to $LAB_WORK/NAME.console,
# its exit status to NAME.status, its wall time in seconds to NAME.secs and
# the command to NAME.cmd; the step's output gets the status and the last
# console lines (all of it, live, under `scripts/lab run`). Returns the
# status. The console is written to L1's tmpfs first and copied to the
# share every 5 s and at the end: the VMM writes it a byte at a time, and
# every write to the 9p share is a round trip through QEMU.
lab_l2() {
  local name=$1 t0 rc copier tmp stop
  shift
  tmp=$LAB_TMP/$name.console
  printf '%q ' "$@" >"$LAB_WORK/$name.cmd"
  echo >>"$LAB_WORK/$name.cmd"
  echo "--- L2 $name: $*"
  : >"$tmp"
  # The copier waits on a FIFO, not on `sleep`: a line written to it ends
  # the loop, so no child of the copier can outlive the step (a `sleep`
  # forked between a kill of the last one and the copier's own end did, and
  # the runner counted it as a leftover process).
  rm -f "$tmp.stop"
  mkfifo "$tmp.stop"
  exec {stop}<>"$tmp.stop"
  (while ! read -r -t 5 -u "$stop" _; do cp "$tmp" "$LAB_WORK/$name.console"; done) 2>/dev/null &
  copier=$!
  t0=$EPOCHREALTIME
  if [[ ${LAB_LIVE:-0} == 1 ]]; then
    "$@" {stop}>&- </dev/null 2>&1 | tee "$tmp"
    rc=${PIPESTATUS[0]}
  else
    "$@" {stop}>&- </dev/null >"$tmp" 2>&1
    rc=$?
  fi
  awk -v a="$t0" -v b="$EPOCHREALTIME" 'BEGIN { printf "%.2f\n", b - a }' >"$LAB_WORK/$name.secs"
  echo stop >&"$stop"
  wait "$copier" 2>/dev/null
  exec {stop}>&-
  rm -f "$tmp.stop"
  cp "$tmp" "$LAB_WORK/$name.console"
  echo "$rc" >"$LAB_WORK/$name.status"
  [[ ${LAB_LIVE:-0} == 1 ]] || tail -n 8 "$tmp" | sed 's/^/    | /'
  echo "--- L2 $name: exit status $rc after $(cat "$LAB_WORK/$name.secs") s"
  return "$rc"
}

# lab_modules MODULE...: Debian's modules MODULE... and their
# dependencies (as kmod resolves them in L1, each once, in load order) for
# an initramfs: writes insmod.list (their paths in the guest, one a line)
# and lab-modules.sh (a prelude the guest's init sources: /proc, /sys,
# fail(), the modules loaded, wait_for_disk_and_nic), and sets
# LAB_MODULE_FILES to the lab_initramfs arguments that put them there
# (HOST_PATH=/lib/modules/NAME.ko, insmod.list, /lib/lab-modules.sh).
# Prints the count as `modules=N`.
lab_modules() {
  local m path rel mods=()
  while read -r _ path; do
    mods+=("$path")
  done < <(for m in "$@"; do
    modprobe -d "$LAB_MODULES" -S "$LAB_KERNEL_RELEASE" --show-depends "$m"
  done | awk '$1 == "insmod" && !seen[$2]++')
  lab_kv modules "${#mods[@]}"
  cat >lab-modules.sh <<'PRELUDE'
# Sourced by a guest init first: /proc and /sys, fail() (a LAB-L2 error
# line and a reboot), the modules of /lib/modules/insmod.list loaded in
# order, and wait_for_disk_and_nic (vda and eth0, 10 s at most).
mount -t proc proc /proc
mount -t sysfs sysfs /sys
fail() { echo "LAB-L2 error=$*"; reboot -f; }
while read -r m; do
  insmod "$m" 2>/tmp/insmod.err || echo "LAB-L2 insmod_failed=$(basename "$m") $(cat /tmp/insmod.err)"
done </lib/modules/insmod.list
wait_for_disk_and_nic() {
  i=0
  while [ ! -e /sys/block/vda ] || [ ! -e /sys/class/net/eth0 ]; do
    i=$((i + 1)); [ $i -lt 100 ] || fail "no vda or eth0 after 10 s"; sleep 0.1
  done
}
PRELUDE
  LAB_MODULE_FILES=(insmod.list=/lib/modules/insmod.list lab-modules.sh=/lib/lab-modules.sh)
  : >insmod.list
  for path in "${mods[@]}"; do
    rel=/lib/modules/$(basename "$path")
    LAB_MODULE_FILES+=("$path=$rel")
    echo "$rel" >>insmod.list
  done
}

# lab_tap NAME HOST_CIDR: a TAP device in L1 with the host side's address,
# up (L1 is the lab's own machine: no namespace needed).
lab_tap() {
  ip tuntap add dev "$1" mode tap
  ip addr add "$2" dev "$1"
  ip link set "$1" up
}
