//! The device's traffic counters: atomics behind an `Arc`, so the VMM
//! reads them while the device sits behind its transport's lock.

use std::sync::atomic::{AtomicU64, Ordering};

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
    tx_bad_header: AtomicU64,
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
    /// Transmit frames whose virtio-net header asked for an offload the
    /// driver did not negotiate, or described it inconsistently (also
    /// counted in `tx_dropped`).
    pub tx_bad_header: u64,
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
            tx_bad_header: r(&self.tx_bad_header),
        }
    }

    /// Adds a batch of local counts.
    pub(super) fn add(&self, t: &NetStats) {
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
        add(&self.tx_bad_header, t.tx_bad_header);
    }
}
