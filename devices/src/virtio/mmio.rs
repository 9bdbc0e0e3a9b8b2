//! The virtio-mmio transport, register layout version 2 (virtio 1.x
//! §4.2.2).
//!
//! [`MmioTransport`] owns a [`VirtioDevice`] and presents it to the guest as
//! a 4 KiB register window. The VMM places it on the MMIO bus behind an
//! `Arc<Mutex<MmioTransport>>` (vCPU threads call [`BusDevice`]) and adds the
//! same `Arc<Mutex<..>>` to its event loop ([`MutEventSubscriber`]), which
//! serves the per-queue notification eventfds from
//! [`MmioTransport::queue_events`]. The VMM registers each of them with
//! `KVM_IOEVENTFD` at `base + 0x50` with the queue index as data match, so a
//! guest kick does not exit to user space; a `QueueNotify` write that does
//! reach [`BusDevice::write`] signals the same eventfd.
//!
//! Every register write is guest input: any offset, width, value or order is
//! accepted without panicking; invalid ones are logged (with a bounded
//! budget) and ignored.

use std::io;
use std::sync::Arc;

use event_manager::{EventOps, Events, MutEventSubscriber};
use log::error;
use virtio_bindings::bindings::virtio_mmio::*;
use virtio_queue::QueueT;
use vmm_sys_util::eventfd::EventFd;

use super::transport::{
    guest_warn, StatusChange, TransportCore, AVAIL_HI, AVAIL_LO, DESC_HI, DESC_LO, USED_HI, USED_LO,
};
use super::{QueueSet, VirtioDevice, VirtioState};
use crate::bus::BusDevice;
use crate::interrupt::IrqLine;
use crate::snapshot::{RestoreError, SaveError};
use crate::GuestMemoryMmap;

#[cfg(test)]
use super::transport::{S_ACK, S_DRIVER, S_DRIVER_OK, S_FAILED, S_FEATURES_OK, S_NEEDS_RESET};
#[cfg(test)]
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
#[cfg(test)]
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
#[cfg(test)]
use virtio_queue::Queue;

mod interrupt;

pub use interrupt::MmioInterrupt;

/// Size of the register window of one transport.
pub const MMIO_SIZE: u64 = 0x1000;

/// `MagicValue`: "virt" in little-endian.
pub const MAGIC_VALUE: u32 = 0x7472_6976;
/// The register layout version implemented (virtio 1.x, non-legacy).
pub const MMIO_VERSION: u32 = 2;
/// `VendorID`: "EMBR".
pub const VENDOR_ID: u32 = u32::from_le_bytes(*b"EMBR");

