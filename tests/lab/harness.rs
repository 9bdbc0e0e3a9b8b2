//! The real-KVM lab's test harness: boots L1 (`scripts/lab boot`), runs the
//! selected steps in it, checks each step on the host and reports in
//! libtest's format. `tests/lab.rs` lists the steps.
//!
//! A step is a bash script (`tests/lab/steps/NAME.sh`) that L1 runs under
//! `timeout` in its own cgroup, and a host-side check over what it left:
//! its output, exit status and time, and the files in its work directory
//! (the run's read-write 9p share, the same path in L1 and on the host).
//! The 1-vCPU steps are shared out among `EMBER_LAB_JOBS` L1s that run at
//! once (each booted once, on its own work directory); wider L1s run after
//! them, alone. Whatever L1 does, the harness ends: every step has a
//! deadline enforced here too (L1 itself can stop making progress), a step
//! that never reports fails, the QEMU process is killed by PID and a fresh
//! L1 runs that L1's remaining steps (at most [`MAX_BOOTS`] boots per
//! group), and the whole lab has a deadline ([`lab_deadline`]).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::checks::{kernel_log_problems, StepRun};

/// How long L1 may take from QEMU's start to `@@LAB READY`.
const L1_BOOT_TIMEOUT: Duration = Duration::from_secs(240);
/// Slack beyond a step's own timeout before the harness gives up on L1 (L1
/// kills the step at its timeout, after a few seconds of diagnostics).
const STEP_SLACK: Duration = Duration::from_secs(90);
/// L1's runner prints a heartbeat every 15 s: this long without any console
/// line means L1 itself stopped making progress.
const L1_SILENCE: Duration = Duration::from_secs(100);
/// Silence after which the harness presses a key in L1 ([`L1::poke`])
/// before giving it up at [`L1_SILENCE`].
const L1_POKE_AFTER: Duration = Duration::from_secs(35);
/// L1 boots per group of steps: the first, and one more after each step
/// that never reported.
const MAX_BOOTS: usize = 3;
/// L1 console lines shown with a failure.
const CONSOLE_TAIL: usize = 40;
/// Step output lines shown with a failure.
const OUTPUT_TAIL: usize = 60;

/// The lab's overall deadline (`EMBER_LAB_DEADLINE`, seconds; default 30
/// minutes): steps that have not run by then fail.
fn lab_deadline() -> Duration {
    std::env::var("EMBER_LAB_DEADLINE")
        .ok()
        .and_then(|s| s.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(Duration::from_secs(1800))
}

/// How many 1-vCPU L1s run at once (`EMBER_LAB_JOBS`; default 2, one per
/// host core here: an L1 with one vCPU keeps about one core busy).
fn lab_jobs() -> usize {
    match std::env::var("EMBER_LAB_JOBS") {
        Err(_) => 2,
        Ok(v) => match v.trim().parse::<usize>() {
            Ok(n) if n >= 1 => n,
            _ => panic!("EMBER_LAB_JOBS={v:?}: want a number of L1s, 1 or more"),
        },
    }
}

/// Each step's cost in seconds, for sharing the steps out among the L1s:
/// the times last measured here (`target/tmp/lab-step-secs`, written after
/// each run), else the ones recorded in `tests/lab/step-secs`.
fn step_costs() -> BTreeMap<String, f64> {
    let mut costs = BTreeMap::new();
    for f in [repo().join("tests/lab/step-secs"), measured_costs_file()] {
        for line in std::fs::read_to_string(f).unwrap_or_default().lines() {
            let mut w = line.split_whitespace();
            if let (Some(name), Some(Ok(secs))) = (w.next(), w.next().map(str::parse::<f64>)) {
                if !name.starts_with('#') {
                    costs.insert(name.to_string(), secs);
                }
            }
        }
    }
    costs
}

fn measured_costs_file() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lab-step-secs")
}

/// Adds the times of the steps that passed to the measured costs.
fn record_costs(reports: &[Report]) {
    let mut costs: BTreeMap<String, f64> = BTreeMap::new();
    for line in std::fs::read_to_string(measured_costs_file()).unwrap_or_default().lines() {
        if let Some((n, v)) = line.split_once(' ') {
            if let Ok(v) = v.trim().parse() {
                costs.insert(n.to_string(), v);
            }
        }
    }
    for r in reports.iter().filter(|r| matches!(r.outcome, Outcome::Ok)) {
        costs.insert(r.name.trim_start_matches("lab::").to_string(), r.secs);
    }
    let text: String = costs.iter().map(|(n, v)| format!("{n} {v:.1}\n")).collect();
    let _ = std::fs::write(measured_costs_file(), text);
}

