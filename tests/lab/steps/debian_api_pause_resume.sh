# shellcheck shell=bash
# The API socket on real KVM: `ember serve` boots Debian's stock kernel,
# configured and started through Firecracker's API (curl on the Unix
# socket), to an init that counts on the console in user space. PATCH /vm
# pauses it: no line for 5 s, GET / says "Paused"; resume: the count goes
# on with no gap or repeat. Then SendCtrlAltDel: the kernel's i8042/atkbd
# drivers see the keys and reboot (reboot=k), which ends ember with 0.
. "$LAB_REPO/tests/lab/lib.sh"
cat >init <<'INIT'
#!/bin/sh
mount -t proc proc /proc
echo "LAB-L2 up"
i=0
while :; do
  i=$((i + 1))
  echo "LAB-COUNT $i"
  [ $((i % 10)) = 0 ] && echo "LAB-IRQ $(grep i8042 /proc/interrupts | tr -s ' ' | tr '\n' ';')"
  usleep 200000
done
INIT
lab_initramfs initramfs.cpio init
sock=$LAB_TMP/api.sock
console=$LAB_TMP/vm.console
api() { # METHOD PATH [BODY]: prints the HTTP status, the body to api.log
  local m=$1 p=$2 b=${3:-}
  echo "> $m $p $b" >>"$LAB_WORK/api.log"
  if [[ -n $b ]]; then
    curl -s -o "$LAB_TMP/api.body" -w '%{http_code}' --unix-socket "$sock" -X "$m" "http://localhost$p" \
      -H 'Content-Type: application/json' -d "$b"
  else
    curl -s -o "$LAB_TMP/api.body" -w '%{http_code}' --unix-socket "$sock" -X "$m" "http://localhost$p"
  fi
  { cat "$LAB_TMP/api.body"; echo; } >>"$LAB_WORK/api.log"
}
counted() { # how many count lines the console has
  local n
  n=$(grep -c '^LAB-COUNT' "$console" 2>/dev/null)
  echo "${n:-0}"
}
wait_count() { # N SECS: until N count lines, or SECS pass
  local n=$1 end=$((SECONDS + $2))
  while (($(counted) < n && SECONDS < end)); do sleep 0.2; done
}

lab_l2 vm "$EMBER" serve --api-sock "$sock" --shutdown-timeout 10s &
l2=$!
# The file exists from bind(2); connections are accepted from listen(2).
for _ in $(seq 100); do curl -s -o /dev/null --unix-socket "$sock" http://localhost/ && break; sleep 0.1; done
lab_kv state_before "$(curl -s --unix-socket "$sock" http://localhost/ | sed -n 's/.*"state":"\([^"]*\)".*/\1/p')"
lab_kv boot_status "$(api PUT /boot-source "{\"kernel_image_path\": \"$LAB_VMLINUZ\", \"initrd_path\": \"$PWD/initramfs.cpio\", \"boot_args\": \"console=ttyS0 reboot=k panic=-1\"}")"
lab_kv machine_status "$(api PUT /machine-config '{"vcpu_count": 1, "mem_size_mib": 256}')"
lab_kv start_status "$(api PUT /actions '{"action_type": "InstanceStart"}')"
wait_count 5 240
lab_kv pause_status "$(api PATCH /vm '{"state": "Paused"}')"
lab_kv state_paused "$(curl -s --unix-socket "$sock" http://localhost/ | sed -n 's/.*"state":"\([^"]*\)".*/\1/p')"
sleep 1 # what the guest wrote before the pause reaches the file
paused_at=$(counted)
sleep 5
lab_kv paused_lines "$paused_at $(counted)"
lab_kv resume_status "$(api PATCH /vm '{"state": "Resumed"}')"
wait_count $((paused_at + 5)) 120
lab_kv resumed_lines "$(counted)"
lab_kv refused_status "$(api PUT /machine-config '{"vcpu_count": 2, "mem_size_mib": 256}')"
lab_kv cad_status "$(api PUT /actions '{"action_type": "SendCtrlAltDel"}')"
# The kernel reboots on the keys, which ends ember serve (and removes the
# socket); if it has not within 90 s, SIGTERM it (Ctrl+Alt+Del again, then
# a stop after 10 s) so the step ends and the check can say why.
ended=0
for _ in $(seq 180); do
  [[ -e $sock ]] || { ended=1; break; }
  sleep 0.5
done
lab_kv cad_ended "$ended"
if ((ended == 0)); then
  grep '^LAB-IRQ' "$console" | tail -n 3
  kill -TERM "$(pgrep -P "$l2" -x ember)" 2>/dev/null
fi
wait "$l2"
lab_kv serve_status $?
lab_kv socket_left "$([[ -e $sock ]] && echo yes || echo no)"
exit 0
