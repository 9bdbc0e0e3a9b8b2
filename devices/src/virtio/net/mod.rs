//! virtio-net (virtio 1.x §5.1) on a TAP interface.
//!
//! Two queues: receive (0) and transmit (1), no control queue, one queue
//! pair. Offered features: `MAC`, `STATUS`, `CSUM`, `GUEST_CSUM`,
//! `GUEST_TSO4/6`, `HOST_TSO4/6` and `MRG_RXBUF`; the transport adds
//! `VERSION_1`, `EVENT_IDX` and `INDIRECT_DESC`. Every frame on either queue
//! starts with the 12-byte `virtio_net_hdr_v1`, which the TAP interface
//! (see [`tap`]) reads and writes in the same layout, so headers pass
//! through unchanged: segmentation and checksum offloads are the kernel's.
//!
//! **Transmit.** A queue notification sends every available chain: its
//! device-readable descriptors, header first, go to the backend in one
//! `writev` straight from guest memory. A chain with a device-writable
//! descriptor, a buffer outside guest memory, or a length below the header
//! plus an Ethernet header or above 64 KiB plus the header is malformed: it
//! never reaches the backend, is counted and logged (bounded), and is
//! returned with a used length of 0 like every transmit chain. So is a frame
//! whose header asks for an offload the driver did not negotiate (checksum,
//! segmentation, ECN, UDP) or describes one inconsistently
//! (`tx::check_tx_header`): the TAP would otherwise act on it.
//!
//! **Budgets.** A pass over either queue stops after
//! [`MAX_PASS_CHAINS`](super::MAX_PASS_CHAINS) chains (malformed ones
//! included), [`MAX_PASS_BYTES`](super::MAX_PASS_BYTES) or
//! [`MAX_PASS_TIME`](super::MAX_PASS_TIME), and the transport signals the
//! queue again ([`VirtioDevice::take_unfinished`]).
//!
//! **Receive.** The backend fd is polled by the event loop only while the
//! receive queue has buffers ([`VirtioDevice::backend_wants_input`]). Each
//! frame is read with one `read` into a 65562-byte buffer and copied into
//! the guest's buffers: into the next available chain (which may have
//! several descriptors) without `MRG_RXBUF`, or spread over as many chains
//! as it needs with it (`num_buffers` says how many). A frame is delivered
//! as soon as the posted buffers can hold it. When they cannot:
//!
//! * no buffers at all, or (with `MRG_RXBUF`) not enough yet: the frame is
//!   kept, the fd is no longer polled, and the frame goes out on the next
//!   receive-queue notification; no frame is lost for lack of buffers;
//! * without `MRG_RXBUF`, a frame larger than the next chain: dropped and
//!   counted (the driver posted buffers too small for its own features);
//! * with `MRG_RXBUF`, a frame larger than the whole ring: dropped.
//!
//! A receive chain with a device-readable descriptor or a buffer outside
//! guest memory is returned unused (length 0) and the frame tries the next
//! chain. A frame carrying an offload the driver did not accept (possible
//! only for frames queued before a renegotiation) is dropped.
//!
//! Counters ([`NetCounters`]) are atomics behind an `Arc`, so the VMM reads
//! them while the device sits behind its transport's lock.
//!
//! The device is split by concern: this module (configuration, features,
//! activation, the ring helpers both directions share), `tx` (the transmit
//! queue), `rx` (the receive queue), [`tap`] (the TAP backend) and `stats`
//! (the counters).

