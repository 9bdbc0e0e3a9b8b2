//! The VM's configuration: plain structs, validated once before anything is
//! built. The CLI only turns flags into these; a library user builds the same.

use std::fmt;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use crate::serial_capture::SerialCapture;

/// The command line used when the user gives none.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1";
/// Guest memory when the user gives none: 256 MiB.
pub const DEFAULT_MEMORY: u64 = 256 << 20;
/// The smallest guest memory ember accepts: 2 MiB.
pub const MIN_MEMORY: u64 = 2 << 20;
/// The largest guest memory ember accepts: 1 TiB.
pub const MAX_MEMORY: u64 = 1 << 40;
/// The most vCPUs ember can describe (APIC IDs 0..=253 in the MP table).
pub const MAX_VCPUS: u8 = 254;

/// A configuration error: which value is wrong, and why.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ConfigError {
    /// A size string could not be parsed.
    #[error("invalid size '{0}': expected a number of MiB or a number with a K, M, G or T suffix (e.g. 512M, 2G)")]
    BadSize(String),
    /// A duration string could not be parsed.
    #[error("invalid duration '{0}': expected e.g. 90s, 500ms, 2m or a plain number of seconds")]
    BadDuration(String),
    /// Guest memory out of range or not page-aligned.
    #[error("invalid memory size {0} bytes: must be a multiple of 4 KiB between 2 MiB and 1 TiB")]
    BadMemory(u64),
    /// vCPU count out of range.
    #[error("invalid vCPU count {0}: must be between 1 and {1}")]
    BadVcpus(u64, u64),
    /// The kernel command line has a NUL byte.
    #[error("the kernel command line contains a NUL byte")]
    CmdlineNul,
    /// A `--serial` value that is not understood.
    #[error("invalid serial option '{0}': expected stdio, file=PATH or none")]
    BadSerial(String),
    /// A `key=value,...` device option string is malformed.
    #[error("invalid {what} option '{value}': {why}")]
    BadDeviceOption {
        /// Which option (`--disk`, `--net`).
        what: &'static str,
        /// The offending text.
        value: String,
        /// What is wrong with it.
        why: String,
    },
    /// Too many devices for the IRQ/MMIO window.
    #[error("too many virtio devices ({0}); at most {1} fit")]
    TooManyDevices(usize, usize),
    /// The `--chroot` directory does not exist.
    #[error("--chroot directory {} does not exist or is not a directory", .0.display())]
    BadChroot(PathBuf),
}

/// Parses a memory size: a plain number is MiB; `K`, `M`, `G`, `T` suffixes
/// (optionally followed by `iB` or `B`) are binary multiples.
pub fn parse_size(s: &str) -> Result<u64, ConfigError> {
    let bad = || ConfigError::BadSize(s.to_string());
    let t = s.trim();
    let digits_end = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    if digits_end == 0 {
        return Err(bad());
    }
    let n: u64 = t[..digits_end].parse().map_err(|_| bad())?;
    let suffix = t[digits_end..].to_ascii_lowercase();
    let unit = match suffix.as_str() {
        "" | "m" | "mb" | "mib" => 1 << 20,
        "k" | "kb" | "kib" => 1 << 10,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1u64 << 40,
        "b" => 1,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).ok_or_else(bad)
}

/// Parses a duration: `90s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, ConfigError> {
    let bad = || ConfigError::BadDuration(s.to_string());
    let t = s.trim();
    let num_end = t.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(t.len());
    if num_end == 0 {
        return Err(bad());
    }
    let n: f64 = t[..num_end].parse().map_err(|_| bad())?;
    let secs = match &t[num_end..] {
        "" | "s" => n,
        "ms" => n / 1000.0,
        "m" | "min" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(bad()),
    };
    if !secs.is_finite() || !(0.0..=1e9).contains(&secs) {
        return Err(bad());
    }
    Ok(Duration::from_secs_f64(secs))
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

impl SerialConfig {
    /// Parses the CLI form: `stdio`, `file=PATH` or `none`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        match s {
            "stdio" => Ok(SerialConfig::Stdio),
            "none" | "off" => Ok(SerialConfig::None),
            _ => match s.strip_prefix("file=") {
                Some(p) if !p.is_empty() => Ok(SerialConfig::File(PathBuf::from(p))),
                _ => Err(ConfigError::BadSerial(s.to_string())),
            },
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

impl BootProtocol {
    /// Parses `auto`, `linux64` or `pvh`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "auto" => Some(BootProtocol::Auto),
            "linux64" | "linux" | "elf" => Some(BootProtocol::Linux64),
            "pvh" => Some(BootProtocol::Pvh),
            _ => None,
        }
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
}

