//! The virtio-pci modern transport (virtio 1.2 §4.1): a virtio device as a
//! PCI function whose registers sit in one 64-bit memory BAR, found through
//! vendor-specific capabilities, interrupting through MSI-X (or INTx
//! without it).
//!
//! Identity (§4.1.2): vendor 0x1af4, device 0x1040 + the virtio device ID,
//! revision 1 (non-transitional), subsystem vendor 0x1af4 and subsystem ID
//! 0x40 + the device ID (at least 0x40, as the spec asks of
//! non-transitional devices), a class code per device type.
//!
//! BAR 0 (64-bit, non-prefetchable: reading ISR clears it), 32 KiB:
//!
//! ```text
//! 0x0000  common configuration (0x38 bytes, §4.1.4.3)
//! 0x1000  ISR status (1 byte, read-to-clear)
//! 0x2000  device configuration (the device's config space)
//! 0x3000  notifications: queue q at 0x3000 + 4 * q (queue_notify_off = q,
//!         notify_off_multiplier = 4)
//! 0x4000  MSI-X table (16 bytes per vector: one per queue, plus one)
//! 0x5000  MSI-X pending-bit array
//! ```
//!
//! Capabilities, in list order: MSI-X, common, notify, ISR, device, and
//! `VIRTIO_PCI_CAP_PCI_CFG` (a window into BAR 0 through configuration
//! space, §4.1.4.9).
//!
//! Interrupts: with MSI-X enabled, a queue's used buffers raise the vector
//! the driver mapped to it (`queue_msix_vector`) and a configuration change
//! raises `config_msix_vector`; `NO_VECTOR` (or a vector the table does not
//! have) means no interrupt. Without MSI-X, the ISR bits (0: queue, 1:
//! configuration) are set and the INTx line raised, unless the driver set
//! `INTx disable` or the VMM gave the function no INTx line (`Interrupt
//! Pin` 0; ember's VMM does that: its functions need MSI-X). The
//! configuration-change ISR bit is set in both modes.
//!
//! Queue notifications: the VMM registers each queue's eventfd at its
//! notify address with `KVM_IOEVENTFD` ([`PciDevice::ioevents`], moved by
//! the root when the guest moves the BAR); a notification write that does
//! reach [`PciDevice::write_bar`] signals the same eventfd.
//!
//! Every access is guest input: fields are served at their natural width
//! (64-bit fields also as two 32-bit halves); other widths read as zero
//! and are ignored with a budgeted log line.

use std::io;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::error;
use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_NET};
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::transport::{
    guest_warn, StatusChange, TransportCore, AVAIL_HI, AVAIL_LO, DESC_HI, DESC_LO, USED_HI, USED_LO,
};
use super::{QueueSet, VirtioDevice};
use crate::interrupt::IrqLine;
use crate::pci::config::{self, COMMAND_INTX_DISABLE, STATUS, STATUS_INTERRUPT};
use crate::pci::msix::{MsiRouting, Msix, MSIX_CAP_ID, MSIX_CONTROL_OFFSET};
use crate::pci::{BarKind, BarRegion, BarSpec, ConfigSpace, IoEvent, PciDevice, PciError, PciHeader, BAR_COUNT};
use crate::GuestMemoryMmap;

/// The virtio PCI vendor ID.
pub const VIRTIO_PCI_VENDOR_ID: u16 = 0x1af4;
/// Device ID of a modern virtio device: this plus the virtio device ID.
pub const VIRTIO_PCI_DEVICE_ID_BASE: u16 = 0x1040;
/// Subsystem ID: this plus the virtio device ID.
pub const VIRTIO_PCI_SUBSYSTEM_ID_BASE: u16 = 0x40;
/// "No MSI-X vector" in `config_msix_vector` / `queue_msix_vector`.
pub const NO_VECTOR: u16 = 0xffff;

