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
    /// Too many devices on one transport (virtio-mmio: one IOAPIC pin
    /// each; virtio-pci: one device number of PCI bus 0 each).
    #[error("too many virtio devices with transport={transport} ({count}); at most {max} fit")]
    TooManyDevices {
        /// The transport.
        transport: VirtioTransport,
        /// Devices configured on it.
        count: usize,
        /// How many fit.
        max: usize,
    },
    /// More extra UARTs than COM2 to COM4.
    #[error("too many extra serial ports ({0}); at most 3 (COM2 to COM4)")]
    TooManySerials(usize),
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
    /// A shared directory's mount tag is empty, longer than 255 bytes or
    /// holds a NUL byte.
    #[error("invalid mount tag {tag:?} for shared directory {}: a tag is 1 to 255 bytes without NUL", path.display())]
    BadShareTag {
        /// The tag.
        tag: String,
        /// The shared directory.
        path: PathBuf,
    },
    /// Two shared directories have the same mount tag.
    #[error("mount tag {tag:?} is used twice (shared directories {} and {}); give each share its own tag", first.display(), second.display())]
    DuplicateShareTag {
        /// The tag.
        tag: String,
        /// The first directory with it.
        first: PathBuf,
        /// The second one.
        second: PathBuf,
    },
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

/// How a virtio device is attached to the guest.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum VirtioTransport {
    /// A virtio-pci (modern, MSI-X) function on PCI bus 0: found by every
    /// kernel with `CONFIG_VIRTIO_PCI` (x86_64 defconfig,
    /// `kvm_guest.config`, distribution kernels), which is why it is the
    /// default. The driver must use MSI-X (Linux's does).
    #[default]
    Pci,
    /// A virtio-mmio window, announced with `virtio_mmio.device=` on the
    /// kernel command line: for kernels built with
    /// `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` (a smaller kernel, no PCI).
    Mmio,
}

impl VirtioTransport {
    /// The name used in `transport=` options: `pci` or `mmio`.
    pub fn name(self) -> &'static str {
        match self {
            VirtioTransport::Pci => "pci",
            VirtioTransport::Mmio => "mmio",
        }
    }

    /// The transport named `name` (`pci`, `mmio`).
    pub fn from_name(name: &str) -> Option<Self> {
        match name {
            "pci" => Some(VirtioTransport::Pci),
            "mmio" => Some(VirtioTransport::Mmio),
            _ => None,
        }
    }

    /// How many devices fit on this transport: one IOAPIC pin each for
    /// virtio-mmio, one device number of PCI bus 0 each (00:01 to 00:1f)
    /// for virtio-pci.
    pub fn max_devices(self) -> usize {
        match self {
            VirtioTransport::Pci => layout::max_pci_devices(),
            VirtioTransport::Mmio => layout::max_virtio_devices(),
        }
    }
}

impl fmt::Display for VirtioTransport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
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
    /// How the disk is attached.
    pub transport: VirtioTransport,
}

impl DiskConfig {
    /// A writable disk on `path` with the default transport and no id.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        DiskConfig { path: path.into(), read_only: false, id: None, transport: VirtioTransport::default() }
    }
}

/// One virtio-net NIC on a TAP device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of an existing TAP interface.
    pub tap: String,
    /// The guest MAC; a locally administered one is generated when absent.
    pub mac: Option<[u8; 6]>,
    /// How the NIC is attached.
    pub transport: VirtioTransport,
}

impl NetConfig {
    /// A NIC on TAP `tap` with a generated MAC and the default transport.
    pub fn new(tap: impl Into<String>) -> Self {
        NetConfig { tap: tap.into(), mac: None, transport: VirtioTransport::default() }
    }
}

/// One host directory shared with the guest over virtio-9p (9P2000.L).
///
/// The guest mounts it by its tag:
/// `mount -t 9p -o trans=virtio,version=9p2000.L TAG /mnt`. Nothing of the
/// host outside `path` is reachable through it (docs/share.md).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ShareConfig {
    /// The host directory.
    pub path: PathBuf,
    /// The mount tag the guest names it by (1 to 255 bytes, no NUL).
    pub tag: String,
    /// Refuse every change with `EROFS`.
    pub read_only: bool,
    /// How the share is attached (virtio-9p on either transport).
    pub transport: VirtioTransport,
}

impl ShareConfig {
    /// A read-write share of `path` as `tag`, on the default transport.
    pub fn new(path: impl Into<PathBuf>, tag: impl Into<String>) -> Self {
        ShareConfig { path: path.into(), tag: tag.into(), read_only: false, transport: VirtioTransport::default() }
    }

    /// The longest mount tag.
    pub const MAX_TAG_LEN: usize = ember_devices::virtio::p9::MAX_TAG_LEN;

