//! Serving the request queue: in order, one pass over the available ring
//! per round, each chain gathered, parsed ([`super::request`]) and executed
//! on the disk engine ([`super::engine`]), then completed.
//!
//! A pass stops on its [`PassBudget`] (chains, bytes moved, time); the rest
//! waits for the continuation the transport signals
//! ([`VirtioDevice::take_unfinished`](crate::virtio::VirtioDevice::take_unfinished)).
//! A request's data is at most `seg_max` segments of at most `size_max`
//! bytes each (both in the configuration space), so one chain moves at most
//! [`MAX_REQUEST_BYTES`](super::MAX_REQUEST_BYTES).
//!
//! The request path does not allocate and does not log on success; guest
//! mistakes and I/O errors are logged within bounded budgets.

use std::io;

use log::{error, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::Bytes;

use super::engine::DiskEngine;
use super::request::{self, Chain, Completion, Desc, Gathered, Image, Request, HEADER_LEN, MAX_DESCS};
use super::{ID_BYTES, QUEUE_SIZE, SEG_MAX, SIZE_MAX};
use crate::virtio::chain::ChainWalker;
use crate::virtio::host_view::HostView;
use crate::virtio::iovec::{IoVecBuf, IoVecs};
use crate::virtio::{LogBudget, PassBudget, MAX_QUEUE_ROUNDS};

/// Everything the device needs to serve requests: the queue loop's scratch
/// space and the [`Executor`].
pub(super) struct RequestHandler {
    pub(super) exec: Executor,
    /// The descriptors of the chain being served (reused).
    descs: Vec<Desc>,
    /// (head, used length) of the chains served in one pass, completed
    /// after it; at most a queue's worth, so it never reallocates.
    completed: Vec<(u16, u32)>,
    /// The last pass stopped on its budget with chains left.
    pub(super) unfinished: bool,
    queue_error_log: LogBudget,
}

/// Executes parsed requests: the engine, what the image is, and the scatter
/// list reused by every request.
pub(super) struct Executor {
    engine: Box<dyn DiskEngine>,
    pub(super) image: Image,
    pub(super) id: [u8; ID_BYTES],
    iov: IoVecBuf,
    bad_chain_log: LogBudget,
    io_error_log: LogBudget,
}

/// Fills `iov` with the guest buffers of bytes `[skip, skip + take)` of the
/// stream formed by `descs` (the request's data segments); the reason to
/// refuse the request if a segment is longer than `size_max`, there are
/// more than `seg_max` of them, or a byte is outside guest memory.
fn map_ranges(iov: &mut IoVecs<'_>, descs: &[Desc], skip: u64, take: u64) -> Result<(), &'static str> {
    iov.clear();
    let mut why = "buffer outside guest memory";
    let mut segs = 0u32;
    let ok = request::for_each_range(descs, skip, take, |addr, len| {
        segs += 1;
        if len > SIZE_MAX as usize {
            why = "data segment longer than size_max";
            return false;
        }
        if segs > SEG_MAX {
            why = "more data segments than seg_max";
            return false;
        }
        iov.push(addr, len)
    });
    if ok && iov.total() as u64 == take {
        Ok(())
    } else {
        Err(why)
    }
}

impl RequestHandler {
    pub(super) fn new(engine: Box<dyn DiskEngine>, image: Image, id: [u8; ID_BYTES]) -> Self {
        RequestHandler {
            exec: Executor {
                engine,
                image,
                id,
                iov: IoVecBuf::new(),
                bad_chain_log: LogBudget::new(32),
                io_error_log: LogBudget::new(32),
            },
            descs: Vec::with_capacity(MAX_DESCS),
            completed: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            unfinished: false,
            queue_error_log: LogBudget::new(8),
        }
    }

    /// Serves the available chains of `queue`, in rounds until the driver
    /// publishes no more or the pass budget is spent (then
    /// [`unfinished`](Self::unfinished) is set and notifications stay
    /// off). Returns whether the driver must be notified.
    pub(super) fn process_queue(&mut self, queue: &mut Queue, view: &HostView) -> bool {
        let RequestHandler { exec, descs, completed, unfinished, queue_error_log } = self;
        let mut queue_error = |what: std::fmt::Arguments<'_>| {
            if queue_error_log.take("virtio-blk: queue error") {
                error!("virtio-blk: {what}");
            }
        };
        let mut used = false;
        let mut rounds = 0u32;
        let mut budget = PassBudget::start();
        *unfinished = false;
        loop {
            rounds += 1;
            if rounds > MAX_QUEUE_ROUNDS {
                queue_error(format_args!(
                    "request queue keeps refilling itself; leaving it until the next notification"
                ));
                break;
            }
            if queue.disable_notification(view).is_err() {
                // The used ring was checked at QueueReady; nothing sensible
                // can be done if it is not writable now.
                break;
            }
            // Serve the chains published so far in one pass over the
            // available ring (at most the queue size, bounded by
            // virtio-queue, and by the pass budget), then complete them in
            // order.
            let (table, size) = (queue.desc_table(), queue.size());
            let mut avail = match queue.iter(view) {
                Ok(avail) => avail,
                Err(e) => {
                    // A driver publishing a bogus avail index; stop rather
                    // than spin on the same error.
                    queue_error(format_args!("request queue: {e}"));
                    break;
                }
            };
            while !budget.spent() {
                let Some(chain) = avail.next() else { break };
                // virtio-queue hands out the head; the walk itself reads
                // descriptors through the host view with virtio-queue's
                // bounds (see `chain`).
                let head = chain.head_index();
                let (len, moved) = handle_chain(exec, descs, view, head, ChainWalker::new(view, table, size, head));
                budget.charge(moved);
                completed.push((head, len));
            }
            for (head, len) in completed.drain(..) {
                if head >= size {
                    // Checked here: virtio-queue would log it, unbudgeted.
                    queue_error(format_args!("descriptor head {head} out of range; not returned"));
                    continue;
                }
                match queue.add_used(view, head, len) {
                    Ok(()) => used = true,
                    Err(e) => queue_error(format_args!("cannot complete descriptor {head}: {e}")),
                }
            }
            if budget.spent() {
                // Chains may be left: the transport signals the queue
                // again, and notifications stay off until then.
                *unfinished = true;
                break;
            }
            match queue.enable_notification(view) {
                Ok(true) => continue,
                _ => break,
            }
        }
        used && queue.needs_notification(view).unwrap_or(true)
    }
}

/// Serves one descriptor chain; returns the used length for the used ring
/// (0 when there was no place for a status byte) and the bytes the host
/// moved for it.
fn handle_chain(
    exec: &mut Executor,
    descs: &mut Vec<Desc>,
    view: &HostView,
    head: u16,
    walker: ChainWalker<'_>,
) -> (u32, u64) {
    let (status, done) = match request::gather(view, walker, descs) {
        Gathered::NoStatus => {
            exec.log_bad_chain(head, "no device-writable status byte; dropped");
            return (0, 0);
        }
        Gathered::Malformed { status, why } => {
            exec.log_bad_chain(head, why);
            (status, Completion::ioerr(0))
        }
        Gathered::Ok { status } => (status, exec.serve(view, head, &request::split(descs))),
    };
    // Checked by `gather`, and written last.
    view.write_u8(status, done.status);
    (done.written + 1, done.moved)
}

impl Executor {
    #[cold]
    fn log_bad_chain(&mut self, head: u16, why: &str) {
        if self.bad_chain_log.take("virtio-blk: malformed descriptor chain") {
            warn!("virtio-blk: descriptor chain {head}: {why}");
        }
    }

    #[cold]
    fn log_io_error(&mut self, what: &str, err: &io::Error) {
        if self.io_error_log.take("virtio-blk: I/O error") {
            error!("virtio-blk: {what} failed: {err}");
        }
    }

    /// Parses the request of a well-formed chain and executes it, or
    /// answers it without I/O.
    fn serve(&mut self, view: &HostView, head: u16, chain: &Chain<'_>) -> Completion {
        match request::parse(view, chain, self.image) {
            Ok(req) => self.execute(view, head, req, chain),
            Err(refused) => {
                if let Some(why) = refused.malformed {
                    self.log_bad_chain(head, why);
                }
                refused.completion
            }
        }
    }

    /// Executes a parsed request on the engine. Kept out of line: the
    /// queue loop and the requests answered without I/O stay small (the
    /// blk bench's null-request row measured it).
    #[inline(never)]
    fn execute(&mut self, view: &HostView, head: u16, req: Request, chain: &Chain<'_>) -> Completion {
        match req {
            Request::In { offset, len } => {
                let mut iov = self.iov.start(view);
                if let Err(why) = map_ranges(&mut iov, chain.writable, 0, len) {
                    self.log_bad_chain(head, why);
                    return Completion::ioerr(0);
                }
                let (n, err) = self.engine.read_vectored_at(&mut iov, offset);
                // `n` <= len <= MAX_REQUEST_BYTES, which fits a u32.
                let done = match err {
                    None => Completion::ok(n as u32),
                    Some(e) => {
                        self.log_io_error("read", &e);
                        Completion::ioerr(n as u32)
                    }
                };
                done.moving(n as u64)
            }
            Request::Out { offset, len } => {
                let mut iov = self.iov.start(view);
                if let Err(why) = map_ranges(&mut iov, chain.readable, HEADER_LEN, len) {
                    self.log_bad_chain(head, why);
                    return Completion::ioerr(0);
                }
                let (n, err) = self.engine.write_vectored_at(&mut iov, offset);
                self.io_result("write", err.map_or(Ok(()), Err)).moving(n as u64)
            }
            Request::Flush => {
                let r = self.engine.flush();
                self.io_result("flush", r)
            }
            Request::GetId { len } => {
                let id = self.id;
                let mut pos = 0;
                let ok = request::for_each_range(chain.writable, 0, len, |addr, n| {
                    let r = view.write_slice(&id[pos..pos + n], addr).is_ok();
                    pos += n;
                    r
                });
                if ok {
                    Completion::ok(len as u32).moving(len)
                } else {
                    self.log_bad_chain(head, "GET_ID buffer outside guest memory");
                    Completion::ioerr(0)
                }
            }
            Request::Discard { offset, len } => {
                let r = match self.engine.punch_hole(offset, len) {
                    // Discard is a hint; a file system without hole punching
                    // simply keeps the data.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::EOPNOTSUPP)) => Ok(()),
                    r => r,
                };
                self.io_result("discard/write-zeroes", r)
            }
            Request::WriteZeroes { offset, len, unmap } => {
                // Counted in full: without a zeroing fallocate the engine
                // writes the zeroes.
                let r = self.engine.write_zeroes(offset, len, unmap);
                self.io_result("discard/write-zeroes", r).moving(len)
            }
        }
    }

    /// `OK`, or `IOERR` with the error logged.
    fn io_result(&mut self, what: &str, r: io::Result<()>) -> Completion {
        match r {
            Ok(()) => Completion::ok(0),
            Err(e) => {
                self.log_io_error(what, &e);
                Completion::ioerr(0)
            }
        }
    }
}
