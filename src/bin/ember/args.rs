//! The command line's flags (clap): they become a [`VmConfig`] or a
//! [`Smoke`], nothing more.
//!
//! The fuzz crate's `cli_parsers` target compiles this file too (by path),
//! with [`crate::parse`] beside it.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use ember::{
    BootProtocol, DiskConfig, Jail, Modules, NetConfig, RootPlan, SeccompMode, SerialConfig, Smoke, SmokeShare,
    VirtioTransport, VmConfig,
};

use crate::parse::{
    parse_backing, parse_boot, parse_disk, parse_duration, parse_env, parse_modules, parse_net, parse_run_share,
    parse_seccomp, parse_serial, parse_share, parse_size, parse_transport, parse_user, ShareSpec,
};

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
    /// Serve Firecracker's API on a Unix socket: configure, start, pause,
    /// resume and stop one VM through it (docs/api-socket.md).
    Serve(ServeArgs),
    /// Restore a VM from a snapshot (taken through `ember serve`'s
    /// PUT /snapshot/create) and run it until it ends, as `ember run`
    /// (docs/snapshot.md).
    Restore(RestoreArgs),
}

/// Flags of `ember restore`.
#[derive(Args, Debug, Clone)]
pub struct RestoreArgs {
    /// The snapshot's state file.
    #[arg(long, value_name = "PATH")]
    pub snapshot: PathBuf,
    /// The snapshot's memory file.
    #[arg(long, value_name = "PATH")]
    pub mem_file: PathBuf,
    /// How guest RAM is backed: lazy (mapped from the memory file, pages
    /// load when touched) or copy (read in before the VM starts).
    #[arg(long, value_name = "lazy|copy", default_value = "lazy", value_parser = parse_backing)]
    pub memory_backing: ember::snapshot::MemoryBacking,
    /// Where COM1 goes: stdio, file=PATH or none.
    #[arg(long, value_name = "stdio|file=PATH|none", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialConfig,
    /// Log level for ember's own messages on stderr.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: log::LevelFilter,
    /// seccomp and the privilege drop.
    #[command(flatten)]
    pub hardening: Hardening,
}

impl RestoreArgs {
    /// The library's restore configuration for these flags.
    pub fn to_restore_config(&self) -> ember::snapshot::RestoreConfig {
        let files = ember::snapshot::SnapshotFiles { state: self.snapshot.clone(), memory: self.mem_file.clone() };
        let mut rc = ember::snapshot::RestoreConfig::new(files);
        rc.backing = self.memory_backing;
        rc.serial = self.serial.clone();
        rc.seccomp = self.hardening.seccomp;
        rc.jail = self.hardening.jail();
        rc.drop_code_pages = true;
        rc
    }
}