use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use log::{error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestAddress;

use super::host_view::HostView;
use super::iovec::{IoVecBuf, IoVecs};
use super::{ActivateError, LogBudget, QueueSet, VirtioDevice};
use crate::GuestMemoryMmap;
use tap::{Tap, TapError, VNET_HDR_LEN};

mod rx;
mod stats;
pub mod tap;
mod tx;

pub use stats::{NetCounters, NetStats};

/// Index of the receive queue.
pub const RX_QUEUE: usize = 0;
/// Index of the transmit queue.
pub const TX_QUEUE: usize = 1;
/// Size of each queue offered to the driver.
pub const QUEUE_SIZE: u16 = 256;
/// Longest frame accepted on the transmit queue: 64 KiB plus the header.
pub const MAX_TX_FRAME: usize = 65536 + VNET_HDR_LEN;
/// Size of the receive buffer one frame is read into: 64 KiB, an Ethernet
/// header and the virtio-net header.
pub const RX_BUFFER_LEN: usize = 65562;

const ETH_HLEN: usize = 14;
/// Shortest frame on either queue: the header and an Ethernet header.
const MIN_FRAME: usize = VNET_HDR_LEN + ETH_HLEN;
/// Frames read from the backend per event before the event loop gets to
/// serve other events (the fd is level-triggered, so it comes back).
const RX_BATCH: usize = 64;
/// Size of the configuration space: mac, status, max_virtqueue_pairs.
const CONFIG_LEN: usize = 10;

/// The device-specific features offered.
const AVAIL_FEATURES: u64 = (1 << VIRTIO_NET_F_MAC)
    | (1 << VIRTIO_NET_F_STATUS)
    | (1 << VIRTIO_NET_F_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_CSUM)
    | (1 << VIRTIO_NET_F_GUEST_TSO4)
    | (1 << VIRTIO_NET_F_GUEST_TSO6)
    | (1 << VIRTIO_NET_F_HOST_TSO4)
    | (1 << VIRTIO_NET_F_HOST_TSO6)
    | (1 << VIRTIO_NET_F_MRG_RXBUF);

/// How to set up a virtio-net device.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NetConfig {
    /// The existing TAP interface to attach to.
    pub tap: String,
    /// The guest's MAC address; a random locally administered one
    /// (`02:xx:xx:xx:xx:xx`) when absent.
    pub mac: Option<[u8; 6]>,
}

/// Why a virtio-net device could not be created.
#[derive(Debug, thiserror::Error)]
pub enum NetError {
    /// The TAP interface could not be attached or set up.
    #[error(transparent)]
    Tap(#[from] TapError),
    /// The configured MAC address cannot be a station address.
    #[error("virtio-net on tap {tap}: MAC address {} is {why}", format_mac(mac))]
    InvalidMac {
        /// The TAP interface.
        tap: String,
        /// The MAC address given.
        mac: [u8; 6],
        /// Why it is refused.
        why: &'static str,
    },
}

/// Formats a MAC address as `aa:bb:cc:dd:ee:ff`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// Parses `aa:bb:cc:dd:ee:ff`: six pairs of hex digits (either case)
/// separated by `:`, the form [`format_mac`] writes. The one MAC grammar
/// of ember (the command line and every configuration use it).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next()?;
        // Two hex digits exactly (from_str_radix alone would take "+2").
        if p.len() != 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(mac)
}

/// A random locally administered unicast MAC address, `02:xx:xx:xx:xx:xx`.
fn generate_mac() -> [u8; 6] {
    use std::collections::hash_map::RandomState;
    use std::hash::{BuildHasher, Hasher};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // RandomState is seeded from the OS; pid, time and a counter make each
    // call differ even if it were not.
    let mut h = RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos()));
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    let r = h.finish().to_le_bytes();
    [0x02, r[0], r[1], r[2], r[3], r[4]]
}

/// The host side of a virtio-net device: something that moves whole
/// frames, each preceded by a 12-byte `virtio_net_hdr_v1`. [`Tap`] is the
/// production backend; tests use a socket pair.
pub trait NetBackend: Send {
    /// Reads one frame (header included) into `buf`; `WouldBlock` when none
    /// is waiting. Frames longer than `buf` may be truncated.
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize>;

