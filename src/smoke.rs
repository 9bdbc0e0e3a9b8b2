//! `ember smoke`: boot a kernel, run one command in it (or wait for console
//! patterns), and turn what happened into an exit status, a summary line and
//! optionally a JUnit report.
//!
//! In command mode ember writes an initramfs itself (cpio newc, see
//! [`crate::cpio`]): a static busybox with its applet links, `/dev/console`,
//! and an `/init` that mounts proc, sysfs and devtmpfs, runs the command,
//! prints its exit status between markers on the console and reboots
//! (`reboot=k`: ember's i8042 reset ends the VM).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regex_lite::Regex;

use crate::config::SharedWriter;
use crate::config::{SerialConfig, VmConfig};
use crate::cpio::{CpioError, CpioWriter};
use crate::error::Error;
use crate::exit::VmExit;
use crate::seccomp::SeccompMode;
use crate::serial_capture::SerialCapture;
use crate::sync::lock;
use crate::vm::Vm;

/// The console markers `/init` prints around the command.
const BEGIN_MARKER: &str = "===EMBER-SMOKE-BEGIN===";
/// Followed by the decimal exit status and `===`.
const EXIT_MARKER: &str = "===EMBER-SMOKE-EXIT=";

/// Console lines that mean the kernel is dead or dying.
const PANIC_PATTERNS: &[&str] =
    &["Kernel panic - not syncing", "Oops:", "BUG: kernel NULL pointer", "BUG: unable to handle", "kernel BUG at"];

/// Where Debian's busybox-static puts its binary.
const BUSYBOX_CANDIDATES: &[&str] = &["/bin/busybox", "/usr/bin/busybox"];

/// Errors that stop a smoke test before it has a result.
#[derive(Debug, thiserror::Error)]
pub enum SmokeError {
    /// No usable busybox.
    #[error("{0}")]
    Busybox(String),
    /// A file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// An expected console pattern is not a valid regular expression.
    #[error("invalid expect pattern {pattern:?}: {message}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// The parser's complaint.
        message: String,
    },
    /// Building the initramfs failed.
    #[error("building the initramfs: {0}")]
    Cpio(#[from] CpioError),
    /// The VM could not be built or started.
    #[error(transparent)]
    Vm(#[from] Error),
}

impl SmokeError {
    /// Whether the error is the user's input (as opposed to the host).
    pub fn is_usage(&self) -> bool {
        match self {
            SmokeError::Vm(e) => e.is_usage(),
            SmokeError::Read { .. } | SmokeError::Pattern { .. } | SmokeError::Busybox(_) => true,
            SmokeError::Cpio(_) => true,
        }
    }
}

/// A smoke test, configured builder-style, run with [`Smoke::run`].
#[derive(Clone)]
pub struct Smoke {
    kernel: PathBuf,
    memory: u64,
    vcpus: u8,
    cmdline_extra: String,
    timeout: Duration,
    expect: Vec<String>,
    quiet: bool,
    busybox: Option<PathBuf>,
    initrd: Option<PathBuf>,
    command: Vec<String>,
    output: Option<SharedWriter>,
    seccomp: SeccompMode,
}

impl std::fmt::Debug for Smoke {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Smoke")
            .field("kernel", &self.kernel)
            .field("memory", &self.memory)
            .field("vcpus", &self.vcpus)
            .field("timeout", &self.timeout)
            .field("expect", &self.expect)
            .field("command", &self.command)
            .finish_non_exhaustive()
    }
}

/// How one expectation fared.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expectation {
    /// The regular expression.
    pub pattern: String,
    /// When it matched, from the start of the VM.
    pub matched_after: Option<Duration>,
}

/// The outcome of a smoke test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Every expectation matched and the command (if any) exited 0.
    Passed,
    /// The command exited non-zero (expectations all matched).
    CommandFailed(i32),
    /// The timeout passed.
    Timeout,
    /// A kernel panic, oops or BUG line on the console.
    Panic(String),
    /// KVM reported a guest crash.
    Crash(VmExit),
    /// The VM ended before the command's status or every expectation.
    Incomplete(VmExit),
}

