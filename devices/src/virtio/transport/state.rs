//! Saving and restoring the transport-independent state of a virtio
//! device: feature negotiation, status, selectors and each queue, taken
//! from the device's live queues while it runs.
//!
//! Restore goes into a freshly built transport: it checks the whole state
//! first (each queue as the `QueueSize`/`QueueReady` register path checks
//! it, the status as the status state machine allows it), then, for a
//! device the driver had started, acknowledges the features and activates
//! the device with the saved queues exactly as `DRIVER_OK` does, and only
//! then changes the transport.

use serde::{Deserialize, Serialize};
use virtio_bindings::bindings::virtio_config::VIRTIO_F_VERSION_1;
use virtio_bindings::bindings::virtio_ring::VIRTIO_RING_F_EVENT_IDX;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;

use super::{ring_layout_error, TransportCore, ALL_ADDRS, S_ACK, S_DRIVER, S_DRIVER_OK, S_FAILED, S_FEATURES_OK};
use super::{STATUS_ORDER, S_NEEDS_RESET};
use crate::snapshot::{RestoreError, SaveError};

/// One queue of a saved virtio device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueSnapshot {
    pub(crate) size: u16,
    pub(crate) ready: bool,
    pub(crate) desc_table: u64,
    pub(crate) avail_ring: u64,
    pub(crate) used_ring: u64,
    /// The device's next available index (0 while not running).
    pub(crate) next_avail: u16,
    /// The device's next used index (0 while not running).
    pub(crate) next_used: u16,
    pub(crate) event_idx: bool,
    /// Which ring address halves the driver wrote since reset.
    pub(crate) addrs_set: u8,
}

/// The transport-independent state of a saved virtio device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtioState {
    pub(crate) device_type: u32,
    pub(crate) status: u32,
    pub(crate) activated: bool,
    pub(crate) device_features_sel: u32,
    pub(crate) driver_features_sel: u32,
    pub(crate) driver_features: u64,
    pub(crate) driver_features_unknown: bool,
    pub(crate) queue_sel: u32,
    pub(crate) config_generation: u32,
    pub(crate) queues: Vec<QueueSnapshot>,
}

const DEVICE: &str = "virtio";

fn bad(field: &'static str, value: u64, why: &'static str) -> RestoreError {
    RestoreError::Value { device: DEVICE, field, value, why }
}

impl QueueSnapshot {
    fn from_queue(q: &QueueState, addrs_set: u8) -> Self {
        QueueSnapshot {
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx: q.event_idx_enabled,
            addrs_set,
        }
    }

    /// The queue this snapshot describes, for a queue of `max_size`, with
    /// the checks of the register path.
    fn to_queue(&self, i: usize, max_size: u16) -> Result<Queue, RestoreError> {
        let mut q =
            Queue::new(max_size).map_err(|_| bad("queue maximum size", max_size.into(), "not a power of two"))?;
        q.try_set_size(self.size).map_err(|_| RestoreError::QueueSize { queue: i, size: self.size, max: max_size })?;
        q.try_set_desc_table_address(GuestAddress(self.desc_table))
            .map_err(|_| bad("descriptor table address", self.desc_table, "not 16-byte aligned"))?;
        q.try_set_avail_ring_address(GuestAddress(self.avail_ring))
            .map_err(|_| bad("available ring address", self.avail_ring, "not 2-byte aligned"))?;
        q.try_set_used_ring_address(GuestAddress(self.used_ring))
            .map_err(|_| bad("used ring address", self.used_ring, "not 4-byte aligned"))?;
        q.set_next_avail(self.next_avail);
        q.set_next_used(self.next_used);
        q.set_event_idx(self.event_idx);
        q.set_ready(self.ready);
        Ok(q)
    }
}

/// What a checked state turns into: the transport's queues and, for a
/// running device, the device's.
struct Checked {
    transport_queues: Vec<Queue>,
    device_queues: Option<Vec<Queue>>,
}

impl TransportCore {
    /// The state of the transport and of the device's queues.
    pub(crate) fn save_state(&self) -> Result<VirtioState, SaveError> {
        self.device.check_saveable()?;
        let states: Vec<QueueState> = if self.activated {
            let live = self.device.active_queue_states();
            if live.len() != self.queues.len() {
                return Err(SaveError::QueuesUnavailable { device_type: self.device.device_type() });
            }
            live
        } else {
            self.queues.iter().map(|q| q.state()).collect()
        };
        let queues = states.iter().zip(&self.addrs_set).map(|(q, &set)| QueueSnapshot::from_queue(q, set)).collect();
        Ok(VirtioState {
            device_type: self.device.device_type(),
            status: self.status,
            activated: self.activated,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            driver_features_unknown: self.driver_features_unknown,
            queue_sel: self.queue_sel,
            config_generation: self.config_generation,
            queues,
        })
    }

