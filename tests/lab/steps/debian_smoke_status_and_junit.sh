# shellcheck shell=bash
# `ember smoke` command mode on Debian's stock kernel: the command's output
# on ember's stdout, its exit status passed through (7), a JUnit report
# (parsed on the host), `--quiet` showing only the command's output, and
# the ELF vmlinux (PVH) in command mode as well.
. "$LAB_REPO/tests/lab/lib.sh"
lab_kv release "$LAB_KERNEL_RELEASE"
lab_l2 exit7 "$EMBER" smoke --kernel "$LAB_VMLINUZ" --timeout 600s --junit "$LAB_WORK/exit7.xml" \
  -- sh -c 'echo "smoke-out release=$(uname -r) pid=$$"; exit 7'
lab_l2 quiet "$EMBER" smoke --kernel "$LAB_VMLINUX" --timeout 600s --quiet --junit "$LAB_WORK/quiet.xml" -- uname -r
exit 0