/// Everything a smoke test found out.
#[derive(Clone, Debug)]
pub struct SmokeReport {
    /// The outcome.
    pub verdict: Verdict,
    /// The command's exit status, when it reported one.
    pub command_status: Option<i32>,
    /// The command as given.
    pub command: Vec<String>,
    /// Each expectation, in order.
    pub expectations: Vec<Expectation>,
    /// How the VM ended.
    pub vm_exit: VmExit,
    /// Wall time from VM start to the verdict.
    pub elapsed: Duration,
    /// The timeout that applied.
    pub timeout: Duration,
    /// The whole console output.
    pub console: String,
    /// The kernel image.
    pub kernel: PathBuf,
}

impl Smoke {
    /// Exit status when the timeout passed (as `timeout(1)`).
    pub const EXIT_TIMEOUT: i32 = 124;
    /// Exit status when ember itself failed (bad input, VM set-up), as
    /// `timeout(1)` uses 125 for its own failures.
    pub const EXIT_EMBER: i32 = 125;
    /// Exit status for a kernel panic, oops or BUG seen on the console.
    pub const EXIT_PANIC: i32 = 120;
    /// Exit status for a guest crash reported by KVM (triple fault, an
    /// instruction KVM could not run).
    pub const EXIT_CRASH: i32 = 121;
    /// Exit status when the VM ended before every expectation matched or
    /// before the command reported its status.
    pub const EXIT_INCOMPLETE: i32 = 122;

