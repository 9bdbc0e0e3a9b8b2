//! `ember smoke`: boot a kernel, run one command in it (or wait for console
//! patterns), and turn what happened into an exit status, a summary line and
//! optionally a JUnit report.
//!
//! In command mode ember writes an initramfs itself (cpio newc, see
//! [`crate::cpio`]): a static busybox with its applet links, `/dev/console`,
//! and an `/init` that mounts proc, sysfs and devtmpfs, runs the command,
//! prints its exit status between markers on the console and reboots
//! (`reboot=k`: ember's i8042 reset ends the VM).
//!
//! This module runs the test ([`Smoke`]); `initramfs` writes the archive
//! and `report` turns the outcome into a verdict, a summary and JUnit.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use regex_lite::Regex;

use crate::config::{DiskConfig, NetConfig, SerialConfig, ShareConfig, SharedWriter, VmConfig};
use crate::cpio::CpioError;
use crate::error::Error;
use crate::seccomp::SeccompMode;
use crate::serial_capture::SerialCapture;
use crate::sync::lock;
use crate::vm::Vm;
#[cfg(feature = "fuzzing")]
pub use initramfs::init_script;
use initramfs::{applets, init_script_for, modules_archive, GuestMount, InitPlan};
pub use initramfs::{build_initramfs, RootPlan};
pub use report::{Expectation, SmokeReport, Verdict};

mod initramfs;
mod modules;
mod report;

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
    /// The kernel's modules cannot be used.
    #[error("{0}")]
    Modules(String),
    /// The VM could not be built or started.
    #[error(transparent)]
    Vm(#[from] Error),
}

impl SmokeError {
    /// Whether the error is the user's input (as opposed to the host).
    pub fn is_usage(&self) -> bool {
        match self {
            SmokeError::Vm(e) => e.is_usage(),
            SmokeError::Read { .. } | SmokeError::Pattern { .. } | SmokeError::Busybox(_) | SmokeError::Modules(_) => {
                true
            }
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
    disks: Vec<DiskConfig>,
    nets: Vec<NetConfig>,
    shares: Vec<SmokeShare>,
    root: Option<RootPlan>,
    modules: Modules,
    command_output: Option<(SharedWriter, SharedWriter)>,
    console_log: Option<PathBuf>,
}

/// A directory shared with the guest of a smoke test.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SmokeShare {
    /// The share (host directory, tag, read-only).
    pub config: ShareConfig,
    /// Where `/init` mounts it (default `/mnt/TAG`).
    pub guest_path: Option<PathBuf>,
}

impl RootPlan {
    /// The environment variables [`RootPlan::of_caller`] keeps.
    pub const KEPT_ENV: &'static [&'static str] = &["PATH", "HOME", "TERM", "USER", "LOGNAME", "LANG"];

    /// The calling process's working directory, environment (the
    /// [`RootPlan::KEPT_ENV`] variables that are set) and user and group,
    /// under the mount tag [`Smoke::ROOT_TAG`].
    pub fn of_caller() -> std::io::Result<RootPlan> {
        let cwd = std::env::current_dir()?.display().to_string();
        let env = Self::KEPT_ENV.iter().filter_map(|k| std::env::var(k).ok().map(|v| (k.to_string(), v))).collect();
        // SAFETY: getuid and getgid cannot fail and touch no memory.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        Ok(RootPlan { tag: Smoke::ROOT_TAG.to_string(), cwd, env, uid, gid })
    }
}

/// Which kernel modules go into the initramfs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Modules {
    /// `/lib/modules/RELEASE` when the kernel image's release is there,
    /// else none (a kernel with what it needs built in).
    #[default]
    Auto,
    /// None.
    Off,
    /// This module tree (holding `modules.dep`, or with it under
    /// `lib/modules/RELEASE` or `RELEASE`).
    Dir(PathBuf),
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

