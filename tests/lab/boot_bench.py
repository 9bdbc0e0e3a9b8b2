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
"""
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

runs, ember, kernel, initrd = int(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
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


def run(cmd):
    t0 = time.monotonic()
    p = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    user = None
    tail = []
    for line in p.stdout:
        if user is None and b"LAB-BENCH user space" in line:
            user = time.monotonic() - t0
        tail = (tail + [line])[-5:]
    p.wait()
    return user, time.monotonic() - t0, p.returncode, tail


results = {name: [] for name in vmms}
for i in range(runs):
    here = [n for n in vmms if n in ("ember", "qemu") or i < variant_runs]
    order = here if i % 2 == 0 else list(reversed(here))
    for name in order:
        user, end, status, tail = run(vmms[name])
        results[name].append((user, end, status))
        u = f"{user:.2f}" if user is not None else "none"
        print(f"run {i + 1} {name}: user space {u} s, exit {end:.2f} s, status {status}", flush=True)
        if user is None or status != 0:
            print("  last lines: " + b"".join(tail).decode(errors="replace"), flush=True)


def med(name, k):
    v = [r[k] for r in results[name] if r[0] is not None and r[2] == 0]
    return statistics.median(v) if v else float("nan"), len(v)


print()
def span(name, k):
    v = [r[k] for r in results[name] if r[0] is not None and r[2] == 0]
    return f"{min(v):.2f}-{max(v):.2f}" if v else "-"


print("| | exec -> first user-space line (min-max) | exec -> exit after reset | good runs | ember / this |")
print("|---|---|---|---|---|")
(eu, _), (ee, _) = med("ember", 0), med("ember", 1)
for name in vmms:
    (u, n), (e, _) = med(name, 0), med(name, 1)
    print(f"| {name} | {u:.2f} s ({span(name, 0)}) | {e:.2f} s | {n}/{len(results[name])} | {eu / u:.2f}x |")
if with_qemu:
    (qu, _), (qe, _) = med("qemu", 0), med("qemu", 1)
    print(f"| ratio QEMU / ember | {qu / eu:.2f}x | {qe / ee:.2f}x | | |")