/// The BAR holding every virtio structure and the MSI-X table.
pub const VIRTIO_BAR: u8 = 0;
/// Size of that BAR.
pub const VIRTIO_BAR_SIZE: u64 = 0x8000;
/// Offset of the common configuration structure in the BAR.
pub const COMMON_CFG_OFFSET: u64 = 0x0000;
/// Length of the common configuration structure (up to `queue_device`).
pub const COMMON_CFG_LEN: u64 = 0x38;
/// Offset of the ISR status byte.
pub const ISR_OFFSET: u64 = 0x1000;
/// Offset of the device configuration space.
pub const DEVICE_CFG_OFFSET: u64 = 0x2000;
/// Length of the device configuration window.
pub const DEVICE_CFG_LEN: u64 = 0x1000;
/// Offset of the notification area.
pub const NOTIFY_OFFSET: u64 = 0x3000;
/// Bytes between two queues' notification addresses.
pub const NOTIFY_OFF_MULTIPLIER: u32 = 4;
/// Offset of the MSI-X table.
pub const MSIX_TABLE_OFFSET: u64 = 0x4000;
/// Offset of the MSI-X pending-bit array.
pub const MSIX_PBA_OFFSET: u64 = 0x5000;
/// Size of each region above.
const REGION_SIZE: u64 = 0x1000;

/// `cfg_type` of the virtio PCI capabilities.
pub const VIRTIO_PCI_CAP_COMMON_CFG: u8 = 1;
/// Notifications.
pub const VIRTIO_PCI_CAP_NOTIFY_CFG: u8 = 2;
/// ISR status.
pub const VIRTIO_PCI_CAP_ISR_CFG: u8 = 3;
/// Device configuration.
pub const VIRTIO_PCI_CAP_DEVICE_CFG: u8 = 4;
/// Configuration-space window into a BAR.
pub const VIRTIO_PCI_CAP_PCI_CFG: u8 = 5;
/// The vendor-specific capability ID.
const PCI_CAP_ID_VNDR: u8 = 0x09;

/// ISR bit: used buffers in a queue.
const ISR_QUEUE: u8 = 1;
/// ISR bit: configuration change.
const ISR_CONFIG: u8 = 2;

// Common configuration fields (§4.1.4.3).
const DEVICE_FEATURE_SELECT: u64 = 0x00;
const DEVICE_FEATURE: u64 = 0x04;
const DRIVER_FEATURE_SELECT: u64 = 0x08;
const DRIVER_FEATURE: u64 = 0x0c;
const CONFIG_MSIX_VECTOR: u64 = 0x10;
const NUM_QUEUES: u64 = 0x12;
const DEVICE_STATUS: u64 = 0x14;
const CONFIG_GENERATION: u64 = 0x15;
const QUEUE_SELECT: u64 = 0x16;
const QUEUE_SIZE: u64 = 0x18;
const QUEUE_MSIX_VECTOR: u64 = 0x1a;
const QUEUE_ENABLE: u64 = 0x1c;
const QUEUE_NOTIFY_OFF: u64 = 0x1e;
const QUEUE_DESC: u64 = 0x20;
const QUEUE_DRIVER: u64 = 0x28;
const QUEUE_DEVICE: u64 = 0x30;

/// The PCI class code of a virtio device type.
pub fn class_code(device_type: u32) -> u32 {
    match device_type {
        VIRTIO_ID_NET => 0x02_00_00,   // network controller, Ethernet
        VIRTIO_ID_BLOCK => 0x01_80_00, // mass storage controller, other
        _ => 0xff_00_00,               // unassigned class
    }
}

/// The interrupt wiring of one transport, given by the VMM.
pub struct PciInterrupts {
    /// Where the VMM learns each vector's MSI message and mask.
    pub msi: Arc<dyn MsiRouting>,
    /// One line per MSI-X vector ([`VirtioPciTransport::vector_count`] of
    /// them): vector `i` raises `vectors[i]` (a KVM irqfd routed to the
    /// vector's message).
    pub vectors: Vec<Arc<dyn IrqLine>>,
    /// The INTx (INTA#) line, used while MSI-X is disabled; `None` for a
    /// function without one (`Interrupt Pin` 0: the driver must use MSI-X).
    pub intx: Option<IntxLine>,
}

/// A function's INTA# line and where it is wired.
pub struct IntxLine {
    /// The line.
    pub line: Arc<dyn IrqLine>,
    /// The `Interrupt Line` register's initial value: the IRQ (IOAPIC pin)
    /// `line` is wired to, as firmware would report it.
    pub irq: u8,
}