    /// Writes one frame (header included) gathered from the guest buffers
    /// of `frame`; returns the bytes written.
    fn write_frame(&mut self, frame: &IoVecs<'_>) -> io::Result<usize>;

    /// The file descriptor that becomes readable when a frame is waiting.
    fn fd(&self) -> RawFd;

    /// Tells the backend which virtio-net features the driver accepted, so
    /// it hands over only frames the guest can take (receive offloads).
    fn set_offload(&mut self, _features: u64) -> io::Result<()> {
        Ok(())
    }
}

/// The state that exists while the driver runs the device.
struct Active {
    /// The guest memory (the view keeps it mapped).
    view: HostView,
    rx: Queue,
    tx: Queue,
    /// The guest buffers of the frame being sent or received.
    segs: IoVecBuf,
}

/// Why the driver's ring cannot be read.
struct RingError;

/// Chains the driver made available and the device did not take yet.
fn avail_count(q: &Queue, view: &HostView) -> Result<u16, RingError> {
    let idx = q.avail_idx(view, Ordering::Acquire).map_err(|_| RingError)?;
    let n = idx.0.wrapping_sub(q.next_avail());
    if n > q.size() {
        return Err(RingError);
    }
    Ok(n)
}

/// The head of the `i`-th chain not taken yet (0 is the next one).
fn avail_head(q: &Queue, view: &HostView, i: u16) -> Result<u16, RingError> {
    let slot = q.next_avail().wrapping_add(i) % q.size();
    let addr = q.avail_ring() + 4 + 2 * u64::from(slot);
    view.read_bytes::<2>(GuestAddress(addr)).map(u16::from_le_bytes).ok_or(RingError)
}

/// The frame-moving half of the device: backend, buffers, counters.
struct Io {
    name: String,
    backend: Box<dyn NetBackend>,
    acked: u64,
    /// One frame read from the backend.
    rx_buf: Box<[u8]>,
    /// Length of a frame in `rx_buf` not delivered yet.
    pending: Option<usize>,
    /// The receive queue has no buffers; its notifications are enabled.
    rx_starved: bool,
    /// Receive-queue notifications are enabled (driver kicks on refill).
    rx_notify_on: bool,
    /// Reading the backend failed for good; stop polling it.
    rx_failed: bool,
    /// The last receive pass stopped on its budget with work left.
    rx_unfinished: bool,
    /// The last transmit pass stopped on its budget with work left.
    tx_unfinished: bool,
    /// (head, used length) of the chains one received frame spans.
    chains: Vec<(u16, u32)>,
    tally: NetStats,
    counters: Arc<NetCounters>,
    tx_log: LogBudget,
    rx_log: LogBudget,
    queue_log: LogBudget,
    backend_log: LogBudget,
}

/// Logs a guest-triggered condition within one of the device's budgets.
macro_rules! budget_warn {
    ($io:expr, $budget:ident, $($arg:tt)*) => {
        if $io.$budget.take("virtio-net: guest-triggered condition") {
            log::warn!("virtio-net ({}): {}", $io.name, format_args!($($arg)*));
        }
    };
}
use budget_warn;

impl Io {
    fn has(&self, bit: u32) -> bool {
        self.acked & (1u64 << bit) != 0
    }

    fn flush_tally(&mut self) {
        if self.tally != NetStats::default() {
            self.counters.add(&self.tally);
            self.tally = NetStats::default();
        }
    }

    /// Completes `head` with `len` on `q`; `false` if it could not be.
    fn complete(&mut self, q: &mut Queue, view: &HostView, head: u16, len: u32) -> bool {
        if head >= q.size() {
            budget_warn!(self, queue_log, "descriptor head {head} out of range; not returned");
            return false;
        }
        match q.add_used(view, head, len) {
            Ok(()) => true,
            Err(e) => {
                budget_warn!(self, queue_log, "cannot return descriptor {head}: {e}");
                false
            }
        }
    }
}

/// The virtio-net device model.
pub struct Net {
    mac: [u8; 6],
    config: [u8; CONFIG_LEN],
    queue_sizes: [u16; 2],
    io: Io,
    active: Option<Active>,
    config_write_log: LogBudget,
}

impl std::fmt::Debug for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Net")
            .field("backend", &self.io.name)
            .field("mac", &format_mac(&self.mac))
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Net {
    /// Attaches to the TAP interface of `cfg` and builds the device.
    pub fn new(cfg: &NetConfig) -> Result<Net, NetError> {
        if let Some(mac) = cfg.mac {
            check_mac(&cfg.tap, mac)?;
        }
        let tap = Tap::open(&cfg.tap)?;
        Net::with_backend(cfg.tap.clone(), Box::new(tap), cfg.mac)
    }

    /// A device on any [`NetBackend`]; `name` identifies it in log
    /// messages and errors.
    pub fn with_backend(name: String, backend: Box<dyn NetBackend>, mac: Option<[u8; 6]>) -> Result<Net, NetError> {
        let mac = match mac {
            Some(mac) => {
                check_mac(&name, mac)?;
                mac
            }
            None => generate_mac(),
        };
        let mut config = [0u8; CONFIG_LEN];
        config[0..6].copy_from_slice(&mac);
        config[6..8].copy_from_slice(&(VIRTIO_NET_S_LINK_UP as u16).to_le_bytes());
        config[8..10].copy_from_slice(&1u16.to_le_bytes());
        Ok(Net {
            mac,
            config,
            queue_sizes: [QUEUE_SIZE; 2],
            io: Io {
                name,
                backend,
                acked: 0,
                rx_buf: vec![0u8; RX_BUFFER_LEN].into_boxed_slice(),
                pending: None,
                rx_starved: false,
                rx_notify_on: true,
                rx_failed: false,
                rx_unfinished: false,
                tx_unfinished: false,
                chains: Vec::with_capacity(usize::from(QUEUE_SIZE)),
                tally: NetStats::default(),
                counters: Arc::new(NetCounters::default()),
                tx_log: LogBudget::new(32),
                rx_log: LogBudget::new(32),
                queue_log: LogBudget::new(16),
                backend_log: LogBudget::new(16),
            },
            active: None,
            config_write_log: LogBudget::new(4),
        })
    }

    /// The guest's MAC address.
    pub fn mac(&self) -> [u8; 6] {
        self.mac
    }

    /// The backend's name (the TAP interface).
    pub fn backend_name(&self) -> &str {
        &self.io.name
    }

    /// The counters now.
    pub fn stats(&self) -> NetStats {
        self.io.counters.snapshot()
    }

    /// The live counters, readable without the device (or its transport's
    /// lock).
    pub fn stats_handle(&self) -> Arc<NetCounters> {
        self.io.counters.clone()
    }
}

fn check_mac(tap: &str, mac: [u8; 6]) -> Result<(), NetError> {
    let why = if mac[0] & 1 != 0 {
        "a multicast address"
    } else if mac == [0; 6] {
        "all zeroes"
    } else {
        return Ok(());
    };
    Err(NetError::InvalidMac { tap: tap.to_owned(), mac, why })
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        AVAIL_FEATURES
    }

