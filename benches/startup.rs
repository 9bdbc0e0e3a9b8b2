//! Start-up and footprint bench: ember beside QEMU's `microvm` machine (the
//! peer that runs on this host), measured in the same run.
//!
//! ```text
//! cargo bench --bench startup                 # 30 runs each, 1,000 idle VMs
//! EMBER_BENCH_RUNS=50 EMBER_BENCH_MANY=200 cargo bench --bench startup
//! EMBER_BENCH_BASELINE=/path/to/other/ember cargo bench --bench startup
//! ```
//!
//! Reports, as medians over the runs:
//! * exec → first guest serial byte, for the smallest test guest
//!   (`first_byte`: a byte out in its first instructions) and for `hello`
//!   (whose C runtime runs ~1 ms of emulated instructions first);
//! * the VMM's RSS beyond guest memory for an idle 1-vCPU / 128 MiB guest
//!   (total RSS minus the RSS of the guest-RAM mapping, from
//!   /proc/PID/smaps);
//! * host memory per idle VM with EMBER_BENCH_MANY of them running
//!   (the drop of MemAvailable, divided by the count, and the meminfo
//!   fields it went to).
//! * the first two again with one virtio-blk disk and one virtio-net NIC
//!   (on a TAP the bench creates; root only), on each transport: virtio-pci
//!   (the default) beside virtio-mmio.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const GUEST_MIB: u64 = 128;

mod common;
use common::{field, guest, meminfo, repo};

/// A VMM under test: how to start it on a guest.
struct Vmm {
    name: &'static str,
    cmd: Box<dyn Fn(&Path) -> Command>,
}

/// ember as scripts/setup builds it: glibc linked statically.
fn static_ember() -> Option<PathBuf> {
    let dir = repo().join("target/static");
    let st = Command::new(env!("CARGO"))
        .args([
            "build",
            "--release",
            "--quiet",
            "--bin",
            "ember",
            "--target",
            "x86_64-unknown-linux-gnu",
            "--target-dir",
        ])
        .arg(&dir)
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .current_dir(repo())
        .status()
        .ok()?;
    st.success().then(|| dir.join("x86_64-unknown-linux-gnu/release/ember"))
}

fn ember_at(name: &'static str, bin: PathBuf) -> Vmm {
    ember_with(name, bin, Vec::new())
}

/// ember from `bin` with `extra` arguments (devices) after the common ones.
fn ember_with(name: &'static str, bin: PathBuf, extra: Vec<String>) -> Vmm {
    Vmm {
        name,
        cmd: Box::new(move |g: &Path| {
            let mut c = Command::new(&bin);
            c.args([
                "run",
                "--memory",
                "128M",
                "--debug-exit",
                "--serial",
                "stdio",
                "--cmdline",
                "console=ttyS0",
                "--kernel",
            ])
            .arg(g)
            .args(&extra);
            c
        }),
    }
}

/// A TAP device for the device rows, removed on drop.
struct Tap(String);

impl Tap {
    fn new() -> Option<Tap> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        let name = format!("ebench{}", std::process::id() % 100_000);
        let ok = Command::new("ip").args(["tuntap", "add", "dev", &name, "mode", "tap"]).status();
        matches!(ok, Ok(s) if s.success()).then_some(Tap(name))
    }
}

impl Drop for Tap {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

fn ember_vmm() -> Vmm {
    ember_at("ember (dynamic)", PathBuf::from(env!("CARGO_BIN_EXE_ember")))
}

fn qemu_vmm() -> Option<Vmm> {
    let ok = Command::new("qemu-system-x86_64").arg("--version").stdout(Stdio::null()).status().map(|s| s.success());
    if !matches!(ok, Ok(true)) {
        return None;
    }
    Some(Vmm {
        name: "qemu -M microvm (TCG)",
        cmd: Box::new(|g: &Path| {
            let mut c = Command::new("qemu-system-x86_64");
            c.args([
                "-M",
                "microvm",
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
                "-m",
                "128M",
                "-device",
                "isa-debug-exit,iobase=0xf4,iosize=4",
                "-append",
                "console=ttyS0",
                "-kernel",
            ])
            .arg(g);
            c
        }),
    })
}

fn spawn(vmm: &Vmm, g: &Path) -> Child {
    (vmm.cmd)(g).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("spawn VMM")
}

fn first_byte(vmm: &Vmm, g: &Path) -> Duration {
    let t0 = Instant::now();
    let mut child = spawn(vmm, g);
    let mut b = [0u8; 1];
    let n = child.stdout.as_mut().unwrap().read(&mut b).unwrap();
    let dt = t0.elapsed();
    assert_eq!(n, 1, "{} printed nothing", vmm.name);
    let _ = child.kill();
    let _ = child.wait();
    dt
}

/// (RSS beyond guest RAM, total RSS) in KiB, read from smaps.
fn rss_beyond_guest(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut total, mut guest) = (0u64, 0u64);
    let mut cur_size_kib = 0u64;
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            cur_size_kib = v.trim().trim_end_matches("kB").trim().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let rss: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap();
            total += rss;
            // The guest-RAM mapping is the one of the guest's size (QEMU
            // may round its RAM block up a little).
            if (GUEST_MIB * 1024..GUEST_MIB * 1024 + 4096).contains(&cur_size_kib) {
                guest += rss;
            }
        }
    }
    (total - guest, total)
}

