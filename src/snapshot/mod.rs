//! Snapshots: a paused VM written to two files, and a new VM built from
//! them that carries on where the first stopped (docs/snapshot.md).
//!
//! * the **memory file** is guest RAM, its regions one after the other
//!   ([`memory_file`]): a restore maps it copy-on-write, so pages load
//!   when the guest touches them and VMs restored from one file share
//!   what they have not written;
//! * the **state file** ([`file`] frames it, [`state`] is its content) is
//!   everything else: the machine's shape, the host CPU's model, each
//!   vCPU's registers, the irqchip, PIT and clock, the devices.
//!
//! Taking one is [`crate::VmHandle::snapshot`]; restoring is
//! [`crate::Vm::restore`] with a [`RestoreConfig`].

pub(crate) mod devices;
pub(crate) mod file;
pub(crate) mod memory_file;
pub(crate) mod state;

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::config::SerialConfig;
use crate::jail::Jail;
pub use crate::memory::MemoryBacking;
use crate::seccomp::SeccompMode;
pub(crate) use state::{CpuModel, VcpuState, VmState};

/// Why a snapshot could not be taken or restored. Each names the value or
/// file at fault.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The file is not an ember state file.
    #[error("not an ember state file (no EMBERSNP magic)")]
    NotAStateFile,
    /// A state file of another format version.
    #[error("the state file has format version {found}; this ember reads version {supported} only")]
    Version {
        /// The file's version.
        found: u32,
        /// The one this ember reads.
        supported: u32,
    },
    /// The file ends early.
    #[error("the state file is truncated: {len} bytes, its header promises {expected}")]
    Truncated {
        /// Its length.
        len: u64,
        /// What the header says.
        expected: u64,
    },
    /// The file has bytes past its payload.
    #[error("the state file has {len} bytes, its header promises {expected}")]
    TrailingBytes {
        /// Its length.
        len: u64,
        /// What the header says.
        expected: u64,
    },
    /// The payload is larger than any state ember writes.
    #[error("the state file's payload is {len} bytes (at most {max})")]
    TooLarge {
        /// The declared length.
        len: u64,
        /// The limit.
        max: u64,
    },
    /// The payload does not match its checksum.
    #[error("the state file is corrupt: CRC-32 {computed:#010x}, its header says {stored:#010x}")]
    Checksum {
        /// The header's.
        stored: u32,
        /// The payload's.
        computed: u32,
    },
    /// The payload is not a VM state.
    #[error("the state file's content is not a VM state: {0}")]
    Parse(String),
    /// The state contradicts itself.
    #[error("the state file is inconsistent: {0}")]
    Inconsistent(String),
    /// Taken on another CPU model.
    #[error("the snapshot was taken on {saved}; this host is {host}")]
    CpuModel {
        /// The snapshot's.
        saved: Box<CpuModel>,
        /// This host's.
        host: Box<CpuModel>,
    },
    /// The memory file does not hold the machine's RAM.
    #[error("memory file {path}: {len} bytes, the snapshot's VM has {expected} bytes of RAM")]
    MemorySize {
        /// The file.
        path: PathBuf,
        /// Its length.
        len: u64,
        /// The RAM's size.
        expected: u64,
    },
    /// A snapshot file is not a regular file.
    #[error("{path} is not a regular file")]
    NotAFile {
        /// The path.
        path: PathBuf,
    },
    /// The VM must be paused first.
    #[error("the VM is not paused: pause it before taking a snapshot")]
    NotPaused,
    /// Something in the VM cannot be saved.
    #[error("cannot snapshot this VM: {0}")]
    Unsupported(String),
    /// A device's saved state does not fit the device built for it.
    #[error("device {device}: {message}")]
    Device {
        /// Which device (`disk0 (virtio-pci)`, `COM1`).
        device: String,
        /// Why.
        message: String,
    },
    /// A vCPU's state could not be read or written.
    #[error("vCPU {vcpu}: {what} failed: {source}")]
    Vcpu {
        /// The vCPU.
        vcpu: u8,
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// KVM refused a VM-wide state ioctl.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// KVM's error.
        source: kvm_ioctls::Error,
    },
    /// A vCPU thread did not hand in its state.
    #[error("vCPU {vcpu} did not report its state within {waited:?}")]
    VcpuTimeout {
        /// The vCPU.
        vcpu: u8,
        /// How long the snapshot waited.
        waited: Duration,
    },
    /// A file could not be read or written.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

