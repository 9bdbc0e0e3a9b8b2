//! Virtio devices and their transports.
//!
//! * [`mmio`]: the virtio-mmio transport (virtio 1.x, register layout
//!   version 2): its register file and its interrupt (`InterruptStatus` and
//!   one line, [`mmio::MmioInterrupt`]).
//! * [`pci`]: the virtio-pci modern transport (virtio 1.2 §4.1): a PCI
//!   function with the virtio capabilities and MSI-X.
//! * `transport` (private): what both transports share: feature
//!   negotiation, the device status state machine, the queue configuration,
//!   activation at `DRIVER_OK` and the event-loop side.
//! * [`block`]: the virtio-blk device model on a raw image file.
//! * [`net`]: the virtio-net device model on a TAP interface.
//! * [`p9`]: virtio-9p, a host directory shared over 9P2000.L.
//! * [`IoVecs`]: the scatter lists of guest buffers the devices do their
//!   vectored I/O on, safe by construction.
//!
//! A device model implements [`VirtioDevice`] and never sees registers or
//! interrupts: a transport serves the vCPU threads
//! ([`crate::bus::BusDevice`] for MMIO, [`crate::pci::PciDevice`] for PCI)
//! and implements [`event_manager::MutEventSubscriber`] for the queue
//! notifications, calls the device to process a queue, and signals the
//! guest for the [`QueueSet`] of queues the device reports as used.

use std::io;
use std::os::unix::io::RawFd;

use virtio_queue::{Queue, QueueState, QueueT};

use crate::snapshot::SaveError;

use crate::GuestMemoryMmap;

pub mod block;
mod chain;
mod host_view;
mod iovec;
pub mod mmio;
pub mod net;
pub mod p9;
mod pass;
pub mod pci;
mod queue_set;
#[cfg(test)]
mod test_utils;
mod transport;

pub use iovec::{IoVecs, MAX_IOVECS};
pub(crate) use pass::PassBudget;
pub use pass::{MAX_PASS_BYTES, MAX_PASS_CHAINS, MAX_PASS_TIME};
pub use queue_set::QueueSet;
pub use transport::{QueueSnapshot, VirtioState};

/// Why a device refused to start when the driver set `DRIVER_OK`.
#[derive(Debug, thiserror::Error)]
pub enum ActivateError {
    /// The transport handed over a different number of queues than the
    /// device declared in [`VirtioDevice::queue_max_sizes`].
    #[error("expected {expected} virtqueues, got {got}")]
    QueueCount {
        /// Queues the device declared.
        expected: usize,
        /// Queues it was given.
        got: usize,
    },
    /// The driver did not make a queue the device needs ready.
    #[error("virtqueue {0} was not made ready by the driver")]
    QueueNotReady(usize),
    /// The device is already running; it must be reset first.
    #[error("device is already activated")]
    AlreadyActivated,
    /// The backend could not be started.
    #[error("device backend failed to start: {0}")]
    Backend(#[source] io::Error),
}

/// The `N` queues a device with `N` queues starts with, in order: refused
/// when the device is `active` already (it must be reset first), when the
/// transport handed over another number of queues, or when a queue was
/// not made ready by the driver.
pub(crate) fn ready_queues<const N: usize>(active: bool, queues: Vec<Queue>) -> Result<[Queue; N], ActivateError> {
    if active {
        return Err(ActivateError::AlreadyActivated);
    }
    let got = queues.len();
    let queues = <[Queue; N]>::try_from(queues).map_err(|_| ActivateError::QueueCount { expected: N, got })?;
    match queues.iter().position(|q| !q.ready()) {
        Some(i) => Err(ActivateError::QueueNotReady(i)),
        None => Ok(queues),
    }
}

/// A virtio device model, driven by a transport such as
/// [`mmio::MmioTransport`].
///
/// The transport calls the configuration methods from vCPU threads and
/// [`process_queue`](VirtioDevice::process_queue) from the event loop thread,
/// always with the transport's lock held, so calls never overlap.
///
/// A device never raises an interrupt itself: the processing methods return
/// the [`QueueSet`] of queues that need a used-buffer notification, and the
/// transport signals them in its own way (one line and an `InterruptStatus`
/// register for virtio-mmio, a vector per queue for virtio-pci).
pub trait VirtioDevice: Send {
    /// The virtio device ID (`VIRTIO_ID_*`, e.g. 2 for a block device).
    fn device_type(&self) -> u32;

    /// The maximum size of each queue; the length is the number of queues.
    /// Each size must be a power of two no larger than 32768.
    fn queue_max_sizes(&self) -> &[u16];

    /// The device-specific feature bits offered to the driver. The transport
    /// adds the transport features (`VIRTIO_F_VERSION_1`,
    /// `VIRTIO_RING_F_EVENT_IDX`, `VIRTIO_RING_F_INDIRECT_DESC`).
    fn avail_features(&self) -> u64;

    /// The feature bits the driver accepted, once they are known to be a
    /// subset of the offered ones (at `FEATURES_OK`).
    fn ack_features(&mut self, _features: u64) {}

    /// Reads the device configuration space at `offset`. Bytes past the end
    /// of the configuration space read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// The driver writes the configuration space at `offset`.
    fn write_config(&mut self, offset: u64, data: &[u8]);

    /// Starts the device once the driver set `DRIVER_OK`.
    ///
    /// `queues` has one entry per element of
    /// [`queue_max_sizes`](VirtioDevice::queue_max_sizes), in order; a queue
    /// the driver did not make ready has `ready() == false`. Event index
    /// suppression is already set on the queues when it was negotiated.
    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError>;