fn wait_for_output(child: &mut Child, needle: &[u8]) {
    let mut seen = Vec::new();
    let mut b = [0u8; 256];
    let out = child.stdout.as_mut().unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !seen.windows(needle.len()).any(|w| w == needle) {
        assert!(Instant::now() < deadline, "guest never printed {:?}", String::from_utf8_lossy(needle));
        let n = out.read(&mut b).unwrap();
        assert!(n > 0, "VMM exited early");
        seen.extend_from_slice(&b[..n]);
    }
}

fn idle_rss(vmm: &Vmm, g: &Path) -> (u64, u64) {
    let mut child = spawn(vmm, g);
    wait_for_output(&mut child, b"HANG");
    std::thread::sleep(Duration::from_millis(300));
    let r = rss_beyond_guest(child.id());
    let _ = child.kill();
    let _ = child.wait();
    r
}

/// Host memory per idle VM with `count` of them running: the drop of
/// MemAvailable divided by the count, and where it went (the meminfo fields
/// that grew), in KiB per VM.
fn per_vm_host_memory(vmm: &Vmm, g: &Path, count: usize) -> (f64, Vec<(&'static str, f64)>) {
    // Settle the page cache and per-CPU free lists before the baseline.
    std::thread::sleep(Duration::from_millis(500));
    let before = meminfo();
    let mut children = Vec::with_capacity(count);
    for _ in 0..count {
        let mut c = spawn(vmm, g);
        wait_for_output(&mut c, b"HANG");
        children.push(c);
    }
    std::thread::sleep(Duration::from_millis(1000));
    let after = meminfo();
    for mut c in children {
        let _ = c.kill();
        let _ = c.wait();
    }
    let per = |k: &str| (field(&before, k) - field(&after, k)) as f64 / count as f64;
    let grew = |k: &'static str| (k, -per(k));
    let parts = ["AnonPages", "Shmem", "Slab", "KernelStack", "PageTables", "SecPageTables", "VmallocUsed", "Percpu"]
        .into_iter()
        .map(grew)
        .collect();
    (per("MemAvailable"), parts)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs: usize = std::env::var("EMBER_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let many: usize = std::env::var("EMBER_BENCH_MANY").ok().and_then(|v| v.parse().ok()).unwrap_or(1000);
    let hello = guest("hello");
    let tiny = guest("first_byte");
    let hang = guest("hang");
    let mut vmms = Vec::new();
    match static_ember() {
        Some(b) => vmms.push(ember_at("ember (static, as shipped)", b)),
        None => println!("could not build the static ember; dynamic build only"),
    }
    vmms.push(ember_vmm());
    // Another ember build in the same run (e.g. an earlier commit's static
    // binary), to give a change its share.
    if let Ok(b) = std::env::var("EMBER_BENCH_BASELINE") {
        vmms.push(ember_at("ember (EMBER_BENCH_BASELINE)", PathBuf::from(b)));
    }
    match qemu_vmm() {
        Some(q) => vmms.push(q),
        None => println!("qemu-system-x86_64 not installed: ember figures only (scripts/setup installs it)"),
    }
    println!("startup bench: {runs} runs each, guest {GUEST_MIB} MiB / 1 vCPU, host {} CPUs", num_cpus());
    let mut first = Vec::new();
    let mut rss = Vec::new();
    for vmm in &vmms {
        // One warm-up run so page cache and binary are hot for both.
        first_byte(vmm, &tiny);
        let t: Vec<f64> = (0..runs).map(|_| first_byte(vmm, &tiny).as_secs_f64() * 1e3).collect();
        let th: Vec<f64> = (0..runs).map(|_| first_byte(vmm, &hello).as_secs_f64() * 1e3).collect();
        let r: Vec<(u64, u64)> = (0..runs.min(10)).map(|_| idle_rss(vmm, &hang)).collect();
        let beyond = median(r.iter().map(|x| x.0 as f64).collect());
        let total = median(r.iter().map(|x| x.1 as f64).collect());
        let mut sorted = t.clone();
        sorted.sort_by(|a, b| a.partial_cmp(b).unwrap());
        println!(
            "{:<24} exec->first serial byte: median {:.2} ms (p10 {:.2}, p90 {:.2}) [first_byte guest], {:.2} ms [hello guest, C runtime]; idle RSS beyond guest RAM {:.2} MiB (total {:.2} MiB)",
            vmm.name,
            median(t),
            sorted[sorted.len() / 10],
            sorted[sorted.len() * 9 / 10],
            median(th),
            beyond / 1024.0,
            total / 1024.0
        );
        first.push(sorted[sorted.len() / 2]);
        rss.push(beyond);
    }
    if let Some(q) = vmms.iter().position(|v| v.name.starts_with("qemu")) {
        println!(
            "ratio ember/qemu (measured in this run): first byte {:.3}x, RSS beyond guest {:.3}x",
            first[0] / first[q],
            rss[0] / rss[q]
        );
    }
    println!("targets: first byte <= 1.6 ms (the spawn floor here is ~1.3 ms; Firecracker here: 10 ms), RSS beyond guest <= 2 MiB (Firecracker: 4.1 MiB)");
    devices_by_transport(&vmms, &tiny, &hang, runs);
    if many > 0 {
        let (per, parts) = per_vm_host_memory(&vmms[0], &hang, many);
        println!(
            "ember: host memory per idle VM with {many} running: {:.2} MiB (target <= 0.8 MiB; Firecracker 1.56 MiB with 1,000)",
            per / 1024.0
        );
        let parts: Vec<String> = parts.iter().map(|(k, v)| format!("{k} {v:.0}")).collect();
        println!("  of which, KiB per VM: {}", parts.join(", "));
    }
}

/// The first ember again with one disk and one NIC, on virtio-pci and on
/// virtio-mmio, beside the same ember without devices (measured again here,
/// so the three rows come from the same minutes of the machine).
fn devices_by_transport(vmms: &[Vmm], tiny: &Path, hang: &Path, runs: usize) {
    let Some(tap) = Tap::new() else {
        println!("devices: skipped (needs root for a TAP device)");
        return;
    };
    let dir = std::env::temp_dir().join(format!("ember-startup-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("disk.img");
    std::fs::write(&img, vec![0u8; 8 << 20]).unwrap();
    let bin = (vmms[0].cmd)(tiny).get_program().to_owned();
    let with = |name: &'static str, t: &str| {
        let extra = vec![
            "--disk".to_string(),
            format!("path={},transport={t}", img.display()),
            "--net".to_string(),
            format!("tap={},transport={t}", tap.0),
        ];
        ember_with(name, PathBuf::from(&bin), extra)
    };
    let rows = [
        ember_at("no devices", PathBuf::from(&bin)),
        with("disk+NIC on virtio-pci", "pci"),
        with("disk+NIC on virtio-mmio", "mmio"),
    ];
    // Interleaved run by run (after one warm-up each), so the three rows
    // share the machine's minutes alike; then up to 10 RSS readings each.
    for v in &rows {
        first_byte(v, tiny);
    }
    let mut times: Vec<Vec<f64>> = vec![Vec::new(); rows.len()];
    for _ in 0..runs {
        for (v, t) in rows.iter().zip(times.iter_mut()) {
            t.push(first_byte(v, tiny).as_secs_f64() * 1e3);
        }
    }
    let figures: Vec<(f64, f64)> = rows
        .iter()
        .zip(times)
        .map(|(v, t)| (median(t), median((0..runs.min(10)).map(|_| idle_rss(v, hang).0 as f64).collect())))
        .collect();
    println!("{} with devices ({runs} interleaved runs each):", vmms[0].name);
    for (v, (t, r)) in rows.iter().zip(&figures) {
        println!(
            "  {:<26} exec->first serial byte: median {t:.2} ms; idle RSS beyond guest RAM {:.2} MiB",
            v.name,
            r / 1024.0
        );
    }
    println!(
        "  ratio pci/mmio (this run): first byte {:.3}x, RSS beyond guest {:.3}x",
        figures[1].0 / figures[2].0,
        figures[1].1 / figures[2].1
    );
    let _ = std::fs::remove_dir_all(&dir);
}

fn num_cpus() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}
