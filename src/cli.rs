//! The command line: flags become a [`VmConfig`], nothing more.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    parse_size, BootProtocol, ConfigError, DiskConfig, NetConfig, SerialConfig, VmConfig, DEFAULT_CMDLINE,
};
use crate::seccomp::SeccompMode;
use crate::{Vm, VmExit};

/// Exit status for a usage error (a bad flag or value).
pub const EXIT_USAGE: u8 = 2;
/// Exit status for a run-time failure.
pub const EXIT_FAILURE: u8 = 1;

/// ember: a small, fast virtual machine monitor on Linux KVM.
#[derive(Parser, Debug)]
#[command(name = "ember", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Boot a kernel and run it until the guest resets, exits or is stopped.
    Run(RunArgs),
    /// Smoke-test a kernel: boot it, run a command in a generated initramfs
    /// and/or wait for console patterns; exit with the result.
    Smoke(SmokeArgs),
}

/// Flags of `ember smoke`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "Exit status: the command's own status in command mode (0 = pass); \
124 timeout; 120 kernel panic/oops; 121 guest crash (triple fault, KVM error); \
122 the VM ended before the command or every expectation finished; 125 ember failed; \
2 bad flags. See docs/ci.md.")]
pub struct SmokeArgs {
    /// Kernel image: ELF vmlinux or bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Guest memory: a number of MiB, or with a suffix (512M, 2G).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = size_arg)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,
    /// Extra kernel command line, appended to ember's
    /// (console=ttyS0 reboot=k panic=-1 [rdinit=/init]).
    #[arg(long, value_name = "EXTRA", default_value = "")]
    pub cmdline: String,
    /// Stop the VM and exit 124 after this long (e.g. 90s, 3m, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = duration_arg)]
    pub timeout: std::time::Duration,
    /// A regular expression that must match a console line, after the
    /// previous --expect matched. Repeatable.
    #[arg(long, value_name = "REGEX")]
    pub expect: Vec<String>,
    /// Write a JUnit XML report here.
    #[arg(long, value_name = "FILE")]
    pub junit: Option<PathBuf>,
    /// Show only the command's output, not the kernel's.
    #[arg(long)]
    pub quiet: bool,
    /// The static busybox for the initramfs (default: Debian's
    /// busybox-static at /bin/busybox).
    #[arg(long, value_name = "PATH")]
    pub busybox: Option<PathBuf>,
    /// A cpio archive appended to ember's initramfs (modules, test files).
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Log level for ember's own messages on stderr.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: log::LevelFilter,
    /// seccomp filters on every ember thread: kill, log or off.
    #[arg(long, value_name = "kill|log|off", default_value = "kill", value_parser = seccomp_arg)]
    pub seccomp: SeccompMode,
    /// The command to run in the guest (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl SmokeArgs {
    /// The smoke test these flags describe.
    pub fn to_smoke(&self) -> crate::Smoke {
        let mut s = crate::Smoke::new(&self.kernel)
            .memory(self.memory)
            .cpus(self.cpus)
            .cmdline(self.cmdline.clone())
            .timeout(self.timeout)
            .quiet(self.quiet)
            .seccomp(self.seccomp)
            .command(self.command.clone());
        for e in &self.expect {
            s = s.expect(e.clone());
        }
        if let Some(b) = &self.busybox {
            s = s.busybox(b);
        }
        if let Some(i) = &self.initrd {
            s = s.initrd(i);
        }
        s
    }
}