/// The virtio-pci transport of one device.
pub struct VirtioPciTransport {
    core: TransportCore,
    config: ConfigSpace,
    msix: Msix,
    queue_vectors: Vec<u16>,
    config_vector: u16,
    isr: u8,
    intx: Option<Arc<dyn IrqLine>>,
    /// Offset of the `VIRTIO_PCI_CAP_PCI_CFG` capability.
    pci_cfg_cap: u16,
    /// Offset of the MSI-X capability.
    msix_cap: u16,
}

impl std::fmt::Debug for VirtioPciTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtioPciTransport")
            .field("device_type", &self.core.device_type())
            .field("status", &self.core.status())
            .field("activated", &self.core.is_activated())
            .field("msix", &self.msix)
            .finish_non_exhaustive()
    }
}

fn pci_err(e: PciError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, e)
}

/// A virtio vendor capability body (after ID and next): cap_len, cfg_type,
/// bar, id, padding, offset, length, then `extra`.
fn virtio_cap(cfg_type: u8, offset: u64, length: u64, extra: &[u8]) -> Vec<u8> {
    let mut b = vec![(16 + extra.len()) as u8, cfg_type, VIRTIO_BAR, 0, 0, 0];
    b.extend_from_slice(&(offset as u32).to_le_bytes());
    b.extend_from_slice(&(length as u32).to_le_bytes());
    b.extend_from_slice(extra);
    b
}

impl VirtioPciTransport {
    /// How many MSI-X vectors a transport for `device` has (one per queue
    /// plus one for configuration changes): the length of
    /// [`PciInterrupts::vectors`].
    pub fn vector_count(device: &dyn VirtioDevice) -> usize {
        device.queue_max_sizes().len() + 1
    }