impl Smoke {
    /// The mount tag of the host's root under [`Smoke::root_share`].
    pub const ROOT_TAG: &'static str = "ember-root";
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
            disks: Vec::new(),
            nets: Vec::new(),
            shares: Vec::new(),
            root: None,
            modules: Modules::Auto,
            command_output: None,
            console_log: None,
        }
    }
    /// Adds a virtio-blk disk.
    pub fn disk(mut self, disk: DiskConfig) -> Self {
        self.disks.push(disk);
        self
    }
    /// Adds a virtio-net NIC.
    pub fn net(mut self, nic: NetConfig) -> Self {
        self.nets.push(nic);
        self
    }
    /// Adds a shared directory; in command mode `/init` mounts it at its
    /// guest path (default `/mnt/TAG`).
    pub fn share(mut self, share: SmokeShare) -> Self {
        self.shares.push(share);
        self
    }
    /// Runs the command in the host's root file system, shared read-only
    /// (tag [`Smoke::ROOT_TAG`]) with a tmpfs overlay on top, in `plan`'s
    /// directory, environment and user. See [`RootPlan::of_caller`].
    pub fn root_share(mut self, plan: RootPlan) -> Self {
        self.root = Some(plan);
        self
    }
    /// Which kernel modules go into the initramfs (default
    /// [`Modules::Auto`]).
    pub fn modules(mut self, m: Modules) -> Self {
        self.modules = m;
        self
    }
    /// The command's stdout and stderr go to these writers (through the
    /// guest's ttyS1 and ttyS2), apart from the kernel's console.
    pub fn command_output(mut self, stdout: SharedWriter, stderr: SharedWriter) -> Self {
        self.command_output = Some((stdout, stderr));
        self
    }
    /// Also writes the whole console to this file.
    pub fn console_log(mut self, path: impl Into<PathBuf>) -> Self {
        self.console_log = Some(path.into());
        self
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
        let modules = self.module_files()?;
        let plan = InitPlan {
            command: &self.command,
            modules: modules.iter().map(|(n, _)| n.clone()).collect(),
            mounts: self
                .shares
                .iter()
                .map(|sh| GuestMount {
                    tag: sh.config.tag.clone(),
                    path: match &sh.guest_path {
                        Some(p) => p.display().to_string(),
                        None => format!("/mnt/{}", sh.config.tag),
                    },
                    read_only: sh.config.read_only,
                })
                .collect(),
            root: self.root.clone(),
            separate_output: self.command_output.is_some(),
        };
        let mut archive = build_initramfs(&bb, &applets(&busybox), &init_script_for(&plan))?;
        if !modules.is_empty() {
            archive.extend_from_slice(&modules_archive(&modules)?);
        }
        if let Some(u) = user {
            archive.extend_from_slice(&u);
        }
        Ok(Some(archive))
    }

    /// The modules for the initramfs (kmod name, contents), in load order.
    fn module_files(&self) -> Result<Vec<(String, Vec<u8>)>, SmokeError> {
        let release = || modules::kernel_release_of(&self.kernel);
        let dir = match &self.modules {
            Modules::Off => return Ok(Vec::new()),
            // A kernel that cannot be read fails later, with its own error.
            Modules::Auto => match release().ok().flatten() {
                Some(r) => match modules::module_dir(&PathBuf::from("/lib/modules").join(&r), None) {
                    Some(d) => d,
                    None => return Ok(Vec::new()),
                },
                None => return Ok(Vec::new()),
            },
            Modules::Dir(d) => {
                let r = release()?;
                modules::module_dir(d, r.as_deref()).ok_or_else(|| {
                    SmokeError::Modules(format!(
                        "no modules.dep in {} (nor under lib/modules/{} there){}",
                        d.display(),
                        r.as_deref().unwrap_or("RELEASE"),
                        if r.is_none() { "; the kernel image's release could not be read" } else { "" }
                    ))
                })?
            }
        };
        let mut out = Vec::new();
        for m in modules::needed_modules(&dir)? {
            let bytes = std::fs::read(&m.path).map_err(|source| SmokeError::Read { path: m.path.clone(), source })?;
            out.push((m.name, bytes));
        }
        log::info!(
            "modules from {}: {}",
            dir.display(),
            out.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>().join(" ")
        );
        Ok(out)
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
        config.disks = self.disks.clone();
        config.nets = self.nets.clone();
        config.shares = self.shares.iter().map(|s| s.config.clone()).collect();
        if let Some(root) = &self.root {
            config.shares.push(ShareConfig { path: "/".into(), tag: root.tag.clone(), read_only: true });
        }
        // The command's stdout and stderr: to the caller's writers, and
        // kept for the report.
        let (cmd_out, cmd_err) = (SerialCapture::new(), SerialCapture::new());
        if let Some((out, err)) = &self.command_output {
            let tee = |w: &SharedWriter, c: &SerialCapture| -> SharedWriter {
                std::sync::Arc::new(std::sync::Mutex::new(Tee(w.clone(), c.clone(), 0)))
            };
            config.extra_serials =
                vec![SerialConfig::Writer(tee(out, &cmd_out)), SerialConfig::Writer(tee(err, &cmd_err))];
        }
        // Opened before the VM starts: under seccomp this thread opens
        // nothing later.
        let mut console_log = match &self.console_log {
            Some(p) => Some(std::fs::File::create(p).map_err(|source| SmokeError::Read { path: p.clone(), source })?),
            None => None,
        };
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
            if let Some(f) = console_log.as_mut() {
                let _ = f.write_all(&chunk);
            }
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
        if let Some(f) = console_log.as_mut() {
            let _ = f.write_all(&rest);
        }
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
            command_output: (cmd_out.text(), cmd_err.text()),
            kernel: self.kernel.clone(),
        })
    }
}

/// How much of the command's stdout and of its stderr the report keeps.
const KEPT_OUTPUT: usize = 1 << 20;

/// Writes to the caller's writer and keeps a copy of the first
/// [`KEPT_OUTPUT`] bytes.
struct Tee(SharedWriter, SerialCapture, usize);

impl std::io::Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let keep = buf.len().min(KEPT_OUTPUT - self.2);
        self.1.write_all(&buf[..keep])?;
        self.2 += keep;
        let mut w = lock(&self.0);
        w.write_all(buf)?;
        w.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        lock(&self.0).flush()
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

impl Smoke {
    /// Finds a static busybox for the initramfs: `given`, else Debian's
    /// busybox-static; the error says how to get one.
    pub fn find_busybox(given: Option<&Path>) -> Result<PathBuf, SmokeError> {
        initramfs::find_busybox(given)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cmdline() {
        let s = Smoke::new("k").command(["true"]).quiet(true).cmdline("foo=1");
        assert_eq!(s.kernel_cmdline(), "console=ttyS0 reboot=k panic=-1 rdinit=/init quiet loglevel=1 foo=1");
        assert_eq!(Smoke::new("k").kernel_cmdline(), "console=ttyS0 reboot=k panic=-1");
    }
}