/// Flags of `ember serve`.
#[derive(Args, Debug, Clone)]
#[command(after_help = "SIGTERM or SIGINT: Ctrl+Alt+Del to a running guest, then a stop after \
--shutdown-timeout. Exit status: the VM's (as ember run), 0 when stopped before InstanceStart.")]
pub struct ServeArgs {
    /// The API socket to create (it must not exist), mode 0600.
    #[arg(long, value_name = "PATH")]
    pub api_sock: PathBuf,
    /// The instance id `GET /` reports.
    #[arg(long, value_name = "ID", default_value = ember::api::DEFAULT_INSTANCE_ID)]
    pub id: String,
    /// Start the VM at once from this Firecracker JSON config file; the
    /// API then serves the running VM.
    #[arg(long, value_name = "FILE")]
    pub config_file: Option<PathBuf>,
    /// How long a guest has to shut down after Ctrl+Alt+Del on SIGTERM
    /// before it is stopped (e.g. 5s, 500ms; 0 stops at once).
    #[arg(long, value_name = "DURATION", default_value = "5s", value_parser = parse_duration)]
    pub shutdown_timeout: std::time::Duration,
    /// Log level for ember's own messages on stderr (PUT /logger can
    /// change it before start).
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: log::LevelFilter,
    /// Append ember's messages to this file or FIFO instead of stderr (as
    /// Firecracker's --log-path; PUT /logger can set it too).
    #[arg(long, value_name = "PATH")]
    pub log_path: Option<PathBuf>,
    /// seccomp filters on every ember thread, the API's included: kill,
    /// log or off.
    #[arg(long, value_name = "kill|log|off", default_value = "kill", value_parser = parse_seccomp)]
    pub seccomp: SeccompMode,
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
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,
    /// Extra kernel command line, appended to ember's
    /// (console=ttyS0 reboot=k panic=-1 [rdinit=/init]).
    #[arg(long, value_name = "EXTRA", default_value = "")]
    pub cmdline: String,
    /// Stop the VM and exit 124 after this long (e.g. 90s, 3m, 500ms).
    #[arg(long, value_name = "DURATION", default_value = "60s", value_parser = parse_duration)]
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
    #[arg(long, value_name = "kill|log|off", default_value = "kill", value_parser = parse_seccomp)]
    pub seccomp: SeccompMode,
    /// A virtio-blk disk (as for `ember run`). Repeatable.
    #[arg(long, value_name = "path=FILE[,ro]", value_parser = parse_disk)]
    pub disk: Vec<DiskConfig>,
    /// A virtio-net NIC on a TAP device (as for `ember run`). Repeatable.
    #[arg(long, value_name = "tap=NAME[,mac=MAC]", value_parser = parse_net)]
    pub net: Vec<NetConfig>,
    /// A host directory shared over virtio-9p and mounted before the
    /// command runs: at GUEST_PATH (absolute), else at /mnt/TAG (TAG
    /// default share0, share1, ...). Read-write unless `,ro`; on virtio-pci
    /// unless `,transport=mmio`. Repeatable.
    #[arg(long, value_name = "HOST_DIR[:GUEST_PATH|:TAG][,ro|,rw][,transport=pci|mmio]", value_parser = parse_share)]
    pub share: Vec<ShareSpec>,
    /// Run the command in the host's own root file system (shared read-only
    /// over virtio-9p, a tmpfs overlay on top), in the current directory,
    /// with PATH, HOME, TERM, USER, LOGNAME, LANG and the uid/gid of the
    /// caller (see --cwd, --env, --user). The busybox initramfs only
    /// mounts it and loads modules.
    #[arg(long)]
    pub root_share: bool,
    /// With --root-share: the root share's virtio transport (mmio for a
    /// kernel without PCI).
    #[arg(long, value_name = "pci|mmio", default_value = "pci", requires = "root_share", value_parser = parse_transport)]
    pub root_transport: VirtioTransport,
    /// With --root-share: the command's directory (default: the current one).
    #[arg(long, value_name = "DIR", requires = "root_share")]
    pub cwd: Option<String>,
    /// With --root-share: sets (or with `NAME=` empties) a variable of the
    /// command's environment. Repeatable.
    #[arg(long, value_name = "NAME=VALUE", requires = "root_share", value_parser = parse_env)]
    pub env: Vec<(String, String)>,
    /// With --root-share: the command's user and group (default: the
    /// caller's).
    #[arg(long, value_name = "UID[:GID]", requires = "root_share", value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// Kernel modules for the initramfs, loaded before anything is mounted
    /// (virtio transport, blk, net, 9p, overlay and their dependencies from
    /// modules.dep): a module tree, `auto` (/lib/modules/RELEASE when the
    /// kernel image's release is there) or `none`.
    #[arg(long, value_name = "DIR|auto|none", default_value = "auto", value_parser = parse_modules)]
    pub modules: Modules,
    /// Write the kernel's console here instead of stdout (the command's
    /// stdout and stderr stay on ember's).
    #[arg(long, value_name = "FILE")]
    pub console_log: Option<PathBuf>,
    /// The command to run in the guest (after `--`).
    #[arg(last = true, value_name = "COMMAND")]
    pub command: Vec<String>,
}

