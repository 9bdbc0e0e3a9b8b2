//! virtio-net (virtio 1.x §5.1) on a TAP interface.
//!
//! Two queues: receive (0) and transmit (1), no control queue, one queue
//! pair. Offered features: `MAC`, `STATUS`, `CSUM`, `GUEST_CSUM`,
//! `GUEST_TSO4/6`, `HOST_TSO4/6` and `MRG_RXBUF`; the transport adds
//! `VERSION_1`, `EVENT_IDX` and `INDIRECT_DESC`. Every frame on either queue
//! starts with the 12-byte `virtio_net_hdr_v1`, which the TAP interface
//! (see [`super::tap`]) reads and writes in the same layout, so headers pass
//! through unchanged: segmentation and checksum offloads are the kernel's.
//!
//! **Transmit.** A queue notification sends every available chain: its
//! device-readable descriptors, header first, go to the backend in one
//! `writev` straight from guest memory. A chain with a device-writable
//! descriptor, a buffer outside guest memory, or a length below the header
//! plus an Ethernet header or above 64 KiB plus the header is malformed: it
//! never reaches the backend, is counted and logged (bounded), and is
//! returned with a used length of 0 like every transmit chain.
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

use std::io;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{fence, AtomicU64, Ordering};
use std::sync::Arc;

use log::{error, warn};
use virtio_bindings::virtio_ids::VIRTIO_ID_NET;
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::chain::ChainWalker;
use super::host_view::HostView;
use super::iovec::{IoVecBuf, IoVecs};
use super::tap::{Tap, TapError, VNET_HDR_LEN};
use super::{ActivateError, LogBudget, QueueSet, VirtioDevice};
use crate::GuestMemoryMmap;

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

