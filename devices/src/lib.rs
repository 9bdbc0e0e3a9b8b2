//! Device models for the ember virtual machine monitor.
//!
//! A device in this crate never sees the VMM. It is given guest memory, its
//! configuration and, for a legacy device, an interrupt line
//! ([`interrupt::IrqLine`]); it is reached through [`bus::BusDevice`]
//! register accesses (port I/O or MMIO) and, for devices with an I/O path,
//! through file descriptors served by an [`event_manager`] loop. A virtio
//! device raises no interrupt itself: it tells its transport which queues
//! it used ([`virtio::QueueSet`]) and the transport signals the guest.
//!
//! * [`legacy`]: the 8250 UART, the i8042 reset line, the debug-exit port and
//!   the quiet stand-ins for probed-but-absent PC ports.
//! * [`pci`]: PCI bus 0 (host bridge, configuration space through 0xCF8 and
//!   ECAM, BAR placement and decoding) and MSI-X.
//! * [`virtio`]: the virtio-mmio and virtio-pci transports and the
//!   virtio-blk and virtio-net devices.
//! * [`snapshot`]: why a device's state cannot be saved or put back.
#![deny(missing_docs)]

pub mod bus;
pub mod interrupt;
pub mod legacy;
pub mod pci;
pub mod snapshot;
pub mod virtio;

/// The guest memory type every device in this crate works on.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<()>;