/// The virtio-mmio transport of one device.
pub struct MmioTransport {
    core: TransportCore,
    interrupt: MmioInterrupt,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.core.device_type())
            .field("status", &self.core.status())
            .field("activated", &self.core.is_activated())
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`; `irq` is the interrupt line of this transport.
    ///
    /// Fails if an eventfd cannot be created or the device declares an
    /// invalid queue size (zero, not a power of two, or above 32768).
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: Arc<dyn IrqLine>) -> io::Result<Self> {
        let core = TransportCore::new(device, mem, "virtio-mmio", "virtio-mmio: guest register access")?;
        Ok(MmioTransport { core, interrupt: MmioInterrupt::new(irq) })
    }

    /// The notification eventfds, one per queue, in queue order.
    pub fn queue_events(&self) -> &[EventFd] {
        self.core.queue_events()
    }

    /// The virtio device ID of the wrapped device.
    pub fn device_type(&self) -> u32 {
        self.core.device_type()
    }

    /// The transport's interrupt state (`InterruptStatus` and its line).
    pub fn interrupt(&self) -> &MmioInterrupt {
        &self.interrupt
    }

    /// Whether the device is running (the driver set `DRIVER_OK` and the
    /// device accepted its queues).
    pub fn is_activated(&self) -> bool {
        self.core.is_activated()
    }

    /// Serves a notification of queue `idx`: drains its eventfd and, when
    /// the device runs, lets it process the queue and raises the interrupt
    /// if needed.
    pub fn handle_queue_event(&mut self, idx: usize) {
        let used = self.core.handle_queue_event(idx);
        self.signal_used(used);
    }

    /// One line for every queue: `InterruptStatus` bit 0 and the IRQ.
    fn signal_used(&self, used: QueueSet) {
        if used.is_empty() {
            return;
        }
        if let Err(e) = self.interrupt.signal_used_queue() {
            error!("virtio-mmio: cannot raise the interrupt: {e}");
        }
    }

    fn status_changed(&self, change: StatusChange) {
        match change {
            StatusChange::None => {}
            StatusChange::Reset => self.interrupt.clear(),
            StatusChange::NeedsReset => {
                if let Err(e) = self.interrupt.signal_config_change() {
                    error!("virtio-mmio: cannot raise the interrupt: {e}");
                }
            }
        }
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let c = &self.core;
        let q = c.selected_queue();
        match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => c.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => c.device_features_page(),
            VIRTIO_MMIO_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_NUM => q.map_or(0, |q| u32::from(q.size())),
            VIRTIO_MMIO_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => c.status(),
            VIRTIO_MMIO_QUEUE_DESC_LOW => q.map_or(0, |q| q.desc_table() as u32),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => q.map_or(0, |q| (q.desc_table() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.map_or(0, |q| q.avail_ring() as u32),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.map_or(0, |q| (q.avail_ring() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_USED_LOW => q.map_or(0, |q| q.used_ring() as u32),
            VIRTIO_MMIO_QUEUE_USED_HIGH => q.map_or(0, |q| (q.used_ring() >> 32) as u32),
            VIRTIO_MMIO_CONFIG_GENERATION => c.config_generation(),
            // Shared memory regions: none (SHMLen reads as all ones).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, val: u32) {
        let c = &mut self.core;
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => c.set_device_features_sel(val),
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => c.set_driver_features_sel(val),
            VIRTIO_MMIO_DRIVER_FEATURES => c.write_driver_features(val),
            VIRTIO_MMIO_QUEUE_SEL => c.set_queue_sel(val),
            VIRTIO_MMIO_QUEUE_NUM => c.write_queue_size(val),
            VIRTIO_MMIO_QUEUE_READY => c.write_queue_ready(val),
            VIRTIO_MMIO_QUEUE_NOTIFY => c.notify(val),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(val),
            VIRTIO_MMIO_STATUS => {
                let change = c.write_status(val);
                self.status_changed(change);
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW => c.write_queue_addr(DESC_LO, val),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => c.write_queue_addr(DESC_HI, val),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => c.write_queue_addr(AVAIL_LO, val),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => c.write_queue_addr(AVAIL_HI, val),
            VIRTIO_MMIO_QUEUE_USED_LOW => c.write_queue_addr(USED_LO, val),
            VIRTIO_MMIO_QUEUE_USED_HIGH => c.write_queue_addr(USED_HI, val),
            _ => guest_warn!(c, "write {val:#x} to read-only or unknown register {offset:#x} ignored"),
        }
    }
}

/// The saved state of a virtio-mmio transport and its device.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MmioTransportState {
    virtio: VirtioState,
    interrupt_status: u32,
}

impl MmioTransport {
    /// The transport's and its device's state: registers, negotiation,
    /// status and the queues (the device's live ones while it runs).
    /// Fails for a device a snapshot cannot carry (virtio-9p).
    pub fn save_state(&self) -> Result<MmioTransportState, SaveError> {
        Ok(MmioTransportState { virtio: self.core.save_state()?, interrupt_status: self.interrupt.status() })
    }

    /// Puts `state` back into this freshly built transport (same device
    /// type and backend, never touched by a guest), before the event loop
    /// and the vCPUs run. A device the driver had started is activated as
    /// at `DRIVER_OK`, with its queues exactly as saved; a pending
    /// interrupt is raised again. On an error the transport is left as
    /// built.
    pub fn restore_state(&mut self, state: &MmioTransportState) -> Result<(), RestoreError> {
        let known = VIRTIO_MMIO_INT_VRING | VIRTIO_MMIO_INT_CONFIG;
        if state.interrupt_status & !known != 0 {
            return Err(RestoreError::Value {
                device: "virtio-mmio",
                field: "interrupt status",
                value: state.interrupt_status.into(),
                why: "unknown bits",
            });
        }
        self.core.restore_state(&state.virtio)?;
        if let Err(e) = self.interrupt.restore(state.interrupt_status) {
            error!("virtio-mmio: cannot raise the interrupt: {e}");
        }
        Ok(())
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.core.read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            guest_warn!(self.core, "{}-byte read of register {offset:#x}; registers are 32-bit", data.len());
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.core.write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!(self.core, "{}-byte write to register {offset:#x} ignored; registers are 32-bit", data.len());
            return;
        };
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

impl MutEventSubscriber for MmioTransport {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let used = self.core.process_event(events, ops);
        self.signal_used(used);
    }

    fn init(&mut self, ops: &mut EventOps) {
        self.core.init_events(ops);
    }
}

#[cfg(test)]
mod tests;
