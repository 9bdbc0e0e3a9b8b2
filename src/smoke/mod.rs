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

use crate::config::{DiskConfig, NetConfig, SerialConfig, ShareConfig, SharedWriter, VirtioTransport, VmConfig};
use crate::cpio::CpioError;
use crate::error::Error;
use crate::seccomp::SeccompMode;
use crate::serial_capture::SerialCapture;
use crate::sync::lock;
use crate::vm::Vm;
#[cfg(feature = "fuzzing")]
pub use initramfs::build_initramfs;
#[cfg(feature = "fuzzing")]
pub use initramfs::init_script;
pub use initramfs::RootPlan;
use initramfs::{applets, build_archive, init_script_for, modules_archive, GuestMount, InitPlan};
pub use report::{Expectation, SmokeReport, Verdict};

mod initramfs;
mod modules;
mod report;

/// The console markers `/init` prints around the command: this, the run's
/// nonce, `===`.
const BEGIN_MARKER: &str = "===EMBER-SMOKE-BEGIN-";
/// Followed by the run's nonce, `=`, the decimal exit status and `===`.
const EXIT_MARKER: &str = "===EMBER-SMOKE-EXIT-";
/// Where the archive holds the nonce for `/init` (which deletes it).
const NONCE_FILE: &str = ".ember-nonce";
/// The console output a smoke test keeps (the last this many bytes; the
/// capture holds at most twice that).
const CONSOLE_KEEP: usize = 8 << 20;
/// The longest console line scanned for markers and patterns; the rest of
/// a longer line is cut.
const MAX_LINE: usize = 64 << 10;

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
    root_transport: VirtioTransport,
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
            root_transport: VirtioTransport::default(),
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
    /// The root share's transport (default [`VirtioTransport::Pci`]; a
    /// kernel without PCI but with `VIRTIO_MMIO_CMDLINE_DEVICES` needs
    /// [`VirtioTransport::Mmio`]).
    pub fn root_share_transport(mut self, transport: VirtioTransport) -> Self {
        self.root_transport = transport;
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
        self.initramfs_with(&Nonce::new())
    }

    fn initramfs_with(&self, nonce: &Nonce) -> Result<Option<Vec<u8>>, SmokeError> {
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
        let mut archive = build_archive(&bb, &applets(), &init_script_for(&plan), Some(&nonce.0))?;
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
        let nonce = Nonce::new();
        config.initrd_bytes = self.initramfs_with(&nonce)?.map(std::sync::Arc::new);
        config.seccomp = self.seccomp;
        config.disks = self.disks.clone();
        config.nets = self.nets.clone();
        config.shares = self.shares.iter().map(|s| s.config.clone()).collect();
        if let Some(root) = &self.root {
            config.shares.push(ShareConfig {
                path: "/".into(),
                tag: root.tag.clone(),
                read_only: true,
                transport: self.root_transport,
            });
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
        let console = SerialCapture::with_limit(CONSOLE_KEEP);
        config.serial = SerialConfig::Capture(console.clone());
        let vm = Vm::new(config)?;
        let start = Instant::now();
        let running = vm.start()?;
        let handle = running.handle();
        let (begin, exit_marker) = nonce.markers();
        let mut out =
            Streamer { out: self.output.clone(), quiet: self.quiet, inside: false, begin, exit: exit_marker.clone() };

        let mut expectations: Vec<Expectation> =
            self.expect.iter().map(|p| Expectation { pattern: p.clone(), matched_after: None }).collect();
        let mut next = 0;
        let mut seen = 0usize;
        let mut splitter = LineSplitter::default();
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
            let (chunk, end, closed) = console.wait_next(seen, if ended { Duration::ZERO } else { wait });
            let closed = closed || ended;
            seen = end;
            out.raw(&chunk);
            if let Some(f) = console_log.as_mut() {
                let _ = f.write_all(&chunk);
            }
            let mut lines = splitter.push(&chunk);
            if closed {
                lines.extend(splitter.finish());
            }
            for line in &lines {
                out.line(line);
                while next < patterns.len() && patterns[next].is_match(line) {
                    expectations[next].matched_after = Some(start.elapsed());
                    next += 1;
                }
                if panic_line.is_none() && PANIC_PATTERNS.iter().any(|p| line.contains(p)) {
                    panic_line = Some(report::printable(line.trim()));
                    // Keep reading briefly: the trace follows the panic line.
                    panic_grace = Some(Instant::now() + Duration::from_millis(500));
                }
                if command_mode && command_status.is_none() {
                    command_status = exit_status_in(line, &exit_marker);
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
        let (rest, _, _) = console.wait_next(seen, Duration::ZERO);
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

/// A per-run secret the exit marker carries, so that the command's own
/// output cannot fake it: 128 random bits, in hex.
struct Nonce(String);

impl Nonce {
    fn new() -> Self {
        let mut b = [0u8; 16];
        let mut got = 0;
        while got < b.len() {
            // SAFETY: getrandom writes at most `len - got` bytes into the
            // rest of the buffer it is given.
            let n = unsafe { libc::getrandom(b[got..].as_mut_ptr().cast(), b.len() - got, 0) };
            if n > 0 {
                got += n as usize;
            } else if std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                // No getrandom (Linux < 3.17): the clock and the pid, not
                // secret but different per run.
                let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
                b = (t.as_nanos() ^ (u128::from(std::process::id()) << 64)).to_le_bytes();
                break;
            }
        }
        Nonce(b.iter().map(|x| format!("{x:02x}")).collect())
    }

    /// The begin marker and the exit marker up to the status.
    fn markers(&self) -> (String, String) {
        (format!("{BEGIN_MARKER}{}===", self.0), format!("{EXIT_MARKER}{}=", self.0))
    }
}

/// The exit status in a console line holding `marker` (the exit marker
/// with the run's nonce): `<marker><decimal status>===`; `None` for
/// anything else.
fn exit_status_in(line: &str, marker: &str) -> Option<i32> {
    let rest = &line[line.find(marker)? + marker.len()..];
    let digits = rest.strip_suffix("===").or_else(|| rest.split_once("===").map(|(d, _)| d))?;
    if digits.is_empty() || digits.len() > 3 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<i32>().ok().filter(|n| (0..=255).contains(n))
}

/// Splits the console stream into lines, scanning each byte once; a line
/// longer than [`MAX_LINE`] is cut there (the rest of it is skipped), so
/// neither memory nor work grows with a guest that never prints a newline.
#[derive(Default)]
struct LineSplitter {
    pending: Vec<u8>,
    /// The current line passed `MAX_LINE`: skip to its end.
    cut: bool,
}

impl LineSplitter {
    /// The lines `chunk` completes.
    fn push(&mut self, chunk: &[u8]) -> Vec<String> {
        let mut lines = Vec::new();
        let mut rest = chunk;
        while !rest.is_empty() {
            let (part, done) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], Some(i + 1)),
                None => (rest, None),
            };
            if !self.cut {
                let room = MAX_LINE - self.pending.len();
                self.pending.extend_from_slice(&part[..part.len().min(room)]);
                if part.len() > room {
                    self.cut = true;
                }
            }
            match done {
                Some(n) => {
                    lines.push(self.take_line());
                    rest = &rest[n..];
                }
                None => rest = &[],
            }
        }
        lines
    }

    /// The unterminated last line, if any.
    fn finish(&mut self) -> Option<String> {
        (!self.pending.is_empty() || self.cut).then(|| self.take_line())
    }

    fn take_line(&mut self) -> String {
        self.cut = false;
        let l = String::from_utf8_lossy(&self.pending).trim_end_matches(['\r', '\n']).to_string();
        self.pending.clear();
        l
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
    /// The run's begin marker.
    begin: String,
    /// The run's exit marker (up to the status).
    exit: String,
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
        if line.contains(&self.begin) {
            self.inside = true;
            return;
        }
        if line.contains(&self.exit) {
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

    /// Finding 5 of issue 16: the command printed the exit marker itself
    /// and ember took its word. Only the run's nonce'd marker counts now,
    /// and only with a status a shell can report.
    #[test]
    fn only_the_runs_exit_marker_counts() {
        let (a, b) = (Nonce::new(), Nonce::new());
        assert_ne!(a.0, b.0);
        assert_eq!(a.0.len(), 32);
        let (_, m) = a.markers();
        assert_eq!(exit_status_in(&format!("{m}0==="), &m), Some(0));
        assert_eq!(exit_status_in(&format!("[   1.0] x {m}17===\r"), &m), Some(17));
        // What a command could print: the old marker, another nonce, or
        // the marker's prefix with a guessed-at nonce.
        for forged in
            ["===EMBER-SMOKE-EXIT=0===".to_string(), format!("{}0===", b.markers().1), format!("{EXIT_MARKER}=0===")]
        {
            assert_eq!(exit_status_in(&forged, &m), None, "{forged}");
        }
        for bad in ["256", "-1", "", "0x0", "1e2", " 0", "0000"] {
            assert_eq!(exit_status_in(&format!("{m}{bad}==="), &m), None, "{bad:?}");
        }
    }

    /// Issue 16 item 4: a guest that never prints a newline neither grows
    /// the line buffer nor makes the scan quadratic; lines stay whole up to
    /// the cap.
    #[test]
    fn console_lines_are_capped_and_scanned_once() {
        let mut s = LineSplitter::default();
        let chunk = vec![b'x'; 4096];
        for _ in 0..4096 {
            assert!(s.push(&chunk).is_empty());
            assert!(s.pending.len() <= MAX_LINE);
        }
        let lines = s.push(b"\nnext\r\npartial");
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[0].len(), MAX_LINE);
        assert_eq!(lines[1], "next");
        assert_eq!(s.finish().as_deref(), Some("partial"));
        assert_eq!(s.finish(), None);
        assert_eq!(s.push(b"a\nb\n\nc"), ["a", "b", ""]);
    }
}
