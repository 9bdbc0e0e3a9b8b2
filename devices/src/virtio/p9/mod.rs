//! virtio-9p: a host directory shared with the guest over 9P2000.L
//! (virtio device ID 9; the transport Linux's `9p` file system uses with
//! `trans=virtio`).
//!
//! * [`wire`]: 9P2000.L message decoding and encoding.
//! * [`server`]: the file server over one host directory, independent of
//!   virtio ([`Server::handle`]: request bytes in, reply out), with the
//!   confinement rules (see docs/share.md).
//! * this module: the virtio device. Configuration space: `tag_len`
//!   (little-endian u16) then the mount tag (not NUL-terminated), offered
//!   with feature bit `VIRTIO_9P_MOUNT_TAG` (0). One request queue: each
//!   chain carries a T-message in its device-readable descriptors and room
//!   for the R-message in its device-writable ones, both read as byte
//!   streams over any number of descriptors (Linux's zero-copy reads put an
//!   11-byte header buffer first and the user's pages after it).
//!
//! Requests are served synchronously on the event-loop thread, in order. A
//! pass over the queue stops after [`MAX_REQUESTS_PER_PASS`] requests,
//! [`MAX_BYTES_PER_PASS`] bytes or [`MAX_PASS_TIME`], whichever comes
//! first, and continues from the event loop through the device's own
//! eventfd (its backend fd), so one busy guest cannot hold the loop for
//! long. What stays synchronous: each single host file operation (one
//! `pread`/`pwrite` of at most `msize`, one `getdents64`, one
//! `open`/`rename`/...), which on a slow host file system blocks the loop
//! for as long as it takes.

use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use log::{error, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::chain::ChainWalker;
use super::host_view::HostView;
use super::{ActivateError, LogBudget, VirtioDevice, VirtioInterrupt};
use crate::GuestMemoryMmap;

mod host;
pub mod server;
pub mod wire;

pub use server::{ReplyBuf, Server, ServerError, ServerStats, MAX_MSIZE, MIN_MSIZE};

/// The virtio device ID of a 9P transport.
pub const VIRTIO_ID_9P: u32 = 9;
/// Feature bit: the configuration space holds a mount tag.
pub const VIRTIO_9P_MOUNT_TAG: u32 = 0;
/// Size of the request queue.
pub const QUEUE_SIZE: u16 = 128;
/// Longest mount tag accepted.
pub const MAX_TAG_LEN: usize = 255;
/// Requests served per pass over the queue before yielding the event loop.
pub const MAX_REQUESTS_PER_PASS: u32 = 256;
/// Request and reply bytes moved per pass before yielding the event loop.
pub const MAX_BYTES_PER_PASS: u64 = 16 << 20;
/// Time per pass before yielding the event loop.
pub const MAX_PASS_TIME: Duration = Duration::from_millis(5);
/// Descriptors one request may use.
const MAX_DESCS: usize = 1024;

/// A Linux error number, as sent in `Rlerror`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

impl std::fmt::Display for Errno {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", io::Error::from_raw_os_error(self.0))
    }
}

/// A shared directory.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ShareConfig {
    /// The host directory.
    pub path: PathBuf,
    /// The mount tag the guest names it by (`mount -t 9p TAG /mnt`).
    pub tag: String,
    /// Refuse every change with `EROFS`.
    pub readonly: bool,
}

/// Why a share could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    /// The tag is empty.
    #[error("the mount tag of share {} is empty", path.display())]
    EmptyTag {
        /// The shared directory.
        path: PathBuf,
    },
    /// The tag is too long or holds a NUL.
    #[error("mount tag {tag:?} is not 1 to 255 bytes without NUL")]
    BadTag {
        /// The tag given.
        tag: String,
    },
    /// The directory cannot be served.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The device's eventfd cannot be created.
    #[error("cannot create the virtio-9p eventfd: {0}")]
    EventFd(#[source] io::Error),
}