/// The two files of a snapshot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotFiles {
    /// The state file (vCPUs, irqchip, devices).
    pub state: PathBuf,
    /// The memory file (guest RAM).
    pub memory: PathBuf,
}

impl SnapshotFiles {
    /// `state` and `memory` in `dir`, named `state` and `memory`.
    pub fn in_dir(dir: impl AsRef<Path>) -> Self {
        let dir = dir.as_ref();
        SnapshotFiles { state: dir.join("state"), memory: dir.join("memory") }
    }
}

/// What [`crate::VmHandle::snapshot`] wrote and how long it took.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SnapshotInfo {
    /// The state file's length.
    pub state_bytes: u64,
    /// The memory file's length (guest RAM).
    pub memory_bytes: u64,
    /// Bytes of RAM written (the pages the guest touched; the rest are
    /// holes).
    pub memory_written: u64,
    /// From the call to both files synced.
    pub took: Duration,
}

/// How to build a VM from a snapshot: the files, and the host-side choices
/// a snapshot does not carry (where the console goes, seccomp, privileges).
/// The machine itself (memory, vCPUs, disks, NICs) is the snapshot's.
#[derive(Clone, Debug)]
pub struct RestoreConfig {
    /// The snapshot.
    pub files: SnapshotFiles,
    /// How guest RAM is backed (default: mapped lazily from the file).
    pub backing: MemoryBacking,
    /// COM1's output (and input).
    pub serial: SerialConfig,
    /// The extra UARTs' outputs; missing ones are discarded.
    pub extra_serials: Vec<SerialConfig>,
    /// seccomp filters, as [`crate::VmConfig::seccomp`].
    pub seccomp: SeccompMode,
    /// Privileges to drop, as [`crate::VmConfig::jail`].
    pub jail: Option<Jail>,
    /// As [`crate::VmConfig::drop_code_pages`].
    pub drop_code_pages: bool,
}

impl RestoreConfig {
    /// Restores `files` with the console on stdio and the library's
    /// defaults for the rest.
    pub fn new(files: SnapshotFiles) -> Self {
        RestoreConfig {
            files,
            backing: MemoryBacking::Lazy,
            serial: SerialConfig::Stdio,
            extra_serials: Vec::new(),
            seccomp: SeccompMode::Off,
            jail: None,
            drop_code_pages: false,
        }
    }
}

/// Writes `state` to `path` (created or truncated) and syncs it; returns
/// its length.
pub(crate) fn write_state(path: &Path, state: &VmState) -> Result<u64, SnapshotError> {
    let payload = serde_json::to_vec(state).map_err(|e| SnapshotError::Parse(e.to_string()))?;
    let bytes = file::encode(&payload);
    let what = |w: &str| format!("{w} state file {}", path.display());
    let f = File::options()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SnapshotError::Io { what: what("creating"), source })?;
    use std::io::Write;
    (&f).write_all(&bytes).map_err(|source| SnapshotError::Io { what: what("writing"), source })?;
    f.sync_all().map_err(|source| SnapshotError::Io { what: what("syncing"), source })?;
    Ok(bytes.len() as u64)
}

/// Creates the memory file at `path` (replacing one that exists).
pub(crate) fn create_memory_file(path: &Path) -> Result<File, SnapshotError> {
    File::options()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|source| SnapshotError::Io { what: format!("creating memory file {}", path.display()), source })
}

/// Reads, checks and parses the state file at `path`, and refuses it if
/// it was taken on another CPU model than `host`.
pub(crate) fn read_state(path: &Path, host: &CpuModel) -> Result<VmState, SnapshotError> {
    let what = |w: &str| format!("{w} state file {}", path.display());
    let f = File::open(path).map_err(|source| SnapshotError::Io { what: what("opening"), source })?;
    let meta = f.metadata().map_err(|source| SnapshotError::Io { what: what("reading"), source })?;
    if !meta.is_file() {
        return Err(SnapshotError::NotAFile { path: path.to_path_buf() });
    }
    let limit = file::HEADER_LEN as u64 + file::MAX_PAYLOAD;
    if meta.len() > limit {
        return Err(SnapshotError::TooLarge { len: meta.len(), max: limit });
    }
    let mut bytes = Vec::with_capacity(meta.len() as usize);
    f.take(limit + 1).read_to_end(&mut bytes).map_err(|source| SnapshotError::Io { what: what("reading"), source })?;
    parse_state(&bytes, host)
}

