//! What booting through the API costs, beside the command line, in the
//! same run and on the same guest (`first_byte`: a serial byte in its
//! first instructions; 128 MiB, debug-exit):
//!
//! * CLI: exec of `ember run --kernel …` → first guest serial byte;
//! * API: exec of `ember serve --api-sock …` → socket connectable →
//!   configured (`PUT /boot-source`, `PUT /machine-config` answered) →
//!   `InstanceStart` answered → first guest serial byte;
//! * config file: exec of `ember serve --config-file …` → first byte;
//!
//! interleaved run by run (after a warm-up round) so a busy host disturbs
//! them alike, as medians; and the idle RSS beyond guest RAM of `ember
//! serve` (API thread included) beside `ember run`, for the `hang` guest.
//!
//! ```text
//! cargo bench --bench serve
//! EMBER_BENCH_RUNS=100 cargo bench --bench serve
//! ```

use std::io::Read;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

mod common;
use common::{call, connect_polled, end, guest, median, ms, spawn, wait_for_output, SocketWatch};

const GUEST_MIB: u64 = 128;

/// Waits for the guest's first serial byte; returns when it came (from
/// `t`) and then the CPU time the process's threads have run so far (from
/// /proc/PID/task/*/schedstat: a busy host delays a process but does not
/// make it run longer), read after the time is taken.
fn first_byte(child: &mut Child, t: Instant) -> (Duration, Duration) {
    let mut b = [0u8; 1];
    let n = child.stdout.as_mut().unwrap().read(&mut b).unwrap();
    let at = t.elapsed();
    assert_eq!(n, 1, "the guest printed nothing");
    (at, cpu_time(child.id()))
}

fn cpu_time(pid: u32) -> Duration {
    let mut ns = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).into_iter().flatten().flatten() {
        let s = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
        ns += s.split_whitespace().next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    }
    Duration::from_nanos(ns)
}

