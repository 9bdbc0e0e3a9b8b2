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

use event_manager::{EventOps, EventSet, Events, MutEventSubscriber};
use log::{error, info, warn};
use virtio_bindings::bindings::virtio_config::*;
use virtio_bindings::bindings::virtio_mmio::*;
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{LogBudget, QueueSet, VirtioDevice};
use crate::bus::BusDevice;
use crate::interrupt::IrqLine;
use crate::GuestMemoryMmap;

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

/// Features the transport adds to every device.
const TRANSPORT_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);

const S_ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
const S_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
const S_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
const S_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
const S_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
const S_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
/// The driver's status bits in the order it must set them.
const STATUS_ORDER: [u32; 4] = [S_ACK, S_DRIVER, S_FEATURES_OK, S_DRIVER_OK];

/// Which queue address halves the driver wrote since the last reset.
const DESC_LO: u8 = 1 << 0;
const DESC_HI: u8 = 1 << 1;
const AVAIL_LO: u8 = 1 << 2;
const AVAIL_HI: u8 = 1 << 3;
const USED_LO: u8 = 1 << 4;
const USED_HI: u8 = 1 << 5;
const ALL_ADDRS: u8 = 0x3f;

/// Logs a guest-caused condition, within the transport's log budget.
macro_rules! guest_warn {
    ($t:ident, $($arg:tt)*) => {
        if $t.log.take("virtio-mmio: guest register access") {
            warn!("virtio-mmio ({}): {}", $t.device.device_type(), format_args!($($arg)*));
        }
    };
}

/// The virtio-mmio transport of one device.
pub struct MmioTransport {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    interrupt: MmioInterrupt,
    /// The driver's view of the queues; copies go to the device at
    /// `DRIVER_OK`.
    queues: Vec<Queue>,
    addrs_set: Vec<u8>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a non-zero `DriverFeatures` page above 1.
    driver_features_unknown: bool,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
    /// Which backend fds the event loop currently polls.
    backend_armed: Vec<bool>,
    log: LogBudget,
}

impl std::fmt::Debug for MmioTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MmioTransport")
            .field("device_type", &self.device.device_type())
            .field("status", &self.status)
            .field("activated", &self.activated)
            .finish_non_exhaustive()
    }
}

impl MmioTransport {
    /// Wraps `device`; `irq` is the interrupt line of this transport.
    ///
    /// Fails if an eventfd cannot be created or the device declares an
    /// invalid queue size (zero, not a power of two, or above 32768).
    pub fn new(device: Box<dyn VirtioDevice>, mem: GuestMemoryMmap, irq: Arc<dyn IrqLine>) -> io::Result<Self> {
        let sizes = device.queue_max_sizes();
        let mut queues = Vec::with_capacity(sizes.len());
        let mut queue_evts = Vec::with_capacity(sizes.len());
        for (i, &max) in sizes.iter().enumerate() {
            let q = Queue::new(max).map_err(|e| {
                io::Error::new(
                    io::ErrorKind::InvalidInput,
                    format!("virtio device queue {i}: bad maximum size {max}: {e}"),
                )
            })?;
            queues.push(q);
            queue_evts.push(EventFd::new(libc::EFD_NONBLOCK)?);
        }
        Ok(MmioTransport {
            addrs_set: vec![0; queues.len()],
            queues,
            queue_evts,
            device,
            mem,
            interrupt: MmioInterrupt::new(irq),
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_unknown: false,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            backend_armed: Vec::new(),
            log: LogBudget::new(64),
        })
    }

    /// The notification eventfds, one per queue, in queue order.
    pub fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// The virtio device ID of the wrapped device.
    pub fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The transport's interrupt state (`InterruptStatus` and its line).
    pub fn interrupt(&self) -> &MmioInterrupt {
        &self.interrupt
    }

    /// Whether the device is running (the driver set `DRIVER_OK` and the
    /// device accepted its queues).
    pub fn is_activated(&self) -> bool {
        self.activated
    }

    fn offered_features(&self) -> u64 {
        self.device.avail_features() | TRANSPORT_FEATURES
    }

    /// Serves a notification of queue `idx`: drains its eventfd and, when
    /// the device runs, lets it process the queue and raises the interrupt
    /// if needed.
    pub fn handle_queue_event(&mut self, idx: usize) {
        let Some(evt) = self.queue_evts.get(idx) else {
            return;
        };
        // Non-blocking: WouldBlock just means a spurious wakeup.
        let _ = evt.read();
        if !self.activated || !self.queues[idx].ready() {
            return;
        }
        let used = self.device.process_queue(idx);
        self.signal_used(used);
        self.continue_unfinished();
    }