/// Shares `steps` out among at most `jobs` L1s: longest first, each to the
/// L1 with the least work so far. A step with no recorded cost counts as
/// the median recorded one. Each L1 runs its steps in the order listed.
fn plan_lanes<'a>(steps: &[&'a Step], jobs: usize, costs: &BTreeMap<String, f64>) -> Vec<Vec<&'a Step>> {
    let mut known: Vec<f64> = steps.iter().filter_map(|s| costs.get(s.name).copied()).collect();
    known.sort_by(f64::total_cmp);
    let default = known.get(known.len() / 2).copied().unwrap_or(60.0);
    let cost = |s: &Step| costs.get(s.name).copied().unwrap_or(default);
    let mut order: Vec<usize> = (0..steps.len()).collect();
    order.sort_by(|&a, &b| cost(steps[b]).total_cmp(&cost(steps[a])).then(a.cmp(&b)));
    let n = jobs.min(steps.len());
    let mut load = vec![0.0f64; n];
    let mut lane_of = vec![0; steps.len()];
    for i in order {
        let lane = (0..n).min_by(|&a, &b| load[a].total_cmp(&load[b]).then(a.cmp(&b))).unwrap();
        load[lane] += cost(steps[i]);
        lane_of[i] = lane;
    }
    (0..n).map(|lane| (0..steps.len()).filter(|&i| lane_of[i] == lane).map(|i| steps[i]).collect()).collect()
}

/// The stage's time: wall, per L1 and per step, and the steps' sum.
fn print_times(reports: &[Report], wall: Duration, prepared: Duration, l1s: &[(String, Duration)], jobs: usize) {
    let sum: f64 = reports.iter().map(|r| r.secs).sum();
    eprintln!(
        "\nlab: wall time {:.1} s (prepare {:.1} s), {} step(s) summing to {sum:.1} s, EMBER_LAB_JOBS={jobs}",
        wall.as_secs_f64(),
        prepared.as_secs_f64(),
        reports.len()
    );
    for (what, t) in l1s {
        eprintln!("lab:   {what}: {:.1} s with its boots", t.as_secs_f64());
    }
    let mut by_time: Vec<&Report> = reports.iter().collect();
    by_time.sort_by(|a, b| b.secs.total_cmp(&a.secs));
    for r in by_time {
        eprintln!("lab:   {:>7.1} s  {}", r.secs, r.name);
    }
}

/// A host-side check: panics (assert!, assert_eq!, panic!) on failure.
pub type Check = fn(&StepRun);

/// One lab step.
pub struct Step {
    /// The test name after `lab::`; the script is `tests/lab/steps/NAME.sh`.
    pub name: &'static str,
    /// L1 kills the step after this long (status 124).
    pub timeout: Duration,
    /// L1's vCPU count the step needs.
    pub smp: u8,
    /// L2 runs (`lab_l2 NAME`) that crash on purpose: their console is not
    /// held to the clean-kernel-log rule.
    pub crashes: &'static [&'static str],
    /// L2 runs of another VMM, booted as a reference (QEMU): the rule is
    /// ember's, their logs are the step check's to read.
    pub references: &'static [&'static str],
    /// The host-side check.
    pub check: Check,
}

impl Step {
    /// A step with the default L1 (1 vCPU: see docs/testing.md on what
    /// TCG's nested SVM does with two) and no planned crashes.
    pub const fn new(name: &'static str, timeout_secs: u64, check: Check) -> Step {
        Step { name, timeout: Duration::from_secs(timeout_secs), smp: 1, crashes: &[], references: &[], check }
    }

    /// Runs the step in an L1 with `n` vCPUs. No step asks for it now:
    /// TCG's nested SVM corrupts L2 guests in a 2-vCPU L1 (docs/testing.md,
    /// "SMP in the lab"); kept for when a fixed QEMU makes it worth it.
    #[allow(dead_code)]
    pub const fn smp(mut self, n: u8) -> Step {
        self.smp = n;
        self
    }

    /// Names the step's L2 runs that crash on purpose.
    pub const fn crashes(mut self, names: &'static [&'static str]) -> Step {
        self.crashes = names;
        self
    }

    /// Names the step's L2 runs of another VMM.
    pub const fn references(mut self, names: &'static [&'static str]) -> Step {
        self.references = names;
        self
    }

    fn script(&self) -> PathBuf {
        repo().join("tests/lab/steps").join(format!("{}.sh", self.name))
    }
}

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// How a step ended.
enum Outcome {
    Ok,
    Failed(String),
    Ignored(String),
}

struct Report {
    name: String,
    outcome: Outcome,
    secs: f64,
}

/// Command-line arguments, as libtest takes them (those that matter here;
/// the rest are accepted and ignored).
struct Args {
    filters: Vec<String>,
    skip: Vec<String>,
    exact: bool,
    list: bool,
    ignored_only: bool,
    nocapture: bool,
}

fn parse_args() -> Args {
    let mut a =
        Args { filters: vec![], skip: vec![], exact: false, list: false, ignored_only: false, nocapture: false };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--list" => a.list = true,
            "--exact" => a.exact = true,
            "--ignored" => a.ignored_only = true,
            "--nocapture" | "--no-capture" => a.nocapture = true,
            "--skip" => a.skip.extend(it.next()),
            // Flags with a value, given as two words.
            "--test-threads" | "--format" | "--color" | "--logfile" | "-Z" | "--shuffle-seed" => {
                it.next();
            }
            s if s.starts_with('-') => {}
            s => a.filters.push(s.to_string()),
        }
    }
    a
}

impl Args {
    fn selects(&self, full: &str) -> bool {
        let m = |f: &String| if self.exact { full == f } else { full.contains(f.as_str()) };
        (self.filters.is_empty() || self.filters.iter().any(m)) && !self.skip.iter().any(m) && !self.ignored_only
    }
}

fn full_name(s: &Step) -> String {
    format!("lab::{}", s.name)
}

