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
use std::time::{Duration, Instant};

use log::{error, warn};
use virtio_queue::{Queue, QueueOwnedT, QueueState, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::chain::ChainWalker;
use super::host_view::HostView;
use super::iovec::IoVecBuf;
use super::{ActivateError, IoVecs, LogBudget, QueueSet, VirtioDevice};
use crate::snapshot::SaveError;
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

impl ShareError {
    /// Whether the error is about the values given (the directory, the
    /// tag) rather than the host (its kernel, its resources).
    pub fn is_usage(&self) -> bool {
        matches!(
            self,
            ShareError::EmptyTag { .. } | ShareError::BadTag { .. } | ShareError::Server(ServerError::Open { .. })
        )
    }
}

/// The device-writable part of a chain as a [`ReplyBuf`].
struct GuestReply<'a, 'm> {
    writable: &'a IoVecs<'m>,
    /// Scratch list for the part a read fills.
    part: &'a mut IoVecBuf,
    view: &'m HostView,
}

impl ReplyBuf for GuestReply<'_, '_> {
    fn capacity(&self) -> usize {
        self.writable.total()
    }

    fn put(&mut self, off: usize, data: &[u8]) {
        self.writable.copy_from_at(off, data);
    }

    fn fill_from(&mut self, off: usize, len: usize, file: BorrowedFd<'_>, file_off: u64) -> io::Result<usize> {
        let mut part = self.part.start(self.view);
        if !part.push_part_of(self.writable, off, len) {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        part.read_from_at(file, file_off)
    }
}

/// Scratch space for serving chains, allocated once.
struct Scratch {
    readable: IoVecBuf,
    writable: IoVecBuf,
    part: IoVecBuf,
    req: Vec<u8>,
}

/// State that exists while the driver runs the device.
struct Active {
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
                readable: IoVecBuf::new(),
                writable: IoVecBuf::new(),
                part: IoVecBuf::new(),
                req: Vec::with_capacity(MIN_MSIZE as usize),
            },
            more: EventFd::new(libc::EFD_NONBLOCK).map_err(ShareError::EventFd)?,
            completed: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            bad_chain_log: LogBudget::new(32),
            queue_error_log: LogBudget::new(8),
            config_write_log: LogBudget::new(4),
        })
    }

    /// Bounds the number of fids (each a host file descriptor) the guest
    /// may hold at once (at least 1; 16,384 unless set).
    pub fn set_max_fids(&mut self, n: usize) {
        self.server.set_max_fids(n);
    }

    /// The file server's counters.
    pub fn stats(&self) -> ServerStats {
        self.server.stats()
    }

    /// Serves the queue until it is empty or the pass budget is spent.
    /// Returns the queue if the driver must be notified.
    fn serve(&mut self) -> QueueSet {
        let Share { server, active, scratch, more, completed, bad_chain_log, queue_error_log, .. } = self;
        let Some(Active { view, queue }) = active.as_mut() else {
            return QueueSet::EMPTY;
        };
        let view = &*view;
        if !queue.ready() {
            return QueueSet::EMPTY;
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
                let (len, moved) = serve_chain(server, scratch, bad_chain_log, view, head, walker);
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
        QueueSet::of_if(0, used && queue.needs_notification(view).unwrap_or(true))
    }
}

/// Serves one chain: returns (used length, bytes moved).
fn serve_chain(
    server: &mut Server,
    s: &mut Scratch,
    log: &mut LogBudget,
    view: &HostView,
    head: u16,
    chain: ChainWalker<'_>,
) -> (u32, u64) {
    let mut readable = s.readable.start(view);
    let mut writable = s.writable.start(view);
    let mut ndesc = 0usize;
    let mut bad: Option<&str> = None;
    for d in chain {
        ndesc += 1;
        if ndesc > MAX_DESCS {
            bad = Some("too many descriptors");
            break;
        }
        let out = if d.is_write_only() {
            &mut writable
        } else if writable.is_empty() {
            &mut readable
        } else {
            bad = Some("device-readable descriptor after a writable one");
            break;
        };
        if !out.push(d.addr, d.len as usize) {
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
    s.req.clear();
    s.req.resize(readable.total().min(server.msize() as usize), 0);
    readable.copy_to(&mut s.req);
    let mut reply = GuestReply { writable: &writable, part: &mut s.part, view };
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
        super::read_config_space(&self.config, offset, data);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        if self.config_write_log.take("virtio-9p: config write") {
            warn!("virtio-9p: ignoring {}-byte write to read-only config space at {offset:#x}", data.len());
        }
    }

    fn activate(&mut self, mem: GuestMemoryMmap, queues: Vec<Queue>) -> Result<(), ActivateError> {
        let [queue] = super::ready_queues(self.active.is_some(), queues)?;
        self.active = Some(Active { view: HostView::new(&mem), queue });
        Ok(())
    }

    fn process_queue(&mut self, idx: usize) -> QueueSet {
        if idx != 0 {
            return QueueSet::EMPTY;
        }
        self.serve()
    }

    fn check_saveable(&self) -> Result<(), SaveError> {
        Err(SaveError::Unsupported {
            device: "virtio-9p",
            why: "the guest's open files (fids) are file descriptors of this host process",
        })
    }

    fn active_queue_states(&self) -> Vec<QueueState> {
        self.active.iter().map(|a| a.queue.state()).collect()
    }

    fn reset(&mut self) {
        self.active = None;
        self.acked_features = 0;
        self.server.reset();
        // `more` is not drained here: reset runs on a vCPU thread, whose
        // seccomp filter has no read(2). A count left in it wakes the event
        // loop once after the next activation, and that pass finds nothing
        // new to serve.
    }

    fn backend_fds(&self) -> Vec<RawFd> {
        vec![self.more.as_raw_fd()]
    }

    fn process_backend(&mut self, idx: usize) -> QueueSet {
        if idx != 0 {
            return QueueSet::EMPTY;
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