/// The API path's checkpoints from exec: socket ready, configured, started,
/// first byte; the client waits for the socket on `watch` (inotify) or,
/// without one, tries to connect every 20 µs.
fn api_boot(sock: &Path, g: &Path, watch: Option<&SocketWatch>) -> [Duration; 5] {
    let _ = std::fs::remove_file(sock);
    let t = Instant::now();
    let mut child = spawn(&["serve", "--api-sock", sock.to_str().unwrap()]);
    let mut s = match watch {
        Some(w) => w.connect(sock, t),
        None => connect_polled(sock, t),
    };
    let ready = t.elapsed();
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#, g.display());
    assert_eq!(call(&mut s, "PUT", "/boot-source", &boot), 204);
    let machine = format!(r#"{{"vcpu_count": 1, "mem_size_mib": {GUEST_MIB}, "ember": {{"debug_exit": true}}}}"#);
    assert_eq!(call(&mut s, "PUT", "/machine-config", &machine), 204);
    let configured = t.elapsed();
    assert_eq!(call(&mut s, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#), 204);
    let started = t.elapsed();
    let (first, cpu) = first_byte(&mut child, t);
    end(child);
    [ready, configured, started, first, cpu]
}

fn cli_args(g: &Path) -> Vec<String> {
    ["run", "--memory", "128M", "--debug-exit", "--serial", "stdio", "--cmdline", "console=ttyS0", "--kernel"]
        .iter()
        .map(|s| s.to_string())
        .chain([g.display().to_string()])
        .collect()
}

fn cli_boot(g: &Path) -> (Duration, Duration) {
    let args = cli_args(g);
    let t = Instant::now();
    let mut child = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    let (d, cpu) = first_byte(&mut child, t);
    end(child);
    (d, cpu)
}

fn config_file_boot(sock: &Path, config: &Path) -> (Duration, Duration) {
    let _ = std::fs::remove_file(sock);
    let t = Instant::now();
    let mut child = spawn(&["serve", "--api-sock", sock.to_str().unwrap(), "--config-file", config.to_str().unwrap()]);
    let (d, cpu) = first_byte(&mut child, t);
    end(child);
    (d, cpu)
}

/// (RSS beyond guest RAM, total RSS) in KiB, from smaps.
fn rss_beyond_guest(pid: u32) -> (u64, u64) {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap();
    let (mut total, mut guest, mut size) = (0u64, 0u64, 0u64);
    for line in smaps.lines() {
        if let Some(v) = line.strip_prefix("Size:") {
            size = v.trim().trim_end_matches("kB").trim().parse().unwrap();
        } else if let Some(v) = line.strip_prefix("Rss:") {
            let rss: u64 = v.trim().trim_end_matches("kB").trim().parse().unwrap();
            total += rss;
            if size == GUEST_MIB * 1024 {
                guest += rss;
            }
        }
    }
    (total - guest, total)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if !Path::new("/dev/kvm").exists() {
        println!("serve bench: no /dev/kvm, nothing measured");
        return;
    }
    let runs: usize = std::env::var("EMBER_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let g = guest("first_byte");
    let dir = std::env::temp_dir().join(format!("ember-serve-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let sock = dir.join("api.sock");
    let config = dir.join("vm.json");
    std::fs::write(
        &config,
        format!(
            r#"{{"boot-source": {{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}},
  "machine-config": {{"vcpu_count": 1, "mem_size_mib": {GUEST_MIB}, "ember": {{"debug_exit": true}}}}}}"#,
            g.display()
        ),
    )
    .unwrap();

    let (mut cli, mut api, mut polled, mut file) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    // A pause after each boot: the kernel's teardown of the VM just
    // killed stays out of the next one's figures.
    let settle = || std::thread::sleep(Duration::from_millis(30));
    let watch = SocketWatch::new(&dir);
    for i in 0..=runs {
        let c = cli_boot(&g);
        settle();
        let a = api_boot(&sock, &g, Some(&watch));
        settle();
        let p = api_boot(&sock, &g, None);
        settle();
        let f = config_file_boot(&sock, &config);
        settle();
        if i > 0 {
            cli.push(c);
            api.push(a);
            polled.push(p);
            file.push(f);
        }
    }
    // API − CLI within each round (they ran back to back), in ms.
    let paired = |api: &[[Duration; 5]]| {
        let mut d: Vec<f64> =
            cli.iter().zip(api).map(|(c, a)| (a[3].as_secs_f64() - c.0.as_secs_f64()) * 1e3).collect();
        d.sort_by(f64::total_cmp);
        d[d.len() / 2]
    };
    let (paired_api, paired_polled) = (paired(&api), paired(&polled));
    let polled_first = median(polled.iter().map(|a| a[3]).collect());
    let polled_ready = median(polled.iter().map(|a| a[0]).collect());
    let cli_cpu = median(cli.iter().map(|c| c.1).collect());
    let cli = median(cli.iter().map(|c| c.0).collect());
    let api_cpu = median(api.iter().map(|a| a[4]).collect());
    let file_cpu = median(file.iter().map(|f| f.1).collect());
    let file = median(file.iter().map(|f| f.0).collect());
    let api_at = |k: usize| median(api.iter().map(|a| a[k]).collect());
    let (ready, configured, started, first) = (api_at(0), api_at(1), api_at(2), api_at(3));
    // The guest's own time after start is the same on both paths; the
    // API's cost is its first byte minus the CLI's.
    let from_start = median(api.iter().map(|a| a[3] - a[2]).collect());

    // Idle RSS beyond guest RAM, with the hang guest.
    let hang = guest("hang");
    let args = cli_args(&hang);
    let mut run = spawn(&args.iter().map(String::as_str).collect::<Vec<_>>());
    wait_for_output(&mut run, b"HANG");
    std::thread::sleep(Duration::from_millis(300));
    let rss_run = rss_beyond_guest(run.id());
    end(run);
    let _ = std::fs::remove_file(&sock);
    let mut serve = spawn(&["serve", "--api-sock", sock.to_str().unwrap()]);
    let mut s = connect_polled(&sock, Instant::now());
    let boot = format!(r#"{{"kernel_image_path": "{}", "boot_args": "console=ttyS0"}}"#, hang.display());
    assert_eq!(call(&mut s, "PUT", "/boot-source", &boot), 204);
    let machine = format!(r#"{{"vcpu_count": 1, "mem_size_mib": {GUEST_MIB}, "ember": {{"debug_exit": true}}}}"#);
    assert_eq!(call(&mut s, "PUT", "/machine-config", &machine), 204);
    assert_eq!(call(&mut s, "PUT", "/actions", r#"{"action_type": "InstanceStart"}"#), 204);
    wait_for_output(&mut serve, b"HANG");
    assert_eq!(call(&mut s, "GET", "/", ""), 200);
    std::thread::sleep(Duration::from_millis(300));
    let rss_serve = rss_beyond_guest(serve.id());
    drop(s);
    end(serve);
    let _ = std::fs::remove_dir_all(&dir);

    println!("ember serve beside ember run, {runs} boots each of the first_byte guest (128 MiB), medians:");
    println!("  CLI:  exec → first guest serial byte          {:>10}", ms(cli));
    println!("  API (client waits for the socket on inotify):");
    println!("        exec → socket connectable               {:>10}", ms(ready));
    println!("        exec → configured (2 PUTs answered)     {:>10}", ms(configured));
    println!("        exec → InstanceStart answered           {:>10}", ms(started));
    println!(
        "        exec → first guest serial byte          {:>10}   (InstanceStart → byte {})",
        ms(first),
        ms(from_start)
    );
    println!(
        "        API − CLI                               {:>10}   (ratio {:.3}x; goal ≤ +0.5 ms)",
        ms(first.saturating_sub(cli)),
        first.as_secs_f64() / cli.as_secs_f64()
    );
    println!("        API − CLI, round by round (median)      {:>7.3} ms", paired_api);
    println!("  API, the client trying to connect every 20 µs meanwhile (its wake-ups share the 2 cores):");
    println!("        exec → socket connectable               {:>10}", ms(polled_ready));
    println!(
        "        exec → first guest serial byte          {:>10}   (API − CLI {}, round by round {:.3} ms)",
        ms(polled_first),
        ms(polled_first.saturating_sub(cli)),
        paired_polled
    );
    println!(
        "  serve --config-file: exec → first byte       {:>10}   (−CLI {})",
        ms(file),
        ms(file.saturating_sub(cli))
    );
    println!("  CPU time of the VMM process until the first byte (all threads; not inflated by a busy host):");
    println!(
        "        CLI {:>10}, API {:>10} (+{}), config file {:>10}",
        ms(cli_cpu),
        ms(api_cpu),
        ms(api_cpu.saturating_sub(cli_cpu)),
        ms(file_cpu)
    );
    println!(
        "  idle RSS beyond guest RAM (hang guest): run {:.2} MiB, serve {:.2} MiB (+{} KiB; goal ≤ 2 MiB); total {:.2} / {:.2} MiB",
        rss_run.0 as f64 / 1024.0,
        rss_serve.0 as f64 / 1024.0,
        rss_serve.0 as i64 - rss_run.0 as i64,
        rss_run.1 as f64 / 1024.0,
        rss_serve.1 as f64 / 1024.0
    );
}