    /// The tag of the share at `index` when none is given: `share0`,
    /// `share1`, ...
    pub fn default_tag(index: usize) -> String {
        format!("share{index}")
    }
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
    /// More UARTs after COM1, output only: COM2 (Linux's ttyS1), COM3
    /// (ttyS2), COM4 (ttyS3), in this order; at most three.
    /// [`SerialConfig::Stdio`] here means stdout, without input. `ember
    /// smoke` puts a command's stdout and stderr on two of them, apart from
    /// the kernel's console.
    pub extra_serials: Vec<SerialConfig>,
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
    /// Host directories shared over virtio-9p.
    pub shares: Vec<ShareConfig>,
    /// seccomp filters on ember's threads (the CLI's default is `Kill`; the
    /// library's is `Off`: with a filter, the thread that calls
    /// [`Vm::start`](crate::Vm::start) is filtered too).
    pub seccomp: SeccompMode,
    /// Drop privileges (and optionally chroot) once everything is open.
    pub jail: Option<Jail>,
    /// Once the VM runs, unmap the process's code and read-only file pages
    /// (the executable's and its libraries', `MADV_DONTNEED`): start-up
    /// code the idle VM never runs again stops counting in its RSS, and
    /// what does run maps its pages back from the page cache
    /// (docs/performance.md). The CLI sets it; the library's default is
    /// off (the process is the embedder's).
    pub drop_code_pages: bool,
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
            extra_serials: Vec::new(),
            debug_exit: false,
            boot: BootProtocol::Auto,
            disks: Vec::new(),
            nets: Vec::new(),
            virtio_mmio_cmdline: true,
            shares: Vec::new(),
            seccomp: SeccompMode::Off,
            jail: None,
            drop_code_pages: false,
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
        if self.extra_serials.len() > crate::layout::EXTRA_COM_PORTS.len() {
            return Err(ConfigError::TooManySerials(self.extra_serials.len()));
        }
        for (i, share) in self.shares.iter().enumerate() {
            let tag = &share.tag;
            if tag.is_empty() || tag.len() > ShareConfig::MAX_TAG_LEN || tag.contains('\0') {
                return Err(ConfigError::BadShareTag { tag: tag.clone(), path: share.path.clone() });
            }
            if let Some(first) = self.shares[..i].iter().find(|s| s.tag == *tag) {
                return Err(ConfigError::DuplicateShareTag {
                    tag: tag.clone(),
                    first: first.path.clone(),
                    second: share.path.clone(),
                });
            }
        }
        for transport in [VirtioTransport::Pci, VirtioTransport::Mmio] {
            let count = self.virtio_transports().filter(|&t| t == transport).count();
            let max = transport.max_devices();
            if count > max {
                return Err(ConfigError::TooManyDevices { transport, count, max });
            }
        }
        Ok(())
    }

    /// The transport of each virtio device: disks, NICs, then shares.
    fn virtio_transports(&self) -> impl Iterator<Item = VirtioTransport> + '_ {
        self.disks
            .iter()
            .map(|d| d.transport)
            .chain(self.nets.iter().map(|n| n.transport))
            .chain(self.shares.iter().map(|s| s.transport))
    }

    /// Whether any device is on PCI (then the VM has a PCI root).
    pub(crate) fn has_pci_devices(&self) -> bool {
        self.virtio_transports().any(|t| t == VirtioTransport::Pci)
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
        c.cmdline = String::new();
        c.extra_serials = vec![SerialConfig::None; 4];
        assert_eq!(c.validate(), Err(ConfigError::TooManySerials(4)));
    }

    #[test]
    fn share_tags_are_checked() {
        let share = |path: &str, tag: &str| ShareConfig::new(path, tag);
        let mut c = VmConfig::new("/k");
        c.shares = vec![share("/a", "a"), share("/b", "b")];
        assert!(c.validate().is_ok());
        for bad in ["", "x\0y", &"t".repeat(256)] {
            c.shares = vec![share("/a", bad)];
            let e = c.validate().unwrap_err();
            assert_eq!(e, ConfigError::BadShareTag { tag: bad.into(), path: "/a".into() });
        }
        c.shares = vec![share("/a", "same"), share("/b", "other"), share("/c", "same")];
        let e = c.validate().unwrap_err();
        assert!(
            e.to_string().contains("\"same\"") && e.to_string().contains("/a") && e.to_string().contains("/c"),
            "{e}"
        );
        // Shares count against their own transport's room.
        let mmio = |i| ShareConfig { transport: VirtioTransport::Mmio, ..share("/s", &ShareConfig::default_tag(i)) };
        c.shares = (0..30).map(mmio).collect();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyDevices { transport: VirtioTransport::Mmio, count: 30, .. })
        ));
        c.shares = (0..40).map(|i| share("/s", &ShareConfig::default_tag(i))).collect();
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyDevices { transport: VirtioTransport::Pci, count: 40, .. })
        ));
        c.shares = (0..15).map(|i| share("/s", &ShareConfig::default_tag(i))).collect();
        c.shares.extend((15..30).map(mmio));
        assert!(c.validate().is_ok());
    }

    #[test]
    fn device_counts_are_per_transport() {
        let mut c = VmConfig::new("/k");
        let mmio = |i: usize| DiskConfig { transport: VirtioTransport::Mmio, ..DiskConfig::new(format!("/d{i}")) };
        c.disks = (0..19).map(mmio).collect();
        c.nets = (0..31).map(|i| NetConfig::new(format!("tap{i}"))).collect();
        assert_eq!(c.validate(), Ok(()));
        assert!(c.has_pci_devices());
        c.disks.push(mmio(19));
        let e = c.validate().unwrap_err();
        assert_eq!(e, ConfigError::TooManyDevices { transport: VirtioTransport::Mmio, count: 20, max: 19 });
        assert_eq!(e.to_string(), "too many virtio devices with transport=mmio (20); at most 19 fit");
        c.disks.pop();
        c.nets.push(NetConfig::new("tap31"));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::TooManyDevices { transport: VirtioTransport::Pci, count: 32, .. })
        ));
        c.nets.clear();
        assert!(!c.has_pci_devices());
    }

    #[test]
    fn transport_names() {
        for t in [VirtioTransport::Pci, VirtioTransport::Mmio] {
            assert_eq!(VirtioTransport::from_name(t.name()), Some(t));
        }
        assert_eq!(VirtioTransport::from_name("PCI"), None);
        assert_eq!(VirtioTransport::default(), VirtioTransport::Pci);
    }
}
