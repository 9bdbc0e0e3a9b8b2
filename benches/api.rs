//! What the API socket costs: exec → socket ready, the idle RSS the API
//! thread adds, and request round trips, each beside its baseline in the
//! same run.
//!
//! ```text
//! cargo bench --bench api                    # 30 starts, 1,008 requests
//! EMBER_BENCH_RUNS=100 cargo bench --bench api
//! ```
//!
//! The bench re-executes itself as the process under test (so every
//! figure is for a fresh process of the same binary):
//! * `exit`: returns at once: the baseline for exec → ready;
//! * `setup`: binds the socket, starts the API thread (timing both from
//!   inside), stops it, exits;
//! * `idle`: sleeps: the baseline RSS;
//! * `serve`: binds an API socket (default limits) and serves it from the
//!   `ember-api` thread with a fake VM, as `ember serve` will.
//!
//! Reported, as medians: exec → exit (baseline), exec → exit after the
//! API's set-up, exec → socket connectable and → first `GET /` answered
//! (these two polled, so they include scheduling delays on a busy host); RSS (VmRSS) of the idle
//! process, of the serving process when ready and after 1,008 requests from
//! 16 concurrent clients, the difference being the API's cost; the round
//! trip of `GET /` and `PUT /machine-config` on a keep-alive connection,
//! and the 16-client throughput. No VM is involved (phase 1 of issue 18).

use std::io::Read;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ember::api::{ApiServer, Limits};

mod common;
use common::{median, round_trip};
use ember::fuzzing::api::{spawn_controller, Controller, FakeVm, HostChecks};
use ember::SeccompMode;

const CHILD: &str = "EMBER_API_BENCH_CHILD";

fn child_main(mode: &str) -> ! {
    match mode.split_once(':') {
        Some(("serve", path)) => {
            let server = ApiServer::bind(Path::new(path), Limits::default()).expect("bind");
            let c = Controller::new(FakeVm::new(), "bench", HostChecks::Now);
            let (t, _stop) = spawn_controller(server, c, SeccompMode::Kill).expect("spawn");
            let _ = t.join();
            std::process::exit(0)
        }
        Some(("setup", path)) => {
            // Everything `serve` does before its socket is ready, timed
            // inside the process (so neither exec nor a busy host's
            // scheduling counts), then a clean stop. Prints the
            // microseconds to bind (the socket accepts connections from
            // then on) and to have the API thread running.
            let t = Instant::now();
            let server = ApiServer::bind(Path::new(path), Limits::default()).expect("bind");
            let bound = t.elapsed();
            let c = Controller::new(FakeVm::new(), "bench", HostChecks::Now);
            let (thread, stop) = spawn_controller(server, c, SeccompMode::Kill).expect("spawn");
            let spawned = t.elapsed();
            stop.shutdown();
            let _ = thread.join();
            println!("{} {}", bound.as_nanos(), spawned.as_nanos());
            std::process::exit(0)
        }
        _ if mode == "idle" => loop {
            std::thread::park();
        },
        _ => std::process::exit(0),
    }
}

fn spawn(mode: &str) -> Child {
    Command::new(std::env::current_exe().unwrap())
        .env(CHILD, mode)
        .stdin(Stdio::null())
        .stdout(if mode.starts_with("setup") { Stdio::piped() } else { Stdio::null() })
        .spawn()
        .expect("spawn the bench child")
}

/// Reaps `child`; returns its CPU time (user + system), which a busy host
/// does not inflate the way it inflates wall time.
fn wait_cpu(child: Child) -> Duration {
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for our own child with valid out-pointers.
    let r = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut ru) };
    assert_eq!(r, child.id() as libc::pid_t, "wait4");
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn rss_kib(pid: u32) -> u64 {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches(" kB").trim().parse().ok())
        .unwrap()
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