    fn ack_features(&mut self, features: u64) {
        self.io.acked = features;
        if let Err(e) = self.io.backend.set_offload(features) {
            if self.io.backend_log.take("virtio-net: backend error") {
                error!("virtio-net ({}): cannot set receive offloads: {e}", self.io.name);
            }
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The MAC is read-only for a virtio 1.x driver; nothing else is
        // writable.
        if self.config_write_log.take("virtio-net: config write") {
            warn!(
                "virtio-net ({}): ignoring {}-byte write to read-only config space at {offset:#x}",
                self.io.name,
                data.len()
            );
        }
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let [rx, tx] = super::ready_queues(self.active.is_some(), queues)?;
        let view = HostView::new(&mem);
        let io = &mut self.io;
        io.pending = None;
        io.rx_failed = false;
        // Notifications start enabled (the rings are fresh); without
        // buffers the backend is not polled until the driver posts some.
        io.rx_notify_on = true;
        io.rx_starved = !matches!(avail_count(&rx, &view), Ok(n) if n > 0);
        self.active = Some(Active { view, rx, tx, segs: IoVecBuf::new() });
        Ok(())
    }

    fn process_queue(&mut self, idx: usize) -> QueueSet {
        let Some(a) = self.active.as_mut() else {
            return QueueSet::EMPTY;
        };
        match idx {
            RX_QUEUE => QueueSet::of_if(RX_QUEUE, self.io.process_rx(a)),
            TX_QUEUE => QueueSet::of_if(TX_QUEUE, self.io.process_tx(a)),
            _ => QueueSet::EMPTY,
        }
    }

    fn reset(&mut self) {
        self.active = None;
        let io = &mut self.io;
        if io.pending.take().is_some() {
            // A frame read from the backend and never delivered.
            io.counters.add(&NetStats { rx_dropped: 1, ..NetStats::default() });
        }
        io.rx_starved = false;
        io.rx_failed = false;
        io.rx_notify_on = true;
        io.rx_unfinished = false;
        io.tx_unfinished = false;
        io.acked = 0;
        io.chains.clear();
        if let Err(e) = io.backend.set_offload(0) {
            if io.backend_log.take("virtio-net: backend error") {
                error!("virtio-net ({}): cannot clear receive offloads: {e}", io.name);
            }
        }
    }

    /// A frame read from the TAP and not yet delivered (the receive
    /// queue had no room) is not part of the queues and is lost across a
    /// snapshot, as if the link had dropped it. A restored device is
    /// activated like a new one: its TAP is polled once the event loop
    /// registers it, as after `DRIVER_OK`.
    fn active_queue_states(&self) -> Vec<QueueState> {
        self.active.iter().flat_map(|a| [a.rx.state(), a.tx.state()]).collect()
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.io.backend.fd()]
    }

    fn process_backend(&mut self, idx: usize) -> QueueSet {
        match (idx, self.active.as_mut()) {
            (0, Some(a)) => QueueSet::of_if(RX_QUEUE, self.io.process_rx(a)),
            _ => QueueSet::EMPTY,
        }
    }

    fn backend_wants_input(&self, idx: usize) -> bool {
        idx == 0 && self.active.is_some() && !self.io.rx_starved && !self.io.rx_failed
    }

    fn take_unfinished(&mut self) -> QueueSet {
        let io = &mut self.io;
        QueueSet::of_if(RX_QUEUE, std::mem::take(&mut io.rx_unfinished))
            | QueueSet::of_if(TX_QUEUE, std::mem::take(&mut io.tx_unfinished))
    }
}

#[cfg(test)]
mod tests;