    /// Signals the notification eventfd of every queue whose pass stopped
    /// on its budget with work left, so the event loop comes back to it
    /// after serving what else is ready.
    fn continue_unfinished(&mut self) {
        for idx in self.device.take_unfinished().iter() {
            if let Some(evt) = self.queue_evts.get(idx) {
                if let Err(e) = evt.write(1) {
                    error!("virtio-mmio: cannot signal queue {idx}: {e}");
                }
            }
        }
    }

    /// Raises the one interrupt of the transport if any queue was used.
    fn signal_used(&self, used: QueueSet) {
        if used.is_empty() {
            return;
        }
        if let Err(e) = self.interrupt.signal_used_queue() {
            error!("virtio-mmio: cannot raise the interrupt: {e}");
        }
    }

    fn reset(&mut self) {
        self.device.reset();
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.addrs_set.fill(0);
        self.interrupt.clear();
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_unknown = false;
        self.queue_sel = 0;
        self.status = 0;
        // The configuration generation keeps counting across resets so a
        // driver never sees an old value come back.
    }

    fn read_reg(&self, offset: u64) -> u32 {
        let q = self.queues.get(self.queue_sel as usize);
        match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC_VALUE,
            VIRTIO_MMIO_VERSION => MMIO_VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered_features() as u32,
                1 => (self.offered_features() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => q.map_or(0, |q| u32::from(q.max_size())),
            VIRTIO_MMIO_QUEUE_NUM => q.map_or(0, |q| u32::from(q.size())),
            VIRTIO_MMIO_QUEUE_READY => q.map_or(0, |q| u32::from(q.ready())),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt.status(),
            VIRTIO_MMIO_STATUS => self.status,
            VIRTIO_MMIO_QUEUE_DESC_LOW => q.map_or(0, |q| q.desc_table() as u32),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => q.map_or(0, |q| (q.desc_table() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => q.map_or(0, |q| q.avail_ring() as u32),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => q.map_or(0, |q| (q.avail_ring() >> 32) as u32),
            VIRTIO_MMIO_QUEUE_USED_LOW => q.map_or(0, |q| q.used_ring() as u32),
            VIRTIO_MMIO_QUEUE_USED_HIGH => q.map_or(0, |q| (q.used_ring() >> 32) as u32),
            VIRTIO_MMIO_CONFIG_GENERATION => self.config_generation,
            // Shared memory regions: none (SHMLen reads as all ones).
            VIRTIO_MMIO_SHM_LEN_LOW | VIRTIO_MMIO_SHM_LEN_HIGH => u32::MAX,
            _ => 0,
        }
    }

    fn write_reg(&mut self, offset: u64, val: u32) {
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = val,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = val,
            VIRTIO_MMIO_DRIVER_FEATURES => self.write_driver_features(val),
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = val,
            VIRTIO_MMIO_QUEUE_NUM => {
                if let Some(i) = self.writable_queue("QueueNum") {
                    let max = self.queues[i].max_size();
                    let ok = u16::try_from(val).ok().is_some_and(|n| self.queues[i].try_set_size(n).is_ok());
                    if !ok {
                        guest_warn!(self, "queue {i}: QueueNum {val} refused (must be a power of two, 1..={max})");
                    }
                }
            }
            VIRTIO_MMIO_QUEUE_READY => self.write_queue_ready(val),
            VIRTIO_MMIO_QUEUE_NOTIFY => match self.queue_evts.get(val as usize) {
                Some(evt) => {
                    if let Err(e) = evt.write(1) {
                        error!("virtio-mmio: cannot signal queue {val}: {e}");
                    }
                }
                None => guest_warn!(self, "QueueNotify for absent queue {val}"),
            },
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt.ack(val),
            VIRTIO_MMIO_STATUS => self.write_status(val),
            VIRTIO_MMIO_QUEUE_DESC_LOW => self.write_queue_addr(DESC_LO, val),
            VIRTIO_MMIO_QUEUE_DESC_HIGH => self.write_queue_addr(DESC_HI, val),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW => self.write_queue_addr(AVAIL_LO, val),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH => self.write_queue_addr(AVAIL_HI, val),
            VIRTIO_MMIO_QUEUE_USED_LOW => self.write_queue_addr(USED_LO, val),
            VIRTIO_MMIO_QUEUE_USED_HIGH => self.write_queue_addr(USED_HI, val),
            _ => guest_warn!(self, "write {val:#x} to read-only or unknown register {offset:#x} ignored"),
        }
    }

    fn write_driver_features(&mut self, val: u32) {
        if self.status & S_DRIVER == 0 || self.status & S_FEATURES_OK != 0 {
            guest_warn!(self, "DriverFeatures written in status {:#x}; ignored", self.status);
            return;
        }
        match self.driver_features_sel {
            0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(val),
            1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(val) << 32),
            _ => {
                if val != 0 {
                    self.driver_features_unknown = true;
                }
            }
        }
    }

