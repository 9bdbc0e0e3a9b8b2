//! The transmit queue: every available chain's device-readable buffers,
//! header first, go to the backend as one frame with one `writev` straight
//! from guest memory; malformed chains and frames whose virtio-net header
//! asks for an offload the driver did not negotiate are counted, logged
//! (bounded) and returned unsent. Every transmit chain is returned with a
//! used length of 0. A pass stops on its budget (chains, bytes, time) and
//! continues through the transport.

use log::error;
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT};

use super::tap::VNET_HDR_LEN;
use super::{avail_count, avail_head, budget_warn, Active, Io, RingError, MAX_TX_FRAME, MIN_FRAME};
use crate::virtio::chain::ChainWalker;
use crate::virtio::host_view::HostView;
use crate::virtio::iovec::IoVecBuf;
use crate::virtio::{PassBudget, MAX_QUEUE_ROUNDS};

/// Checks the virtio-net header `hdr` of a transmit frame of `len` bytes
/// (header included) against the `acked` features (virtio 1.2 §5.1.6.2):
/// the reason to drop the frame, if any.
///
/// * `flags` is 0 or `NEEDS_CSUM`, and `NEEDS_CSUM` needs `CSUM`; the
///   checksum it asks for lies inside the frame; without it `csum_start`
///   and `csum_offset` are 0;
/// * `gso_type` is `NONE`, or `TCPV4`/`TCPV6` with `HOST_TSO4`/`HOST_TSO6`
///   (UDP and ECN are not offered), with `NEEDS_CSUM` and a non-zero
///   `gso_size`; without segmentation `gso_size` is 0;
/// * `hdr_len` lies inside the frame.
pub(super) fn check_tx_header(hdr: &[u8; VNET_HDR_LEN], len: usize, acked: u64) -> Option<&'static str> {
    let has = |bit: u32| acked & (1u64 << bit) != 0;
    let u16_at = |o: usize| usize::from(u16::from_le_bytes([hdr[o], hdr[o + 1]]));
    let (flags, gso) = (u32::from(hdr[0]), u32::from(hdr[1]));
    let (hdr_len, gso_size, csum_start, csum_offset) = (u16_at(2), u16_at(4), u16_at(6), u16_at(8));
    let payload = len - VNET_HDR_LEN;
    let csum = flags & VIRTIO_NET_HDR_F_NEEDS_CSUM != 0;
    if flags & !VIRTIO_NET_HDR_F_NEEDS_CSUM != 0 {
        return Some("header flags a driver may not set");
    }
    if csum && !has(VIRTIO_NET_F_CSUM) {
        return Some("checksum offload, CSUM not negotiated");
    }
    if csum && csum_start + csum_offset + 2 > payload {
        return Some("checksum position outside the frame");
    }
    if !csum && (csum_start | csum_offset) != 0 {
        return Some("checksum position without a checksum offload");
    }
    let gso_ok = match gso {
        VIRTIO_NET_HDR_GSO_NONE => gso_size == 0,
        VIRTIO_NET_HDR_GSO_TCPV4 => has(VIRTIO_NET_F_HOST_TSO4) && csum && gso_size > 0,
        VIRTIO_NET_HDR_GSO_TCPV6 => has(VIRTIO_NET_F_HOST_TSO6) && csum && gso_size > 0,
        _ => false,
    };
    if !gso_ok {
        return Some("segmentation offload not negotiated or inconsistent");
    }
    if hdr_len > payload {
        return Some("header length past the end of the frame");
    }
    None
}

impl Io {
    pub(super) fn process_tx(&mut self, a: &mut Active) -> bool {
        let Active { view, tx, segs, .. } = a;
        let mut used = false;
        let mut rounds = 0u32;
        let mut budget = PassBudget::start();
        self.tx_unfinished = false;
        'outer: loop {
            if tx.disable_notification(&*view).is_err() {
                break;
            }
            loop {
                rounds += 1;
                if rounds > MAX_QUEUE_ROUNDS {
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
                    if budget.spent() {
                        // Notifications stay off; the transport signals
                        // the queue again.
                        self.tx_unfinished = true;
                        break 'outer;
                    }
                    let Ok(head) = avail_head(tx, view, 0) else {
                        budget_warn!(self, queue_log, "transmit ring is unreadable");
                        break 'outer;
                    };
                    tx.set_next_avail(tx.next_avail().wrapping_add(1));
                    budget.charge(self.send_chain(view, tx, segs, head));
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

    /// Sends the frame of transmit chain `head`, or drops it; returns the
    /// bytes handed to the backend.
    fn send_chain(&mut self, view: &HostView, tx: &Queue, segs: &mut IoVecBuf, head: u16) -> u64 {
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
            self.tally.tx_malformed += 1;
            self.tally.tx_dropped += 1;
            budget_warn!(self, tx_log, "transmit chain {head}: {why}; dropped");
            return 0;
        }
        let mut hdr = [0u8; VNET_HDR_LEN];
        frame.copy_prefix(&mut hdr);
        if let Some(why) = check_tx_header(&hdr, total, self.acked) {
            self.tally.tx_bad_header += 1;
            self.tally.tx_dropped += 1;
            budget_warn!(self, tx_log, "transmit chain {head}: {why}; dropped");
            return 0;
        }
        let r = self.backend.write_frame(&frame);
        match r {
            Ok(n) if n == total => {
                self.tally.tx_frames += 1;
                self.tally.tx_bytes += (total - VNET_HDR_LEN) as u64;
                total as u64
            }
            Ok(n) => {
                self.tally.tx_dropped += 1;
                if self.backend_log.take("virtio-net: backend error") {
                    error!("virtio-net ({}): short write of a {total}-byte frame ({n} bytes)", self.name);
                }
                n as u64
            }
            Err(e) => {
                self.tally.tx_dropped += 1;
                if self.backend_log.take("virtio-net: backend error") {
                    error!("virtio-net ({}): cannot send a frame: {e}", self.name);
                }
                0
            }
        }
    }
}