/// Flags of `ember run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Kernel image: ELF vmlinux (PVH note or not) or bzImage.
    #[arg(long, value_name = "PATH")]
    pub kernel: PathBuf,
    /// Initrd / initramfs image to load.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Guest memory: a number of MiB, or with a suffix (512M, 2G).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = size_arg)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,
    /// Where COM1 goes: stdio (output to stdout, input from stdin, Ctrl-A x
    /// quits), file=PATH (output only) or none.
    #[arg(long, value_name = "stdio|file=PATH|none", default_value = "stdio", value_parser = serial_arg)]
    pub serial: SerialConfig,
    /// Add a debug-exit device at I/O port 0xf4: a guest's `outb N, 0xf4`
    /// ends ember with exit status N (QEMU's isa-debug-exit gives (N<<1)|1).
    #[arg(long)]
    pub debug_exit: bool,
    /// Boot protocol: auto (PVH when the ELF has a PVH note), linux64 or pvh.
    #[arg(long, value_name = "auto|linux64|pvh", default_value = "auto", value_parser = boot_arg)]
    pub boot: BootProtocol,
    /// A virtio-blk disk: path=IMG[,readonly=on][,id=STRING]. Repeatable;
    /// the first is /dev/vda.
    #[arg(long, value_name = "path=IMG[,readonly=on][,id=ID]", value_parser = disk_arg)]
    pub disk: Vec<DiskConfig>,
    /// A virtio-net NIC on an existing TAP: tap=NAME[,mac=AA:BB:CC:DD:EE:FF].
    /// Repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]", value_parser = net_arg)]
    pub net: Vec<NetConfig>,
    /// Log level for ember's own messages on stderr: off, error, warn, info,
    /// debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: log::LevelFilter,
    /// seccomp filters on every ember thread: kill (a call outside the
    /// allow-list kills ember with SIGSYS), log (the kernel logs it), off.
    #[arg(long, value_name = "kill|log|off", default_value = "kill", value_parser = seccomp_arg)]
    pub seccomp: SeccompMode,
    /// After opening everything, drop to this uid (and gid; default: the
    /// uid), with no supplementary groups and no_new_privs.
    #[arg(long, value_name = "UID[:GID]", value_parser = user_arg)]
    pub user: Option<(u32, u32)>,
    /// Before dropping privileges, chroot into this (preferably empty)
    /// directory. Requires --user.
    #[arg(long, value_name = "DIR", requires = "user")]
    pub chroot: Option<PathBuf>,
}

fn seccomp_arg(s: &str) -> Result<SeccompMode, String> {
    SeccompMode::parse(s).ok_or_else(|| format!("invalid seccomp mode '{s}': expected kill, log or off"))
}
fn user_arg(s: &str) -> Result<(u32, u32), String> {
    crate::jail::parse_user(s).ok_or_else(|| format!("invalid user '{s}': expected a numeric UID or UID:GID"))
}
fn size_arg(s: &str) -> Result<u64, ConfigError> {
    parse_size(s)
}
fn duration_arg(s: &str) -> Result<std::time::Duration, ConfigError> {
    crate::config::parse_duration(s)
}
fn serial_arg(s: &str) -> Result<SerialConfig, ConfigError> {
    SerialConfig::parse(s)
}
fn boot_arg(s: &str) -> Result<BootProtocol, String> {
    BootProtocol::parse(s).ok_or_else(|| format!("invalid boot protocol '{s}': expected auto, linux64 or pvh"))
}
fn disk_arg(s: &str) -> Result<DiskConfig, ConfigError> {
    DiskConfig::parse(s)
}
fn net_arg(s: &str) -> Result<NetConfig, ConfigError> {
    NetConfig::parse(s)
}

impl RunArgs {
    /// The VM configuration these flags describe.
    pub fn to_config(&self) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone(),
            initrd: self.initrd.clone(),
            initrd_bytes: None,
            cmdline: self.cmdline.clone(),
            memory: self.memory,
            vcpus: self.cpus,
            serial: self.serial.clone(),
            debug_exit: self.debug_exit,
            boot: self.boot,
            disks: self.disk.clone(),
            nets: self.net.clone(),
            seccomp: self.seccomp,
            jail: self.user.map(|(uid, gid)| crate::jail::Jail { uid, gid, chroot: self.chroot.clone() }),
        }
    }
}

/// A minimal stderr logger: `ember: <level>: <message>`.
struct StderrLogger;

impl log::Log for StderrLogger {
    fn enabled(&self, m: &log::Metadata) -> bool {
        m.level() <= log::max_level()
    }

    fn log(&self, r: &log::Record) {
        if self.enabled(r.metadata()) {
            // One write per line so lines from threads do not interleave.
            let line = format!("ember: {}: {}\r\n", r.level().as_str().to_ascii_lowercase(), r.args());
            // SAFETY: writes from a valid buffer to fd 2.
            unsafe { libc::write(2, line.as_ptr().cast(), line.len()) };
        }
    }

    fn flush(&self) {}
}

/// Sets up logging at `level`.
pub fn init_logging(level: log::LevelFilter) {
    static LOGGER: StderrLogger = StderrLogger;
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(level);
}

/// Prints an error the way every ember error is printed, and picks the
/// exit status.
pub fn fail(e: &crate::Error) -> ExitCode {
    eprintln!("ember: error: {e}");
    ExitCode::from(if e.is_usage() { EXIT_USAGE } else { EXIT_FAILURE })
}

/// `ember run`.
pub fn run(args: RunArgs) -> ExitCode {
    init_logging(args.log_level);
    crate::terminal::restore_on_fatal_signals();
    let exit = match Vm::new(args.to_config()).and_then(|vm| vm.run()) {
        Ok(x) => x,
        Err(e) => return fail(&e),
    };
    report(&exit);
    ExitCode::from(exit.status() as u8)
}

