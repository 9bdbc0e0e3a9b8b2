//! A PCI root complex for virtual devices: bus 0 behind a host bridge,
//! configuration space through the legacy 0xCF8/0xCFC ports and ECAM, BARs
//! placed in MMIO windows the VMM chooses, and MSI-X.
//!
//! * [`config`]: one function's 256-byte configuration space: the type-0
//!   header, BAR registers with their size masks, the capability list.
//!   Every register is bytes plus a per-byte write mask, so any write of
//!   any width at any offset leaves a consistent state (read-only bits stay,
//!   a BAR reads back its address masked by its size).
//! * [`msix`]: an MSI-X table and pending-bit array, with the
//!   [`msix::MsiRouting`] trait through which the VMM learns each vector's
//!   message and mask, and one [`crate::interrupt::IrqLine`] per vector.
//! * [`bus`]: the root ([`bus::PciRoot`]) with the host bridge at 00:00.0
//!   and devices from 00:01.0; the configuration-access devices
//!   ([`bus::PciConfigIo`] at port 0xCF8, [`bus::PciConfigMmio`] for ECAM);
//!   the BAR windows ([`bus::PciBarWindow`]) that route MMIO accesses to
//!   whichever BAR the guest placed there; and [`bus::IoEventRegistry`],
//!   through which the VMM follows the notification addresses when the
//!   guest moves a BAR.
//!
//! The virtio-pci transport that uses all this is
//! [`crate::virtio::pci::VirtioPciTransport`]. docs/pci.md describes the
//! layout and how the VMM wires it.

use vmm_sys_util::eventfd::EventFd;

pub mod bus;
pub mod config;
pub mod msix;

pub use config::{BarKind, BarRegion, BarSpec, ConfigSpace, PciHeader, BAR_COUNT};

/// Errors building PCI devices and the bus (VMM input, never guest input).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PciError {
    /// A BAR index outside 0..6 (or 5 for a 64-bit BAR, which takes two
    /// registers), or one already taken.
    #[error("BAR {0} cannot be used (taken, or out of range for its kind)")]
    BarIndex(u8),
    /// A BAR size that is not a power of two of at least 16 bytes (or a
    /// 32-bit BAR above 2 GiB).
    #[error("BAR size {0:#x} is not a power of two between 16 bytes and the BAR kind's limit")]
    BarSize(u64),
    /// The capabilities do not fit in the 256-byte configuration space.
    #[error("a {0}-byte capability does not fit in the configuration space")]
    CapabilitySpace(usize),
    /// An MSI-X table of zero or more than 2048 vectors.
    #[error("MSI-X table of {0} vectors (must be 1..=2048)")]
    MsixVectors(usize),
    /// Bus 0 has no free device number left.
    #[error("PCI bus 0 is full ({0} devices)")]
    BusFull(usize),
    /// A BAR does not fit in what is left of its window.
    #[error("no room for a {size:#x}-byte BAR in the PCI window {base:#x}+{len:#x}")]
    WindowFull {
        /// BAR size.
        size: u64,
        /// Window base.
        base: u64,
        /// Window length.
        len: u64,
    },
    /// A window that is empty, wraps, or overlaps the other one.
    #[error("bad PCI MMIO window {base:#x}+{len:#x} (empty, wrapping, or overlapping the other window)")]
    BadWindow {
        /// Window base.
        base: u64,
        /// Window length.
        len: u64,
    },
}

/// An eventfd a device wants signalled by guest writes to one address of
/// one of its BARs (a queue notification), so the VMM can register it with
/// KVM (`KVM_IOEVENTFD`, any access width, no data match) wherever the
/// guest places the BAR.
#[derive(Debug)]
pub struct IoEvent<'a> {
    /// BAR index.
    pub bar: u8,
    /// Offset in the BAR.
    pub offset: u64,
    /// The eventfd; a write reaching [`PciDevice::write_bar`] at this
    /// offset signals it too.
    pub fd: &'a EventFd,
}

/// A function on the PCI bus (function 0 of its device number).
///
/// The root serialises calls per device with the device's lock; calls
/// come from vCPU threads (configuration and BAR accesses). Every argument
/// is guest input: any offset, width (1 to 8 bytes) and value must be
/// accepted without panicking.
pub trait PciDevice: Send {
    /// Reads `data.len()` bytes of configuration space at `offset` (below
    /// 4096; bytes past the implemented space read as zero).
    fn read_config(&mut self, offset: u16, data: &mut [u8]);

    /// Writes configuration space at `offset` (below 4096).
    fn write_config(&mut self, offset: u16, data: &[u8]);

    /// The device's BARs as programmed now: address, size and whether
    /// memory decoding is on (the root maps only those, and only inside
    /// its windows).
    fn bars(&self) -> [Option<BarRegion>; BAR_COUNT];

    /// Reads `data.len()` bytes at `offset` into BAR `bar`.
    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]);

    /// Writes `data` at `offset` into BAR `bar`.
    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]);

    /// The function's configuration space, which a snapshot of the bus
    /// saves (`None`: nothing to save).
    fn config_space(&self) -> Option<&ConfigSpace> {
        None
    }
    /// The same, for [`bus::PciRoot::restore_state`] to put the saved
    /// bytes back.
    fn config_space_mut(&mut self) -> Option<&mut ConfigSpace> {
        None
    }
    /// The notification eventfds and where they live in the BARs.
    fn ioevents(&self) -> Vec<IoEvent<'_>> {
        Vec::new()
    }
}
