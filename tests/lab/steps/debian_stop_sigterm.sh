# shellcheck shell=bash
# A stop path on real KVM: Debian's stock kernel runs under `ember run
# --cpus 2` on a pseudo-terminal (python3's pty module,
# tests/lab/pty_stop.py) until its init says it is up; then SIGTERM is sent
# to ember. ember must end at once, dying of the signal (status 143) after
# putting the terminal's settings back, and leave nothing running.
. "$LAB_REPO/tests/lab/lib.sh"
cat >init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
echo "LAB-L2 up"
while :; do sleep 1; done
INIT
lab_initramfs initramfs.cpio init
python3 "$LAB_REPO/tests/lab/pty_stop.py" sigterm "LAB-L2 up" "$LAB_WORK/vm.console" -- \
  "$EMBER" run --kernel "$LAB_VMLINUZ" --initrd initramfs.cpio --memory 256M --cpus 2 \
  --cmdline "console=ttyS0 reboot=k panic=-1"
lab_kv driver_status $?
exit 0
