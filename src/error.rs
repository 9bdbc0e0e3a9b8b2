//! The errors of building and starting a VM: [`Error`], and the error
//! types its variants carry.

use std::path::PathBuf;

pub use crate::boot::BootError;
pub use crate::bus::BusError;
pub use crate::config::ConfigError;
pub use crate::event_loop::EventLoopError;
pub use crate::irq_routing::RoutingError;
pub use crate::jail::JailError;
pub use crate::memory::MemoryError;
pub use crate::seccomp::{ProgramError, SeccompError, ThreadKind};
pub use ember_devices::pci::PciError;
pub use ember_devices::virtio::block::BlockError;
pub use ember_devices::virtio::net::NetError;
pub use ember_devices::virtio::p9::ShareError;

/// Everything that can stop a VM from being built or started.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is wrong.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm: {0} (ember needs KVM: is the kvm module loaded and /dev/kvm readable and writable by this user?)")]
    KvmOpen(kvm_ioctls::Error),
    /// A KVM ioctl on the VM or on a vCPU failed.
    #[error("{}{what} failed: {source}", vcpu.map(|v| format!("vCPU {v}: ")).unwrap_or_default())]
    Kvm {
        /// The vCPU whose ioctl failed (`None` for the VM's).
        vcpu: Option<u8>,
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
    /// A snapshot could not be restored.
    #[error(transparent)]
    Snapshot(#[from] crate::snapshot::SnapshotError),
    /// The kernel or initrd could not be loaded.
    #[error(transparent)]
    Boot(#[from] BootError),
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
    /// A disk image cannot be used.
    #[error(transparent)]
    Disk(#[from] BlockError),
    /// A NIC's TAP device or MAC address cannot be used.
    #[error(transparent)]
    Net(#[from] NetError),
    /// A shared directory cannot be served.
    #[error(transparent)]
    Share(#[from] ShareError),
    /// A virtio transport could not be set up.
    #[error("setting up virtio device {index}: {source}")]
    Virtio {
        /// Which device (disks first, then NICs, in configuration order).
        index: usize,
        /// The error.
        source: std::io::Error,
    },
    /// The PCI root or a PCI function could not be built (bus full, no
    /// room in a BAR window).
    #[error(transparent)]
    Pci(#[from] PciError),
    /// The MSI-X vectors of the PCI functions need more GSIs than KVM has.
    #[error(transparent)]
    MsiRouting(#[from] RoutingError),
    /// A seccomp filter could not be built or installed.
    #[error(transparent)]
    Seccomp(#[from] SeccompError),
    /// Privileges could not be dropped.
    #[error(transparent)]
    Jail(#[from] JailError),
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
            | Error::Net(_) => true,
            Error::Boot(b) => !matches!(b, BootError::Memory(_)),
            Error::Share(s) => s.is_usage(),
            _ => false,
        }
    }
}

/// The error of a failed KVM ioctl `what`, on vCPU `vcpu` or (`None`) on
/// the VM.
pub(crate) fn kvm_err(vcpu: Option<u8>, what: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> Error {
    move |source| Error::Kvm { vcpu, what, source }
}

/// The error of a host resource (eventfd, thread, signal handler) that
/// failed while doing `what`.
pub(crate) fn io_err(what: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { what, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_errors_name_the_ioctl_and_the_vcpu() {
        let e = kvm_err(None, "KVM_CREATE_VM")(kvm_ioctls::Error::new(libc::ENOMEM));
        assert!(e.to_string().starts_with("KVM_CREATE_VM failed: "), "{e}");
        let e = kvm_err(Some(3), "KVM_SET_CPUID2")(kvm_ioctls::Error::new(libc::EINVAL));
        assert!(e.to_string().starts_with("vCPU 3: KVM_SET_CPUID2 failed: "), "{e}");
        assert!(!e.is_usage());
    }
}