/// Runs the lab: the entry point of `tests/lab.rs`.
pub fn main(steps: Vec<Step>) {
    self_test();
    let args = parse_args();
    for s in &steps {
        assert!(s.script().is_file(), "step {}: no script {}", s.name, s.script().display());
    }
    if args.list {
        for s in &steps {
            println!("{}: test", full_name(s));
        }
        println!("\n{} tests, 0 benchmarks", steps.len());
        return;
    }
    let total = steps.len();
    let selected: Vec<&Step> = steps.iter().filter(|s| args.selects(&full_name(s))).collect();
    let filtered_out = total - selected.len();
    println!("\nrunning {} test{}", selected.len(), if selected.len() == 1 { "" } else { "s" });
    let start = Instant::now();
    let mut reports = Vec::new();
    if !selected.is_empty() {
        match lab_unavailable() {
            Some(why) => {
                let required = std::env::var("EMBER_REQUIRE_QEMU").as_deref() == Ok("1");
                for s in &selected {
                    let r = if required {
                        Report {
                            name: full_name(s),
                            outcome: Outcome::Failed(format!("EMBER_REQUIRE_QEMU=1 but {why}")),
                            secs: 0.0,
                        }
                    } else {
                        Report { name: full_name(s), outcome: Outcome::Ignored(why.clone()), secs: 0.0 }
                    };
                    print_result(&r);
                    reports.push(r);
                }
            }
            None => Lab::new(args.nocapture).run(&selected, &mut reports),
        }
    }
    summary(&reports, filtered_out, start.elapsed());
}

/// Why the lab cannot run here, if it cannot.
fn lab_unavailable() -> Option<String> {
    let qemu = std::env::var("LAB_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into());
    let ok = Command::new(&qemu)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    (!ok).then(|| format!("{qemu} is not installed (scripts/setup installs it): the lab needs QEMU's TCG for L1"))
}

fn print_result(r: &Report) {
    let what = match &r.outcome {
        Outcome::Ok => format!("ok <{:.1}s>", r.secs),
        Outcome::Failed(_) => format!("FAILED <{:.1}s>", r.secs),
        Outcome::Ignored(why) => format!("ignored, {why}"),
    };
    println!("test {} ... {what}", r.name);
    let _ = std::io::stdout().flush();
}

fn summary(reports: &[Report], filtered_out: usize, elapsed: Duration) {
    let failed: Vec<&Report> = reports.iter().filter(|r| matches!(r.outcome, Outcome::Failed(_))).collect();
    let passed = reports.iter().filter(|r| matches!(r.outcome, Outcome::Ok)).count();
    let ignored = reports.iter().filter(|r| matches!(r.outcome, Outcome::Ignored(_))).count();
    if !failed.is_empty() {
        println!("\nfailures:\n");
        for r in &failed {
            if let Outcome::Failed(m) = &r.outcome {
                println!("---- {} ----\n{m}\n", r.name);
            }
        }
        println!("failures:");
        for r in &failed {
            println!("    {}", r.name);
        }
    }
    let verdict = if failed.is_empty() { "ok" } else { "FAILED" };
    println!(
        "\ntest result: {verdict}. {passed} passed; {} failed; {ignored} ignored; 0 measured; {filtered_out} filtered out; finished in {:.2}s\n",
        failed.len(),
        elapsed.as_secs_f64()
    );
    if !failed.is_empty() {
        std::process::exit(101);
    }
}

/// One line of L1's console, or the end of it.
enum Event {
    Line(String),
    Closed,
}

/// A booted (or booting) L1.
struct L1 {
    child: Child,
    events: Receiver<Event>,
    console: Arc<Mutex<Vec<String>>>,
    /// QEMU's human monitor (scripts/lab boot puts it in the work
    /// directory).
    monitor: PathBuf,
    /// Key presses so far ([`L1::poke`]): each answered a stall.
    pokes: std::cell::Cell<u32>,
}

impl L1 {
    fn boot(work: &Path, smp: u8) -> std::io::Result<L1> {
        let mut cmd = Command::new(repo().join("scripts/lab"));
        cmd.args(["boot", "--work"])
            .arg(work)
            .args(["--smp", &smp.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // QEMU (scripts/lab execs it, which keeps this setting) dies with
        // the harness, however the harness ends.
        // SAFETY: prctl(PR_SET_PDEATHSIG) is async-signal safe and touches
        // no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            })
        };
        let mut child = cmd.spawn()?;
        let console = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = channel();
        for stream in
            [Box::new(child.stdout.take().unwrap()) as Box<dyn Read + Send>, Box::new(child.stderr.take().unwrap())]
        {
            let tx = tx.clone();
            let console = console.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stream).split(b'\n') {
                    let Ok(line) = line else { break };
                    let line = String::from_utf8_lossy(&line).trim_end_matches('\r').to_string();
                    console.lock().unwrap().push(line.clone());
                    let _ = tx.send(Event::Line(line));
                }
                let _ = tx.send(Event::Closed);
            });
        }
        Ok(L1 { child, events, console, monitor: work.join("qemu-monitor.sock"), pokes: Default::default() })
    }

    /// Presses and releases Shift on L1's keyboard through QEMU's monitor:
    /// an interrupt in L1 that nothing reads. TCG's L1 stall (an expired
    /// LAPIC timer's vector pending in IRR and never delivered,
    /// docs/testing.md) ended on such a key press when tried by hand.
    fn poke(&self) -> String {
        self.pokes.set(self.pokes.get() + 1);
        monitor(&self.monitor, "sendkey shift")
    }

    /// The last `n` console lines, without the heartbeats.
    fn tail(&self, n: usize) -> String {
        let c = self.console.lock().unwrap();
        let lines: Vec<&String> = c.iter().filter(|l| !l.contains("@@LAB ALIVE")).collect();
        let from = lines.len().saturating_sub(n);
        lines[from..].iter().map(|l| format!("  | {l}\n")).collect()
    }

    /// What L1's CPUs are doing, from QEMU's side: its CPU use over a
    /// second and its monitor's `info status`, `info cpus`, `info
    /// registers -a` and `info lapic` (for a failure report).
    fn state(&self, work: &Path) -> String {
        let pid = self.child.id();
        let ticks = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .ok()
                .and_then(|s| {
                    let f: Vec<u64> = s
                        .rsplit(')')
                        .next()?
                        .split_whitespace()
                        .skip(11)
                        .take(2)
                        .filter_map(|x| x.parse().ok())
                        .collect();
                    Some(f.iter().sum::<u64>())
                })
                .unwrap_or(0)
        };
        let before = ticks();
        std::thread::sleep(Duration::from_secs(1));
        let busy = ticks().saturating_sub(before);
        let mut s = format!("QEMU (pid {pid}) used {busy} clock ticks of CPU in the last second\n");
        let sock = work.join("qemu-monitor.sock");
        for cmd in ["info status", "info cpus", "info registers -a", "info lapic"] {
            s.push_str(&format!("(qemu) {cmd}\n{}\n", monitor(&sock, cmd)));
        }
        format!("L1's state, from QEMU:\n{}", s.lines().map(|l| format!("  | {l}\n")).collect::<String>())
    }

    /// Kills QEMU (by its PID: `scripts/lab boot` execs it).
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for L1 {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Runs one command on QEMU's human monitor at `sock` and returns its
/// answer (or why there is none).
fn monitor(sock: &Path, cmd: &str) -> String {
    use std::os::unix::net::UnixStream;
    let mut c = match UnixStream::connect(sock) {
        Ok(c) => c,
        Err(e) => return format!("(no monitor at {}: {e})", sock.display()),
    };
    let _ = c.set_read_timeout(Some(Duration::from_secs(5)));
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    // The greeting and first prompt, then the answer and the next prompt.
    let mut prompts = 0;
    let mut sent = false;
    while prompts < 2 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => got.extend_from_slice(&buf[..n]),
        }
        prompts = String::from_utf8_lossy(&got).matches("(qemu) ").count();
        if prompts == 1 && !sent {
            let _ = c.write_all(format!("{cmd}\n").as_bytes());
            sent = true;
        }
    }
    let text = String::from_utf8_lossy(&got).replace('\r', "");
    // Between the echoed command and the last prompt.
    let start = text.find(cmd).map(|i| i + cmd.len()).unwrap_or(0);
    let end = text.rfind("(qemu) ").filter(|&e| e >= start).unwrap_or(text.len());
    strip_escapes(text[start..end].trim())
}