    /// The selected queue if its registers may be written now: before
    /// `DRIVER_OK` and while the queue is not ready.
    fn writable_queue(&mut self, reg: &str) -> Option<usize> {
        let i = self.queue_sel as usize;
        if self.status & S_DRIVER_OK != 0 {
            guest_warn!(self, "{reg} written after DRIVER_OK; ignored");
            return None;
        }
        match self.queues.get(i) {
            None => {
                guest_warn!(self, "{reg} written for absent queue {i}; ignored");
                None
            }
            Some(q) if q.ready() => {
                guest_warn!(self, "{reg} written while queue {i} is ready; ignored");
                None
            }
            Some(_) => Some(i),
        }
    }

    fn write_queue_addr(&mut self, half: u8, val: u32) {
        let Some(i) = self.writable_queue("queue address") else {
            return;
        };
        let q = &mut self.queues[i];
        let (cur, hi) = match half {
            DESC_LO | DESC_HI => (q.desc_table(), half == DESC_HI),
            AVAIL_LO | AVAIL_HI => (q.avail_ring(), half == AVAIL_HI),
            _ => (q.used_ring(), half == USED_HI),
        };
        let new = if hi { (cur & 0xffff_ffff) | (u64::from(val) << 32) } else { (cur & !0xffff_ffff) | u64::from(val) };
        let res = match half {
            DESC_LO | DESC_HI => q.try_set_desc_table_address(GuestAddress(new)),
            AVAIL_LO | AVAIL_HI => q.try_set_avail_ring_address(GuestAddress(new)),
            _ => q.try_set_used_ring_address(GuestAddress(new)),
        };
        match res {
            Ok(()) => self.addrs_set[i] |= half,
            Err(e) => {
                self.addrs_set[i] &= !half;
                guest_warn!(self, "queue {i}: address {new:#x} refused: {e}");
            }
        }
    }

    fn write_queue_ready(&mut self, val: u32) {
        let i = self.queue_sel as usize;
        if val == 0 {
            // Un-readying a queue is allowed before DRIVER_OK (Linux does
            // it when it tears a queue down after a failed setup).
            if self.status & S_DRIVER_OK != 0 {
                guest_warn!(self, "QueueReady=0 after DRIVER_OK; ignored");
            } else if let Some(q) = self.queues.get_mut(i) {
                q.set_ready(false);
            }
            return;
        }
        if val != 1 {
            guest_warn!(self, "QueueReady={val} ignored");
            return;
        }
        let Some(i) = self.writable_queue("QueueReady") else {
            return;
        };
        if self.addrs_set[i] != ALL_ADDRS {
            guest_warn!(self, "queue {i}: QueueReady before all ring addresses were set; refused");
            return;
        }
        let q = &mut self.queues[i];
        // The used ring is written by the device: it must not overlap the
        // descriptor table or the available ring, or the device's own
        // writes would rewrite what the driver published (a fuzzer found a
        // layout that made the device's queue loop spin forever).
        let size = u64::from(q.size());
        let desc = (q.desc_table(), 16 * size);
        let avail = (q.avail_ring(), 6 + 2 * size);
        let used = (q.used_ring(), 6 + 8 * size);
        let overlaps = |a: (u64, u64), b: (u64, u64)| a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1);
        if overlaps(used, desc) || overlaps(used, avail) {
            guest_warn!(
                self,
                "queue {i}: the used ring overlaps the descriptor table or available ring; QueueReady refused"
            );
            return;
        }
        // Checked here rather than with virtio-queue's `is_valid`, which
        // logs every refusal itself, outside the transport's budget (one
        // line per MMIO write).
        let in_memory = |(addr, len): (u64, u64)| self.mem.check_range(GuestAddress(addr), len as usize);
        if !(in_memory(desc) && in_memory(avail) && in_memory(used)) {
            guest_warn!(self, "queue {i}: rings are not in guest memory; QueueReady refused");
            return;
        }
        q.set_ready(true);
    }

    fn write_status(&mut self, val: u32) {
        if val == 0 {
            self.reset();
            return;
        }
        if val & S_FAILED != 0 {
            if self.log.take("virtio-mmio: guest register access") {
                info!("virtio-mmio ({}): driver gave up on the device (FAILED)", self.device.device_type());
            }
            self.status |= S_FAILED;
            return;
        }
        if self.status & (S_FAILED | S_NEEDS_RESET) != 0 {
            guest_warn!(self, "status write {val:#x} while the device needs a reset; ignored");
            return;
        }
        // The driver may echo NEEDS_RESET back; it is the device's bit.
        let new = val & !S_NEEDS_RESET;
        let cur = self.status;
        let valid_target = (0..=STATUS_ORDER.len()).any(|n| STATUS_ORDER[..n].iter().fold(0, |acc, b| acc | b) == new);
        if !valid_target || new & cur != cur {
            guest_warn!(self, "invalid status transition {cur:#x} -> {val:#x}; ignored");
            return;
        }
        for bit in STATUS_ORDER {
            if new & bit == 0 || cur & bit != 0 {
                continue;
            }
            match bit {
                S_FEATURES_OK if !self.features_acceptable() => return,
                S_FEATURES_OK => self.device.ack_features(self.driver_features),
                S_DRIVER_OK => {
                    self.status |= bit;
                    self.activate();
                    continue;
                }
                _ => {}
            }
            self.status |= bit;
        }
    }

    fn features_acceptable(&mut self) -> bool {
        let offered = self.offered_features();
        let acked = self.driver_features;
        if self.driver_features_unknown || acked & !offered != 0 {
            guest_warn!(
                self,
                "driver accepted features {:#x} not offered ({offered:#x}); FEATURES_OK refused",
                acked & !offered
            );
            false
        } else if acked & (1 << VIRTIO_F_VERSION_1) == 0 {
            guest_warn!(self, "driver did not accept VIRTIO_F_VERSION_1 (legacy driver); FEATURES_OK refused");
            false
        } else {
            true
        }
    }

    fn activate(&mut self) {
        let event_idx = self.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut queues = Vec::with_capacity(self.queues.len());
        for q in &self.queues {
            // The driver's queue state was validated when written; the copy
            // cannot fail, but a failure must not panic either.
            match Queue::try_from(q.state()) {
                Ok(mut copy) => {
                    copy.set_event_idx(event_idx);
                    queues.push(copy);
                }
                Err(e) => {
                    self.activation_failed(&format!("cannot copy queue state: {e}"));
                    return;
                }
            }
        }
        match self.device.activate(self.mem.clone(), queues) {
            Ok(()) => self.activated = true,
            Err(e) => self.activation_failed(&e.to_string()),
        }
    }

    fn activation_failed(&mut self, why: &str) {
        // A driver can make activation fail on every reset -> DRIVER_OK
        // cycle: within the budget of guest-caused lines.
        if self.log.take("virtio-mmio: guest register access") {
            error!("virtio-mmio ({}): device activation failed: {why}", self.device.device_type());
        }
        self.status |= S_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        if let Err(e) = self.interrupt.signal_config_change() {
            error!("virtio-mmio: cannot raise the interrupt: {e}");
        }
    }
}