/// Says how the VM ended: crashes always, clean ends at info level.
pub fn report(exit: &VmExit) {
    if exit.is_crash() {
        eprintln!("ember: guest crashed: {exit}");
    } else {
        log::info!("VM ended: {exit}");
    }
}

/// Parses the process arguments and runs the subcommand.
pub fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let code = e.exit_code();
            let _ = e.print();
            return ExitCode::from(code as u8);
        }
    };
    match cli.command {
        Command::Run(a) => run(a),
        Command::Smoke(a) => smoke(a),
    }
}

/// `ember smoke`.
pub fn smoke(args: SmokeArgs) -> ExitCode {
    use crate::smoke::EXIT_EMBER;
    init_logging(args.log_level);
    // The JUnit file is opened before the VM starts: with seccomp on, this
    // thread cannot open files later.
    let mut junit = match &args.junit {
        Some(j) => match std::fs::File::create(j) {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("ember smoke: error: cannot write {}: {e}", j.display());
                return ExitCode::from(EXIT_EMBER as u8);
            }
        },
        None => None,
    };
    let out: crate::config::SharedWriter = std::sync::Arc::new(std::sync::Mutex::new(std::io::stdout()));
    let report = match args.to_smoke().output(out).run() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("ember smoke: error: {e}");
            return ExitCode::from(EXIT_EMBER as u8);
        }
    };
    if matches!(report.verdict, crate::smoke::Verdict::Timeout) {
        eprintln!("ember smoke: last console lines:");
        for l in report.last_lines(20) {
            eprintln!("  | {l}");
        }
    }
    if let (Some(f), Some(j)) = (junit.as_mut(), &args.junit) {
        use std::io::Write;
        if let Err(e) = f.write_all(report.junit_xml().as_bytes()) {
            eprintln!("ember smoke: error: cannot write {}: {e}", j.display());
            return ExitCode::from(EXIT_EMBER as u8);
        }
    }
    eprintln!("{}", report.summary());
    ExitCode::from(report.exit_status() as u8)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from(["ember", "run", "--kernel", "/k"]).unwrap();
        let Command::Run(a) = cli.command else { panic!() };
        let c = a.to_config();
        assert_eq!(c.memory, 256 << 20);
        assert_eq!(c.vcpus, 1);
        assert_eq!(c.cmdline, "console=ttyS0 reboot=k panic=1");
        assert!(matches!(c.serial, SerialConfig::Stdio));
        assert!(!c.debug_exit);
    }

    #[test]
    fn run_flags() {
        let cli = Cli::try_parse_from([
            "ember",
            "run",
            "--kernel",
            "/k",
            "--memory",
            "2G",
            "--cpus",
            "2",
            "--serial",
            "file=/tmp/s",
            "--debug-exit",
            "--disk",
            "path=/a.img",
            "--disk",
            "path=/b.img,readonly=on",
            "--boot",
            "pvh",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else { panic!() };
        let c = a.to_config();
        assert_eq!((c.memory, c.vcpus, c.debug_exit, c.boot), (2 << 30, 2, true, BootProtocol::Pvh));
        assert_eq!(c.disks.len(), 2);
        assert!(c.disks[1].read_only);
    }

    #[test]
    fn smoke_flags() {
        let cli = Cli::try_parse_from([
            "ember",
            "smoke",
            "--kernel",
            "/k",
            "--timeout",
            "90s",
            "--expect",
            "a",
            "--expect",
            "b",
            "--quiet",
            "--",
            "sh",
            "-c",
            "exit 7",
        ])
        .unwrap();
        let Command::Smoke(a) = cli.command else { panic!() };
        assert_eq!(a.timeout, std::time::Duration::from_secs(90));
        assert_eq!(a.expect, ["a", "b"]);
        assert_eq!(a.command, ["sh", "-c", "exit 7"]);
        assert!(a.quiet);
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            vec!["ember", "run", "--kernel", "/k", "--memory", "12Q"],
            vec!["ember", "run", "--kernel", "/k", "--cpus", "0"],
            vec!["ember", "run", "--kernel", "/k", "--serial", "tcp"],
            vec!["ember", "run", "--kernel", "/k", "--frobnicate"],
            vec!["ember", "run"],
            vec!["ember", "smoke", "--kernel", "/k", "--timeout", "soon"],
            vec!["ember", "smoke"],
        ] {
            let e = Cli::try_parse_from(&args).unwrap_err();
            assert_eq!(e.exit_code(), 2, "{args:?}");
        }
    }
}