    /// A smoke test of `kernel` with the defaults: 256 MiB, 1 vCPU, 60 s.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        Smoke {
            kernel: kernel.into(),
            memory: 256 << 20,
            vcpus: 1,
            cmdline_extra: String::new(),
            timeout: Duration::from_secs(60),
            expect: Vec::new(),
            quiet: false,
            busybox: None,
            initrd: None,
            command: Vec::new(),
            output: None,
            seccomp: SeccompMode::Off,
        }
    }
    /// seccomp filters on the VM's threads and the calling thread (default
    /// off for library use; see [`VmConfig::seccomp`]).
    pub fn seccomp(mut self, mode: SeccompMode) -> Self {
        self.seccomp = mode;
        self
    }
    /// Guest memory in bytes.
    pub fn memory(mut self, bytes: u64) -> Self {
        self.memory = bytes;
        self
    }
    /// vCPU count.
    pub fn cpus(mut self, n: u8) -> Self {
        self.vcpus = n;
        self
    }
    /// Appended to ember's kernel command line.
    pub fn cmdline(mut self, extra: impl Into<String>) -> Self {
        self.cmdline_extra = extra.into();
        self
    }
    /// How long before the VM is stopped and the verdict is a timeout.
    pub fn timeout(mut self, t: Duration) -> Self {
        self.timeout = t;
        self
    }
    /// Adds a console pattern (a regular expression) that must match, after
    /// the previous one, for the test to pass.
    pub fn expect(mut self, pattern: impl Into<String>) -> Self {
        self.expect.push(pattern.into());
        self
    }
    /// Stream only the command's output (between the markers), and ask the
    /// kernel to be quiet.
    pub fn quiet(mut self, q: bool) -> Self {
        self.quiet = q;
        self
    }
    /// The static busybox to put in the initramfs.
    pub fn busybox(mut self, path: impl Into<PathBuf>) -> Self {
        self.busybox = Some(path.into());
        self
    }
    /// A cpio archive appended to ember's initramfs (or used alone when no
    /// command is given).
    pub fn initrd(mut self, path: impl Into<PathBuf>) -> Self {
        self.initrd = Some(path.into());
        self
    }
    /// The command to run as the initramfs's payload.
    pub fn command<S: Into<String>>(mut self, argv: impl IntoIterator<Item = S>) -> Self {
        self.command = argv.into_iter().map(Into::into).collect();
        self
    }
    /// Where the console streams while the test runs (default: nowhere; the
    /// CLI passes stdout).
    pub fn output(mut self, w: SharedWriter) -> Self {
        self.output = Some(w);
        self
    }

    /// The kernel command line the VM gets (before ember's device additions).
    pub fn kernel_cmdline(&self) -> String {
        let mut c = String::from("console=ttyS0 reboot=k panic=-1");
        if !self.command.is_empty() {
            c.push_str(" rdinit=/init");
        }
        if self.quiet {
            c.push_str(" quiet loglevel=1");
        }
        if !self.cmdline_extra.is_empty() {
            c.push(' ');
            c.push_str(&self.cmdline_extra);
        }
        c
    }

    /// Builds the initramfs for command mode (ember's archive, then the
    /// user's [`initrd`](Smoke::initrd)), or returns the user's initrd alone.
    pub fn initramfs(&self) -> Result<Option<Vec<u8>>, SmokeError> {
        let user = match &self.initrd {
            Some(p) => Some(std::fs::read(p).map_err(|source| SmokeError::Read { path: p.clone(), source })?),
            None => None,
        };
        if self.command.is_empty() {
            return Ok(user);
        }
        let busybox = Smoke::find_busybox(self.busybox.as_deref())?;
        let bb = std::fs::read(&busybox).map_err(|source| SmokeError::Read { path: busybox.clone(), source })?;
        let mut archive = build_initramfs(&bb, &applets(&busybox), &init_script(&self.command))?;
        if let Some(u) = user {
            archive.extend_from_slice(&u);
        }
        Ok(Some(archive))
    }

    /// Runs the test to its verdict.
    pub fn run(&self) -> Result<SmokeReport, SmokeError> {
        let patterns = self
            .expect
            .iter()
            .map(|p| Regex::new(p).map_err(|e| SmokeError::Pattern { pattern: p.clone(), message: e.to_string() }))
            .collect::<Result<Vec<_>, _>>()?;
        let mut config = VmConfig::new(&self.kernel);
        config.memory = self.memory;
        config.vcpus = self.vcpus;
        config.cmdline = self.kernel_cmdline();
        config.initrd_bytes = self.initramfs()?.map(std::sync::Arc::new);
        config.seccomp = self.seccomp;
        let console = SerialCapture::new();
        config.serial = SerialConfig::Capture(console.clone());
        let vm = Vm::new(config)?;
        let start = Instant::now();
        let running = vm.start()?;
        let handle = running.handle();
        let mut out = Streamer { out: self.output.clone(), quiet: self.quiet, inside: false };

        let mut expectations: Vec<Expectation> =
            self.expect.iter().map(|p| Expectation { pattern: p.clone(), matched_after: None }).collect();
        let mut next = 0;
        let mut seen = 0usize;
        let mut pending: Vec<u8> = Vec::new();
        let mut command_status = None;
        let mut panic_line: Option<String> = None;
        let mut panic_grace: Option<Instant> = None;
        let deadline = start + self.timeout;
        let mut timed_out = false;
        let command_mode = !self.command.is_empty();
        loop {
            let now = Instant::now();
            let wait = deadline.saturating_duration_since(now).min(Duration::from_millis(100));
            // The VM may have ended without the capture being closed yet.
            let ended = handle.exit().is_some();
            let (chunk, closed) = console.wait_beyond(seen, if ended { Duration::ZERO } else { wait });
            let closed = closed || ended;
            seen += chunk.len();
            out.raw(&chunk);
            pending.extend_from_slice(&chunk);
            let mut lines = Vec::new();
            while let Some(i) = pending.iter().position(|&b| b == b'\n') {
                let l: Vec<u8> = pending.drain(..=i).collect();
                lines.push(String::from_utf8_lossy(&l).trim_end_matches(['\r', '\n']).to_string());
            }
            if closed && !pending.is_empty() {
                lines.push(String::from_utf8_lossy(&std::mem::take(&mut pending)).trim_end().to_string());
            }
            for line in &lines {
                out.line(line);
                while next < patterns.len() && patterns[next].is_match(line) {
                    expectations[next].matched_after = Some(start.elapsed());
                    next += 1;
                }
                if panic_line.is_none() && PANIC_PATTERNS.iter().any(|p| line.contains(p)) {
                    panic_line = Some(line.trim().to_string());
                    // Keep reading briefly: the trace follows the panic line.
                    panic_grace = Some(Instant::now() + Duration::from_millis(500));
                }
                if command_mode && command_status.is_none() {
                    if let Some(rest) = line.find(EXIT_MARKER).map(|i| &line[i + EXIT_MARKER.len()..]) {
                        command_status = rest.split("===").next().and_then(|s| s.trim().parse::<i32>().ok());
                    }
                }
            }
            if closed || command_status.is_some() {
                break;
            }
            if !command_mode && !patterns.is_empty() && next == patterns.len() {
                break;
            }
            if panic_grace.is_some_and(|g| Instant::now() >= g) {
                break;
            }
            if Instant::now() >= deadline {
                timed_out = true;
                break;
            }
        }
        let elapsed = start.elapsed();
        handle.stop();
        let vm_exit = running.wait();
        // Anything printed between the last read and the stop.
        let (rest, _) = console.wait_beyond(seen, Duration::ZERO);
        out.raw(&rest);
        let all_matched = next == patterns.len();
        let verdict = if let Some(l) = panic_line {
            Verdict::Panic(l)
        } else if vm_exit.is_crash() {
            Verdict::Crash(vm_exit.clone())
        } else if timed_out {
            Verdict::Timeout
        } else if command_mode {
            match command_status {
                Some(_) if !all_matched => Verdict::Incomplete(vm_exit.clone()),
                Some(0) => Verdict::Passed,
                Some(n) => Verdict::CommandFailed(n),
                None => Verdict::Incomplete(vm_exit.clone()),
            }
        } else if all_matched {
            Verdict::Passed
        } else {
            Verdict::Incomplete(vm_exit.clone())
        };
        Ok(SmokeReport {
            verdict,
            command_status,
            command: self.command.clone(),
            expectations,
            vm_exit,
            elapsed,
            timeout: self.timeout,
            console: console.text(),
            kernel: self.kernel.clone(),
        })
    }
}

