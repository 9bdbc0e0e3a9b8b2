//! The transport-independent half of a virtio transport (virtio 1.x §2,
//! §3.1, §4.1.4.3, §4.2.2): what virtio-mmio and virtio-pci share.
//!
//! [`TransportCore`] owns the [`VirtioDevice`] and everything about it that
//! does not depend on how the registers are laid out: feature negotiation
//! and its selectors, the device status state machine (with reset and the
//! `FEATURES_OK` checks), the driver's view of the queues with the
//! `QueueReady` validity checks, one notification eventfd per queue,
//! activation at `DRIVER_OK`, the configuration generation, the log budget
//! for guest mistakes, and the event-loop side (queue and backend events).
//!
//! A transport (`mmio.rs`, `pci.rs`) decodes its register layout into calls
//! here and decides how to interrupt the driver: the core hands on *which
//! queues* have used buffers to signal (the device's [`QueueSet`]) and when the
//! configuration changed ([`StatusChange::NeedsReset`]).
//!
//! Every write is guest input: any value, in any order, is accepted without
//! panicking; invalid ones are logged (with a bounded budget) and ignored.

use std::io;

use event_manager::{EventOps, EventSet, Events};
use log::{error, info};
use virtio_bindings::bindings::virtio_config::*;
use virtio_bindings::bindings::virtio_ring::{VIRTIO_RING_F_EVENT_IDX, VIRTIO_RING_F_INDIRECT_DESC};
use virtio_queue::{Queue, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{LogBudget, QueueSet, VirtioDevice};
use crate::GuestMemoryMmap;

mod state;

pub use state::{QueueSnapshot, VirtioState};

/// Features the transport adds to every device.
pub(crate) const TRANSPORT_FEATURES: u64 =
    (1 << VIRTIO_F_VERSION_1) | (1 << VIRTIO_RING_F_EVENT_IDX) | (1 << VIRTIO_RING_F_INDIRECT_DESC);

pub(crate) const S_ACK: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE;
pub(crate) const S_DRIVER: u32 = VIRTIO_CONFIG_S_DRIVER;
pub(crate) const S_FEATURES_OK: u32 = VIRTIO_CONFIG_S_FEATURES_OK;
pub(crate) const S_DRIVER_OK: u32 = VIRTIO_CONFIG_S_DRIVER_OK;
pub(crate) const S_NEEDS_RESET: u32 = VIRTIO_CONFIG_S_NEEDS_RESET;
pub(crate) const S_FAILED: u32 = VIRTIO_CONFIG_S_FAILED;
/// The driver's status bits in the order it must set them.
const STATUS_ORDER: [u32; 4] = [S_ACK, S_DRIVER, S_FEATURES_OK, S_DRIVER_OK];

/// Which queue address half a write targets; also the bits of the "written
/// since reset" mask kept per queue.
pub(crate) const DESC_LO: u8 = 1 << 0;
pub(crate) const DESC_HI: u8 = 1 << 1;
pub(crate) const AVAIL_LO: u8 = 1 << 2;
pub(crate) const AVAIL_HI: u8 = 1 << 3;
pub(crate) const USED_LO: u8 = 1 << 4;
pub(crate) const USED_HI: u8 = 1 << 5;
const ALL_ADDRS: u8 = 0x3f;

/// Most queues a transport serves (the width of a [`QueueSet`]).
pub(crate) const MAX_QUEUES: usize = 64;

/// Logs a guest-caused condition, within the transport's log budget.
macro_rules! guest_warn {
    ($core:expr, $($arg:tt)*) => {
        if $core.log_take() {
            log::warn!("{} ({}): {}", $core.name(), $core.device_type(), format_args!($($arg)*));
        }
    };
}
pub(crate) use guest_warn;

/// What a status write did beyond changing the status.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum StatusChange {
    /// Nothing the transport must act on.
    None,
    /// The driver reset the device: the transport clears its own interrupt
    /// state (and, on PCI, the MSI-X vector mapping).
    Reset,
    /// The device could not start and set `DEVICE_NEEDS_RESET`; the
    /// configuration generation moved. The transport sends a configuration
    /// change notification.
    NeedsReset,
}