impl SmokeArgs {
    /// The smoke test these flags describe.
    pub fn to_smoke(&self) -> Smoke {
        let mut s = Smoke::new(&self.kernel)
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
        for d in &self.disk {
            s = s.disk(d.clone());
        }
        for n in &self.net {
            s = s.net(n.clone());
        }
        for (i, sh) in self.share.iter().enumerate() {
            s = s.share(SmokeShare { config: sh.to_config(i), guest_path: sh.guest_path.clone() });
        }
        s = s.modules(self.modules.clone()).root_share_transport(self.root_transport);
        if let Some(p) = &self.console_log {
            s = s.console_log(p);
        }
        s
    }

    /// The root-share plan: the caller's, with --cwd, --env and --user.
    pub fn root_plan(&self) -> std::io::Result<Option<RootPlan>> {
        if !self.root_share {
            return Ok(None);
        }
        let mut plan = RootPlan::of_caller()?;
        if let Some(c) = &self.cwd {
            plan.cwd = c.clone();
        }
        for (k, v) in &self.env {
            plan.env.retain(|(name, _)| name != k);
            if !v.is_empty() {
                plan.env.push((k.clone(), v.clone()));
            }
        }
        if let Some((uid, gid)) = self.user {
            (plan.uid, plan.gid) = (uid, gid);
        }
        Ok(Some(plan))
    }
}

/// Flags of `ember run`.
#[derive(Args, Debug, Clone)]
pub struct RunArgs {
    /// Kernel image: ELF vmlinux (PVH note or not) or bzImage.
    #[arg(long, value_name = "PATH", required_unless_present = "config_file")]
    pub kernel: Option<PathBuf>,
    /// The VM from a Firecracker JSON config file (boot-source, drives,
    /// machine-config with ember's own fields under "ember",
    /// network-interfaces, logger) instead of the flags that describe it.
    #[arg(long, value_name = "FILE", conflicts_with_all = [
        "kernel", "initrd", "cmdline", "memory", "cpus", "serial", "debug_exit", "boot", "disk", "net",
    ])]
    pub config_file: Option<PathBuf>,
    /// Initrd / initramfs image to load.
    #[arg(long, value_name = "PATH")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long, value_name = "STR", default_value = VmConfig::DEFAULT_CMDLINE)]
    pub cmdline: String,
    /// Guest memory: a number of MiB, or with a suffix (512M, 2G).
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_size)]
    pub memory: u64,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u8).range(1..=254))]
    pub cpus: u8,
    /// Where COM1 goes: stdio (output to stdout, input from stdin, Ctrl-A x
    /// quits), file=PATH (output only) or none.
    #[arg(long, value_name = "stdio|file=PATH|none", default_value = "stdio", value_parser = parse_serial)]
    pub serial: SerialConfig,
    /// Add a debug-exit device at I/O port 0xf4: a guest's `outb N, 0xf4`
    /// ends ember with exit status N (QEMU's isa-debug-exit gives (N<<1)|1).
    #[arg(long)]
    pub debug_exit: bool,
    /// Boot protocol: auto (PVH when the ELF has a PVH note), linux64 or pvh.
    #[arg(long, value_name = "auto|linux64|pvh", default_value = "auto", value_parser = parse_boot)]
    pub boot: BootProtocol,
    /// A virtio-blk disk: path=IMG[,readonly=on][,id=STRING][,transport=pci|mmio].
    /// Repeatable; the first is /dev/vda. transport defaults to pci.
    #[arg(long, value_name = "path=IMG[,readonly=on][,id=ID][,transport=pci|mmio]", value_parser = parse_disk)]
    pub disk: Vec<DiskConfig>,
    /// A virtio-net NIC on an existing TAP:
    /// tap=NAME[,mac=AA:BB:CC:DD:EE:FF][,transport=pci|mmio]. Repeatable;
    /// transport defaults to pci.
    #[arg(long, value_name = "tap=NAME[,mac=MAC][,transport=pci|mmio]", value_parser = parse_net)]
    pub net: Vec<NetConfig>,
    /// Do not append `virtio_mmio.device=` for each device to the command
    /// line: a kernel with ACPI finds the devices in the DSDT.
    #[arg(long)]
    pub no_virtio_mmio_cmdline: bool,
    /// A host directory shared over virtio-9p, read-write unless `,ro`; the
    /// guest mounts it by its tag (default share0, share1, ...):
    /// `mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt`. On
    /// virtio-pci unless `,transport=mmio`. Repeatable.
    #[arg(long, value_name = "HOST_DIR[:TAG][,ro|,rw][,transport=pci|mmio]", value_parser = parse_run_share)]
    pub share: Vec<ShareSpec>,
    /// Log level for ember's own messages on stderr: off, error, warn, info,
    /// debug or trace.
    #[arg(long, value_name = "LEVEL", default_value = "warn")]
    pub log_level: log::LevelFilter,
    /// seccomp and the privilege drop.
    #[command(flatten)]
    pub hardening: Hardening,
}