/// Streams the console to the caller's writer: everything, or in quiet mode
/// only the lines between the markers.
struct Streamer {
    out: Option<SharedWriter>,
    quiet: bool,
    inside: bool,
}

impl Streamer {
    fn raw(&mut self, bytes: &[u8]) {
        if !self.quiet && !bytes.is_empty() {
            if let Some(o) = &self.out {
                let mut w = lock(o);
                let _ = w.write_all(bytes);
                let _ = w.flush();
            }
        }
    }

    fn line(&mut self, line: &str) {
        if !self.quiet {
            return;
        }
        if line.contains(BEGIN_MARKER) {
            self.inside = true;
            return;
        }
        if line.contains(EXIT_MARKER) {
            self.inside = false;
            return;
        }
        if self.inside {
            if let Some(o) = &self.out {
                let mut w = lock(o);
                let _ = writeln!(w, "{line}");
                let _ = w.flush();
            }
        }
    }
}

impl SmokeReport {
    /// The process exit status for this report (docs/ci.md).
    pub fn exit_status(&self) -> i32 {
        match &self.verdict {
            Verdict::Passed => 0,
            Verdict::CommandFailed(n) => *n,
            Verdict::Timeout => Smoke::EXIT_TIMEOUT,
            Verdict::Panic(_) => Smoke::EXIT_PANIC,
            Verdict::Crash(_) => Smoke::EXIT_CRASH,
            Verdict::Incomplete(_) => Smoke::EXIT_INCOMPLETE,
        }
    }

    /// The index of the first expectation that never matched.
    pub fn waiting_for(&self) -> Option<usize> {
        self.expectations.iter().position(|e| e.matched_after.is_none())
    }

    /// The last `n` console lines.
    pub fn last_lines(&self, n: usize) -> Vec<&str> {
        let lines: Vec<&str> = self.console.lines().map(|l| l.trim_end_matches('\r')).collect();
        lines[lines.len().saturating_sub(n)..].to_vec()
    }

    /// One line: verdict, what matched, the elapsed time.
    pub fn summary(&self) -> String {
        let secs = self.elapsed.as_secs_f64();
        let matched = self.expectations.iter().filter(|e| e.matched_after.is_some()).count();
        let exp = if self.expectations.is_empty() {
            String::new()
        } else {
            format!(", {matched}/{} expectations matched", self.expectations.len())
        };
        let cmd = match self.command_status {
            Some(n) => format!(", command exited {n}"),
            None if !self.command.is_empty() => ", command did not finish".to_string(),
            None => String::new(),
        };
        let what = match &self.verdict {
            Verdict::Passed => "PASS".to_string(),
            Verdict::CommandFailed(_) => "FAIL".to_string(),
            Verdict::Timeout => {
                let w = match self.waiting_for() {
                    Some(i) => format!(" waiting for expectation {} {:?}", i + 1, self.expectations[i].pattern),
                    None if !self.command.is_empty() => " waiting for the command to finish".to_string(),
                    None => String::new(),
                };
                format!("TIMEOUT after {:.0} s{w}", self.timeout.as_secs_f64())
            }
            Verdict::Panic(l) => format!("KERNEL PANIC ({l})"),
            Verdict::Crash(e) => format!("GUEST CRASH ({e})"),
            Verdict::Incomplete(e) => format!("INCOMPLETE (the VM ended first: {e})"),
        };
        format!("ember smoke: {what}{exp}{cmd}, in {secs:.3} s (exit status {})", self.exit_status())
    }