/// One device-readable or device-writable piece of guest memory.
#[derive(Clone, Copy)]
struct Piece {
    ptr: *mut u8,
    len: usize,
}

/// The device-writable part of a chain as a [`ReplyBuf`].
struct GuestReply<'a> {
    pieces: &'a [Piece],
    total: usize,
    iov: &'a mut Vec<libc::iovec>,
}

impl GuestReply<'_> {
    /// Calls `f(piece, start, len)` for the parts of `[off, off + len)`.
    fn ranges(&self, mut off: usize, mut len: usize, mut f: impl FnMut(Piece, usize, usize)) {
        for p in self.pieces {
            if len == 0 {
                break;
            }
            if off >= p.len {
                off -= p.len;
                continue;
            }
            let n = (p.len - off).min(len);
            f(*p, off, n);
            off = 0;
            len -= n;
        }
    }
}

impl ReplyBuf for GuestReply<'_> {
    fn capacity(&self) -> usize {
        self.total
    }

    fn put(&mut self, off: usize, data: &[u8]) {
        let mut pos = 0;
        self.ranges(off, data.len(), |p, start, n| {
            // SAFETY: `p` is a mapped guest range of `p.len` bytes held by
            // the device and `start + n <= p.len`; `data[pos..pos + n]`
            // is in bounds because the ranges add up to `data.len()`.
            unsafe { std::ptr::copy_nonoverlapping(data.as_ptr().add(pos), p.ptr.add(start), n) };
            pos += n;
        });
    }

    fn fill_from(&mut self, off: usize, len: usize, file: BorrowedFd<'_>, file_off: u64) -> io::Result<usize> {
        let mut iov = std::mem::take(self.iov);
        iov.clear();
        self.ranges(off, len, |p, start, n| {
            // SAFETY: `start + n <= p.len`, inside the mapped piece.
            iov.push(libc::iovec { iov_base: unsafe { p.ptr.add(start) }.cast(), iov_len: n });
        });
        // The pieces are guest memory the device holds mapped.
        let r = host::preadv(file, &iov, file_off);
        *self.iov = iov;
        r
    }
}

/// Maps `len` bytes of guest memory at `addr` to host pieces; `false` if
/// any byte is outside guest memory.
fn map_desc(mem: &GuestMemoryMmap, view: &HostView, addr: GuestAddress, len: usize, out: &mut Vec<Piece>) -> bool {
    if len == 0 {
        return true;
    }
    if let Some(ptr) = view.ptr(addr, len as u64) {
        out.push(Piece { ptr, len });
        return true;
    }
    // Spanning two regions, or outside guest memory.
    for slice in GuestMemoryBackend::get_slices(mem, addr, len) {
        let Ok(slice) = slice else {
            return false;
        };
        out.push(Piece { ptr: slice.ptr_guard_mut().as_ptr(), len: slice.len() });
    }
    true
}

/// Scratch space for serving chains, allocated once.
struct Scratch {
    readable: Vec<Piece>,
    writable: Vec<Piece>,
    req: Vec<u8>,
    iov: Vec<libc::iovec>,
}

// SAFETY: the raw pointers are addresses in the guest memory mapping the
// device holds; they are only used between the start and end of one
// request on the thread serving it.
unsafe impl Send for Scratch {}

/// State that exists while the driver runs the device.
struct Active {
    mem: GuestMemoryMmap,
    view: HostView,
    queue: Queue,
}

/// The virtio-9p device model.
pub struct Share {
    server: Server,
    config: Vec<u8>,
    queue_sizes: [u16; 1],
    acked_features: u64,
    active: Option<Active>,
    scratch: Scratch,
    /// Signalled when a pass stopped on its budget with work left.
    more: EventFd,
    completed: Vec<(u16, u32)>,
    bad_chain_log: LogBudget,
    queue_error_log: LogBudget,
    config_write_log: LogBudget,
}

impl std::fmt::Debug for Share {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Share")
            .field("readonly", &self.server.readonly())
            .field("active", &self.active.is_some())
            .finish_non_exhaustive()
    }
}

