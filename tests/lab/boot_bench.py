#!/usr/bin/env python3
"""The lab's boot bench driver (tests/lab/bench.sh).

    boot_bench.py RUNS EMBER KERNEL INITRD [--variant NAME EMBER2 EXTRA_CMDLINE]...
                  [--qemu-variant NAME EXTRA_CMDLINE]... [--variant-runs N]
                  [--firecracker NAME FIRECRACKER EXTRA_CMDLINE]... [--no-qemu]

Runs ember and QEMU microvm alternately RUNS times each (which one goes
first alternates too), timing exec -> the line "LAB-BENCH user space" on
the console and exec -> the VMM's exit (after the guest's reset), and
prints every run and the medians with the QEMU/ember ratio.

A variant is another ember binary (EMBER2, e.g. a build of an earlier
commit) and/or more kernel parameters (EXTRA_CMDLINE, e.g. "acpi=off";
"-" for none), run in the same rounds (N of them, default RUNS) to give
each change its share of the time. A QEMU variant is QEMU microvm with
more kernel parameters (e.g. "quiet", to compare like with like). A
Firecracker variant runs the FIRECRACKER binary (built from its source
outside this repository: no package registry ships it; docs/performance.md)
with `--no-api --config-file`, the same kernel, initrd, memory and vCPU
count, and the same command line plus EXTRA_CMDLINE (Firecracker adds
`pci=off` itself and resets through its i8042 on `reboot=k`), in the
same rounds as ember. `--no-qemu` leaves QEMU out (its runs are the
longest, and the lab's L1 stalls, docs/testing.md, come per hour of L2
time).

Each run also gives its split, read from the kernel's own trace of L1
(tracefs, the `sys_enter_ioctl` event filtered to KVM_RUN, with the
monotonic clock): exec -> the first KVM_RUN is the VMM's own set-up
(loading the kernel, building the VM), the first KVM_RUN -> the init's
line is the guest's part. "-" where tracefs is missing.

Before the first run the kernel, the initrd and every VMM binary are
read once (so no run pays L1's cold page cache and 9p reads) and 1 GiB of
L1's memory is touched and freed (so no run pays QEMU's first touch of
L1's RAM).

    boot_bench.py RUNS EMBER KERNEL INITRD [...] --names [--round N]
        prints the names of the VMMs of round N (default 1) in their order
        that round, one a line, and exits.
    boot_bench.py RUNS EMBER KERNEL INITRD [...] --only NAME --round N
        runs NAME once (round N) and prints its run line: the fresh mode
        of `scripts/lab bench --fresh` (one L1 per run; docs/testing.md).
    boot_bench.py --summarize FILE
        the table of the run lines in FILE.
"""
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

RUN_LINE = re.compile(
    r"^run (\d+) (\S+): user space (\S+) s, exit (\S+) s, status (-?\d+)(?:, first KVM_RUN (\S+) s)?")


def num(x):
    return None if x in (None, "none", "-") else float(x)


def summarize(results, names):
    def good(name):
        return [r for r in results.get(name, []) if r[0] is not None and r[2] == 0]

    def med(name, k):
        v = [r[k] for r in good(name) if r[k] is not None]
        return statistics.median(v) if v else float("nan")

    def span(name, k):
        v = [r[k] for r in good(name) if r[k] is not None]
        return f"{min(v):.2f}-{max(v):.2f}" if v else "-"

    def guest(name):
        v = [r[0] - r[3] for r in good(name) if r[3] is not None]
        return (f"{statistics.median(v):.2f} s ({min(v):.2f}-{max(v):.2f})") if v else "-"

    def setup(name):
        v = [r[3] for r in good(name) if r[3] is not None]
        return (f"{statistics.median(v):.2f} s ({min(v):.2f}-{max(v):.2f})") if v else "-"

    print()
    print("| | exec -> first user-space line (min-max) | exec -> first KVM_RUN (VMM set-up) "
          "| first KVM_RUN -> user-space line (guest) | exec -> exit after reset | good runs | ember / this |")
    print("|---|---|---|---|---|---|---|")
    eu = med("ember", 0)
    for name in names:
        u, e = med(name, 0), med(name, 1)
        print(f"| {name} | {u:.2f} s ({span(name, 0)}) | {setup(name)} | {guest(name)} | {e:.2f} s "
              f"| {len(good(name))}/{len(results.get(name, []))} | {eu / u:.2f}x |")
    if "qemu" in names:
        qu, qe, ee = med("qemu", 0), med("qemu", 1), med("ember", 1)
        print(f"| ratio QEMU / ember | {qu / eu:.2f}x | | | {qe / ee:.2f}x | | |")