/// The state in `bytes` (a whole state file), checked.
pub(crate) fn parse_state(bytes: &[u8], host: &CpuModel) -> Result<VmState, SnapshotError> {
    let payload = file::decode(bytes)?;
    let state: VmState = serde_json::from_slice(payload).map_err(|e| SnapshotError::Parse(e.to_string()))?;
    state.check()?;
    if &state.cpu != host {
        return Err(SnapshotError::CpuModel { saved: Box::new(state.cpu), host: Box::new(host.clone()) });
    }
    Ok(state)
}

/// Opens the memory file at `path` for reading, refusing one that is not
/// a regular file of exactly `expected` bytes.
pub(crate) fn open_memory_file(path: &Path, expected: u64) -> Result<File, SnapshotError> {
    let f = File::options()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|source| SnapshotError::Io { what: format!("opening memory file {}", path.display()), source })?;
    let meta =
        f.metadata().map_err(|source| SnapshotError::Io { what: format!("reading {}", path.display()), source })?;
    let ft = meta.file_type();
    if !ft.is_file() || ft.is_block_device() {
        return Err(SnapshotError::NotAFile { path: path.to_path_buf() });
    }
    if meta.len() != expected {
        return Err(SnapshotError::MemorySize { path: path.to_path_buf(), len: meta.len(), expected });
    }
    Ok(f)
}