impl Share {
    /// Serves `cfg.path` under `cfg.tag`.
    pub fn new(cfg: &ShareConfig) -> Result<Share, ShareError> {
        if cfg.tag.is_empty() {
            return Err(ShareError::EmptyTag { path: cfg.path.clone() });
        }
        if cfg.tag.len() > MAX_TAG_LEN || cfg.tag.contains('\0') {
            return Err(ShareError::BadTag { tag: cfg.tag.clone() });
        }
        let server = Server::new(&cfg.path, cfg.readonly)?;
        let mut config = (cfg.tag.len() as u16).to_le_bytes().to_vec();
        config.extend_from_slice(cfg.tag.as_bytes());
        Ok(Share {
            server,
            config,
            queue_sizes: [QUEUE_SIZE],
            acked_features: 0,
            active: None,
            scratch: Scratch {
                readable: Vec::with_capacity(MAX_DESCS),
                writable: Vec::with_capacity(MAX_DESCS),
                req: Vec::with_capacity(MIN_MSIZE as usize),
                iov: Vec::with_capacity(MAX_DESCS),
            },
            more: EventFd::new(libc::EFD_NONBLOCK).map_err(ShareError::EventFd)?,
            completed: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            bad_chain_log: LogBudget::new(32),
            queue_error_log: LogBudget::new(8),
            config_write_log: LogBudget::new(4),
        })
    }

    /// The file server's counters.
    pub fn stats(&self) -> ServerStats {
        self.server.stats()
    }