/// Parses `aa:bb:cc:dd:ee:ff` (hex digits, `:` or `-` separated).
pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut mac = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in &mut mac {
        let p = parts.next()?;
        if p.is_empty() || p.len() > 2 || !p.bytes().all(|c| c.is_ascii_hexdigit()) {
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

impl NetBackend for Tap {
    fn read_frame(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.read(buf)
    }

    fn write_frame(&mut self, frame: &IoVecs<'_>) -> io::Result<usize> {
        frame.write_to(self.as_fd())
    }

    fn fd(&self) -> RawFd {
        self.as_raw_fd()
    }

    fn set_offload(&mut self, features: u64) -> io::Result<()> {
        Tap::set_offload(self, features).map_err(io::Error::other)
    }
}

/// The device's traffic counters, shared with the VMM.
#[derive(Debug, Default)]
pub struct NetCounters {
    rx_frames: AtomicU64,
    rx_bytes: AtomicU64,
    rx_dropped: AtomicU64,
    rx_malformed: AtomicU64,
    tx_frames: AtomicU64,
    tx_bytes: AtomicU64,
    tx_dropped: AtomicU64,
    tx_malformed: AtomicU64,
}

/// A snapshot of [`NetCounters`]. Byte counts are Ethernet frame bytes,
/// without the virtio-net header.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetStats {
    /// Frames delivered to the guest.
    pub rx_frames: u64,
    /// Bytes delivered to the guest.
    pub rx_bytes: u64,
    /// Frames read from the backend and not delivered (too large for the
    /// guest's buffers, runts, offloads the guest did not accept).
    pub rx_dropped: u64,
    /// Receive chains returned unused because they were malformed
    /// (device-readable descriptors, buffers outside guest memory).
    pub rx_malformed: u64,
    /// Frames sent to the backend.
    pub tx_frames: u64,
    /// Bytes sent to the backend.
    pub tx_bytes: u64,
    /// Frames from the guest not sent: the malformed ones and those the
    /// backend refused.
    pub tx_dropped: u64,
    /// Transmit chains that were malformed (also counted in `tx_dropped`).
    pub tx_malformed: u64,
}

impl NetCounters {
    /// The current values.
    pub fn snapshot(&self) -> NetStats {
        let r = |c: &AtomicU64| c.load(Ordering::Relaxed);
        NetStats {
            rx_frames: r(&self.rx_frames),
            rx_bytes: r(&self.rx_bytes),
            rx_dropped: r(&self.rx_dropped),
            rx_malformed: r(&self.rx_malformed),
            tx_frames: r(&self.tx_frames),
            tx_bytes: r(&self.tx_bytes),
            tx_dropped: r(&self.tx_dropped),
            tx_malformed: r(&self.tx_malformed),
        }
    }

    /// Adds a batch of local counts.
    fn add(&self, t: &NetStats) {
        let add = |c: &AtomicU64, v: u64| {
            if v != 0 {
                c.fetch_add(v, Ordering::Relaxed);
            }
        };
        add(&self.rx_frames, t.rx_frames);
        add(&self.rx_bytes, t.rx_bytes);
        add(&self.rx_dropped, t.rx_dropped);
        add(&self.rx_malformed, t.rx_malformed);
        add(&self.tx_frames, t.tx_frames);
        add(&self.tx_bytes, t.tx_bytes);
        add(&self.tx_dropped, t.tx_dropped);
        add(&self.tx_malformed, t.tx_malformed);
    }
}

/// How a receive chain fits a frame.
enum Fit {
    /// The chain holds the remaining bytes.
    Fits,
    /// The whole chain (this many bytes) is too small.
    Short(usize),
    /// The chain cannot be used.
    Bad(&'static str),
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

/// Re-enables receive-queue notifications after the device found `seen`
/// available chains not enough; returns whether more chains came since.
fn arm_rx(q: &mut Queue, view: &HostView, seen: u16) -> Result<bool, RingError> {
    q.enable_notification(view).map_err(|_| RingError)?;
    if q.event_idx_enabled() && seen > 0 {
        // virtio-queue asks for a notification past the next chain not
        // taken; chains were seen beyond it, so ask past those instead.
        let avail_event = q.used_ring() + 4 + 8 * u64::from(q.size());
        view.store(q.next_avail().wrapping_add(seen).to_le(), GuestAddress(avail_event), Ordering::Relaxed)
            .map_err(|_| RingError)?;
        fence(Ordering::SeqCst);
    }
    Ok(avail_count(q, view)? > seen)
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
    /// (head, used length) of the chains one received frame spans.
    chains: Vec<(u16, u32)>,
    tally: NetStats,
    counters: Arc<NetCounters>,
    tx_log: LogBudget,
    rx_log: LogBudget,
    queue_log: LogBudget,
    backend_log: LogBudget,
}

macro_rules! budget_warn {
    ($io:expr, $budget:ident, $($arg:tt)*) => {
        if $io.$budget.take("virtio-net: guest-triggered condition") {
            warn!("virtio-net ({}): {}", $io.name, format_args!($($arg)*));
        }
    };
}

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

    // ---- transmit ----

    fn process_tx(&mut self, a: &mut Active) -> bool {
        let Active { view, tx, segs, .. } = a;
        let mut used = false;
        let mut rounds = 0u32;
        'outer: loop {
            if tx.disable_notification(&*view).is_err() {
                break;
            }
            loop {
                rounds += 1;
                if rounds > super::MAX_QUEUE_ROUNDS {
                    budget_warn!(
                        self,
                        queue_log,
                        "transmit ring keeps refilling itself; left until the next notification"
                    );
                    break 'outer;
                }
                let n = match avail_count(tx, view) {
                    Ok(n) => n,
                    Err(RingError) => {
                        budget_warn!(self, queue_log, "transmit ring index is invalid");
                        break 'outer;
                    }
                };
                if n == 0 {
                    break;
                }
                for _ in 0..n {
                    let Ok(head) = avail_head(tx, view, 0) else {
                        budget_warn!(self, queue_log, "transmit ring is unreadable");
                        break 'outer;
                    };
                    tx.set_next_avail(tx.next_avail().wrapping_add(1));
                    self.send_chain(view, tx, segs, head);
                    used |= self.complete(tx, view, head, 0);
                }
            }
            match tx.enable_notification(&*view) {
                Ok(true) => continue,
                _ => break,
            }
        }
        self.flush_tally();
        used && tx.needs_notification(&*view).unwrap_or(true)
    }

    /// Sends the frame of transmit chain `head`, or drops it.
    fn send_chain(&mut self, view: &HostView, tx: &Queue, segs: &mut IoVecBuf, head: u16) {
        let mut frame = segs.start(view);
        let mut total = 0usize;
        let mut bad = None;
        for d in ChainWalker::new(view, tx.desc_table(), tx.size(), head) {
            if d.is_write_only() {
                bad = Some("device-writable descriptor in a transmit chain");
                break;
            }
            total += d.len as usize;
            if total > MAX_TX_FRAME {
                bad = Some("frame longer than 64 KiB plus the header");
                break;
            }
            if !frame.push(d.addr, d.len as usize) {
                bad = Some("buffer outside guest memory (or too many buffers)");
                break;
            }
        }
        if bad.is_none() && total < MIN_FRAME {
            bad = Some("frame shorter than the virtio-net and Ethernet headers");
        }
        if let Some(why) = bad {
            drop(frame);
            self.tally.tx_malformed += 1;
            self.tally.tx_dropped += 1;
            budget_warn!(self, tx_log, "transmit chain {head}: {why}; dropped");
            return;
        }
        let r = self.backend.write_frame(&frame);
        drop(frame);
        match r {
            Ok(n) if n == total => {
                self.tally.tx_frames += 1;
                self.tally.tx_bytes += (total - VNET_HDR_LEN) as u64;
            }
            Ok(n) => {
                self.tally.tx_dropped += 1;
                if self.backend_log.take("virtio-net: backend error") {
                    error!("virtio-net ({}): short write of a {total}-byte frame ({n} bytes)", self.name);
                }
            }
            Err(e) => {
                self.tally.tx_dropped += 1;
                if self.backend_log.take("virtio-net: backend error") {
                    error!("virtio-net ({}): cannot send a frame: {e}", self.name);
                }
            }
        }
    }

    // ---- receive ----

    /// Delivers the pending frame and whatever the backend has, while the
    /// receive queue has buffers. Returns whether to interrupt the driver.
    fn process_rx(&mut self, a: &mut Active) -> bool {
        let mut used = false;
        let mut frames = 0;
        let mut rounds = 0u32;
        self.rx_starved = false;
        loop {
            rounds += 1;
            if rounds > super::MAX_QUEUE_ROUNDS {
                budget_warn!(self, queue_log, "receive ring keeps refilling itself; left until the next notification");
                break;
            }
            if self.rx_notify_on {
                // Buffers are there (or about to be): no kicks needed while
                // they last.
                let _ = a.rx.disable_notification(&a.view);
                self.rx_notify_on = false;
            }
            let seen = match self.rx_pass(a, &mut used, &mut frames) {
                RxStop::BackendDone => break,
                RxStop::RingError => {
                    // Wait for the driver's next notification.
                    budget_warn!(self, queue_log, "receive ring index is invalid");
                    self.rx_starved = true;
                    break;
                }
                RxStop::NoBuffers(seen) => seen,
            };
            // Out of buffers: ask for a notification when more come, then
            // look for ones that came in the meantime.
            self.rx_notify_on = true;
            match arm_rx(&mut a.rx, &a.view, seen) {
                Ok(true) => continue,
                _ => {
                    self.rx_starved = true;
                    break;
                }
            }
        }
        self.flush_tally();
        used && a.rx.needs_notification(&a.view).unwrap_or(true)
    }

    /// One pass: deliver frames until the backend is empty (or the batch
    /// is done) or the buffers run out.
    fn rx_pass(&mut self, a: &mut Active, used: &mut bool, frames: &mut usize) -> RxStop {
        loop {
            let n = match self.pending {
                Some(n) => n,
                None => {
                    if self.rx_failed || *frames >= RX_BATCH {
                        return RxStop::BackendDone;
                    }
                    // Never take a frame from the backend without a place
                    // to put it.
                    match avail_count(&a.rx, &a.view) {
                        Ok(0) => return RxStop::NoBuffers(0),
                        Ok(_) => {}
                        Err(RingError) => return RxStop::RingError,
                    }
                    match self.backend.read_frame(&mut self.rx_buf) {
                        Ok(n) => {
                            *frames += 1;
                            self.pending = Some(n);
                            n
                        }
                        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return RxStop::BackendDone,
                        Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            error!("virtio-net ({}): cannot read from the backend, receive stopped: {e}", self.name);
                            self.rx_failed = true;
                            return RxStop::BackendDone;
                        }
                    }
                }
            };
            match self.deliver(a, n, used) {
                Delivery::Done | Delivery::Dropped => self.pending = None,
                Delivery::NoBuffers(seen) => return RxStop::NoBuffers(seen),
                Delivery::RingError => return RxStop::RingError,
            }
        }
    }

    /// Checks the header of a received frame against the negotiated
    /// offloads; the reason to drop it if it does not match.
    fn check_rx_header(&mut self, n: usize) -> Option<&'static str> {
        if n < MIN_FRAME || n > self.rx_buf.len() {
            return Some("runt or truncated frame");
        }
        let flags = u32::from(self.rx_buf[0]);
        let gso = u32::from(self.rx_buf[1]);
        if !self.has(VIRTIO_NET_F_GUEST_CSUM) {
            if flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
                return Some("partial checksum, GUEST_CSUM not negotiated");
            }
            // DATA_VALID needs GUEST_CSUM as well.
            self.rx_buf[0] = 0;
        }
        let ok = match gso & !VIRTIO_NET_HDR_GSO_ECN {
            VIRTIO_NET_HDR_GSO_NONE => true,
            VIRTIO_NET_HDR_GSO_TCPV4 => self.has(VIRTIO_NET_F_GUEST_TSO4),
            VIRTIO_NET_HDR_GSO_TCPV6 => self.has(VIRTIO_NET_F_GUEST_TSO6),
            VIRTIO_NET_HDR_GSO_UDP => self.has(VIRTIO_NET_F_GUEST_UFO),
            _ => false,
        } && (gso & VIRTIO_NET_HDR_GSO_ECN == 0 || self.has(VIRTIO_NET_F_GUEST_ECN));
        (!ok).then_some("segmentation offload the driver did not accept")
    }

    /// Maps the device-writable buffers of receive chain `head` for up to
    /// `need` bytes, appending them to `segs`.
    fn map_rx_chain(rx: &Queue, view: &HostView, segs: &mut IoVecs<'_>, head: u16, need: usize) -> Fit {
        if head >= rx.size() {
            return Fit::Bad("descriptor head out of range");
        }
        let mut cap = 0usize;
        let mut any = false;
        for d in ChainWalker::new(view, rx.desc_table(), rx.size(), head) {
            any = true;
            if !d.is_write_only() {
                return Fit::Bad("device-readable descriptor in a receive chain");
            }
            let take = (d.len as usize).min(need - cap);
            if !segs.push(d.addr, take) {
                return Fit::Bad("buffer outside guest memory (or too many buffers)");
            }
            cap += d.len as usize;
            if cap >= need {
                return Fit::Fits;
            }
        }
        if any {
            Fit::Short(cap)
        } else {
            Fit::Bad("empty or unreadable descriptor chain")
        }
    }

    /// Puts the frame of `n` bytes in `rx_buf` into the guest's buffers.
    fn deliver(&mut self, a: &mut Active, n: usize, used: &mut bool) -> Delivery {
        if let Some(why) = self.check_rx_header(n) {
            self.tally.rx_dropped += 1;
            budget_warn!(self, rx_log, "received {n}-byte frame: {why}; dropped");
            return Delivery::Dropped;
        }
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        loop {
            let avail = match avail_count(&a.rx, &a.view) {
                Ok(0) => return Delivery::NoBuffers(0),
                Ok(k) => k,
                Err(RingError) => return Delivery::RingError,
            };
            let mut segs = a.segs.start(&a.view);
            self.chains.clear();
            let mut got = 0usize;
            let mut bad = None;
            // Gather chains, in ring order, until the frame fits.
            while got < n {
                let i = self.chains.len() as u16;
                if i == avail || (!mrg && i == 1) {
                    break;
                }
                let head = match avail_head(&a.rx, &a.view, i) {
                    Ok(h) => h,
                    Err(RingError) => return Delivery::RingError,
                };
                match Self::map_rx_chain(&a.rx, &a.view, &mut segs, head, n - got) {
                    Fit::Fits => {
                        self.chains.push((head, (n - got) as u32));
                        got = n;
                    }
                    Fit::Short(cap) => {
                        self.chains.push((head, cap as u32));
                        got += cap;
                    }
                    Fit::Bad(why) => {
                        self.chains.push((head, 0));
                        bad = Some(why);
                        break;
                    }
                }
            }
            if let Some(why) = bad {
                // Return the gathered chains unused, then try again with
                // the ones after them.
                let k = self.chains.len();
                let head = self.chains[k - 1].0;
                self.tally.rx_malformed += 1;
                budget_warn!(self, rx_log, "receive chain {head}: {why}; returned unused");
                if k > 1 {
                    // Earlier chains of a merged frame go back unused too.
                    self.tally.rx_dropped += 1;
                }
                drop(segs);
                self.take_chains(a, used, true);
                if k > 1 {
                    return Delivery::Dropped;
                }
                continue;
            }
            if got < n {
                if !mrg {
                    self.tally.rx_dropped += 1;
                    budget_warn!(
                        self,
                        rx_log,
                        "{n}-byte frame does not fit the next receive buffer ({got} bytes); dropped"
                    );
                    return Delivery::Dropped;
                }
                if avail == a.rx.size() {
                    self.tally.rx_dropped += 1;
                    budget_warn!(
                        self,
                        rx_log,
                        "{n}-byte frame does not fit the whole receive ring ({got} bytes); dropped"
                    );
                    return Delivery::Dropped;
                }
                // Wait for more buffers.
                return Delivery::NoBuffers(avail);
            }
            let nbufs = self.chains.len() as u16;
            self.rx_buf[10..12].copy_from_slice(&nbufs.to_le_bytes());
            segs.copy_from(&self.rx_buf[..n]);
            drop(segs);
            self.take_chains(a, used, false);
            self.tally.rx_frames += 1;
            self.tally.rx_bytes += (n - VNET_HDR_LEN) as u64;
            return Delivery::Done;
        }
    }

    /// Takes the chains in `self.chains` off the available ring and returns
    /// them (with length 0 when `unused`).
    fn take_chains(&mut self, a: &mut Active, used: &mut bool, unused: bool) {
        let k = self.chains.len() as u16;
        a.rx.set_next_avail(a.rx.next_avail().wrapping_add(k));
        for i in 0..usize::from(k) {
            let (head, len) = self.chains[i];
            let len = if unused { 0 } else { len };
            *used |= self.complete(&mut a.rx, &a.view, head, len);
        }
        self.chains.clear();
    }
}

/// Why a receive pass stopped.
enum RxStop {
    /// Not enough buffers among the given number of available chains.
    NoBuffers(u16),
    RingError,
    BackendDone,
}

/// What became of a received frame.
enum Delivery {
    Done,
    Dropped,
    /// Not enough buffers among the given number of available chains.
    NoBuffers(u16),
    RingError,
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
            error!("virtio-net ({}): cannot set receive offloads: {e}", self.io.name);
        }
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= CONFIG_LEN {
            return;
        }
        let n = data.len().min(CONFIG_LEN - start);
        data[..n].copy_from_slice(&self.config[start..start + n]);
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
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActivated);
        }
        let got = queues.len();
        let Ok([rx, tx]) = <[Queue; 2]>::try_from(queues) else {
            return Err(ActivateError::QueueCount { expected: 2, got });
        };
        for (i, q) in [&rx, &tx].into_iter().enumerate() {
            if !q.ready() {
                return Err(ActivateError::QueueNotReady(i));
            }
        }
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
        io.acked = 0;
        io.chains.clear();
        if let Err(e) = io.backend.set_offload(0) {
            error!("virtio-net ({}): cannot clear receive offloads: {e}", io.name);
        }
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
}

#[cfg(test)]
mod tests;