/// The state file's parser for the fuzz target (`fuzz/`), through the
/// `fuzzing` feature. Not part of the supported API.
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing {
    use super::*;

    /// A state file around `payload` (a valid header and checksum).
    pub fn encode(payload: &[u8]) -> Vec<u8> {
        file::encode(payload)
    }

    /// Parses and checks a whole state file as a restore does, the CPU
    /// model aside (the state's own is taken as the host's); on success,
    /// the state as JSON again.
    pub fn parse(bytes: &[u8]) -> Result<Vec<u8>, String> {
        let payload = file::decode(bytes).map_err(|e| e.to_string())?;
        let state: VmState = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        state.check().map_err(|e| e.to_string())?;
        serde_json::to_vec(&state).map_err(|e| e.to_string())
    }

    /// Parses a whole state file as [`parse`] does and, if it is
    /// accepted, puts its legacy devices' and PCI root's states into
    /// freshly built ones (a restore's device step, without KVM); the
    /// error of the first refused, if one is.
    pub fn restore_fresh(bytes: &[u8]) -> Result<(), String> {
        let payload = file::decode(bytes).map_err(|e| e.to_string())?;
        let state: VmState = serde_json::from_slice(payload).map_err(|e| e.to_string())?;
        state.check().map_err(|e| e.to_string())?;
        let d = &state.devices;
        let mut fresh = Fresh::new();
        let e = |e: ember_devices::snapshot::RestoreError| e.to_string();
        fresh.com1.restore_state(&d.com1).map_err(e)?;
        for u in &d.extra_uarts {
            fresh_uart().restore_state(u).map_err(e)?;
        }
        fresh.i8042.restore_state(&d.i8042).map_err(e)?;
        fresh.cmos.restore_state(&d.cmos).map_err(e)?;
        fresh.io.restore_state(&d.pci_config_io).map_err(e)?;
        fresh.root.lock().expect("fresh lock").restore_state(&d.pci_root).map_err(e)?;
        Ok(())
    }

    /// A freshly built UART writing nowhere.
    fn fresh_uart() -> ember_devices::legacy::SerialDevice {
        let irq = std::sync::Arc::new(vmm_sys_util::eventfd::EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
        ember_devices::legacy::SerialDevice::new(irq, Box::new(std::io::sink()), None)
    }

    /// Freshly built legacy devices and an empty PCI root.
    struct Fresh {
        com1: ember_devices::legacy::SerialDevice,
        i8042: ember_devices::legacy::I8042,
        cmos: ember_devices::legacy::Cmos,
        root: std::sync::Arc<std::sync::Mutex<ember_devices::pci::bus::PciRoot>>,
        io: ember_devices::pci::bus::PciConfigIo,
    }

    impl Fresh {
        fn new() -> Self {
            use ember_devices::legacy::{Cmos, ExitLine, GuestExitRequest, I8042};
            use ember_devices::pci::bus::{MmioWindow, PciConfigIo, PciRoot, PciWindows, RecordingIoEvents};
            use std::sync::{Arc, Mutex};
            use vmm_sys_util::eventfd::EventFd;
            struct NoExit;
            impl ExitLine for NoExit {
                fn request_exit(&self, _: GuestExitRequest) {}
            }
            let line = || Arc::new(EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"));
            let windows = PciWindows {
                mmio32: MmioWindow { base: 0xc000_0000, len: 256 << 20 },
                mmio64: MmioWindow { base: 1 << 32, len: 1 << 32 },
            };
            let root = Arc::new(Mutex::new(
                PciRoot::new(windows, Arc::new(RecordingIoEvents::default())).expect("a PCI root"),
            ));
            Fresh {
                com1: fresh_uart(),
                i8042: I8042::new(Arc::new(NoExit), line(), line()),
                cmos: Cmos::new(),
                io: PciConfigIo::new(root.clone()),
                root,
            }
        }
    }

    /// The states of freshly built legacy devices and an empty PCI root
    /// (no virtio device).
    fn fresh_devices() -> devices::DeviceStates {
        let f = Fresh::new();
        let pci_root = f.root.lock().expect("fresh lock").save_state();
        devices::DeviceStates {
            com1: f.com1.save_state(),
            extra_uarts: vec![fresh_uart().save_state()],
            i8042: f.i8042.save_state(),
            cmos: f.cmos.save_state(),
            pci_root,
            pci_config_io: f.io.save_state(),
            virtio: Vec::new(),
        }
    }

    /// A payload that parses: `vcpus` vCPUs of default registers with
    /// `msrs` MSRs each, fresh legacy devices and PCI root, one extra UART.
    pub fn sample_payload(vcpus: u8, msrs: usize) -> Vec<u8> {
        use kvm_bindings::*;
        let vcpu = || VcpuState {
            cpuid: vec![kvm_cpuid_entry2 { function: 1, eax: 0x00a2_0f12, ..Default::default() }],
            regs: kvm_regs { rip: 0x10_0000, rflags: 2, ..Default::default() },
            sregs: kvm_sregs::default(),
            fpu: state::fpu_bytes(&kvm_fpu { fcw: 0x37f, mxcsr: 0x1f80, ..Default::default() }),
            xsave: Some(kvm_xsave::default()),
            xcrs: Some(kvm_xcrs::default()),
            msrs: (0..msrs as u32).map(|i| kvm_msr_entry { index: 0x10 + i, data: 7, ..Default::default() }).collect(),
            lapic: kvm_lapic_state::default(),
            mp_state: kvm_mp_state::default(),
            events: kvm_vcpu_events::default(),
            debug_regs: kvm_debugregs::default(),
            tsc_khz: Some(2_000_000),
        };
        let chip = |chip_id| kvm_irqchip { chip_id, ..Default::default() };
        let s = VmState {
            ember_version: "0.1.0".into(),
            cpu: CpuModel { vendor: "AuthenticAMD".into(), family: 0x19, model: 0x21, stepping: 2 },
            machine: state::Machine {
                memory: 32 << 20,
                vcpus,
                debug_exit: true,
                extra_serials: 1,
                disks: Vec::new(),
                nets: Vec::new(),
                cmdline: "console=ttyS0".into(),
            },
            vcpus: (0..vcpus).map(|_| vcpu()).collect(),
            pic_master: chip(KVM_IRQCHIP_PIC_MASTER),
            pic_slave: chip(KVM_IRQCHIP_PIC_SLAVE),
            ioapic: chip(KVM_IRQCHIP_IOAPIC),
            pit: kvm_pit_state2::default(),
            clock: kvm_clock_data { clock: 123_456_789, ..Default::default() },
            devices: fresh_devices(),
        };
        serde_json::to_vec(&s).expect("a state serializes")
    }
}
