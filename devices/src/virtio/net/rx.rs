//! The receive queue: frames read from the backend into the guest's
//! buffers, one chain per frame or (with `MRG_RXBUF`) as many as it needs,
//! only while the driver has posted buffers; a frame that does not fit yet
//! waits, never lost for lack of buffers. A pass stops on its budget
//! (chains taken, good or malformed, bytes, time) and continues through the
//! transport, so a driver that keeps publishing malformed chains cannot
//! hold the event loop.

use std::io;
use std::sync::atomic::{fence, Ordering};

use log::error;
use virtio_bindings::virtio_net::*;
use virtio_queue::{Queue, QueueT};
use vm_memory::{Bytes, GuestAddress};

use super::tap::VNET_HDR_LEN;
use super::{avail_count, avail_head, budget_warn, Active, Io, RingError, MIN_FRAME, RX_BATCH};
use crate::virtio::chain::ChainWalker;
use crate::virtio::host_view::HostView;
use crate::virtio::iovec::IoVecs;
use crate::virtio::{PassBudget, MAX_QUEUE_ROUNDS};

/// How a receive chain fits a frame.
enum Fit {
    /// The chain holds the remaining bytes.
    Fits,
    /// The whole chain (this many bytes) is too small.
    Short(usize),
    /// The chain cannot be used.
    Bad(&'static str),
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

/// Why a receive pass stopped.
enum RxStop {
    /// Not enough buffers among the given number of available chains.
    NoBuffers(u16),
    RingError,
    BackendDone,
    /// The pass budget is spent; work may be left.
    Spent,
}

/// What became of a received frame.
enum Delivery {
    Done,
    Dropped,
    /// Not enough buffers among the given number of available chains.
    NoBuffers(u16),
    RingError,
    /// The pass budget is spent before the frame found its chains.
    Spent,
}

impl Io {
    /// Delivers the pending frame and whatever the backend has, while the
    /// receive queue has buffers. Returns whether to interrupt the driver.
    pub(super) fn process_rx(&mut self, a: &mut Active) -> bool {
        let mut used = false;
        let mut frames = 0;
        let mut rounds = 0u32;
        let mut budget = PassBudget::start();
        self.rx_starved = false;
        self.rx_unfinished = false;
        loop {
            rounds += 1;
            if rounds > MAX_QUEUE_ROUNDS {
                budget_warn!(self, queue_log, "receive ring keeps refilling itself; left until the next notification");
                break;
            }
            if self.rx_notify_on {
                // Buffers are there (or about to be): no kicks needed while
                // they last.
                let _ = a.rx.disable_notification(&a.view);
                self.rx_notify_on = false;
            }
            let seen = match self.rx_pass(a, &mut used, &mut frames, &mut budget) {
                RxStop::BackendDone => break,
                RxStop::Spent => {
                    // Notifications stay as they are; the transport
                    // signals the queue again.
                    self.rx_unfinished = true;
                    break;
                }
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
    fn rx_pass(&mut self, a: &mut Active, used: &mut bool, frames: &mut usize, budget: &mut PassBudget) -> RxStop {
        loop {
            let n = match self.pending {
                Some(n) => n,
                None => {
                    if self.rx_failed || *frames >= RX_BATCH {
                        return RxStop::BackendDone;
                    }
                    if budget.spent() {
                        return RxStop::Spent;
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
            match self.deliver(a, n, used, budget) {
                Delivery::Done | Delivery::Dropped => self.pending = None,
                Delivery::NoBuffers(seen) => return RxStop::NoBuffers(seen),
                Delivery::RingError => return RxStop::RingError,
                Delivery::Spent => return RxStop::Spent,
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

    /// Puts the frame of `n` bytes in `rx_buf` into the guest's buffers;
    /// every chain it takes off the ring (malformed ones included) is
    /// charged to `budget`.
    fn deliver(&mut self, a: &mut Active, n: usize, used: &mut bool, budget: &mut PassBudget) -> Delivery {
        if let Some(why) = self.check_rx_header(n) {
            self.tally.rx_dropped += 1;
            budget_warn!(self, rx_log, "received {n}-byte frame: {why}; dropped");
            return Delivery::Dropped;
        }
        let mrg = self.has(VIRTIO_NET_F_MRG_RXBUF);
        loop {
            if budget.spent() {
                // A driver that keeps publishing malformed chains: the
                // frame waits for the next pass.
                return Delivery::Spent;
            }
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
                self.take_chains(a, used, true, budget);
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
            self.take_chains(a, used, false, budget);
            self.tally.rx_frames += 1;
            self.tally.rx_bytes += (n - VNET_HDR_LEN) as u64;
            return Delivery::Done;
        }
    }

    /// Takes the chains in `self.chains` off the available ring and returns
    /// them (with length 0 when `unused`), charging each to `budget`.
    fn take_chains(&mut self, a: &mut Active, used: &mut bool, unused: bool, budget: &mut PassBudget) {
        let k = self.chains.len() as u16;
        a.rx.set_next_avail(a.rx.next_avail().wrapping_add(k));
        for i in 0..usize::from(k) {
            let (head, len) = self.chains[i];
            let len = if unused { 0 } else { len };
            budget.charge(u64::from(len));
            *used |= self.complete(&mut a.rx, &a.view, head, len);
        }
        self.chains.clear();
    }
}