    /// Wraps `device`.
    ///
    /// Fails if an eventfd cannot be created, the device declares invalid
    /// queues, or `irqs.vectors` does not have
    /// [`vector_count`](Self::vector_count) lines.
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irqs: PciInterrupts) -> io::Result<Self> {
        let nvec = Self::vector_count(device.as_ref());
        if irqs.vectors.len() != nvec {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("virtio-pci: {} MSI-X lines given, the device needs {nvec}", irqs.vectors.len()),
            ));
        }
        let device_type = device.device_type();
        let id = u16::try_from(device_type).ok().filter(|&t| t < 0x40).ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, format!("virtio device type {device_type} has no PCI ID"))
        })?;
        let core = TransportCore::new(device, mem, "virtio-pci", "virtio-pci: guest register access")?;
        let nqueues = core.num_queues();
        let msix = Msix::new(irqs.vectors, irqs.msi).map_err(pci_err)?;

        let mut config = ConfigSpace::new(&PciHeader {
            vendor_id: VIRTIO_PCI_VENDOR_ID,
            device_id: VIRTIO_PCI_DEVICE_ID_BASE + id,
            revision_id: 1,
            class_code: class_code(device_type),
            subsystem_vendor_id: VIRTIO_PCI_VENDOR_ID,
            subsystem_id: VIRTIO_PCI_SUBSYSTEM_ID_BASE + id,
            interrupt_pin: u8::from(irqs.intx.is_some()),
        });
        // 0xff: "unknown or no connection" (PCI Local Bus 3.0 §6.2.4).
        config.set_u8(config::INTERRUPT_LINE, irqs.intx.as_ref().map_or(0xff, |i| i.irq));
        let bar = BarSpec { kind: BarKind::Memory64, size: VIRTIO_BAR_SIZE, prefetchable: false };
        config.add_bar(VIRTIO_BAR, bar).map_err(pci_err)?;
        let (body, wmask) = msix.capability(VIRTIO_BAR, MSIX_TABLE_OFFSET as u32, VIRTIO_BAR, MSIX_PBA_OFFSET as u32);
        let msix_cap = config.add_capability(MSIX_CAP_ID, &body, &wmask).map_err(pci_err)?;
        let notify_len = nqueues as u64 * u64::from(NOTIFY_OFF_MULTIPLIER);
        let caps = [
            virtio_cap(VIRTIO_PCI_CAP_COMMON_CFG, COMMON_CFG_OFFSET, COMMON_CFG_LEN, &[]),
            virtio_cap(
                VIRTIO_PCI_CAP_NOTIFY_CFG,
                NOTIFY_OFFSET,
                notify_len.max(2),
                &NOTIFY_OFF_MULTIPLIER.to_le_bytes(),
            ),
            virtio_cap(VIRTIO_PCI_CAP_ISR_CFG, ISR_OFFSET, 1, &[]),
            virtio_cap(VIRTIO_PCI_CAP_DEVICE_CFG, DEVICE_CFG_OFFSET, DEVICE_CFG_LEN, &[]),
        ];
        for body in &caps {
            config.add_capability(PCI_CAP_ID_VNDR, body, &[]).map_err(pci_err)?;
        }
        // The PCI_CFG window: bar, offset, length and data are the driver's.
        let pci_cfg = virtio_cap(VIRTIO_PCI_CAP_PCI_CFG, 0, 0, &[0; 4]);
        let wmask = [0, 0, 0xff, 0, 0, 0, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff];
        let pci_cfg_cap = config.add_capability(PCI_CAP_ID_VNDR, &pci_cfg, &wmask).map_err(pci_err)?;

        Ok(VirtioPciTransport {
            core,
            config,
            msix,
            queue_vectors: vec![NO_VECTOR; nqueues],
            config_vector: NO_VECTOR,
            isr: 0,
            intx: irqs.intx.map(|i| i.line),
            pci_cfg_cap: u16::from(pci_cfg_cap),
            msix_cap: u16::from(msix_cap),
        })
    }

    /// The notification eventfds, one per queue, in queue order.
    pub fn queue_events(&self) -> &[EventFd] {
        self.core.queue_events()
    }

    /// The offset of queue `idx`'s notification address in BAR 0.
    pub fn notify_offset(idx: usize) -> u64 {
        NOTIFY_OFFSET + idx as u64 * u64::from(NOTIFY_OFF_MULTIPLIER)
    }

    /// The virtio device ID of the wrapped device.
    pub fn device_type(&self) -> u32 {
        self.core.device_type()
    }

    /// Whether the device is running.
    pub fn is_activated(&self) -> bool {
        self.core.is_activated()
    }

    /// The MSI-X state (for tests and diagnostics).
    pub fn msix(&self) -> &Msix {
        &self.msix
    }

    /// Serves a notification of queue `idx` (the event loop, or a test
    /// playing it): drains the eventfd, lets the device process the queue
    /// and interrupts the driver if needed.
    pub fn handle_queue_event(&mut self, idx: usize) {
        let used = self.core.handle_queue_event(idx);
        self.signal_used(used);
    }

    /// Tells the driver about used buffers in `used`.
    fn signal_used(&mut self, used: QueueSet) {
        if used.is_empty() {
            return;
        }
        if self.msix.enabled() {
            // Queues sharing a vector raise it once (vectors are at most
            // MAX_QUEUES + 1, so they fit in the mask).
            let mut raised = 0u128;
            for q in used.iter() {
                let v = self.queue_vectors.get(q).copied().unwrap_or(NO_VECTOR);
                if v == NO_VECTOR || raised & (1 << (v % 128)) != 0 {
                    continue;
                }
                raised |= 1 << (v % 128);
                self.msix.trigger(v);
            }
        } else {
            self.isr |= ISR_QUEUE;
            self.raise_intx();
        }
    }

    /// Tells the driver the configuration (or the device status) changed.
    fn signal_config(&mut self) {
        self.isr |= ISR_CONFIG;
        if self.msix.enabled() {
            if self.config_vector != NO_VECTOR {
                self.msix.trigger(self.config_vector);
            }
        } else {
            self.raise_intx();
        }
    }

    fn raise_intx(&self) {
        let Some(intx) = self.intx.as_ref().filter(|_| self.config.command() & COMMAND_INTX_DISABLE == 0) else {
            return;
        };
        if let Err(e) = intx.trigger() {
            error!("virtio-pci: cannot raise INTx: {e}");
        }
    }

    fn status_changed(&mut self, change: StatusChange) {
        match change {
            StatusChange::None => {}
            StatusChange::Reset => {
                // §4.1.5.1.2: every event is unmapped on reset.
                self.isr = 0;
                self.config_vector = NO_VECTOR;
                self.queue_vectors.fill(NO_VECTOR);
            }
            StatusChange::NeedsReset => self.signal_config(),
        }
    }

    /// A vector the driver asks for, or `NO_VECTOR` if the table has no such
    /// vector (the driver reads the field back to see the mapping failed).
    fn map_vector(&mut self, v: u16) -> u16 {
        if v != NO_VECTOR && v >= self.msix.vectors() {
            guest_warn!(
                self.core,
                "MSI-X vector {v} does not exist ({} vectors); mapping refused",
                self.msix.vectors()
            );
            return NO_VECTOR;
        }
        v
    }

    // ---- common configuration ----

    fn read_common(&mut self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let len = data.len();
        let c = &self.core;
        let sel = c.queue_sel() as usize;
        let q = c.selected_queue();
        let val: u64 = match (offset, len) {
            (DEVICE_FEATURE_SELECT, 4) => u64::from(c.device_features_sel()),
            (DEVICE_FEATURE, 4) => u64::from(c.device_features_page()),
            (DRIVER_FEATURE_SELECT, 4) => u64::from(c.driver_features_sel()),
            (DRIVER_FEATURE, 4) => u64::from(c.driver_features_page()),
            (CONFIG_MSIX_VECTOR, 2) => u64::from(self.config_vector),
            (NUM_QUEUES, 2) => c.num_queues() as u64,
            (DEVICE_STATUS, 1) => u64::from(c.status() as u8),
            (CONFIG_GENERATION, 1) => u64::from(c.config_generation() as u8),
            (QUEUE_SELECT, 2) => u64::from(c.queue_sel() as u16),
            (QUEUE_SIZE, 2) => q.map_or(0, |q| u64::from(q.size())),
            (QUEUE_MSIX_VECTOR, 2) => u64::from(self.queue_vectors.get(sel).copied().unwrap_or(NO_VECTOR)),
            (QUEUE_ENABLE, 2) => q.map_or(0, |q| u64::from(q.ready())),
            (QUEUE_NOTIFY_OFF, 2) => q.map_or(0, |_| sel as u64),
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 8)
            | (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 4)
            | (0x24 | 0x2c | 0x34, 4) => {
                let field = offset & !7;
                let addr = q.map_or(0, |q| match field {
                    QUEUE_DESC => q.desc_table(),
                    QUEUE_DRIVER => q.avail_ring(),
                    _ => q.used_ring(),
                });
                if offset & 4 != 0 {
                    addr >> 32
                } else {
                    addr
                }
            }
            (o, _) if o >= COMMON_CFG_LEN => 0,
            _ => {
                guest_warn!(self.core, "{len}-byte read of common configuration at {offset:#x}; reads as zero");
                0
            }
        };
        let bytes = val.to_le_bytes();
        data.copy_from_slice(&bytes[..len]);
    }

    fn write_common(&mut self, offset: u64, data: &[u8]) {
        let len = data.len();
        let mut b = [0u8; 8];
        b[..len.min(8)].copy_from_slice(&data[..len.min(8)]);
        let val = u64::from_le_bytes(b);
        let v32 = val as u32;
        let c = &mut self.core;
        match (offset, len) {
            (DEVICE_FEATURE_SELECT, 4) => c.set_device_features_sel(v32),
            (DRIVER_FEATURE_SELECT, 4) => c.set_driver_features_sel(v32),
            (DRIVER_FEATURE, 4) => c.write_driver_features(v32),
            (CONFIG_MSIX_VECTOR, 2) => self.config_vector = self.map_vector(val as u16),
            (DEVICE_STATUS, 1) => {
                let change = c.write_status(u32::from(val as u8));
                self.status_changed(change);
            }
            (QUEUE_SELECT, 2) => c.set_queue_sel(u32::from(val as u16)),
            (QUEUE_SIZE, 2) => c.write_queue_size(v32),
            (QUEUE_MSIX_VECTOR, 2) => {
                let sel = c.queue_sel() as usize;
                if sel < self.queue_vectors.len() {
                    self.queue_vectors[sel] = self.map_vector(val as u16);
                } else {
                    guest_warn!(self.core, "queue_msix_vector written for absent queue {sel}; ignored");
                }
            }
            (QUEUE_ENABLE, 2) => c.write_queue_ready(v32),
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 8) => {
                let (lo, hi) = ring_halves(offset);
                c.write_queue_addr(lo, v32);
                c.write_queue_addr(hi, (val >> 32) as u32);
            }
            (QUEUE_DESC | QUEUE_DRIVER | QUEUE_DEVICE, 4) => c.write_queue_addr(ring_halves(offset).0, v32),
            (0x24 | 0x2c | 0x34, 4) => c.write_queue_addr(ring_halves(offset & !7).1, v32),
            _ => guest_warn!(
                c,
                "{len}-byte write of {val:#x} to common configuration at {offset:#x} (read-only, unknown or not its \
                 width) ignored"
            ),
        }
    }

    // ---- BAR 0 ----

    fn bar_read(&mut self, offset: u64, data: &mut [u8]) {
        let len = data.len() as u64;
        let region = offset / REGION_SIZE * REGION_SIZE;
        let off = offset - region;
        if off + len > REGION_SIZE {
            data.fill(0);
            guest_warn!(self.core, "{len}-byte BAR read at {offset:#x} crosses a region; reads as zero");
            return;
        }
        match region {
            COMMON_CFG_OFFSET => self.read_common(off, data),
            ISR_OFFSET => {
                data.fill(0);
                if off == 0 && !data.is_empty() {
                    // §4.1.4.5: reading ISR status clears it.
                    data[0] = std::mem::take(&mut self.isr);
                }
            }
            DEVICE_CFG_OFFSET => self.core.read_config(off, data),
            MSIX_TABLE_OFFSET => self.msix.read_table(off, data),
            MSIX_PBA_OFFSET => self.msix.read_pba(off, data),
            _ => data.fill(0),
        }
    }

    fn bar_write(&mut self, offset: u64, data: &[u8]) {
        let len = data.len() as u64;
        let region = offset / REGION_SIZE * REGION_SIZE;
        let off = offset - region;
        if off + len > REGION_SIZE {
            guest_warn!(self.core, "{len}-byte BAR write at {offset:#x} crosses a region; ignored");
            return;
        }
        match region {
            COMMON_CFG_OFFSET => self.write_common(off, data),
            DEVICE_CFG_OFFSET => self.core.write_config(off, data),
            NOTIFY_OFFSET => {
                let mult = u64::from(NOTIFY_OFF_MULTIPLIER);
                let q = off / mult;
                if off % mult != 0 || q >= self.core.num_queues() as u64 {
                    guest_warn!(self.core, "notification write at {offset:#x} is no queue's address; ignored");
                } else {
                    self.core.notify(q as u32);
                }
            }
            MSIX_TABLE_OFFSET => self.msix.write_table(off, data),
            MSIX_PBA_OFFSET => self.msix.write_pba(off, data),
            _ => guest_warn!(self.core, "{len}-byte BAR write at {offset:#x} ({}) ignored", region_name(region)),
        }
    }

    // ---- configuration space side effects ----

    /// Whether `[offset, offset + len)` overlaps `[at, at + n)`.
    fn touches(offset: u16, len: usize, at: u16, n: u16) -> bool {
        let (s, e) = (u32::from(offset), u32::from(offset) + len as u32);
        s < u32::from(at) + u32::from(n) && u32::from(at) < e
    }

    /// The BAR access the `VIRTIO_PCI_CAP_PCI_CFG` window describes now,
    /// if it is one the driver may make (§4.1.4.9.1): BAR 0, 1/2/4 bytes,
    /// aligned, inside the BAR.
    fn pci_cfg_access(&mut self) -> Option<(u64, usize)> {
        let cap = self.pci_cfg_cap;
        let bar = self.config.read_u8(cap + 4);
        let offset = u64::from(self.config.read_u32(cap + 8));
        let length = self.config.read_u32(cap + 12);
        let ok = bar == VIRTIO_BAR
            && matches!(length, 1 | 2 | 4)
            && offset % u64::from(length) == 0
            && offset + u64::from(length) <= VIRTIO_BAR_SIZE;
        if !ok {
            // An untouched window (length 0) is what a config-space dump
            // reads through; only a set-up one is worth a line.
            if length != 0 {
                guest_warn!(
                    self.core,
                    "PCI_CFG window access with bar {bar}, offset {offset:#x}, length {length}; ignored"
                );
            }
            return None;
        }
        Some((offset, length as usize))
    }
}