    /// Serves the queue until it is empty or the pass budget is spent.
    /// Returns whether the driver must be interrupted.
    fn serve(&mut self) -> bool {
        let Share { server, active, scratch, more, completed, bad_chain_log, queue_error_log, .. } = self;
        let Some(Active { mem, view, queue }) = active.as_mut() else {
            return false;
        };
        let (mem, view) = (&*mem, &*view);
        if !queue.ready() {
            return false;
        }
        let start = Instant::now();
        let mut requests = 0u32;
        let mut bytes = 0u64;
        let mut used = false;
        let mut rounds = 0u32;
        let mut yielded = false;
        loop {
            rounds += 1;
            if rounds > super::MAX_QUEUE_ROUNDS {
                if queue_error_log.take("virtio-9p: queue error") {
                    error!("virtio-9p: request queue keeps refilling itself; leaving it until the next notification");
                }
                break;
            }
            if queue.disable_notification(view).is_err() {
                break;
            }
            let (table, size) = (queue.desc_table(), queue.size());
            let mut avail = match queue.iter(view) {
                Ok(a) => a,
                Err(e) => {
                    if queue_error_log.take("virtio-9p: queue error") {
                        error!("virtio-9p: request queue: {e}");
                    }
                    break;
                }
            };
            for chain in &mut avail {
                let head = chain.head_index();
                let walker = ChainWalker::new(view, table, size, head);
                let (len, moved) = serve_chain(server, scratch, bad_chain_log, mem, view, head, walker);
                completed.push((head, len));
                requests += 1;
                bytes += moved;
                if requests >= MAX_REQUESTS_PER_PASS || bytes >= MAX_BYTES_PER_PASS || start.elapsed() >= MAX_PASS_TIME
                {
                    yielded = true;
                    break;
                }
            }
            for (head, len) in completed.drain(..) {
                match queue.add_used(view, head, len) {
                    Ok(()) => used = true,
                    Err(e) => {
                        if queue_error_log.take("virtio-9p: queue error") {
                            error!("virtio-9p: cannot complete descriptor {head}: {e}");
                        }
                    }
                }
            }
            if yielded {
                // Notifications stay disabled: the event loop comes back
                // through `more` and finishes the work.
                if let Err(e) = more.write(1) {
                    error!("virtio-9p: cannot signal the continuation eventfd: {e}");
                }
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

/// Serves one chain: returns (used length, bytes moved).
fn serve_chain(
    server: &mut Server,
    s: &mut Scratch,
    log: &mut LogBudget,
    mem: &GuestMemoryMmap,
    view: &HostView,
    head: u16,
    chain: ChainWalker<'_>,
) -> (u32, u64) {
    s.readable.clear();
    s.writable.clear();
    let mut ndesc = 0usize;
    let mut bad: Option<&str> = None;
    for d in chain {
        ndesc += 1;
        if ndesc > MAX_DESCS {
            bad = Some("too many descriptors");
            break;
        }
        let out = if d.is_write_only() {
            &mut s.writable
        } else if s.writable.is_empty() {
            &mut s.readable
        } else {
            bad = Some("device-readable descriptor after a writable one");
            break;
        };
        if !map_desc(mem, view, d.addr, d.len as usize, out) {
            bad = Some("buffer outside guest memory");
            break;
        }
    }
    if let Some(why) = bad {
        if log.take("virtio-9p: malformed descriptor chain") {
            warn!("virtio-9p: descriptor chain {head}: {why}; dropped");
        }
        return (0, 0);
    }
    // The request, up to msize bytes (a longer one is refused by the
    // server from its size field).
    let limit = server.msize() as usize;
    s.req.clear();
    for p in &s.readable {
        let n = p.len.min(limit - s.req.len());
        let at = s.req.len();
        s.req.resize(at + n, 0);
        // SAFETY: `p` is a mapped guest range of at least `n` bytes; the
        // destination was just sized to hold them.
        unsafe { std::ptr::copy_nonoverlapping(p.ptr, s.req[at..].as_mut_ptr(), n) };
        if s.req.len() == limit {
            break;
        }
    }
    let total = s.writable.iter().map(|p| p.len).sum();
    let mut reply = GuestReply { pieces: &s.writable, total, iov: &mut s.iov };
    let n = server.handle(&s.req, &mut reply);
    if n == 0 && log.take("virtio-9p: unanswerable request") {
        warn!("virtio-9p: descriptor chain {head}: no header or no room for a reply; dropped");
    }
    (n as u32, (s.req.len() + n) as u64)
}

impl VirtioDevice for Share {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_9P
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &self.queue_sizes
    }

    fn avail_features(&self) -> u64 {
        1 << VIRTIO_9P_MOUNT_TAG
    }

    fn ack_features(&mut self, features: u64) {
        self.acked_features = features;
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let Ok(start) = usize::try_from(offset) else {
            return;
        };
        if start >= self.config.len() {
            return;
        }
        let n = data.len().min(self.config.len() - start);
        data[..n].copy_from_slice(&self.config[start..start + n]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.config_write_log.take("virtio-9p: config write") {
            warn!("virtio-9p: ignoring {}-byte write to read-only config space at {offset:#x}", data.len());
        }
    }

    fn activate(
        &mut self,
        mem: GuestMemoryMmap,
        _interrupt: Arc<VirtioInterrupt>,
        mut queues: Vec<Queue>,
    ) -> Result<(), ActivateError> {
        if self.active.is_some() {
            return Err(ActivateError::AlreadyActivated);
        }
        if queues.len() != 1 {
            return Err(ActivateError::QueueCount { expected: 1, got: queues.len() });
        }
        let queue = queues.remove(0);
        if !queue.ready() {
            return Err(ActivateError::QueueNotReady(0));
        }
        self.active = Some(Active { view: HostView::new(&mem), mem, queue });
        Ok(())
    }

    fn process_queue(&mut self, idx: usize) -> bool {
        idx == 0 && self.serve()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.server.reset();
        let _ = self.more.read();
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.more.as_raw_fd()]
    }

    fn process_backend(&mut self, idx: usize) -> bool {
        if idx != 0 {
            return false;
        }
        // Non-blocking: WouldBlock is a spurious wake-up.
        let _ = self.more.read();
        self.serve()
    }

    fn backend_wants_input(&self, _idx: usize) -> bool {
        self.active.is_some()
    }
}

#[cfg(test)]
mod tests;