if sys.argv[1:2] == ["--summarize"]:
    results, names = {}, []
    with open(sys.argv[2]) as f:
        for line in f:
            m = RUN_LINE.match(line.strip())
            if not m:
                continue
            name = m.group(2)
            if name not in names:
                names.append(name)
            results.setdefault(name, []).append((num(m.group(3)), num(m.group(4)), int(m.group(5)), num(m.group(6))))
    if "ember" in names:
        names.remove("ember")
        names.insert(0, "ember")
    summarize(results, names)
    sys.exit(0)

runs, ember, kernel, initrd = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
only, round_no, list_names = None, 1, False
variants = []
qemu_variants = []
firecrackers = []
with_qemu = True
variant_runs = runs
rest = sys.argv[5:]
while rest:
    if rest[0] == "--variant" and len(rest) >= 4:
        variants.append((rest[1], rest[2], "" if rest[3] == "-" else " " + rest[3]))
        rest = rest[4:]
    elif rest[0] == "--qemu-variant" and len(rest) >= 3:
        qemu_variants.append((rest[1], "" if rest[2] == "-" else " " + rest[2]))
        rest = rest[3:]
    elif rest[0] == "--firecracker" and len(rest) >= 4:
        firecrackers.append((rest[1], rest[2], "" if rest[3] == "-" else " " + rest[3]))
        rest = rest[4:]
    elif rest[0] == "--no-qemu":
        with_qemu = False
        rest = rest[1:]
    elif rest[0] == "--only" and len(rest) >= 2:
        only = rest[1]
        rest = rest[2:]
    elif rest[0] == "--round" and len(rest) >= 2:
        round_no = int(rest[1])
        rest = rest[2:]
    elif rest[0] == "--names":
        list_names = True
        rest = rest[1:]
    elif rest[0] == "--variant-runs" and len(rest) >= 2:
        variant_runs = int(rest[1])
        rest = rest[2:]
    else:
        sys.exit(f"boot_bench.py: bad arguments {rest}")
base = "console=ttyS0 panic=-1"


def ember_cmd(binary, extra=""):
    return [binary, "run", "--kernel", kernel, "--initrd", initrd, "--memory", "256M",
            "--cmdline", base + " reboot=k" + extra]


def qemu_cmd(extra=""):
    return ["qemu-system-x86_64", "-M", "microvm", "-accel", "kvm", "-cpu", "host", "-m", "256M",
            "-smp", "1", "-nodefaults", "-no-user-config", "-nographic", "-no-reboot", "-serial", "stdio",
            "-kernel", kernel, "-initrd", initrd, "-append", base + " reboot=t" + extra]


def firecracker_cmd(name, binary, extra=""):
    config = {
        "boot-source": {"kernel_image_path": os.path.abspath(kernel), "initrd_path": os.path.abspath(initrd),
                        "boot_args": base + " reboot=k" + extra},
        "drives": [],
        "machine-config": {"vcpu_count": 1, "mem_size_mib": 256},
    }
    path = os.path.join(tempfile.gettempdir(), f"boot-bench-{name}.json")
    with open(path, "w") as f:
        json.dump(config, f)
    return [binary, "--no-api", "--no-seccomp", "--config-file", path]


vmms = {"ember": ember_cmd(ember)}
if with_qemu:
    vmms["qemu"] = qemu_cmd()
for name, binary, extra in variants:
    vmms[name] = ember_cmd(binary, extra)