/// The hardening flags of `ember run` and `ember restore`.
#[derive(Args, Debug, Clone)]
pub struct Hardening {
    /// seccomp filters on every ember thread: kill (a call outside the
    /// allow-list kills ember with SIGSYS), log (the kernel logs it), off.
    #[arg(long, value_name = "kill|log|off", default_value = "kill", value_parser = parse_seccomp)]
    pub seccomp: SeccompMode,
    /// After opening everything, drop to this uid (and gid; default: the
    /// uid), with no supplementary groups and no_new_privs.
    #[arg(long, value_name = "UID[:GID]", value_parser = parse_user)]
    pub user: Option<(u32, u32)>,
    /// Before dropping privileges, chroot into this (preferably empty)
    /// directory. Requires --user.
    #[arg(long, value_name = "DIR", requires = "user")]
    pub chroot: Option<PathBuf>,
}

impl Hardening {
    /// The privilege drop these flags ask for.
    pub fn jail(&self) -> Option<Jail> {
        self.user.map(|(uid, gid)| Jail { uid, gid, chroot: self.chroot.clone() })
    }
}

impl RunArgs {
    /// Applies the flags a config file cannot express (seccomp, the jail,
    /// --no-virtio-mmio-cmdline) to a configuration read from one.
    pub fn apply_host_flags(&self, config: &mut VmConfig) {
        config.seccomp = self.hardening.seccomp;
        config.virtio_mmio_cmdline = !self.no_virtio_mmio_cmdline;
        config.jail = self.hardening.jail();
        config.drop_code_pages = true;
    }

    /// The VM configuration these flags describe (without --config-file).
    pub fn to_config(&self) -> VmConfig {
        VmConfig {
            kernel: self.kernel.clone().unwrap_or_default(),
            initrd: self.initrd.clone(),
            initrd_bytes: None,
            cmdline: self.cmdline.clone(),
            memory: self.memory,
            vcpus: self.cpus,
            serial: self.serial.clone(),
            extra_serials: Vec::new(),
            debug_exit: self.debug_exit,
            boot: self.boot,
            disks: self.disk.clone(),
            nets: self.net.clone(),
            virtio_mmio_cmdline: !self.no_virtio_mmio_cmdline,
            shares: self.share.iter().enumerate().map(|(i, s)| s.to_config(i)).collect(),
            seccomp: self.hardening.seccomp,
            jail: self.hardening.jail(),
            drop_code_pages: true,
        }
    }
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
        assert!(c.virtio_mmio_cmdline);
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
            "--no-virtio-mmio-cmdline",
        ])
        .unwrap();
        let Command::Run(a) = cli.command else { panic!() };
        let c = a.to_config();
        assert_eq!((c.memory, c.vcpus, c.debug_exit, c.boot), (2 << 30, 2, true, BootProtocol::Pvh));
        assert!(!c.virtio_mmio_cmdline);
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