/// Why the rings of `q` (at its size) cannot be used, or `None`.
///
/// The used ring is written by the device: it must not overlap the
/// descriptor table or the available ring, or the device's own writes
/// would rewrite what the driver published (a fuzzer found a layout that
/// made the device's queue loop spin forever). Memory is checked here
/// rather than with virtio-queue's `is_valid`, which logs every refusal
/// itself, outside the transport's budget.
fn ring_layout_error(q: &Queue, mem: &GuestMemoryMmap) -> Option<&'static str> {
    let size = u64::from(q.size());
    let desc = (q.desc_table(), 16 * size);
    let avail = (q.avail_ring(), 6 + 2 * size);
    let used = (q.used_ring(), 6 + 8 * size);
    let overlaps = |a: (u64, u64), b: (u64, u64)| a.0 < b.0.saturating_add(b.1) && b.0 < a.0.saturating_add(a.1);
    if overlaps(used, desc) || overlaps(used, avail) {
        return Some("the used ring overlaps the descriptor table or available ring");
    }
    let in_memory = |(addr, len): (u64, u64)| mem.check_range(GuestAddress(addr), len as usize);
    if !(in_memory(desc) && in_memory(avail) && in_memory(used)) {
        return Some("rings are not in guest memory");
    }
    None
}

/// The transport-independent state of one virtio device.
pub(crate) struct TransportCore {
    device: Box<dyn VirtioDevice>,
    mem: GuestMemoryMmap,
    /// The driver's view of the queues; copies go to the device at
    /// `DRIVER_OK`.
    queues: Vec<Queue>,
    addrs_set: Vec<u8>,
    queue_evts: Vec<EventFd>,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    /// The driver wrote a non-zero feature page above 1.
    driver_features_unknown: bool,
    queue_sel: u32,
    status: u32,
    config_generation: u32,
    activated: bool,
    /// Which backend fds the event loop currently polls.
    backend_armed: Vec<bool>,
    name: &'static str,
    log_what: &'static str,
    log: LogBudget,
}

