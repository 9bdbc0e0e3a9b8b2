//! The VM's configuration: plain structs, validated once before anything is
//! built. The CLI only turns flags into these; a library user builds the same.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use crate::jail::Jail;
use crate::layout;
use crate::seccomp::SeccompMode;
use crate::serial_capture::SerialCapture;

/// A configuration error: which value is wrong, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// Guest memory out of range or not page-aligned.
    #[error("invalid memory size {0} bytes: must be a multiple of 4 KiB between 2 MiB and 1 TiB")]
    BadMemory(u64),
    /// vCPU count out of range.
    #[error("invalid vCPU count {0}: must be between 1 and {1}")]
    BadVcpus(u64, u64),
    /// The kernel command line has a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// Too many devices for the IRQ/MMIO window.
    #[error("too many virtio devices ({0}); at most {1} fit")]
    TooManyDevices(usize, usize),
    /// `--user` given to an ember that does not run as root: there is
    /// nothing to drop (and setresuid would fail late).
    #[error("--user needs ember to start as root (it runs as uid {0}, with no privileges to drop)")]
    UserWithoutRoot(u32),
    /// `--user` names root: it would drop nothing. Leave `--user` out to
    /// run as root.
    #[error("--user {0} drops no privileges (uid 0 is root); give an unprivileged uid, or leave --user out")]
    UserDropsNothing(u32),
    /// The jail's chroot directory does not exist.
    #[error("chroot directory {} does not exist or is not a directory", .0.display())]
    BadChroot(PathBuf),
}

/// A `Write` shared between the caller and the VM.
pub type SharedWriter = Arc<Mutex<dyn Write + Send>>;

/// Where the guest's COM1 output goes (and whether input comes from stdin).
#[derive(Clone, Default)]
pub enum SerialConfig {
    /// Output to stdout, input from stdin (raw mode when it is a terminal).
    #[default]
    Stdio,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Output into a [`SerialCapture`] buffer a test can wait on; no input.
    Capture(SerialCapture),
    /// Output into any writer; no input.
    Writer(SharedWriter),
    /// Output discarded; no input.
    None,
}

impl fmt::Debug for SerialConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SerialConfig::Stdio => write!(f, "Stdio"),
            SerialConfig::File(p) => write!(f, "File({})", p.display()),
            SerialConfig::Capture(_) => write!(f, "Capture"),
            SerialConfig::Writer(_) => write!(f, "Writer"),
            SerialConfig::None => write!(f, "None"),
        }
    }
}

/// Which boot protocol to enter the kernel with.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH if the image has a PVH note, else the Linux 64-bit boot protocol.
    #[default]
    Auto,
    /// The Linux 64-bit boot protocol (zero page, long mode).
    Linux64,
    /// The PVH boot protocol (`hvm_start_info`, 32-bit protected mode).
    Pvh,
}

/// One virtio-blk disk.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskConfig {
    /// The raw image file.
    pub path: PathBuf,
    /// Open read-only and advertise VIRTIO_BLK_F_RO.
    pub read_only: bool,
    /// The serial the guest reads with GET_ID (at most 20 bytes).
    pub id: Option<String>,
}

/// One virtio-net NIC on a TAP device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of an existing TAP interface.
    pub tap: String,
    /// The guest MAC; a locally administered one is generated when absent.
    pub mac: Option<[u8; 6]>,
}

