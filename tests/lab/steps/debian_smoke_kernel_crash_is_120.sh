# shellcheck shell=bash
# `ember smoke` on Debian's stock kernel when the command crashes the
# kernel (sysrq c: a NULL pointer write, an oops, a panic): exit status
# 120 and a KERNEL PANIC verdict in the summary and the JUnit report.
. "$LAB_REPO/tests/lab/lib.sh"
lab_l2 crash "$EMBER" smoke --kernel "$LAB_VMLINUZ" --timeout 600s --junit "$LAB_WORK/crash.xml" \
  -- sh -c 'echo c > /proc/sysrq-trigger; echo still-alive'
exit 0