/// Removes terminal escape sequences (the monitor's line editing).
fn strip_escapes(s: &str) -> String {
    let mut out = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                while let Some(&n) = chars.peek() {
                    chars.next();
                    if n.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A marker line from L1's runner.
#[derive(Debug)]
enum Marker {
    Ready,
    Fatal(String),
    Begin(String),
    End { name: String, status: i32, secs: f64, leftovers: usize },
    Done,
}

fn parse_marker(line: &str) -> Option<Marker> {
    let rest = &line[line.find("@@LAB ")? + 6..];
    let mut words = rest.split_whitespace();
    let kind = words.next()?;
    let kv: BTreeMap<&str, &str> = rest.split_whitespace().filter_map(|w| w.split_once('=')).collect();
    match kind {
        "READY" => Some(Marker::Ready),
        "FATAL" => Some(Marker::Fatal(rest["FATAL".len()..].trim().to_string())),
        "BEGIN" => Some(Marker::Begin(words.next()?.to_string())),
        "END" => Some(Marker::End {
            name: words.next()?.to_string(),
            status: kv.get("status")?.parse().ok()?,
            secs: kv.get("secs")?.parse().ok()?,
            leftovers: kv.get("leftovers").and_then(|s| s.parse().ok()).unwrap_or(0),
        }),
        "DONE" => Some(Marker::Done),
        _ => None,
    }
}

/// The run's state: its work directory and deadline.
struct Lab {
    work: PathBuf,
    deadline: Instant,
    nocapture: bool,
    any_failed: AtomicBool,
}

impl Lab {
    fn new(nocapture: bool) -> Lab {
        let work = std::env::temp_dir().join(format!("ember-lab-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        Lab { work, deadline: Instant::now() + lab_deadline(), nocapture, any_failed: AtomicBool::new(false) }
    }

    fn run(&self, selected: &[&Step], reports: &mut Vec<Report>) {
        let start = Instant::now();
        if let Err(why) = self.prepare() {
            for s in selected {
                let r = Report { name: full_name(s), outcome: Outcome::Failed(why.clone()), secs: 0.0 };
                print_result(&r);
                reports.push(r);
            }
            return;
        }
        let prepared = start.elapsed();
        // The 1-vCPU steps: `EMBER_LAB_JOBS` L1s at once, each with its own
        // share of the steps (longest first to the least loaded L1).
        let jobs = lab_jobs();
        let ones: Vec<&Step> = selected.iter().copied().filter(|s| s.smp == 1).collect();
        let lanes = plan_lanes(&ones, jobs, &step_costs());
        let mut timings: Vec<(String, Duration)> = Vec::new();
        let lane_reports: Vec<(Vec<Report>, Duration)> = std::thread::scope(|scope| {
            let handles: Vec<_> = lanes
                .iter()
                .enumerate()
                .map(|(i, lane)| {
                    let dir = self.lane_dir(&format!("l1-{}", i + 1));
                    eprintln!(
                        "lab: L1 #{} (1 vCPU) runs {}",
                        i + 1,
                        lane.iter().map(|s| s.name).collect::<Vec<_>>().join(" ")
                    );
                    scope.spawn(move || {
                        let t = Instant::now();
                        (self.run_group(&dir, 1, lane), t.elapsed())
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().expect("a lab lane panicked")).collect()
        });
        for (i, (r, t)) in lane_reports.into_iter().enumerate() {
            timings.push((format!("L1 #{} (1 vCPU)", i + 1), t));
            reports.extend(r);
        }
        // A wider L1 runs alone, after them: with 2 host cores a 2-vCPU L1
        // beside another L1 would oversubscribe them, and TCG's nested SVM
        // with 2 vCPUs is the less stable shape under load (docs/testing.md).
        let mut shapes: Vec<u8> = Vec::new();
        for s in selected {
            if s.smp != 1 && !shapes.contains(&s.smp) {
                shapes.push(s.smp);
            }
        }
        for smp in shapes {
            let group: Vec<&Step> = selected.iter().copied().filter(|s| s.smp == smp).collect();
            let dir = self.lane_dir(&format!("l1-smp{smp}"));
            let t = Instant::now();
            reports.extend(self.run_group(&dir, smp, &group));
            timings.push((format!("L1 with {smp} vCPUs"), t.elapsed()));
        }
        print_times(reports, start.elapsed(), prepared, &timings, jobs);
        record_costs(reports);
        if self.any_failed.load(Ordering::Relaxed) {
            eprintln!("lab: work directory kept for the failures: {}", self.work.display());
        } else {
            let _ = std::fs::remove_dir_all(&self.work);
        }
    }

    /// `scripts/lab prepare`: kernels, guests, L1's initramfs, the env file.
    /// Within the lab's deadline: a cold cache builds the test kernel
    /// (minutes), and a stuck download must not hang CI. Past the deadline
    /// its whole process group is killed.
    fn prepare(&self) -> Result<(), String> {
        let t = Instant::now();
        let out = self.work.join("prepare.log");
        let log = std::fs::File::create(&out).map_err(|e| format!("{}: {e}", out.display()))?;
        let mut child = Command::new(repo().join("scripts/lab"))
            .args(["prepare", "--work"])
            .arg(&self.work)
            .args(["--ember", env!("CARGO_BIN_EXE_ember")])
            .stdin(Stdio::null())
            .stdout(log.try_clone().map_err(|e| e.to_string())?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .map_err(|e| format!("cannot run scripts/lab prepare: {e}"))?;
        let status = loop {
            match child.try_wait() {
                Ok(Some(s)) => break Some(s),
                Ok(None) if Instant::now() < self.deadline => std::thread::sleep(Duration::from_millis(200)),
                _ => break None,
            }
        };
        let text = std::fs::read_to_string(&out).unwrap_or_default();
        match status {
            Some(s) if s.success() => {}
            Some(s) => return Err(format!("scripts/lab prepare failed ({s}):\n{}", tail_lines(&text, OUTPUT_TAIL))),
            None => {
                // SAFETY: signals the process group this harness created.
                unsafe { libc::kill(-(child.id() as i32), libc::SIGKILL) };
                let _ = child.wait();
                return Err(format!(
                    "scripts/lab prepare did not finish within the lab's deadline ({} s, EMBER_LAB_DEADLINE):\n{}",
                    lab_deadline().as_secs(),
                    tail_lines(&text, OUTPUT_TAIL)
                ));
            }
        }
        eprintln!("lab: prepared in {:.1} s (work directory {})", t.elapsed().as_secs_f64(), self.work.display());
        Ok(())
    }

    /// A work directory for one L1 (its plan, its QEMU monitor socket and
    /// its steps' `out/NAME`), sharing the prepared initramfs and env file.
    fn lane_dir(&self, name: &str) -> PathBuf {
        let dir = self.work.join(name);
        std::fs::create_dir_all(dir.join("out")).unwrap();
        for f in ["env", "l1-initramfs.cpio"] {
            let (from, to) = (self.work.join(f), dir.join(f));
            if !to.exists() && std::fs::hard_link(&from, &to).is_err() {
                std::fs::copy(&from, &to).unwrap_or_else(|e| panic!("{} to {}: {e}", from.display(), to.display()));
            }
        }
        dir
    }

    fn write_plan(&self, lane: &Path, steps: &[&Step]) {
        let plan: String =
            steps.iter().map(|s| format!("{} {} {}\n", s.name, s.timeout.as_secs(), s.script().display())).collect();
        std::fs::write(lane.join("plan"), plan).unwrap();
    }

    fn fail(&self, reports: &mut Vec<Report>, step: &Step, why: String, secs: f64) {
        self.any_failed.store(true, Ordering::Relaxed);
        let r = Report { name: full_name(step), outcome: Outcome::Failed(why), secs };
        print_result(&r);
        reports.push(r);
    }

    /// Runs `group` in an L1 with `smp` vCPUs on the work directory `lane`
    /// (a fresh L1 for the rest after one stops making progress).
    fn run_group(&self, lane: &Path, smp: u8, group: &[&Step]) -> Vec<Report> {
        let mut out = Vec::new();
        let reports = &mut out;
        let mut remaining: Vec<&Step> = group.to_vec();
        let mut boots = 0;
        // Steps already run again once after L1 (not the step) stalled.
        let mut rerun: Vec<&str> = Vec::new();
        while !remaining.is_empty() {
            if boots == MAX_BOOTS || Instant::now() >= self.deadline {
                let why = if boots == MAX_BOOTS {
                    format!("not run: L1 was booted {MAX_BOOTS} times for this group and stopped each time")
                } else {
                    format!("not run: the lab's deadline ({} s, EMBER_LAB_DEADLINE) passed", lab_deadline().as_secs())
                };
                for s in std::mem::take(&mut remaining) {
                    self.fail(reports, s, why.clone(), 0.0);
                }
                break;
            }
            boots += 1;
            self.write_plan(lane, &remaining);
            let boot_start = Instant::now();
            let mut l1 = match L1::boot(lane, smp) {
                Ok(l1) => l1,
                Err(e) => {
                    for s in std::mem::take(&mut remaining) {
                        self.fail(reports, s, format!("cannot start scripts/lab boot: {e}"), 0.0);
                    }
                    return out;
                }
            };
            // Up to READY.
            match self.wait_marker(&l1, boot_start + L1_BOOT_TIMEOUT, |m| matches!(m, Marker::Ready | Marker::Fatal(_)))
            {
                Wait::Marker(Marker::Ready) => {
                    eprintln!(
                        "lab: L1 {} ({smp} vCPUs) ready after {:.1} s",
                        lane.display(),
                        boot_start.elapsed().as_secs_f64()
                    )
                }
                Wait::Marker(Marker::Fatal(m)) => {
                    let why = format!("L1 cannot run steps: {m}\nL1's console:\n{}", l1.tail(CONSOLE_TAIL));
                    for s in std::mem::take(&mut remaining) {
                        self.fail(reports, s, why.clone(), 0.0);
                    }
                    return out;
                }
                other => {
                    let what = other.why("L1's READY line");
                    l1.kill();
                    eprintln!("lab: {}: {what}; booting L1 again\n{}", lane.display(), l1.tail(CONSOLE_TAIL));
                    continue;
                }
            }
            // The steps, in plan order.
            while let Some(step) = remaining.first().copied() {
                let begin_by = (Instant::now() + STEP_SLACK).min(self.deadline);
                let begun = self.wait_marker(&l1, begin_by, |m| matches!(m, Marker::Begin(_) | Marker::Done));
                match begun {
                    Wait::Marker(Marker::Begin(n)) if n == step.name => {}
                    other => {
                        let why = other.why("the step's BEGIN line");
                        remaining.remove(0);
                        self.fail(reports, step, format!("{why}\nL1's console:\n{}", l1.tail(CONSOLE_TAIL)), 0.0);
                        break;
                    }
                }
                let began = Instant::now();
                let pokes_before = l1.pokes.get();
                let end_by = (began + step.timeout + STEP_SLACK).min(self.deadline);
                let ended = self.wait_marker(&l1, end_by, |m| matches!(m, Marker::End { .. }));
                remaining.remove(0);
                match ended {
                    Wait::Marker(Marker::End { name, status, secs, leftovers }) if name == step.name => {
                        let run = StepRun::load(lane, step.name, status, secs, began.elapsed(), leftovers);
                        if self.nocapture {
                            eprintln!(
                                "---- lab::{} output ({:.1} s in L1, {:.1} s here) ----\n{}",
                                step.name,
                                run.secs,
                                run.wall.as_secs_f64(),
                                run.output
                            );
                        }
                        match evaluate(step, &run) {
                            Ok(()) => {
                                let r = Report { name: full_name(step), outcome: Outcome::Ok, secs };
                                print_result(&r);
                                reports.push(r);
                            }
                            Err(why) if l1.pokes.get() > pokes_before && !rerun.contains(&step.name) => {
                                // L1 stalled during the step and a key press
                                // woke it: its guests saw the stall too (their
                                // clocks jumped ~35 s: RCU stall warnings,
                                // soft lockups), so the run says nothing about
                                // the step. Once more in a fresh L1, as after a
                                // stall that no key press ended.
                                let said = format!(
                                    "failed after L1 stalled during it (a key press woke L1); running the step again in a fresh L1. The failure was:\n{}",
                                    tail_lines(&why, 20)
                                );
                                again_in_fresh_l1(&mut l1, &mut rerun, &mut remaining, step, &said);
                                break;
                            }
                            Err(why) => {
                                let diagnostics = std::fs::read_to_string(run.path("diagnostics.txt"))
                                    .map(|d| format!("L1's diagnostics at the timeout:\n{}", tail_lines(&d, 120)))
                                    .unwrap_or_default();
                                let detail = format!(
                                    "{why}\n\nstep status {status}, {secs:.1} s in L1; its work directory: {}\noutput (last {OUTPUT_TAIL} lines):\n{}{diagnostics}\nL1's console (last {CONSOLE_TAIL} lines):\n{}",
                                    run.dir.display(),
                                    tail_lines(&run.output, OUTPUT_TAIL),
                                    l1.tail(CONSOLE_TAIL)
                                );
                                self.fail(reports, step, detail, secs);
                            }
                        }
                    }
                    Wait::Silent if !rerun.contains(&step.name) => {
                        // L1 itself went quiet (not even its runner's
                        // heartbeat): TCG's L1 stalls now and then with an
                        // interrupt pending while halted (docs/testing.md,
                        // stalls). The step runs once more, from its start,
                        // in a fresh L1, and says so; a second stall fails it.
                        let said = format!(
                            "L1 stalled during the step (no heartbeat for {} s); killed it, running the step again in a fresh L1\nL1's console (last {CONSOLE_TAIL} lines):\n{}{}",
                            L1_SILENCE.as_secs(),
                            l1.tail(CONSOLE_TAIL),
                            l1.state(lane)
                        );
                        again_in_fresh_l1(&mut l1, &mut rerun, &mut remaining, step, &said);
                        break;
                    }
                    other => {
                        let why = format!(
                            "the step never reported: {} (its timeout is {} s)",
                            other.why("its END line"),
                            step.timeout.as_secs()
                        );
                        let out = std::fs::read_to_string(lane.join("out").join(step.name).join("output.log"))
                            .unwrap_or_default();
                        let state = if matches!(other, Wait::Closed) { String::new() } else { l1.state(lane) };
                        let detail = format!(
                            "{why}\noutput so far (last {OUTPUT_TAIL} lines):\n{}\nL1's console (last {CONSOLE_TAIL} lines):\n{}{state}",
                            tail_lines(&out, OUTPUT_TAIL),
                            l1.tail(CONSOLE_TAIL)
                        );
                        let secs = began.elapsed().as_secs_f64();
                        self.fail(reports, step, detail, secs);
                        l1.kill();
                        if !remaining.is_empty() {
                            eprintln!(
                                "lab: killed L1 (QEMU) after {}; booting a fresh L1 for the rest of its steps",
                                step.name
                            );
                        }
                        break;
                    }
                }
            }
            if remaining.is_empty() {
                // Let L1 power off by itself (it prints DONE first).
                let _ = self.wait_marker(&l1, Instant::now() + Duration::from_secs(30), |m| matches!(m, Marker::Done));
            }
        }
        out
    }

    fn wait_marker(&self, l1: &L1, until: Instant, want: impl Fn(&Marker) -> bool) -> Wait {
        let mut heard = Instant::now();
        let mut poked = false;
        loop {
            let now = Instant::now();
            if now >= until {
                return Wait::Deadline;
            }
            let quiet = now.duration_since(heard);
            if quiet >= L1_SILENCE {
                return Wait::Silent;
            }
            if quiet >= L1_POKE_AFTER && !poked {
                // Two heartbeats missed: most likely the stall. A key press
                // gives TCG another interrupt to look at; a step that was
                // only slow to print is not disturbed by it.
                poked = true;
                let answer = l1.poke();
                eprintln!(
                    "lab: L1 silent for {} s (no heartbeat); pressed a key through QEMU's monitor to wake it{}",
                    quiet.as_secs(),
                    if answer.is_empty() { String::new() } else { format!(" (monitor: {answer})") }
                );
            }
            let next = if poked { L1_SILENCE } else { L1_POKE_AFTER };
            let left = (until - now).min(next.saturating_sub(quiet)).max(Duration::from_millis(1));
            match l1.events.recv_timeout(left) {
                Ok(Event::Line(line)) => {
                    if poked {
                        eprintln!(
                            "lab: L1 printed again after the key press ({} s of silence)",
                            heard.elapsed().as_secs()
                        );
                    }
                    poked = false;
                    heard = Instant::now();
                    if let Some(m) = parse_marker(&line) {
                        if want(&m) {
                            return Wait::Marker(m);
                        }
                    }
                }
                Ok(Event::Closed) | Err(RecvTimeoutError::Disconnected) => {
                    // Drain whatever else is queued.
                    while let Ok(Event::Line(line)) = l1.events.try_recv() {
                        if let Some(m) = parse_marker(&line) {
                            if want(&m) {
                                return Wait::Marker(m);
                            }
                        }
                    }
                    return Wait::Closed;
                }
                Err(RecvTimeoutError::Timeout) => {}
            }
        }
    }
}

enum Wait {
    Marker(Marker),
    /// QEMU's output ended: L1 powered off, panicked or was killed.
    Closed,
    /// The deadline passed.
    Deadline,
    /// L1 printed nothing (not even its heartbeat) for [`L1_SILENCE`].
    Silent,
}

impl Wait {
    /// Why waiting for `what` failed.
    fn why(&self, what: &str) -> String {
        match self {
            Wait::Marker(m) => format!("L1's runner said {m:?} while the harness waited for {what}"),
            Wait::Closed => format!("L1 ended (QEMU exited) before {what}"),
            Wait::Deadline => format!("no {what} in time"),
            Wait::Silent => format!(
                "L1 stopped making progress before {what}: not even its heartbeat for {} s (see docs/testing.md, stalls)",
                L1_SILENCE.as_secs()
            ),
        }
    }
}

/// A step whose run said nothing about it because L1 stalled: says why
/// (`said`), remembers that the step had its second chance, kills L1 and
/// puts the step first again for the next L1.
fn again_in_fresh_l1<'a>(
    l1: &mut L1,
    rerun: &mut Vec<&'a str>,
    remaining: &mut Vec<&'a Step>,
    step: &'a Step,
    said: &str,
) {
    eprintln!("lab: {}: {said}", step.name);
    rerun.push(step.name);
    l1.kill();
    remaining.insert(0, step);
}

fn tail_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].iter().map(|l| format!("  | {}\n", l.trim_end_matches('\r'))).collect()
}

/// The checks every step gets, then its own.
fn evaluate(step: &Step, run: &StepRun) -> Result<(), String> {
    if run.status != 0 {
        let why = if run.status == 124 {
            format!("the step timed out in L1 (its timeout is {} s)", step.timeout.as_secs())
        } else {
            format!("the step's script exited {}", run.status)
        };
        return Err(why);
    }
    if run.leftovers > 0 {
        return Err(format!(
            "the step left {} process(es) running (killed by L1's runner):\n{}",
            run.leftovers,
            std::fs::read_to_string(run.dir.join("leftovers")).unwrap_or_default()
        ));
    }
    for (name, console) in run.consoles() {
        if step.crashes.contains(&name.as_str()) || step.references.contains(&name.as_str()) {
            continue;
        }
        let problems = kernel_log_problems(&console);
        if !problems.is_empty() {
            return Err(format!(
                "L2 run {name:?}: its kernel log is not clean ({} line(s); docs/testing.md lists the one allowed warning):\n{}",
                problems.len(),
                problems.iter().map(|l| format!("  | {l}\n")).collect::<String>()
            ));
        }
    }
    run_check(step.check, run)
}

thread_local! {
    static PANIC_MESSAGE: std::cell::RefCell<Option<String>> = const { std::cell::RefCell::new(None) };
}

/// Runs a check, turning its panic (assert!) into the failure message.
fn run_check(check: Check, run: &StepRun) -> Result<(), String> {
    static HOOK: std::sync::Once = std::sync::Once::new();
    HOOK.call_once(|| {
        std::panic::set_hook(Box::new(|info| {
            let msg = if let Some(s) = info.payload().downcast_ref::<&str>() {
                s.to_string()
            } else if let Some(s) = info.payload().downcast_ref::<String>() {
                s.clone()
            } else {
                "(panic)".to_string()
            };
            let at = info.location().map(|l| format!(" (at {}:{})", l.file(), l.line())).unwrap_or_default();
            PANIC_MESSAGE.with(|m| *m.borrow_mut() = Some(format!("{msg}{at}")));
        }))
    });
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| check(run))) {
        Ok(()) => Ok(()),
        Err(_) => Err(PANIC_MESSAGE.with(|m| m.borrow_mut().take()).unwrap_or_else(|| "check failed".into())),
    }
}

/// Checks of the marker parser, run at every start of the lab.
fn self_test() {
    assert!(matches!(parse_marker("@@LAB READY uptime=4.5 cpus=2"), Some(Marker::Ready)));
    assert!(matches!(parse_marker("junk[ 1.0] @@LAB BEGIN a timeout=3"), Some(Marker::Begin(n)) if n == "a"));
    assert!(matches!(
        parse_marker("@@LAB END a status=124 secs=3.5 leftovers=2"),
        Some(Marker::End { status: 124, leftovers: 2, .. })
    ));
    assert!(parse_marker("@@LAB END a secs=1").is_none());
    assert!(parse_marker("nothing").is_none());
    // Longest first to the least loaded L1; "d" has no cost: the median (7).
    let steps: Vec<Step> = ["a", "b", "c", "d"].into_iter().map(|n| Step::new(n, 1, |_| {})).collect();
    let refs: Vec<&Step> = steps.iter().collect();
    let costs: BTreeMap<String, f64> = [("a", 10.0), ("b", 7.0), ("c", 5.0)].map(|(n, c)| (n.to_string(), c)).into();
    let names =
        |lanes: Vec<Vec<&Step>>| lanes.iter().map(|l| l.iter().map(|s| s.name).collect()).collect::<Vec<Vec<_>>>();
    assert_eq!(names(plan_lanes(&refs, 2, &costs)), [vec!["a", "c"], vec!["b", "d"]]);
    assert_eq!(names(plan_lanes(&refs, 1, &costs)), [vec!["a", "b", "c", "d"]]);
    assert_eq!(names(plan_lanes(&refs[..1], 3, &costs)), [vec!["a"]]);
    super::checks::self_test();
}
