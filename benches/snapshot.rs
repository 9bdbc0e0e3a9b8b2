//! Snapshot bench (issue 19): how long a snapshot takes, how fast a VM
//! restored from one runs again, and what a hundred restored clones of one
//! snapshot cost the host, each beside the cold boot of the same guest in
//! the same run.
//!
//! ```text
//! cargo bench --bench snapshot                  # 20 runs, 100 clones
//! EMBER_BENCH_RUNS=50 EMBER_BENCH_CLONES=200 cargo bench --bench snapshot
//! ```
//!
//! * **snapshot**: `PUT /snapshot/create` on a paused `count` guest, from
//!   request to answer (both files written and synced), for 128 MiB and
//!   1 GiB of RAM;
//! * **restore → first byte**: exec of `ember restore` → the restored
//!   guest's first serial byte (the `count` guest prints without pause, so
//!   its first byte follows its first instructions), lazily mapped and
//!   copied memory, beside exec of `ember run` → first byte of the same
//!   guest booted cold;
//! * **clones**: host memory per VM (the drop of MemAvailable) with N
//!   clones of one idle `hang` snapshot running, beside N cold-booted idle
//!   `hang` VMs.

mod common;

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Child;
use std::time::{Duration, Instant};

use common::{call, connect_polled, end, field, guest, median, meminfo, ms, spawn, wait_for_output};

fn env_usize(k: &str, d: usize) -> usize {
    std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d)
}