/// Everything needed to build a VM.
#[derive(Clone, Debug)]
pub struct VmConfig {
    /// The kernel image: ELF vmlinux (with or without a PVH note) or bzImage.
    pub kernel: PathBuf,
    /// An initrd / initramfs to load.
    pub initrd: Option<PathBuf>,
    /// Extra initrd bytes appended after `initrd` (or used alone): e.g. a
    /// cpio archive built in memory.
    pub initrd_bytes: Option<Arc<Vec<u8>>>,
    /// The kernel command line (ember appends its device entries).
    pub cmdline: String,
    /// Guest RAM in bytes.
    pub memory: u64,
    /// Number of vCPUs.
    pub vcpus: u8,
    /// COM1.
    pub serial: SerialConfig,
    /// Enable the debug-exit device at I/O port 0xf4.
    pub debug_exit: bool,
    /// The boot protocol.
    pub boot: BootProtocol,
    /// virtio-blk disks, in `/dev/vda`, `/dev/vdb`… order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs.
    pub nets: Vec<NetConfig>,
    /// Append `virtio_mmio.device=` for each virtio-mmio device to the
    /// command line (default): how a kernel without ACPI finds them. A
    /// kernel with ACPI finds them in the DSDT; turn this off for one that
    /// also has `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` (it would probe each
    /// device twice) or to prove discovery through ACPI.
    pub virtio_mmio_cmdline: bool,
    /// seccomp filters on ember's threads (the CLI's default is `Kill`; the
    /// library's is `Off`: with a filter, the thread that calls
    /// [`Vm::start`](crate::Vm::start) is filtered too).
    pub seccomp: SeccompMode,
    /// Drop privileges (and optionally chroot) once everything is open.
    pub jail: Option<Jail>,
}

impl VmConfig {
    /// The kernel command line when none is given.
    pub const DEFAULT_CMDLINE: &'static str = "console=ttyS0 reboot=k panic=1";
    /// Guest memory when none is given: 256 MiB.
    pub const DEFAULT_MEMORY: u64 = 256 << 20;
    /// The smallest guest memory ember accepts: 2 MiB.
    pub const MIN_MEMORY: u64 = 2 << 20;
    /// The largest guest memory ember accepts: 1 TiB.
    pub const MAX_MEMORY: u64 = 1 << 40;
    /// The most vCPUs ember can describe (APIC IDs 0..=253 in the MP table).
    pub const MAX_VCPUS: u8 = 254;

    /// A configuration with the defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            initrd_bytes: None,
            cmdline: Self::DEFAULT_CMDLINE.to_string(),
            memory: Self::DEFAULT_MEMORY,
            vcpus: 1,
            serial: SerialConfig::Stdio,
            debug_exit: false,
            boot: BootProtocol::Auto,
            disks: Vec::new(),
            nets: Vec::new(),
            virtio_mmio_cmdline: true,
            seccomp: SeccompMode::Off,
            jail: None,
        }
    }

    /// Checks the values that can be checked without touching the host.
    /// (Files and KVM limits are checked when the VM is built.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory < Self::MIN_MEMORY || self.memory > Self::MAX_MEMORY || self.memory % 4096 != 0 {
            return Err(ConfigError::BadMemory(self.memory));
        }
        if self.vcpus == 0 || self.vcpus > Self::MAX_VCPUS {
            return Err(ConfigError::BadVcpus(self.vcpus as u64, Self::MAX_VCPUS as u64));
        }
        if self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        if let Some(j) = &self.jail {
            // SAFETY: geteuid has no preconditions.
            let euid = unsafe { libc::geteuid() };
            if euid != 0 {
                return Err(ConfigError::UserWithoutRoot(euid));
            }
            if j.uid == 0 {
                return Err(ConfigError::UserDropsNothing(j.uid));
            }
        }
        if let Some(dir) = self.jail.as_ref().and_then(|j| j.chroot.as_ref()) {
            if !dir.is_dir() {
                return Err(ConfigError::BadChroot(dir.clone()));
            }
        }
        let devices = self.disks.len() + self.nets.len();
        let max = layout::max_virtio_devices();
        if devices > max {
            return Err(ConfigError::TooManyDevices(devices, max));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation() {
        let mut c = VmConfig::new("/k");
        assert!(c.validate().is_ok());
        c.memory = 1 << 20;
        assert_eq!(c.validate(), Err(ConfigError::BadMemory(1 << 20)));
        c.memory = (64 << 20) + 1;
        assert!(c.validate().is_err());
        c.memory = 64 << 20;
        c.vcpus = 0;
        assert_eq!(c.validate(), Err(ConfigError::BadVcpus(0, 254)));
        c.vcpus = 2;
        c.cmdline = "a\0b".into();
        assert_eq!(c.validate(), Err(ConfigError::CmdlineNul));
    }
}