    fn check_status(&self, s: &VirtioState) -> Result<(), RestoreError> {
        let status = u64::from(s.status);
        let all = S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK | S_NEEDS_RESET | S_FAILED;
        if s.status & !all != 0 {
            return Err(bad("device status", status, "unknown bits"));
        }
        let base = s.status & !(S_NEEDS_RESET | S_FAILED);
        if !(0..=STATUS_ORDER.len()).any(|n| STATUS_ORDER[..n].iter().fold(0, |acc, b| acc | b) == base) {
            return Err(bad("device status", status, "not a state the driver can reach"));
        }
        if s.status & S_NEEDS_RESET != 0 && s.status & S_DRIVER_OK == 0 {
            return Err(bad("device status", status, "NEEDS_RESET without DRIVER_OK"));
        }
        let running = s.status & S_DRIVER_OK != 0 && s.status & S_NEEDS_RESET == 0;
        if s.activated != running {
            return Err(bad("activated", u64::from(s.activated), "does not match the device status"));
        }
        if s.status & S_FEATURES_OK != 0 {
            let offered = self.offered_features();
            let extra = s.driver_features & !offered;
            if extra != 0 {
                return Err(RestoreError::Features { features: s.driver_features, extra });
            }
            if s.driver_features & (1 << VIRTIO_F_VERSION_1) == 0 {
                return Err(bad("driver features", s.driver_features, "FEATURES_OK without VIRTIO_F_VERSION_1"));
            }
            if s.driver_features_unknown {
                return Err(bad("driver_features_unknown", 1, "FEATURES_OK with unknown feature pages"));
            }
        }
        Ok(())
    }

    fn check_state(&self, s: &VirtioState) -> Result<Checked, RestoreError> {
        let actual = self.device.device_type();
        if s.device_type != actual {
            return Err(RestoreError::DeviceType { saved: s.device_type, actual });
        }
        if s.queues.len() != self.queues.len() {
            return Err(RestoreError::QueueCount { device: DEVICE, saved: s.queues.len(), actual: self.queues.len() });
        }
        self.check_status(s)?;
        let event_idx = s.activated && s.driver_features & (1 << VIRTIO_RING_F_EVENT_IDX) != 0;
        let mut transport_queues = Vec::with_capacity(s.queues.len());
        for (i, (qs, fresh)) in s.queues.iter().zip(&self.queues).enumerate() {
            let q = qs.to_queue(i, fresh.max_size())?;
            if qs.addrs_set & !ALL_ADDRS != 0 {
                return Err(bad("queue address mask", qs.addrs_set.into(), "unknown bits"));
            }
            if qs.event_idx != event_idx {
                return Err(bad("queue event_idx", qs.event_idx.into(), "does not match the negotiated features"));
            }
            if !s.activated && (qs.next_avail != 0 || qs.next_used != 0) {
                return Err(bad("queue next index", qs.next_avail.max(qs.next_used).into(), "device not running"));
            }
            if qs.ready {
                if qs.addrs_set != ALL_ADDRS {
                    return Err(bad("queue address mask", qs.addrs_set.into(), "queue ready without all addresses"));
                }
                if let Some(why) = ring_layout_error(&q, &self.mem) {
                    return Err(RestoreError::QueueRings {
                        queue: i,
                        desc: qs.desc_table,
                        avail: qs.avail_ring,
                        used: qs.used_ring,
                        why,
                    });
                }
            }
            transport_queues.push(q);
        }
        let device_queues = if s.activated {
            let mut v = Vec::with_capacity(s.queues.len());
            for (i, qs) in s.queues.iter().enumerate() {
                v.push(qs.to_queue(i, self.queues[i].max_size())?);
            }
            Some(v)
        } else {
            None
        };
        Ok(Checked { transport_queues, device_queues })
    }

    /// Puts `s` back: checks it, then starts the device as `DRIVER_OK`
    /// would if the driver had, then takes over the transport fields. On
    /// an error nothing changed. A running device's queues are each
    /// signalled once, so work the device had not finished (a pass that
    /// stopped on its budget, a notification not served yet) is picked up
    /// when the event loop starts, and the event loop re-arms the
    /// device's backends then.
    pub(crate) fn restore_state(&mut self, s: &VirtioState) -> Result<(), RestoreError> {
        let checked = self.check_state(s)?;
        if s.status & S_FEATURES_OK != 0 {
            self.device.ack_features(s.driver_features);
        }
        if let Some(queues) = checked.device_queues {
            if let Err(e) = self.device.activate(self.mem.clone(), queues) {
                self.device.reset();
                return Err(RestoreError::Activate { device_type: s.device_type, why: e.to_string() });
            }
        }
        self.queues = checked.transport_queues;
        for (set, qs) in self.addrs_set.iter_mut().zip(&s.queues) {
            *set = qs.addrs_set;
        }
        self.device_features_sel = s.device_features_sel;
        self.driver_features_sel = s.driver_features_sel;
        self.driver_features = s.driver_features;
        self.driver_features_unknown = s.driver_features_unknown;
        self.queue_sel = s.queue_sel;
        self.status = s.status;
        self.config_generation = s.config_generation;
        self.activated = s.activated;
        if self.activated {
            for (evt, q) in self.queue_evts.iter().zip(&self.queues) {
                if q.ready() {
                    if let Err(e) = evt.write(1) {
                        log::error!("{}: cannot signal a restored queue: {e}", self.name);
                    }
                }
            }
        }
        Ok(())
    }
}