/// The (low, high) half selectors of the 64-bit queue address field at
/// `offset`.
fn ring_halves(offset: u64) -> (u8, u8) {
    match offset {
        QUEUE_DESC => (DESC_LO, DESC_HI),
        QUEUE_DRIVER => (AVAIL_LO, AVAIL_HI),
        _ => (USED_LO, USED_HI),
    }
}

fn region_name(region: u64) -> &'static str {
    match region {
        COMMON_CFG_OFFSET => "common configuration",
        ISR_OFFSET => "ISR status, read-only",
        NOTIFY_OFFSET => "notifications",
        _ => "nothing there",
    }
}

impl PciDevice for VirtioPciTransport {
    fn read_config(&mut self, offset: u16, data: &mut [u8]) {
        let len = data.len();
        let data_at = self.pci_cfg_cap + 16;
        if Self::touches(offset, len, data_at, 4) {
            // Refresh pci_cfg_data from the BAR first.
            if let Some((off, n)) = self.pci_cfg_access() {
                let mut buf = [0u8; 4];
                self.bar_read(off, &mut buf[..n]);
                self.config.set_bytes(data_at, &buf[..n]);
            }
        }
        self.config.read(offset, data);
        if Self::touches(offset, len, STATUS, 1) {
            // Status bit 3 follows the INTx state.
            let asserted = self.intx.is_some() && !self.msix.enabled() && self.isr != 0;
            let b = usize::from(STATUS - offset);
            if asserted {
                data[b] |= STATUS_INTERRUPT as u8;
            }
        }
    }