/// A snapshot of `g` booted with `mem_mib` and `boot_args`, taken once it
/// printed `ready`, in `dir`; returns how long `PUT /snapshot/create` took.
fn take(dir: &Path, g: &Path, mem_mib: u64, boot_args: &str, ready: &[u8]) -> Duration {
    std::fs::create_dir_all(dir).unwrap();
    let sock = dir.join("api.sock");
    let _ = std::fs::remove_file(&sock);
    let mut child = spawn(&["serve", "--api-sock", sock.to_str().unwrap()]);
    let mut s = connect_polled(&sock, Instant::now());
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "{boot_args}"}}"#, g.display());
    let machine = format!(r#"{{"vcpu_count": 1, "mem_size_mib": {mem_mib}}}"#);
    assert_eq!(call(&mut s, "PUT", "/boot-source", &boot), 204);
    assert_eq!(call(&mut s, "PUT", "/machine-config", &machine), 204);
    assert_eq!(call(&mut s, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#), 204);
    wait_for_output(&mut child, ready);
    assert_eq!(call(&mut s, "PATCH", "/vm", r#"{"state": "Paused"}"#), 204);
    let body = format!(
        r#"{{"snapshot_path": "{}", "mem_file_path": "{}"}}"#,
        dir.join("state").display(),
        dir.join("memory").display()
    );
    let t = Instant::now();
    assert_eq!(call(&mut s, "PUT", "/snapshot/create", &body), 204);
    let took = t.elapsed();
    end(child);
    took
}

fn restore_args(dir: &Path, backing: &str) -> Vec<String> {
    vec![
        "restore".into(),
        "--snapshot".into(),
        dir.join("state").display().to_string(),
        "--mem-file".into(),
        dir.join("memory").display().to_string(),
        "--memory-backing".into(),
        backing.into(),
    ]
}

/// exec → first stdout byte of `ember args`.
fn first_byte(args: &[String]) -> Duration {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let t0 = Instant::now();
    let mut child = spawn(&args);
    let mut b = [0u8; 1];
    let n = child.stdout.as_mut().unwrap().read(&mut b).unwrap();
    let dt = t0.elapsed();
    assert_eq!(n, 1, "ember {args:?} printed nothing");
    end(child);
    dt
}

/// A process's proportional set size in KiB (shared pages divided among
/// the processes mapping them).
fn pss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).unwrap_or_default();
    s.lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Host memory per VM in KiB with `count` of `start()` running, each
/// waited for with `up`: (the drop of MemAvailable, the mean PSS).
fn per_vm_kib(count: usize, start: &dyn Fn() -> Child, up: &dyn Fn(&mut Child)) -> (f64, f64) {
    std::thread::sleep(Duration::from_millis(500));
    let before = meminfo();
    let mut children = Vec::with_capacity(count);
    for _ in 0..count {
        let mut c = start();
        up(&mut c);
        children.push(c);
    }
    std::thread::sleep(Duration::from_millis(1000));
    let after = meminfo();
    let pss: u64 = children.iter().map(|c| pss_kib(c.id())).sum();
    children.into_iter().for_each(end);
    let n = count as f64;
    ((field(&before, "MemAvailable") - field(&after, "MemAvailable")) as f64 / n, pss as f64 / n)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        println!("snapshot: bench");
        return;
    }
    let runs = env_usize("EMBER_BENCH_RUNS", 20);
    let clones = env_usize("EMBER_BENCH_CLONES", 100);
    let work = std::env::temp_dir().join(format!("ember-bench-snapshot-{}", std::process::id()));
    let count = guest("count");
    let hang = guest("hang");
    println!("snapshot bench: {runs} runs each (medians), {clones} clones");

    for mem in [128u64, 1024] {
        let dir = work.join(format!("count-{mem}"));
        let took: Vec<Duration> =
            (0..5.min(runs)).map(|_| take(&dir, &count, mem, "spin=100", b"count 3\r\n")).collect();
        let written = std::fs::metadata(dir.join("memory")).map(|m| m.len()).unwrap_or(0);
        let used = std::process::Command::new("du").arg("-k").arg(dir.join("memory")).output().ok();
        let used =
            used.map(|o| String::from_utf8_lossy(&o.stdout).split_whitespace().next().unwrap_or("?").to_string());
        println!(
            "{mem:>5} MiB  snapshot (PUT /snapshot/create)       {:>12}   memory file {} MiB, {} KiB on disk",
            ms(median(took)),
            written >> 20,
            used.unwrap_or_default()
        );
        let cold: Vec<String> = ["run", "--memory", &format!("{mem}M"), "--cmdline", "spin=100", "--kernel"]
            .iter()
            .map(|s| s.to_string())
            .chain([count.display().to_string()])
            .collect();
        let (mut lazy, mut copy, mut boot) = (Vec::new(), Vec::new(), Vec::new());
        for _ in 0..runs {
            lazy.push(first_byte(&restore_args(&dir, "lazy")));
            copy.push(first_byte(&restore_args(&dir, "copy")));
            boot.push(first_byte(&cold));
        }
        let (lazy, copy, boot) = (median(lazy), median(copy), median(boot));
        let ratio = |d: Duration| d.as_secs_f64() / boot.as_secs_f64();
        println!("{mem:>5} MiB  restore (lazy) → first byte          {:>12}   {:.2}× cold boot", ms(lazy), ratio(lazy));
        println!("{mem:>5} MiB  restore (copy) → first byte          {:>12}   {:.2}× cold boot", ms(copy), ratio(copy));
        println!("{mem:>5} MiB  cold boot (ember run) → first byte   {:>12}", ms(boot));
    }

    let dir: PathBuf = work.join("hang");
    take(&dir, &hang, 128, "", b"HANG");
    let args = restore_args(&dir, "lazy");
    let argv: Vec<&str> = args.iter().map(String::as_str).collect();
    // A restored `hang` prints nothing more: it is up once its threads are
    // (the vCPU parked in HLT); give each a moment.
    let restored = per_vm_kib(clones, &|| spawn(&argv), &|_| std::thread::sleep(Duration::from_millis(20)));
    let h = hang.display().to_string();
    let cold_args = ["run", "--memory", "128M", "--kernel", h.as_str()];
    let cold = per_vm_kib(clones, &|| spawn(&cold_args), &|c| wait_for_output(c, b"HANG"));
    println!(
        "per idle 128 MiB VM, {clones} running: restored clones PSS {:.0} KiB (MemAvailable -{:.0} KiB), \
         cold-booted PSS {:.0} KiB (MemAvailable -{:.0} KiB): PSS {:.2}×",
        restored.1,
        restored.0,
        cold.1,
        cold.0,
        restored.1 / cold.1
    );
    let _ = std::fs::remove_dir_all(&work);
}