impl DiskConfig {
    /// Parses the CLI form `path=IMG[,readonly=on|off][,id=STRING]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad =
            |why: &str| ConfigError::BadDeviceOption { what: "--disk", value: s.to_string(), why: why.to_string() };
        let mut path = None;
        let mut read_only = false;
        let mut id = None;
        for kv in split_options(s) {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad("expected key=value"))?;
            match k {
                "path" if !v.is_empty() => path = Some(PathBuf::from(v)),
                "readonly" | "ro" => read_only = parse_on_off(v).ok_or_else(|| bad("readonly takes on or off"))?,
                "id" | "serial" => {
                    if v.len() > 20 {
                        return Err(bad("id is at most 20 bytes"));
                    }
                    id = Some(v.to_string())
                }
                _ => return Err(bad(&format!("unknown key '{k}' (known: path, readonly, id)"))),
            }
        }
        Ok(DiskConfig { path: path.ok_or_else(|| bad("path=IMG is required"))?, read_only, id })
    }
}

/// One virtio-net NIC on a TAP device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NetConfig {
    /// Name of an existing TAP interface.
    pub tap: String,
    /// The guest MAC; a locally administered one is generated when absent.
    pub mac: Option<[u8; 6]>,
}

impl NetConfig {
    /// Parses the CLI form `tap=NAME[,mac=AA:BB:CC:DD:EE:FF]`.
    pub fn parse(s: &str) -> Result<Self, ConfigError> {
        let bad =
            |why: &str| ConfigError::BadDeviceOption { what: "--net", value: s.to_string(), why: why.to_string() };
        let mut tap = None;
        let mut mac = None;
        for kv in split_options(s) {
            let (k, v) = kv.split_once('=').ok_or_else(|| bad("expected key=value"))?;
            match k {
                "tap" if !v.is_empty() && v.len() < 16 => tap = Some(v.to_string()),
                "tap" => return Err(bad("tap name must be 1 to 15 bytes")),
                "mac" => {
                    mac = Some(
                        ember_devices::virtio::net::parse_mac(v)
                            .ok_or_else(|| bad("mac must look like 02:00:00:00:00:01"))?,
                    )
                }
                _ => return Err(bad(&format!("unknown key '{k}' (known: tap, mac)"))),
            }
        }
        Ok(NetConfig { tap: tap.ok_or_else(|| bad("tap=NAME is required"))?, mac })
    }
}

fn split_options(s: &str) -> impl Iterator<Item = &str> {
    s.split(',').filter(|p| !p.is_empty())
}