fn sock_path(i: usize) -> PathBuf {
    std::env::temp_dir().join(format!("ember-api-bench-{}-{i}.sock", std::process::id()))
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD) {
        child_main(&mode);
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test --benches` lists benches; nothing to list
    }
    let runs: usize = std::env::var("EMBER_BENCH_RUNS").ok().and_then(|v| v.parse().ok()).unwrap_or(30);
    let get = b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n";
    let body = r#"{"vcpu_count": 2, "mem_size_mib": 256}"#;
    let put =
        format!("PUT /machine-config HTTP/1.1\r\nHost: localhost\r\nContent-Length: {}\r\n\r\n{body}", body.len());

    // The three start-up measurements, interleaved run by run (after one
    // warm-up round) so that a busy host disturbs them alike.
    let (mut exit_times, mut setup_times) = (Vec::new(), Vec::new());
    let (mut ready_times, mut first_times) = (Vec::new(), Vec::new());
    let mut cpu = Vec::new();
    let mut inproc = Vec::new();
    let mut buf = Vec::new();
    for i in 0..=runs {
        // exec → exit, the baseline.
        let t = Instant::now();
        let exit_cpu = wait_cpu(spawn("exit"));
        let exit = t.elapsed();

        // exec → exit after the API's whole set-up (and tear-down).
        let path = sock_path(i);
        let _ = std::fs::remove_file(&path);
        let t = Instant::now();
        let mut child = spawn(&format!("setup:{}", path.display()));
        let mut line = String::new();
        child.stdout.take().unwrap().read_to_string(&mut line).unwrap();
        let setup_cpu = wait_cpu(child);
        let setup = t.elapsed();
        let ns: Vec<u64> = line.split_whitespace().map(|v| v.parse().unwrap()).collect();
        assert_eq!(ns.len(), 2, "setup child printed {line:?}");
        let _ = std::fs::remove_file(&path);

        // exec → socket connectable → first answer (polled every 20 µs, so
        // that the poller does not take the CPU the child needs).
        let t = Instant::now();
        let mut child = spawn(&format!("serve:{}", path.display()));
        let mut s = loop {
            match UnixStream::connect(&path) {
                Ok(s) => break s,
                Err(_) if t.elapsed() < Duration::from_secs(10) => std::thread::sleep(Duration::from_micros(20)),
                Err(e) => panic!("the API socket never became ready: {e}"),
            }
        };
        let ready = t.elapsed();
        assert_eq!(round_trip(&mut s, get, &mut buf), 200);
        let first = t.elapsed();
        child.kill().unwrap();
        let serve_cpu = wait_cpu(child);
        let _ = std::fs::remove_file(&path);
        if i > 0 {
            cpu.push((exit_cpu, setup_cpu, serve_cpu));
            inproc.push((Duration::from_nanos(ns[0]), Duration::from_nanos(ns[1])));
            exit_times.push(exit);
            setup_times.push(setup);
            ready_times.push(ready);
            first_times.push(first);
        }
    }

    // RSS: idle process vs serving process, ready and after load.
    let mut idle = spawn("idle");
    std::thread::sleep(Duration::from_millis(200));
    let rss_idle = rss_kib(idle.id());
    idle.kill().unwrap();
    idle.wait().unwrap();
    let path = sock_path(runs);
    let _ = std::fs::remove_file(&path);
    let mut server = spawn(&format!("serve:{}", path.display()));
    let t = Instant::now();
    while UnixStream::connect(&path).is_err() {
        assert!(t.elapsed() < Duration::from_secs(10));
        std::thread::sleep(Duration::from_millis(1));
    }
    std::thread::sleep(Duration::from_millis(200));
    let rss_ready = rss_kib(server.id());

    // Round trips on one keep-alive connection.
    let mut s = UnixStream::connect(&path).unwrap();
    let (mut get_times, mut put_times) = (Vec::new(), Vec::new());
    for _ in 0..1000 {
        let t = Instant::now();
        assert_eq!(round_trip(&mut s, get, &mut buf), 200);
        get_times.push(t.elapsed());
        let t = Instant::now();
        assert_eq!(round_trip(&mut s, put.as_bytes(), &mut buf), 204);
        put_times.push(t.elapsed());
    }
    drop(s);

    // 16 concurrent clients, 63 requests each (a GET / PUT mix).
    let t = Instant::now();
    let clients: Vec<_> = (0..16)
        .map(|i| {
            let path = path.clone();
            let put = put.clone();
            std::thread::spawn(move || {
                let mut s = UnixStream::connect(&path).unwrap();
                let mut buf = Vec::new();
                for j in 0..63 {
                    let req: &[u8] = if (i + j) % 3 == 0 { put.as_bytes() } else { get };
                    let st = round_trip(&mut s, req, &mut buf);
                    assert!(st == 200 || st == 204, "status {st}");
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let load = t.elapsed();
    std::thread::sleep(Duration::from_millis(200));
    let rss_after = rss_kib(server.id());
    server.kill().unwrap();
    server.wait().unwrap();
    let _ = std::fs::remove_file(&path);

    let (exit, setup) = (median(exit_times), median(setup_times));
    let (ready, first) = (median(ready_times), median(first_times));
    println!("API socket (phase 1: fake VM), {runs} starts, medians:");
    println!("  exec → exit (baseline)            {:>10}", us(exit));
    println!(
        "  exec → exit after set-up and stop {:>10}   (+{} over the baseline)",
        us(setup),
        us(setup.saturating_sub(exit))
    );
    println!(
        "  exec → socket connectable         {:>10}   (+{} over the baseline)",
        us(ready),
        us(ready.saturating_sub(exit))
    );
    println!("  exec → first GET / answered       {:>10}", us(first));
    let (c_exit, c_setup, c_serve) = (
        median(cpu.iter().map(|c| c.0).collect()),
        median(cpu.iter().map(|c| c.1).collect()),
        median(cpu.iter().map(|c| c.2).collect()),
    );
    println!(
        "  in the process: socket bound      {:>10};  API thread started {:>10}",
        us(median(inproc.iter().map(|c| c.0).collect())),
        us(median(inproc.iter().map(|c| c.1).collect()))
    );
    println!("  CPU time of the process (user + system; not inflated by a busy host):");
    println!("    exit (baseline)                 {:>10}", us(c_exit));
    println!("    set-up and stop                 {:>10}   (+{})", us(c_setup), us(c_setup.saturating_sub(c_exit)));
    println!("    serve until the first answer    {:>10}   (+{})", us(c_serve), us(c_serve.saturating_sub(c_exit)));
    println!("  RSS idle process (baseline)       {rss_idle:>7} KiB");
    println!("  RSS serving, ready                {rss_ready:>7} KiB   (+{} KiB)", rss_ready as i64 - rss_idle as i64);
    println!("  RSS serving, after 1,008 requests {rss_after:>7} KiB   (+{} KiB)", rss_after as i64 - rss_idle as i64);
    println!("  GET / round trip                  {:>10}", us(median(get_times)));
    println!("  PUT /machine-config round trip    {:>10}", us(median(put_times)));
    println!("  16 clients × 63 requests          {:>10}   ({:.0} requests/s)", us(load), 1008.0 / load.as_secs_f64());
}