    /// The report as JUnit XML: one testcase per expectation, one for the
    /// command, one for the kernel itself; the console as system-out.
    pub fn junit_xml(&self) -> String {
        let mut cases: Vec<(String, f64, Option<String>)> = Vec::new();
        let total = self.elapsed.as_secs_f64();
        let ended = match &self.verdict {
            Verdict::Timeout => format!("timed out after {:.0} s", self.timeout.as_secs_f64()),
            Verdict::Panic(l) => format!("kernel panic: {l}"),
            Verdict::Crash(e) => format!("guest crash: {e}"),
            Verdict::Incomplete(e) => format!("the VM ended first: {e}"),
            _ => "not seen".to_string(),
        };
        let kernel_fail = match &self.verdict {
            Verdict::Panic(l) => Some(format!("kernel panic: {l}")),
            Verdict::Crash(e) => Some(format!("guest crash: {e}")),
            _ => None,
        };
        cases.push(("kernel".into(), total, kernel_fail));
        for (i, e) in self.expectations.iter().enumerate() {
            let t = e.matched_after.map(|d| d.as_secs_f64()).unwrap_or(total);
            let fail = e.matched_after.is_none().then(|| format!("/{}/ {}", e.pattern, ended));
            cases.push((format!("expect[{}] {}", i + 1, e.pattern), t, fail));
        }
        if !self.command.is_empty() {
            let fail = match self.command_status {
                Some(0) => None,
                Some(n) => Some(format!("exited {n}")),
                None => Some(ended.clone()),
            };
            cases.push((format!("command {}", self.command.join(" ")), total, fail));
        }
        let failures = cases.iter().filter(|c| c.2.is_some()).count();
        let name = format!("ember smoke {}", self.kernel.display());
        let mut x = String::from("<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n");
        x.push_str(&format!(
            "<testsuites tests=\"{}\" failures=\"{failures}\" time=\"{total:.3}\">\n<testsuite name=\"{}\" tests=\"{}\" failures=\"{failures}\" errors=\"0\" time=\"{total:.3}\">\n",
            cases.len(),
            xml_attr(&name),
            cases.len()
        ));
        for (n, t, fail) in &cases {
            x.push_str(&format!("  <testcase classname=\"ember.smoke\" name=\"{}\" time=\"{t:.3}\"", xml_attr(n)));
            match fail {
                Some(m) => x.push_str(&format!(">\n    <failure message=\"{}\"/>\n  </testcase>\n", xml_attr(m))),
                None => x.push_str("/>\n"),
            }
        }
        x.push_str("  <system-out><![CDATA[");
        x.push_str(&xml_text(&self.console).replace("]]>", "]]]]><![CDATA[>"));
        x.push_str("]]></system-out>\n</testsuite>\n</testsuites>\n");
        x
    }
}

/// Characters XML 1.0 allows in text.
fn xml_text(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '\t' | '\n' | '\r' => c,
            c if (c as u32) < 0x20 || c == '\u{fffe}' || c == '\u{ffff}' => '?',
            c => c,
        })
        .collect()
}

fn xml_attr(s: &str) -> String {
    xml_text(s)
        .replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\n', "&#10;")
        .replace('\r', "&#13;")
        .replace('\t', "&#9;")
}

/// Quotes `s` for a POSIX shell.
fn sh_quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', "'\\''"))
}

/// The `/init` script that runs `command`.
pub fn init_script(command: &[String]) -> String {
    let cmd: Vec<String> = command.iter().map(|a| sh_quote(a)).collect();
    format!(
        "#!/bin/busybox sh\n\
         # Written by ember smoke: mount the usual file systems, run the command,\n\
         # report its status between markers, reboot (reboot=k ends the VM).\n\
         /bin/busybox mount -t proc proc /proc\n\
         /bin/busybox mount -t sysfs sysfs /sys\n\
         /bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null\n\
         export PATH=/sbin:/bin:/usr/sbin:/usr/bin HOME=/root TERM=dumb\n\
         cd /\n\
         echo '{BEGIN_MARKER}'\n\
         {}\n\
         rc=$?\n\
         echo \"{EXIT_MARKER}$rc===\"\n\
         /bin/busybox sync\n\
         /bin/busybox reboot -f\n\
         /bin/busybox sleep 5\n",
        cmd.join(" ")
    )
}

