//! The transmit queue: every available chain's device-readable buffers,
//! header first, go to the backend as one frame with one `writev` straight
//! from guest memory; malformed chains are counted, logged (bounded) and
//! returned unsent. Every transmit chain is returned with a used length of
//! 0.

use log::error;
use virtio_queue::{Queue, QueueT};

use super::tap::VNET_HDR_LEN;
use super::{avail_count, avail_head, budget_warn, Active, Io, RingError, MAX_TX_FRAME, MIN_FRAME};
use crate::virtio::chain::ChainWalker;
use crate::virtio::host_view::HostView;
use crate::virtio::iovec::IoVecBuf;
use crate::virtio::MAX_QUEUE_ROUNDS;

impl Io {
    pub(super) fn process_tx(&mut self, a: &mut Active) -> bool {
        let Active { view, tx, segs, .. } = a;
        let mut used = false;
        let mut rounds = 0u32;
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
            self.tally.tx_malformed += 1;
            self.tally.tx_dropped += 1;
            budget_warn!(self, tx_log, "transmit chain {head}: {why}; dropped");
            return;
        }
        let r = self.backend.write_frame(&frame);
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
}
