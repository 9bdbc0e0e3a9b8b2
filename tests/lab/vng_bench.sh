# shellcheck shell=bash
# A bench, not a lab step: `ember smoke --root-share -- true` beside
# virtme-ng's `vng --run KERNEL -- true` (QEMU with -accel kvm in L1),
# the same Debian kernel, wall time to the command's exit, RUNS runs each
# (default 5), medians and ratio. virtme-ng is taken from a venv on the
# host (VNG, default /tmp/p9-work/venv/bin/vng: python3 -m venv DIR &&
# DIR/bin/pip install virtme-ng==1.42). vng's guest init finds its
# virtio-serial ports (the command's status) through udev: without
# systemd-udevd on the host (Debian: `apt-get install udev`) the command
# runs but vng exits 255.
#   scripts/lab run --ember target/ember tests/lab/vng_bench.sh [RUNS]
# (the shipped static release build: a debug build's 9P server is slower)
. "$LAB_REPO/tests/lab/lib.sh"
runs=${1:-5}
vng=${VNG:-/tmp/p9-work/venv/bin/vng}
[[ -x $vng ]] || { echo "no virtme-ng at $vng (set VNG)"; exit 1; }
[[ -x /lib/systemd/systemd-udevd ]] || { echo "no systemd-udevd: vng's guest cannot report the status (apt-get install udev)"; exit 1; }
export PATH="$(dirname "$vng"):$PATH" # vng runs virtme-run from its own bin/
# Both guests load the kernel's modules from the shared root's /lib/modules.
mkdir -p /lib/modules
ln -sfn "$LAB_MODULES/lib/modules/$LAB_KERNEL_RELEASE" "/lib/modules/$LAB_KERNEL_RELEASE"
# ember twice: as it comes (the kernel's log on the console) and with
# --quiet (`quiet` on the command line, as vng always passes).
for i in $(seq "$runs"); do
  lab_l2 "ember$i" "$EMBER" smoke --kernel "$LAB_VMLINUZ" --root-share --timeout 600s -- true
  lab_l2 "emberquiet$i" "$EMBER" smoke --quiet --kernel "$LAB_VMLINUZ" --root-share --timeout 600s -- true
  lab_l2 "vng$i" timeout 600 "$vng" --run "$LAB_VMLINUZ" -- true
done
for k in ember emberquiet vng; do
  for i in $(seq "$runs"); do
    [[ $(cat "$LAB_WORK/$k$i.status") == 0 ]] && cat "$LAB_WORK/$k$i.secs"
  done | sort -n | awk -v k="$k" '{ v[NR] = $1 } END { if (NR) printf "%s: %d ok runs, median %.2f s\n", k, NR, v[int((NR + 1) / 2)]; else printf "%s: no ok run\n", k }'
done | tee "$LAB_WORK/vng-bench.txt"
awk '/median/ { k = $1; sub(/:$/, "", k); m[k] = $(NF - 1) } END { if (m["vng"] > 0) for (k in m) if (k != "vng") printf "%s / vng: %.2fx\n", k, m[k] / m["vng"] }' "$LAB_WORK/vng-bench.txt" | tee -a "$LAB_WORK/vng-bench.txt"
exit 0