for name, extra in qemu_variants:
    vmms[name] = qemu_cmd(extra)
for name, binary, extra in firecrackers:
    vmms[name] = firecracker_cmd(name, binary, extra)




def round_order(i):
    """The VMMs of round i (from 0) in the order they run: variants only in
    the first variant_runs rounds, the order reversed every other round."""
    here = [n for n in vmms if n in ("ember", "qemu") or i < variant_runs]
    return here if i % 2 == 0 else list(reversed(here))


if list_names:
    print("\n".join(round_order(round_no - 1)))
    sys.exit(0)
if only is not None and only not in vmms:
    sys.exit(f"boot_bench.py: --only {only}: no such VMM (have {', '.join(vmms)})")

TRACE = "/sys/kernel/tracing"
KVM_RUN = 0xAE80


def trace_write(path, text):
    with open(os.path.join(TRACE, path), "w") as f:
        f.write(text)


def trace_start():
    """Arms the trace of KVM_RUN calls; False where L1 has no tracefs."""
    try:
        if not os.path.isdir(os.path.join(TRACE, "events")):
            subprocess.run(["mount", "-t", "tracefs", "tracefs", TRACE], check=False,
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        trace_write("trace_clock", "mono")
        # Keep the oldest events when the buffer fills (a boot without
        # `quiet` makes tens of thousands of KVM_RUN calls): the first
        # is the one wanted.
        trace_write("options/overwrite", "0")
        trace_write("events/syscalls/sys_enter_ioctl/filter", f"cmd == {KVM_RUN:#x}")
        trace_write("events/syscalls/sys_enter_ioctl/enable", "1")
        trace_write("trace", "")
        trace_write("tracing_on", "1")
        return True
    except OSError:
        return False


def trace_first_kvm_run(t0):
    """Seconds from t0 (time.monotonic) to the first KVM_RUN traced, or None."""
    try:
        trace_write("tracing_on", "0")
        with open(os.path.join(TRACE, "trace")) as f:
            text = f.read()
        trace_write("events/syscalls/sys_enter_ioctl/enable", "0")
    except OSError:
        return None
    for line in text.splitlines():
        if line.startswith("#") or ": sys_ioctl(" not in line:
            continue
        try:
            t = float(line.split(": sys_ioctl(")[0].split()[-1].rstrip(":"))
        except ValueError:
            continue
        if t >= t0:
            return t - t0
    return None


def warm_up():
    """Reads the files every run reads and touches L1's memory once."""
    files = [kernel, initrd] + [c[0] if os.path.isabs(c[0]) else shutil.which(c[0]) or c[0] for c in vmms.values()]
    for path in files:
        try:
            with open(path, "rb") as f:
                while f.read(1 << 20):
                    pass
        except OSError:
            pass
    b = bytearray(1 << 30)
    del b


def run(cmd):
    traced = trace_start()
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    user = None
    tail = []
    for line in p.stdout:
        if user is None and b"LAB-BENCH user space" in line:
            user = time.monotonic() - t0
        tail = (tail + [line])[-5:]
    p.wait()
    end = time.monotonic() - t0
    entry = trace_first_kvm_run(t0) if traced else None
    return user, end, p.returncode, entry, tail


def report(i, name, user, end, status, entry, tail):
    u = f"{user:.2f}" if user is not None else "none"
    k = f"{entry:.3f}" if entry is not None else "-"
    print(f"run {i} {name}: user space {u} s, exit {end:.2f} s, status {status}, first KVM_RUN {k} s", flush=True)
    if user is None or status != 0:
        print("  last lines: " + b"".join(tail).decode(errors="replace"), flush=True)


warm_up()
if only is not None:
    user, end, status, entry, tail = run(vmms[only])
    report(round_no, only, user, end, status, entry, tail)
    sys.exit(0)

results = {name: [] for name in vmms}
for i in range(runs):
    for name in round_order(i):
        user, end, status, entry, tail = run(vmms[name])
        results[name].append((user, end, status, entry))
        report(i + 1, name, user, end, status, entry, tail)

summarize(results, list(vmms))