    fn write_config(&mut self, offset: u16, data: &[u8]) {
        let len = data.len();
        if self.config.write(offset, data) && self.core.log_take() {
            log::debug!("virtio-pci: {len}-byte configuration write at {offset:#x} hit read-only bits");
        }
        if Self::touches(offset, len, self.msix_cap + MSIX_CONTROL_OFFSET, 2) {
            let control = self.config.read_u16(self.msix_cap + MSIX_CONTROL_OFFSET);
            self.msix.set_control(control);
        }
        let data_at = self.pci_cfg_cap + 16;
        if Self::touches(offset, len, data_at, 4) {
            if let Some((off, n)) = self.pci_cfg_access() {
                let mut buf = [0u8; 4];
                self.config.read(data_at, &mut buf);
                self.bar_write(off, &buf[..n]);
            }
        }
    }

    fn bars(&self) -> [Option<BarRegion>; BAR_COUNT] {
        self.config.bars()
    }
    fn config_space(&self) -> Option<&ConfigSpace> {
        Some(&self.config)
    }
    fn config_space_mut(&mut self) -> Option<&mut ConfigSpace> {
        Some(&mut self.config)
    }

    fn read_bar(&mut self, bar: u8, offset: u64, data: &mut [u8]) {
        if bar != VIRTIO_BAR || offset.checked_add(data.len() as u64).is_none_or(|e| e > VIRTIO_BAR_SIZE) {
            data.fill(0xff);
            return;
        }
        self.bar_read(offset, data);
    }

    fn write_bar(&mut self, bar: u8, offset: u64, data: &[u8]) {
        if bar != VIRTIO_BAR || offset.checked_add(data.len() as u64).is_none_or(|e| e > VIRTIO_BAR_SIZE) {
            return;
        }
        self.bar_write(offset, data);
    }

    fn ioevents(&self) -> Vec<IoEvent<'_>> {
        self.core
            .queue_events()
            .iter()
            .enumerate()
            .map(|(i, fd)| IoEvent { bar: VIRTIO_BAR, offset: Self::notify_offset(i), fd })
            .collect()
    }
}

impl MutEventSubscriber for VirtioPciTransport {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let used = self.core.process_event(events, ops);
        self.signal_used(used);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.core.init_events(ops);
    }
}

mod state;

pub use state::PciTransportState;

#[cfg(test)]
mod tests;