/// Lays out ember's initramfs: directories, `/dev/console`, busybox, its
/// applet links (paths like `bin/ls`), and `/init`.
pub fn build_initramfs(busybox: &[u8], applets: &[String], init: &str) -> Result<Vec<u8>, CpioError> {
    let mut w = CpioWriter::new();
    for d in ["bin", "sbin", "usr", "usr/bin", "usr/sbin", "dev", "proc", "sys", "tmp", "root", "etc", "mnt"] {
        w.dir(d, if d == "tmp" { 0o1777 } else { 0o755 })?;
    }
    w.char_dev("dev/console", 0o600, 5, 1)?;
    w.char_dev("dev/null", 0o666, 1, 3)?;
    w.file("bin/busybox", 0o755, busybox)?;
    for a in applets {
        let a = a.trim_start_matches('/');
        let parent_ok = match a.rsplit_once('/') {
            Some((dir, _)) => w.contains(dir),
            None => true,
        };
        if a.is_empty() || a == "bin/busybox" || !parent_ok || w.contains(a) {
            continue;
        }
        w.symlink(a, "/bin/busybox")?;
    }
    w.file("init", 0o755, init.as_bytes())?;
    Ok(w.finish())
}

/// The applets `busybox --list-full` reports (a fixed core set if it
/// cannot run on this host).
fn applets(busybox: &Path) -> Vec<String> {
    let listed = std::process::Command::new(busybox)
        .arg("--list-full")
        .stderr(std::process::Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).lines().map(str::to_string).collect::<Vec<_>>());
    match listed {
        Some(l) if !l.is_empty() => l,
        _ => ["bin/sh", "bin/ls", "bin/cat", "bin/echo", "bin/mount", "bin/uname", "bin/sleep", "sbin/reboot"]
            .iter()
            .map(|s| s.to_string())
            .collect(),
    }
}

impl Smoke {
    /// Finds a static busybox for the initramfs: `given`, else Debian's
    /// busybox-static; the error says how to get one.
    pub fn find_busybox(given: Option<&Path>) -> Result<PathBuf, SmokeError> {
        find_busybox(given)
    }
}

/// Finds a static busybox: the given path, else Debian's busybox-static.
fn find_busybox(given: Option<&Path>) -> Result<PathBuf, SmokeError> {
    let candidates: Vec<PathBuf> = match given {
        Some(p) => vec![p.to_path_buf()],
        None => BUSYBOX_CANDIDATES.iter().map(PathBuf::from).collect(),
    };
    let mut why = Vec::new();
    for c in &candidates {
        match std::fs::read(c) {
            Ok(bytes) => match is_static_elf(&bytes) {
                Some(true) => return Ok(c.clone()),
                Some(false) => why.push(format!("{} is dynamically linked", c.display())),
                None => why.push(format!("{} is not an ELF executable", c.display())),
            },
            Err(e) => why.push(format!("{}: {e}", c.display())),
        }
    }
    Err(SmokeError::Busybox(format!(
        "no static busybox for the initramfs ({}); install Debian's busybox-static (apt-get install busybox-static) or give the path of a static busybox",
        why.join("; ")
    )))
}