fn parse_on_off(v: &str) -> Option<bool> {
    match v {
        "on" | "true" | "yes" | "1" => Some(true),
        "off" | "false" | "no" | "0" => Some(false),
        _ => None,
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
    /// Enable the debug-exit device at I/O port 0xf4.
    pub debug_exit: bool,
    /// The boot protocol.
    pub boot: BootProtocol,
    /// virtio-blk disks, in `/dev/vda`, `/dev/vdb`… order.
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs.
    pub nets: Vec<NetConfig>,
    /// seccomp filters on ember's threads (the CLI's default is `Kill`; the
    /// library's is `Off`: with a filter, the thread that calls
    /// [`crate::Vm::start`] is filtered too).
    pub seccomp: crate::seccomp::SeccompMode,
    /// Drop privileges (and optionally chroot) once everything is open.
    pub jail: Option<crate::jail::Jail>,
}

impl VmConfig {
    /// A configuration with the defaults for everything but the kernel.
    pub fn new(kernel: impl Into<PathBuf>) -> Self {
        VmConfig {
            kernel: kernel.into(),
            initrd: None,
            initrd_bytes: None,
            cmdline: DEFAULT_CMDLINE.to_string(),
            memory: DEFAULT_MEMORY,
            vcpus: 1,
            serial: SerialConfig::Stdio,
            debug_exit: false,
            boot: BootProtocol::Auto,
            disks: Vec::new(),
            nets: Vec::new(),
            seccomp: crate::seccomp::SeccompMode::Off,
            jail: None,
        }
    }

    /// Checks the values that can be checked without touching the host.
    /// (Files and KVM limits are checked when the VM is built.)
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory < MIN_MEMORY || self.memory > MAX_MEMORY || self.memory % 4096 != 0 {
            return Err(ConfigError::BadMemory(self.memory));
        }
        if self.vcpus == 0 || self.vcpus > MAX_VCPUS {
            return Err(ConfigError::BadVcpus(self.vcpus as u64, MAX_VCPUS as u64));
        }
        if self.cmdline.contains('\0') {
            return Err(ConfigError::CmdlineNul);
        }
        if let Some(dir) = self.jail.as_ref().and_then(|j| j.chroot.as_ref()) {
            if !dir.is_dir() {
                return Err(ConfigError::BadChroot(dir.clone()));
            }
        }
        let devices = self.disks.len() + self.nets.len();
        let max = crate::layout::max_virtio_devices();
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
    fn macs_are_strict() {
        use ember_devices::virtio::net::parse_mac;
        assert_eq!(parse_mac("02:00:00:00:00:0a"), Some([2, 0, 0, 0, 0, 10]));
        assert_eq!(parse_mac("+2:00:00:00:00:01"), None);
        assert_eq!(parse_mac("2:00:00:00:00:01"), None);
        assert_eq!(parse_mac("02:00:00:00:00"), None);
        assert_eq!(parse_mac("02:00:00:00:00:01:02"), None);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512M").unwrap(), 512 << 20);
        assert_eq!(parse_size("2G").unwrap(), 2 << 30);
        assert_eq!(parse_size("128").unwrap(), 128 << 20);
        assert_eq!(parse_size("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_size("1t").unwrap(), 1 << 40);
        assert_eq!(parse_size("4096K").unwrap(), 4 << 20);
        for bad in ["", "M", "12Q", "-1", "1.5G", "99999999999999999999", "18446744073709551615G"] {
            assert_eq!(parse_size(bad), Err(ConfigError::BadSize(bad.into())), "{bad}");
        }
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("2m").unwrap(), Duration::from_secs(120));
        assert_eq!(parse_duration("3").unwrap(), Duration::from_secs(3));
        assert_eq!(parse_duration("1.5s").unwrap(), Duration::from_millis(1500));
        for bad in ["", "s", "5x", "1e999", "-3s", "1.2.3"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn serial_options() {
        assert!(matches!(SerialConfig::parse("stdio"), Ok(SerialConfig::Stdio)));
        assert!(matches!(SerialConfig::parse("none"), Ok(SerialConfig::None)));
        assert!(
            matches!(SerialConfig::parse("file=/tmp/x"), Ok(SerialConfig::File(p)) if p == std::path::Path::new("/tmp/x"))
        );
        assert!(SerialConfig::parse("file=").is_err());
        assert!(SerialConfig::parse("tcp").is_err());
    }

    #[test]
    fn disk_options() {
        let d = DiskConfig::parse("path=/x.img,readonly=on,id=abc").unwrap();
        assert_eq!(d, DiskConfig { path: "/x.img".into(), read_only: true, id: Some("abc".into()) });
        assert!(!DiskConfig::parse("path=/x.img").unwrap().read_only);
        assert!(DiskConfig::parse("readonly=on").is_err());
        assert!(DiskConfig::parse("path=/x,readonly=maybe").is_err());
        assert!(DiskConfig::parse("path=/x,color=red").is_err());
        assert!(DiskConfig::parse("path=/x,id=123456789012345678901").is_err());
        assert!(DiskConfig::parse("/x.img").is_err());
    }

    #[test]
    fn net_options() {
        let n = NetConfig::parse("tap=tap0,mac=02:00:00:00:00:01").unwrap();
        assert_eq!(n.tap, "tap0");
        assert_eq!(n.mac, Some([2, 0, 0, 0, 0, 1]));
        assert!(NetConfig::parse("tap=tap0,mac=02:00:00:00:00").is_err());
        assert!(NetConfig::parse("tap=tap0,mac=02:00:00:00:00:01:02").is_err());
        assert!(NetConfig::parse("tap=waytoolonginterfacename").is_err());
        assert!(NetConfig::parse("mac=02:00:00:00:00:01").is_err());
    }

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