impl BusDevice for MmioTransport {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device.read_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        if data.len() != 4 {
            data.fill(0);
            guest_warn!(self, "{}-byte read of register {offset:#x}; registers are 32-bit", data.len());
            return;
        }
        data.copy_from_slice(&self.read_reg(offset).to_le_bytes());
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if offset >= u64::from(VIRTIO_MMIO_CONFIG) {
            self.device.write_config(offset - u64::from(VIRTIO_MMIO_CONFIG), data);
            return;
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            guest_warn!(self, "{}-byte write to register {offset:#x} ignored; registers are 32-bit", data.len());
            return;
        };
        self.write_reg(offset, u32::from_le_bytes(bytes));
    }
}

impl MmioTransport {
    /// Polls each backend fd exactly while the active device wants input.
    fn rearm_backends(&mut self, ops: &mut EventOps) {
        let base = self.queue_evts.len();
        for (i, fd) in self.device.backend_fds().into_iter().enumerate() {
            if self.backend_armed.len() <= i {
                self.backend_armed.push(false);
            }
            let want = self.activated && self.device.backend_wants_input(i);
            if want == self.backend_armed[i] {
                continue;
            }
            let ev = Events::with_data_raw(fd, (base + i) as u32, EventSet::IN);
            let r = if want { ops.add(ev) } else { ops.remove(ev) };
            match r {
                Ok(()) => self.backend_armed[i] = want,
                Err(e) => error!("virtio-mmio: cannot change polling of backend fd {fd}: {e}"),
            }
        }
    }
}

impl MutEventSubscriber for MmioTransport {
    fn process(&mut self, events: Events, ops: &mut EventOps) {
        let idx = events.data() as usize;
        let nqueues = self.queue_evts.len();
        if idx < nqueues {
            self.handle_queue_event(idx);
        } else if self.activated {
            let used = self.device.process_backend(idx - nqueues);
            self.signal_used(used);
            self.continue_unfinished();
        }
        self.rearm_backends(ops);
    }

    fn init(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                error!("virtio-mmio: cannot watch queue {i} notifications: {e}");
            }
        }
        // Backend fds are polled only once the device is active and wants
        // input (see VirtioDevice::backend_wants_input).
        self.rearm_backends(ops);
    }
}

#[cfg(test)]
mod tests;