/// `Some(true)` for an ELF without an interpreter, `Some(false)` with one,
/// `None` if not ELF.
fn is_static_elf(b: &[u8]) -> Option<bool> {
    if b.get(..4)? != b"\x7fELF" || *b.get(4)? != 2 {
        return None;
    }
    let u16_at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let phoff = u64::from_le_bytes(b.get(32..40)?.try_into().ok()?) as usize;
    let (phentsize, phnum) = (u16_at(54)? as usize, u16_at(56)? as usize);
    for i in 0..phnum {
        let o = phoff.checked_add(i.checked_mul(phentsize)?)?;
        let t = u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?);
        if t == 3 {
            return Some(false);
        }
    }
    Some(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cpio::{parse, S_IFCHR, S_IFLNK, S_IFREG};

    #[test]
    fn init_script_quotes_the_command() {
        let s = init_script(&["sh".into(), "-c".into(), "echo 'hi'; exit 7".into()]);
        assert!(s.starts_with("#!/bin/busybox sh\n"));
        assert!(s.contains("'sh' '-c' 'echo '\\''hi'\\''; exit 7'\n"), "{s}");
        assert!(s.contains(BEGIN_MARKER));
        assert!(s.contains(&format!("echo \"{EXIT_MARKER}$rc===\"")));
        assert!(s.contains("reboot -f"));
    }

    #[test]
    fn initramfs_layout() {
        let applets = vec!["bin/sh".to_string(), "usr/bin/awk".into(), "bin/busybox".into(), "nodir/x".into()];
        let a = build_initramfs(b"BB", &applets, "#!/bin/busybox sh\n").unwrap();
        let e = parse(&a).unwrap();
        let find = |n: &str| e.iter().find(|x| x.name == n).unwrap_or_else(|| panic!("{n} missing"));
        assert_eq!(find("bin/busybox").mode, S_IFREG | 0o755);
        assert_eq!(find("bin/busybox").data, b"BB");
        assert_eq!(find("init").mode, S_IFREG | 0o755);
        assert_eq!(find("dev/console").mode, S_IFCHR | 0o600);
        assert_eq!(find("dev/console").rdev, (5, 1));
        assert_eq!(find("bin/sh").mode, S_IFLNK | 0o777);
        assert_eq!(find("usr/bin/awk").data, b"/bin/busybox");
        assert!(!e.iter().any(|x| x.name == "nodir/x"));
        assert_eq!(e.iter().filter(|x| x.name == "bin/busybox").count(), 1);
    }

    #[test]
    fn static_elf_detection() {
        assert_eq!(is_static_elf(b"#!/bin/sh"), None);
        let me = std::fs::read("/proc/self/exe").unwrap();
        assert_eq!(is_static_elf(&me), Some(false)); // the test binary is dynamic
    }

    #[test]
    fn missing_busybox_says_how_to_get_one() {
        let e = find_busybox(Some(Path::new("/nonexistent/busybox"))).unwrap_err().to_string();
        assert!(e.contains("/nonexistent/busybox") && e.contains("busybox-static"), "{e}");
    }

    #[test]
    fn cmdline() {
        let s = Smoke::new("k").command(["true"]).quiet(true).cmdline("foo=1");
        assert_eq!(s.kernel_cmdline(), "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet loglevel=1 foo=1");
        assert_eq!(Smoke::new("k").kernel_cmdline(), "console=ttyS0 reboot=k panic=-1");
    }

    fn report(verdict: Verdict) -> SmokeReport {
        SmokeReport {
            verdict,
            command_status: Some(3),
            command: vec!["sh".into(), "-c".into(), "exit 3 <&>".into()],
            expectations: vec![
                Expectation { pattern: "Linux".into(), matched_after: Some(Duration::from_millis(5)) },
                Expectation { pattern: "never\"".into(), matched_after: None },
            ],
            vm_exit: VmExit::Stopped,
            elapsed: Duration::from_millis(1500),
            timeout: Duration::from_secs(60),
            console: "line1\n\x1b[0m]]> end\n".into(),
            kernel: "vmlinux".into(),
        }
    }

    #[test]
    fn exit_statuses() {
        assert_eq!(report(Verdict::Passed).exit_status(), 0);
        assert_eq!(report(Verdict::CommandFailed(3)).exit_status(), 3);
        assert_eq!(report(Verdict::Timeout).exit_status(), 124);
        assert_eq!(report(Verdict::Panic("x".into())).exit_status(), 120);
        assert_eq!(report(Verdict::Crash(VmExit::TripleFault { vcpu: 0, rip: 1 })).exit_status(), 121);
        assert_eq!(report(Verdict::Incomplete(VmExit::Reset)).exit_status(), 122);
    }

    #[test]
    fn summary_names_the_waiting_expectation() {
        let s = report(Verdict::Timeout).summary();
        assert!(s.contains("TIMEOUT after 60 s waiting for expectation 2 \"never\\\"\""), "{s}");
        assert!(s.contains("1/2 expectations matched") && s.contains("1.500 s"), "{s}");
    }

    #[test]
    fn junit_is_escaped() {
        let x = report(Verdict::Timeout).junit_xml();
        assert!(x.contains("tests=\"4\" failures=\"2\""), "{x}");
        assert!(x.contains("name=\"command sh -c exit 3 &lt;&amp;&gt;\""), "{x}");
        assert!(x.contains("name=\"expect[2] never&quot;\""), "{x}");
        assert!(x.contains("?[0m]]]]><![CDATA[> end"), "{x}");
        assert!(!x.contains('\x1b'));
    }
}