    /// Serves the available buffers of queue `idx` after a driver
    /// notification. Returns the queues whose driver must be notified
    /// (buffers were used and the driver did not suppress the
    /// notification); usually `{idx}` or nothing.
    fn process_queue(&mut self, idx: usize) -> QueueSet;

    /// Returns the device to its pre-activation state (driver wrote 0 to
    /// `Status`): drops the queues and the guest memory.
    fn reset(&mut self);

    /// Extra file descriptors (a tap device, a socket) the event loop polls
    /// for readability on behalf of this device. Event `i` of this list is
    /// delivered to [`process_backend`](VirtioDevice::process_backend)`(i)`.
    fn backend_fds(&self) -> Vec<RawFd> {
        Vec::new()
    }

    /// A backend file descriptor from
    /// [`backend_fds`](VirtioDevice::backend_fds) is readable. Returns the
    /// queues whose driver must be notified of used buffers.
    fn process_backend(&mut self, _idx: usize) -> QueueSet {
        QueueSet::EMPTY
    }

    /// Whether the event loop should poll backend file descriptor `idx` now.
    /// A device that has nowhere to put input (a network device whose
    /// driver posted no receive buffers) returns false, so the loop does not
    /// spin on a readable fd; the transport asks again after every queue
    /// notification and backend event. Only asked while the device is
    /// active.
    fn backend_wants_input(&self, _idx: usize) -> bool {
        true
    }

    /// The queues whose last pass stopped on its budget (chains, bytes or
    /// time, see [`MAX_PASS_CHAINS`]) with work left; the set is cleared by
    /// the call. The transport asks after every
    /// [`process_queue`](VirtioDevice::process_queue) and
    /// [`process_backend`](VirtioDevice::process_backend) and signals each
    /// queue's own notification eventfd, so the event loop serves whatever
    /// else is ready and then comes back to finish the work.
    fn take_unfinished(&mut self) -> QueueSet {
        QueueSet::EMPTY
    }

    /// Whether a snapshot can carry the device: an error for a device
    /// holding host state it cannot (virtio-9p's open files).
    fn check_saveable(&self) -> Result<(), SaveError> {
        Ok(())
    }

    /// The live state of the queues the device runs (given at
    /// [`activate`](VirtioDevice::activate)), in queue order: ring
    /// addresses, size, ready, event index and the next available and used
    /// indices as the device has moved them. Empty while not active (or
    /// for a device that cannot tell; an active one is then not saved).
    fn active_queue_states(&self) -> Vec<QueueState> {
        Vec::new()
    }
}

/// Reads a device's configuration space `config` at `offset` into `data`;
/// bytes past its end (or an offset past it) read as zero.
pub(crate) fn read_config_space(config: &[u8], offset: u64, data: &mut [u8]) {
    data.fill(0);
    let Some(start) = usize::try_from(offset).ok().filter(|&s| s < config.len()) else {
        return;
    };
    let n = data.len().min(config.len() - start);
    data[..n].copy_from_slice(&config[start..start + n]);
}

/// How many rounds (a look at the available ring, then a re-check after
/// re-enabling notifications) one pass may make. A legitimate driver needs
/// a handful; a hostile layout whose used-ring writes land on the available
/// ring could otherwise keep the event-loop thread spinning forever without
/// taking a chain (found by the `blk_request`/`net_tx` fuzz targets).
/// Rings are also refused at QueueReady when they overlap (mmio.rs), and
/// the chains, bytes and time of a pass are bounded by [`PassBudget`].
pub(crate) const MAX_QUEUE_ROUNDS: u32 = 1024;

/// A bounded budget of log lines for guest-triggered conditions, so a
/// hostile guest cannot flood the host log.
#[derive(Debug)]
pub(crate) struct LogBudget(u32);

impl LogBudget {
    pub(crate) const fn new(lines: u32) -> Self {
        LogBudget(lines)
    }

    /// Whether one more line may be logged; says so when the budget runs
    /// out.
    pub(crate) fn take(&mut self, what: &str) -> bool {
        match self.0 {
            0 => false,
            1 => {
                self.0 = 0;
                log::warn!("{what}: further messages of this kind are suppressed");
                true
            }
            _ => {
                self.0 -= 1;
                true
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_reads_zero_past_the_end() {
        let cfg = [1u8, 2, 3, 4];
        let mut d = [0xffu8; 3];
        read_config_space(&cfg, 2, &mut d);
        assert_eq!(d, [3, 4, 0]);
        read_config_space(&cfg, 4, &mut d);
        assert_eq!(d, [0, 0, 0]);
        read_config_space(&cfg, u64::MAX, &mut d);
        assert_eq!(d, [0, 0, 0]);
    }

    #[test]
    fn activation_takes_exactly_the_ready_queues() {
        let queue = |ready: bool| {
            let mut q = Queue::new(16).unwrap();
            q.set_ready(ready);
            q
        };
        let [a, b] = ready_queues::<2>(false, vec![queue(true), queue(true)]).unwrap();
        assert!(a.ready() && b.ready());
        assert!(matches!(ready_queues::<1>(true, vec![queue(true)]), Err(ActivateError::AlreadyActivated)));
        let two = ready_queues::<1>(false, vec![queue(true), queue(true)]);
        assert!(matches!(two, Err(ActivateError::QueueCount { expected: 1, got: 2 })));
        assert!(matches!(ready_queues::<2>(false, vec![]), Err(ActivateError::QueueCount { expected: 2, got: 0 })));
        let second = ready_queues::<2>(false, vec![queue(true), queue(false)]);
        assert!(matches!(second, Err(ActivateError::QueueNotReady(1))));
    }

    #[test]
    fn log_budget_runs_out() {
        let mut b = LogBudget::new(2);
        assert!(b.take("x"));
        assert!(b.take("x"));
        assert!(!b.take("x"));
    }
}