impl TransportCore {
    /// Wraps `device`. `name` ("virtio-mmio", "virtio-pci") prefixes log
    /// lines; `log_what` names the budget in its "suppressed" line.
    ///
    /// Fails if an eventfd cannot be created or the device declares an
    /// invalid queue size (zero, not a power of two, or above 32768) or
    /// more than [`MAX_QUEUES`] queues.
    pub(crate) fn new(
        device: Box<dyn VirtioDevice>,
        mem: GuestMemoryMmap,
        name: &'static str,
        log_what: &'static str,
    ) -> io::Result<Self> {
        let sizes = device.queue_max_sizes();
        if sizes.len() > MAX_QUEUES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("virtio device declares {} queues; at most {MAX_QUEUES} are supported", sizes.len()),
            ));
        }
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
        Ok(TransportCore {
            addrs_set: vec![0; queues.len()],
            queues,
            queue_evts,
            device,
            mem,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            driver_features_unknown: false,
            queue_sel: 0,
            status: 0,
            config_generation: 0,
            activated: false,
            backend_armed: Vec::new(),
            name,
            log_what,
            log: LogBudget::new(64),
        })
    }

    /// Whether one more guest-caused line may be logged.
    pub(crate) fn log_take(&mut self) -> bool {
        self.log.take(self.log_what)
    }

    /// The transport's name in log lines.
    pub(crate) fn name(&self) -> &'static str {
        self.name
    }

    /// The virtio device ID of the wrapped device.
    pub(crate) fn device_type(&self) -> u32 {
        self.device.device_type()
    }

    /// The notification eventfds, one per queue, in queue order.
    pub(crate) fn queue_events(&self) -> &[EventFd] {
        &self.queue_evts
    }

    /// How many queues the device has.
    pub(crate) fn num_queues(&self) -> usize {
        self.queues.len()
    }

    /// Whether the device is running.
    pub(crate) fn is_activated(&self) -> bool {
        self.activated
    }

    /// The device status.
    pub(crate) fn status(&self) -> u32 {
        self.status
    }

    /// The configuration generation.
    pub(crate) fn config_generation(&self) -> u32 {
        self.config_generation
    }

    /// The features the driver wrote so far (all 64 bits).
    #[cfg(test)]
    pub(crate) fn driver_features(&self) -> u64 {
        self.driver_features
    }

    fn offered_features(&self) -> u64 {
        self.device.avail_features() | TRANSPORT_FEATURES
    }

    // ---- features ----

    /// The device feature selector.
    pub(crate) fn device_features_sel(&self) -> u32 {
        self.device_features_sel
    }

    /// Sets the device feature selector.
    pub(crate) fn set_device_features_sel(&mut self, val: u32) {
        self.device_features_sel = val;
    }

    /// The page of offered features the selector points at (zero past bit
    /// 63).
    pub(crate) fn device_features_page(&self) -> u32 {
        match self.device_features_sel {
            0 => self.offered_features() as u32,
            1 => (self.offered_features() >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver feature selector.
    pub(crate) fn driver_features_sel(&self) -> u32 {
        self.driver_features_sel
    }

    /// Sets the driver feature selector.
    pub(crate) fn set_driver_features_sel(&mut self, val: u32) {
        self.driver_features_sel = val;
    }

    /// The page of accepted features the selector points at.
    pub(crate) fn driver_features_page(&self) -> u32 {
        match self.driver_features_sel {
            0 => self.driver_features as u32,
            1 => (self.driver_features >> 32) as u32,
            _ => 0,
        }
    }

    /// The driver writes the selected page of accepted features; only
    /// between `DRIVER` and `FEATURES_OK`.
    pub(crate) fn write_driver_features(&mut self, val: u32) {
        if self.status & S_DRIVER == 0 || self.status & S_FEATURES_OK != 0 {
            guest_warn!(self, "driver features written in status {:#x}; ignored", self.status);
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

    // ---- queues ----

    /// The queue selector.
    pub(crate) fn queue_sel(&self) -> u32 {
        self.queue_sel
    }

    /// Sets the queue selector (any value; an absent queue reads as zeros).
    pub(crate) fn set_queue_sel(&mut self, val: u32) {
        self.queue_sel = val;
    }

    /// The selected queue, if it exists.
    pub(crate) fn selected_queue(&self) -> Option<&Queue> {
        self.queues.get(self.queue_sel as usize)
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

    /// The driver sets the selected queue's size.
    pub(crate) fn write_queue_size(&mut self, val: u32) {
        if let Some(i) = self.writable_queue("queue size") {
            let max = self.queues[i].max_size();
            let ok = u16::try_from(val).ok().is_some_and(|n| self.queues[i].try_set_size(n).is_ok());
            if !ok {
                guest_warn!(self, "queue {i}: size {val} refused (must be a power of two, 1..={max})");
            }
        }
    }

    /// The driver writes one 32-bit half (`DESC_LO` .. `USED_HI`) of a ring
    /// address of the selected queue.
    pub(crate) fn write_queue_addr(&mut self, half: u8, val: u32) {
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

    /// The driver writes the selected queue's ready (enable) register.
    pub(crate) fn write_queue_ready(&mut self, val: u32) {
        let i = self.queue_sel as usize;
        if val == 0 {
            // Un-readying a queue is allowed before DRIVER_OK (Linux does
            // it when it tears a queue down after a failed setup).
            if self.status & S_DRIVER_OK != 0 {
                guest_warn!(self, "queue ready = 0 after DRIVER_OK; ignored");
            } else if let Some(q) = self.queues.get_mut(i) {
                q.set_ready(false);
            }
            return;
        }
        if val != 1 {
            guest_warn!(self, "queue ready = {val} ignored");
            return;
        }
        let Some(i) = self.writable_queue("queue ready") else {
            return;
        };
        if self.addrs_set[i] != ALL_ADDRS {
            guest_warn!(self, "queue {i}: made ready before all ring addresses were set; refused");
            return;
        }
        if let Some(why) = ring_layout_error(&self.queues[i], &self.mem) {
            guest_warn!(self, "queue {i}: {why}; refused");
            return;
        }
        let q = &mut self.queues[i];
        q.set_ready(true);
    }

    /// A driver notification of queue `idx` that reached a register (not
    /// an ioeventfd): signals the same eventfd.
    pub(crate) fn notify(&mut self, idx: u32) {
        match self.queue_evts.get(idx as usize) {
            Some(evt) => {
                if let Err(e) = evt.write(1) {
                    error!("{}: cannot signal queue {idx}: {e}", self.name);
                }
            }
            None => guest_warn!(self, "notification for absent queue {idx}"),
        }
    }

    // ---- status ----

    fn reset(&mut self) {
        self.device.reset();
        self.activated = false;
        for q in &mut self.queues {
            q.reset();
        }
        self.addrs_set.fill(0);
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.driver_features_unknown = false;
        self.queue_sel = 0;
        self.status = 0;
        // The configuration generation keeps counting across resets so a
        // driver never sees an old value come back.
    }

    /// The driver writes the device status.
    pub(crate) fn write_status(&mut self, val: u32) -> StatusChange {
        if val == 0 {
            self.reset();
            return StatusChange::Reset;
        }
        if val & S_FAILED != 0 {
            if self.log_take() {
                info!("{} ({}): driver gave up on the device (FAILED)", self.name, self.device.device_type());
            }
            self.status |= S_FAILED;
            return StatusChange::None;
        }
        if self.status & (S_FAILED | S_NEEDS_RESET) != 0 {
            guest_warn!(self, "status write {val:#x} while the device needs a reset; ignored");
            return StatusChange::None;
        }
        // The driver may echo NEEDS_RESET back; it is the device's bit.
        let new = val & !S_NEEDS_RESET;
        let cur = self.status;
        let valid_target = (0..=STATUS_ORDER.len()).any(|n| STATUS_ORDER[..n].iter().fold(0, |acc, b| acc | b) == new);
        if !valid_target || new & cur != cur {
            guest_warn!(self, "invalid status transition {cur:#x} -> {val:#x}; ignored");
            return StatusChange::None;
        }
        for bit in STATUS_ORDER {
            if new & bit == 0 || cur & bit != 0 {
                continue;
            }
            match bit {
                S_FEATURES_OK if !self.features_acceptable() => return StatusChange::None,
                S_FEATURES_OK => self.device.ack_features(self.driver_features),
                S_DRIVER_OK => {
                    self.status |= bit;
                    return self.activate();
                }
                _ => {}
            }
            self.status |= bit;
        }
        StatusChange::None
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

    fn activate(&mut self) -> StatusChange {
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
                Err(e) => return self.activation_failed(&format!("cannot copy queue state: {e}")),
            }
        }
        match self.device.activate(self.mem.clone(), queues) {
            Ok(()) => {
                self.activated = true;
                StatusChange::None
            }
            Err(e) => self.activation_failed(&e.to_string()),
        }
    }

    fn activation_failed(&mut self, why: &str) -> StatusChange {
        // A driver can make activation fail on every reset -> DRIVER_OK
        // cycle: within the budget of guest-caused lines.
        if self.log_take() {
            error!("{} ({}): device activation failed: {why}", self.name, self.device.device_type());
        }
        self.status |= S_NEEDS_RESET;
        self.config_generation = self.config_generation.wrapping_add(1);
        StatusChange::NeedsReset
    }

    // ---- device configuration space ----

    /// Reads the device configuration space.
    pub(crate) fn read_config(&self, offset: u64, data: &mut [u8]) {
        self.device.read_config(offset, data);
    }

    /// Writes the device configuration space.
    pub(crate) fn write_config(&mut self, offset: u64, data: &[u8]) {
        self.device.write_config(offset, data);
    }

    // ---- event loop ----

    /// Serves a notification of queue `idx`: drains its eventfd and, when
    /// the device runs, lets it process the queue. Returns the queues to
    /// signal.
    pub(crate) fn handle_queue_event(&mut self, idx: usize) -> QueueSet {
        let Some(evt) = self.queue_evts.get(idx) else {
            return QueueSet::EMPTY;
        };
        // Non-blocking: WouldBlock just means a spurious wakeup.
        let _ = evt.read();
        if !self.activated || !self.queues[idx].ready() {
            return QueueSet::EMPTY;
        }
        let used = self.device.process_queue(idx);
        self.continue_unfinished();
        used
    }

    /// Backend fd `idx` is readable: lets the active device serve it.
    /// Returns the queues to signal.
    fn handle_backend_event(&mut self, idx: usize) -> QueueSet {
        if !self.activated {
            return QueueSet::EMPTY;
        }
        let used = self.device.process_backend(idx);
        self.continue_unfinished();
        used
    }

    /// Signals the notification eventfd of every queue whose pass stopped
    /// on its budget with work left (the device's
    /// [`take_unfinished`](VirtioDevice::take_unfinished)), so the event
    /// loop comes back to it after serving what else is ready, without
    /// waiting for the driver's next notification.
    fn continue_unfinished(&mut self) {
        for idx in self.device.take_unfinished().iter() {
            if let Some(evt) = self.queue_evts.get(idx) {
                if let Err(e) = evt.write(1) {
                    error!("{}: cannot signal queue {idx}: {e}", self.name);
                }
            }
        }
    }

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
                Err(e) => error!("{}: cannot change polling of backend fd {fd}: {e}", self.name),
            }
        }
    }

    /// Serves one event-loop event (a queue notification or a backend fd)
    /// and re-arms the backends. Returns the queues to signal.
    pub(crate) fn process_event(&mut self, events: Events, ops: &mut EventOps) -> QueueSet {
        let idx = events.data() as usize;
        let nqueues = self.queue_evts.len();
        let used = if idx < nqueues { self.handle_queue_event(idx) } else { self.handle_backend_event(idx - nqueues) };
        self.rearm_backends(ops);
        used
    }

    /// Registers the queue eventfds with the event loop; backend fds are
    /// polled only once the device is active and wants input.
    pub(crate) fn init_events(&mut self, ops: &mut EventOps) {
        for (i, evt) in self.queue_evts.iter().enumerate() {
            if let Err(e) = ops.add(Events::with_data(evt, i as u32, EventSet::IN)) {
                error!("{}: cannot watch queue {i} notifications: {e}", self.name);
            }
        }
        self.rearm_backends(ops);
    }
}
