# shellcheck shell=bash
# `ember smoke --timeout 75s` on Debian's stock kernel with a command that
# sleeps: exit status 124 once the timeout has passed (counted from the
# VM's start, so the boot is part of it), not minutes later, and a JUnit
# report that says so.
. "$LAB_REPO/tests/lab/lib.sh"
lab_l2 sleep "$EMBER" smoke --kernel "$LAB_VMLINUZ" --timeout 75s --junit "$LAB_WORK/sleep.xml" \
  -- sh -c 'echo sleeping; sleep 600'
exit 0
