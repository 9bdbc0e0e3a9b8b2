# shellcheck shell=bash
# A stop path on real KVM: Debian's stock kernel runs under `ember run
# --cpus 2` on a pseudo-terminal (python3's pty module,
# tests/lab/pty_stop.py) until its init says it is up; then Ctrl-A x is
# typed on the terminal. ember must end at once with status 0, the
# terminal's settings put back, and leave nothing running.
. "$LAB_REPO/tests/lab/lib.sh"
cat >init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
echo "LAB-L2 up"
while :; do sleep 1; done
INIT
lab_initramfs initramfs.cpio init
python3 "$LAB_REPO/tests/lab/pty_stop.py" ctrl-a-x "LAB-L2 up" "$LAB_WORK/vm.console" -- \
  "$EMBER" run --kernel "$LAB_VMLINUZ" --initrd initramfs.cpio --memory 256M --cpus 2 \
  --cmdline "console=ttyS0 reboot=k panic=-1"
lab_kv driver_status $?
exit 0
