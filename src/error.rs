//! The crate's top-level error.

use std::path::PathBuf;

use crate::boot::BootError;
use crate::bus::BusError;
use crate::config::ConfigError;
use crate::event_loop::EventLoopError;
use crate::memory::MemoryError;
use crate::vcpu::VcpuError;

/// Everything that can stop a VM from being built or started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (ember needs KVM: is the kvm module loaded and /dev/kvm readable and writable by this user?)")]
    KvmOpen(kvm_ioctls::Error),
    /// A VM-level KVM ioctl failed.
    #[error("{what} failed: {source}")]
    Kvm {
        /// The ioctl.
        what: &'static str,
        /// The error.
        source: kvm_ioctls::Error,
    },
    /// More vCPUs than KVM allows here.
    #[error("invalid vCPU count {requested}: KVM on this host allows at most {max}")]
    TooManyVcpus {
        /// Asked for.
        requested: u8,
        /// KVM's limit.
        max: usize,
    },
    /// Guest memory could not be created.
    #[error(transparent)]
    Memory(#[from] MemoryError),
    /// The kernel or initrd could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
    /// A vCPU could not be set up.
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    /// Devices overlap.
    #[error(transparent)]
    Bus(#[from] BusError),
    /// The serial output file could not be opened.
    #[error("cannot open serial output file {path}: {source}")]
    SerialFile {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// A `--disk` image cannot be used.
    #[error(transparent)]
    Disk(#[from] ember_devices::virtio::block::BlockError),
    /// A `--net` TAP device cannot be used.
    #[error("{0}")]
    Net(String),
    /// More virtio devices than the MMIO window has slots for.
    #[error("{count} virtio devices requested; at most {max} fit (docs/boot.md)")]
    TooManyDevices {
        /// How many were asked for.
        count: usize,
        /// The limit.
        max: usize,
    },
    /// A virtio transport could not be set up.
    #[error("setting up virtio device {index}: {source}")]
    Virtio {
        /// Which device (in --disk, then --net order).
        index: usize,
        /// The error.
        source: std::io::Error,
    },
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] crate::seccomp::SeccompError),
    /// Privileges could not be dropped.
    #[error(transparent)]
    Jail(#[from] crate::jail::JailError),
    /// The event loop could not be set up.
    #[error(transparent)]
    EventLoop(#[from] EventLoopError),
    /// A host resource (eventfd, thread, signal handler) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// The error.
        source: std::io::Error,
    },
}

impl Error {
    /// Whether the error comes from a value the user gave (exit status 2)
    /// rather than from the host at run time (exit status 1).
    pub fn is_usage(&self) -> bool {
        match self {
            Error::Config(_)
            | Error::TooManyVcpus { .. }
            | Error::SerialFile { .. }
            | Error::Disk(_)
            | Error::Net(_)
            | Error::TooManyDevices { .. } => true,
            Error::Boot(b) => !matches!(b, BootError::Memory(_)),
            _ => false,
        }
    }
}
